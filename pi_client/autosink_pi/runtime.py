"""A release run on a device: raw input -> the manifest's preprocessing -> onnxruntime -> the
decision. The platform runs this same code on a release's smoke inputs before it publishes it,
and its pipelines prepare their training inputs with ``prepare``, so what a device computes is
what the platform measured.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, UnidentifiedImageError

from autosink_pi.manifest import ImageInput, Input, Manifest, RowsInput, TensorInput, parse

RESAMPLE = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


class InputError(ValueError):
    """Input the release cannot score; the message says what was wrong with it."""


# -- preprocessing ----------------------------------------------------------------------------


def prepare(spec: Input, raw: np.ndarray) -> np.ndarray:
    """A batch of raw inputs (images (N, H, W[, 3]) uint8, rows (N, columns), or the graph's own
    tensors) as the graph's float32 input."""
    x = np.asarray(raw)
    if isinstance(spec, ImageInput):
        return _prepare_images(spec, x)
    if isinstance(spec, RowsInput):
        if x.ndim != 2 or x.shape[1] != len(spec.columns):
            raise InputError(
                f"rows of {len(spec.columns)} values ({', '.join(spec.columns)}) expected, got shape {x.shape}"
            )
        return _finite(x.astype(np.float32), "row")
    if isinstance(spec, TensorInput):
        if list(x.shape[1:]) != list(spec.shape[1:]):
            raise InputError(f"inputs of shape {spec.shape[1:]} expected, got {list(x.shape[1:])}")
        return _finite(x.astype(np.float32), "input")
    raise InputError(f"input kind {spec.kind!r} is not supported by this client")


def _prepare_images(spec: ImageInput, x: np.ndarray) -> np.ndarray:
    per_image = (3,) if spec.color == "RGB" else ()
    if x.ndim != 3 + len(per_image) or x.shape[3:] != per_image:
        raise InputError(f"{spec.color} images (N, H, W{', 3' if per_image else ''}) expected, got shape {x.shape}")
    width, height = spec.size
    if x.shape[1:3] != (height, width):
        x = _uint8(x)
        x = np.stack([resize(spec, image) for image in x])
    x = x.astype(np.float32) / np.float32(spec.divide_by)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if per_image else x[:, None])


def resize(spec: ImageInput, image: np.ndarray) -> np.ndarray:
    """One uint8 image at the manifest's size (PIL's filter, as the platform resized it)."""
    resized = Image.fromarray(image, spec.color).resize(tuple(spec.size), RESAMPLE[spec.resample])
    return np.asarray(resized, dtype=np.uint8)


def _uint8(x: np.ndarray) -> np.ndarray:
    """Pixel values as uint8 (a dataset may keep them as whole-valued floats)."""
    if x.dtype == np.uint8:
        return x
    if not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 255 and (x == np.rint(x)).all()):
        raise InputError("image pixel values must be whole numbers 0..255")
    return x.astype(np.uint8)


def _finite(x: np.ndarray, what: str) -> np.ndarray:
    bad = ~np.isfinite(x).reshape(len(x), -1).all(axis=1)
    if bad.any():
        raise InputError(f"{what} {int(np.flatnonzero(bad)[0]) + 1} has NaN or infinite values")
    return x


# -- reading raw input --------------------------------------------------------------------------


def load_image(spec: ImageInput, source: str | Path | Image.Image) -> np.ndarray:
    """An image file (or PIL image) as the raw uint8 array ``prepare`` takes, at the manifest's size."""
    try:
        image = source if isinstance(source, Image.Image) else Image.open(source)
        image = image.convert(spec.color)
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{source}: not an image ({e})") from None
    if image.size != tuple(spec.size):
        image = image.resize(tuple(spec.size), RESAMPLE[spec.resample])
    return np.asarray(image, dtype=np.uint8)


def read_rows(spec: RowsInput | TensorInput, lines: Iterable[str]) -> Iterator[np.ndarray]:
    """CSV rows, one sample each, as they arrive: with a header naming the manifest's columns (in
    any order, others ignored), or without one, exactly the columns in the manifest's order."""
    columns = spec.columns if isinstance(spec, RowsInput) else None
    width = len(columns) if columns else int(np.prod(spec.shape[1:]))
    pick = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        (fields,) = csv.reader(io.StringIO(line))
        if number == 1 and columns and not _numeric(fields):
            if missing := [c for c in columns if c not in fields]:
                raise InputError(f"line 1: the header lacks column(s) {missing} (has {fields})")
            pick = [fields.index(c) for c in columns]
            continue
        values = [fields[i] for i in pick] if pick else fields
        if len(values) != width:
            raise InputError(
                f"line {number}: {len(values)} values, expected {width}"
                + (f" ({', '.join(columns)})" if columns else "")
            )
        try:
            row = np.array([float(v) for v in values], dtype=np.float32)
        except ValueError as e:
            raise InputError(f"line {number}: {e}") from None
        if not np.isfinite(row).all():
            raise InputError(f"line {number}: NaN or infinite value")
        yield row if columns else row.reshape([int(n) for n in spec.shape[1:]])


def _numeric(fields: list[str]) -> bool:
    try:
        [float(f) for f in fields]
    except ValueError:
        return False
    return True


# -- the model --------------------------------------------------------------------------------


class Runtime:
    """A release: its graph on onnxruntime (one thread: predictable latency on a Pi core), its
    preprocessing and its operating point."""

    def __init__(self, model: str | Path, manifest: Manifest | dict | bytes):
        self.manifest = manifest if isinstance(manifest, Manifest) else parse(manifest)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]

    @property
    def input(self) -> Input:
        return self.manifest.input

    def read_images(self, sources: Iterable[str | Path | Image.Image]) -> np.ndarray:
        """Image files as this release's raw input batch."""
        if not isinstance(self.input, ImageInput):
            raise InputError(f"{self.manifest.registered_model} takes {self.input.kind}, not images")
        return np.stack([load_image(self.input, s) for s in sources])

    def outputs(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        x = prepare(self.input, raw)
        return dict(zip(self.names, self.session.run(None, {self.input.name: x}), strict=True))

    def scores(self, raw: np.ndarray, session: str | None = None) -> np.ndarray:
        """The decision output on the threshold's scale."""
        scores = self.outputs(raw)[self.manifest.decision_output].astype(np.float64).reshape(len(raw))
        threshold = self.manifest.threshold
        if threshold.policy == "session_ucl":
            ucl = (threshold.params or {}).get("ucl", {})
            if session not in ucl:
                raise InputError(
                    f"{self.manifest.registered_model} divides scores by the session's UCL: "
                    f"name a calibrated session ({len(ucl)} known), got {session!r}"
                )
            scores = scores / ucl[session]
        return scores

    def decide(self, raw: np.ndarray, session: str | None = None) -> list[dict]:
        threshold = self.manifest.threshold.threshold
        return [
            {
                "score": float(s),
                "decision": bool(s >= threshold),
                "threshold": threshold,
                "version": self.manifest.mlflow_version,
            }
            for s in self.scores(raw, session)
        ]

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

from autosink_pi.manifest import ImageInput, Input, Manifest, RowsInput, Spectrogram, TensorInput, WindowsInput, parse

RESAMPLE = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


class InputError(ValueError):
    """Input the release cannot score; the message says what was wrong with it."""


# -- preprocessing ----------------------------------------------------------------------------


def prepare(spec: Input, raw: np.ndarray) -> np.ndarray:
    """A batch of raw inputs (images (N, H, W[, 3]) uint8, rows (N, columns), one session's series
    (rows, columns), or the graph's own tensors) as the graph's float32 input; for a series, the
    windows it scores (``scored_windows``)."""
    x = np.asarray(raw)
    if isinstance(spec, ImageInput):
        return _prepare_images(spec, x)
    if isinstance(spec, WindowsInput):
        return scored_windows(spec, x)
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


# -- series: windows, calibration, spectrograms ---------------------------------------------------


def scaler(startup: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population standard deviation of the start-up rows (a constant column keeps 1)."""
    startup = np.asarray(startup, dtype=np.float64)
    mean, std = startup.mean(axis=0), startup.std(axis=0)
    std[std < 1e-12] = 1.0
    return mean, std


def standardised(values: np.ndarray, startup_rows: int) -> np.ndarray:
    """(n, D) -> float32 (n, D), standardised by the first ``startup_rows`` rows."""
    mean, std = scaler(np.asarray(values)[:startup_rows])
    return ((np.asarray(values, dtype=np.float64) - mean) / std).astype(np.float32)


def sliding(values: np.ndarray, window: int, stride: int = 1, start: int = 0) -> np.ndarray:
    """(n, D) -> (k, window, D): the windows starting at ``start``, ``start + stride``, ..."""
    view = np.lib.stride_tricks.sliding_window_view(np.asarray(values)[start:], window, axis=0)
    return np.ascontiguousarray(view[::stride].transpose(0, 2, 1))


def spectrogram(spec: Spectrogram, windows: np.ndarray) -> np.ndarray:
    """(N, samples) -> float32 (N, 1, frames, frequencies), as ``Spectrogram`` says."""
    segments = np.lib.stride_tricks.sliding_window_view(np.asarray(windows, np.float64), spec.segment, axis=-1)
    segments = segments[:, :: spec.hop][:, : spec.frames]
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(spec.segment) / spec.segment)  # periodic
    magnitude = np.abs(np.fft.rfft(segments * hann, axis=-1))[..., : spec.frequencies]
    lo, hi = spec.db_range
    scaled = (20 * np.log10(magnitude + 1e-6) - lo) / (hi - lo)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)[:, None]


def graph_windows(spec: WindowsInput, windows: np.ndarray) -> np.ndarray:
    """(k, window, D) windows of the (standardised) series as the graph's float32 input."""
    if spec.spectrogram is not None:
        return spectrogram(spec.spectrogram, windows[..., 0])
    return np.ascontiguousarray(windows, dtype=np.float32)


def _series(spec: WindowsInput, x: np.ndarray) -> np.ndarray:
    if x.ndim != 2 or x.shape[1] != len(spec.columns):
        raise InputError(
            f"a series of rows of {len(spec.columns)} values ({', '.join(spec.columns)}) expected, got shape {x.shape}"
        )
    if len(x) < spec.startup_rows + spec.window:
        raise InputError(
            f"a session needs {spec.startup_rows} start-up rows and a window of {spec.window}, got {len(x)} rows"
        )
    x = _finite(np.asarray(x, dtype=np.float64), "row")
    return standardised(x, spec.startup_rows) if spec.standardise else x


def scored_windows(spec: WindowsInput, x: np.ndarray) -> np.ndarray:
    """One session's rows -> the graph inputs of the windows it scores (those after its start-up)."""
    return _scored(spec, _series(spec, x))


def _scored(spec: WindowsInput, z: np.ndarray) -> np.ndarray:
    return graph_windows(spec, sliding(z, spec.window, spec.stride, spec.startup_rows))


def _startup(spec: WindowsInput, z: np.ndarray) -> np.ndarray:
    """The (standardised) start-up rows -> the graph inputs of the windows inside them (calibration)."""
    if len(z) < spec.window:
        raise InputError(f"start-up of {len(z)} rows holds no window of {spec.window}")
    return graph_windows(spec, sliding(z, spec.window, spec.stride))


def window_rows(spec: WindowsInput, count: int) -> np.ndarray:
    """The row (0-based, in the session) each of ``count`` scored windows belongs to: its last."""
    return spec.startup_rows + spec.window - 1 + spec.stride * np.arange(count)


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


def read_rows(spec: RowsInput | WindowsInput | TensorInput, lines: Iterable[str]) -> Iterator[np.ndarray]:
    """CSV rows, one sample (or, for windows, one reading) each, as they arrive: with a header
    naming the manifest's columns (in any order, others ignored), or without one, exactly the
    columns in the manifest's order. A series' readings are kept as float64, as measured."""
    columns = spec.columns if isinstance(spec, RowsInput | WindowsInput) else None
    dtype = np.float64 if isinstance(spec, WindowsInput) else np.float32
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
            row = np.array([float(v) for v in values], dtype=dtype)
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

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's outputs on prepared (graph) input."""
        return dict(zip(self.names, self.session.run(None, {self.input.name: x}), strict=True))

    def outputs(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        return self.run(prepare(self.input, raw))

    def decision_scores(self, x: np.ndarray) -> np.ndarray:
        """The decision output on prepared input, before any calibration."""
        return self.run(x)[self.manifest.decision_output].astype(np.float64).reshape(len(x))

    def ucl(self, startup: np.ndarray) -> float:
        """A session's upper control limit from its start-up windows (graph input), by the
        platform's rule: the ``q``-quantile of their scores times ``factor``."""
        params = self.manifest.threshold.params or {}
        if "q" not in params or "factor" not in params:
            raise InputError(f"{self.manifest.registered_model}: session_ucl without q and factor in threshold.params")
        return float(np.quantile(self.decision_scores(startup), params["q"]) * params["factor"])

    def scores(self, raw: np.ndarray, session: str | None = None) -> np.ndarray:
        """The decision output on the threshold's scale (for a series, one per scored window)."""
        threshold = self.manifest.threshold
        if isinstance(self.input, WindowsInput):  # a session: calibrated on its own start-up
            z = _series(self.input, raw)
            scores = self.decision_scores(_scored(self.input, z))
            if threshold.policy == "session_ucl":
                scores = scores / self.ucl(_startup(self.input, z[: self.input.startup_rows]))
            return scores
        scores = self.decision_scores(prepare(self.input, raw))
        if threshold.policy == "session_ucl":
            ucl = (threshold.params or {}).get("ucl", {})
            if session not in ucl:
                raise InputError(
                    f"{self.manifest.registered_model} divides scores by the session's UCL: "
                    f"name a calibrated session ({len(ucl)} known), got {session!r}"
                )
            scores = scores / ucl[session]
        return scores

    def line(self, score: float, row: int | None = None) -> dict:
        """One decision as the device reports it."""
        threshold = self.manifest.threshold.threshold
        out = {"score": float(score), "decision": bool(score >= threshold), "threshold": threshold}
        return out | ({"row": int(row)} if row is not None else {}) | {"version": self.manifest.mlflow_version}

    def decide(self, raw: np.ndarray, session: str | None = None) -> list[dict]:
        scores = self.scores(raw, session)
        if isinstance(self.input, WindowsInput):
            return [self.line(s, r) for s, r in zip(scores, window_rows(self.input, len(scores)), strict=True)]
        return [self.line(s) for s in scores]


class SeriesSession:
    """One session of a windows release fed a reading at a time, as a device streams it: the
    start-up rows calibrate it (scaler, UCL), then each window is scored as its last row arrives,
    with the arithmetic ``Runtime.decide`` applies to the whole series at once."""

    def __init__(self, runtime: Runtime):
        if not isinstance(runtime.input, WindowsInput):
            raise InputError(f"{runtime.manifest.registered_model} takes {runtime.input.kind}, not a series")
        self.runtime, self.spec = runtime, runtime.input
        self.rows = 0
        self.startup: list[np.ndarray] = []
        # The last ``window`` rows, twice over: row j is written at j % window and at that plus
        # window, so the current window is always one contiguous slice, never copied row by row.
        self.ring: np.ndarray | None = None
        self.mean = self.std = None
        self.ucl = 1.0

    def push(self, reading: np.ndarray) -> dict | None:
        """The decision this reading completes, if it completes a scored window."""
        spec = self.spec
        reading = np.asarray(reading, dtype=np.float64)
        if reading.shape != (len(spec.columns),):
            raise InputError(f"row {self.rows + 1}: {reading.size} values, expected {len(spec.columns)}")
        if not np.isfinite(reading).all():
            raise InputError(f"row {self.rows + 1}: NaN or infinite value")
        i, self.rows = self.rows, self.rows + 1
        if i < spec.startup_rows:
            self.startup.append(reading)
            if self.rows == spec.startup_rows:
                self._calibrate()
            return None
        if spec.startup_rows == 0 and i == 0:
            self._calibrate()
        value = ((reading - self.mean) / self.std).astype(np.float32) if spec.standardise else reading
        if self.ring is None:
            self.ring = np.empty((2 * spec.window, len(spec.columns)), dtype=value.dtype)
        at = (i - spec.startup_rows) % spec.window
        self.ring[at] = self.ring[at + spec.window] = value
        start = i - spec.window + 1
        if start < spec.startup_rows or (start - spec.startup_rows) % spec.stride:
            return None
        window = self.ring[at + 1 : at + 1 + spec.window]  # oldest row first
        score = self.runtime.decision_scores(graph_windows(spec, window[None]))[0]
        return self.runtime.line(score / self.ucl, row=i)

    def _calibrate(self) -> None:
        spec, startup = self.spec, np.asarray(self.startup, dtype=np.float64).reshape(-1, len(self.spec.columns))
        if spec.standardise:
            self.mean, self.std = scaler(startup)
        if self.runtime.manifest.threshold.policy == "session_ucl":
            z = ((startup - self.mean) / self.std).astype(np.float32) if spec.standardise else startup
            self.ucl = self.runtime.ucl(_startup(spec, z))

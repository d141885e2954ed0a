"""The release manifest, schema version 2: everything a device needs to reproduce the platform's
decision, stated rather than implied by code. The platform builds its manifests with these types
and the channel publishes their JSON Schema (``json_schema()``) beside the releases; a device
validates every manifest it reads against them. Version 1 manifests (the sink's first releases)
still read, as the image input they describe.

The input says what a device feeds and how it becomes the graph's input:

- ``image``: an image file, converted to ``color`` and resized to ``size`` (``resample``),
  divided by ``divide_by`` as float32, laid out NCHW;
- ``rows``: CSV rows of ``columns``, one sample per row, as float32;
- ``windows``: a series, CSV rows of ``columns`` read one at a time (a session), cut into windows
  of ``window`` rows every ``stride`` rows; the session's first ``startup_rows`` rows calibrate it
  (their mean and standard deviation standardise the series when ``standardise``) and no window
  that starts in them is scored; each window optionally becomes a log spectrogram
  (``spectrogram``). A window's score and decision belong to its last row (``score_row``);
- ``tensor``: the graph's own input, float32 of ``shape`` (no preprocessing on the device).

The decision is ``decision_output >= threshold.threshold``. Where ``threshold.policy`` is
``session_ucl`` scores are first divided by the session's upper control limit: for windows the
device computes it itself, ``quantile(scores of the windows inside the start-up rows, q) *
factor`` with ``q`` and ``factor`` from ``threshold.params``, exactly the platform's rule.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 2
SCHEMA_FILE = "manifest.schema.json"  # at the channel's root, beside the pipelines


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageInput(_Strict):
    kind: Literal["image"] = "image"
    name: str = "input"
    dtype: Literal["float32"] = "float32"
    shape: list[int | str]  # ["batch", channels, height, width]
    color: Literal["RGB", "L"]
    size: tuple[int, int]  # (width, height) the image is resized to
    resample: Literal["bilinear", "nearest"] = "bilinear"
    divide_by: float = 255.0
    layout: Literal["NCHW"] = "NCHW"

    @property
    def channels(self) -> int:
        return 3 if self.color == "RGB" else 1


class RowsInput(_Strict):
    kind: Literal["rows"] = "rows"
    name: str = "input"
    dtype: Literal["float32"] = "float32"
    shape: list[int | str]  # ["batch", len(columns)]
    columns: list[str]


class Spectrogram(_Strict):
    """A window (one column) as a log-magnitude spectrogram: segments of ``segment`` samples every
    ``hop`` under a periodic Hann window, the first ``frames`` segments and ``frequencies`` bins
    of their real FFT, ``20 log10(|X| + 1e-6)`` dB mapped from ``db_range`` to [0, 1] and
    clipped, laid out (1, frames, frequencies)."""

    segment: int
    hop: int
    frames: int
    frequencies: int
    db_range: tuple[float, float]


class WindowsInput(_Strict):
    kind: Literal["windows"] = "windows"
    name: str = "input"
    dtype: Literal["float32"] = "float32"
    shape: list[int | str]  # ["batch", window, len(columns)], or ["batch", 1, frames, frequencies]
    columns: list[str]
    window: int
    stride: int = 1
    startup_rows: int = 0  # rows that calibrate a session before its first scored window
    standardise: bool = False  # by the start-up rows' mean and population std (a constant column keeps 1)
    spectrogram: Spectrogram | None = None
    score_row: Literal["last"] = "last"  # a window's score and decision belong to its last row


class TensorInput(_Strict):
    kind: Literal["tensor"] = "tensor"
    name: str = "input"
    dtype: Literal["float32"] = "float32"
    shape: list[int | str]  # ["batch", ...]: fed as it is


Input = Annotated[ImageInput | RowsInput | WindowsInput | TensorInput, Field(discriminator="kind")]


class Onnx(_Strict):
    file: str
    sha256: str
    size: int
    opset: int | None = None


class Threshold(BaseModel):
    """The operating point: ``threshold`` on ``decision_output``, chosen by ``policy`` (its
    validation figures beside it)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    policy: str
    threshold: float
    params: dict[str, Any] | None = None


class SmokeTest(_Strict):
    """Raw inputs (what the device feeds, before its preprocessing) and the outputs the platform
    got for them; a release whose outputs differ on the device beyond the tolerance is refused."""

    file: str
    sha256: str
    expected: dict[str, list]
    atol: float = 0.0
    rtol: float = 0.0


class Manifest(BaseModel):
    """One release of ``<pipeline>.<model>`` version ``mlflow_version``. Fields beyond these are
    the platform's evidence (metrics, gates, provenance) and are kept as they are."""

    model_config = ConfigDict(extra="allow", frozen=True)
    schema_version: Literal[2] = SCHEMA_VERSION
    pipeline: str
    model: str
    registered_model: str
    mlflow_version: str
    onnx: Onnx
    input: Input
    outputs: list[str]
    decision_output: str
    threshold: Threshold
    smoke_test: SmokeTest


class ManifestError(ValueError):
    """A manifest a device cannot apply; the message names the field."""


def parse(data: dict | bytes | str) -> Manifest:
    """A manifest of schema version 2, or a version 1 manifest read as the image input it had."""
    raw = json.loads(data) if isinstance(data, bytes | str) else dict(data)
    if raw.get("schema_version") == 1:
        raw = _from_v1(raw)
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        errors = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()[:5])
        raise ManifestError(f"manifest of {raw.get('registered_model', '?')}: {errors}") from None


def _from_v1(raw: dict) -> dict:
    """Version 1 described only the sink's frames: RGB, resized, scaled by 1/255, NCHW."""
    inp, pre = raw.get("input", {}), raw.get("input", {}).get("preprocessing")
    if not pre:
        raise ManifestError(f"manifest v1 of {raw.get('registered_model', '?')} has no input.preprocessing")
    width, height = pre["resize"]
    image = {
        "name": inp.get("name", "input"),
        "shape": inp.get("shape", ["batch", 3, height, width]),
        "color": pre.get("color", "RGB"),
        "size": (width, height),
        "resample": pre.get("resample", "bilinear"),
    }
    return {**raw, "schema_version": 2, "input": {"kind": "image", **image}}


def json_schema() -> dict:
    return Manifest.model_json_schema()

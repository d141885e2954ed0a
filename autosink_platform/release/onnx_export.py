"""The one ONNX path every model ships through: export with a dynamic batch, the onnxruntime
runner that scores what ships (on the platform and in the release gates), and the parity check
between PyTorch and that runner."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

if TYPE_CHECKING:
    import torch
    from torch import nn

INPUT_NAME = "input"  # one name for images, rows and windows; graphs exported before read theirs
OPSET = 18
MAX_BATCH = 65536


def export_onnx(
    module: nn.Module, example: torch.Tensor, path: str | os.PathLike, output_names: list[str], max_batch=MAX_BATCH
) -> Path:
    """Export ``module`` (NamedTuple outputs) so that the ONNX output names are its field names."""
    import torch  # here, not at import: scoring what ships (OnnxScorer) needs only onnxruntime

    module.eval()
    logging.getLogger("torch.onnx").setLevel(logging.WARNING)
    with warnings.catch_warnings():  # torch.export's own deprecation chatter on RNN graphs
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", "The tensor attributes .* were assigned during export")
        program = torch.onnx.export(
            module,
            (example,),
            input_names=[INPUT_NAME],
            output_names=output_names,
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=max_batch)},),
            dynamo=True,
            opset_version=OPSET,
            verbose=False,
        )
    program.save(str(path))
    return Path(path)


def frames_input(images: np.ndarray) -> np.ndarray:
    """uint8 frames (N, H, W, 3) -> float32 (N, 3, H, W) in [0, 1]: the image models' input."""
    return np.ascontiguousarray(np.asarray(images).transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)


class OnnxModel:
    """An exported graph run with onnxruntime, the way a device runs it: batches of float32
    input, every output by name as float64. ``prepare`` maps each raw batch to the graph's input
    (e.g. ``frames_input`` for uint8 frames)."""

    def __init__(
        self,
        source: str | os.PathLike | bytes,
        batch_size: int = 1024,
        prepare: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # A local file by path; a model on an object store (a UPath) or in memory by its bytes.
        if not isinstance(source, bytes) and getattr(source, "protocol", "") not in ("", "file", "local"):
            source = source.read_bytes()
        self.session = ort.InferenceSession(
            source if isinstance(source, bytes) else str(source), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.batch_size = batch_size
        self.prepare = prepare or (lambda x: np.ascontiguousarray(x, dtype=np.float32))

    def run(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        outs = [
            self.session.run(None, {self.input_name: self.prepare(inputs[i : i + self.batch_size])})
            for i in range(0, len(inputs), self.batch_size)
        ]
        return {
            name: np.concatenate([o[k] for o in outs]).astype(np.float64) for k, name in enumerate(self.output_names)
        }

    __call__ = run


class OnnxScorer(OnnxModel):
    """An image model run on uint8 frames (N, H, W, 3)."""

    def __init__(self, source: str | os.PathLike | bytes, batch_size: int = 256):
        super().__init__(source, batch_size, frames_input)


@dataclass(frozen=True)
class Tolerance:
    """How far onnxruntime may be from PyTorch: |onnx - torch| <= atol + rtol * max(|torch|, 1e-6)."""

    atol: float = 0.0
    rtol: float = 0.0

    def holds(self, ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> bool:
        return all(
            np.all(np.abs(theirs[k] - ours[k]) <= self.atol + self.rtol * np.maximum(np.abs(ours[k]), 1e-6))
            for k in ours
        )


def parity(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Max absolute and relative difference per output between PyTorch (``ours``) and onnxruntime."""
    if missing := sorted(set(ours) - set(theirs)):
        raise ValueError(f"the ONNX graph has no output(s) {missing}: it has {sorted(theirs)}")
    diff = {k: np.abs(np.asarray(theirs[k], np.float64) - np.asarray(ours[k], np.float64)) for k in ours}
    return {
        "max_abs_diff": {k: float(d.max(initial=0.0)) for k, d in diff.items()},
        "max_rel_diff": {k: float((d / np.maximum(np.abs(ours[k]), 1e-6)).max(initial=0.0)) for k, d in diff.items()},
    }

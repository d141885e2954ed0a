"""ONNX export with a dynamic batch, and the parity gate that checks it against PyTorch."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from autosink_platform.models.training import to_float_tensor

INPUT_NAME = "frames"
OPSET = 18


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, output_names: list[str]) -> Path:
    """Export ``module`` (NamedTuple outputs) so that ONNX output names are its field names."""
    module.eval()
    logging.getLogger("torch.onnx").setLevel(logging.WARNING)
    program = torch.onnx.export(
        module,
        (example,),
        input_names=[INPUT_NAME],
        output_names=output_names,
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
        dynamo=True,
        opset_version=OPSET,
        verbose=False,
    )
    program.save(str(path))
    return Path(path)


class OnnxScorer:
    """Runs an exported model on uint8 frames (N, H, W, 3), the way a device does."""

    def __init__(self, path: str | os.PathLike):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # A local file by path; a model on an object store (a UPath) by its bytes.
        local = getattr(path, "protocol", "") in ("", "file", "local")
        source = str(path) if local else path.read_bytes()
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
        outs = [
            self.session.run(None, {INPUT_NAME: to_float_tensor(images[i : i + batch_size]).numpy()})
            for i in range(0, len(images), batch_size)
        ]
        return {
            name: np.concatenate([o[k] for o in outs]).astype(np.float64) for k, name in enumerate(self.output_names)
        }


@torch.no_grad()
def parity(module: nn.Module, scorer: OnnxScorer, images: np.ndarray, batch_size: int = 256) -> dict[str, float]:
    """Max absolute difference between PyTorch and onnxruntime, per output, over ``images``."""
    module.eval()
    onnx_out = scorer(images, batch_size)
    torch_out: dict[str, list] = {name: [] for name in scorer.output_names}
    for i in range(0, len(images), batch_size):
        out = module(to_float_tensor(images[i : i + batch_size]))
        for name in torch_out:
            torch_out[name].append(getattr(out, name).double().numpy())
    return {name: float(np.max(np.abs(np.concatenate(torch_out[name]) - onnx_out[name]))) for name in torch_out}

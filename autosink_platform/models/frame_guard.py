"""The frame guard: flags frames unlike anything seen in training (fogged lens, covered camera),
so the device can refuse to act on them.

Two calibrated terms, both computed inside the exported module:

1. *novelty*: a convolutional autoencoder on per-channel standardised 32x32 frames. Standardising
   removes lighting level and tint, which vary widely between sessions and would otherwise
   dominate the error. The term is the reconstruction error plus the Mahalanobis distance of the
   code to the training codes. This catches a covered lens, or a scene that was never seen.
2. *low contrast*: standardising also removes contrast, and contrast is what a fogged lens
   destroys. An autoencoder cannot see fog in any case: a hazy frame is smooth, and smooth
   frames are the easiest to reconstruct (we measured fog scoring *below* clear frames on raw,
   mean-scaled and standardised inputs). So contrast (std/mean of a 16x16 downsample, which
   does not depend on lighting level and averages sensor noise away) is compared with the
   training frames.

Each term is divided by its 99th percentile on training frames; ``score`` is the larger of the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from autosink_platform.models.training import FitConfig, FitResult, fit, seed_everything, to_float_tensor

INPUT_SIZE = 64


@dataclass(frozen=True)
class FrameGuardConfig:
    width: int = 16  # channels of the first conv; doubled at each downsampling
    # A global code, not a spatial map: an 8x8 bottleneck copied any smooth image, while 32
    # numbers hold a sink's layout and objects but not a noise field or a fogged blur.
    code_dim: int = 32
    batch_size: int = 64
    max_shift: int = 3  # pixels; camera mounts move a little between sessions
    fit: FitConfig = FitConfig(epochs=15, lr=2e-3, patience=3)


class FrameGuardOutput(NamedTuple):  # field names become the ONNX output names
    score: torch.Tensor  # (B,) max(novelty, low_contrast): the thresholded value
    novelty: torch.Tensor  # (B,) autoencoder term, 1.0 = training 99th percentile
    low_contrast: torch.Tensor  # (B,) contrast term, 1.0 = training 99th percentile


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class ConvAutoencoder(nn.Module):
    """(B, 3, 32, 32) -> code (B, code_dim) -> (B, 3, 32, 32)."""

    def __init__(self, width: int, code_dim: int):
        super().__init__()
        w = width
        self.encoder = nn.Sequential(  # (B, 3, 32, 32) -> (B, 4w, 4, 4) -> (B, code)
            _down(3, w), _down(w, 2 * w), _down(2 * w, 4 * w), nn.Flatten(), nn.Linear(64 * w, code_dim)
        )
        self.decoder = nn.Sequential(  # (B, code) -> (B, 4w, 4, 4) -> (B, 3, 32, 32)
            nn.Linear(code_dim, 64 * w),
            nn.ReLU(),
            nn.Unflatten(1, (4 * w, 4, 4)),
            _up(4 * w, 2 * w),
            _up(2 * w, w),
            _up(w, w),
            nn.Conv2d(w, 3, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.encoder(x)
        return code, self.decoder(code)


def standardise(frames: torch.Tensor) -> torch.Tensor:
    """(B, 3, 64, 64) in [0, 1] -> (B, 3, 32, 32), zero mean and unit std per frame and channel."""
    x = F.avg_pool2d(frames, 2)
    return (x - x.mean(dim=(2, 3), keepdim=True)) / (x.std(dim=(2, 3), keepdim=True) + 0.02)


def contrast(frames: torch.Tensor) -> torch.Tensor:
    """(B, 3, 64, 64) -> (B,) std/mean of a 16x16 downsample, averaged over channels."""
    x = F.avg_pool2d(frames, 4)
    return (x.std(dim=(2, 3)) / (x.mean(dim=(2, 3)) + 0.02)).mean(dim=1)


class FrameGuard(nn.Module):
    """frames (B, 3, 64, 64) float in [0, 1] -> FrameGuardOutput. ``calibrate`` before use."""

    def __init__(self, width: int = 16, code_dim: int = 32):
        super().__init__()
        self.autoencoder = ConvAutoencoder(width, code_dim)
        # Calibration from training frames, part of the state dict and the ONNX graph.
        self.register_buffer("code_mean", torch.zeros(code_dim))
        self.register_buffer("code_precision", torch.eye(code_dim))
        self.register_buffer("recon_median", torch.ones(()))
        self.register_buffer("novelty_q99", torch.ones(()))
        self.register_buffer("contrast_q01", torch.ones(()))

    def reconstruction_loss(self, frames: torch.Tensor) -> torch.Tensor:
        x = standardise(frames)
        return ((self.autoencoder(x)[1] - x) ** 2).mean()

    def _raw_novelty(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = standardise(frames)
        code, recon = self.autoencoder(x)
        error = ((recon - x) ** 2).mean(dim=(1, 2, 3))  # (B,)
        d = code - self.code_mean  # (B, code)
        mahalanobis = ((d @ self.code_precision) * d).sum(dim=1) / d.shape[1]  # (B,)
        return error, code, error / self.recon_median + mahalanobis

    def forward(self, frames: torch.Tensor) -> FrameGuardOutput:
        novelty = self._raw_novelty(frames)[2] / self.novelty_q99
        low_contrast = self.contrast_q01 / contrast(frames).clamp_min(1e-6)
        return FrameGuardOutput(torch.maximum(novelty, low_contrast), novelty, low_contrast)

    @torch.no_grad()
    def calibrate(self, frames: torch.Tensor, batch_size: int = 256) -> None:
        """Fit the reference statistics on training frames (after the autoencoder is trained)."""
        self.eval()
        errors, codes = zip(
            *(self._raw_novelty(frames[i : i + batch_size])[:2] for i in range(0, len(frames), batch_size)), strict=True
        )
        errors, codes = torch.cat(errors), torch.cat(codes).double()
        self.code_mean.copy_(codes.mean(0).float())
        cov = torch.cov(codes.T) + 1e-3 * torch.eye(
            codes.shape[1], dtype=torch.float64
        )  # ridge: codes can be collinear
        self.code_precision.copy_(torch.linalg.inv(cov).float())
        self.recon_median.copy_(errors.median())
        novelty = torch.cat(
            [self._raw_novelty(frames[i : i + batch_size])[2] for i in range(0, len(frames), batch_size)]
        )
        self.novelty_q99.copy_(torch.quantile(novelty, 0.99))
        self.contrast_q01.copy_(torch.quantile(contrast(frames), 0.01))


def train_frame_guard(
    images: dict[str, np.ndarray], cfg: FrameGuardConfig, warm_start: dict | None = None, on_epoch=lambda m: None
) -> tuple[FrameGuard, FitResult]:
    """Trained on every train-split frame (all are ordinary camera frames), then calibrated."""
    gen = seed_everything(cfg.fit.seed)
    model = FrameGuard(cfg.width, cfg.code_dim)
    if warm_start is not None:
        model.load_state_dict(warm_start)
    x = {s: to_float_tensor(images[s]) for s in ("train", "validation")}
    for split, t in x.items():
        if t.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"frame guard expects {INPUT_SIZE}x{INPUT_SIZE} frames, {split} has {tuple(t.shape[-2:])}")

    def train_batches():
        order = torch.randperm(len(x["train"]), generator=gen)
        for i in range(0, len(order), cfg.batch_size):
            dx, dy = torch.randint(-cfg.max_shift, cfg.max_shift + 1, (2,), generator=gen).tolist()
            yield (torch.roll(x["train"][order[i : i + cfg.batch_size]], (dy, dx), dims=(2, 3)),)

    def val_batches():
        for i in range(0, len(x["validation"]), 256):
            yield (x["validation"][i : i + 256],)

    result = fit(
        model,
        lambda m, b: m.reconstruction_loss(b[0]),
        train_batches,
        val_batches,
        cfg.fit,
        on_epoch,
        desc="frame guard",
    )
    model.calibrate(x["train"])
    return model, result

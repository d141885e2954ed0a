"""The frame guard: flags frames the device must not act on (a fogged lens, a covered camera, a
scene unlike anything seen in training), so the device can hold its valve state instead.

Three terms, each computed inside the exported module and each put on one scale: 0 is the
median of ordinary calibration frames, 1 is their ``CALIBRATION_QUANTILE``. ``score``, the
thresholded output, is the larger of the two fault terms (2 and 3), so one threshold serves both.

1. *novelty* (reported, not thresholded): a convolutional autoencoder on per-channel
   standardised 32x32 frames (standardising removes lighting level and tint): reconstruction
   error plus the shrunk Mahalanobis distance of the code to the training codes, calibrated on
   held-out sessions. It tells how unlike the training scenes a frame is, which is a drift
   signal, not a fault: on held-out demo sessions it flagged whole ordinary sessions (a new
   arrangement of dishes is new to it), so a valve that obeyed it would stop working in kitchens
   it had not seen.
2. *haze*: condensation lays a bright veil over the scene: contrast falls and the darkest parts
   of the frame (the drain, dark dishes) are lifted towards the veil, relative to the frame's
   own brightness. An autoencoder cannot see this (a hazy frame is smooth, and smooth frames are
   the easiest to reconstruct), so the term is the sum of two standardised log ratios: low
   contrast (std/mean of a 16x16 downsample) and a raised dark floor (the mean of the darkest
   cells of a 32x32 per-pixel channel minimum, over the frame mean). Neither depends on light level.
3. *structure*: the fixed scene (basin rim, faucet, drain) gives every ordinary frame the same
   edges in nearly the same places, whatever the lighting and whatever is in the basin. The term is
   one minus the correlation of the frame's normalised edge map with the training frames' mean
   edge map: a lens covered by a hand or a cloth hides those edges.

Terms 2 and 3 have no fitted weights beyond their calibration statistics, so they behave the
same on the training sessions as on sessions never seen.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from autosink_platform.models.configs import FrameGuardConfig
from autosink_platform.models.training import FitResult, fit, seed_everything, to_float_tensor

INPUT_SIZE = 64
CALIBRATION_QUANTILE = 0.995  # where each term reads 1.0 on ordinary calibration frames
DARK_CELLS = 8  # of the 32x32 = 1024 cells: the drain alone covers about this many
EPS = 0.02  # of full scale: keeps ratios finite on black frames and damps sensor noise


class FrameGuardOutput(NamedTuple):  # field names become the ONNX output names
    score: torch.Tensor  # (B,) max(haze, structure): the thresholded value
    novelty: torch.Tensor  # (B,) autoencoder term: scene drift, reported only
    haze: torch.Tensor  # (B,) fog term: low contrast and a lifted dark floor
    structure: torch.Tensor  # (B,) covered-lens term: the fixed scene's edges missing


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
    return (x - x.mean(dim=(2, 3), keepdim=True)) / (x.std(dim=(2, 3), keepdim=True) + EPS)


def haze_cues(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, 64, 64) -> (log contrast, log dark floor), each (B,) and independent of light level.

    Contrast: std/mean of a 16x16 downsample (which averages sensor noise away), mean over
    channels. Dark floor: the mean of the ``DARK_CELLS`` darkest cells of the per-pixel channel
    minimum at 32x32, over the frame's mean brightness."""
    x = F.avg_pool2d(frames, 4)  # (B, 3, 16, 16)
    contrast = (x.std(dim=(2, 3)) / (x.mean(dim=(2, 3)) + EPS)).mean(dim=1)
    darkest = F.avg_pool2d(frames, 2).amin(dim=1).flatten(1)  # (B, 1024)
    floor = (-torch.topk(-darkest, DARK_CELLS, dim=1).values).mean(dim=1)  # (B,)
    return torch.log(contrast + 1e-4), torch.log((floor + EPS) / (frames.mean(dim=(1, 2, 3)) + EPS))


def edge_map(frames: torch.Tensor) -> torch.Tensor:
    """(B, 3, 64, 64) -> (B, 31, 31) grey-level gradient magnitude at 32x32, mean 1 per frame."""
    g = F.avg_pool2d(frames, 2).mean(dim=1)  # (B, 32, 32)
    m = (g[:, 1:, :-1] - g[:, :-1, :-1]).abs() + (g[:, :-1, 1:] - g[:, :-1, :-1]).abs()  # (B, 31, 31)
    return m / (m.mean(dim=(1, 2), keepdim=True) + 1e-4)


def _tail_scaled(raw: torch.Tensor, median: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
    """0 at the calibration median, 1 at its tail quantile."""
    return (raw - median) / (tail - median).clamp_min(1e-6)


class FrameGuard(nn.Module):
    """frames (B, 3, 64, 64) float in [0, 1] -> FrameGuardOutput. ``calibrate`` before use."""

    def __init__(self, width: int = 16, code_dim: int = 32):
        super().__init__()
        self.autoencoder = ConvAutoencoder(width, code_dim)
        # Calibration statistics: part of the state dict and of the ONNX graph.
        self.register_buffer("code_mean", torch.zeros(code_dim))
        self.register_buffer("code_precision", torch.eye(code_dim))
        self.register_buffer("recon_median", torch.ones(()))
        self.register_buffer("haze_centre", torch.zeros(2))  # medians of (-log contrast, log floor)
        self.register_buffer("haze_spread", torch.ones(2))  # and their standard deviations
        self.register_buffer("edge_template", torch.zeros(31, 31))  # centred mean edge map
        self.register_buffer("median", torch.zeros(3))  # per term: novelty, haze, structure
        self.register_buffer("tail", torch.ones(3))

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

    def _raw_haze(self, frames: torch.Tensor) -> torch.Tensor:
        log_contrast, log_floor = haze_cues(frames)
        cues = torch.stack([-log_contrast, log_floor], dim=1)  # (B, 2): both rise with fog
        return ((cues - self.haze_centre) / self.haze_spread).sum(dim=1)

    def _raw_structure(self, frames: torch.Tensor) -> torch.Tensor:
        m = edge_map(frames)
        m = m - m.mean(dim=(1, 2), keepdim=True)
        t = self.edge_template
        corr = (m * t).sum(dim=(1, 2)) / ((m * m).sum(dim=(1, 2)).sqrt() * (t * t).sum().sqrt() + 1e-6)
        return 1 - corr

    def _raw_terms(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, 64, 64) -> (B, 3): novelty, haze, structure before scaling."""
        return torch.stack([self._raw_novelty(frames)[2], self._raw_haze(frames), self._raw_structure(frames)], dim=1)

    def forward(self, frames: torch.Tensor) -> FrameGuardOutput:
        terms = _tail_scaled(self._raw_terms(frames), self.median, self.tail)  # (B, 3)
        return FrameGuardOutput(terms[:, 1:].amax(dim=1), terms[:, 0], terms[:, 1], terms[:, 2])

    @torch.no_grad()
    def calibrate(
        self, train: torch.Tensor, reference: torch.Tensor, shrinkage: float = 0.5, batch_size: int = 256
    ) -> None:
        """Fit the reference statistics (after the autoencoder is trained).

        1. Code mean and shrunk precision, reconstruction median, haze cue centres and spreads, and
           the edge template, from the training frames.
        2. Each term's median and tail quantile: novelty on ``reference`` frames only (held-out
           sessions; see the module docstring), haze and structure on training and reference frames.
        """
        self.eval()

        def batched(fn, frames):
            return torch.cat([fn(frames[i : i + batch_size]) for i in range(0, len(frames), batch_size)])

        # 1.
        both_parts = [self._raw_novelty(train[i : i + batch_size])[:2] for i in range(0, len(train), batch_size)]
        errors, codes = torch.cat([e for e, _ in both_parts]), torch.cat([c for _, c in both_parts]).double()
        self.code_mean.copy_(codes.mean(0).float())
        cov = torch.cov(codes.T)
        cov = (1 - shrinkage) * cov + shrinkage * torch.diag(torch.diag(cov))
        cov += 1e-3 * torch.eye(codes.shape[1], dtype=torch.float64)  # ridge: codes can be collinear
        self.code_precision.copy_(torch.linalg.inv(cov).float())
        self.recon_median.copy_(errors.median())
        cues = batched(lambda f: torch.stack(haze_cues(f), dim=1), train) * torch.tensor([-1.0, 1.0])
        self.haze_centre.copy_(cues.median(dim=0).values)
        self.haze_spread.copy_(cues.std(dim=0))
        template = batched(edge_map, train).mean(dim=0)
        self.edge_template.copy_(template - template.mean())
        # 2.
        both = torch.cat([train, reference])
        novelty = batched(lambda f: self._raw_novelty(f)[2], reference)
        haze, structure = batched(self._raw_haze, both), batched(self._raw_structure, both)
        for i, raw in enumerate((novelty, haze, structure)):
            self.median[i] = raw.median()
            self.tail[i] = torch.quantile(raw, CALIBRATION_QUANTILE)


def train_frame_guard(
    images: dict[str, np.ndarray], cfg: FrameGuardConfig, warm_start: dict | None = None, on_epoch=lambda m: None
) -> tuple[FrameGuard, FitResult]:
    """The autoencoder trained on every train-split frame (all are ordinary camera frames), then
    the guard calibrated on train and validation frames."""
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
        cfg.fit if warm_start is None else cfg.finetune,
        on_epoch,
        desc="frame guard",
    )
    model.calibrate(x["train"], x["validation"], cfg.covariance_shrinkage)
    return model, result

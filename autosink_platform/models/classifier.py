"""The valve classifier: a small convolutional network trained from scratch on labeled frames.

Whether the water should run depends on *where* something is: under the spout or beside it.
So the network keeps the layout: four conv blocks take a 64x64 frame to a 4x4 grid of features,
and the head reads that grid as it is (flattened), not averaged over it. Backbones that end in
global average pooling (the torchvision families, available through ``arch``) must recover the
position from border effects; on the demo fleet they learned scene shortcuts instead (dishes put
aside read as "open") and failed on sessions they had not seen."""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from autosink_platform.models.configs import ClassifierConfig
from autosink_platform.models.training import FitResult, fit, seed_everything, to_float_tensor


class ClassifierOutput(NamedTuple):  # field names become the ONNX output names
    logit: torch.Tensor  # (B,)
    valve_open_prob: torch.Tensor  # (B,)


def _block(cin: int, cout: int) -> nn.Sequential:
    # ReLU commutes with max pooling, so pooling first gives the same function with the ReLU on a
    # quarter of the values (parameter names are unchanged: ReLU and pooling have none).
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.MaxPool2d(2), nn.ReLU()
    )


class ValveCNN(nn.Module):
    """(B, 3, 64, 64) -> (B, 1) logit, keeping the spatial layout up to the head."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        w = width
        self.features = nn.Sequential(  # (B, 3, 64, 64) -> (B, 4w, 4, 4)
            _block(3, w), _block(w, 2 * w), _block(2 * w, 4 * w), _block(4 * w, 4 * w)
        )
        # One linear map of the whole grid: a hidden ReLU layer here died in the first steps on
        # some seeds (every unit negative), leaving a network that predicts the class prior.
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(64 * w, 1))  # (B, 4w, 4, 4) -> (B, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def backbone(cfg: ClassifierConfig) -> nn.Module:
    if cfg.arch == "valve_cnn":
        return ValveCNN(cfg.width, cfg.dropout)
    import torchvision  # imported when used: it pulls in torch's compiler stack, slow to load in every run

    return torchvision.models.get_model(cfg.arch, weights=None, num_classes=1)


class ValveClassifier(nn.Module):
    """frames (B, 3, H, W) float in [0, 1] -> ClassifierOutput. Normalisation is inside the
    module, so the device only scales pixels to [0, 1]."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.backbone = backbone(cfg)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, frames: torch.Tensor) -> ClassifierOutput:
        logit = self.backbone((frames - self.mean) / self.std).squeeze(1)  # (B, 1) -> (B,)
        return ClassifierOutput(logit, torch.sigmoid(logit))


@cache
def _augment():
    from torchvision.transforms import v2  # see backbone()

    return v2.Compose(
        [
            # The scene is symmetric about the faucet, so a mirrored frame keeps its label; it doubles
            # the layouts of dishes put aside.
            v2.RandomHorizontalFlip(),
            v2.RandomAffine(degrees=0, translate=(0.04, 0.04)),  # camera mounts shift a little
            # Kitchen light varies about threefold between a dim evening and a sunny morning, more
            # than the training sessions span: a narrower range left dim sessions misread.
            v2.ColorJitter(brightness=(0.5, 1.5), contrast=0.2, saturation=0.2, hue=0.02),
        ]
    )


def focal_loss(logit: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, gamma: float) -> torch.Tensor:
    """Binary cross-entropy scaled by (1 - p_t)^gamma, weighted per sample (label confidence);
    gamma = 0 is plain weighted cross-entropy."""
    ce = F.binary_cross_entropy_with_logits(logit, target, reduction="none")
    p = torch.sigmoid(logit)
    p_t = target * p + (1 - target) * (1 - p)
    return (weight * (1 - p_t) ** gamma * ce).mean()


def train_classifier(
    images: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    weights: dict[str, np.ndarray],
    cfg: ClassifierConfig,
    warm_start: dict | None = None,
    on_epoch=lambda m: None,
) -> tuple[ValveClassifier, FitResult]:
    """``images[split]`` uint8 (N, H, W, 3); labels 0/1; weights = label confidence."""
    seed_everything(cfg.fit.seed)  # the initial weights
    model = ValveClassifier(cfg)
    if warm_start is not None:
        model.load_state_dict(warm_start)
    gen = seed_everything(cfg.fit.seed)  # batch order, augmentation and dropout
    x = {s: to_float_tensor(images[s]) for s in ("train", "validation")}
    y = {s: torch.as_tensor(labels[s], dtype=torch.float32) for s in ("train", "validation")}
    w = {s: torch.as_tensor(weights[s], dtype=torch.float32) for s in ("train", "validation")}

    augment = _augment()

    def train_batches():
        order = torch.randperm(len(x["train"]), generator=gen)
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            yield torch.stack([augment(img) for img in x["train"][idx]]), y["train"][idx], w["train"][idx]

    def val_batches():
        for i in range(0, len(x["validation"]), 256):
            sl = slice(i, i + 256)
            yield x["validation"][sl], y["validation"][sl], w["validation"][sl]

    schedule, gamma = (cfg.fit, cfg.focal_gamma) if warm_start is None else (cfg.finetune, cfg.finetune_focal_gamma)

    def loss_fn(m, batch):
        frames, target, weight = batch
        return focal_loss(m(frames).logit, target, weight, gamma)

    result = fit(model, loss_fn, train_batches, val_batches, schedule, on_epoch, desc="valve classifier")
    return model, result

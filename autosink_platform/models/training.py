"""One training loop for every torch model: seeded, early-stopped on validation loss, best
weights restored, per-epoch metrics handed to a callback (MLflow logging lives outside)."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from autosink_platform.models.configs import FitConfig


class PrimaryOutput(nn.Module):
    """The logged MLflow model returns the decision output alone, so ``pyfunc.predict`` gives scores."""

    def __init__(self, module: nn.Module, field: str):
        super().__init__()
        self.module, self.field = module, field

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return getattr(self.module(frames), self.field)


@dataclass
class FitResult:
    history: list[dict]
    best_epoch: int
    stopped_early: bool
    samples_per_epoch: int = 0  # examples the training steps saw in one epoch


def autocast_for(cfg: FitConfig) -> torch.autocast:
    """The autocast context a training step runs under (a no-op for fp32)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16")


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def fit(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, tuple], torch.Tensor],
    train_batches: Callable[[], Iterable[tuple]],
    val_batches: Callable[[], Iterable[tuple]],
    cfg: FitConfig,
    on_epoch: Callable[[dict], None] = lambda metrics: None,
    desc: str = "train",
) -> FitResult:
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    best_loss, best_state, best_epoch, history = float("inf"), None, 0, []
    bar = tqdm(range(1, cfg.epochs + 1), desc=desc, unit="epoch", disable=None)
    autocast = autocast_for(cfg)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    for epoch in bar:
        model.train()
        total, n = 0.0, 0
        for batch in train_batches():
            opt.zero_grad()
            with autocast:
                loss = loss_fn(model, batch)
            loss.backward()
            opt.step()
            total, n = total + loss.item() * len(batch[0]), n + len(batch[0])
        sched.step()
        model.eval()
        with torch.no_grad():
            val = [(loss_fn(model, b).item(), len(b[0])) for b in val_batches()]
        val_loss = sum(v * k for v, k in val) / sum(k for _, k in val)
        metrics = {"epoch": epoch, "train_loss": total / n, "val_loss": val_loss}
        history.append(metrics)
        on_epoch(metrics)
        bar.set_postfix(train=f"{total / n:.4f}", val=f"{val_loss:.4f}")
        if cfg.keep == "last":
            best_epoch = epoch
        elif val_loss < best_loss - 1e-6:
            best_loss, best_state, best_epoch = val_loss, copy.deepcopy(model.state_dict()), epoch
        elif epoch - best_epoch >= cfg.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.to(memory_format=torch.contiguous_format).eval()
    return FitResult(history, best_epoch, stopped_early=len(history) < cfg.epochs, samples_per_epoch=n)


def to_float_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [0, 1]: the input convention of every model."""
    # Dataset images are memory-mapped read-only; torch wants memory it could write to.
    images = np.ascontiguousarray(images) if images.flags.writeable else np.array(images)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


def torch_scorer(module: nn.Module, batch_size: int = 256) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """uint8 frames -> every output of ``module`` (NamedTuple fields) by name, float64, in batches."""

    @torch.no_grad()
    def score(images: np.ndarray) -> dict[str, np.ndarray]:
        module.eval()
        outs = [module(to_float_tensor(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
        return {f: torch.cat([getattr(o, f) for o in outs]).double().numpy() for f in outs[0]._fields}

    return score

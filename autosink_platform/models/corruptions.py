"""Synthetic camera faults the frame guard must flag: a fogged lens and a covered camera.

Both are optical, in front of the sensor, so the sensor's own noise is added after the fault;
a fault that blurred the noise away too would be easy to spot for the wrong reason (and any
reconstruction model would find it *easier* than a clear frame)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

FAULTS = ("fogged", "covered")


def fog(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Condensation: the scene blurred and washed towards a bright haze."""
    blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(rng.uniform(1.5, 3.0))), np.float32)
    alpha = rng.uniform(0.45, 0.8)
    haze = rng.uniform(190, 235)
    return _sensor((1 - alpha) * blurred + alpha * haze, rng)


def cover(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Something on the lens: most of the frame a dark, smooth, skin- or cloth-coloured blur."""
    h, w, _ = image.shape
    colour = np.array([rng.uniform(20, 90), rng.uniform(15, 70), rng.uniform(10, 60)], np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy, r = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h, rng.uniform(0.7, 1.2) * max(h, w)
    mask = (np.hypot(xx - cx, yy - cy) < r).astype(np.float32)[..., None]
    shade = colour * (0.8 + 0.4 * yy[..., None] / h)
    return _sensor(mask * shade + (1 - mask) * image.astype(np.float32), rng)


def _sensor(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The sensor noise of the demo cameras (sigma 2-7 of 255), then 8-bit quantisation."""
    return np.clip(image + rng.normal(0, rng.uniform(2.0, 7.0), image.shape), 0, 255).astype(np.uint8)


def corrupt(images: np.ndarray, fault: str, seed: int) -> np.ndarray:
    """Apply one fault to every image (uint8 (N, H, W, 3)), deterministically for a seed."""
    fn = {"fogged": fog, "covered": cover}[fault]
    rng = np.random.default_rng(seed)
    return np.stack([fn(np.asarray(img), rng) for img in images])

"""Per-frame statistics of a dataset's images: quality (brightness, contrast, sharpness,
saturation) and content (how much of the basin is covered by foreground, and how much of that
foreground is skin-coloured). The quality gates, the drift check and the release stage's case
slices all read these columns.

Foreground is what differs in colour from the bare basin, whose colour each frame gives itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

QUALITY_COLUMNS = ("brightness", "contrast", "sharpness", "saturated")


@dataclass(frozen=True)
class ContentConfig:
    # The basin region the objectness score looks at, as fractions of the frame (x0, y0, x1, y1).
    basin_roi: tuple[float, float, float, float] = (0.2, 0.45, 0.8, 0.88)
    colour_bin: int = 16  # grey levels per colour bin when finding the bare basin's colour
    foreground_delta: float = 0.25  # colour change, relative to the basin's brightness, that is foreground


def quality_stats(images: np.ndarray, batch: int = 1024) -> pd.DataFrame:
    """Per-frame brightness, contrast, sharpness (variance of the Laplacian) and saturated share."""
    rows = []
    for i in range(0, len(images), batch):
        x = np.asarray(images[i : i + batch], dtype=np.float32)  # (B, H, W, 3)
        grey = x.mean(axis=3)
        lap = grey[:, 1:-1, 1:-1] * 4 - grey[:, :-2, 1:-1] - grey[:, 2:, 1:-1] - grey[:, 1:-1, :-2] - grey[:, 1:-1, 2:]
        rows.append(
            pd.DataFrame(
                {
                    "brightness": grey.mean(axis=(1, 2)),
                    "contrast": grey.std(axis=(1, 2)),
                    "sharpness": lap.var(axis=(1, 2)),
                    "saturated": ((x >= 250).all(axis=3) | (x <= 5).all(axis=3)).mean(axis=(1, 2)),
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def _is_skin(x: np.ndarray) -> np.ndarray:
    """Skin-coloured pixels by the classic YCrCb box (Cr 133-173, Cb 77-127), any skin tone."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cr, cb = 128 + 0.713 * (r - y), 128 + 0.564 * (b - y)
    return (cr >= 133) & (cr <= 173) & (cb >= 77) & (cb <= 127) & (y > 30)


def content_stats(images: np.ndarray, cfg: ContentConfig = ContentConfig(), batch: int = 512) -> pd.DataFrame:
    """Per frame: ``objectness`` (share of the basin region whose colour differs from the bare
    basin's) and ``skin_share`` (share of that foreground that is skin-coloured: hands, not dishes).

    The bare basin's colour is the frame's own most common colour in the region (coarse colour
    bins), so light level, tint and camera offsets need no calibration; it holds while the bare
    basin is the largest single-coloured area, which dishes of many colours rarely hide."""
    n, h, w = images.shape[:3]
    x0, y0, x1, y1 = cfg.basin_roi
    rows, cols = slice(int(y0 * h), int(y1 * h)), slice(int(x0 * w), int(x1 * w))
    objectness = np.zeros(n, dtype=np.float32)
    skin = np.zeros(n, dtype=np.float32)
    bins = -(-256 // cfg.colour_bin)
    for i in range(0, n, batch):
        roi = np.asarray(images[i : i + batch, rows, cols], dtype=np.float32).reshape(
            -1, (rows.stop - rows.start) * (cols.stop - cols.start), 3
        )
        b = len(roi)
        q = (roi // cfg.colour_bin).astype(np.int64)
        codes = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]  # (B, P)
        offset = np.arange(b)[:, None] * bins**3
        counts = np.bincount((codes + offset).ravel(), minlength=b * bins**3).reshape(b, -1)
        mode = counts.argmax(axis=1)
        in_mode = codes == mode[:, None]
        basin = (roi * in_mode[..., None]).sum(axis=1) / in_mode.sum(axis=1)[:, None]  # (B, 3)
        delta = (np.abs(roi - basin[:, None, :]) / np.maximum(basin.mean(axis=1), 1.0)[:, None, None]).max(axis=2)
        fg = delta > cfg.foreground_delta
        objectness[i : i + b] = fg.mean(axis=1)
        skin[i : i + b] = (fg & _is_skin(roi)).sum(axis=1) / np.maximum(fg.sum(axis=1), 1)
    return pd.DataFrame({"objectness": objectness, "skin_share": skin})


def image_stats(images: np.ndarray, cfg: ContentConfig = ContentConfig()) -> pd.DataFrame:
    """Quality and content statistics, one row per image (each row depends on its image alone)."""
    return pd.concat([quality_stats(images), content_stats(images, cfg)], axis=1)


def frame_stats(table: pd.DataFrame, images: np.ndarray, cfg: ContentConfig = ContentConfig()) -> pd.DataFrame:
    """Quality and content statistics, one row per row of ``table`` (same order as ``images``)."""
    if len(table) != len(images):
        raise ValueError(f"frame_stats: {len(table)} table rows but {len(images)} images")
    return image_stats(images, cfg).set_index(table.index)

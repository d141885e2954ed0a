"""Quality gates on a validated dataset: plain functions, each returning a CheckOutcome.

An ERROR stops training (the Dagster checks are blocking); a WARNING is shown and lets it go.
Every bound is configuration (DatasetChecksConfig), with defaults that a healthy demo lake passes
with room to spare and that purpose-made bad datasets trip.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from autosink_platform.validation.frame_stats import frame_stats
from autosink_platform.validation.schemas import SPLITS

ERROR, WARNING = "ERROR", "WARNING"


@dataclass(frozen=True)
class DatasetChecksConfig:
    min_labeled_per_class: int = 20  # per split: fewer and the split's metrics are noise
    positive_share: tuple[float, float] = (0.1, 0.9)  # train split, among labeled frames
    # Implicit labels repeat the old model: with almost no human signal it would learn itself.
    # Sparse feedback is normal (most of a demo lake's labels are weak), so only near-total blocks.
    max_weak_label_share: float = 0.98
    max_blank_share: float = 0.05  # frames with almost no contrast (lens covered, camera off)
    blank_std: float = 4.0  # grey levels: below this a frame is blank
    max_cross_split_duplicates: float = 0.02  # share of validation+test frames whose hash is in train
    device_disjoint: bool = False  # splits are by session; a device in several splits only warns
    # Drift against the data the champion was trained on (population stability index): the usual
    # reading is < 0.1 stable, 0.1-0.25 moderate (warning), > 0.25 major (error).
    psi_warn: float = 0.1
    psi_error: float = 0.25
    max_label_shift: float = 0.15  # absolute change in the share of "open" labels


@dataclass
class CheckOutcome:
    name: str
    passed: bool
    severity: str
    description: str
    metadata: dict = field(default_factory=dict)


def min_examples(table: pd.DataFrame, cfg: DatasetChecksConfig) -> CheckOutcome:
    counts = {
        f"{split}/{'open' if c else 'closed'}": int(((table["split"] == split) & (table["label"] == c)).sum())
        for split in SPLITS
        for c in (0, 1)
    }
    short = {k: v for k, v in counts.items() if v < cfg.min_labeled_per_class}
    return CheckOutcome(
        "min_examples",
        not short,
        ERROR,
        f"labeled frames per class and split >= {cfg.min_labeled_per_class}" + (f"; short: {short}" if short else ""),
        counts,
    )


def class_balance(table: pd.DataFrame, cfg: DatasetChecksConfig) -> CheckOutcome:
    train = table[(table["split"] == "train") & table["label"].notna()]
    share = float((train["label"] == 1).mean()) if len(train) else float("nan")
    lo, hi = cfg.positive_share
    ok = lo <= share <= hi
    return CheckOutcome(
        "class_balance", ok, ERROR, f"train positive share {share:.3f} within [{lo}, {hi}]", {"positive_share": share}
    )


def no_leakage(table: pd.DataFrame, cfg: DatasetChecksConfig) -> CheckOutcome:
    sessions = table.groupby("session_id")["split"].nunique()
    leaked = sorted(sessions[sessions > 1].index)
    devices = table.groupby("device_id")["split"].nunique()
    shared = sorted(devices[devices > 1].index)
    passed = not leaked and not (cfg.device_disjoint and shared)
    return CheckOutcome(
        "no_leakage",
        passed,
        ERROR,
        f"sessions in several splits: {leaked or 'none'}; devices in several splits: {len(shared)}"
        + (" (allowed)" if shared and not cfg.device_disjoint else ""),
        {"leaked_sessions": len(leaked), "devices_in_several_splits": len(shared)},
    )


def label_sources(table: pd.DataFrame, cfg: DatasetChecksConfig) -> CheckOutcome:
    labeled = table[table["label"].notna()]
    shares = labeled["label_source"].value_counts(normalize=True).to_dict()
    weak = float(shares.get("implicit", 0.0))
    return CheckOutcome(
        "label_sources",
        weak <= cfg.max_weak_label_share,
        ERROR,
        f"weak (implicit) label share {weak:.3f} <= {cfg.max_weak_label_share}",
        {f"share_{k}": float(v) for k, v in shares.items()},
    )


def image_quality(table: pd.DataFrame, stats: pd.DataFrame, cfg: DatasetChecksConfig) -> CheckOutcome:
    """Blank frames gate; every statistic, objectness included, is tabulated against the labels."""
    blank = stats["contrast"] < cfg.blank_std
    share = float(blank.mean())
    label = table["label"].map({0: "closed", 1: "open"}).fillna("unlabeled").to_numpy()
    by_label = stats.assign(label=label).groupby("label").mean().round(3).reset_index()
    return CheckOutcome(
        "image_quality",
        share <= cfg.max_blank_share,
        ERROR,
        f"blank frames {share:.3%} <= {cfg.max_blank_share:.0%}",
        {
            "blank_share": share,
            **{f"mean_{c}": float(stats[c].mean()) for c in stats.columns},
            "by_label": by_label,
        },
    )


def dhash(images: np.ndarray) -> np.ndarray:
    """64-bit difference hash per frame (9x8 grey thumbnail, horizontal gradient signs)."""
    grey = np.asarray(images, dtype=np.float32).mean(axis=3)  # (N, H, W)
    n, h, w = grey.shape
    ys = (np.arange(8) * h // 8)[:, None]
    xs = (np.arange(9) * w // 9)[None, :]
    thumb = grey[:, ys, xs]  # (N, 8, 9) nearest-neighbour thumbnail
    bits = (thumb[:, :, 1:] > thumb[:, :, :-1]).reshape(n, 64)
    return np.ascontiguousarray(np.packbits(bits, axis=1)).view(">u8").ravel()


def near_duplicates(table: pd.DataFrame, hashes: np.ndarray, cfg: DatasetChecksConfig) -> CheckOutcome:
    train = set(hashes[(table["split"] == "train").to_numpy()].tolist())
    held_out = hashes[(table["split"] != "train").to_numpy()]
    share = float(np.mean([h in train for h in held_out.tolist()])) if len(held_out) else 0.0
    return CheckOutcome(
        "near_duplicates",
        share <= cfg.max_cross_split_duplicates,
        WARNING,
        f"validation/test frames with a train frame of the same dHash: {share:.3%}",
        {"share": share},
    )


DRIFT_COLUMNS = ("brightness", "contrast", "sharpness", "objectness")


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``actual`` against ``expected`` (quantile bins of expected)."""
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1)))
    edges[0], edges[-1] = -np.inf, np.inf
    e = np.histogram(expected, edges)[0] / len(expected)
    a = np.histogram(actual, edges)[0] / len(actual)
    e, a = np.clip(e, 1e-4, None), np.clip(a, 1e-4, None)
    return float(np.sum((a - e) * np.log(a / e)))


def _category_psi(expected: pd.Series, actual: pd.Series) -> float:
    cats = sorted(set(expected) | set(actual))
    e = np.clip(expected.value_counts(normalize=True).reindex(cats, fill_value=0).to_numpy(), 1e-4, None)
    a = np.clip(actual.value_counts(normalize=True).reindex(cats, fill_value=0).to_numpy(), 1e-4, None)
    return float(np.sum((a - e) * np.log(a / e)))


def _open_share(table: pd.DataFrame) -> float:
    return float((table["label"] == 1).sum() / max(int(table["label"].notna().sum()), 1))


def drift(
    table: pd.DataFrame,
    stats: pd.DataFrame,
    reference: tuple[pd.DataFrame, pd.DataFrame] | None,
    cfg: DatasetChecksConfig,
) -> CheckOutcome:
    """Image statistics, device mix and label share against the champion's training data."""
    if reference is None:
        return CheckOutcome("drift", True, ERROR, "no champion yet: nothing to compare with", {})
    ref_table, ref_stats = reference
    scores = {f"psi_{c}": psi(ref_stats[c].to_numpy(), stats[c].to_numpy()) for c in DRIFT_COLUMNS}
    scores["psi_device_mix"] = _category_psi(ref_table["device_id"], table["device_id"])
    label_shift = abs(_open_share(table) - _open_share(ref_table))
    worst = max(scores, key=scores.get)
    error = scores[worst] > cfg.psi_error or label_shift > cfg.max_label_shift
    warn = scores[worst] > cfg.psi_warn
    return CheckOutcome(
        "drift",
        not (error or warn),
        ERROR if error else WARNING,
        f"largest PSI {worst} = {scores[worst]:.3f} (warn > {cfg.psi_warn}, error > {cfg.psi_error}); "
        f"open-label share moved {label_shift:.3f} (error > {cfg.max_label_shift})",
        {**scores, "label_shift": label_shift},
    )


def run_all(
    table: pd.DataFrame,
    images: np.ndarray,
    cfg: DatasetChecksConfig,
    reference: tuple[pd.DataFrame, pd.DataFrame] | None = None,
    stats: pd.DataFrame | None = None,
) -> list[CheckOutcome]:
    """Every gate. ``stats`` are the frames' statistics (computed when not given); ``reference``
    is the champion's training data as (table, frame statistics), if there is a champion."""
    stats = frame_stats(table, images) if stats is None else stats
    return [
        min_examples(table, cfg),
        class_balance(table, cfg),
        no_leakage(table, cfg),
        label_sources(table, cfg),
        image_quality(table, stats, cfg),
        near_duplicates(table, dhash(images), cfg),
        drift(table, stats, reference, cfg),
    ]

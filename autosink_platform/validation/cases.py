"""Case validation: a candidate's test metrics per situation (slice), before it may ship.

A pipeline names its slices (for the sink: lighting, device, hands vs dishes, crowded basin);
each model sets a floor on one metric. A release is blocked when any slice group with enough
examples falls below the floor, and automatic promotion also requires that no group does worse
than the champion's on the same frames by more than ``max_regression``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from autosink_platform.thresholds import metrics_at

PASS, BELOW_FLOOR, TOO_FEW = "pass", "below floor", "too few"


@dataclass(frozen=True)
class Slice:
    """A way to cut the test frames into groups: ``assign`` maps frame rows (the dataset table
    joined with its frame statistics) to a group name per row."""

    name: str
    assign: Callable[[pd.DataFrame], pd.Series]
    description: str = ""


@dataclass(frozen=True)
class CaseFloors:
    metric: str = "accuracy"  # higher is better; computed at the release threshold
    floor: float = 0.8  # every group with >= min_examples must reach it
    # Smaller groups are shown but neither block nor count as regressions: at 100 frames an
    # accuracy near 0.85 is known to about +-0.035 (one standard error).
    min_examples: int = 100
    max_regression: float = 0.03  # auto promotion: no group may lose more than this vs the champion


class CaseValidationFailed(RuntimeError):
    def __init__(self, model: str, table: pd.DataFrame):
        self.table = table
        bad = table[table["status"] == BELOW_FLOOR]
        lines = [f"  {r.slice}={r.group}: {r.metric} {r.value:.3f} < {r.floor} (n={r.n})" for r in bad.itertuples()]
        super().__init__(f"{model}: {len(bad)} slice group(s) below the floor\n" + "\n".join(lines))


def slice_table(
    frames: pd.DataFrame,
    scores: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    slices: tuple[Slice, ...],
    floors: CaseFloors,
) -> pd.DataFrame:
    """One row per (slice, group): support, positives, metrics at ``threshold``, the floor and a status.
    ``frames`` has one row per score (the frame each score was computed on)."""
    if not len(frames) == len(scores) == len(labels):
        raise ValueError(f"slice_table: {len(frames)} frames, {len(scores)} scores, {len(labels)} labels")
    scores, labels = np.asarray(scores), np.asarray(labels)
    rows = []
    for sl in slices:
        groups = sl.assign(frames.reset_index(drop=True)).astype(str).to_numpy()
        for group in sorted(set(groups)):
            m = groups == group
            met = metrics_at(scores[m], labels[m], threshold)
            value = met[floors.metric]
            n = int(m.sum())
            status = TOO_FEW if n < floors.min_examples else PASS if value >= floors.floor else BELOW_FLOOR
            rows.append(
                {
                    "slice": sl.name,
                    "group": group,
                    "n": n,
                    "positives": int(labels[m].sum()),
                    "metric": floors.metric,
                    "value": float(value),
                    **{k: float(met[k]) for k in ("precision", "recall", "f1", "fpr")},
                    "floor": floors.floor,
                    "status": status,
                }
            )
    return pd.DataFrame(rows)


def weakest(table: pd.DataFrame) -> pd.Series:
    """The slice group with the lowest metric among those with enough examples to count."""
    counted = table[table["status"] != TOO_FEW]
    return counted.loc[counted["value"].idxmin()]


def check_floors(model: str, table: pd.DataFrame) -> None:
    if (table["status"] == BELOW_FLOOR).any():
        raise CaseValidationFailed(model, table)


def regressions(candidate: pd.DataFrame, champion: pd.DataFrame, floors: CaseFloors) -> list[dict]:
    """Groups (with enough examples) where the candidate is worse than the champion by more than
    ``max_regression``; both tables computed on the same frames."""
    both = candidate.merge(champion, on=["slice", "group"], suffixes=("", "_champion"))
    worse = both[(both["n"] >= floors.min_examples) & (both["value"] < both["value_champion"] - floors.max_regression)]
    return [
        {
            "slice": r.slice,
            "group": r.group,
            "metric": r.metric,
            "candidate": r.value,
            "champion": r.value_champion,
            "n": r.n,
        }
        for r in worse.itertuples()
    ]

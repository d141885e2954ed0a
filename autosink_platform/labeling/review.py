"""Human review: an append-only log of label corrections, applied over the automatic labels,
and the queue of frames most worth a reviewer's time.

Corrections are never overwritten: every one is kept (who, when, old label, new label), and
the latest for a frame wins. A reviewed frame gets ``label_source = "review"`` and confidence 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from autosink_platform.files import AppendLog, location

REVIEW = "review"


@dataclass(frozen=True)
class Correction:
    session_id: str
    frame_index: int
    label: int  # 1: the valve should be open
    reviewer: str
    old_label: int | None
    old_source: str | None
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())


class ReviewLog:
    """``<store>/<pipeline>/reviews/<session_id>.jsonl`` per session, plus ``_log.jsonl`` naming
    the session of every correction in order (what the review sensor follows)."""

    def __init__(self, pipeline_store):
        self.root = location(pipeline_store) / "reviews"

    @property
    def log(self) -> AppendLog:
        return AppendLog(self.root / "_log.jsonl")

    def append(self, correction: Correction) -> None:
        if correction.label not in (0, 1):
            raise ValueError(f"label must be 0 or 1, got {correction.label!r}")
        if not correction.reviewer.strip():
            raise ValueError("a correction needs the reviewer's name")
        AppendLog(self.root / f"{correction.session_id}.jsonl").append(asdict(correction))
        self.log.append({"session_id": correction.session_id, "frame_index": correction.frame_index})

    def for_session(self, session_id: str) -> list[Correction]:
        return [Correction(**c) for c in AppendLog(self.root / f"{session_id}.jsonl").read()[0]]

    def reviewed_sessions_since(self, cursor: str | int | None) -> tuple[list[str], str]:
        entries, cursor = self.log.read(cursor)
        return list(dict.fromkeys(e["session_id"] for e in entries)), cursor

    def reviewed_frames(self) -> set[tuple[str, int]]:
        return {(e["session_id"], e["frame_index"]) for e in self.log.read()[0]}


def apply_reviews(labels: pd.DataFrame, corrections: list[Correction]) -> pd.DataFrame:
    """Reviewed frames take the reviewer's label (the latest correction per frame wins)."""
    out = labels.copy()
    for c in sorted(corrections, key=lambda c: c.at):
        rows = out["frame_index"] == c.frame_index
        if not rows.any():
            raise ValueError(f"correction for frame {c.frame_index} of {c.session_id}: no such frame")
        out.loc[rows, ["label", "label_source", "confidence"]] = [c.label, REVIEW, 1.0]
    return out


def review_queue(
    table: pd.DataFrame, champion_prob: np.ndarray, reviewed: set[tuple[str, int]], limit: int = 200
) -> pd.DataFrame:
    """Frames ranked by the expected value of a review: the chance their label is wrong.

    - labeled frame: the champion's disagreement with the label, discounted by the label's
      confidence (a weak label the champion contradicts comes first);
    - unlabeled frame: the champion's uncertainty (probability near 0.5), at half weight, since
      labeling it adds information but corrects nothing.
    Frames already reviewed are left out.
    """
    label = table["label"].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    labeled = ~np.isnan(label)
    disagreement = np.abs(np.nan_to_num(label) - champion_prob) * (1.0 - table["confidence"].to_numpy() * 0.5)
    uncertainty = 0.5 * (1.0 - np.abs(2.0 * champion_prob - 1.0))
    value = np.where(labeled, disagreement, uncertainty)
    reason = np.where(
        labeled,
        np.where(np.abs(np.nan_to_num(label) - champion_prob) > 0.5, "champion disagrees", "low confidence"),
        "unlabeled, champion unsure",
    )
    queue = table[
        ["session_id", "device_id", "frame_index", "frame_path", "label", "label_source", "confidence"]
    ].copy()
    queue["champion_prob"], queue["value"], queue["reason"] = champion_prob, value, reason
    done = np.array(
        [(s, int(f)) in reviewed for s, f in zip(queue["session_id"], queue["frame_index"], strict=True)], dtype=bool
    )
    return queue[~done].sort_values("value", ascending=False, kind="stable").head(limit).reset_index(drop=True)

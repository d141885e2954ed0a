"""Sparse feedback to dense per-frame labels.

Two signals exist per session: the on-device model's decisions (valve_open / valve_close events,
i.e. a piecewise-constant state) and the user's overrides (user_open / user_close). An override
says the model was wrong just before it and what the right state was, so the frames in a window
around it get the user's state as a *strong* label. A stretch where the model's decision stood
long enough with no override is taken as implicitly accepted: a *weak* label, minus a margin at
both ends because the model reacts late. Everything else (short stretches, overridden stretches,
overlapping overrides that disagree) stays unlabeled rather than guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from autosink_platform.lake.sessions import MODEL_EVENTS, Event

OVERRIDE, IMPLICIT = "override", "implicit"


@dataclass(frozen=True)
class LabelingConfig:
    override_before_s: float = 0.6  # users react within ~0.4-1.2 s; a longer reach crosses the scene change
    override_after_s: float = 0.4  # hands and dishes leave soon after the water is fixed
    strong_confidence: float = 1.0  # at the override itself ...
    strong_edge_confidence: float = 0.8  # ... falling linearly to this at the window's edges
    weak_confidence: float = 0.6
    weak_min_stretch_s: float = 2.0  # shorter unchallenged stretches are too often unnoticed errors
    weak_margin_s: float = 0.6  # decisions lag the scene; the stretch's ends are unreliable


def decisions_per_frame(events: list[Event], n_frames: int, fps: float) -> np.ndarray:
    """The model's valve state at each frame (closed before its first decision)."""
    state = np.zeros(n_frames, dtype=np.int8)
    for e in events:
        if e.type in MODEL_EVENTS:
            k = min(int(round(e.t * fps)), n_frames)
            state[k:] = 1 if e.type == "valve_open" else 0
    return state


def propagate_labels(
    events: list[Event], n_frames: int, fps: float, cfg: LabelingConfig = LabelingConfig()
) -> pd.DataFrame:
    """One row per frame: ``label`` (nullable 0/1), ``label_source``, ``confidence``, ``model_decision``."""
    decision = decisions_per_frame(events, n_frames, fps)
    label = np.full(n_frames, -1, dtype=np.int8)
    source = np.full(n_frames, None, dtype=object)
    confidence = np.zeros(n_frames, dtype=np.float32)

    # 1. Weak labels from unchallenged decision stretches.
    overrides = [
        (int(round(e.t * fps)), 1 if e.type == "user_open" else 0) for e in events if e.type.startswith("user_")
    ]
    override_frames = np.array([k for k, _ in overrides], dtype=int)
    change = np.flatnonzero(np.diff(decision)) + 1
    bounds = np.concatenate([[0], change, [n_frames]])
    margin = int(round(cfg.weak_margin_s * fps))
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        challenged = np.any((override_frames >= start) & (override_frames < stop))
        if challenged or (stop - start) / fps < cfg.weak_min_stretch_s:
            continue
        # The session's first frame is no transition, so it needs no margin.
        lo, hi = (start if start == 0 else start + margin), stop - margin
        label[lo:hi], source[lo:hi], confidence[lo:hi] = decision[start], IMPLICIT, cfg.weak_confidence

    # 2. Strong labels around overrides; they win over weak labels, but two that disagree cancel.
    before, after = int(round(cfg.override_before_s * fps)), int(round(cfg.override_after_s * fps))
    strong = np.full(n_frames, -1, dtype=np.int8)
    strong_conf = np.zeros(n_frames, dtype=np.float32)
    conflict = np.zeros(n_frames, dtype=bool)
    for k, state in overrides:
        # If the model switched away from the user's state inside the window, the error began
        # there: frames before that switch are not covered by this override.
        lo = max(0, k - before, *(int(c) for c in change if c <= k and decision[c - 1] == state))
        hi = min(n_frames, k + after + 1)
        idx = np.arange(lo, hi)
        reach = np.where(idx < k, before, after).clip(min=1)
        conf = cfg.strong_confidence - (cfg.strong_confidence - cfg.strong_edge_confidence) * np.abs(idx - k) / reach
        conflict[idx] |= (strong[idx] >= 0) & (strong[idx] != state)
        strong[idx] = state
        strong_conf[idx] = np.maximum(strong_conf[idx], conf)
    has_strong = strong >= 0
    label[has_strong], source[has_strong], confidence[has_strong] = (
        strong[has_strong],
        OVERRIDE,
        strong_conf[has_strong],
    )
    label[conflict], source[conflict], confidence[conflict] = -1, None, 0.0

    return pd.DataFrame(
        {
            "frame_index": np.arange(n_frames),
            "t": np.arange(n_frames) / fps,
            "label": pd.array(np.where(label >= 0, label, pd.NA), dtype="Int8"),
            "label_source": pd.array(source, dtype="string"),
            "confidence": confidence,
            "model_decision": decision,
        }
    )


def agreement_report(labels: pd.DataFrame, truth: np.ndarray) -> dict[str, float]:
    """Agreement of each label source with the true states, and coverage (share of frames labeled)."""
    out = {"coverage": float(labels["label"].notna().mean())}
    for src in (OVERRIDE, IMPLICIT):
        rows = (labels["label_source"] == src).fillna(False).to_numpy()
        out[f"{src}_frames"] = int(rows.sum())
        out[f"{src}_agreement"] = (
            float(np.mean(labels["label"].to_numpy()[rows].astype(int) == truth[rows])) if rows.any() else float("nan")
        )
    return out

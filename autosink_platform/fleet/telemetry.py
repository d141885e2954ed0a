"""Field telemetry: what devices report they decided, per version, and whether a canary behaves
like the control group.

Each heartbeat carries, per version the device has run, its decision count, positive decisions
and a histogram of score / threshold (``autosink_pi.client.record``). The newest heartbeat per
device is its state. For a rollout in progress the **canary** is the devices whose active version
is the pointer's version and the **control** those on its fallback; their pooled figures are
compared, and the rollout diverges when the positive-decision rates differ by more than
``max_rate_gap`` or the score histograms by more than ``max_score_tv`` (total variation), once
both groups have ``min_decisions``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autosink_platform.files import read_jsonl_from


@dataclass(frozen=True)
class RolloutBounds:
    max_rate_gap: float = 0.15
    max_score_tv: float = 0.5
    min_decisions: int = 200


@dataclass(frozen=True)
class GroupFigures:
    devices: int
    decisions: int
    positive_rate: float | None
    hist: list[float]  # shares per bin (empty when no decision yet)


@dataclass(frozen=True)
class Health:
    state: str  # "healthy", "diverged", "waiting" (too few decisions to judge)
    canary: GroupFigures
    control: GroupFigures
    rate_gap: float | None
    score_tv: float | None
    reason: str


def latest_beats(path) -> dict[tuple[str, str], dict[str, dict]]:
    """The newest heartbeat of each device, per (pipeline, model), from one read of the log."""
    latest: dict[tuple[str, str], dict[str, dict]] = {}
    for beat in read_jsonl_from(path)[0] if path is not None else []:
        latest.setdefault((beat["pipeline"], beat["model"]), {})[beat["device_id"]] = beat
    return latest


def rolling_out(pointer: dict | None) -> bool:
    """Whether a pointer is a staged rollout in progress: a canary below 100% with a fallback."""
    return pointer is not None and pointer["rollout_percent"] < 100 and bool(pointer.get("fallback"))


def figures(beats: dict[str, dict], version: str) -> GroupFigures:
    """Pooled figures of the devices whose active version is ``version``, for that version."""
    group = [b for b in beats.values() if b.get("version") == version]
    decisions = positive = 0
    hist = None
    for beat in group:
        t = (beat.get("telemetry") or {}).get(version)
        if not t:
            continue
        decisions += t["decisions"]
        positive += t["positive"]
        hist = np.asarray(t["hist"], float) if hist is None else hist + np.asarray(t["hist"], float)
    return GroupFigures(
        devices=len(group),
        decisions=decisions,
        positive_rate=positive / decisions if decisions else None,
        hist=(hist / hist.sum()).round(4).tolist() if hist is not None and hist.sum() else [],
    )


def rollout_health(pointer: dict, beats: dict[str, dict], bounds: RolloutBounds = RolloutBounds()) -> Health:
    canary, control = figures(beats, pointer["version"]), figures(beats, pointer["fallback"])
    if min(canary.decisions, control.decisions) < bounds.min_decisions:
        return Health(
            "waiting",
            canary,
            control,
            None,
            None,
            f"{canary.decisions} canary and {control.decisions} control decisions reported; "
            f"{bounds.min_decisions} each are needed to compare",
        )
    gap = abs(canary.positive_rate - control.positive_rate)
    tv = 0.5 * float(np.abs(np.asarray(canary.hist) - np.asarray(control.hist)).sum())
    diverged = []
    if gap > bounds.max_rate_gap:
        diverged.append(
            f"positive decisions {canary.positive_rate:.1%} on v{pointer['version']} vs "
            f"{control.positive_rate:.1%} on v{pointer['fallback']} (gap {gap:.1%} > {bounds.max_rate_gap:.0%})"
        )
    if tv > bounds.max_score_tv:
        diverged.append(f"score distributions differ by {tv:.2f} total variation (> {bounds.max_score_tv})")
    if diverged:
        return Health("diverged", canary, control, gap, tv, "; ".join(diverged))
    return Health("healthy", canary, control, gap, tv, f"rate gap {gap:.1%}, score TV {tv:.2f}: within bounds")

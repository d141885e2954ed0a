"""Promotion is the registry's: the ``champion`` alias in MLflow decides what the fleet runs.

``promote`` and ``rollback`` move the alias and publish at once; ``publish_champions`` makes the
fleet channel follow the alias however it was moved (CLI, MLflow UI, MLflow client), and is what
the registry sensor runs. Every change is appended to the audit log: when, who, from, to, why,
and the evidence (the version's validation figures).
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from autosink_platform.files import append_jsonl, read_jsonl_from
from autosink_platform.fleet.telemetry import RolloutBounds, latest_beats, rolling_out
from autosink_platform.registry.mlflow_registry import CHALLENGER, CHAMPION, Registry
from autosink_platform.release.channel import FleetChannel

STABLE = "stable"


@dataclass(frozen=True)
class PromotionPolicy:
    """Who makes a validated candidate the champion."""

    mode: str = "manual"  # "manual": a person runs `autosink promote`; "auto": see margin
    metric: str = "f1"  # compared on the same test split, champion vs candidate
    margin: float = 0.01  # "auto" promotes only a candidate at least this much better, and only
    # when no case slice regresses (see validation.cases.CaseFloors.max_regression)
    rollout: RolloutBounds = RolloutBounds()  # how far a canary may drift from control before it is halted

    def __post_init__(self):
        if self.mode not in ("manual", "auto"):
            raise ValueError(f"promotion mode must be 'manual' or 'auto', got {self.mode!r}")

    def promotes(self, comparison: dict | None) -> bool:
        """Whether a validated candidate becomes champion on its own, given its comparison
        with the champion on the same test split (None: there is no champion yet)."""
        if comparison is None:
            return True
        return self.mode == "auto" and comparison["delta"] >= self.margin and not comparison.get("slice_regressions")


class PromotionRefused(ValueError):
    """The version cannot become champion (not validated, unknown, nothing to roll back to)."""


class AuditLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def append(self, **entry) -> dict:
        record = {"at": datetime.now(UTC).isoformat(), **entry}
        append_jsonl(self.path, record)
        return record

    def entries(self, model: str | None = None) -> list[dict]:
        return [e for e in read_jsonl_from(self.path)[0] if model is None or e["model"] == model]


def _split(name: str) -> tuple[str, str]:
    pipeline, _, model = name.partition(".")
    if not model:
        raise PromotionRefused(f"model names are <pipeline>.<model>, got {name!r}")
    return pipeline, model


def _evidence(registry: Registry, name: str, version: str) -> dict:
    mv = registry.client.get_model_version(name, version)
    metrics = registry.client.get_run(mv.run_id).data.metrics
    return {
        "dataset_snapshot_id": mv.tags.get("dataset_snapshot_id"),
        "onnx_sha256": mv.tags.get("onnx_sha256"),
        "test": {k.removeprefix("test_"): v for k, v in sorted(metrics.items()) if k.startswith("test_")},
    }


def promote(
    registry: Registry,
    channel: FleetChannel,
    audit: AuditLog,
    name: str,
    version: str | int,
    reason: str,
    who: str | None = None,
    action: str = "promote",
    previous: str | None = ...,
    rollout_percent: int = 100,
) -> dict:
    """Make a validated, released version the champion and point the fleet at it: every device,
    or a canary of ``rollout_percent`` of them while the others stay on the champion before
    (``advance`` widens it, ``halt`` takes it back).

    ``previous`` is what the audit records as "from" (default: the champion before this call)."""
    pipeline, model = _split(name)
    version = str(version)
    if not reason.strip():
        raise PromotionRefused("a promotion needs a reason")
    try:
        mv = registry.client.get_model_version(name, version)
    except Exception as e:  # MlflowException for unknown names/versions
        raise PromotionRefused(f"{name} v{version} does not exist: {e}") from None
    if mv.tags.get("validation_status") != "passed":
        raise PromotionRefused(
            f"{name} v{version} has not passed release validation (status {mv.tags.get('validation_status')!r})"
        )
    if not channel.published(pipeline, model, version):
        raise PromotionRefused(f"{name} v{version} has no release in the fleet channel")
    if previous is ...:
        current = registry.alias_version(name, CHAMPION)
        previous = str(current.version) if current else None
    if rollout_percent < 100 and (previous is None or previous == version):
        raise PromotionRefused(f"{name}: a staged rollout needs a champion before it for the other devices")
    registry.set_alias(name, CHAMPION, version)
    fallback = ... if rollout_percent < 100 else None
    pointer = channel.set_pointer(pipeline, model, STABLE, version, rollout_percent, fallback=fallback)
    return audit.append(
        action=action,
        model=name,
        who=who or getpass.getuser(),
        reason=reason,
        **{"from": previous, "to": version},
        sequence=pointer["sequence"],
        rollout_percent=pointer["rollout_percent"],
        evidence=_evidence(registry, name, version),
    )


ROLLOUT_STEPS = (10, 25, 50, 100)


def _rollout(channel: FleetChannel, name: str) -> tuple[str, str, dict]:
    pipeline, model = _split(name)
    pointer = channel.read_pointer(pipeline, model, STABLE)
    if not rolling_out(pointer):
        raise PromotionRefused(f"{name}: no staged rollout in progress")
    return pipeline, model, pointer


def advance(
    channel: FleetChannel, audit: AuditLog, name: str, reason: str, to: int | None = None, who: str | None = None
) -> dict:
    """Widen the rollout in progress to ``to`` percent (default: the next of 10, 25, 50, 100)."""
    pipeline, model, pointer = _rollout(channel, name)
    now = pointer["rollout_percent"]
    to = to if to is not None else next(p for p in ROLLOUT_STEPS if p > now)
    if not now < to <= 100:
        raise PromotionRefused(f"{name}: the rollout is at {now}%; advance it to more than that, at most 100")
    moved = channel.set_pointer(pipeline, model, STABLE, pointer["version"], to)
    return audit.append(
        action="advance",
        model=name,
        who=who or getpass.getuser(),
        reason=reason,
        **{"from": pointer["version"], "to": pointer["version"]},
        sequence=moved["sequence"],
        rollout_percent=to,
    )


def halt(
    registry: Registry, channel: FleetChannel, audit: AuditLog, name: str, reason: str, who: str | None = None
) -> dict:
    """Stop the rollout in progress: every device goes back to the fallback, which is champion
    again; the halted version and why are kept in the pointer and the version's tags."""
    pipeline, model, pointer = _rollout(channel, name)
    halted, fallback = pointer["version"], pointer["fallback"]
    registry.set_alias(name, CHAMPION, fallback)
    registry.set_tags(name, halted, {"rollout_halted": reason})
    record = {"version": halted, "at_percent": pointer["rollout_percent"], "reason": reason}
    moved = channel.set_pointer(pipeline, model, STABLE, fallback, 100, fallback=None, halted=record)
    return audit.append(
        action="halt",
        model=name,
        who=who or getpass.getuser(),
        reason=reason,
        **{"from": halted, "to": fallback},
        sequence=moved["sequence"],
        rollout_percent=100,
    )


def rollback(
    registry: Registry, channel: FleetChannel, audit: AuditLog, name: str, reason: str, who: str | None = None
) -> dict:
    """Back to the champion before the current one (from the audit log)."""
    current = registry.alias_version(name, CHAMPION)
    history = [e for e in audit.entries(name) if e["to"] == (str(current.version) if current else None) and e["from"]]
    if not history:
        raise PromotionRefused(f"{name}: no earlier champion recorded to roll back to")
    return promote(registry, channel, audit, name, history[-1]["from"], reason, who, action="rollback")


def publish_champions(
    registry: Registry, channel: FleetChannel, audit: AuditLog, names: list[str], who: str
) -> list[dict]:
    """Point each model's stable channel at its champion if it is not there yet (idempotent)."""
    changes = []
    for name in names:
        pipeline, model = _split(name)
        champion = registry.alias_version(name, CHAMPION)
        if champion is None:
            continue
        pointer = channel.read_pointer(pipeline, model, STABLE)
        if pointer is not None and str(champion.version) in (pointer["version"], pointer.get("fallback")):
            continue  # the fallback: a halt moved the alias back and the pointer is following
        changes.append(
            promote(
                registry,
                channel,
                audit,
                name,
                champion.version,
                "champion alias moved in the registry",
                who,
                action="publish",
                previous=pointer["version"] if pointer else None,
            )
        )
    return changes


def status(registry: Registry, channel: FleetChannel, names: list[str], heartbeats: Path | None = None) -> list[dict]:
    """Per model: champion, challenger, the stable channel's version, and fleet adoption."""
    latest = latest_beats(heartbeats)
    rows = []
    for name in names:
        pipeline, model = _split(name)
        champion, challenger = registry.alias_version(name, CHAMPION), registry.alias_version(name, CHALLENGER)
        pointer = channel.read_pointer(pipeline, model, STABLE)
        adoption: dict[str, int] = {}
        for beat in latest.get((pipeline, model), {}).values():
            adoption[str(beat["version"])] = adoption.get(str(beat["version"]), 0) + 1
        rows.append(
            {
                "model": name,
                "champion": str(champion.version) if champion else None,
                "challenger": str(challenger.version) if challenger else None,
                "stable": pointer["version"] if pointer else None,
                "sequence": pointer["sequence"] if pointer else None,
                "rollout_percent": pointer["rollout_percent"] if pointer else None,
                "fallback": pointer.get("fallback") if pointer else None,  # what the rest of the fleet runs
                "adoption": adoption,
            }
        )
    return rows


def format_status(rows: list[dict]) -> str:
    header = f"{'model':22} {'champion':>8} {'challenger':>10} {'stable':>6} {'seq':>4} {'rollout':>7}  fleet adoption (devices per version)"
    lines = [header, "-" * len(header)]
    for r in rows:
        adoption = ", ".join(f"v{v}: {n}" for v, n in sorted(r["adoption"].items())) or "-"
        lines.append(
            f"{r['model']:22} {r['champion'] or '-':>8} {r['challenger'] or '-':>10} {r['stable'] or '-':>6} "
            f"{r['sequence'] or '-':>4} {str(r['rollout_percent'] or '-') + '%':>7}  {adoption}"
            + (f"  (the rest on v{r['fallback']})" if r.get("fallback") else "")
        )
    return "\n".join(lines)

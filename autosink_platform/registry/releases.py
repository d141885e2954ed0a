"""The release path every pipeline's models share, whatever trains them: a registered version is
gated on its case slices, compared with the champion, published once (versions are immutable)
and made challenger, then champion when it is the first or the promotion policy says so."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

import mlflow
from autosink_platform.registry.mlflow_registry import CHALLENGER, Registry
from autosink_platform.registry.promotion import AuditLog, PromotionPolicy, promote
from autosink_platform.release.channel import FleetChannel
from autosink_platform.thresholds import OperatingPoint
from autosink_platform.validation import cases as case_validation


class ReleaseRejected(RuntimeError):
    """A candidate failed a release gate; nothing was published. ``cases`` holds the slice table
    when case validation was the gate."""

    def __init__(self, message: str, cases: pd.DataFrame | None = None):
        super().__init__(message)
        self.cases = cases


@dataclass(frozen=True)
class Release:
    registered_name: str
    version: str
    path: str
    manifest: dict
    aliases: list[str]
    reused: bool
    cases: pd.DataFrame | None = None  # the case-validation slice table (None when reused or not configured)


def registered_name(pipeline: str, model: str) -> str:
    """Every model is registered in MLflow as ``<pipeline>.<model>`` (the fleet layout's two levels)."""
    return f"{pipeline}.{model}"


def flat_metrics(prefix: str, metrics: dict) -> dict[str, float]:
    """The numeric entries of ``metrics`` as MLflow metrics named ``<prefix><key>``."""
    return {f"{prefix}{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def aliases(registry: Registry, name: str, version: str) -> list[str]:
    return sorted(registry.client.get_model_version(name, version).aliases)


def published_release(
    registry: Registry, channel: FleetChannel, pipeline: str, model: str, version: str, op: OperatingPoint
) -> Release | None:
    """The release already published for this version, or None. A published version is never
    rewritten: publishing it again with another operating point is refused."""
    existing = channel.version_dir(pipeline, model, version) / "manifest.json"
    if not existing.exists():
        return None
    manifest = json.loads(existing.read_text())
    name = registered_name(pipeline, model)
    if manifest["threshold"] != asdict(op):
        raise ReleaseRejected(
            f"{name} v{version} is already published with a different threshold; versions are immutable"
        )
    records = manifest.get("case_validation")
    cases = pd.DataFrame(records) if records else None
    return Release(name, version, str(existing.parent), manifest, aliases(registry, name, version), True, cases)


def record_threshold(
    registry: Registry, name: str, version: str, run_id: str, op: OperatingPoint, figures: dict[str, Path], **extra
) -> None:
    """The operating point as the version's ``threshold.json`` (with ``extra`` context), its
    plots, ``val_*`` metrics and the version's ``threshold`` tag."""
    with mlflow.start_run(run_id=run_id):
        mlflow.log_dict(json.loads(op.to_json()) | extra, "threshold.json")
        for path in figures.values():
            mlflow.log_artifact(str(path))
        mlflow.log_metrics(flat_metrics("val_", {k: v for k, v in asdict(op).items() if isinstance(v, float)}))
    registry.set_tags(name, version, {"threshold": json.loads(op.to_json())})


def gate_on_cases(registry: Registry, name: str, version: str, run_id: str, cases: pd.DataFrame) -> None:
    """Log the slice table to the version's run, then refuse the release if a group is below its
    floor (the version is tagged as failed; nothing is published)."""
    with mlflow.start_run(run_id=run_id):
        mlflow.log_table(cases, "case_validation.json")
    try:
        case_validation.check_floors(f"{name} v{version}", cases)
    except case_validation.CaseValidationFailed as e:
        registry.set_tags(name, version, {"validation_status": "failed: case validation"})
        raise ReleaseRejected(str(e), cases) from e


def champion_comparison(
    metric: str,
    champion_version: str,
    candidate: dict,
    theirs: dict,
    candidate_cases: pd.DataFrame | None = None,
    theirs_cases: pd.DataFrame | None = None,
    floors: case_validation.CaseFloors | None = None,
) -> dict:
    """Candidate vs champion on the same test data: the policy's metric overall and, with case
    tables, the slice groups that regressed."""
    out = {
        "metric": metric,
        "champion_version": str(champion_version),
        "candidate": candidate[metric],
        "champion": theirs[metric],
        "delta": candidate[metric] - theirs[metric],
        "champion_metrics": theirs,
    }
    if candidate_cases is not None and theirs_cases is not None:
        out["slice_regressions"] = case_validation.regressions(candidate_cases, theirs_cases, floors)
    return out


def accept_release(
    registry: Registry,
    channel: FleetChannel,
    audit: AuditLog,
    name: str,
    version: str,
    manifest: dict,
    published,
    comparison: dict | None,
    policy: PromotionPolicy,
) -> None:
    """A published release passed validation: tag it, make it the challenger, and promote it
    when it is the first release or the promotion policy says so (audited like any promotion)."""
    registry.set_tags(
        name,
        version,
        {"validation_status": "passed", "onnx_sha256": manifest["onnx"]["sha256"], "release_path": str(published)}
        | ({"vs_champion": {k: v for k, v in comparison.items() if k != "champion_metrics"}} if comparison else {}),
    )
    registry.set_alias(name, CHALLENGER, version)
    if policy.promotes(comparison):
        reason = (
            "first release of this model"
            if comparison is None
            else f"{comparison['metric']} {comparison['candidate']:.4f} beats champion v{comparison['champion_version']}"
            f" ({comparison['champion']:.4f}) by >= {policy.margin}, no case slice regressed"
        )
        promote(
            registry,
            channel,
            audit,
            name,
            version,
            reason,
            who="release stage" if comparison is None else "promotion policy",
        )

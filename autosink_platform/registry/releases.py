"""The release path every pipeline's models share, whatever trains them: a registered version is
gated on its case slices, compared with the champion, published once (versions are immutable)
and made challenger, then champion when it is the first or the promotion policy says so."""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from autosink_pi.client import SyncRefused, smoke_test
from autosink_pi.manifest import Input, ManifestError, parse

from autosink_platform.registry.mlflow_registry import CHALLENGER, Registry
from autosink_platform.registry.promotion import AuditLog, PromotionPolicy, promote
from autosink_platform.release.channel import FleetChannel, sha256_file
from autosink_platform.release.onnx_export import OPSET, Tolerance, parity
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
    if not channel.published(pipeline, model, version):
        return None
    existing = channel.version_dir(pipeline, model, version) / "manifest.json"
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
    import mlflow

    with mlflow.start_run(run_id=run_id):
        mlflow.log_dict(json.loads(op.to_json()) | extra, "threshold.json")
        for path in figures.values():
            mlflow.log_artifact(str(path))
        mlflow.log_metrics(flat_metrics("val_", {k: v for k, v in asdict(op).items() if isinstance(v, float)}))
    registry.set_tags(name, version, {"threshold": json.loads(op.to_json())})


def gate_on_cases(registry: Registry, name: str, version: str, run_id: str, cases: pd.DataFrame) -> None:
    """Log the slice table to the version's run, then refuse the release if a group is below its
    floor (the version is tagged as failed; nothing is published)."""
    import mlflow

    from autosink_platform import plots

    with mlflow.start_run(run_id=run_id), tempfile.TemporaryDirectory() as tmp:
        mlflow.log_table(cases, "case_validation.json")
        mlflow.log_artifact(
            str(plots.case_slices(cases, Path(tmp) / "case_slices.png", f"{name} v{version}: test slices"))
        )
    try:
        case_validation.check_floors(f"{name} v{version}", cases)
    except case_validation.CaseValidationFailed as e:
        registry.set_tags(name, version, {"validation_status": "failed: case validation"})
        raise ReleaseRejected(str(e), cases) from e


def parity_gate(
    name: str, version: str, ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray], tol: Tolerance, on: str
) -> dict[str, dict[str, float]]:
    """Refuse a release whose ONNX graph does not reproduce PyTorch on ``on`` within ``tol``."""
    ours = {k: ours[k] for k in theirs}  # the outputs the graph has (PyTorch may return more)
    diffs = parity(ours, theirs)
    if not tol.holds(ours, theirs):
        raise ReleaseRejected(
            f"{name} v{version}: ONNX differs from PyTorch by {diffs} (> atol {tol.atol}, rtol {tol.rtol}) on {on}"
        )
    return diffs


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


@dataclass(frozen=True)
class Candidate:
    """A registered version that passed its gates, with everything its manifest says and the
    files it ships: the one manifest layout every pipeline's releases have."""

    pipeline: str
    model: str
    version: str
    run_id: str
    onnx_path: Path
    input: Input  # what a device feeds and how it becomes the graph's input (autosink_pi.manifest)
    outputs: list[str]
    decision_output: str
    threshold: OperatingPoint
    metrics: dict  # "test" (and "validation", "protocol" where the pipeline has them)
    parity: dict[str, dict[str, float]]
    smoke: np.ndarray  # raw inputs a device scores before it activates the release
    smoke_file: str
    expected: dict[str, list]
    tolerance: Tolerance
    comparison: dict | None
    cases: pd.DataFrame | None
    dataset_snapshot_id: str
    dagster_run_id: str
    code_version: str
    extra: dict = field(default_factory=dict)  # pipeline-specific entries (family, published reference)

    @property
    def name(self) -> str:
        return registered_name(self.pipeline, self.model)

    def manifest(self, signing_key_id: str, smoke_sha256: str) -> dict:
        """The manifest as the device client's type reads it (``autosink_pi.manifest``, schema 2)."""
        return {
            "schema_version": 2,
            "pipeline": self.pipeline,
            "model": self.model,
            "registered_model": self.name,
            "mlflow_version": self.version,
            "mlflow_run_id": self.run_id,
            **self.extra,
            "onnx": {
                "file": "model.onnx",
                "sha256": sha256_file(self.onnx_path),
                "size": self.onnx_path.stat().st_size,
                "opset": OPSET,
            },
            "input": self.input.model_dump(mode="json"),
            "outputs": self.outputs,
            "decision_output": self.decision_output,
            "threshold": asdict(self.threshold),
            "metrics": self.metrics,
            "vs_champion": self.comparison,
            "case_validation": None if self.cases is None else self.cases.to_dict(orient="records"),
            "parity_max_abs_diff": self.parity["max_abs_diff"],
            "parity_max_rel_diff": self.parity["max_rel_diff"],
            "dataset_snapshot_id": self.dataset_snapshot_id,
            "dagster_run_id": self.dagster_run_id,
            "code_version": self.code_version,
            "signing_key_id": signing_key_id,
            "created_at": datetime.now(UTC).isoformat(),
            "smoke_test": {
                "file": self.smoke_file,
                "sha256": smoke_sha256,
                "expected": self.expected,
                "atol": self.tolerance.atol,
                "rtol": self.tolerance.rtol,
            },
        }


def device_check(candidate: Candidate, manifest: dict, registry: Registry) -> None:
    """Refuse what a device cannot apply: the manifest must read as the device client's type, and
    the client's own runtime (its preprocessing, on onnxruntime) must reproduce the outputs the
    platform got on the smoke inputs. Nothing is published otherwise; the version is tagged."""
    c = candidate
    try:
        smoke_test(c.onnx_path, parse(manifest), c.smoke)
    except (ManifestError, SyncRefused) as e:
        registry.set_tags(c.name, c.version, {"validation_status": "failed: device check"})
        raise ReleaseRejected(f"{c.name} v{c.version}: a device could not apply this release: {e}") from e


def ship(
    candidate: Candidate,
    registry: Registry,
    channel: FleetChannel,
    audit: AuditLog,
    policy: PromotionPolicy,
    workdir: Path,
) -> Release:
    """Publish a candidate: the release files logged to its MLflow run (``release/``) and put
    into the fleet layout with a signed manifest, then accepted (challenger, maybe champion)."""
    import mlflow

    c = candidate
    np.save(workdir / c.smoke_file, c.smoke)
    manifest = c.manifest(channel.key_id, sha256_file(workdir / c.smoke_file))
    device_check(c, manifest, registry)
    (workdir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    files = {
        "model.onnx": c.onnx_path,
        "manifest.json": workdir / "manifest.json",
        c.smoke_file: workdir / c.smoke_file,
    }
    with mlflow.start_run(run_id=c.run_id):
        for path in files.values():
            mlflow.log_artifact(str(path), "release")
        mlflow.log_metrics(
            flat_metrics("test_", c.metrics["test"])
            | flat_metrics("protocol_", c.metrics.get("protocol", {}).get("pooled", {}))
        )
    published = channel.put_version(c.pipeline, c.model, c.version, files)
    accept_release(registry, channel, audit, c.name, c.version, manifest, published, c.comparison, policy)
    return Release(c.name, c.version, str(published), manifest, aliases(registry, c.name, c.version), False, c.cases)

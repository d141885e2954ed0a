"""One model's three assets, the same for every pipeline: ``<model>_model`` (an MLflow model
version), ``<model>_threshold`` (its operating point) and ``<model>_release`` (the signed ONNX
build). A pipeline's lifecycle plugs its train, threshold and release functions in through
``ModelStages``; the asset bodies, metadata and failure reporting are written once, here."""

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from autosink_platform import plots
from autosink_platform.defs.metadata import image_metadata, markdown_table
from autosink_platform.defs.resources import FleetChannelResource, MlflowResource
from autosink_platform.registry.mlflow_registry import Registry
from autosink_platform.registry.promotion import AuditLog
from autosink_platform.registry.releases import Release, ReleaseRejected
from autosink_platform.release.channel import FleetChannel
from autosink_platform.thresholds import OperatingPoint

# Follow a new dataset through to release, but never past a failed blocking check.
FOLLOW_CHECKED_DATASET = dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()


@dataclass(frozen=True)
class ModelStages:
    """What a model's stages do, as its pipeline's lifecycle implements them. ``trained`` values
    have ``registered_name``, ``version``, ``run_id``, ``reused`` and ``history``."""

    pipeline: str
    model: str
    description: str
    code_versions: dict[str, str]  # per stage: model, threshold, release
    # (validated dataset, registry, Dagster run id) -> trained
    train: Callable[[Any, Registry, str], Any]
    # (trained, validated dataset, registry, plot folder) -> (operating point, figures)
    threshold: Callable[[Any, Any, Registry, Path], tuple[OperatingPoint, dict[str, Path]]]
    # (trained, operating point, validated dataset, registry, channel, audit log, Dagster run id) -> release
    release: Callable[[Any, OperatingPoint, Any, Registry, FleetChannel, AuditLog, str], Release]
    train_metadata: Callable[[Any], dict] = lambda trained: {}
    release_metadata: Callable[[Release], dict] = lambda release: {}


def _case_view(cases: pd.DataFrame) -> dg.MetadataValue:
    return markdown_table(cases[["slice", "group", "n", "positives", "metric", "value", "f1", "floor", "status"]])


def _release_metadata(rel: Release) -> dict:
    manifest = rel.manifest
    versus = manifest.get("vs_champion")
    return {
        "mlflow_version": rel.version,
        "aliases": ", ".join(rel.aliases),
        "path": dg.MetadataValue.path(rel.path),
        "onnx_sha256": manifest["onnx"]["sha256"],
        "reused": rel.reused,
        # releases published before every manifest carried it lack it
        **(
            {"parity_max_abs_diff": max(manifest["parity_max_abs_diff"].values())}
            if manifest.get("parity_max_abs_diff")
            else {}
        ),
        **{f"test_{k}": float(v) for k, v in manifest["metrics"]["test"].items()},
        **({"case_validation": _case_view(rel.cases)} if rel.cases is not None else {}),
        **({"slice_regressions_vs_champion": len(versus.get("slice_regressions", []))} if versus else {}),
    }


def model_assets(stages: ModelStages) -> list[dg.AssetsDefinition]:
    s = stages
    prefix = [s.pipeline]
    dataset_key = dg.AssetKey([*prefix, "validated_dataset"])
    model_key, threshold_key = (
        dg.AssetKey([*prefix, f"{s.model}_model"]),
        dg.AssetKey([*prefix, f"{s.model}_threshold"]),
    )
    common = {"key_prefix": prefix, "group_name": s.pipeline, "automation_condition": FOLLOW_CHECKED_DATASET}

    @dg.asset(
        name=f"{s.model}_model",
        code_version=s.code_versions["model"],
        ins={"dataset": dg.AssetIn(dataset_key)},
        kinds={"pytorch", "mlflow"},
        description=s.description,
        **common,
    )
    def trained(context: dg.AssetExecutionContext, dataset, mlflow: MlflowResource) -> dg.Output:
        result = s.train(dataset, mlflow.get(), context.run.run_id)
        if result.reused:
            context.log.info(f"{result.registered_name} v{result.version} was trained on these inputs already: reused")
        metadata = {
            "mlflow_model": result.registered_name,
            "mlflow_version": result.version,
            "mlflow_run_id": result.run_id,
            "reused": result.reused,
            **s.train_metadata(result),
        }
        if result.history:
            with tempfile.TemporaryDirectory() as tmp:
                metadata["training_curves"] = image_metadata(
                    plots.training_curves(
                        result.history, Path(tmp) / "curves.png", f"{result.registered_name} v{result.version}"
                    )
                )
        return dg.Output(result, metadata=metadata)

    @dg.asset(
        name=f"{s.model}_threshold",
        code_version=s.code_versions["threshold"],
        ins={"trained": dg.AssetIn(model_key), "dataset": dg.AssetIn(dataset_key)},
        kinds={"mlflow"},
        **common,
    )
    def threshold(context: dg.AssetExecutionContext, trained, dataset, mlflow: MlflowResource) -> dg.Output:
        """The operating point the model's threshold policy chose, with the figures it gives."""
        with tempfile.TemporaryDirectory() as tmp:
            op, figures = s.threshold(trained, dataset, mlflow.get(), Path(tmp))
            images = {name: image_metadata(path) for name, path in figures.items()}
        point = {k: v for k in ("precision", "recall", "f1", "fpr") if (v := getattr(op, k)) is not None}
        return dg.Output(op, metadata={"policy": op.policy, "threshold": op.threshold, **point, **images})

    @dg.asset(
        name=f"{s.model}_release",
        code_version=s.code_versions["release"],
        ins={"trained": dg.AssetIn(model_key), "op": dg.AssetIn(threshold_key), "dataset": dg.AssetIn(dataset_key)},
        kinds={"onnx", "mlflow"},
        **common,
    )
    def release(
        context: dg.AssetExecutionContext,
        trained,
        op: OperatingPoint,
        dataset,
        mlflow: MlflowResource,
        fleet: FleetChannelResource,
    ) -> dg.Output[Release]:
        """ONNX build checked against PyTorch, evaluated with onnxruntime on test and per case
        slice, compared with the champion, published with its signed manifest."""
        try:
            rel = s.release(trained, op, dataset, mlflow.get(), fleet.get(), fleet.audit(), context.run.run_id)
        except ReleaseRejected as e:  # the slice table belongs in the UI, not only the log
            raise dg.Failure(
                description=str(e),
                metadata={"mlflow_version": trained.version}
                | ({"case_validation": _case_view(e.cases)} if e.cases is not None else {}),
            ) from e
        return dg.Output(rel, metadata=_release_metadata(rel) | s.release_metadata(rel))

    return [trained, threshold, release]

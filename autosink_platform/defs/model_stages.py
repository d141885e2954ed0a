"""One model's three assets, the same for every pipeline and model: ``<model>_model`` (an
MLflow model version), ``<model>_threshold`` (its operating point) and ``<model>_release`` (the
signed ONNX build). The bodies call the one lifecycle (``pipelines.lifecycle``) on the
validated dataset's ``open()``; metadata and failure reporting are written once, here."""

import tempfile
from pathlib import Path

import dagster as dg
import pandas as pd

from autosink_platform.defs.metadata import image_metadata, markdown_table
from autosink_platform.defs.resources import FleetChannelResource, MlflowResource
from autosink_platform.models.contract import Model
from autosink_platform.pipelines import lifecycle
from autosink_platform.pipelines.spec import stage_code_versions
from autosink_platform.registry.releases import Release, ReleaseRejected
from autosink_platform.thresholds import OperatingPoint

PRIORITY_TAG = "dagster/priority"  # every Dagster executor runs the ready step with the highest first

# The queued run coordinator (infra/dagster/dagster.yaml) runs one training run at a time by this tag.
STAGE_TAG = "autosink/stage"
TRAIN_TAGS = {STAGE_TAG: "train"}
# Follow a new dataset through to release, but never past a failed blocking check.
FOLLOW_CHECKED_DATASET = dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()


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
        **{
            f"protocol_{k}": float(v)
            for k, v in manifest["metrics"].get("protocol", {}).get("pooled", {}).items()
            if k in ("f1", "far_percent", "mar_percent")
        },
        **{f"reference_{k}": v for k, v in manifest.get("reference", {}).items() if isinstance(v, float)},
    }


def _train_metadata(t: lifecycle.TrainedModel) -> dict:
    return {
        "mlflow_model": t.registered_name,
        "mlflow_version": t.version,
        "mlflow_run_id": t.run_id,
        "reused": t.reused,
        "warm_started_from": t.warm_started_from or "none",
        **({"best_epoch": t.best_epoch} if t.best_epoch else {}),
        **{k: float(v) for k, v in t.metrics.items() if k in ("train_loss", "val_loss")},
        **({"train_seconds": t.train_seconds} if t.train_seconds is not None else {}),
    }


def model_assets(pipeline, model: Model, priority: int) -> list[dg.AssetsDefinition]:
    """The three assets of one of ``pipeline``'s models. ``priority`` orders the steps of models
    that are ready at once in a run (higher first): a pipeline's first model is the one its fleet
    acts on, so its release need not wait for the other models' training."""
    prefix, versions = [pipeline.name], stage_code_versions(model)
    dataset_key = dg.AssetKey([*prefix, "validated_dataset"])
    model_key, threshold_key = (
        dg.AssetKey([*prefix, f"{model.name}_model"]),
        dg.AssetKey([*prefix, f"{model.name}_threshold"]),
    )
    common = {
        "key_prefix": prefix,
        "group_name": pipeline.name,
        "automation_condition": FOLLOW_CHECKED_DATASET,
        "op_tags": {PRIORITY_TAG: str(priority)},
    }
    description = model.description or f"{model.family} detector, registered as {pipeline.name}.{model.name}"

    @dg.asset(
        name=f"{model.name}_model",
        code_version=versions["model"],
        ins={"dataset": dg.AssetIn(dataset_key)},
        kinds={"pytorch", "mlflow"},
        description=description,
        **common,
    )
    def trained(context: dg.AssetExecutionContext, dataset, mlflow: MlflowResource) -> dg.Output:
        result = lifecycle.train_model(pipeline, model, dataset.open(), mlflow.get(), context.run.run_id)
        if result.reused:
            context.log.info(f"{result.registered_name} v{result.version} was trained on these inputs already: reused")
        metadata = _train_metadata(result)
        if result.history:  # the figure training logged to MLflow, shown as it is (drawn once)
            with tempfile.TemporaryDirectory() as tmp:
                curves = mlflow.get().download(result.run_id, lifecycle.CURVES, tmp)
                metadata["training_curves"] = image_metadata(curves)
        return dg.Output(result, metadata=metadata)

    @dg.asset(
        name=f"{model.name}_threshold",
        code_version=versions["threshold"],
        ins={"trained": dg.AssetIn(model_key), "dataset": dg.AssetIn(dataset_key)},
        kinds={"mlflow"},
        **common,
    )
    def threshold(context: dg.AssetExecutionContext, trained, dataset, mlflow: MlflowResource) -> dg.Output:
        """The operating point the model's threshold policy chose, with the figures it gives."""
        with tempfile.TemporaryDirectory() as tmp:
            op, figures = lifecycle.choose_threshold(pipeline, model, trained, dataset.open(), mlflow.get(), Path(tmp))
            images = {name: image_metadata(path) for name, path in figures.items()}
        point = {k: v for k in ("precision", "recall", "f1", "fpr") if (v := getattr(op, k)) is not None}
        return dg.Output(op, metadata={"policy": op.policy, "threshold": op.threshold, **point, **images})

    @dg.asset(
        name=f"{model.name}_release",
        code_version=versions["release"],
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
            rel = lifecycle.release_model(
                pipeline,
                model,
                trained,
                op,
                dataset.open(),
                mlflow.get(),
                fleet.get(),
                fleet.audit(),
                context.run.run_id,
            )
        except ReleaseRejected as e:  # the slice table belongs in the UI, not only the log
            raise dg.Failure(
                description=str(e),
                metadata={"mlflow_version": trained.version}
                | ({"case_validation": _case_view(e.cases)} if e.cases is not None else {}),
            ) from e
        return dg.Output(rel, metadata=_release_metadata(rel))

    return [trained, threshold, release]

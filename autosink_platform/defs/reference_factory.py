"""Reference pipeline spec -> Dagster assets: the sink pipeline's six stages for detectors on
public datasets (raw files read in place -> samples -> validated dataset -> models ->
thresholds -> releases), with blocking checks on the dataset."""

import tempfile
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from autosink_platform import plots
from autosink_platform.defs.factory import TRAIN_TAGS, fleet_defs
from autosink_platform.defs.metadata import image_metadata, markdown_table, validation_failure, versioned_output
from autosink_platform.defs.resources import FeatureStoreResource, FleetChannelResource, MlflowResource
from autosink_platform.labeling.protocol import PROTOCOL_LABEL, LabeledSamples, label_samples
from autosink_platform.lake.public import DatasetMissing, datasets_root, fingerprint, require
from autosink_platform.pipelines import detector_lifecycle as lifecycle
from autosink_platform.pipelines.spec import DetectorModel, ReferenceSpec, stage_code_versions
from autosink_platform.registry.releases import Release, ReleaseRejected
from autosink_platform.thresholds import OperatingPoint
from autosink_platform.validation.samples import RefDataset, freeze_dataset
from autosink_platform.validation.schemas import DataValidationError
from autosink_platform.validation.splits import snapshot_id

FOLLOW_CHECKED_DATASET = dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()


class ReferenceDataResource(dg.ConfigurableResource):
    """Where the reference datasets are read in place (default: ``$AUTOSINK_DATASETS``, else
    ``../shared/datasets`` beside the repository)."""

    root: str = ""

    def get(self) -> Path:
        return Path(self.root) if self.root else datasets_root()


def _data_assets(spec: ReferenceSpec) -> list[dg.AssetsDefinition]:
    prefix = [spec.name]

    @dg.asset(name="raw_files", key_prefix=prefix, group_name=spec.name, code_version="1", kinds={"numpy"})
    def raw_files(context: dg.AssetExecutionContext, datasets: ReferenceDataResource) -> dg.Output[dict]:
        """The public files this pipeline reads in place, fingerprinted (never copied or changed)."""
        root = datasets.get()
        try:
            paths = require(root, *spec.raw_files)
        except DatasetMissing as e:
            raise dg.Failure(description=str(e)) from e
        prints = fingerprint(paths)
        return versioned_output(
            {"root": str(root), "files": prints},
            snapshot_id(*sorted(f"{k}:{v}" for k, v in prints.items())),
            {
                "root": dg.MetadataValue.path(str(root)),
                "files": markdown_table(
                    pd.DataFrame(
                        [
                            {"file": p.name, "bytes": p.stat().st_size, "sha256": prints[p.name][:16]}
                            for p in sorted(paths)
                        ]
                    )
                ),
            },
        )

    @dg.asset(
        name="labeled_samples",
        key_prefix=prefix,
        group_name=spec.name,
        code_version="1",
        ins={"raw": dg.AssetIn(dg.AssetKey([*prefix, "raw_files"]))},
        kinds={"pandas", "numpy"},
        automation_condition=dg.AutomationCondition.eager(),
    )
    def labeled_samples(
        context: dg.AssetExecutionContext, raw: dict, store: FeatureStoreResource
    ) -> dg.Output[LabeledSamples]:
        """Samples per the pipeline's protocol, labeled from the protocol's own files, each label with
        its source and confidence (as the sink's labels carry them)."""
        return _sample_set_output(
            lambda: label_samples(spec, Path(raw["root"]), store.location()),
            "labels_id",
            label_source=PROTOCOL_LABEL,
        )

    @dg.asset(
        name="validated_dataset",
        key_prefix=prefix,
        group_name=spec.name,
        code_version="2",
        ins={"labeled": dg.AssetIn(dg.AssetKey([*prefix, "labeled_samples"]))},
        kinds={"pandas", "numpy"},
        automation_condition=dg.AutomationCondition.eager(),
    )
    def validated_dataset(
        context: dg.AssetExecutionContext, labeled: LabeledSamples, store: FeatureStoreResource
    ) -> dg.Output[RefDataset]:
        """The labeled samples pandera-validated (provenance included), frozen as a content-hash snapshot."""
        return _sample_set_output(lambda: freeze_dataset(spec, labeled, store.location()), "snapshot_id")

    return [raw_files, labeled_samples, validated_dataset]


def _sample_set_output(build, id_name: str, **extra) -> dg.Output:
    """A data stage's sample set with its content id as the data version; a validation failure
    shows its cases in the UI."""
    try:
        ref = build()
    except DataValidationError as e:
        raise validation_failure(e) from e
    splits = pd.DataFrame([{"split": s, **c} for s, c in ref.counts.items()])
    metadata = {
        id_name: ref.snapshot_id,
        **extra,
        "splits": markdown_table(splits),
        "path": dg.MetadataValue.path(ref.path),
    }
    return versioned_output(ref, ref.snapshot_id, metadata)


REFERENCE_CHECKS = ("min_examples", "finite_inputs", "no_leakage")


def _dataset_checks(spec: ReferenceSpec) -> dg.AssetChecksDefinition:
    key = dg.AssetKey([spec.name, "validated_dataset"])

    @dg.multi_asset_check(
        specs=[dg.AssetCheckSpec(name, asset=key, blocking=True) for name in REFERENCE_CHECKS],
        name=f"{spec.name}_dataset_checks",
        ins={"dataset": dg.AssetIn(key)},
    )
    def reference_dataset_checks(dataset: RefDataset):
        """The protocol's examples per split and class, finite inputs, no sample in two splits."""
        table, X = dataset.load()
        counts = table.groupby(["split", "label"]).size()
        need = max(spec.min_per_split_class, 1)
        short = {
            f"{s}/{lbl}": int(counts.get((s, lbl), 0)) for s, lbl in spec.required if counts.get((s, lbl), 0) < need
        }
        yield dg.AssetCheckResult(
            check_name="min_examples",
            passed=not short,
            description=f"samples per (split, label) >= {need}" + (f"; short: {short}" if short else ""),
            metadata={f"{s}/{lbl}": int(n) for (s, lbl), n in counts.items()},
        )
        bad = int(sum(int((~np.isfinite(X[i : i + 4096])).sum()) for i in range(0, len(X), 4096)))
        yield dg.AssetCheckResult(check_name="finite_inputs", passed=bad == 0, metadata={"non_finite_values": bad})
        dup = table.groupby(["source", "position"])["split"].nunique()
        leaked = int((dup > 1).sum())
        yield dg.AssetCheckResult(
            check_name="no_leakage",
            passed=leaked == 0,
            description=f"samples whose (source, position) is in several splits: {leaked}",
            metadata={"leaked": leaked},
        )

    return reference_dataset_checks


def _model_assets(spec: ReferenceSpec, model: DetectorModel) -> list[dg.AssetsDefinition]:
    prefix, dataset_key = [spec.name], dg.AssetKey([spec.name, "validated_dataset"])
    model_key, threshold_key = (
        dg.AssetKey([*prefix, f"{model.name}_model"]),
        dg.AssetKey([*prefix, f"{model.name}_threshold"]),
    )

    @dg.asset(
        name=f"{model.name}_model",
        key_prefix=prefix,
        group_name=spec.name,
        code_version=stage_code_versions(model)["model"],
        ins={"dataset": dg.AssetIn(dataset_key)},
        kinds={"pytorch", "mlflow"},
        automation_condition=FOLLOW_CHECKED_DATASET,
        description=f"{model.family} detector, registered as {spec.name}.{model.name}",
    )
    def trained(
        context: dg.AssetExecutionContext, dataset: RefDataset, mlflow: MlflowResource
    ) -> dg.Output[lifecycle.TrainedDetector]:
        result = lifecycle.train_detector(spec, model, dataset, mlflow.get(), context.run.run_id)
        metadata = {
            "mlflow_model": result.registered_name,
            "mlflow_version": result.version,
            "mlflow_run_id": result.run_id,
            "reused": result.reused,
            "train_seconds": result.train_seconds,
        }
        if result.history:
            with tempfile.TemporaryDirectory() as tmp:
                metadata["training_curves"] = image_metadata(
                    plots.training_curves(result.history, Path(tmp) / "curves.png", result.registered_name)
                )
        return dg.Output(result, metadata=metadata)

    @dg.asset(
        name=f"{model.name}_threshold",
        key_prefix=prefix,
        group_name=spec.name,
        code_version=stage_code_versions(model)["threshold"],
        ins={"trained": dg.AssetIn(model_key), "dataset": dg.AssetIn(dataset_key)},
        kinds={"mlflow"},
        automation_condition=FOLLOW_CHECKED_DATASET,
    )
    def threshold(
        context: dg.AssetExecutionContext,
        trained: lifecycle.TrainedDetector,
        dataset: RefDataset,
        mlflow: MlflowResource,
    ) -> dg.Output[OperatingPoint]:
        """The operating point (policy per the pipeline spec), as a JSON artifact of the version."""
        with tempfile.TemporaryDirectory() as tmp:
            op, figures = lifecycle.choose_threshold(spec, model, trained, dataset, mlflow.get(), Path(tmp))
            images = {name: image_metadata(path) for name, path in figures.items()}
        return dg.Output(
            op,
            metadata={
                "policy": op.policy,
                "threshold": op.threshold,
                **{k: v for k in ("precision", "recall", "f1", "fpr") if (v := getattr(op, k)) is not None},
                **images,
            },
        )

    @dg.asset(
        name=f"{model.name}_release",
        key_prefix=prefix,
        group_name=spec.name,
        code_version=stage_code_versions(model)["release"],
        ins={"trained": dg.AssetIn(model_key), "op": dg.AssetIn(threshold_key), "dataset": dg.AssetIn(dataset_key)},
        kinds={"onnx", "mlflow"},
        automation_condition=FOLLOW_CHECKED_DATASET,
    )
    def release(
        context: dg.AssetExecutionContext,
        trained: lifecycle.TrainedDetector,
        op: OperatingPoint,
        dataset: RefDataset,
        mlflow: MlflowResource,
        fleet: FleetChannelResource,
    ) -> dg.Output[Release]:
        """ONNX checked against PyTorch, test metrics and case slices with onnxruntime, published."""
        try:
            rel = lifecycle.release_detector(
                spec, model, trained, op, dataset, mlflow.get(), fleet.get(), fleet.audit(), context.run.run_id
            )
        except ReleaseRejected as e:
            raise dg.Failure(
                description=str(e),
                metadata={"mlflow_version": trained.version}
                | ({"case_validation": markdown_table(e.cases)} if e.cases is not None else {}),
            ) from e
        test = rel.manifest["metrics"]["test"]
        protocol = rel.manifest["metrics"].get("protocol", {}).get("pooled", {})
        reference = {f"reference_{k}": v for k, v in spec.reference.items() if isinstance(v, float)}
        return dg.Output(
            rel,
            metadata={
                "mlflow_version": rel.version,
                "aliases": ", ".join(rel.aliases),
                "path": dg.MetadataValue.path(rel.path),
                "onnx_sha256": rel.manifest["onnx"]["sha256"],
                "reused": rel.reused,
                **{f"test_{k}": float(v) for k, v in test.items()},
                **{f"protocol_{k}": float(v) for k, v in protocol.items() if k in ("f1", "far_percent", "mar_percent")},
                **reference,
                **({"case_validation": markdown_table(rel.cases)} if rel.cases is not None else {}),
            },
        )

    return [trained, threshold, release]


def build_reference_defs(spec: ReferenceSpec) -> dg.Definitions:
    assets = _data_assets(spec) + [a for m in spec.models for a in _model_assets(spec, m)]
    job = dg.define_asset_job(
        f"{spec.name}_pipeline",
        selection=dg.AssetSelection.assets(*assets),
        description=f"{spec.description} Raw files to validated release.",
        tags=TRAIN_TAGS,
    )
    return dg.Definitions.merge(
        dg.Definitions(assets=assets, asset_checks=[_dataset_checks(spec)], jobs=[job]),
        fleet_defs(spec.name, [m.name for m in spec.models]),
    )

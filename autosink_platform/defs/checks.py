"""Blocking asset checks on each validated dataset: an ERROR stops the run before training,
and the downstream automation waits for the checks to pass."""

import dagster as dg
import pandas as pd

from autosink_platform.defs.metadata import markdown_table
from autosink_platform.defs.resources import FeatureStoreResource, MlflowResource
from autosink_platform.pipelines.spec import PipelineSpec
from autosink_platform.registry.mlflow_registry import CHAMPION
from autosink_platform.validation import checks
from autosink_platform.validation.dataset import COMPLETE, DatasetRef, load_frame_stats, load_snapshot

CHECKS = ("min_examples", "class_balance", "no_leakage", "label_sources", "image_quality", "near_duplicates", "drift")


def champion_reference(spec: PipelineSpec, registry, store) -> tuple | None | str:
    """The dataset the pipeline's first model's champion was trained on: (table, frame statistics), None
    when there is no champion yet, or a message when its snapshot is no longer in the store."""
    champion = registry.alias_version(f"{spec.name}.{spec.models[0].name}", CHAMPION)
    if champion is None:
        return None
    snapshot = champion.tags.get("dataset_snapshot_id")
    folder = store.dataset_dir(snapshot) if snapshot else None
    if folder is None or not (folder / COMPLETE).exists():
        return f"the champion's training snapshot {snapshot!r} is not in the store: drift not measured"
    return load_snapshot(folder)[0], load_frame_stats(folder)


def dataset_checks(spec: PipelineSpec) -> dg.AssetChecksDefinition:
    dataset_key = dg.AssetKey([spec.name, "validated_dataset"])

    @dg.multi_asset_check(
        specs=[dg.AssetCheckSpec(name, asset=dataset_key, blocking=True) for name in CHECKS],
        name=f"{spec.name}_dataset_checks",
        ins={"dataset": dg.AssetIn(dataset_key)},
    )
    def dataset_quality(dataset: DatasetRef, store: FeatureStoreResource, mlflow: MlflowResource):
        """Examples per class and split, class balance, leakage, label sources, image quality,
        duplicates, and drift against the data the champion was trained on."""
        ref = dataset
        table, images = ref.load()
        reference = champion_reference(spec, mlflow.get(), store.get(spec.name))
        outcomes = checks.run_all(
            table,
            images,
            spec.source.dataset_checks,
            None if isinstance(reference, str) else reference,
            stats=ref.frame_stats(),
        )
        if isinstance(reference, str):  # say so rather than report a drift of zero
            outcomes[-1] = checks.CheckOutcome("drift", False, checks.WARNING, reference)
        for outcome in outcomes:
            yield dg.AssetCheckResult(
                check_name=outcome.name,
                asset_key=dataset_key,
                passed=outcome.passed,
                severity=dg.AssetCheckSeverity.ERROR
                if outcome.severity == checks.ERROR
                else dg.AssetCheckSeverity.WARN,
                description=outcome.description,
                metadata={
                    "snapshot_id": ref.snapshot_id,
                    **{
                        k: markdown_table(v) if isinstance(v, pd.DataFrame) else v
                        for k, v in outcome.metadata.items()
                        if not isinstance(v, list)
                    },
                },
            )

    return dataset_quality

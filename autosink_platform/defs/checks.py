"""Blocking asset checks on each validated dataset: an ERROR stops the run before training,
and the downstream automation waits for the checks to pass."""

import dagster as dg

from autosink_platform.pipelines.spec import PipelineSpec
from autosink_platform.validation import checks
from autosink_platform.validation.dataset import DatasetRef

CHECKS = ("min_examples", "class_balance", "no_leakage", "label_sources", "image_quality", "near_duplicates")


def dataset_checks(spec: PipelineSpec) -> dg.AssetChecksDefinition:
    dataset_key = dg.AssetKey([spec.name, "validated_dataset"])

    @dg.multi_asset_check(
        specs=[dg.AssetCheckSpec(name, asset=dataset_key, blocking=True) for name in CHECKS],
        name=f"{spec.name}_dataset_checks",
        ins={"dataset": dg.AssetIn(dataset_key)},
    )
    def dataset_quality(dataset: DatasetRef):
        """Examples per class and split, class balance, leakage, label sources, image quality, duplicates."""
        ref = dataset
        table, images = ref.load()
        for outcome in checks.run_all(table, images, spec.dataset_checks):
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
                    **{k: v for k, v in outcome.metadata.items() if not isinstance(v, list)},
                },
            )

    return dataset_quality

"""The data stages of a pipeline fed by the fleet (``spec.source`` is ``Sessions``):

    raw_sessions (one partition per session) -> labeled_frames (same partitions) -> validated_dataset

with the dataset's blocking checks, the ingest, train and relabel jobs, and the sensors that run
them: new sessions in the lake, enough new labels (or the nightly rebuild), reviewed frames."""

import dagster as dg
import pandas as pd

from autosink_platform.defs.checks import dataset_checks
from autosink_platform.defs.metadata import markdown_table, validation_failure, versioned_output
from autosink_platform.defs.model_stages import STAGE_TAG, TRAIN_TAGS
from autosink_platform.defs.resources import FeatureStoreResource, LakeResource
from autosink_platform.defs.sensors import new_sessions_sensor, retrain_sensor, review_sensor
from autosink_platform.pipelines import sink
from autosink_platform.pipelines.spec import PipelineSpec
from autosink_platform.validation.dataset import DatasetRef, build_dataset
from autosink_platform.validation.schemas import DataValidationError


def sessions_partitions(spec: PipelineSpec) -> dg.DynamicPartitionsDefinition:
    return dg.DynamicPartitionsDefinition(name=f"{spec.name}_sessions")


def _session_assets(spec: PipelineSpec, partitions: dg.DynamicPartitionsDefinition) -> list[dg.AssetsDefinition]:
    prefix = [spec.name]

    @dg.asset(
        name="raw_sessions",
        key_prefix=prefix,
        group_name=spec.name,
        partitions_def=partitions,
        code_version=spec.source.code_versions["raw_sessions"],
        kinds={"python"},
    )
    def raw_sessions(
        context: dg.AssetExecutionContext, lake: LakeResource, store: FeatureStoreResource
    ) -> dg.MaterializeResult:
        """One Pi session from the lake, parsed and checked; a bad session is quarantined with its reason."""
        results = {
            pk: sink.ingest_session(lake.get(), store.get(spec.name), pk, spec.source) for pk in context.partition_keys
        }
        for pk, r in results.items():
            if r["status"] == "quarantined":
                context.log.warning(f"session {pk} quarantined: {r['reason']}: {r['detail']}")
        return dg.MaterializeResult(metadata=_partition_metadata(results))

    @dg.asset(
        name="labeled_frames",
        key_prefix=prefix,
        group_name=spec.name,
        partitions_def=partitions,
        deps=[raw_sessions],
        code_version=spec.source.code_versions["labeled_frames"],
        kinds={"pandas"},
    )
    def labeled_frames(
        context: dg.AssetExecutionContext, lake: LakeResource, store: FeatureStoreResource
    ) -> dg.MaterializeResult:
        """Per-frame labels: user overrides propagated to neighbouring frames (strong), unchallenged
        model decisions (weak), each with its source and confidence."""
        lk = lake.get()
        try:
            results = {
                pk: {"status": "quarantined"}
                if lk.is_quarantined(pk)
                else sink.label_session(store.get(spec.name), pk, spec.source.labeling)
                for pk in context.partition_keys
            }
        except DataValidationError as e:  # the labeler broke its own contract: stop, show the cases
            raise validation_failure(e) from e
        return dg.MaterializeResult(metadata=_partition_metadata(results))

    @dg.asset(
        name="validated_dataset",
        key_prefix=prefix,
        group_name=spec.name,
        deps=[labeled_frames],
        code_version=spec.source.code_versions["validated_dataset"],
        kinds={"pandas", "numpy"},
        # Nightly when anything changed that day; the retrain sensor adds "enough new labels".
        automation_condition=dg.AutomationCondition.on_cron(spec.source.retrain.cron)
        if spec.source.retrain.cron
        else None,
    )
    def validated_dataset(
        context: dg.AssetExecutionContext, lake: LakeResource, store: FeatureStoreResource
    ) -> dg.Output[DatasetRef]:
        """Every labeled session, pandera-validated, split by session, frozen as a content-hash snapshot."""
        fs, quarantined = store.get(spec.name), lake.get().quarantined()
        hashes = {s: fs.get_session(s)["content_sha256"] for s in fs.labeled_sessions() if s not in quarantined}
        try:
            ref = build_dataset(
                fs, lake.get().root, hashes, spec.source.split, asset=context.asset_key.to_user_string()
            )
        except DataValidationError as e:  # show every failure case in the UI, not only in the log
            raise validation_failure(e) from e
        counts = ref.counts
        splits = pd.DataFrame([{"split": s, **c} for s, c in counts.items() if isinstance(c, dict)])
        return versioned_output(
            ref,
            ref.snapshot_id,
            {
                "snapshot_id": ref.snapshot_id,
                "sessions": counts["sessions"],
                "frames": counts["frames"],
                "splits": markdown_table(splits),
                "path": dg.MetadataValue.path(ref.path),
            },
        )

    return [raw_sessions, labeled_frames, validated_dataset]


def _partition_metadata(results: dict[str, dict]) -> dict:
    """A run over one session records that session's figures. A run over several records one
    materialization per session with the same metadata, so it keeps each session's figures
    under its key (``by_session``): the retrain sensor reads the count of its own partition."""
    if len(results) == 1:
        return next(iter(results.values()))
    return {
        "sessions": len(results),
        "quarantined": [pk for pk, r in results.items() if r.get("status") == "quarantined"],
        "by_session": dg.MetadataValue.json(results),
    }


def session_defs(spec: PipelineSpec) -> dg.Definitions:
    partitions = sessions_partitions(spec)
    ingest = dg.define_asset_job(
        f"{spec.name}_ingest",
        selection=dg.AssetSelection.assets(*[[spec.name, "raw_sessions"], [spec.name, "labeled_frames"]]),
        description="Ingest and label sessions (one run per session partition).",
        tags={STAGE_TAG: "ingest"},
    )
    train = dg.define_asset_job(
        f"{spec.name}_train",
        selection=dg.AssetSelection.assets([spec.name, "validated_dataset"]).downstream(),
        description="Dataset snapshot, models, thresholds and releases.",
        tags=TRAIN_TAGS,
    )
    relabel = dg.define_asset_job(
        f"{spec.name}_relabel",
        selection=dg.AssetSelection.assets([spec.name, "labeled_frames"]),
        description="Re-label sessions whose frames a reviewer corrected.",
    )
    return dg.Definitions(
        assets=_session_assets(spec, partitions),
        asset_checks=[dataset_checks(spec)],
        jobs=[ingest, train, relabel],
        sensors=[
            new_sessions_sensor(spec, partitions, ingest),
            retrain_sensor(spec, train),
            review_sensor(spec, partitions, relabel),
        ],
    )

"""The asset factory: one PipelineSpec -> its six-stage asset graph under the pipeline's key prefix.

    raw_sessions (one partition per session) -> labeled_frames (same partitions)
      -> validated_dataset -> <model>_model -> <model>_threshold -> <model>_release   (per model)

Asset bodies only move values between resources and the plain functions in
``pipelines/``; nothing below the Dagster layer imports Dagster.
"""

import dagster as dg
import pandas as pd

from autosink_platform.defs.checks import dataset_checks
from autosink_platform.defs.metadata import markdown_table, validation_failure, versioned_output
from autosink_platform.defs.model_stages import FOLLOW_CHECKED_DATASET, model_assets
from autosink_platform.defs.resources import FeatureStoreResource, FleetChannelResource, LakeResource, MlflowResource
from autosink_platform.defs.sensors import champion_sensor, new_sessions_sensor, retrain_sensor, review_sensor
from autosink_platform.home import resolve_home
from autosink_platform.pipelines import lifecycle, sink
from autosink_platform.pipelines.spec import PipelineSpec
from autosink_platform.registry import promotion
from autosink_platform.registry.mlflow_registry import CHAMPION
from autosink_platform.registry.releases import registered_name
from autosink_platform.validation.dataset import DatasetRef, build_dataset
from autosink_platform.validation.schemas import DataValidationError

# The queued run coordinator (infra/dagster/dagster.yaml) runs one training run at a time by this tag.
STAGE_TAG = "autosink/stage"
TRAIN_TAGS = {STAGE_TAG: "train"}


def sessions_partitions(spec: PipelineSpec) -> dg.DynamicPartitionsDefinition:
    return dg.DynamicPartitionsDefinition(name=f"{spec.name}_sessions")


def _session_assets(spec: PipelineSpec, partitions: dg.DynamicPartitionsDefinition) -> list[dg.AssetsDefinition]:
    prefix = [spec.name]

    @dg.asset(
        name="raw_sessions",
        key_prefix=prefix,
        group_name=spec.name,
        partitions_def=partitions,
        code_version=spec.code_versions["raw_sessions"],
        kinds={"python"},
    )
    def raw_sessions(
        context: dg.AssetExecutionContext, lake: LakeResource, store: FeatureStoreResource
    ) -> dg.MaterializeResult:
        """One Pi session from the lake, parsed and checked; a bad session is quarantined with its reason."""
        results = {pk: sink.ingest_session(lake.get(), store.get(spec.name), pk) for pk in context.partition_keys}
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
        code_version=spec.code_versions["labeled_frames"],
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
                else sink.label_session(store.get(spec.name), pk, spec.labeling)
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
        code_version=spec.code_versions["validated_dataset"],
        kinds={"pandas", "numpy"},
        # Nightly when anything changed that day; the retrain sensor adds "enough new labels".
        automation_condition=dg.AutomationCondition.on_cron(spec.retrain.cron) if spec.retrain.cron else None,
    )
    def validated_dataset(
        context: dg.AssetExecutionContext, lake: LakeResource, store: FeatureStoreResource
    ) -> dg.Output[DatasetRef]:
        """Every labeled session, pandera-validated, split by session, frozen as a content-hash snapshot."""
        fs, quarantined = store.get(spec.name), lake.get().quarantined()
        hashes = {s: fs.get_session(s)["content_sha256"] for s in fs.labeled_sessions() if s not in quarantined}
        try:
            ref = build_dataset(fs, lake.get().root, hashes, spec.split, asset=context.asset_key.to_user_string())
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


def _review_queue_asset(spec: PipelineSpec) -> dg.AssetsDefinition:
    model = next(m for m in spec.models if m.name == spec.review_model)
    name = lifecycle.registered_name(spec, model)

    @dg.asset(
        name="review_queue",
        key_prefix=[spec.name],
        group_name=spec.name,
        code_version="1",
        ins={"dataset": dg.AssetIn(dg.AssetKey([spec.name, "validated_dataset"]))},
        deps=[dg.AssetKey([spec.name, f"{model.name}_release"])],
        kinds={"pandas"},
        automation_condition=FOLLOW_CHECKED_DATASET,
    )
    def review_queue(
        context: dg.AssetExecutionContext, dataset: DatasetRef, store: FeatureStoreResource, mlflow: MlflowResource
    ) -> dg.MaterializeResult:
        """Frames most worth a human look: weak or low-confidence labels the champion contradicts,
        and unlabeled frames it is unsure of. Reviewed at /review on the fleet API."""
        champion = lifecycle.load_alias(model, name, CHAMPION, mlflow.get())
        queue = sink.build_review_queue(model, champion, dataset.open(), store.get(spec.name))
        top = queue.head(10)[["session_id", "frame_index", "label", "label_source", "champion_prob", "value", "reason"]]
        return dg.MaterializeResult(
            metadata={
                "frames": len(queue),
                "champion": f"{name}@{CHAMPION}",
                "top": markdown_table(top),
            }
        )

    return review_queue


def _fleet_channel_asset(pipeline: str, models: list[str]) -> dg.AssetsDefinition:
    names = [registered_name(pipeline, m) for m in models]

    @dg.asset(
        name="fleet_channel",
        key_prefix=[pipeline],
        group_name=pipeline,
        code_version="1",
        deps=[dg.AssetKey([pipeline, f"{m}_release"]) for m in models],
        kinds={"mlflow"},
    )
    def fleet_channel(
        context: dg.AssetExecutionContext, mlflow: MlflowResource, fleet: FleetChannelResource
    ) -> dg.MaterializeResult:
        """What the fleet is told to run: each model's stable channel follows its MLflow champion.
        Run by the registry sensor whenever the champion alias moves, however it was moved."""
        registry, channel, audit = mlflow.get(), fleet.get(), fleet.audit()
        who = context.run.tags.get("dagster/sensor_name", "dagster run")
        changes = promotion.publish_champions(registry, channel, audit, names, who=who)
        rows = promotion.status(registry, channel, names, resolve_home().heartbeats)
        history = [
            {k: e.get(k) for k in ("at", "action", "model", "from", "to", "who", "reason")}
            for e in [e for e in audit.entries() if e["model"] in names][-15:]
        ]
        return dg.MaterializeResult(
            metadata={
                "published_now": [f"{c['model']} v{c['to']}" for c in changes],
                "channels": markdown_table(pd.DataFrame(rows).astype(str)),
                "audit_log": markdown_table(pd.DataFrame(history[::-1]).astype(str)) if history else "empty",
            }
        )

    return fleet_channel


def fleet_defs(pipeline: str, models: list[str]) -> dg.Definitions:
    """What every pipeline has, whatever feeds it: the ``fleet_channel`` asset, the
    ``<pipeline>_publish`` job that materializes it, and the sensor that runs that job whenever a
    champion alias moves in MLflow (CLI, MLflow UI or client)."""
    publish = dg.define_asset_job(
        f"{pipeline}_publish",
        selection=dg.AssetSelection.assets([pipeline, "fleet_channel"]),
        description="Point the fleet channel at the MLflow champions.",
    )
    return dg.Definitions(
        assets=[_fleet_channel_asset(pipeline, models)],
        jobs=[publish],
        sensors=[champion_sensor(pipeline, [registered_name(pipeline, m) for m in models], publish)],
    )


def build_pipeline_defs(spec: PipelineSpec) -> dg.Definitions:
    partitions = sessions_partitions(spec)
    assets = _session_assets(spec, partitions) + [a for m in spec.models for a in model_assets(spec, m)]
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
    sensors = [
        new_sessions_sensor(spec, partitions, ingest),
        retrain_sensor(spec, train),
        review_sensor(spec, partitions, relabel),
    ]
    if spec.review_model:
        assets.append(_review_queue_asset(spec))
    return dg.Definitions.merge(
        dg.Definitions(
            assets=assets, asset_checks=[dataset_checks(spec)], jobs=[ingest, train, relabel], sensors=sensors
        ),
        fleet_defs(spec.name, [m.name for m in spec.models]),
    )

"""The asset factory: one ``PipelineSpec`` -> its six-stage asset graph under the pipeline's key
prefix, the same for every pipeline:

    raw -> labeled -> validated_dataset -> <model>_model -> <model>_threshold -> <model>_release
                                                                   (per model) -> fleet_channel

The data stages depend on where the raw data comes from (``defs.sessions`` for the fleet's
sessions, ``defs.public_files`` for a published dataset); the model stages
(``defs.model_stages``), the fleet channel, its publish job and the champion sensor are one
implementation for all. Asset bodies only move values between resources and the plain
functions in ``pipelines/``; nothing below the Dagster layer imports Dagster.
"""

import dagster as dg
import pandas as pd

from autosink_platform.defs.metadata import markdown_table
from autosink_platform.defs.model_stages import FOLLOW_CHECKED_DATASET, model_assets
from autosink_platform.defs.public_files import public_file_defs
from autosink_platform.defs.resources import FeatureStoreResource, FleetChannelResource, MlflowResource
from autosink_platform.defs.sensors import champion_sensor
from autosink_platform.defs.sessions import session_defs
from autosink_platform.pipelines import lifecycle, sink
from autosink_platform.pipelines.spec import PipelineSpec, Sessions
from autosink_platform.registry import promotion
from autosink_platform.registry.mlflow_registry import CHAMPION
from autosink_platform.registry.releases import registered_name
from autosink_platform.validation.dataset import DatasetRef


def _review_queue_asset(spec: PipelineSpec) -> dg.AssetsDefinition:
    model = next(m for m in spec.models if m.name == spec.review_model)
    name = lifecycle.registered_name(spec, model)

    @dg.asset(
        name="review_queue",
        key_prefix=[spec.name],
        group_name=spec.name,
        code_version="2",
        ins={"dataset": dg.AssetIn(dg.AssetKey([spec.name, "validated_dataset"]))},
        deps=[dg.AssetKey([spec.name, f"{model.name}_release"])],
        kinds={"pandas"},
        automation_condition=FOLLOW_CHECKED_DATASET,
    )
    def review_queue(
        context: dg.AssetExecutionContext,
        dataset: DatasetRef,
        store: FeatureStoreResource,
        mlflow: MlflowResource,
        fleet: FleetChannelResource,
    ) -> dg.MaterializeResult:
        """Frames most worth a human look: weak or low-confidence labels the champion contradicts,
        and unlabeled frames it is unsure of, scored by the champion's release as the fleet runs
        it. Reviewed at /review on the fleet API."""
        if (champion := lifecycle.champion_release(spec, model, mlflow.get(), fleet.get())) is None:
            raise LookupError(f"{name} has no {CHAMPION!r} alias yet: release a version first")
        version, release = champion
        queue = sink.build_review_queue(
            model, model.onnx_scorer(release / "model.onnx"), dataset.open(), store.get(spec.name)
        )
        top = queue.head(10)[["session_id", "frame_index", "label", "label_source", "champion_prob", "value", "reason"]]
        return dg.MaterializeResult(
            metadata={
                "frames": len(queue),
                "champion": f"{name}@{CHAMPION}",
                "champion_version": version,
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
        rows = promotion.status(registry, channel, names, fleet.heartbeats())
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
    models = [a for i, m in enumerate(spec.models) for a in model_assets(spec, m, priority=len(spec.models) - i)]
    if spec.review_model:
        models.append(_review_queue_asset(spec))
    data = session_defs(spec) if isinstance(spec.source, Sessions) else public_file_defs(spec, models)
    return dg.Definitions.merge(
        data, dg.Definitions(assets=models), fleet_defs(spec.name, [m.name for m in spec.models])
    )

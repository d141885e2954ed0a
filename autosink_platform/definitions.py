"""The code location: every pipeline's assets and jobs, the resources they share, and the
executor that runs their steps (configuration only: ``AUTOSINK_EXECUTOR``)."""

import os

import dagster as dg

from autosink_platform.defs.factory import build_pipeline_defs
from autosink_platform.defs.public_files import ReferenceDataResource
from autosink_platform.defs.resources import (
    FeatureStoreResource,
    FleetChannelResource,
    LakeResource,
    MlflowResource,
    RefIOManager,
)
from autosink_platform.pipelines.catalog import PIPELINES

# Every registered model of every pipeline, as MLflow names it: what `autosink status` reports.
MODEL_NAMES = tuple(f"{p.name}.{m.name}" for p in PIPELINES.values() for m in p.models)
CELERY_BROKER = "pyamqp://guest@localhost//"  # dagster-celery's default: a local RabbitMQ
CELERY_QUEUE = "dagster"


def executor() -> dg.ExecutorDefinition:
    """Unset: every step of a run in the run's own process, so the code location (torch, MLflow)
    is imported once per run rather than once per step: on the small machines the embedded
    default targets that start-up cost would outweigh the steps of an ingest run.
    ``AUTOSINK_EXECUTOR=multiprocess``: Dagster's default, each step a subprocess of the run.
    ``AUTOSINK_EXECUTOR=celery``: each step is a Celery task on ``$AUTOSINK_CELERY_BROKER``
    (default: the local RabbitMQ), queue ``$AUTOSINK_CELERY_QUEUE`` (default ``dagster``), run by
    ``dagster-celery`` workers that share the Dagster instance (Postgres) and the stores."""
    kind = os.environ.get("AUTOSINK_EXECUTOR", "")
    if kind in ("", "in_process"):
        return dg.in_process_executor
    if kind == "multiprocess":
        return dg.multiprocess_executor
    if kind != "celery":
        raise ValueError(f"AUTOSINK_EXECUTOR={kind!r}: expected 'in_process', 'multiprocess', 'celery' or unset")
    from dagster_celery import celery_executor  # the scale extra

    return celery_executor.configured(
        {
            "broker": os.environ.get("AUTOSINK_CELERY_BROKER", CELERY_BROKER),
            "backend": "rpc://",
            "config_source": {"task_default_queue": os.environ.get("AUTOSINK_CELERY_QUEUE", CELERY_QUEUE)},
        },
        name="celery",
    )


# Declarative automation (eager follow-through, the nightly rebuild) evaluated by the daemon from
# the start: without a sensor of its own, Dagster's default one is created stopped and the loop
# from feedback to fleet would wait for someone to switch it on in the UI.
AUTOMATION = dg.AutomationConditionSensorDefinition(
    "autosink_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates every asset's automation condition (eager follow-through, nightly rebuild).",
)

defs = dg.Definitions.merge(
    *(build_pipeline_defs(spec) for spec in PIPELINES.values()),
    dg.Definitions(
        resources={
            "lake": LakeResource(),
            "store": FeatureStoreResource(),
            "fleet": FleetChannelResource(),
            "mlflow": MlflowResource(),
            "io_manager": RefIOManager(),
            "datasets": ReferenceDataResource(),
        },
        executor=executor(),
        sensors=[AUTOMATION],
    ),
)

"""The code location: every pipeline's assets and jobs, the resources they share, and the
executor that runs their steps (configuration only: ``AUTOSINK_EXECUTOR``)."""

import os

import dagster as dg

from autosink_platform.defs.factory import build_pipeline_defs
from autosink_platform.defs.reference_factory import ReferenceDataResource, build_reference_defs
from autosink_platform.defs.resources import (
    FeatureStoreResource,
    FleetChannelResource,
    LakeResource,
    MlflowResource,
    RefIOManager,
)
from autosink_platform.pipelines.sink import SINK
from autosink_platform.reference.pipelines import REFERENCE_PIPELINES

PIPELINES = (SINK,)
CELERY_BROKER = "pyamqp://guest@localhost//"  # dagster-celery's default: a local RabbitMQ
CELERY_QUEUE = "dagster"


def executor() -> dg.ExecutorDefinition | None:
    """Unset: Dagster's default (each step a subprocess of the run). ``AUTOSINK_EXECUTOR=celery``:
    each step is a Celery task on ``$AUTOSINK_CELERY_BROKER`` (default: the local RabbitMQ),
    queue ``$AUTOSINK_CELERY_QUEUE`` (default ``dagster``), run by ``dagster-celery`` workers
    that share the Dagster instance (Postgres) and the stores."""
    kind = os.environ.get("AUTOSINK_EXECUTOR", "")
    if kind in ("", "default"):
        return None
    if kind != "celery":
        raise ValueError(f"AUTOSINK_EXECUTOR={kind!r}: expected 'celery' or unset")
    from dagster_celery import celery_executor  # the scale extra

    return celery_executor.configured(
        {
            "broker": os.environ.get("AUTOSINK_CELERY_BROKER", CELERY_BROKER),
            "backend": "rpc://",
            "config_source": {"task_default_queue": os.environ.get("AUTOSINK_CELERY_QUEUE", CELERY_QUEUE)},
        },
        name="celery",
    )


defs = dg.Definitions.merge(
    *(build_pipeline_defs(spec) for spec in PIPELINES),
    *(build_reference_defs(spec) for spec in REFERENCE_PIPELINES.values()),
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
    ),
)

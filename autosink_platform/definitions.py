"""The code location: every pipeline's assets and jobs, the resources they share and the
executor that runs their steps. This module and ``cli.py`` are where configuration enters:
``settings.Settings`` reads the environment once, here, and configures everything below."""

import os

import dagster as dg
from dagster._core.definitions.executor_definition import (  # what Dagster's own default executor is built from
    IN_PROC_CONFIG,
    MULTI_PROC_CONFIG,
    _core_in_process_executor_creation,
    _core_multiprocess_executor_creation,
    multiple_process_executor_requirements,
)
from dagster._core.execution.retries import RetryMode, get_retries_config

from autosink_platform.defs.factory import build_pipeline_defs
from autosink_platform.defs.sensors import FLEET_REFRESH, fleet_telemetry_sensor, rollout_halt
from autosink_platform.pipelines.catalog import PIPELINES
from autosink_platform.settings import Settings

SETTINGS = Settings.from_environ(os.environ)
# Unset resource variables get their embedded defaults, so every resource field can be a
# dg.EnvVar: resolved when a run starts, shown as such in the UI's resource page.
os.environ.update(SETTINGS.embedded_defaults())

# Every registered model of every pipeline, as MLflow names it: what `autosink status` reports.
MODEL_NAMES = tuple(f"{p.name}.{m.name}" for p in PIPELINES.values() for m in p.models)
CELERY_BROKER = "pyamqp://guest@localhost//"  # dagster-celery's default: a local RabbitMQ
CELERY_QUEUE = "dagster"

CELERY_CONFIG = {
    "broker": dg.Field(str, default_value=CELERY_BROKER, description="The Celery broker the workers listen on."),
    "backend": dg.Field(str, default_value="rpc://"),
    "queue": dg.Field(str, default_value=CELERY_QUEUE, description="The queue the workers consume."),
    "retries": get_retries_config(),
}


@dg.executor(
    name="autosink",
    config_schema=dg.Field(
        dg.Selector({"in_process": IN_PROC_CONFIG, "multiprocess": MULTI_PROC_CONFIG, "celery": CELERY_CONFIG}),
        default_value=SETTINGS.executor_config(),  # AUTOSINK_EXECUTOR's choice; a run's config may pick another
    ),
    requirements=lambda config: [] if "in_process" in config else multiple_process_executor_requirements(),
)
def executor(init_context: dg.InitExecutorContext):
    """How a run's steps execute, chosen by configuration (run config ``execution:``, default
    from ``AUTOSINK_EXECUTOR``):

    - ``in_process`` (default): every step in the run's own process, so the code location (torch,
      MLflow) is imported once per run rather than once per step: on the small machines the
      embedded default targets that start-up cost would outweigh the steps of an ingest run;
    - ``multiprocess``: Dagster's default, each step a subprocess of the run;
    - ``celery``: each step a Celery task on ``broker`` (``AUTOSINK_CELERY_BROKER``, default the
      local RabbitMQ), queue ``queue`` (``AUTOSINK_CELERY_QUEUE``, default ``dagster``), run by
      ``dagster-celery`` workers that share the Dagster instance (Postgres) and the stores."""
    ((kind, config),) = init_context.executor_config.items()
    if kind == "in_process":
        return _core_in_process_executor_creation(config)
    if kind == "multiprocess":
        return _core_multiprocess_executor_creation(config)
    from dagster_celery.executor import CeleryExecutor  # the scale extra

    return CeleryExecutor(
        retries=RetryMode.from_config(config["retries"]),
        broker=config["broker"],
        backend=config["backend"],
        config_source={"task_default_queue": config["queue"]},
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
        resources=SETTINGS.resources(env_vars=True),
        executor=executor,
        sensors=[
            AUTOMATION,
            fleet_telemetry_sensor(
                {f"{p.name}.{m.name}": p.promotion.rollout for p in PIPELINES.values() for m in p.models}
            ),
        ],
        jobs=[FLEET_REFRESH.job, rollout_halt],
        schedules=[FLEET_REFRESH],
    ),
)

"""Materialize a pipeline on a Dagster instance from a script (``autosink demo``, tests):
the same jobs the UI and sensors launch, run in this process against a real instance."""

import os

import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableRepository
from tqdm import tqdm

from autosink_platform.defs.factory import sessions_partitions
from autosink_platform.defs.sensors import INGEST_BATCH, partition_range_request
from autosink_platform.lake.sessions import Lake
from autosink_platform.pipelines.spec import PipelineSpec

# The console shows warnings only; every event is still stored in the instance for the UI.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def register_sessions(instance: dg.DagsterInstance, spec: PipelineSpec, lake: Lake) -> list[str]:
    """Add a dynamic partition for every committed session not yet known; return the new ones."""
    name = sessions_partitions(spec).name
    known = set(instance.get_dynamic_partitions(name))
    new = [s for s in lake.committed_sessions() if s not in known]
    if new:
        instance.add_dynamic_partitions(name, new)
    return new


def unlabeled_sessions(instance: dg.DagsterInstance, spec: PipelineSpec, lake: Lake) -> list[str]:
    """Register new sessions as partitions; return every partition not yet labeled."""
    register_sessions(instance, spec, lake)
    done = instance.get_materialized_partitions(dg.AssetKey([spec.name, "labeled_frames"]))
    return [s for s in instance.get_dynamic_partitions(sessions_partitions(spec).name) if s not in done]


def _batches(instance: dg.DagsterInstance, spec: PipelineSpec, todo: list[str]) -> list[list[str]]:
    """``todo`` in runs of consecutive partitions (partition order), at most INGEST_BATCH each."""
    order = instance.get_dynamic_partitions(sessions_partitions(spec).name)
    wanted, batches, current = set(todo), [], []
    for key in order:
        if key in wanted and len(current) < INGEST_BATCH:
            current.append(key)
            continue
        if current:
            batches.append(current)
        current = [key] if key in wanted else []
    return batches + ([current] if current else [])


def _partition_args(request: dg.RunRequest) -> dict:
    return {"partition_key": request.partition_key} if request.partition_key else {"tags": request.tags}


def _tags(request: dg.RunRequest) -> dict:
    return {"dagster/partition": request.partition_key} if request.partition_key else dict(request.tags)


def materialize_pipeline(
    defs: dg.Definitions, spec: PipelineSpec, instance: dg.DagsterInstance, lake: Lake, progress: bool = True
) -> dict:
    """Ingest + label every session not yet labeled (a run per session), then run the train job.

    Returns the train job's outputs by asset name (dataset ref, models, thresholds, releases).
    """
    todo = unlabeled_sessions(instance, spec, lake)
    ingest = defs.resolve_job_def(f"{spec.name}_ingest")
    with tqdm(total=len(todo), desc=f"{spec.name}: ingest + label", unit="session", disable=not progress) as bar:
        for batch in _batches(instance, spec, todo):  # the runs the new-session sensor would request
            ingest.execute_in_process(
                instance=instance,
                run_config=QUIET,
                raise_on_error=True,
                **_partition_args(partition_range_request(batch)),
            )
            bar.update(len(batch))
    result = defs.resolve_job_def(f"{spec.name}_train").execute_in_process(
        instance=instance, run_config=QUIET, raise_on_error=True
    )
    names = ["validated_dataset"] + [
        f"{m.name}_{stage}" for m in spec.models for stage in ("model", "threshold", "release")
    ]
    outputs = {name: result.asset_value(dg.AssetKey([spec.name, name])) for name in names}
    return outputs | {"ingested_now": todo, "run_id": result.run_id}


def launch_pipeline(
    spec: PipelineSpec,
    instance: dg.DagsterInstance,
    lake: Lake,
    module: str = "autosink_platform.definitions",
    progress: bool = True,
) -> list[str]:
    """The same runs as ``materialize_pipeline``, executed the way a deployment executes them:
    the jobs are reconstructed from the code location module, so the configured executor (e.g.
    Celery workers in other processes) runs the steps. Needs a persistent instance (Postgres).
    Returns the run ids (ingest runs, then the train run); raises if any run fails."""
    todo = unlabeled_sessions(instance, spec, lake)
    runs = [(f"{spec.name}_ingest", _tags(partition_range_request(b))) for b in _batches(instance, spec, todo)]
    runs.append((f"{spec.name}_train", {}))
    return launch_jobs(runs, instance, module, progress, desc=f"{spec.name}: runs")


def launch_jobs(
    runs: list[tuple[str, dict]],
    instance: dg.DagsterInstance,
    module: str = "autosink_platform.definitions",
    progress: bool = True,
    desc: str = "runs",
) -> list[str]:
    """Each (job, tags) in turn, reconstructed from the code location module so the configured
    executor runs its steps; returns the run ids and raises on the first failed run."""
    repo = ReconstructableRepository.for_module(module, "defs", working_directory=os.getcwd())
    run_ids = []
    for job, tags in tqdm(runs, desc=desc, unit="run", disable=not progress):
        with dg.execute_job(repo.get_reconstructable_job(job), instance, run_config=QUIET, tags=tags) as result:
            if not result.success:
                failed = [e.message for e in result.all_events if e.is_failure]
                raise RuntimeError(f"{job} {tags or ''} failed (run {result.run_id}): {failed[:3]}")
            run_ids.append(result.run_id)
    return run_ids

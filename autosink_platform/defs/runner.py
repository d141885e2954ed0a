"""Materialize a pipeline on a Dagster instance from a script (``autosink demo``, tests):
the same jobs the UI and sensors launch, run in this process against a real instance."""

import dagster as dg
from tqdm import tqdm

from autosink_platform.defs.factory import sessions_partitions
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


def materialize_pipeline(
    defs: dg.Definitions, spec: PipelineSpec, instance: dg.DagsterInstance, lake: Lake, progress: bool = True
) -> dict:
    """Ingest + label every session not yet labeled (a run per session), then run the train job.

    Returns the train job's outputs by asset name (dataset ref, models, thresholds, releases).
    """
    register_sessions(instance, spec, lake)
    labeled_key = dg.AssetKey([spec.name, "labeled_frames"])
    done = instance.get_materialized_partitions(labeled_key)
    todo = [s for s in instance.get_dynamic_partitions(sessions_partitions(spec).name) if s not in done]
    ingest = defs.resolve_job_def(f"{spec.name}_ingest")
    for session_id in tqdm(todo, desc=f"{spec.name}: ingest + label", unit="session", disable=not progress):
        ingest.execute_in_process(instance=instance, partition_key=session_id, run_config=QUIET, raise_on_error=True)
    result = defs.resolve_job_def(f"{spec.name}_train").execute_in_process(
        instance=instance, run_config=QUIET, raise_on_error=True
    )
    names = ["validated_dataset"] + [
        f"{m.name}_{stage}" for m in spec.models for stage in ("model", "threshold", "release")
    ]
    outputs = {name: result.asset_value(dg.AssetKey([spec.name, name])) for name in names}
    return outputs | {"ingested_now": todo, "run_id": result.run_id}

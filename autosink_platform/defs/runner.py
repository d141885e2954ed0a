"""Materialize a pipeline on a Dagster instance from a script (``autosink demo``, tests):
the same jobs the UI and sensors launch, run in this process against a real instance."""

import os

import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableRepository
from tqdm import tqdm

from autosink_platform.defs.sensors import INGEST_BATCH, partition_range_request
from autosink_platform.defs.sessions import sessions_partitions
from autosink_platform.lake.sessions import Lake
from autosink_platform.pipelines.spec import PipelineSpec, Sessions

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


def stale_or_missing(defs: dg.Definitions, instance: dg.DagsterInstance, keys) -> list[dg.AssetKey]:
    """The assets among ``keys`` that Dagster itself sees as stale or missing: what the UI's
    "Materialize changed and missing" and a sensor's ``RunRequest(stale_assets_only=True)``
    launch. Dagster decides from code versions and data versions (content hashes); an asset
    whose inputs and code are unchanged is fresh and is not launched."""
    # Dagster keeps this resolver internal; it is the one its UI and sensors use.
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._time import get_current_datetime

    graph = defs.resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    resolver = CachingStaleStatusResolver(instance, graph, view)
    return sorted(
        (k for k in keys if resolver.get_status(k) in (StaleStatus.STALE, StaleStatus.MISSING)),
        key=lambda k: k.to_user_string(),
    )


def to_launch(defs: dg.Definitions, instance: dg.DagsterInstance, keys) -> list[dg.AssetKey]:
    """The stale or missing assets among ``keys`` and, within ``keys``, everything downstream of
    them: Dagster marks only the direct children of a changed asset stale, and their own
    children change once they run."""
    stale = stale_or_missing(defs, instance, keys)
    if not stale:
        return []
    closure = dg.AssetSelection.assets(*stale).downstream().resolve(defs.resolve_asset_graph())
    return sorted(closure & set(keys), key=lambda k: k.to_user_string())


def _partition_args(request: dg.RunRequest) -> dict:
    return {"partition_key": request.partition_key} if request.partition_key else {"tags": request.tags}


def _tags(request: dg.RunRequest) -> dict:
    return {"dagster/partition": request.partition_key} if request.partition_key else dict(request.tags)


def materialize_pipeline(
    defs: dg.Definitions, spec: PipelineSpec, instance: dg.DagsterInstance, lake: Lake, progress: bool = True
) -> dict:
    """Ingest + label every session not yet labeled (a run per session), then run the train job
    on the assets Dagster sees as stale or missing (none when nothing changed: no run at all).

    Returns the train job's outputs by asset name (dataset ref, models, thresholds, releases),
    as materialized now or, for the assets that were fresh, as stored; ``launched`` names the
    assets this call materialized and ``run_id`` is the train run's (None when none ran).
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
    train = defs.resolve_job_def(f"{spec.name}_train")
    launch = to_launch(defs, instance, train.asset_layer.selected_asset_keys)
    result = (
        train.execute_in_process(instance=instance, run_config=QUIET, raise_on_error=True, asset_selection=launch)
        if launch
        else None
    )
    names = ["validated_dataset"] + [
        f"{m.name}_{stage}" for m in spec.models for stage in ("model", "threshold", "release")
    ]
    outputs = {
        name: result.asset_value(key) if key in launch else defs.load_asset_value(key, instance=instance)
        for name, key in ((n, dg.AssetKey([spec.name, n])) for n in names)
    }
    launched = [k.path[-1] for k in launch]
    return outputs | {"ingested_now": todo, "launched": launched, "run_id": result.run_id if result else None}


def launch_pipeline(
    spec: PipelineSpec,
    instance: dg.DagsterInstance,
    lake: Lake | None = None,
    module: str = "autosink_platform.definitions",
    progress: bool = True,
) -> list[str]:
    """A pipeline's runs, lazily, executed the way a deployment executes them: the jobs are
    reconstructed from the code location module, so the configured executor (e.g. Celery
    workers in other processes) runs the steps. For the fleet's sessions: ingest runs for the
    sessions in ``lake`` not yet labeled, then the train run (``materialize_pipeline``'s runs);
    for public files, see ``_launch_public_files``. Returns the run ids; raises if any run fails."""
    if not isinstance(spec.source, Sessions):
        return _launch_public_files(spec.name, instance, module, progress)
    todo = unlabeled_sessions(instance, spec, lake)
    runs = [(f"{spec.name}_ingest", _tags(partition_range_request(b))) for b in _batches(instance, spec, todo)]
    run_ids = launch_jobs(runs, instance, module, progress, desc=f"{spec.name}: ingest runs")
    defs = _load_defs(module)
    train = defs.resolve_job_def(f"{spec.name}_train")
    if launch := to_launch(defs, instance, train.asset_layer.selected_asset_keys):
        run_ids += launch_jobs([(train.name, {})], instance, module, progress, f"{spec.name}: train", launch)
    return run_ids


def _launch_public_files(name: str, instance: dg.DagsterInstance, module: str, progress: bool) -> list[str]:
    """A public-file pipeline's job the lazy way: its ``raw_files`` step always runs (fingerprinting
    the public files is how the pipeline sees them change; unchanged files give the same data
    version), then only what Dagster sees as stale or missing. Returns the run ids."""
    job = f"{name}_pipeline"
    raw = [dg.AssetKey([name, "raw_files"])]
    run_ids = launch_jobs([(job, {})], instance, module, progress, f"{name}: raw files", raw)
    defs = _load_defs(module)
    if launch := to_launch(defs, instance, defs.resolve_job_def(job).asset_layer.selected_asset_keys):
        run_ids += launch_jobs([(job, {})], instance, module, progress, f"{name}: changed and missing", launch)
    return run_ids


def launch_jobs(
    runs: list[tuple[str, dict]],
    instance: dg.DagsterInstance,
    module: str = "autosink_platform.definitions",
    progress: bool = True,
    desc: str = "runs",
    asset_selection: list[dg.AssetKey] | None = None,
) -> list[str]:
    """Each (job, tags) in turn, reconstructed from the code location module so the configured
    executor runs its steps (only ``asset_selection`` of them, when given); returns the run ids
    and raises on the first failed run."""
    repo = ReconstructableRepository.for_module(module, "defs", working_directory=os.getcwd())
    run_ids = []
    for job, tags in tqdm(runs, desc=desc, unit="run", disable=not progress):
        with dg.execute_job(
            repo.get_reconstructable_job(job), instance, run_config=QUIET, tags=tags, asset_selection=asset_selection
        ) as result:
            if not result.success:
                failed = [e.message for e in result.all_events if e.is_failure]
                raise RuntimeError(f"{job} {tags or ''} failed (run {result.run_id}): {failed[:3]}")
            run_ids.append(result.run_id)
    return run_ids


def _load_defs(module: str) -> dg.Definitions:
    import importlib

    return importlib.import_module(module).defs

"""Sensors evaluated with build_sensor_context against a real (temporary SQLite) instance."""

import json
import shutil
from datetime import UTC, datetime, timedelta
from unittest import mock

import dagster as dg
import pytest

from autosink_platform.definitions import defs
from autosink_platform.defs import sensors
from autosink_platform.defs.resources import LakeResource
from autosink_platform.defs.sensors import (
    INGEST_BATCH,
    RANGE_END,
    RANGE_START,
    SETTLE,
    SETTLE_MAX,
    partition_range_request,
    settling,
)
from autosink_platform.lake.demo import DemoLakeConfig, generate_demo_lake
from autosink_platform.lake.sessions import Lake
from autosink_platform.pipelines.sink import SINK

PARTITIONS = "sink_sessions"


@pytest.fixture
def instance(tmp_path):
    (tmp_path / "dagster").mkdir()
    with dg.DagsterInstance.local_temp(str(tmp_path / "dagster")) as inst:
        yield inst


def _tick(instance, lake_root, cursor=None, after: timedelta = SETTLE_MAX) -> dg.SensorResult | dg.SkipReason:
    """One evaluation, ``after`` the present on the sensor's clock (by default late enough that
    every commit so far has settled)."""
    sensor = defs.resolve_sensor_def("sink_new_sessions")
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"lake": LakeResource(root=str(lake_root))}
    )
    with mock.patch.object(sensors, "_now", lambda: datetime.now(UTC) + after):
        result = sensor(context)
    if isinstance(result, dg.SkipReason):
        return result
    # What the daemon does with a SensorResult: apply the partition additions.
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def _partitions_of(instance, request: dg.RunRequest) -> list[str]:
    """The session partitions one run request covers (a single key or a range of them)."""
    if request.partition_key is not None:
        return [request.partition_key]
    order = instance.get_dynamic_partitions(PARTITIONS)
    start, end = order.index(request.tags[RANGE_START]), order.index(request.tags[RANGE_END])
    assert start < end, request.tags
    return order[start : end + 1]


def test_new_sessions_become_partitions_and_runs_exactly_once(instance, tiny_lake):
    lake = Lake(tiny_lake)
    sessions = sorted(lake.committed_sessions())

    first = _tick(instance, tiny_lake)
    covered = [s for r in first.run_requests for s in _partitions_of(instance, r)]
    assert sorted(covered) == sessions  # every new session in exactly one run
    assert len(first.run_requests) == -(-len(sessions) // INGEST_BATCH)
    assert len({r.run_key for r in first.run_requests}) == len(first.run_requests)
    assert sorted(instance.get_dynamic_partitions(PARTITIONS)) == sessions

    # Later ticks with the cursor: nothing new, nothing requested.
    second = _tick(instance, tiny_lake, first.cursor)
    assert second.run_requests == [] and second.cursor == first.cursor

    # A restart that lost its cursor re-reads the log, and still adds nothing twice.
    restarted = _tick(instance, tiny_lake, None)
    assert restarted.run_requests == [] and not restarted.dynamic_partitions_requests
    assert sorted(instance.get_dynamic_partitions(PARTITIONS)) == sessions

    # A new upload: exactly one partition and one run.
    generate_demo_lake(
        tiny_lake,
        DemoLakeConfig(
            devices=1, sessions_per_device=1, frames_per_session=60, seed=3, start="2026-11-21T08:00:00+00:00"
        ),
        progress=False,
    )
    third = _tick(instance, tiny_lake, first.cursor)
    (new,) = set(Lake(tiny_lake).committed_sessions()) - set(sessions)
    assert [r.partition_key for r in third.run_requests] == [new]
    assert int(third.cursor) > int(first.cursor)


def _upload(lake_root, seed: int, sessions: int = 1) -> None:
    day = f"2026-11-{21 + seed % 9:02d}T08:00:00+00:00"
    cfg = DemoLakeConfig(devices=1, sessions_per_device=sessions, frames_per_session=30, seed=seed, start=day)
    generate_demo_lake(lake_root, cfg, progress=False)


def test_a_burst_of_uploads_waits_to_settle_and_goes_into_one_run(instance, tiny_lake):
    settled = _tick(instance, tiny_lake)
    log = Lake(tiny_lake).commit_log  # the lake's sessions were committed a day ago
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    day_before = lambda e: (
        e | {"committed_at": (datetime.fromisoformat(e["committed_at"]) - timedelta(days=1)).isoformat()}
    )  # noqa: E731
    log.write_text("".join(json.dumps(day_before(e)) + "\n" for e in entries))  # the same length: the cursor holds
    _upload(tiny_lake, seed=3, sessions=2)
    # A tick in the middle of the burst: nothing is added or requested, and the cursor stays.
    early = _tick(instance, tiny_lake, settled.cursor, after=timedelta(0))
    assert isinstance(early, dg.SkipReason) and "settle" in early.skip_message, early
    # A first tick (no cursor: the daemon started after sessions were ingested another way)
    # reads the whole log; the sessions ingested long ago do not make the burst look settled.
    first = _tick(instance, tiny_lake, None, after=timedelta(0))
    assert isinstance(first, dg.SkipReason) and "settle" in first.skip_message, first
    before = set(instance.get_dynamic_partitions(PARTITIONS))
    _upload(tiny_lake, seed=4)
    # Quiet for SETTLE: the whole burst is one run.
    late = _tick(instance, tiny_lake, settled.cursor, after=SETTLE)
    (request,) = late.run_requests
    burst = set(instance.get_dynamic_partitions(PARTITIONS)) - before
    assert len(burst) == 3 and set(_partitions_of(instance, request)) == burst


def test_settling_never_holds_a_stream_or_a_full_batch_back():
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)

    def entries(*ages: float) -> list[dict]:
        return [
            {"session_id": f"s{i}", "committed_at": (now - timedelta(seconds=a)).isoformat()}
            for i, a in enumerate(ages)
        ]

    assert settling(entries(1.0), now) is not None  # one upload a second ago: wait a tick
    assert settling(entries(SETTLE.total_seconds()), now) is None  # quiet long enough
    # Uploads every second for longer than SETTLE_MAX: the log is never quiet, but it goes.
    stream = entries(*range(int(SETTLE_MAX.total_seconds()) + 1))
    assert settling(stream, now) is None
    assert settling(entries(*[0.5] * INGEST_BATCH), now) is None  # a full batch goes at once
    assert settling([{"session_id": "old"}], now) is None  # logged before commits carried a time
    assert settling(entries(-60.0), now) is None  # a clock behind the uploader's does not stall it
    assert settling([], now) is None


def test_reindexed_and_duplicate_log_lines_do_not_duplicate(instance, tiny_lake):
    lake = Lake(tiny_lake)
    first = _tick(instance, tiny_lake)
    # A session copied into raw/ by hand is not in the commit log until reindexed ...
    src = next(iter(lake.committed_sessions().values()))
    copy = src.parent.parent / "2026-11-30" / "pi-001-20261130T080000"
    shutil.copytree(src, copy)
    assert _tick(instance, tiny_lake, first.cursor).run_requests == []
    assert lake.reindex() == [copy.name]
    # ... and a log line written twice (two reindexes racing) yields one run.
    lake._log_commit(copy.name, copy)
    result = _tick(instance, tiny_lake, first.cursor)
    assert [r.partition_key for r in result.run_requests] == [copy.name]


def test_tick_reads_only_new_commits(tiny_lake):
    lake = Lake(tiny_lake)
    all_commits, offset = lake.read_commits(0)
    assert len(all_commits) == len(lake.committed_sessions())
    assert lake.read_commits(offset) == ([], offset)
    with open(lake.commit_log, "a") as f:
        f.write('{"session_id": "half-written')  # a line still being appended is left for later
    assert lake.read_commits(offset) == ([], offset)


def test_retrain_sensor_waits_for_enough_new_labeled_frames(instance):
    sensor = defs.resolve_sensor_def("sink_retrain")
    labeled = dg.AssetKey(["sink", "labeled_frames"])
    need = SINK.source.retrain.min_new_labeled_frames
    instance.add_dynamic_partitions(PARTITIONS, ["a", "b", "c"])

    def report(partition, labeled_count):
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                labeled, partition=partition, metadata={"labeled": labeled_count, "frames": labeled_count}
            )
        )

    report("a", need // 2)
    skipped = sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(skipped, dg.SkipReason) and str(need // 2) in skipped.skip_message
    report("b", need // 2 + 1)
    request = sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(request, dg.RunRequest) and request.tags["autosink/new_labeled_frames"] == str(need + 1)

    # After a dataset build, the count starts again from zero.
    instance.report_runless_asset_event(dg.AssetMaterialization(dg.AssetKey(["sink", "validated_dataset"])))
    assert isinstance(sensor(dg.build_sensor_context(instance=instance)), dg.SkipReason)
    report("c", need)
    assert isinstance(sensor(dg.build_sensor_context(instance=instance)), dg.RunRequest)


def test_downstream_stages_follow_by_declarative_automation():
    """Evaluated by Dagster's own automation engine (what the daemon's sensor runs): the model
    stages follow a new dataset only once every blocking check on it passed; the dataset is
    rebuilt after the nightly tick when new labels arrived that day, once; the session stages
    are never started by automation (the new-sessions sensor starts them)."""
    dataset, labeled = dg.AssetKey(["sink", "validated_dataset"]), dg.AssetKey(["sink", "labeled_frames"])
    models = {dg.AssetKey(["sink", f"{m.name}_model"]) for m in SINK.models}
    sessions = dg.AssetSelection.assets(dg.AssetKey(["sink", "raw_sessions"]), labeled)
    checks = [k.name for k in defs.resolve_asset_graph().asset_check_keys if k.asset_key == dataset]
    assert "drift" in checks

    def requested(instance, selection, cursor=None, at=None):
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=cursor, evaluation_time=at
        )
        keys = {r.key for r in result.results if not r.true_subset.is_empty}
        return keys, result.cursor

    def dataset_built(instance, failing: set[str]):
        instance.report_runless_asset_event(dg.AssetMaterialization(dataset))
        for name in checks:
            instance.report_runless_asset_event(
                dg.AssetCheckEvaluation(asset_key=dataset, check_name=name, passed=name not in failing)
            )

    selection = dg.AssetSelection.assets(*models) | sessions
    for failing, expected in (({"drift"}, set()), (set(), models)):
        with dg.DagsterInstance.ephemeral() as instance:
            instance.add_dynamic_partitions(PARTITIONS, ["a"])
            nothing, cursor = requested(instance, selection)
            assert nothing == set()  # no dataset yet
            dataset_built(instance, failing)
            assert requested(instance, selection, cursor)[0] == expected, failing

    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(PARTITIONS, ["a"])
        now = datetime.now(UTC)
        tick = now.replace(hour=3, minute=0, second=0, microsecond=0)  # SINK's nightly cron, 03:00 UTC
        tick += timedelta(days=1) if tick <= now else timedelta(0)
        selection = dg.AssetSelection.assets(dataset) | sessions
        keys, cursor = requested(instance, selection, at=now)
        assert keys == set()
        keys, cursor = requested(instance, selection, cursor, at=tick + timedelta(minutes=1))
        assert keys == set()  # the tick passed, but nothing new
        instance.report_runless_asset_event(dg.AssetMaterialization(labeled, partition="a"))
        keys, cursor = requested(instance, selection, cursor, at=tick + timedelta(hours=2))
        assert keys == {dataset}
        for later in (timedelta(days=1, minutes=1), timedelta(days=1, hours=1)):
            keys, cursor = requested(instance, selection, cursor, at=tick + later)
            assert keys == set()  # built once; no new labels since


def test_a_multi_session_ingest_run_counts_each_session_once(home, instance):
    """The new-session sensor's batched run, executed for real: the retrain sensor must count the
    labeled frames of every session in it once (each materialization carries the whole run's
    metadata)."""
    from autosink_platform.defs.runner import QUIET, register_sessions
    from autosink_platform.lake.store import FeatureStore

    sessions = register_sessions(instance, SINK, Lake(home / "lake"))
    request = partition_range_request(sessions)
    assert len(sessions) > 1 and request.partition_key is None
    result = defs.resolve_job_def("sink_ingest").execute_in_process(
        instance=instance, run_config=QUIET, tags=request.tags
    )
    assert result.success
    assert instance.get_materialized_partitions(dg.AssetKey(["sink", "labeled_frames"])) == set(sessions)
    labeled = int(FeatureStore(home / "store", "sink").get_labels(sessions)["label"].notna().sum())
    outcome = defs.resolve_sensor_def("sink_retrain")(dg.build_sensor_context(instance=instance))
    counted = (
        outcome.tags["autosink/new_labeled_frames"] if isinstance(outcome, dg.RunRequest) else outcome.skip_message
    )
    assert f"{labeled} new labeled" in counted or counted == str(labeled), (labeled, counted)

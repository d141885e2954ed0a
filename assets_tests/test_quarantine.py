"""The fixed corpus of bad sessions (assets_tests/corpus): each is quarantined with its reason,
raw bytes stay as they were, and the good session in the same lake goes through."""

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

import dagster as dg
import pytest
from click.testing import CliRunner

from autosink_platform.cli import main
from autosink_platform.definitions import defs
from autosink_platform.defs import sensors
from autosink_platform.defs.runner import QUIET, register_sessions
from autosink_platform.lake.sessions import Lake, content_hash
from autosink_platform.lake.store import FeatureStore
from autosink_platform.pipelines.sink import SINK, ingest_session

CORPUS = Path(__file__).parent / "corpus" / "bad_sessions"
EXPECTED = json.loads((CORPUS / "expected.json").read_text())


@pytest.fixture
def corpus_lake(tmp_path) -> Lake:
    shutil.copytree(CORPUS / "raw", tmp_path / "lake" / "raw")
    (tmp_path / "lake" / "raw" / "pi-bad" / "2026-11-02" / "no-frames" / "frames").mkdir(
        exist_ok=True
    )  # git keeps no empty dirs
    return Lake(tmp_path / "lake")


def test_corpus_covers_every_reason_the_issue_names():
    reasons = set(EXPECTED.values())
    assert {
        "corrupt_frame",
        "invalid_event",
        "missing_field",
        "bad_field_type",
        "unknown_schema_version",
        "timestamp_out_of_range",
        "event_time_backwards",
        "event_after_session_end",
        "unknown_event_type",
        "no_frames",
        "bad_frame_size",
        "frame_count_mismatch",
        "frame_geometry",
        "covered_camera",
    } <= reasons


def test_every_bad_session_is_quarantined_with_its_reason_and_nothing_is_lost(corpus_lake, tmp_path):
    store = FeatureStore(tmp_path / "store", "sink")
    sessions = corpus_lake.committed_sessions()
    assert set(sessions) == set(EXPECTED)
    before = {sid: content_hash(p) for sid, p in sessions.items()}
    results = {sid: ingest_session(corpus_lake, store, sid) for sid in sorted(sessions)}

    for sid, reason in EXPECTED.items():
        if reason is None:
            assert results[sid]["status"] == "ingested", results[sid]
        else:
            assert (results[sid]["status"], results[sid]["reason"]) == ("quarantined", reason), (sid, results[sid])
            assert results[sid]["detail"]
    records = corpus_lake.quarantined()
    assert set(records) == {s for s, r in EXPECTED.items() if r is not None}
    assert all(records[s].reason == EXPECTED[s] for s in records)
    assert {sid: content_hash(p) for sid, p in corpus_lake.committed_sessions().items()} == before  # untouched
    assert store.get_session("good")["meta"]["session_id"] == "good"


def test_quarantine_shows_in_dagster_metadata_and_cli(corpus_lake, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOSINK_HOME", str(corpus_lake.root.parent))
    (tmp_path / "dagster").mkdir()
    with dg.DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:
        register_sessions(instance, SINK, corpus_lake)
        job = defs.resolve_job_def("sink_ingest")
        for sid in ("event-after-end", "good"):
            assert job.execute_in_process(instance=instance, partition_key=sid, run_config=QUIET).success
        raw = dg.AssetKey(["sink", "raw_sessions"])
        metadata = lambda sid: (
            instance.fetch_materializations(  # noqa: E731
                dg.AssetRecordsFilter(asset_key=raw, asset_partitions=[sid]), limit=1
            )
            .records[0]
            .asset_materialization.metadata
        )
        assert metadata("event-after-end")["status"].value == "quarantined"
        assert metadata("event-after-end")["reason"].value == "event_after_session_end"
        assert metadata("good")["status"].value == "ingested"
        labeled = (
            instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(["sink", "labeled_frames"]), asset_partitions=["good"]),
                limit=1,
            )
            .records[0]
            .asset_materialization.metadata
        )
        assert labeled["labeled"].value > 0

    out = CliRunner().invoke(main, ["lake", "status", "--home", str(corpus_lake.root.parent)]).output
    assert "quarantined: 1" in out and "event-after-end: event_after_session_end" in out


def test_an_operator_quarantines_and_releases_by_hand_and_both_are_audited(corpus_lake, tmp_path, monkeypatch):
    """The CLI acts on the lake the resources configure; the sensor ingests a released session
    again; the gates let it through; the raw files never change."""
    home = str(corpus_lake.root.parent)
    monkeypatch.setenv("USER", "ops-alice")
    monkeypatch.setenv("LOGNAME", "ops-alice")
    before = {sid: content_hash(p) for sid, p in corpus_lake.committed_sessions().items()}
    store = FeatureStore(tmp_path / "store", "sink")
    for sid in ("good", "covered-lens"):
        ingest_session(corpus_lake, store, sid)
    assert corpus_lake.quarantined()["covered-lens"].reason == "covered_camera"
    runner = CliRunner()

    no_reason = runner.invoke(main, ["lake", "quarantine", "good", "--reason", " ", "--home", home])
    assert no_reason.exit_code != 0 and "say why" in no_reason.output
    unknown = runner.invoke(main, ["lake", "quarantine", "nope", "--reason", "x", "--home", home])
    assert unknown.exit_code != 0 and "nope" in unknown.output
    done = runner.invoke(main, ["lake", "quarantine", "good", "--reason", "kitchen remodel", "--home", home])
    assert done.exit_code == 0, done.output
    record = corpus_lake.quarantined()["good"]
    assert (record.reason, record.detail, record.by) == ("operator", "kitchen remodel", "ops-alice")

    (tmp_path / "dagster").mkdir()
    with dg.DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:
        from autosink_platform.defs.resources import LakeResource

        sensor = defs.resolve_sensor_def("sink_new_sessions")

        def tick(cursor):  # once the release has settled on the sensor's clock
            context = dg.build_sensor_context(
                instance=instance, cursor=cursor, resources={"lake": LakeResource(root=str(corpus_lake.root))}
            )
            with mock.patch.object(sensors, "_now", lambda: datetime.now(UTC) + sensors.SETTLE_MAX):
                return sensor(context)

        register_sessions(instance, SINK, corpus_lake)
        cursor = tick(None).cursor
        released = runner.invoke(main, ["lake", "release", "covered-lens", "--reason", "lens cap test", "--home", home])
        assert released.exit_code == 0, released.output
        again = tick(cursor)
        assert [r.partition_key for r in again.run_requests] == ["covered-lens"]
        assert tick(again.cursor).run_requests == []  # once
    assert ingest_session(corpus_lake, store, "covered-lens")["status"] == "ingested"  # the gate lets it through
    assert "covered-lens" not in corpus_lake.quarantined()
    assert not runner.invoke(main, ["lake", "release", "covered-lens", "--reason", "x", "--home", home]).exit_code == 0

    audit = runner.invoke(main, ["lake", "audit", "--home", home]).output.splitlines()
    assert [line.split()[1:3] for line in audit] == [["quarantine", "good"], ["release", "covered-lens"]]
    assert "by ops-alice: kitchen remodel" in audit[0] and "by ops-alice: lens cap test" in audit[1]
    status = runner.invoke(main, ["lake", "status", "--home", home]).output
    assert "good: operator: kitchen remodel" in status and "by ops-alice" in status
    assert {sid: content_hash(p) for sid, p in corpus_lake.committed_sessions().items()} == before


def _resized_copy(session: Path, out: Path, size: int) -> Path:
    """The same session recorded by another camera: every frame at ``size`` x ``size``."""
    import io

    from PIL import Image

    copy = out / session.name
    shutil.copytree(session, copy)
    (copy / "_COMMITTED").unlink()
    for f in (copy / "frames").iterdir():
        buf = io.BytesIO()
        Image.open(f).resize((size, size)).save(buf, format="PNG")
        f.write_bytes(buf.getvalue())
    return copy


def test_a_device_with_another_camera_never_wedges_the_dataset(home, tmp_path):
    """A session of 96x96 frames, uploaded through the fleet API into a 64x64 lake, is
    quarantined at ingest with its reason; the dataset is built from the good sessions."""

    from autosink_platform.fleet.api import create_app
    from autosink_platform.fleet.devices import DeviceRegistry
    from autosink_platform.fleet.uploads import pack_session
    from autosink_platform.home import Home

    from .test_fleet_api import _served

    lake = Lake(home / "lake")
    good = lake.committed_sessions()
    source = good[sorted(good)[0]]
    odd = _resized_copy(source, tmp_path, 96)
    meta = json.loads((odd / "session.json").read_text())
    meta["session_id"] = odd.name + "-cam2"
    (odd / "session.json").write_text(json.dumps(meta))
    odd = odd.rename(odd.with_name(meta["session_id"]))
    h = Home(home)
    token = DeviceRegistry(h.devices_db).add(meta["device_id"])
    with _served(create_app(h)) as url:
        import httpx

        r = httpx.post(f"{url}/v1/sessions", content=pack_session(odd), headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201, r.text  # content problems never refuse an upload
    before = {sid: content_hash(p) for sid, p in lake.committed_sessions().items()}

    (tmp_path / "dagster").mkdir()
    with dg.DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:
        register_sessions(instance, SINK, lake)
        ingest = defs.resolve_job_def("sink_ingest")
        for sid in sorted(before):
            assert ingest.execute_in_process(instance=instance, partition_key=sid, run_config=QUIET).success
        dataset = dg.materialize(
            [a for a in defs.assets if dg.AssetKey(["sink", "validated_dataset"]) in a.keys],
            instance=instance,
            resources=defs.resources,
            selection=[dg.AssetKey(["sink", "validated_dataset"])],
        )
        assert dataset.success
        ref = dataset.asset_value(dg.AssetKey(["sink", "validated_dataset"]))
    record = lake.quarantined()[meta["session_id"]]
    assert record.reason == "frame_geometry" and "96x96" in record.detail and "64x64" in record.detail
    assert set(ref.sessions) == set(good)  # every good session, and only those
    assert {sid: content_hash(p) for sid, p in lake.committed_sessions().items()} == before

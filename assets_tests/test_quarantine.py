"""The fixed corpus of bad sessions (assets_tests/corpus): each is quarantined with its reason,
raw bytes stay as they were, and the good session in the same lake goes through."""

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from autosink_platform.cli import main
from autosink_platform.definitions import defs
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

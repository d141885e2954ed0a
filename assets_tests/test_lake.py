import json
import shutil

import numpy as np
import pytest
from PIL import Image

from autosink_platform.labeling.propagation import decisions_per_frame
from autosink_platform.lake.demo import DemoLakeConfig, generate_demo_lake, read_truth
from autosink_platform.lake.sessions import (
    COMMITTED,
    EVENT_TYPES,
    REQUIRED_FIELDS,
    Lake,
    SessionFormatError,
    content_hash,
    read_session,
)
from autosink_platform.lake.store import FeatureStore
from autosink_platform.pipelines.sink import ingest_session

from .conftest import TINY


def test_generated_sessions_follow_the_public_format(tiny_lake):
    lake = Lake(tiny_lake)
    sessions = lake.committed_sessions()
    assert len(sessions) == TINY.devices * TINY.sessions_per_device
    for sid, path in sessions.items():
        device, day = path.parent.parent.name, path.parent.name
        meta = json.loads((path / "session.json").read_text())
        assert set(REQUIRED_FIELDS) <= set(meta) and meta["session_id"] == sid and meta["device_id"] == device
        assert meta["started_at"].startswith(day)
        assert (path / COMMITTED).exists()
        frames = sorted((path / "frames").iterdir())
        assert len(frames) == TINY.frames_per_session and frames[0].name == "000000.png"
        assert Image.open(frames[0]).size == (TINY.image_size, TINY.image_size)
        for line in (path / "events.jsonl").read_text().splitlines():
            event = json.loads(line)
            assert event["type"] in EVENT_TYPES and 0 <= event["t"] <= TINY.frames_per_session / TINY.fps
        read_session(path)  # parses without error


def test_generator_is_deterministic_for_a_seed(tmp_path, tiny_lake):
    again = tmp_path / "again"
    generate_demo_lake(again, TINY, progress=False)
    ours, theirs = Lake(tiny_lake).committed_sessions(), Lake(again).committed_sessions()
    assert ours.keys() == theirs.keys()
    strip = lambda p: {f.relative_to(p): f.read_bytes() for f in p.rglob("*") if f.is_file() and f.name != COMMITTED}  # noqa: E731
    for sid in ours:
        assert strip(ours[sid]) == strip(theirs[sid]), sid

    other = tmp_path / "other"
    generate_demo_lake(
        other, DemoLakeConfig(devices=1, sessions_per_device=1, frames_per_session=120, seed=8), progress=False
    )
    ((sid, first),) = Lake(other).committed_sessions().items()
    assert sid in ours  # ids depend on device and time only, so the same session with another seed ...
    assert content_hash(first) != content_hash(ours[sid])  # ... has other content


def test_truth_matches_events_and_has_realistic_errors(tiny_lake):
    errors, overrides, positives = [], 0, []
    for sid, path in Lake(tiny_lake).committed_sessions().items():
        s, truth = read_session(path), read_truth(tiny_lake, sid)
        decided = decisions_per_frame(list(s.events), len(s.frames), s.fps)
        np.testing.assert_array_equal(decided, truth["model_decision"].to_numpy())  # events encode the decisions
        errors.append(np.mean(decided != truth["valve_should_open"].to_numpy()))
        positives.append(truth["valve_should_open"].mean())
        overrides += sum(e.type.startswith("user_") for e in s.events)
        # every override states the true valve state at its frame
        for e in s.events:
            if e.type.startswith("user_"):
                assert truth["valve_should_open"].iloc[round(e.t * s.fps)] == (e.type == "user_open")
    assert 0.05 < np.mean(errors) < 0.2
    assert 0.2 < np.mean(positives) < 0.6
    assert overrides > 0


# -- bad sessions are quarantined, raw files untouched, good ones proceed ----------------------


def _edit_json(path, **changes):
    meta = json.loads(path.read_text())
    for k, v in changes.items():
        if v is ...:
            del meta[k]
        else:
            meta[k] = v
    path.write_text(json.dumps(meta))


BREAKAGES = {
    "missing_field": lambda p: _edit_json(p / "session.json", fps=...),
    "bad_field_type": lambda p: _edit_json(p / "session.json", fps="fast"),
    "unknown_schema_version": lambda p: _edit_json(p / "session.json", schema_version=99),
    "invalid_json": lambda p: (p / "session.json").write_text("{not json"),
    "corrupt_frame": lambda p: (p / "frames" / "000003.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated"),
    "no_frames": lambda p: shutil.rmtree(p / "frames"),
    "bad_frame_name": lambda p: (p / "frames" / "000005.png").rename(p / "frames" / "000999.png"),
    "invalid_event": lambda p: (p / "events.jsonl").write_text('{"t": 1.0, "type": "valve_open"\n'),
    "unknown_event_type": lambda p: (p / "events.jsonl").write_text('{"t": 1.0, "type": "explode"}\n'),
    "event_time_backwards": lambda p: (p / "events.jsonl").write_text(
        '{"t": 2.0, "type": "user_open"}\n{"t": 1.0, "type": "user_close"}\n'
    ),
    "event_out_of_range": lambda p: (p / "events.jsonl").write_text('{"t": 9999.0, "type": "user_open"}\n'),
}


@pytest.mark.parametrize("reason", sorted(BREAKAGES))
def test_bad_session_is_quarantined_with_its_reason(tiny_lake, tmp_path, reason):
    lake, store = Lake(tiny_lake), FeatureStore(tmp_path / "store", "sink")
    bad, *good = sorted(lake.committed_sessions())
    BREAKAGES[reason](lake.session_path(bad))
    before = content_hash(lake.session_path(bad))

    result = ingest_session(lake, store, bad)
    assert result["status"] == "quarantined" and result["reason"] == reason
    assert lake.quarantined()[bad].reason == reason
    assert content_hash(lake.session_path(bad)) == before  # raw data never modified
    assert ingest_session(lake, store, good[0])["status"] == "ingested"  # others proceed


def test_session_without_commit_marker_is_never_listed(tiny_lake):
    lake = Lake(tiny_lake)
    sid, path = next(iter(lake.committed_sessions().items()))
    (path / COMMITTED).unlink()
    assert sid not in lake.committed_sessions()
    with pytest.raises(SessionFormatError, match="not_committed"):
        read_session(path)


def test_raw_sessions_are_append_only(tiny_lake):
    lake = Lake(tiny_lake)
    meta = json.loads(next(iter(lake.committed_sessions().values())).joinpath("session.json").read_text())
    with pytest.raises(FileExistsError):
        lake.write_session(meta, [b""], [])

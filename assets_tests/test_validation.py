import shutil

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autosink_platform.lake.sessions import Lake
from autosink_platform.lake.store import FeatureStore
from autosink_platform.pipelines.sink import SINK, ingest_session, label_session
from autosink_platform.validation.dataset import build_dataset, decode_frames, load_frame_stats, session_frames
from autosink_platform.validation.frame_stats import frame_stats
from autosink_platform.validation.schemas import DataValidationError, LabeledFrames, validate
from autosink_platform.validation.splits import SplitConfig, assign_split


def _labeled_store(lake_root, store_root):
    lake, store = Lake(lake_root), FeatureStore(store_root, "sink")
    hashes = {}
    for sid in lake.committed_sessions():
        hashes[sid] = ingest_session(lake, store, sid)["content_sha256"]
        label_session(store, sid, SINK.source.labeling)
    return lake, store, hashes


def test_a_dataset_reads_the_frames_kept_at_ingest_as_decoding_the_lake_would(tiny_lake, tmp_path):
    lake, store, hashes = _labeled_store(tiny_lake, tmp_path / "store")
    ids = sorted(hashes)
    table = store.get_labels(ids)
    decoded = decode_frames(lake.root, table)
    images, stats = session_frames(store, lake.root, table)
    np.testing.assert_array_equal(images, decoded)
    pd.testing.assert_frame_equal(stats, frame_stats(table, decoded))
    # A session ingested before frames were kept is decoded from the lake, with the same figures.
    (store.root / "frames" / f"{ids[1]}.npy").unlink()
    again, again_stats = session_frames(store, lake.root, table)
    np.testing.assert_array_equal(again, decoded)
    pd.testing.assert_frame_equal(again_stats, stats)
    # The snapshot holds them too.
    ref = build_dataset(store, lake.root, hashes)
    data = ref.open()
    np.testing.assert_array_equal(np.asarray(data.inputs), decoded)
    pd.testing.assert_frame_equal(load_frame_stats(ref.path), stats.reset_index(drop=True))
    # Rows out of session blocks cannot be matched to kept frames: refused, not mixed up.
    with pytest.raises(ValueError, match="session blocks"):
        session_frames(store, lake.root, pd.concat([table.iloc[:5], table.iloc[200:205], table.iloc[5:10]]))


def test_schema_errors_name_column_and_check(tiny_lake, tmp_path):
    _, store, hashes = _labeled_store(tiny_lake, tmp_path / "store")
    table = store.get_labels(sorted(hashes)[:1])
    table.loc[0, "confidence"] = 1.5
    table.loc[1, "label"] = 3
    table.loc[2, "label"] = pd.NA  # labeled source left behind: provenance check
    with pytest.raises(DataValidationError) as err:
        validate(table, LabeledFrames, "sink/labeled_frames")
    message = str(err.value)
    assert "sink/labeled_frames" in message
    assert "confidence" in message and "less_than_or_equal_to(1.0)" in message
    assert "label" in message and "isin" in message
    assert "label_provenance" in message or "a label needs a source" in message
    assert set(err.value.failure_cases["column"]) >= {"confidence", "label"}


def test_dataset_snapshot_is_content_addressed_and_reused(tiny_lake, tmp_path):
    lake, store, hashes = _labeled_store(tiny_lake, tmp_path / "store")
    ref = build_dataset(store, lake.root, hashes, SINK.source.split)
    table, images = ref.load()
    assert images.shape == (len(table), 64, 64, 3) and images.dtype == np.uint8
    assert table.groupby("session_id")["split"].nunique().max() == 1  # split by session, never by frame
    assert {c["sessions"] for c in (ref.counts[s] for s in ("train", "validation", "test"))} >= {1}

    again = build_dataset(store, lake.root, hashes, SINK.source.split)
    assert again.snapshot_id == ref.snapshot_id

    fewer = dict(sorted(hashes.items())[1:])
    if all(assign_split(s) in {assign_split(x) for x in fewer} for s in hashes):
        assert build_dataset(store, lake.root, fewer, SINK.source.split).snapshot_id != ref.snapshot_id
    relabeled = store.get_labels([sorted(hashes)[0]])
    relabeled.loc[relabeled["label"].notna().idxmax(), "confidence"] = 0.5
    store.put_labels(sorted(hashes)[0], relabeled)
    assert build_dataset(store, lake.root, hashes, SINK.source.split).snapshot_id != ref.snapshot_id


def test_dataset_refuses_an_empty_split(tiny_lake, tmp_path):
    lake, store, hashes = _labeled_store(tiny_lake, tmp_path / "store")
    train_only = {s: h for s, h in hashes.items() if assign_split(s) == "train"}
    with pytest.raises(ValueError, match="split has no sessions"):
        build_dataset(store, lake.root, train_only, SINK.source.split)


@settings(max_examples=50, deadline=None)
@given(
    old=st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=30, unique=True),
    new=st.lists(st.text(min_size=1, max_size=20), max_size=30),
)
def test_split_of_a_session_never_moves_when_sessions_are_added(old, new):
    before = {s: assign_split(s) for s in old}
    after = {s: assign_split(s) for s in old + new}
    assert all(after[s] == before[s] for s in old)


def test_split_fractions_are_close_to_config():
    cfg = SplitConfig(validation=0.2, test=0.1)
    splits = pd.Series([assign_split(f"session-{i}", cfg) for i in range(20000)]).value_counts(normalize=True)
    assert abs(splits["validation"] - 0.2) < 0.015 and abs(splits["test"] - 0.1) < 0.015
    with pytest.raises(ValueError):
        SplitConfig(validation=0.6, test=0.5)


def test_schema_failure_stops_the_dataset_asset_with_its_cases_in_dagster(tiny_lake, tmp_path, monkeypatch):
    import dagster as dg

    from autosink_platform.definitions import defs
    from autosink_platform.defs.runner import QUIET

    monkeypatch.setenv("AUTOSINK_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    shutil.copytree(tiny_lake, tmp_path / "home" / "lake")
    lake, store, hashes = _labeled_store(tmp_path / "home" / "lake", tmp_path / "home" / "store")
    bad = sorted(hashes)[0]
    table = store.get_labels([bad])
    table.loc[:4, "confidence"] = 7.0  # five impossible confidences in one session
    store.put_labels(bad, table)
    (tmp_path / "dagster").mkdir()
    with dg.DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:
        result = defs.resolve_job_def("sink_train").execute_in_process(
            instance=instance, run_config=QUIET, raise_on_error=False
        )
        assert not result.success
        (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert failure.step_key == "sink__validated_dataset"
        # A failure raised as anything but the schema's dg.Failure carries no user data: show its error.
        assert failure.event_specific_data.user_failure_data is not None, (
            failure.event_specific_data.error_display_string
        )
        info = failure.event_specific_data.error_display_string + str(
            failure.event_specific_data.user_failure_data.metadata
        )
        assert "confidence" in info and "less_than_or_equal_to(1.0)" in info
        assert failure.event_specific_data.user_failure_data.metadata["failure_cases"].value == 5
        assert instance.get_latest_materialization_event(dg.AssetKey(["sink", "classifier_model"])) is None


def test_session_records_cross_into_the_store_only_through_their_schema(tiny_lake, tmp_path):
    from autosink_platform.lake.sessions import Lake, read_session
    from autosink_platform.pipelines.sink import session_record
    from autosink_platform.validation.schemas import SessionRecords

    lake = Lake(tiny_lake)
    sid, path = next(iter(lake.committed_sessions().items()))
    record = session_record(read_session(path))
    assert len(validate(record, SessionRecords, "sink/raw_sessions")) == 1
    bad = record.assign(
        fps=0.0, width=8, content_sha256="not-a-hash", ended_at=record["started_at"] - pd.Timedelta("1s")
    )
    with pytest.raises(DataValidationError) as err:
        validate(bad, SessionRecords, "sink/raw_sessions")
    assert {"fps", "width", "content_sha256"} <= set(err.value.failure_cases["column"])
    assert "a session ends after it starts" in str(err.value) or "ordered" in str(err.value)


def test_labeling_validates_its_table_before_it_reaches_the_store(tiny_lake, tmp_path, monkeypatch):
    from autosink_platform.pipelines import sink

    lake, store, hashes = _labeled_store(tiny_lake, tmp_path / "store")
    sid = sorted(hashes)[0]
    before = store.get_labels([sid])
    broken = sink.propagate_labels

    def negative_confidence(*args, **kwargs):
        table = broken(*args, **kwargs)
        table.loc[0, "confidence"] = -1.0
        return table

    monkeypatch.setattr(sink, "propagate_labels", negative_confidence)  # a labeler bug, not bad input
    with pytest.raises(DataValidationError, match="store/labeled_frames|labeled_frames") as err:
        sink.label_session(store, sid, SINK.source.labeling)
    assert "confidence" in set(err.value.failure_cases["column"])
    pd.testing.assert_frame_equal(store.get_labels([sid]), before)  # nothing half-written

"""Frame statistics (objectness, skin share) and per-slice case validation."""

import numpy as np
import pandas as pd
import pytest

from autosink_platform.lake.demo import read_truth
from autosink_platform.lake.sessions import Lake
from autosink_platform.lake.store import FeatureStore
from autosink_platform.pipelines.sink import SINK, SINK_SLICES, ingest_session, label_session
from autosink_platform.validation.cases import (
    BELOW_FLOOR,
    PASS,
    TOO_FEW,
    CaseFloors,
    CaseValidationFailed,
    Slice,
    check_floors,
    regressions,
    slice_table,
)
from autosink_platform.validation.dataset import build_dataset
from autosink_platform.validation.frame_stats import content_stats, frame_stats


@pytest.fixture(scope="module")
def frames(tiny_lake_template, tmp_path_factory):
    """The tiny lake's dataset with frame statistics and the generator's truth per frame."""
    lake, store = Lake(tiny_lake_template), FeatureStore(tmp_path_factory.mktemp("store"), "sink")
    hashes = {}
    for sid in lake.committed_sessions():
        hashes[sid] = ingest_session(lake, store, sid)["content_sha256"]
        label_session(store, sid, SINK.source.labeling)
    ref = build_dataset(store, lake.root, hashes, SINK.source.split)
    table, images = ref.load()
    truth = pd.concat([read_truth(lake.root, s).assign(session_id=s) for s in table["session_id"].unique()])
    truth = table[["session_id", "frame_index"]].merge(truth, on=["session_id", "frame_index"], how="left")
    return table, np.asarray(images), ref.frame_stats(), truth


def test_stats_are_stored_with_the_snapshot_and_reproducible(frames):
    table, images, stored, _ = frames
    pd.testing.assert_frame_equal(stored, frame_stats(table, images).reset_index(drop=True), check_dtype=False)
    assert stored["objectness"].between(0, 1).all() and stored["skin_share"].between(0, 1).all()


def test_objectness_grows_with_the_objects_in_the_basin(frames):
    _, _, stats, truth = frames
    objects = truth["resting_dishes"] + (truth["activity"].fillna("none") != "none")
    medians = stats["objectness"].groupby(objects.clip(upper=3).to_numpy()).median()
    assert medians.is_monotonic_increasing and medians[0] < 0.06 < medians[3], medians.to_dict()


def test_objectness_ignores_the_light_level(frames):
    table, images, stats, _ = frames
    darker = (images * 0.7).astype(np.uint8)  # the light dims: nothing entered the basin
    moved = content_stats(darker)["objectness"]
    assert np.abs(moved - stats["objectness"]).median() < 0.02


def test_hands_are_told_from_dishes(frames):
    table, _, stats, truth = frames
    activity = next(s for s in SINK_SLICES if s.name == "activity").assign(pd.concat([table, stats], axis=1))
    busy = truth["activity"].isin(["hands", "dish"]).to_numpy()
    said = activity.to_numpy()[busy]
    real = np.where(truth["activity"].to_numpy()[busy] == "hands", "hands", "dishes")
    assert np.mean(said == real) > 0.7


FRAMES = pd.DataFrame({"light": ["dim"] * 60 + ["bright"] * 60 + ["odd"] * 5})
LIGHT = (Slice("light", lambda f: f["light"]),)


def _scored(dim_errors: int) -> tuple[np.ndarray, np.ndarray]:
    labels = np.tile([0, 1], len(FRAMES) // 2 + 1)[: len(FRAMES)]
    scores = labels.astype(float).copy()
    scores[:dim_errors] = 1 - scores[:dim_errors]  # the first frames are dim
    return scores, labels


def test_slice_table_flags_the_group_below_its_floor():
    floors = CaseFloors(metric="accuracy", floor=0.9, min_examples=50)
    table = slice_table(FRAMES, *_scored(dim_errors=12), 0.5, LIGHT, floors).set_index("group")
    assert table.loc["dim", "value"] == pytest.approx(48 / 60) and table.loc["dim", "status"] == BELOW_FLOOR
    assert table.loc["bright", "status"] == PASS and table.loc["odd", "status"] == TOO_FEW
    with pytest.raises(CaseValidationFailed, match=r"light=dim: accuracy 0\.800 < 0\.9 \(n=60\)"):
        check_floors("sink.classifier v3", table.reset_index())
    check_floors("ok", slice_table(FRAMES, *_scored(dim_errors=3), 0.5, LIGHT, floors))


def test_a_group_that_got_worse_than_the_champion_is_a_regression():
    floors = CaseFloors(metric="accuracy", floor=0.5, min_examples=50, max_regression=0.03)
    champion = slice_table(FRAMES, *_scored(dim_errors=0), 0.5, LIGHT, floors)
    slightly = slice_table(FRAMES, *_scored(dim_errors=1), 0.5, LIGHT, floors)  # 1/60 < 0.03
    assert regressions(slightly, champion, floors) == []
    worse = slice_table(FRAMES, *_scored(dim_errors=6), 0.5, LIGHT, floors)
    (reg,) = regressions(worse, champion, floors)
    assert (reg["slice"], reg["group"], reg["champion"]) == ("light", "dim", 1.0) and reg["candidate"] == 0.9


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="125 frames, 3 scores"):
        slice_table(FRAMES, np.zeros(3), np.zeros(3), 0.5, LIGHT, CaseFloors())

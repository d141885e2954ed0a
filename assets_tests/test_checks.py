"""Each dataset gate passes on a healthy dataset and trips on a purpose-made bad one."""

import numpy as np
import pandas as pd
import pytest

from autosink_platform.lake.sessions import Lake
from autosink_platform.lake.store import FeatureStore
from autosink_platform.pipelines.sink import SINK, ingest_session, label_session
from autosink_platform.validation import checks
from autosink_platform.validation.dataset import build_dataset
from autosink_platform.validation.frame_stats import frame_stats

CFG = checks.DatasetChecksConfig()


@pytest.fixture(scope="module")
def dataset(tiny_lake_template, tmp_path_factory):
    lake, store = Lake(tiny_lake_template), FeatureStore(tmp_path_factory.mktemp("store"), "sink")
    hashes = {}
    for sid in lake.committed_sessions():
        hashes[sid] = ingest_session(lake, store, sid)["content_sha256"]
        label_session(store, sid, SINK.source.labeling)
    table, images = build_dataset(store, lake.root, hashes, SINK.source.split).load()
    return table, np.asarray(images)


def _outcomes(table, images):
    return {o.name: o for o in checks.run_all(table, images, CFG)}


def test_healthy_dataset_passes_every_gate(dataset):
    outcomes = _outcomes(*dataset)
    assert set(outcomes) == {
        "min_examples",
        "class_balance",
        "no_leakage",
        "label_sources",
        "image_quality",
        "near_duplicates",
        "drift",
    }
    assert all(o.passed for o in outcomes.values()), {n: o.description for n, o in outcomes.items() if not o.passed}


def _relabel(table, mask, label):
    out = table.copy()
    out.loc[mask, "label"] = pd.array([label] * int(mask.sum()), dtype="Int8")
    return out


BAD = {
    "min_examples": lambda t, im: (_relabel(t, (t["split"] == "test") & (t["label"] == 1), 0), im),
    "class_balance": lambda t, im: (_relabel(t, t["label"].notna().to_numpy(), 1), im),
    "no_leakage": lambda t, im: (t.assign(split=np.where(t.index % 2 == 0, "train", t["split"])), im),
    "label_sources": lambda t, im: (
        t.assign(label_source=pd.array(np.where(t["label"].notna(), "implicit", None), dtype="string")),
        im,
    ),
    "image_quality": lambda t, im: (
        t,
        np.where(np.asarray(t.index % 5 == 0)[:, None, None, None], 0, im).astype(np.uint8),
    ),
    "near_duplicates": lambda t, im: (
        t,
        np.where(
            (t["split"] != "train").to_numpy()[:, None, None, None], im[np.flatnonzero(t["split"] == "train")[0]], im
        ).astype(np.uint8),
    ),
}


@pytest.mark.parametrize("check", sorted(BAD))
def test_each_gate_trips_on_its_bad_dataset(dataset, check):
    outcome = _outcomes(*BAD[check](*dataset))[check]
    assert not outcome.passed, outcome.description
    assert outcome.severity == (checks.WARNING if check == "near_duplicates" else checks.ERROR)


def test_dhash_is_stable_and_separates_different_frames(dataset):
    _, images = dataset
    h = checks.dhash(images[:50])
    assert (checks.dhash(images[:50]) == h).all() and len(set(h.tolist())) > 40


def test_drift_against_the_champions_data(dataset):
    table, images = dataset
    ref = (table, frame_stats(table, images))
    same = {o.name: o for o in checks.run_all(table, images, CFG, reference=ref)}["drift"]
    assert same.passed and same.metadata["psi_brightness"] < 0.01
    darker = (images * 0.5).astype(np.uint8)  # the kitchens got much darker
    moved = {o.name: o for o in checks.run_all(table, darker, CFG, reference=ref)}["drift"]
    assert not moved.passed and moved.severity == checks.ERROR and moved.metadata["psi_brightness"] > CFG.psi_error
    relabeled = _relabel(table, table["label"].notna().to_numpy() & (np.arange(len(table)) % 2 == 0), 1)
    shifted = {o.name: o for o in checks.run_all(relabeled, images, CFG, reference=ref)}["drift"]
    assert not shifted.passed and shifted.metadata["label_shift"] > CFG.max_label_shift
    assert checks.psi(np.arange(1000.0), np.arange(1000.0)) == pytest.approx(0.0, abs=1e-9)


def test_image_quality_tabulates_every_statistic_against_the_labels(dataset):
    by_label = _outcomes(*dataset)["image_quality"].metadata["by_label"]
    assert set(by_label["label"]) <= {"open", "closed", "unlabeled"} and {"open", "closed"} <= set(by_label["label"])
    assert {"brightness", "contrast", "sharpness", "saturated", "objectness", "skin_share"} <= set(by_label.columns)
    # Water should flow while something is under the spout: open frames hold more foreground.
    row = by_label.set_index("label")["objectness"]
    assert row["open"] > row["closed"]

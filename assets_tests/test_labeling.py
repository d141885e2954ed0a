import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from autosink_platform.labeling.propagation import (
    IMPLICIT,
    OVERRIDE,
    LabelingConfig,
    agreement_report,
    propagate_labels,
)
from autosink_platform.lake.demo import read_truth
from autosink_platform.lake.sessions import Event, Lake, read_session

FPS = 5.0


def test_override_labels_its_window_with_the_users_state():
    # The model wrongly opens at 4 s; the user closes at 4.6 s.
    # A 1 s reach would start at 3.6 s, before the model's wrong switch at 4.0 s.
    cfg = LabelingConfig(override_before_s=1.0)
    events = [Event(4.0, "valve_open", 0.7), Event(4.6, "user_close"), Event(8.0, "valve_close", 0.2)]
    labels = propagate_labels(events, 60, FPS, cfg)
    k = int(4.6 * FPS)
    window = labels.iloc[int(4.0 * FPS) : k + int(cfg.override_after_s * FPS) + 1]
    assert (window["label"] == 0).all() and (window["label_source"] == OVERRIDE).all()
    assert window["confidence"].max() == cfg.strong_confidence
    assert window["confidence"].min() >= cfg.strong_edge_confidence
    # The window stops at the model's switch: the frames before it are not the override's.
    is_override = (labels["label_source"] == OVERRIDE).fillna(False)
    assert not is_override.iloc[int(3.6 * FPS) : int(4.0 * FPS)].any()


def test_unchallenged_stretches_become_weak_labels_without_their_edges():
    events = [Event(5.0, "valve_open", 0.9), Event(10.0, "valve_close", 0.1)]
    labels = propagate_labels(events, 75, FPS)
    margin = int(LabelingConfig().weak_margin_s * FPS)
    opened = labels.iloc[25 + margin : 50 - margin]
    assert (opened["label"] == 1).all() and (opened["label_source"] == IMPLICIT).all()
    assert labels.loc[25 : 25 + margin - 1, "label"].isna().all()  # the model reacts late
    assert (labels.iloc[: 25 - margin]["label"] == 0).all()


def test_short_and_overridden_stretches_stay_unlabeled():
    events = [
        Event(2.0, "valve_open", 0.6),
        Event(2.6, "valve_close", 0.4),  # 0.6 s: too short to trust
        Event(6.0, "valve_open", 0.8),
        Event(7.0, "user_close"),
        Event(12.0, "valve_close", 0.3),
    ]
    labels = propagate_labels(events, 80, FPS)
    assert labels.loc[10:12, "label"].isna().all()
    overridden = labels.iloc[30:60]
    assert not (overridden["label_source"] == IMPLICIT).any()


def test_disagreeing_overrides_cancel_where_their_windows_overlap():
    events = [Event(3.0, "user_open"), Event(3.4, "user_close")]
    labels = propagate_labels(events, 40, FPS)
    assert labels.loc[15:17, "label"].isna().all()
    assert labels["label"].notna().sum() > 0


def test_label_provenance_is_consistent():
    events = [Event(1.0, "valve_open", 0.8), Event(3.0, "user_close"), Event(9.0, "valve_close", 0.1)]
    labels = propagate_labels(events, 60, FPS)
    labeled = labels["label"].notna()
    assert (labeled == labels["label_source"].notna()).all()
    assert (labeled == (labels["confidence"] > 0)).all()


def test_agreement_with_generator_truth(tiny_lake):
    """The labeling targets: strong labels >= 95 % right, weak >= 95 %, most frames covered."""
    tables, truths = [], []
    for sid, path in Lake(tiny_lake).committed_sessions().items():
        s = read_session(path)
        tables.append(propagate_labels(list(s.events), len(s.frames), s.fps))
        truths.append(read_truth(tiny_lake, sid)["valve_should_open"].to_numpy())
    report = agreement_report(pd.concat(tables, ignore_index=True), np.concatenate(truths))
    assert report["override_frames"] > 20
    assert report["override_agreement"] >= 0.95, report
    assert report["implicit_agreement"] >= 0.95, report
    assert report["coverage"] >= 0.5, report


# -- properties over random sessions ----------------------------------------------------------


@st.composite
def sessions(draw):
    n = draw(st.integers(20, 200))
    times = sorted(set(draw(st.lists(st.integers(0, n - 1), max_size=12))))
    events, state = [], 0
    for k in times:  # model decisions alternate, as the device emits them
        state = 1 - state
        events.append(Event(k / FPS, "valve_open" if state else "valve_close", 0.8 if state else 0.2))
    for k in draw(st.lists(st.integers(0, n - 1), max_size=4)):
        events.append(Event(k / FPS, draw(st.sampled_from(["user_open", "user_close"]))))
    return sorted(events, key=lambda e: e.t), n


@settings(max_examples=150, deadline=None)
@given(sessions())
def test_label_rules_hold_for_any_session(session):
    events, n = session
    cfg = LabelingConfig()
    labels = propagate_labels(events, n, FPS, cfg)
    label, source = labels["label"], labels["label_source"].fillna("none")
    # provenance: a label always has a source and a confidence, and only then
    assert ((label.notna()) == (source != "none")).all() and ((label.notna()) == (labels["confidence"] > 0)).all()
    # weak labels repeat the model's decision, at the weak confidence
    implicit = source == IMPLICIT
    assert (label[implicit] == labels["model_decision"][implicit]).all()
    assert (labels["confidence"][implicit] == cfg.weak_confidence).all()
    # strong labels come from an override close enough that says the same state
    overrides = [(round(e.t * FPS), int(e.type == "user_open")) for e in events if e.type.startswith("user_")]
    before, after = round(cfg.override_before_s * FPS), round(cfg.override_after_s * FPS)
    for i in np.flatnonzero(source == OVERRIDE):
        assert any(k - before <= i <= k + after and s == label[i] for k, s in overrides), i
        assert cfg.strong_edge_confidence <= labels["confidence"][i] <= cfg.strong_confidence
    # an overridden decision stretch gives no weak labels
    decision = labels["model_decision"].to_numpy()
    for k, _ in overrides:
        lo, hi = k, k
        while lo > 0 and decision[lo - 1] == decision[k]:
            lo -= 1
        while hi < n - 1 and decision[hi + 1] == decision[k]:
            hi += 1
        assert not implicit[lo : hi + 1].any()

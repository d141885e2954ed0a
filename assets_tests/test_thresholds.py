import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autosink_platform.thresholds import (
    BestF1,
    KSigma,
    Quantile,
    SessionUCL,
    TargetFPR,
    best_f1,
    calibrated,
    k_sigma,
    metrics_at,
    quantile,
    target_fpr,
)


def _brute_force_best_f1(scores, labels):
    best = -1.0
    for t in np.unique(scores):
        best = max(best, metrics_at(scores, labels, t)["f1"])
    return best


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 1)), min_size=2, max_size=60))
def test_best_f1_is_exact_with_ties(pairs):
    scores = np.array([p[0] for p in pairs], dtype=float) / 4  # few distinct values: many ties
    labels = np.array([p[1] for p in pairs])
    if labels.min() == labels.max():
        with pytest.raises(ValueError, match="both classes"):
            best_f1(scores, labels)
        return
    op = best_f1(scores, labels)
    assert op.f1 == pytest.approx(_brute_force_best_f1(scores, labels))
    assert op.threshold in set(scores)  # a real cut point
    at = metrics_at(scores, labels, op.threshold)
    assert (at["precision"], at["recall"], at["f1"]) == pytest.approx((op.precision, op.recall, op.f1))


def _scores_of_kind(kind: str, rng, labels: np.ndarray) -> np.ndarray:
    n = len(labels)
    if kind == "skewed_ties":
        return np.round(rng.lognormal(labels * 0.8, 0.6), 3)
    if kind == "normal":
        return rng.normal(labels * rng.uniform(0, 3), 1)
    if kind == "integers":
        return (rng.integers(0, 40, n) + labels * rng.integers(0, 4)).astype(float)
    if kind == "outliers":
        return np.where(rng.random(n) < 0.01, 1e9, rng.random(n)) + labels * 0.2
    if kind == "huge":
        return rng.normal(labels, 1) * 1e300
    if kind == "signed_zeros":  # equal scores, different bits: they must share a bucket
        return np.where(rng.random(n) < 0.5, -0.0, 0.0) + labels * np.round(rng.random(n), 2)
    if kind == "tiny":  # zeros and scores from 1e-30 up: a log scale over 100 binades
        return np.where(rng.random(n) < 0.2, 0.0, rng.lognormal(labels * 3, 10) * 1e-30)
    if kind == "negative_skewed":
        return -rng.exponential(1, n) + labels * rng.exponential(1, n)
    return 1 + rng.normal(labels, 1) * 1e-12  # narrow


@pytest.mark.parametrize(
    "kind",
    ["skewed_ties", "normal", "integers", "outliers", "huge", "narrow", "signed_zeros", "tiny", "negative_skewed"],
)
def test_best_f1_at_scale_is_the_exact_cut_a_full_sort_gives(kind):
    """Above 2^15 scores best_f1 sorts only the buckets that can hold the optimum; the cut it
    returns is the one sorting every score gives (highest threshold among equal F1s), also with
    heavy ties, far outliers, values beyond float32, a range narrower than float32 resolves,
    -0.0 beside 0.0, and non-negative scores spanning many binades (bucketed on a log scale)."""
    from autosink_platform.thresholds.policies import _best_f1_cut, _checked, _sorted_cut

    for seed in range(8):
        rng = np.random.default_rng(seed)
        labels = (rng.random(int(rng.integers(1 << 15, 1 << 17))) < rng.uniform(0.02, 0.6)).astype(np.int64)
        scores = _scores_of_kind(kind, rng, labels)
        _, _, lo, hi, n_pos = _checked(scores, labels)
        assert _best_f1_cut(scores, labels, n_pos, lo, hi) == _sorted_cut(scores, labels, int(labels.sum()))


@pytest.mark.parametrize("labels", [[0, -1], [1, 2], [0.0, 0.5]])
def test_labels_other_than_0_and_1_are_named(labels):
    with pytest.raises(ValueError, match="0 or 1"):
        best_f1([0.1, 0.2], np.asarray(labels))


def test_best_f1_known_case():
    op = best_f1([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert op.threshold == 0.35 and op.f1 == pytest.approx(0.8) and op.recall == 1.0


@pytest.mark.parametrize(
    "scores,labels,match",
    [
        ([0.1, np.nan], [0, 1], "NaN"),
        ([0.1, 0.2], [1, 1], "both classes"),
        ([0.1, 0.2], [0, 2], "0 or 1"),
        ([0.1, 0.2, 0.3], [0, 1], "labels for"),
        ([], [], "no scores"),
    ],
)
def test_degenerate_inputs_are_rejected(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        best_f1(scores, labels)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.integers(0, 1)), min_size=2, max_size=80), st.floats(0, 0.5))
def test_target_fpr_is_the_lowest_threshold_within_budget(pairs, fpr):
    scores, labels = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    if labels.min() == labels.max():
        return
    op = target_fpr(scores, labels, fpr)
    assert metrics_at(scores, labels, op.threshold)["fpr"] <= fpr + 1e-12
    lower = scores[scores < op.threshold]
    if lower.size:  # the next cut point down would break the budget
        assert metrics_at(scores, labels, lower.max())["fpr"] > fpr


def test_unsupervised_policies():
    normal = np.random.default_rng(0).normal(size=10000)
    assert k_sigma(normal, 3).threshold == pytest.approx(3.0, abs=0.1)
    assert quantile(normal, 0.99).fpr == pytest.approx(0.01, abs=0.001)
    with pytest.raises(ValueError):
        quantile(normal, 1.5)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.integers(0, 1)), min_size=2, max_size=80), st.floats(0, 0.5))
def test_centred_target_fpr_keeps_recall_and_moves_into_the_gap(pairs, fpr):
    scores, labels = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    if labels.min() == labels.max():
        return
    edge, mid = target_fpr(scores, labels, fpr), target_fpr(scores, labels, fpr, centred=True)
    at_mid = metrics_at(scores, labels, mid.threshold)
    assert mid.threshold >= edge.threshold
    assert at_mid["recall"] == pytest.approx(edge.recall) and mid.recall == pytest.approx(edge.recall)
    assert at_mid["fpr"] <= edge.fpr + 1e-12 and mid.fpr == pytest.approx(at_mid["fpr"])
    caught = scores[(labels == 1) & (scores >= edge.threshold)]
    if caught.size:
        assert mid.threshold == pytest.approx((edge.threshold + caught.min()) / 2)


def test_centred_target_fpr_sits_midway_between_the_negative_tail_and_the_positives():
    scores = np.r_[np.linspace(0, 1, 100), [3.0, 4.0]]
    labels = np.r_[np.zeros(100), [1, 1]].astype(int)
    assert target_fpr(scores, labels, 0.05).threshold == pytest.approx(scores[95])
    assert target_fpr(scores, labels, 0.05, centred=True).threshold == pytest.approx((scores[95] + 3.0) / 2)


def test_best_f1_plateau_takes_the_middle_of_the_near_best_range():
    rng = np.random.default_rng(0)
    # Two clear classes and, between them, a few frames whose labels alternate (label noise):
    # F1 barely moves as the threshold crosses them, so its argmax sits at an arbitrary end.
    noisy = np.linspace(0.2, 0.8, 20)
    scores = np.r_[rng.uniform(0, 0.15, 400), rng.uniform(0.85, 1, 400), noisy]
    labels = np.r_[np.zeros(400), np.ones(400), np.arange(20) % 2].astype(int)
    argmax, mid = best_f1(scores, labels), best_f1(scores, labels, plateau=True)
    lo, hi = mid.params["range"]
    assert hi - lo > 0.4  # the plateau spans most of the noisy stretch
    assert mid.threshold == pytest.approx((lo + hi) / 2) and 0.35 < mid.threshold < 0.65
    assert not 0.35 < argmax.threshold < 0.65
    assert mid.f1 >= argmax.f1 - mid.params["tolerance"]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.integers(0, 1)), min_size=2, max_size=80))
def test_best_f1_plateau_reports_the_f1_at_its_own_threshold(pairs):
    scores, labels = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    if labels.min() == labels.max():
        return
    op = best_f1(scores, labels, plateau=True)
    at = metrics_at(scores, labels, op.threshold)
    assert op.f1 == pytest.approx(at["f1"]) and op.precision == pytest.approx(at["precision"])
    lo, hi = op.params["range"]
    assert lo <= op.threshold <= hi and lo <= best_f1(scores, labels).threshold <= hi


@pytest.mark.parametrize(
    "policy",
    [BestF1(), BestF1(plateau=True), TargetFPR(0.05), TargetFPR(0.05, centred=True), KSigma(2.0), Quantile(0.9)],
    ids=repr,
)
def test_a_policy_object_names_its_split_and_chooses_the_point_its_function_does(policy):
    rng = np.random.default_rng(3)
    scores, labels = np.r_[rng.normal(0, 1, 400), rng.normal(3, 1, 100)], np.r_[np.zeros(400), np.ones(100)]
    op = policy.choose(scores, labels)
    assert op.policy == policy.name and policy.split in ("validation", "train")
    by_function = {
        "best_f1": lambda: best_f1(scores, labels, plateau=policy.plateau),
        "target_fpr": lambda: target_fpr(scores, labels, policy.fpr, centred=policy.centred),
        "k_sigma": lambda: k_sigma(scores, policy.k),
        "quantile": lambda: quantile(scores, policy.q),
    }[policy.name]()
    assert op == by_function
    np.testing.assert_array_equal(calibrated(pd.DataFrame({"source": ["a"] * 500}), scores, op), scores)


def test_session_ucl_gives_every_session_its_own_limit_and_one_threshold():
    rng = np.random.default_rng(0)
    rows = pd.DataFrame({"source": ["quiet"] * 500 + ["loud"] * 500})
    scores = np.r_[rng.normal(1, 0.1, 500), rng.normal(10, 1, 500)]  # the loud session scores 10x higher
    policy = SessionUCL(q=0.99, factor=1.0)
    op = policy.choose(scores, None, rows)
    assert op.policy == "session_ucl" and op.threshold == 1.0 and set(op.params["ucl"]) == {"quiet", "loud"}
    assert op.params["ucl"]["quiet"] == pytest.approx(np.quantile(scores[:500], 0.99))
    flagged = calibrated(rows, scores, op) >= 1.0
    assert op.fpr == pytest.approx(flagged.mean()) and 0 < flagged[:500].mean() <= 0.02 and flagged[500:].mean() <= 0.02
    # as the manifest stores it (a dict), the same calibration
    stored = {"policy": op.policy, "params": op.params}
    np.testing.assert_array_equal(calibrated(rows, scores, stored), calibrated(rows, scores, op))
    with pytest.raises(ValueError, match=r"no calibration \(UCL\) for session\(s\) \['new'\]"):
        calibrated(pd.DataFrame({"source": ["new"]}), np.ones(1), op)
    with pytest.raises(ValueError, match="needs the rows' source"):
        policy.choose(scores)

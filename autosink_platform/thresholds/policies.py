"""Operating-point policies. Convention everywhere: a sample is positive (valve open, anomalous)
when ``score >= threshold``; higher scores mean more positive."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class OperatingPoint:
    policy: str
    threshold: float
    precision: float | None
    recall: float | None
    f1: float | None
    fpr: float | None
    n_positive: int
    n_negative: int
    params: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)


def _check(scores, labels=None) -> tuple[np.ndarray, np.ndarray | None]:
    scores, labels, *_ = _checked(scores, labels)
    return scores, labels


def _checked(scores, labels=None) -> tuple[np.ndarray, np.ndarray | None, float, float, int]:
    """Scores as float64 and labels as int64 (0/1), with the lowest and highest score and the
    positives' count that the checks computed anyway (best_f1 at scale needs them)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError("no scores")
    lo, hi = scores.min(), scores.max()
    if not (np.isfinite(lo) and np.isfinite(hi)):  # NaN propagates through min/max
        raise ValueError(f"scores contain {np.sum(~np.isfinite(scores))} NaN/inf values")
    if labels is None:
        return scores, None, float(lo), float(hi), 0
    labels = np.asarray(labels).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} labels for {scores.size} scores")
    if labels.dtype.kind in "iu":  # as unsigned, negative values are huge: one comparison finds both
        wrong = labels.view(labels.dtype.str.replace("i", "u")).max() > 1
    else:
        wrong = labels.dtype != bool and np.any((labels != 0) & (labels != 1))
    if wrong:
        raise ValueError("labels must be 0 or 1")
    labels = labels.astype(np.int64, copy=False)
    n_pos = int(np.count_nonzero(labels))
    if n_pos in (0, labels.size):
        raise ValueError(f"labels are all {int(labels[0])}: an operating point needs both classes")
    return scores, labels, float(lo), float(hi), n_pos


def _cut_points(scores: np.ndarray, labels: np.ndarray):
    """Every distinct threshold (descending) with TP and FP when predicting ``score >= t``."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tp, fp = np.cumsum(y), np.cumsum(1 - y)
    last_of_tie = np.r_[s[1:] != s[:-1], True]  # a threshold can only sit between distinct scores
    return s[last_of_tie], tp[last_of_tie], fp[last_of_tie]


def _point(policy, thr, tp, fp, n_pos, n_neg, params) -> OperatingPoint:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / n_pos
    f1 = 2 * tp / (2 * tp + fp + (n_pos - tp))
    return OperatingPoint(
        policy, float(thr), float(precision), float(recall), float(f1), float(fp / n_neg), n_pos, n_neg, params
    )


BUCKET_BITS = 16  # at most 2**16 buckets in the first pass at scale (see _best_f1_cut)
SORT_BELOW = 1 << 15  # fewer scores than this: one sort is as quick


def _sorted_cut(scores: np.ndarray, labels: np.ndarray, n_pos: int) -> tuple[float, int, int]:
    thr, tp, fp = _cut_points(scores, labels)
    i = int(np.argmax(2 * tp / (2 * tp + fp + (n_pos - tp))))  # first maximum: highest threshold among equals
    return float(thr[i]), int(tp[i]), int(fp[i])


def _float_bits(scores: np.ndarray) -> np.ndarray:
    """Non-negative scores as integers in the same order: their float32 bits (int32)."""
    x = scores.astype(np.float32)
    x += np.float32(0.0)  # -0.0 becomes +0.0: equal scores get equal bits
    return x.view(np.int32)


def _best_f1_cut(scores: np.ndarray, labels: np.ndarray, n_pos: int, lo: float, hi: float) -> tuple[float, int, int]:
    """The highest-F1 cut point (threshold, TP, FP), the highest threshold among equals; exactly
    what sorting every score gives, without sorting them all. ``n_pos``, ``lo`` and ``hi`` are
    the positives' count and the score range (``_checked`` has them).

    Scores are bucketed by value in one O(n) pass. For any threshold inside bucket b, TP lies
    between the positives above b and those plus b's own (FP likewise), and F1 = 2 TP / (TP +
    FP + P) grows with TP and falls with FP, so each bucket has an upper bound on the F1 of its
    cut points; the cut at a bucket's lowest score is itself a cut point and its F1 a value
    that is reached. Only buckets whose bound reaches the best reached value can hold the
    optimum: their scores (a small share) are sorted and every cut point among them counted
    with the totals above their bucket."""
    if len(scores) < SORT_BELOW:
        return _sorted_cut(scores, labels, n_pos)
    if lo == hi:
        return float(hi), n_pos, len(scores) - n_pos
    if max(abs(lo), abs(hi)) > 1e38:  # beyond float32: sort them all
        return _sorted_cut(scores, labels, n_pos)
    # Any bucket assignment that never decreases with the score will do, as long as equal scores
    # share a bucket. Scores that are never negative (errors, distances: the usual anomaly
    # scores) are skewed, so they are bucketed on a log scale: the leading bits of their float32
    # value, read as an integer, which increase with the value. Other scores get even buckets.
    # The passes over all scores run on int32 (rounding to float32 is monotone), in place, up to
    # the last, which makes the index that bincount and the gather below take.
    bucket_bits = min(BUCKET_BITS, max(10, (len(scores) // 16).bit_length()))  # ~16 scores a bucket
    if lo >= 0:
        key = _float_bits(scores)  # int32
        first, last = (int(b) for b in _float_bits(np.array([lo, hi])))
        shift = max(0, (last - first).bit_length() - bucket_bits)
        key -= np.int32(first)
        key >>= shift
        n_buckets = ((last - first) >> shift) + 1
    else:
        n_buckets = 1 << bucket_bits
        x = scores.astype(np.float32)
        x -= np.float32(lo)
        x *= np.float32((n_buckets - 1) / (hi - lo) * (1 - 1e-6))
        key = x.astype(np.int32)
    key <<= 1
    index = np.add(key, labels, dtype=np.intp)  # bucket and class in one index: one counting pass
    counts = np.bincount(index, minlength=2 * n_buckets).reshape(n_buckets, 2)
    f, p = counts[:, 0], counts[:, 1]
    p_above = np.r_[np.cumsum(p[::-1])[::-1][1:], 0]  # positives in buckets above b
    f_above = np.r_[np.cumsum(f[::-1])[::-1][1:], 0]
    occupied = (p + f) > 0
    reached = 2 * (p_above + p) / (p_above + p + f_above + f + n_pos)  # the cut at b's lowest score
    bound = 2 * (p_above + p) / (p_above + p + f_above + n_pos)
    candidate = occupied & (bound >= reached[occupied].max() * (1 - 1e-12))
    chosen = np.flatnonzero(candidate)
    if chosen[-1] - chosen[0] + 1 == len(chosen):  # one run of buckets, the usual case: a range test
        keep = np.flatnonzero((key - np.int32(2 * chosen[0])).view(np.uint32) <= 2 * (chosen[-1] - chosen[0]))
    else:
        keep = np.flatnonzero(np.repeat(candidate, 2)[index])
    s, k = scores[keep], index[keep]
    order = np.argsort(-s, kind="stable")
    s, k = s[order], k[order]
    y, b = k & 1, k >> 1
    cy, cn = np.cumsum(y), np.cumsum(1 - y)
    starts = np.r_[0, np.flatnonzero(b[1:] != b[:-1]) + 1]  # buckets are contiguous in score order
    group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(b)]))
    tp = p_above[b] + cy - (cy[starts] - y[starts])[group]
    fp = f_above[b] + cn - (cn[starts] - (1 - y[starts]))[group]
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    s, tp, fp = s[last_of_tie], tp[last_of_tie], fp[last_of_tie]
    i = int(np.argmax(2 * tp / (2 * tp + fp + (n_pos - tp))))
    return float(s[i]), int(tp[i]), int(fp[i])


def best_f1(scores, labels, plateau: bool = False) -> OperatingPoint:
    """The threshold with the highest F1, exact over every distinct cut point: one sort for
    small inputs, a bucketed O(n) pass that sorts only the buckets that can hold the optimum at
    scale (``_best_f1_cut``).

    ``plateau``: on noisy validation labels F1 is flat over a wide range of thresholds, and its
    argmax lands anywhere on that range from one dataset (or one training run) to the next. Take
    instead the middle of the range of thresholds whose F1 is within one standard error of the
    best, sqrt(F1 (1 - F1) / positives) (the one-standard-error rule of model selection)."""
    scores, labels, lo, hi, n_pos = _checked(scores, labels)
    n_neg = len(labels) - n_pos
    if not plateau:
        return _point("best_f1", *_best_f1_cut(scores, labels, n_pos, lo, hi), n_pos, n_neg, {})
    thr, tp, fp = _cut_points(scores, labels)
    f1 = 2 * tp / (2 * tp + fp + (n_pos - tp))
    i = int(np.argmax(f1))  # first maximum = highest threshold among equals
    tolerance = float(np.sqrt(f1[i] * (1 - f1[i]) / n_pos))
    near = thr[f1 >= f1[i] - tolerance]
    t = float((near.min() + near.max()) / 2)
    pred = scores >= t
    params = {"plateau": True, "tolerance": tolerance, "range": [float(near.min()), float(near.max())]}
    return _point(
        "best_f1", t, int(np.sum(pred & (labels == 1))), int(np.sum(pred & (labels == 0))), n_pos, n_neg, params
    )


def target_fpr(scores, labels, fpr: float, centred: bool = False) -> OperatingPoint:
    """The lowest threshold (highest recall) whose false-positive rate is at most ``fpr``.

    ``centred``: every threshold between that one and the lowest positive score above it gives
    the same recall and no more false positives; take the middle of that gap instead of its
    lower edge. The edge sits on the tail of the negatives seen in validation, so negatives from
    sessions validation never saw cross it more often; the middle leaves them the most room."""
    if not 0 <= fpr < 1:
        raise ValueError(f"fpr must be in [0, 1): {fpr}")
    scores, labels = _check(scores, labels)
    thr, tp, fp = _cut_points(scores, labels)
    n_pos, n_neg = int(labels.sum()), len(labels) - int(labels.sum())
    params = {"fpr": fpr} | ({"centred": True} if centred else {})
    ok = np.flatnonzero(fp / n_neg <= fpr)
    if ok.size == 0:  # even the highest score is a false positive: flag nothing
        return OperatingPoint(
            "target_fpr", float(np.nextafter(thr[0], np.inf)), 0.0, 0.0, 0.0, 0.0, n_pos, n_neg, params
        )
    i = int(ok[-1])
    if not centred:
        return _point("target_fpr", thr[i], tp[i], fp[i], n_pos, n_neg, params)
    caught = scores[(labels == 1) & (scores >= thr[i])]
    t = thr[i] if caught.size == 0 else (thr[i] + caught.min()) / 2
    fp_t = int(np.sum((labels == 0) & (scores >= t)))
    return _point("target_fpr", t, tp[i], fp_t, n_pos, n_neg, params)


def k_sigma(normal_scores, k: float = 3.0) -> OperatingPoint:
    """mean + k * std of scores on normal data (no labels needed)."""
    scores, _ = _check(normal_scores)
    thr = scores.mean() + k * scores.std()
    return OperatingPoint(
        "k_sigma", float(thr), None, None, None, float(np.mean(scores >= thr)), 0, len(scores), {"k": k}
    )


def quantile(normal_scores, q: float = 0.99) -> OperatingPoint:
    """The q-quantile of scores on normal data (no labels needed)."""
    if not 0 < q < 1:
        raise ValueError(f"q must be in (0, 1): {q}")
    scores, _ = _check(normal_scores)
    thr = float(np.quantile(scores, q))
    return OperatingPoint("quantile", thr, None, None, None, float(np.mean(scores >= thr)), 0, len(scores), {"q": q})


def metrics_at(scores, labels, threshold: float) -> dict[str, float]:
    """Confusion-matrix figures at a fixed threshold (labels may be one class here)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(np.int64)
    pred = scores >= threshold
    tp, fp = int(np.sum(pred & (labels == 1))), int(np.sum(pred & (labels == 0)))
    fn, tn = int(np.sum(~pred & (labels == 1))), int(np.sum(~pred & (labels == 0)))
    return {
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "fpr": fp / (fp + tn) if fp + tn else 0.0,
        "accuracy": (tp + tn) / len(labels),
        "n": len(labels),
    }


# -- policies as objects: what a model spec declares -----------------------------------------
#
# A policy says which split's scores it is chosen on (labelled validation data, or the normal
# training data for protocols without labels there), chooses the operating point, and maps raw
# scores onto the operating point's scale (the identity, except for per-session calibration).


@dataclass(frozen=True)
class BestF1:
    plateau: bool = False
    name = "best_f1"
    split = "validation"

    def choose(self, scores, labels, rows=None) -> OperatingPoint:
        return best_f1(scores, labels, plateau=self.plateau)


@dataclass(frozen=True)
class TargetFPR:
    fpr: float
    centred: bool = False
    name = "target_fpr"
    split = "validation"

    def choose(self, scores, labels, rows=None) -> OperatingPoint:
        return target_fpr(scores, labels, self.fpr, centred=self.centred)


@dataclass(frozen=True)
class KSigma:
    k: float = 3.0
    name = "k_sigma"
    split = "train"

    def choose(self, scores, labels=None, rows=None) -> OperatingPoint:
        return k_sigma(scores, self.k)


@dataclass(frozen=True)
class Quantile:
    q: float = 0.99
    name = "quantile"
    split = "train"

    def choose(self, scores, labels=None, rows=None) -> OperatingPoint:
        return quantile(scores, self.q)


@dataclass(frozen=True)
class SessionUCL:
    """Each session (the rows' ``source``) gets its own upper control limit, the ``q``-quantile
    of the scores of its start-up windows times ``factor``; scores are divided by their session's
    UCL, so 1.0 is every session's threshold (SKAB's per-file calibration). The start-up is every
    window of the session's calibration rows, the ones trained on and the ones held out because
    they touch a labelled anomaly: labels play no part, so a device calibrating on its own
    start-up (``autosink_pi``) computes the same limit, and so do SKAB's notebooks."""

    q: float = 0.999
    factor: float = 4 / 3
    name = "session_ucl"
    split = ("train", "validation")  # a session's start-up windows

    def choose(self, scores, labels=None, rows=None) -> OperatingPoint:
        if rows is None or "source" not in rows:
            raise ValueError("session_ucl needs the rows' source (session) of every score")
        scores, _ = _check(scores)
        ucl = {
            str(source): float(np.quantile(scores[idx], self.q) * self.factor)
            for source, idx in rows.groupby("source", sort=True).indices.items()
        }
        params = {"q": self.q, "factor": self.factor, "ucl": ucl}
        op = OperatingPoint(self.name, 1.0, None, None, None, 0.0, 0, len(scores), params)
        return dataclasses.replace(op, fpr=float(np.mean(calibrated(rows, scores, op) >= 1.0)))

    @staticmethod
    def calibrate(rows, scores, params: dict) -> np.ndarray:
        ucl = params["ucl"]
        if missing := sorted(set(rows["source"]) - set(ucl)):
            raise ValueError(f"no calibration (UCL) for session(s) {missing[:5]}: they have no normal training windows")
        return np.asarray(scores) / rows["source"].map(ucl).to_numpy(np.float64)


ThresholdPolicy = BestF1 | TargetFPR | KSigma | Quantile | SessionUCL


def calibrated(rows, scores, op: OperatingPoint | dict) -> np.ndarray:
    """Scores on the operating point's scale (``op`` as chosen, or as a manifest stores it)."""
    policy, params = (op.policy, op.params) if isinstance(op, OperatingPoint) else (op["policy"], op["params"])
    return SessionUCL.calibrate(rows, scores, params) if policy == SessionUCL.name else np.asarray(scores)

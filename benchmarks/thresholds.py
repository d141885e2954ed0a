"""Exact best-F1 threshold (every distinct cut point; at scale a bucketed pass that sorts only the buckets that can hold the optimum) vs the reference tutorial's 1000-step search over evenly spaced thresholds, both as the tutorial wrote it (scikit-learn's f1_score per step) and at its fastest (TP/FP/FN counted with numpy per step). Prints a markdown table, writes JSON.

.venv/bin/python benchmarks/thresholds.py [--out benchmarks/results/thresholds.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score

from autosink_platform.thresholds import best_f1


def tutorial_loop(scores: np.ndarray, labels: np.ndarray, steps: int = 1000) -> tuple[float, float]:
    """The tutorial's search: ``sklearn.metrics.f1_score`` at each of ``steps`` evenly spaced
    thresholds between the lowest and highest score."""
    best_t, best = float(scores.min()), -1.0
    for t in np.linspace(scores.min(), scores.max(), steps):
        f1 = f1_score(labels, (scores >= t).astype(int), zero_division=0)
        if f1 > best:
            best_t, best = float(t), float(f1)
    return best_t, best


def numpy_loop(scores: np.ndarray, labels: np.ndarray, steps: int = 1000) -> tuple[float, float]:
    """The same 1000-step search with the confusion counts in numpy: the loop at its fastest."""
    best_t, best = float(scores.min()), -1.0
    positive = labels == 1
    for t in np.linspace(scores.min(), scores.max(), steps):
        pred = scores >= t
        tp = np.count_nonzero(pred & positive)
        fp = np.count_nonzero(pred) - tp
        fn = np.count_nonzero(positive) - tp
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        if f1 > best:
            best_t, best = float(t), float(f1)
    return best_t, best


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/thresholds.json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for n in (10**4, 10**5, 10**6):
        labels = (rng.random(n) < 0.3).astype(np.int64)
        # Reconstruction-error-like scores: right-skewed, overlapping classes, many ties after rounding.
        scores = np.round(rng.lognormal(mean=labels * 0.8, sigma=0.6), 4)
        repeat = 5 if n < 10**6 else 3
        # The exact search takes milliseconds: the median of many runs, so one slow run (a page
        # fault storm, a frequency step) does not set its figure.
        t_exact, op = timed(lambda s=scores, y=labels: best_f1(s, y), 31)
        t_loop, (_, loop_f1) = timed(lambda s=scores, y=labels: tutorial_loop(s, y), 1 if n >= 10**5 else repeat)
        t_np, (_, np_f1) = timed(lambda s=scores, y=labels: numpy_loop(s, y), 1 if n == 10**6 else repeat)
        rows.append(
            {
                "n": n,
                "exact_s": t_exact,
                "loop_1000_s": t_loop,
                "speedup": t_loop / t_exact,
                "numpy_loop_1000_s": t_np,
                "speedup_vs_numpy_loop": t_np / t_exact,
                "exact_f1": op.f1,
                "loop_f1": loop_f1,
                "f1_gain": op.f1 - loop_f1,
            }
        )
    print(
        "| n | exact best_f1 (s) | tutorial loop, sklearn (s) | speed-up | numpy loop (s) | speed-up | F1 exact | F1 loop |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['n']:,} | {r['exact_s']:.4f} | {r['loop_1000_s']:.2f} | {r['speedup']:.0f}x | "
            f"{r['numpy_loop_1000_s']:.3f} | {r['speedup_vs_numpy_loop']:.0f}x | {r['exact_f1']:.5f} | {r['loop_f1']:.5f} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()

"""Every detector family against simple baselines, on every dataset where it applies, in one table.

    .venv/bin/python benchmarks/detectors.py [--only synthetic --only robotarm ...] [--seeds 10]

Datasets: the seeded synthetic suite (``lake/synthetic.py``: periodic series, one planted anomaly
each) and the reference pipelines' validated datasets (robotarm, digits, valve, bearing; from
../shared/datasets, skipped with the reason when absent). Families: our own (pca, window_pca,
knn, dense_ae, conv_ae, rnn_ae, vae, anogan) and PyOD's isolation forest, LOF, ECOD and kNN,
used through the library for comparison. Window and image inputs are flattened for the
families that take rows.

Metrics on validation (where it holds both classes) and test: AUROC, AUPRC, best F1; for the
synthetic series also whether the top-scored row lies in the planted event, with the rows mapped
from windows by the detector's own rule (``Detector.score_series``). Fit and score seconds on
this machine. The pipeline defaults are chosen on validation only. The valve has no labelled
validation: its validation part is carved from each file's training rows with planted faults
(``skab.Carve``), every family (and the former default's longer epoch counts) is scored there by
the shipped rule, one model for all sessions with each session's UCL, and on the test rows by
SKAB's protocol. Prints a markdown table and writes JSON to benchmarks/results/detectors.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

SERIES_WINDOW = 64  # rows per window for the synthetic suite (its periods are 40-80 rows)


# -- the families, each as "make a fitted scorer" ----------------------------------------------


def _ours(family: str, **params) -> Callable:
    from autosink_platform.models.detectors import build_detector

    def fit(X):
        det = build_detector(family, **params).fit(X)
        return det.decision_function, det

    return fit


def _pyod(name: str, bank: int = 4096, **params) -> Callable:
    """A PyOD detector on flattened inputs; neighbour methods see the same subsampled bank as ours."""

    def fit(X):
        from pyod.models.ecod import ECOD
        from pyod.models.iforest import IForest
        from pyod.models.knn import KNN
        from pyod.models.lof import LOF

        model = {"iforest": IForest, "lof": LOF, "ecod": ECOD, "knn": KNN}[name](**params)
        flat = X.reshape(len(X), -1).astype(np.float64)
        if name in ("lof", "knn") and len(flat) > bank:
            flat = flat[np.sort(np.random.default_rng(0).choice(len(flat), bank, replace=False))]
        model.fit(flat)
        return (lambda Z: model.decision_function(Z.reshape(len(Z), -1).astype(np.float64))), None

    return fit


PYOD = {
    "pyod_iforest": _pyod("iforest", random_state=0),
    "pyod_lof": _pyod("lof", n_neighbors=20),
    "pyod_ecod": _pyod("ecod"),
    "pyod_knn": _pyod("knn", n_neighbors=5, method="mean"),
}


RNN_AE = {"cell": "gru", "hidden": 32, "epochs": 5, "batch_size": 64}  # the valve's family before the carve chose
# Families a pipeline shipped before this table chose keep the settings they were tuned with on
# their own dataset (elsewhere they run at their defaults).
FORMER = {
    "valve": {"rnn_ae": RNN_AE},
    "bearing": {"anogan": {"epochs": 30, "gan_epochs": 30, "batch_size": 32, "patience": 5}},
}


def families_for(kind: str, pipeline_params: dict[str, dict]) -> dict[str, Callable]:
    """Every family that applies to an input kind; a pipeline's own model keeps its parameters."""

    def own(family, **defaults):
        return _ours(family, **{**defaults, **pipeline_params.get(family, {})})

    if kind == "tabular":
        ours = {"pca": own("pca"), "knn": own("knn"), "dense_ae": own("dense_ae"), "vae": own("vae")}
    elif kind == "windows":
        ours = {
            "window_pca": own("window_pca"),
            "knn": own("knn", kind="windows"),
            "rnn_ae": own("rnn_ae", **RNN_AE),
            "vae": own("vae", kind="windows"),
        }
    else:
        ours = {
            "knn": own("knn", kind="images"),
            "conv_ae": own("conv_ae"),
            "vae": own("vae", kind="images"),
            "anogan": own("anogan"),
        }
    return {**ours, **PYOD}


# -- metrics -----------------------------------------------------------------------------------


def metrics(scores: np.ndarray, labels: np.ndarray) -> dict | None:
    from sklearn.metrics import average_precision_score

    from autosink_platform.models.contract import auroc
    from autosink_platform.thresholds import best_f1

    labels = np.asarray(labels).astype(np.int8)
    if labels.min() == labels.max():
        return None
    return {
        "auroc": auroc(scores, labels),
        "auprc": float(average_precision_score(labels, scores)),
        "best_f1": best_f1(scores, labels).f1,
        "n": len(labels),
        "positives": int(labels.sum()),
    }


# -- the synthetic suite -----------------------------------------------------------------------


def run_synthetic(seeds: int, families: dict[str, Callable], bar) -> list[dict]:
    """Each family fits the normal prefix of each series; the top-scored row after it must lie in
    the planted event. Validation: even seeds; test: odd seeds (choices use validation only)."""
    from autosink_pi.runtime import sliding, standardised

    from autosink_platform.lake.synthetic import KINDS, suite
    from autosink_platform.models.detectors import rows_from_windows

    per = {name: {"validation": [], "test": [], "fit_s": 0.0, "score_s": 0.0} for name in families}
    for series in suite(range(seeds)):
        z = standardised(series.values, series.train_rows)
        train = np.ascontiguousarray(sliding(z[: series.train_rows], SERIES_WINDOW))
        every = np.ascontiguousarray(sliding(z, SERIES_WINDOW))
        labels = series.labels()[series.train_rows :]
        for name, make in families.items():
            t0 = time.perf_counter()
            score, det = make(train)
            t1 = time.perf_counter()
            rows = (
                det.score_series(z)
                if det is not None
                else rows_from_windows(score(every), len(z), SERIES_WINDOW)  # the same mapping for PyOD's
            )[series.train_rows :]
            per[name]["fit_s"] += t1 - t0
            per[name]["score_s"] += time.perf_counter() - t1
            part = "validation" if series.seed % 2 == 0 else "test"
            per[name][part].append(
                {
                    "kind": series.kind,
                    "hit": bool(labels[int(np.argmax(rows))]),
                    **(metrics(rows, labels) or {}),
                }
            )
            bar.update()
    out = []
    for name, r in per.items():
        row = {"dataset": "synthetic", "family": name, "fit_s": r["fit_s"], "score_s": r["score_s"]}
        for part in ("validation", "test"):
            cases = r[part]
            row[part] = {
                "auroc": float(np.mean([c["auroc"] for c in cases])),
                "auprc": float(np.mean([c["auprc"] for c in cases])),
                "best_f1": float(np.mean([c["best_f1"] for c in cases])),
                "top_in_event": float(np.mean([c["hit"] for c in cases])),
                "by_kind": {k: float(np.mean([c["hit"] for c in cases if c["kind"] == k])) for k in KINDS},
            }
        out.append(row)
    return out


# -- the reference pipelines' datasets ---------------------------------------------------------


class _Fitted:
    """A family's "make a fitted scorer" as a detector (fit, decision_function), for the SKAB
    helpers that take one."""

    def __init__(self, make: Callable):
        self.make = make

    def fit(self, X):
        self.score, _ = self.make(X)
        return self

    def decision_function(self, X):
        return self.score(X)


def carved_metrics(carved: dict, make: Callable) -> dict:
    """A family on the valve's validation part carved from the training rows (``skab.Carve``):
    F1, FAR and MAR of the shipped rule (per-session UCL) and, on the calibrated scores, the
    rank figures; F1 per planted kind."""
    from autosink_platform.pipelines import skab

    result = skab.evaluate_carved(carved, lambda: _Fitted(make))
    return {
        **(metrics(result["scores"], result["labels"]) or {}),
        "protocol_f1": result["pooled"]["f1"],
        "far_percent": result["pooled"]["far_percent"],
        "mar_percent": result["pooled"]["mar_percent"],
        "by_kind_f1": {k: v["f1"] for k, v in result["by_kind"].items()},
    }


def protocol_on_test(spec, ds, score: Callable, prepare: Callable) -> dict:
    """The pipeline's published protocol on the test split for one fitted family, at the
    operating point its shipped threshold policy chooses (the valve: each session's UCL from
    its start-up windows)."""
    from autosink_platform.thresholds import calibrated

    policy = spec.models[0].threshold
    fit_rows = np.flatnonzero(ds.mask(policy.split))
    labels = ds.table["label"].to_numpy()
    op = policy.choose(score(prepare(np.asarray(ds.inputs[fit_rows]))), labels[fit_rows], ds.table.iloc[fit_rows])
    test = np.flatnonzero(ds.mask("test", labeled=True))
    flags = calibrated(ds.table.iloc[test], score(prepare(np.asarray(ds.inputs[test]))), op) >= op.threshold
    return spec.protocol(ds.frames(test), flags, ds.extras(), spec.source.config)["pooled"]


def run_pipeline(name: str, store: Path, bar) -> list[dict]:
    from autosink_platform.labeling.protocol import snapshot_dataset
    from autosink_platform.lake.public import default_datasets_root
    from autosink_platform.models.detectors import build_detector
    from autosink_platform.pipelines.catalog import REFERENCE_PIPELINES

    spec = REFERENCE_PIPELINES[name]
    model = spec.models[0]
    ds = snapshot_dataset(spec, default_datasets_root(), store).open()
    labels = ds.table["label"].to_numpy()
    train = ds.mask("train") & (labels == 0)
    X_train = model.prepare(np.asarray(ds.inputs[train]))
    kind = build_detector(model.family, **model.params).kind  # some families take their kind as a parameter
    families = families_for(kind, {**FORMER.get(name, {}), model.family: model.params})
    carved = None
    if name == "valve":  # no labelled validation: a part carved from the training rows, faults planted
        from autosink_platform.pipelines import skab

        carved = skab.carved_validation(default_datasets_root())
        families |= {f"rnn_ae (epochs {e})": _ours("rnn_ae", **{**RNN_AE, "epochs": e}) for e in (10, 20)}
    out = []
    for family, make in families.items():
        t0 = time.perf_counter()
        try:
            score, _ = make(X_train)
        except Exception as err:  # a family that cannot take this input is reported, not dropped
            out.append({"dataset": name, "family": family, "error": f"{type(err).__name__}: {err}"})
            bar.update()
            continue
        t1 = time.perf_counter()
        row = {"dataset": name, "family": family, "fit_s": t1 - t0, "shipped": family == model.family}
        for part in ("validation", "test"):
            m = ds.mask(part, labeled=True)
            row[part] = metrics(score(model.prepare(np.asarray(ds.inputs[m]))), labels[m])
        if spec.protocol is not None:
            row["test"]["protocol_f1"] = protocol_on_test(spec, ds, score, model.prepare)["f1"]
        row["score_s"] = time.perf_counter() - t1
        if carved is not None:  # fitted again, on the carved start-up rows only
            row["validation"] = carved_metrics(carved, make)
            row["validation_part"] = "carved from the training rows, faults planted (skab.Carve)"
        if not row["validation"] and not row["test"]:
            row["note"] = "no labelled anomalies in validation or test: only fit and score times"
        out.append(row)
        bar.update()
    return out


# -- the table ---------------------------------------------------------------------------------


def choose(rows: list[dict]) -> dict[str, str]:
    """Per dataset, the family of ours (PyOD's are for comparison: a pipeline ships one of ours)
    with the best validation AUPRC; first the top-in-event rate for the synthetic suite, and the
    F1 of the shipped rule for the valve (its carved validation); equal figures go to the
    quicker family to fit and score. A dataset whose validation split lacks a class has no
    choice here and keeps its shipped family."""

    def key(r):
        v = r["validation"]
        first = v.get("top_in_event", v.get("protocol_f1", 0.0))
        return (round(first, 6), round(v["auprc"], 6), -(r["fit_s"] + r["score_s"]))

    best = {}
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        scored = [r for r in rows if r["dataset"] == dataset and r.get("validation") and r["family"] not in PYOD]
        if scored:
            best[dataset] = max(scored, key=key)["family"]
    return best


def table(rows: list[dict], chosen: dict[str, str]) -> str:
    def f(part, key):
        return "-" if not part or part.get(key) is None else f"{part[key]:.3f}"

    lines = [
        "| dataset | family | val AUPRC | val best F1 | val protocol F1 | test AUROC | test AUPRC | test best F1 | test protocol F1 | top in event (test) | fit s | score s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['dataset']} | {r['family']} | {r['error']} |||||||||| ")
            continue
        mark = " **(chosen)**" if chosen.get(r["dataset"]) == r["family"] else ""
        mark += " (shipped)" if r.get("shipped") else ""
        mark += f" ({r['note']})" if r.get("note") else ""
        v, t = r.get("validation"), r.get("test")
        lines.append(
            f"| {r['dataset']} | {r['family']}{mark} | {f(v, 'auprc')} | {f(v, 'best_f1')} | {f(v, 'protocol_f1')} | "
            f"{f(t, 'auroc')} | {f(t, 'auprc')} | {f(t, 'best_f1')} | {f(t, 'protocol_f1')} | {f(t, 'top_in_event')} | "
            f"{r['fit_s']:.1f} | {r['score_s']:.1f} |"
        )
    return "\n".join(lines)


def compact(result: dict) -> dict:
    """The per-kind figures (the synthetic suite's hit rates, the valve's carved F1) as their own
    tables (family x kind), so the rows stay one readable line each in docs/measurements.md."""
    by_kind, carved = {}, {}
    for r in result["rows"]:
        for part in ("validation", "test"):
            if r.get(part) and "by_kind" in r[part]:
                by_kind[f"{r['family']} ({part})"] = r[part].pop("by_kind")
        if r.get("validation") and "by_kind_f1" in r["validation"]:
            carved[r["family"]] = r["validation"].pop("by_kind_f1")
    return {
        **result,
        **({"synthetic_top_in_event_by_kind": by_kind} if by_kind else {}),
        **({"valve_carved_f1_by_kind": carved} if carved else {}),
    }


def main() -> None:
    from tqdm import tqdm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="synthetic, robotarm, digits, valve or bearing (repeatable)")
    parser.add_argument("--seeds", type=int, default=10, help="synthetic series per planted kind")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (small models run fastest on one)")
    parser.add_argument("--out", default="benchmarks/results/detectors.json")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import torch

    torch.set_num_threads(args.threads)

    from autosink_platform.lake.public import DatasetMissing
    from autosink_platform.lake.synthetic import KINDS
    from autosink_platform.pipelines.catalog import REFERENCE_PIPELINES
    from autosink_platform.pipelines.valve import VALVE

    datasets = args.only or ["synthetic", *REFERENCE_PIPELINES]
    rows, skipped = [], {}
    series_families = families_for("windows", {VALVE.models[0].family: VALVE.models[0].params})
    total = (args.seeds * len(KINDS) * len(series_families) if "synthetic" in datasets else 0) + sum(
        8 + 2 * (d == "valve") for d in datasets if d != "synthetic"
    )
    bar = tqdm(total=total, desc="detectors", unit="fit")
    store = Path(tempfile.mkdtemp(prefix="autosink-detectors-"))
    for dataset in datasets:
        if dataset == "synthetic":
            rows += run_synthetic(args.seeds, series_families, bar)
            continue
        try:
            rows += run_pipeline(dataset, store, bar)
        except DatasetMissing as err:
            skipped[dataset] = str(err)
    bar.close()
    chosen = choose(rows)
    print(table(rows, chosen))
    for dataset, why in skipped.items():
        print(f"skipped {dataset}: {why}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "detectors",
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "rows": rows,
        "chosen_on_validation": chosen,
        "skipped": skipped,
        "seeds": args.seeds,
        "series_window": SERIES_WINDOW,
    }
    out.write_text(json.dumps(compact(result), indent=1, default=float))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()

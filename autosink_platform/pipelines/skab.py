"""SKAB's outlier-detection leaderboard protocol, as its reference notebooks compute it
(see ``../shared/datasets/README.md`` and ``skab/README.md``):

- the 34 labelled files (every CSV except ``anomaly-free/``), each on its own;
- per file, the first 400 rows (time order) train, the rest test; a standard scaler is fitted
  on the training rows only;
- a model is fitted per file on sliding windows (stride 1) of the training rows;
- the residual of a window is the sum over features of its mean absolute reconstruction error;
- threshold UCL = 0.999-quantile of the training residuals x 4/3 (no test labels used);
- window k covers rows k..k+w-1; test row i is flagged when the windows starting at rows
  i-w+1..i-1 all exceed UCL;
- point-wise predictions per test row, TP/FP/FN/TN pooled over all files;
  F1 = TP / (TP + (FN + FP) / 2), FAR = FP / (FP + TN), MAR = FN / (FN + TP).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from autosink_pi.runtime import sliding, standardised
from tqdm import tqdm

from autosink_platform.lake.public import DatasetMissing, read_skab_csv
from autosink_platform.validation.schemas import SkabRows, validate

SENSORS = (
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
)
LEADERBOARD = {  # SKAB README, outlier detection: F1, FAR %, MAR %
    "Conv-AE": (0.78, 13.55, 28.02),
    "LSTM-AE": (0.74, None, None),
    "LSTM-VAE": (0.56, None, None),
    "Isolation forest": (0.29, None, None),
}

# Our per-file model on that protocol (benchmarks/skab_protocol.py's defaults, the realdata test):
# early stopping on a held-out tenth of each file's training windows, patience 5.
PER_FILE_RNN_AE = {"cell": "gru", "hidden": 32, "epochs": 30, "batch_size": 32, "patience": 5}


@dataclass(frozen=True)
class SkabProtocol:
    train_rows: int = 400
    window: int = 60
    ucl_quantile: float = 0.999
    ucl_factor: float = 4 / 3


def labelled_files(root: Path) -> list[Path]:
    """The 34 labelled SKAB files: valve1, valve2 and other (never anomaly-free)."""
    data = Path(root) / "skab" / "data"
    files = sorted(
        (p for p in data.glob("*/*.csv") if p.parent.name != "anomaly-free"),
        key=lambda p: (p.parent.name, int(p.stem) if p.stem.isdigit() else p.stem),
    )
    if not files:
        raise DatasetMissing(f"no SKAB files under {data} (set AUTOSINK_DATASETS to the folder that holds skab/)")
    return files


def read_file(path: Path) -> pd.DataFrame:
    frame = read_skab_csv(path).sort_values("datetime", kind="stable").reset_index(drop=True)
    return validate(
        frame.assign(datetime=frame["datetime"].astype(str)), SkabRows, f"valve/{path.parent.name}/{path.name}"
    )


def rows_flagged(window_flags: np.ndarray, n_rows: int, window: int) -> np.ndarray:
    """The notebooks' mapping from anomalous windows to flagged test rows."""
    out = np.zeros(n_rows, dtype=np.int8)
    for i in range(window - 1, len(window_flags) - window + 1):
        if np.all(window_flags[i - window + 1 : i]):
            out[i] = 1
    return out


def touching(anomaly: np.ndarray, window: int) -> np.ndarray:
    """Per stride-1 window of ``anomaly`` (0/1 per row): whether it holds a labelled anomaly."""
    return np.lib.stride_tricks.sliding_window_view(anomaly, window).max(axis=1) > 0


def pooled(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    tp = int(np.sum((pred == 1) & (true == 1)))
    fp = int(np.sum((pred == 1) & (true == 0)))
    fn = int(np.sum((pred == 0) & (true == 1)))
    tn = int(np.sum((pred == 0) & (true == 0)))
    return {
        "f1": tp / (tp + (fn + fp) / 2) if tp + fn + fp else 0.0,
        "far_percent": 100 * fp / (fp + tn) if fp + tn else 0.0,
        "mar_percent": 100 * fn / (fn + tp) if fn + tp else 0.0,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def _evaluate_file(path: Path, make_detector: Callable[[], object], protocol: SkabProtocol) -> dict:
    """One file as the protocol says: scaler and model fitted on its first rows, UCL from their
    residuals, each test row flagged by the window-to-row rule."""
    frame = read_file(path)
    z = standardised(frame[list(SENSORS)].to_numpy(np.float64), protocol.train_rows)  # as a device does
    train_w = sliding(z[: protocol.train_rows], protocol.window)
    test_w = sliding(z, protocol.window, start=protocol.train_rows)
    detector = make_detector().fit(train_w)
    ucl = np.quantile(detector.decision_function(train_w), protocol.ucl_quantile) * protocol.ucl_factor
    pred = rows_flagged(detector.decision_function(test_w) > ucl, len(z) - protocol.train_rows, protocol.window)
    true = frame["anomaly"].to_numpy()[protocol.train_rows :].astype(np.int8)
    return {
        "file": f"{path.parent.name}/{path.name}",
        "group": path.parent.name,
        "ucl": float(ucl),
        "pred": pred,
        "true": true,
    }


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # one file per core: the small per-file models do not scale across threads


def evaluate(
    root: Path,
    make_detector: Callable[[], object],
    protocol: SkabProtocol = SkabProtocol(),
    progress: bool = True,
    workers: int = 1,
) -> dict:
    """Fit one detector per file as the protocol says; pooled F1/FAR/MAR overall and per group.

    ``workers > 1`` fits that many files at once in spawned processes of one thread each
    (``make_detector`` must then be picklable, e.g. a ``functools.partial``); every file is
    seeded on its own, so the figures do not depend on the order files finish in."""
    files = labelled_files(root)
    bar = tqdm(total=len(files), desc="SKAB files", unit="file", disable=None if progress else True)
    if workers > 1:
        context = multiprocessing.get_context("spawn")  # fork under a live OpenMP pool can hang
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread) as pool:
            futures = [pool.submit(_evaluate_file, path, make_detector, protocol) for path in files]
            for future in as_completed(futures):
                future.result()
                bar.update()
            results = [future.result() for future in futures]
    else:
        results = []
        for path in files:
            results.append(_evaluate_file(path, make_detector, protocol))
            bar.update()
    bar.close()
    pred, true = np.concatenate([r["pred"] for r in results]), np.concatenate([r["true"] for r in results])
    group = np.concatenate([np.full(len(r["pred"]), r["group"]) for r in results])
    return {
        "pooled": pooled(pred, true),
        "by_group": {g: pooled(pred[group == g], true[group == g]) for g in sorted(set(group))},
        "files": [{"file": r["file"], "ucl": r["ucl"], **pooled(r["pred"], r["true"])} for r in results],
    }


# -- a validation part carved from the training rows ---------------------------------------------

PLANTED = ("level_shift", "drift", "amplitude_change", "noise_burst", "flat_line")


@dataclass(frozen=True)
class Carve:
    """SKAB labels no validation part, so one is carved from each file's training rows (the test
    rows are never read): the first ``fit_rows`` are the start-up (scaler, detector and the
    session's UCL, as on the protocol's test files), and a fault is planted in the rest, from
    an onset ``onset`` rows after the start-up to the end of the training rows, as SKAB's faults
    run on once they begin. ``copies`` faults per file, each of one of ``PLANTED`` kinds on
    ``sensors`` of the 8 sensors, ``size`` standard deviations (of the start-up rows) large."""

    fit_rows: int = 200
    copies: int = 4
    seed: int = 0
    onset: tuple[int, int] = (30, 130)
    sensors: tuple[int, int] = (2, 5)
    size: tuple[float, float] = (2.0, 4.0)


def plant(z: np.ndarray, kind: str, start: int, sensors: np.ndarray, size: np.ndarray, rng, fit_rows: int):
    """``z`` (standardised rows) with a fault of ``kind`` on ``sensors`` from row ``start`` on:
    a level shift, a linear drift reaching ``size``, the deviation from the start-up mean scaled
    by ``size`` (amplitude change), added noise of that scale, or the sensors frozen (flat line).
    Returns a copy; ``size`` and signs are per sensor."""
    if kind not in PLANTED:
        raise ValueError(f"unknown planted kind {kind!r}; one of {PLANTED}")
    z = z.copy()
    seg = z[start:, sensors]
    sign = rng.choice([-1.0, 1.0], len(sensors))
    if kind == "level_shift":
        seg += sign * size
    elif kind == "drift":
        seg += np.linspace(0.0, 1.0, len(seg))[:, None] * sign * size
    elif kind == "amplitude_change":
        mean = z[:fit_rows, sensors].mean(axis=0)
        seg[:] = mean + (seg - mean) * size
    elif kind == "noise_burst":
        seg += rng.normal(0.0, 1.0, seg.shape) * size / 2
    else:
        seg[:] = z[start - 1, sensors]
    z[start:, sensors] = seg
    return z


def carved_validation(root: Path, protocol: SkabProtocol = SkabProtocol(), carve: Carve = Carve()) -> dict:
    """Per labelled file, from its first ``train_rows`` rows only: the start-up windows (every
    window of the first ``fit_rows`` rows, standardised on them), the ones a detector may fit
    (those touching no labelled anomaly), and ``copies`` validation parts: the windows ending
    in rows ``fit_rows..train_rows-1`` after a fault is planted, each labelled by its last row
    (planted or labelled anomalous)."""
    if not 0 < carve.onset[0] <= carve.onset[1] < protocol.train_rows - carve.fit_rows:
        raise ValueError(f"onset {carve.onset} must lie inside the {protocol.train_rows - carve.fit_rows} carved rows")
    if carve.fit_rows < protocol.window:
        raise ValueError(f"fit_rows {carve.fit_rows} < window {protocol.window}")
    rng = np.random.default_rng(carve.seed)
    w, files = protocol.window, []
    for i, path in enumerate(labelled_files(root)):
        frame = read_file(path).iloc[: protocol.train_rows]
        z = standardised(frame[list(SENSORS)].to_numpy(np.float64), carve.fit_rows)
        anomaly = frame["anomaly"].to_numpy().astype(np.int8)
        startup = sliding(z[: carve.fit_rows], w)
        touched = touching(anomaly[: carve.fit_rows], w)
        parts = []
        for c in range(carve.copies):
            kind = PLANTED[(i + c) % len(PLANTED)]
            start = carve.fit_rows + int(rng.integers(carve.onset[0], carve.onset[1] + 1))
            k = int(rng.integers(carve.sensors[0], carve.sensors[1] + 1))
            sensors = np.sort(rng.choice(len(SENSORS), k, replace=False))
            size = rng.uniform(*carve.size, k)
            label = anomaly.copy()
            label[start:] = 1
            planted = plant(z, kind, start, sensors, size, rng, carve.fit_rows)
            windows = sliding(planted, w, start=carve.fit_rows - w + 1)  # ending at fit_rows..train_rows-1
            parts.append({"kind": kind, "windows": windows, "labels": label[carve.fit_rows :]})
        files.append(
            {"file": f"{path.parent.name}/{path.name}", "startup": startup, "fit": startup[~touched], "parts": parts}
        )
    return {"protocol": protocol, "carve": carve, "files": files}


def evaluate_carved(carved: dict, make_detector: Callable[[], object]) -> dict:
    """One detector for every session, as the valve pipeline ships it, fitted on the carved
    start-up windows of all files; each session's UCL from its own start-up windows (the
    protocol's quantile and factor); each validation window flagged when its score passes its
    session's UCL, at its last row, as a running device reports it. (The notebooks' row rule
    needs the 59 windows after a row, which a 200-row part mostly lacks.) Pooled F1, FAR and
    MAR overall and per planted kind, with the calibrated scores (score / UCL) and labels."""
    protocol, files = carved["protocol"], carved["files"]
    detector = make_detector().fit(np.ascontiguousarray(np.concatenate([f["fit"] for f in files])))
    scores, labels, kinds = [], [], []
    for f in files:
        ucl = np.quantile(detector.decision_function(f["startup"]), protocol.ucl_quantile) * protocol.ucl_factor
        for part in f["parts"]:
            scores.append(detector.decision_function(part["windows"]) / ucl)
            labels.append(part["labels"])
            kinds.append(np.full(len(part["labels"]), part["kind"]))
    score, true, kind = np.concatenate(scores), np.concatenate(labels), np.concatenate(kinds)
    pred = (score > 1.0).astype(np.int8)
    return {
        "pooled": pooled(pred, true),
        "by_kind": {k: pooled(pred[kind == k], true[kind == k]) for k in PLANTED},
        "scores": score,
        "labels": true,
    }

"""The ``valve`` pipeline: SKAB's 34 labelled files, calibrated and split per file as its
leaderboard protocol says; one variational autoencoder for every session, each session's UCL
from its own start-up. The family was chosen on a validation part carved from the training rows
(``skab.Carve``; ``benchmarks/detectors.py``), never on the test rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from autosink_pi.manifest import WindowsInput
from autosink_pi.runtime import sliding, standardised

from autosink_platform.lake.public import require, samples_table
from autosink_platform.pipelines import skab
from autosink_platform.pipelines.spec import GROUP_SLICES, DetectorModel, PipelineSpec, PublicFiles
from autosink_platform.thresholds import SessionUCL
from autosink_platform.validation.cases import CaseFloors


@dataclass(frozen=True)
class ValveConfig:
    train_rows: int = 400  # per file, in time order: the protocol's normal start-up that fits the scaler
    window: int = 60  # rows (seconds) per window, stride 1


SKAB_FILES = (
    tuple(f"skab/data/valve1/{i}.csv" for i in range(16))
    + tuple(f"skab/data/valve2/{i}.csv" for i in range(4))
    + tuple(f"skab/data/other/{i}.csv" for i in range(1, 15))
)


def extract_valve(root: Path, cfg: ValveConfig) -> tuple[pd.DataFrame, np.ndarray, dict[str, pd.DataFrame]]:
    """SKAB's protocol per file (``pipelines/skab.py``): the first ``train_rows`` rows fit a
    standard scaler and train, the rest test; windows of each part, stride 1, prepared by the
    device's own code (``valve_input``).

    A window's label is its last row's (the row at which a running detector scores it). Windows
    of the training part that touch a labelled anomaly (only ``other/2.csv`` has any) go to
    ``validation`` instead of training, so detectors are fitted on normal data only. The test
    rows' labels go with the samples as the extra table ``rows`` that the protocol scores, and
    every file's raw readings as ``series`` (what a device is fed, row by row)."""
    tables, inputs, rows, series = [], [], [], []
    for path in require(root, *SKAB_FILES):
        key = f"{path.parent.name}/{path.name}"
        frame = skab.read_file(path)
        if len(frame) < cfg.train_rows + cfg.window:
            raise ValueError(f"valve/{key}: {len(frame)} rows; the protocol needs >= {cfg.train_rows + cfg.window}")
        values = frame[list(skab.SENSORS)].to_numpy(np.float64)
        anomaly = frame["anomaly"].to_numpy().astype(np.int8)
        z = standardised(values, cfg.train_rows)
        for part, lo, hi in (("train", 0, cfg.train_rows), ("test", cfg.train_rows, len(values))):
            starts = np.arange(lo, hi - cfg.window + 1)
            label = anomaly[starts + cfg.window - 1]
            split = np.full(len(starts), part, dtype=object)
            if part == "train":
                touched = skab.touching(anomaly[lo:hi], cfg.window)
                split[touched] = "validation"
            tables.append(samples_table(key, starts, label, split, path.parent.name))
            inputs.append(sliding(z[:hi], cfg.window, start=lo))
        rows.append(
            pd.DataFrame(
                {
                    "source": key,
                    "row": np.arange(cfg.train_rows, len(values)),
                    "anomaly": anomaly[cfg.train_rows :],
                    "group": path.parent.name,
                }
            )
        )
        series.append(pd.DataFrame(values, columns=list(skab.SENSORS)).assign(source=key, row=np.arange(len(values))))
    table = pd.concat(tables, ignore_index=True)
    table["sample"] = np.arange(len(table))
    extras = {"rows": pd.concat(rows, ignore_index=True), "series": pd.concat(series, ignore_index=True)}
    return table, np.concatenate(inputs), extras


def valve_input(cfg: ValveConfig) -> WindowsInput:
    """What a rig's device is fed: its 8 sensors a row (second) at a time; the session's first
    ``train_rows`` rows fit the scaler and the UCL, then every window of ``window`` rows is scored
    at its last row."""
    return WindowsInput(
        shape=["batch", cfg.window, len(skab.SENSORS)],
        columns=list(skab.SENSORS),
        window=cfg.window,
        startup_rows=cfg.train_rows,
        standardise=True,
    )


def valve_protocol(test: pd.DataFrame, flags: np.ndarray, extras: dict[str, pd.DataFrame], cfg: ValveConfig) -> dict:
    """SKAB's leaderboard figures: each test row flagged by the notebooks' window-to-row rule,
    TP/FP/FN/TN pooled over every file (and per group), F1 with FAR and MAR."""
    sources = test["source"].to_numpy()
    preds, trues, groups = [], [], []
    for source, rows in extras["rows"].groupby("source", sort=False):
        m = sources == source
        window_flags = np.asarray(flags)[m][np.argsort(test["position"].to_numpy()[m], kind="stable")]
        preds.append(skab.rows_flagged(window_flags, len(rows), cfg.window))
        trues.append(rows["anomaly"].to_numpy())
        groups.append(rows["group"].to_numpy())
    pred, true, group = np.concatenate(preds), np.concatenate(trues), np.concatenate(groups)
    return {
        "pooled": skab.pooled(pred, true),
        "by_group": {g: skab.pooled(pred[group == g], true[group == g]) for g in sorted(set(group))},
    }


VALVE = PipelineSpec(
    name="valve",
    description=(
        "SKAB valve rig: a variational autoencoder over 60-s windows of the 8 sensors, each session"
        " calibrated on its first 400 rows (scaler and UCL), scored by SKAB's leaderboard protocol."
    ),
    source=PublicFiles(
        raw_files=SKAB_FILES,
        extract=extract_valve,
        config=ValveConfig(),
        min_per_split_class=1,
        required=(("train", 0), ("test", 0), ("test", 1)),
    ),
    slices=GROUP_SLICES,
    models=(
        DetectorModel(
            "vae",
            "vae",
            # Chosen on the carved validation part (benchmarks/detectors.py, docs/pipelines.md); its
            # epochs end by early stopping on held-out normal windows, no labels involved.
            {"kind": "windows"},
            SessionUCL(q=0.999, factor=4 / 3),  # the protocol's UCL, per session, from its start-up
            cases=CaseFloors(metric="f1", floor=0.5, min_examples=300),
            input=valve_input,
        ),
    ),
    reference={"leaderboard": {k: list(v) for k, v in skab.LEADERBOARD.items()}, "source": "SKAB README"},
    protocol=valve_protocol,
)

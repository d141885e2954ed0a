"""The ``bearing`` pipeline: CWRU drive-end vibration at 1797 rpm; log-spectrogram images of
1,024-sample windows; the distance to the nearest Normal spectrograms (``knn``), fitted on Normal
only, evaluated on held-out Normal plus the six fault files. On validation every family but ECOD
separates the faults completely (``benchmarks/detectors.py``); equal figures go to the quickest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from autosink_pi.manifest import Spectrogram, WindowsInput
from autosink_pi.runtime import graph_windows, sliding

from autosink_platform.lake.public import require, samples_table
from autosink_platform.pipelines.spec import GROUP_SLICES, DetectorModel, PipelineSpec, PublicFiles
from autosink_platform.thresholds import BestF1
from autosink_platform.validation.cases import CaseFloors


@dataclass(frozen=True)
class BearingConfig:
    window: int = 1024  # samples (85 ms at 12 kHz: ~2.6 shaft revolutions at 1797 rpm)
    hop: int = 512
    segment: int = 62  # spectrogram: 32 frames of 62 samples, hop 31 -> 32 time x 32 frequency bins
    train: float = 0.6  # of the Normal windows, in time order; validation and test share the rest
    db_range: tuple[float, float] = (-80.0, 30.0)  # dB mapped to [0, 1]: Normal spans about -77..6, faults reach 27


BEARING_FILES = {
    "Normal": "1797_Normal.npz",
    "IR_7": "1797_IR_7_DE12.npz",
    "IR_21": "1797_IR_21_DE12.npz",
    "B_7": "1797_B_7_DE12.npz",
    "B_21": "1797_B_21_DE12.npz",
    "OR@6_7": "1797_OR@6_7_DE12.npz",
    "OR@6_21": "1797_OR@6_21_DE12.npz",
}


def bearing_input(cfg: BearingConfig) -> WindowsInput:
    """What a device is fed: the drive-end accelerometer a sample at a time; every ``hop``
    samples the last ``window`` become a log spectrogram of 32 time x 32 frequency bins (dB
    mapped to [0, 1]), prepared by the device's own code here too."""
    return WindowsInput(
        shape=["batch", 1, 32, 32],
        columns=["DE"],
        window=cfg.window,
        stride=cfg.hop,
        spectrogram=Spectrogram(
            segment=cfg.segment, hop=cfg.segment // 2, frames=32, frequencies=32, db_range=cfg.db_range
        ),
    )


def extract_bearing(root: Path, cfg: BearingConfig) -> tuple[pd.DataFrame, np.ndarray, dict[str, pd.DataFrame]]:
    """Each file's windows every ``hop`` samples as spectrogram images; the raw signals go with
    the samples as the extra table ``series`` (what a device is fed)."""
    paths = dict(zip(BEARING_FILES, require(root, *(f"cwru_bearing/{f}" for f in BEARING_FILES.values())), strict=True))
    spec, tables, images, series = bearing_input(cfg), [], [], []
    for group, path in paths.items():
        signal = np.load(path)["DE"].astype(np.float64).ravel()
        windows = sliding(signal[:, None], cfg.window, cfg.hop)
        starts = cfg.hop * np.arange(len(windows))
        n = len(starts)
        if group == "Normal":  # train on the first part; the rest is held out for validation and test
            n_train = int(n * cfg.train)
            n_val = (n - n_train) // 2
            split = ["train"] * n_train + ["validation"] * n_val + ["test"] * (n - n_train - n_val)
        else:  # each fault file: first half to choose the threshold, second half to test
            split = ["validation"] * (n // 2) + ["test"] * (n - n // 2)
        tables.append(samples_table(path.name, starts, int(group != "Normal"), split, group))
        images.append(graph_windows(spec, windows))
        series.append(pd.DataFrame({"source": path.name, "row": np.arange(len(signal)), "DE": signal}))
    table = pd.concat(tables, ignore_index=True)
    table["sample"] = np.arange(len(table))
    return table, np.concatenate(images), {"series": pd.concat(series, ignore_index=True)}


BEARING = PipelineSpec(
    name="bearing",
    description=(
        "CWRU drive-end vibration: distance to the nearest Normal log-spectrogram windows (kNN), fitted on Normal only."
    ),
    source=PublicFiles(
        raw_files=tuple(f"cwru_bearing/{f}" for f in BEARING_FILES.values()),
        extract=extract_bearing,
        config=BearingConfig(),
    ),
    slices=GROUP_SLICES,
    models=(
        DetectorModel(
            "knn",
            "knn",
            {"kind": "images"},  # chosen on validation: f-AnoGAN and the others tie with it, slower
            BestF1(),
            cases=CaseFloors(metric="accuracy", floor=0.8, min_examples=50),
            input=bearing_input,
        ),
    ),
    reference={"source": "f-AnoGAN on CWRU (izi_f); report AUROC and F1"},
)

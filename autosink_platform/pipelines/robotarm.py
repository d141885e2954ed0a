"""The ``robotarm`` pipeline: PCA (2 components) on the four joints; no labels, so the threshold is
k-sigma on training scores and the held-out rows measure the false-alarm rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from autosink_pi.manifest import RowsInput

from autosink_platform.lake.public import require, samples_table
from autosink_platform.pipelines.spec import GROUP_SLICES, DetectorModel, PipelineSpec, PublicFiles
from autosink_platform.thresholds import KSigma
from autosink_platform.validation.schemas import RobotArmRows, validate


@dataclass(frozen=True)
class RobotArmConfig:
    validation: float = 0.2  # time-ordered: the first rows train, the last rows test
    test: float = 0.2


ROBOTARM_COLUMNS = ("axis_1", "axis_2", "axis_3", "axis_4")


def extract_robotarm(root: Path, cfg: RobotArmConfig) -> tuple[pd.DataFrame, np.ndarray]:
    (path,) = require(root, "robotarm/robotarm-train.csv")
    rows = validate(pd.read_csv(path, dtype={"datetime": str}), RobotArmRows, "robotarm/raw_files")
    rows = rows.sort_values("datetime", kind="stable").reset_index(drop=True)
    n = len(rows)
    n_test, n_val = int(round(n * cfg.test)), int(round(n * cfg.validation))
    split = np.array(["train"] * (n - n_val - n_test) + ["validation"] * n_val + ["test"] * n_test)
    table = samples_table(path.name, rows["id"].to_numpy(), 0, split, "all")
    return table, rows[list(ROBOTARM_COLUMNS)].to_numpy(np.float32)


ROBOTARM = PipelineSpec(
    name="robotarm",
    description="Robot-arm telemetry: PCA reconstruction error, k-sigma threshold on training scores.",
    source=PublicFiles(
        raw_files=("robotarm/robotarm-train.csv",),
        extract=extract_robotarm,
        config=RobotArmConfig(),
        min_per_split_class=1,
        required=(("train", 0), ("validation", 0), ("test", 0)),  # unlabelled: no anomalies anywhere
    ),
    models=(
        DetectorModel(
            "pca",
            "pca",
            {"n_components": 2},
            KSigma(k=3.0),
            input=RowsInput(shape=["batch", len(ROBOTARM_COLUMNS)], columns=list(ROBOTARM_COLUMNS)),
        ),
    ),
    slices=GROUP_SLICES,
    reference={"source": "MakinaRocks Runway tutorial (PCA, 2 components); no labelled figure published"},
)

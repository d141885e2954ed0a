"""Small stand-ins for ../shared/datasets, in the same file formats (IDX gz, npz, CSV), so the
reference pipelines' code paths run in the default test run on any machine. Real-data runs
are the ``realdata`` tests."""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from autosink_platform.pipelines.bearing import BEARING, BEARING_FILES, BearingConfig
from autosink_platform.pipelines.digits import DIGITS, DigitsConfig
from autosink_platform.pipelines.skab import SENSORS
from autosink_platform.pipelines.spec import DetectorModel
from autosink_platform.pipelines.valve import SKAB_FILES, VALVE, ValveConfig
from autosink_platform.validation.cases import CaseFloors


def _idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()))


def _strokes(rng: np.random.Generator, n: int, strokes: tuple[int, int]) -> np.ndarray:
    """28x28 images of a few thick strokes (digit-like) or many (character-like)."""
    out = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        img = Image.new("L", (28, 28))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(*strokes))):
            x0, y0, x1, y1 = rng.integers(5, 23, size=4)
            draw.line([(x0, y0), (x1, y1)], fill=255, width=3)
        out[i] = np.asarray(img)
    return out


def make_fake_datasets(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "robotarm").mkdir(parents=True)
    t = np.arange(120)
    base = np.stack([np.sin(t / 7), np.cos(t / 7)], axis=1)
    axes = base @ rng.normal(size=(2, 4)) + 0.02 * rng.normal(size=(120, 4)) + [0, 4, 0, 1]
    lines = ["id,datetime,axis_1,axis_2,axis_3,axis_4"]
    lines += [
        f"{i + 1},2022-12-27 06:{i // 12:02d}:{(i % 12) * 5:02d}.000000," + ",".join(f"{v:.6f}" for v in row)
        for i, row in enumerate(axes)
    ]
    (root / "robotarm" / "robotarm-train.csv").write_text("\n".join(lines) + "\n")

    (root / "mnist").mkdir()
    _idx(root / "mnist" / "train-images-idx3-ubyte.gz", _strokes(rng, 400, (1, 3)))
    _idx(root / "mnist" / "t10k-images-idx3-ubyte.gz", _strokes(rng, 100, (1, 3)))
    _idx(root / "mnist" / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 400).astype(np.uint8))
    _idx(root / "mnist" / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 100).astype(np.uint8))
    (root / "kmnist").mkdir()
    np.savez(root / "kmnist" / "kmnist-test-imgs.npz", arr_0=_strokes(rng, 200, (5, 9)))
    np.savez(root / "kmnist" / "kmnist-test-labels.npz", arr_0=rng.integers(0, 10, 200).astype(np.uint8))

    (root / "cwru_bearing").mkdir()
    fs = 12_000
    for group, name in BEARING_FILES.items():
        n = 40_000 if group == "Normal" else 16_000
        tt = np.arange(n) / fs
        signal = 0.05 * np.sin(2 * np.pi * 29.95 * tt) + 0.02 * np.sin(2 * np.pi * 89.9 * tt)
        signal += 0.03 * rng.normal(size=n)
        if group != "Normal":  # a fault rings the structure at a fixed rate: periodic impulses
            period = int(fs / (100 + 20 * len(name)))
            impulses = np.zeros(n)
            impulses[::period] = 1.0
            ring = np.exp(-np.arange(60) / 8) * np.sin(2 * np.pi * 3000 * np.arange(60) / fs)
            signal += 0.5 * np.convolve(impulses, ring)[:n]
        np.savez(root / "cwru_bearing" / name, DE=signal[:, None], FE=signal[:, None])

    for i, name in enumerate(SKAB_FILES):  # 200 rows at 1 Hz; a valve fault from row 140 on
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        n, tt = 200, np.arange(200)
        values = np.stack([np.sin(tt / (5 + k) + i) + 0.1 * rng.normal(size=n) for k in range(len(SENSORS))], axis=1)
        anomaly = np.zeros(n)
        anomaly[140:] = 1
        if name.endswith("other/2.csv"):  # like the real file: anomalies inside the start-up too
            anomaly[20:40] = 1
        values[anomaly == 1, :3] += 2.0 + 0.5 * rng.normal(size=(int(anomaly.sum()), 3))
        start = np.datetime64("2020-03-09T10:00:00") + np.timedelta64(3600 * i, "s")
        lines = [";".join(("datetime", *SENSORS, "anomaly", "changepoint"))]
        lines += [
            ";".join((str(start + np.timedelta64(int(t), "s")).replace("T", " "), *(f"{v:.6f}" for v in values[t])))
            + f";{anomaly[t]:.1f};0.0"
            for t in tt
        ]
        path.write_text("\n".join(lines) + "\n")
    return root


# The reference pipelines at sizes these files have, with models small enough to train in seconds.
def _small(spec, config, model):
    return dataclasses.replace(spec, source=dataclasses.replace(spec.source, config=config), models=(model,))


SMALL = {
    "digits": _small(
        DIGITS,
        DigitsConfig(mnist_sample=500, train=300, validation=80, test=80),
        DetectorModel(
            "conv_ae",
            "conv_ae",
            {"epochs": 10, "batch_size": 16, "width": 8, "code": 8, "precision": "bf16"},
            cases=DIGITS.models[0].cases,
            input=DIGITS.models[0].input,  # raw 28x28 pixels, prepared as a device prepares them
        ),
    ),
    "bearing": _small(
        BEARING,
        BearingConfig(),
        DetectorModel(
            "knn",
            "knn",
            {"kind": "images", "bank": 256},
            cases=CaseFloors(metric="accuracy", floor=0.0, min_examples=10),
        ),
    ),
    "valve": _small(
        VALVE,
        ValveConfig(train_rows=100, window=10),
        dataclasses.replace(
            VALVE.models[0],
            params={"kind": "windows", "hidden": 8, "epochs": 3, "batch_size": 64},
            cases=CaseFloors(metric="f1", floor=0.0, min_examples=10),
        ),
    ),
}

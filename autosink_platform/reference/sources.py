"""The raw files of the reference pipelines, read in place: they are these pipelines' lake.

The root is ``$AUTOSINK_DATASETS``, else ``../shared/datasets`` beside the repository. Files
are never copied or modified; a pipeline's raw asset fingerprints them (size + sha256) so an
unchanged lake is never reprocessed.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]


class DatasetMissing(FileNotFoundError):
    """A reference dataset is not where the pipeline reads it."""


def datasets_root() -> Path:
    return Path(os.environ.get("AUTOSINK_DATASETS") or REPO.parent / "shared" / "datasets")


def require(root: Path, *relative: str) -> list[Path]:
    paths = [root / r for r in relative]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise DatasetMissing(
            f"reference data not found: {', '.join(missing)} (set AUTOSINK_DATASETS to the folder that holds them)"
        )
    return paths


def fingerprint(paths: list[Path]) -> dict[str, str]:
    """sha256 of each raw file, keyed by its name: the raw stage's data version."""
    out = {}
    for p in sorted(paths):
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        out[p.name] = h.hexdigest()
    return out


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a uint8 array."""
    raw = gzip.open(path).read() if str(path).endswith(".gz") else Path(path).read_bytes()
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {data.size} bytes")
    return data.reshape(dims)


def read_skab_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep=";", parse_dates=["datetime"])

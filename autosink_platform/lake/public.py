"""The raw files of the detector pipelines (public datasets), read in place: they are these
pipelines' lake, and ``build_samples`` is their ingest.

The root is ``$AUTOSINK_DATASETS``, else ``../shared/datasets`` beside the repository. Files
are never copied or modified; a pipeline's raw asset fingerprints them (size + sha256) so an
unchanged lake is never reprocessed.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from autosink_platform.validation.schemas import Samples, validate

if TYPE_CHECKING:
    from autosink_platform.pipelines.spec import PipelineSpec

REPO = Path(__file__).resolve().parents[2]


class DatasetMissing(FileNotFoundError):
    """A reference dataset is not where the pipeline reads it."""


def default_datasets_root() -> Path:
    """``../shared/datasets`` beside the repository (``AUTOSINK_DATASETS`` overrides it)."""
    return REPO.parent / "shared" / "datasets"


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


def samples_table(source, position, label, split, group) -> pd.DataFrame:
    table = pd.DataFrame({"source": source, "position": position, "label": label, "split": split, "group": group})
    table.insert(0, "sample", np.arange(len(table)))
    return table


def build_samples(spec: PipelineSpec, root: Path) -> tuple[pd.DataFrame, np.ndarray, dict[str, pd.DataFrame]]:
    """Extract and validate (the Samples schema) one pipeline's samples, with any extra tables."""
    table, X, *rest = spec.source.extract(root, spec.source.config)
    extras = rest[0] if rest else {}
    if len(table) != len(X):
        raise ValueError(f"{spec.name}: {len(table)} table rows but {len(X)} inputs")
    if not np.isfinite(X).all():
        raise ValueError(f"{spec.name}: {int((~np.isfinite(X)).sum())} NaN/inf input values")
    return validate(table, Samples, f"{spec.name}/validated_dataset"), X.astype(np.float32), extras

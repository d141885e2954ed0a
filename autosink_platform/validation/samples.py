"""The detector pipelines' sample sets: a table (one row per sample) with its inputs in table
order and any extra tables the protocol needs, stored once under its content id. The labeled
stage writes one (``labeling.protocol``); the validated stage checks it and freezes the
snapshot every model of the pipeline trains on."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from autosink_platform.files import local_copy, location, publish_folder
from autosink_platform.validation.dataset import LoadedDataset, snapshot_cache, staging_for
from autosink_platform.validation.schemas import LabeledSampleRows, validate
from autosink_platform.validation.splits import snapshot_id

if TYPE_CHECKING:
    from autosink_platform.labeling.protocol import LabeledSamples
    from autosink_platform.pipelines.spec import PipelineSpec

COMPLETE = "_COMPLETE"


@dataclass(frozen=True)
class RefDataset:
    pipeline: str
    snapshot_id: str
    path: str
    counts: dict

    def local(self) -> Path:
        return local_copy(self.path, snapshot_cache(), COMPLETE)

    def load(self) -> tuple[pd.DataFrame, np.ndarray]:
        path = self.local()
        return pd.read_parquet(path / "table.parquet"), np.load(path / "X.npy", mmap_mode="r")

    def extras(self) -> dict[str, pd.DataFrame]:
        """The extra tables the pipeline's protocol needs (e.g. SKAB's per-row test labels)."""
        return {p.stem: pd.read_parquet(p) for p in sorted((self.local() / "extras").glob("*.parquet"))}

    def frame_stats(self) -> None:
        return None  # slices are cut by the table's own columns (group)

    def open(self) -> LoadedDataset:
        return LoadedDataset(self, *self.load())


def counts(table: pd.DataFrame) -> dict:
    return {
        split: {
            "samples": int((table["split"] == split).sum()),
            "anomalous": int(table.loc[table["split"] == split, "label"].sum()),
        }
        for split in ("train", "validation", "test")
    }


def content_id(table: pd.DataFrame, X: np.ndarray, extras: dict[str, pd.DataFrame], *more: str) -> str:
    hashes = [
        hashlib.sha256(pd.util.hash_pandas_object(t, index=False).to_numpy().tobytes()).hexdigest()
        for t in (table, *(extras[k] for k in sorted(extras)))
    ]
    return snapshot_id(*hashes, hashlib.sha256(np.ascontiguousarray(X).tobytes()).hexdigest(), *more)


def freeze(out, table: pd.DataFrame, X: np.ndarray, extras: dict[str, pd.DataFrame], manifest: dict) -> None:
    """Write a content-addressed sample set once: staged, then published with ``_COMPLETE`` last."""
    if (out / COMPLETE).exists():
        return
    staging = staging_for(out)
    table.to_parquet(staging / "table.parquet", index=False)
    np.save(staging / "X.npy", X)
    if extras:
        (staging / "extras").mkdir()
        for name, extra in extras.items():
            extra.to_parquet(staging / "extras" / f"{name}.parquet", index=False)
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (staging / COMPLETE).write_text(manifest["id"])
    publish_folder(staging, out, COMPLETE)


def freeze_dataset(spec: PipelineSpec, labeled: LabeledSamples, store_root: Path) -> RefDataset:
    """The validated stage: the labeled samples checked against ``LabeledSamples`` (provenance
    included) and frozen as the snapshot every model of the pipeline trains on."""
    table, X = labeled.load()
    table = validate(table, LabeledSampleRows, f"{spec.name}/validated_dataset")
    extras = labeled.extras()
    sid = content_id(table, X, extras, json.dumps(spec.source.config_dict(), sort_keys=True))
    out = location(store_root) / spec.name / "datasets" / sid
    ref = RefDataset(spec.name, sid, str(out), counts(table))
    manifest = {"id": sid, "snapshot_id": sid, "labeled": labeled.snapshot_id, "config": spec.source.config_dict()}
    freeze(out, table, np.asarray(X), extras, manifest | {"counts": ref.counts})
    return ref

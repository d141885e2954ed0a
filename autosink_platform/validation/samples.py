"""The detector pipelines' sample sets: a table (one row per sample) with its inputs in table
order and any extra tables the protocol needs, stored once under its content id. The labeled
stage writes one (``labeling.protocol``); the validated stage checks it and freezes the
snapshot every model of the pipeline trains on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from autosink_platform.files import location, publish_folder
from autosink_platform.validation.dataset import COMPLETE, SAMPLES, DatasetRef, staging_for
from autosink_platform.validation.schemas import LabeledSampleRows, validate
from autosink_platform.validation.splits import snapshot_id

if TYPE_CHECKING:
    from autosink_platform.labeling.protocol import LabeledSamples
    from autosink_platform.pipelines.spec import PipelineSpec


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
    np.save(staging / SAMPLES, X)
    if extras:
        (staging / "extras").mkdir()
        for name, extra in extras.items():
            extra.to_parquet(staging / "extras" / f"{name}.parquet", index=False)
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (staging / COMPLETE).write_text(manifest["id"])
    publish_folder(staging, out, COMPLETE)


def freeze_dataset(spec: PipelineSpec, labeled: LabeledSamples, store_root: Path) -> DatasetRef:
    """The validated stage: the labeled samples checked against ``LabeledSamples`` (provenance
    included) and frozen as the snapshot every model of the pipeline trains on."""
    table, X = labeled.load()
    table = validate(table, LabeledSampleRows, f"{spec.name}/validated_dataset")
    extras = labeled.extras()
    sid = content_id(table, X, extras, json.dumps(spec.source.config_dict(), sort_keys=True))
    out = location(store_root) / spec.name / "datasets" / sid
    ref = DatasetRef(spec.name, sid, str(out), counts=counts(table))
    manifest = {"id": sid, "snapshot_id": sid, "labeled": labeled.snapshot_id, "config": spec.source.config_dict()}
    freeze(out, table, np.asarray(X), extras, manifest | {"counts": ref.counts})
    return ref

"""The validated dataset: every ingested session's labeled frames, schema-checked, split by
session, and frozen as a content-addressed snapshot (table + decoded frames); and the one
reference to a snapshot, ``DatasetRef``, for frames and for a published dataset's samples
(``validation.samples``) alike."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from autosink_platform.files import atomic_write, is_local, local_copy, location, publish_folder, read_all
from autosink_platform.lake.sessions import decode_frame
from autosink_platform.lake.store import FeatureStore
from autosink_platform.validation.frame_stats import frame_stats, image_stats
from autosink_platform.validation.schemas import SPLITS, DatasetFrames, validate
from autosink_platform.validation.splits import SplitConfig, assign_split, snapshot_id

COMPLETE = "_COMPLETE"
FRAME_STATS = "frame_stats.parquet"


FRAMES, SAMPLES = "images.npy", "X.npy"  # a snapshot's inputs: the fleet's frames, or samples


@dataclass(frozen=True)
class DatasetRef:
    """A frozen, content-addressed snapshot folder: ``table.parquet`` and its inputs in table
    order, either the fleet's frames (``images.npy``, with their statistics) or a published
    dataset's samples (``X.npy``, with any ``extras/`` tables its protocol needs)."""

    pipeline: str
    snapshot_id: str
    path: str
    sessions: dict[str, str] = field(default_factory=dict)  # frames: session_id -> raw content sha256
    counts: dict = field(default_factory=dict)

    @classmethod
    def of_snapshot(cls, path: str | os.PathLike) -> DatasetRef:
        """The reference a finished snapshot folder was written with."""
        meta = json.loads((location(path) / "manifest.json").read_text())
        fields = {k: meta[k] for k in ("pipeline", "snapshot_id", "sessions", "counts")}
        return cls(**fields, path=str(path))

    def local(self) -> Path:
        """The snapshot's folder on this machine (copied once from an object store)."""
        return local_copy(self.path, snapshot_cache(), COMPLETE)

    @property
    def frames(self) -> bool:
        return (self.local() / FRAMES).exists()

    def load(self) -> tuple[pd.DataFrame, np.ndarray]:
        """(table, inputs) in table order: frames uint8 (N, H, W, 3), or float32 samples."""
        if self.frames:
            return load_snapshot(self.path)
        path = self.local()
        return pd.read_parquet(path / "table.parquet"), np.load(path / SAMPLES, mmap_mode="r")

    def frame_stats(self) -> pd.DataFrame | None:
        """Per-frame statistics; None for samples, whose slices are cut by the table's columns."""
        return load_frame_stats(self.path) if self.frames else None

    def extras(self) -> dict[str, pd.DataFrame]:
        """The extra tables a protocol needs (e.g. SKAB's per-row test labels)."""
        return {p.stem: pd.read_parquet(p) for p in sorted((self.local() / "extras").glob("*.parquet"))}

    def open(self) -> LoadedDataset:
        return LoadedDataset(self, *self.load())


@dataclass
class LoadedDataset:
    """A validated snapshot as models read it (``models.contract.Data``): its table and inputs
    in table order, memory-mapped: uint8 frames (N, H, W, 3) for the fleet's sessions, float32
    rows, windows or images for a published dataset's samples (``validation.samples``)."""

    ref: DatasetRef
    table: pd.DataFrame
    inputs: np.ndarray

    @property
    def snapshot_id(self) -> str:
        return self.ref.snapshot_id

    @cached_property
    def stats(self) -> pd.DataFrame | None:
        """Per-frame quality and content statistics, table order (stored with a frame snapshot)."""
        return self.ref.frame_stats()

    def frames(self, rows: np.ndarray) -> pd.DataFrame:
        """Table rows (with their frame statistics, where there are any): what slices are cut by."""
        parts = [self.table.iloc[rows].reset_index(drop=True)]
        if self.stats is not None:
            parts.append(self.stats.iloc[rows].reset_index(drop=True))
        return pd.concat(parts, axis=1)

    def mask(self, split: str | tuple[str, ...], labeled: bool = False) -> np.ndarray:
        m = self.table["split"].isin([split] if isinstance(split, str) else split).to_numpy()
        return m & self.table["label"].notna().to_numpy() if labeled else m

    def extras(self) -> dict[str, pd.DataFrame]:
        return self.ref.extras()


SNAPSHOT_CACHE = Path("~/.cache/autosink/snapshots")


def snapshot_cache() -> Path:
    """Where snapshots kept on an object store are copied to be memory-mapped, once each: the
    user's cache, shared by every home, which is safe because a snapshot's id is the hash of its
    content and a copy is keyed by its URL."""
    return SNAPSHOT_CACHE.expanduser()


def staging_for(out) -> Path:
    """A fresh local folder to assemble the snapshot ``out`` in (its sibling when local)."""
    if is_local(out):
        staging = out.with_name(f".{out.name}.staging")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        return staging
    return Path(tempfile.mkdtemp(prefix="autosink-snapshot-"))


def load_snapshot(path) -> tuple[pd.DataFrame, np.ndarray]:
    """A snapshot folder's (table, images); images memory-mapped, uint8 (N, H, W, 3)."""
    path = local_copy(path, snapshot_cache(), COMPLETE)
    return pd.read_parquet(path / "table.parquet"), np.load(path / FRAMES, mmap_mode="r")


def load_frame_stats(path: str | os.PathLike) -> pd.DataFrame:
    """A snapshot's per-frame statistics (table order), computed once and kept beside it."""
    path = local_copy(path, snapshot_cache(), COMPLETE)
    if not (path / FRAME_STATS).exists():  # snapshots made before the statistics were stored
        table, images = load_snapshot(path)
        stats = frame_stats(table, images)
        atomic_write(path / FRAME_STATS, lambda tmp: stats.to_parquet(tmp, index=False))
    return pd.read_parquet(path / FRAME_STATS)


def _counts(table: pd.DataFrame) -> dict:
    counts: dict = {"frames": len(table), "sessions": int(table["session_id"].nunique())}
    for split in SPLITS:
        part = table[table["split"] == split]
        counts[split] = {
            "sessions": int(part["session_id"].nunique()),
            "frames": len(part),
            "labeled": int(part["label"].notna().sum()),
            "positive": int((part["label"] == 1).sum()),
        }
    return counts


def decode_frames(lake_root, table: pd.DataFrame) -> np.ndarray:
    """Every frame of ``table``, in its order, as uint8 (N, H, W, 3); from an object store its
    bytes come in one batched request."""
    root = location(lake_root)
    return np.stack([decode_frame(data) for data in read_all([root / p for p in table["frame_path"]])])


def session_frames(store: FeatureStore, lake_root, table: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """Every frame of ``table`` (rows in session blocks) as uint8 (N, H, W, 3), with their
    statistics (table index): what the store kept at ingest, or decoded and measured here for a
    session it kept none of, or whose rows are not its frames in order."""
    ids = table["session_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.array([], dtype=int)
    blocks = dict(zip(ids[starts], zip(starts, np.r_[starts[1:], len(ids)], strict=True), strict=False))
    if len(blocks) != len(starts):
        raise ValueError("session_frames: the table's rows are not in session blocks")
    kept = store.get_frames(list(blocks))
    images, stats = [], []
    for sid, (start, stop) in blocks.items():
        part = table.iloc[start:stop]
        indices = [int(PurePosixPath(p).stem) for p in part["frame_path"]]
        if sid in kept and len(kept[sid][0]) == len(part) and indices == list(range(len(part))):
            images.append(kept[sid][0])
            stats.append(kept[sid][1])
        else:
            decoded = decode_frames(lake_root, part)
            images.append(decoded)
            stats.append(image_stats(decoded))
    return np.concatenate(images), pd.concat(stats, ignore_index=True).set_index(table.index)


def build_dataset(
    store: FeatureStore,
    lake_root: str | os.PathLike,
    session_hashes: dict[str, str],
    split: SplitConfig = SplitConfig(),
    asset: str = "validated_dataset",
) -> DatasetRef:
    """Snapshot the given sessions' labeled frames; reuse the snapshot if it already exists."""
    if not session_hashes:
        raise ValueError(f"{asset}: no ingested sessions to build a dataset from")
    ids = sorted(session_hashes)
    table = store.get_labels(ids)
    table["split"] = table["session_id"].map(lambda s: assign_split(s, split))
    table = validate(table, DatasetFrames, asset)
    for name in SPLITS:
        part = table[table["split"] == name]
        if part.empty:
            raise ValueError(
                f"{asset}: the {name!r} split has no sessions ({len(ids)} sessions in all); "
                "add sessions or change the split fractions"
            )
        if part["label"].nunique() < 2:
            raise ValueError(f"{asset}: the {name!r} split has labels of only one class")

    table_hash = hashlib.sha256(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes()).hexdigest()
    sid = snapshot_id(*(f"{s}:{session_hashes[s]}" for s in ids), table_hash, repr(split))
    out = store.dataset_dir(sid)
    ref = DatasetRef(
        store.root.name, sid, str(out), sessions={s: session_hashes[s] for s in ids}, counts=_counts(table)
    )
    if (out / COMPLETE).exists():
        return ref

    images, stats = session_frames(store, lake_root, table)
    staging = staging_for(out)
    table.to_parquet(staging / "table.parquet", index=False)
    np.save(staging / "images.npy", images)
    stats.to_parquet(staging / FRAME_STATS, index=False)
    (staging / "manifest.json").write_text(
        json.dumps(asdict(ref) | {"path": None, "split_config": asdict(split)}, indent=1)
    )
    (staging / COMPLETE).write_text(sid)
    publish_folder(staging, out, COMPLETE)
    return ref

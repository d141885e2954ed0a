"""The labeled feature store: per-session ingestion records and label tables, and dataset snapshots.

<store>/<pipeline>/sessions/<session_id>.json        parsed session (meta, events, frames, hash)
<store>/<pipeline>/labeled_frames/<session_id>.parquet
<store>/<pipeline>/frames/<session_id>.npy           decoded frames (uint8, frame order), kept at ingest
<store>/<pipeline>/frame_stats/<session_id>.parquet  their quality and content statistics
<store>/<pipeline>/datasets/<snapshot_id>/           table.parquet, images.npy, manifest.json

The store is a folder or an object-store prefix (``s3://bucket/store``): every file is written
whole, and a snapshot is complete once its ``_COMPLETE`` marker exists (written last).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from autosink_platform.files import location, put_bytes, put_text, read_all
from autosink_platform.lake.sessions import Event, Session
from autosink_platform.validation.frame_stats import image_stats


class FeatureStore:
    def __init__(self, root: str | os.PathLike, pipeline: str):
        self.root = location(root) / pipeline

    def _path(self, kind: str, name: str) -> Path:
        return self.root / kind / name

    def put_session(self, session: Session, lake_root: Path) -> None:
        record = {
            "meta": session.meta,
            "events": [asdict(e) for e in session.events],
            "frames": [(session.path / f).relative_to(lake_root).as_posix() for f in session.frames],
            "frame_size": list(session.frame_size),
            "content_sha256": session.content_sha256,
        }
        put_text(self._path("sessions", f"{session.session_id}.json"), json.dumps(record, indent=1))

    def put_frames(self, session_id: str, images: np.ndarray) -> None:
        """A session's decoded frames and their statistics, kept once at ingest: a dataset build
        reads them instead of decoding and measuring every frame of the lake again."""
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(images, dtype=np.uint8))
        put_bytes(self._path("frame_stats", f"{session_id}.parquet"), image_stats(images).to_parquet(index=False))
        put_bytes(self._path("frames", f"{session_id}.npy"), buf.getvalue())  # last: it marks the pair whole

    def get_frames(self, session_ids: list[str]) -> dict[str, tuple[np.ndarray, pd.DataFrame]]:
        """(frames, statistics) of those of ``session_ids`` whose were kept at ingest (sessions
        ingested before frames were kept have none: their frames are decoded from the lake)."""
        have = {p.stem for p in (self.root / "frames").glob("*.npy")}  # one listing, not a request per session
        kept = [s for s in session_ids if s in have]
        frames = read_all([self._path("frames", f"{s}.npy") for s in kept])
        stats = read_all([self._path("frame_stats", f"{s}.parquet") for s in kept])
        return {
            s: (np.load(io.BytesIO(f)), pd.read_parquet(io.BytesIO(t)))
            for s, f, t in zip(kept, frames, stats, strict=True)
        }

    def get_session(self, session_id: str) -> dict:
        path = self.root / "sessions" / f"{session_id}.json"
        if not path.exists():
            raise KeyError(f"session {session_id!r} has not been ingested into {self.root}")
        record = json.loads(path.read_text())
        record["events"] = [Event(**e) for e in record["events"]]
        return record

    def put_labels(self, session_id: str, table: pd.DataFrame) -> Path:
        path = self._path("labeled_frames", f"{session_id}.parquet")
        put_bytes(path, table.to_parquet(index=False))
        return path

    def labeled_sessions(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "labeled_frames").glob("*.parquet"))

    def get_labels(self, session_ids: list[str]) -> pd.DataFrame:
        blobs = read_all([self._path("labeled_frames", f"{s}.parquet") for s in session_ids])
        return pd.concat([pd.read_parquet(io.BytesIO(b)) for b in blobs], ignore_index=True)

    def dataset_dir(self, snapshot_id: str) -> Path:
        return self.root / "datasets" / snapshot_id

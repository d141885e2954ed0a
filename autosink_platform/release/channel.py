"""The fleet channel the Pis pull from (public layout):

    <fleet>/<pipeline>/<model>/versions/<version>/model.onnx, manifest.json, smoke_frames.npy
    <fleet>/<pipeline>/<model>/channels/<channel>.json   pointer: version, manifest sha256, sequence, rollout, expiry

Files of a version are staged and moved in whole; the pointer is written last and atomically,
so a reader never sees a half-published release.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from autosink_platform.files import atomic_write_text


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class FleetChannel:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def version_dir(self, pipeline: str, model: str, version: str | int) -> Path:
        return self.root / pipeline / model / "versions" / str(version)

    def pointer_path(self, pipeline: str, model: str, channel: str) -> Path:
        return self.root / pipeline / model / "channels" / f"{channel}.json"

    def put_version(self, pipeline: str, model: str, version: str | int, files: dict[str, Path]) -> Path:
        """Move a complete version folder in; a version, once published, is never rewritten."""
        final = self.version_dir(pipeline, model, version)
        if final.exists():
            raise FileExistsError(f"{final} already published")
        staging = final.with_name(f".{final.name}.staging")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name, src in files.items():
            shutil.copyfile(src, staging / name)
        staging.rename(final)
        return final

    def read_pointer(self, pipeline: str, model: str, channel: str) -> dict | None:
        path = self.pointer_path(pipeline, model, channel)
        return json.loads(path.read_text()) if path.exists() else None

    def set_pointer(
        self,
        pipeline: str,
        model: str,
        channel: str,
        version: str | int,
        rollout_percent: int = 100,
        valid_days: int = 30,
    ) -> dict:
        """Point ``channel`` at a published version. Re-pointing at the same version is a no-op."""
        manifest = self.version_dir(pipeline, model, version) / "manifest.json"
        if not manifest.exists():
            raise FileNotFoundError(f"{manifest}: publish the version before pointing a channel at it")
        current = self.read_pointer(pipeline, model, channel)
        digest = sha256_file(manifest)
        if current and current["version"] == str(version) and current["manifest_sha256"] == digest:
            return current
        now = datetime.now(UTC)
        pointer = {
            "pipeline": pipeline,
            "model": model,
            "channel": channel,
            "version": str(version),
            "manifest_sha256": digest,
            "sequence": (current["sequence"] + 1) if current else 1,
            "rollout_percent": rollout_percent,
            "published_at": now.isoformat(),
            "expires_at": (now + timedelta(days=valid_days)).isoformat(),
        }
        atomic_write_text(self.pointer_path(pipeline, model, channel), json.dumps(pointer, indent=1))
        return pointer

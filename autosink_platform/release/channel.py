"""The fleet channel the Pis pull from (public layout):

    <fleet>/<pipeline>/<model>/versions/<version>/model.onnx, manifest.json (+ .sig), smoke_frames.npy
    <fleet>/<pipeline>/<model>/channels/<channel>.json   signed pointer: version, manifest sha256, sequence, rollout, expiry
    <fleet>/keys/<key_id>.pem                            the public key, for provisioning devices

Files of a version are staged and moved in whole; the pointer is written last and atomically,
so a reader never sees a half-published release.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from autosink_pi.verify import sha256_file
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from autosink_platform.files import atomic_write_bytes, atomic_write_text
from autosink_platform.release.signing import key_id, public_pem, sign, sign_pointer, verify_pointer


class FleetChannel:
    """``signing_key`` signs every manifest and pointer it publishes; readers verify with the public key."""

    def __init__(self, root: str | os.PathLike, signing_key: Ed25519PrivateKey):
        self.root = Path(root)
        self.signing_key = signing_key
        self.key_id = key_id(signing_key.public_key())
        keys = self.root / "keys"
        if not (keys / f"{self.key_id}.pem").exists():  # for provisioning devices; they never trust it from here
            atomic_write_bytes(keys / f"{self.key_id}.pem", public_pem(signing_key.public_key()))

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
        (staging / "manifest.json.sig").write_text(sign(self.signing_key, (staging / "manifest.json").read_bytes()))
        staging.rename(final)
        return final

    def read_pointer(self, pipeline: str, model: str, channel: str) -> dict | None:
        """The pointer's fields, verified against this channel's own key (None if not published)."""
        path = self.pointer_path(pipeline, model, channel)
        return verify_pointer(self.signing_key.public_key(), json.loads(path.read_text())) if path.exists() else None

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
        lock_path = self.pointer_path(pipeline, model, channel).with_suffix(".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # racing promotions: each gets its own, higher sequence
            return self._set_pointer_locked(pipeline, model, channel, version, manifest, rollout_percent, valid_days)

    def _set_pointer_locked(
        self, pipeline, model, channel, version, manifest: Path, rollout_percent: int, valid_days: int
    ) -> dict:
        current = self.read_pointer(pipeline, model, channel)
        digest = sha256_file(manifest)
        if current and (current["version"], current["manifest_sha256"], current["rollout_percent"]) == (
            str(version),
            digest,
            rollout_percent,
        ):
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
            "key_id": self.key_id,
        }
        signed = sign_pointer(self.signing_key, pointer)
        atomic_write_text(self.pointer_path(pipeline, model, channel), json.dumps(signed, indent=1))
        return pointer

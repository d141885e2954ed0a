"""The fleet channel the Pis pull from (public layout):

    <fleet>/<pipeline>/<model>/versions/<version>/model.onnx, manifest.json (+ .sig), smoke_frames.npy
    <fleet>/<pipeline>/<model>/channels/<channel>.json   signed pointer: version, manifest sha256, sequence, rollout, expiry
    <fleet>/keys/<key_id>.pem                            the public key, for provisioning devices

The same layout lives in a local folder or under an S3-compatible prefix (``s3://bucket/fleet``,
through fsspec). Either way a reader never sees a half-published release:

- a version is complete once its ``manifest.json`` exists. Locally its files are staged and the
  folder renamed in whole; on an object store the manifest is the last object uploaded.
- the pointer is written last, in one atomic step: a rename locally, a single PUT on S3.
- racing publishers each get their own, higher sequence: an exclusive file lock locally, a
  conditional PUT (``If-Match`` on the pointer's ETag, ``If-None-Match`` for the first) on S3.

A pointer is valid for ``POINTER_VALID_DAYS`` after it is signed, so a stolen old one cannot
hold a device back for ever (freeze). ``refresh_all`` re-signs every pointer that expires
within ``RENEW_WITHIN_DAYS`` (same version and rollout, next sequence, new expiry); the code
location's ``fleet_channel_refresh`` schedule runs it daily, so while the platform runs no
pointer lapses, promotion or not.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from autosink_pi.manifest import SCHEMA_FILE, json_schema
from autosink_pi.verify import sha256_file
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from upath import UPath

from autosink_platform.files import atomic_write_bytes, atomic_write_text, is_url
from autosink_platform.release.signing import key_id, public_pem, sign, sign_pointer, verify_pointer

__all__ = ["FleetChannel", "PointerConflict", "sha256_file"]

CAS_ATTEMPTS = 20  # conditional pointer writes retried this often under contention
POINTER_VALID_DAYS = 30
RENEW_WITHIN_DAYS = 20  # a daily refresh has ten chances before a pointer lapses


class PointerConflict(RuntimeError):
    """Another publisher kept moving the pointer; nothing was written."""


class FleetChannel:
    """``signing_key`` signs every manifest and pointer it publishes; readers verify with the public key.

    ``root`` is a folder or an fsspec URL (``s3://bucket/prefix``); ``storage_options`` go to the
    filesystem (e.g. ``endpoint_url`` for MinIO or another S3-compatible store) and
    ``put_options`` to every object write (e.g. ``{"ACL": "public-read"}`` so devices can GET).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        signing_key: Ed25519PrivateKey,
        storage_options: dict | None = None,
        put_options: dict | None = None,
    ):
        self.root = UPath(root, **(storage_options or {})) if is_url(root) else UPath(root)  # options are for stores
        self.local = self.root.protocol in ("", "file", "local")
        if not (self.local or self.root.protocol in ("s3", "s3a")):
            raise ValueError(f"fleet channel {root!s}: only a local folder or s3:// is supported")
        self.put_options = dict(put_options or {})
        self.signing_key = signing_key
        self.key_id = key_id(signing_key.public_key())
        keys = self.root / "keys"
        if not (keys / f"{self.key_id}.pem").exists():  # for provisioning devices; they never trust it from here
            self._write(keys / f"{self.key_id}.pem", public_pem(signing_key.public_key()))

    def version_dir(self, pipeline: str, model: str, version: str | int) -> UPath:
        return self.root / pipeline / model / "versions" / str(version)

    def pointer_path(self, pipeline: str, model: str, channel: str) -> UPath:
        return self.root / pipeline / model / "channels" / f"{channel}.json"

    def _write(self, path: UPath, data: bytes) -> None:
        if self.local:
            atomic_write_bytes(path, data)
        else:  # one PUT: readers see the old object or the new one
            path.fs.pipe_file(path.path, data, **self.put_options)

    def put_version(self, pipeline: str, model: str, version: str | int, files: dict[str, Path]) -> UPath:
        """Publish a complete version; a version, once published, is never rewritten."""
        final = self.version_dir(pipeline, model, version)
        if (final / "manifest.json").exists() if not self.local else final.exists():
            raise FileExistsError(f"{final} already published")
        signature = sign(self.signing_key, Path(files["manifest.json"]).read_bytes()).encode()
        self.publish_schema()
        if not self.local:  # the manifest goes last: its presence means the version is complete
            for name in sorted(files, key=lambda n: n == "manifest.json"):
                if name == "manifest.json":
                    self._write(final / "manifest.json.sig", signature)
                final.fs.put_file(str(files[name]), (final / name).path, **self.put_options)
            return final
        staging = final.with_name(f".{final.name}.staging")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name, src in files.items():
            shutil.copyfile(src, staging / name)
        (staging / "manifest.json.sig").write_bytes(signature)
        staging.rename(final)
        return final

    def publish_schema(self) -> None:
        """The JSON Schema of the manifests, at the channel's root, as the device client defines it."""
        schema = (json.dumps(json_schema(), indent=1) + "\n").encode()
        path = self.root / SCHEMA_FILE
        if not path.exists() or path.read_bytes() != schema:
            self._write(path, schema)

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
        valid_days: int = POINTER_VALID_DAYS,
        renew_within: timedelta | None = None,
        now: datetime | None = None,
    ) -> dict:
        """Point ``channel`` at a published version. Re-pointing at the same version is a no-op,
        unless the pointer expires within ``renew_within``: then it is re-signed (``refresh``)."""
        manifest = self.version_dir(pipeline, model, version) / "manifest.json"
        if not manifest.exists():
            raise FileNotFoundError(f"{manifest}: publish the version before pointing a channel at it")
        digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
        now = now or datetime.now(UTC)
        args = (pipeline, model, channel, version, digest, rollout_percent, valid_days, renew_within, now)
        if not self.local:
            return self._set_pointer_conditional(*args)
        lock_path = self.pointer_path(pipeline, model, channel).with_suffix(".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # racing promotions: each gets its own, higher sequence
            current = self.read_pointer(pipeline, model, channel)
            pointer, signed = self._next_pointer(current, *args)
            if signed is not None:
                atomic_write_text(self.pointer_path(pipeline, model, channel), json.dumps(signed, indent=1))
            return pointer

    def _set_pointer_conditional(self, pipeline, model, channel, *rest) -> dict:
        """Compare-and-swap on the object store: write only if the pointer is still the one read."""
        path = self.pointer_path(pipeline, model, channel)
        for attempt in range(CAS_ATTEMPTS):
            try:
                etag = path.fs.info(path.path)["ETag"]
                raw = path.fs.cat_file(path.path)  # may be newer than the etag: then the PUT fails
            except FileNotFoundError:
                etag, raw = None, None
            current = None if raw is None else verify_pointer(self.signing_key.public_key(), json.loads(raw))
            pointer, signed = self._next_pointer(current, pipeline, model, channel, *rest)
            if signed is None:
                return pointer
            condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
            try:
                path.fs.pipe_file(path.path, json.dumps(signed, indent=1).encode(), **self.put_options, **condition)
                return pointer
            except OSError:  # 412 Precondition Failed (FileExistsError for If-None-Match): someone else won
                path.fs.invalidate_cache(path.path)
                time.sleep(0.01 * (attempt + 1))
        raise PointerConflict(f"{path}: the pointer kept changing; gave up after {CAS_ATTEMPTS} attempts")

    def refresh(
        self, pipeline: str, model: str, channel: str, now: datetime | None = None, within_days: int = RENEW_WITHIN_DAYS
    ) -> dict | None:
        """Re-sign the pointer (same version and rollout, next sequence) if it expires within
        ``within_days`` of ``now``; the new pointer, or None if it was fresh enough or absent."""
        current = self.read_pointer(pipeline, model, channel)
        if current is None:
            return None
        pointer = self.set_pointer(
            pipeline,
            model,
            channel,
            current["version"],
            current["rollout_percent"],
            renew_within=timedelta(days=within_days),
            now=now,
        )
        return None if pointer["sequence"] == current["sequence"] else pointer

    def pointers(self) -> list[tuple[str, str, str]]:
        """Every (pipeline, model, channel) with a pointer."""
        found = (path.relative_to(self.root).parts for path in self.root.glob("*/*/channels/*.json"))
        return sorted((parts[0], parts[1], parts[3].removesuffix(".json")) for parts in found)

    def refresh_all(self, now: datetime | None = None, within_days: int = RENEW_WITHIN_DAYS) -> list[dict]:
        """``refresh`` every pointer in the channel; the pointers re-signed."""
        renewed = (self.refresh(*key, now=now, within_days=within_days) for key in self.pointers())
        return [pointer for pointer in renewed if pointer is not None]

    def _next_pointer(
        self,
        current,
        pipeline,
        model,
        channel,
        version,
        digest: str,
        rollout_percent: int,
        valid_days: int,
        renew_within: timedelta | None,
        now: datetime,
    ) -> tuple[dict, dict | None]:
        """The pointer to write after ``current`` and its signed form (None: already there, no-op)."""
        same = current and (current["version"], current["manifest_sha256"], current["rollout_percent"]) == (
            str(version),
            digest,
            rollout_percent,
        )
        if same and (renew_within is None or datetime.fromisoformat(current["expires_at"]) - now > renew_within):
            return current, None
        pointer = {
            "pipeline": pipeline,
            "model": model,
            "channel": channel,
            "version": str(version),
            "manifest_sha256": digest,
            "sequence": (current["sequence"] + 1) if current else 1,
            "rollout_percent": rollout_percent,
            "published_at": current["published_at"] if same else now.isoformat(),  # when it first pointed here
            "signed_at": now.isoformat(),
            "expires_at": (now + timedelta(days=valid_days)).isoformat(),
            "key_id": self.key_id,
        }
        return pointer, sign_pointer(self.signing_key, pointer)

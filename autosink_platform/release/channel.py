"""The fleet channel the Pis pull from (public layout):

    <fleet>/metadata/                                    TUF metadata (``tuf_repo``): root, targets, snapshot, timestamp
    <fleet>/<pipeline>/<model>/versions/<version>/model.onnx, manifest.json, smoke_frames.npy   targets
    <fleet>/<pipeline>/<model>/channels/<channel>.json   the pointer (a target too): version, fallback, rollout

Devices trust nothing in a file: they update through python-tuf's ``Updater`` from their
provisioned root, and take a pointer's fields from the ``custom`` of its target in the signed
targets metadata, a release's length and sha256 from its targets, and what a manifest is
(pipeline, model, version) from the manifest target's ``custom``.

A pointer names the ``version`` the canary runs, the share of devices in it (``rollout_percent``,
by a stable hash of the device id) and the ``fallback`` every other device runs (the champion
before, or None). ``halted`` records why an operator or the telemetry guard stopped a rollout.

The same layout lives in a local folder or under an S3-compatible prefix (``s3://bucket/fleet``,
through fsspec). Either way a reader never sees a half-published release: a version's files are
written before its targets entry, and the metadata is published targets, snapshot, timestamp.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from autosink_pi.manifest import SCHEMA_FILE, json_schema
from autosink_pi.verify import sha256_file
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tuf.api.metadata import TargetFile, Targets
from upath import UPath

from autosink_platform.files import is_url, put_bytes
from autosink_platform.release.tuf_repo import Renewal, TufRepository

__all__ = ["FleetChannel", "sha256_file"]

MANIFEST_IDENTITY = ("schema_version", "pipeline", "model", "registered_model", "mlflow_version")


class FleetChannel:
    """Publishes releases and moves pointers; ``signing_key`` is the online key that signs the TUF
    targets, snapshot and timestamp. A channel without metadata is initialised on first use with
    the root key ``root_key`` returns (only then is it called: the root key stays offline).

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
        root_key: Callable[[], Ed25519PrivateKey] | None = None,
    ):
        self.root = UPath(root, **(storage_options or {})) if is_url(root) else UPath(root)  # options are for stores
        self.local = self.root.protocol in ("", "file", "local")
        if not (self.local or self.root.protocol in ("s3", "s3a")):
            raise ValueError(f"fleet channel {root!s}: only a local folder or s3:// is supported")
        self.put_options = dict(put_options or {})
        self.tuf = TufRepository(self.root, self.local, signing_key, self.put_options)
        if not self.tuf.exists():
            if root_key is None:
                raise FileNotFoundError(
                    f"{self.root}: the channel has no TUF root yet; initialise it with the root key"
                )
            self.tuf.initialise(root_key())
            self._adopt_unsigned()

    @property
    def key_id(self) -> str:
        """The TUF key id of the online key that signs this channel's metadata."""
        return self.tuf.online_key.keyid

    def _adopt_unsigned(self) -> None:
        """A channel written before it was a TUF repository (versions with ``manifest.json.sig``,
        pointers signed inside the file): its versions become targets as they are and each
        pointer is set again at the version it named, so a stored home keeps what it published.
        Devices are then provisioned with ``metadata/root.json`` instead of the old public key."""
        for manifest in sorted(self.root.glob("*/*/versions/*/manifest.json"), key=str):
            folder = manifest.parent
            pipeline, model, _, version = folder.relative_to(self.root).parts
            files = {p.name: p for p in folder.iterdir() if p.is_file() and p.name != "manifest.json.sig"}
            with tempfile.TemporaryDirectory() as tmp:  # TUF hashes local files; the store may be remote
                local = {name: Path(tmp) / name for name in files}
                for name, src in files.items():
                    local[name].write_bytes(src.read_bytes())
                self._add_targets(pipeline, model, version, local)
        for pointer_file in self.root.glob("*/*/channels/*.json"):
            old = json.loads(pointer_file.read_text())
            pipeline, model, _, name = pointer_file.relative_to(self.root).parts
            if self.published(pipeline, model, old.get("version", "")):
                self.set_pointer(
                    pipeline, model, name.removesuffix(".json"), old["version"], old.get("rollout_percent", 100)
                )

    def version_dir(self, pipeline: str, model: str, version: str | int) -> UPath:
        return self.root / pipeline / model / "versions" / str(version)

    def pointer_path(self, pipeline: str, model: str, channel: str) -> UPath:
        return self.root / pipeline / model / "channels" / f"{channel}.json"

    @staticmethod
    def target_path(pipeline: str, model: str, *rest: str | int) -> str:
        return "/".join([pipeline, model, *map(str, rest)])

    def put_version(self, pipeline: str, model: str, version: str | int, files: dict[str, Path]) -> UPath:
        """Publish a complete version: its files, then its targets (the manifest's carries the
        manifest's identity in ``custom``). A version, once published, is never rewritten."""
        final = self.version_dir(pipeline, model, version)
        base = self.target_path(pipeline, model, "versions", version)
        if f"{base}/manifest.json" in self.tuf.targets().targets:
            raise FileExistsError(f"{final} already published")
        self.publish_schema()
        if self.local:
            staging = final.with_name(f".{final.name}.staging")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            for name, src in files.items():
                shutil.copyfile(src, staging / name)
            shutil.rmtree(final, ignore_errors=True)  # files of a publish that never reached the metadata
            staging.rename(final)
        else:
            for name in sorted(files):
                final.fs.put_file(str(files[name]), (final / name).path, **self.put_options)
        self._add_targets(pipeline, model, version, files)
        return final

    def _add_targets(self, pipeline: str, model: str, version: str | int, files: dict[str, Path]) -> None:
        final = self.version_dir(pipeline, model, version)
        base = self.target_path(pipeline, model, "versions", version)
        entries = {}
        for name, src in files.items():
            entry = TargetFile.from_file(f"{base}/{name}", str(src), ["sha256"])
            if name == "manifest.json":  # what it is, signed; the rest of it is bound by its sha256
                manifest = json.loads(Path(src).read_bytes())  # (TUF's canonical JSON has no floats)
                entry.unrecognized_fields["custom"] = {"manifest": {k: manifest.get(k) for k in MANIFEST_IDENTITY}}
            entries[entry.path] = entry

        def add(targets: Targets) -> bool:
            if f"{base}/manifest.json" in targets.targets:
                raise FileExistsError(f"{final} already published")
            targets.targets.update(entries)
            return True

        self.tuf.update(add)

    def publish_schema(self) -> None:
        """The JSON Schema of the manifests, at the channel's root, as the device client defines it."""
        schema = (json.dumps(json_schema(), indent=1) + "\n").encode()
        path = self.root / SCHEMA_FILE
        if not path.exists() or path.read_bytes() != schema:
            put_bytes(path, schema, **self.put_options)

    def published(self, pipeline: str, model: str, version: str | int) -> bool:
        """Whether the version's release is in the signed targets."""
        return f"{self.target_path(pipeline, model, 'versions', version)}/manifest.json" in self.tuf.targets().targets

    def read_pointer(self, pipeline: str, model: str, channel: str) -> dict | None:
        """The pointer's fields from the verified targets metadata (None if not published)."""
        entry = self.tuf.targets().targets.get(self.target_path(pipeline, model, "channels", f"{channel}.json"))
        return None if entry is None else dict(entry.custom["pointer"])

    def set_pointer(
        self,
        pipeline: str,
        model: str,
        channel: str,
        version: str | int,
        rollout_percent: int = 100,
        fallback: str | int | None = ...,
        halted: dict | None = None,
        now: datetime | None = None,
    ) -> dict:
        """Point ``channel`` at a published version for ``rollout_percent`` of the devices; the
        others run ``fallback`` (default: what the pointer's devices ran before: its version
        when that changes, else its fallback). The same fields again are a no-op."""
        if not self.published(pipeline, model, version):
            raise FileNotFoundError(
                f"{self.version_dir(pipeline, model, version)}: publish the version before pointing a channel at it"
            )
        if not 0 <= int(rollout_percent) <= 100:
            raise ValueError(f"rollout_percent must be 0..100, got {rollout_percent}")
        now = now or datetime.now(UTC)
        path = self.target_path(pipeline, model, "channels", f"{channel}.json")
        result: dict = {}

        def move(targets: Targets) -> bool:
            entry = targets.targets.get(path)
            current = entry.custom["pointer"] if entry else None
            if fallback is ...:
                if current is None:
                    before = None
                elif current["version"] != str(version):
                    before = current["version"] if current["rollout_percent"] == 100 else current.get("fallback")
                else:
                    before = current.get("fallback")
            else:
                before = None if fallback is None else str(fallback)
            fields = {
                "version": str(version),
                "manifest_sha256": targets.targets[
                    f"{self.target_path(pipeline, model, 'versions', version)}/manifest.json"
                ].hashes["sha256"],
                "rollout_percent": int(rollout_percent),
                "fallback": before if int(rollout_percent) < 100 else None,
                "halted": halted,
            }
            if current is not None and all(current.get(k) == v for k, v in fields.items()):
                result.update(current)
                return False
            pointer = {"pipeline": pipeline, "model": model, "channel": channel} | fields
            pointer |= {
                "sequence": (current["sequence"] + 1) if current else 1,
                "published_at": current["published_at"]
                if current and current["version"] == str(version)
                else now.isoformat(),  # when it first pointed here
                "signed_at": now.isoformat(),
            }
            data = json.dumps(pointer, indent=1, sort_keys=True).encode()
            targets.targets[path] = TargetFile.from_data(path, data, ["sha256"])
            targets.targets[path].unrecognized_fields["custom"] = {"pointer": pointer}
            result.clear()
            result.update(pointer)
            result["_bytes"] = data
            return True

        self.tuf.update(move, now)
        data = result.pop("_bytes", None)
        if data is not None:  # for people and dashboards; devices read the signed metadata
            with self.tuf.lock():
                if self.read_pointer(pipeline, model, channel)["sequence"] == result["sequence"]:
                    put_bytes(self.pointer_path(pipeline, model, channel), data, **self.put_options)
        return result

    def pointers(self) -> list[tuple[str, str, str]]:
        """Every (pipeline, model, channel) with a pointer."""
        found = (p.split("/") for p in self.tuf.targets().targets if "/channels/" in p)
        return sorted((parts[0], parts[1], parts[3].removesuffix(".json")) for parts in found)

    def refresh_all(self, now: datetime | None = None) -> list[Renewal]:
        """Re-sign whatever metadata expires soon (``TufRepository.refresh``); what was re-signed."""
        return self.tuf.refresh(now)

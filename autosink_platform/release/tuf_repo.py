"""The fleet channel's trust: a TUF repository written with python-tuf's Metadata API.

    <fleet>/metadata/N.root.json, root.json   root: which keys sign which role (the root key signs it)
    <fleet>/metadata/N.targets.json           every published file (length, sha256) and every channel pointer
    <fleet>/metadata/N.snapshot.json          which targets version is current (stops mix-and-match)
    <fleet>/metadata/timestamp.json           which snapshot is current; short-lived (stops freeze)

The **root key** is offline: it is needed only to create the repository, to rotate the online key
and to renew root (``autosink fleet rotate-key``, ``autosink fleet renew-root``). The **online key**
(the platform's signing key) signs targets, snapshot and timestamp on every publish and whenever
``refresh`` finds one near expiry; the ``fleet_channel_refresh_daily`` schedule runs it, so while
the platform runs no metadata lapses. Devices update through ``tuf.ngclient.Updater`` from the
root they were provisioned with.

Every change writes targets and snapshot version N+1 under new names, then the timestamp: readers
see the old state or the new one. Racing publishers serialise on an exclusive file lock locally;
on an object store ``N.targets.json`` is created with ``If-None-Match`` (one publisher gets each
N, the others retry on top of it) and the timestamp is replaced with ``If-Match``.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer
from upath import UPath

from autosink_platform.files import put_bytes

ONLINE_ROLES = ("targets", "snapshot", "timestamp")
VALID = {
    "root": timedelta(days=365),
    "targets": timedelta(days=90),
    "snapshot": timedelta(days=30),
    "timestamp": timedelta(days=7),  # a frozen (withheld) channel holds a device back at most this long
}
RENEW_WITHIN = {"targets": timedelta(days=30), "snapshot": timedelta(days=20), "timestamp": timedelta(days=6)}
ROOT_WARN_WITHIN = timedelta(days=60)
CAS_ATTEMPTS = 20
SERIALIZER = JSONSerializer(compact=False)


class MetadataConflict(RuntimeError):
    """Other publishers kept changing the metadata; nothing was written."""


class WrongKey(RuntimeError):
    """A key is not the one the repository's root names for the job."""


def tuf_key(private: Ed25519PrivateKey) -> SSlibKey:
    return SSlibKey.from_crypto(private.public_key())


@dataclass(frozen=True)
class Renewal:
    role: str
    version: int
    expires: datetime


class TufRepository:
    """The metadata under ``<root>/metadata``, signed with ``online`` (targets, snapshot, timestamp)."""

    def __init__(self, root: UPath, local: bool, online: Ed25519PrivateKey, put_options: dict | None = None):
        self.dir = root / "metadata"
        self.local = local
        self.put_options = dict(put_options or {})
        self.online = online
        self.online_key = tuf_key(online)

    # -- storage ------------------------------------------------------------------------------

    def _read(self, name: str) -> bytes | None:
        path = self.dir / name
        if not self.local:
            path.fs.invalidate_cache(path.path)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def _write(self, name: str, data: bytes, **condition) -> bool:
        """Write ``name``; with ``IfNoneMatch="*"`` only if absent, with ``IfMatch=etag`` only if
        unchanged (object stores; locally the caller holds the lock). False: the condition failed."""
        path = self.dir / name
        if self.local:
            if condition.get("IfNoneMatch") and path.exists():
                return False
            put_bytes(path, data)
            return True
        try:
            put_bytes(path, data, **self.put_options, **condition)
            return True
        except OSError:  # 412 Precondition Failed, FileExistsError for If-None-Match
            path.fs.invalidate_cache(path.path)
            return False

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Held while the metadata changes (an exclusive file lock locally; nothing on a store,
        where conditional writes keep racing publishers apart)."""
        if not self.local:
            with nullcontext():
                yield
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _newest(self, role: str) -> int:
        if not self.local:
            self.dir.fs.invalidate_cache(self.dir.path)
        versions = [
            int(p.name.split(".")[0]) for p in self.dir.glob(f"*.{role}.json") if p.name.split(".")[0].isdigit()
        ]
        return max(versions, default=0)

    # -- reading ------------------------------------------------------------------------------

    def exists(self) -> bool:
        return self._read("root.json") is not None

    def root(self) -> Metadata[Root]:
        """The newest root, checked against its own root keys."""
        data = self._read("root.json")
        if data is None:
            raise FileNotFoundError(f"{self.dir}: no TUF root yet")
        md = Metadata[Root].from_bytes(data)
        md.signed.verify_delegate("root", md.signed_bytes, md.signatures)
        return md

    def targets(self, verify: bool = True) -> Targets:
        """The newest targets, verified with the keys root names for them (``verify=False`` only
        while re-signing them after a rotation, when root names the new key already)."""
        version = self._newest("targets")
        md = Metadata[Targets].from_bytes(self._read(f"{version}.targets.json"))
        if verify:
            self.root().signed.verify_delegate("targets", md.signed_bytes, md.signatures)
        return md.signed

    def timestamp(self) -> Timestamp | None:
        data = self._read("timestamp.json")
        return None if data is None else Metadata[Timestamp].from_bytes(data).signed

    def _check_online_key(self, root: Root) -> None:
        for role in ONLINE_ROLES:
            if self.online_key.keyid not in root.roles[role].keyids:
                raise WrongKey(
                    f"the signing key {self.online_key.keyid[:16]} is not the channel's {role} key "
                    f"({', '.join(k[:16] for k in root.roles[role].keyids)}): rotate it with `autosink fleet rotate-key`"
                )

    # -- writing ------------------------------------------------------------------------------

    def initialise(self, root_key: Ed25519PrivateKey, now: datetime | None = None) -> None:
        """Root version 1 (signed by ``root_key``), empty targets, snapshot and timestamp."""
        now = now or datetime.now(UTC)
        with self.lock():
            if self.exists():
                return
            root = Root(expires=now + VALID["root"], consistent_snapshot=True)
            root.add_key(tuf_key(root_key), "root")
            for role in ONLINE_ROLES:
                root.add_key(self.online_key, role)
            md = Metadata(root)
            md.sign(CryptoSigner(root_key))
            data = md.to_bytes(SERIALIZER)
            if not self._write("1.root.json", data, IfNoneMatch="*"):
                return  # another process created it first
            self._write("root.json", data)
        self.update(lambda targets: True, now)

    def update(self, change: Callable[[Targets], bool], now: datetime | None = None, _rotated: bool = False) -> Targets:
        """Apply ``change`` to the newest targets (it returns False for "nothing to do") and publish
        targets and snapshot N+1, then a timestamp naming them."""
        now = now or datetime.now(UTC)
        for attempt in range(CAS_ATTEMPTS):
            with self.lock():
                self._check_online_key(self.root().signed)
                version = self._newest("targets")
                targets = self.targets(verify=not _rotated) if version else Targets()
                if version and not change(targets):
                    return targets
                targets.version = version + 1
                targets.expires = now + VALID["targets"]
                md = Metadata(targets)
                md.sign(CryptoSigner(self.online))
                if self._write(f"{targets.version}.targets.json", md.to_bytes(SERIALIZER), IfNoneMatch="*"):
                    snapshot = Snapshot(version=targets.version, expires=now + VALID["snapshot"])
                    snapshot.meta = {"targets.json": MetaFile(version=targets.version)}
                    sm = Metadata(snapshot)
                    sm.sign(CryptoSigner(self.online))
                    self._write(f"{snapshot.version}.snapshot.json", sm.to_bytes(SERIALIZER))
                    self._publish_timestamp(snapshot.version, now)
                    return targets
            time.sleep(0.01 * (attempt + 1))  # another publisher took version N: build on theirs
        raise MetadataConflict(f"{self.dir}: targets kept changing; gave up after {CAS_ATTEMPTS} attempts")

    def _publish_timestamp(self, snapshot_version: int, now: datetime, renew: bool = False) -> Renewal | None:
        """Point the timestamp at ``snapshot_version`` unless it already names a newer one."""
        for attempt in range(CAS_ATTEMPTS):
            path = self.dir / "timestamp.json"
            etag = None
            if not self.local:
                try:
                    etag = path.fs.info(path.path)["ETag"]
                except FileNotFoundError:
                    etag = None
            current = self.timestamp()
            if current is not None and current.snapshot_meta.version > snapshot_version:
                return None
            if current is not None and current.snapshot_meta.version == snapshot_version and not renew:
                return None
            timestamp = Timestamp(
                version=(current.version + 1) if current else 1,
                expires=now + VALID["timestamp"],
                snapshot_meta=MetaFile(version=snapshot_version),
            )
            md = Metadata(timestamp)
            md.sign(CryptoSigner(self.online))
            condition = {} if self.local else ({"IfMatch": etag} if etag else {"IfNoneMatch": "*"})
            if self._write("timestamp.json", md.to_bytes(SERIALIZER), **condition):
                return Renewal("timestamp", timestamp.version, timestamp.expires)
            time.sleep(0.01 * (attempt + 1))
        raise MetadataConflict(f"{self.dir}: the timestamp kept changing; gave up after {CAS_ATTEMPTS} attempts")

    def refresh(self, now: datetime | None = None) -> list[Renewal]:
        """Re-sign what expires soon: targets and snapshot together (a new pair) when either is
        within its renewal window, the timestamp when it is within its own. What was re-signed."""
        now = now or datetime.now(UTC)
        renewed: list[Renewal] = []
        targets = self.targets()
        snapshot_version = self._newest("snapshot")
        snapshot = Metadata[Snapshot].from_bytes(self._read(f"{snapshot_version}.snapshot.json")).signed
        if targets.expires - now <= RENEW_WITHIN["targets"] or snapshot.expires - now <= RENEW_WITHIN["snapshot"]:
            new = self.update(lambda t: True, now)
            renewed += [
                Renewal("targets", new.version, new.expires),
                Renewal("snapshot", new.version, now + VALID["snapshot"]),
            ]
            timestamp = self.timestamp()
            renewed.append(Renewal("timestamp", timestamp.version, timestamp.expires))
        elif (timestamp := self.timestamp()) is None or timestamp.expires - now <= RENEW_WITHIN["timestamp"]:
            with self.lock():
                if (done := self._publish_timestamp(self._newest("snapshot"), now, renew=True)) is not None:
                    renewed.append(done)
        return renewed

    def root_expires_soon(self, now: datetime | None = None) -> datetime | None:
        """Root's expiry when it falls within ``ROOT_WARN_WITHIN`` (renew it with the root key)."""
        expires = self.root().signed.expires
        return expires if expires - (now or datetime.now(UTC)) <= ROOT_WARN_WITHIN else None

    def sign_root(
        self,
        root_key: Ed25519PrivateKey,
        new_online: Ed25519PrivateKey | None = None,
        now: datetime | None = None,
        new_root_key: Ed25519PrivateKey | None = None,
    ) -> Root:
        """Root version N+1, signed with ``root_key``: renewed, with ``new_online`` as the key of
        targets, snapshot and timestamp when given (the old one is revoked), and with
        ``new_root_key`` as the root key when given (N+1 is then signed by both, as TUF requires:
        the old threshold vouches for the new root, the new one for itself). Targets, snapshot
        and timestamp are re-signed with the key root names, so devices that follow the root
        chain accept them and refuse anything the old key signs."""
        now = now or datetime.now(UTC)
        with self.lock():
            md = self.root()
            root = md.signed
            self.targets()  # what will be re-signed under the new root verifies under the old one
            if tuf_key(root_key).keyid not in root.roles["root"].keyids:
                raise WrongKey("that is not this channel's root key")
            if new_online is not None:
                for role in ONLINE_ROLES:
                    for keyid in list(root.roles[role].keyids):
                        root.revoke_key(keyid, role)
                    root.add_key(tuf_key(new_online), role)
            if new_root_key is not None:
                for keyid in list(root.roles["root"].keyids):
                    root.revoke_key(keyid, "root")
                root.add_key(tuf_key(new_root_key), "root")
            root.version += 1
            root.expires = now + VALID["root"]
            md.sign(CryptoSigner(root_key))
            if new_root_key is not None:
                md.sign(CryptoSigner(new_root_key), append=True)
            data = md.to_bytes(SERIALIZER)
            if not self._write(f"{root.version}.root.json", data, IfNoneMatch="*"):
                raise MetadataConflict(f"root version {root.version} was written by someone else")
            self._write("root.json", data)
        if new_online is not None:
            self.online, self.online_key = new_online, tuf_key(new_online)
            self.update(lambda t: True, now, _rotated=True)
        return root

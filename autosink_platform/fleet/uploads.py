"""Unpack a device's session upload (``.tar.gz`` of one session folder) into the lake, safely.

The archive is checked member by member, from its headers, before anything is written: a
session holds only files and folders under relative names; each member has a size bound by
what it is (a frame by the pipeline's frame geometry, ``session.json``, ``events.jsonl``); the
number of files, the unpacked bytes and the ratio of unpacked to compressed bytes are bounded,
so a decompression bomb is refused at its header without inflating it. Extraction goes through
the stdlib's ``data`` filter (paths stay inside the staging folder, no special files, modes and
owners made safe), into a staging folder under the lake. The session is committed (moved into
``raw/``, ``_COMMITTED`` last) only when it is complete. Content problems (a corrupt frame, bad
events, another camera's geometry) do not refuse an upload: the session is stored, and the
pipeline quarantines it with a reason, so nothing a device sends is lost.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from autosink_platform.files import put_text
from autosink_platform.lake.sessions import FRAME_SUFFIXES, Lake, SessionExists, content_hash


@dataclass(frozen=True)
class UploadLimits:
    max_archive_bytes: int = 512 * 2**20  # compressed body
    max_files: int = 20_000  # a 1-hour session at 5 fps is 18,000 frames
    max_unpacked_bytes: int = 2 * 2**30  # decompression-bomb guard, over the whole archive
    max_frame_bytes: int = 2**20  # one frame file; ``for_frames`` derives it from the geometry
    max_meta_bytes: int = 64 * 2**10  # session.json
    max_events_bytes: int = 16 * 2**20  # events.jsonl
    max_other_bytes: int = 2**20  # any other file a device adds (a log)
    # Frames are PNG/JPEG, already compressed: a real session unpacks to barely more than it
    # weighs. Past a small allowance (tar headers of small files compress well), a higher ratio
    # is a bomb.
    max_ratio: float = 20.0
    ratio_allowance_bytes: int = 8 * 2**20
    # Per device: a burst (a Pi back online uploads its backlog), then a sustained rate.
    burst: int = 120
    per_minute: float = 60.0

    @classmethod
    def for_frames(cls, width: int, height: int, **overrides) -> UploadLimits:
        """Limits for a pipeline whose cameras record ``width`` x ``height`` frames: a frame file
        may be as large as an uncompressed RGBA PNG of that size, plus room for its chunks."""
        return cls(**{"max_frame_bytes": width * height * 4 + height + 64 * 2**10} | overrides)

    def member_limit(self, name: PurePosixPath) -> tuple[str, int]:
        """(what the member is, the most bytes it may hold), by its name (where it sits in the
        archive is checked with the session's layout)."""
        if name.name in ("session.json", "events.jsonl"):
            return name.name, self.max_meta_bytes if name.name == "session.json" else self.max_events_bytes
        if name.parent.name == "frames" and name.suffix.lower() in FRAME_SUFFIXES:
            return "a frame", self.max_frame_bytes
        return "a file", self.max_other_bytes


class RateLimiter:
    """A token bucket per device (in this process): ``burst`` uploads at once, then
    ``per_minute``. ``take`` answers 0 when an upload may go ahead, else the seconds to wait."""

    def __init__(self, burst: int, per_minute: float, clock=time.monotonic):
        self.burst, self.rate, self.clock = burst, per_minute / 60.0, clock
        self.buckets: dict[str, tuple[float, float]] = {}  # device -> (tokens, when)
        self.lock = threading.Lock()

    def take(self, device_id: str) -> float:
        with self.lock:
            now = self.clock()
            tokens, then = self.buckets.get(device_id, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.rate)
            if tokens < 1.0:
                self.buckets[device_id] = (tokens, now)
                return (1.0 - tokens) / self.rate
            self.buckets[device_id] = (tokens - 1.0, now)
            return 0.0


class UploadRejected(ValueError):
    """The upload is refused. ``status`` is the HTTP status, ``code`` a machine-readable reason."""

    def __init__(self, status: int, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.status, self.code, self.detail = status, code, detail


@dataclass(frozen=True)
class UploadResult:
    session_id: str
    created: bool  # False: the session was already in the lake
    conflict: bool  # the re-upload's content differed from the stored copy (recorded, first copy kept)
    path: Path


def _members(
    archive: tarfile.TarFile, limits: UploadLimits, compressed: int
) -> tuple[list[tuple[tarfile.TarInfo, PurePosixPath]], str | None]:
    """Check every member from its header, before any is extracted; return (member, path
    relative to the session folder) and the archive's top folder. A tar member holds exactly the
    bytes its header declares, so the sizes checked here are the sizes extracted."""
    members, names, unpacked = [], set(), 0
    for m in archive:
        name = PurePosixPath(m.name)
        if name.is_absolute():  # the data filter would strip it; a device never sends one
            raise UploadRejected(400, "unsafe_path", f"archive member {m.name!r} has an absolute path")
        if not (m.isfile() or m.isdir()):  # a session is files and folders: no link of any kind
            raise UploadRejected(400, "unsafe_member", f"archive member {m.name!r} is a link or a device file")
        if len(names) >= limits.max_files:
            raise UploadRejected(413, "too_many_files", f"more than {limits.max_files} archive members")
        parts = [p for p in name.parts if p != "."]
        if not parts:
            continue
        key = "/".join(parts)
        if key in names:
            raise UploadRejected(400, "duplicate_member", f"archive member {m.name!r} appears twice")
        names.add(key)
        what, most = limits.member_limit(name)
        if m.size > most:
            raise UploadRejected(413, "member_too_large", f"{m.name!r} is {what} of {m.size} bytes; the most is {most}")
        unpacked += m.size
        if unpacked > limits.max_unpacked_bytes:
            raise UploadRejected(413, "too_large", f"unpacks to more than {limits.max_unpacked_bytes} bytes")
        if unpacked > max(limits.ratio_allowance_bytes, limits.max_ratio * compressed):
            raise UploadRejected(
                413,
                "compression_ratio",
                f"unpacks to {unpacked} bytes from {compressed} compressed (more than {limits.max_ratio:g}x)",
            )
        members.append((m, PurePosixPath(*parts)))
    tops = {p.parts[0] for _, p in members}
    # Either one top-level folder (the session) or the session's files at the root.
    if len(tops) == 1 and all(len(p.parts) > 1 or m.isdir() for m, p in members):
        top = tops.pop()
        return [(m, PurePosixPath(*p.parts[1:])) for m, p in members if len(p.parts) > 1], top
    return members, None


def _extract(archive: tarfile.TarFile, members, staging: Path) -> None:
    """Extract through the stdlib's ``data`` filter, under the session-relative names."""
    try:
        archive.extractall(staging, [m.replace(name=rel.as_posix(), deep=False) for m, rel in members], filter="data")
    except tarfile.FilterError as e:
        raise UploadRejected(400, "unsafe_path", f"archive member refused by the data filter: {e}") from None


def _meta(staging: Path) -> dict:
    try:
        meta = json.loads((staging / "session.json").read_text())
    except FileNotFoundError:
        raise UploadRejected(400, "missing_session_json", "the archive has no session.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UploadRejected(400, "invalid_session_json", f"session.json: {e}") from None
    for field in ("device_id", "session_id", "started_at"):
        if not isinstance(meta, dict) or not isinstance(meta.get(field), str):
            raise UploadRejected(
                400, "invalid_session_json", f"session.json needs a string {field!r} to place the session"
            )
    try:
        datetime.fromisoformat(meta["started_at"])
    except ValueError:
        raise UploadRejected(
            400, "invalid_session_json", f"started_at {meta['started_at']!r} is not ISO 8601"
        ) from None
    if not all(c.isalnum() or c in "-_." for c in meta["session_id"]) or meta["session_id"].startswith("."):
        raise UploadRejected(
            400, "invalid_session_json", f"session_id {meta['session_id']!r} is not a safe folder name"
        )
    return meta


def pack_session(folder: str | Path) -> bytes:
    """The upload body for a session folder: a .tar.gz with the folder at its root."""
    folder = Path(folder)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as archive:
        for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "_COMMITTED"):
            archive.add(f, arcname=f"{folder.name}/{f.relative_to(folder).as_posix()}")
    return buf.getvalue()


def store_upload(lake: Lake, body: BinaryIO, device_id: str, limits: UploadLimits = UploadLimits()) -> UploadResult:
    """Unpack, check and commit one uploaded session for the authenticated ``device_id``."""
    staging = lake.staging_dir()
    archive_path = staging.with_suffix(".tar.gz")
    try:
        size = 0
        with open(archive_path, "wb") as out:
            while chunk := body.read(1 << 20):
                size += len(chunk)
                if size > limits.max_archive_bytes:
                    raise UploadRejected(413, "too_large", f"archive larger than {limits.max_archive_bytes} bytes")
                out.write(chunk)
        try:
            with tarfile.open(archive_path, "r:gz") as archive:
                members, top = _members(archive, limits, size)
                _extract(archive, members, staging)
        except (tarfile.TarError, EOFError, OSError) as e:
            if isinstance(e, UploadRejected):
                raise
            raise UploadRejected(400, "invalid_archive", f"not a readable .tar.gz: {e}") from None
        meta = _meta(staging)
        if meta["device_id"] != device_id:
            raise UploadRejected(
                403, "device_mismatch", f"session.json says device {meta['device_id']!r}, the token is {device_id!r}'s"
            )
        if top is not None and top != meta["session_id"]:
            raise UploadRejected(
                400, "session_id_mismatch", f"archive folder {top!r} != session_id {meta['session_id']!r}"
            )
        try:
            path = lake.commit(staging, meta)
            return UploadResult(meta["session_id"], True, False, path)
        except SessionExists as e:
            return _already_stored(lake, staging, archive_path, meta, e.path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        archive_path.unlink(missing_ok=True)


def _already_stored(lake: Lake, staging: Path, archive_path: Path, meta: dict, stored: Path) -> UploadResult:
    """Idempotent re-upload: the first complete copy wins; a differing copy is kept aside and recorded."""
    ours, theirs = content_hash(stored), content_hash(staging)
    conflict = ours != theirs
    if conflict:
        now = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        folder = lake.root / "conflicts" / meta["session_id"]
        if lake.local:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(archive_path, folder / f"{now}.tar.gz")
        else:
            folder.fs.put_file(str(archive_path), (folder / f"{now}.tar.gz").path)
        put_text(
            folder / f"{now}.json",
            json.dumps(
                {
                    "session_id": meta["session_id"],
                    "device_id": meta["device_id"],
                    "received_at": now,
                    "stored_sha256": ours,
                    "uploaded_sha256": theirs,
                    "kept": str(stored),
                    "archive": f"{now}.tar.gz",
                },
                indent=1,
            ),
        )
    return UploadResult(meta["session_id"], False, conflict, stored)

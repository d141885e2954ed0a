"""The public Pi session format and the append-only lake that holds it.

    raw/<device_id>/<YYYY-MM-DD>/<session_id>/
      session.json   events.jsonl   frames/<index>.png|jpg   _COMMITTED (written last)

A session without ``_COMMITTED`` is incomplete and never read. Raw files are never modified;
a session that fails to parse gets a quarantine record under ``quarantine/`` instead.

The lake is a local folder or a prefix on an object store (``s3://bucket/lake``, through
fsspec): the same layout, the same guarantees (see ``Lake.commit``).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image
from upath import UPath

from autosink_platform.files import AppendLog, is_local, location, put_text, upload_folder

SCHEMA_VERSIONS = {1}
COMMITTED = "_COMMITTED"
FRAME_SUFFIXES = {".png", ".jpg", ".jpeg"}
MODEL_EVENTS = {"valve_open", "valve_close"}
USER_EVENTS = {"user_open", "user_close"}
EVENT_TYPES = MODEL_EVENTS | USER_EVENTS
# (field, accepted types): bool is excluded from numbers explicitly below.
REQUIRED_FIELDS: dict[str, tuple[type, ...]] = {
    "device_id": (str,),
    "session_id": (str,),
    "started_at": (str,),
    "ended_at": (str,),
    "fps": (int, float),
    "firmware": (str,),
    "model_version": (str,),
    "schema_version": (int,),
}
# Sanity limits: a Pi session is seconds to an hour of small frames.
MAX_FRAMES = 100_000
MIN_SIDE, MAX_SIDE = 16, 4096
EARLIEST = datetime(2020, 1, 1, tzinfo=UTC)  # before the fleet existed: a Pi with an unset clock
SINK_FRAME_SIZE = (64, 64)  # (width, height) of the sink cameras: the sink spec's and the fleet API's
FRAME_COUNT_TOLERANCE = 0.1  # frames vs (ended_at - started_at) x fps; a Pi drops a few frames


class SessionExists(FileExistsError):
    """The lake already holds this session: raw sessions are append-only."""

    def __init__(self, path):
        super().__init__(f"{path} exists: raw sessions are append-only")
        self.path = location(path)


class SessionFormatError(ValueError):
    """A session that does not follow the public format. ``reason`` is machine-readable."""

    def __init__(self, path, reason: str, detail: str):
        super().__init__(f"{path}: {reason}: {detail}")
        self.path, self.reason, self.detail = location(path), reason, detail


@dataclass(frozen=True)
class Event:
    t: float
    type: str
    score: float | None = None


@dataclass(frozen=True)
class Session:
    path: Path
    meta: dict
    frames: tuple[str, ...]  # paths relative to the session folder, in frame order
    events: tuple[Event, ...]
    frame_size: tuple[int, int]  # (width, height)
    content_sha256: str
    # The frames, decoded while they were checked: uint8 (N, H, W, 3) in frame order.
    images: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def session_id(self) -> str:
        return self.meta["session_id"]

    @property
    def device_id(self) -> str:
        return self.meta["device_id"]

    @property
    def fps(self) -> float:
        return float(self.meta["fps"])

    @property
    def duration(self) -> float:
        return len(self.frames) / self.fps


def _parse_time(path: Path, name: str, value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as e:
        raise SessionFormatError(path, "bad_field_value", f"session.json '{name}' is not ISO 8601: {value!r}") from e
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads((path / "session.json").read_text())
    except FileNotFoundError as e:
        raise SessionFormatError(path, "missing_file", "session.json is missing") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SessionFormatError(path, "invalid_json", f"session.json: {e}") from e
    if not isinstance(meta, dict):
        raise SessionFormatError(path, "invalid_json", "session.json is not a JSON object")
    for name, types in REQUIRED_FIELDS.items():
        if name not in meta:
            raise SessionFormatError(path, "missing_field", f"session.json has no '{name}'")
        value = meta[name]
        if isinstance(value, bool) or not isinstance(value, types):
            expected = " or ".join(t.__name__ for t in types)
            raise SessionFormatError(
                path, "bad_field_type", f"session.json '{name}' is {type(value).__name__}, expected {expected}"
            )
    if meta["schema_version"] not in SCHEMA_VERSIONS:
        raise SessionFormatError(
            path,
            "unknown_schema_version",
            f"schema_version {meta['schema_version']} (known: {sorted(SCHEMA_VERSIONS)})",
        )
    if not (0 < meta["fps"] <= 120):
        raise SessionFormatError(path, "bad_field_value", f"fps {meta['fps']} outside (0, 120]")
    if path.name != meta["session_id"]:
        raise SessionFormatError(path, "bad_field_value", f"session_id {meta['session_id']!r} != folder name")
    start = _parse_time(path, "started_at", meta["started_at"])
    end = _parse_time(path, "ended_at", meta["ended_at"])
    if end < start:
        raise SessionFormatError(path, "bad_field_value", "ended_at is before started_at")
    latest = datetime.now(UTC) + timedelta(days=1)
    if not (EARLIEST <= start <= latest):
        raise SessionFormatError(
            path, "timestamp_out_of_range", f"started_at {meta['started_at']} outside [{EARLIEST.date()}, now + 1 day]"
        )
    return meta


def decode_frame(data: bytes) -> np.ndarray:
    """One frame's bytes (PNG or JPEG) as uint8 (H, W, 3)."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _read_frames(path: Path, blobs: dict[str, bytes]) -> tuple[tuple[str, ...], tuple[int, int], np.ndarray]:
    frame_dir = path / "frames"
    files = sorted(p for p in frame_dir.iterdir() if p.suffix.lower() in FRAME_SUFFIXES) if frame_dir.is_dir() else []
    if not files:
        raise SessionFormatError(path, "no_frames", "frames/ holds no PNG/JPEG frames")
    if len(files) > MAX_FRAMES:
        raise SessionFormatError(path, "too_many_frames", f"{len(files)} frames > {MAX_FRAMES}")
    try:
        indices = sorted(int(p.stem) for p in files)
    except ValueError as e:
        raise SessionFormatError(path, "bad_frame_name", f"frame names must be integer indices: {e}") from e
    if indices != list(range(len(files))):
        raise SessionFormatError(path, "bad_frame_name", "frame indices are not contiguous from 0")
    files.sort(key=lambda p: int(p.stem))
    size, images = None, []
    for f in files:
        try:
            image = decode_frame(blobs[f"frames/{f.name}"])
        except Exception as e:  # PIL raises many types for truncated/corrupt files
            raise SessionFormatError(path, "corrupt_frame", f"{f.name}: {e}") from e
        this = (image.shape[1], image.shape[0])
        if not all(MIN_SIDE <= s <= MAX_SIDE for s in this):
            raise SessionFormatError(path, "bad_frame_size", f"{f.name}: {this} outside [{MIN_SIDE}, {MAX_SIDE}]")
        if size is not None and this != size:
            raise SessionFormatError(path, "bad_frame_size", f"{f.name}: {this} differs from {size}")
        size = this
        images.append(image)
    return tuple(f"frames/{f.name}" for f in files), size, np.stack(images)


def _read_events(path: Path, duration: float, fps: float) -> tuple[Event, ...]:
    events_path = path / "events.jsonl"
    if not events_path.exists():
        raise SessionFormatError(path, "missing_file", "events.jsonl is missing")
    events: list[Event] = []
    last_t = 0.0
    for lineno, line in enumerate(events_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"events.jsonl line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SessionFormatError(path, "invalid_event", f"{where}: {e}") from e
        if not isinstance(obj, dict) or "t" not in obj or "type" not in obj:
            raise SessionFormatError(path, "invalid_event", f"{where}: needs 't' and 'type'")
        t, kind = obj["t"], obj["type"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise SessionFormatError(path, "invalid_event", f"{where}: t={t!r} is not a finite number")
        if kind not in EVENT_TYPES:
            raise SessionFormatError(path, "unknown_event_type", f"{where}: type {kind!r}")
        if t < 0:
            raise SessionFormatError(path, "event_out_of_range", f"{where}: t={t} is negative")
        if t > duration + 1.0 / fps:
            raise SessionFormatError(
                path, "event_after_session_end", f"{where}: t={t} s after the session's end ({duration:.3f} s)"
            )
        if t < last_t:
            raise SessionFormatError(path, "event_time_backwards", f"{where}: t={t} < previous {last_t}")
        score = obj.get("score")
        if kind in MODEL_EVENTS and not (isinstance(score, (int, float)) and 0.0 <= score <= 1.0):
            raise SessionFormatError(path, "invalid_event", f"{where}: {kind} needs a score in [0, 1]")
        events.append(Event(float(t), kind, None if score is None else float(score)))
        last_t = t
    return tuple(events)


def content_hash(path: Path, blobs: dict[str, bytes] | None = None) -> str:
    """sha256 over every file's relative path and bytes, the commit marker aside (it holds the
    commit time): the session's identity, the same wherever and whenever it was committed.
    ``blobs``: the session's files already read (relative path -> bytes)."""
    digest = hashlib.sha256()
    if blobs is None:
        files = {f.relative_to(path).as_posix(): f for f in path.rglob("*") if f.is_file()}
        read = lambda name: files[name].read_bytes()
    else:
        files, read = blobs, blobs.__getitem__
    for name in sorted(n for n in files if n != COMMITTED):
        digest.update(name.encode() + b"\0")
        digest.update(read(name))
    return digest.hexdigest()


def _read_all(path) -> dict[str, bytes]:
    """Every file of the session (relative path -> bytes), read once, so its frames are checked,
    decoded and hashed from the same bytes; from an object store in one batched request."""
    files = [f for f in path.rglob("*") if f.is_file()]
    if is_local(path):
        return {f.relative_to(path).as_posix(): f.read_bytes() for f in files}
    found = path.fs.cat([f.path for f in files])
    return {f.relative_to(path).as_posix(): found[f.path] for f in files}


def read_session(path: str | os.PathLike | UPath) -> Session:
    """Parse and check one committed session folder; raise SessionFormatError naming what is wrong."""
    path = location(path)
    if not (path / COMMITTED).exists():
        raise SessionFormatError(path, "not_committed", f"{COMMITTED} is missing: the session is incomplete")
    meta = _read_meta(path)
    blobs = _read_all(path)
    frames, size, images = _read_frames(path, blobs)
    fps = float(meta["fps"])
    duration = (
        _parse_time(path, "ended_at", meta["ended_at"]) - _parse_time(path, "started_at", meta["started_at"])
    ).total_seconds()
    expected = duration * fps
    if abs(len(frames) - expected) > FRAME_COUNT_TOLERANCE * expected + 2:
        raise SessionFormatError(
            path, "frame_count_mismatch", f"{len(frames)} frames, but {duration:.1f} s at {fps} fps is {expected:.0f}"
        )
    events = _read_events(path, duration, fps)
    return Session(path, meta, frames, events, size, content_hash(path, blobs), images)


@dataclass(frozen=True)
class QuarantineRecord:
    session_id: str
    path: str
    reason: str
    detail: str
    quarantined_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    by: str = "pipeline"  # or the operator who quarantined it by hand


OPERATOR = "operator"  # the reason of a quarantine by hand (its detail is the operator's reason)


class Lake:
    """The raw data lake on a local folder or an object-store prefix. Append-only: nothing here
    modifies raw files."""

    def __init__(self, root: str | os.PathLike | UPath):
        self.root = location(root)
        self.local = is_local(self.root)

    def __repr__(self) -> str:
        return f"Lake({str(self.root)!r})"

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def quarantine_dir(self) -> Path:
        return self.root / "quarantine"

    def committed_sessions(self) -> dict[str, Path]:
        """session_id -> folder, for every committed session (date layout: raw/<dev>/<day>/<id>)."""
        return {p.parent.name: p.parent for p in sorted(self.raw.glob(f"*/*/*/{COMMITTED}"))}

    def session_path(self, session_id: str) -> Path:
        """The committed folder of a session: one index lookup, whatever the size of the lake."""
        indexed = self.root / "_index" / "sessions" / session_id
        if indexed.exists():
            return self.root / indexed.read_text()
        matches = list(self.raw.glob(f"*/*/{session_id}/{COMMITTED}"))  # committed by hand: not indexed yet
        if len(matches) != 1:
            raise KeyError(f"session {session_id!r}: {len(matches)} committed folders in {self.raw}")
        return matches[0].parent

    def quarantine(self, session_id: str, error: SessionFormatError, by: str = "pipeline") -> QuarantineRecord:
        """Keep a session out of every dataset, with the reason (its raw files stay as they are).
        The pipeline does this for a session it cannot use; an operator, by hand, for any reason."""
        record = QuarantineRecord(session_id, str(error.path), error.reason, error.detail, by=by)
        put_text(self.quarantine_dir / f"{session_id}.json", json.dumps(asdict(record), indent=2))
        if by != "pipeline":
            self._audit("quarantine", session_id, by, error.detail)
        return record

    def quarantine_by_hand(self, session_id: str, reason: str, by: str) -> QuarantineRecord:
        if not reason.strip():
            raise ValueError("say why the session is quarantined (--reason)")
        return self.quarantine(session_id, SessionFormatError(self.session_path(session_id), OPERATOR, reason), by)

    def release(self, session_id: str, reason: str, by: str) -> QuarantineRecord:
        """An operator's word that a quarantined session is good: its record moves to
        ``quarantine/released/`` (kept, with who released it), the per-session gates no longer
        hold it, and the commit log gets a release entry, on which the new-session sensor
        ingests it again."""
        current = self.quarantine_dir / f"{session_id}.json"
        if not current.exists():
            raise KeyError(f"session {session_id!r} is not quarantined")
        record = QuarantineRecord(**json.loads(current.read_text()))
        now = datetime.now(UTC).isoformat()
        put_text(
            self.quarantine_dir / "released" / f"{session_id}.json",
            json.dumps(asdict(record) | {"released_at": now, "released_by": by, "release_reason": reason}, indent=2),
        )
        current.unlink()
        self._audit("release", session_id, by, reason)
        AppendLog(self.commit_log).append(
            {
                "session_id": session_id,
                "path": self.session_path(session_id).relative_to(self.root).as_posix(),
                "released_at": now,
            }
        )
        return record

    def is_released(self, session_id: str) -> bool:
        """An operator released this session: the per-session gates let it through."""
        return (self.quarantine_dir / "released" / f"{session_id}.json").exists()

    @property
    def audit_log(self) -> Path:
        return self.root / "_index" / "quarantine_audit.jsonl"

    def _audit(self, action: str, session_id: str, by: str, reason: str) -> None:
        AppendLog(self.audit_log).append(
            {
                "action": action,
                "session_id": session_id,
                "by": by,
                "reason": reason,
                "at": datetime.now(UTC).isoformat(),
            }
        )

    def audit(self) -> list[dict]:
        """Every quarantine and release by hand, oldest first."""
        return AppendLog(self.audit_log).read()[0]

    def is_quarantined(self, session_id: str) -> bool:
        return (self.quarantine_dir / f"{session_id}.json").exists()

    def quarantined(self) -> dict[str, QuarantineRecord]:
        return {
            p.stem: QuarantineRecord(**json.loads(p.read_text())) for p in sorted(self.quarantine_dir.glob("*.json"))
        }

    @property
    def commit_log(self) -> Path:
        return self.root / "_index" / "commits.jsonl"

    def staging_dir(self) -> Path:
        """A fresh local folder outside ``raw/`` to assemble a session in before it is committed
        (inside the lake when it is local, so the commit is a rename; else a temporary folder)."""
        if not self.local:
            return Path(tempfile.mkdtemp(prefix="autosink-staging-"))
        (self.root / "_staging").mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=self.root / "_staging"))

    def final_path(self, meta: dict) -> Path:
        day = datetime.fromisoformat(meta["started_at"]).date().isoformat()
        return self.raw / meta["device_id"] / day / meta["session_id"]

    def commit(self, staging: Path, meta: dict) -> Path:
        """Move a complete staged session into ``raw/``: ``_COMMITTED`` is written last, inside the
        staging folder, and one rename makes the whole session visible at once. The commit is then
        appended to the commit log, which is what the new-session sensor reads.
        Raises SessionExists if the session is already in the lake (append-only).

        On an object store there is no rename: the files are uploaded under the session's
        prefix and ``_COMMITTED`` is created last with ``If-None-Match: *``, so readers never
        see a partial session and of two racing commits of one session only one succeeds. The
        loser may already have rewritten some of the session's objects (a device retrying the
        same upload rewrites identical bytes); committed sessions are never written to."""
        final = self.final_path(meta)
        if (final / COMMITTED).exists() or (self.local and final.exists()):
            raise SessionExists(final)
        if not self.local:
            return self._commit_remote(staging, meta, final)
        (staging / COMMITTED).write_text(datetime.now(UTC).isoformat())
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(staging, final)  # atomic; fails if a concurrent commit got there first
        except OSError as e:
            if final.exists():
                raise SessionExists(final) from e
            raise
        self._log_commit(meta["session_id"], final)
        return final

    def _commit_remote(self, staging: Path, meta: dict, final) -> UPath:
        fs = final.fs
        upload_folder(staging, final)
        marker = final / COMMITTED
        try:
            fs.pipe_file(marker.path, datetime.now(UTC).isoformat().encode(), IfNoneMatch="*")
        except FileExistsError as e:  # 412: a concurrent commit of this session got there first
            raise SessionExists(final) from e
        fs.invalidate_cache(final.path)
        self._log_commit(meta["session_id"], final)
        return final

    def _log_commit(self, session_id: str, path) -> None:
        relative = path.relative_to(self.root).as_posix()
        put_text(self.root / "_index" / "sessions" / session_id, relative)
        AppendLog(self.commit_log).append(
            {"session_id": session_id, "path": relative, "committed_at": datetime.now(UTC).isoformat()}
        )

    def read_commits(self, cursor: str | int | None = None) -> tuple[list[tuple[str, Path]], str]:
        """Commits logged after ``cursor`` (from the previous call; None for all):
        ([(session_id, path)], new cursor). Cost grows with the number of new commits, not with
        the size of the lake (see ``files.AppendLog``: a byte offset in a folder, the last
        commit key on an object store)."""
        entries, cursor = self.read_log(cursor)
        return [(e["session_id"], self.root / e["path"]) for e in entries], cursor

    def read_log(self, cursor: str | int | None = None) -> tuple[list[dict], str]:
        """The commit log's entries after ``cursor``: a commit, or an operator's release
        (``released_at``) of a session committed before."""
        return AppendLog(self.commit_log).read(cursor)

    def reindex(self) -> list[str]:
        """Log committed sessions that are missing from the commit log (e.g. copied in by hand)."""
        logged = {sid for sid, _ in self.read_commits()[0]}
        missing = [(sid, p) for sid, p in self.committed_sessions().items() if sid not in logged]
        for sid, path in missing:
            self._log_commit(sid, path)
        return [sid for sid, _ in missing]

    def write_session(self, meta: dict, frames: list[bytes], events: list[dict], frame_suffix: str = ".png") -> Path:
        """Write and commit a session (the demo generator's path into the lake)."""
        if self.final_path(meta).exists():
            raise SessionExists(self.final_path(meta))
        staging = self.staging_dir()
        try:
            (staging / "frames").mkdir()
            for i, data in enumerate(frames):
                (staging / "frames" / f"{i:06d}{frame_suffix}").write_bytes(data)
            (staging / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
            (staging / "session.json").write_text(json.dumps(meta, indent=2))
            return self.commit(staging, meta)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone after a successful commit; cleanup otherwise

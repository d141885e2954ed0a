"""Atomic file writes (readers see the old file or the new one, never half of one),
append-only JSON-lines logs read from a byte offset (a cursor that costs only what is new), and
``location``: one path type over local folders and object stores."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from upath import UPath


def location(root: str | os.PathLike) -> Path | UPath:
    """A local folder as a ``Path``; a URL (``s3://bucket/prefix``, ``memory://...``) as a
    ``UPath`` through fsspec, with the options fsspec is configured with for its protocol (see
    ``use_s3_endpoint``); credentials come from the usual AWS variables."""
    if isinstance(root, UPath) and not isinstance(root, Path):
        return root
    text = os.fspath(root)
    if not is_url(text):
        return Path(text.removeprefix("file://"))
    return UPath(text)


def use_s3_endpoint(endpoint: str) -> None:
    """Send every ``s3://`` path of this process to ``endpoint`` (MinIO, any S3-compatible
    store; empty: AWS). It is fsspec's own configuration, so a path rebuilt from a stored
    reference reaches the same store as the one the resource opened. The resources apply it
    from their configuration; nothing else sets it."""
    import fsspec.config

    options = fsspec.config.conf.setdefault("s3", {})
    if endpoint:
        options["endpoint_url"] = endpoint
    else:
        options.pop("endpoint_url", None)


def is_url(root: str | os.PathLike) -> bool:
    """An object-store URL (``s3://...``), not a folder (a plain path or ``file://``)."""
    text = os.fspath(root)
    return "://" in text and not text.startswith("file://")


def is_local(path) -> bool:
    return isinstance(path, Path)


def read_all(paths: list[Path | UPath]) -> list[bytes]:
    """Each file's bytes, in order. From an object store (all ``paths`` under one root) it is one
    batched ``cat``, which fsspec's async stores fetch concurrently, not one round trip per file."""
    if not paths:
        return []
    if is_local(paths[0]):
        return [p.read_bytes() for p in paths]
    found = paths[0].fs.cat([p.path for p in paths])
    return [found[p.path] for p in paths]


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def append_jsonl(path: str | os.PathLike, obj: dict) -> None:
    """Append one JSON line; an exclusive lock keeps lines whole across writers and processes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps(obj) + "\n")


def read_jsonl_from(path: str | os.PathLike, offset: int = 0) -> tuple[list[dict], int]:
    """Lines appended after byte ``offset``: (objects, new offset). A line still being written
    (no newline yet) is left for the next read."""
    path = Path(path)
    if not path.exists():
        return [], offset
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    complete = data[: data.rfind(b"\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()], offset + len(complete)


# -- the same operations on a folder or an object store ------------------------------------------


def put_bytes(path, data: bytes, **options) -> None:
    """Write a whole file: locally by rename, on an object store by one PUT with ``options``
    (an ACL, a condition; readers see the old object or the new one either way)."""
    if is_local(path):
        atomic_write_bytes(path, data)
    else:
        path.fs.pipe_file(path.path, data, **options)


def put_text(path, text: str) -> None:
    put_bytes(path, text.encode())


class AppendLog:
    """An append-only log of JSON entries, read from a cursor that costs only what is new.

    In a folder: the JSON-lines file ``path``, its cursor a byte offset. On an object store,
    which cannot append: one object per entry under ``path`` without its suffix, keyed
    ``<day>/<time>-<random>.json`` so keys sort in append order; the cursor is the last key
    read, and a read lists only the cursor's day and later."""

    def __init__(self, path):
        self.path = location(path)
        self.local = is_local(self.path)

    def append(self, entry: dict) -> None:
        if self.local:
            append_jsonl(self.path, entry)
            return
        now = datetime.now(UTC)
        key = f"{now:%Y-%m-%d}/{now:%Y%m%dT%H%M%S.%fZ}-{uuid.uuid4().hex[:8]}.json"
        (self.path.with_suffix("") / key).write_text(json.dumps(entry))

    def read(self, cursor: str | int | None = None) -> tuple[list[dict], str]:
        """Entries appended after ``cursor`` (None: from the start), and the new cursor."""
        if self.local:
            entries, offset = read_jsonl_from(self.path, int(cursor or 0))
            return entries, str(offset)
        base, last = self.path.with_suffix(""), str(cursor or "")
        try:
            days = sorted(p.name for p in base.iterdir())
        except (FileNotFoundError, NotADirectoryError):  # nothing appended yet
            return [], last
        keys = [
            f"{day}/{obj.name}"
            for day in days
            if day >= last.split("/")[0]
            for obj in (base / day).iterdir()
            if f"{day}/{obj.name}" > last
        ]
        keys.sort()
        if not keys:
            return [], last
        found = base.fs.cat([(base / k).path for k in keys])
        return [json.loads(found[(base / k).path]) for k in keys], keys[-1]


def publish_folder(staging: Path, dest, marker: str) -> None:
    """Make a finished local folder ``dest``, complete once ``marker`` exists: locally one
    rename; on an object store every file is uploaded, the marker last."""
    if is_local(dest):
        shutil.rmtree(dest, ignore_errors=True)
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        staging.rename(dest)
        return
    upload_folder(staging, dest, skip=marker)
    dest.fs.put_file(str(staging / marker), (dest / marker).path)
    shutil.rmtree(staging, ignore_errors=True)


def upload_folder(local: Path, dest, skip: str | None = None) -> None:
    """Upload every file under ``local`` to the object-store folder ``dest`` (``skip``: a name left out)."""
    for f in sorted(p for p in local.rglob("*") if p.is_file() and p.name != skip):
        dest.fs.put_file(str(f), (dest / f.relative_to(local).as_posix()).path)


def local_copy(path, cache: Path, marker: str) -> Path:
    """A local folder with the content of the immutable folder ``path``: the folder itself, or,
    on an object store, a copy downloaded once into ``cache`` (keyed by the URL)."""
    path = location(path)
    if is_local(path):
        return path
    key = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    out = Path(cache) / f"{path.name}-{key}"
    if (out / marker).exists():
        return out
    Path(cache).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache))
    try:
        path.fs.get(path.path.rstrip("/") + "/", str(tmp) + "/", recursive=True)
        if not (tmp / marker).exists():
            raise FileNotFoundError(f"{path} is not complete: no {marker}")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out

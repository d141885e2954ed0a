"""Device tokens for the fleet API. A token is 32 random bytes shown once; only its sha256 is
stored (tokens are high-entropy, so a slow password hash would add nothing)."""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class UnknownToken(PermissionError):
    """No active device has this token (HTTP 401)."""


class RevokedToken(PermissionError):
    """The token belonged to a device that has been revoked (HTTP 403)."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class DeviceRegistry:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS devices (device_id TEXT PRIMARY KEY, token_sha256 TEXT UNIQUE NOT NULL,"
                " created_at TEXT NOT NULL, revoked_at TEXT)"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def add(self, device_id: str) -> str:
        """Register a device and return its new token (the only time it is shown)."""
        if not DEVICE_ID.match(device_id):
            raise ValueError(f"device id {device_id!r}: use 1-64 letters, digits, '.', '_' or '-'")
        token = secrets.token_urlsafe(32)
        with self._connect() as db:
            row = db.execute("SELECT revoked_at FROM devices WHERE device_id = ?", (device_id,)).fetchone()
            if row is not None and row[0] is None:
                raise ValueError(f"device {device_id!r} already has an active token; revoke it first")
            db.execute(
                "INSERT OR REPLACE INTO devices VALUES (?, ?, ?, NULL)",
                (device_id, _digest(token), datetime.now(UTC).isoformat()),
            )
        return token

    def revoke(self, device_id: str) -> None:
        with self._connect() as db:
            if (
                db.execute(
                    "UPDATE devices SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL",
                    (datetime.now(UTC).isoformat(), device_id),
                ).rowcount
                == 0
            ):
                raise KeyError(f"no active device {device_id!r}")

    def authenticate(self, token: str) -> str:
        """The device id a token belongs to; UnknownToken or RevokedToken otherwise."""
        with self._connect() as db:
            row = db.execute(
                "SELECT device_id, revoked_at FROM devices WHERE token_sha256 = ?", (_digest(token),)
            ).fetchone()
        if row is None:
            raise UnknownToken("unknown device token")
        if row[1] is not None:
            raise RevokedToken(f"the token of device {row[0]!r} was revoked at {row[1]}")
        return row[0]

    def list(self) -> list[dict]:
        with self._connect() as db:
            rows = db.execute("SELECT device_id, created_at, revoked_at FROM devices ORDER BY device_id").fetchall()
        return [{"device_id": d, "created_at": c, "revoked_at": r} for d, c, r in rows]

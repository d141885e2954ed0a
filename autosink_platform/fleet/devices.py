"""Tokens for the fleet API: a device's (uploads, heartbeats) and a reviewer's (the /review
page). A token is 32 random bytes shown once; only its sha256 is stored (tokens are
high-entropy, so a slow password hash would add nothing). A reviewer signs in with the token
and gets a browser session: a random cookie, also stored hashed, with its CSRF token and an
expiry."""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class UnknownToken(PermissionError):
    """No active device (or reviewer) has this token (HTTP 401)."""


class RevokedToken(PermissionError):
    """The token belonged to a device (or reviewer) that has been revoked (HTTP 403)."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenRegistry:
    """Holders of tokens (``KEY`` names them) in one SQLite table."""

    TABLE, KEY, WHAT = "devices", "device_id", "device"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {self.TABLE} ({self.KEY} TEXT PRIMARY KEY,"
                " token_sha256 TEXT UNIQUE NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT)"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def add(self, name: str) -> str:
        """Register a holder and return its new token (the only time it is shown)."""
        if not DEVICE_ID.match(name):
            raise ValueError(f"{self.WHAT} id {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
        token = secrets.token_urlsafe(32)
        with self._connect() as db:
            row = db.execute(f"SELECT revoked_at FROM {self.TABLE} WHERE {self.KEY} = ?", (name,)).fetchone()
            if row is not None and row[0] is None:
                raise ValueError(f"{self.WHAT} {name!r} already has an active token; revoke it first")
            db.execute(
                f"INSERT OR REPLACE INTO {self.TABLE} VALUES (?, ?, ?, NULL)",
                (name, _digest(token), datetime.now(UTC).isoformat()),
            )
        return token

    def revoke(self, name: str) -> None:
        with self._connect() as db:
            if (
                db.execute(
                    f"UPDATE {self.TABLE} SET revoked_at = ? WHERE {self.KEY} = ? AND revoked_at IS NULL",
                    (datetime.now(UTC).isoformat(), name),
                ).rowcount
                == 0
            ):
                raise KeyError(f"no active {self.WHAT} {name!r}")

    def authenticate(self, token: str) -> str:
        """Whose token this is; UnknownToken or RevokedToken otherwise."""
        with self._connect() as db:
            row = db.execute(
                f"SELECT {self.KEY}, revoked_at FROM {self.TABLE} WHERE token_sha256 = ?", (_digest(token),)
            ).fetchone()
        if row is None:
            raise UnknownToken(f"unknown {self.WHAT} token")
        if row[1] is not None:
            raise RevokedToken(f"the token of {self.WHAT} {row[0]!r} was revoked at {row[1]}")
        return row[0]

    def list(self) -> list[dict]:
        with self._connect() as db:
            rows = db.execute(
                f"SELECT {self.KEY}, created_at, revoked_at FROM {self.TABLE} ORDER BY {self.KEY}"
            ).fetchall()
        return [{self.KEY: d, "created_at": c, "revoked_at": r} for d, c, r in rows]


class DeviceRegistry(TokenRegistry):
    """The fleet's devices: a token uploads sessions and heartbeats for its own device only."""


@dataclass(frozen=True)
class ReviewSession:
    reviewer: str
    csrf: str  # must come back with every form post of this session


class ReviewerRegistry(TokenRegistry):
    """The people who may correct labels on /review, and their signed-in browser sessions."""

    TABLE, KEY, WHAT = "reviewers", "reviewer", "reviewer"
    SESSION_HOURS = 12

    def __init__(self, path: str | Path):
        super().__init__(path)
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS browser_sessions (session_sha256 TEXT PRIMARY KEY,"
                " reviewer TEXT NOT NULL, csrf TEXT NOT NULL, expires_at TEXT NOT NULL)"
            )

    def sign_in(self, token: str) -> tuple[str, ReviewSession]:
        """A new browser session for the token's reviewer: (cookie value, session)."""
        reviewer = self.authenticate(token)
        cookie, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        expires = datetime.now(UTC) + timedelta(hours=self.SESSION_HOURS)
        with self._connect() as db:
            db.execute(
                "INSERT INTO browser_sessions VALUES (?, ?, ?, ?)",
                (_digest(cookie), reviewer, csrf, expires.isoformat()),
            )
        return cookie, ReviewSession(reviewer, csrf)

    def session(self, cookie: str | None) -> ReviewSession | None:
        """The signed-in session of a cookie; None when unknown, expired or its reviewer revoked."""
        if not cookie:
            return None
        with self._connect() as db:
            row = db.execute(
                f"SELECT s.reviewer, s.csrf, s.expires_at, r.revoked_at FROM browser_sessions s"
                f" JOIN {self.TABLE} r ON r.{self.KEY} = s.reviewer WHERE s.session_sha256 = ?",
                (_digest(cookie),),
            ).fetchone()
        if row is None or row[3] is not None or datetime.fromisoformat(row[2]) < datetime.now(UTC):
            return None
        return ReviewSession(row[0], row[1])

    def sign_out(self, cookie: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM browser_sessions WHERE session_sha256 = ?", (_digest(cookie),))

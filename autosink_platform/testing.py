"""Helpers for the tests and benchmarks that run against the real services on a machine."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432"  # the machine's own server, trust auth


@contextmanager
def scratch_postgres_database(prefix: str, server: str = LOCAL_POSTGRES) -> Iterator[str]:
    """A fresh database on ``server`` for one test or benchmark row, dropped afterwards (its
    connections terminated first). Yields a SQLAlchemy URL with the psycopg2 driver named, since
    SQLAlchemy 2.1 would otherwise pick psycopg 3. Raises ``psycopg2.OperationalError`` when the
    server cannot be reached."""
    import psycopg2

    admin = psycopg2.connect(f"{server}/postgres", connect_timeout=3)
    admin.autocommit = True
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield f"{server}/{name}".replace("postgresql://", "postgresql+psycopg2://", 1)
    finally:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


def celery_worker_command(queue: str, index: int) -> list[str]:
    """argv for one single-process dagster-celery worker (from this interpreter's environment)
    that takes steps from ``queue`` only, so a test's or benchmark's workers never pick up
    another run's steps."""
    celery = Path(sys.executable).with_name("celery")
    return [
        str(celery),
        "-A",
        "dagster_celery.app",
        "worker",
        "-Q",
        queue,
        "-n",
        f"{queue}-{index}@%h",
        "--concurrency",
        "1",
    ]

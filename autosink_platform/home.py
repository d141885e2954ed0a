"""Where the embedded default keeps its state.

One home directory holds the lake, the feature store, the fleet channel and the Dagster
instance; MLflow lives in the top-level ``mlflow/`` folder of the project. Which home, and any
value that overrides a part of it, is configuration: ``settings`` reads it at the edge.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Home:
    root: Path

    @property
    def lake(self) -> Path:
        return self.root / "lake"

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def fleet(self) -> Path:
        return self.root / "fleet"

    @property
    def dagster(self) -> Path:
        return self.root / "dagster"

    @property
    def devices_db(self) -> Path:
        """Device tokens of the fleet API (hashed)."""
        return self.root / "fleet_api" / "devices.sqlite"

    @property
    def reviewers_db(self) -> Path:
        """Reviewer tokens and signed-in review sessions (hashed)."""
        return self.root / "fleet_api" / "reviewers.sqlite"

    @property
    def heartbeats(self) -> Path:
        """Append-only log of device heartbeats (active version per device)."""
        return self.root / "fleet_api" / "heartbeats.jsonl"


DEFAULT_HOME = PROJECT_ROOT / ".autosink"
EMBEDDED_MLFLOW_URI = f"sqlite:///{PROJECT_ROOT / 'mlflow' / 'mlflow.db'}"  # the registry without a server


def resolve_home(value: str | os.PathLike | None = None) -> Home:
    """The home at ``value``; empty: ``.autosink/`` in the project."""
    return Home(Path(value or DEFAULT_HOME).expanduser().resolve())


def default_mlflow_artifact_root(tracking_uri: str) -> str | None:
    """Beside a SQLite registry, ``artifacts/`` next to the database; a server decides its own."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()

import os
import shutil
from pathlib import Path

import pytest

from autosink_platform.lake.demo import DemoLakeConfig, generate_demo_lake

# 9 sessions x 120 frames: the smallest lake whose session-level splits are all non-empty
# (6 train / 2 validation / 1 test under the default SplitConfig).
TINY = DemoLakeConfig(devices=3, sessions_per_device=3, frames_per_session=120, seed=7)


@pytest.fixture(scope="session")
def tiny_lake_template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_lake")
    generate_demo_lake(root, TINY, progress=False)
    return root


@pytest.fixture
def tiny_lake(tiny_lake_template, tmp_path) -> Path:
    """A private copy: tests may add or break sessions."""
    dst = tmp_path / "lake"
    shutil.copytree(tiny_lake_template, dst)
    return dst


@pytest.fixture
def home(tmp_path, monkeypatch, tiny_lake) -> Path:
    """An isolated AUTOSINK_HOME (holding the tiny lake) and MLflow registry."""
    root = tmp_path / "home"
    root.mkdir()
    shutil.move(str(tiny_lake), root / "lake")
    monkeypatch.setenv("AUTOSINK_HOME", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.setenv("AUTOSINK_SIGNING_KEY", str(tmp_path / "keys" / "signing.pem"))  # never the user's key
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return root


def pytest_report_header(config):
    return f"torch threads: {os.cpu_count()} cpus"

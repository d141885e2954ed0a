"""The Dagster UI as its users drive it: ``dagster-webserver`` and ``dagster-daemon`` on a
temporary home, a materialization launched through the GraphQL API the UI itself uses, the
new-session sensor turned on and a session dropped into the lake until the sensor's run
completes, and headless Chromium on the asset graph page (screenshot kept in test-artifacts/)."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from autosink_platform.cli import DAGSTER_YAML
from autosink_platform.lake.demo import DemoLakeConfig, generate_demo_lake
from autosink_platform.live import free_port

from .conftest import stop, wait_for_http
from .fake_reference_data import make_fake_datasets

pytestmark = [pytest.mark.services, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
LOCATION, REPOSITORY = "autosink_platform", "__repository__"
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


class Dagster:
    """The UI's GraphQL endpoint."""

    def __init__(self, url: str):
        self.url = url

    def gql(self, query: str, **variables) -> dict:
        response = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def run_status(self, run_id: str) -> str:
        return self.gql("query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }", id=run_id)[
            "runOrError"
        ]["status"]

    def wait_for(self, run_id: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (status := self.run_status(run_id)) not in TERMINAL:
            assert time.monotonic() < deadline, f"run {run_id} still {status} after {timeout} s"
            time.sleep(1)
        return status


@pytest.fixture
def dagster_ui(tmp_path):
    """Webserver and daemon as ``make dev`` runs them, on a temporary home with an empty lake."""
    home = tmp_path / "home"
    (home / "lake").mkdir(parents=True)
    dagster_home = home / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(DAGSTER_YAML)
    env = os.environ | {
        "AUTOSINK_HOME": str(home),
        "DAGSTER_HOME": str(dagster_home),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "AUTOSINK_SIGNING_KEY": str(tmp_path / "keys" / "signing.pem"),
        "AUTOSINK_DATASETS": str(make_fake_datasets(tmp_path / "datasets")),
    }
    env.pop("AUTOSINK_EXECUTOR", None)
    port = free_port()
    bin_dir = Path(sys.executable).parent
    workspace = str(REPO / "workspace.yaml")
    logs = {name: (tmp_path / f"{name}.log").open("w") for name in ("webserver", "daemon")}
    procs = [
        subprocess.Popen(
            [str(bin_dir / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", workspace],
            env=env,
            cwd=REPO,
            stdout=logs["webserver"],
            stderr=subprocess.STDOUT,
        ),
        subprocess.Popen(
            [str(bin_dir / "dagster-daemon"), "run", "-w", workspace],
            env=env,
            cwd=REPO,
            stdout=logs["daemon"],
            stderr=subprocess.STDOUT,
        ),
    ]
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/server_info", procs[0], tmp_path / "webserver.log", timeout=180)
    try:
        yield Dagster(url), home
    finally:
        stop(procs)
        for log in logs.values():
            log.close()
        (ARTIFACTS).mkdir(exist_ok=True)
        for name in ("webserver", "daemon"):
            shutil.copy(tmp_path / f"{name}.log", ARTIFACTS / f"dagster-{name}.log")


LAUNCH = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""

START_SENSOR = """
mutation($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status } }
    ... on PythonError { message }
  }
}"""

SENSOR_RUNS = """
query($sensor: String!) {
  runsOrError(filter: {tags: [{key: "dagster/sensor_name", value: $sensor}]}) {
    ... on Runs { results { runId status tags { key value } } }
  }
}"""


def test_launch_sensor_and_asset_graph_in_the_ui(dagster_ui, browser):
    ui, home = dagster_ui

    # 1. A materialization launched the way the UI's "Materialize all" does: queued, dequeued
    #    by the daemon, run in its own process.
    launched = ui.gql(
        LAUNCH,
        params={
            "selector": {
                "repositoryLocationName": LOCATION,
                "repositoryName": REPOSITORY,
                "jobName": "robotarm_pipeline",
            },
            "runConfigData": {},
        },
    )["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    assert ui.wait_for(launched["run"]["runId"], timeout=300) == "SUCCESS"

    # 2. The new-session sensor on; a Pi session lands in the lake; the sensor's ingest run completes.
    sensor = "sink_new_sessions"
    started = ui.gql(
        START_SENSOR,
        selector={"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": sensor},
    )["startSensor"]
    assert started["__typename"] == "Sensor" and started["sensorState"]["status"] == "RUNNING", started
    (session,) = generate_demo_lake(
        home / "lake", DemoLakeConfig(devices=1, sessions_per_device=1, frames_per_session=120, seed=11), progress=False
    )
    deadline = time.monotonic() + 240
    while not (runs := ui.gql(SENSOR_RUNS, sensor=sensor)["runsOrError"]["results"]):
        assert time.monotonic() < deadline, "the sensor requested no run for the new session"
        time.sleep(2)
    (run,) = runs
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags["dagster/partition"] == session.name
    assert ui.wait_for(run["runId"], timeout=300) == "SUCCESS"

    # 3. The asset graph page in a real browser shows the pipeline's assets.
    from selenium.webdriver.support.ui import WebDriverWait

    browser.set_window_size(1600, 1000)
    browser.get(f"{ui.url}/locations/{LOCATION}/asset-groups/sink")
    expected = ("raw_sessions", "labeled_frames", "validated_dataset", "classifier_model", "classifier_release")
    WebDriverWait(browser, 90).until(lambda d: all(name in d.page_source for name in expected))
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dagster-asset-graph.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000

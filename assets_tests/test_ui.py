"""The Dagster UI as its users drive it: ``dagster dev`` (what ``make dev`` runs) on a
temporary home, clicked in headless Chromium (screenshots kept in test-artifacts/); GraphQL,
the API the UI itself uses, only confirms what the clicks did."""

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
    """``dagster dev`` as ``make dev`` runs it (webserver, daemon, one code server), on a
    temporary home with an empty lake."""
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
    # What `make dev` runs: one code server, which the webserver and the daemon both query.
    log = (tmp_path / "dagster-dev.log").open("w")
    dev = subprocess.Popen(
        [str(bin_dir / "dagster"), "dev", "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/server_info", dev, tmp_path / "dagster-dev.log", timeout=180)
    try:
        yield Dagster(url), home
    finally:
        stop([dev])
        log.close()
        (ARTIFACTS).mkdir(exist_ok=True)
        shutil.copy(tmp_path / "dagster-dev.log", ARTIFACTS / "dagster-dev.log")


SENSOR_STATUS = """
query($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) { __typename ... on Sensor { sensorState { status } } }
}"""

SENSOR_RUNS = """
query($sensor: String!) {
  runsOrError(filter: {tags: [{key: "dagster/sensor_name", value: $sensor}]}) {
    ... on Runs { results { runId status tags { key value } } }
  }
}"""


def _button(browser, text: str, timeout: float = 90):
    """The enabled button labelled ``text``, once the page shows one."""
    from selenium.webdriver.common.by import By

    def find(d):
        return next(
            (b for b in d.find_elements(By.TAG_NAME, "button") if b.text.strip() == text and b.is_enabled()), None
        )

    return _wait(browser, f"a {text!r} button", find, timeout)


def _wait(browser, what: str, condition, timeout: float = 90, poll: float = 0.5):
    """``condition(browser)``'s first truthy value; otherwise fail saying what did not happen,
    with a screenshot of the page as it was."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(browser, timeout, poll_frequency=poll).until(condition)
    except TimeoutException:
        _screenshot(browser, "dagster-timeout.png")
        raise AssertionError(f"{browser.current_url}: {what} within {timeout} s") from None


def _shows(browser, *texts: str, timeout: float = 90) -> None:
    """Wait until the page shows every text; otherwise fail naming the missing ones (and keep a
    screenshot of what it showed)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(browser, timeout).until(lambda d: all(t in d.page_source for t in texts))
    except TimeoutException:
        _screenshot(browser, "dagster-timeout.png")
        missing = [t for t in texts if t not in browser.page_source]
        raise AssertionError(f"{browser.current_url} does not show {missing} within {timeout} s") from None


def _screenshot(browser, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / name
    browser.save_screenshot(str(shot))
    return shot


def test_the_dagster_ui_clicked_as_a_person_does(dagster_ui, browser):
    """In headless Chromium: dismiss Dagster's first-visit dialog, see the sink's six stages in
    the asset graph, click Materialize all on the robotarm group and follow the run to success
    on its page, switch the new-session sensor off and on from its page, and see the sensor's
    run ingest a session that landed in the lake. Screenshots are kept in test-artifacts/."""
    from selenium.webdriver.common.by import By

    ui, home = dagster_ui
    browser.set_window_size(1600, 1000)

    # 1. The sink's asset graph, once the community dialog is dismissed.
    browser.get(f"{ui.url}/locations/{LOCATION}/asset-groups/sink")
    _shows(browser, "Join the Dagster community")
    _button(browser, "Skip").click()
    _wait(browser, "the dialog closed", lambda d: "Join the Dagster community" not in d.page_source, 30)
    stages = ("raw_sessions", "labeled_frames", "validated_dataset", "classifier_model", "classifier_release")
    _shows(browser, *stages, "frame_guard_model", "fleet_channel", "review_queue")  # long names are cut short
    _screenshot(browser, "dagster-asset-graph.png")

    # 2. Materialize all on the robotarm group; the toast's link leads to the run's page, which
    #    shows it succeed (the daemon dequeues it and runs it in its own process).
    browser.get(f"{ui.url}/locations/{LOCATION}/asset-groups/robotarm")
    _shows(browser, "pca_model", "pca_release")
    _button(browser, "Materialize all").click()
    link = _wait(
        browser,
        "a link to the launched run",
        lambda d: next(
            (a for a in d.find_elements(By.TAG_NAME, "a") if "/runs/" in (a.get_attribute("href") or "")), None
        ),
        60,
    )
    run_id = link.get_attribute("href").rsplit("/", 1)[-1]
    browser.get(link.get_attribute("href"))
    _wait(browser, "the run ended", lambda d: ">Success<" in d.page_source or ">Failure<" in d.page_source, 300, 2)
    _screenshot(browser, "dagster-run.png")
    assert ">Success<" in browser.page_source and ui.run_status(run_id) == "SUCCESS"
    assert "pca_release" in browser.page_source  # the run page lists the steps it ran

    # 3. The new-session sensor's page: switched off, then on again, by its switch.
    sensor = "sink_new_sessions"
    selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": sensor}

    def status() -> str:
        return ui.gql(SENSOR_STATUS, selector=selector)["sensorOrError"]["sensorState"]["status"]

    assert status() == "RUNNING"  # on from the start
    browser.get(f"{ui.url}/locations/{LOCATION}/sensors/{sensor}")
    _shows(browser, "Adds a partition per newly committed session")

    def switch_showing(on: bool):
        # The page's switch, once it shows the sensor's current state and takes a click: it is
        # disabled while a change is in flight, and a click before the page re-renders is lost.
        def find(d):
            found = d.find_elements(By.CSS_SELECTOR, "input[type=checkbox]")
            return found[0] if found and found[0].is_enabled() and found[0].is_selected() == on else None

        return find

    for expected in ("STOPPED", "RUNNING"):
        showing = expected == "STOPPED"  # switched off from on, then on from off
        switch = _wait(browser, f"the sensor's switch showing {'on' if showing else 'off'}", switch_showing(showing))
        browser.execute_script("arguments[0].click();", switch)
        _wait(browser, f"the sensor {expected}", lambda d, e=expected: status() == e, 60, 1)
    _screenshot(browser, "dagster-sensor.png")

    # 4. A Pi session lands in the lake; the sensor's ingest run completes.
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


def _aliases(browser):
    """The Aliases field of an MLflow model version page, once it is shown."""
    from selenium.webdriver.common.by import By

    return next(
        (
            e
            for e in browser.find_elements(By.CSS_SELECTOR, "[data-testid=descriptions-item]")
            if e.text.startswith("Aliases")
        ),
        None,
    )


def test_moving_the_champion_alias_in_the_mlflow_ui_publishes_it_to_the_fleet(
    home, browser, monkeypatch, tmp_path, tmp_path_factory
):
    """The robot-arm pipeline has two versions, v1 champion and v2 challenger. In the MLflow UI
    (``mlflow server`` on the platform's registry, in headless Chromium) a person adds the
    ``champion`` alias to v2, confirming the reassignment the UI warns of; the pipeline's
    champion sensor and publish job then point the signed stable channel at v2."""
    import dagster as dg
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from autosink_platform.defs.runner import QUIET

    from .conftest import platform_resources
    from .test_every_pipeline import PIPELINES, _defs, _materialize, _new_data

    monkeypatch.setenv("AUTOSINK_DATASETS", str(make_fake_datasets(tmp_path / "datasets")))
    spec, name = PIPELINES["robotarm"], "robotarm.pca"
    resources = platform_resources()
    registry, channel = resources["mlflow"].get(), resources["fleet"].get()
    (tmp_path / "dagster").mkdir()
    with dg.DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:
        _materialize(spec, instance, home)
        _new_data(spec, home, monkeypatch, tmp_path_factory)
        _materialize(spec, instance, home)
        assert set(registry.client.get_model_version(name, "2").aliases) == {"challenger"}
        assert channel.read_pointer("robotarm", "pca", "stable")["version"] == "1"

        port = free_port()
        log = (tmp_path / "mlflow.log").open("w")
        server = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "mlflow"),
                "server",
                "--backend-store-uri",
                os.environ["MLFLOW_TRACKING_URI"],
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_http(f"http://127.0.0.1:{port}/health", server, tmp_path / "mlflow.log", timeout=180)
            browser.set_window_size(1400, 1000)
            browser.get(f"http://127.0.0.1:{port}/#/models/{name}/versions/2")
            aliases = _wait(browser, "the version's Aliases field", _aliases)
            assert "champion" not in aliases.text
            aliases.find_element(By.TAG_NAME, "button").click()
            dialog = _wait(browser, "the alias dialog", lambda d: d.find_elements(By.CSS_SELECTOR, "[role=dialog]"))[0]
            field = dialog.find_element(By.CSS_SELECTOR, "input")
            field.send_keys("champion")
            field.send_keys(Keys.ENTER)
            _shows(browser, 'The "champion" alias is also being used on version 1')
            _screenshot(browser, "mlflow-alias-dialog.png")
            _button(browser, "Save aliases").click()
            _wait(
                browser,
                "the alias moved",
                lambda d: str(registry.alias_version(name, "champion").version) == "2",
                60,
                1,
            )
            _wait(browser, "the page showing champion on v2", lambda d: "champion" in _aliases(d).text, 30)
            _screenshot(browser, "mlflow-version-champion.png")
        finally:
            stop([server])
            log.close()

        # The champion sensor sees the move; the publish job points the channel at v2.
        defs = _defs(spec)
        sensor = defs.resolve_sensor_def("robotarm_champion_moved")
        context = dg.build_sensor_context(instance=instance, resources={k: resources[k] for k in ("mlflow", "fleet")})
        request = sensor(context)
        assert isinstance(request, dg.RunRequest) and f"{name}:v2" in request.run_key
        publish = defs.resolve_job_def("robotarm_publish")
        assert publish.execute_in_process(instance=instance, run_config=QUIET, tags=request.tags).success
    assert channel.read_pointer("robotarm", "pca", "stable")["version"] == "2"  # verified signature

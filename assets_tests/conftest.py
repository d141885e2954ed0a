import contextlib
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

# `make test` runs the test files on two pytest-xdist workers (pyproject's addopts). Each worker,
# and every process it starts (the demo's CLI, the daemon's runs), gets one torch thread, so two
# trainings at once share the two cores instead of four threads contending for them. Set before
# anything imports torch; a run without xdist keeps torch's default.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from autosink_platform.lake.demo import DemoLakeConfig, generate_demo_lake  # noqa: E402
from autosink_platform.settings import Settings  # noqa: E402

# 9 sessions x 120 frames: the smallest lake whose session-level splits are all non-empty
# (6 train / 2 validation / 1 test under the default SplitConfig).
TINY = DemoLakeConfig(devices=3, sessions_per_device=3, frames_per_session=120, seed=7)


@pytest.fixture(autouse=True)
def _own_registry(tmp_path, monkeypatch):
    """No test reads or writes the project's registry (mlflow/mlflow.db, which ``make demo``
    fills) or the user's: each gets its own unless it sets another."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'own-registry' / 'mlflow.db'}")


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


def platform_resources() -> dict:
    """The resources the code location configures, from this process's environment now (the
    ``home`` fixture's, or what a test set), for code that uses them outside a run."""
    return Settings.from_environ(os.environ).resources()


@contextlib.contextmanager
def fleet_api(home: Path):
    """The fleet API (uploads, heartbeats, the release channel) of ``home`` on a loopback port;
    yields its base URL."""
    import uvicorn

    from autosink_platform.fleet.api import create_app
    from autosink_platform.home import Home

    server = uvicorn.Server(uvicorn.Config(create_app(Home(home)), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def pytest_collection_modifyitems(config, items):
    """The longest work first, so neither xdist worker is left with it at the end: the demo's
    file (its module fixture runs the whole demo), then the files with other slow tests or with
    services to start, then the rest. The sort is stable, so tests keep their order within a file; the workers take the
    files in this order (``--no-loadscope-reorder`` in pyproject's addopts)."""

    def rank(item) -> int:
        if item.path.name == "test_demo.py":
            return 0
        return 1 if item.get_closest_marker("slow") or item.get_closest_marker("services") else 2

    items.sort(key=rank)


def pytest_report_header(config):
    workers = getattr(config.option, "numprocesses", None)
    threads = "1 (xdist worker)" if workers else os.environ.get("OMP_NUM_THREADS", "torch's default")
    return f"{os.cpu_count()} cpus; xdist workers: {workers or 'none'}; torch threads per process: {threads}"


@pytest.fixture
def browser():
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip(
            "headless browser test needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1000,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


# -- real services the tests start themselves ---------------------------------------------------


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on loopback: a real HTTP S3 endpoint (conditional writes, ACLs)."""
    moto_server = pytest.importorskip("moto.server", reason="needs moto[server] (the test extra)")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint, monkeypatch, request) -> str:
    """A fresh bucket named after the test, with moto's credentials and endpoint in the environment."""
    boto3 = pytest.importorskip("boto3")
    for k, v in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AUTOSINK_S3_ENDPOINT": s3_endpoint,
    }.items():
        monkeypatch.setenv(k, v)
    # What the resources do with AUTOSINK_S3_ENDPOINT, for the tests that open s3:// paths themselves.
    import fsspec.config

    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3_endpoint})
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:50].strip("-")
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


def wait_for_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Poll ``url`` until it answers 200; fail with the server's log if it exits or times out."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{url} did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def stop(procs: list[subprocess.Popen], timeout: float = 60) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()

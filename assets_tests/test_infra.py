"""Deployment files stay in step with the code they start."""

import configparser
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from autosink_pi.client import PiConfig

INFRA = Path(__file__).resolve().parents[1] / "infra"


def _unit(name: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(INFRA / "pi" / name)
    return unit


def test_pi_example_config_is_a_valid_client_config():
    cfg = PiConfig.load(INFRA / "pi" / "pi.json.example")
    assert cfg.channel_url.endswith("/v1/fleet") and cfg.state_dir == "/var/lib/autosink"


def test_sync_unit_runs_the_client_commands_that_exist():
    service = _unit("autosink-pi-sync.service")["Service"]
    args = shlex.split(service["ExecStart"])
    assert args[0].endswith("autosink-pi") and args[1:] == ["--config", "/etc/autosink/pi.json", "sync"]
    assert "heartbeat" in service["ExecStartPost"] and service["SuccessExitStatus"] == "2"
    assert service["ReadWritePaths"] == PiConfig.load(INFRA / "pi" / "pi.json.example").state_dir
    timer = _unit("autosink-pi-sync.timer")
    assert timer["Timer"]["OnUnitActiveSec"] == "5min" and timer["Install"]["WantedBy"] == "timers.target"


# -- scale-out configuration ----------------------------------------------------------------------


def _compose_command() -> list[str] | None:
    """``docker compose`` (the v2 plugin) where installed, else Debian's ``docker-compose``."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_file_is_valid_and_wires_every_component(tmp_path):
    command = _compose_command()
    if command is None:
        pytest.skip("needs `docker compose` or `docker-compose` (apt-get install docker-compose) to validate the file")
    infra = tmp_path / "infra"
    shutil.copytree(INFRA, infra, ignore=shutil.ignore_patterns("*.pem"))
    (infra / "secrets" / "fleet-signing-key.pem").write_text("placeholder: compose only checks the file exists\n")
    done = subprocess.run([*command, "-f", str(infra / "compose.yaml"), "config"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    services = config["services"]
    assert {"postgres", "minio", "mlflow", "code", "webserver", "daemon"} <= set(services)
    # The Dagster processes share one instance (Postgres) and load the code location over gRPC.
    for name in ("code", "webserver", "daemon"):
        env = services[name]["environment"]
        assert (
            env["DAGSTER_POSTGRES_URL"].startswith("postgresql+psycopg2://")
            and env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        )
        assert all(env[f"AUTOSINK_{k}"].startswith("s3://autosink/") for k in ("LAKE", "STORE", "FLEET"))
        assert env["AUTOSINK_S3_ENDPOINT"] == "http://minio:9000"
    workspace = yaml.safe_load((INFRA / "dagster" / "workspace.yaml").read_text())["load_from"][0]["grpc_server"]
    assert workspace["host"] == "code" and f"-p {workspace['port']}" in services["code"]["command"]
    assert "-m autosink_platform.definitions" in services["code"]["command"]
    mlflow = services["mlflow"]["command"]
    assert (
        "--serve-artifacts" in mlflow
        and "--artifacts-destination s3://" in mlflow
        and "postgresql+psycopg2://" in mlflow
    )


def test_dagster_yaml_is_postgres_with_the_queued_coordinator():
    config = yaml.safe_load((INFRA / "dagster" / "dagster.yaml").read_text())
    assert config["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_POSTGRES_URL"}
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    (limit,) = config["run_coordinator"]["config"]["tag_concurrency_limits"]
    from autosink_platform.defs.model_stages import STAGE_TAG, TRAIN_TAGS

    assert (limit["key"], limit["value"]) == (STAGE_TAG, TRAIN_TAGS[STAGE_TAG])


def test_helm_values_use_the_k8s_run_launcher_and_the_code_location_module():
    values = yaml.safe_load((INFRA / "helm" / "values.yaml").read_text())
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "autosink_platform.definitions"]
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert values["postgresql"]["enabled"] is False  # an external, managed PostgreSQL
    env = {line.split("=", 1)[0] for line in (INFRA / "helm" / "autosink.env.example").read_text().split()}
    assert {
        "MLFLOW_TRACKING_URI",
        "AUTOSINK_LAKE",
        "AUTOSINK_FLEET",
        "AUTOSINK_S3_ENDPOINT",
        "AUTOSINK_SIGNING_KEY",
    } <= env
    mounts = {m["name"] for m in values["runLauncher"]["config"]["k8sRunLauncher"]["volumeMounts"]}
    assert mounts == {"fleet-signing-key"}  # lake, store and channel are on the object store: no shared volume


def test_dockerfile_installs_extras_that_exist():
    extras = tomllib.loads((INFRA.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    text = (INFRA / "Dockerfile").read_text()
    assert 'pip install ./pi_client ".[s3,scale]"' in text and {"s3", "scale"} <= set(extras)
    assert "autosink_platform.definitions" in text

"""Staged rollout over a fleet of fifty devices: in-process device clients (``autosink_pi``) syncing
from the real fleet API on loopback, deciding on frames and reporting heartbeats with their
telemetry; the platform side through the operator's commands (``autosink promote --rollout``,
``autosink rollout status|advance|halt``) and the code location's ``fleet_telemetry`` sensor and
``rollout_halt`` job on a real Dagster instance. Forty days without a promotion is the third
story: ``test_pi_client.test_forty_days_without_a_promotion_every_device_of_fifty_still_syncs``."""

import json
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pytest
from autosink_pi.cli import heartbeat
from autosink_pi.client import PiConfig, active, decide, in_rollout, read_state, sync
from click.testing import CliRunner

from autosink_platform.cli import main as cli
from autosink_platform.fleet.devices import DeviceRegistry
from autosink_platform.home import Home
from autosink_platform.release.onnx_export import OnnxScorer

from .conftest import fleet_api, platform_resources
from .test_pi_client import onnx_model, provision, publish  # noqa: F401  (the same release as the client tests)

NAME, FLEET = "sink.classifier", 50
FRAMES_PER_ROUND = 60


def _register(version: str) -> None:
    """An MLflow version of sink.classifier that passed release validation (what promotion requires)."""
    client = platform_resources()["mlflow"].get().client  # (also points mlflow's fluent API at this test's registry)
    if not client.search_registered_models(f"name = '{NAME}'"):
        client.create_registered_model(NAME)
    mlflow.set_experiment("rollout-test")
    with mlflow.start_run() as run:
        mlflow.log_metric("test_f1", 0.9)
    mv = client.create_model_version(NAME, f"runs:/{run.info.run_id}/model", run.info.run_id)
    assert str(mv.version) == version
    client.set_model_version_tag(NAME, version, "validation_status", "passed")


def _cli(*args: str) -> str:
    done = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert done.exit_code == 0, done.output
    return done.output


class Fleet:
    """Fifty provisioned devices; a round is: sync, decide on fresh frames, heartbeat."""

    def __init__(self, home: Path, api: str, root: Path, tmp: Path):
        registry = DeviceRegistry(Home(home).devices_db)
        self.api, self.devices, self.round = api, [], 0
        for i in range(FLEET):
            cfg = PiConfig(f"pi-{i:03d}", f"{api}/v1/fleet", str(root), str(tmp / f"pi-{i:03d}"), retries=1)
            self.devices.append((cfg, registry.add(cfg.device_id)))

    def run_round(self) -> dict[str, str]:
        self.round += 1
        for i, (cfg, token) in enumerate(self.devices):
            sync(cfg)
            rng = np.random.default_rng(1000 * self.round + i)
            frames = (rng.random((FRAMES_PER_ROUND, 64, 64, 3)) * 255).astype(np.uint8)
            decide(cfg, active(cfg), frames)
            heartbeat(cfg, self.api, token)
        return {cfg.device_id: read_state(cfg)["current"] for cfg, _ in self.devices}

    def canary(self, percent: int) -> set[str]:
        return {cfg.device_id for cfg, _ in self.devices if in_rollout(cfg.device_id, cfg, percent)}


def _sensor_tick(instance) -> dg.SensorResult:
    from autosink_platform import definitions

    sensor = definitions.defs.get_sensor_def("fleet_telemetry")
    with dg.build_sensor_context(instance=instance, resources=platform_resources()) as context:
        return sensor(context)


@pytest.fixture
def world(home, onnx_model, tmp_path):  # noqa: F811
    channel = platform_resources()["fleet"].get()
    frames = (np.random.default_rng(7).random((400, 64, 64, 3)) * 255).astype(np.uint8)
    median = float(np.median(OnnxScorer(onnx_model)(frames)["valve_open_prob"]))  # half the frames open the valve
    for version, threshold in (("1", median), ("2", median), ("3", 0.0)):  # v3: a threshold of 0, always open
        publish(channel, version, onnx_model, tmp_path, threshold=threshold)
        _register(version)
    _cli("promote", NAME, "--version", "1", "--reason", "first release")
    with fleet_api(home) as api:
        fleet = Fleet(home, api, provision(channel, tmp_path), tmp_path)
        assert set(fleet.run_round().values()) == {"1"}
        yield fleet, channel


def test_a_good_release_advances_from_a_tenth_of_the_fleet_to_all_of_it(world):
    fleet, channel = world
    out = _cli("promote", NAME, "--version", "2", "--reason", "better on the test split", "--rollout", "10")
    assert "v1 -> v2 on 10% of devices" in out
    seen_on_v2: set[str] = set()
    for percent in (10, 25, 50, 100):
        if percent > 10:
            assert f"now on {percent}% of devices" in _cli("rollout", "advance", NAME)
        running = fleet.run_round()
        on_v2 = {d for d, v in running.items() if v == "2"}
        assert on_v2 == fleet.canary(percent) and seen_on_v2 <= on_v2  # the canary grows, nobody leaves it
        assert {v for d, v in running.items() if d not in on_v2} <= {"1"}
        seen_on_v2 = on_v2
        if percent < 100:
            status = json.loads(_cli("rollout", "status", NAME))
            assert (status["version"], status["fallback"], status["rollout_percent"]) == ("2", "1", percent)
            assert status["health"]["state"] == "healthy", status["health"]
            assert status["health"]["canary"]["devices"] == len(on_v2)
    assert set(fleet.run_round().values()) == {"2"}
    pointer = channel.read_pointer("sink", "classifier", "stable")
    assert (pointer["version"], pointer["rollout_percent"], pointer["fallback"]) == ("2", 100, None)
    entries = platform_resources()["fleet"].audit().entries(NAME)
    assert [(e["action"], e["rollout_percent"]) for e in entries] == [
        ("promote", 100),
        ("promote", 10),
        ("advance", 25),
        ("advance", 50),
        ("advance", 100),
    ]
    with dg.DagsterInstance.ephemeral() as instance:  # nothing to halt
        assert not _sensor_tick(instance).run_requests


def test_a_bad_release_is_halted_at_the_canary_by_field_telemetry_and_the_control_group_is_untouched(world):
    """v3 opens the valve on every frame. The canary's positive-decision rate leaves the control
    group's; the fleet_telemetry sensor requests the rollout_halt job, which moves the champion
    back and points every device at v2 again. Control devices never download v3."""
    from autosink_platform import definitions

    fleet, channel = world
    _cli("promote", NAME, "--version", "2", "--reason", "good", "--rollout", "100")
    assert set(fleet.run_round().values()) == {"2"}
    _cli("promote", NAME, "--version", "3", "--reason", "new threshold", "--rollout", "10")
    canary = fleet.canary(10)
    running = fleet.run_round()
    assert {d for d, v in running.items() if v == "3"} == canary and 0 < len(canary) < FLEET // 4
    control = [cfg for cfg, _ in fleet.devices if cfg.device_id not in canary]

    with dg.DagsterInstance.ephemeral() as instance:
        tick = _sensor_tick(instance)
        (request,) = tick.run_requests
        reason = request.run_config["ops"]["halt_rollout"]["config"]["reason"]
        assert reason.startswith("positive decisions 100.0% on v3 vs") and "on v2" in reason
        observed = {(o.metadata["version"].value, o.asset_key.path[0]) for o in tick.asset_events}
        assert observed == {("2", "sink"), ("3", "sink")}  # heartbeats as observations: health per version
        job = definitions.defs.resolve_job_def("rollout_halt")
        assert job.execute_in_process(run_config=request.run_config, instance=instance).success

    pointer = channel.read_pointer("sink", "classifier", "stable")
    assert (pointer["version"], pointer["rollout_percent"], pointer["halted"]["version"]) == ("2", 100, "3")
    registry = platform_resources()["mlflow"].get()
    assert str(registry.alias_version(NAME, "champion").version) == "2"
    assert registry.client.get_model_version(NAME, "3").tags["rollout_halted"] == reason
    last = platform_resources()["fleet"].audit().entries(NAME)[-1]
    assert (last["action"], last["who"], last["from"], last["to"]) == ("halt", "telemetry guard", "3", "2")

    assert set(fleet.run_round().values()) == {"2"}  # the canary is back on v2 (kept on disk: no download)
    for cfg in control:
        assert not (Path(cfg.state_dir) / "models" / "3").exists()
        assert set(json.loads((Path(cfg.state_dir) / "telemetry.json").read_text())) == {"1", "2"}
    with dg.DagsterInstance.ephemeral() as instance:
        assert not _sensor_tick(instance).run_requests  # halted: nothing more to do

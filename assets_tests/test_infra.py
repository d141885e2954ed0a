"""Deployment files stay in step with the code they start."""

import configparser
import shlex
from pathlib import Path

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

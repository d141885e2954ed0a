"""The platform running unattended, as a deployment runs it, on one home:

- the code location as a gRPC server (``dagster code-server start``, as ``make dev`` and the
  compose file serve it), loaded once: a daemon given ``workspace.yaml`` itself would start its
  own and replace it every minute, loading the code location again each time;
- the Dagster daemon (``dagster-daemon run`` on a workspace pointing at that server): the
  new-session, retrain, review and champion sensors and declarative automation, each launching
  runs in their own processes;
- the fleet API (``autosink fleet serve``): uploads, heartbeats and the release channel;
- devices: a token each (``autosink fleet add-device``), sessions uploaded over HTTP, and the
  device client (``autosink_pi``) syncing from the channel and reporting its version.

``feedback_to_device`` uploads a batch of sessions and follows them until a device runs the
model they produced, or until the release stage decides not to promote it; the report breaks the
time down by stage from the Dagster instance's own event log. The demo's second act, the loop
test and ``benchmarks/feedback_to_device.py`` all run this.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml

from autosink_platform.fleet.uploads import pack_session
from autosink_platform.home import PROJECT_ROOT, Home

WORKSPACE = PROJECT_ROOT / "workspace.yaml"
LOCATION = yaml.safe_load(WORKSPACE.read_text())["load_from"][0]["python_module"]  # module_name, location_name
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _now() -> float:
    return datetime.now(UTC).timestamp()


class ServiceFailed(RuntimeError):
    """A service exited or did not come up; the message ends with its log."""


class Services:
    """The code server, the daemon and the fleet API as subprocesses on ``home`` (environment:
    this process's, which must already point at the home, its Dagster instance and its MLflow
    registry)."""

    def __init__(self, home: Home, log_dir: Path):
        self.home, self.log_dir = home, Path(log_dir)
        self.port = free_port()
        self.code_port = next(p for p in iter(free_port, None) if p != self.port)  # two free ports, not one twice
        self.api = f"http://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}

    def _start(self, name: str, argv: list[str]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("w")
        self.procs[name] = subprocess.Popen(argv, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT)
        log.close()  # the child holds its own descriptor

    def log(self, name: str, tail: int = 3000) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def serve_code(self) -> Services:
        """Start the code server alone: it loads the code location while the caller goes on
        (the demo trains its first release meanwhile); entering starts the rest."""
        if "code-server" not in self.procs:
            self._start(
                "code-server",
                [str(BIN / "dagster"), "code-server", "start", "-m", LOCATION["module_name"]]
                + ["--location-name", LOCATION["location_name"], "-h", "127.0.0.1", "-p", str(self.code_port)],
            )
        return self

    def __enter__(self) -> Services:
        self.serve_code()
        self._start(
            "fleet-api",
            [str(BIN / "autosink"), "fleet", "serve", "--home", str(self.home.root), "--port", str(self.port)],
        )
        # The server listens once the code is loaded; a daemon started before would find the
        # location in error until its next workspace refresh, a minute later.
        self._wait("code-server", lambda: socket.create_connection(("127.0.0.1", self.code_port), timeout=2).close())
        workspace = self.log_dir / "workspace.yaml"
        server = {"host": "127.0.0.1", "port": self.code_port, "location_name": LOCATION["location_name"]}
        workspace.write_text(yaml.safe_dump({"load_from": [{"grpc_server": server}]}))
        self._start("dagster-daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)])

        def health():
            with urllib.request.urlopen(f"{self.api}/v1/health", timeout=2) as r:
                if r.status != 200:
                    raise ConnectionError(r.status)

        self._wait("fleet-api", health)
        return self

    def _wait(self, name: str, answers, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while True:
            try:
                return answers()
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            self.check()
            if time.monotonic() > deadline:
                raise ServiceFailed(f"{name} did not answer in {seconds:.0f} s:\n{self.log(name)}")
            time.sleep(0.3)

    def check(self) -> None:
        """Raise if a service has exited."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise ServiceFailed(f"{name} exited with {proc.returncode}:\n{self.log(name)}")

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop every service started (also those of a ``serve_code`` never entered)."""
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class Device:
    """One Pi of the fleet: provisioned with a token and the channel's public key."""

    device_id: str
    api: str
    token: str
    config: object  # autosink_pi.client.PiConfig
    beats: list[dict] = field(default_factory=list)  # heartbeats sent: version, sequence, at

    @classmethod
    def provision(cls, home: Home, api: str, device_id: str, trusted_root: Path, state_dir: Path) -> Device:
        """A device's first start registers it and keeps its token in its state folder (as a Pi
        keeps it in its configuration); later starts reuse it."""
        from autosink_pi.client import PiConfig

        from autosink_platform.fleet.devices import DeviceRegistry

        kept = Path(state_dir) / "token"
        if kept.exists():
            token = kept.read_text().strip()
        else:
            token = DeviceRegistry(home.devices_db).add(device_id)
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.touch(mode=0o600)
            kept.write_text(token)
        cfg = PiConfig(device_id, f"{api}/v1/fleet", str(trusted_root), str(state_dir), retries=1, timeout_s=10)
        return cls(device_id, api, token, cfg)

    def upload(self, folder: Path) -> tuple[int, dict, float]:
        """POST one session folder; returns the status, the answer and when it came."""
        request = urllib.request.Request(
            f"{self.api}/v1/sessions",
            data=pack_session(folder),
            method="POST",
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/gzip"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                return r.status, json.loads(r.read()), _now()
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}"), _now()

    def sync(self) -> dict:
        """What the device's timer does: pull and verify the channel's release, then report the
        active version in a heartbeat."""
        from autosink_pi.cli import heartbeat
        from autosink_pi.client import SyncRefused, read_state, sync

        try:
            result = sync(self.config)
            outcome = {"status": result.status, "version": result.version}
        except SyncRefused as e:
            outcome = {"status": "refused", "reason": e.reason, "detail": e.detail}
        heartbeat(self.config, self.api, self.token)
        state = read_state(self.config)
        self.beats.append({"version": state["current"], "sequence": state["sequence"], "at": _now()})
        return outcome | {"current": state["current"]}

    @property
    def version(self) -> str | None:
        return self.beats[-1]["version"] if self.beats else None


def provision_fleet(home: Home, api: str, sessions: list[Path], channel) -> dict[str, Device]:
    """A device per recorder of ``sessions`` (folders named ``<device id>-<start>``), provisioned
    under ``<home>/devices/<id>`` with the channel's TUF root, as installation would: the root
    comes from provisioning, and the device then trusts only what it (and the roots it signs) sign."""
    trusted_root = home.root / "devices" / "trusted-root.json"
    if not trusted_root.exists():
        trusted_root.parent.mkdir(parents=True, exist_ok=True)
        trusted_root.write_bytes((channel.root / "metadata" / "root.json").read_bytes())
    ids = sorted({recorder(s) for s in sessions})
    return {d: Device.provision(home, api, d, trusted_root, home.root / "devices" / d) for d in ids}


def recorder(session: Path) -> str:
    """The device that recorded a session folder (``<device id>-<start time>``)."""
    return session.name.rsplit("-", 1)[0]


class DeviceTimer:
    """The device's sync timer, every ``interval`` seconds in a background thread (the real one,
    ``infra/pi``'s systemd timer, runs every five minutes)."""

    def __init__(self, device: Device, interval: float):
        self.device, self.interval = device, interval
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.device.sync()
            except Exception as e:  # a device keeps its model and tries again at the next tick
                self.errors.append(f"{type(e).__name__}: {e}")

    def __enter__(self) -> DeviceTimer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


@dataclass
class LoopReport:
    outcome: str  # "promoted": a device runs the new model; "kept": the champion stayed
    champion_before: str | None
    champion_after: str | None
    candidate: str | None  # the version the feedback produced (None: no training run finished)
    device_version: str | None
    uploads: int  # sessions accepted by the fleet API (201)
    seconds: float  # the first upload's 201 -> the device's heartbeat on the new version (or the decision)
    stages: list[dict]  # name, start, end, seconds (relative to the first 201)
    runs: list[dict]  # the Dagster runs the feedback caused: job, status, run id
    decision: str  # why the champion moved or stayed (the release stage's audit entry or tags)

    def table(self) -> str:
        rows = [f"{'stage':<34} {'from s':>8} {'to s':>8} {'seconds':>8}"]
        for s in self.stages:
            rows.append(f"{s['name']:<34} {s['start']:>8.1f} {s['end']:>8.1f} {s['seconds']:>8.1f}")
        return "\n".join(rows)

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _runs_since(instance, since: float) -> list:
    import dagster as dg

    records = instance.get_run_records(dg.RunsFilter(created_after=datetime.fromtimestamp(since, UTC)))
    return sorted(records, key=lambda r: r.create_timestamp)


def feedback_to_device(
    instance,
    resources: dict,
    sessions: list[Path],
    fleet: dict[str, Device],
    device: Device,
    pipeline: str = "sink",
    model: str = "classifier",
    timeout: float = 900,
    services: Services | None = None,
    progress=None,
    finish: bool = True,
) -> LoopReport:
    """Upload each session folder from the ``fleet`` device that recorded it, then wait, touching
    nothing (``resources`` are the platform's, to read the registry and channel), until ``device``
    reports the model they produced or the model's release step ends with the champion kept; the
    device must be syncing on its timer.

    The runs go on after the decision (the other models' releases, the review queue). With
    ``finish`` they are waited for, so nothing is cut off when the services stop; without it they
    are cancelled through the run launcher, for a caller that asks only for the decision."""

    from autosink_platform.registry.mlflow_registry import CHAMPION

    name = f"{pipeline}.{model}"
    registry, channel = resources["mlflow"].get(), resources["fleet"].get()
    before = registry.alias_version(name, CHAMPION)
    before = None if before is None else str(before.version)
    start = _now()
    answered = []
    for folder in sessions:
        status, body, at = fleet[recorder(folder)].upload(folder)
        if status != 201:
            raise RuntimeError(f"upload of {folder.name} from {recorder(folder)} answered {status}: {body}")
        answered.append(at)
    t0 = answered[0]
    deadline = time.monotonic() + timeout
    train, outcome, kept_at = None, None, None
    while outcome is None:
        if services is not None:
            services.check()
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"no decision {timeout:.0f} s after the uploads; runs: {_describe(_runs_since(instance, start))}"
            )
        time.sleep(1)
        runs = _runs_since(instance, start)
        trains = [r for r in runs if r.dagster_run.job_name == f"{pipeline}_train"]
        # Whether the release step has ended is asked before the champion is read, so a
        # promotion made in that step is always seen with it.
        decided = _release_ended(instance, trains[0], f"{pipeline}__{model}_release") if trains else None
        champion = registry.alias_version(name, CHAMPION)
        champion = None if champion is None else str(champion.version)
        if champion != before and device.version == champion:
            outcome = "promoted"
        elif decided is not None and champion == before:
            outcome, kept_at = "kept", decided
        if progress is not None:
            progress(runs, champion, device.version)
        train = trains[0] if trains else None
    end = device.beats[-1]["at"] if outcome == "promoted" else kept_at
    if not finish:
        _cancel_runs(instance, start)
    runs = _wait_for_runs(instance, start, deadline, services)
    train = next(r for r in runs if r.dagster_run.job_name == f"{pipeline}_train")
    candidate = _candidate(registry, name, train)
    return LoopReport(
        outcome=outcome,
        champion_before=before,
        champion_after=champion,
        candidate=candidate,
        device_version=device.version,
        uploads=len(answered),
        seconds=end - t0,
        stages=_stages(instance, channel, pipeline, model, runs, answered, device, outcome, t0),
        runs=[
            {"job": r.dagster_run.job_name, "status": r.dagster_run.status.value, "run_id": r.dagster_run.run_id}
            for r in runs
        ],
        decision=_decision(registry, resources["fleet"].audit(), name, candidate, outcome),
    )


def _release_ended(instance, train, step: str) -> float | None:
    """When the train run's ``step`` ended (the release gate and the promotion policy have
    decided), or None while it has not; a run that ended without it has decided nothing more."""
    import dagster as dg

    ended = _step_times(
        instance, train.dagster_run.run_id, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE
    )
    if step in ended:
        return ended[step][0]
    return train.end_time if train.dagster_run.is_finished else None


def _step_times(instance, run_id: str, *kinds) -> dict[str, list[float]]:
    """Each step's event times in the run, of the given event ``kinds``."""
    steps: dict[str, list[float]] = {}
    for e in instance.all_logs(run_id, of_type=set(kinds)):
        steps.setdefault(e.step_key, []).append(e.timestamp)
    return steps


def _cancel_runs(instance, since: float) -> None:
    """Cancel the runs since ``since`` that have not finished: a launched one through the run
    launcher (its code server stops the run's process), a queued one at once."""
    import dagster as dg

    for record in _runs_since(instance, since):
        run = record.dagster_run
        if run.status == dg.DagsterRunStatus.QUEUED:
            instance.report_run_canceled(run, message="cancelled after the loop's decision")
        elif not run.is_finished:
            instance.run_launcher.terminate(run.run_id)


def _wait_for_runs(instance, since: float, deadline: float, services: Services | None) -> list:
    while True:
        runs = _runs_since(instance, since)
        if all(r.dagster_run.is_finished for r in runs):
            return runs
        if services is not None:
            services.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"runs still going at the deadline: {_describe(runs)}")
        time.sleep(1)


def _describe(runs) -> str:
    return ", ".join(f"{r.dagster_run.job_name}:{r.dagster_run.status.value}" for r in runs) or "none"


def _candidate(registry, name: str, train) -> str | None:
    if train is None:
        return None
    found = registry.client.search_model_versions(
        f"name = '{name}' and tag.dagster_run_id = '{train.dagster_run.run_id}'"
    )
    return str(max(int(v.version) for v in found)) if found else None


def _decision(registry, audit, name: str, candidate: str | None, outcome: str) -> str:
    if candidate is None:
        return "no candidate was trained"
    entries = [e for e in audit.entries(name) if e.get("to") == candidate]
    if outcome == "promoted" and entries:
        return f"v{candidate} promoted by {entries[-1].get('who')}: {entries[-1].get('reason')}"
    tags = registry.client.get_model_version(name, candidate).tags
    status = tags.get("validation_status", "?")
    if status != "passed":
        return f"v{candidate} refused by the release gate ({status})"
    vs = json.loads(tags["vs_champion"]) if "vs_champion" in tags else {}
    regressions = vs.get("slice_regressions") or []
    detail = f"{vs.get('metric', 'f1')} delta {vs.get('delta', float('nan')):+.4f}" if vs else "no comparison"
    if regressions:
        detail += ", regressed: " + ", ".join(f"{r['slice']}={r['group']}" for r in regressions)
    return f"v{candidate} passed the gate, not promoted by the policy ({detail})"


def _stages(instance, channel, pipeline, model, runs, answered, device, outcome, t0) -> list[dict]:
    """When each stage ran, from the run records and step events the daemon's runs wrote."""
    import dagster as dg

    stages = [("upload (fleet API, 201s)", t0, answered[-1])]
    ingest = [r for r in runs if r.dagster_run.job_name == f"{pipeline}_ingest" and r.start_time]
    train = next((r for r in runs if r.dagster_run.job_name == f"{pipeline}_train"), None)
    if ingest:
        stages.append(("new-session sensor -> ingest run", answered[-1], ingest[0].create_timestamp.timestamp()))
        stages.append(
            ("ingest + label runs", min(r.start_time for r in ingest), max(r.end_time or _now() for r in ingest))
        )
    if train is not None:
        if ingest:
            stages.append(
                (
                    "retrain sensor -> train run",
                    max(r.end_time or 0 for r in ingest),
                    train.create_timestamp.timestamp(),
                )
            )
        if train.start_time:
            stages.append(("train run: queue + process start", train.create_timestamp.timestamp(), train.start_time))
        kinds = (dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE)
        steps = _step_times(instance, train.dagster_run.run_id, *kinds)
        for key, times in sorted(steps.items(), key=lambda kv: min(kv[1])):
            stages.append((f"  {key.removeprefix(pipeline + '__')}", min(times), max(times)))
    if outcome == "promoted":
        pointer = channel.read_pointer(pipeline, model, "stable")
        published = datetime.fromisoformat(pointer["published_at"]).timestamp()
        adopted = next(b["at"] for b in device.beats if b["version"] == pointer["version"])
        stages.append(("device sync + heartbeat", published, adopted))
    return [
        {"name": n, "start": round(a - t0, 2), "end": round(b - t0, 2), "seconds": round(b - a, 2)}
        for n, a, b in stages
    ]

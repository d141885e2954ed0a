"""Pull, verify, activate and run a model release on a device.

State directory layout (``state_dir``):

    tuf/                                           the device's trusted TUF metadata (python-tuf's ngclient)
    models/<version>/model.onnx, manifest.json     every accepted release
    state.json                                     current / previous version, pinning, last sync
    telemetry.json                                 decisions per active version (for heartbeats)
    staging/                                       a release being installed

``sync`` updates the trusted metadata through ``tuf.ngclient.Updater`` (root chain, timestamp,
snapshot, targets: signatures, versions that never go back, expiry), reads the channel pointer
from its target's signed ``custom``, checks it is for this device's pipeline, model and channel,
and picks the version for this device (the canary's or the fallback, by a stable hash). The
release's files are downloaded as targets (length and sha256 from the signed metadata, never
more bytes than declared), the manifest must be this model's at that version and match the
pointer, and a smoke inference must reproduce the manifest's outputs. Only then is the release
installed, by renaming a whole folder and then the state file. On any failure the current model
stays active, and a device that rolled back stays pinned until a version newer than the one it
left is offered.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater, UpdaterConfig

from autosink_pi.manifest import Manifest, ManifestError, parse
from autosink_pi.runtime import InputError, Runtime
from autosink_pi.transport import Fetcher
from autosink_pi.verify import sha256_file


class SyncRefused(RuntimeError):
    """The offered release was refused; ``reason`` is machine-readable. The current model stays."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class PiConfig:
    device_id: str
    channel_url: str  # the fleet root: http(s)://host/v1/fleet or a local folder
    trusted_root: str  # root.json from provisioning (never taken from the channel); later roots follow from it
    state_dir: str
    pipeline: str = "sink"
    model: str = "classifier"
    channel: str = "stable"
    retries: int = 4
    timeout_s: float = 30.0
    min_bytes_per_s: float = 4096.0  # slower than this on average (after timeout_s) is cut: slow retrieval
    guard: str | None = None  # a guard model of the same pipeline (the sink's "frame_guard"), synced beside

    def guard_config(self) -> PiConfig | None:
        """The guard's own release state, under ``<state_dir>/guard``."""
        if not self.guard:
            return None
        return replace(self, model=self.guard, state_dir=str(Path(self.state_dir) / "guard"), guard=None)

    @classmethod
    def load(cls, path: str | Path) -> PiConfig:
        return cls(**json.loads(Path(path).read_text()))


@dataclass
class SyncResult:
    status: str  # "updated", "up_to_date", "not_in_rollout", "pinned"
    version: str | None
    previous: str | None = None
    detail: dict = field(default_factory=dict)


# -- state ------------------------------------------------------------------------------------


def read_state(cfg: PiConfig) -> dict:
    path = Path(cfg.state_dir) / "state.json"
    return json.loads(path.read_text()) if path.exists() else {"current": None, "previous": None, "sequence": 0}


def _write_state(cfg: PiConfig, state: dict) -> None:
    path = Path(cfg.state_dir) / "state.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".state.json.tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)  # the switch to a new model is this one atomic rename


def in_rollout(device_id: str, cfg: PiConfig, percent: int) -> bool:
    """A stable bucket 0-99 per device and model: the same devices stay in a growing canary."""
    bucket = int(hashlib.sha256(f"{cfg.pipeline}/{cfg.model}:{device_id}".encode()).hexdigest()[:8], 16) % 100
    return bucket < percent


def _newer(a: str, b: str) -> bool:
    """Whether version ``a`` is newer than ``b`` (MLflow versions are integers)."""
    return (int(a), a) > (int(b), b) if a.isdigit() and b.isdigit() else a > b


# -- sync -------------------------------------------------------------------------------------


def sync(cfg: PiConfig, now: datetime | None = None) -> SyncResult:
    """Update the trusted metadata and, if the channel offers this device another release,
    activate it; then the guard's, when the device has one (its outcome in ``detail["guard"]``;
    a refused guard release leaves the guard it has, as a refused model release leaves the model)."""
    result = _sync_one(cfg, now)
    if guard := cfg.guard_config():
        try:
            g = _sync_one(guard, now)
            result.detail["guard"] = {"status": g.status, "version": g.version}
        except SyncRefused as e:
            result.detail["guard"] = {"refused": e.reason, "detail": e.detail}
    return result


def _sync_one(cfg: PiConfig, now: datetime | None) -> SyncResult:
    now = now or datetime.now(timezone.utc)
    state = read_state(cfg)
    try:
        result = _sync(cfg, state, now)
        state["last_error"] = None
        return result
    except SyncRefused as e:
        state["last_error"] = {"reason": e.reason, "detail": e.detail, "at": now.isoformat()}
        raise
    finally:
        state["last_sync"] = now.isoformat()
        _write_state(cfg, state)


_REFUSALS = (  # python-tuf's errors as the device reports them, most specific first
    (tuf_errors.ExpiredMetadataError, "expired"),
    (tuf_errors.EqualVersionNumberError, "rollback"),
    (tuf_errors.BadVersionNumberError, "rollback"),  # or "mix_and_match": see _refusal
    (tuf_errors.UnsignedMetadataError, "bad_signature"),
    (tuf_errors.LengthOrHashMismatchError, "checksum_mismatch"),
    (tuf_errors.DownloadLengthMismatchError, "too_large"),
    (tuf_errors.SlowRetrievalError, "slow_retrieval"),
    (tuf_errors.DownloadHTTPError, "not_published"),
    (tuf_errors.DownloadError, "download_failed"),
    (tuf_errors.RepositoryError, "bad_metadata"),
)


def _refusal(e: Exception, what: str) -> SyncRefused:
    for kind, reason in _REFUSALS:
        if isinstance(e, kind):
            if reason == "not_published" and getattr(e, "status_code", 404) not in (403, 404):
                reason = "http_error"
            if reason == "rollback" and str(e).startswith("Expected"):  # python-tuf: "Expected targets
                reason = "mix_and_match"  # version N, got M": metadata of another snapshot, not an older one
            return SyncRefused(reason, f"{what}: {e}")
    raise e


class _Channel:
    """The device's view of the channel: python-tuf's Updater over this device's trusted metadata."""

    def __init__(self, cfg: PiConfig, now: datetime):
        trusted = Path(cfg.state_dir) / "tuf"
        trusted.mkdir(parents=True, exist_ok=True)
        bootstrap = None if (trusted / "root.json").exists() else Path(cfg.trusted_root).expanduser().read_bytes()
        base = cfg.channel_url.rstrip("/")
        self.updater = Updater(
            str(trusted),
            f"{base}/metadata/",
            target_base_url=f"{base}/",
            fetcher=Fetcher(cfg.timeout_s, cfg.retries, cfg.min_bytes_per_s, grace_s=cfg.timeout_s),
            config=UpdaterConfig(prefix_targets_with_hash=False),
            bootstrap=bootstrap,
        )
        # python-tuf reads the clock once per Updater; expiry is judged at the device's ``now``.
        self.updater._trusted_set.reference_time = now
        try:
            self.updater.refresh()
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as e:
            raise _refusal(e, "channel metadata") from None

    def target(self, path: str) -> TargetFile:
        try:
            info = self.updater.get_targetinfo(path)
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as e:
            raise _refusal(e, path) from None
        if info is None:
            raise SyncRefused("not_published", f"{path} is not in the channel's signed targets")
        return info

    def download(self, info: TargetFile, dest: Path) -> Path:
        """The target, never more than its declared length, checked against its sha256."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            return Path(self.updater.download_target(info, str(dest)))
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as e:
            dest.unlink(missing_ok=True)
            raise _refusal(e, info.path) from None


def _sync(cfg: PiConfig, state: dict, now: datetime) -> SyncResult:
    base = f"{cfg.pipeline}/{cfg.model}"
    channel = _Channel(cfg, now)
    pointer = channel.target(f"{base}/channels/{cfg.channel}.json").custom.get("pointer") or {}
    target = (pointer.get("pipeline"), pointer.get("model"), pointer.get("channel"))
    if target != (cfg.pipeline, cfg.model, cfg.channel):
        raise SyncRefused(
            "wrong_target", f"the pointer at {base}/channels/{cfg.channel} is for {'/'.join(map(str, target))}"
        )
    canary = in_rollout(cfg.device_id, cfg, int(pointer["rollout_percent"]))
    version = str(pointer["version"]) if canary else pointer.get("fallback")
    if (
        version is None
        or version == state["current"]
        or ((left := state.get("pinned_from")) and not _newer(version, left))
    ):
        state["sequence"] = pointer["sequence"]
        if version is None:  # outside a first rollout: nothing to run yet, keep what it has
            return SyncResult("not_in_rollout", state["current"], state["previous"], {"offered": pointer["version"]})
        if version == state["current"]:
            return SyncResult("up_to_date", version, state["previous"])
        return SyncResult("pinned", state["current"], state["previous"], {"offered": version, "rolled_back_from": left})

    vbase = f"{base}/versions/{version}"
    staging = Path(cfg.state_dir) / "staging" / version
    manifest_info = channel.target(f"{vbase}/manifest.json")
    if canary and manifest_info.hashes.get("sha256") != pointer["manifest_sha256"]:
        raise SyncRefused("checksum_mismatch", f"the manifest of v{version} is not the one the pointer names")
    manifest_bytes = channel.download(manifest_info, staging / "manifest.json").read_bytes()
    try:
        manifest = parse(manifest_bytes)
    except ManifestError as e:
        raise SyncRefused("bad_manifest", str(e)) from None
    if (manifest.pipeline, manifest.model, manifest.mlflow_version) != (cfg.pipeline, cfg.model, version):
        raise SyncRefused(
            "wrong_target",
            f"the manifest at {vbase} is {manifest.pipeline}.{manifest.model} v{manifest.mlflow_version}",
        )
    onnx = manifest.onnx
    model_info = channel.target(f"{vbase}/{onnx.file}")
    if (model_info.length, model_info.hashes.get("sha256")) != (onnx.size, onnx.sha256):
        raise SyncRefused("checksum_mismatch", f"v{version}: the signed targets and the manifest disagree on the model")
    final = Path(cfg.state_dir) / "models" / version
    if (final / "model.onnx").exists() and sha256_file(final / "model.onnx") == onnx.sha256:
        model = final / "model.onnx"  # a release this device had before (after a rollback): reuse it
    else:
        model = channel.download(model_info, staging / "model.onnx")
    smoke_info = channel.target(f"{vbase}/{manifest.smoke_test.file}")
    smoke_data = channel.download(smoke_info, staging / manifest.smoke_test.file).read_bytes()
    if hashlib.sha256(smoke_data).hexdigest() != manifest.smoke_test.sha256:
        raise SyncRefused("checksum_mismatch", "smoke inputs do not match the manifest")
    smoke_test(model, manifest, np.load(io.BytesIO(smoke_data)))
    _install(cfg, staging, final, model)
    previous = state["current"]
    state.update(
        current=version, previous=previous, sequence=pointer["sequence"], activated_at=now.isoformat(), pinned_from=None
    )
    return SyncResult("updated", version, previous)


def _install(cfg: PiConfig, staging: Path, final: Path, model: Path) -> None:
    """Make ``final`` the whole release (model and manifest). The active model's folder is never
    touched, and the state file names ``final`` only after this returns: a device killed at any
    step boots the model it had."""
    if model.parent == final:  # reused: only the manifest is new
        os.replace(staging / "manifest.json", final / "manifest.json")
    else:
        shutil.rmtree(final, ignore_errors=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, final)
    shutil.rmtree(staging.parent, ignore_errors=True)  # downloads of other versions are stale now


def smoke_test(model: Path, manifest: Manifest, raw: np.ndarray) -> None:
    """The release's smoke inputs through this client's runtime must give the outputs the platform
    got for them, within the manifest's tolerance (``SyncRefused`` "smoke_test_failed" if not)."""
    try:
        outputs = Runtime(model, manifest).outputs(raw)
    except InputError as e:
        raise SyncRefused("smoke_test_failed", f"the smoke inputs do not fit the manifest's input: {e}") from None
    except Exception as e:  # onnxruntime raises several types for a broken graph
        raise SyncRefused("smoke_test_failed", f"the model does not run: {e}") from None
    spec = manifest.smoke_test
    for name, expected in spec.expected.items():
        expected = np.asarray(expected)
        if name not in outputs or outputs[name].shape != expected.shape:
            raise SyncRefused(
                "smoke_test_failed", f"output {name!r}: the graph gives no output of shape {expected.shape}"
            )
        diff = np.abs(outputs[name] - expected)
        if not np.all(diff <= spec.atol + spec.rtol * np.maximum(np.abs(expected), 1e-6)):
            raise SyncRefused(
                "smoke_test_failed",
                f"output {name!r} differs from the manifest by {float(diff.max()):.3g} (> atol {spec.atol}, rtol {spec.rtol})",
            )


def rollback(cfg: PiConfig) -> str:
    """Activate the previous model again, if its folder is whole; the device then stays pinned:
    it does not take the version it left again, only a newer one."""
    state = read_state(cfg)
    previous = state.get("previous")
    folder = Path(cfg.state_dir) / "models" / str(previous)
    if not previous or not _whole(folder):
        raise SyncRefused("no_previous", "there is no whole previous model to roll back to")
    state["current"], state["previous"] = previous, state["current"]
    state["pinned_from"] = state["previous"]
    _write_state(cfg, state)
    return state["current"]


def _whole(folder: Path) -> bool:
    try:
        onnx = parse((folder / "manifest.json").read_bytes()).onnx
        return sha256_file(folder / onnx.file) == onnx.sha256
    except (OSError, ManifestError):
        return False


# -- inference --------------------------------------------------------------------------------


def active(cfg: PiConfig) -> Runtime:
    """The active release."""
    state = read_state(cfg)
    if not state["current"]:
        raise SyncRefused("no_model", "no model is active yet: run sync first")
    folder = Path(cfg.state_dir) / "models" / state["current"]
    return Runtime(folder / "model.onnx", (folder / "manifest.json").read_bytes())


def decide(cfg: PiConfig, runtime: Runtime, raw: np.ndarray, session: str | None = None) -> list[dict]:
    """The model's decisions on a batch in order, with the guard's verdict when the device has
    one: where the guard fires (a camera fault: fog, a covered lens) the decision is not the
    model's but the state the valve already had, held, with the reason. The valve's state
    carries over between calls (``<state_dir>/valve.json``)."""
    decisions = runtime.decide(raw, session)
    guard_cfg = cfg.guard_config()
    if guard_cfg is None:
        record(cfg, decisions)
        return decisions
    guard = active(guard_cfg)
    path = Path(cfg.state_dir) / "valve.json"
    held = json.loads(path.read_text())["open"] if path.exists() else False  # closed until a decision
    for d, g in zip(decisions, guard.decide(raw), strict=True):
        d["guard"] = {"score": g["score"], "threshold": g["threshold"], "fired": g["decision"], "version": g["version"]}
        if g["decision"]:
            d["model_decision"], d["decision"], d["held"] = d["decision"], held, True
            d["reason"] = (
                f"{guard.manifest.registered_model} fired (score {g['score']:.4g} >= {g['threshold']:.4g}): "
                "the frame cannot be trusted, the valve keeps its state"
            )
        else:
            held = d["decision"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".valve.json.tmp")
    tmp.write_text(json.dumps({"open": held}))
    os.replace(tmp, path)
    record(cfg, [d for d in decisions if not d.get("held")])
    return decisions


# -- telemetry --------------------------------------------------------------------------------

HIST_EDGES = [i / 10 for i in range(21)]  # score / threshold in [0, 2] by 0.1, and one bin above


def record(cfg: PiConfig, decisions: list[dict]) -> None:
    """Count the model's own decisions per version, for the heartbeat: how many, how many
    positive, and a histogram of score / threshold. The platform compares a canary's figures
    with the control group's to halt a release that behaves unlike the one before it."""
    if not decisions:
        return
    path = Path(cfg.state_dir) / "telemetry.json"
    counts = json.loads(path.read_text()) if path.exists() else {}
    for d in decisions:
        entry = counts.setdefault(str(d["version"]), {"decisions": 0, "positive": 0, "hist": [0] * len(HIST_EDGES)})
        ratio = d["score"] / d["threshold"] if d["threshold"] else 0.0
        bin_ = (
            len(HIST_EDGES) - 1
            if ratio >= HIST_EDGES[-1]
            else max(0, int(np.searchsorted(HIST_EDGES, ratio, "right")) - 1)
        )
        entry["decisions"] += 1
        entry["positive"] += int(bool(d["decision"]))
        entry["hist"][bin_] += 1
    tmp = path.with_name(".telemetry.json.tmp")
    tmp.write_text(json.dumps(counts))
    os.replace(tmp, path)


def telemetry(cfg: PiConfig) -> dict:
    path = Path(cfg.state_dir) / "telemetry.json"
    return json.loads(path.read_text()) if path.exists() else {}

"""Pull, verify, activate and run a model release on a device.

State directory layout (``state_dir``):

    models/<version>/model.onnx, manifest.json     every accepted release
    state.json                                     current / previous version, channel sequence, last sync
    staging/                                       downloads in progress (resumable ``.part`` files)

``sync`` accepts a release only if the pointer's signature verifies with the provisioned public
key, it is signed for this device's pipeline, model and channel, the pointer is not expired, its sequence does not go backwards, the manifest's signature
and sha256 match, the model's size and sha256 match the manifest, and a smoke inference
reproduces the manifest's expected output. On any failure the current model stays active.
The manifest is read with its type (``manifest.parse``); ``runtime`` runs the release.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from autosink_pi.manifest import Manifest, ManifestError, parse
from autosink_pi.runtime import InputError, Runtime
from autosink_pi.verify import SignatureError, load_public_key, sha256_file, verify, verify_pointer


class SyncRefused(RuntimeError):
    """The offered release was refused; ``reason`` is machine-readable. The current model stays."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class PiConfig:
    device_id: str
    channel_url: str  # the fleet root: http(s)://host/v1/fleet or a local folder
    public_key: str  # PEM path, from provisioning (never taken from the channel)
    state_dir: str
    pipeline: str = "sink"
    model: str = "classifier"
    channel: str = "stable"
    retries: int = 4
    timeout_s: float = 30.0
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
    status: str  # "updated", "up_to_date", "not_in_rollout"
    version: str | None
    previous: str | None = None
    detail: dict = field(default_factory=dict)


# -- transport --------------------------------------------------------------------------------


def _url(cfg: PiConfig, rel: str) -> str:
    return cfg.channel_url.rstrip("/") + "/" + rel


def _is_http(cfg: PiConfig) -> bool:
    return cfg.channel_url.startswith(("http://", "https://"))


def fetch(cfg: PiConfig, rel: str, max_bytes: int = 4 * 2**20) -> bytes:
    """A small file (pointer, manifest, signature) from the channel."""
    if not _is_http(cfg):
        path = Path(cfg.channel_url) / rel
        if not path.exists():
            raise SyncRefused("not_published", f"{path} does not exist")
        return path.read_bytes()
    try:
        with urllib.request.urlopen(_url(cfg, rel), timeout=cfg.timeout_s) as r:
            data = r.read(max_bytes + 1)
    except urllib.error.HTTPError as e:
        raise SyncRefused("not_published" if e.code == 404 else "http_error", f"{rel}: HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        raise SyncRefused("unreachable", f"{rel}: {e}") from None
    if len(data) > max_bytes:
        raise SyncRefused("too_large", f"{rel} is larger than {max_bytes} bytes")
    return data


def download(cfg: PiConfig, rel: str, dest: Path, size: int, sha256: str) -> Path:
    """Download with retries, resuming a partial file (HTTP Range); check size and sha256. No
    more than ``size`` bytes are ever written: a server that sends more is refused at once."""
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for attempt in range(cfg.retries + 1):
        try:
            have = part.stat().st_size if part.exists() else 0
            if have > size:  # cannot be a prefix of the right file
                part.unlink()
                have = 0
            if have < size:
                if _is_http(cfg):
                    request = urllib.request.Request(
                        _url(cfg, rel), headers={"Range": f"bytes={have}-"} if have else {}
                    )
                    with (
                        urllib.request.urlopen(request, timeout=cfg.timeout_s) as r,
                        open(part, "ab" if have else "wb") as out,
                    ):
                        if have and r.status != 206:  # the server ignored the range: start over
                            out.truncate(0)
                            have = 0
                        remaining = size - have  # never more than the manifest declares
                        while remaining > 0 and (chunk := r.read(min(1 << 16, remaining))):
                            out.write(chunk)
                            remaining -= len(chunk)
                        if remaining == 0 and r.read(1):
                            out.close()
                            part.unlink()
                            raise SyncRefused(
                                "too_large", f"{rel}: the server sent more than the declared {size} bytes"
                            )
                else:
                    shutil.copyfile(Path(cfg.channel_url) / rel, part)
            got = part.stat().st_size
            if got != size:
                last_error = f"{rel}: got {got} of {size} bytes"
                continue  # resume on the next attempt
            digest = sha256_file(part)
            if digest != sha256:
                part.unlink()
                raise SyncRefused("checksum_mismatch", f"{rel}: sha256 {digest[:12]}... != manifest {sha256[:12]}...")
            os.replace(part, dest)
            return dest
        except (urllib.error.URLError, OSError) as e:
            last_error = f"{rel}: {e}"
        time.sleep(min(2.0, 0.1 * 2**attempt))
    raise SyncRefused("download_failed", f"{last_error} after {cfg.retries + 1} attempts")


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


# -- sync -------------------------------------------------------------------------------------


def sync(cfg: PiConfig, now: datetime | None = None) -> SyncResult:
    """Fetch the channel pointer and, if it offers a newer release for this device, activate it;
    then the guard's, when the device has one (its outcome in ``detail["guard"]``; a refused
    guard release leaves the guard it has, as a refused model release leaves the model)."""
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
    public = load_public_key(cfg.public_key)
    state = read_state(cfg)
    try:
        result = _sync(cfg, public, state, now)
        state["last_error"] = None
        return result
    except SyncRefused as e:
        state["last_error"] = {"reason": e.reason, "detail": e.detail, "at": now.isoformat()}
        raise
    finally:
        state["last_sync"] = now.isoformat()
        _write_state(cfg, state)


def _sync(cfg: PiConfig, public, state: dict, now: datetime) -> SyncResult:
    base = f"{cfg.pipeline}/{cfg.model}"
    try:
        pointer = verify_pointer(public, json.loads(fetch(cfg, f"{base}/channels/{cfg.channel}.json")))
    except SignatureError as e:
        raise SyncRefused("bad_signature", f"channel pointer: {e}") from None
    except json.JSONDecodeError as e:
        raise SyncRefused("bad_pointer", f"channel pointer is not JSON: {e}") from None
    target = (pointer.get("pipeline"), pointer.get("model"), pointer.get("channel"))
    if target != (cfg.pipeline, cfg.model, cfg.channel):
        raise SyncRefused(
            "wrong_target", f"the pointer at {base}/channels/{cfg.channel} is signed for {'/'.join(map(str, target))}"
        )
    if datetime.fromisoformat(pointer["expires_at"]) <= now:
        raise SyncRefused("expired", f"pointer expired at {pointer['expires_at']}")
    if pointer["sequence"] < state["sequence"]:
        raise SyncRefused("replayed_pointer", f"sequence {pointer['sequence']} < {state['sequence']} already seen")
    version = str(pointer["version"])
    if version == state["current"] and pointer["sequence"] == state["sequence"]:
        return SyncResult("up_to_date", version, state["previous"])
    if not in_rollout(cfg.device_id, cfg, int(pointer["rollout_percent"])):
        state["sequence"] = pointer["sequence"]
        return SyncResult("not_in_rollout", state["current"], state["previous"], {"offered": version})
    if version == state["current"]:  # re-pointed at what we run (e.g. a rollout change)
        state["sequence"] = pointer["sequence"]
        return SyncResult("up_to_date", version, state["previous"])

    vbase = f"{base}/versions/{version}"
    manifest_bytes = fetch(cfg, f"{vbase}/manifest.json")
    try:
        verify(public, manifest_bytes, fetch(cfg, f"{vbase}/manifest.json.sig").decode().strip())
    except SignatureError as e:
        raise SyncRefused("bad_signature", f"manifest of v{version}: {e}") from None
    if hashlib.sha256(manifest_bytes).hexdigest() != pointer["manifest_sha256"]:
        raise SyncRefused("checksum_mismatch", f"manifest of v{version} does not match the pointer's sha256")
    try:
        manifest = parse(manifest_bytes)
    except ManifestError as e:
        raise SyncRefused("bad_manifest", str(e)) from None
    if (manifest.pipeline, manifest.model, manifest.mlflow_version) != (cfg.pipeline, cfg.model, version):
        raise SyncRefused(
            "wrong_target",
            f"the manifest at {vbase} is {manifest.pipeline}.{manifest.model} v{manifest.mlflow_version}",
        )

    staging = Path(cfg.state_dir) / "staging" / version
    onnx = manifest.onnx
    model = download(cfg, f"{vbase}/{onnx.file}", staging / "model.onnx", onnx.size, onnx.sha256)
    smoke_spec = manifest.smoke_test
    smoke_data = fetch(cfg, f"{vbase}/{smoke_spec.file}", max_bytes=64 * 2**20)
    if hashlib.sha256(smoke_data).hexdigest() != smoke_spec.sha256:
        raise SyncRefused("checksum_mismatch", "smoke inputs do not match the manifest")
    smoke_test(model, manifest, np.load(io.BytesIO(smoke_data)))

    final = Path(cfg.state_dir) / "models" / version
    shutil.rmtree(final, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    (staging / "manifest.json").write_bytes(manifest_bytes)
    os.replace(staging, final)
    shutil.rmtree(staging.parent, ignore_errors=True)  # partial downloads of other versions are stale now
    previous = state["current"]
    state.update(current=version, previous=previous, sequence=pointer["sequence"], activated_at=now.isoformat())
    return SyncResult("updated", version, previous)


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
    """Activate the previous model again."""
    state = read_state(cfg)
    if not state.get("previous"):
        raise SyncRefused("no_previous", "there is no previous model to roll back to")
    state["current"], state["previous"] = state["previous"], state["current"]
    _write_state(cfg, state)
    return state["current"]


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
    return decisions

"""The device client against a real TUF channel (python-tuf on both sides): happy path over HTTP,
then every way a release can be tampered with or broken in transit. The device keeps its model
and its trusted metadata each time. The threat list and its tests are in docs/fleet.md."""

import dataclasses
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from autosink_pi.client import PiConfig, SyncRefused, active, in_rollout, read_state, rollback, sync
from autosink_pi.manifest import ImageInput, Manifest
from PIL import Image

from autosink_platform.models.classifier import ClassifierConfig, ValveClassifier
from autosink_platform.release.channel import FleetChannel, sha256_file
from autosink_platform.release.onnx_export import INPUT_NAME, OnnxScorer, export_onnx
from autosink_platform.release.signing import generate_keypair, load_private_key

OUTPUTS = ["logit", "valve_open_prob"]


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    torch.manual_seed(0)
    module = ValveClassifier(ClassifierConfig()).eval()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    return export_onnx(module, torch.rand(2, 3, 64, 64), path, OUTPUTS)


def publish(
    channel: FleetChannel,
    version: str,
    onnx: Path,
    tmp: Path,
    v1: bool = False,
    model: str = "classifier",
    threshold: float = 0.5,
) -> dict:
    """A release folder as the release stage writes it (manifest with smoke test), then signed;
    ``v1``: the manifest as the sink's first releases wrote it (schema version 1)."""
    smoke = (np.random.default_rng(int(version)).random((3, 64, 64, 3)) * 255).astype(np.uint8)
    src = tmp / f"src{model}{version}"
    src.mkdir()
    np.save(src / "smoke_frames.npy", smoke)
    shutil.copyfile(onnx, src / "model.onnx")
    expected = {k: v.tolist() for k, v in OnnxScorer(src / "model.onnx")(smoke).items()}
    manifest = {
        "pipeline": "sink",
        "model": model,
        "registered_model": f"sink.{model}",
        "mlflow_version": version,
        "onnx": {"file": "model.onnx", "sha256": sha256_file(onnx), "size": onnx.stat().st_size},
        "input": ImageInput(name=INPUT_NAME, shape=["batch", 3, 64, 64], color="RGB", size=(64, 64)).model_dump(),
        "outputs": OUTPUTS,
        "decision_output": "valve_open_prob",
        "threshold": {"policy": "best_f1", "threshold": threshold},
        "smoke_test": {
            "file": "smoke_frames.npy",
            "sha256": sha256_file(src / "smoke_frames.npy"),
            "expected": expected,
            "atol": 1e-4,
        },
    }
    manifest = Manifest.model_validate(manifest).model_dump(mode="json")  # the type the platform writes with
    if v1:
        manifest |= {
            "schema_version": 1,
            "input": {"name": INPUT_NAME, "preprocessing": {"resize": [64, 64], "resample": "bilinear"}},
        }
    (src / "manifest.json").write_text(json.dumps(manifest))
    channel.put_version(
        "sink", model, version, {f: src / f for f in ("model.onnx", "manifest.json", "smoke_frames.npy")}
    )
    return manifest


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the fleet folder; ``faults`` lets a test make the server misbehave."""

    faults: dict = {}

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        path = Path(self.directory) / self.path.lstrip("/")
        data = path.read_bytes() if path.is_file() else None
        if data is None:
            self.send_error(404)
            return
        if path.name == "model.onnx" and self.faults.get("die_once"):
            self.faults["die_once"] = False  # send half, then drop the connection
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.connection.close()
            return
        if path.name == "model.onnx" and self.faults.get("endless"):  # no length, and no end
            self.send_response(200)
            self.end_headers()
            try:
                self.wfile.write(data)
                for _ in range(2048):  # 128 MiB more, unless the client hangs up first
                    self.wfile.write(b"\0" * (1 << 16))
                    self.faults["sent_past_end"] = self.faults.get("sent_past_end", 0) + (1 << 16)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        if path.name == "model.onnx" and self.faults.get("drip"):  # a byte at a time, each within any timeout
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                for i in range(len(data)):
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                    time.sleep(0.05)
                    if not self.faults.get("drip"):
                        return
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        if path.name == "model.onnx" and self.faults.get("truncate"):
            data = data[:-100]
        start = 0
        if (rng := self.headers.get("Range")) and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


def make_channel(tmp_path: Path, root: Path | str | None = None) -> FleetChannel:
    """A channel with its own online and root keys (made once per ``tmp_path``)."""
    keys = tmp_path / "keys"
    if not (keys / "signing.pem").exists():
        generate_keypair(keys / "signing.pem")
        generate_keypair(keys / "root.pem")
    return FleetChannel(
        root or tmp_path / "fleet",
        load_private_key(keys / "signing.pem"),
        root_key=lambda: load_private_key(keys / "root.pem"),
    )


def provision(channel: FleetChannel, tmp_path: Path) -> Path:
    """The trusted root a device is provisioned with (a copy: it never reads it from the channel)."""
    root = tmp_path / "provisioned-root.json"
    if not root.exists():
        root.write_bytes((channel.root / "metadata" / "root.json").read_bytes())
    return root


@pytest.fixture
def world(tmp_path, onnx_model):
    channel = make_channel(tmp_path)
    publish(channel, "1", onnx_model, tmp_path)
    channel.set_pointer("sink", "classifier", "stable", "1")
    handler = type("H", (_Handler,), {"faults": {}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(channel.root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    cfg = PiConfig(
        device_id="pi-001",
        channel_url=f"http://127.0.0.1:{server.server_address[1]}",
        trusted_root=str(provision(channel, tmp_path)),
        state_dir=str(tmp_path / "device"),
        retries=2,
    )
    yield {"cfg": cfg, "channel": channel, "faults": handler.faults, "tmp": tmp_path, "onnx": onnx_model}
    server.shutdown()


def trusted(cfg) -> dict[str, bytes]:
    """The device's trusted metadata, file by file."""
    folder = Path(cfg.state_dir) / "tuf"
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.json"))}


def _refused(cfg, reason, **kw):
    with pytest.raises(SyncRefused) as e:
        sync(cfg, **kw)
    assert e.value.reason == reason, e.value
    return e.value


def test_sync_verifies_activates_and_infers(world, tmp_path):
    cfg = world["cfg"]
    result = sync(cfg)
    assert (result.status, result.version, result.previous) == ("updated", "1", None)
    assert sync(cfg).status == "up_to_date"
    frame = tmp_path / "frame.png"
    Image.fromarray((np.random.default_rng(0).random((80, 80, 3)) * 255).astype(np.uint8)).save(frame)
    runtime = active(cfg)
    (decision,) = runtime.decide(runtime.read_images([frame]))
    resized = np.asarray(Image.open(frame).convert("RGB").resize((64, 64), Image.BILINEAR))
    prob = OnnxScorer(world["onnx"])(resized[None])["valve_open_prob"][0]
    assert decision["score"] == pytest.approx(prob, abs=1e-6) and decision["decision"] == (prob >= 0.5)


def test_tampered_model_is_refused_and_the_device_keeps_its_model(world):
    cfg, channel = world["cfg"], world["channel"]
    sync(cfg)
    publish(channel, "2", world["onnx"], world["tmp"])
    model = channel.version_dir("sink", "classifier", "2") / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    model.write_bytes(bytes(data))
    channel.set_pointer("sink", "classifier", "stable", "2")
    _refused(cfg, "checksum_mismatch")
    assert read_state(cfg)["current"] == "1" and read_state(cfg)["last_error"]["reason"] == "checksum_mismatch"


def _forge(channel: FleetChannel, key, *, version: str | None = None, jump: int = 1) -> None:
    """What an attacker who can write to the channel but holds only ``key`` can publish: targets
    that point the classifier at ``version`` (or a flipped byte, when None), a snapshot and a
    timestamp, each signed with ``key``, ``jump`` versions ahead."""
    from securesystemslib.signer import CryptoSigner
    from tuf.api.metadata import Metadata, MetaFile, Snapshot, Targets, Timestamp

    meta = channel.root / "metadata"
    n = max(int(p.name.split(".")[0]) for p in meta.glob("*.targets.json"))
    if version is None:  # a flipped byte in the newest signed targets, no re-signing
        raw = bytearray((meta / f"{n}.targets.json").read_bytes())
        raw[raw.index(b'"expires"') + 13] ^= 0x01
        (meta / f"{n}.targets.json").write_bytes(bytes(raw))
        return
    targets = Metadata[Targets].from_bytes((meta / f"{n}.targets.json").read_bytes())
    path = "sink/classifier/channels/stable.json"
    targets.signed.targets[path].unrecognized_fields["custom"]["pointer"]["version"] = version
    targets.signed.version = n + jump
    signer = CryptoSigner(key)
    targets.sign(signer)
    (meta / f"{n + jump}.targets.json").write_bytes(targets.to_bytes())
    snapshot = Metadata(Snapshot(version=n + jump, meta={"targets.json": MetaFile(version=n + jump)}))
    snapshot.signed.expires = targets.signed.expires
    snapshot.sign(signer)
    (meta / f"{n + jump}.snapshot.json").write_bytes(snapshot.to_bytes())
    old = Metadata[Timestamp].from_bytes((meta / "timestamp.json").read_bytes()).signed
    timestamp = Metadata(Timestamp(old.version + jump, expires=old.expires, snapshot_meta=MetaFile(version=n + jump)))
    timestamp.sign(signer)
    (meta / "timestamp.json").write_bytes(timestamp.to_bytes())


def test_metadata_signed_with_another_key_or_altered_is_refused(world):
    """Arbitrary software: a channel rewritten by someone without the online key (wrong key), or
    one flipped byte in signed metadata, is refused; the device's model and trusted metadata stay."""
    cfg, channel = world["cfg"], world["channel"]
    sync(cfg)
    before = trusted(cfg)
    publish(channel, "2", world["onnx"], world["tmp"])
    other, _ = generate_keypair(world["tmp"] / "attacker.pem")
    _forge(channel, load_private_key(other), version="2")
    refused = _refused(cfg, "bad_signature")
    assert "timestamp" in refused.detail
    assert read_state(cfg)["current"] == "1" and trusted(cfg) == before

    fresh = make_channel(world["tmp"] / "second")  # a clean channel, then a byte flipped in its targets
    publish(fresh, "1", world["onnx"], world["tmp"] / "second")
    fresh.set_pointer("sink", "classifier", "stable", "1")
    device = dataclasses.replace(
        cfg,
        channel_url=str(fresh.root),
        trusted_root=str(provision(fresh, world["tmp"] / "second")),
        state_dir=str(world["tmp"] / "device2"),
    )
    _forge(fresh, None)
    _refused(device, "bad_signature")
    assert read_state(device)["current"] is None and not (Path(device.state_dir) / "tuf" / "targets.json").exists()


def test_rolled_back_and_frozen_metadata_are_refused(world):
    """Rollback: a mirror serving the older (validly signed) timestamp is refused. Freeze: a
    channel that stops renewing its timestamp is refused once it expires (7 days), not followed
    for ever. The device keeps its model and its newer trusted metadata."""
    cfg, channel = world["cfg"], world["channel"]
    timestamp = channel.root / "metadata" / "timestamp.json"
    old = timestamp.read_bytes()
    sync(cfg)
    publish(channel, "2", world["onnx"], world["tmp"])
    channel.set_pointer("sink", "classifier", "stable", "2")
    assert sync(cfg).version == "2"
    before, current = trusted(cfg), timestamp.read_bytes()
    timestamp.write_bytes(old)  # an attacker (or a stale mirror) serves the version-1 state again
    refused = _refused(cfg, "rollback")
    assert "timestamp" in refused.detail and trusted(cfg) == before
    timestamp.write_bytes(current)  # the mirror catches up, and the platform renews on day 3
    channel.refresh_all(now=datetime.now(UTC) + timedelta(days=3))
    assert sync(cfg).status == "up_to_date"
    frozen = trusted(cfg)
    _refused(cfg, "expired", now=datetime.now(UTC) + timedelta(days=11))  # never renewed since day 3
    assert read_state(cfg)["current"] == "2" and trusted(cfg) == frozen


def test_truncated_download_is_refused_and_a_dropped_connection_resumes(world):
    cfg, faults = world["cfg"], world["faults"]
    faults["truncate"] = True
    _refused(cfg, "checksum_mismatch")  # shorter than the signed length
    assert read_state(cfg)["current"] is None
    faults["truncate"] = False
    faults["die_once"] = True  # the server dies halfway through the model; the fetcher resumes (Range)
    assert sync(cfg).status == "updated"
    assert faults["die_once"] is False


def test_a_server_that_drips_is_cut_for_slow_retrieval(world):
    """Slow retrieval: a server that sends a byte at a time (each within the socket timeout) is
    cut once the transfer falls under the device's minimum rate; the device keeps its state."""
    cfg, faults = world["cfg"], world["faults"]
    faults["drip"] = True
    slow = dataclasses.replace(cfg, timeout_s=1.0, min_bytes_per_s=4096.0)
    started = datetime.now(UTC)
    refused = _refused(slow, "slow_retrieval")
    assert "under 4096 B/s" in refused.detail
    assert (datetime.now(UTC) - started).total_seconds() < 10
    assert read_state(cfg)["current"] is None and not list(Path(cfg.state_dir).rglob("model.onnx"))
    faults["drip"] = False
    assert sync(cfg).status == "updated"


_CANARY_IN_A_NEW_PROCESS = """
import sys, types
from autosink_pi.client import in_rollout
cfg = types.SimpleNamespace(pipeline=sys.argv[1], model=sys.argv[2])
print(" ".join(d for d in sys.argv[3:] if in_rollout(d, cfg, 25)))
"""


def test_rollout_and_rollback(world):
    cfg, channel = world["cfg"], world["channel"]
    sync(cfg)
    publish(channel, "2", world["onnx"], world["tmp"])
    pointer = channel.set_pointer("sink", "classifier", "stable", "2", rollout_percent=0)
    assert (pointer["version"], pointer["fallback"]) == ("2", "1")  # the canary is empty: everyone on v1
    assert (sync(cfg).status, read_state(cfg)["current"]) == ("up_to_date", "1")
    channel.set_pointer("sink", "classifier", "stable", "2", rollout_percent=100)
    assert sync(cfg).version == "2"
    # A device-side rollback sticks: the next timer sync does not re-adopt the version it left.
    assert rollback(cfg) == "1" and read_state(cfg)["previous"] == "2"
    result = sync(cfg)
    assert (result.status, result.version, result.detail) == ("pinned", "1", {"offered": "2", "rolled_back_from": "2"})
    publish(channel, "3", world["onnx"], world["tmp"])  # only a newer version than the one it left unpins it
    channel.set_pointer("sink", "classifier", "stable", "3")
    assert sync(cfg).version == "3" and read_state(cfg)["pinned_from"] is None
    fleet = [f"pi-{i:04d}" for i in range(4000)]
    canary = [d for d in fleet if in_rollout(d, cfg, 25)]
    assert 0.22 < len(canary) / len(fleet) < 0.28
    # A canary that grows keeps its devices, and a device's bucket is the same in every process
    # (Python's own hash() is salted per process, so a restart would reshuffle the canary).
    assert {d for d in fleet if in_rollout(d, cfg, 10)} < set(canary)
    again = subprocess.run(
        [sys.executable, "-c", _CANARY_IN_A_NEW_PROCESS, cfg.pipeline, cfg.model, *fleet],
        env=os.environ | {"PYTHONHASHSEED": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert again.stdout.split() == canary


def test_racing_promotions_get_distinct_sequences(world):
    channel = world["channel"]
    publish(channel, "2", world["onnx"], world["tmp"])
    results = []

    def promote(version, rollout):
        results.append(channel.set_pointer("sink", "classifier", "stable", version, rollout_percent=rollout))

    threads = [threading.Thread(target=promote, args=(str(1 + i % 2), 50 + i)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sequences = sorted(r["sequence"] for r in results)
    assert sequences == list(range(2, 14))  # no two promotions share a sequence
    final = channel.read_pointer("sink", "classifier", "stable")  # verifies: never half-written
    assert final["sequence"] == 13


def test_a_version_1_manifest_still_reads_as_the_image_input_it_described(world):
    cfg, channel = world["cfg"], world["channel"]
    sync(cfg)
    publish(channel, "2", world["onnx"], world["tmp"], v1=True)
    channel.set_pointer("sink", "classifier", "stable", "2")
    assert sync(cfg).version == "2"
    runtime = active(cfg)
    assert runtime.input == ImageInput(name=INPUT_NAME, shape=["batch", 3, 64, 64], color="RGB", size=(64, 64))


def _republish_as_3(channel: FleetChannel, manifest: dict, src: Path) -> None:
    """Version 2's model and smoke inputs, signed and published as version 3 with ``manifest``,
    and the stable channel pointed at it."""
    src.mkdir()
    (src / "manifest.json").write_text(json.dumps(manifest | {"mlflow_version": "3"}))
    for f in ("model.onnx", "smoke_frames.npy"):
        shutil.copyfile(channel.version_dir("sink", "classifier", "2") / f, src / f)
    channel.put_version(
        "sink", "classifier", "3", {f: src / f for f in ("model.onnx", "manifest.json", "smoke_frames.npy")}
    )
    channel.set_pointer("sink", "classifier", "stable", "3")


def test_a_manifest_a_device_cannot_read_is_refused_and_names_the_field(world):
    cfg, channel = world["cfg"], world["channel"]
    sync(cfg)
    good = publish(channel, "2", world["onnx"], world["tmp"])
    bad = good | {
        "input": {"kind": "image", "name": INPUT_NAME, "shape": ["batch", 3, 64, 64], "color": "CMYK", "size": [64, 64]}
    }
    _republish_as_3(channel, bad, world["tmp"] / "src-bad")
    refused = _refused(cfg, "bad_manifest")
    assert "input.image.color" in refused.detail
    assert read_state(cfg)["current"] == "1"


def test_a_release_whose_smoke_outputs_differ_on_the_device_is_refused(world):
    cfg, channel = world["cfg"], world["channel"]
    sync(cfg)
    good = publish(channel, "2", world["onnx"], world["tmp"])
    expected = {k: (np.asarray(v) + 0.01).tolist() for k, v in good["smoke_test"]["expected"].items()}
    _republish_as_3(
        channel, good | {"smoke_test": good["smoke_test"] | {"expected": expected}}, world["tmp"] / "src-drift"
    )
    refused = _refused(cfg, "smoke_test_failed")
    assert "differs from the manifest by 0.01" in refused.detail
    assert read_state(cfg)["current"] == "1"


def test_the_device_client_needs_no_torch_dagster_or_mlflow():
    import subprocess
    import sys
    import tomllib

    deps = tomllib.loads((Path(__file__).parents[1] / "pi_client" / "pyproject.toml").read_text())["project"]
    assert not [d for d in deps["dependencies"] if d.split(">")[0].split("=")[0] in ("torch", "dagster", "mlflow")]
    probe = "import sys, autosink_pi.cli, autosink_pi.runtime; print(sorted(m for m in ('torch', 'dagster', 'mlflow') if m in sys.modules))"
    assert (
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )


def test_bad_input_on_the_device_is_named_and_the_model_stays(world, tmp_path):
    import subprocess
    import sys

    cfg = world["cfg"]
    sync(cfg)
    config = tmp_path / "pi.json"
    config.write_text(
        json.dumps({k: getattr(cfg, k) for k in ("device_id", "channel_url", "trusted_root", "state_dir")})
    )
    pi = [str(Path(sys.executable).with_name("autosink-pi")), "--config", str(config)]
    not_an_image = tmp_path / "frame.png"
    not_an_image.write_text("not a png")
    for args, says in (
        (["infer", str(not_an_image)], "not an image"),
        (["infer"], "give image files or --csv"),
    ):
        done = subprocess.run(pi + args, capture_output=True, text=True)
        assert done.returncode == 3 and says in json.loads(done.stderr)["detail"], done.stderr
    assert read_state(cfg)["current"] == "1"


def test_rows_and_images_that_do_not_fit_the_manifest_are_named():
    from autosink_pi.manifest import RowsInput
    from autosink_pi.runtime import InputError, prepare, read_rows

    rows = RowsInput(shape=["batch", 2], columns=["a", "b"])
    assert [r.tolist() for r in read_rows(rows, ["b,x,a", "2,9,1", "", "4,9,3"])] == [[1.0, 2.0], [3.0, 4.0]]
    assert [r.tolist() for r in read_rows(rows, ["1,2"])] == [[1.0, 2.0]]  # no header: the manifest's order
    for lines, says in (
        (["1,2,3"], "line 1: 3 values, expected 2 (a, b)"),
        (["a,b", "1,nan"], "line 2: NaN or infinite value"),
        (["a,c", "1,2"], "the header lacks column(s) ['b']"),
        (["1,2", "1,x"], "line 2: could not convert"),
    ):
        with pytest.raises(InputError, match=re.escape(says)):
            list(read_rows(rows, lines))
    image = ImageInput(shape=["batch", 1, 32, 32], color="L", size=(32, 32))
    with pytest.raises(InputError, match=r"L images \(N, H, W\) expected, got shape \(1, 28, 28, 3\)"):
        prepare(image, np.zeros((1, 28, 28, 3), np.uint8))
    with pytest.raises(InputError, match="whole numbers 0..255"):
        prepare(image, np.full((1, 28, 28), 0.5, np.float32))
    assert prepare(image, np.full((1, 28, 28), 255, np.uint8)).shape == (1, 1, 32, 32)


def test_where_the_guard_fires_the_device_holds_the_valve_and_says_why(world, tmp_path):
    """A device with the sink's guard syncs both releases; `autosink-pi infer` keeps the valve's
    state on a frame the guard rejects, and names the guard, instead of acting on the model."""
    import subprocess
    import sys

    cfg, channel = world["cfg"], world["channel"]
    rng = np.random.default_rng(3)
    frames = [tmp_path / f"f{i}.png" for i in range(6)]
    for f in frames:
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(f)
    raw = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in frames])
    # The guard here is any graph with a score: its threshold splits these frames in two.
    guard_scores = OnnxScorer(world["onnx"])(raw)["valve_open_prob"]
    threshold = float(np.median(guard_scores))
    publish(channel, "1", world["onnx"], world["tmp"], model="frame_guard", threshold=threshold)
    channel.set_pointer("sink", "frame_guard", "stable", "1")
    guarded = dataclasses.replace(cfg, guard="frame_guard")
    assert sync(guarded).detail["guard"] == {"status": "updated", "version": "1"}

    config = tmp_path / "pi.json"
    config.write_text(json.dumps(dataclasses.asdict(guarded)))
    pi = [str(Path(sys.executable).with_name("autosink-pi")), "--config", str(config), "infer"]
    done = subprocess.run(pi + [str(f) for f in frames], capture_output=True, text=True, check=True)
    decisions = [json.loads(line) for line in done.stdout.splitlines()]
    model = OnnxScorer(world["onnx"])(raw)["valve_open_prob"] >= 0.5
    state = False  # closed until the first trusted decision
    for d, fired, own in zip(decisions, guard_scores >= threshold, model, strict=True):
        assert d["guard"]["fired"] == bool(fired)
        if fired:
            assert d["held"] and d["decision"] == state and d["model_decision"] == bool(own)
            assert d["reason"].startswith("sink.frame_guard fired")
        else:
            assert "held" not in d and d["decision"] == bool(own)
            state = d["decision"]
    assert any(guard_scores >= threshold) and not all(guard_scores >= threshold)
    assert json.loads((Path(cfg.state_dir) / "valve.json").read_text()) == {"open": state}


class _Energy(torch.nn.Module):
    """A stand-in detector for windows: a window's mean squared value (its score)."""

    def forward(self, x):
        return ((x**2).flatten(1).mean(dim=1),)


def _windows_runtime(tmp_path, spec, threshold: dict):
    from autosink_pi.runtime import Runtime

    example = torch.rand(2, *[int(n) for n in spec.shape[1:]])
    onnx = export_onnx(_Energy(), example, tmp_path / "model.onnx", ["score"])
    manifest = {
        "pipeline": "valve",
        "model": "energy",
        "registered_model": "valve.energy",
        "mlflow_version": "1",
        "onnx": {"file": "model.onnx", "sha256": sha256_file(onnx), "size": onnx.stat().st_size},
        "input": spec.model_copy(update={"name": INPUT_NAME}).model_dump(),
        "outputs": ["score"],
        "decision_output": "score",
        "threshold": threshold,
        "smoke_test": {"file": "smoke_inputs.npy", "sha256": "0" * 64, "expected": {}},
    }
    return Runtime(onnx, Manifest.model_validate(manifest).model_dump(mode="json"))


def test_a_series_calibrates_on_its_start_up_and_streams_as_it_decides_in_one_batch(tmp_path):
    """The valve's kind of release: the session's first rows fit the scaler and the UCL (the
    platform's rule: 0.999-quantile of the start-up windows' scores x 4/3), then each window is
    decided at its last row; a row at a time gives what the whole series at once gives."""
    from autosink_pi.manifest import WindowsInput
    from autosink_pi.runtime import InputError, SeriesSession

    spec = WindowsInput(shape=["batch", 4, 2], columns=["a", "b"], window=4, startup_rows=10, standardise=True)
    runtime = _windows_runtime(
        tmp_path, spec, {"policy": "session_ucl", "threshold": 1.0, "params": {"q": 0.999, "factor": 4 / 3}}
    )
    rng = np.random.default_rng(0)
    series = rng.normal([5.0, -2.0], [2.0, 0.5], size=(30, 2))
    series[22:25] += 6.0  # a fault after the start-up

    z = (series - series[:10].mean(axis=0)) / series[:10].std(axis=0)
    energy = np.array([np.mean(z[s : s + 4].astype(np.float32) ** 2) for s in range(27)])
    ucl = np.quantile(energy[:7], 0.999) * 4 / 3  # the 7 windows inside the start-up
    batch = runtime.decide(series)
    assert [d["row"] for d in batch] == list(range(13, 30))  # from the first window after the start-up
    np.testing.assert_allclose([d["score"] for d in batch], energy[10:] / ucl, rtol=1e-5)
    assert any(d["decision"] for d in batch) and not all(d["decision"] for d in batch)

    stream = SeriesSession(runtime)
    streamed = [d for d in (stream.push(row) for row in series) if d is not None]
    assert streamed == batch  # the same floats, rows and decisions

    with pytest.raises(InputError, match="needs 10 start-up rows and a window of 4, got 12 rows"):
        runtime.decide(series[:12])
    with pytest.raises(InputError, match=re.escape("a series of rows of 2 values (a, b) expected, got shape (30, 3)")):
        runtime.decide(np.zeros((30, 3)))
    bad = SeriesSession(runtime)
    bad.push(series[0]), bad.push(series[1])
    with pytest.raises(InputError, match="row 3: NaN or infinite value"):
        bad.push(np.array([1.0, np.nan]))
    with pytest.raises(InputError, match="row 3: 3 values, expected 2"):
        bad.push(np.zeros(3))


def test_a_vibration_window_becomes_the_spectrogram_the_platform_trained_on(tmp_path):
    """The bearing's kind: every ``stride`` readings the last ``window`` become a log spectrogram
    (periodic Hann STFT, dB mapped to [0, 1]), computed with numpy on the device; it is the STFT
    torch computes, and streaming gives the batch's decisions."""
    from autosink_pi.manifest import Spectrogram, WindowsInput
    from autosink_pi.runtime import SeriesSession, scored_windows

    spectrogram = Spectrogram(segment=62, hop=31, frames=32, frequencies=32, db_range=(-80.0, 30.0))
    spec = WindowsInput(shape=["batch", 1, 32, 32], columns=["DE"], window=1024, stride=512, spectrogram=spectrogram)
    signal = np.random.default_rng(1).normal(0, 0.1, 4096) + np.sin(np.arange(4096) * 0.3)
    images = scored_windows(spec, signal[:, None])
    assert images.shape == (7, 1, 32, 32) and images.dtype == np.float32

    x = torch.from_numpy(np.stack([signal[s : s + 1024] for s in range(0, 3073, 512)]))
    stft = torch.stft(x, 62, 31, 62, torch.hann_window(62, dtype=torch.float64), center=False, return_complex=True)
    db = 20 * torch.log10(stft.abs()[:, :32, :32] + 1e-6)
    expected = ((db + 80) / 110).clamp(0, 1).transpose(1, 2)[:, None].numpy()
    np.testing.assert_allclose(images, expected, atol=1e-6)

    runtime = _windows_runtime(tmp_path, spec, {"policy": "best_f1", "threshold": 0.2})
    stream = SeriesSession(runtime)
    streamed = [d for d in (stream.push(row) for row in signal[:, None]) if d is not None]
    assert streamed == runtime.decide(signal[:, None]) and [d["row"] for d in streamed] == list(range(1023, 4096, 512))


def test_forty_days_without_a_promotion_every_device_of_fifty_still_syncs(home, onnx_model, tmp_path):
    """The timestamp lives 7 days, the snapshot 30. Forty simulated days pass with no promotion
    (the clock is injected, not waited for): the daily refresh the `fleet_channel_refresh_daily`
    schedule runs re-signs the timestamp each day and targets and snapshot when 20 days or fewer
    are left, and fifty devices syncing daily from the fleet API on loopback stay on their
    model, never refused. Without the refresh they would be refused on day 8 (freeze defence)."""
    from .conftest import fleet_api, platform_resources

    channel = platform_resources()["fleet"].get()  # the channel the fleet API serves
    start = datetime.now(UTC)
    publish(channel, "1", onnx_model, tmp_path)
    first = channel.set_pointer("sink", "classifier", "stable", "1", now=start)
    root = provision(channel, tmp_path)
    with fleet_api(home) as api:
        devices = [
            PiConfig(f"pi-{i:03d}", f"{api}/v1/fleet", str(root), str(tmp_path / f"pi-{i:03d}"), retries=1)
            for i in range(50)
        ]
        assert {sync(cfg, now=start).status for cfg in devices} == {"updated"}
        renewed: dict[str, list[int]] = {}
        for day in range(1, 41):
            now = start + timedelta(days=day, minutes=1)
            for r in channel.refresh_all(now=now):
                renewed.setdefault(r.role, []).append(day)
            assert {(r.status, r.version) for r in (sync(cfg, now=now) for cfg in devices)} == {("up_to_date", "1")}
        late = dataclasses.replace(devices[0], state_dir=str(tmp_path / "late"))
        with pytest.raises(SyncRefused, match="expired"):  # what day 48 looks like with no refresh since day 40
            sync(late, now=start + timedelta(days=48))
    assert renewed["timestamp"] == list(range(1, 41))
    assert renewed["targets"] == renewed["snapshot"] == [10, 20, 30, 40]
    assert channel.read_pointer("sink", "classifier", "stable") == first  # what it points at is unchanged
    assert {read_state(cfg)["sequence"] for cfg in devices} == {1}


def test_the_refresh_schedule_runs_from_the_start_and_renews_only_what_is_near_expiry(home, onnx_model, tmp_path):
    """The code location's daily schedule is on by default; its job re-signs metadata within
    its renewal window (here the timestamp, signed six days ago) and leaves fresh roles alone."""
    import dagster as dg

    from autosink_platform import definitions

    from .conftest import platform_resources

    schedule = definitions.defs.get_schedule_def("fleet_channel_refresh_daily")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING and schedule.cron_schedule == "0 3 * * *"
    channel = platform_resources()["fleet"].get()
    publish(channel, "1", onnx_model, tmp_path)
    channel.set_pointer("sink", "classifier", "stable", "1", now=datetime.now(UTC) - timedelta(days=1, hours=1))
    targets_before = channel.tuf.targets().version
    job = definitions.defs.resolve_job_def("fleet_channel_refresh")
    with dg.DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(instance=instance)
        assert result.success
        observed = [
            e.event_specific_data.asset_observation
            for e in result.all_events
            if e.event_type == dg.DagsterEventType.ASSET_OBSERVATION
        ]
    timestamp = channel.tuf.timestamp()
    assert timestamp.expires > datetime.now(UTC) + timedelta(days=6, hours=23)
    assert channel.tuf.targets().version == targets_before  # fresh: not re-signed
    assert [(o.asset_key.path, o.metadata["role"].value) for o in observed] == [
        (["sink", "fleet_channel"], "timestamp")
    ]


def test_a_server_that_never_stops_sending_is_cut_at_the_declared_size(world):
    """Endless data: a server that streams past the model's signed length is refused as soon as
    it does; nothing of it is installed and the device keeps its state."""
    cfg, channel, faults = world["cfg"], world["channel"], world["faults"]
    declared = json.loads((channel.version_dir("sink", "classifier", "1") / "manifest.json").read_text())["onnx"][
        "size"
    ]
    faults["endless"] = True
    refused = _refused(cfg, "too_large")
    assert f"exceeding the maximum allowed length of {declared}" in refused.detail
    assert not list(Path(cfg.state_dir).rglob("model.onnx"))  # nothing of the over-long download is kept
    assert faults.get("sent_past_end", 0) < 64 * 2**20  # the client hung up long before the server's end
    assert read_state(cfg)["current"] is None
    faults["endless"] = False
    assert sync(cfg).status == "updated"


def test_a_validly_signed_release_of_another_model_is_refused(world, onnx_model):
    """Wrong target: the frame guard's signed files served at the classifier's paths, and a
    classifier version whose signed folder holds the frame guard's release, are both refused;
    the device keeps its classifier and its sequence."""
    cfg, channel = world["cfg"], world["channel"]
    assert sync(cfg).version == "1"
    publish(channel, "7", onnx_model, world["tmp"], model="frame_guard")
    channel.set_pointer("sink", "frame_guard", "stable", "7")
    publish(channel, "2", onnx_model, world["tmp"])
    channel.set_pointer("sink", "classifier", "stable", "2")
    guard, mine = channel.version_dir("sink", "frame_guard", "7"), channel.version_dir("sink", "classifier", "2")
    for f in ("manifest.json", "model.onnx", "smoke_frames.npy"):  # a server mixing up its folders
        shutil.copyfile(guard / f, mine / f)
    refused = _refused(cfg, "too_large")  # the guard's manifest is longer than the signed one: cut there
    assert "sink/classifier/versions/2/manifest.json" in refused.detail
    assert (read_state(cfg)["current"], read_state(cfg)["sequence"]) == ("1", 1)

    # A classifier version (validly signed for it) whose folder holds another model's release.
    shutil.copytree(guard, world["tmp"] / "misfiled")
    channel.put_version("sink", "classifier", "8", {f.name: f for f in (world["tmp"] / "misfiled").iterdir()})
    channel.set_pointer("sink", "classifier", "stable", "8")
    refused = _refused(cfg, "wrong_target")
    assert "is sink.frame_guard v7" in refused.detail
    assert (read_state(cfg)["current"], read_state(cfg)["sequence"]) == ("1", 1)


def test_mixed_metadata_or_files_of_two_releases_are_refused(world):
    """Mix-and-match: targets metadata of an earlier snapshot served under the current one, and
    version 1's model served inside release 2, are both refused; the device stays on v1."""
    cfg, channel = world["cfg"], world["channel"]
    sync(cfg)
    before = trusted(cfg)
    publish(channel, "2", world["onnx"], world["tmp"])
    other = world["tmp"] / "other.onnx"  # another model: its bytes differ from v1's
    torch.manual_seed(1)
    export_onnx(ValveClassifier(ClassifierConfig()).eval(), torch.rand(2, 3, 64, 64), other, OUTPUTS)
    channel.set_pointer("sink", "classifier", "stable", "2")
    meta = channel.root / "metadata"
    n = channel.tuf.targets().version
    current = (meta / f"{n}.targets.json").read_bytes()
    (meta / f"{n}.targets.json").write_bytes((meta / f"{n - 1}.targets.json").read_bytes())
    refused = _refused(cfg, "mix_and_match")
    assert f"Expected targets v{n}, got v{n - 1}" in refused.detail
    assert read_state(cfg)["current"] == "1" and trusted(cfg)["targets.json"] == before["targets.json"]
    (meta / f"{n}.targets.json").write_bytes(current)
    shutil.copyfile(other, channel.version_dir("sink", "classifier", "2") / "model.onnx")
    _refused(cfg, "checksum_mismatch")
    assert read_state(cfg)["current"] == "1"


def test_after_the_online_key_is_rotated_devices_follow_root_and_refuse_the_old_key(world):
    """Key compromise recovery: the operator signs root v2 with the offline root key, naming a
    new online key; devices follow the root chain on their next sync, install what the new key
    signs, and refuse metadata the old (compromised) key signs from then on."""
    cfg, channel = world["cfg"], world["channel"]
    assert sync(cfg).version == "1"
    keys = world["tmp"] / "keys"
    old = load_private_key(keys / "signing.pem")
    new, _ = generate_keypair(keys / "signing-2.pem")
    channel.tuf.sign_root(load_private_key(keys / "root.pem"), load_private_key(new))
    publish(channel, "2", world["onnx"], world["tmp"])
    channel.set_pointer("sink", "classifier", "stable", "2")
    assert sync(cfg).version == "2"
    assert json.loads(trusted(cfg)["root.json"])["signed"]["version"] == 2
    before = trusted(cfg)
    _forge(channel, old, version="1")  # the thief of the old key tries to roll the fleet back
    refused = _refused(cfg, "bad_signature")
    assert "timestamp" in refused.detail
    assert read_state(cfg)["current"] == "2" and trusted(cfg) == before


_KILLED_AT = """
import json, os, shutil, sys
from autosink_pi.client import PiConfig, sync

cfg, kill_at, calls = PiConfig(**json.loads(sys.argv[1])), int(sys.argv[2]), [0]


def step(module, name):
    real = getattr(module, name)

    def killed_before(*args, **kwargs):
        calls[0] += 1
        if calls[0] == kill_at:
            os._exit(9)  # like the power going: no cleanup, no finally
        return real(*args, **kwargs)

    setattr(module, name, killed_before)


for module, name in ((os, "replace"), (os, "rename"), (shutil, "rmtree"), (shutil, "copyfileobj"), (shutil, "copyfile")):
    step(module, name)
sync(cfg)
print(calls[0])
"""


def test_a_device_killed_at_any_step_of_an_update_always_boots_a_whole_model(world):
    """Partial install: the client is killed (``os._exit``) before each file write, rename and
    removal of an update in turn. After every kill the device's state names a whole model that
    runs; the next sync completes the update."""
    from autosink_pi.client import _whole

    cfg, channel = world["cfg"], world["channel"]
    sync(cfg)
    publish(channel, "2", world["onnx"], world["tmp"])
    channel.set_pointer("sink", "classifier", "stable", "2")
    frames = (np.random.default_rng(0).random((2, 64, 64, 3)) * 255).astype(np.uint8)
    kills = 0
    for kill_at in range(1, 60):
        done = subprocess.run(
            [sys.executable, "-c", _KILLED_AT, json.dumps(dataclasses.asdict(cfg)), str(kill_at)],
            capture_output=True,
            text=True,
        )
        state = read_state(cfg)
        assert state["current"] in ("1", "2") and _whole(Path(cfg.state_dir) / "models" / state["current"])
        assert len(active(cfg).decide(frames)) == 2  # boots and decides
        if done.returncode == 0:
            break
        assert done.returncode == 9, done.stderr
        kills += 1
        if state["current"] == "2":
            break  # installed before the kill: every later step is clean-up
    assert kills >= 5  # every write and rename of the update was a kill point
    sync(cfg)
    assert read_state(cfg)["current"] == "2"


def test_a_fast_forward_by_a_stolen_key_is_undone_by_rotating_it(world):
    """Fast-forward: a thief of the online key makes the device trust metadata versions far
    ahead of the channel's (so it would refuse every genuine update as a rollback). Rotating
    the key through root recovers: the device drops metadata the new root no longer vouches for
    and installs the next genuine release."""
    cfg, channel = world["cfg"], world["channel"]
    assert sync(cfg).version == "1"
    keys, meta = world["tmp"] / "keys", channel.root / "metadata"
    genuine = {p.name: p.read_bytes() for p in meta.glob("*.json")}
    _forge(channel, load_private_key(keys / "signing.pem"), version="1", jump=1000)
    assert sync(cfg).status == "up_to_date"  # the stolen key is still valid: the device follows it
    assert json.loads(trusted(cfg)["timestamp.json"])["signed"]["version"] > 1000
    for p in meta.glob("*.json"):  # the operator restores the channel ...
        if p.name not in genuine:
            p.unlink()
    for name, data in genuine.items():
        (meta / name).write_bytes(data)
    publish(channel, "2", world["onnx"], world["tmp"])
    channel.set_pointer("sink", "classifier", "stable", "2")
    _refused(cfg, "rollback")  # ... but the device now trusts versions the channel cannot reach
    new, _ = generate_keypair(keys / "signing-2.pem")  # ... so rotates the stolen key through root
    channel.tuf.sign_root(load_private_key(keys / "root.pem"), load_private_key(new))
    assert sync(cfg).version == "2"
    assert json.loads(trusted(cfg)["timestamp.json"])["signed"]["version"] < 1000


def test_devices_follow_a_rotated_root_key(world):
    """The root key itself rotates: root v2 names a new root key and is signed by the old and
    the new; root v3, signed by the new key alone, renews it. Devices walk the chain, and a
    root signed by the retired root key alone is refused."""
    from securesystemslib.signer import CryptoSigner
    from tuf.api.metadata import Metadata, Root

    cfg, channel = world["cfg"], world["channel"]
    assert sync(cfg).version == "1"
    keys = world["tmp"] / "keys"
    old_root = load_private_key(keys / "root.pem")
    new_root, _ = generate_keypair(keys / "root-2.pem")
    channel.tuf.sign_root(old_root, new_root_key=load_private_key(new_root))
    channel.tuf.sign_root(load_private_key(new_root))
    publish(channel, "2", world["onnx"], world["tmp"])
    channel.set_pointer("sink", "classifier", "stable", "2")
    assert sync(cfg).version == "2"
    assert json.loads(trusted(cfg)["root.json"])["signed"]["version"] == 3
    before = trusted(cfg)
    forged = Metadata[Root].from_bytes((channel.root / "metadata" / "3.root.json").read_bytes())
    forged.signed.version = 4
    forged.sign(CryptoSigner(old_root))  # the retired root key alone
    (channel.root / "metadata" / "4.root.json").write_bytes(forged.to_bytes())
    refused = _refused(cfg, "bad_signature")
    assert "root" in refused.detail
    assert read_state(cfg)["current"] == "2" and trusted(cfg) == before

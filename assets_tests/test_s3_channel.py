"""The fleet channel on an S3-compatible store: moto's S3 server on loopback (a real HTTP S3
endpoint, not patched calls), the same layout and guarantees as the local folder, and a device
syncing straight from the bucket."""

import json
import threading

import pytest

pytest.importorskip("s3fs", reason="the S3 channel needs the s3 extra (pip install '.[s3]')")
boto3 = pytest.importorskip("boto3")

from autosink_pi.client import PiConfig, active, sync  # noqa: E402

from autosink_platform.release.channel import FleetChannel  # noqa: E402
from autosink_platform.release.signing import generate_keypair, load_private_key  # noqa: E402

from .test_pi_client import onnx_model, publish  # noqa: E402, F401  (the same release as the local tests)


def _channel(tmp_path, bucket, endpoint, **put):
    key, root = tmp_path / "keys" / "signing.pem", tmp_path / "keys" / "root.pem"
    if not key.exists():
        generate_keypair(key)
        generate_keypair(root)
    return FleetChannel(
        f"s3://{bucket}/fleet", load_private_key(key), {"endpoint_url": endpoint}, put, lambda: load_private_key(root)
    )


def test_same_layout_signed_and_immutable_on_s3(tmp_path, bucket, s3_endpoint, onnx_model):  # noqa: F811
    channel = _channel(tmp_path, bucket, s3_endpoint)
    publish(channel, "1", onnx_model, tmp_path)
    keys = {o["Key"] for o in boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {
        "fleet/manifest.schema.json",  # the manifests' JSON Schema, as the device client defines it
        *(f"fleet/sink/classifier/versions/1/{f}" for f in ("model.onnx", "manifest.json", "smoke_frames.npy")),
        *(f"fleet/metadata/{f}" for f in ("1.root.json", "root.json", "timestamp.json")),
        *(f"fleet/metadata/{n}.{role}.json" for n in (1, 2) for role in ("targets", "snapshot")),
    }
    with pytest.raises(FileExistsError, match="already published"):
        publish(channel, "1", onnx_model, tmp_path / "again") if (tmp_path / "again").mkdir() is None else None

    first = channel.set_pointer("sink", "classifier", "stable", "1", rollout_percent=10)
    assert channel.read_pointer("sink", "classifier", "stable") == first  # from the verified targets
    assert channel.set_pointer("sink", "classifier", "stable", "1", rollout_percent=10) == first  # no-op
    assert channel.set_pointer("sink", "classifier", "stable", "1")["sequence"] == 2  # canary widened
    with pytest.raises(FileNotFoundError, match="publish the version"):
        channel.set_pointer("sink", "classifier", "stable", "7")


def test_racing_publishers_each_get_their_own_sequence(tmp_path, bucket, s3_endpoint, onnx_model):  # noqa: F811
    """Two platform processes move the pointer at once: each targets version is created once
    (If-None-Match), the timestamp replaced only if unchanged (If-Match); no lost update."""
    a, b = _channel(tmp_path, bucket, s3_endpoint), _channel(tmp_path, bucket, s3_endpoint)
    publish(a, "1", onnx_model, tmp_path)
    (tmp_path / "b").mkdir()
    publish(a, "2", onnx_model, tmp_path / "b")
    seen: list[int] = []

    def flip(channel, versions):
        for v in versions:
            seen.append(channel.set_pointer("sink", "classifier", "stable", v)["sequence"])

    threads = [
        threading.Thread(target=flip, args=(a, ["1", "2"] * 5)),
        threading.Thread(target=flip, args=(b, ["2", "1"] * 5)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = a.read_pointer("sink", "classifier", "stable")
    # Every write that changed the pointer got a distinct sequence; no-ops returned the current one.
    assert final["sequence"] == max(seen) and len(set(seen)) == final["sequence"]


def test_a_device_syncs_straight_from_the_bucket(tmp_path, bucket, s3_endpoint, onnx_model):  # noqa: F811
    channel = _channel(tmp_path, bucket, s3_endpoint, ACL="public-read")  # devices GET without credentials
    publish(channel, "1", onnx_model, tmp_path)
    channel.set_pointer("sink", "classifier", "stable", "1")
    root = tmp_path / "trusted-root.json"  # provisioning
    root.write_bytes((channel.root / "metadata" / "root.json").read_bytes())
    cfg = PiConfig("pi-001", f"{s3_endpoint}/{bucket}/fleet", str(root), str(tmp_path / "device"), retries=1)
    assert sync(cfg).version == "1"
    assert json.loads((tmp_path / "device" / "state.json").read_text())["current"] == "1"
    runtime = active(cfg)
    assert runtime.manifest.mlflow_version == "1" and runtime.manifest.threshold.threshold == 0.5

import json
import multiprocessing
import stat

import pytest

from autosink_platform.release.channel import FleetChannel
from autosink_platform.release.signing import (
    SignatureError,
    ensure_keypair,
    generate_keypair,
    load_private_key,
    load_public_key,
    sign,
    verify,
    verify_pointer,
)


@pytest.fixture
def keys(tmp_path):
    private, public = generate_keypair(tmp_path / "k" / "signing.pem")
    return load_private_key(private), load_public_key(public), private


def test_keygen_protects_the_private_key_and_never_overwrites(keys, tmp_path):
    _, _, private = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        generate_keypair(private)


def _ensure_and_read(args):
    path, barrier = args
    barrier.wait()
    return ensure_keypair(path).read_bytes()


def test_workers_creating_the_default_key_at_once_all_get_the_same_whole_key(tmp_path):
    # Celery workers run release steps in parallel; each may find no key and create one
    path = tmp_path / "cfg" / "signing.pem"
    with multiprocessing.Manager() as manager:
        barrier = manager.Barrier(8)
        with multiprocessing.get_context("spawn").Pool(8) as pool:
            keys = pool.map(_ensure_and_read, [(path, barrier)] * 8)
    assert len(set(keys)) == 1 and keys[0] == path.read_bytes()
    assert load_private_key(path).public_key() == load_public_key(path.with_suffix(".pub"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["signing.pem", "signing.pub"]  # no temp files left


def test_signatures_verify_and_tampering_is_caught(keys, tmp_path):
    key, public, _ = keys
    data = b'{"version": "3"}'
    signature = sign(key, data)
    verify(public, data, signature)
    with pytest.raises(SignatureError):
        verify(public, data.replace(b"3", b"4"), signature)
    other, _ = generate_keypair(tmp_path / "other.pem")
    with pytest.raises(SignatureError):
        verify(load_public_key(tmp_path / "other.pub"), data, signature)
    with pytest.raises(SignatureError):
        verify(public, data, "not base64!")


def test_channel_signs_manifests_and_pointers(keys, tmp_path):
    key, public, _ = keys
    channel = FleetChannel(tmp_path / "fleet", key)
    src = tmp_path / "src"
    src.mkdir()
    (src / "manifest.json").write_text(json.dumps({"v": 1}))
    (src / "model.onnx").write_bytes(b"onnx")
    vdir = channel.put_version(
        "sink", "classifier", "1", {"manifest.json": src / "manifest.json", "model.onnx": src / "model.onnx"}
    )
    verify(public, (vdir / "manifest.json").read_bytes(), (vdir / "manifest.json.sig").read_text())
    assert load_public_key(tmp_path / "fleet" / "keys" / f"{channel.key_id}.pem") == public

    first = channel.set_pointer("sink", "classifier", "stable", "1")
    raw = json.loads(channel.pointer_path("sink", "classifier", "stable").read_text())
    assert verify_pointer(public, raw) == first and first["key_id"] == channel.key_id
    assert channel.set_pointer("sink", "classifier", "stable", "1") == first  # same version: no-op, same sequence
    raw["rollout_percent"] = 5  # tampering with any field breaks the signature
    with pytest.raises(SignatureError):
        verify_pointer(public, raw)
    with pytest.raises(FileNotFoundError, match="publish the version"):
        channel.set_pointer("sink", "classifier", "stable", "2")

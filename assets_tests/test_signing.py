import json
import stat

import pytest

from autosink_platform.release.channel import FleetChannel
from autosink_platform.release.signing import (
    SignatureError,
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

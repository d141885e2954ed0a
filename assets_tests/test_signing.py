import json
import multiprocessing
import stat

import pytest

from autosink_platform.release.channel import FleetChannel
from autosink_platform.release.signing import ensure_keypair, generate_keypair, load_private_key, load_public_key
from autosink_platform.release.tuf_repo import WrongKey


@pytest.fixture
def keys(tmp_path):
    private, public = generate_keypair(tmp_path / "k" / "signing.pem")
    root, _ = generate_keypair(tmp_path / "k" / "root.pem")
    return load_private_key(private), load_public_key(public), private, load_private_key(root)


def test_keygen_protects_the_private_key_and_never_overwrites(keys, tmp_path):
    private = keys[2]
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
        # close + join, not the context manager's terminate: a terminated worker can be left
        # waiting on the task queue's lock, and the test then hung in Pool.__exit__ (seen under
        # pytest-xdist).
        pool = multiprocessing.get_context("spawn").Pool(8)
        try:
            keys = pool.map(_ensure_and_read, [(path, barrier)] * 8)
        finally:
            pool.close()
            pool.join()
    assert len(set(keys)) == 1 and keys[0] == path.read_bytes()
    assert load_private_key(path).public_key() == load_public_key(path.with_suffix(".pub"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["signing.pem", "signing.pub"]  # no temp files left


def _release(channel: FleetChannel, tmp_path, version: str) -> None:
    src = tmp_path / f"src{version}"
    src.mkdir()
    (src / "manifest.json").write_text(
        json.dumps({"pipeline": "sink", "model": "classifier", "mlflow_version": version})
    )
    (src / "model.onnx").write_bytes(b"onnx" + version.encode())
    channel.put_version("sink", "classifier", version, {f.name: f for f in src.iterdir()})


def test_the_channel_is_a_tuf_repository_its_root_key_creates(keys, tmp_path):
    """Root (signed by the root key) names the online key for targets, snapshot and timestamp;
    every release file and pointer is a target; the root key is read only to create the channel."""
    from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

    key, _, _, root_key = keys
    calls = []
    channel = FleetChannel(tmp_path / "fleet", key, root_key=lambda: calls.append(1) or root_key)
    _release(channel, tmp_path, "1")
    first = channel.set_pointer("sink", "classifier", "stable", "1")
    assert channel.set_pointer("sink", "classifier", "stable", "1") == first  # same fields: no-op, same sequence
    assert FleetChannel(tmp_path / "fleet", key).read_pointer("sink", "classifier", "stable") == first  # no root key
    assert calls == [1]

    meta = tmp_path / "fleet" / "metadata"
    root = Metadata[Root].from_bytes((meta / "1.root.json").read_bytes())
    root.signed.verify_delegate("root", root.signed_bytes, root.signatures)
    n = channel.tuf.targets().version
    for role, cls, name in (
        ("targets", Targets, f"{n}.targets.json"),
        ("snapshot", Snapshot, f"{n}.snapshot.json"),
        ("timestamp", Timestamp, "timestamp.json"),
    ):
        md = Metadata[cls].from_bytes((meta / name).read_bytes())
        root.signed.verify_delegate(role, md.signed_bytes, md.signatures)  # the online key signs it
        assert list(md.signatures) == [channel.key_id]
    targets = channel.tuf.targets().targets
    assert sorted(targets) == [
        "sink/classifier/channels/stable.json",
        "sink/classifier/versions/1/manifest.json",
        "sink/classifier/versions/1/model.onnx",
    ]
    assert targets["sink/classifier/versions/1/manifest.json"].custom["manifest"]["mlflow_version"] == "1"
    assert targets["sink/classifier/channels/stable.json"].custom["pointer"] == first
    with pytest.raises(FileNotFoundError, match="publish the version"):
        channel.set_pointer("sink", "classifier", "stable", "2")
    with pytest.raises(FileExistsError, match="already published"):
        _release(channel, tmp_path / "again", "1") if (tmp_path / "again").mkdir() is None else None
    with pytest.raises(FileNotFoundError, match="no TUF root yet"):
        FleetChannel(tmp_path / "other", key)  # and no root key to create one


def test_a_channel_refuses_a_signing_key_root_does_not_name_and_tampered_metadata(keys, tmp_path):
    key, _, _, root_key = keys
    channel = FleetChannel(tmp_path / "fleet", key, root_key=lambda: root_key)
    _release(channel, tmp_path, "1")
    other, _ = generate_keypair(tmp_path / "other.pem")
    intruder = FleetChannel(tmp_path / "fleet", load_private_key(other))
    with pytest.raises(WrongKey, match="is not the channel's targets key"):
        intruder.set_pointer("sink", "classifier", "stable", "1")
    newest = tmp_path / "fleet" / "metadata" / f"{channel.tuf.targets().version}.targets.json"
    newest.write_bytes(newest.read_bytes().replace(b'"stable', b'"stabl3').replace(b"versions/1", b"versions/9"))
    from tuf.api.exceptions import UnsignedMetadataError

    with pytest.raises(UnsignedMetadataError):
        channel.read_pointer("sink", "classifier", "stable")


def test_rotating_the_online_key_through_root(keys, tmp_path):
    """The root key signs root v2 naming a new online key; the channel re-signs with it and the
    old key can no longer publish."""
    key, _, _, root_key = keys
    channel = FleetChannel(tmp_path / "fleet", key, root_key=lambda: root_key)
    _release(channel, tmp_path, "1")
    new, _ = generate_keypair(tmp_path / "new.pem")
    with pytest.raises(WrongKey, match="not this channel's root key"):
        channel.tuf.sign_root(key, load_private_key(new))
    root = channel.tuf.sign_root(root_key, load_private_key(new))
    assert root.version == 2 and (tmp_path / "fleet" / "metadata" / "2.root.json").exists()
    rotated = FleetChannel(tmp_path / "fleet", load_private_key(new))
    assert rotated.published("sink", "classifier", "1")
    rotated.set_pointer("sink", "classifier", "stable", "1")
    with pytest.raises(WrongKey):
        FleetChannel(tmp_path / "fleet", key).set_pointer("sink", "classifier", "stable", "1", rollout_percent=5)


def test_a_channel_from_before_tuf_keeps_what_it_published(keys, tmp_path):
    """A stored home's channel in the earlier layout (a signature file beside each manifest, a
    pointer signed inside its file): opened with the root key, its versions become targets as
    they are and its pointer names the same version and rollout."""
    key, _, _, root_key = keys
    version = tmp_path / "fleet" / "sink" / "classifier" / "versions" / "3"
    version.mkdir(parents=True)
    (version / "manifest.json").write_text(
        json.dumps({"pipeline": "sink", "model": "classifier", "mlflow_version": "3"})
    )
    (version / "manifest.json.sig").write_text("c2lnbmF0dXJl")
    (version / "model.onnx").write_bytes(b"onnx3")
    pointer = tmp_path / "fleet" / "sink" / "classifier" / "channels" / "stable.json"
    pointer.parent.mkdir(parents=True)
    pointer.write_text(json.dumps({"version": "3", "sequence": 7, "rollout_percent": 40, "signature": "c2ln"}))
    channel = FleetChannel(tmp_path / "fleet", key, root_key=lambda: root_key)
    assert channel.published("sink", "classifier", "3")
    assert sorted(p for p in channel.tuf.targets().targets if "/versions/" in p) == [
        "sink/classifier/versions/3/manifest.json",
        "sink/classifier/versions/3/model.onnx",
    ]
    moved = channel.read_pointer("sink", "classifier", "stable")
    assert (moved["version"], moved["rollout_percent"]) == ("3", 40)

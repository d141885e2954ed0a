"""The raw data lake on an S3-compatible store (moto's S3 server on loopback: real HTTP, not
patched calls): the same layout and guarantees as the local folder; and the sink pipeline with
its lake, feature store and fleet channel on one bucket through the production resources
(``AUTOSINK_LAKE`` / ``AUTOSINK_STORE`` / ``AUTOSINK_FLEET``, ``AUTOSINK_S3_ENDPOINT``)."""

import json

import dagster as dg
import pytest

pytest.importorskip("s3fs", reason="the object-store lake needs the s3 extra (pip install '.[s3]')")
boto3 = pytest.importorskip("boto3")

from autosink_platform.definitions import defs  # noqa: E402
from autosink_platform.defs.runner import materialize_pipeline  # noqa: E402
from autosink_platform.home import Home  # noqa: E402
from autosink_platform.lake.demo import DemoLakeConfig, generate_demo_lake, read_truth  # noqa: E402
from autosink_platform.lake.sessions import COMMITTED, Lake, SessionExists, read_session  # noqa: E402
from autosink_platform.lake.store import FeatureStore  # noqa: E402
from autosink_platform.pipelines.sink import SINK, ingest_session  # noqa: E402

from .conftest import TINY, platform_resources  # noqa: E402


def _keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    pages = (
        boto3.client("s3", endpoint_url=endpoint)
        .get_paginator("list_objects_v2")
        .paginate(Bucket=bucket, Prefix=prefix)
    )
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


FIRST = DemoLakeConfig(devices=1, sessions_per_device=2, frames_per_session=40, seed=5)
LATER = DemoLakeConfig(
    devices=1, sessions_per_device=1, frames_per_session=40, seed=6, start="2026-11-09T07:30:00+00:00"
)


def _etags(endpoint: str, bucket: str, keys: list[str]) -> dict[str, str]:
    s3 = boto3.client("s3", endpoint_url=endpoint)
    return {k: s3.head_object(Bucket=bucket, Key=k)["ETag"] for k in keys}


def test_same_sessions_same_guarantees_on_s3(bucket, s3_endpoint, tmp_path):
    remote, local = Lake(f"s3://{bucket}/lake"), Lake(tmp_path / "lake")
    first = generate_demo_lake(remote.root, FIRST, progress=False)
    generate_demo_lake(local.root, FIRST, progress=False)
    assert set(remote.committed_sessions()) == {p.name for p in first} == set(local.committed_sessions())

    # The commit cursor returns only what is new, on the object store as in the folder.
    commits, cursor = remote.read_commits()
    assert [sid for sid, _ in commits] == [p.name for p in first]
    assert remote.read_commits(cursor) == ([], cursor)
    later = generate_demo_lake(remote.root, LATER, progress=False)
    new, cursor2 = remote.read_commits(cursor)
    assert [sid for sid, _ in new] == [p.name for p in later]
    assert remote.read_commits(cursor2) == ([], cursor2)

    # A session reads the same from the bucket as from a folder: same checks, same content hash.
    for sid, path in local.committed_sessions().items():
        there, here = read_session(remote.session_path(sid)), read_session(path)
        assert (there.content_sha256, there.frames, there.events) == (here.content_sha256, here.frames, here.events)
        assert read_truth(remote.root, sid).equals(read_truth(local.root, sid))

    # Append-only: committing a session that exists is refused and changes no object.
    path = remote.session_path(sid)
    before = _etags(
        s3_endpoint, bucket, _keys(s3_endpoint, bucket, f"lake/{path.relative_to(remote.root).as_posix()}/")
    )
    staging = remote.staging_dir()
    (staging / "session.json").write_text("{}")
    with pytest.raises(SessionExists):
        remote.commit(staging, read_session(path).meta)
    assert _etags(s3_endpoint, bucket, list(before)) == before and any(k.endswith(COMMITTED) for k in before)


def test_a_partial_upload_is_invisible_and_a_bad_session_is_quarantined_on_s3(bucket, s3_endpoint, tmp_path):
    lake = Lake(f"s3://{bucket}/lake")
    (good,) = generate_demo_lake(lake.root, LATER, progress=False)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    # A session whose upload stopped before _COMMITTED is never listed.
    s3.put_object(Bucket=bucket, Key="lake/raw/pi-x/2025-01-01/partial/session.json", Body=b"{}")
    assert set(lake.committed_sessions()) == {good.name}
    # A committed session with a corrupt frame is quarantined with the reason; its raw objects stay.
    prefix = f"lake/{good.relative_to(lake.root).as_posix()}"
    s3.put_object(Bucket=bucket, Key=f"{prefix}/frames/000003.png", Body=b"not a png")
    result = ingest_session(lake, FeatureStore(tmp_path / "store", "sink"), good.name)
    assert result["status"] == "quarantined" and result["reason"] == "corrupt_frame"
    record = json.loads(s3.get_object(Bucket=bucket, Key=f"lake/quarantine/{good.name}.json")["Body"].read())
    assert record["reason"] == "corrupt_frame" and "000003.png" in record["detail"]
    assert f"{prefix}/frames/000003.png" in _keys(s3_endpoint, bucket, prefix)


def test_sink_pipeline_with_lake_store_and_channel_on_one_bucket(home, bucket, s3_endpoint, monkeypatch):
    for name in ("lake", "store", "fleet"):
        monkeypatch.setenv(f"AUTOSINK_{name.upper()}", f"s3://{bucket}/{name}")
    lake = platform_resources()["lake"].get()  # the resources the assets use, configured as in production
    assert not lake.local
    generate_demo_lake(lake.root, TINY, progress=False)
    with dg.DagsterInstance.ephemeral() as instance:
        out = materialize_pipeline(defs, SINK, instance, lake, progress=False)
    sessions = set(lake.committed_sessions())
    assert set(out["ingested_now"]) == sessions
    release, dataset = out["classifier_release"], out["validated_dataset"]
    assert release.manifest["dataset_snapshot_id"] == dataset.snapshot_id
    assert dataset.path == f"s3://{bucket}/store/sink/datasets/{dataset.snapshot_id}"
    keys = set(_keys(s3_endpoint, bucket))
    assert f"fleet/sink/classifier/versions/{release.version}/manifest.json" in keys
    assert {f"store/sink/labeled_frames/{s}.parquet" for s in sessions} <= keys
    assert {f"store/sink/sessions/{s}.json" for s in sessions} <= keys
    snapshot = f"store/sink/datasets/{dataset.snapshot_id}/"
    assert {snapshot + f for f in ("table.parquet", "images.npy", "frame_stats.parquet", "_COMPLETE")} <= keys
    assert "store/_refs/sink/validated_dataset.json" in keys  # what the stages hand each other
    assert not (home / "store").exists()  # nothing fell back to the local home


@pytest.mark.parametrize("where", ["folder", "bucket"])
def test_append_log_reads_only_what_is_new(where, bucket, tmp_path):
    from autosink_platform.files import AppendLog

    log = AppendLog(tmp_path / "log.jsonl" if where == "folder" else f"s3://{bucket}/reviews/_log.jsonl")
    assert log.read() == ([], log.read()[1])
    for i in range(3):
        log.append({"i": i})
    entries, cursor = log.read()
    assert entries == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert log.read(cursor) == ([], cursor)
    log.append({"i": 3})
    assert log.read(cursor)[0] == [{"i": 3}]


def test_the_fleet_api_puts_uploads_in_the_lake_the_pipeline_reads(home, bucket, s3_endpoint, monkeypatch, tmp_path):
    """`autosink fleet serve` with the lake on S3: a device's upload is committed in the bucket,
    where the new-session sensor looks, not in the home's local folder; and with the channel in
    its own folder, that folder is what devices pull."""
    import shutil
    import subprocess
    import sys
    import urllib.request
    from pathlib import Path

    from autosink_platform.fleet.devices import DeviceRegistry
    from autosink_platform.fleet.uploads import pack_session
    from autosink_platform.live import free_port

    from .conftest import stop, wait_for_http

    shutil.rmtree(home / "lake")  # the tiny local lake: nothing may land there
    monkeypatch.setenv("AUTOSINK_LAKE", f"s3://{bucket}/lake")
    monkeypatch.setenv("AUTOSINK_STORE", f"s3://{bucket}/store")
    monkeypatch.setenv("AUTOSINK_FLEET", str(tmp_path / "channel"))
    platform_resources()["fleet"].get()  # the channel (and its TUF root) on the configured folder
    (session,) = generate_demo_lake(tmp_path / "device", LATER, progress=False)
    token = DeviceRegistry(Home(home).devices_db).add("pi-001")
    port, log = free_port(), tmp_path / "fleet-api.log"
    with log.open("w") as out:
        api = subprocess.Popen(
            [str(Path(sys.executable).parent / "autosink"), "fleet", "serve", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/v1/health", api, log, timeout=120)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/sessions",
            data=pack_session(session),
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/gzip"},
        )
        with urllib.request.urlopen(request, timeout=60) as r:
            assert r.status == 201 and json.loads(r.read())["session_id"] == session.name
        root = f"http://127.0.0.1:{port}/v1/fleet/metadata/root.json"
        with urllib.request.urlopen(root, timeout=60) as r:
            assert r.read() == (tmp_path / "channel" / "metadata" / "root.json").read_bytes()
    finally:
        stop([api])
    assert set(platform_resources()["lake"].get().committed_sessions()) == {session.name}
    assert any(k.endswith(f"{session.name}/{COMMITTED}") for k in _keys(s3_endpoint, bucket, "lake/raw/"))
    assert not (home / "lake" / "raw").exists()

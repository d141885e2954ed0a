"""The fleet upload API, served by a real uvicorn server on loopback."""

import io
import json
import tarfile
import threading
import time

import httpx
import pytest
import uvicorn
from click.testing import CliRunner

from autosink_platform.cli import main
from autosink_platform.fleet.api import create_app
from autosink_platform.fleet.devices import DeviceRegistry
from autosink_platform.fleet.uploads import UploadLimits, pack_session
from autosink_platform.home import Home
from autosink_platform.lake.sessions import Lake, content_hash, read_session

LIMITS = UploadLimits(max_archive_bytes=8 * 2**20, max_files=500, max_unpacked_bytes=16 * 2**20)


@pytest.fixture
def server(tmp_path, tiny_lake):
    """A served home with an empty lake; ``source`` holds sessions for devices to upload."""
    home = Home(tmp_path / "served")
    config = uvicorn.Config(create_app(home, LIMITS), host="127.0.0.1", port=0, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    port = srv.servers[0].sockets[0].getsockname()[1]
    devices = DeviceRegistry(home.devices_db)
    yield {
        "url": f"http://127.0.0.1:{port}",
        "home": home,
        "lake": Lake(home.lake),
        "source": Lake(tiny_lake),
        "tokens": {d: devices.add(d) for d in ("pi-001", "pi-002")},
        "devices": devices,
    }
    srv.should_exit = True
    thread.join(timeout=10)


def _post(server, body: bytes, device="pi-001", token=None):
    headers = {"Authorization": f"Bearer {token or server['tokens'][device]}"} if token != "" else {}
    return httpx.post(f"{server['url']}/v1/sessions", content=body, headers=headers, timeout=30)


def _session(server, device="pi-001"):
    return next(p for sid, p in sorted(server["source"].committed_sessions().items()) if sid.startswith(device))


def test_upload_is_stored_committed_and_logged(server):
    path = _session(server)
    r = _post(server, pack_session(path))
    assert r.status_code == 201 and r.json() == {"session_id": path.name, "status": "created"}
    stored = server["lake"].committed_sessions()[path.name]
    assert stored.relative_to(server["lake"].raw).parts[:2] == path.relative_to(server["source"].raw).parts[:2]
    assert content_hash(stored) == content_hash(path)
    read_session(stored)
    assert [sid for sid, _ in server["lake"].read_commits()[0]] == [path.name]
    assert not any((server["lake"].root / "_staging").iterdir())  # nothing left half-done


def test_reupload_is_idempotent_and_a_differing_copy_is_recorded_not_stored(server):
    path = _session(server)
    assert _post(server, pack_session(path)).status_code == 201
    again = _post(server, pack_session(path))
    assert again.status_code == 200 and again.json() == {"session_id": path.name, "status": "exists", "conflict": False}
    stored = server["lake"].committed_sessions()[path.name]
    before = content_hash(stored)

    buf = io.BytesIO()  # the same session id with other bytes in events.jsonl
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != "_COMMITTED"):
            data = f.read_bytes() if f.name != "events.jsonl" else b""
            info = tarfile.TarInfo(f"{path.name}/{f.relative_to(path).as_posix()}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    conflict = _post(server, buf.getvalue())
    assert conflict.status_code == 200 and conflict.json()["conflict"] is True
    assert content_hash(stored) == before  # the first complete copy wins
    records = list((server["lake"].root / "conflicts" / path.name).glob("*.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert record["stored_sha256"] == before and record["uploaded_sha256"] != before
    assert (records[0].parent / record["archive"]).exists()  # the differing upload is kept, not lost
    assert [sid for sid, _ in server["lake"].read_commits()[0]] == [path.name]  # committed once


def test_tokens(server):
    body = pack_session(_session(server))
    assert _post(server, body, token="").status_code == 401
    r = _post(server, body, token="not-a-token")
    assert r.status_code == 401 and r.json()["error"] == "unknown_token"
    wrong_device = _post(server, body, device="pi-002")
    assert wrong_device.status_code == 403 and wrong_device.json()["error"] == "device_mismatch"
    assert "pi-001" in wrong_device.json()["detail"] and "pi-002" in wrong_device.json()["detail"]
    server["devices"].revoke("pi-001")
    revoked = _post(server, body)
    assert revoked.status_code == 403 and revoked.json()["error"] == "revoked_token"
    assert server["lake"].committed_sessions() == {}
    token = server["tokens"]["pi-002"]
    assert token.encode() not in server["home"].devices_db.read_bytes()  # stored hashed only


def _tar(members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info in members:
            payload = (data or {}).get(info.name)
            if payload is not None:
                info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return buf.getvalue()


def _file(name, payload=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    return info, payload


def _kind(name, kind, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


META = json.dumps({"device_id": "pi-001", "session_id": "s1", "started_at": "2026-11-02T08:00:00+00:00"}).encode()


def _bomb() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info, _ = _file("s1/session.json", META)
        tar.addfile(info, io.BytesIO(META))
        big = tarfile.TarInfo("s1/frames/000000.png")
        big.size = 64 * 2**20  # 64 MiB of zeros compresses to ~64 KiB
        tar.addfile(big, io.BytesIO(bytes(big.size)))
    return buf.getvalue()


def _many_files(n: int) -> bytes:
    files = [_file(f"s1/f{k}") for k in range(n)]
    return _tar([info for info, _ in files], {info.name: payload for info, payload in files})


MALICIOUS = {
    "absolute_path": (lambda: _tar([_file("/etc/evil", b"x")[0]], {"/etc/evil": b"x"}), 400, "unsafe_path"),
    "dot_dot": (lambda: _tar([_file("s1/../../evil")[0]], {"s1/../../evil": b"x"}), 400, "unsafe_path"),
    "symlink": (lambda: _tar([_kind("s1/link", tarfile.SYMTYPE, "/etc/passwd")]), 400, "unsafe_member"),
    "hardlink": (lambda: _tar([_kind("s1/link", tarfile.LNKTYPE, "/etc/passwd")]), 400, "unsafe_member"),
    "device_file": (lambda: _tar([_kind("s1/dev", tarfile.CHRTYPE)]), 400, "unsafe_member"),
    "too_many_files": (lambda: _many_files(LIMITS.max_files + 1), 413, "too_many_files"),
    "decompression_bomb": (_bomb, 413, "too_large"),
    "not_gzip": (lambda: b"this is not an archive", 400, "invalid_archive"),
    "no_session_json": (
        lambda: _tar([_file("s1/events.jsonl")[0]], {"s1/events.jsonl": b"x"}),
        400,
        "missing_session_json",
    ),
    "folder_is_not_the_session": (
        lambda: _tar([_file("other/session.json", META)[0]], {"other/session.json": META}),
        400,
        "session_id_mismatch",
    ),
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_unsafe_or_bad_archives_are_refused_and_nothing_is_written(server, tmp_path, case):
    make, status, code = MALICIOUS[case]
    outside = sorted(p.name for p in tmp_path.iterdir())
    r = _post(server, make())
    assert (r.status_code, r.json()["error"]) == (status, code), r.json()
    assert r.json()["detail"]
    assert server["lake"].committed_sessions() == {}
    assert not (server["lake"].raw).exists() or not any(server["lake"].raw.rglob("*"))
    assert not any((server["lake"].root / "_staging").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == outside  # nothing written outside the lake


def test_oversized_body_is_refused(server):
    r = _post(server, bytes(LIMITS.max_archive_bytes + 1))
    assert r.status_code == 413 and r.json()["error"] == "too_large"


def test_cli_manages_device_tokens(tmp_path):
    runner, home = CliRunner(), str(tmp_path / "h")
    added = runner.invoke(main, ["fleet", "add-device", "pi-009", "--home", home])
    assert added.exit_code == 0
    token = added.output.strip()
    assert len(token) >= 40
    assert DeviceRegistry(Home(tmp_path / "h").devices_db).authenticate(token) == "pi-009"
    again = runner.invoke(main, ["fleet", "add-device", "pi-009", "--home", home])
    assert again.exit_code != 0 and "already has an active token" in again.output
    assert runner.invoke(main, ["fleet", "revoke-device", "pi-009", "--home", home]).exit_code == 0
    listed = runner.invoke(main, ["fleet", "devices", "--home", home]).output
    assert "pi-009" in listed and "revoked" in listed
    bad = runner.invoke(main, ["fleet", "add-device", "../etc", "--home", home])
    assert bad.exit_code != 0 and "device id" in bad.output

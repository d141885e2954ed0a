"""The fleet upload API, served by a real uvicorn server on loopback."""

import contextlib
import http.client
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


@contextlib.contextmanager
def _served(app):
    """``app`` on a real uvicorn server on loopback; yields its base URL."""
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{srv.servers[0].sockets[0].getsockname()[1]}"
    srv.should_exit = True
    thread.join(timeout=10)


def _server(tmp_path, tiny_lake, limits):
    """A served home with an empty lake; ``source`` holds sessions for devices to upload."""
    home = Home(tmp_path / "served")
    with _served(create_app(home, limits)) as url:
        devices = DeviceRegistry(home.devices_db)
        yield {
            "url": url,
            "home": home,
            "lake": Lake(home.lake),
            "source": Lake(tiny_lake),
            "tokens": {d: devices.add(d) for d in ("pi-001", "pi-002")},
            "devices": devices,
        }


@pytest.fixture
def server(tmp_path, tiny_lake):
    yield from _server(tmp_path, tiny_lake, LIMITS)


@pytest.fixture
def default_server(tmp_path, tiny_lake):
    """The limits ``autosink fleet serve`` runs with: derived from the sink's frame geometry."""
    yield from _server(tmp_path, tiny_lake, None)


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
    """17 frames at their 1 MiB bound, one of noise and 16 of zeros: every member within its
    bound and the ratio within 20x, the whole over the 16 MiB unpacked limit."""
    import numpy as np

    noise = np.random.default_rng(0).integers(0, 256, 2**20, dtype=np.uint8).tobytes()
    frames = [_file("s1/session.json", META)] + [
        _file(f"s1/frames/{k:06d}.png", noise if k == 0 else bytes(2**20)) for k in range(17)
    ]
    return _tar(*_with(*frames))


def _many_files(n: int) -> bytes:
    files = [_file(f"s1/f{k}") for k in range(n)]
    return _tar([info for info, _ in files], {info.name: payload for info, payload in files})


def _with(*files) -> tuple[list[tarfile.TarInfo], dict[str, bytes]]:
    return [info for info, _ in files], {info.name: payload for info, payload in files}


def _zeros_frame(size: int, level: int = 6) -> bytes:
    """A session whose one "frame" is ``size`` zero bytes: it compresses to almost nothing."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=level) as tar:
        info, _ = _file("s1/session.json", META)
        tar.addfile(info, io.BytesIO(META))
        big = tarfile.TarInfo("s1/frames/000000.png")
        big.size = size
        tar.addfile(big, _Zeros(size))
    return buf.getvalue()


class _Zeros(io.RawIOBase):
    """``n`` zero bytes, read in chunks (the archive is built without holding them)."""

    def __init__(self, n: int):
        self.left = n

    def readinto(self, b) -> int:
        k = min(len(b), self.left)
        b[:k] = bytes(k)
        self.left -= k
        return k


MALICIOUS = {
    # a frame over its geometry's bound, the whole archive well under the unpacked limit
    "frame_over_its_bound": (lambda: _zeros_frame(2 * 2**20), 413, "member_too_large"),
    "oversized_session_json": (
        lambda: _tar(*_with(_file("s1/session.json", b" " * (LIMITS.max_meta_bytes + 1)))),
        413,
        "member_too_large",
    ),
    "duplicate_member": (
        lambda: _tar(*_with(_file("s1/session.json", META), _file("s1/./session.json", META))),
        400,
        "duplicate_member",
    ),
    "escape_through_the_top_folder": (
        lambda: _tar([_file("s1/../s2/evil")[0]], {"s1/../s2/evil": b"x"}),
        400,
        "unsafe_path",
    ),
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


def test_a_bomb_under_the_unpacked_limit_is_refused_at_its_header(default_server):
    """At the served defaults: a 1.5 GiB zero-filled "frame" (under the 2 GiB unpacked limit)
    is refused from the member's header, before it is inflated, and nothing is written."""
    body = _zeros_frame(3 * 2**29, level=1)
    assert len(body) < 8 * 2**20
    started = time.monotonic()
    r = _post(default_server, body)
    assert (r.status_code, r.json()["error"]) == (413, "member_too_large"), r.json()
    assert "a frame" in r.json()["detail"]
    assert time.monotonic() - started < 30  # not inflated: 1.5 GiB would take far longer to write
    lake = default_server["lake"]
    assert lake.committed_sessions() == {} and not any((lake.root / "_staging").iterdir())


def test_a_ratio_bomb_of_small_members_is_refused(tmp_path, tiny_lake):
    """Many members each under its bound, together inflating far beyond the archive's size."""
    limits = LIMITS.__class__(**{**LIMITS.__dict__, "ratio_allowance_bytes": 2**20, "max_other_bytes": 2**20})
    gen = _server(tmp_path, tiny_lake, limits)
    srv = next(gen)
    body = _tar(*_with(*[_file(f"s1/log{k}.txt", bytes(2**19)) for k in range(8)]))
    r = _post(srv, body)
    assert (r.status_code, r.json()["error"]) == (413, "compression_ratio"), r.json()
    gen.close()


def _raw_post(server, headers: dict[str, str], body: bytes = b"") -> tuple[int, dict]:
    """A request with headers as given (httpx would correct a malformed one)."""
    host, port = server["url"].removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("POST", "/v1/sessions", skip_accept_encoding=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders(body)
    r = conn.getresponse()
    status, data = r.status, r.read()
    conn.close()
    return status, json.loads(data) if data.startswith(b"{") else {"raw": data.decode(errors="replace")}


@pytest.mark.parametrize("length", ["abc", "-5", "1e3", "12, 12"])
def test_malformed_headers_are_answered_4xx(server, length):
    token = server["tokens"]["pi-001"]
    status, answer = _raw_post(server, {"Authorization": f"Bearer {token}", "Content-Length": length})
    assert 400 <= status < 500, (status, answer)
    status, answer = _raw_post(server, {"Authorization": "Basic x", "Content-Length": "0"})
    assert status == 401 and answer["error"] == "missing_token"
    assert server["lake"].committed_sessions() == {}


def test_a_device_that_uploads_too_often_is_slowed_down(tmp_path, tiny_lake):
    limits = LIMITS.__class__(**{**LIMITS.__dict__, "burst": 2, "per_minute": 1.0})
    gen = _server(tmp_path, tiny_lake, limits)
    srv = next(gen)
    sessions = [p for sid, p in sorted(srv["source"].committed_sessions().items()) if sid.startswith("pi-001")]
    assert [_post(srv, pack_session(p)).status_code for p in sessions[:2]] == [201, 201]
    slowed = _post(srv, pack_session(sessions[2]))
    assert slowed.status_code == 429 and slowed.json()["error"] == "rate_limited"
    assert 1 <= int(slowed.headers["retry-after"]) <= 60
    other = next(p for sid, p in sorted(srv["source"].committed_sessions().items()) if sid.startswith("pi-002"))
    assert _post(srv, pack_session(other), device="pi-002").status_code == 201  # per device
    assert sessions[2].name not in srv["lake"].committed_sessions()  # refused, not half stored
    gen.close()


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


def test_cli_manages_reviewer_tokens(tmp_path):
    from autosink_platform.fleet.devices import ReviewerRegistry

    runner, home = CliRunner(), str(tmp_path / "h")
    added = runner.invoke(main, ["fleet", "add-reviewer", "ana", "--home", home])
    assert added.exit_code == 0, added.output
    registry = ReviewerRegistry(Home(tmp_path / "h").reviewers_db)
    cookie, session = registry.sign_in(added.output.strip())
    assert session.reviewer == "ana" and registry.session(cookie) == session
    assert runner.invoke(main, ["fleet", "revoke-reviewer", "ana", "--home", home]).exit_code == 0
    assert registry.session(cookie) is None  # signed out with the token
    again = runner.invoke(main, ["fleet", "revoke-reviewer", "ana", "--home", home])
    assert again.exit_code != 0 and "no active reviewer" in again.output

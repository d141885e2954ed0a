"""The fleet HTTP API (FastAPI): devices upload sessions here.

POST /v1/sessions   Authorization: Bearer <device token>, body: .tar.gz of one session folder
    201 {"session_id", "status": "created"}      stored and committed
    200 {"session_id", "status": "exists", "conflict": bool}   already stored (first copy wins)
    4xx {"error": <code>, "detail": <what was wrong>}     never 5xx for a malformed request
    429 with Retry-After: the device's upload rate is spent (a burst, then a sustained rate)
GET /v1/health
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from autosink_platform.files import append_jsonl, is_url
from autosink_platform.fleet.devices import DeviceRegistry, ReviewerRegistry, RevokedToken, UnknownToken
from autosink_platform.fleet.review_page import review_router
from autosink_platform.fleet.uploads import RateLimiter, UploadLimits, UploadRejected, store_upload
from autosink_platform.home import Home
from autosink_platform.lake.sessions import Lake
from autosink_platform.lake.store import FeatureStore


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


def _count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _telemetry_problem(telemetry) -> str | None:
    """What is wrong with a heartbeat's telemetry (per version: decisions, positive, hist), if anything."""
    if not isinstance(telemetry, dict) or len(telemetry) > 16:
        return "telemetry must be an object of at most 16 versions"
    for version, t in telemetry.items():
        if not isinstance(t, dict) or not all(_count(t.get(k)) for k in ("decisions", "positive")):
            return f"telemetry[{version!r}] needs whole counts 'decisions' and 'positive'"
        hist = t.get("hist")
        if not isinstance(hist, list) or not 0 < len(hist) <= 64 or not all(map(_count, hist)):
            return f"telemetry[{version!r}].hist must be 1..64 whole counts"
        if t["positive"] > t["decisions"] or sum(hist) != t["decisions"]:
            return f"telemetry[{version!r}]: positive and hist must add up to at most / exactly 'decisions'"
    return None


def create_app(
    home: Home,
    limits: UploadLimits | None = None,
    review_pipeline: str = "sink",
    lake: Lake | None = None,
    store: FeatureStore | None = None,
    channel: str | None = None,
) -> FastAPI:
    """The API over ``lake``, ``store`` and the release ``channel`` (default: the home's own
    folders). A deployment passes the ones the pipeline's resources configure (``autosink fleet
    serve`` does), so uploads land where the new-session sensor reads and devices get what the
    release stage published, on an object store as in a folder. A channel on an object store is
    not served here: devices pull it from the bucket. ``limits`` default to the review
    pipeline's frame geometry (``UploadLimits.for_frames``)."""
    if limits is None:
        from autosink_platform.pipelines.catalog import PIPELINES  # the model stack: only when asked

        limits = UploadLimits.for_frames(*PIPELINES[review_pipeline].source.frame_size)
    rate = RateLimiter(limits.burst, limits.per_minute)
    app = FastAPI(title="autosink fleet API", version="1")
    lake = lake if lake is not None else Lake(home.lake)
    store = store if store is not None else FeatureStore(home.store, review_pipeline)
    devices = DeviceRegistry(home.devices_db)
    app.include_router(review_router(store, lake.root, ReviewerRegistry(home.reviewers_db)))
    # The release channel, as devices pull it (Range requests let them resume downloads).
    channel = str(channel if channel is not None else home.fleet)
    if is_url(channel):

        @app.get("/v1/fleet/{path:path}")
        def fleet_elsewhere(path: str):
            return _error(404, "channel_elsewhere", f"the release channel is {channel}: pull it from there")

    else:
        Path(channel).mkdir(parents=True, exist_ok=True)
        app.mount("/v1/fleet", StaticFiles(directory=channel), name="fleet")
    heartbeats = home.heartbeats

    def _device(request: Request) -> str | JSONResponse:
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            return _error(401, "missing_token", "send 'Authorization: Bearer <device token>'")
        try:
            return devices.authenticate(auth[7:].strip())
        except UnknownToken as e:
            return _error(401, "unknown_token", str(e))
        except RevokedToken as e:
            return _error(403, "revoked_token", str(e))

    @app.post("/v1/heartbeats")
    async def heartbeat(request: Request) -> JSONResponse:
        device_id = await run_in_threadpool(_device, request)
        if isinstance(device_id, JSONResponse):
            return device_id
        try:
            beat = await request.json()
        except ValueError:
            return _error(400, "invalid_json", "the body must be a JSON object")
        missing = [k for k in ("pipeline", "model", "version") if k not in beat] if isinstance(beat, dict) else ["body"]
        if missing:
            return _error(400, "missing_field", f"heartbeat needs {missing}")
        if beat.get("device_id", device_id) != device_id:
            return _error(403, "device_mismatch", f"heartbeat for {beat['device_id']!r} with {device_id!r}'s token")
        if (problem := _telemetry_problem(beat.get("telemetry", {}))) is not None:
            return _error(400, "invalid_telemetry", problem)
        record = {
            "device_id": device_id,
            "pipeline": str(beat["pipeline"]),
            "model": str(beat["model"]),
            "version": None if beat["version"] is None else str(beat["version"]),
            "sequence": beat.get("sequence"),
            "telemetry": beat.get("telemetry", {}),
            "received_at": datetime.now(UTC).isoformat(),
        }
        await run_in_threadpool(append_jsonl, heartbeats, record)
        return JSONResponse({"recorded": True})

    @app.get("/v1/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/sessions")
    async def upload_session(request: Request) -> JSONResponse:
        device_id = await run_in_threadpool(_device, request)
        if isinstance(device_id, JSONResponse):
            return device_id
        declared = request.headers.get("content-length")
        if declared is not None and not (declared.isascii() and declared.isdigit()):
            return _error(400, "invalid_content_length", f"Content-Length {declared[:40]!r} is not a byte count")
        if declared is not None and int(declared) > limits.max_archive_bytes:
            return _error(413, "too_large", f"archive larger than {limits.max_archive_bytes} bytes")
        wait = rate.take(device_id)
        if wait:
            return JSONResponse(
                {"error": "rate_limited", "detail": f"{device_id} uploads too often: retry in {wait:.0f} s"},
                status_code=429,
                headers={"Retry-After": str(max(1, round(wait)))},
            )
        with tempfile.SpooledTemporaryFile(max_size=8 * 2**20) as body:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_archive_bytes:
                    return _error(413, "too_large", f"archive larger than {limits.max_archive_bytes} bytes")
                body.write(chunk)
            body.seek(0)
            try:
                result = await run_in_threadpool(store_upload, lake, body, device_id, limits)
            except UploadRejected as e:
                return _error(e.status, e.code, e.detail)
        if result.created:
            return JSONResponse({"session_id": result.session_id, "status": "created"}, status_code=201)
        return JSONResponse(
            {"session_id": result.session_id, "status": "exists", "conflict": result.conflict}, status_code=200
        )

    return app

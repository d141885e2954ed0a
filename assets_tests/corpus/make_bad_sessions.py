"""Writes the fixed corpus of bad sessions under ``bad_sessions/`` (committed to git).

Each case is a tiny session (10 frames of 64x64, the sink cameras' size, at 5 fps) broken in
exactly one way; ``expected.json``
maps each session id to the quarantine reason the lake must give it (``null``: a good session).
Run it again only when the public format changes: ``python assets_tests/corpus/make_bad_sessions.py``.
"""

import io
import json
import shutil
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).parent / "bad_sessions"
DAY = "2026-11-02"


def frame(i: int, size=(64, 64), blank: bool = False) -> bytes:
    """A frame with contrast (a colour ramp and a bar), or a blank one (a covered lens)."""
    im = Image.new("RGB", size, (10 * i, 100, 200 - 10 * i) if not blank else (12, 12, 12))
    if not blank:
        ramp = Image.linear_gradient("L").resize(size)
        im = Image.merge("RGB", (ramp, im.getchannel(1), im.getchannel(2)))
        im.paste((250, 250, 250), (size[0] // 4, size[1] // 3, size[0] // 2, size[1] // 2))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def meta(sid: str, **changes) -> dict:
    m = {
        "device_id": "pi-bad",
        "session_id": sid,
        "started_at": f"{DAY}T08:00:00+00:00",
        "ended_at": f"{DAY}T08:00:02+00:00",
        "fps": 5,
        "firmware": "1.2.3",
        "model_version": "sink.classifier/1",
        "schema_version": 1,
    }
    for key, value in changes.items():
        if value is None:
            del m[key]
        else:
            m[key] = value
    return m


EVENTS = '{"t": 0.4, "type": "valve_open", "score": 0.8}\n{"t": 1.0, "type": "user_close"}\n'


def write(sid: str, session_json=None, events: str | None = EVENTS, frames=None, **meta_changes):
    folder = ROOT / "raw" / "pi-bad" / DAY / sid
    (folder / "frames").mkdir(parents=True)
    for name, data in (frames if frames is not None else {f"{i:06d}.png": frame(i) for i in range(10)}).items():
        (folder / "frames" / name).write_bytes(data)
    (folder / "session.json").write_text(
        session_json if session_json is not None else json.dumps(meta(sid, **meta_changes))
    )
    if events is not None:
        (folder / "events.jsonl").write_text(events)
    (folder / "_COMMITTED").write_text(f"{DAY}T08:00:05+00:00")


def main() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    good = {f"{i:06d}.png": frame(i) for i in range(10)}
    cases = {
        "good": (None, {}),
        "missing-field": ("missing_field", {"fps": None}),
        "wrong-type": ("bad_field_type", {"fps": "fast"}),
        "unknown-schema": ("unknown_schema_version", {"schema_version": 99}),
        "ended-before-start": ("bad_field_value", {"ended_at": f"{DAY}T07:00:00+00:00"}),
        "clock-unset": (
            "timestamp_out_of_range",
            {"started_at": "1970-01-01T00:00:00+00:00", "ended_at": "1970-01-01T00:00:02+00:00"},
        ),
        "invalid-json": ("invalid_json", {"session_json": '{"device_id": "pi-bad", '}),
        "no-events-file": ("missing_file", {"events": None}),
        "truncated-events": ("invalid_event", {"events": EVENTS + '{"t": 1.6, "type": "valve_cl'}),
        "unknown-event": ("unknown_event_type", {"events": '{"t": 0.4, "type": "water_heater_on"}\n'}),
        "events-backwards": (
            "event_time_backwards",
            {"events": '{"t": 1.0, "type": "user_open"}\n{"t": 0.2, "type": "user_close"}\n'},
        ),
        "negative-time": ("event_out_of_range", {"events": '{"t": -0.2, "type": "user_open"}\n'}),
        "event-after-end": ("event_after_session_end", {"events": '{"t": 30.0, "type": "user_open"}\n'}),
        "model-event-no-score": ("invalid_event", {"events": '{"t": 0.4, "type": "valve_open"}\n'}),
        "truncated-frame": ("corrupt_frame", {"frames": good | {"000004.png": good["000004.png"][:40]}}),
        "garbage-frame": ("corrupt_frame", {"frames": good | {"000004.png": b"not an image at all"}}),
        "no-frames": ("no_frames", {"frames": {}}),
        "tiny-frames": ("bad_frame_size", {"frames": {f"{i:06d}.png": frame(i, (8, 8)) for i in range(10)}}),
        "mixed-frame-sizes": ("bad_frame_size", {"frames": good | {"000007.png": frame(7, (32, 32))}}),
        # well-formed, but not what the pipeline's cameras record: the per-session gates
        "another-camera": ("frame_geometry", {"frames": {f"{i:06d}.png": frame(i, (96, 96)) for i in range(10)}}),
        "covered-lens": (
            "covered_camera",
            {"frames": good | {f"{i:06d}.png": frame(i, blank=True) for i in range(3, 10)}},
        ),
        "frame-gap": ("bad_frame_name", {"frames": {k.replace("000005", "000050"): v for k, v in good.items()}}),
        "frame-count-mismatch": ("frame_count_mismatch", {"ended_at": f"{DAY}T08:01:00+00:00"}),
    }
    expected = {}
    for sid, (reason, changes) in cases.items():
        kwargs = {k: changes.pop(k) for k in ("session_json", "events", "frames") if k in changes}
        write(sid, **kwargs, **changes)
        expected[sid] = reason
    (ROOT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""``autosink-pi``: the device command.

autosink-pi --config /etc/autosink/pi.json sync         pull and activate the channel's release
autosink-pi --config ... infer frame1.jpg [frame2.png]  score images: one JSON line per decision
autosink-pi --config ... infer --csv rows.csv           score CSV rows (--csv - reads standard input, a
                                                        row at a time, as they arrive); a series release
                                                        reads one session, calibrates on its start-up
                                                        rows and decides as each window completes
autosink-pi --config ... status                         active / previous version, last sync
autosink-pi --config ... rollback                       back to the previous model (pinned: the version left
                                                        is not taken again, only a newer one)
autosink-pi --config ... heartbeat --api URL --token T  report the active version to the fleet API
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request

from autosink_pi.client import PiConfig, SyncRefused, active, decide, read_state, record, rollback, sync, telemetry
from autosink_pi.manifest import ManifestError, WindowsInput
from autosink_pi.runtime import InputError, SeriesSession, read_rows


def heartbeat(cfg: PiConfig, api: str, token: str, timeout: float = 10.0) -> dict:
    state = read_state(cfg)
    body = json.dumps(
        {
            "device_id": cfg.device_id,
            "pipeline": cfg.pipeline,
            "model": cfg.model,
            "version": state["current"],
            "sequence": state["sequence"],
            "telemetry": telemetry(cfg),  # decisions per version since each was activated
        }
    ).encode()
    request = urllib.request.Request(
        api.rstrip("/") + "/v1/heartbeats",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return json.loads(r.read())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="autosink-pi", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", required=True, help="JSON file with device_id, channel_url, trusted_root, state_dir, ..."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("sync")
    infer = sub.add_parser("infer")
    infer.add_argument("images", nargs="*", help="image files (releases whose input is an image)")
    infer.add_argument("--csv", help="a CSV file of rows, or - for standard input (releases on rows)")
    infer.add_argument("--session", help="the calibrated session (releases thresholded per session)")
    sub.add_parser("status")
    sub.add_parser("rollback")
    hb = sub.add_parser("heartbeat")
    hb.add_argument("--api", required=True)
    hb.add_argument("--token", required=True)
    args = parser.parse_args(argv)
    cfg = PiConfig.load(args.config)
    try:
        if args.command == "sync":
            r = sync(cfg)
            print(json.dumps({"status": r.status, "version": r.version, "previous": r.previous, **r.detail}))
        elif args.command == "infer":
            _infer(cfg, active(cfg), args)
        elif args.command == "status":
            print(json.dumps(read_state(cfg), indent=1))
        elif args.command == "rollback":
            print(json.dumps({"current": rollback(cfg)}))
        else:
            print(json.dumps(heartbeat(cfg, args.api, args.token)))
    except SyncRefused as e:
        print(json.dumps({"refused": e.reason, "detail": e.detail}), file=sys.stderr)
        return 2
    except (InputError, ManifestError) as e:  # bad input: said, and the active model is untouched
        print(json.dumps({"error": "bad_input", "detail": str(e)}), file=sys.stderr)
        return 3
    return 0


def _infer(cfg: PiConfig, runtime, args) -> None:
    """One JSON line per decision, flushed as it is made (with the guard's verdict, if any)."""
    if bool(args.images) == bool(args.csv):
        raise InputError("give image files or --csv, not both or neither")
    if args.images:
        decisions = decide(cfg, runtime, runtime.read_images(args.images), args.session)
        for path, d in zip(args.images, decisions, strict=True):
            print(json.dumps({"input": path, **d}), flush=True)
        return
    lines = sys.stdin if args.csv == "-" else open(args.csv, encoding="utf-8")  # noqa: SIM115
    with lines:
        if isinstance(runtime.input, WindowsInput):  # one session, its window state kept row to row
            series = SeriesSession(runtime)
            for reading in read_rows(runtime.input, lines):
                if (d := series.push(reading)) is not None:
                    record(cfg, [d])
                    print(json.dumps({"input": f"row {d.pop('row') + 1}", **d}), flush=True)
            spec = runtime.input
            if series.rows < spec.startup_rows + spec.window:
                raise InputError(
                    f"the session ended after {series.rows} rows: it needs {spec.startup_rows} start-up rows"
                    f" and a window of {spec.window} before a decision"
                )
            return
        for i, row in enumerate(read_rows(runtime.input, lines), start=1):
            (d,) = decide(cfg, runtime, row[None], args.session)
            print(json.dumps({"input": f"row {i}", **d}), flush=True)


if __name__ == "__main__":
    sys.exit(main())

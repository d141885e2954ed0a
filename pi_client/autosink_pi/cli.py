"""``autosink-pi``: the device command.

autosink-pi --config /etc/autosink/pi.json sync         pull and activate the channel's release
autosink-pi --config ... infer frame1.jpg [frame2.png]  score frames, print the valve decision
autosink-pi --config ... status                         active / previous version, last sync
autosink-pi --config ... rollback                       back to the previous model
autosink-pi --config ... heartbeat --api URL --token T  report the active version to the fleet API
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request

from PIL import Image

from autosink_pi.client import PiConfig, Scorer, SyncRefused, read_state, rollback, sync


def heartbeat(cfg: PiConfig, api: str, token: str, timeout: float = 10.0) -> dict:
    state = read_state(cfg)
    body = json.dumps(
        {
            "device_id": cfg.device_id,
            "pipeline": cfg.pipeline,
            "model": cfg.model,
            "version": state["current"],
            "sequence": state["sequence"],
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
        "--config", required=True, help="JSON file with device_id, channel_url, public_key, state_dir, ..."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("sync")
    infer = sub.add_parser("infer")
    infer.add_argument("images", nargs="+")
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
            scorer = Scorer.active(cfg)
            for path, d in zip(args.images, scorer.decide([Image.open(p) for p in args.images]), strict=True):
                print(
                    f"{path}\t{'OPEN' if d['decision'] else 'CLOSED'}\tscore={d['score']:.4f}\tthreshold={d['threshold']:.4f}\tv{d['version']}"
                )
        elif args.command == "status":
            print(json.dumps(read_state(cfg), indent=1))
        elif args.command == "rollback":
            print(json.dumps({"current": rollback(cfg)}))
        else:
            print(json.dumps(heartbeat(cfg, args.api, args.token)))
    except SyncRefused as e:
        print(json.dumps({"refused": e.reason, "detail": e.detail}), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

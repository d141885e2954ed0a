"""Benchmark: how long from a device's upload to a device running the model it produced?

A fresh home gets the demo's first act (``autosink demo --no-second-act``: lake, first release,
champion v1), then the platform runs unattended as a deployment runs it: the Dagster daemon
(sensors and automation), the fleet API, and a Pi's device client syncing on a timer. A day of
feedback (the demo's second act) is uploaded through the fleet API and followed until the device's
heartbeat reports the new version, or the release stage keeps the champion. The time is split by
stage from the Dagster instance's event log. Goal: at most 5 minutes on 2 cores at demo sizes.

    .venv/bin/python benchmarks/feedback_to_device.py [--seeds 0] [--sync-every 5]

The device's timer interval is part of the figure (a real Pi's timer runs every five minutes;
``--sync-every`` sets the simulated one).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("results") / "feedback_to_device.json"
CLI = Path(sys.executable).with_name("autosink")


def run(seed: int, sync_every: float, workdir: Path) -> dict:
    root = workdir / f"seed{seed}"
    env = {
        "AUTOSINK_HOME": str(root / "home"),
        "DAGSTER_HOME": str(root / "home" / "dagster"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "HOME": str(root / "user"),  # a fresh signing key under ~/.config
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    first = time.perf_counter()
    subprocess.run(
        [str(CLI), "demo", "--seed", str(seed), "--no-second-act"],
        env=os.environ | env,
        check=True,
        capture_output=True,
    )
    first_act_s = time.perf_counter() - first
    os.environ.update(env)  # this process and the services it starts share the home

    import dagster as dg

    from autosink_platform import demo_day
    from autosink_platform.lake.demo import DemoLakeConfig
    from autosink_platform.settings import Settings

    demo_day.DEVICE_SYNC_EVERY = sync_every
    settings = Settings.from_environ(os.environ)
    with dg.DagsterInstance.get() as instance:
        report, device = demo_day.run_day(settings, DemoLakeConfig(seed=seed), instance, progress=False)
    return {"seed": seed, "first_act_s": round(first_act_s, 1), "sync_every_s": sync_every, **report.to_json()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--sync-every", type=float, default=5.0)
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        # One process per seed: the services and the instance bind to the home at start.
        with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp, tempfile.NamedTemporaryFile() as out:
            subprocess.run(
                [sys.executable, __file__, "--one", str(seed), str(args.sync_every), tmp, out.name], check=True
            )
            rows.append(json.loads(Path(out.name).read_text()))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "feedback_to_device",
                "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
                "goal_s": 300,
                "runs": rows,
            },
            indent=1,
        )
    )
    for r in rows:
        print(
            f"\nseed {r['seed']}: {r['outcome']} (v{r['champion_before']} -> v{r['champion_after']}), "
            f"{r['seconds']:.0f} s from the first upload's 201; {r['decision']}"
        )
        print("| stage | from s | to s | seconds |\n|---|---:|---:|---:|")
        for s in r["stages"]:
            print(f"| {s['name'].strip()} | {s['start']:.1f} | {s['end']:.1f} | {s['seconds']:.1f} |")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        seed, sync_every, tmp, out = int(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5])
        Path(out).write_text(json.dumps(run(seed, sync_every, tmp)))
    else:
        main()

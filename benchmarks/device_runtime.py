"""Benchmark: the device client (``autosink-pi``) running every release on the stable channel.

For each pipeline/model with a stable release in the home's fleet channel: the release is read
as a device reads it (its manifest through the client's type, its graph on onnxruntime with one
thread), and its smoke inputs, in their raw form, are decided one sample at a time: median and
p99 latency per sample, raw input to decision (preprocessing included). A series release (valve,
bearing) streams its smoke session a reading at a time, as a sensor sends it: latency per
reading once windows are being scored (its mean is the per-reading cost: a window every
``stride`` readings), per reading that completes a window, and the start-up's calibration
(scaler, UCL) once. The readings after the start-up repeat until ``--runs`` windows were scored. A series meets the per-row goal on that mean. Each model runs in a
fresh process that imports only the client, so its peak RSS is the client's, and the process
reports whether torch, Dagster or MLflow were imported (they must not be).

Goals (the issue's): <= 10 ms per image frame, <= 1 ms per row (a series' reading), peak RSS <= 200 MB.

Needs a home with releases: `make demo` (the sink), `autosink run --pipeline NAME` for the others.

    .venv/bin/python benchmarks/device_runtime.py [--runs 500] [--home DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

GOALS_MS = {"image": 10.0, "rows": 1.0, "windows": 1.0}
GOAL_RSS_MB = 200.0

WORKER = r"""
import json, resource, statistics, sys, time
from pathlib import Path
import numpy as np
from autosink_pi.runtime import Runtime, SeriesSession

vdir, runs = Path(sys.argv[1]), int(sys.argv[2])
runtime = Runtime(vdir / "model.onnx", (vdir / "manifest.json").read_bytes())
raw = np.load(vdir / runtime.manifest.smoke_test.file)
session = next(iter((runtime.manifest.threshold.params or {}).get("ucl", {})), None)
times, window_times, calibration = [], [], []
if runtime.input.kind == "windows":  # the smoke session streamed a reading at a time
    spec = runtime.input
    startup, stride = spec.startup_rows, spec.stride
    series = SeriesSession(runtime)
    t0 = time.perf_counter()
    for reading in raw[:startup]:
        series.push(reading)
    if startup:
        calibration.append(time.perf_counter() - t0)
    # then its readings after the start-up, over and over, until enough windows were scored
    # (a window straddling two repeats costs the same as any other)
    tail, steady, i = raw[startup:], False, 0
    while len(window_times) < runs + 20:
        reading = tail[i % len(tail)]
        i += 1
        t0 = time.perf_counter()
        decided = series.push(reading)
        elapsed = time.perf_counter() - t0
        steady = steady or decided is not None  # from the first window on, every reading may complete one
        if steady:
            times.append(elapsed)
        if decided is not None:
            window_times.append(elapsed)
    times, window_times = times[20 * stride :], window_times[20:]  # after a warm-up
else:
    for i in range(runs + 20):
        sample = raw[i % len(raw)][None]
        t0 = time.perf_counter()
        runtime.decide(sample, session)
        if i >= 20:  # after a warm-up
            times.append(time.perf_counter() - t0)
def ms(values, q):
    values = sorted(values)
    return 1000 * values[int(q * (len(values) - 1))] if values else None
heavy = sorted(m for m in ("torch", "dagster", "mlflow") if m in sys.modules)
print(json.dumps({
    "kind": runtime.input.kind,
    "median_ms": ms(times, 0.5),
    "mean_ms": 1000 * statistics.fmean(times),
    "p99_ms": ms(times, 0.99),
    "window_median_ms": ms(window_times, 0.5),
    "window_p99_ms": ms(window_times, 0.99),
    "calibration_ms": ms(calibration, 0.5),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "heavy_imports": heavy,
}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--home", default=os.environ.get("AUTOSINK_HOME", ".autosink"))
    parser.add_argument("--out", default="benchmarks/results/device_runtime.json")
    args = parser.parse_args()
    fleet = Path(args.home) / "fleet"
    rows = []
    for pointer in sorted(fleet.glob("*/*/channels/stable.json")):
        pipeline, model = pointer.parts[-4], pointer.parts[-3]
        version = json.loads(pointer.read_text())["version"]
        vdir = fleet / pipeline / model / "versions" / str(version)
        done = subprocess.run(
            [sys.executable, "-c", WORKER, str(vdir), str(args.runs)], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise SystemExit(f"{pipeline}.{model} v{version}: {done.stderr.strip().splitlines()[-1]}")
        rows.append({"model": f"{pipeline}.{model}", "version": str(version), **json.loads(done.stdout)})
    if not rows:
        raise SystemExit(f"no stable release under {fleet}: run `make demo` (and `autosink run --pipeline NAME`) first")
    for row in rows:
        goal = GOALS_MS.get(row["kind"])
        per_sample = row["mean_ms"] if row["kind"] == "windows" else row["median_ms"]
        row["meets_goals"] = (goal is None or per_sample <= goal) and row["peak_rss_mb"] <= GOAL_RSS_MB
        row["meets_goals"] = row["meets_goals"] and not row["heavy_imports"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"runs": args.runs, "threads": 1, "cpu": os.cpu_count(), "goals": {"ms": GOALS_MS, "rss_mb": GOAL_RSS_MB}}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(
        "| model | input | median ms | p99 ms | mean ms | window median / p99 ms | start-up ms | peak RSS MB"
        " | torch/Dagster/MLflow imported | goals |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        window = f"{r['window_median_ms']:.3f} / {r['window_p99_ms']:.3f}" if r["window_median_ms"] else "-"
        startup = f"{r['calibration_ms']:.1f}" if r["calibration_ms"] else "-"
        print(
            f"| {r['model']} v{r['version']} | {r['kind']} | {r['median_ms']:.3f} | {r['p99_ms']:.3f}"
            f" | {r['mean_ms']:.3f} | {window}"
            f" | {startup} | {r['peak_rss_mb']:.0f} | {', '.join(r['heavy_imports']) or 'none'}"
            f" | {'met' if r['meets_goals'] else 'MISSED'} |"
        )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

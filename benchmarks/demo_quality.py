"""`autosink demo` at its defaults, run as a new user runs it (the CLI in a subprocess, a fresh
home, a fresh MLflow registry, a fresh signing key), for several demo seeds and torch thread
counts: does every release pass its floors with margin, and how good are the sink models against
the generator's truth? Prints a markdown table, writes JSON.

    .venv/bin/python benchmarks/demo_quality.py [--seeds 0 1 2] [--threads 1 2] [--parallel 2]

Runs with one thread each go two at a time on a 2-core machine (``--parallel``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from autosink_platform.home import Home
from autosink_platform.lake.store import FeatureStore
from autosink_platform.pipelines.sink import SINK, release_quality

CLI = Path(sys.executable).with_name("autosink")


def run_demo(seed: int, threads: int, workdir: Path) -> dict:
    """One fresh-home demo; its releases' quality figures, or its failure."""
    home = Home(workdir / f"seed{seed}-threads{threads}")
    env = os.environ | {
        "AUTOSINK_HOME": str(home.root),
        "DAGSTER_HOME": str(home.dagster),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home.root / 'mlflow.db'}",
        "HOME": str(home.root / "user"),  # the signing key under ~/.config is fresh too
        "OMP_NUM_THREADS": str(threads),  # torch's intra-op threads
    }
    started = time.perf_counter()
    proc = subprocess.run(
        [str(CLI), "demo", "--seed", str(seed), "--no-second-act"], env=env, capture_output=True, text=True
    )
    row = {"seed": seed, "threads": threads, "wall_s": round(time.perf_counter() - started, 1), "rc": proc.returncode}
    if proc.returncode != 0:
        return row | {"error": proc.stderr.strip().splitlines()[-12:]}
    store = FeatureStore(home.store, SINK.name)
    for model in SINK.models:
        versions = sorted((home.fleet / SINK.name / model.name / "versions").iterdir(), key=lambda p: int(p.name))
        row[model.name] = release_quality(home.lake, store, versions[-1])
    return row


def table(rows: list[dict]) -> str:
    head = (
        "| seed | threads | demo | classifier gate: lowest slice (margin) | classifier vs truth: F1 / lowest slice acc."
        " | guard gate: lowest slice (margin) | guard: test FPR / fogged / covered | wall s |"
    )
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        if r["rc"] != 0:
            lines.append(f"| {r['seed']} | {r['threads']} | **failed** | {r['error'][-1]} | | | | {r['wall_s']} |")
            continue
        c, g = r["classifier"], r["frame_guard"]
        lines.append(
            f"| {r['seed']} | {r['threads']} | ok | {c['case_min_group']} {c['case_min']:.3f} (+{c['case_margin']:.3f})"
            f" | {c['truth']['f1']:.3f} / {c['truth_min_slice_accuracy']:.3f}"
            f" | {g['case_min_group']} {g['case_min']:.3f} (+{g['case_margin']:.3f})"
            f" | {g['test']['fpr']:.4f} / {g['test']['detection_fogged']:.3f} / {g['test']['detection_covered']:.3f}"
            f" | {r['wall_s']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--parallel", type=int, default=2, help="one-thread demos run this many at a time")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "demo_quality.json")
    args = parser.parse_args()
    jobs = [(s, t) for t in args.threads for s in args.seeds]
    with tempfile.TemporaryDirectory(prefix="autosink-demo-quality-") as tmp:
        rows = []
        for threads in args.threads:  # never more threads in flight than cores
            width = max(1, args.parallel // threads)
            with ThreadPoolExecutor(width) as pool:
                rows += list(pool.map(lambda j: run_demo(*j, Path(tmp)), [j for j in jobs if j[1] == threads]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu_count": os.cpu_count(), "runs": rows}, indent=1))
    print(table(rows))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

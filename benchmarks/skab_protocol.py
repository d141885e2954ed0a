"""SKAB's outlier-detection leaderboard protocol (``autosink_platform.pipelines.skab``) with our
recurrent autoencoder, next to the published leaderboard rows. One GRU autoencoder per file, as
the protocol fits its models, one file per core.

    .venv/bin/python benchmarks/skab_protocol.py [--cell gru] [--hidden 32] [--epochs 30] [--workers 2]

Needs ../shared/datasets/skab (or $AUTOSINK_DATASETS). Prints a markdown table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from functools import partial
from pathlib import Path

from autosink_platform.models import build_detector
from autosink_platform.pipelines.skab import LEADERBOARD, PER_FILE_RNN_AE, evaluate
from autosink_platform.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default=PER_FILE_RNN_AE["cell"], choices=["rnn", "gru", "lstm"])
    parser.add_argument("--hidden", type=int, default=PER_FILE_RNN_AE["hidden"])
    parser.add_argument("--epochs", type=int, default=PER_FILE_RNN_AE["epochs"])
    parser.add_argument("--batch-size", type=int, default=PER_FILE_RNN_AE["batch_size"])
    parser.add_argument("--patience", type=int, default=PER_FILE_RNN_AE["patience"])
    parser.add_argument(
        "--workers", type=int, default=len(os.sched_getaffinity(0)), help="files fitted at once, one thread each"
    )
    parser.add_argument("--out", default="benchmarks/results/skab_protocol.json")
    args = parser.parse_args()
    params = {
        "cell": args.cell,
        "hidden": args.hidden,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "patience": args.patience,
    }
    start = time.perf_counter()
    result = evaluate(
        Settings.from_environ(os.environ).resources()["datasets"].get(),
        partial(build_detector, "rnn_ae", **params),
        workers=args.workers,
    )
    seconds = time.perf_counter() - start
    ours = result["pooled"]
    print(f"SKAB outlier detection, 34 files, one model per file; {seconds:.0f} s on {args.workers} worker(s)\n")
    print("| algorithm | F1 | FAR, % | MAR, % |")
    print("|---|---|---|---|")
    print(
        f"| ours: rnn_ae ({args.cell}, hidden {args.hidden}) | {ours['f1']:.2f} | {ours['far_percent']:.2f} | {ours['mar_percent']:.2f} |"
    )
    for name, (f1, far, mar) in LEADERBOARD.items():
        print(
            f"| {name} (leaderboard) | {f1:.2f} | {far if far is not None else '-'} | {mar if mar is not None else '-'} |"
        )
    print("\nby group (F1): " + ", ".join(f"{g} {v['f1']:.3f}" for g, v in result["by_group"].items()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"params": params, "workers": args.workers, "seconds": seconds, **result}, indent=1))
    print(f"written: {out}")


if __name__ == "__main__":
    main()

"""The sink classifier's loss under weak labels: on each demo seed's first-act dataset, the
classifier trained as the pipeline trains it, with focal loss (gamma 2, the default) and with
confidence-weighted cross-entropy (gamma 0), for several training seeds. Each is judged
against the generator's truth on the test split, at the threshold the pipeline's own policy
picks on validation labels. A training seed stands for what another machine's arithmetic does
to the same run. Prints a markdown table, writes JSON.

    .venv/bin/python benchmarks/classifier_loss.py [--seeds 0 1 2] [--train-seeds 0 1 2] [--gammas 0 2]

The datasets come from ``autosink demo --seed S --no-second-act`` in fresh homes under
``--homes`` (kept, so a second run trains only).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from autosink_platform.lake.store import FeatureStore
from autosink_platform.models.training import torch_scorer
from autosink_platform.pipelines.sink import SINK, _classifier_operating_data, _classifier_train, truth_report
from autosink_platform.validation.cases import TOO_FEW
from autosink_platform.validation.dataset import DatasetRef

CLI = Path(sys.executable).with_name("autosink")
CLASSIFIER = next(m for m in SINK.models if m.name == "classifier")


def demo_home(root: Path, seed: int) -> Path:
    """A home where the demo's first act ran for ``seed`` (run here unless it already did)."""
    home = root / f"seed{seed}"
    if not (home / "fleet/sink/classifier/versions/1/manifest.json").exists():
        env = os.environ | {
            "AUTOSINK_HOME": str(home),
            "DAGSTER_HOME": str(home / "dagster"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
            "HOME": str(home / "user"),
        }
        cmd = [str(CLI), "demo", "--seed", str(seed), "--no-second-act"]
        subprocess.run(cmd, env=env, check=True, capture_output=True)
    return home


def run(home: Path, seed: int, train_seed: int, gamma: float) -> dict:
    manifest = json.loads((home / "fleet/sink/classifier/versions/1/manifest.json").read_text())
    store = FeatureStore(home / "store", SINK.name)
    data = DatasetRef.of_snapshot(store.dataset_dir(manifest["dataset_snapshot_id"])).open()
    cfg = CLASSIFIER.config
    cfg = dataclasses.replace(cfg, focal_gamma=gamma, fit=dataclasses.replace(cfg.fit, seed=train_seed))
    started = time.perf_counter()
    net, _ = _classifier_train(data, cfg, None, lambda metrics: None)
    seconds = time.perf_counter() - started
    score = torch_scorer(net.eval())
    val = _classifier_operating_data(data, CLASSIFIER.threshold.split, score)
    threshold = float(CLASSIFIER.threshold.choose(val.scores, val.labels).threshold)
    truth, slices = truth_report(home / "lake", data, score, threshold, CLASSIFIER.cases)
    low = slices[slices["status"] != TOO_FEW].sort_values("value").iloc[0]
    return {
        "seed": seed,
        "train_seed": train_seed,
        "focal_gamma": gamma,
        "threshold": threshold,
        "truth": {k: float(v) for k, v in truth.items()},
        "weakest_slice": f"{low['slice']}={low['group']}",
        "weakest_slice_accuracy": float(low["value"]),
        "train_s": round(seconds, 1),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| demo seed | focal gamma | training seeds | truth F1 per training seed | lowest | weakest slice (accuracy) |",
        "|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["seed"], r["focal_gamma"]), []).append(r)
    for (seed, gamma), rs in sorted(groups.items()):
        f1 = [r["truth"]["f1"] for r in rs]
        weakest = min(rs, key=lambda r: r["weakest_slice_accuracy"])
        lines.append(
            f"| {seed} | {gamma:g} | {', '.join(str(r['train_seed']) for r in rs)} | "
            f"{', '.join(f'{v:.3f}' for v in f1)} | {min(f1):.3f} | "
            f"{weakest['weakest_slice']} ({weakest['weakest_slice_accuracy']:.3f}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--gammas", type=float, nargs="+", default=[0.0, 2.0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--homes", type=Path, default=Path("/tmp/autosink-classifier-loss"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "classifier_loss.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for seed in args.seeds:
        home = demo_home(args.homes, seed)
        for gamma in args.gammas:
            for train_seed in args.train_seeds:
                rows.append(run(home, seed, train_seed, gamma))
                print(json.dumps({k: rows[-1][k] for k in ("seed", "focal_gamma", "train_seed")} | rows[-1]["truth"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {str(g): float(np.min([r["truth"]["f1"] for r in rows if r["focal_gamma"] == g])) for g in args.gammas}
    payload = {"cpu_count": os.cpu_count(), "threads": args.threads, "lowest_f1_by_gamma": summary, "runs": rows}
    args.out.write_text(json.dumps(payload, indent=1))
    print(table(rows))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

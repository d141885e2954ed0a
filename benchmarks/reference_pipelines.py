"""Every reference pipeline end to end (snapshot, train, threshold, release) in a throwaway home
with its own MLflow registry: our test figures next to the published reference, and train time.

    .venv/bin/python benchmarks/reference_pipelines.py [--only digits]

Needs ../shared/datasets (or $AUTOSINK_DATASETS). Prints a markdown table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="pipeline name (repeatable); default: all")
    parser.add_argument("--out", default="benchmarks/results/reference_pipelines.json")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="autosink-bench-"))
    os.environ.update(
        AUTOSINK_HOME=str(home / "home"),
        MLFLOW_TRACKING_URI=f"sqlite:///{home / 'mlflow.db'}",
        AUTOSINK_SIGNING_KEY=str(home / "signing.pem"),
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
    )
    from autosink_platform.labeling.protocol import snapshot_dataset
    from autosink_platform.pipelines import lifecycle
    from autosink_platform.pipelines.catalog import REFERENCE_PIPELINES
    from autosink_platform.settings import Settings

    resources = Settings.from_environ(os.environ).resources()
    registry, channel, audit = resources["mlflow"].get(), resources["fleet"].get(), resources["fleet"].audit()
    rows = []
    for name, spec in REFERENCE_PIPELINES.items():
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        ds = snapshot_dataset(spec, resources["datasets"].get(), home / "store").open()
        for model in spec.models:
            trained = lifecycle.train_model(spec, model, ds, registry, "benchmark")
            op, _ = lifecycle.choose_threshold(spec, model, trained, ds, registry, home)
            rel = lifecycle.release_model(spec, model, trained, op, ds, registry, channel, audit, "benchmark")
            test = rel.manifest["metrics"]["test"]
            rows.append(
                {
                    "pipeline": name,
                    "model": f"{spec.name}.{model.name}",
                    "threshold_policy": op.policy,
                    "test": test,
                    "protocol": rel.manifest["metrics"].get("protocol"),
                    "reference": spec.reference,
                    "train_seconds": trained.train_seconds,
                    "pipeline_seconds": time.perf_counter() - start,
                }
            )
    print("| pipeline | model | test F1 | reference F1 | test AUROC | flagged (test) | train s | pipeline s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        t, ref = r["test"], r["reference"].get("test_f1")
        f1 = t["f1"]
        if r["protocol"]:  # a published protocol's own F1 (SKAB: pooled rows), against its best row
            f1, ref = r["protocol"]["pooled"]["f1"], max(v[0] for v in r["reference"]["leaderboard"].values())
        print(
            f"| {r['pipeline']} | {r['model']} | {f1:.4f} | {ref if ref is not None else '-'} | "
            f"{t.get('auroc', float('nan')):.4f} | {t['flagged']:.3f} | {r['train_seconds']:.0f} | {r['pipeline_seconds']:.0f} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1, default=str))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()

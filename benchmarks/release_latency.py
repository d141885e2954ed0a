"""Benchmark: per-frame latency of the sink's released models, and promote -> synced device.

Needs a home where the sink has two released versions of its classifier (`make demo`: the
second act releases v2). It never writes to that home or its registry: the fleet channel and
the SQLite registry are copied to a scratch folder first, and everything below runs on the
copies.

- For each sink model on the stable channel: median latency of one frame through onnxruntime
  and through PyTorch eager (one thread each, the same input), and the ONNX file's size.
- Promote -> device: the classifier's champion is moved to its other released version
  (`promote`, as `autosink promote` does: MLflow alias, signed pointer, audit), then a device
  on the fleet API over loopback syncs, verifies, downloads and smoke-tests it. Repeated,
  alternating between the two versions.

Writes benchmarks/results/release_latency.json and prints a table.

    .venv/bin/python benchmarks/release_latency.py [--runs 300] [--promotions 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch


def median_ms(fn, runs: int) -> float:
    for _ in range(20):  # warm-up
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def scratch_copy(settings, tmp: Path) -> dict[str, str]:
    """The variables that point a process at copies of the home's fleet channel and registry."""
    from autosink_platform.home import EMBEDDED_MLFLOW_URI

    resources = settings.resources()
    uri = resources["mlflow"].tracking_uri or EMBEDDED_MLFLOW_URI
    if not uri.startswith("sqlite:///"):
        raise SystemExit(f"release_latency copies a SQLite registry; {uri} is not one")
    db = Path(uri.removeprefix("sqlite:///"))
    shutil.copyfile(db, tmp / "mlflow.db")
    shutil.copytree(resources["fleet"].get().root, tmp / "home" / "fleet")  # where the fleet API serves it
    return {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "AUTOSINK_HOME": str(tmp / "home"),  # and heartbeats, device tokens, the audit log
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--promotions", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/release_latency.json")
    args = parser.parse_args()

    import uvicorn
    from autosink_pi.client import PiConfig, sync

    from autosink_platform.fleet.api import create_app
    from autosink_platform.pipelines.lifecycle import load_version, registered_name
    from autosink_platform.pipelines.sink import SINK
    from autosink_platform.registry.promotion import promote
    from autosink_platform.settings import Settings

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="release-latency-"))
    scratch = scratch_copy(Settings.from_environ(os.environ), tmp)
    settings = Settings.from_environ({k: v for k, v in os.environ.items() if k != "AUTOSINK_FLEET"} | scratch)
    resources = settings.resources()
    registry, fleet = resources["mlflow"].get(), resources["fleet"]
    channel = fleet.get()
    frame = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    models = []
    for model in SINK.models:
        name = registered_name(SINK, model)
        pointer = channel.read_pointer(SINK.name, model.name, "stable")
        if pointer is None:
            raise SystemExit(f"{name} has no stable release in {channel.root}: run `make demo` first")
        onnx_path = channel.version_dir(SINK.name, model.name, pointer["version"]) / "model.onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        module = load_version(model, registry.client.get_model_version(name, pointer["version"]), registry)
        x = torch.from_numpy(frame)
        with torch.no_grad():
            torch_ms = median_ms(lambda m=module, x=x: m(x), args.runs)
        onnx_ms = median_ms(lambda s=session, f=frame: s.run(None, {s.get_inputs()[0].name: f}), args.runs)
        models.append(
            {
                "model": name,
                "version": pointer["version"],
                "onnxruntime_ms": onnx_ms,
                "pytorch_eager_ms": torch_ms,
                "onnx_kib": onnx_path.stat().st_size / 1024,
            }
        )

    name = "sink.classifier"
    released = sorted(
        (
            str(v.version)
            for v in registry.client.search_model_versions(f"name = '{name}'")
            if v.tags.get("release_path")
        ),
        key=int,
    )
    if len(released) < 2:
        raise SystemExit(f"{name} has {len(released)} released version(s); promote -> device needs two (`make demo`)")
    srv = uvicorn.Server(uvicorn.Config(create_app(settings.home), host="127.0.0.1", port=0, log_level="warning"))
    threading.Thread(target=srv.run, daemon=True).start()
    while not srv.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{srv.servers[0].sockets[0].getsockname()[1]}/v1/fleet"
    root = tmp / "trusted-root.json"  # provisioning
    root.write_bytes((channel.root / "metadata" / "root.json").read_bytes())
    device = PiConfig("bench-pi", url, str(root), str(tmp / "device"))
    start = sync(device).version  # the device runs the champion; each promotion moves it
    promotions = []
    for i in range(args.promotions):
        current = str(registry.alias_version(name, "champion").version)
        target = next(v for v in reversed(released) if v != current)
        t0 = time.perf_counter()
        promote(registry, channel, fleet.audit(), name, target, "benchmark: promote-to-device time", who="benchmark")
        promoted = time.perf_counter() - t0
        result = sync(device)
        synced = time.perf_counter() - t0
        if (result.status, result.version) != ("updated", target):
            raise SystemExit(f"promotion {i + 1}: the device answered {result.status} v{result.version}, not v{target}")
        promotions.append({"from": current, "to": target, "promote_s": promoted, "to_device_s": synced})
    srv.should_exit = True
    shutil.rmtree(tmp, ignore_errors=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "runs": args.runs,
        "threads": 1,
        "cpu": os.cpu_count(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "device_started_on": start,
    }
    out.write_text(json.dumps({"meta": meta, "models": models, "promotions": promotions}, indent=1))
    print("| model | version | onnxruntime ms | PyTorch eager ms | ratio | ONNX KiB |")
    print("|---|---|---|---|---|---|")
    for m in models:
        print(
            f"| {m['model']} | {m['version']} | {m['onnxruntime_ms']:.3f} | {m['pytorch_eager_ms']:.3f}"
            f" | {m['onnxruntime_ms'] / m['pytorch_eager_ms']:.2f} | {m['onnx_kib']:.1f} |"
        )
    to_device = [p["to_device_s"] for p in promotions]
    print(
        f"\npromote -> synced device over loopback ({len(promotions)} promotions between v{released[-2]} and"
        f" v{released[-1]}): median {statistics.median(to_device):.3f} s, max {max(to_device):.3f} s"
        f" (promote itself median {statistics.median(p['promote_s'] for p in promotions):.3f} s)"
    )
    print(f"one 64x64 frame, median of {args.runs} runs after 20 warm-up runs\nwrote {out}")


if __name__ == "__main__":
    main()

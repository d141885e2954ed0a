"""Benchmark: per-frame latency of the released models, and promote -> synced device.

Needs a home with released models (run `make demo` first). For each model on the stable
channel: median latency of one frame through onnxruntime (1 thread) and through PyTorch eager
(1 thread) on the same input, and the ONNX file size. Then the time from `promote` to a device
that has synced, verified and smoke-tested the release over HTTP on loopback.

    .venv/bin/python benchmarks/release_latency.py [--runs 300]
"""

import argparse
import json
import os
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()

    import uvicorn
    from autosink_pi.client import PiConfig, sync

    from autosink_platform.fleet.api import create_app
    from autosink_platform.pipelines.lifecycle import load_alias, registered_name
    from autosink_platform.pipelines.sink import SINK
    from autosink_platform.registry.promotion import promote
    from autosink_platform.settings import Settings

    torch.set_num_threads(1)
    settings = Settings.from_environ(os.environ)
    resources = settings.resources()
    registry, fleet = resources["mlflow"].get(), resources["fleet"]
    channel = fleet.get()
    frame = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    rows = []
    for model in SINK.models:
        name = registered_name(SINK, model)
        pointer = channel.read_pointer(SINK.name, model.name, "stable")
        if pointer is None:
            raise SystemExit(f"{name} has no stable release in {channel.root}: run `make demo` first")
        onnx_path = channel.version_dir(SINK.name, model.name, pointer["version"]) / "model.onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        module = load_alias(model, name, "champion", registry)
        x = torch.from_numpy(frame)
        with torch.no_grad():
            torch_ms = median_ms(lambda m=module, x=x: m(x), args.runs)
        onnx_ms = median_ms(lambda s=session, f=frame: s.run(None, {s.get_inputs()[0].name: f}), args.runs)
        rows.append((name, pointer["version"], onnx_ms, torch_ms, onnx_path.stat().st_size / 1024))

    # promote -> a device on loopback has synced and smoke-tested the release
    home = settings.home
    srv = uvicorn.Server(uvicorn.Config(create_app(home), host="127.0.0.1", port=0, log_level="warning"))
    threading.Thread(target=srv.run, daemon=True).start()
    while not srv.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{srv.servers[0].sockets[0].getsockname()[1]}/v1/fleet"
    with tempfile.TemporaryDirectory() as tmp:
        public = Path(tmp) / "key.pem"
        public.write_bytes((channel.root / "keys" / f"{channel.key_id}.pem").read_bytes())
        champion = registry.alias_version("sink.classifier", "champion").version
        t0 = time.perf_counter()
        promote(
            registry,
            channel,
            fleet.audit(),
            "sink.classifier",
            champion,
            "benchmark: promote-to-device time",
            who="benchmark",
        )
        promoted = time.perf_counter() - t0
        result = sync(PiConfig("bench-pi", url, str(public), str(Path(tmp) / "device")))
        synced = time.perf_counter() - t0
    srv.should_exit = True

    print(
        f"\n{'model':20} {'version':>7} | {'onnxruntime 1 thr (ms)':>22} | {'PyTorch eager 1 thr (ms)':>24} | {'ratio':>5} | {'ONNX size (KiB)':>15}"
    )
    print("-" * 108)
    for name, version, onnx_ms, torch_ms, kib in rows:
        print(
            f"{name:20} {version:>7} | {onnx_ms:>22.3f} | {torch_ms:>24.3f} | {onnx_ms / torch_ms:>5.2f} | {kib:>15.1f}"
        )
    print(
        f"\npromote -> synced device over loopback: {synced:.2f} s (promote itself {promoted:.2f} s; sync {result.status} v{result.version})"
    )
    print(
        f"one 64x64 frame, median of {args.runs} runs after 20 warm-up runs; {json.dumps({'torch': torch.__version__, 'onnxruntime': ort.__version__})}"
    )


if __name__ == "__main__":
    main()

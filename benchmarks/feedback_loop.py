"""Benchmark: does handling one new session get slower as the lake grows?

For lakes that already hold N ingested, labeled sessions (registered as Dagster partitions),
commit one more realistic session (240 frames) and time:
  - the new-sessions sensor tick that discovers it,
  - the Dagster run that ingests and labels it (sink_ingest, one partition).
Prints a table; the target is a ratio (N=2000 vs N=10) of at most 1.3.

    .venv/bin/python benchmarks/feedback_loop.py [--sizes 10 2000] [--repeats 3]
"""

import argparse
import io
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from PIL import Image


def tiny_session(lake, index: int, frames: list[bytes]) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=7 * index)
    meta = {
        "device_id": f"pi-{index % 50:03d}",
        "session_id": f"fill-{index:05d}",
        "started_at": start.isoformat(),
        "ended_at": (start + timedelta(seconds=len(frames) / 5)).isoformat(),
        "fps": 5,
        "firmware": "1.0.0",
        "model_version": "sink.classifier/0",
        "schema_version": 1,
    }
    events = [{"t": 0.4, "type": "valve_open", "score": 0.8}, {"t": 1.0, "type": "user_close"}]
    lake.write_session(meta, frames, events)


def run(n: int, repeats: int, workdir: Path) -> dict:
    os.environ["AUTOSINK_HOME"] = str(workdir / "home")
    import dagster as dg

    from autosink_platform.definitions import defs
    from autosink_platform.defs.resources import LakeResource
    from autosink_platform.defs.runner import QUIET
    from autosink_platform.defs.sensors import SETTLE
    from autosink_platform.lake.demo import DemoLakeConfig, generate_demo_lake
    from autosink_platform.lake.sessions import Lake
    from autosink_platform.lake.store import FeatureStore
    from autosink_platform.pipelines.sink import SINK, ingest_session, label_session

    lake = Lake(workdir / "home" / "lake")
    store = FeatureStore(workdir / "home" / "store", "sink")
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 90, 90)).save(buf, format="PNG")
    frames = [buf.getvalue()] * 10
    for i in range(n):
        tiny_session(lake, i, frames)
    for sid in lake.committed_sessions():
        ingest_session(lake, store, sid)
        label_session(store, sid, SINK.source.labeling)
    (workdir / "dagster").mkdir()
    sensor = defs.resolve_sensor_def("sink_new_sessions")
    ingest = defs.resolve_job_def("sink_ingest")
    ticks, runs = [], []
    with dg.DagsterInstance.local_temp(str(workdir / "dagster")) as instance:
        instance.add_dynamic_partitions("sink_sessions", list(lake.committed_sessions()))
        cursor = str(lake.read_commits(0)[1])
        for r in range(repeats):
            generate_demo_lake(
                lake.root,
                DemoLakeConfig(
                    devices=1, sessions_per_device=1, seed=100 + r, start=f"2026-12-{r + 1:02d}T08:00:00+00:00"
                ),
                progress=False,
            )
            time.sleep(SETTLE.total_seconds())  # the daemon's tick that requests it comes once the upload settled
            t0 = time.perf_counter()
            result = sensor(
                dg.build_sensor_context(
                    instance=instance, cursor=cursor, resources={"lake": LakeResource(root=str(lake.root))}
                )
            )
            ticks.append(time.perf_counter() - t0)
            (request,) = result.run_requests
            instance.add_dynamic_partitions("sink_sessions", [request.partition_key])
            cursor = result.cursor
            t0 = time.perf_counter()
            assert ingest.execute_in_process(
                instance=instance, partition_key=request.partition_key, run_config=QUIET
            ).success
            runs.append(time.perf_counter() - t0)
    return {"n": n, "tick_ms": 1000 * statistics.median(ticks), "run_s": statistics.median(runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 2000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(run(n, args.repeats, Path(tmp)))
    base = rows[0]
    print(
        f"\n{'sessions in lake':>17} | {'sensor tick (ms)':>16} | {'ingest+label run (s)':>20} | {'run ratio':>9} | {'tick ratio':>10}"
    )
    print("-" * 85)
    for r in rows:
        print(
            f"{r['n']:>17} | {r['tick_ms']:>16.1f} | {r['run_s']:>20.3f} | {r['run_s'] / base['run_s']:>9.2f} | {r['tick_ms'] / base['tick_ms']:>10.2f}"
        )
    print(f"\nmedian of {args.repeats} new sessions (240 frames each) per lake size; target run ratio <= 1.3")


if __name__ == "__main__":
    main()

"""Benchmark: the sink pipeline on the embedded default vs the production configuration, and
lake listing on an object store vs a local folder.

Pipeline (same demo lake, a fresh home, MLflow registry and fleet channel per row):
  - embedded: SQLite Dagster instance, runs in this process (what `make demo` does);
  - postgres: infra/dagster/dagster.yaml on a fresh database of the local PostgreSQL;
  - postgres + celery: the same instance, `autosink run` with AUTOSINK_EXECUTOR=celery and two
    dagster-celery workers (separate processes) on the local RabbitMQ.
Lake listing: committed_sessions() and read_commits() over N committed sessions, in a folder
and in a bucket on moto's S3 server (loopback HTTP).

    .venv/bin/python benchmarks/scale_out.py [--sessions 3] [--frames 120] [--listing 200]

Needs PostgreSQL on 127.0.0.1:5432 (user postgres) and RabbitMQ on 5672 for the last two rows.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from autosink_platform.testing import celery_worker_command, scratch_postgres_database

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def fresh_home(lake_template: Path):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        home = tmp / "home"
        home.mkdir()
        shutil.copytree(lake_template, home / "lake")
        env = {
            "AUTOSINK_HOME": str(home),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            "AUTOSINK_SIGNING_KEY": str(tmp / "signing.pem"),
        }
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield home, tmp
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def embedded(lake_template: Path) -> float:
    import dagster as dg

    from autosink_platform.definitions import defs
    from autosink_platform.defs.runner import materialize_pipeline
    from autosink_platform.lake.sessions import Lake
    from autosink_platform.pipelines.sink import SINK

    with fresh_home(lake_template) as (home, tmp):
        (tmp / "dagster").mkdir()
        with dg.DagsterInstance.local_temp(str(tmp / "dagster")) as instance:
            start = time.perf_counter()
            materialize_pipeline(defs, SINK, instance, Lake(home / "lake"), progress=False)
            return time.perf_counter() - start


def on_postgres(lake_template: Path) -> float:
    import dagster as dg

    from autosink_platform.definitions import defs
    from autosink_platform.defs.runner import materialize_pipeline
    from autosink_platform.lake.sessions import Lake
    from autosink_platform.pipelines.sink import SINK

    with fresh_home(lake_template) as (home, tmp), scratch_postgres_database("autosink_bench") as url:
        (tmp / "dagster_home").mkdir()
        shutil.copy(REPO / "infra" / "dagster" / "dagster.yaml", tmp / "dagster_home" / "dagster.yaml")
        os.environ["DAGSTER_POSTGRES_URL"] = url
        with dg.DagsterInstance.from_config(str(tmp / "dagster_home")) as instance:
            start = time.perf_counter()
            materialize_pipeline(defs, SINK, instance, Lake(home / "lake"), progress=False)
            return time.perf_counter() - start


def on_celery(lake_template: Path, workers: int = 2) -> float:
    with fresh_home(lake_template) as (home, tmp), scratch_postgres_database("autosink_bench") as url:
        dagster_home = tmp / "dagster_home"
        dagster_home.mkdir()
        shutil.copy(REPO / "infra" / "dagster" / "dagster.yaml", dagster_home / "dagster.yaml")
        queue = f"autosink-bench-{uuid.uuid4().hex[:8]}"
        env = os.environ | {
            "DAGSTER_HOME": str(dagster_home),
            "DAGSTER_POSTGRES_URL": url,
            "AUTOSINK_EXECUTOR": "celery",
            "AUTOSINK_CELERY_QUEUE": queue,
        }
        bin_dir = Path(sys.executable).parent
        procs = [
            subprocess.Popen(
                celery_worker_command(queue, i),
                env=env,
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i in range(workers)
        ]
        try:
            start = time.perf_counter()
            done = subprocess.run([str(bin_dir / "autosink"), "run"], env=env, cwd=REPO, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if done.returncode:
                raise RuntimeError(done.stderr[-2000:])
            return seconds
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=60)


def listing(n_sessions: int) -> dict:
    """Seconds to list N committed sessions and to read their commits, folder vs bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    from autosink_platform.lake.demo import DemoLakeConfig, generate_demo_lake
    from autosink_platform.lake.sessions import Lake

    cfg = DemoLakeConfig(devices=4, sessions_per_device=n_sessions // 4, frames_per_session=10, image_size=32)
    out = {}
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        os.environ.update(
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
            AUTOSINK_S3_ENDPOINT=f"http://{host}:{port}",
        )
        boto3.client("s3", endpoint_url=f"http://{host}:{port}").create_bucket(Bucket="bench")
        with tempfile.TemporaryDirectory() as tmp:
            for name, root in (("local folder", Path(tmp) / "lake"), ("S3 (moto, loopback)", "s3://bench/lake")):
                lake = Lake(root)
                generate_demo_lake(lake.root, cfg, progress=False)
                lake = Lake(root)  # no warm listing cache
                start = time.perf_counter()
                sessions = lake.committed_sessions()
                list_s = time.perf_counter() - start
                start = time.perf_counter()
                commits, _ = lake.read_commits()
                commits_s = time.perf_counter() - start
                assert len(sessions) == len(commits) == cfg.devices * cfg.sessions_per_device
                out[name] = {"sessions": len(sessions), "list_s": list_s, "commits_s": commits_s}
    finally:
        server.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=3, help="per device")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--listing", type=int, default=200, help="sessions in the listing benchmark")
    parser.add_argument("--out", default="benchmarks/results/scale_out.json")
    args = parser.parse_args()

    from autosink_platform.lake.demo import DemoLakeConfig, generate_demo_lake

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        template = Path(tmp) / "lake"
        cfg = DemoLakeConfig(
            devices=args.devices, sessions_per_device=args.sessions, frames_per_session=args.frames, seed=7
        )
        generate_demo_lake(template, cfg, progress=False)
        for name, fn in (
            ("embedded (SQLite, in-process)", embedded),
            ("Postgres, in-process", on_postgres),
            ("Postgres + 2 Celery workers", on_celery),
        ):
            results[name] = fn(template)
            print(f"{name}: {results[name]:.1f} s", flush=True)
    lake = listing(args.listing)

    n = args.devices * args.sessions
    print(f"\nSink pipeline, {n} sessions x {args.frames} frames ({n} ingest runs + 1 train run):\n")
    print("| configuration | wall s |")
    print("|---|---|")
    for name, seconds in results.items():
        print(f"| {name} | {seconds:.1f} |")
    print(f"\nLake listing, {args.listing} committed sessions:\n")
    print("| lake | committed_sessions() s | sessions/s | read_commits() s | commits/s |")
    print("|---|---|---|---|---|")
    for name, r in lake.items():
        print(
            f"| {name} | {r['list_s']:.3f} | {r['sessions'] / r['list_s']:.0f} | {r['commits_s']:.3f} | {r['sessions'] / r['commits_s']:.0f} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"pipeline_seconds": results, "listing": lake, "args": vars(args)}, indent=1))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()

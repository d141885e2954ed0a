"""The production configuration in ``infra/`` against the real services on this machine: the
sink pipeline on a Dagster instance stored in PostgreSQL (``infra/dagster/dagster.yaml`` as
shipped), and a reference pipeline registered through an ``mlflow server`` with a PostgreSQL
backend store and artifacts proxied to an S3 bucket (moto's S3 server on loopback). Each test
skips, naming what is missing, where a service is absent."""

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from autosink_platform.definitions import defs
from autosink_platform.defs.runner import materialize_pipeline
from autosink_platform.defs.sensors import INGEST_BATCH
from autosink_platform.labeling.protocol import snapshot_dataset
from autosink_platform.lake.sessions import Lake
from autosink_platform.live import free_port
from autosink_platform.pipelines import lifecycle
from autosink_platform.pipelines.robotarm import ROBOTARM
from autosink_platform.pipelines.sink import SINK
from autosink_platform.testing import LOCAL_POSTGRES, celery_worker_command, scratch_postgres_database

from .conftest import platform_resources, stop, wait_for_http
from .fake_reference_data import make_fake_datasets

POSTGRES = os.environ.get("AUTOSINK_TEST_POSTGRES", LOCAL_POSTGRES)

pytestmark = pytest.mark.services

psycopg2 = pytest.importorskip("psycopg2", reason="needs psycopg2 (the scale extra)")
boto3 = pytest.importorskip("boto3", reason="needs boto3 (the scale extra)")

INFRA = Path(__file__).resolve().parents[1] / "infra"


@pytest.fixture
def pg_database():
    """A fresh database on the local PostgreSQL server, dropped afterwards."""
    try:
        psycopg2.connect(f"{POSTGRES}/postgres", connect_timeout=3).close()
    except psycopg2.OperationalError as e:
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES} (set AUTOSINK_TEST_POSTGRES): {e}")
    with scratch_postgres_database("autosink_test", POSTGRES) as url:
        yield url


def _query(url: str, sql: str) -> list[tuple]:
    with psycopg2.connect(url.replace("+psycopg2", "", 1)) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


@pytest.fixture
def postgres_dagster_home(pg_database, tmp_path, monkeypatch) -> Path:
    """A DAGSTER_HOME holding infra/dagster/dagster.yaml as shipped, on the fresh database."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(INFRA / "dagster" / "dagster.yaml", dagster_home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", pg_database)
    return dagster_home


def test_sink_pipeline_on_a_postgres_dagster_instance(home, pg_database, postgres_dagster_home):
    with dg.DagsterInstance.from_config(str(postgres_dagster_home)) as instance:
        storages = {
            type(s).__name__ for s in (instance.run_storage, instance.event_log_storage, instance.schedule_storage)
        }
        assert storages == {"PostgresRunStorage", "PostgresEventLogStorage", "PostgresScheduleStorage"}
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        start = time.perf_counter()
        out = materialize_pipeline(defs, SINK, instance, Lake(home / "lake"), progress=False)
        print(f"\nsink pipeline on Postgres-backed Dagster: {time.perf_counter() - start:.1f} s")
        sessions = set(Lake(home / "lake").committed_sessions())
        assert instance.get_materialized_partitions(dg.AssetKey(["sink", "labeled_frames"])) == sessions
        assert out["classifier_release"].manifest["dagster_run_id"] == out["run_id"]

    # What the instance wrote is in PostgreSQL: the ingest runs (up to INGEST_BATCH sessions
    # each) plus the train run, and every materialization in the event log.
    runs = dict(_query(pg_database, "SELECT status, count(*) FROM runs GROUP BY status"))
    assert runs == {"SUCCESS": -(-len(sessions) // INGEST_BATCH) + 1}, runs
    (materialized,) = _query(
        pg_database, "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
    )[0]
    assert materialized >= 2 * len(sessions) + 7, materialized


@pytest.fixture
def mlflow_server(pg_database, s3_endpoint, bucket, tmp_path):
    """``mlflow server`` as infra/compose.yaml starts it: PostgreSQL backend store, artifacts
    proxied (--serve-artifacts) to the S3 bucket; on a free loopback port."""
    endpoint = s3_endpoint
    port = free_port()
    log = (tmp_path / "mlflow-server.log").open("w")
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [
            str(mlflow),
            "server",
            "--backend-store-uri",
            pg_database,
            "--artifacts-destination",
            f"s3://{bucket}/artifacts",
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=os.environ | {"MLFLOW_S3_ENDPOINT_URL": endpoint},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/health", proc, tmp_path / "mlflow-server.log", timeout=120)
    yield url, pg_database, endpoint, bucket
    stop([proc])
    log.close()


def test_reference_pipeline_through_an_mlflow_server_on_postgres_and_s3(home, mlflow_server, tmp_path, monkeypatch):
    url, database, endpoint, bucket = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    registry = platform_resources()["mlflow"].get()
    fleet = platform_resources()["fleet"]
    root = make_fake_datasets(tmp_path / "datasets")
    ds = snapshot_dataset(ROBOTARM, root, tmp_path / "store").open()
    model = ROBOTARM.models[0]
    trained = lifecycle.train_model(ROBOTARM, model, ds, registry, "services")
    op, _ = lifecycle.choose_threshold(ROBOTARM, model, trained, ds, registry, tmp_path)
    rel = lifecycle.release_model(ROBOTARM, model, trained, op, ds, registry, fleet.get(), fleet.audit(), "services")
    assert str(registry.alias_version("robotarm.pca", "champion").version) == trained.version

    # The registry lives in PostgreSQL, the artifacts in the bucket, reached only through the server.
    assert _query(database, "SELECT name FROM registered_models") == [("robotarm.pca",)]
    (aliases,) = _query(database, "SELECT alias, version FROM registered_model_aliases WHERE alias = 'champion'")
    assert aliases == ("champion", int(trained.version))
    run = registry.client.get_run(trained.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
    keys = [
        o["Key"]
        for page in boto3.client("s3", endpoint_url=endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", [])
    ]
    for name in ("detector.pt", "threshold.json", "release/manifest.json"):
        assert any(k.endswith(f"{trained.run_id}/artifacts/{name}") for k in keys), (name, keys[:20])
    assert any(k.endswith("model.onnx") for k in keys)
    assert rel.manifest["mlflow_run_id"] == trained.run_id


@pytest.fixture
def rabbitmq() -> str:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=3).close()
    except OSError as e:
        pytest.skip(f"RabbitMQ is not reachable on 127.0.0.1:5672 (the Celery broker): {e}")
    return "pyamqp://guest:guest@127.0.0.1:5672//"


def test_sink_pipeline_steps_run_on_celery_workers(
    home, pg_database, postgres_dagster_home, rabbitmq, tmp_path, monkeypatch
):
    """The same code, changed by configuration only: AUTOSINK_EXECUTOR=celery sends every step
    to RabbitMQ, and two dagster-celery worker processes run them against the Postgres instance."""
    queue = f"autosink-test-{uuid.uuid4().hex[:8]}"  # this test's workers only
    for k, v in {
        "AUTOSINK_EXECUTOR": "celery",
        "AUTOSINK_CELERY_BROKER": rabbitmq,
        "AUTOSINK_CELERY_QUEUE": queue,
    }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("DAGSTER_HOME", str(postgres_dagster_home))
    logs = [(tmp_path / f"worker-{i}.log").open("w") for i in range(2)]
    workers = [
        subprocess.Popen(
            [*celery_worker_command(queue, i), "-l", "INFO"],
            env=os.environ | {"DAGSTER_CELERY_BROKER_HOST": "127.0.0.1"},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[1],
        )
        for i, log in enumerate(logs)
    ]
    try:
        # The launcher is its own process, like the daemon: the code location is loaded with
        # the executor its environment configures.
        start = time.perf_counter()
        done = subprocess.run(
            [str(Path(sys.executable).with_name("autosink")), "run", "--pipeline", "sink"],
            capture_output=True,
            text=True,
            timeout=1200,
        )
        seconds = time.perf_counter() - start
        assert done.returncode == 0, done.stderr[-3000:]
        print(f"\nsink pipeline on Postgres + 2 Celery workers: {seconds:.1f} s")
        with dg.DagsterInstance.from_config(str(postgres_dagster_home)) as instance:
            sessions = set(Lake(home / "lake").committed_sessions())
            runs = instance.get_run_records()
            assert len(runs) == -(-len(sessions) // INGEST_BATCH) + 1 and all(r.dagster_run.is_success for r in runs)
            assert instance.get_materialized_partitions(dg.AssetKey(["sink", "labeled_frames"])) == sessions
            train = next(r.dagster_run for r in runs if r.dagster_run.job_name == "sink_train")
            release = instance.get_latest_materialization_event(dg.AssetKey(["sink", "classifier_release"]))
            assert release is not None and release.run_id == train.run_id
            # Every step was submitted to the broker and executed in a worker process.
            events = instance.all_logs(train.run_id)
            messages = [e.message or "" for e in events]
            submitted = [m for m in messages if m.startswith("Submitting celery task")]
            in_worker = [m for m in messages if "in celery worker" in m]
            succeeded = [e for e in events if e.is_dagster_event and e.dagster_event.is_step_success]
            assert len(submitted) == len(in_worker) == len(succeeded) >= 8, [
                m for m in messages if "celery" in m.lower() or "subprocess" in m
            ][:10]
    finally:
        stop(workers)
        for log in logs:
            log.close()
    worker_logs = "".join((tmp_path / f"worker-{i}.log").read_text() for i in range(2))
    ingest_runs = -(-len(sessions) // INGEST_BATCH)  # two steps each (raw_sessions, labeled_frames)
    assert worker_logs.count("succeeded in") >= ingest_runs * 2 + len(succeeded), worker_logs[-2000:]

"""One contract, every pipeline: each of the five is materialized through a real Dagster
instance into MLflow versions with ``challenger``/``champion`` aliases and signed releases that a
device runs (synced from the fleet API, its own command scoring the raw test inputs), and a
champion moved with the MLflow client reaches its fleet channel through the champion sensor."""

import contextlib
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from autosink_pi.client import PiConfig, sync
from autosink_pi.manifest import ImageInput, RowsInput, WindowsInput, parse
from PIL import Image

from autosink_platform import definitions
from autosink_platform.defs.factory import build_pipeline_defs
from autosink_platform.defs.runner import QUIET, materialize_pipeline
from autosink_platform.lake.demo import DemoLakeConfig, generate_demo_lake
from autosink_platform.lake.sessions import Lake
from autosink_platform.pipelines import catalog
from autosink_platform.pipelines.robotarm import ROBOTARM
from autosink_platform.pipelines.sink import SINK
from autosink_platform.pipelines.spec import PromotionPolicy
from autosink_platform.thresholds import calibrated

from .conftest import fleet_api, platform_resources
from .fake_reference_data import SMALL, make_fake_datasets

pytestmark = pytest.mark.slow

MANUAL = PromotionPolicy(mode="manual")  # the second version waits as challenger; the test moves the alias
PIPELINES = {
    "sink": dataclasses.replace(SINK, promotion=MANUAL),
    "robotarm": ROBOTARM,
    **SMALL,
}


def test_the_contract_covers_every_pipeline_of_the_code_location():
    assert set(PIPELINES) == set(catalog.PIPELINES) == {k.path[0] for k in definitions.defs.resolve_all_asset_keys()}


def _new_data(spec, home, monkeypatch, tmp_path_factory) -> None:
    """What a pipeline's next version is trained on: two new sessions in the sink's lake; for a
    reference pipeline, its public files replaced by another draw (a new dataset snapshot)."""
    if spec.name == "sink":
        start = "2026-11-20T08:00:00+00:00"
        generate_demo_lake(
            home / "lake",
            DemoLakeConfig(devices=1, sessions_per_device=2, frames_per_session=120, seed=9, start=start),
            progress=False,
        )
    else:
        monkeypatch.setenv("AUTOSINK_DATASETS", str(make_fake_datasets(tmp_path_factory.mktemp("datasets"), seed=1)))


def _defs(spec) -> dg.Definitions:
    return dg.Definitions.merge(build_pipeline_defs(spec), dg.Definitions(resources=definitions.defs.resources))


def _materialize(spec, instance, home) -> None:
    defs = _defs(spec)
    if spec.name == "sink":
        materialize_pipeline(defs, spec, instance, Lake(home / "lake"), progress=False)
    else:
        assert (
            defs.resolve_job_def(f"{spec.name}_pipeline")
            .execute_in_process(instance=instance, run_config=QUIET)
            .success
        )


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    return make_fake_datasets(tmp_path_factory.mktemp("datasets"))


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_a_champion_moved_in_mlflow_reaches_the_fleet_channel(
    name, home, fake_root, monkeypatch, tmp_path, tmp_path_factory
):
    monkeypatch.setenv("AUTOSINK_DATASETS", str(fake_root))
    spec = PIPELINES[name]
    resources = platform_resources()
    registry, channel = resources["mlflow"].get(), resources["fleet"].get()
    model = spec.models[0].name
    registered = f"{name}.{model}"
    (tmp_path / "dagster").mkdir()
    with dg.DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:
        # 1. The first release of every model is challenger and champion, published and signed.
        _materialize(spec, instance, home)
        for m in spec.models:
            assert set(registry.client.get_model_version(f"{name}.{m.name}", "1").aliases) == {"challenger", "champion"}
            assert channel.read_pointer(name, m.name, "stable")["version"] == "1"  # from verified TUF metadata
            assert channel.published(name, m.name, "1")  # its files are signed targets

        # Every model's first release runs on a device and decides as the platform measured it.
        with fleet_api(home) as api:
            data = _defs(spec).load_asset_value(dg.AssetKey([name, "validated_dataset"]), instance=instance).open()
            for m in spec.models:
                _device_agrees_on_every_test_input(spec, m, data, channel, api, tmp_path / f"pi-{m.name}")

        # 2. New data: a second version is validated and published, but under a manual policy it
        # only waits as challenger.
        _new_data(spec, home, monkeypatch, tmp_path_factory)
        _materialize(spec, instance, home)
        v2 = registry.client.get_model_version(registered, "2")
        assert set(v2.aliases) == {"challenger"} and v2.tags["validation_status"] == "passed"
        assert channel.read_pointer(name, model, "stable")["version"] == "1"

        # 3. Someone moves the alias with the MLflow client; the pipeline's own sensor and publish
        # job point the stable channel at it, and the audit log says who did.
        registry.client.set_registered_model_alias(registered, "champion", "2")
        defs = _defs(spec)
        sensor = defs.resolve_sensor_def(f"{name}_champion_moved")
        context = lambda: dg.build_sensor_context(  # noqa: E731
            instance=instance, resources={k: resources[k] for k in ("mlflow", "fleet")}
        )
        request = sensor(context())
        assert isinstance(request, dg.RunRequest) and f"{registered}:v2" in request.run_key
        result = defs.resolve_job_def(f"{name}_publish").execute_in_process(
            instance=instance, run_config=QUIET, tags=request.tags
        )
        assert result.success
        assert channel.read_pointer(name, model, "stable")["version"] == "2"
        assert isinstance(sensor(context()), dg.SkipReason)
        published = [e for e in resources["fleet"].audit().entries(registered) if e["action"] == "publish"]
        assert [(e["from"], e["to"]) for e in published] == [("1", "2")]
        channels = instance.get_latest_materialization_event(dg.AssetKey([name, "fleet_channel"]))
        assert channels.asset_materialization.metadata["published_now"].value == [f"{registered} v2"]


def _device_agrees_on_every_test_input(spec, model, data, channel, api: str, state: Path) -> None:
    """A device provisioned with the channel's TUF root syncs release 1 of ``model`` over HTTP, then
    `autosink-pi infer` scores the release's test inputs in their raw form (PNG files, CSV rows):
    the decisions equal the platform's onnxruntime predictions on every sample, and the test
    metrics recomputed from the device's scores equal the ones the release reports."""
    state.mkdir(parents=True)
    root = state / "trusted-root.json"
    root.write_bytes((channel.root / "metadata" / "root.json").read_bytes())  # provisioning
    cfg = PiConfig(f"pi-{model.name}", f"{api}/v1/fleet", str(root), str(state / "device"), spec.name, model.name)
    assert sync(cfg).version == "1"
    (state / "pi.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    vdir = channel.version_dir(spec.name, model.name, "1")
    manifest = json.loads((vdir / "manifest.json").read_text())

    # The test split as the release stage evaluated it, recording the raw inputs it scored.
    batches, onnx = [], model.onnx_scorer(vdir / "model.onnx")
    d = model.operating_data(data, "test", lambda raw: batches.append(np.asarray(raw)) or onnx(raw))
    ours = calibrated(data.table.iloc[d.rows], d.scores, manifest["threshold"])
    raw, threshold = np.concatenate(batches), manifest["threshold"]["threshold"]
    fed = parse(manifest).input  # what the device is fed
    if isinstance(fed, WindowsInput):  # each session's raw series, streamed as a rig or a shaft sensor sends it
        device = _stream_sessions(state, fed, data, d.rows)
    elif manifest["threshold"]["policy"] == "session_ucl":  # each session on its own calibration
        sources = data.table["source"].to_numpy()[d.rows]
        device = [None] * len(raw)
        for source in np.unique(sources):
            at = np.flatnonzero(sources == source)
            for i, out in zip(at, _infer(state, fed, raw[at], source), strict=True):
                device[i] = out
    else:
        device = _infer(state, fed, raw)
    scores = np.array([out["score"] for out in device])
    assert [out["decision"] for out in device] == list(ours >= threshold)
    np.testing.assert_allclose(scores, ours, rtol=1e-4, atol=1e-7)
    assert {out["version"] for out in device} == {"1"}
    recomputed = model.metrics(d, scores, threshold)
    for metric, value in manifest["metrics"]["test"].items():
        assert recomputed[metric] == pytest.approx(value, abs=1e-6), metric
    if spec.protocol is not None:  # the published protocol's figures, from the device's decisions
        flags = np.array([out["decision"] for out in device])
        protocol = spec.protocol(data.frames(d.rows), flags, data.extras(), spec.source.config)
        assert protocol == manifest["metrics"]["protocol"]


def _stream_sessions(state: Path, spec: WindowsInput, data, rows: np.ndarray) -> list[dict]:
    """Per session, its raw readings from the start-up before its first test window to the end
    of its last, streamed to the device's standard input as CSV: the device's decisions, in the test rows' order, each
    at the last row of its window."""
    table, series = data.table.iloc[rows], data.extras()["series"]
    device = [None] * len(rows)
    for source in table["source"].unique():
        at = np.flatnonzero(table["source"].to_numpy() == source)
        at = at[np.argsort(table["position"].to_numpy()[at], kind="stable")]
        positions = table["position"].to_numpy()[at]
        first = positions[0] - spec.startup_rows
        readings = series[series["source"] == source].sort_values("row")[spec.columns].to_numpy()
        readings = readings[first : positions[-1] + spec.window]
        outputs = _infer(state, spec, readings)
        assert len(outputs) == len(at), source
        assert [out["input"] for out in outputs] == [f"row {p - first + spec.window}" for p in positions]
        for i, out in zip(at, outputs, strict=True):
            device[i] = out
    return device


def _infer(state: Path, spec, raw: np.ndarray, session: str | None = None) -> list[dict]:
    """The device's own command on raw inputs written as a device gets them."""
    inputs = state / "inputs"
    inputs.mkdir(exist_ok=True)
    if isinstance(spec, ImageInput):
        args = []
        for i, image in enumerate(raw):
            path = inputs / f"{i:05d}.png"
            Image.fromarray(np.asarray(image).astype(np.uint8), spec.color).save(path)
            args.append(str(path))
    else:  # rows (a series' readings) with their header; the graph's own tensors flattened, one per line
        header = [",".join(spec.columns)] if isinstance(spec, RowsInput | WindowsInput) else []
        lines = header + [",".join(repr(float(v)) for v in row.ravel()) for row in raw]
        (inputs / "rows.csv").write_text("\n".join(lines) + "\n")
        # a series streams on standard input, as a sensor's readings arrive
        args = ["--csv", "-" if isinstance(spec, WindowsInput) else str(inputs / "rows.csv")]
    command = [str(Path(sys.executable).with_name("autosink-pi")), "--config", str(state / "pi.json"), "infer", *args]
    with (inputs / "rows.csv").open() if args[-1] == "-" else contextlib.nullcontext() as stdin:
        done = subprocess.run(
            command + (["--session", session] if session else []), stdin=stdin, capture_output=True, text=True
        )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def _steps(instance: dg.DagsterInstance, run_id: str) -> set[str]:
    """The steps a run started, as its event log records them."""
    events = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
    return {e.dagster_event.step_key for e in events}


def test_the_cli_runs_and_reports_a_reference_pipeline(home, fake_root, monkeypatch, tmp_path):
    """`autosink run --pipeline robotarm` on the instance at $DAGSTER_HOME, then `autosink status`,
    then `autosink run` again with nothing changed and with new files."""
    from click.testing import CliRunner

    from autosink_platform.cli import main

    monkeypatch.setenv("AUTOSINK_DATASETS", str(fake_root))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()
    ran = CliRunner().invoke(main, ["run", "--pipeline", "robotarm"])
    assert ran.exit_code == 0, ran.output
    assert "robotarm: 2 runs succeeded" in ran.output  # the raw files, then everything missing

    unknown = CliRunner().invoke(main, ["run", "--pipeline", "nope"])
    assert unknown.exit_code != 0 and "robotarm" in unknown.output and "sink" in unknown.output
    table = CliRunner().invoke(main, ["status"]).output
    row = next(line for line in table.splitlines() if line.startswith("robotarm.pca"))
    assert row.split()[1:4] == ["1", "1", "1"], table  # champion, challenger, stable
    assert {line.split()[0] for line in table.splitlines()[2:]} == set(definitions.MODEL_NAMES)

    # Laziness, from Dagster's own event log: a second run with nothing changed re-reads the
    # files' fingerprints and launches no other step; new files re-run everything downstream.
    with dg.DagsterInstance.get() as instance:
        before = instance.get_runs_count()
        again = CliRunner().invoke(main, ["run", "--pipeline", "robotarm"])
        assert again.exit_code == 0 and "robotarm: 1 runs succeeded" in again.output, again.output
        assert instance.get_runs_count() == before + 1
        assert _steps(instance, instance.get_runs(limit=1)[0].run_id) == {"robotarm__raw_files"}
        monkeypatch.setenv("AUTOSINK_DATASETS", str(make_fake_datasets(tmp_path / "new", seed=1)))
        changed = CliRunner().invoke(main, ["run", "--pipeline", "robotarm"])
        assert changed.exit_code == 0 and "robotarm: 2 runs succeeded" in changed.output, changed.output
        stages = {"labeled_samples", "validated_dataset", "pca_model", "pca_threshold", "pca_release"}
        steps = {f"robotarm__{s}" for s in stages} | {"robotarm_dataset_checks"}  # the blocking checks too
        assert _steps(instance, instance.get_runs(limit=1)[0].run_id) == steps

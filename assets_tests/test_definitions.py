import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

import autosink_platform
from autosink_platform.definitions import defs
from autosink_platform.pipelines.catalog import REFERENCE_PIPELINES
from autosink_platform.settings import VARIABLES, Settings

STAGES = ["raw_sessions", "labeled_frames", "validated_dataset"] + [
    f"{m}_{s}" for m in ("classifier", "frame_guard") for s in ("model", "threshold", "release")
]


def test_the_code_location_loads_without_the_model_stack():
    """The code server, every run process and every sensor tick start by importing the code
    location: torch, MLflow and matplotlib are imported by the steps that train, log or plot,
    not by the import (they were two thirds of it)."""
    heavy = ("torch", "mlflow", "matplotlib", "sklearn", "scipy")
    probe = f"import sys, autosink_platform.definitions; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out


def test_definitions_load_with_every_sink_stage():
    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    sink = {k for k in keys if k.startswith("sink/")}
    assert sink == {f"sink/{s}" for s in STAGES} | {"sink/review_queue", "sink/fleet_channel"}
    # The reference pipelines have the same six-stage shape, one group and one job each.
    graph = defs.resolve_asset_graph()
    for name, spec in REFERENCE_PIPELINES.items():
        model_stages = {f"{name}/{m.name}_{s}" for m in spec.models for s in ("model", "threshold", "release")}
        assert {k for k in keys if k.startswith(f"{name}/")} == {
            f"{name}/raw_files",
            f"{name}/labeled_samples",
            f"{name}/validated_dataset",
            f"{name}/fleet_channel",
        } | model_stages
        assert defs.resolve_job_def(f"{name}_pipeline") and defs.resolve_job_def(f"{name}_publish")
        for stage, parent in (("labeled_samples", "raw_files"), ("validated_dataset", "labeled_samples")):
            assert {k.path[-1] for k in graph.get(dg.AssetKey([name, stage])).parent_keys} == {parent}
        # The pipeline job ends at the releases: the channel follows the champion, not the run.
        assert (
            dg.AssetKey([name, "fleet_channel"])
            not in defs.resolve_job_def(f"{name}_pipeline").asset_layer.selected_asset_keys
        )


def test_session_stages_are_dynamically_partitioned_and_the_rest_are_not():
    graph = defs.resolve_asset_graph()
    for stage in STAGES:
        node = graph.get(dg.AssetKey(["sink", stage]))
        partitioned = stage in ("raw_sessions", "labeled_frames")
        assert isinstance(node.partitions_def, dg.DynamicPartitionsDefinition) == partitioned, stage
        assert node.code_version, f"{stage} declares no code version"


def test_dependencies_follow_the_six_stage_shape():
    graph = defs.resolve_asset_graph()
    parents = lambda s: {k.path[-1] for k in graph.get(dg.AssetKey(["sink", s])).parent_keys}  # noqa: E731
    assert parents("labeled_frames") == {"raw_sessions"}
    assert parents("validated_dataset") == {"labeled_frames"}
    assert parents("classifier_model") == {"validated_dataset"}
    assert parents("classifier_threshold") == {"classifier_model", "validated_dataset"}
    assert parents("frame_guard_release") == {"frame_guard_model", "frame_guard_threshold", "validated_dataset"}


def test_jobs_and_sensors_exist():
    assert {j.name for j in defs.resolve_all_job_defs()} >= {
        "sink_ingest",
        "sink_train",
        "sink_relabel",
        "sink_publish",
    }
    assert {s.name for s in defs.sensors} == {
        "sink_new_sessions",
        "sink_retrain",
        "sink_reviews",
        "autosink_automation",
        "fleet_telemetry",  # heartbeats as observations; halts a canary that diverges
    } | {f"{name}_champion_moved" for name in ("sink", *REFERENCE_PIPELINES)}
    # Nothing in the loop waits for someone to switch it on in the UI.
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in defs.sensors)
    automation = defs.resolve_sensor_def("autosink_automation")
    assert isinstance(automation, dg.AutomationConditionSensorDefinition)
    graph = defs.resolve_asset_graph()
    automated = {k for k in graph.get_all_asset_keys() if graph.get(k).automation_condition is not None}
    assert automated and automated <= set(automation.asset_selection.resolve(graph))


def test_configuration_enters_only_at_the_edge():
    """No module below the code location and the command line reads the environment."""
    package = Path(autosink_platform.__file__).parent
    readers = {
        p.relative_to(package).as_posix()
        for p in package.rglob("*.py")
        if re.search(r"\bos\.environ\b|\bgetenv\(", p.read_text())
    }
    assert readers == {"cli.py", "definitions.py"}


def test_resources_read_their_variables_when_a_run_starts(tmp_path, monkeypatch):
    """The code location's resources are dg.EnvVars, resolved per run: a changed environment
    reaches the next run without reloading the code location."""
    monkeypatch.setenv("AUTOSINK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AUTOSINK_LAKE", "")
    lake = Settings.from_environ({}).resources(env_vars=True)["lake"]
    assert isinstance(lake.home, dg.EnvVar) and lake.home.env_var_name == "AUTOSINK_HOME"
    assert lake.process_config_and_initialize().get().root == tmp_path / "home" / "lake"
    monkeypatch.setenv("AUTOSINK_LAKE", str(tmp_path / "elsewhere"))
    assert lake.process_config_and_initialize().get().root == tmp_path / "elsewhere"
    # Outside a run (the command line, tests) the values themselves.
    values = Settings.from_environ({"AUTOSINK_HOME": str(tmp_path / "h")}).resources()
    assert values["fleet"].audit().path == tmp_path / "h" / "audit" / "promotions.jsonl"
    assert values["io_manager"].store.location() == tmp_path / "h" / "store"


def test_a_configured_signing_key_that_is_missing_is_an_error_not_a_new_key(tmp_path):
    fleet = Settings.from_environ({"AUTOSINK_HOME": str(tmp_path)}).resources()["fleet"]
    missing = tmp_path / "secrets" / "key.pem"
    with pytest.raises(FileNotFoundError, match=r"key\.pem does not exist"):
        fleet.model_copy(update={"signing_key": str(missing), "create_key": False}).get()
    assert not missing.exists()


def test_the_executor_is_chosen_by_configuration():
    assert Settings.from_environ({}).executor_config() == {"in_process": {}}
    assert Settings.from_environ({"AUTOSINK_EXECUTOR": "multiprocess"}).executor_config() == {"multiprocess": {}}
    celery = Settings.from_environ({"AUTOSINK_EXECUTOR": "celery", "AUTOSINK_CELERY_QUEUE": "q"})
    assert celery.executor_config() == {"celery": {"queue": "q"}}
    with pytest.raises(ValueError, match=r"AUTOSINK_EXECUTOR='threads': expected one of"):
        Settings.from_environ({"AUTOSINK_EXECUTOR": "threads"})
    # One executor for every job; its kind is run configuration (the launchpad's `execution:`).
    job = defs.resolve_job_def("sink_ingest")
    assert job.executor_def.name == "autosink"
    schema = job.executor_def.config_schema.config_type
    assert set(schema.fields) == {"in_process", "multiprocess", "celery"}


def test_a_run_configured_for_multiprocess_runs_each_step_in_its_own_process(home, tmp_path):
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    from autosink_platform.defs.runner import register_sessions
    from autosink_platform.lake.sessions import Lake
    from autosink_platform.pipelines.sink import SINK

    (tmp_path / "dagster").mkdir()
    with dg.DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:
        (session, *_) = register_sessions(instance, SINK, Lake(home / "lake"))
        repo = ReconstructableRepository.for_module("autosink_platform.definitions", "defs")
        with dg.execute_job(
            repo.get_reconstructable_job("sink_ingest"),
            instance,
            run_config={"execution": {"config": {"multiprocess": {}}}},
            tags={"dagster/partition": session},
            asset_selection=[dg.AssetKey(["sink", "raw_sessions"])],
        ) as result:
            assert result.success
            started = [e for e in result.all_events if e.event_type_value == "STEP_WORKER_STARTED"]
    # The step ran in a subprocess of the run: what the default (in_process) never starts.
    assert [e.step_key for e in started] == ["sink__raw_sessions"]


def test_every_variable_is_in_the_configuration_table():
    doc = (Path(autosink_platform.__file__).parents[1] / "docs" / "architecture.md").read_text()
    assert [v for v in VARIABLES if f"| `{v}` |" not in doc] == []

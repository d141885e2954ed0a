import dagster as dg

from autosink_platform.definitions import defs
from autosink_platform.pipelines.catalog import REFERENCE_PIPELINES

STAGES = ["raw_sessions", "labeled_frames", "validated_dataset"] + [
    f"{m}_{s}" for m in ("classifier", "frame_guard") for s in ("model", "threshold", "release")
]


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
    } | {f"{name}_champion_moved" for name in ("sink", *REFERENCE_PIPELINES)}
    # Nothing in the loop waits for someone to switch it on in the UI.
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in defs.sensors)
    automation = defs.resolve_sensor_def("autosink_automation")
    assert isinstance(automation, dg.AutomationConditionSensorDefinition)
    graph = defs.resolve_asset_graph()
    automated = {k for k in graph.get_all_asset_keys() if graph.get(k).automation_condition is not None}
    assert automated and automated <= set(automation.asset_selection.resolve(graph))

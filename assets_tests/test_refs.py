"""What stages hand each other is stored as JSON that names a stable kind, never a pickle of
a class, so moving or renaming a lifecycle class cannot break a stored run."""

import json
import pickle

import dagster as dg
import pandas as pd
import pytest

from autosink_platform.defs.resources import FeatureStoreResource, RefIOManager, dump_ref, load_ref, ref_kinds
from autosink_platform.pipelines.lifecycle import TrainedModel
from autosink_platform.registry.releases import Release
from autosink_platform.thresholds import OperatingPoint
from autosink_platform.validation.dataset import DatasetRef

CASES = pd.DataFrame(
    {"slice": ["device", "device"], "group": ["pi-001", "pi-002"], "n": [120, 80], "value": [0.97, 0.91]}
)
EXAMPLES = [
    DatasetRef(
        "sink", "abc123", "/store/sink/datasets/abc123", {"s1": "f00d"}, {"sessions": 1, "train": {"frames": 9}}
    ),
    TrainedModel(
        "sink.classifier", "2", "run", "key", False, "1", 3, {"val_loss": 0.2}, [{"epoch": 1, "val_loss": 0.2}]
    ),
    OperatingPoint("best_f1", 0.42, 0.9, 0.8, 0.85, None, 10, 90, {"plateau": True}),
    Release(
        "sink.classifier",
        "2",
        "/fleet/sink/classifier/versions/2",
        {"metrics": {"test": {"f1": 0.9}}},
        ["challenger"],
        False,
        CASES,
    ),
    {"root": "/datasets", "files": {"robotarm-train.csv": "beef"}},
]


@pytest.mark.parametrize("obj", EXAMPLES, ids=lambda o: type(o).__name__)
def test_a_reference_round_trips_through_json(obj):
    data = dump_ref(obj)
    stored = json.loads(data)
    assert stored["kind"] in {*ref_kinds(), "json"} and b"autosink_platform" not in data  # no module path stored
    back = load_ref(data)
    if isinstance(obj, Release):
        pd.testing.assert_frame_equal(back.cases, obj.cases)
        assert back == Release(**{**obj.__dict__, "cases": back.cases})
    else:
        assert back == obj


def test_what_has_no_stable_name_is_refused_with_the_type():
    with pytest.raises(TypeError, match="list"):
        dump_ref([1, 2])
    with pytest.raises(ValueError, match=r"unknown reference kind 'model_v9'"):
        load_ref(json.dumps({"kind": "model_v9", "value": {}}).encode(), "sink/x.json")


def test_the_io_manager_writes_json_and_still_reads_a_home_written_with_pickles(tmp_path):
    manager = RefIOManager(store=FeatureStoreResource(root=str(tmp_path)))
    refs = tmp_path / "_refs"  # beside the store's data
    key = dg.AssetKey(["sink", "classifier_threshold"])
    op = EXAMPLES[2]
    manager.handle_output(dg.build_output_context(asset_key=key), op)
    assert json.loads((refs / "sink" / "classifier_threshold.json").read_text())["kind"] == "operating_point"
    assert manager.load_input(dg.build_input_context(asset_key=key)) == op

    old = dg.AssetKey(["sink", "validated_dataset"])
    (refs / "sink" / "validated_dataset.pkl").write_bytes(pickle.dumps(EXAMPLES[0]))
    assert manager.load_input(dg.build_input_context(asset_key=old)) == EXAMPLES[0]
    with pytest.raises(FileNotFoundError, match="sink/review_queue has not been materialized"):
        manager.load_input(dg.build_input_context(asset_key=dg.AssetKey(["sink", "review_queue"])))

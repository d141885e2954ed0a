"""`autosink demo` as a new user runs it: the command line at its defaults, a fresh home, a fresh
MLflow registry and a fresh signing key. Its releases must pass every floor with room to spare,
and the sink models must be good against the generator's truth, not only against the labels."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autosink_platform.home import Home
from autosink_platform.lake.store import FeatureStore
from autosink_platform.models.corruptions import FAULTS
from autosink_platform.pipelines.sink import SINK, release_quality

MARGIN = 0.03  # every gated slice group at least this far above its floor
TRUTH_F1, TRUTH_SLICE_ACCURACY = 0.95, 0.90  # classifier vs truth on the test split
GUARD_MAX_FPR, GUARD_MIN_DETECTION = 0.01, 0.95  # ordinary test frames flagged / faults caught


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    home = Home(tmp_path_factory.mktemp("demo-home"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOSINK_", "MLFLOW_", "DAGSTER_"))} | {
        "AUTOSINK_HOME": str(home.root),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home.root / 'mlflow.db'}",
        "HOME": str(home.root / "user"),
    }
    cli = Path(sys.executable).with_name("autosink")
    proc = subprocess.run([str(cli), "demo"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    store = FeatureStore(home.store, SINK.name)
    out = {"stdout": proc.stdout}
    for model in SINK.models:
        (version,) = (home.fleet / SINK.name / model.name / "versions").iterdir()
        out[model.name] = release_quality(home.lake, store, version)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("model", [m.name for m in SINK.models])
def test_demo_releases_pass_every_floor_with_margin(demo, model):
    q = demo[model]
    assert q["case_margin"] >= MARGIN, f"{q['model']}: {q['case_min_group']} at {q['case_min']:.3f}"


@pytest.mark.slow
def test_demo_classifier_is_good_against_the_truth(demo):
    q = demo["classifier"]
    assert q["truth"]["f1"] >= TRUTH_F1, q["truth"]
    weak = [s for s in q["truth_slices"] if s["value"] < TRUTH_SLICE_ACCURACY]
    assert not weak, weak
    assert q["truth"]["f1"] > q["truth"]["deployed_model_f1"]  # the feedback loop improved on the fleet's model
    assert "test vs truth" in demo["stdout"] and "weakest slice" in demo["stdout"]


@pytest.mark.slow
def test_demo_frame_guard_catches_faults_without_false_alarms(demo):
    test = demo["frame_guard"]["test"]
    assert test["fpr"] <= GUARD_MAX_FPR, test
    for fault in FAULTS:
        assert test[f"detection_{fault}"] >= GUARD_MIN_DETECTION, (fault, test)

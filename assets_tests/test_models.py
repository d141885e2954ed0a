"""One test over every model a pipeline ships: forward, backward, export round trip."""

import numpy as np
import pytest
import torch

from autosink_platform.models.corruptions import FAULTS, corrupt
from autosink_platform.models.training import torch_scorer
from autosink_platform.pipelines.sink import SINK
from autosink_platform.release.onnx_export import OnnxScorer, export_onnx, parity

MODELS = {m.name: m for m in SINK.models}
# Each family's training objective (the thresholded output need not carry every gradient:
# the guard's score is a max over its autoencoder, haze and structure terms).
TRAINING_LOSS = {
    "classifier": lambda m, x: m(x).logit.sum(),
    "frame_guard": lambda m, x: m.reconstruction_loss(x),
}


@pytest.fixture(params=sorted(MODELS))
def spec(request):
    return MODELS[request.param]


def _frames(n=6, seed=0):
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_forward_outputs_are_finite_and_named(spec):
    module = spec.build(spec.config).eval()
    with torch.no_grad():
        out = module(_frames())
    assert tuple(out._fields) == spec.outputs
    for name in spec.outputs:
        value = getattr(out, name)
        assert value.shape == (6,) and torch.isfinite(value).all(), name


def test_backward_reaches_every_parameter(spec):
    torch.manual_seed(0)
    module = spec.build(spec.config).train()
    TRAINING_LOSS[spec.name](module, _frames(8)).backward()
    missing = [
        n for n, p in module.named_parameters() if p.requires_grad and (p.grad is None or not torch.any(p.grad != 0))
    ]
    assert not missing


def test_onnx_export_reproduces_pytorch(spec, tmp_path):
    torch.manual_seed(0)
    module = spec.build(spec.config).eval()
    path = export_onnx(module, _frames(2), tmp_path / "m.onnx", list(spec.outputs))
    scorer = OnnxScorer(path)
    assert scorer.output_names == list(spec.outputs)
    images = (np.random.default_rng(1).random((9, 64, 64, 3)) * 255).astype(np.uint8)  # another batch size
    diffs = parity(torch_scorer(module)(images), scorer(images))["max_abs_diff"]
    assert set(diffs) == set(spec.outputs) and max(diffs.values()) <= 1e-4, diffs


@pytest.mark.parametrize("fault", FAULTS)
def test_camera_faults_are_deterministic_and_change_the_frame(fault):
    images = (np.random.default_rng(0).random((3, 64, 64, 3)) * 255).astype(np.uint8)
    a, b = corrupt(images, fault, 5), corrupt(images, fault, 5)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.uint8 and a.shape == images.shape
    assert np.abs(a.astype(int) - images).mean() > 10


def test_focal_loss_is_weighted_cross_entropy_that_favours_hard_examples():
    from torch.nn import functional as F

    from autosink_platform.models.classifier import focal_loss

    logit = torch.tensor([4.0, -4.0, 0.2, -0.3])  # two easy, two hard examples
    target, weight = torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([1.0, 0.6, 0.8, 1.0])
    plain = F.binary_cross_entropy_with_logits(logit, target, weight=weight)
    assert torch.allclose(focal_loss(logit, target, weight, 0.0), plain)
    per_sample = [focal_loss(logit[i : i + 1], target[i : i + 1], weight[i : i + 1], 2.0) for i in range(4)]
    ce = F.binary_cross_entropy_with_logits(logit, target, weight=weight, reduction="none")
    ratios = [float(f / c) for f, c in zip(per_sample, ce, strict=True)]
    assert max(ratios[:2]) < 1e-3 < min(ratios[2:])  # easy examples all but vanish, hard ones stay


class _Labeled:
    """A labeled dataset as the sink's training reads it (the ``Data`` contract): table, inputs."""

    def __init__(self, table, inputs):
        self.table, self.inputs = table, inputs

    def mask(self, split, labeled=False):
        return (self.table["split"] == split).to_numpy() & (self.table["label"].notna().to_numpy() if labeled else True)


def test_a_label_nobody_vouches_for_does_not_teach_the_classifier():
    """Label confidence is a training weight end to end: half of every class's training labels
    flipped with confidence 0 leave the sink's classifier training (``SINK.models[0].train``)
    learning the true rule; the same flips at full confidence leave it no signal at all."""
    import dataclasses

    import pandas as pd

    from autosink_platform.models.classifier import ClassifierConfig
    from autosink_platform.models.training import FitConfig

    rng = np.random.default_rng(0)
    n_train, n_val = 128, 64
    label = np.tile([0, 1], (n_train + n_val) // 2)
    frames = rng.integers(0, 60, size=(len(label), 64, 64, 3)).astype(np.uint8)
    frames[label == 1, 24:40, 24:40] = 230  # an open valve: a bright patch under the spout
    flipped = np.zeros(len(label), bool)
    flipped[:n_train] = np.tile([1, 1, 0, 0], n_train // 4).astype(bool)  # half of each class
    table = pd.DataFrame(
        {
            "split": ["train"] * n_train + ["validation"] * n_val,
            "label": np.where(flipped, 1 - label, label).astype(float),
        }
    )
    model = SINK.models[0]
    cfg = ClassifierConfig(width=8, fit=FitConfig(epochs=4, lr=3e-3, keep="last"))
    accuracy = {}
    for vouched in (True, False):
        confidence = np.where(flipped & vouched, 0.0, 1.0)
        data = _Labeled(table.assign(confidence=confidence), frames)
        net, _ = model.train(data, dataclasses.replace(cfg), None, lambda m: None)
        prob = torch_scorer(net.eval())(frames[n_train:])["valve_open_prob"]
        accuracy[vouched] = float(np.mean((prob >= 0.5) == label[n_train:]))
    assert accuracy[True] >= 0.95 and accuracy[False] <= 0.75, accuracy

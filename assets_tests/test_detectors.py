"""One contract, every detector family: fit on seeded synthetic data with planted anomalies,
separate them, no NaN, deterministic on CPU, gradients flow, and ONNX reproduces the scores."""

import numpy as np
import pytest
import torch

from autosink_platform.lake.synthetic import KINDS
from autosink_platform.models import FAMILIES, OnnxDetector, build_detector
from autosink_platform.models.detectors import TorchDetector


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    n1 = labels.sum()
    return float((ranks[labels == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * (len(labels) - n1)))


def tabular(rng, n=500, d=8):
    """Normal data on a 2-D plane in 8-D; anomalies off the plane."""
    w = rng.normal(size=(2, d))
    normal = rng.normal(size=(n, 2)) @ w + 0.05 * rng.normal(size=(n, d))
    return normal.astype(np.float32), (1.5 * rng.normal(size=(50, d))).astype(np.float32)


def windows(rng, n=300, t=16, d=3):
    """Phase-shifted sine waves; anomalies are noise."""
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
    steps = np.arange(t)[None, :, None]
    normal = np.sin(0.4 * steps + phase + np.arange(d)[None, None, :]) + 0.05 * rng.normal(size=(n, t, d))
    return normal.astype(np.float32), rng.normal(size=(40, t, d)).astype(np.float32)


def images(rng, n=300, s=16):
    """A soft blob somewhere in the frame; anomalies are uniform noise."""
    xx, yy = np.meshgrid(np.arange(s), np.arange(s))
    c = rng.uniform(4, s - 4, size=(n, 2))
    normal = np.exp(-((xx[None] - c[:, 0, None, None]) ** 2 + (yy[None] - c[:, 1, None, None]) ** 2) / 8.0)[:, None]
    return normal.astype(np.float32), rng.uniform(0, 1, size=(40, 1, s, s)).astype(np.float32)


CASES = {
    "pca": (tabular, {}),
    "knn": (tabular, {}),
    "window_pca": (windows, {}),
    "dense_ae": (tabular, {"epochs": 30}),
    "vae": (tabular, {"epochs": 30}),
    "rnn_ae": (windows, {"epochs": 8, "hidden": 16}),
    "conv_ae": (images, {"epochs": 12, "batch_size": 32, "width": 8, "code": 16}),
    "anogan": (images, {"epochs": 15, "gan_epochs": 10, "batch_size": 32}),
}


def test_every_family_is_covered():
    assert set(CASES) == set(FAMILIES)


@pytest.fixture(scope="module", params=sorted(CASES))
def fitted(request):
    name = request.param
    make, params = CASES[name]
    normal, anomalies = make(np.random.default_rng(0))
    epochs: list[dict] = []
    kw = dict(params, on_epoch=epochs.append) if issubclass(FAMILIES[name], TorchDetector) else params
    det = build_detector(name, **kw).fit(normal)
    X = np.concatenate([normal[:100], anomalies])
    y = np.r_[np.zeros(100), np.ones(len(anomalies))].astype(int)
    return name, det, X, y, normal, epochs


def test_planted_anomalies_score_higher(fitted):
    name, det, X, y, _, _ = fitted
    scores = det.decision_function(X)
    assert scores.shape == (len(X),) and np.isfinite(scores).all()
    assert auroc(scores, y) > 0.9, name


def test_onnx_reproduces_decision_function(fitted, tmp_path):
    _, det, X, _, _, _ = fitted
    onnx = OnnxDetector(det.export_onnx(tmp_path / "detector.onnx"))
    theirs, ours = onnx.decision_function(X), det.decision_function(X)
    assert np.max(np.abs(theirs - ours) / np.maximum(np.abs(ours), 1e-6)) <= 1e-4
    assert len(onnx.decision_function(X[:1])) == 1  # the batch dimension is dynamic


def test_training_is_deterministic_and_reported(fitted):
    name, det, X, _, normal, epochs = fitted
    make, params = CASES[name]
    again = build_detector(name, **params).fit(normal)
    np.testing.assert_array_equal(again.decision_function(X), det.decision_function(X))
    if isinstance(det, TorchDetector):
        assert det.history and len(det.history) <= det.fit_config.epochs
        held_out = max(1, round(len(normal) * det.val_fraction))
        assert len(normal) - held_out - 1 <= det.fit_result.samples_per_epoch <= len(normal) - held_out
        assert all(np.isfinite(h["val_loss"]) for h in det.history)
        assert [m["epoch"] for m in epochs if "val_loss" in m] == [h["epoch"] for h in det.history]


# PCA and kNN are fitted in closed form: they have no parameters for a gradient to reach.
GRADIENT_TRAINED = sorted(n for n in CASES if issubclass(FAMILIES[n], TorchDetector))


@pytest.mark.parametrize("fitted", GRADIENT_TRAINED, indirect=True)
def test_forward_and_backward_are_sane(fitted):
    name, det, X, _, _, _ = fitted
    assert isinstance(det, TorchDetector), name
    net = det.scorer.net
    net.train()
    loss = net.loss(det.scorer.norm(torch.from_numpy(X[:16])))
    loss.backward()
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and trainable
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    assert any(p.grad.abs().sum() > 0 for p in trainable)
    net.zero_grad()
    net.eval()


def test_labels_mean_only_normal_samples_are_fitted():
    normal, anomalies = tabular(np.random.default_rng(1))
    X = np.concatenate([normal, anomalies])
    y = np.r_[np.zeros(len(normal)), np.ones(len(anomalies))]
    with_y = build_detector("pca").fit(X, y).decision_function(X)
    np.testing.assert_allclose(with_y, build_detector("pca").fit(normal).decision_function(X), rtol=1e-6)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: build_detector("isolation_forest"), "unknown detector 'isolation_forest'"),
        (lambda: build_detector("pca").fit(np.zeros((10, 3, 3))), "tabular input with 2 dimensions"),
        (lambda: build_detector("pca").fit(np.full((10, 3), np.nan)), "NaN"),
        (lambda: build_detector("pca", n_components=5).fit(np.ones((10, 3))), "n_components must be in 1..3"),
        (lambda: build_detector("rnn_ae", cell="transformer").fit(np.zeros((8, 4, 2))), "cell must be one of"),
        (lambda: build_detector("conv_ae").fit(np.zeros((8, 1, 10, 10))), "divisible by 4"),
        (lambda: build_detector("dense_ae").decision_function(np.zeros((2, 3))), "not fitted"),
        (lambda: build_detector("pca").fit(np.zeros((5, 2)), y=np.ones(5)), "at least 4 normal samples"),
        (lambda: build_detector("conv_ae", precision="fp16"), "precision must be one of"),
        (lambda: build_detector("knn", k=10, bank=5), "need 1 <= k <= bank"),
        (lambda: build_detector("knn", kind="graphs"), "kind must be one of"),
        (lambda: build_detector("window_pca", n_components=1.5).fit(np.ones((10, 4, 2))), "a fraction in"),
        (lambda: build_detector("pca").fit(np.ones((10, 3))).score_series(np.ones(50)), "not a series of windows"),
        (lambda: build_detector("window_pca").fit(np.ones((10, 8, 1))).score_series(np.ones(5)), "shorter than one"),
    ],
)
def test_bad_input_gets_a_clear_error(call, match):
    with pytest.raises((ValueError, RuntimeError), match=match):
        call()


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_every_recurrent_cell_trains_and_exports(cell, tmp_path):
    normal, anomalies = windows(np.random.default_rng(2), n=120, t=8)
    det = build_detector("rnn_ae", cell=cell, hidden=8, epochs=3).fit(normal)
    X = np.concatenate([normal[:20], anomalies[:10]])
    ours = det.decision_function(X)
    theirs = OnnxDetector(det.export_onnx(tmp_path / f"{cell}.onnx")).decision_function(X)
    assert np.isfinite(ours).all() and np.max(np.abs(theirs - ours) / np.maximum(np.abs(ours), 1e-6)) <= 1e-4


@pytest.mark.parametrize("name", ["conv_ae", "anogan"])
def test_bf16_training_keeps_float32_weights_and_exports_the_same_scores(name, tmp_path):
    make, params = CASES[name]
    normal, anomalies = make(np.random.default_rng(0))
    det = build_detector(name, **params, precision="bf16").fit(normal)
    X = np.concatenate([normal[:100], anomalies])
    y = np.r_[np.zeros(100), np.ones(len(anomalies))].astype(int)
    ours = det.decision_function(X)
    assert all(p.dtype == torch.float32 for p in det.scorer.parameters())
    assert np.isfinite(ours).all() and auroc(ours, y) > 0.9
    np.testing.assert_array_equal(
        build_detector(name, **params, precision="bf16").fit(normal).decision_function(X), ours
    )
    theirs = OnnxDetector(det.export_onnx(tmp_path / f"{name}.onnx")).decision_function(X)
    assert np.max(np.abs(theirs - ours) / np.maximum(np.abs(ours), 1e-6)) <= 1e-4


def test_conv_ae_pools_before_relu_with_the_function_and_gradients_of_relu_then_pool():
    from torch import nn

    from autosink_platform.models.detectors import _ConvAE

    torch.manual_seed(0)
    ours = _ConvAE(1, 16, 16, 8, 8)
    theirs = _ConvAE(1, 16, 16, 8, 8)
    theirs.load_state_dict(ours.state_dict())
    layers = list(theirs.encoder)
    swapped = 0
    for k, layer in enumerate(layers[:-1]):
        if isinstance(layer, nn.MaxPool2d) and isinstance(layers[k + 1], nn.ReLU):
            layers[k], layers[k + 1] = layers[k + 1], layer
            swapped += 1
    assert swapped == 2  # two stages at 16x16
    theirs.encoder = nn.Sequential(*layers)
    x = torch.from_numpy(images(np.random.default_rng(0), n=64)[0])
    ours.loss(x).backward()
    theirs.loss(x).backward()
    torch.testing.assert_close(ours.reconstruct(x), theirs.reconstruct(x), rtol=0, atol=0)
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_2x2_transposed_conv_as_a_matrix_product_is_torchs_transposed_conv(memory_format):
    from torch import nn

    from autosink_platform.models.detectors import _ConvTranspose2x2

    torch.manual_seed(0)
    ours = _ConvTranspose2x2(6, 5)
    theirs = nn.ConvTranspose2d(6, 5, 2, stride=2)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 6, 4, 7).contiguous(memory_format=memory_format)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = ours(a), theirs(b)
    assert out.shape == (3, 5, 8, 14)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    grad = torch.randn_like(expected)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5, msg=name)
    # Under bf16 autocast both round their inputs to bf16; how the products are accumulated is
    # the kernel's (on CPUs with native bf16 the two are bit-identical, elsewhere not), so the
    # contract is accuracy: against the float32 result, ours is no further off than torch's own
    # transposed conv, give or take one bf16 rounding step of the largest output.
    with torch.no_grad():
        exact = theirs(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours_bf16, theirs_bf16 = ours(x).float(), theirs(x).float()
    step = 2.0 ** (torch.floor(torch.log2(exact.abs().max())) - 7)
    assert (ours_bf16 - exact).abs().max() <= (theirs_bf16 - exact).abs().max() + step


def test_conv_ae_without_the_refining_conv_ends_in_a_transposed_conv_and_exports(tmp_path):
    from torch import nn

    normal, anomalies = images(np.random.default_rng(0))
    det = build_detector("conv_ae", **CASES["conv_ae"][1], refine=False).fit(normal)
    decoder = list(det.scorer.net.decoder)
    assert isinstance(decoder[-2], nn.ConvTranspose2d) and decoder[-2].out_channels == 1
    assert not any(isinstance(m, nn.Conv2d) for m in decoder)
    X = np.concatenate([normal[:100], anomalies])
    y = np.r_[np.zeros(100), np.ones(len(anomalies))].astype(int)
    ours = det.decision_function(X)
    assert np.isfinite(ours).all() and auroc(ours, y) > 0.9
    theirs = OnnxDetector(det.export_onnx(tmp_path / "conv_ae.onnx")).decision_function(X)
    assert np.max(np.abs(theirs - ours) / np.maximum(np.abs(ours), 1e-6)) <= 1e-4


# -- nearest neighbours, window mapping, the synthetic series suite -------------------------------


def test_knn_scores_a_banked_sample_by_its_other_neighbours():
    """Leave-one-out: a training sample scores as it would against a bank without it."""
    normal, anomalies = tabular(np.random.default_rng(2))
    det = build_detector("knn", scale="none").fit(normal)
    without = build_detector("knn", scale="none").fit(normal[1:])
    np.testing.assert_allclose(det.decision_function(normal[:1]), without.decision_function(normal[:1]), rtol=1e-4)
    assert det.decision_function(normal[:1])[0] > 0  # not its own distance, zero
    np.testing.assert_allclose(det.decision_function(anomalies), without.decision_function(anomalies), rtol=0.2)


def test_knn_bank_is_a_seeded_subsample_and_works_on_every_input_kind(tmp_path):
    rng = np.random.default_rng(3)
    normal, anomalies = images(rng)
    det = build_detector("knn", kind="images", bank=64, seed=7).fit(normal)
    assert det.bank_.shape == (64, normal[0].size)
    np.testing.assert_array_equal(det.bank_, build_detector("knn", kind="images", bank=64, seed=7).fit(normal).bank_)
    y = np.r_[np.zeros(100), np.ones(len(anomalies))].astype(int)
    assert auroc(det.decision_function(np.concatenate([normal[:100], anomalies])), y) > 0.9
    onnx = OnnxDetector(det.export_onnx(tmp_path / "knn.onnx"))
    np.testing.assert_allclose(onnx.decision_function(anomalies), det.decision_function(anomalies), rtol=1e-4)


def test_window_scores_map_to_rows_by_cover_or_by_the_window_that_ends_there():
    from autosink_platform.models.detectors import rows_from_windows

    scores = np.array([0.0, 1.0, 2.0, 3.0, 4.0])  # 5 windows of 3 rows over 7 rows
    np.testing.assert_allclose(rows_from_windows(scores, 7, 3), [0, 0.5, 1, 2, 3, 3.5, 4])
    np.testing.assert_allclose(rows_from_windows(scores, 7, 3, "last"), [0, 0, 0, 1, 2, 3, 4])
    spike = np.zeros(20)
    spike[5:8] = 1.0  # the three windows that hold row 7 of a 22-row series
    assert int(np.argmax(rows_from_windows(spike, 22, 3))) == 7
    with pytest.raises(ValueError, match="5 window scores for 8 rows"):
        rows_from_windows(scores, 8, 3)
    with pytest.raises(ValueError, match="rule must be"):
        rows_from_windows(scores, 7, 3, "max")


def test_the_synthetic_suite_is_seeded_and_plants_one_event_after_the_training_rows():
    from autosink_platform.lake.synthetic import planted_series, suite

    every = suite(range(3))
    assert len(every) == 3 * len(KINDS) and {s.kind for s in every} == set(KINDS)
    for s in every:
        start, end = s.event
        assert s.train_rows + s.period <= start < end <= len(s.values) and np.isfinite(s.values).all()
        assert s.labels().sum() == end - start and s.labels()[: s.train_rows].sum() == 0
        np.testing.assert_array_equal(s.values, planted_series(s.kind, s.seed).values)
    with pytest.raises(ValueError, match="kind must be one of"):
        planted_series("earthquake", 0)


def _series_hits(kind: str, seeds=range(10)):
    """The valve pipeline's shipped family and parameters on one planted kind, a seed at a time:
    (seed, event, top row)."""
    from autosink_pi.runtime import sliding, standardised

    from autosink_platform.lake.synthetic import planted_series
    from autosink_platform.pipelines.valve import VALVE, ValveConfig

    model, window = VALVE.models[0], ValveConfig().window
    for seed in seeds:
        s = planted_series(kind, seed)
        z = standardised(s.values, s.train_rows)
        det = build_detector(model.family, **model.params).fit(sliding(z[: s.train_rows], window))
        yield seed, s.event, s.train_rows + int(np.argmax(det.score_series(z)[s.train_rows :]))


# Kinds the valve's shipped vae falls short on (measured over the 10 seeds at the valve's window;
# benchmarks/detectors.py has the families that find them all). Strict: when one starts to pass,
# this list must be updated.
VAE_SHORTFALLS = {
    "amplitude_change": "a shrunken wave is reconstructed about as well as a normal one (found in 5 of "
    "10 seeds): the error is no higher where there is less signal",
    "flat_line": "a stuck sensor is a near-constant window the VAE reconstructs well (4 of 10 seeds)",
    "missing_beat": "a skipped cycle is a flat stretch, reconstructed as well as a normal beat (2 of 10 seeds)",
}


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(kind, marks=pytest.mark.xfail(reason=VAE_SHORTFALLS[kind], strict=True))
        if kind in VAE_SHORTFALLS
        else kind
        for kind in KINDS
    ],
)
def test_the_default_series_detector_finds_every_planted_kind(kind):
    """The series pipeline's default detector puts its top-scored row inside the planted event in
    at least 8 of 10 seeds, for every kind; kinds it falls short on stay in the suite, marked with
    the reason (``VAE_SHORTFALLS``)."""
    from autosink_platform.pipelines.valve import VALVE

    assert VALVE.models[0].family == "vae", "the shortfalls above are the vae's: measure the new default's"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models fit fastest on one thread
    found, missed = 0, []
    try:
        for seed, event, top in _series_hits(kind):
            if event[0] <= top < event[1]:
                found += 1
            else:
                missed.append((seed, event, top))
            if found >= 8 or len(missed) > 2:  # the outcome over 10 seeds is decided
                break
    finally:
        torch.set_num_threads(threads)
    assert found >= 8, f"{kind}: top row outside the event for (seed, event, top) {missed}"

"""Anomaly detectors behind one contract (public):

    det = build_detector(name, **params).fit(X, y=None)
    scores = det.decision_function(X)          # one float per sample, higher = more anomalous
    det.export_onnx(path)                      # one graph (release.onnx_export), output "score"

Input conventions: tabular ``(N, D)``, windows ``(N, T, D)``, images ``(N, C, H, W)`` float32 in
[0, 1]. With ``y``, only the normal samples (``y == 0``) are fitted. Every family scores with one
``torch.nn.Module`` (normalisation included), so ONNX reproduces ``decision_function`` exactly.

Families: ``pca`` (the robot-arm reference), ``window_pca`` (subsequence PCA over flattened
windows), ``knn`` (mean distance to the k nearest samples of a stored, subsampled training bank;
any input kind), ``dense_ae``, ``conv_ae`` (the digits reference), ``rnn_ae`` (RNN/GRU/LSTM,
step-by-step decoding; the valve-rig reference), ``vae`` (negative ELBO), ``anogan`` (f-AnoGAN,
izi_f: DCGAN, then an encoder that inverts the generator; the bearing reference).

A windows detector owns how its window scores become per-row scores of a series
(``Detector.score_series``, ``rows_from_windows``): offline, a row takes the mean score of the
windows that cover it; causally, as a device streams, the score of the window that ends at it.

Training is seeded, deterministic on CPU, shows a progress bar on a terminal, reports each epoch
to ``on_epoch`` (MLflow logging lives outside) and stops early on the validation loss of a
held-out tenth of the normal data.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from autosink_pi.runtime import sliding
from torch import nn
from tqdm import tqdm

from autosink_platform.models.training import FitConfig, FitResult, autocast_for, fit, seed_everything
from autosink_platform.release import onnx_export


class DetectorOutput(NamedTuple):
    score: torch.Tensor  # (B,)


class Detector:
    """Base class: subclasses build ``self.scorer`` (raw input -> DetectorOutput) in ``fit``."""

    kind = "tabular"  # or "windows" / "images": the input convention
    ndim = {"tabular": 2, "windows": 3, "images": 4}

    def __init__(self, seed: int = 0, batch_size: int = 256):
        self.seed, self.batch_size = seed, batch_size
        self.scorer: nn.Module | None = None
        self.history: list[dict] = []

    def _check(self, X, y=None) -> tuple[np.ndarray, np.ndarray | None]:
        X = np.asarray(X, dtype=np.float32)
        want = self.ndim[self.kind]
        if X.ndim != want:
            raise ValueError(
                f"{type(self).__name__} takes {self.kind} input with {want} dimensions, got shape {X.shape}"
            )
        if not np.isfinite(X).all():
            raise ValueError(f"input has {int((~np.isfinite(X)).sum())} NaN/inf values")
        if y is None:
            return X, None
        y = np.asarray(y).ravel()
        if len(y) != len(X):
            raise ValueError(f"{len(y)} labels for {len(X)} samples")
        return X, y

    def _normal(self, X, y) -> np.ndarray:
        X, y = self._check(X, y)
        normal = X if y is None else X[y == 0]
        if len(normal) < 4:
            raise ValueError(f"need at least 4 normal samples to fit, got {len(normal)}")
        return normal

    def fit(self, X, y=None) -> Detector:
        raise NotImplementedError

    @torch.no_grad()
    def decision_function(self, X) -> np.ndarray:
        if self.scorer is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted")
        X, _ = self._check(X)
        if not X.flags.writeable:  # a memory-mapped snapshot: torch only wraps writable arrays
            X = X.copy()
        self.scorer.eval()
        out = [
            self.scorer(torch.from_numpy(X[i : i + self.batch_size])).score for i in range(0, len(X), self.batch_size)
        ]
        return torch.cat(out).double().numpy()

    def score_series(self, series, rule: str = "cover") -> np.ndarray:
        """Per-row scores of one standardised series ``(n, D)``: every window of the fitted length
        (stride 1) is scored, then mapped to rows by ``rows_from_windows`` with ``rule``."""
        if self.kind != "windows":
            raise ValueError(f"{type(self).__name__} takes {self.kind}, not a series of windows")
        series = np.asarray(series, dtype=np.float32)
        if series.ndim == 1:
            series = series[:, None]
        window = self.window_
        if len(series) < window:
            raise ValueError(f"a series of {len(series)} rows is shorter than one window of {window}")
        return rows_from_windows(self.decision_function(sliding(series, window)), len(series), window, rule)

    @property
    def window_(self) -> int:
        if self.scorer is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted")
        return int(self._example.shape[1])

    def export_onnx(self, path: str | Path, example: np.ndarray | None = None) -> Path:
        """One ONNX graph with a dynamic batch: float32 input, output ``score``."""
        if self.scorer is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted")
        example = torch.from_numpy(np.asarray(example if example is not None else self._example, dtype=np.float32)[:2])
        return onnx_export.export_onnx(self.scorer, example, path, ["score"])


def rows_from_windows(window_scores, n_rows: int, window: int, rule: str = "cover") -> np.ndarray:
    """Per-row scores of a series from the scores of its windows (stride 1; window k covers rows
    k..k+window-1, so there are ``n_rows - window + 1`` of them).

    ``cover`` (offline): a row's score is the mean over the windows that cover it; rows at the
    start and end are covered by fewer windows and take the mean of those. An event of one row
    lies in every window that covers it, so the mean peaks at the event itself rather than a
    window's length after it.
    ``last`` (causal, what a streaming device reports): a row's score is that of the window that
    ends at it; the first ``window - 1`` rows, before any window is complete, take the first
    window's score."""
    scores = np.asarray(window_scores, dtype=np.float64).ravel()
    if len(scores) != n_rows - window + 1:
        raise ValueError(f"{len(scores)} window scores for {n_rows} rows of windows of {window}")
    if rule == "last":
        return np.concatenate([np.full(window - 1, scores[0]), scores])
    if rule != "cover":
        raise ValueError(f"rule must be 'cover' or 'last', got {rule!r}")
    total = np.concatenate([[0.0], np.cumsum(scores)])
    rows = np.arange(n_rows)
    first, last = np.maximum(rows - window + 1, 0), np.minimum(rows, len(scores) - 1)  # covering windows
    return (total[last + 1] - total[first]) / (last - first + 1)


class OnnxDetector(onnx_export.OnnxModel):
    """A detector exported by ``Detector.export_onnx``, run with onnxruntime (what ships)."""

    def decision_function(self, X) -> np.ndarray:
        return self.run(X)["score"]


# -- PCA --------------------------------------------------------------------------------------


class _PCAScorer(nn.Module):
    def __init__(self, mean, std, components):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.register_buffer("components", torch.as_tensor(components, dtype=torch.float32))  # (k, D)

    def forward(self, x: torch.Tensor) -> DetectorOutput:
        z = (x - self.mean) / self.std
        recon = (z @ self.components.T) @ self.components
        return DetectorOutput(((z - recon) ** 2).mean(dim=1))


class PCADetector(Detector):
    """Standardise, project onto the first ``n_components`` principal axes, score = mean squared
    reconstruction error."""

    def __init__(self, n_components: int | float = 2, **kw):
        super().__init__(**kw)
        self.n_components = n_components

    def fit(self, X, y=None) -> PCADetector:
        X = self._normal(X, y).astype(np.float64)
        mean, std, self.components_ = _components(X, self.n_components)
        self.scorer, self._example = _PCAScorer(mean, std, self.components_), X[:2]
        return self


def _feature_scale(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation of ``X`` (N, D); a constant feature keeps scale 1."""
    mean, std = X.mean(axis=0), X.std(axis=0)
    std[std < 1e-12] = 1.0
    return mean, std


def _components(X: np.ndarray, n_components: int | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardisation and the first principal axes of ``X`` (float64, (N, D)): ``n_components``
    axes, or with a fraction in (0, 1) the fewest axes that explain that share of the variance."""
    mean, std = _feature_scale(X)
    _, sv, vt = np.linalg.svd((X - mean) / std, full_matrices=False)
    vt *= np.sign(vt[:, :1] + 1e-30)  # a fixed sign per axis: reproducible components
    if isinstance(n_components, float) and 0 < n_components < 1:
        share = np.cumsum(sv**2) / max(float(np.sum(sv**2)), 1e-300)
        k = int(np.searchsorted(share, n_components) + 1)
    elif isinstance(n_components, int) and 0 < n_components <= X.shape[1]:
        k = n_components
    else:
        raise ValueError(f"n_components must be in 1..{X.shape[1]} or a fraction in (0, 1), got {n_components!r}")
    return mean, std, vt[: min(k, len(vt))]


class _Flatten(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> DetectorOutput:
        return self.inner(x.flatten(1))


class WindowPCADetector(Detector):
    """Subsequence PCA: each window ``(T, D)`` flattened to one vector, then standardised,
    projected onto the principal axes of the normal windows and scored by its mean squared
    reconstruction error. ``n_components`` is a count or a share of variance to keep."""

    kind = "windows"

    def __init__(self, n_components: int | float = 0.95, **kw):
        super().__init__(**kw)
        self.n_components = n_components

    def fit(self, X, y=None) -> WindowPCADetector:
        windows = self._normal(X, y)
        mean, std, self.components_ = _components(
            windows.reshape(len(windows), -1).astype(np.float64), self.n_components
        )
        self.scorer, self._example = _Flatten(_PCAScorer(mean, std, self.components_)), windows[:2]
        return self


# -- nearest neighbours -----------------------------------------------------------------------


class _KNNScorer(nn.Module):
    """Mean Euclidean distance to the ``k`` nearest bank rows, as matrix products and one TopK."""

    def __init__(self, mean, std, bank, k: int):
        super().__init__()
        self.k = k
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.register_buffer("bank_t", torch.as_tensor(bank, dtype=torch.float32).T.contiguous())  # (D, M)
        self.register_buffer("bank_sq", torch.as_tensor((bank.astype(np.float64) ** 2).sum(1), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> DetectorOutput:
        z = (x.flatten(1) - self.mean) / self.std
        z_sq = (z * z).sum(dim=1, keepdim=True)
        d2 = z_sq - 2.0 * (z @ self.bank_t) + self.bank_sq
        nearest = torch.topk(d2, self.k + 1, dim=1, largest=False).values.clamp_min(0.0)  # ascending
        # A sample found in the bank (up to float32 rounding of the expansion above) is scored by
        # its k other neighbours: leave-one-out, so training samples score like unseen ones.
        itself = nearest[:, :1] <= 1e-5 * (2.0 * z_sq + 1.0)
        dist = nearest.sqrt()
        return DetectorOutput(torch.where(itself, dist[:, 1:], dist[:, :-1]).mean(dim=1))


class KNNDetector(Detector):
    """Distance to the ``k`` nearest normal training samples (flattened, any input kind).

    The training bank is stored in the model; above ``bank`` samples it is a seeded uniform
    subsample. ``scale``: ``feature`` standardises each input feature on the training samples
    (tabular default), ``none`` compares raw inputs (windows of a standardised series, images).
    A sample that is in the bank is scored by its ``k`` other neighbours (leave-one-out), so the
    training samples' scores are comparable with unseen samples' (a per-session UCL fitted on
    start-up windows needs that)."""

    def __init__(self, k: int = 5, bank: int = 4096, kind: str = "tabular", scale: str | None = None, **kw):
        super().__init__(**kw)
        if kind not in self.ndim:
            raise ValueError(f"kind must be one of {sorted(self.ndim)}, got {kind!r}")
        scale = scale or ("feature" if kind == "tabular" else "none")
        if scale not in ("feature", "none"):
            raise ValueError(f"scale must be 'feature' or 'none', got {scale!r}")
        if k < 1 or bank < k:
            raise ValueError(f"need 1 <= k <= bank, got k={k}, bank={bank}")
        self.kind, self.k, self.bank, self.scale = kind, k, bank, scale

    def fit(self, X, y=None) -> KNNDetector:
        normal = self._normal(X, y)
        flat = normal.reshape(len(normal), -1).astype(np.float64)
        if len(flat) > self.bank:
            keep = np.sort(np.random.default_rng(self.seed).choice(len(flat), self.bank, replace=False))
            flat = flat[keep]
        if self.scale == "feature":
            mean, std = _feature_scale(flat)
        else:
            mean, std = np.zeros(flat.shape[1]), np.ones(flat.shape[1])
        k = min(self.k, len(flat) - 1)
        self.bank_ = ((flat - mean) / std).astype(np.float32)
        self.scorer, self._example = _KNNScorer(mean, std, self.bank_, k), normal[:2]
        return self


# -- torch-trained families -------------------------------------------------------------------


class _Standardise(nn.Module):
    """Feature-wise standardisation over the last axis (tabular and windows), identity for images."""

    def __init__(self, mean=None, std=None):
        super().__init__()
        self.on = mean is not None
        if self.on:
            self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
            self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x):
        return (x - self.mean) / self.std if self.on else x


class _Scorer(nn.Module):
    def __init__(self, norm: _Standardise, net: nn.Module):
        super().__init__()
        self.norm, self.net = norm, net

    def forward(self, x: torch.Tensor) -> DetectorOutput:
        return DetectorOutput(self.net.score(self.norm(x)))


class TorchDetector(Detector):
    """Fits ``self._net(X)`` (a module with ``loss(batch)`` and ``score(batch)``) on normal data."""

    def __init__(
        self,
        epochs: int = 50,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        patience: int = 5,
        val_fraction: float = 0.1,
        precision: str = "fp32",
        on_epoch: Callable[[dict], None] | None = None,
        **kw,
    ):
        super().__init__(**kw)
        self.fit_config = FitConfig(
            epochs=epochs, lr=lr, weight_decay=weight_decay, patience=patience, seed=self.seed, precision=precision
        )
        self.val_fraction = val_fraction
        self.on_epoch = on_epoch or (lambda m: None)
        self.fit_result: FitResult | None = None

    def _net(self, X: np.ndarray) -> nn.Module:
        raise NotImplementedError

    @property
    def _memory_format(self) -> torch.memory_format:
        # Convolutions on CPU train faster channels-last (benchmarks/conv_ae_throughput.py measures it).
        return torch.channels_last if self.kind == "images" else torch.contiguous_format

    def _split(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.random.default_rng(self.seed).permutation(len(X))
        n_val = max(1, int(round(len(X) * self.val_fraction)))
        return X[np.sort(order[n_val:])], X[np.sort(order[:n_val])]

    def _norm(self, X: np.ndarray) -> _Standardise:
        if self.kind == "images":
            return _Standardise()
        return _Standardise(*_feature_scale(X.reshape(-1, X.shape[-1]).astype(np.float64)))

    def _batches(self, X: torch.Tensor, shuffle: bool, gen: torch.Generator):
        def it():
            idx = torch.randperm(len(X), generator=gen) if shuffle else torch.arange(len(X))
            for i in range(0, len(X), self.batch_size):
                batch = idx[i : i + self.batch_size]
                if shuffle and len(batch) == 1 and len(X) > 1:
                    continue  # BatchNorm cannot train on a single sample: it joins the next epoch's shuffle
                yield (X[batch].contiguous(memory_format=self._memory_format),)

        return it

    def fit(self, X, y=None) -> TorchDetector:
        X = self._normal(X, y)
        gen = seed_everything(self.seed)
        train, val = self._split(X)
        norm = self._norm(train)
        with torch.no_grad():
            t_train, t_val = norm(torch.from_numpy(train)), norm(torch.from_numpy(val))
        net = self._net(train).to(memory_format=self._memory_format)
        self.fit_result = self._train(net, t_train, t_val, gen)
        self.history = self.fit_result.history
        self.scorer, self._example = _Scorer(norm, net).eval(), X[:2]
        return self

    def _train(self, net: nn.Module, train: torch.Tensor, val: torch.Tensor, gen: torch.Generator) -> FitResult:
        return fit(
            net,
            lambda m, b: m.loss(b[0]),
            self._batches(train, True, gen),
            self._batches(val, False, gen),
            self.fit_config,
            self.on_epoch,
            desc=type(self).__name__,
        )


def _per_sample(err: torch.Tensor) -> torch.Tensor:
    return err.flatten(1).mean(dim=1)


class _DenseAE(nn.Module):
    def __init__(self, d: int, hidden: int, code: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, code))
        self.decoder = nn.Sequential(nn.ReLU(), nn.Linear(code, hidden), nn.ReLU(), nn.Linear(hidden, d))

    def score(self, x):
        return _per_sample((x - self.decoder(self.encoder(x))) ** 2)

    def loss(self, x):
        return self.score(x).mean()


class DenseAEDetector(TorchDetector):
    """Fully connected autoencoder for tabular data; score = mean squared reconstruction error."""

    def __init__(self, hidden: int = 32, code: int = 4, **kw):
        super().__init__(**kw)
        self.hidden, self.code = hidden, code

    def _net(self, X):
        return _DenseAE(X.shape[1], self.hidden, self.code)


class _ConvTranspose2x2(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d(i, o, 2, stride=2)`` computed as one matrix product: with kernel =
    stride the output's 2x2 blocks do not overlap, so each input pixel's block is its ``i``
    channels times an ``(i, 2 * 2 * o)`` matrix. Same parameters (state dicts load either way)
    and the same outputs, channels-last like the input. It makes a training step of the digits
    network faster than torch's transposed-conv kernel where bf16 is native
    (``benchmarks/conv_ae_throughput.py --ablation`` measures it)."""

    def __init__(self, i: int, o: int):
        super().__init__(i, o, 2, stride=2)

    def forward(self, x):
        _, c, h, w = x.shape
        o = self.out_channels
        pixels = x.permute(0, 2, 3, 1).reshape(-1, c)
        blocks = torch.addmm(self.bias.repeat(4), pixels, self.weight.permute(0, 2, 3, 1).reshape(c, 4 * o))
        # (pixel, block row, block column, channel) -> output row 2h + r, column 2w + s
        out = blocks.view(-1, h, w, 2, 2, o).transpose(2, 3).reshape(-1, 2 * h, 2 * w, o)
        return out.permute(0, 3, 1, 2)


class _ConvAE(nn.Module):
    """conv-BN-ReLU-pool stages down to a 4x4 map (so the code sees the whole image), a 1x1 conv
    to ``code`` channels and global average pooling; a linear layer and transposed-conv stages
    decode it back, optionally followed by a 3x3 conv (``refine``) over the full-size output.

    Each stage pools before its ReLU: max-pooling commutes with ReLU (both are monotone), so the
    function and its gradients are those of conv-BN-ReLU-pool, but the ReLU touches a quarter of
    the pixels."""

    def __init__(self, c: int, h: int, w: int, width: int, code: int, refine: bool = True):
        super().__init__()
        stages = 0
        while min(h, w) >> (stages + 1) >= 4:
            stages += 1
        if stages == 0 or h % 4 or w % 4 or h % (1 << stages) or w % (1 << stages):
            raise ValueError(f"conv_ae needs H and W divisible by 4 (at least 8x8), got {h}x{w} (resize the images)")
        chans = [c] + [width * 2**k for k in range(stages)]
        down = []
        for i, o in zip(chans[:-1], chans[1:], strict=True):
            down += [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.MaxPool2d(2), nn.ReLU()]
        self.encoder = nn.Sequential(*down, nn.Conv2d(chans[-1], code, 1))
        self.shape = (chans[-1], h >> stages, w >> stages)
        self.expand = nn.Linear(code, int(np.prod(self.shape)))
        last = max(width // 2, 4) if refine else c  # channels out of the last transposed conv
        up: list[nn.Module] = []
        for i, o in zip(chans[:0:-1], chans[-2::-1], strict=True):
            up += [nn.ReLU(), _ConvTranspose2x2(i, o if o != c else last)]
            if o != c:
                up += [nn.BatchNorm2d(o)]
        if refine:
            up += [nn.ReLU(), nn.Conv2d(last, c, 3, padding=1)]
        self.decoder = nn.Sequential(*up, nn.Sigmoid())

    def reconstruct(self, x):
        code = self.encoder(x).mean(dim=(2, 3))  # global average pooling
        return self.decoder(self.expand(code).view(-1, *self.shape))

    def score(self, x):
        return _per_sample((x - self.reconstruct(x)) ** 2)

    def loss(self, x):
        return self.score(x).mean()


class ConvAEDetector(TorchDetector):
    """Convolutional autoencoder for images; score = per-image mean squared reconstruction error.

    ``refine=False`` ends the decoder with its last transposed conv instead of a 3x3 conv over
    the full-size image: it trains faster, as the full-size layers dominate a step
    (benchmarks/conv_ae_throughput.py)."""

    kind = "images"

    def __init__(self, width: int = 32, code: int = 64, refine: bool = True, **kw):
        super().__init__(**kw)
        self.width, self.code, self.refine = width, code, refine

    def _net(self, X):
        return _ConvAE(*X.shape[1:], self.width, self.code, self.refine)


class _RNNAE(nn.Module):
    """Encoder RNN over the window; the decoder starts from the encoder state and rebuilds the
    window step by step, feeding back its own previous output."""

    CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}

    def __init__(self, d: int, t: int, cell: str, hidden: int, error: str):
        super().__init__()
        if cell not in self.CELLS:
            raise ValueError(f"cell must be one of {sorted(self.CELLS)}, got {cell!r}")
        if error not in ("mae", "mse"):
            raise ValueError(f"error must be 'mae' or 'mse', got {error!r}")
        self.t, self.error = t, error
        self.encoder = self.CELLS[cell](d, hidden, batch_first=True)
        self.decoder = self.CELLS[cell](d, hidden, batch_first=True)
        self.out = nn.Linear(hidden, d)

    def reconstruct(self, x):
        _, state = self.encoder(x)
        state = tuple(s[0] for s in state) if isinstance(state, tuple) else state[0]  # one layer
        weights = [getattr(self.decoder, f"{w}_l0") for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        step = torch.zeros_like(x[:, 0])
        outs = []
        for _ in range(self.t):
            # The decoder's own weights, one cell step at a time: the same arithmetic as calling
            # the RNN on a length-1 sequence, and an ONNX graph with a quarter fewer nodes to run.
            state = self._cell(step, state, *weights)
            step = self.out(state[0] if isinstance(state, tuple) else state)
            outs.append(step)
        return torch.stack(outs, dim=1)

    def _cell(self, step, state, *weights):
        if isinstance(self.decoder, nn.LSTM):
            return torch.lstm_cell(step, state, *weights)
        if isinstance(self.decoder, nn.GRU):
            return torch.gru_cell(step, state, *weights)
        return torch.rnn_tanh_cell(step, state, *weights)

    def score(self, x):
        diff = x - self.reconstruct(x)
        err = diff.abs() if self.error == "mae" else diff**2
        return err.mean(dim=1).sum(dim=1)  # mean over time, summed over features (the SKAB residual)

    def loss(self, x):
        return ((x - self.reconstruct(x)) ** 2).mean()


class RNNAEDetector(TorchDetector):
    """Recurrent encoder-decoder over windows ``(N, T, D)``; ``cell`` is "rnn", "gru" or "lstm"."""

    kind = "windows"

    def __init__(self, cell: str = "gru", hidden: int = 32, error: str = "mae", **kw):
        super().__init__(**kw)
        self.cell, self.hidden, self.error = cell, hidden, error

    def _net(self, X):
        return _RNNAE(X.shape[2], X.shape[1], self.cell, self.hidden, self.error)


class _VAE(nn.Module):
    def __init__(self, shape: tuple[int, ...], hidden: int, latent: int, beta: float):
        super().__init__()
        d = int(np.prod(shape))
        self.beta = beta
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU())
        self.mu, self.logvar = nn.Linear(hidden, latent), nn.Linear(hidden, latent)
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, d))

    def _terms(self, x, sample: bool):
        h = self.encoder(x)
        mu, logvar = self.mu(h), self.logvar(h).clamp(-10, 10)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        recon = ((x.flatten(1) - self.decoder(z)) ** 2).mean(dim=1)
        kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(dim=1) / x.flatten(1).shape[1]
        return recon, kl

    def score(self, x):
        """Negative ELBO per sample at the posterior mean (deterministic, so ONNX reproduces it)."""
        recon, kl = self._terms(x, sample=False)
        return recon + self.beta * kl

    def loss(self, x):
        recon, kl = self._terms(x, sample=self.training)
        return (recon + self.beta * kl).mean()


class VAEDetector(TorchDetector):
    """Variational autoencoder on any input shape (flattened); score = negative ELBO."""

    def __init__(self, hidden: int = 64, latent: int = 4, beta: float = 1.0, kind: str = "tabular", **kw):
        super().__init__(**kw)
        if kind not in self.ndim:
            raise ValueError(f"kind must be one of {sorted(self.ndim)}, got {kind!r}")
        self.kind, self.hidden, self.latent, self.beta = kind, hidden, latent, beta

    def _net(self, X):
        return _VAE(X.shape[1:], self.hidden, self.latent, self.beta)


# -- f-AnoGAN ---------------------------------------------------------------------------------


class _Generator(nn.Module):
    def __init__(self, latent: int, c: int, size: int, width: int):
        super().__init__()
        self.latent, self.start = latent, size // 4
        self.project = nn.Sequential(
            nn.Linear(latent, 2 * width * self.start**2), nn.BatchNorm1d(2 * width * self.start**2), nn.ReLU()
        )
        self.width = width
        self.net = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.ConvTranspose2d(width, c, 4, stride=2, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, z):
        return self.net(self.project(z).view(-1, 2 * self.width, self.start, self.start))


class _Discriminator(nn.Module):
    def __init__(self, c: int, size: int, width: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(c, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width * (size // 4) ** 2, 1)

    def forward(self, x):
        return self.head(self.features(x)).squeeze(1)


class _Encoder(nn.Module):
    def __init__(self, c: int, size: int, width: int, latent: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(c, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(2 * width * (size // 4) ** 2, latent),
            nn.Tanh(),
        )

    def forward(self, x):
        return self.net(x)


class _IziF(nn.Module):
    """izi_f: encode, regenerate; residual in image space plus kappa x in discriminator features."""

    def __init__(self, encoder: _Encoder, generator: _Generator, discriminator: _Discriminator, kappa: float):
        super().__init__()
        self.encoder, self.generator, self.discriminator, self.kappa = encoder, generator, discriminator, kappa

    def terms(self, x):
        regen = self.generator(self.encoder(x))
        image = _per_sample((x - regen) ** 2)
        feats = _per_sample((self.discriminator.features(x) - self.discriminator.features(regen)) ** 2)
        return image, feats

    def score(self, x):
        image, feats = self.terms(x)
        return image + self.kappa * feats

    def loss(self, x):
        return self.score(x).mean()


class AnoGANDetector(TorchDetector):
    """f-AnoGAN: a DCGAN on normal images, then an encoder trained (generator and discriminator
    frozen) to invert the generator. Scoring is one forward pass, exported as one graph."""

    kind = "images"

    def __init__(self, latent: int = 32, width: int = 32, gan_epochs: int = 30, kappa: float = 1.0, **kw):
        super().__init__(**kw)
        self.latent, self.width, self.gan_epochs, self.kappa = latent, width, gan_epochs, kappa
        self.gan_history: list[dict] = []

    def _net(self, X):
        c, h, w = X.shape[1:]
        if h != w or h % 4:
            raise ValueError(f"anogan needs square images with a side divisible by 4, got {h}x{w}")
        return _IziF(
            _Encoder(c, h, self.width, self.latent),
            _Generator(self.latent, c, h, self.width),
            _Discriminator(c, h, self.width),
            self.kappa,
        )

    def _train(self, net: _IziF, train, val, gen) -> FitResult:
        g, d = net.generator, net.discriminator
        opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
        bce = nn.BCEWithLogitsLoss()
        for epoch in tqdm(range(1, self.gan_epochs + 1), desc="AnoGAN: GAN", unit="epoch", disable=None):
            g.train(), d.train()
            totals = np.zeros(2)
            for (real,) in self._batches(train, True, gen)():
                z = torch.randn(len(real), self.latent, generator=gen)
                with autocast_for(self.fit_config):
                    fake = g(z)
                    loss_d = bce(d(real), torch.ones(len(real))) + bce(d(fake.detach()), torch.zeros(len(real)))
                opt_d.zero_grad()
                loss_d.backward()
                opt_d.step()
                with autocast_for(self.fit_config):
                    loss_g = bce(d(fake), torch.ones(len(real)))
                opt_g.zero_grad()
                loss_g.backward()
                opt_g.step()
                totals += [loss_d.item() * len(real), loss_g.item() * len(real)]
            metrics = {"epoch": epoch, "gan_d_loss": totals[0] / len(train), "gan_g_loss": totals[1] / len(train)}
            self.gan_history.append(metrics)
            self.on_epoch(metrics)
        # izi_f: train the encoder only; the generator and the discriminator's features stay fixed.
        g.eval(), d.eval()
        for p in [*g.parameters(), *d.parameters()]:
            p.requires_grad_(False)
        return fit(
            _EncoderOnly(net),
            lambda m, b: m.loss(b[0]),
            self._batches(train, True, gen),
            self._batches(val, False, gen),
            self.fit_config,
            self.on_epoch,
            desc="AnoGAN: encoder",
        )


class _EncoderOnly(nn.Module):
    """Trains ``net.encoder`` with the izi_f loss while the generator and discriminator stay in eval mode."""

    def __init__(self, net: _IziF):
        super().__init__()
        self.net = net

    def train(self, mode: bool = True):
        self.training = mode
        self.net.encoder.train(mode)
        self.net.generator.eval()
        self.net.discriminator.eval()
        return self

    def loss(self, x):
        return self.net.loss(x)


FAMILIES: dict[str, type[Detector]] = {
    "pca": PCADetector,
    "window_pca": WindowPCADetector,
    "knn": KNNDetector,
    "dense_ae": DenseAEDetector,
    "conv_ae": ConvAEDetector,
    "rnn_ae": RNNAEDetector,
    "vae": VAEDetector,
    "anogan": AnoGANDetector,
}


def build_detector(name: str, **params) -> Detector:
    """A detector of family ``name`` (see ``FAMILIES``) with its defaults overridden by ``params``."""
    if name not in FAMILIES:
        raise ValueError(f"unknown detector {name!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[name](**params)

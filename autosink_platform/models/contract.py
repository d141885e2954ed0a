"""The one model contract: what the lifecycle (train -> threshold -> release) needs of a model,
whatever it is. Two kinds meet it:

- ``NetModel``: a PyTorch network on camera frames with a training function of its own (the
  sink's valve classifier and frame guard), logged to MLflow as a PyTorch model;
- ``DetectorModel``: a detector family from ``models.detectors`` (PCA, autoencoders, f-AnoGAN)
  on rows, windows or images, logged to MLflow as its ONNX graph.

Both read a validated dataset through ``Data`` and hand the lifecycle ``OperatingData``: the
scores of one split, their labels, the rows they came from and named groups for the histogram.
Everything else (the registry, the parity gate, thresholds, case slices, the champion
comparison, the manifest) is the lifecycle's, written once for every model.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass
from importlib.metadata import version as distribution_version
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import pandas as pd
from autosink_pi.manifest import ImageInput, Input, RowsInput, TensorInput, WindowsInput
from autosink_pi.runtime import prepare

from autosink_platform.release.onnx_export import OnnxModel, OnnxScorer, Tolerance
from autosink_platform.thresholds import BestF1, ThresholdPolicy, metrics_at
from autosink_platform.validation.cases import CaseFloors

if TYPE_CHECKING:
    from torch import nn

    from autosink_platform.models.training import FitResult

# torch and MLflow are imported where a model trains, loads or is logged, never at import: the
# code location declares its models with this module and starts without either.

ScoreFn = Callable[[np.ndarray], dict[str, np.ndarray]]  # a batch of inputs -> outputs by name
# What the serving environment needs to load a logged model; listing it skips MLflow's slow
# requirement inference (it imports the model in a subprocess).
PIP_REQUIREMENTS = [f"torch=={distribution_version('torch').split('+')[0]}", "numpy"]
ONNX_PIP_REQUIREMENTS = [f"{dist}=={distribution_version(dist)}" for dist in ("onnx", "onnxruntime")] + ["numpy"]


class Data(Protocol):
    """A validated dataset as a model reads it: one table row per sample, inputs in table order."""

    snapshot_id: str
    table: pd.DataFrame  # split, label and the columns slices and protocols are defined on
    inputs: np.ndarray

    def mask(self, split: str | tuple[str, ...], labeled: bool = False) -> np.ndarray: ...

    def frames(self, rows: np.ndarray) -> pd.DataFrame:
        """The table rows ``rows`` with what case slices are defined on (reset index)."""

    def extras(self) -> dict[str, pd.DataFrame]:
        """Extra tables a pipeline's protocol needs at release (e.g. SKAB's per-row labels)."""


class OperatingData(NamedTuple):
    scores: np.ndarray  # the decision output, raw (a threshold policy may calibrate it per row)
    labels: np.ndarray
    groups: dict[str, np.ndarray]  # named boolean masks over ``scores``, for the histogram
    rows: np.ndarray  # per score, the dataset row (table position) it was computed on


class Model(Protocol):
    """What every model declares and does. Fields: ``name`` (registered as
    ``<pipeline>.<name>``), ``code_version``, ``threshold`` (a policy from ``thresholds``),
    ``cases`` (per-slice floors at release, or None), ``outputs`` and ``decision_output`` (the
    ONNX graph's), ``parity`` (how far onnxruntime may be from the trained model),
    ``smoke_file`` (the inputs a device scores before it activates a release) and
    ``warm_starts`` (whether training starts from the champion's weights)."""

    name: str
    code_version: str
    threshold: ThresholdPolicy
    cases: CaseFloors | None
    description: str
    outputs: tuple[str, ...]
    decision_output: str
    parity: Tolerance
    smoke_file: str
    warm_starts: bool

    def config_json(self) -> str: ...

    def cache_key(self) -> str:
        """What, besides the dataset, decides what training produces (the MLflow ``train_key``)."""

    def tags(self) -> dict[str, str]: ...

    def fit(self, data: Data, warm: dict | None, on_epoch: Callable[[dict], None]) -> tuple[Any, FitResult | None]: ...

    def score(self, fitted) -> ScoreFn:
        """The trained model in memory (what the ONNX build is checked against)."""

    def save(self, fitted, folder: Path) -> Path: ...

    def load(self, registry, version) -> Any:
        """The trained model a registered MLflow version was logged with."""

    def log_model(self, fitted, data: Data, registered_name: str): ...

    def release_onnx(self, fitted, example: np.ndarray, folder: Path, registry, run_id: str) -> Path:
        """The ONNX graph a release of this trained model ships, as a file in ``folder``."""

    def onnx_scorer(self, source) -> ScoreFn: ...

    def operating_data(self, data: Data, split: str, score: ScoreFn) -> OperatingData: ...

    def metrics(self, d: OperatingData, scores: np.ndarray, threshold: float) -> dict[str, float]: ...

    def input_manifest(self, input_name: str, data: Data, config: Any) -> Input:
        """The manifest's ``input``: what a device feeds and how it becomes the graph's input
        (``config``: the pipeline source's, which may shape it)."""

    def smoke_inputs(self, data: Data, rows: np.ndarray, config: Any) -> tuple[np.ndarray, np.ndarray]:
        """(raw, inputs): what a device is fed before it activates a release, and the dataset
        inputs the platform scores for the same samples (its expected outputs)."""

    def manifest_extra(self) -> dict: ...


PARITY_INPUTS = 1024  # test inputs used when a protocol has no validation split
SMOKE_INPUTS = 4  # samples a device scores before it activates a release


def check_rows(data: Data) -> tuple[np.ndarray, str]:
    """The rows a trained model is checked on (its ONNX build's parity, its MLflow signature and
    the device's smoke inputs): the validation split, or the first ``PARITY_INPUTS`` test rows
    where the protocol has no validation split; with the split's name."""
    validation = data.mask("validation")
    if validation.any():
        return np.flatnonzero(validation), "validation"
    return np.flatnonzero(data.mask("test"))[:PARITY_INPUTS], "test"


def _example(data: Data, n: int = 4) -> np.ndarray:
    return np.ascontiguousarray(data.inputs[check_rows(data)[0][:n]])


# -- PyTorch networks on camera frames --------------------------------------------------------


@dataclass(frozen=True)
class NetModel:
    """A network on uint8 RGB frames (N, H, W, 3) with NamedTuple outputs; ``train`` is its own
    loop, ``operating_data`` says which scores its threshold is chosen on (labeled frames, or
    ordinary frames against synthetic faults) and ``evaluate`` what its test metrics are."""

    name: str
    config: Any  # a frozen dataclass: its content is part of the training cache key
    code_version: str  # bump when training code changes what a config produces
    build: Callable[[Any], nn.Module]
    train: Callable[[Data, Any, dict | None, Callable[[dict], None]], tuple[nn.Module, FitResult]]
    operating_data: Callable[[Data, str, ScoreFn], OperatingData]
    threshold: ThresholdPolicy  # chosen on the operating data of its split
    evaluate: Callable[[OperatingData, np.ndarray, float], dict[str, float]]
    outputs: tuple[str, ...]
    decision_output: str
    input_size: int
    description: str = ""
    cases: CaseFloors | None = None  # per-slice floors on the test split; None: no case validation
    parity: Tolerance = Tolerance(atol=1e-4)  # on uint8 frames outputs are probabilities and bounded scores
    smoke_file: str = "smoke_frames.npy"
    warm_starts: bool = True

    def config_json(self) -> str:
        return json.dumps(asdict(self.config) if is_dataclass(self.config) else self.config, sort_keys=True)

    def cache_key(self) -> str:
        return f"{self.code_version}|{self.config_json()}"

    def tags(self) -> dict[str, str]:
        return {"config": self.config_json()}

    def fit(self, data, warm, on_epoch):
        return self.train(data, self.config, warm, on_epoch)

    def score(self, fitted: nn.Module) -> ScoreFn:
        from autosink_platform.models.training import torch_scorer

        return torch_scorer(fitted)

    def save(self, fitted: nn.Module, folder: Path) -> Path:
        import torch

        torch.save(fitted.state_dict(), folder / "state_dict.pt")
        return folder / "state_dict.pt"

    def load(self, registry, version) -> nn.Module:
        module = self.build(self.config)
        module.load_state_dict(registry.load_state_dict(version))
        return module.eval()

    def log_model(self, fitted: nn.Module, data, registered_name: str):
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        from autosink_platform.models.training import PrimaryOutput, to_float_tensor

        example = to_float_tensor(_example(data))
        serving = PrimaryOutput(fitted, self.decision_output).eval()
        with torch.no_grad():
            signature = infer_signature(example.numpy(), serving(example).numpy())
        return mlflow.pytorch.log_model(
            serving,
            name="model",
            signature=signature,
            input_example=example.numpy(),
            registered_model_name=registered_name,
            pip_requirements=PIP_REQUIREMENTS,
        )

    def release_onnx(self, fitted: nn.Module, example: np.ndarray, folder: Path, registry, run_id: str) -> Path:
        """Exported from the trained network (MLflow keeps it as a PyTorch model)."""
        from autosink_platform.models.training import to_float_tensor
        from autosink_platform.release.onnx_export import export_onnx

        return export_onnx(fitted, to_float_tensor(example), folder / "model.onnx", list(self.outputs))

    def onnx_scorer(self, source) -> ScoreFn:
        return OnnxScorer(source)

    def metrics(self, d: OperatingData, scores: np.ndarray, threshold: float) -> dict[str, float]:
        return self.evaluate(d, scores, threshold)

    def input_manifest(self, input_name: str, data, config=None) -> Input:
        size = self.input_size  # frames are stored at this size: a device resizes its camera's to it
        return ImageInput(name=input_name, shape=["batch", 3, size, size], color="RGB", size=(size, size))

    def smoke_inputs(self, data, rows: np.ndarray, config=None) -> tuple[np.ndarray, np.ndarray]:
        frames = np.ascontiguousarray(data.inputs[rows[:SMOKE_INPUTS]])
        return frames, frames

    def manifest_extra(self) -> dict:
        return {}


# -- anomaly detectors on rows, windows or images ----------------------------------------------


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (ties counted half); None when only one class is present."""
    labels = np.asarray(labels).astype(int)
    n1 = int(labels.sum())
    if n1 == 0 or n1 == len(labels):
        return None
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[labels == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * (len(labels) - n1)))


def detection_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    out = metrics_at(scores, labels, threshold)
    if (a := auroc(scores, labels)) is not None:
        out["auroc"] = a
    out["flagged"] = float(np.mean(scores >= threshold))
    return out


@dataclass(frozen=True)
class DetectorModel:
    """A detector family (see ``models.FAMILIES``) with its parameters; it fits the normal
    training samples, and its one output ``score`` is higher the more anomalous a sample is."""

    name: str  # registered as "<pipeline>.<name>"
    family: str
    params: dict = field(default_factory=dict)
    threshold: ThresholdPolicy = BestF1()  # chosen on validation labels, or on training scores
    code_version: str = "1"
    cases: CaseFloors | None = None  # per-group floors on the test split at release
    description: str = ""
    # scores are unbounded (reconstruction errors): relative
    parity: Tolerance = Tolerance(rtol=1e-4)
    smoke_file: str = "smoke_inputs.npy"
    warm_starts: bool = False
    outputs: tuple[str, ...] = ("score",)
    decision_output: str = "score"
    # What a device feeds (``autosink_pi.manifest``), or a function of the source's config that
    # says it. Images and rows: the dataset's inputs are that raw input, prepared by the client's
    # own code here as on the device. Windows: the dataset holds the windows the client's code cut
    # and the raw series as the extra table ``series``. None: the graph's tensor as it is.
    input: ImageInput | RowsInput | Callable[[Any], WindowsInput] | None = None

    def device_input(self, config: Any) -> Input | None:
        return self.input(config) if callable(self.input) else self.input

    def prepare(self, raw: np.ndarray) -> np.ndarray:
        """Dataset inputs as the graph's; only images change (resized, scaled)."""
        return prepare(self.input, raw) if isinstance(self.input, ImageInput) else raw

    def config_json(self) -> str:
        return json.dumps(self.params, sort_keys=True)

    def cache_key(self) -> str:
        return f"{self.family}|{self.config_json()}|{self.code_version}"

    def tags(self) -> dict[str, str]:
        return {"family": self.family, "config": self.config_json()}

    def fit(self, data, warm, on_epoch):
        from autosink_platform.models.detectors import FAMILIES, TorchDetector, build_detector

        epochs = {"on_epoch": on_epoch} if issubclass(FAMILIES[self.family], TorchDetector) else {}
        detector = build_detector(self.family, **self.params, **epochs)
        detector.fit(self.prepare(np.asarray(data.inputs[data.mask("train")])))
        if hasattr(detector, "on_epoch"):
            detector.on_epoch = None  # a closure over the MLflow run: not part of the saved model
        return detector, getattr(detector, "fit_result", None)

    def score(self, fitted) -> ScoreFn:
        return lambda X: {"score": fitted.decision_function(self.prepare(X))}

    def save(self, fitted, folder: Path) -> Path:
        import torch

        torch.save(fitted, folder / "detector.pt")
        return folder / "detector.pt"

    def load(self, registry, version):
        import torch

        with tempfile.TemporaryDirectory() as tmp:
            path = registry.download(version.run_id, "detector.pt", tmp)
            return torch.load(path, weights_only=False)  # our own artifact, written by ``save``

    def log_model(self, fitted, data, registered_name: str):
        import mlflow.onnx
        import onnx
        from mlflow.models import infer_signature

        example = self.prepare(_example(data))
        with tempfile.TemporaryDirectory() as tmp:
            graph = onnx.load(str(fitted.export_onnx(Path(tmp) / "model.onnx", example[:2])))
        return mlflow.onnx.log_model(
            graph,
            name="model",
            signature=infer_signature(example, fitted.decision_function(example).astype(np.float32)),
            input_example=example,
            registered_model_name=registered_name,
            save_as_external_data=False,  # one self-contained file: the one the fleet gets
            onnx_execution_providers=["CPUExecutionProvider"],
            pip_requirements=ONNX_PIP_REQUIREMENTS,
        )

    def release_onnx(self, fitted, example: np.ndarray, folder: Path, registry, run_id: str) -> Path:
        """The graph registered as the MLflow model at training (exported once, shipped as is)."""
        return registry.download(run_id, "model/model.onnx", folder)

    def onnx_scorer(self, source) -> ScoreFn:
        return OnnxModel(source, prepare=lambda raw: np.ascontiguousarray(self.prepare(raw), dtype=np.float32))

    def operating_data(self, data, split: str, score: ScoreFn) -> OperatingData:
        rows = np.flatnonzero(data.mask(split))
        labels = data.table["label"].to_numpy()[rows].astype(np.int64)
        scores = score(np.asarray(data.inputs[rows]))["score"]
        return OperatingData(scores, labels, {"normal": labels == 0, "anomalous": labels == 1}, rows)

    def metrics(self, d: OperatingData, scores: np.ndarray, threshold: float) -> dict[str, float]:
        return detection_metrics(scores, d.labels, threshold)

    def input_manifest(self, input_name: str, data, config=None) -> Input:
        if (spec := self.device_input(config)) is not None:
            return spec.model_copy(update={"name": input_name})
        return TensorInput(name=input_name, shape=["batch", *data.inputs.shape[1:]])

    def smoke_inputs(self, data, rows: np.ndarray, config=None) -> tuple[np.ndarray, np.ndarray]:
        """For windows, the first session's raw series up to its ``SMOKE_INPUTS``-th scored
        window, and the dataset's windows at those positions; otherwise the first check rows."""
        spec = self.device_input(config)
        if not isinstance(spec, WindowsInput):
            raw = np.ascontiguousarray(data.inputs[rows[:SMOKE_INPUTS]])
            return raw, raw
        series = data.extras()["series"]
        source = series["source"].iloc[0]
        raw = series.loc[series["source"] == source].sort_values("row")[spec.columns].to_numpy(np.float64)
        starts = spec.startup_rows + spec.stride * np.arange(SMOKE_INPUTS)
        raw = raw[: starts[-1] + spec.window]
        table = data.table.reset_index(drop=True)
        at = table.index[(table["source"] == source) & table["position"].isin(starts)].to_numpy()
        at = at[np.argsort(table["position"].to_numpy()[at], kind="stable")]
        if len(at) != SMOKE_INPUTS or len(raw) < starts[-1] + spec.window:
            raise ValueError(f"{self.name}: session {source} has no {SMOKE_INPUTS} scored windows for the smoke test")
        return np.ascontiguousarray(raw), np.ascontiguousarray(data.inputs[at])

    def manifest_extra(self) -> dict:
        return {"family": self.family}

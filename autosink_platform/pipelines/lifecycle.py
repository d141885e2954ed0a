"""Train -> threshold -> release for one model of a pipeline: plain functions over the registry
and the fleet channel. Each stage reuses its earlier result when its inputs are unchanged."""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from mlflow.models import infer_signature
from torch import nn

import mlflow
from autosink_platform import plots
from autosink_platform.models.training import to_float_tensor
from autosink_platform.pipelines.spec import LoadedDataset, ModelSpec, PipelineSpec, ScoreFn
from autosink_platform.registry import releases
from autosink_platform.registry.mlflow_registry import CHAMPION, Registry
from autosink_platform.registry.promotion import AuditLog
from autosink_platform.registry.releases import (
    Candidate,
    Release,
    champion_comparison,
    flat_metrics,
    gate_on_cases,
    parity_gate,
    published_release,
    record_threshold,
    ship,
)
from autosink_platform.release.channel import FleetChannel
from autosink_platform.release.onnx_export import OnnxScorer, Tolerance, export_onnx
from autosink_platform.thresholds import OperatingPoint
from autosink_platform.validation import cases as case_validation

PARITY = Tolerance(atol=1e-4)  # on uint8 frames, outputs are probabilities and bounded scores
SMOKE_FRAMES = 4
# What the serving environment needs to load the logged PyTorch model; listing it skips
# MLflow's slow requirement inference (it imports the model in a subprocess).
PIP_REQUIREMENTS = [f"torch=={torch.__version__.split('+')[0]}", "numpy"]


@dataclass(frozen=True)
class TrainedModel:
    registered_name: str
    version: str
    run_id: str
    train_key: str
    reused: bool
    warm_started_from: str | None
    best_epoch: int
    metrics: dict  # at the best epoch
    history: list[dict]  # per epoch: epoch, train_loss, val_loss


class _PrimaryOutput(nn.Module):
    """The logged MLflow model returns the decision output alone, so ``pyfunc.predict`` gives scores."""

    def __init__(self, module: nn.Module, field: str):
        super().__init__()
        self.module, self.field = module, field

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return getattr(self.module(frames), self.field)


def torch_scorer(module: nn.Module, batch_size: int = 256) -> ScoreFn:
    @torch.no_grad()
    def score(images: np.ndarray) -> dict[str, np.ndarray]:
        module.eval()
        outs = [module(to_float_tensor(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
        return {f: torch.cat([getattr(o, f) for o in outs]).double().numpy() for f in outs[0]._fields}

    return score


def registered_name(pipeline: PipelineSpec, model: ModelSpec) -> str:
    return releases.registered_name(pipeline.name, model.name)


def train_model(
    pipeline: PipelineSpec, model: ModelSpec, dataset: LoadedDataset, registry: Registry, dagster_run_id: str
) -> TrainedModel:
    name = registered_name(pipeline, model)
    train_key = hashlib.sha256(
        f"{dataset.ref.snapshot_id}|{model.code_version}|{model.config_json()}".encode()
    ).hexdigest()[:16]
    existing = registry.find_version(name, "train_key", train_key)
    if existing is not None:
        run = registry.client.get_run(existing.run_id)
        history = _history(registry, existing.run_id)
        best = int(run.data.params["best_epoch"])
        return TrainedModel(
            name,
            str(existing.version),
            existing.run_id,
            train_key,
            True,
            existing.tags.get("warm_started_from") or None,
            best,
            history[best - 1],
            history,
        )

    # Warm start from the champion's weights when it has the same architecture and config.
    champion = registry.alias_version(name, CHAMPION)
    warm = champion if champion is not None and champion.tags.get("config") == model.config_json() else None
    warm_state = registry.load_state_dict(warm) if warm is not None else None
    warm_from = str(warm.version) if warm is not None else None

    with mlflow.start_run(
        experiment_id=registry.experiment_id(pipeline.name), run_name=f"{model.name}-{dataset.ref.snapshot_id}"
    ) as run:
        mlflow.set_tags(
            {"dataset_snapshot_id": dataset.ref.snapshot_id, "dagster_run_id": dagster_run_id, "train_key": train_key}
        )
        mlflow.log_params(
            {
                "config": model.config_json(),
                "code_version": model.code_version,
                "warm_started_from": warm_from or "none",
            }
        )
        module, fit = model.train(
            dataset,
            model.config,
            warm_state,
            lambda m: mlflow.log_metrics(
                flat_metrics("", {k: v for k, v in m.items() if k != "epoch"}), step=m["epoch"]
            ),
        )
        mlflow.log_params({"best_epoch": fit.best_epoch, "stopped_early": fit.stopped_early})
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(module.state_dict(), Path(tmp) / "state_dict.pt")
            mlflow.log_artifact(str(Path(tmp) / "state_dict.pt"))
            mlflow.log_artifact(
                str(plots.training_curves(fit.history, Path(tmp) / "training_curves.png", f"{name} training"))
            )
        example = to_float_tensor(dataset.images[dataset.mask("validation")][:SMOKE_FRAMES])
        serving = _PrimaryOutput(module, model.decision_output).eval()
        with torch.no_grad():
            signature = infer_signature(example.numpy(), serving(example).numpy())
        info = mlflow.pytorch.log_model(
            serving,
            name="model",
            signature=signature,
            input_example=example.numpy(),
            registered_model_name=name,
            pip_requirements=PIP_REQUIREMENTS,
        )
    version = str(info.registered_model_version)
    registry.set_tags(
        name,
        version,
        {
            "train_key": train_key,
            "dataset_snapshot_id": dataset.ref.snapshot_id,
            "dagster_run_id": dagster_run_id,
            "config": model.config_json(),
            "code_version": model.code_version,
            "validation_status": "pending",
            "warm_started_from": warm_from or "",
        },
    )
    best = fit.history[fit.best_epoch - 1]
    return TrainedModel(name, version, run.info.run_id, train_key, False, warm_from, fit.best_epoch, best, fit.history)


def _history(registry: Registry, run_id: str) -> list[dict]:
    """Per-epoch losses as logged to MLflow (step = epoch)."""
    by_epoch: dict[int, dict] = {}
    for key in ("train_loss", "val_loss"):
        for m in registry.client.get_metric_history(run_id, key):
            by_epoch.setdefault(m.step, {"epoch": m.step})[key] = m.value
    return [by_epoch[e] for e in sorted(by_epoch)]


def load_version_module(model: ModelSpec, version, registry: Registry) -> nn.Module:
    """The module a registered MLflow model version was logged with."""
    module = model.build(model.config)
    module.load_state_dict(registry.load_state_dict(version))
    return module.eval()


def load_module(model: ModelSpec, trained: TrainedModel, registry: Registry) -> nn.Module:
    return load_version_module(
        model, registry.client.get_model_version(trained.registered_name, trained.version), registry
    )


def load_alias_module(model: ModelSpec, name: str, alias: str, registry: Registry) -> nn.Module:
    """The module of the version an alias points at (e.g. the champion)."""
    version = registry.alias_version(name, alias)
    if version is None:
        raise LookupError(f"{name} has no {alias!r} alias yet: release a version first")
    if version.tags.get("config") != model.config_json():
        raise LookupError(
            f"{name} v{version.version} ({alias}) was trained with another config than the current code builds"
        )
    return load_version_module(model, version, registry)


def choose_threshold(
    pipeline: PipelineSpec,
    model: ModelSpec,
    trained: TrainedModel,
    dataset: LoadedDataset,
    registry: Registry,
    plot_dir: Path,
) -> tuple[OperatingPoint, dict[str, Path]]:
    """Operating point on the validation split; logged to the version's run with its plots."""
    module = load_module(model, trained, registry)
    data = model.operating_data(dataset, "validation", torch_scorer(module))
    op = model.threshold.choose(data.scores, data.labels)
    figures = {
        "score_histogram": plots.score_histogram(
            data.groups,
            op.threshold,
            plot_dir / f"{model.name}_score_histogram.png",
            f"{trained.registered_name} v{trained.version}: validation scores",
        ),
        "pr_curve": plots.pr_curve(
            data.scores,
            data.labels,
            (op.recall, op.precision),
            plot_dir / f"{model.name}_pr_curve.png",
            f"{trained.registered_name} v{trained.version}",
        ),
    }
    record_threshold(registry, trained.registered_name, trained.version, trained.run_id, op, figures)
    return op, figures


def release_model(
    pipeline: PipelineSpec,
    model: ModelSpec,
    trained: TrainedModel,
    op: OperatingPoint,
    dataset: LoadedDataset,
    registry: Registry,
    channel: FleetChannel,
    audit: AuditLog,
    dagster_run_id: str,
) -> Release:
    """Export, gate on ONNX parity, evaluate on test, publish to the fleet layout and set aliases."""
    name, version = trained.registered_name, trained.version
    if (done := published_release(registry, channel, pipeline.name, model.name, version, op)) is not None:
        return done

    module = load_module(model, trained, registry)
    val_images = dataset.images[dataset.mask("validation")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        onnx_path = export_onnx(
            module, to_float_tensor(val_images[:SMOKE_FRAMES]), tmp / "model.onnx", list(model.output_names)
        )
        scorer = OnnxScorer(onnx_path)
        diffs = parity_gate(
            name, version, torch_scorer(module)(val_images), scorer(val_images), PARITY, "validation frames"
        )
        test_metrics = model.evaluate(dataset, scorer, op.threshold)  # what ships is what gets evaluated
        cases = _case_table(pipeline, model, dataset, scorer, op.threshold)
        if cases is not None:
            gate_on_cases(registry, name, version, trained.run_id, cases)
        comparison = _compare_with_champion(pipeline, model, dataset, registry, channel, test_metrics, cases)
        smoke = np.ascontiguousarray(val_images[:SMOKE_FRAMES])
        candidate = Candidate(
            pipeline=pipeline.name,
            model=model.name,
            version=version,
            run_id=trained.run_id,
            onnx_path=onnx_path,
            input={
                "name": scorer.input_name,
                "shape": ["batch", 3, model.input_size, model.input_size],
                "dtype": "float32",
                "preprocessing": {
                    "color": "RGB",
                    "resize": [model.input_size, model.input_size],
                    "resample": "bilinear",
                    "scale": "1/255",
                    "layout": "NCHW",
                },
            },
            outputs=list(model.output_names),
            decision_output=model.decision_output,
            threshold=op,
            metrics={
                "validation": {k: getattr(op, k) for k in ("precision", "recall", "f1", "fpr")},
                "test": test_metrics,
            },
            parity=diffs,
            smoke=smoke,
            smoke_file="smoke_frames.npy",
            expected={k: v.tolist() for k, v in scorer(smoke).items()},
            tolerance=PARITY,
            comparison=comparison,
            cases=cases,
            dataset_snapshot_id=dataset.ref.snapshot_id,
            dagster_run_id=dagster_run_id,
            code_version=model.code_version,
        )
        return ship(candidate, registry, channel, audit, pipeline.promotion, tmp)


def _case_table(
    pipeline: PipelineSpec, model: ModelSpec, dataset: LoadedDataset, score: ScoreFn, threshold: float
) -> pd.DataFrame | None:
    """Per-slice test metrics at the release threshold (None when the model has no floors)."""
    if model.cases is None or not pipeline.slices:
        return None
    data = model.operating_data(dataset, "test", score)
    return case_validation.slice_table(
        dataset.frames(data.rows), data.scores, data.labels, threshold, pipeline.slices, model.cases
    )


def _compare_with_champion(
    pipeline: PipelineSpec,
    model: ModelSpec,
    dataset: LoadedDataset,
    registry: Registry,
    channel: FleetChannel,
    candidate: dict,
    candidate_cases: pd.DataFrame | None,
) -> dict | None:
    """The champion's released ONNX scored on the candidate's test split, with the same metric
    overall and, when case validation is configured, per slice."""
    champion = registry.alias_version(registered_name(pipeline, model), CHAMPION)
    if champion is None:
        return None
    vdir = channel.version_dir(pipeline.name, model.name, champion.version)
    manifest = json.loads((vdir / "manifest.json").read_text())
    theirs_score, theirs_threshold = OnnxScorer(vdir / "model.onnx"), manifest["threshold"]["threshold"]
    theirs = model.evaluate(dataset, theirs_score, theirs_threshold)
    theirs_cases = (
        _case_table(pipeline, model, dataset, theirs_score, theirs_threshold) if candidate_cases is not None else None
    )
    return champion_comparison(
        pipeline.promotion.metric, champion.version, candidate, theirs, candidate_cases, theirs_cases, model.cases
    )

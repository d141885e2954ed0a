"""Train -> threshold -> release for every model of every pipeline, over the one model contract
(``models.contract``): plain functions over the MLflow registry and the fleet channel. Each
stage reuses its earlier result when its inputs are unchanged (Dagster decides first; the
MLflow ``train_key`` is a second line of defence)."""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from autosink_platform.models.contract import SMOKE_INPUTS, Data, Model, OperatingData, ScoreFn, check_rows
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
from autosink_platform.thresholds import OperatingPoint, SessionUCL, calibrated
from autosink_platform.validation import cases as case_validation


@dataclass(frozen=True)
class TrainedModel:
    """A registered MLflow model version and how it was trained. ``best_epoch`` and ``metrics``
    (at the best epoch) are None and empty for models fitted in one pass (PCA)."""

    registered_name: str
    version: str
    run_id: str
    train_key: str
    reused: bool
    warm_started_from: str | None = None
    best_epoch: int | None = None
    metrics: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, train_loss, val_loss
    train_seconds: float | None = None


CURVES = "training_curves.png"  # the figure of a trained version's epochs, beside its model in MLflow


def registered_name(pipeline, model: Model) -> str:
    return releases.registered_name(pipeline.name, model.name)


# -- 1. train ----------------------------------------------------------------------------------


def train_model(pipeline, model: Model, data: Data, registry: Registry, dagster_run_id: str) -> TrainedModel:
    """1. reuse the version trained on these inputs, if any; 2. warm-start from the champion
    when the model does and its config is the same; 3. fit, logging each epoch; 4. log the
    trained model with its curves to MLflow as a new version of ``<pipeline>.<model>``."""
    import mlflow

    from autosink_platform import plots

    name = registered_name(pipeline, model)
    train_key = hashlib.sha256(f"{data.snapshot_id}|{model.cache_key()}".encode()).hexdigest()[:16]
    if (existing := registry.find_version(name, "train_key", train_key)) is not None:
        return _reused(registry, name, existing, train_key)

    champion = registry.alias_version(name, CHAMPION) if model.warm_starts else None
    warm = champion if champion is not None and champion.tags.get("config") == model.config_json() else None
    warm_from = str(warm.version) if warm is not None else None

    with mlflow.start_run(
        experiment_id=registry.experiment_id(pipeline.name), run_name=f"{model.name}-{data.snapshot_id}"
    ) as run:
        mlflow.set_tags(
            {"dataset_snapshot_id": data.snapshot_id, "dagster_run_id": dagster_run_id, "train_key": train_key}
        )
        mlflow.log_params(
            {**model.tags(), "code_version": model.code_version, "warm_started_from": warm_from or "none"}
        )
        start = time.perf_counter()
        fitted, fit = model.fit(
            data,
            registry.load_state_dict(warm) if warm is not None else None,
            lambda m: mlflow.log_metrics(
                flat_metrics("", {k: v for k, v in m.items() if k != "epoch"}), step=m["epoch"]
            ),
        )
        seconds = time.perf_counter() - start
        history = fit.history if fit is not None else []
        mlflow.log_params(
            {"train_seconds": round(seconds, 2), "train_samples": int(data.mask("train").sum())}
            | ({"best_epoch": fit.best_epoch, "stopped_early": fit.stopped_early} if fit is not None else {})
        )
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(model.save(fitted, Path(tmp))))
            if history:
                curves = plots.training_curves(history, Path(tmp) / CURVES, f"{name} training")
                mlflow.log_artifact(str(curves))
        info = model.log_model(fitted, data, name)
    version = str(info.registered_model_version)
    registry.set_tags(
        name,
        version,
        {
            **model.tags(),
            "train_key": train_key,
            "dataset_snapshot_id": data.snapshot_id,
            "dagster_run_id": dagster_run_id,
            "code_version": model.code_version,
            "validation_status": "pending",
            "warm_started_from": warm_from or "",
        },
    )
    best = fit.best_epoch if fit is not None else None
    return _trained(name, version, run.info.run_id, train_key, False, warm_from, best, history, seconds)


def _reused(registry: Registry, name: str, existing, train_key: str) -> TrainedModel:
    params = registry.client.get_run(existing.run_id).data.params
    return _trained(
        name,
        str(existing.version),
        existing.run_id,
        train_key,
        True,
        existing.tags.get("warm_started_from") or None,
        int(params["best_epoch"]) if "best_epoch" in params else None,
        _history(registry, existing.run_id),
        float(params["train_seconds"]) if "train_seconds" in params else None,
    )


def _trained(name, version, run_id, train_key, reused, warm_from, best_epoch, history, seconds) -> TrainedModel:
    """The reference, with the metrics of the best epoch when the model was trained in epochs."""
    best = best_epoch if best_epoch and history else None
    metrics = history[best - 1] if best else {}
    return TrainedModel(name, version, run_id, train_key, reused, warm_from, best, metrics, history, seconds)


def _history(registry: Registry, run_id: str) -> list[dict]:
    """Per-epoch losses as logged to MLflow (step = epoch)."""
    by_epoch: dict[int, dict] = {}
    for key in ("train_loss", "val_loss"):
        for m in registry.client.get_metric_history(run_id, key):
            by_epoch.setdefault(m.step, {"epoch": m.step})[key] = m.value
    return [by_epoch[e] for e in sorted(by_epoch)]


def load_version(model: Model, version, registry: Registry):
    """The trained model a registered MLflow version was logged with."""
    return model.load(registry, version)


def load_trained(model: Model, trained: TrainedModel, registry: Registry):
    return load_version(model, registry.client.get_model_version(trained.registered_name, trained.version), registry)


def load_alias(model: Model, name: str, alias: str, registry: Registry):
    """The trained model of the version an alias points at (e.g. the champion)."""
    version = registry.alias_version(name, alias)
    if version is None:
        raise LookupError(f"{name} has no {alias!r} alias yet: release a version first")
    if version.tags.get("config") != model.config_json():
        raise LookupError(
            f"{name} v{version.version} ({alias}) was trained with another config than the current code builds"
        )
    return load_version(model, version, registry)


# -- 2. threshold ------------------------------------------------------------------------------


def choose_threshold(
    pipeline, model: Model, trained: TrainedModel, data: Data, registry: Registry, plot_dir: Path
) -> tuple[OperatingPoint, dict[str, Path]]:
    """1. score the split the threshold policy is chosen on; 2. choose the operating point;
    3. draw the scores on its scale with the point, and the PR curve where both classes are
    present; 4. log the point, its inputs and figures to the version's run."""
    from autosink_platform import plots

    policy = model.threshold
    d = model.operating_data(data, policy.split, model.score(load_trained(model, trained, registry)))
    rows = data.table.iloc[d.rows]  # a policy may calibrate per session (the rows' source)
    op = policy.choose(d.scores, d.labels, rows)
    scores = calibrated(rows, d.scores, op)
    split = policy.split if isinstance(policy.split, str) else "+".join(policy.split)
    inputs = {"split": split, "samples": len(d.labels)}
    if policy.split == "validation":
        inputs["anomalous"] = int(d.labels.sum())
    if isinstance(policy, SessionUCL):
        inputs["sessions"] = len(op.params["ucl"])
    title, stem = f"{trained.registered_name} v{trained.version}", plot_dir / f"{pipeline.name}_{model.name}"
    figures = {
        "score_histogram": plots.score_histogram(
            {g: scores[m] for g, m in d.groups.items() if m.any()},
            op.threshold,
            Path(f"{stem}_score_histogram.png"),
            f"{title}: {split} scores",
        )
    }
    if d.labels.min() != d.labels.max() and op.recall is not None:  # a point chosen on labels
        figures["pr_curve"] = plots.pr_curve(
            scores, d.labels, (op.recall, op.precision), Path(f"{stem}_pr_curve.png"), title
        )
    record_threshold(
        registry,
        trained.registered_name,
        trained.version,
        trained.run_id,
        op,
        figures,
        inputs=inputs,
        model_version=trained.version,
    )
    return op, figures


# -- 3. release --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    cases: pd.DataFrame | None  # per slice at the threshold; None when the model has no floors
    rows: np.ndarray
    flags: np.ndarray  # per test score: at or above the threshold


def evaluate(pipeline, model: Model, data: Data, score: ScoreFn, op: OperatingPoint | dict) -> Evaluation:
    """What ``score`` does on the test split at the operating point ``op`` (as chosen, or as a
    manifest stores it): the model's metrics and, when it has floors, the slice table."""
    threshold = op.threshold if isinstance(op, OperatingPoint) else op["threshold"]
    d: OperatingData = model.operating_data(data, "test", score)
    scores = calibrated(data.table.iloc[d.rows], d.scores, op)
    cases = None
    if model.cases is not None and pipeline.slices:
        cases = case_validation.slice_table(
            data.frames(d.rows), scores, d.labels, threshold, pipeline.slices, model.cases
        )
    return Evaluation(model.metrics(d, scores, threshold), cases, d.rows, scores >= threshold)


def release_model(
    pipeline,
    model: Model,
    trained: TrainedModel,
    op: OperatingPoint,
    data: Data,
    registry: Registry,
    channel: FleetChannel,
    audit: AuditLog,
    dagster_run_id: str,
) -> Release:
    """1. nothing to do if this version is published at this point already; 2. export ONNX and
    refuse it unless onnxruntime reproduces the trained model; 3. evaluate what ships on the test
    split, per slice (refused below a floor) and by the pipeline's published protocol; 4. compare
    with the champion on the same split; 5. ship: signed manifest, fleet channel, aliases."""
    name, version = trained.registered_name, trained.version
    if (done := published_release(registry, channel, pipeline.name, model.name, version, op)) is not None:
        return done

    fitted = load_trained(model, trained, registry)
    source_config = getattr(pipeline.source, "config", None)  # public files' data settings
    rows, split = check_rows(data)
    check_inputs = np.asarray(data.inputs[rows])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        onnx_path = model.release_onnx(fitted, check_inputs[:SMOKE_INPUTS], tmp, registry, trained.run_id)
        scorer = model.onnx_scorer(onnx_path)
        ours, theirs = model.score(fitted)(check_inputs), scorer(check_inputs)
        try:
            diffs = parity_gate(name, version, ours, theirs, model.parity, f"{split} inputs")
        except releases.ReleaseRejected:
            registry.set_tags(name, version, {"validation_status": "failed: onnx parity"})
            raise
        test = evaluate(pipeline, model, data, scorer, op)  # what ships is what gets evaluated
        if test.cases is not None:
            gate_on_cases(registry, name, version, trained.run_id, test.cases)
        metrics = {"test": test.metrics}
        if model.threshold.split == "validation":
            metrics["validation"] = {k: getattr(op, k) for k in ("precision", "recall", "f1", "fpr")}
        if pipeline.protocol is not None:
            metrics["protocol"] = pipeline.protocol(data.frames(test.rows), test.flags, data.extras(), source_config)
        smoke, smoke_inputs = model.smoke_inputs(data, rows, source_config)
        candidate = Candidate(
            pipeline=pipeline.name,
            model=model.name,
            version=version,
            run_id=trained.run_id,
            onnx_path=onnx_path,
            input=model.input_manifest(scorer.input_name, data, source_config),
            outputs=list(model.outputs),
            decision_output=model.decision_output,
            threshold=op,
            metrics=metrics,
            parity=diffs,
            smoke=smoke,
            smoke_file=model.smoke_file,
            expected={k: v.tolist() for k, v in scorer(smoke_inputs).items()},  # as the device runs them: one batch
            tolerance=model.parity,
            comparison=_compare_with_champion(pipeline, model, data, registry, channel, test),
            cases=test.cases,
            dataset_snapshot_id=data.snapshot_id,
            dagster_run_id=dagster_run_id,
            code_version=model.code_version,
            extra=model.manifest_extra() | ({"reference": pipeline.reference} if pipeline.reference else {}),
        )
        return ship(candidate, registry, channel, audit, pipeline.promotion, tmp)


def champion_release(pipeline, model: Model, registry: Registry, channel: FleetChannel) -> tuple[str, Path] | None:
    """The champion's version and its release folder in the fleet channel (what devices run), or
    None when the model has no champion yet."""
    champion = registry.alias_version(registered_name(pipeline, model), CHAMPION)
    if champion is None:
        return None
    return str(champion.version), channel.version_dir(pipeline.name, model.name, champion.version)


def _compare_with_champion(
    pipeline, model: Model, data: Data, registry: Registry, channel: FleetChannel, candidate: Evaluation
) -> dict | None:
    """The champion's released ONNX scored on the candidate's test split at its own operating
    point, with the same metric overall and, when the model has floors, per slice."""
    if (champion := champion_release(pipeline, model, registry, channel)) is None:
        return None
    version, vdir = champion
    manifest = json.loads((vdir / "manifest.json").read_text())
    theirs = evaluate(pipeline, model, data, model.onnx_scorer(vdir / "model.onnx"), manifest["threshold"])
    return champion_comparison(
        pipeline.promotion.metric,
        version,
        candidate.metrics,
        theirs.metrics,
        candidate.cases,
        theirs.cases,
        model.cases,
    )

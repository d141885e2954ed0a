"""Train -> threshold -> release for the detector pipelines' models (robotarm, digits, valve,
bearing): plain functions over the MLflow registry and the fleet channel, like
``pipelines.lifecycle`` for the sink. Each stage reuses its earlier result when its inputs are
unchanged. The data stages are ``labeling.protocol`` and ``validation.samples``."""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import torch
from mlflow.models import infer_signature

import mlflow
from autosink_platform import plots
from autosink_platform.labeling.protocol import label_samples
from autosink_platform.models import OnnxDetector, build_detector
from autosink_platform.models.detectors import Detector
from autosink_platform.pipelines.spec import DetectorModel, ReferenceSpec
from autosink_platform.registry import releases
from autosink_platform.registry.mlflow_registry import CHAMPION, Registry
from autosink_platform.registry.promotion import AuditLog, PromotionPolicy
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
from autosink_platform.release.onnx_export import Tolerance
from autosink_platform.thresholds import OperatingPoint, SessionUCL, calibrated, metrics_at
from autosink_platform.validation import cases as case_validation
from autosink_platform.validation.samples import RefDataset, freeze_dataset

PARITY = Tolerance(rtol=1e-4)  # scores are unbounded (reconstruction errors): relative
SMOKE_SAMPLES = 4


GROUP_SLICES = (case_validation.Slice("group", lambda f: f["group"], "the sample's group (file, class or rig)"),)


@dataclass(frozen=True)
class TrainedDetector:
    registered_name: str
    version: str
    run_id: str
    train_key: str
    reused: bool
    train_seconds: float
    history: list[dict]


def snapshot_dataset(spec: ReferenceSpec, datasets_root: Path, store_root: Path) -> RefDataset:
    """Both data stages at once, as scripts and benchmarks run them: labeled, then validated."""
    return freeze_dataset(spec, label_samples(spec, datasets_root, store_root), store_root)


def registered_name(spec: ReferenceSpec, model: DetectorModel) -> str:
    return releases.registered_name(spec.name, model.name)


def _split(table: pd.DataFrame, X: np.ndarray, split: str) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    m = (table["split"] == split).to_numpy()
    return np.asarray(X[m]), table["label"].to_numpy()[m], table[m].reset_index(drop=True)


def train_detector(
    spec: ReferenceSpec, model: DetectorModel, ds: RefDataset, registry: Registry, dagster_run_id: str
) -> TrainedDetector:
    name = registered_name(spec, model)
    params_json = json.dumps(model.params, sort_keys=True)
    train_key = hashlib.sha256(
        f"{ds.snapshot_id}|{model.family}|{params_json}|{model.code_version}".encode()
    ).hexdigest()[:16]
    existing = registry.find_version(name, "train_key", train_key)
    if existing is not None:
        run = registry.client.get_run(existing.run_id)
        history = [
            {"epoch": m.step, "val_loss": m.value}
            for m in registry.client.get_metric_history(existing.run_id, "val_loss")
        ]
        return TrainedDetector(
            name,
            str(existing.version),
            existing.run_id,
            train_key,
            True,
            float(run.data.params.get("train_seconds", 0)),
            history,
        )

    table, X = ds.load()
    X_train, _, _ = _split(table, X, "train")
    with mlflow.start_run(
        experiment_id=registry.experiment_id(spec.name), run_name=f"{model.name}-{ds.snapshot_id}"
    ) as run:
        mlflow.set_tags(
            {"dataset_snapshot_id": ds.snapshot_id, "dagster_run_id": dagster_run_id, "train_key": train_key}
        )
        mlflow.log_params({"family": model.family, "params": params_json, "code_version": model.code_version})
        detector = build_detector(
            model.family,
            **model.params,
            **(
                {}
                if model.family == "pca"
                else {
                    "on_epoch": lambda m: mlflow.log_metrics(
                        flat_metrics("", {k: v for k, v in m.items() if k != "epoch"}), step=m["epoch"]
                    )
                }
            ),
        )
        start = time.perf_counter()
        detector.fit(X_train)
        seconds = time.perf_counter() - start
        mlflow.log_params({"train_seconds": round(seconds, 2), "train_samples": len(X_train)})
        if hasattr(detector, "on_epoch"):
            detector.on_epoch = None  # a closure over the run: not part of the saved model
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            torch.save(detector, tmp / "detector.pt")
            mlflow.log_artifact(str(tmp / "detector.pt"))
            if detector.history:
                mlflow.log_artifact(
                    str(plots.training_curves(detector.history, tmp / "training_curves.png", f"{name} training"))
                )
            onnx_path = detector.export_onnx(tmp / "model.onnx", X_train[:2])
            example = X_train[:SMOKE_SAMPLES]
            info = mlflow.onnx.log_model(
                onnx.load(str(onnx_path)),
                name="model",
                signature=infer_signature(example, detector.decision_function(example).astype(np.float32)),
                input_example=example,
                registered_model_name=name,
                save_as_external_data=False,  # one self-contained file: the one the fleet gets
                onnx_execution_providers=["CPUExecutionProvider"],
            )
    version = str(info.registered_model_version)
    registry.set_tags(
        name,
        version,
        {
            "train_key": train_key,
            "dataset_snapshot_id": ds.snapshot_id,
            "dagster_run_id": dagster_run_id,
            "family": model.family,
            "config": params_json,
            "code_version": model.code_version,
            "validation_status": "pending",
        },
    )
    return TrainedDetector(name, version, run.info.run_id, train_key, False, seconds, detector.history)


def load_detector(registry: Registry, trained: TrainedDetector) -> Detector:
    with tempfile.TemporaryDirectory() as tmp:
        path = registry.download(trained.run_id, "detector.pt", tmp)
        detector = torch.load(path, weights_only=False)  # our own artifact, written by train_detector
    return detector


def _onnx_of(registry: Registry, trained: TrainedDetector, dst: Path) -> Path:
    return registry.download(trained.run_id, "model/model.onnx", dst)


def choose_threshold(
    spec: ReferenceSpec,
    model: DetectorModel,
    trained: TrainedDetector,
    ds: RefDataset,
    registry: Registry,
    plot_dir: Path,
) -> tuple[OperatingPoint, dict[str, Path]]:
    """Supervised policies on the validation split; k-sigma and quantile on training scores."""
    table, X = ds.load()
    detector = load_detector(registry, trained)
    policy = model.threshold
    Xs, labels, rows = _split(table, X, policy.split)
    raw = detector.decision_function(Xs)
    op = policy.choose(raw, labels, rows)
    scores = calibrated(rows, raw, op)
    inputs = {"split": policy.split, "samples": len(labels)}
    if policy.split == "validation":
        inputs["anomalous"] = int(labels.sum())
    if isinstance(policy, SessionUCL):
        inputs["sessions"] = len(op.params["ucl"])
    title = f"{trained.registered_name} v{trained.version}"
    figures = {
        "score_histogram": plots.score_histogram(
            {"normal": scores[labels == 0], **({"anomalous": scores[labels == 1]} if labels.any() else {})},
            op.threshold,
            plot_dir / f"{spec.name}_{model.name}_score_histogram.png",
            f"{title}: {inputs['split']} scores",
        )
    }
    if labels.min() != labels.max():
        figures["pr_curve"] = plots.pr_curve(
            scores, labels, (op.recall, op.precision), plot_dir / f"{spec.name}_{model.name}_pr_curve.png", title
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


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (ties counted half); None when only one class is present."""
    labels = np.asarray(labels).astype(int)
    n1 = int(labels.sum())
    if n1 == 0 or n1 == len(labels):
        return None
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[labels == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * (len(labels) - n1)))


def evaluate(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    out = metrics_at(scores, labels, threshold)
    if (a := auroc(scores, labels)) is not None:
        out["auroc"] = a
    out["flagged"] = float(np.mean(scores >= threshold))
    return out


def release_detector(
    spec: ReferenceSpec,
    model: DetectorModel,
    trained: TrainedDetector,
    op: OperatingPoint,
    ds: RefDataset,
    registry: Registry,
    channel: FleetChannel,
    audit: AuditLog,
    dagster_run_id: str,
    promotion: PromotionPolicy = PromotionPolicy(),
) -> Release:
    """ONNX from the registry, checked against the trained detector; test metrics and case slices
    with onnxruntime; published to the fleet layout with a signed manifest."""
    name, version = trained.registered_name, trained.version
    if (done := published_release(registry, channel, spec.name, model.name, version, op)) is not None:
        return done

    table, X = ds.load()
    detector = load_detector(registry, trained)
    Xv, _, _ = _split(table, X, "validation")
    Xt, yt, test_rows = _split(table, X, "test")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        onnx_path = _onnx_of(registry, trained, tmp)
        scorer = OnnxDetector(onnx_path)
        on = "validation samples" if len(Xv) else "test samples"
        if not len(Xv):  # a protocol without a validation split: check parity on test inputs
            Xv = Xt[:1024]
        diffs = parity_gate(name, version, {"score": detector.decision_function(Xv)}, scorer.run(Xv), PARITY, on)
        test_scores = calibrated(test_rows, scorer.decision_function(Xt), op)
        test_metrics = evaluate(test_scores, yt, op.threshold)
        protocol = (
            None
            if spec.protocol is None
            else spec.protocol(test_rows, test_scores >= op.threshold, ds.extras(), spec.config)
        )
        cases = None
        if spec.case_floors is not None:
            cases = case_validation.slice_table(
                test_rows, test_scores, yt, op.threshold, GROUP_SLICES, spec.case_floors
            )
            gate_on_cases(registry, name, version, trained.run_id, cases)
        comparison = _compare_with_champion(
            spec, model, registry, channel, Xt, yt, test_rows, test_metrics, cases, promotion
        )
        smoke = np.ascontiguousarray(Xv[:SMOKE_SAMPLES])
        candidate = Candidate(
            pipeline=spec.name,
            model=model.name,
            version=version,
            run_id=trained.run_id,
            onnx_path=onnx_path,
            input={"name": scorer.input_name, "shape": ["batch", *X.shape[1:]], "dtype": "float32"},
            outputs=["score"],
            decision_output="score",
            threshold=op,
            metrics={"test": test_metrics} | ({"protocol": protocol} if protocol else {}),
            parity=diffs,
            smoke=smoke,
            smoke_file="smoke_inputs.npy",
            expected={"score": scorer.decision_function(smoke).tolist()},
            tolerance=PARITY,
            comparison=comparison,
            cases=cases,
            dataset_snapshot_id=ds.snapshot_id,
            dagster_run_id=dagster_run_id,
            code_version=model.code_version,
            extra={"family": model.family, "reference": spec.reference},
        )
        return ship(candidate, registry, channel, audit, promotion, tmp)


def _compare_with_champion(spec, model, registry, channel, Xt, yt, test_rows, candidate, candidate_cases, promotion):
    champion = registry.alias_version(registered_name(spec, model), CHAMPION)
    if champion is None:
        return None
    vdir = channel.version_dir(spec.name, model.name, champion.version)
    manifest = json.loads((vdir / "manifest.json").read_text())
    scores = calibrated(
        test_rows, OnnxDetector((vdir / "model.onnx").read_bytes()).decision_function(Xt), manifest["threshold"]
    )
    threshold = manifest["threshold"]["threshold"]
    theirs = evaluate(scores, yt, threshold)
    theirs_cases = (
        case_validation.slice_table(test_rows, scores, yt, threshold, GROUP_SLICES, spec.case_floors)
        if candidate_cases is not None
        else None
    )
    return champion_comparison(
        promotion.metric, champion.version, candidate, theirs, candidate_cases, theirs_cases, spec.case_floors
    )

"""The sink pipeline: Pi sessions -> labeled frames -> dataset -> valve classifier + frame guard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from autosink_platform.files import put_bytes
from autosink_platform.labeling.propagation import LabelingConfig, propagate_labels
from autosink_platform.labeling.review import ReviewLog, apply_reviews, review_queue
from autosink_platform.lake.demo import read_truth
from autosink_platform.lake.sessions import SINK_FRAME_SIZE, Lake, Session, SessionFormatError, read_session
from autosink_platform.lake.store import FeatureStore
from autosink_platform.models.configs import ClassifierConfig, FrameGuardConfig
from autosink_platform.models.contract import NetModel, OperatingData, ScoreFn
from autosink_platform.models.corruptions import FAULTS, corrupt
from autosink_platform.pipelines.spec import PipelineSpec, PromotionPolicy, Sessions
from autosink_platform.release.onnx_export import OnnxScorer
from autosink_platform.thresholds import BestF1, TargetFPR, metrics_at
from autosink_platform.validation.cases import TOO_FEW, CaseFloors, Slice, slice_table, weakest
from autosink_platform.validation.dataset import DatasetRef, LoadedDataset
from autosink_platform.validation.schemas import DataValidationError, LabeledFrames, SessionRecords, validate
from autosink_platform.validation.session_gates import SessionGates, ingest_gate
from autosink_platform.validation.splits import SplitConfig

GUARD_TARGET_FPR = 0.01  # one ordinary frame in a hundred may be flagged; the device then holds its state
FAULT_SEEDS = {"validation": 101, "test": 202}  # validation and test get different fault draws


# -- raw sessions and labels ----------------------------------------------------------------


def ingest_session(lake: Lake, store: FeatureStore, session_id: str, source: Sessions | None = None) -> dict:
    """Parse one committed session into the store, or quarantine it with the reason: it does
    not follow the session format, or a per-session gate holds it (another camera's geometry,
    a covered lens) unless an operator released it. ``source``: the sink's by default."""
    source = source or SINK.source
    path = lake.session_path(session_id)
    try:
        session = read_session(path)
        validate(session_record(session), SessionRecords, f"{store.root.name}/raw_sessions")
        held = None if lake.is_released(session_id) else ingest_gate(session, source.frame_size, source.gates)
        if held is not None:
            raise held
    except SessionFormatError as e:
        record = lake.quarantine(session_id, e)
        return {"status": "quarantined", "reason": record.reason, "detail": record.detail}
    except DataValidationError as e:
        record = lake.quarantine(session_id, SessionFormatError(path, "schema", str(e)))
        return {"status": "quarantined", "reason": record.reason, "detail": record.detail}
    store.put_session(session, lake.root)
    store.put_frames(session_id, session.images)
    return {
        "status": "ingested",
        "device_id": session.device_id,
        "frames": len(session.frames),
        "events": len(session.events),
        "overrides": sum(e.type.startswith("user_") for e in session.events),
        "content_sha256": session.content_sha256,
    }


def _utc(value: str) -> pd.Timestamp:
    t = pd.Timestamp(value)
    return t.tz_convert("UTC") if t.tzinfo else t.tz_localize("UTC")


def session_record(session: Session) -> pd.DataFrame:
    """The one-row table ``SessionRecords`` checks."""
    meta = session.meta
    return pd.DataFrame(
        [
            {
                **{k: meta[k] for k in ("session_id", "device_id", "fps", "firmware", "model_version")},
                "started_at": _utc(meta["started_at"]),
                "ended_at": _utc(meta["ended_at"]),
                "schema_version": meta["schema_version"],
                "frames": len(session.frames),
                "width": session.frame_size[0],
                "height": session.frame_size[1],
                "events": len(session.events),
                "content_sha256": session.content_sha256,
            }
        ]
    )


def label_session(store: FeatureStore, session_id: str, cfg: LabelingConfig) -> dict:
    record = store.get_session(session_id)
    meta = record["meta"]
    table = propagate_labels(record["events"], len(record["frames"]), float(meta["fps"]), cfg)
    table.insert(0, "session_id", session_id)
    table.insert(1, "device_id", meta["device_id"])
    table.insert(4, "frame_path", record["frames"])
    corrections = ReviewLog(store.root).for_session(session_id)
    table = apply_reviews(table, corrections)  # a reviewer's label beats any automatic one
    table = validate(table, LabeledFrames, f"{store.root.name}/labeled_frames")
    store.put_labels(session_id, table)
    by_source = table["label_source"].value_counts().to_dict()
    return {
        "frames": len(table),
        "labeled": int(table["label"].notna().sum()),
        "coverage": float(table["label"].notna().mean()),
        "override_labels": int(by_source.get("override", 0)),
        "implicit_labels": int(by_source.get("implicit", 0)),
        "review_labels": int(by_source.get("review", 0)),
        "positive_share": float((table["label"] == 1).sum() / max(table["label"].notna().sum(), 1)),
    }


# -- valve classifier -----------------------------------------------------------------------


# The networks are imported where they are built or trained: the spec loads without torch.


def _classifier_net(cfg: ClassifierConfig):
    from autosink_platform.models.classifier import ValveClassifier

    return ValveClassifier(cfg)


def _classifier_train(data: LoadedDataset, cfg: ClassifierConfig, warm, on_epoch):
    from autosink_platform.models.classifier import train_classifier

    split = {s: data.mask(s, labeled=True) for s in ("train", "validation")}
    return train_classifier(
        {s: data.inputs[m] for s, m in split.items()},
        {s: data.table["label"].to_numpy()[m].astype(np.int64) for s, m in split.items()},
        {s: data.table["confidence"].to_numpy()[m] for s, m in split.items()},
        cfg,
        warm,
        on_epoch,
    )


def _classifier_operating_data(data: LoadedDataset, split: str, score: ScoreFn) -> OperatingData:
    m = data.mask(split, labeled=True)
    scores = score(data.inputs[m])["valve_open_prob"]
    labels = data.table["label"].to_numpy()[m].astype(np.int64)
    return OperatingData(
        scores, labels, {"closed (label)": labels == 0, "open (label)": labels == 1}, np.flatnonzero(m)
    )


def _classifier_evaluate(d: OperatingData, scores: np.ndarray, threshold: float) -> dict[str, float]:
    return metrics_at(scores, d.labels, threshold)


# -- frame guard ----------------------------------------------------------------------------


def _guard_net(cfg: FrameGuardConfig):
    from autosink_platform.models.frame_guard import FrameGuard

    return FrameGuard(cfg.width, cfg.code_dim)


def _guard_train(data: LoadedDataset, cfg: FrameGuardConfig, warm, on_epoch):
    from autosink_platform.models.frame_guard import train_frame_guard

    return train_frame_guard({s: data.inputs[data.mask(s)] for s in ("train", "validation")}, cfg, warm, on_epoch)


def _guard_operating_data(data: LoadedDataset, split: str, score: ScoreFn) -> OperatingData:
    """Ordinary frames of the split (negatives) and the same frames with each camera fault."""
    rows = np.flatnonzero(data.mask(split))
    frames = data.inputs[rows]
    parts = [score(frames)["score"]]
    for k, fault in enumerate(FAULTS):
        parts.append(score(corrupt(frames, fault, FAULT_SEEDS[split] + k))["score"])
    scores = np.concatenate(parts)
    group = np.repeat(np.arange(1 + len(FAULTS)), len(rows))  # 0: ordinary, then each fault in turn
    groups = {name: group == i for i, name in enumerate(("ordinary", *FAULTS))}
    return OperatingData(scores, (group > 0).astype(np.int64), groups, np.tile(rows, 1 + len(FAULTS)))


def _guard_evaluate(d: OperatingData, scores: np.ndarray, threshold: float) -> dict[str, float]:
    out = metrics_at(scores, d.labels, threshold)
    for fault in FAULTS:
        out[f"detection_{fault}"] = float(np.mean(scores[d.groups[fault]] >= threshold))
    return out


# -- case slices ----------------------------------------------------------------------------
# Situations a release must handle, defined on the frame statistics stored with every snapshot.
# Objectness rises with the number of objects in the basin and ignores the light level
# (assets_tests/test_cases.py checks both against the demo generator's truth).

EMPTY_BELOW = 0.06  # objectness: less foreground than this is an empty basin
CROWDED_FROM = 0.35  # objectness: typically three or more objects
HANDS_FROM = 0.2  # share of the foreground that is skin-coloured


def _lighting(f: pd.DataFrame) -> pd.Series:
    return pd.cut(f["brightness"], [-np.inf, 95, 135, np.inf], labels=["dim", "normal", "bright"])


def _activity(f: pd.DataFrame) -> pd.Series:
    kind = np.where(f["objectness"] < EMPTY_BELOW, "empty", np.where(f["skin_share"] >= HANDS_FROM, "hands", "dishes"))
    return pd.Series(kind, index=f.index)


def _basin(f: pd.DataFrame) -> pd.Series:
    return pd.Series(np.where(f["objectness"] >= CROWDED_FROM, "crowded", "clear"), index=f.index)


SINK_SLICES = (
    Slice("lighting", _lighting, "mean brightness: dim < 95 <= normal < 135 <= bright"),
    Slice("device", lambda f: f["device_id"], "the Pi that recorded the frame"),
    Slice("activity", _activity, "empty basin, hands (skin-coloured foreground) or dishes"),
    Slice("basin", _basin, f"crowded when objectness >= {CROWDED_FROM}"),
)

SINK = PipelineSpec(
    name="sink",
    review_model="classifier",
    description="Kitchen-sink cameras: should the faucet valve be open?",
    source=Sessions(
        frame_size=SINK_FRAME_SIZE,
        # New sessions are checked against the champion classifier, on the frames its frame
        # guard finds familiar.
        gates=SessionGates(decider="classifier", familiarity=("frame_guard", "novelty")),
        labeling=LabelingConfig(),
        split=SplitConfig(validation=0.2, test=0.2),
        code_versions={"raw_sessions": "1", "labeled_frames": "1", "validated_dataset": "2"},
    ),
    slices=SINK_SLICES,
    # Feedback reaches the fleet unattended: a candidate that beats the champion on the same test
    # split by the margin, with no case slice regressed, is promoted by the release stage.
    promotion=PromotionPolicy(mode="auto"),
    models=(
        NetModel(
            name="classifier",
            config=ClassifierConfig(),
            code_version="3",
            build=_classifier_net,
            train=_classifier_train,
            operating_data=_classifier_operating_data,
            threshold=BestF1(plateau=True),
            evaluate=_classifier_evaluate,
            outputs=("logit", "valve_open_prob"),
            decision_output="valve_open_prob",
            input_size=64,
            description="Valve classifier (layout-keeping CNN); threshold mid-plateau of best F1 on validation labels.",
            cases=CaseFloors(metric="accuracy", floor=0.85),
        ),
        NetModel(
            name="frame_guard",
            config=FrameGuardConfig(),
            code_version="2",
            build=_guard_net,
            train=_guard_train,
            operating_data=_guard_operating_data,
            threshold=TargetFPR(GUARD_TARGET_FPR, centred=True),
            evaluate=_guard_evaluate,
            outputs=("score", "novelty", "haze", "structure"),
            decision_output="score",
            input_size=64,
            description="Frame guard (haze and structure terms, autoencoder drift); threshold centred in the gap above 1% FPR on validation frames.",
            # A catastrophe floor: it stops a guard that misses most faults or flags most ordinary
            # frames in some situation.
            cases=CaseFloors(metric="accuracy", floor=0.5),
        ),
    ),
)


def build_review_queue(
    model: NetModel, champion: ScoreFn, data: LoadedDataset, store: FeatureStore, limit: int = 200
) -> pd.DataFrame:
    """Rank the dataset's frames for human review with the champion's scores; written to the store."""
    probs = champion(data.inputs)[model.decision_output]
    queue = review_queue(data.table, probs, ReviewLog(store.root).reviewed_frames(), limit)
    put_bytes(store.root / "review_queue.parquet", queue.to_parquet(index=False))
    return queue


def truth_report(
    lake_root: str | Path,
    data: LoadedDataset,
    score: ScoreFn,
    threshold: float,
    floors: CaseFloors,
    split: str = "test",
) -> tuple[dict[str, float], pd.DataFrame]:
    """Demo lakes only: the classifier on every frame of a split against the generator's truth,
    overall (next to the on-device model's own decisions on the same frames) and per case slice."""
    m = data.mask(split)
    rows = data.table[m]
    truth = pd.concat([read_truth(lake_root, s).assign(session_id=s) for s in rows["session_id"].unique()])
    merged = rows[["session_id", "frame_index"]].merge(
        truth, on=["session_id", "frame_index"], how="left", validate="one_to_one"
    )
    y = merged["valve_should_open"].to_numpy()
    scores = score(data.inputs[m])["valve_open_prob"]
    out = metrics_at(scores, y, threshold)
    out["deployed_model_f1"] = metrics_at(merged["model_decision"].to_numpy(), y, 0.5)["f1"]
    slices = slice_table(data.frames(np.flatnonzero(m)), scores, y, threshold, SINK_SLICES, floors)
    return out, slices


def release_quality(lake_root: str | Path, store: FeatureStore, release_dir: str | Path) -> dict:
    """Demo lakes only: what a published sink release does on its dataset's test split, scored by
    its ONNX build the way a device runs it: the case gate's margins and, for the classifier,
    metrics against the generator's truth overall and per slice; for the frame guard, its false
    alarms on ordinary test frames and its detection of each camera fault."""
    release_dir = Path(release_dir)
    manifest = json.loads((release_dir / "manifest.json").read_text())
    model = next(m for m in SINK.models if m.name == manifest["model"])
    threshold = manifest["threshold"]["threshold"]
    low = weakest(pd.DataFrame(manifest["case_validation"]))
    out = {
        "model": manifest["registered_model"],
        "version": manifest["mlflow_version"],
        "threshold": threshold,
        "test": manifest["metrics"]["test"],
        "case_floor": model.cases.floor,
        "case_min": float(low["value"]),
        "case_min_group": f"{low['slice']}={low['group']}",
        "case_margin": float(low["value"] - model.cases.floor),
    }
    if model.name == "classifier":
        data = DatasetRef.of_snapshot(store.dataset_dir(manifest["dataset_snapshot_id"])).open()
        truth, slices = truth_report(lake_root, data, OnnxScorer(release_dir / "model.onnx"), threshold, model.cases)
        counted = slices[slices["status"] != TOO_FEW]
        out["truth"] = truth
        out["truth_slices"] = counted[["slice", "group", "n", "value"]].to_dict(orient="records")
        out["truth_min_slice_accuracy"] = float(weakest(slices)["value"])
    return out

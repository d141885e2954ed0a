"""A pipeline is one declarative spec; ``defs.factory`` turns it into the six-stage asset graph."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from autosink_platform.labeling.propagation import LabelingConfig
from autosink_platform.models.contract import DetectorModel, Model, NetModel
from autosink_platform.registry.promotion import PromotionPolicy
from autosink_platform.validation.cases import Slice
from autosink_platform.validation.checks import DatasetChecksConfig
from autosink_platform.validation.session_gates import SessionGates
from autosink_platform.validation.splits import SplitConfig

__all__ = ["DetectorModel", "Model", "NetModel", "PipelineSpec", "PublicFiles", "RetrainPolicy", "Sessions"]

# the detector pipelines' case slices: each sample's group (its file, class or rig)
GROUP_SLICES = (Slice("group", lambda f: f["group"], "the sample's group (file, class or rig)"),)


@dataclass(frozen=True)
class RetrainPolicy:
    """When new feedback becomes a new dataset and models (either condition suffices)."""

    min_new_labeled_frames: int | None = 2000  # a retrain sensor fires once this many accumulated
    cron: str | None = "0 3 * * *"  # and a nightly rebuild when anything changed that day


# raw files -> (Samples table, inputs in table order[, extra tables the protocol needs at release])
Extract = Callable[[Path, Any], tuple[pd.DataFrame, np.ndarray] | tuple[pd.DataFrame, np.ndarray, dict]]
# (test samples, flags at the threshold, extra tables, data config) -> the protocol's own figures
Protocol = Callable[[pd.DataFrame, np.ndarray, dict[str, pd.DataFrame], Any], dict]


@dataclass(frozen=True)
class Sessions:
    """Raw data from the fleet: Pi sessions committed to the lake, one Dagster partition each,
    labeled from the users' overrides (and the on-device model's unchallenged decisions), split
    by session. New sessions arrive through the fleet API; a sensor ingests them."""

    frame_size: tuple[int, int] = (64, 64)  # (width, height) the pipeline's cameras record
    gates: SessionGates = SessionGates()  # per session, at ingest: another camera, a covered lens
    labeling: LabelingConfig = LabelingConfig()
    split: SplitConfig = SplitConfig()
    retrain: RetrainPolicy = RetrainPolicy()
    dataset_checks: DatasetChecksConfig = DatasetChecksConfig()
    # per data stage: raw_sessions, labeled_frames, validated_dataset
    code_versions: dict[str, str] = field(
        default_factory=lambda: {"raw_sessions": "1", "labeled_frames": "1", "validated_dataset": "1"}
    )


@dataclass(frozen=True)
class PublicFiles:
    """Raw data from a published dataset: its files read in place (fingerprinted, never copied
    or changed), split and labeled by the dataset's own protocol."""

    raw_files: tuple[str, ...]  # relative to the datasets root
    extract: Extract  # raw files -> (Samples table, inputs in table order)
    config: Any  # a frozen dataclass of data settings: part of the snapshot id
    min_per_split_class: int = 10  # dataset gate: samples per (split, label) that the protocol has
    # the (split, label) pairs the protocol has; the dataset gate wants min_per_split_class of each
    required: tuple[tuple[str, int], ...] = (
        ("train", 0),
        ("validation", 0),
        ("test", 0),
        ("validation", 1),
        ("test", 1),
    )

    def config_dict(self) -> dict:
        return asdict(self.config)


@dataclass(frozen=True)
class PipelineSpec:
    """One pipeline, declared in ``pipelines/<name>.py``: where its data comes from, the models
    trained on it and how a release is judged. ``defs.factory`` builds its six stages."""

    name: str
    description: str
    source: Sessions | PublicFiles
    models: tuple[Model, ...]
    slices: tuple[Slice, ...] = ()  # situations every model's case floors are cut by at release
    promotion: PromotionPolicy = PromotionPolicy()
    review_model: str | None = None  # the model whose champion ranks the human review queue
    protocol: Protocol | None = None  # a published protocol's figures on the test split, at release
    reference: dict = field(default_factory=dict)  # published figures releases are compared with


def stage_code_versions(model: Model) -> dict[str, str]:
    """The Dagster code version of a model's three stages: its declared code version plus a
    digest of what in the spec each stage's result depends on (the training config; the
    threshold policy; the release floors). Dagster marks a stage stale when its code version
    changes, so editing a config re-trains without anyone bumping a number."""
    config = json.dumps({"family": getattr(model, "family", None), "config": model.config_json()})
    parts = {"model": [config], "threshold": [config, repr(model.threshold)]}
    parts["release"] = [*parts["threshold"], repr(model.cases)]
    return {
        stage: f"{model.code_version}-{hashlib.sha256(json.dumps(p).encode()).hexdigest()[:10]}"
        for stage, p in parts.items()
    }

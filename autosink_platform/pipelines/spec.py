"""A pipeline is one declarative spec; ``defs.factory`` turns it into the six-stage asset graph."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from torch import nn

from autosink_platform.labeling.propagation import LabelingConfig
from autosink_platform.models.training import FitResult
from autosink_platform.registry.promotion import PromotionPolicy
from autosink_platform.thresholds import BestF1, ThresholdPolicy
from autosink_platform.validation.cases import CaseFloors, Slice
from autosink_platform.validation.checks import DatasetChecksConfig
from autosink_platform.validation.dataset import DatasetRef
from autosink_platform.validation.splits import SplitConfig

ScoreFn = Callable[[np.ndarray], dict[str, np.ndarray]]  # uint8 frames (N, H, W, 3) -> outputs by name


@dataclass
class LoadedDataset:
    ref: DatasetRef
    table: pd.DataFrame
    images: np.ndarray  # uint8 (N, H, W, 3), table order

    @classmethod
    def load(cls, ref: DatasetRef) -> LoadedDataset:
        return cls(ref, *ref.load())

    @cached_property
    def stats(self) -> pd.DataFrame:
        """Per-frame quality and content statistics, table order (stored with the snapshot)."""
        return self.ref.frame_stats()

    def frames(self, rows: np.ndarray) -> pd.DataFrame:
        """Table rows joined with their frame statistics: what case slices are defined on."""
        return pd.concat(
            [self.table.iloc[rows].reset_index(drop=True), self.stats.iloc[rows].reset_index(drop=True)], axis=1
        )

    def mask(self, split: str, labeled: bool = False) -> np.ndarray:
        m = (self.table["split"] == split).to_numpy()
        return m & self.table["label"].notna().to_numpy() if labeled else m


class OperatingData(NamedTuple):
    scores: np.ndarray
    labels: np.ndarray
    groups: dict[str, np.ndarray]  # named score groups for the histogram
    rows: np.ndarray  # per score, the dataset row (table position) of the frame it was computed on


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config: Any  # a frozen dataclass: its content is part of the training cache key
    code_version: str  # bump when training code changes what a config produces
    build: Callable[[Any], nn.Module]
    train: Callable[[LoadedDataset, Any, dict | None, Callable[[dict], None]], tuple[nn.Module, FitResult]]
    operating_data: Callable[[LoadedDataset, str, ScoreFn], OperatingData]
    threshold: ThresholdPolicy  # chosen on the operating data of the validation split
    evaluate: Callable[[LoadedDataset, ScoreFn, float], dict[str, float]]
    output_names: tuple[str, ...]
    decision_output: str
    input_size: int
    description: str = ""
    cases: CaseFloors | None = None  # per-slice floors on the test split; None: no case validation

    def config_json(self) -> str:
        return json.dumps(asdict(self.config) if is_dataclass(self.config) else self.config, sort_keys=True)


@dataclass(frozen=True)
class RetrainPolicy:
    """When new feedback becomes a new dataset and models (either condition suffices)."""

    min_new_labeled_frames: int | None = 2000  # a retrain sensor fires once this many accumulated
    cron: str | None = "0 3 * * *"  # and a nightly rebuild when anything changed that day


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    description: str
    labeling: LabelingConfig
    split: SplitConfig
    models: tuple[ModelSpec, ...]
    code_versions: dict[str, str] = field(default_factory=dict)  # per data stage: raw, labels, dataset
    retrain: RetrainPolicy = RetrainPolicy()
    review_model: str | None = None  # the model whose champion ranks the human review queue
    promotion: PromotionPolicy = PromotionPolicy()
    dataset_checks: DatasetChecksConfig = DatasetChecksConfig()
    slices: tuple[Slice, ...] = ()  # situations every model is evaluated on before release


# -- the detector pipelines (robotarm, digits, valve, bearing) ----------------------------------
# Still a spec type of their own beside PipelineSpec (issue #15 merges the two).

# raw files -> (Samples table, inputs in table order[, extra tables the protocol needs at release])
Extract = Callable[[Path, Any], tuple[pd.DataFrame, np.ndarray] | tuple[pd.DataFrame, np.ndarray, dict]]
# (test samples, flags at the threshold, extra tables, data config) -> the protocol's own figures
Protocol = Callable[[pd.DataFrame, np.ndarray, dict[str, pd.DataFrame], Any], dict]


@dataclass(frozen=True)
class DetectorModel:
    name: str  # registered as "<pipeline>.<name>"
    family: str  # see autosink_platform.models.FAMILIES
    params: dict = field(default_factory=dict)
    threshold: ThresholdPolicy = BestF1()  # chosen on validation labels, or on training scores
    code_version: str = "1"


@dataclass(frozen=True)
class ReferenceSpec:
    name: str
    description: str
    raw_files: tuple[str, ...]  # relative to the datasets root
    extract: Extract  # raw files -> (Samples table, inputs in table order)
    config: Any  # a frozen dataclass of data settings: part of the snapshot id
    models: tuple[DetectorModel, ...]
    reference: dict = field(default_factory=dict)  # the published figures we compare with
    case_floors: CaseFloors | None = None  # per-group floors at release (group column)
    min_per_split_class: int = 10  # dataset gate: samples per (split, label) that the protocol has
    # the (split, label) pairs the protocol has; the dataset gate wants min_per_split_class of each
    required: tuple[tuple[str, int], ...] = (
        ("train", 0),
        ("validation", 0),
        ("test", 0),
        ("validation", 1),
        ("test", 1),
    )
    protocol: Protocol | None = None  # a published protocol's figures on the test split, at release

    def config_dict(self) -> dict:
        return asdict(self.config)


def stage_code_versions(model: ModelSpec | DetectorModel) -> dict[str, str]:
    """The Dagster code version of a model's three stages: its declared code version plus a
    digest of what in the spec each stage's result depends on (the training config; the
    threshold policy; the release floors). Dagster marks a stage stale when its code version
    changes, so editing a config re-trains without anyone bumping a number."""
    if isinstance(model, ModelSpec):
        config, floors = model.config_json(), repr(model.cases)
    else:
        config, floors = json.dumps({"family": model.family, "params": model.params}, sort_keys=True), ""
    parts = {"model": [config], "threshold": [config, repr(model.threshold)]}
    parts["release"] = [*parts["threshold"], floors]
    return {
        stage: f"{model.code_version}-{hashlib.sha256(json.dumps(p).encode()).hexdigest()[:10]}"
        for stage, p in parts.items()
    }

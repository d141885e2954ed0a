"""The detector pipelines' labeled stage: labels read from the protocol's own files (MNIST vs
KMNIST, SKAB's anomaly column, CWRU's fault files), with the provenance columns the sink's
labels carry."""

from __future__ import annotations

import json
from pathlib import Path

from autosink_platform.files import location
from autosink_platform.lake.public import build_samples
from autosink_platform.pipelines.spec import PipelineSpec
from autosink_platform.validation.dataset import DatasetRef
from autosink_platform.validation.samples import content_id, counts, freeze, freeze_dataset

PROTOCOL_LABEL = "protocol"  # label_source of a label read from the dataset's own files


class LabeledSamples(DatasetRef):
    """The labeled stage's sample set (``snapshot_id`` is its content id), read like a dataset."""


def label_samples(spec: PipelineSpec, datasets_root: Path, store_root: Path) -> LabeledSamples:
    """The labeled stage: the protocol's samples with the labels its own files give, each with the
    provenance the sink's labels carry (``label_source`` "protocol", ``confidence`` 1.0), stored
    in the feature store under a content id."""
    table, X, extras = build_samples(spec, datasets_root)
    table = table.assign(label_source=PROTOCOL_LABEL, confidence=1.0)
    lid = content_id(table, X, extras, json.dumps(spec.source.config_dict(), sort_keys=True))
    out = location(store_root) / spec.name / "labeled" / lid
    labeled = LabeledSamples(spec.name, lid, str(out), counts=counts(table))
    freeze(out, table, X, extras, {"id": lid, "config": spec.source.config_dict(), "counts": labeled.counts})
    return labeled


def snapshot_dataset(spec: PipelineSpec, datasets_root: Path, store_root: Path) -> DatasetRef:
    """Both data stages at once, as scripts and benchmarks run them: labeled, then validated."""
    return freeze_dataset(spec, label_samples(spec, datasets_root, store_root), store_root)

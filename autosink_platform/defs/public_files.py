"""The data stages of a pipeline on a published dataset (``spec.source`` is ``PublicFiles``):

    raw_files (read in place, fingerprinted) -> labeled_samples (the protocol's labels) -> validated_dataset

with the dataset's blocking checks and the ``<pipeline>_pipeline`` job from raw files to release."""

from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from autosink_platform.defs.metadata import markdown_table, validation_failure, versioned_output
from autosink_platform.defs.model_stages import TRAIN_TAGS
from autosink_platform.defs.resources import FeatureStoreResource, ReferenceDataResource
from autosink_platform.labeling.protocol import PROTOCOL_LABEL, LabeledSamples, label_samples
from autosink_platform.lake.public import DatasetMissing, fingerprint, require
from autosink_platform.pipelines.spec import PipelineSpec
from autosink_platform.validation.dataset import DatasetRef
from autosink_platform.validation.samples import freeze_dataset
from autosink_platform.validation.schemas import DataValidationError
from autosink_platform.validation.splits import snapshot_id


def _data_assets(spec: PipelineSpec) -> list[dg.AssetsDefinition]:
    prefix = [spec.name]

    @dg.asset(name="raw_files", key_prefix=prefix, group_name=spec.name, code_version="1", kinds={"numpy"})
    def raw_files(context: dg.AssetExecutionContext, datasets: ReferenceDataResource) -> dg.Output[dict]:
        """The public files this pipeline reads in place, fingerprinted (never copied or changed)."""
        root = datasets.get()
        try:
            paths = require(root, *spec.source.raw_files)
        except DatasetMissing as e:
            raise dg.Failure(description=str(e)) from e
        prints = fingerprint(paths)
        return versioned_output(
            {"root": str(root), "files": prints},
            snapshot_id(*sorted(f"{k}:{v}" for k, v in prints.items())),
            {
                "root": dg.MetadataValue.path(str(root)),
                "files": markdown_table(
                    pd.DataFrame(
                        [
                            {"file": p.name, "bytes": p.stat().st_size, "sha256": prints[p.name][:16]}
                            for p in sorted(paths)
                        ]
                    )
                ),
            },
        )

    @dg.asset(
        name="labeled_samples",
        key_prefix=prefix,
        group_name=spec.name,
        code_version="1",
        ins={"raw": dg.AssetIn(dg.AssetKey([*prefix, "raw_files"]))},
        kinds={"pandas", "numpy"},
        automation_condition=dg.AutomationCondition.eager(),
    )
    def labeled_samples(
        context: dg.AssetExecutionContext, raw: dict, store: FeatureStoreResource
    ) -> dg.Output[LabeledSamples]:
        """Samples per the pipeline's protocol, labeled from the protocol's own files, each label with
        its source and confidence (as the sink's labels carry them)."""
        return _sample_set_output(
            lambda: label_samples(spec, Path(raw["root"]), store.location()),
            "labels_id",
            label_source=PROTOCOL_LABEL,
        )

    @dg.asset(
        name="validated_dataset",
        key_prefix=prefix,
        group_name=spec.name,
        code_version="2",
        ins={"labeled": dg.AssetIn(dg.AssetKey([*prefix, "labeled_samples"]))},
        kinds={"pandas", "numpy"},
        automation_condition=dg.AutomationCondition.eager(),
    )
    def validated_dataset(
        context: dg.AssetExecutionContext, labeled: LabeledSamples, store: FeatureStoreResource
    ) -> dg.Output[DatasetRef]:
        """The labeled samples pandera-validated (provenance included), frozen as a content-hash snapshot."""
        return _sample_set_output(lambda: freeze_dataset(spec, labeled, store.location()), "snapshot_id")

    return [raw_files, labeled_samples, validated_dataset]


def _sample_set_output(build, id_name: str, **extra) -> dg.Output:
    """A data stage's sample set with its content id as the data version; a validation failure
    shows its cases in the UI."""
    try:
        ref = build()
    except DataValidationError as e:
        raise validation_failure(e) from e
    splits = pd.DataFrame([{"split": s, **c} for s, c in ref.counts.items()])
    metadata = {
        id_name: ref.snapshot_id,
        **extra,
        "splits": markdown_table(splits),
        "path": dg.MetadataValue.path(ref.path),
    }
    return versioned_output(ref, ref.snapshot_id, metadata)


REFERENCE_CHECKS = ("min_examples", "finite_inputs", "no_leakage")


def _dataset_checks(spec: PipelineSpec) -> dg.AssetChecksDefinition:
    key = dg.AssetKey([spec.name, "validated_dataset"])

    @dg.multi_asset_check(
        specs=[dg.AssetCheckSpec(name, asset=key, blocking=True) for name in REFERENCE_CHECKS],
        name=f"{spec.name}_dataset_checks",
        ins={"dataset": dg.AssetIn(key)},
    )
    def reference_dataset_checks(dataset: DatasetRef):
        """The protocol's examples per split and class, finite inputs, no sample in two splits."""
        table, X = dataset.load()
        counts = table.groupby(["split", "label"]).size()
        need = max(spec.source.min_per_split_class, 1)
        short = {
            f"{s}/{lbl}": int(counts.get((s, lbl), 0))
            for s, lbl in spec.source.required
            if counts.get((s, lbl), 0) < need
        }
        yield dg.AssetCheckResult(
            check_name="min_examples",
            passed=not short,
            description=f"samples per (split, label) >= {need}" + (f"; short: {short}" if short else ""),
            metadata={f"{s}/{lbl}": int(n) for (s, lbl), n in counts.items()},
        )
        bad = int(sum(int((~np.isfinite(X[i : i + 4096])).sum()) for i in range(0, len(X), 4096)))
        yield dg.AssetCheckResult(check_name="finite_inputs", passed=bad == 0, metadata={"non_finite_values": bad})
        dup = table.groupby(["source", "position"])["split"].nunique()
        leaked = int((dup > 1).sum())
        yield dg.AssetCheckResult(
            check_name="no_leakage",
            passed=leaked == 0,
            description=f"samples whose (source, position) is in several splits: {leaked}",
            metadata={"leaked": leaked},
        )

    return reference_dataset_checks


def public_file_defs(spec: PipelineSpec, model_assets: list[dg.AssetsDefinition]) -> dg.Definitions:
    assets = _data_assets(spec)
    job = dg.define_asset_job(
        f"{spec.name}_pipeline",
        selection=dg.AssetSelection.assets(*assets, *model_assets),
        description=f"{spec.description} Raw files to validated release.",
        tags=TRAIN_TAGS,
    )
    return dg.Definitions(assets=assets, asset_checks=[_dataset_checks(spec)], jobs=[job])

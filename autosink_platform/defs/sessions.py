"""The data stages of a pipeline fed by the fleet (``spec.source`` is ``Sessions``):

    raw_sessions (one partition per session) -> labeled_frames (same partitions) -> validated_dataset

with the dataset's blocking checks, the ingest, train and relabel jobs, and the sensors that run
them: new sessions in the lake, enough new labels (or the nightly rebuild), reviewed frames."""

import json

import dagster as dg
import pandas as pd

from autosink_platform.defs.checks import dataset_checks
from autosink_platform.defs.metadata import markdown_table, validation_failure, versioned_output
from autosink_platform.defs.model_stages import STAGE_TAG, TRAIN_TAGS
from autosink_platform.defs.resources import FeatureStoreResource, FleetChannelResource, LakeResource, MlflowResource
from autosink_platform.defs.sensors import new_sessions_sensor, retrain_sensor, review_sensor
from autosink_platform.lake.sessions import Lake, SessionFormatError
from autosink_platform.lake.store import FeatureStore
from autosink_platform.pipelines import sink
from autosink_platform.pipelines.spec import PipelineSpec
from autosink_platform.validation import session_gates
from autosink_platform.validation.dataset import COMPLETE, DatasetRef, build_dataset, session_frames
from autosink_platform.validation.schemas import DataValidationError


def sessions_partitions(spec: PipelineSpec) -> dg.DynamicPartitionsDefinition:
    return dg.DynamicPartitionsDefinition(name=f"{spec.name}_sessions")


def _session_assets(spec: PipelineSpec, partitions: dg.DynamicPartitionsDefinition) -> list[dg.AssetsDefinition]:
    prefix = [spec.name]

    @dg.asset(
        name="raw_sessions",
        key_prefix=prefix,
        group_name=spec.name,
        partitions_def=partitions,
        code_version=spec.source.code_versions["raw_sessions"],
        kinds={"python"},
    )
    def raw_sessions(
        context: dg.AssetExecutionContext, lake: LakeResource, store: FeatureStoreResource
    ) -> dg.MaterializeResult:
        """One Pi session from the lake, parsed and checked; a bad session is quarantined with its reason."""
        results = {
            pk: sink.ingest_session(lake.get(), store.get(spec.name), pk, spec.source) for pk in context.partition_keys
        }
        for pk, r in results.items():
            if r["status"] == "quarantined":
                context.log.warning(f"session {pk} quarantined: {r['reason']}: {r['detail']}")
        return dg.MaterializeResult(metadata=_partition_metadata(results))

    @dg.asset(
        name="labeled_frames",
        key_prefix=prefix,
        group_name=spec.name,
        partitions_def=partitions,
        deps=[raw_sessions],
        code_version=spec.source.code_versions["labeled_frames"],
        kinds={"pandas"},
    )
    def labeled_frames(
        context: dg.AssetExecutionContext, lake: LakeResource, store: FeatureStoreResource
    ) -> dg.MaterializeResult:
        """Per-frame labels: user overrides propagated to neighbouring frames (strong), unchallenged
        model decisions (weak), each with its source and confidence."""
        lk = lake.get()
        try:
            results = {
                pk: {"status": "quarantined"}
                if lk.is_quarantined(pk)
                else sink.label_session(store.get(spec.name), pk, spec.source.labeling)
                for pk in context.partition_keys
            }
        except DataValidationError as e:  # the labeler broke its own contract: stop, show the cases
            raise validation_failure(e) from e
        return dg.MaterializeResult(metadata=_partition_metadata(results))

    @dg.asset(
        name="validated_dataset",
        key_prefix=prefix,
        group_name=spec.name,
        deps=[labeled_frames],
        code_version=spec.source.code_versions["validated_dataset"],
        kinds={"pandas", "numpy"},
        # Nightly when anything changed that day; the retrain sensor adds "enough new labels".
        automation_condition=dg.AutomationCondition.on_cron(spec.source.retrain.cron)
        if spec.source.retrain.cron
        else None,
    )
    def validated_dataset(
        context: dg.AssetExecutionContext,
        lake: LakeResource,
        store: FeatureStoreResource,
        mlflow: MlflowResource,
        fleet: FleetChannelResource,
    ) -> dg.Output[DatasetRef]:
        """Every labeled session, pandera-validated, split by session, frozen as a content-hash
        snapshot; new sessions whose labels contradict the champion on familiar frames (by
        session, or by device) are quarantined first, with the reason."""
        fs, lk = store.get(spec.name), lake.get()
        quarantined = lk.quarantined()
        hashes = {s: fs.get_session(s)["content_sha256"] for s in fs.labeled_sessions() if s not in quarantined}
        held, judged = champion_gate(spec, lk, fs, mlflow.get(), fleet.get(), hashes)
        for sid, (reason, detail) in held.items():
            lk.quarantine(sid, SessionFormatError(lk.session_path(sid), reason, detail))
            context.log.warning(f"session {sid} quarantined: {reason}: {detail}")
        hashes = {s: h for s, h in hashes.items() if s not in held}
        try:
            ref = build_dataset(
                fs, lake.get().root, hashes, spec.source.split, asset=context.asset_key.to_user_string()
            )
        except DataValidationError as e:  # show every failure case in the UI, not only in the log
            raise validation_failure(e) from e
        counts = ref.counts
        splits = pd.DataFrame([{"split": s, **c} for s, c in counts.items() if isinstance(c, dict)])
        return versioned_output(
            ref,
            ref.snapshot_id,
            {
                "snapshot_id": ref.snapshot_id,
                "sessions": counts["sessions"],
                "frames": counts["frames"],
                "splits": markdown_table(splits),
                "path": dg.MetadataValue.path(ref.path),
                "held_by_gates": sorted(held),
                **({"champion_gate": markdown_table(judged)} if judged is not None else {}),
            },
        )

    return [raw_sessions, labeled_frames, validated_dataset]


def champion_gate(
    spec: PipelineSpec, lake: Lake, store: FeatureStore, registry, channel, hashes: dict[str, str]
) -> tuple[dict[str, tuple[str, str]], pd.DataFrame | None]:
    """The champion gate (``validation.session_gates``) over the sessions the champion was not
    trained on: ({session_id: (reason, detail)} to hold, the per-session figures). Nothing is
    judged before there is a champion, or for sessions an operator released."""
    from autosink_platform.pipelines.lifecycle import champion_release
    from autosink_platform.release.onnx_export import OnnxScorer

    gates = spec.source.gates
    if not gates.decider:
        return {}, None
    models = {m.name: m for m in spec.models}
    guard_name, novelty = gates.familiarity
    found = [champion_release(spec, models[n], registry, channel) for n in (gates.decider, guard_name)]
    if None in found:
        return {}, None
    (_, decider_dir), (guard_version, guard_dir) = found
    manifest = json.loads((decider_dir / "manifest.json").read_text())
    trained_dir = store.dataset_dir(manifest["dataset_snapshot_id"])
    if not (trained_dir / COMPLETE).exists():  # its training data is gone: nothing to call familiar
        return {}, None
    trained = DatasetRef.of_snapshot(trained_dir)
    new = sorted(s for s in hashes if s not in trained.sessions and not lake.is_released(s))
    if not new:
        return {}, None
    guard = OnnxScorer(guard_dir / "model.onnx")
    cached = store.root / "gates" / f"{guard_name}-{guard_version}-{trained.snapshot_id}.json"
    if cached.exists():
        limit = json.loads(cached.read_text())["familiar_limit"]
    else:
        data = trained.open()
        limit = session_gates.familiar_limit(guard(data.inputs[data.mask("train")])[novelty], gates)
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps({"familiar_limit": limit, "quantile": gates.familiar_quantile}))
    table = store.get_labels(new)
    images, _ = session_frames(store, lake.root, table)
    decisions = OnnxScorer(decider_dir / "model.onnx")(images)[models[gates.decider].decision_output]
    per_session = session_gates.disagreement_table(
        table, decisions >= manifest["threshold"]["threshold"], guard(images)[novelty] <= limit
    )
    error = 1.0 - float(manifest["metrics"]["test"]["accuracy"])
    return session_gates.champion_verdicts(per_session, gates, error), per_session


def _partition_metadata(results: dict[str, dict]) -> dict:
    """A run over one session records that session's figures. A run over several records one
    materialization per session with the same metadata, so it keeps each session's figures
    under its key (``by_session``): the retrain sensor reads the count of its own partition."""
    if len(results) == 1:
        return next(iter(results.values()))
    return {
        "sessions": len(results),
        "quarantined": [pk for pk, r in results.items() if r.get("status") == "quarantined"],
        "by_session": dg.MetadataValue.json(results),
    }


def session_defs(spec: PipelineSpec) -> dg.Definitions:
    partitions = sessions_partitions(spec)
    ingest = dg.define_asset_job(
        f"{spec.name}_ingest",
        selection=dg.AssetSelection.assets(*[[spec.name, "raw_sessions"], [spec.name, "labeled_frames"]]),
        description="Ingest and label sessions (one run per session partition).",
        tags={STAGE_TAG: "ingest"},
    )
    train = dg.define_asset_job(
        f"{spec.name}_train",
        selection=dg.AssetSelection.assets([spec.name, "validated_dataset"]).downstream(),
        description="Dataset snapshot, models, thresholds and releases.",
        tags=TRAIN_TAGS,
    )
    relabel = dg.define_asset_job(
        f"{spec.name}_relabel",
        selection=dg.AssetSelection.assets([spec.name, "labeled_frames"]),
        description="Re-label sessions whose frames a reviewer corrected.",
    )
    return dg.Definitions(
        assets=_session_assets(spec, partitions),
        asset_checks=[dataset_checks(spec)],
        jobs=[ingest, train, relabel],
        sensors=[
            new_sessions_sensor(spec, partitions, ingest),
            retrain_sensor(spec, train),
            review_sensor(spec, partitions, relabel),
        ],
    )

"""Sensors: new sessions in the lake start their ingest runs, and enough newly labeled frames
start a retrain; a daily schedule keeps the fleet channel's pointers from lapsing."""

from datetime import UTC, datetime, timedelta

import dagster as dg

from autosink_platform.defs.resources import FeatureStoreResource, FleetChannelResource, LakeResource, MlflowResource
from autosink_platform.labeling.review import ReviewLog
from autosink_platform.pipelines.spec import PipelineSpec
from autosink_platform.registry.mlflow_registry import CHAMPION

# A tick's new sessions are ingested in runs of at most this many partitions: one process start
# per run instead of per session, and a backlog still shows its progress run by run.
INGEST_BATCH = 32
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
# Devices upload in bursts (a fleet's timers, a Pi back online). A tick that lands inside one
# waits until the log has been quiet for SETTLE, so the burst goes into one run instead of two,
# but never longer than SETTLE_MAX after the oldest waiting commit: a steady stream of uploads
# is not held back.
SETTLE, SETTLE_MAX = timedelta(seconds=3), timedelta(seconds=30)


def _now() -> datetime:
    return datetime.now(UTC)


def settling(entries: list[dict], now: datetime) -> str | None:
    """Why a tick should wait for more of a burst of commit-log ``entries``, or None. Entries
    without a time (logged before commits carried one) and a full batch never wait."""
    stamps = [datetime.fromisoformat(e[k]) for e in entries for k in ("committed_at", "released_at") if k in e]
    if not stamps or len(entries) >= INGEST_BATCH:
        return None
    quiet, waiting = now - max(stamps), now - min(stamps)
    if timedelta(0) <= quiet < SETTLE and waiting < SETTLE_MAX:
        return (
            f"{len(entries)} new commit(s), the last {quiet.total_seconds():.1f} s ago: waiting for the burst to settle"
        )
    return None


def partition_range_request(keys: list[str]) -> dg.RunRequest:
    """One run over consecutive partitions (in the order they were added)."""
    if len(keys) == 1:
        return dg.RunRequest(partition_key=keys[0], run_key=keys[0])
    return dg.RunRequest(run_key=f"{keys[0]}..{keys[-1]}", tags={RANGE_START: keys[0], RANGE_END: keys[-1]})


def new_sessions_sensor(spec: PipelineSpec, partitions: dg.DynamicPartitionsDefinition, job) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{spec.name}_new_sessions",
        job=job,
        # A tick reads only the commits since its cursor, so it can look often: its interval is
        # part of the time from a device's upload to a model on the fleet. (The daemon evaluates
        # sensors at most every 5 s, so a shorter interval would change nothing.)
        minimum_interval_seconds=5,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Adds a partition per newly committed session and requests ingest runs for them.",
    )
    def sensor(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SensorResult | dg.SkipReason:
        # The cursor is a byte offset into the lake's append-only commit log, so a tick reads
        # only what was committed since the last one, however large the lake grows.
        entries, cursor = lake.get().read_log(context.cursor)
        new: list[str] = []
        released: list[dg.RunRequest] = []
        pending: list[dict] = []  # the entries this tick would act on
        for entry in entries:
            session_id = entry["session_id"]
            if "released_at" in entry:  # an operator released it from quarantine: ingest it again
                released.append(dg.RunRequest(partition_key=session_id, run_key=f"{session_id}@{entry['released_at']}"))
                pending.append(entry)
            # A reset cursor, a re-indexed log or a duplicate line must not add a partition twice.
            elif session_id not in new and not context.instance.has_dynamic_partition(partitions.name, session_id):
                new.append(session_id)
                pending.append(entry)
        # Judged on what is new only: a first tick reads the whole log, sessions ingested long ago too.
        if wait := settling(pending, _now()):
            return dg.SkipReason(wait)  # the cursor stays: the next tick reads these entries again
        # The partitions are appended in this order before the runs launch, so each batch is a
        # contiguous range of them.
        batches = [new[i : i + INGEST_BATCH] for i in range(0, len(new), INGEST_BATCH)]
        return dg.SensorResult(
            run_requests=[partition_range_request(b) for b in batches] + released,
            dynamic_partitions_requests=[partitions.build_add_request(new)] if new else [],
            cursor=cursor,
        )

    return sensor


def _labeled(materialization: dg.AssetMaterialization) -> int:
    """Labeled frames one session's materialization added (a quarantined session: none)."""
    metadata = materialization.metadata
    if "by_session" in metadata:  # one of a multi-session run's materializations
        metadata = metadata["by_session"].value.get(materialization.partition, {})
        return int(metadata.get("labeled", 0))
    return int(metadata["labeled"].value) if "labeled" in metadata else 0


def retrain_sensor(spec: PipelineSpec, job) -> dg.SensorDefinition:
    labeled_key = dg.AssetKey([spec.name, "labeled_frames"])
    dataset_key = dg.AssetKey([spec.name, "validated_dataset"])
    threshold = spec.source.retrain.min_new_labeled_frames

    @dg.sensor(
        name=f"{spec.name}_retrain",
        job=job,
        # Cheap (it reads only materializations since the last dataset build), so it can look
        # often: its interval is part of the time from feedback to a device.
        minimum_interval_seconds=5,
        default_status=dg.DefaultSensorStatus.RUNNING if threshold else dg.DefaultSensorStatus.STOPPED,
        description=f"Rebuilds the dataset and retrains once {threshold} new labeled frames have accumulated.",
    )
    def sensor(context: dg.SensorEvaluationContext):
        if not threshold:
            return dg.SkipReason("no frame-count retrain policy for this pipeline")
        last = context.instance.fetch_materializations(dataset_key, limit=1).records
        after = last[0].storage_id if last else None
        # Only materializations since the last dataset build, and only until the threshold is
        # reached: the cost grows with new sessions, not with the lake.
        new_labels, newest, cursor = 0, None, None
        while new_labels < threshold:
            page = context.instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=labeled_key, after_storage_id=after), limit=1000, cursor=cursor
            )
            for record in page.records:
                new_labels += _labeled(record.asset_materialization)
                newest = max(newest or 0, record.storage_id)
            if not page.has_more:
                break
            cursor = page.cursor
        if new_labels < threshold:
            return dg.SkipReason(f"{new_labels} new labeled frames since the last dataset build (< {threshold})")
        return dg.RunRequest(run_key=f"retrain-after-{newest}", tags={"autosink/new_labeled_frames": str(new_labels)})

    return sensor


def review_sensor(spec: PipelineSpec, partitions: dg.DynamicPartitionsDefinition, job) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{spec.name}_reviews",
        job=job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Re-labels exactly the sessions a reviewer corrected.",
    )
    def sensor(context: dg.SensorEvaluationContext, store: FeatureStoreResource) -> dg.SensorResult:
        sessions, new_offset = ReviewLog(store.get(spec.name).root).reviewed_sessions_since(context.cursor)
        known = [s for s in sessions if context.instance.has_dynamic_partition(partitions.name, s)]
        return dg.SensorResult(
            # One run per corrected session per batch of corrections: the log offset makes the key unique.
            run_requests=[dg.RunRequest(partition_key=s, run_key=f"review:{s}:{new_offset}") for s in known],
            cursor=new_offset,
        )

    return sensor


def champion_sensor(pipeline: str, names: list[str], job) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{pipeline}_champion_moved",
        job=job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Publishes to the fleet whenever an MLflow champion alias moves (CLI, MLflow UI or client).",
    )
    def sensor(context: dg.SensorEvaluationContext, mlflow: MlflowResource, fleet: FleetChannelResource):
        registry, channel = mlflow.get(), fleet.get()
        moved = []
        for name in names:
            pipeline, model = name.split(".", 1)
            champion = registry.alias_version(name, CHAMPION)
            pointer = channel.read_pointer(pipeline, model, "stable")
            if champion is not None and (pointer is None or pointer["version"] != str(champion.version)):
                moved.append(f"{name}:v{champion.version}:seq{pointer['sequence'] if pointer else 0}")
        if not moved:
            return dg.SkipReason("every stable channel points at its champion")
        return dg.RunRequest(run_key="|".join(moved), tags={"autosink/champions": ",".join(moved)})

    return sensor


@dg.op(
    description="Re-signs the fleet channel's TUF metadata near expiry: the timestamp (7 days) daily, "
    "targets and snapshot when 20 days or fewer are left; warns when root nears its expiry."
)
def refresh_fleet_channel(context: dg.OpExecutionContext, fleet: FleetChannelResource) -> None:
    channel = fleet.get()
    pipelines = sorted({pipeline for pipeline, _, _ in channel.pointers()})
    for renewal in channel.refresh_all():
        context.log.info(f"TUF {renewal.role} v{renewal.version} re-signed until {renewal.expires.isoformat()}")
        for pipeline in pipelines:  # every pipeline's channel is served under this metadata
            context.log_event(
                dg.AssetObservation(
                    asset_key=dg.AssetKey([pipeline, "fleet_channel"]),
                    metadata={
                        "role": renewal.role,
                        "version": renewal.version,
                        "expires_at": renewal.expires.isoformat(),
                    },
                )
            )
    if expires := channel.tuf.root_expires_soon():
        context.log.warning(
            f"the channel's TUF root expires at {expires.isoformat()}: renew it with the offline root key "
            "(autosink fleet renew-root --root-key PATH)"
        )


@dg.job(
    name="fleet_channel_refresh",
    description="Keeps the fleet channel's TUF metadata from lapsing when no promotion happens.",
)
def fleet_channel_refresh() -> None:
    refresh_fleet_channel()


# Daily, running from the start: a pointer lives 30 days, so a platform that promotes nothing for
# a month must still re-sign it, or every device refuses its channel as expired.
FLEET_REFRESH = dg.ScheduleDefinition(
    name="fleet_channel_refresh_daily",
    job=fleet_channel_refresh,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)


class HaltConfig(dg.Config):
    model: str  # <pipeline>.<model>
    reason: str


@dg.op(
    description="Halts a staged rollout whose canary diverged from its control group: every device back on the fallback."
)
def halt_rollout(
    context: dg.OpExecutionContext, config: HaltConfig, mlflow: MlflowResource, fleet: FleetChannelResource
) -> None:
    from autosink_platform.registry.promotion import PromotionRefused, halt

    try:
        entry = halt(mlflow.get(), fleet.get(), fleet.audit(), config.model, config.reason, who="telemetry guard")
    except PromotionRefused as e:  # halted or widened by an operator since the sensor looked
        context.log.info(f"{config.model}: nothing to halt ({e})")
        return
    context.log.warning(f"{config.model}: v{entry['from']} halted, devices back on v{entry['to']}: {config.reason}")
    context.log_event(
        dg.AssetObservation(
            asset_key=dg.AssetKey([config.model.split(".", 1)[0], "fleet_channel"]),
            metadata={"halted": f"{config.model} v{entry['from']}", "back_on": entry["to"], "reason": config.reason},
        )
    )


@dg.job(name="rollout_halt", description="Halts a staged rollout (requested by the fleet_telemetry sensor).")
def rollout_halt() -> None:
    halt_rollout()


def fleet_telemetry_sensor(bounds: dict) -> dg.SensorDefinition:
    """``bounds``: each registered model's ``RolloutBounds`` (its pipeline's promotion policy)."""

    @dg.sensor(
        name="fleet_telemetry",
        job=rollout_halt,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Records device heartbeats as observations of each pipeline's fleet_channel (health per "
        "version) and halts a staged rollout whose canary diverges from its control group.",
    )
    def sensor(context: dg.SensorEvaluationContext, fleet: FleetChannelResource) -> dg.SensorResult:
        from autosink_platform.files import read_jsonl_from
        from autosink_platform.fleet.telemetry import figures, latest_beats, rolling_out, rollout_health

        path = fleet.heartbeats()
        new, cursor = read_jsonl_from(path, int(context.cursor or 0))
        latest = latest_beats(path)  # one read of the log serves the observations and every rollout
        events = []
        for pipeline, model in sorted({(b["pipeline"], b["model"]) for b in new}):
            beats = latest[(pipeline, model)]
            for version in sorted({str(b["version"]) for b in beats.values() if b.get("version")}):
                f = figures(beats, version)
                events.append(
                    dg.AssetObservation(
                        asset_key=dg.AssetKey([pipeline, "fleet_channel"]),
                        metadata={
                            "model": f"{pipeline}.{model}",
                            "version": version,
                            "devices": f.devices,
                            "decisions": f.decisions,
                            "positive_rate": dg.MetadataValue.float(f.positive_rate or 0.0),
                        },
                    )
                )
        channel, runs = fleet.get(), []
        for name, limits in bounds.items():
            pipeline, model = name.split(".", 1)
            pointer = channel.read_pointer(pipeline, model, "stable")
            if not rolling_out(pointer):
                continue
            health = rollout_health(pointer, latest.get((pipeline, model), {}), limits)
            context.log.info(
                f"{name} v{pointer['version']} at {pointer['rollout_percent']}%: {health.state}: {health.reason}"
            )
            if health.state == "diverged":
                runs.append(
                    dg.RunRequest(
                        run_key=f"halt:{name}:{pointer['sequence']}",
                        run_config={"ops": {"halt_rollout": {"config": {"model": name, "reason": health.reason}}}},
                        tags={"autosink/halt": name},
                    )
                )
        return dg.SensorResult(run_requests=runs, asset_events=events, cursor=str(cursor))

    return sensor

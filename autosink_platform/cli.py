"""The ``autosink`` command."""

import contextlib
import json
import os
import time
from pathlib import Path

import click

from autosink_platform.home import Home
from autosink_platform.settings import Settings

DAGSTER_YAML = """\
# Embedded default: SQLite storage under this folder (Dagster's default), no telemetry. The daemon
# looks for queued runs every second instead of every 5: a sensor's run starts sooner, and the
# query is one read of the local run storage.
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
telemetry:
  enabled: false
"""


def _configure(home: str | None) -> Settings:
    """The platform's configuration: the environment's variables, with ``--home`` over its own.
    The home is exported before Dagster or MLflow are imported, so the code location this process
    loads, and every process it starts, sees the same one."""
    settings = Settings.from_environ(os.environ, home)
    h = settings.home
    os.environ["AUTOSINK_HOME"] = str(h.root)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("DAGSTER_HOME", str(h.dagster))
    dagster_home = Path(os.environ["DAGSTER_HOME"])
    dagster_home.mkdir(parents=True, exist_ok=True)
    if not (dagster_home / "dagster.yaml").exists():
        (dagster_home / "dagster.yaml").write_text(DAGSTER_YAML)
    return settings


def _use_home(home: str | None) -> Home:
    return _configure(home).home


def _resources(home: str | None) -> dict:
    """The resources the assets use, configured as the code location configures them."""
    return _configure(home).resources()


@click.group()
def main() -> None:
    """autosink: fleet feedback -> validated, released models."""


home_option = click.option("--home", default=None, help="Home directory (default: $AUTOSINK_HOME or .autosink/).")


def _lake_options(f):
    for opt in reversed(
        [
            click.option("--devices", type=int, help="Simulated Pis (default: DemoLakeConfig's)."),
            click.option("--sessions", type=int, help="Sessions per device (default: DemoLakeConfig's)."),
            click.option("--frames", type=int, help="Frames per session at 5 fps (default: DemoLakeConfig's)."),
            click.option("--seed", default=0, show_default=True),
        ]
    ):
        f = opt(f)
    return f


def _lake_config(devices, sessions, frames, seed):
    """The generator's defaults, with what the command line set."""
    from autosink_platform.lake.demo import DemoLakeConfig

    given = {"devices": devices, "sessions_per_device": sessions, "frames_per_session": frames, "seed": seed}
    return DemoLakeConfig(**{k: v for k, v in given.items() if v is not None})


@main.command("demo-lake")
@home_option
@_lake_options
def demo_lake(home, devices, sessions, frames, seed) -> None:
    """Write simulated Pi sessions into the lake (public session format)."""
    from autosink_platform.lake.demo import generate_demo_lake

    lake = _resources(home)["lake"].get()
    paths = generate_demo_lake(lake.root, _lake_config(devices, sessions, frames, seed))
    click.echo(f"wrote {len(paths)} sessions to {lake.root / 'raw'}")


@main.command()
@home_option
@_lake_options
@click.option(
    "--second-act/--no-second-act",
    default=True,
    show_default=True,
    help="After the first release, a day of feedback through the fleet API and the Dagster daemon to a device.",
)
def demo(home, devices, sessions, frames, seed, second_act) -> None:
    """The main job on embedded defaults: demo lake -> Dagster -> MLflow -> fleet channel, then a
    day of feedback through the running platform to a device."""
    started = time.perf_counter()
    settings = _configure(home)
    with contextlib.ExitStack() as stack:
        services = None
        if second_act:  # its code server loads on the other core while the first act starts
            from autosink_platform.live import Services

            services = Services(settings.home, settings.home.root / "logs").serve_code()
            stack.callback(services.stop)
        _demo_acts(settings, _lake_config(devices, sessions, frames, seed), services, started)


def _demo_acts(settings, lake_cfg, services, started) -> None:
    """``services``: the second act's, code server loading; None: no second act."""
    h, resources = settings.home, settings.resources()
    import dagster as dg

    from autosink_platform.definitions import defs
    from autosink_platform.defs.runner import materialize_pipeline
    from autosink_platform.lake.demo import generate_demo_lake
    from autosink_platform.pipelines.lifecycle import load_trained
    from autosink_platform.pipelines.sink import SINK, truth_report
    from autosink_platform.validation.cases import weakest

    lake = resources["lake"].get()
    fresh = not lake.committed_sessions()
    second_act = services is not None
    if second_act and not fresh:
        services.stop()
    if fresh:
        generate_demo_lake(lake.root, lake_cfg)
    with dg.DagsterInstance.get() as instance:
        out = materialize_pipeline(defs, SINK, instance, lake)

    ref = out["validated_dataset"]
    data = ref.open()
    quarantined = lake.quarantined()
    click.echo("\n== autosink demo: sink pipeline ==")
    click.echo(f"home                {h.root}")
    click.echo(
        f"sessions            {ref.counts['sessions']} in dataset, {len(out['ingested_now'])} ingested this run, {len(quarantined)} quarantined"
    )
    click.echo(
        f"frames              {ref.counts['frames']}, label coverage {data.table['label'].notna().mean():.1%} "
        f"(override {(data.table['label_source'] == 'override').sum()}, implicit {(data.table['label_source'] == 'implicit').sum()})"
    )
    click.echo(
        f"dataset snapshot    {ref.snapshot_id}  "
        + ", ".join(f"{s}: {ref.counts[s]['sessions']} sessions" for s in ("train", "validation", "test"))
    )
    from autosink_platform.registry import releases

    registry = resources["mlflow"].get()
    for model in SINK.models:
        trained, op, rel = out[f"{model.name}_model"], out[f"{model.name}_threshold"], out[f"{model.name}_release"]
        test = rel.manifest["metrics"]["test"]
        how = (
            ("reused" if trained.reused else "trained")
            if f"{model.name}_model" in out["launched"]
            else "up to date: Dagster saw nothing changed, nothing ran"
        )
        aliases = ", ".join(releases.aliases(registry, trained.registered_name, trained.version)) or "-"
        click.echo(
            f"\n[{trained.registered_name}] MLflow v{trained.version} ({how}"
            f"{', warm start from v' + trained.warm_started_from if trained.warm_started_from else ''}), aliases: {aliases}"
        )
        click.echo(
            f"  threshold         {op.threshold:.4g} ({op.policy}): validation precision {op.precision:.3f} recall {op.recall:.3f} f1 {op.f1:.3f}"
        )
        click.echo("  test              " + "  ".join(f"{k} {v:.3f}" for k, v in test.items() if k != "n"))
        if model.name == "classifier":
            truth, slices = truth_report(
                lake.root, data, model.score(load_trained(model, trained, registry)), op.threshold, model.cases
            )
            worst = weakest(slices)
            click.echo(
                f"  test vs truth     f1 {truth['f1']:.3f} precision {truth['precision']:.3f} recall {truth['recall']:.3f} "
                f"accuracy {truth['accuracy']:.3f}  (deployed on-device model: f1 {truth['deployed_model_f1']:.3f})"
            )
            click.echo(
                f"                    weakest slice {worst['slice']}={worst['group']}: accuracy {worst['value']:.3f} (n={worst['n']})"
            )
        if rel.cases is not None:
            low = weakest(rel.cases)
            click.echo(
                f"  case gate         {(rel.cases['status'] == 'pass').sum()} slice groups pass; lowest {low['slice']}={low['group']} "
                f"{low['metric']} {low['value']:.3f} (floor {low['floor']}, n={low['n']})"
            )
        click.echo(f"  release           {rel.path}")
    if second_act and not fresh:
        click.echo("\nsecond act skipped: this home's lake was not new (start from a fresh home to see it)")
    elif second_act:
        from autosink_platform import demo_day

        click.echo(f"\nfirst act           {time.perf_counter() - started:.1f} s\n")
        with dg.DagsterInstance.get() as instance:
            report, device = demo_day.run_day(settings, lake_cfg, instance, services=services)
        click.echo(demo_day.summary(settings, report, device))
    click.echo(f"\nMLflow              {registry.tracking_uri}")
    click.echo(f"Dagster             DAGSTER_HOME={os.environ['DAGSTER_HOME']}  (make dev shows these runs)")
    click.echo(f"wall time           {time.perf_counter() - started:.1f} s")


@main.group()
def lake() -> None:
    """The raw data lake."""


@lake.command("status")
@home_option
def lake_status(home) -> None:
    """Committed sessions, and every quarantined session with its reason."""
    lk = _resources(home)["lake"].get()
    committed, quarantined = lk.committed_sessions(), lk.quarantined()
    click.echo(f"lake: {lk.root}")
    click.echo(f"committed sessions: {len(committed)}  quarantined: {len(quarantined)}")
    for sid, rec in quarantined.items():
        by = "" if rec.by == "pipeline" else f" by {rec.by}"
        click.echo(f"  quarantined {sid}: {rec.reason}: {rec.detail}  ({rec.quarantined_at}{by})")
    conflicts = sorted((lk.root / "conflicts").glob("*/*.json"))
    if conflicts:
        click.echo(f"re-uploads that differed from the stored copy (kept aside): {len(conflicts)}")


def _operator() -> str:
    import getpass

    return getpass.getuser()


@lake.command("quarantine")
@click.argument("session_id")
@click.option("--reason", required=True, help="Why: kept with the record and in the audit log.")
@home_option
def lake_quarantine(session_id, reason, home) -> None:
    """Keep a session out of every later dataset, by hand (its raw files stay as they are)."""
    lk = _resources(home)["lake"].get()
    try:
        record = lk.quarantine_by_hand(session_id, reason, _operator())
    except (KeyError, ValueError) as e:
        raise click.ClickException(str(e).strip("'\"")) from None
    click.echo(f"quarantined {session_id} by {record.by}: {reason}")


@lake.command("release")
@click.argument("session_id")
@click.option("--reason", required=True, help="Why it is good after all: kept in the audit log.")
@home_option
def lake_release(session_id, reason, home) -> None:
    """Release a quarantined session: the per-session gates let it through, and the new-session
    sensor ingests it again."""
    lk = _resources(home)["lake"].get()
    try:
        record = lk.release(session_id, reason, _operator())
    except KeyError as e:
        raise click.ClickException(str(e).strip("'\"")) from None
    click.echo(
        f"released {session_id} (was {record.reason}: {record.detail}); it is ingested on the sensor's next tick"
    )


@lake.command("audit")
@home_option
def lake_audit(home) -> None:
    """Every quarantine and release by hand: when, who, which session, why."""
    for e in _resources(home)["lake"].get().audit():
        click.echo(f"{e['at']}  {e['action']:<10}  {e['session_id']}  by {e['by']}: {e['reason']}")


@lake.command("reindex")
@home_option
def lake_reindex(home) -> None:
    """Log committed sessions missing from the commit log (e.g. copied into raw/ by hand)."""
    added = _resources(home)["lake"].get().reindex()
    click.echo(f"indexed {len(added)} sessions" + (": " + ", ".join(added) if added else ""))


def _or_refused(action, *args, **kwargs):
    """``action(*args, **kwargs)``; a refused promotion, rollout or rollback is said as a command error."""
    from autosink_platform.registry.promotion import PromotionRefused

    try:
        return action(*args, **kwargs)
    except PromotionRefused as e:
        raise click.ClickException(str(e)) from None


def _registry_and_channel(home):
    settings = _configure(home)
    resources = settings.resources()
    return settings.home, resources["mlflow"].get(), resources["fleet"].get(), resources["fleet"].audit()


def _model_names() -> list[str]:
    from autosink_platform.definitions import MODEL_NAMES

    return list(MODEL_NAMES)


@main.command("run")
@home_option
@click.option("--pipeline", default="sink", show_default=True, help="The pipeline to run (sink, robotarm, ...).")
def run_pipeline(home, pipeline) -> None:
    """Run a pipeline on the instance at $DAGSTER_HOME, as a deployment runs it: the sink ingests,
    labels and trains on the lake; the reference pipelines go from their public files to a
    release. Only what Dagster sees as changed or missing is launched. The jobs are loaded from
    the code location, so the configured executor runs the steps (AUTOSINK_EXECUTOR=celery:
    dagster-celery workers; see docs/scaling-out.md)."""
    lake = _resources(home)["lake"].get()
    import dagster as dg

    from autosink_platform.defs.runner import launch_pipeline
    from autosink_platform.pipelines.catalog import PIPELINES

    if pipeline not in PIPELINES:
        raise click.BadParameter(f"{pipeline!r}: the pipelines are {sorted(PIPELINES)}", param_hint="--pipeline")
    started = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        run_ids = launch_pipeline(PIPELINES[pipeline], instance, lake)
    seconds = time.perf_counter() - started
    if not run_ids:
        click.echo(f"{pipeline}: nothing changed, every asset is up to date: no run launched ({seconds:.1f} s)")
    else:
        click.echo(f"{pipeline}: {len(run_ids)} runs succeeded in {seconds:.1f} s; last run {run_ids[-1]}")


@main.command()
@home_option
@click.argument("model")
@click.option("--version", required=True, help="The MLflow version to make champion.")
@click.option("--reason", required=True, help="Why: recorded in the audit log.")
@click.option(
    "--rollout",
    type=click.IntRange(1, 100),
    default=100,
    show_default=True,
    help="Percent of devices that get it first (a canary by a stable hash of the device id); "
    "the others stay on the champion before until `autosink rollout advance`.",
)
def promote(home, model, version, reason, rollout) -> None:
    """Make a validated version the champion (MLflow alias) and publish it to the fleet."""
    from autosink_platform.registry.promotion import promote as do_promote

    _, registry, channel, audit = _registry_and_channel(home)
    entry = _or_refused(do_promote, registry, channel, audit, model, version, reason, rollout_percent=rollout)
    click.echo(
        f"{model}: champion v{entry['from'] or '-'} -> v{entry['to']} on {entry['rollout_percent']}% of devices, "
        f"stable channel sequence {entry['sequence']}"
    )


@main.group()
def rollout() -> None:
    """A staged rollout: its state and field telemetry, widening it, halting it."""


@rollout.command("status")
@home_option
@click.argument("model")
def rollout_status(home, model) -> None:
    """The pointer (version, canary %, fallback) and the canary against the control group."""
    from autosink_platform.fleet.telemetry import latest_beats, rolling_out, rollout_health

    h, _, channel, _ = _registry_and_channel(home)
    pipeline, _, name = model.partition(".")
    pointer = channel.read_pointer(pipeline, name, "stable")
    if pointer is None:
        raise click.ClickException(f"{model}: nothing published")
    out = {k: pointer.get(k) for k in ("version", "rollout_percent", "fallback", "sequence", "halted")}
    if rolling_out(pointer):
        health = rollout_health(pointer, latest_beats(h.heartbeats).get((pipeline, name), {}))
        out["health"] = {
            "state": health.state,
            "reason": health.reason,
            "canary": vars(health.canary),
            "control": vars(health.control),
        }
    click.echo(json.dumps(out, indent=1))


@rollout.command("advance")
@home_option
@click.argument("model")
@click.option(
    "--to", "to", type=click.IntRange(1, 100), default=None, help="Percent (default: next of 10, 25, 50, 100)."
)
@click.option("--reason", default="canary healthy", show_default=True, help="Recorded in the audit log.")
def rollout_advance(home, model, to, reason) -> None:
    """Widen the canary."""
    from autosink_platform.registry.promotion import advance

    _, _, channel, audit = _registry_and_channel(home)
    entry = _or_refused(advance, channel, audit, model, reason, to)
    click.echo(f"{model}: v{entry['to']} now on {entry['rollout_percent']}% of devices (sequence {entry['sequence']})")


@rollout.command("halt")
@home_option
@click.argument("model")
@click.option("--reason", required=True, help="Why: recorded in the audit log, the pointer and the version's tags.")
def rollout_halt(home, model, reason) -> None:
    """Stop the rollout: every device back on the version before, which is champion again."""
    from autosink_platform.registry.promotion import halt

    _, registry, channel, audit = _registry_and_channel(home)
    entry = _or_refused(halt, registry, channel, audit, model, reason)
    click.echo(f"{model}: v{entry['from']} halted; every device back on v{entry['to']} (sequence {entry['sequence']})")


@main.command()
@home_option
@click.argument("model")
@click.option("--reason", required=True, help="Why: recorded in the audit log.")
def rollback(home, model, reason) -> None:
    """Back to the previous champion, and publish it."""
    from autosink_platform.registry.promotion import rollback as do_rollback

    _, registry, channel, audit = _registry_and_channel(home)
    entry = _or_refused(do_rollback, registry, channel, audit, model, reason)
    click.echo(f"{model}: rolled back v{entry['from']} -> v{entry['to']}, stable channel sequence {entry['sequence']}")


@main.command()
@home_option
def status(home) -> None:
    """Every model: champion, challenger, published version, and fleet adoption from heartbeats."""
    from autosink_platform.registry.promotion import format_status
    from autosink_platform.registry.promotion import status as model_status

    h, registry, channel, _ = _registry_and_channel(home)
    click.echo(format_status(model_status(registry, channel, _model_names(), h.heartbeats)))


@main.command()
@home_option
@click.option("--model", default=None, help="Only this model (<pipeline>.<model>).")
def audit(home, model) -> None:
    """The promotion and rollback history (append-only)."""
    *_, log = _registry_and_channel(home)
    for e in log.entries(model):
        click.echo(
            f"{e['at']}  {e['action']:8} {e['model']:18} v{e['from'] or '-'} -> v{e['to']}  by {e['who']}: {e['reason']}"
        )


@main.command("show-release")
@home_option
@click.argument("pipeline")
@click.argument("model")
@click.option("--channel", default="stable", show_default=True)
def show_release(home, pipeline, model, channel) -> None:
    """Print a channel pointer and the manifest it points at."""
    fleet = _resources(home)["fleet"].get()
    pointer = fleet.read_pointer(pipeline, model, channel)
    if pointer is None:
        raise click.ClickException(f"no {channel!r} pointer for {pipeline}/{model} under {fleet.root}")
    manifest = json.loads((fleet.version_dir(pipeline, model, pointer["version"]) / "manifest.json").read_text())
    click.echo(json.dumps({"pointer": pointer, "manifest": manifest}, indent=1))


@main.group()
def fleet() -> None:
    """The fleet API and its device tokens."""


@fleet.command("serve")
@home_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True)
@click.option("--max-archive-mb", default=512, show_default=True, help="Largest accepted upload (compressed).")
@click.option("--max-files", default=20_000, show_default=True, help="Most files in one session archive.")
@click.option("--max-unpacked-mb", default=2048, show_default=True, help="Most bytes one archive may unpack to.")
@click.option("--upload-burst", default=120, show_default=True, help="Uploads a device may send at once.")
@click.option("--uploads-per-minute", default=60.0, show_default=True, help="A device's sustained upload rate.")
def fleet_serve(home, host, port, max_archive_mb, max_files, max_unpacked_mb, upload_burst, uploads_per_minute) -> None:
    """Serve the fleet API (uploads) with uvicorn."""
    import uvicorn

    from autosink_platform.fleet.api import create_app
    from autosink_platform.fleet.uploads import UploadLimits
    from autosink_platform.lake.sessions import SINK_FRAME_SIZE

    limits = UploadLimits.for_frames(
        *SINK_FRAME_SIZE,
        max_archive_bytes=max_archive_mb * 2**20,
        max_files=max_files,
        max_unpacked_bytes=max_unpacked_mb * 2**20,
        burst=upload_burst,
        per_minute=uploads_per_minute,
    )
    settings = _configure(home)
    resources = settings.resources()
    # The lake, store and channel the pipeline's resources use: with the lake on S3, uploads land
    # in the bucket the sensor reads; with the channel in another folder, that is what devices get.
    channel = resources["fleet"].get()
    app = create_app(
        settings.home,
        limits,
        lake=resources["lake"].get(),
        store=resources["store"].get("sink"),
        channel=channel.root.path if channel.local else str(channel.root),
    )
    uvicorn.run(app, host=host, port=port)


@fleet.command("keygen")
@click.option(
    "--out",
    default=None,
    help="Private key path (default: $AUTOSINK_SIGNING_KEY or ~/.config/autosink/fleet-signing-key.pem).",
)
def fleet_keygen(out) -> None:
    """Write a new Ed25519 key pair (private key mode 0600; never in the repo): an online
    signing key, a new one to rotate to, or a root key."""
    from autosink_platform.release.signing import DEFAULT_KEY, generate_keypair, key_id, load_public_key

    try:
        private, public = generate_keypair(
            out or Settings.from_environ(os.environ)["AUTOSINK_SIGNING_KEY"] or DEFAULT_KEY.expanduser()
        )
    except FileExistsError as e:
        raise click.ClickException(str(e)) from None
    click.echo(
        f"private key {private}\npublic key  {public}  (key id {key_id(load_public_key(public))})\n"
        "devices are provisioned with the channel's metadata/root.json, not with a key"
    )


@fleet.command("rotate-key")
@home_option
@click.option(
    "--root-key", required=True, type=click.Path(exists=True, dir_okay=False), help="The offline TUF root key."
)
@click.option(
    "--new-key",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="A new online key (autosink fleet keygen --out PATH); point AUTOSINK_SIGNING_KEY at it afterwards.",
)
@click.option(
    "--new-root-key",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="A new root key: root N+1 is signed by the old and the new one; keep the new one offline.",
)
def fleet_rotate_key(home, root_key, new_key, new_root_key) -> None:
    """Replace the online key (after a compromise, or routinely) and/or the root key: root N+1,
    signed with the root key, names the new keys; targets, snapshot and timestamp are re-signed.
    Devices follow the root chain on their next sync and refuse anything an old key signs."""
    from autosink_platform.release.signing import load_private_key

    if not (new_key or new_root_key):
        raise click.UsageError("give --new-key, --new-root-key or both")
    channel = _resources(home)["fleet"].get()
    root = channel.tuf.sign_root(
        load_private_key(root_key),
        load_private_key(new_key) if new_key else None,
        new_root_key=load_private_key(new_root_key) if new_root_key else None,
    )
    click.echo(f"root v{root.version}: online key {channel.key_id[:16]} (expires {root.expires.isoformat()})")


@fleet.command("renew-root")
@home_option
@click.option(
    "--root-key", required=True, type=click.Path(exists=True, dir_okay=False), help="The offline TUF root key."
)
def fleet_renew_root(home, root_key) -> None:
    """Root N+1 with the same keys and a new year of validity (the refresh job warns 60 days ahead)."""
    from autosink_platform.release.signing import load_private_key

    root = _resources(home)["fleet"].get().tuf.sign_root(load_private_key(root_key))
    click.echo(f"root v{root.version} valid until {root.expires.isoformat()}")


def _add_token(registry, name: str) -> None:
    """Register ``name`` in a token registry and print its token (shown only this once)."""
    try:
        click.echo(registry.add(name))
    except ValueError as e:
        raise click.ClickException(str(e)) from None


def _revoke_token(registry, name: str) -> None:
    try:
        registry.revoke(name)
    except KeyError as e:
        raise click.ClickException(str(e)) from None


@fleet.command("add-device")
@home_option
@click.argument("device_id")
def fleet_add_device(home, device_id) -> None:
    """Register a device and print its token (shown only this once)."""
    from autosink_platform.fleet.devices import DeviceRegistry

    _add_token(DeviceRegistry(_use_home(home).devices_db), device_id)


@fleet.command("revoke-device")
@home_option
@click.argument("device_id")
def fleet_revoke_device(home, device_id) -> None:
    """Revoke a device's token: its uploads are refused from now on."""
    from autosink_platform.fleet.devices import DeviceRegistry

    _revoke_token(DeviceRegistry(_use_home(home).devices_db), device_id)
    click.echo(f"revoked {device_id}")


@fleet.command("devices")
@home_option
def fleet_devices(home) -> None:
    """List registered devices."""
    from autosink_platform.fleet.devices import DeviceRegistry

    for d in DeviceRegistry(_use_home(home).devices_db).list():
        click.echo(
            f"{d['device_id']:20} created {d['created_at']}  {'revoked ' + d['revoked_at'] if d['revoked_at'] else 'active'}"
        )


@fleet.command("add-reviewer")
@home_option
@click.argument("name")
def fleet_add_reviewer(home, name) -> None:
    """Let a person correct labels on /review: prints their sign-in token (shown only this once)."""
    from autosink_platform.fleet.devices import ReviewerRegistry

    _add_token(ReviewerRegistry(_use_home(home).reviewers_db), name)


@fleet.command("revoke-reviewer")
@home_option
@click.argument("name")
def fleet_revoke_reviewer(home, name) -> None:
    """Revoke a reviewer's token and end their signed-in sessions."""
    from autosink_platform.fleet.devices import ReviewerRegistry

    _revoke_token(ReviewerRegistry(_use_home(home).reviewers_db), name)
    click.echo(f"revoked reviewer {name}")

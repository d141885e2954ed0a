"""The demo's second act: a day of feedback reaches the fleet with nobody in between.

Two kitchens of the demo fleet (pi-003 and pi-004) have had their sinks replaced by dark
granite ones, a look the first release never saw. A day of their sessions, with the users'
overrides, arrives through the fleet API while the Dagster daemon runs; the sensors, the retrain
policy, the release gate and the promotion policy decide the rest, and a device syncing on its
timer ends up running whatever the platform chose. The summary puts both versions side by side
on the new test split, scored against the generator's truth.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pandas as pd
from tqdm import tqdm

from autosink_platform.lake.demo import TRUTH_DIR, DemoLakeConfig, generate_demo_lake
from autosink_platform.live import (
    Device,
    DeviceTimer,
    LoopReport,
    Services,
    feedback_to_device,
    provision_fleet,
)
from autosink_platform.settings import Settings

DAY_SESSIONS = 7  # per device: enough labeled frames for the sink's retrain policy
RENOVATED_FROM = 2  # devices from this index on have the new dark sinks
DEVICE_SYNC_EVERY = 5.0  # seconds; a real Pi's timer runs every five minutes


def day_config(first: DemoLakeConfig) -> DemoLakeConfig:
    """The day after the first act's sessions, from the same fleet."""
    return replace(
        first,
        first_session=first.first_session + first.sessions_per_device,
        sessions_per_device=DAY_SESSIONS,
        dark_basins_from=RENOVATED_FROM,
    )


def run_day(
    settings: Settings, first: DemoLakeConfig, instance, progress: bool = True, services: Services | None = None
) -> tuple[LoopReport, Device]:
    """Generate the day on the devices (outside the lake), then run the live loop on it;
    ``services``: started here unless given (its code server may already be loading)."""
    home, resources = settings.home, settings.resources()
    lake = resources["lake"].get().root
    outbox = home.root / "demo_outbox"  # what the Pis recorded and have not uploaded yet
    shutil.rmtree(outbox, ignore_errors=True)
    folders = generate_demo_lake(outbox, day_config(first), progress=progress)
    # The generator's truth is for the demo's report only; it never travels with an upload.
    (lake / TRUTH_DIR).mkdir(parents=True, exist_ok=True)
    for f in (outbox / TRUTH_DIR).glob("*.csv"):
        (lake / TRUTH_DIR / f.name).write_bytes(f.read_bytes())

    with services or Services(home, home.root / "logs") as services:
        devices = provision_fleet(home, services.api, folders, resources["fleet"].get())
        watched = devices[sorted(devices)[RENOVATED_FROM]]  # a Pi over one of the new sinks
        watched.sync()  # on the first release before the day starts
        bar = tqdm(desc="feedback -> device", unit="s", disable=not progress, bar_format="{desc}: {elapsed} {postfix}")

        shown = [""]

        def show(runs, champion, device_version):
            text = (
                f"runs {', '.join(f'{r.dagster_run.job_name}:{r.dagster_run.status.value.lower()}' for r in runs) or '-'}"
                f" | champion v{champion} | device v{device_version}"
            )
            if text != shown[0]:  # a line per change, not per poll
                shown[0] = text
                bar.set_postfix_str(text)

        with DeviceTimer(watched, DEVICE_SYNC_EVERY):
            report = feedback_to_device(
                instance,
                resources,
                folders,
                devices,
                watched,
                services=services,
                progress=show,
            )
        bar.close()
    return report, watched


def side_by_side(settings: Settings, report: LoopReport) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both versions on the candidate's test split against the generator's truth: overall, and
    per case slice (accuracy)."""
    from autosink_platform.pipelines.lifecycle import load_version
    from autosink_platform.pipelines.sink import SINK, truth_report
    from autosink_platform.release.onnx_export import OnnxScorer
    from autosink_platform.validation.dataset import DatasetRef

    model = next(m for m in SINK.models if m.name == "classifier")
    resources = settings.resources()
    registry, channel, lake = resources["mlflow"].get(), resources["fleet"].get(), resources["lake"].get()
    name = "sink.classifier"
    snapshot = registry.client.get_model_version(name, report.candidate).tags["dataset_snapshot_id"]
    data = DatasetRef.of_snapshot(resources["store"].get("sink").dataset_dir(snapshot)).open()
    overall, slices = {}, []
    for label, version in (("champion before", report.champion_before), ("candidate", report.candidate)):
        vdir = channel.version_dir("sink", "classifier", version)
        if (vdir / "manifest.json").exists():  # what the fleet would run
            score = OnnxScorer(vdir / "model.onnx")
            threshold = json.loads((vdir / "manifest.json").read_text())["threshold"]["threshold"]
        else:  # refused at the gate: never published, scored from the registry
            mv = registry.client.get_model_version(name, version)
            score = model.score(load_version(model, mv, registry))
            threshold = json.loads(mv.tags["threshold"])["threshold"]
        truth, table = truth_report(lake.root, data, score, threshold, model.cases)
        column = f"v{version} ({label})"
        overall[column] = {k: truth[k] for k in ("f1", "precision", "recall", "accuracy")}
        slices.append(table.set_index(["slice", "group"])[["n", "value"]].rename(columns={"value": column}))
    by_slice = slices[0].join(slices[1].drop(columns="n"))
    return pd.DataFrame(overall), by_slice.reset_index()


def summary(settings: Settings, report: LoopReport, device: Device) -> str:
    overall, by_slice = side_by_side(settings, report)
    runs = ", ".join(f"{r['job']}:{r['status'].lower()}" for r in report.runs)
    lines = [
        "\n== second act: a day of feedback, nobody in between ==",
        f"uploads             {report.uploads} sessions through the fleet API (pi-003 and pi-004 now over dark granite sinks)",
        f"runs                {runs}",
        f"decision            {report.decision}",
        f"device {device.device_id}      runs v{device.version} (champion v{report.champion_after})",
        f"feedback -> device  {report.seconds:.0f} s from the first upload's 201"
        + (" to the device's heartbeat on the new version" if report.outcome == "promoted" else " to the decision"),
        "\nsink.classifier on the new test split, against the generator's truth:",
        overall.map(lambda v: f"{v:.3f}").to_string(),
        "\naccuracy per case slice (truth):",
        by_slice.to_string(index=False, float_format=lambda v: f"{v:.3f}"),
        "\nwhere the time went (seconds from the first 201):",
        report.table(),
    ]
    return "\n".join(lines)

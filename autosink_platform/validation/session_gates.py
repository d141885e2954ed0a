"""Per-session gates: a session that departs from its pipeline is kept out of the dataset with a
reason, before it can wedge or poison training, while the good sessions go on.

At ingest, from the session's own frames:

- ``frame_geometry``: its frames are not the size the pipeline's cameras record (another camera,
  another firmware); stacked with the others it would stop every dataset build.
- ``covered_camera``: most of its frames are blank (a covered lens, a camera that is off).

At the dataset stage, against the champion, on the sessions it was not trained on
(``champion_verdicts``), and only on *familiar* frames (the frame guard's novelty within what
it saw in the champion's training data: a new kitchen the champion gets wrong is what feedback
is for, not poison):

- ``champion_disagreement``: the session's labels contradict the champion's decisions on most
  of its familiar frames (flipped overrides concentrated in a few sessions);
- ``device_disagreement``: a device's new sessions together contradict the champion far more
  than the rest of the fleet's new sessions do (poison spread thin over many sessions, under
  every per-session bound). A fleet-wide fault, such as a broken on-device build everywhere,
  does not single out a device; the release gate stops what it trains.

A gate's verdict is a ``lake.sessions.QuarantineRecord``: the raw files stay as they are, and an
operator can release the session (``autosink lake release``), after which the gates let it through.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from autosink_platform.lake.sessions import Session, SessionFormatError


@dataclass(frozen=True)
class SessionGates:
    # A blank frame has almost no contrast (grey-level std below ``blank_std``, as the dataset's
    # image-quality check counts them). A lens covered for a moment is normal; for a quarter of
    # a session, the session says nothing about the sink.
    blank_std: float = 4.0
    max_blank_share: float = 0.25
    # Against the champion. Familiar: novelty at most this quantile of the champion's training frames.
    familiar_quantile: float = 0.99
    min_familiar: int = 30  # labeled familiar frames for a session to be judged
    max_disagreement: float = 0.6
    min_device_frames: int = 300  # labeled familiar frames in a device's new sessions, to judge it
    max_device_excess: float = 0.15  # over the median of the other devices (or the champion's test error)
    decider: str = ""  # the model whose champion's decisions labels are checked against ("": no check)
    familiarity: tuple[str, str] = ("", "")  # (model, output): its champion's novelty score per frame


def blank_share(images: np.ndarray, blank_std: float) -> float:
    """The share of frames with almost no contrast."""
    blank = sum(float(image.astype(np.float32).mean(axis=2).std()) < blank_std for image in images)
    return blank / len(images)


def ingest_gate(session: Session, frame_size: tuple[int, int], gates: SessionGates) -> SessionFormatError | None:
    """Why the session must not reach a dataset, from its own frames; None when it may."""
    if tuple(session.frame_size) != tuple(frame_size):
        return SessionFormatError(
            session.path,
            "frame_geometry",
            f"frames are {session.frame_size[0]}x{session.frame_size[1]}, the pipeline's cameras record "
            f"{frame_size[0]}x{frame_size[1]}",
        )
    share = blank_share(session.images, gates.blank_std)
    if share > gates.max_blank_share:
        return SessionFormatError(
            session.path,
            "covered_camera",
            f"{share:.0%} of frames are blank (contrast < {gates.blank_std}), more than {gates.max_blank_share:.0%}",
        )
    return None


def familiar_limit(novelty: np.ndarray, gates: SessionGates) -> float:
    """The novelty below which a frame is familiar, from the champion's training frames."""
    return float(np.quantile(novelty, gates.familiar_quantile))


def disagreement_table(table: pd.DataFrame, decisions: np.ndarray, familiar: np.ndarray) -> pd.DataFrame:
    """Per session: labeled familiar frames and how many of them the champion decides otherwise."""
    used = table["label"].notna().to_numpy() & familiar
    frame = pd.DataFrame(
        {
            "session_id": table["session_id"].to_numpy(),
            "device_id": table["device_id"].to_numpy(),
            "familiar": used,
            "disagrees": used & (table["label"].fillna(-1).to_numpy().astype(int) != decisions.astype(int)),
        }
    )
    out = frame.groupby(["session_id", "device_id"], sort=True)[["familiar", "disagrees"]].sum().reset_index()
    out["disagreement"] = out["disagrees"] / out["familiar"].clip(lower=1)
    return out


def champion_verdicts(
    per_session: pd.DataFrame, gates: SessionGates, champion_error: float
) -> dict[str, tuple[str, str]]:
    """session_id -> (reason, detail) for each new session the champion gate holds.
    ``champion_error``: the champion's own test error, the reference when fewer than two other
    devices sent enough new frames to compare with."""
    held: dict[str, tuple[str, str]] = {}
    for row in per_session.itertuples():
        if row.familiar >= gates.min_familiar and row.disagreement > gates.max_disagreement:
            held[row.session_id] = (
                "champion_disagreement",
                f"labels contradict the champion on {row.disagreement:.0%} of {row.familiar} labeled familiar "
                f"frames (most: {gates.max_disagreement:.0%})",
            )
    # A device is judged on its sessions that passed on their own: one poisoned session must
    # not drag a device, or the fleet reference, by itself.
    device = per_session[~per_session["session_id"].isin(held)].groupby("device_id")[["familiar", "disagrees"]].sum()
    device["disagreement"] = device["disagrees"] / device["familiar"].clip(lower=1)
    judged = device[device["familiar"] >= gates.min_device_frames]
    for dev, row in judged.iterrows():
        others = judged.drop(index=dev)["disagreement"]
        reference, what = (
            (float(others.median()), "the other devices' (median)")
            if len(others) >= 2
            else (champion_error, "the champion's test error")
        )
        if row["disagreement"] > reference + gates.max_device_excess:
            detail = (
                f"device {dev}'s new sessions contradict the champion on {row['disagreement']:.0%} of "
                f"{int(row['familiar'])} labeled familiar frames; {what} {reference:.0%} "
                f"(most excess: {gates.max_device_excess:.0%})"
            )
            for sid in per_session.loc[per_session["device_id"] == dev, "session_id"]:
                held.setdefault(
                    sid, ("device_disagreement", detail)
                )  # its sessions held on their own keep their reason
    return held

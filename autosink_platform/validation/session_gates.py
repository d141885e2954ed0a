"""Per-session gates: a session that departs from its pipeline is kept out of the dataset with a
reason, before it can wedge or poison training, while the good sessions go on.

At ingest, from the session's own frames:

- ``frame_geometry``: its frames are not the size the pipeline's cameras record (another camera,
  another firmware); stacked with the others it would stop every dataset build.
- ``covered_camera``: most of its frames are blank (a covered lens, a camera that is off).

A gate's verdict is a ``lake.sessions.QuarantineRecord``: the raw files stay as they are, and an
operator can release the session (``autosink lake release``), after which the gates let it through.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from autosink_platform.lake.sessions import Session, SessionFormatError


@dataclass(frozen=True)
class SessionGates:
    # A blank frame has almost no contrast (grey-level std below ``blank_std``, as the dataset's
    # image-quality check counts them). A lens covered for a moment is normal; for a quarter of
    # a session, the session says nothing about the sink.
    blank_std: float = 4.0
    max_blank_share: float = 0.25


def _frame(session: Session, name: str) -> np.ndarray:
    with Image.open(io.BytesIO((session.path / name).read_bytes())) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32)


def blank_share(session: Session, blank_std: float) -> float:
    """The share of the session's frames with almost no contrast."""
    blank = sum(float(_frame(session, f).mean(axis=2).std()) < blank_std for f in session.frames)
    return blank / len(session.frames)


def ingest_gate(session: Session, frame_size: tuple[int, int], gates: SessionGates) -> SessionFormatError | None:
    """Why the session must not reach a dataset, from its own frames; None when it may."""
    if tuple(session.frame_size) != tuple(frame_size):
        return SessionFormatError(
            session.path,
            "frame_geometry",
            f"frames are {session.frame_size[0]}x{session.frame_size[1]}, the pipeline's cameras record "
            f"{frame_size[0]}x{frame_size[1]}",
        )
    share = blank_share(session, gates.blank_std)
    if share > gates.max_blank_share:
        return SessionFormatError(
            session.path,
            "covered_camera",
            f"{share:.0%} of frames are blank (contrast < {gates.blank_std}), more than {gates.max_blank_share:.0%}",
        )
    return None

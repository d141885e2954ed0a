"""Simulated Pi sessions: a sink seen from a camera above the faucet.

Each session is a timeline of episodes. Hands or a dish move in from the front edge of the
basin to the spout, stay there a while, and move away again. The water should flow exactly while
something is under the spout, and that per-frame truth is computed from the geometry. Between
episodes the basin is empty, or holds dishes put aside away from the spout, or a hand reaches
past the spout without going under it. Lighting drifts and sometimes switches; the sensor adds
noise; each device has its own counter, basin and camera offset, and each session is shifted
a little.

The on-device model's decisions copy the truth one frame late, with error episodes mixed in
until ``model_error_rate`` of frames are wrong. Users correct most error episodes that last longer
than their reaction time (``override_prob``), and those corrections are the sparse feedback.
The truth goes to ``<lake>/_demo_truth/``, outside ``raw/``, so the platform never trains on it and
tests can still score labels and models against it.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from tqdm import tqdm

from autosink_platform.files import is_local, location
from autosink_platform.lake.sessions import Lake

TRUTH_DIR = "_demo_truth"
SUPERSAMPLE = 2
SPOUT_TARGET = (0.5, 0.47)  # where the stream lands, in unit image coordinates
OPEN_RADIUS = 0.11  # an object whose centre is this close to the target gets water

SKIN_TONES = [(241, 194, 167), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 59, 42), (255, 219, 190)]
DISH_COLOURS = [
    (245, 245, 240),
    (200, 40, 40),
    (40, 90, 190),
    (250, 200, 40),
    (60, 150, 80),
    (30, 30, 30),
    (150, 80, 170),
]
COUNTERS = [(120, 85, 60), (210, 205, 195), (60, 60, 65), (170, 150, 120), (90, 110, 100)]


@dataclass(frozen=True)
class DemoLakeConfig:
    # Many short sessions rather than few long ones: a model learns a kitchen from the variety of
    # sessions (lighting, dishes put aside), not from more frames of the same one.
    devices: int = 4
    sessions_per_device: int = 12
    frames_per_session: int = 120
    fps: float = 5.0  # the Pi client decides at 5 Hz: fast enough for a faucet, cheap on a Pi
    image_size: int = 64
    seed: int = 0
    model_error_rate: float = 0.08  # the deployed model is wrong on ~8 % of frames
    override_prob: float = 0.75  # users fix most, not all, wrong decisions they notice
    start: str = "2026-11-02T07:30:00+00:00"
    # A later day of the same fleet: sessions are numbered from ``first_session`` and only
    # devices from ``first_device`` record (the devices before it exist, unchanged, so a higher
    # ``devices`` count adds new Pis to the same fleet).
    first_session: int = 0
    first_device: int = 0
    # Devices from this index on are installed over dark composite (granite) sinks, a kitchen
    # the first devices never showed: what new feedback has to teach a model. None: none are.
    dark_basins_from: int | None = None


@dataclass
class _Object:
    kind: str  # "hands" or a dish shape
    colour: tuple[int, int, int]
    size: float


@dataclass(frozen=True)
class _Device:
    device_id: str
    counter: tuple[int, int, int]
    basin: tuple[int, int, int]
    offset: tuple[float, float]
    firmware: str


def _device(rng: np.random.Generator, index: int, dark_basin: bool = False) -> _Device:
    grey = int(rng.integers(150, 200))
    if dark_basin:  # the same draws, mapped onto a dark grey
        grey = 95 + (grey - 150) // 2
    return _Device(
        device_id=f"pi-{index + 1:03d}",
        counter=COUNTERS[int(rng.integers(len(COUNTERS)))],
        basin=(grey, grey + int(rng.integers(0, 10)), grey + int(rng.integers(5, 20))),
        offset=(float(rng.uniform(-0.03, 0.03)), float(rng.uniform(-0.03, 0.03))),
        firmware=f"1.{int(rng.integers(2, 5))}.{int(rng.integers(0, 10))}",
    )


def _random_object(rng: np.random.Generator, hands: bool) -> _Object:
    if hands:
        return _Object("hands", SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], float(rng.uniform(0.9, 1.15)))
    kind = str(rng.choice(["plate", "bowl", "mug", "pan", "glass"]))
    return _Object(kind, DISH_COLOURS[int(rng.integers(len(DISH_COLOURS)))], float(rng.uniform(0.85, 1.2)))


def _resting_spot(rng: np.random.Generator) -> tuple[float, float]:
    """A place in the basin well away from the spout (dishes put aside)."""
    while True:
        x, y = rng.uniform(0.24, 0.76), rng.uniform(0.4, 0.8)
        if math.dist((x, y), SPOUT_TARGET) > 0.3:
            return float(x), float(y)


def _draw_object(draw: ImageDraw.ImageDraw, obj: _Object, cx: float, cy: float, px: float) -> None:
    def ellipse(x, y, rx, ry, fill, outline=None, width=1):
        draw.ellipse(
            [(x - rx) * px, (y - ry) * px, (x + rx) * px, (y + ry) * px], fill=fill, outline=outline, width=width
        )

    s, c = obj.size, obj.colour
    darker = tuple(int(v * 0.7) for v in c)
    if obj.kind == "hands":
        for side in (-1, 1):  # two hands side by side, fingers pointing away from the user
            hx = cx + side * 0.06 * s
            for k, dx in enumerate((-0.035, -0.012, 0.012, 0.035)):
                ellipse(hx + dx * s, cy - (0.075 + 0.012 * (k in (1, 2))) * s, 0.011 * s, 0.04 * s, c)
            ellipse(hx - side * 0.055 * s, cy + 0.0, 0.013 * s, 0.035 * s, c)  # thumbs
            ellipse(hx, cy, 0.05 * s, 0.06 * s, c, outline=darker)
            ellipse(hx, cy + 0.09 * s, 0.03 * s, 0.06 * s, c)  # wrist
    elif obj.kind == "plate":
        ellipse(cx, cy, 0.15 * s, 0.15 * s, c, outline=darker, width=2)
        ellipse(cx, cy, 0.095 * s, 0.095 * s, None, outline=darker, width=1)
    elif obj.kind == "bowl":
        ellipse(cx, cy, 0.11 * s, 0.11 * s, c, outline=darker, width=2)
        ellipse(cx, cy, 0.075 * s, 0.075 * s, darker)
    elif obj.kind == "mug":
        draw.rectangle(
            [(cx + 0.05 * s) * px, (cy - 0.012 * s) * px, (cx + 0.09 * s) * px, (cy + 0.012 * s) * px], fill=darker
        )
        ellipse(cx, cy, 0.06 * s, 0.06 * s, c, outline=darker, width=2)
        ellipse(cx, cy, 0.042 * s, 0.042 * s, (70, 45, 30))
    elif obj.kind == "pan":
        draw.rectangle([(cx - 0.015 * s) * px, cy * px, (cx + 0.015 * s) * px, (cy + 0.3 * s) * px], fill=(25, 25, 25))
        ellipse(cx, cy, 0.13 * s, 0.13 * s, (55, 55, 60), outline=(25, 25, 25), width=2)
    else:  # glass: pale and translucent-looking
        pale = tuple(int(0.5 * v + 110) for v in c)
        ellipse(cx, cy, 0.05 * s, 0.05 * s, pale, outline=(230, 240, 245), width=2)


def _render(
    device: _Device,
    shift: tuple[float, float],
    resting: list[tuple[_Object, float, float]],
    active: list[tuple[_Object, float, float]],
    size: int,
) -> Image.Image:
    px = size * SUPERSAMPLE
    ox, oy = device.offset[0] + shift[0], device.offset[1] + shift[1]
    img = Image.new("RGB", (px, px), device.counter)
    draw = ImageDraw.Draw(img)
    box = [(0.14 + ox) * px, (0.2 + oy) * px, (0.86 + ox) * px, (0.9 + oy) * px]
    draw.rounded_rectangle(
        box, radius=0.12 * px, fill=device.basin, outline=tuple(v - 40 for v in device.basin), width=3
    )
    inner = [b + d for b, d in zip(box, (0.03 * px, 0.03 * px, -0.03 * px, -0.03 * px), strict=True)]
    draw.rounded_rectangle(inner, radius=0.1 * px, fill=tuple(v - 18 for v in device.basin))
    dx, dy = 0.5 + ox, 0.68 + oy
    draw.ellipse([(dx - 0.04) * px, (dy - 0.04) * px, (dx + 0.04) * px, (dy + 0.04) * px], fill=(40, 40, 45))
    for obj, x, y in [*resting, *active]:
        _draw_object(draw, obj, x + ox, y + oy, px)
    # The faucet is closest to the camera, so it is drawn last: base on the back edge, arm, spout.
    fx = 0.5 + ox
    draw.ellipse(
        [(fx - 0.06) * px, (0.08 + oy) * px, (fx + 0.06) * px, (0.2 + oy) * px],
        fill=(200, 200, 210),
        outline=(120, 120, 130),
    )
    draw.rounded_rectangle(
        [(fx - 0.025) * px, (0.12 + oy) * px, (fx + 0.025) * px, (0.42 + oy) * px],
        radius=0.02 * px,
        fill=(215, 215, 225),
        outline=(130, 130, 140),
    )
    draw.ellipse([(fx - 0.03) * px, (0.39 + oy) * px, (fx + 0.03) * px, (0.45 + oy) * px], fill=(170, 170, 180))
    return img.resize((size, size), Image.BOX)


def _episode_path(rng: np.random.Generator, fps: float, reaches_spout: bool) -> list[tuple[float, float]]:
    """Centre positions of one moving object: in from the front, dwell, out again."""
    enter = (float(rng.uniform(0.3, 0.7)), 1.1)
    if reaches_spout:
        dwell_at = (SPOUT_TARGET[0] + rng.uniform(-0.04, 0.04), SPOUT_TARGET[1] + rng.uniform(-0.02, 0.05))
        dwell_frames = int(rng.uniform(2.0, 8.0) * fps)
    else:  # a hand reaching for something beside the spout, never under it
        dwell_at = (float(rng.choice([0.22, 0.78])), float(rng.uniform(0.45, 0.7)))
        dwell_frames = int(rng.uniform(1.0, 3.0) * fps)
    leave = (float(rng.uniform(0.2, 0.8)), 1.15)
    move_in, move_out = int(rng.uniform(0.6, 1.2) * fps), int(rng.uniform(0.6, 1.2) * fps)
    path = [
        (enter[0] + (dwell_at[0] - enter[0]) * k / move_in, enter[1] + (dwell_at[1] - enter[1]) * k / move_in)
        for k in range(move_in)
    ]
    x, y = dwell_at
    for _ in range(dwell_frames):  # hands scrub and dishes get turned: a small bounded random walk
        x = float(np.clip(x + rng.normal(0, 0.008), dwell_at[0] - 0.05, dwell_at[0] + 0.05))
        y = float(np.clip(y + rng.normal(0, 0.008), dwell_at[1] - 0.05, dwell_at[1] + 0.05))
        path.append((x, y))
    path += [(x + (leave[0] - x) * k / move_out, y + (leave[1] - y) * k / move_out) for k in range(1, move_out + 1)]
    return path


def _simulate_model(rng: np.random.Generator, truth: np.ndarray, error_rate: float) -> np.ndarray:
    """Decisions one frame late, plus error episodes until ``error_rate`` of frames are wrong."""
    decision = np.concatenate([[0], truth[:-1]]).astype(np.int8)
    n = len(truth)
    for _ in range(10 * n):
        if np.mean(decision != truth) >= error_rate:
            break
        start, length = int(rng.integers(0, n)), int(rng.integers(3, 16))
        decision[start : start + length] = 1 - truth[start : start + length]
    return decision


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of True."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def _session(rng: np.random.Generator, cfg: DemoLakeConfig, device: _Device, started: datetime):
    n, fps = cfg.frames_per_session, cfg.fps
    shift = (float(rng.uniform(-0.02, 0.02)), float(rng.uniform(-0.02, 0.02)))
    resting: list[tuple[_Object, float, float]] = [
        (_random_object(rng, hands=False), *_resting_spot(rng)) for _ in range(int(rng.choice([0, 0, 1, 2, 3])))
    ]
    # Per frame: the moving object and where it is (or None), and the dishes resting then.
    frame_active: list[list[tuple[_Object, float, float]]] = [[] for _ in range(n)]
    frame_resting: list[list] = [list(resting) for _ in range(n)]
    activity = np.array(["none"] * n, dtype=object)
    i = int(rng.uniform(0.5, 4.0) * fps)
    while i < n:
        is_distractor = rng.random() < 0.2
        obj = _random_object(rng, hands=is_distractor or rng.random() < 0.55)
        path = _episode_path(rng, fps, reaches_spout=not is_distractor)
        for k, (x, y) in enumerate(path):
            if i + k < n:
                frame_active[i + k] = [(obj, x, y)]
                activity[i + k] = "distractor" if is_distractor else ("hands" if obj.kind == "hands" else "dish")
        i += len(path)
        if obj.kind != "hands" and not is_distractor and rng.random() < 0.35:
            resting = [*resting, (obj, *_resting_spot(rng))][-3:]  # the rinsed dish is put aside
            for k in range(i, n):
                frame_resting[k] = list(resting)
        i += int(rng.exponential(4.0) * fps) + int(0.5 * fps)

    truth = np.array(
        [int(any(math.dist((x, y), SPOUT_TARGET) < OPEN_RADIUS for _, x, y in frame_active[k])) for k in range(n)],
        dtype=np.int8,
    )
    decision = _simulate_model(rng, truth, cfg.model_error_rate)

    # Lighting: a per-session level and tint, a slow drift, and sometimes a light switched on or off.
    level, tint = rng.uniform(0.6, 1.2), rng.uniform(0.92, 1.08, size=3)
    phase, switch_at = rng.uniform(0, 2 * math.pi), int(rng.integers(0, n)) if rng.random() < 0.3 else None
    switch_factor = rng.choice([0.7, 1.3])
    noise_sigma = rng.uniform(2.0, 7.0)
    frames, brightness = [], []
    for k in range(n):
        img = np.asarray(_render(device, shift, frame_resting[k], frame_active[k], cfg.image_size), dtype=np.float32)
        light = (
            level
            * (1 + 0.12 * math.sin(2 * math.pi * k / n + phase))
            * (switch_factor if switch_at is not None and k >= switch_at else 1.0)
        )
        img = img * light * tint + rng.normal(0, noise_sigma, img.shape)
        img = np.clip(img, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        frames.append(buf.getvalue())
        brightness.append(float(img.mean()))

    events: list[dict] = []
    for k in np.flatnonzero(np.diff(np.concatenate([[0], decision])) != 0):
        opened = bool(decision[k])
        score = rng.uniform(0.55, 0.99) if opened else rng.uniform(0.01, 0.45)
        events.append(
            {"t": round(k / fps, 3), "type": "valve_open" if opened else "valve_close", "score": round(float(score), 4)}
        )
    for start, stop in _runs(decision != truth):
        react = int(round(rng.uniform(0.4, 1.2) * fps))
        if stop - start > react and rng.random() < cfg.override_prob:
            k = start + react
            events.append({"t": round(k / fps, 3), "type": "user_open" if truth[k] else "user_close"})
    events.sort(key=lambda e: e["t"])

    session_id = f"{device.device_id}-{started:%Y%m%dT%H%M%S}"
    meta = {
        "device_id": device.device_id,
        "session_id": session_id,
        "started_at": started.isoformat(),
        "ended_at": (started + timedelta(seconds=n / fps)).isoformat(),
        "fps": fps,
        "firmware": device.firmware,
        "model_version": "sink.classifier/0",
        "schema_version": 1,
    }
    truth_table = pd.DataFrame(
        {
            "frame_index": np.arange(n),
            "t": np.arange(n) / fps,
            "valve_should_open": truth,
            "model_decision": decision,
            "activity": activity.astype(str),
            "resting_dishes": [len(r) for r in frame_resting],
            "brightness": brightness,
        }
    )
    return meta, frames, events, truth_table


def generate_demo_lake(
    lake_root: str | Path, cfg: DemoLakeConfig = DemoLakeConfig(), progress: bool = True
) -> list[Path]:
    """Write ``sessions_per_device`` committed sessions for each recording device; return their folders.

    Deterministic: the same config gives byte-identical frames, events and truth.
    """
    lake = Lake(lake_root)
    rng = np.random.default_rng(cfg.seed)
    dark = cfg.devices if cfg.dark_basins_from is None else cfg.dark_basins_from
    devices = [_device(rng, d, dark_basin=d >= dark) for d in range(cfg.devices)]
    start = datetime.fromisoformat(cfg.start)
    truth_dir = location(lake_root) / TRUTH_DIR
    if is_local(truth_dir):
        truth_dir.mkdir(parents=True, exist_ok=True)
    written = []
    sessions = range(cfg.first_session, cfg.first_session + cfg.sessions_per_device)
    jobs = [(d, s) for s in sessions for d in range(cfg.first_device, cfg.devices)]
    for d, s in tqdm(jobs, desc="demo lake", unit="session", disable=not progress):
        session_rng = np.random.default_rng([cfg.seed, d, s])
        started = start + timedelta(hours=7 * s, minutes=13 * d)
        meta, frames, events, truth = _session(session_rng, cfg, devices[d], started)
        written.append(lake.write_session(meta, frames, events))
        (truth_dir / f"{meta['session_id']}.csv").write_text(truth.to_csv(index=False))
    return written


def read_truth(lake_root: str | Path, session_id: str) -> pd.DataFrame:
    """The generator's per-frame truth for one session (demo lakes only)."""
    path = location(lake_root) / TRUTH_DIR / f"{session_id}.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no demo truth for session {session_id!r} (not a generated session?)")
    return pd.read_csv(io.StringIO(path.read_text()))

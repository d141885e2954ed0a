"""A seeded suite of long periodic series, each with one planted anomaly of a known kind.

Every series is ``amplitude(t) * wave(phase(t)) + drift(t) + noise(t) * e``: a base wave (a sine
mixture, ECG-like beats or a sawtooth) with a random period, slow drift and Gaussian noise. Its
first ``train_rows`` rows are normal (a detector fits them); one anomaly is planted at a random
position after them, and ``event`` says which rows it spans. The kinds change the series the way
real faults do:

- ``spike``: one reading jumps;
- ``level_shift``: the baseline steps up or down for a few periods;
- ``frequency_change``: the wave runs faster for a few periods (phase stays continuous);
- ``amplitude_change``: the wave grows or shrinks for a few periods;
- ``noise_burst``: the noise grows for a few periods;
- ``flat_line``: the sensor sticks at its last reading;
- ``missing_beat``: one cycle is skipped (the series stays at the baseline for a period);
- ``time_warp``: the wave slows down and catches up again within a few periods.

Used by ``benchmarks/detectors.py`` and the series test in ``assets_tests/test_detectors.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = (
    "spike",
    "level_shift",
    "frequency_change",
    "amplitude_change",
    "noise_burst",
    "flat_line",
    "missing_beat",
    "time_warp",
)
BASES = ("sines", "ecg", "sawtooth")


@dataclass(frozen=True)
class PlantedSeries:
    values: np.ndarray  # (n, 1) float64
    train_rows: int  # the normal prefix a detector fits
    event: tuple[int, int]  # rows [start, end) of the planted anomaly
    kind: str
    base: str
    period: float  # samples per cycle
    seed: int

    def labels(self) -> np.ndarray:
        out = np.zeros(len(self.values), dtype=np.int8)
        out[self.event[0] : self.event[1]] = 1
        return out


def _wave(base: str, phase: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cycle = phase % 1.0
    if base == "sines":
        a2, a3 = rng.uniform(0.3, 0.6), rng.uniform(0.1, 0.3)
        p2, p3 = rng.uniform(0, 2 * np.pi, 2)
        tau = 2 * np.pi * phase
        return np.sin(tau) + a2 * np.sin(2 * tau + p2) + a3 * np.sin(3 * tau + p3)
    if base == "ecg":  # P wave, QRS complex, T wave: Gaussian bumps at fixed points of the cycle
        bumps = ((0.15, 0.025, 0.15), (0.37, 0.010, -0.15), (0.40, 0.012, 1.2), (0.43, 0.010, -0.25), (0.7, 0.04, 0.3))
        return sum(h * np.exp(-0.5 * ((cycle - c) / w) ** 2) for c, w, h in bumps)
    if base == "sawtooth":
        return 2.0 * cycle - 1.0
    raise ValueError(f"base must be one of {BASES}, got {base!r}")


def planted_series(
    kind: str, seed: int, n: int = 4000, train_rows: int = 1600, base: str | None = None
) -> PlantedSeries:
    """One series of ``n`` rows with one anomaly of ``kind`` planted after ``train_rows``; the base
    wave is ``BASES[seed % 3]`` unless given. Everything else is drawn from ``seed``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    base = base or BASES[seed % len(BASES)]
    period = float(rng.uniform(40, 80))
    span = int(round(period * rng.uniform(2.0, 3.0)))  # rows an event lasts (a spike: one)
    start = int(rng.integers(train_rows + 2 * int(period), n - span - 2 * int(period)))
    t = np.arange(n, dtype=np.float64)
    inside = (t >= start) & (t < start + span)

    rate = np.full(n, 1.0 / period)  # cycles per row
    if kind == "frequency_change":
        rate[inside] *= rng.uniform(1.6, 2.0)
    elif kind == "time_warp":  # slows to about half speed and back; the lost phase is made up after
        u = (t[inside] - start) / span
        rate[inside] *= 1.0 - rng.uniform(0.45, 0.6) * np.sin(np.pi * u)
    elif kind == "missing_beat":
        span = int(round(period))
        inside = (t >= start) & (t < start + span)
    phase = np.concatenate([[0.0], np.cumsum(rate)[:-1]]) + rng.uniform(0, 1)
    wave = _wave(base, phase, rng)
    wave = (wave - wave[:train_rows].mean()) / wave[:train_rows].std()  # every base at unit scale

    amplitude = np.ones(n)
    if kind == "amplitude_change":
        amplitude[inside] = rng.choice([rng.uniform(1.8, 2.2), rng.uniform(0.25, 0.4)])
    noise = np.full(n, rng.uniform(0.05, 0.12))
    if kind == "noise_burst":
        noise[inside] *= rng.uniform(5.0, 7.0)
    drift = np.linspace(0.0, rng.uniform(-0.3, 0.3), n) + 0.05 * np.sin(2 * np.pi * t / rng.uniform(1500, 3000))

    values = amplitude * wave
    if kind == "missing_beat":
        values[inside] = np.median(wave[:train_rows])  # the baseline between beats
    values = values + drift + noise * rng.standard_normal(n)
    if kind == "spike":
        span = 1
        values[start] += rng.choice([-1, 1]) * rng.uniform(4.0, 6.0)
    elif kind == "level_shift":
        values[inside] += rng.choice([-1, 1]) * rng.uniform(1.0, 1.5)
    elif kind == "flat_line":
        values[inside] = values[start - 1]
    return PlantedSeries(values[:, None], train_rows, (start, start + span), kind, base, period, seed)


def suite(seeds: range | list[int] = range(10), **kw) -> list[PlantedSeries]:
    """Every kind for every seed (kinds vary fastest)."""
    return [planted_series(kind, seed, **kw) for seed in seeds for kind in KINDS]

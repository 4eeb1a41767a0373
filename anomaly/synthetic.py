"""Synthetic multivariate sensor data with labelled anomalies: the embedded default of `anomaly demo`.

Sensors are noisy mixtures of a few shared latent signals (a daily cycle, a faster machine cycle and a slow
AR(1) load), so they are correlated the way a real plant's sensors are, plus per-sensor slow drift. Anomalies
of six kinds are injected into the test part and labelled point by point in the `anomaly` column; the kind is
in `anomaly_kind` (a text column, so it is never taken for a feature).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

KINDS = ("spike", "level_shift", "drift", "stuck", "frequency", "decorrelation")


@dataclass(frozen=True)
class SyntheticSpec:
    n_sensors: int = 6
    n_points: int = 20_000
    interval_s: float = 60.0
    day_points: int = 288  # points per "day" cycle
    machine_period: int = 24
    noise: float = 0.05
    drift_per_point: float = 2e-6
    anomalies: int = 0  # number of injected anomalies (0 for a normal-only series)
    seed: int = 0  # noise, load and anomalies
    plant_seed: int = 0  # the sensors' structure (loadings, offsets, scales): same plant, same value
    start: float = 1_700_000_000.0


def _latents(n: int, spec: SyntheticSpec, rng: np.random.Generator, machine_scale: np.ndarray) -> np.ndarray:
    """Daily cycle, machine cycle and load. The machine cycle's speed wanders a little (so its phase is not
    locked to the clock and a frequency anomaly leaves no lasting trace), and `machine_scale` < 1 speeds it up."""
    t = np.arange(n, dtype=np.float64)
    daily = np.sin(2 * np.pi * t / spec.day_points)
    wander = np.zeros(n)
    kicks = rng.normal(0, 0.02, n)
    for i in range(1, n):
        wander[i] = 0.99 * wander[i - 1] + kicks[i]
    machine = np.sin(np.cumsum(2 * np.pi * (1 + wander) / (spec.machine_period * machine_scale)))
    load = np.zeros(n)
    eps = rng.normal(0, 0.1, n)
    for i in range(1, n):
        load[i] = 0.98 * load[i - 1] + eps[i]
    return np.stack([daily, machine, load], axis=1)


def generate(spec: SyntheticSpec) -> pd.DataFrame:
    """One series: timestamp, sensor_1..sensor_N, anomaly (0/1), anomaly_kind."""
    plant = np.random.default_rng(spec.plant_seed)
    n, k = spec.n_points, spec.n_sensors
    loadings = plant.uniform(-1.0, 1.0, (3, k))
    loadings[0] = np.abs(loadings[0]) + 0.3
    offsets = plant.uniform(10, 50, k)
    scales = plant.uniform(1, 5, k)
    drift = plant.uniform(-1, 1, k)
    rng = np.random.default_rng(spec.seed)
    machine_scale = np.ones(n)
    labels = np.zeros(n, np.int8)
    kinds = np.array([""] * n, dtype=object)
    events = _plan(spec, rng) if spec.anomalies else []
    for start, length, kind, _ in events:
        if kind == "frequency":
            machine_scale[start : start + length] = 0.45
    lat = _latents(n, spec, rng, machine_scale)
    clean = lat @ loadings + rng.normal(0, spec.noise, (n, k))
    clean += np.arange(n)[:, None] * spec.drift_per_point * drift
    values = clean.copy()
    for start, length, kind, sensor in events:
        sl = slice(start, start + length)
        if kind == "spike":
            values[sl, sensor] += rng.choice([-1, 1]) * rng.uniform(4, 7)
        elif kind == "level_shift":
            values[sl, sensor] += rng.choice([-1, 1]) * rng.uniform(1.5, 2.5)
        elif kind == "drift":
            values[sl, sensor] += np.linspace(0, rng.choice([-1, 1]) * 3.0, length)
        elif kind == "stuck":
            values[sl, sensor] = values[start, sensor]
        elif kind == "decorrelation":
            other = rng.normal(0, 1, length)
            values[sl, sensor] = np.mean(values[:, sensor]) + other
        labels[sl] = 1
        kinds[sl] = kind
    values = values * scales + offsets
    frame = pd.DataFrame(values.astype(np.float32), columns=[f"sensor_{i + 1}" for i in range(k)])
    frame.insert(0, "timestamp", _iso_times(spec.start + np.arange(n) * spec.interval_s))
    frame["anomaly"] = labels
    frame["anomaly_kind"] = kinds
    return frame


def _iso_times(seconds: np.ndarray) -> pd.Index:
    """ISO times (UTC, `Z`) of epoch seconds: whole seconds as `2023-11-14T22:13:20Z`, and with milliseconds
    (`...:20.100Z`) when an interval under a second or not a whole number of seconds makes any of them
    fractional; cut to whole seconds, 10 Hz readings would share each second's time, and reading them back
    would refuse the file. An interval that milliseconds cannot hold (`--interval 0.0015`) gets microseconds:
    cut to the millisecond, its steps alternated between 1 and 2 ms."""
    times = pd.to_datetime(seconds, unit="s", utc=True).round("us")
    if (times.microsecond == 0).all():
        return times.strftime("%Y-%m-%dT%H:%M:%SZ")
    if (times.microsecond % 1000 == 0).all():
        return times.strftime("%Y-%m-%dT%H:%M:%S.%f").str[:-3] + "Z"
    return times.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _fits(spec: SyntheticSpec, anomalies: int) -> bool:
    """Whether `anomalies` evenly spaced slots after the first 10 % are each longer than the longest anomaly (5
    machine periods, less one reading): `_plan` starts each at the same offset in its slot or later, and ends it before the
    slot's end or no later than that offset plus its length, so one ends before the next begins."""
    slot = (spec.n_points - spec.n_points // 10) // anomalies
    return slot >= spec.machine_period * 5


def max_anomalies(spec: SyntheticSpec) -> int:
    """The most anomalies `generate` can place in `spec.n_points` readings without one overlapping the next."""
    k = 0
    while _fits(spec, k + 1):
        k += 1
    return k


def _plan(spec: SyntheticSpec, rng: np.random.Generator) -> list[tuple[int, int, str, int]]:
    """Place anomalies in evenly spaced slots after the first 10 % of the series, cycling through KINDS."""
    if not _fits(spec, spec.anomalies):
        raise ValueError(
            f"{spec.anomalies} anomalies do not fit in {spec.n_points} readings: at most {max_anomalies(spec)}"
        )
    n = spec.n_points
    first = n // 10
    slot = (n - first) // spec.anomalies
    events = []
    for i in range(spec.anomalies):
        kind = KINDS[i % len(KINDS)]
        length = {"spike": 3}.get(kind, int(rng.integers(spec.machine_period * 2, spec.machine_period * 5)))
        start = first + i * slot + int(rng.integers(slot // 4, max(slot // 4 + 1, slot - length - 1)))
        events.append((start, min(length, n - start), kind, int(rng.integers(0, spec.n_sensors))))
    return events


def generate_keys(spec: SyntheticSpec, n_keys: int, key_column: str = "sensor_id") -> pd.DataFrame:
    """Several entities in one frame (a key column), interleaved in timestamp order, each its own seed."""
    frames = []
    for i in range(n_keys):
        f = generate(
            SyntheticSpec(**{**spec.__dict__, "seed": spec.seed * 1000 + i, "plant_seed": spec.plant_seed})
        )
        f.insert(1, key_column, f"unit-{i:03d}")
        frames.append(f)
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values(["timestamp", key_column], kind="stable").reset_index(drop=True)

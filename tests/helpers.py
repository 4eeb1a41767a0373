"""Small helpers shared by tests."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from anomaly.data import Series


def chunks(n: int, sizes: list[int]) -> list[tuple[int, int]]:
    """Cut range(n) into consecutive pieces cycling through `sizes`."""
    out, i, k = [], 0, 0
    while i < n:
        step = sizes[k % len(sizes)]
        out.append((i, min(n, i + step)))
        i += step
        k += 1
    return out


def make_series(key: str, n: int, features: int, seed: int = 0, start: float = 0.0) -> Series:
    rng = np.random.default_rng(seed)
    return Series(
        key, start + np.arange(n, dtype=np.float64), rng.normal(0, 1, (n, features)).astype(np.float32)
    )


class Record(NamedTuple):
    """The fields of a Kafka ConsumerRecord that the decoder reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def split_by_time(tmp_path, n_keys: int = 2):
    """A keyed file and the same rows as two files cut at a time (monthly exports of the same sensors)."""
    from anomaly.synthetic import SyntheticSpec, generate_keys

    frame = generate_keys(SyntheticSpec(n_sensors=4, n_points=300, anomalies=2, seed=3), n_keys)
    whole, early, late = (tmp_path / f"{n}.csv" for n in ("whole", "early", "late"))
    frame.to_csv(whole, index=False)
    cut = frame["timestamp"].iloc[len(frame) // 2]
    frame[frame["timestamp"] < cut].to_csv(early, index=False)
    frame[frame["timestamp"] >= cut].to_csv(late, index=False)
    return whole, early, late


class NoRoomFor:
    """numpy for anomaly.engine.state, whose ``zeros`` fails (MemoryError, as numpy's own allocation failure)
    at the `fail_at`-th call asking for `rows` rows or more: a store growth that does not fit in memory."""

    def __init__(self, rows: int, fail_at: int = 1) -> None:
        self.rows, self.fail_at, self.calls = rows, fail_at, 0

    def __getattr__(self, name: str):
        return getattr(np, name)

    def zeros(self, shape, dtype=float):
        if shape[0] >= self.rows:
            self.calls += 1
            if self.calls >= self.fail_at:
                raise MemoryError(f"Unable to allocate an array with shape {shape}")
        return np.zeros(shape, dtype)

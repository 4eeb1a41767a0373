"""Standardization and windowing: :class:`Scaler` is the one place raw float64 values become the model's
float32 (see the numeric contract in :mod:`anomaly.data`), and :func:`window_chain` cuts them into windows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anomaly.errors import DataError


@dataclass(frozen=True)
class Scaler:
    """Standardization fitted on training data only; constant columns get scale 1."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray) -> Scaler:
        """Mean and std in float64 (stored as float32). In float32 the mean of a constant float32 column is off
        by rounding, so its std came out at ~1e-7 of its level instead of 0: a constant column got a scale of
        1e-7 instead of 1, and any later change scored as millions of sigma."""
        finite = values[np.isfinite(values).all(axis=1)].astype(np.float64)
        if len(finite) == 0:
            raise DataError("no finite rows to fit the scaler on")
        mean = finite.mean(axis=0)
        std = finite.std(axis=0)
        std[std < 1e-8] = 1.0
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def transform(self, values: np.ndarray) -> np.ndarray:
        return ((values - self.mean) / self.scale).astype(np.float32)

    def to_json(self) -> dict:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> Scaler:
        return cls(np.asarray(d["mean"], np.float32), np.asarray(d["scale"], np.float32))


def window_chain(values: np.ndarray, window: int, offset: int = 0) -> np.ndarray:
    """Consecutive non-overlapping windows starting at `offset`: shape (n_windows, window, F)."""
    usable = (len(values) - offset) // window
    if usable <= 0:
        return np.zeros((0, window, values.shape[1]), np.float32)
    return values[offset : offset + usable * window].reshape(usable, window, values.shape[1])

"""Standardization and windowing: :class:`Scaler` is the one place raw float64 values become the model's
float32 (see the numeric contract in :mod:`anomaly.data`), and :func:`window_chain` cuts them into windows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anomaly.errors import DataError

# The largest error, in standard deviations, that storing a feature's mean as float32 may make (:meth:`Scaler.fit`).
MEAN_ROUNDING = 1e-3


@dataclass(frozen=True)
class Scaler:
    """Standardization fitted on training data only; constant columns get scale 1."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray) -> Scaler:
        """Mean and std in float64 (the std stored as float32, the mean as float32 when that rounds it by no more
        than MEAN_ROUNDING of a standard deviation, else as float64). In float32 the mean of a constant float32 column is off
        by rounding, so its std came out at ~1e-7 of its level instead of 0: a constant column got a scale of
        1e-7 instead of 1, and any later change scored as millions of sigma."""
        finite = values[np.isfinite(values).all(axis=1)].astype(np.float64)
        if len(finite) == 0:
            raise DataError("no finite rows to fit the scaler on")
        mean = finite.mean(axis=0)
        std = finite.std(axis=0)
        std[std < 1e-8] = 1.0
        # The mean is kept as the float32 nearest to it (as bundles have always stored it) unless that is off by
        # more than MEAN_ROUNDING of a standard deviation: a sensor at 1e9 + 20 with a spread of 1.5 had its mean
        # stored as 1e9 (float32 steps of 64 there), so every standardized reading sat 13.6 deviations high and
        # training ended at a validation loss of 78.5 (1.21 for the same readings less 1e9). Such a feature keeps
        # its float64 mean; every other keeps exactly the value, and so the scores, it had.
        rounded = mean.astype(np.float32).astype(np.float64)
        mean = np.where(np.abs(rounded - mean) <= MEAN_ROUNDING * std, rounded, mean)
        return cls(mean, std.astype(np.float32))

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Standardized values (float32). Readings in float32 (NASA's loader) are standardized in float32, as they
        were when every mean was stored as float32: the float64 means (session 24) made that float64 arithmetic,
        which moved SMAP's scores (own F1 0.564 -> 0.565); float64 readings (CSV files) keep float64 arithmetic."""
        mean = self.mean.astype(np.float32) if values.dtype == np.float32 else self.mean
        return ((values - mean) / self.scale).astype(np.float32)

    def to_json(self) -> dict:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> Scaler:
        return cls(np.asarray(d["mean"], np.float64), np.asarray(d["scale"], np.float32))


def window_chain(values: np.ndarray, window: int, offset: int = 0) -> np.ndarray:
    """Consecutive non-overlapping windows starting at `offset`: shape (n_windows, window, F)."""
    usable = (len(values) - offset) // window
    if usable <= 0:
        return np.zeros((0, window, values.shape[1]), np.float32)
    return values[offset : offset + usable * window].reshape(usable, window, values.shape[1])

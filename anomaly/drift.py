"""Drift of live scores against the calibration distribution: population stability index over a sliding window.

The reference is the model's own calibration (``calibration.point_error_quantiles``): the validation point
errors at the quantiles 0.5, 0.9, 0.95, 0.99 and 0.999, scored as a stream exactly as the engine scores live
data. Those quantiles cut the error axis into bins whose expected shares are known by construction
(0.5, 0.4, 0.05, 0.04, 0.009, 0.001). Live point errors (unsmoothed mean squared error over the targets: the
forecast error of a forecast model, the reconstruction error of one scored by window; the number the calibration
is made of) fall into the same bins over a sliding window of the last ``window``
points of all keys, and

    PSI = sum over bins of (live share - expected share) * ln(live share / expected share)

with shares floored at 1e-4. Rules of thumb: below 0.1 stable, 0.1-0.25 moderate shift, above 0.25 the model
no longer describes the data (the ``ModelDrift`` alert). Pure numpy: the metrics module exports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

FLOOR = 1e-4
DEFAULT_WINDOW = 10_000
DEFAULT_MIN_POINTS = 200


def reference_bins(calibration: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """(edges, expected shares) from a bundle's calibration; None when it has no usable quantiles."""
    quantiles = calibration.get("point_error_quantiles")
    if not isinstance(quantiles, Mapping) or not quantiles:
        return None
    pairs = sorted((float(q), float(v)) for q, v in quantiles.items())
    levels = np.array([q for q, _ in pairs])
    edges = np.array([v for _, v in pairs])
    if not (np.all(np.diff(levels) > 0) and np.all(np.diff(edges) >= 0) and 0 < levels[0] and levels[-1] < 1):
        return None
    # Tied quantiles (a calibration with a point mass: a model trained on a constant stream) give one edge for
    # the value, with the share of the highest level at it; an error equal to an edge counts in the bin below
    # (`update`), where the calibration put that mass. Without ties nothing changes.
    last_of_value = np.append(np.diff(edges) > 0, True)
    levels, edges = levels[last_of_value], edges[last_of_value]
    expected = np.diff(np.concatenate([[0.0], levels, [1.0]]))
    return edges, expected


def psi(counts: np.ndarray, expected: np.ndarray) -> float:
    """Population stability index of observed bin counts against expected shares."""
    total = counts.sum()
    if total <= 0:
        return float("nan")
    live = np.maximum(counts / total, FLOOR)
    ref = np.maximum(expected, FLOOR)
    return float(np.sum((live - ref) * np.log(live / ref)))


class DriftMonitor:
    """PSI of the last `window` point errors against one model's calibration. `update` costs O(new points)."""

    def __init__(
        self,
        edges: np.ndarray,
        expected: np.ndarray,
        window: int = DEFAULT_WINDOW,
        min_points: int = DEFAULT_MIN_POINTS,
    ) -> None:
        if window < 1 or not 1 <= min_points <= window:
            raise ValueError(f"need window >= 1 and 1 <= min_points <= window, got {window}, {min_points}")
        if len(expected) != len(edges) + 1:
            raise ValueError(f"{len(edges)} edges need {len(edges) + 1} expected shares, got {len(expected)}")
        self.edges = np.asarray(edges, np.float64)
        self.expected = np.asarray(expected, np.float64)
        self.window = window
        self.min_points = min_points
        self.ring = np.zeros(window, np.int8)
        self.counts = np.zeros(len(expected), np.int64)
        self.filled = 0
        self.pos = 0

    @classmethod
    def for_calibration(cls, calibration: Mapping[str, Any], **kwargs: Any) -> DriftMonitor | None:
        ref = reference_bins(calibration)
        return None if ref is None else cls(*ref, **kwargs)

    def update(self, errors: np.ndarray) -> None:
        """Add point errors (any shape; non-finite values are ignored), oldest leaving first."""
        e = np.asarray(errors, np.float64).reshape(-1)
        e = e[np.isfinite(e)]
        if not len(e):
            return
        if len(e) >= self.window:
            e = e[-self.window :]
        bins = np.searchsorted(self.edges, e, side="left").astype(np.int8)  # edge values count below
        n, w = len(bins), self.window
        idx = (self.pos + np.arange(n)) % w
        if self.filled == w:
            self.counts -= np.bincount(self.ring[idx], minlength=len(self.counts))
        else:
            overwritten = idx[idx < self.filled]  # only once the ring wraps within this update
            self.counts -= np.bincount(self.ring[overwritten], minlength=len(self.counts))
        self.ring[idx] = bins
        self.counts += np.bincount(bins, minlength=len(self.counts))
        self.pos = (self.pos + n) % w
        self.filled = min(w, self.filled + n)

    @property
    def ready(self) -> bool:
        return self.filled >= self.min_points

    def value(self) -> float | None:
        """PSI of the window, or None while fewer than `min_points` points have been seen."""
        return psi(self.counts, self.expected) if self.ready else None

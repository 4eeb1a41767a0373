"""Drift: PSI of live point errors against the calibration quantiles, over a sliding window; its metric."""

from __future__ import annotations

import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from anomaly.drift import DriftMonitor, psi, reference_bins
from anomaly.engine.types import EngineOutput, ScoredWindow
from anomaly.metrics import PipelineMetrics
from anomaly.runner import Batch

LEVELS = (0.5, 0.9, 0.95, 0.99, 0.999)


def calibration_of(sample: np.ndarray) -> dict:
    return {"point_error_quantiles": {str(q): float(np.quantile(sample, q)) for q in LEVELS}}


def test_reference_bins_have_the_quantile_shares() -> None:
    edges, expected = reference_bins({"point_error_quantiles": {"0.9": 2.0, "0.5": 1.0, "0.999": 4.0}})
    assert edges.tolist() == [1.0, 2.0, 4.0]
    assert np.allclose(expected, [0.5, 0.4, 0.099, 0.001])
    assert reference_bins({}) is None
    assert reference_bins({"point_error_quantiles": {"0.5": 2.0, "0.9": 1.0}}) is None  # not monotone


def test_psi_is_the_textbook_formula() -> None:
    counts = np.array([30, 50, 20])
    expected = np.array([0.5, 0.3, 0.2])
    live = counts / 100
    assert psi(counts, expected) == pytest.approx(float(np.sum((live - expected) * np.log(live / expected))))
    assert math.isnan(psi(np.zeros(3, int), expected))


def test_same_distribution_is_stable_and_a_shift_is_drift() -> None:
    rng = np.random.default_rng(0)
    calibration = calibration_of(rng.exponential(1.0, 200_000))
    same = DriftMonitor.for_calibration(calibration)
    same.update(rng.exponential(1.0, 10_000))
    shifted = DriftMonitor.for_calibration(calibration)
    shifted.update(rng.exponential(2.0, 10_000))  # errors twice as large: the model no longer fits
    assert same.value() < 0.01
    assert shifted.value() > 0.25


def test_sliding_window_counts_equal_the_last_points_fed_in_any_chunks() -> None:
    rng = np.random.default_rng(1)
    errors = rng.exponential(1.0, 5_000)
    edges = np.quantile(errors, LEVELS)
    expected = np.diff(np.concatenate([[0.0], LEVELS, [1.0]]))
    mon = DriftMonitor(edges, expected, window=777, min_points=10)
    lo = 0
    for size in [1, 5, 300, 776, 777, 2000, 3, 1000]:
        mon.update(errors[lo : lo + size])
        lo += size
        seen = errors[:lo][-777:]
        want = np.bincount(np.searchsorted(edges, seen, side="left"), minlength=6)
        assert mon.counts.tolist() == want.tolist()
        assert mon.filled == len(seen)
    assert mon.value() == psi(mon.counts, expected)


def test_no_value_before_min_points_and_non_finite_errors_are_ignored() -> None:
    mon = DriftMonitor(np.array([1.0]), np.array([0.5, 0.5]), window=100, min_points=10)
    mon.update(np.array([0.5] * 9 + [np.nan, np.inf]))
    assert mon.value() is None
    mon.update(np.array([2.0]))
    assert mon.counts.tolist() == [9, 1]
    assert mon.value() == psi(np.array([9, 1]), np.array([0.5, 0.5]))


class Model:
    def __init__(self, version: str, calibration: dict) -> None:
        self.version, self.calibration, self.features, self.meta = version, calibration, ["a"], {}


class Engine:
    active_alerts = 0
    counters: dict = {}

    def __len__(self) -> int:
        return 1


def windows(errors: np.ndarray, width: int = 8) -> EngineOutput:
    out = EngineOutput()
    for lo in range(0, len(errors), width):
        e = errors[lo : lo + width].astype(np.float32)
        n = len(e)
        out.windows.append(
            ScoredWindow("k", np.arange(n, dtype=np.float64), e, e, e, e > 9, e > 9, np.ones(1, np.float32))
        )
    return out


def test_metric_reports_psi_of_the_model_in_use_and_drops_the_old_version() -> None:
    rng = np.random.default_rng(2)
    calibration = calibration_of(rng.exponential(1.0, 100_000))
    metrics = PipelineMetrics(CollectorRegistry(), drift_window=1000)
    metrics.model_loaded(Model("v1", calibration))
    live = rng.exponential(3.0, 1600).astype(np.float32)
    metrics.observe(windows(live), Batch([]), Engine(), 0.0)
    mon = DriftMonitor.for_calibration(calibration, window=1000)
    mon.update(live)
    got = metrics.registry.get_sample_value("anomaly_model_drift_psi", {"version": "v1"})
    assert got == mon.value() and got > 0.25
    # the same model loaded again (SIGHUP): its window and series stay (they were emptied, and ModelDrift's `for`
    # started again)
    metrics.model_loaded(Model("v1", calibration))
    metrics.observe(windows(live[:8]), Batch([]), Engine(), 0.0)
    mon.update(live[:8])
    assert metrics.registry.get_sample_value("anomaly_model_drift_psi", {"version": "v1"}) == mon.value()
    metrics.model_loaded(Model("v2", calibration))  # a promoted model: a new window, the old series goes
    assert metrics.registry.get_sample_value("anomaly_model_drift_psi", {"version": "v1"}) is None
    metrics.observe(windows(live[:100]), Batch([]), Engine(), 0.0)
    assert metrics.registry.get_sample_value("anomaly_model_drift_psi", {"version": "v2"}) is None  # < 200


def test_a_constant_stream_matching_its_constant_calibration_is_stable() -> None:
    """A model trained on a constant stream has every calibration quantile equal; the same stream live put
    each error (equal to the edges) in the top bin, expected 0.1 %: PSI 12, ModelDrift on a healthy sensor."""
    v = float(np.float32(0.0007984566))
    calibration = {"point_error_quantiles": {str(q): v for q in LEVELS}}
    edges, expected = reference_bins(calibration)
    assert edges.tolist() == [v] and np.allclose(expected, [0.999, 0.001])
    same = DriftMonitor.for_calibration(calibration)
    same.update(np.full(1000, v))
    assert same.value() < 0.01
    above = DriftMonitor.for_calibration(calibration)
    above.update(np.full(1000, 2 * v))  # the constant stream's errors doubled: drift
    assert above.value() > 0.25

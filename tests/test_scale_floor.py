"""Scale and score-unit floors: a feature that is constant in training cannot score millions of sigma."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from anomaly.baselines import baseline_bundle
from anomaly.commands.model_cmds import describe_bundle
from anomaly.config import ConfigError, EngineConfig, ModelConfig, TrainConfig
from anomaly.data import Scaler, Series
from anomaly.engine import Engine, Event
from anomaly.training import train

SMALL = TrainConfig(epochs=2, batch_size=16, device="cpu", seed=0)


def test_a_constant_float32_column_gets_scale_one():
    """NASA's A-1 telemetry: 2880 readings of float32 0.999. A float32 mean is off by rounding, which made its
    std 1.2e-7 (not below the 1e-8 test for constants): scale 1.2e-7, and a later 0.001 change scored 8000
    sigma. In float64 the column is exactly constant and gets the documented scale 1."""
    ramp = np.linspace(-1.0, 1.0, 2880).astype(np.float32)
    values = np.column_stack([np.full(2880, 0.999, np.float32), ramp])
    scaler = Scaler.fit(values)
    assert scaler.scale[0] == 1.0 and scaler.mean[0] == np.float32(0.999)
    assert scaler.scale[1] == np.float32(ramp.astype(np.float64).std())
    assert scaler.mean[1] == np.float32(ramp.astype(np.float64).mean())


@pytest.fixture(scope="module")
def flat_target():
    """A forecast model scoring a sensor that never moved in training (the other feature is context)."""
    n = 480
    t = np.arange(n, dtype=np.float64)
    values = np.column_stack([np.full(n, -1.0), np.sin(t / 7.0)])
    series = [Series("k", t, values)]
    cfg = ModelConfig(window=8, hidden_size=8, targets=("flat",))
    return train(series, ["flat", "context"], cfg, SMALL).bundle


def test_a_constant_target_is_scored_in_units_of_the_floor(flat_target):
    """The baselines' validation errors are exactly 0 (the model's nearly), so the calibrated unit (reference
    error) is the floor, 0.01 squared standardized units; before the floor it was 1e-8 (the model's ~1e-6 once
    trained), and a move of 2 raw units scored 4e8 (4e6)."""
    cal = flat_target.calibration
    assert flat_target.reference_error == max(cal["point_error_quantiles"]["0.99"], 0.01)
    assert cal["reference_floor"] == 0.01 and flat_target.feature_reference_error[0] >= 0.01
    t = np.arange(480, 560, dtype=np.float64)
    values = np.column_stack([np.where(t >= 520, 1.0, -1.0), np.sin(t / 7.0)])
    for kind in ("zscore", "pca"):
        b = baseline_bundle(flat_target, kind)
        assert b.reference_error == 0.01 and b.calibration["reference_floor"] == 0.01
        assert b.feature_reference_error[0] == 0.01 and b.calibration["feature_flat"] == [1, 0]
        out = Engine(b, EngineConfig(threshold="static", smoothing=1.0)).process([Event("k", t, values)])
        errors = np.concatenate([w.errors for w in out.windows])
        scores = np.concatenate([w.scores for w in out.windows])
        np.testing.assert_allclose(scores, errors / 0.01, rtol=1e-6)
        assert scores.max() == pytest.approx(4.0 / 0.01, rel=1e-6)  # a 2-unit move of a scale-1 feature


def test_the_floor_does_not_bind_on_a_varying_signal(bundle):
    """A model of signals with real variation keeps its measured unit (the 0.99 quantile of its errors)."""
    cal = bundle.calibration
    assert cal["reference_error"] == cal["point_error_quantiles"]["0.99"] > 0.01
    assert cal["feature_flat"] == [0, 0, 0, 0] and cal["reference_floor"] == 1e-8


def test_a_tiny_unit_of_a_varying_target_is_kept():
    """PCA reconstructs a feature that is an exact multiple of another almost perfectly: its unit is tiny but
    measured, so it is not floored (a floor there would make the key 1e4 times less sensitive)."""
    n = 480
    t = np.arange(n, dtype=np.float64)
    a = np.sin(t / 7.0) + 0.1 * np.cos(t / 3.0)
    series = [Series("k", t, np.column_stack([a, 2.0 * a]))]
    b = train(series, ["a", "b"], ModelConfig(window=8, hidden_size=8), SMALL).bundle
    pca = baseline_bundle(b, "pca")
    assert pca.reference_error < 1e-6 and pca.calibration["feature_flat"] == [0, 0]


def test_floor_zero_keeps_the_old_unit_and_bad_values_are_one_line(flat_target):
    n = 480
    t = np.arange(n, dtype=np.float64)
    series = [Series("k", t, np.column_stack([np.full(n, -1.0), np.sin(t / 7.0)]))]
    cfg = ModelConfig(window=8, hidden_size=8, targets=("flat",))
    off = train(series, ["flat", "context"], cfg, dataclasses.replace(SMALL, reference_floor=0.0)).bundle
    assert off.calibration["reference_floor"] == 1e-8
    assert baseline_bundle(off, "zscore").reference_error == 1e-8  # the old unit: 2 raw units scored 4e8
    with pytest.raises(ConfigError, match="train.reference_floor"):
        TrainConfig(reference_floor=-1.0)


def test_inspect_names_the_features_constant_in_training(flat_target, bundle):
    rows = dict(describe_bundle(flat_target.metadata()))
    assert rows["calibration"].endswith("; constant in training (scale 1 raw unit): flat")
    assert "constant in training" not in dict(describe_bundle(bundle.metadata()))["calibration"]


def test_a_mean_that_float32_cannot_hold_is_kept_in_float64() -> None:
    """A sensor at 1e9 + 20 with a spread of 2: its mean was stored as float32, 1e9 (steps of 64 there), so every
    standardized reading sat 10 deviations high (training on such a feature ended at a validation loss of 78.5
    against 1.21 for the same readings less 1e9). A mean float32 holds to within 1e-3 deviations keeps the value it
    had, so the standardized values, and every score, of such data do not move."""
    import numpy as np

    from anomaly.data import Scaler

    rng = np.random.default_rng(0)
    big = 1e9 + 20 + 2 * rng.standard_normal(5000)
    usual = 90 + 0.5 * rng.standard_normal(5000)
    values = np.column_stack([big, usual])
    s = Scaler.fit(values)
    mean = values.mean(axis=0)
    assert s.mean.tolist() == [mean[0], float(np.float32(mean[1]))]
    z = s.transform(values).astype(np.float64)
    assert abs(z[:, 0].mean()) < 1e-4 and abs(z[:, 1].mean()) < 1e-4  # was 10.04 for the first
    back = Scaler.from_json(s.to_json())
    assert back.mean.tolist() == s.mean.tolist() and back.scale.tolist() == s.scale.tolist()


def test_float32_readings_are_standardized_in_float32_as_before_the_float64_means() -> None:
    """Keeping means in float64 (above) made the standardization of float32 readings (NASA's loader) float64
    arithmetic: values rounded differently, the models trained a hair differently and SMAP's scores moved (own F1
    0.564 -> 0.565, 55 -> 57 events). Float32 readings are standardized in float32, bit for bit as with the
    float32 means; float64 readings keep the float64 mean."""
    rng = np.random.default_rng(1)
    values = rng.lognormal(0, 2, (4000, 3)).astype(np.float32)  # wide: x - mean not exact in float32
    s = Scaler.fit(values)
    old = Scaler(s.mean.astype(np.float32), s.scale)  # the means as bundles stored them before session 24
    assert np.array_equal(s.transform(values), old.transform(values))
    in_float64 = ((values - s.mean) / s.scale).astype(np.float32)
    assert not np.array_equal(in_float64, old.transform(values))  # the arithmetic this keeps away from
    wide = values.astype(np.float64)
    assert np.array_equal(s.transform(wide), ((wide - s.mean) / s.scale).astype(np.float32))

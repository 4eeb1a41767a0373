"""Baselines run through the unchanged engine; their errors are what they claim to be."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomaly.baselines import baseline_bundle, fit_pca
from anomaly.bundle import load_bundle, save_bundle
from anomaly.config import EngineConfig
from anomaly.engine import Engine, Event


def run(bundle, series, config=EngineConfig()):
    out = Engine(bundle, config).process([Event(series.key, series.timestamps, series.values)])
    return out.windows


def test_zscore_error_is_the_mean_squared_z_score(bundle, test_series):
    base = baseline_bundle(bundle, "zscore")
    windows = run(base, test_series)
    errors = np.concatenate([w.errors for w in windows])
    n = len(errors)
    z = (test_series.values[:n].astype(np.float64) - bundle.scaler.mean) / bundle.scaler.scale
    np.testing.assert_allclose(errors, (z**2).mean(axis=1), rtol=1e-5, atol=1e-6)
    ref = base.reference_error
    assert ref != bundle.reference_error  # calibrated on its own errors, not the model's
    first = windows[0].scores
    alpha = EngineConfig().smoothing
    assert first[0] == pytest.approx(errors[0] / ref, rel=1e-5)  # the EWMA starts at the first raw score
    assert first[1] == pytest.approx(alpha * errors[1] / ref + (1 - alpha) * first[0], rel=1e-5)


def test_pca_reconstruction_keeps_the_leading_components():
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(500, 1))
    rows = np.hstack([latent, 2 * latent, -latent]) + rng.normal(scale=0.01, size=(500, 3))
    center, components, k = fit_pca(rows)
    assert k == 1
    v = components[:, 0]
    assert abs(abs(v @ np.array([1, 2, -1]) / np.sqrt(6)) - 1) < 1e-3
    assert np.count_nonzero(components[:, 1:]) == 0
    assert fit_pca(rows[:, :1])[2] == 0  # one feature: no component, the baseline equals zscore


def test_pca_baseline_scores_through_the_engine_and_round_trips(bundle, test_series, tmp_path):
    base = baseline_bundle(bundle, "pca")
    windows = run(base, test_series)
    errors = np.concatenate([w.errors for w in windows])
    n = len(errors)
    p = bundle.calibration["baselines"]["pca"]
    z = (test_series.values[:n].astype(np.float64) - bundle.scaler.mean) / bundle.scaler.scale
    c, v = np.asarray(p["center"]), np.asarray(p["components"])
    recon = (z - c) @ v @ v.T + c
    np.testing.assert_allclose(errors, ((recon - z) ** 2).mean(axis=1), rtol=1e-4, atol=1e-5)
    loaded = load_bundle(save_bundle(base, tmp_path / "pca.pt"))
    assert loaded.kind == "pca"
    again = np.concatenate([w.scores for w in run(loaded, test_series)])
    assert np.array_equal(again, np.concatenate([w.scores for w in windows]))


def test_baseline_state_carry_matches_one_call(bundle, test_series):
    base = baseline_bundle(bundle, "zscore")
    whole = np.concatenate([w.scores for w in run(base, test_series)])
    engine = Engine(base, EngineConfig())
    parts = []
    for lo in range(0, len(test_series), 37):
        hi = lo + 37
        out = engine.process(
            [Event(test_series.key, test_series.timestamps[lo:hi], test_series.values[lo:hi])]
        )
        parts += [w.scores for w in out.windows]
    assert np.array_equal(whole, np.concatenate(parts))
    assert torch.equal(base.model(torch.ones(1, base.window, 4))[0], torch.zeros(1, base.window, 4))


def test_baselines_score_each_reading_on_its_own(bundle, test_series):
    """So the engine may schedule them like the model (whole windows or reading by reading)."""
    base = baseline_bundle(bundle, "pca")
    assert base.arch.window == bundle.arch.window and base.arch.hidden_size == 1
    z = torch.from_numpy(bundle.scaler.transform(test_series.values[: 2 * base.window]))[None]
    whole, _ = base.model(z)
    piece, _ = base.model(z[:, 3:8], reconstruct=False)
    torch.testing.assert_close(piece, whole[:, 3:8], rtol=1e-6, atol=1e-6)


def test_baselines_follow_the_models_schedule(bundle, window_bundle, test_series):
    """A forecast model is scored on arrival, so are its baselines; a window model's baselines wait for windows."""
    s = test_series
    for model, on_arrival in ((bundle, True), (window_bundle, False)):
        base = baseline_bundle(model, "zscore")
        windows = run(base, s)
        decided = np.concatenate([w.decided_at for w in windows])
        ts = np.concatenate([w.timestamps for w in windows])
        assert np.array_equal(decided, ts) == on_arrival
        assert np.all(decided >= ts)


def test_a_baseline_gets_the_training_datas_statistics_so_the_stuck_sensor_rule_applies_to_it_too(bundle):
    assert bundle.calibration["feature_max_run"]  # measured at training time on the data
    for kind in ("zscore", "pca"):
        base = baseline_bundle(bundle, kind)
        for key in ("feature_distinct", "feature_wander", "feature_max_run"):
            assert base.calibration[key] == bundle.calibration[key]
        assert base.reference_error == bundle.calibration["baselines"][kind]["calibration"]["reference_error"]
        model_limit = Engine(bundle, EngineConfig()).stuck_limit
        base_limit = Engine(base, EngineConfig()).stuck_limit
        assert model_limit is not None and base_limit is not None
        assert np.array_equal(base_limit, model_limit)

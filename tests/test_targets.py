"""model.targets: the features whose error is scored; the others are context inputs the model reads only."""

from __future__ import annotations

import contextlib
import dataclasses
import json

import numpy as np
import pytest
import torch

from anomaly.baselines import baseline_bundle
from anomaly.bundle import load_bundle, save_bundle
from anomaly.config import ConfigError, DataConfig, EngineConfig, ModelConfig, PipelineConfig, TrainConfig
from anomaly.data import Series, load_series
from anomaly.engine import Engine, Event
from anomaly.errors import DataError
from anomaly.model import Architecture, LSTMAutoencoder, ModelOutput, reading_errors
from anomaly.training import _run_batch, train

SMALL = TrainConfig(epochs=2, batch_size=16, device="cpu", seed=0)


@pytest.fixture(scope="module")
def targeted(train_csv):
    """A forecast model scoring sensor_1 and sensor_3 only; sensor_2 and sensor_4 are context inputs."""
    series, feats = load_series([train_csv], DataConfig())
    model_cfg = ModelConfig(window=8, hidden_size=16, targets=("sensor_3", "sensor_1"))
    return train(series, feats, model_cfg, SMALL).bundle


def engine_windows(bundle, series, config=EngineConfig(threshold="static")):
    return Engine(bundle, config).process([Event(series.key, series.timestamps, series.values)]).windows


def test_targets_are_recorded_and_round_trip(targeted, tmp_path):
    assert targeted.features == ["sensor_1", "sensor_2", "sensor_3", "sensor_4"]
    assert targeted.arch.targets == (0, 2) and targeted.targets == ["sensor_1", "sensor_3"]
    loaded = load_bundle(save_bundle(targeted, tmp_path / "t.pt"))
    assert loaded.arch == targeted.arch and loaded.metadata()["targets"] == ["sensor_1", "sensor_3"]
    assert loaded.metadata()["architecture"]["targets"] == [0, 2]
    for kind in ("zscore", "pca"):  # the baselines score the same targets
        assert baseline_bundle(loaded, kind).arch.targets == (0, 2)


def test_all_features_keep_the_old_metadata(bundle):
    """No targets: every feature is scored and the architecture JSON is what bundles always carried."""
    assert bundle.arch.targets is None and bundle.targets == bundle.features
    assert "targets" not in bundle.arch.to_json()
    every = Architecture(3, 8, targets=[2, 0, 1])
    assert every.targets is None and every == Architecture(3, 8)
    with pytest.raises(ValueError, match="targets must be distinct feature indices"):
        Architecture(3, 8, targets=[3])


def test_engine_scores_the_mean_error_of_the_targets(targeted, test_csv):
    series, _ = load_series([test_csv], DataConfig(), targeted.features)
    s = series[0]
    windows = engine_windows(targeted, s)
    errors = np.concatenate([w.errors for w in windows])
    x = torch.from_numpy(targeted.scaler.transform(s.values)[: len(errors)]).unsqueeze(0)
    with torch.no_grad():
        out, _ = targeted.model(x, reconstruct=False)
    by_hand = (out.forecast[0] - x[0]).pow(2)[:, [0, 2]].mean(dim=1).numpy()
    np.testing.assert_allclose(errors, by_hand, rtol=1e-5, atol=1e-7)
    z = targeted.scaler.transform(s.values)[: len(errors)].astype(np.float64)
    zs = np.concatenate([w.errors for w in engine_windows(baseline_bundle(targeted, "zscore"), s)])
    np.testing.assert_allclose(zs, (z[:, [0, 2]] ** 2).mean(axis=1), rtol=1e-5, atol=1e-6)


def test_context_spikes_and_frozen_context_do_not_alert(targeted):
    """A z-score baseline on targets: a 50-sigma spike and a 200-reading freeze of a context feature raise
    nothing, the same spike on a target alerts, and an alert names target features only."""
    base = baseline_bundle(targeted, "zscore")
    mean, scale = targeted.scaler.mean, targeted.scaler.scale
    rng = np.random.default_rng(3)
    n = 600
    values = (mean + scale * rng.normal(0, 0.3, (n, 4))).astype(np.float32)
    values[300, 1] = mean[1] + 50 * scale[1]  # context spike
    values[350:550, 3] = values[350, 3]  # context frozen
    quiet = Series("k", np.arange(n, dtype=np.float64), values)
    cfg = EngineConfig(threshold="static", stuck_min_run=8)
    assert not np.concatenate([w.anomalous for w in engine_windows(base, quiet, cfg)]).any()
    loud = values.copy()
    loud[300, 2] = mean[2] + 50 * scale[2]  # the same spike on a target
    out = Engine(base, cfg).process([Event("k", quiet.timestamps, loud)])
    assert np.concatenate([w.anomalous for w in out.windows])[300]
    assert out.alerts and {f["feature"] for a in out.alerts for f in a.top_features} <= {
        "sensor_3",
        "sensor_1",
    }


def test_loss_ignores_context_features():
    """The heads' rows that predict context features get no gradient: the model is judged on targets only."""
    torch.manual_seed(0)
    model = LSTMAutoencoder(Architecture(3, 4, hidden_size=5, forecast=True, targets=(1,)))
    batch = torch.randn(2, 3, 4, 3)  # (B, segment windows, window, F)
    loss = _run_batch(model, batch, contextlib.nullcontext)
    loss.backward()
    for head in (model.head, model.forecaster):
        assert head.weight.grad[[0, 2]].abs().sum() == 0 and head.weight.grad[1].abs().sum() > 0
    err = reading_errors(ModelOutput(None, torch.ones(1, 2, 3)), torch.zeros(1, 2, 3), (1,))
    assert err.tolist() == [[[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]]


def test_unknown_target_is_one_line(train_csv):
    series, feats = load_series([train_csv], DataConfig())
    with pytest.raises(DataError, match=r"model.targets names 'pressure', not among the features \(sensor_1"):
        train(series, feats, ModelConfig(window=8, hidden_size=4, targets=("pressure",)), SMALL)
    with pytest.raises(ConfigError, match="model.targets names pressure, not in data.features"):
        PipelineConfig(data=DataConfig(features=("a", "b")), model=ModelConfig(targets=("pressure",)))
    with pytest.raises(ConfigError, match="model.targets lists a more than once"):
        ModelConfig(targets=("a", "a"))
    ok = PipelineConfig(data=DataConfig(features=("a", "b")), model=ModelConfig(targets=("b",)))
    assert ok.model.targets == ("b",)
    assert json.loads(json.dumps(dataclasses.asdict(ok.model)))["targets"] == ["b"]


def test_exports_keep_the_targets(targeted, test_csv, tmp_path):
    """int8 and ONNX bundles score the same targets as the float model they come from."""
    from anomaly.export import export_onnx, to_int8

    series, _ = load_series([test_csv], DataConfig(), targeted.features)
    s = series[0]
    ref = np.concatenate([w.errors for w in engine_windows(targeted, s)])
    q = load_bundle(save_bundle(to_int8(targeted), tmp_path / "q.pt"))
    onnx = load_bundle(export_onnx(targeted, tmp_path / "m.onnx")[0])
    for other in (q, onnx):
        assert other.arch.targets == (0, 2) and other.targets == ["sensor_1", "sensor_3"]
    np.testing.assert_allclose(
        np.concatenate([w.errors for w in engine_windows(onnx, s)]), ref, rtol=0, atol=1e-5
    )
    err_q = np.concatenate([w.errors for w in engine_windows(q, s)])
    assert np.abs(err_q - ref).mean() / ref.mean() < 0.05


def test_targeted_bundle_is_grouping_invariant_and_snapshots_bit_for_bit(targeted, test_csv):
    """Readings one at a time, odd blocks, and a snapshot/restore mid-window score identically."""
    from tests.helpers import chunks
    from tests.test_engine import SMALL as ENGINE_SMALL
    from tests.test_engine import feed

    series, _ = load_series([test_csv], DataConfig(), targeted.features)
    s = series[0]
    cfg = EngineConfig(threshold="spot", max_alert_seconds=120.0, stuck_min_run=8, **ENGINE_SMALL)
    n, cut = len(s), 8 * 40 + 5
    straight = feed(Engine(targeted, cfg), s, chunks(n, [1]))
    blocks = feed(Engine(targeted, cfg), s, chunks(n, [7, 3, 13, 1]))
    assert np.array_equal(straight[0], blocks[0]) and straight[1] == blocks[1]
    first = Engine(targeted, cfg)
    a = feed(first, s, chunks(cut, [3]))
    second = Engine(targeted, cfg)
    second.restore(first.snapshot())
    b = feed(second, s, [(lo + cut, hi + cut) for lo, hi in chunks(n - cut, [3])])
    assert np.array_equal(np.concatenate([a[0], b[0]]), straight[0]) and a[1] + b[1] == straight[1]


def test_inspect_shows_an_onnx_export_of_a_targeted_model_as_its_bundle(targeted, tmp_path):
    """`anomaly inspect m.onnx` printed the architecture's targets as a Python tuple, `targets (0, 2)`, where the
    bundle it came from prints `targets [0, 2]`."""
    from click.testing import CliRunner

    from anomaly.bundle import save_bundle
    from anomaly.cli import main
    from anomaly.export import export_onnx

    pt = save_bundle(targeted, tmp_path / "m.pt")
    onnx, _ = export_onnx(targeted, tmp_path / "m.onnx")
    runner = CliRunner()
    pt_lines, onnx_lines = (runner.invoke(main, ["inspect", str(p)]).stdout.splitlines() for p in (pt, onnx))
    assert onnx_lines[0] == pt_lines[0] + "-onnx"  # model version
    assert onnx_lines[1:-1] == pt_lines[1:]
    assert "targets [0, 2]" in pt_lines[4]

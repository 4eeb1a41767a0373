from __future__ import annotations

import torch

from anomaly.config import DataConfig, ModelConfig, TrainConfig
from anomaly.data import load_series
from anomaly.training import train


def _train(train_csv, **kw):
    series, feats = load_series([train_csv], DataConfig())
    return train(series, feats, ModelConfig(window=8, hidden_size=16), TrainConfig(device="cpu", **kw))


def test_loss_falls_on_synthetic_data(train_csv) -> None:
    result = _train(train_csv, epochs=6, batch_size=16, patience=10)
    losses = [h["val_loss"] for h in result.history]
    assert len(losses) == 6
    assert min(losses[-2:]) < 0.8 * losses[0]
    assert result.windows_per_second > 0


def test_training_is_deterministic_with_a_seed(train_csv) -> None:
    a = _train(train_csv, epochs=2, seed=3)
    b = _train(train_csv, epochs=2, seed=3)
    for (na, ta), (nb, tb) in zip(
        a.bundle.model.state_dict().items(), b.bundle.model.state_dict().items(), strict=True
    ):
        assert na == nb and torch.equal(ta, tb)
    assert a.history == [dict(h, **{}) for h in b.history]
    assert a.bundle.calibration == b.bundle.calibration


def test_calibration_is_stored(train_csv) -> None:
    cal = _train(train_csv, epochs=1).bundle.calibration
    q = cal["point_error_quantiles"]
    assert cal["reference_error"] == q["0.99"]
    assert q["0.5"] <= q["0.9"] <= q["0.99"] <= cal["point_error_max"]
    assert cal["default_threshold"] == 1.5
    assert len(cal["feature_error_mean"]) == 4

"""Shared fixtures: a tiny trained bundle and generated series (no external data)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anomaly.bundle import Bundle, load_bundle, save_bundle
from anomaly.config import DataConfig, ModelConfig, TrainConfig
from anomaly.data import Series, load_series
from anomaly.synthetic import SyntheticSpec, generate
from anomaly.training import train

# Tests share two cores with brokers and daemons: one PyTorch thread avoids OpenMP oversubscription.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def train_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.csv"
    generate(SyntheticSpec(n_sensors=4, n_points=3000, seed=1)).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def test_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "test.csv"
    generate(SyntheticSpec(n_sensors=4, n_points=1200, anomalies=4, seed=2)).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def bundle_path(tmp_path_factory: pytest.TempPathFactory, train_csv: Path) -> Path:
    """Two LSTM layers (so state carry is tested across layers), window 8, a few epochs: seconds on CPU."""
    series, feats = load_series([train_csv], DataConfig())
    result = train(
        series,
        feats,
        ModelConfig(window=8, hidden_size=16, num_layers=2, dropout=0.1),
        TrainConfig(epochs=4, batch_size=16, device="cpu", seed=0),
    )
    return save_bundle(result.bundle, tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture
def bundle(bundle_path: Path) -> Bundle:
    return load_bundle(bundle_path)


@pytest.fixture(scope="session")
def window_bundle(train_csv: Path) -> Bundle:
    """A reconstruction-only model (no forecast head): the engine scores it by whole windows, as bundles made
    before the forecast head are scored."""
    series, feats = load_series([train_csv], DataConfig())
    result = train(
        series,
        feats,
        ModelConfig(window=8, hidden_size=16, num_layers=1, forecast=False),
        TrainConfig(epochs=2, batch_size=16, device="cpu", seed=0),
    )
    return result.bundle


@pytest.fixture(scope="session")
def test_series(test_csv: Path, bundle_path: Path) -> Series:
    features = load_bundle(bundle_path).features
    series, _ = load_series([test_csv], DataConfig(), features)
    return series[0]

from __future__ import annotations

import pytest

from anomaly.config import build_config, load_config, redacted
from anomaly.errors import ConfigError


def test_precedence_defaults_toml_env_options(tmp_path) -> None:
    toml = tmp_path / "p.toml"
    toml.write_text('[model]\nwindow = 16\nhidden_size = 8\n[engine]\nthreshold = "dynamic"\n')
    env = {"ANOMALY_MODEL_HIDDEN_SIZE": "24", "ANOMALY_KAFKA_TOPICS": "a, b", "ANOMALY_TRAIN_AMP": "false"}
    cfg = load_config(toml, {"model.hidden_size": 32, "train.epochs": None}, env=env)
    assert cfg.model.window == 16  # toml
    assert cfg.model.hidden_size == 32  # option beats env beats toml
    assert cfg.engine.threshold == "dynamic"
    assert cfg.kafka.topics == ("a", "b")
    assert cfg.train.amp is False
    assert cfg.train.epochs == 30  # None means "not given"


def test_env_beats_toml(tmp_path) -> None:
    toml = tmp_path / "p.toml"
    toml.write_text("[model]\nhidden_size = 8\n")
    assert load_config(toml, env={"ANOMALY_MODEL_HIDDEN_SIZE": "24"}).model.hidden_size == 24


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            {"model": {"windw": 3}},
            "unknown setting model.windw; valid settings: dropout, forecast, hidden_size",
        ),
        ({"modle": {}}, "unknown section [modle]"),
        ({"model": {"window": "big"}}, "model.window must be int"),
        ({"engine": {"threshold": "magic"}}, "engine.threshold must be one of: static, dynamic"),
        ({"engine": {"score": "sum"}}, "engine.score must be one of: mean, max_feature"),
        ({"model": {"window": 1}}, "model.window must be at least 2"),
    ],
)
def test_bad_settings_name_the_problem(toml, message) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(toml)
    assert message in str(info.value)


def test_missing_and_invalid_pipeline_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="pipeline file not found"):
        load_config(tmp_path / "none.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, env={})


def test_secrets_are_redacted() -> None:
    cfg = build_config({"kafka": {"sasl_password": "hunter2", "sasl_username": "me"}})
    shown = redacted(cfg)
    assert shown["kafka"]["sasl_password"] == "***" and shown["kafka"]["sasl_username"] == "me"
    assert "hunter2" not in repr(shown)

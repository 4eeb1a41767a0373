"""`anomaly config`: every setting's effective value and where it came from (file, variable, default)."""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib

import pytest
from click.testing import CliRunner

from anomaly.cli import main
from anomaly.config import PipelineConfig, build_config, load_config, redacted

PASSWORD = "hunter2-not-to-be-printed"


@pytest.fixture(autouse=True)
def no_anomaly_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ANOMALY_"):
            monkeypatch.delenv(name)


@pytest.fixture
def pipeline(tmp_path):  # type: ignore[no-untyped-def]
    path = tmp_path / "p.toml"
    path.write_text('[model]\nwindow = 64\n[engine]\nthreshold = "dynamic"\n[kafka]\ntopics = ["a", "b"]\n')
    return path


def run(*args: object, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, ["config", *map(str, args)], env=env)


def test_file_variable_and_default_give_value_and_source(pipeline) -> None:
    env = {"ANOMALY_TRAIN_EPOCHS": "5", "ANOMALY_ENGINE_THRESHOLD": "spot"}  # the variable beats the file
    result = run("-p", pipeline, env=env)
    assert result.exit_code == 0, result.output
    lines = {line.split(" = ")[0]: line for line in result.stdout.splitlines() if " = " in line}
    assert lines["model.window"].split() == [
        "model.window",
        "=",
        "64",
        "#",
        "pipeline",
        "file",
        str(pipeline),
    ]
    assert lines["train.epochs"].split() == ["train.epochs", "=", "5", "#", "environment", "variable"] + [
        "ANOMALY_TRAIN_EPOCHS"
    ]
    assert lines["engine.threshold"].split()[2:] == ['"spot"', "#", "environment", "variable"] + [
        "ANOMALY_ENGINE_THRESHOLD"
    ]
    assert lines["kafka.topics"].split(" # ")[0].rstrip() == 'kafka.topics = ["a", "b"]'
    assert lines["model.hidden_size"].split() == ["model.hidden_size", "=", "64", "#", "default"]
    assert lines["data.key_column"].split() == ["data.key_column", "=", "none", "#", "default"]
    # every setting of every section, one line each, and the footer naming the options
    expected = [f"{s}.{n}" for s, values in dataclasses.asdict(PipelineConfig()).items() for n in values]
    assert list(lines) == expected
    assert result.stdout.splitlines()[-1].startswith("# a command's own options override these")
    assert result.stderr == ""

    as_json = json.loads(run("-p", pipeline, "--json", env=env).stdout)
    assert as_json["model"]["window"] == {"value": 64, "source": f"pipeline file {pipeline}"}
    assert as_json["train"]["epochs"] == {"value": 5, "source": "environment variable ANOMALY_TRAIN_EPOCHS"}
    assert as_json["model"]["hidden_size"] == {"value": 64, "source": "default"}


def test_a_secret_shows_stars_never_its_value(pipeline) -> None:
    env = {"ANOMALY_KAFKA_SASL_PASSWORD": PASSWORD}
    text = run("-p", pipeline, env=env)
    as_json = run("-p", pipeline, "--json", env=env)
    assert text.exit_code == as_json.exit_code == 0
    assert PASSWORD not in text.output and PASSWORD not in as_json.output
    line = next(x for x in text.stdout.splitlines() if x.startswith("kafka.sasl_password"))
    assert line.split() == ["kafka.sasl_password", "=", "***", "#", "environment", "variable"] + [
        "ANOMALY_KAFKA_SASL_PASSWORD"
    ]
    assert json.loads(as_json.stdout)["kafka"]["sasl_password"] == {
        "value": "***",
        "source": "environment variable ANOMALY_KAFKA_SASL_PASSWORD",
    }
    unset = next(x for x in run().stdout.splitlines() if x.startswith("kafka.sasl_password"))
    assert unset.split() == ["kafka.sasl_password", "=", "none", "#", "default"]


def test_json_and_text_load_back_to_the_same_settings(pipeline, monkeypatch) -> None:
    monkeypatch.setenv("ANOMALY_DATA_KEY_COLUMN", "machine")
    monkeypatch.setenv("ANOMALY_REPLAY_PLOTS", "false")
    cfg = load_config(str(pipeline), warn=lambda _line: None)
    as_json = json.loads(run("-p", pipeline, "--json").stdout)
    values = {s: {n: e["value"] for n, e in v.items()} for s, v in as_json.items()}
    assert values == json.loads(json.dumps(redacted(cfg)))  # every setting, tuples as lists
    assert as_json["data"]["key_column"]["source"] == "environment variable ANOMALY_DATA_KEY_COLUMN"
    back = {s: {n: e["value"] for n, e in v.items() if e["value"] is not None} for s, v in as_json.items()}
    assert build_config(back) == cfg
    # the text is TOML dotted keys but for `none` (unset: TOML has no null) and the footer comment
    text = "\n".join(x for x in run("-p", pipeline).stdout.splitlines() if " = none " not in x)
    assert build_config(tomllib.loads(text)) == cfg


def test_an_invalid_setting_is_one_line_and_status_2(pipeline, tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nwindow = 1\n")
    result = run("-p", bad)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: model.window ")
    assert result.stderr.rstrip().endswith(f"(from pipeline file {bad})")
    by_env = run("-p", pipeline, env={"ANOMALY_MODEL_WINDOW": "x"})
    assert by_env.exit_code == 2 and by_env.stdout == ""
    assert by_env.stderr.count("\n") == 1
    assert by_env.stderr.rstrip().endswith("(from environment variable ANOMALY_MODEL_WINDOW)")
    missing = run("-p", tmp_path / "nope.toml")
    assert (missing.exit_code, missing.stderr) == (
        2,
        f"error: pipeline file not found: {tmp_path / 'nope.toml'}\n",
    )


def test_a_setting_without_effect_is_the_same_warning_line_as_other_commands(pipeline) -> None:
    result = run("-p", pipeline, env={"ANOMALY_ENGINE_STATIC_THRESHOLD": "2"})
    assert result.exit_code == 0
    assert result.stderr == (
        "warning: engine.static_threshold (from environment variable ANOMALY_ENGINE_STATIC_THRESHOLD) has no "
        "effect: engine.threshold is dynamic, not static\n"
    )


def test_build_config_hands_back_its_sources_and_is_unchanged_without_the_dict() -> None:
    sources: dict[str, str | None] = {}
    toml = {"model": {"window": 16}}
    env = {"ANOMALY_TRAIN_SEED": "3"}
    cfg = build_config(
        toml, env, {"train.epochs": 2}, toml_source="pipeline file x.toml", sources_out=sources
    )
    assert sources == {
        "model.window": "pipeline file x.toml",
        "train.seed": "environment variable ANOMALY_TRAIN_SEED",
        "train.epochs": "a command-line option",
    }
    assert cfg == build_config(toml, env, {"train.epochs": 2}, toml_source="pipeline file x.toml")


def test_the_threads_torch_runs_with_are_a_comment_line_with_their_source(pipeline) -> None:
    """`anomaly --threads` / ANOMALY_THREADS is what the daemon runs with too, and `anomaly config` left it out. It
    is no setting of a section (a pipeline file cannot set it): a comment line, so the text still loads back."""

    def threads_line(*args: str, env: dict[str, str] | None = None) -> list[str]:
        result = CliRunner().invoke(main, [*args, "config", "-p", str(pipeline)], env=env)
        assert result.exit_code == 0, result.output
        return next(x for x in result.stdout.splitlines() if x.startswith("# anomaly --threads")).split()

    assert threads_line() == ["#", "anomaly", "--threads", "1", "#", "default"]
    assert threads_line(env={"ANOMALY_THREADS": "3"})[3:] == ["3", "#", "environment", "variable"] + [
        "ANOMALY_THREADS"
    ]
    assert threads_line("--threads", "2", env={"ANOMALY_THREADS": "3"})[3:] == [
        "2",
        "#",
        "option",
        "--threads",
    ]
    as_json = json.loads(run("-p", pipeline, "--json").stdout)
    assert list(as_json) == [f.name for f in dataclasses.fields(PipelineConfig)]  # sections only, as before

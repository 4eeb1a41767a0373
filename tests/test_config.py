from __future__ import annotations

import pytest

from anomaly.config import KafkaConfig, TrainConfig, build_config, load_config, redacted
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
            "unknown setting model.windw; did you mean model.window? valid settings: dropout, forecast, hidden_size",
        ),
        ({"modle": {}}, "unknown section [modle]; did you mean [model]?"),
        ({"model": {"window": "big"}}, "model.window must be an integer"),
        (
            {"engine": {"threshold": "magic"}},
            "engine.threshold must be one of: static, dynamic, spot, dspot; got 'magic'",
        ),
        ({"engine": {"score": "sum"}}, "engine.score must be one of: mean, max_feature"),
        ({"model": {"window": 1}}, "model.window must be at least 2"),
        ({"window": 16}, "top-level key 'window' is not inside a [section]; put it under [model]"),
        ({"engine": {"static_threshold": float("nan")}}, "engine.static_threshold must be a positive number"),
        ({"engine": {"static_threshold": -1.0}}, "engine.static_threshold must be a positive number"),
        (
            {"engine": {"ttl_seconds": -5}},
            "engine.ttl_seconds must be a finite number of seconds >= 0 (0, not inf: no TTL), got -5",
        ),
        # "must be >= 0 seconds (0: no TTL), got inf": inf is >= 0, and max_gap_seconds takes inf for "never"
        (
            {"engine": {"ttl_seconds": float("inf")}},
            "engine.ttl_seconds must be a finite number of seconds >= 0 (0, not inf: no TTL), got inf",
        ),
        (
            {"engine": {"max_alert_seconds": float("inf")}},
            "engine.max_alert_seconds must be a finite number of seconds >= 0 (0, not inf: never), got inf",
        ),
        ({"engine": {"max_gap_seconds": 0}}, "engine.max_gap_seconds must be > 0 seconds"),
        ({"engine": {"smoothing": float("nan")}}, "engine.smoothing must be in (0, 1]"),
        ({"train": {"learning_rate": -1.0}}, "train.learning_rate must be > 0"),
        ({"train": {"epochs": True}}, "train.epochs must be an integer, got True"),
        ({"train": {"amp": 3}}, "train.amp must be true or false, got 3"),
        ({"metrics": {"port": 70000}}, "metrics.port must be in 0..65535"),
        ({"kafka": {"security_protocol": "TLS"}}, "kafka.security_protocol must be one of: PLAINTEXT, SSL"),
        ({"data": {"separator": ";;"}}, "data.separator must be one character"),
        ({"train": {"stride": 99}}, "train.stride must be between 0 and model.window (32)"),
        # a [pipeline] section was skipped whatever it held: `[pipeline]` + `threshold = "static"` did nothing
        (
            {"pipeline": {"threshold": "static"}},
            "unknown section [pipeline]; valid sections: data, model, train, engine, kafka, metrics, replay",
        ),
        ({"pipeline": "demo"}, "top-level key 'pipeline' is not inside a [section]"),
        # [[engine]] (TOML's array of tables) was "top-level key 'engine' is not inside a [section]"
        (
            {"engine": [{"threshold": "static"}]},
            "[[engine]] is an array of tables: write the section once, as [engine]",
        ),
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


@pytest.mark.parametrize(
    ("section", "kwargs", "message"),
    [
        ("engine", {"static_threshold": float("nan")}, "engine.static_threshold must be a positive number"),
        ("engine", {"max_gap_seconds": 0.0}, "engine.max_gap_seconds must be > 0 seconds"),
        ("engine", {"ttl_seconds": -1.0}, "engine.ttl_seconds must be a finite number of seconds >= 0"),
        ("engine", {"max_alert_readings": -1}, "engine.max_alert_readings must be >= 0 readings"),
        ("engine", {"max_alert_readings": 2**31}, "engine.max_alert_readings must be >= 0 readings"),
        ("engine", {"partial_shift_readings": -1}, "engine.partial_shift_readings must be >= 0 readings"),
        ("engine", {"partial_shift_readings": 2**31}, "engine.partial_shift_readings must be >= 0 readings"),
        # a run of 1 is any reading: with stuck_factor 1 every reading of a never-repeating sensor was stuck
        (
            "engine",
            {"stuck_min_run": 1},
            "engine.stuck_min_run must be 0 (no stuck-sensor rule) or at least 2",
        ),
        ("engine", {"nan_policy": "zero"}, "engine.nan_policy must be one of: reject, ffill; got 'zero'"),
        ("replay", {"predict": "both"}, "replay.predict must be one of: alert, point"),
        ("train", {"device": "tpu"}, "train.device must be one of: auto, cpu, cuda"),
        # GSSAPI and OAUTHBEARER were accepted here, then refused when the daemon connected
        (
            "kafka",
            {"sasl_mechanism": "GSSAPI"},
            "kafka.sasl_mechanism must be one of: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512; got 'GSSAPI'",
        ),
        # the options refused under 1000 ms; the same value from a file or variable was taken
        ("kafka", {"session_timeout_ms": 500}, "kafka.session_timeout_ms must be at least 1000"),
        ("kafka", {"max_poll_interval_ms": 999}, "kafka.max_poll_interval_ms must be at least 1000"),
        # the label column was trained on as a sensor when --features named it
        ("data", {"features": ("a", "anomaly")}, "data.features includes the label column 'anomaly'"),
        ("data", {"features": ("a", "y"), "label": "y"}, "data.features includes the label column 'y'"),
        ("data", {"features": ("changepoint",)}, "data.features includes the label column 'changepoint'"),
    ],
)
def test_library_users_get_the_same_checks_as_the_cli(section, kwargs, message) -> None:
    """Issue 9: settings are validated where the object is built, not only when the CLI parses them."""
    from anomaly import config

    cls = {
        "engine": config.EngineConfig,
        "replay": config.ReplayConfig,
        "train": config.TrainConfig,
        "data": config.DataConfig,
        "kafka": config.KafkaConfig,
    }[section]
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(ConfigError) as via_cli:
        build_config({section: kwargs})
    assert str(via_cli.value) == str(info.value)


def test_a_misspelt_section_in_an_environment_variable_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        build_config(env={"ANOMALY_ENGIN_THRESHOLD": "dynamic"})
    assert str(info.value).startswith(
        "environment variable ANOMALY_ENGIN_THRESHOLD names no section; did you mean ANOMALY_ENGINE_...?"
    )
    assert build_config(env={"ANOMALY_THREADS": "2", "PATH": "/bin"}) == build_config()


def test_a_bad_value_from_the_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        build_config(env={"ANOMALY_ENGINE_STATIC_THRESHOLD": "nan"})
    assert str(info.value).endswith("(from environment variable ANOMALY_ENGINE_STATIC_THRESHOLD)")


def test_a_list_setting_from_the_environment_reads_the_toml_list_syntax_too() -> None:
    """ANOMALY_KAFKA_TOPICS='["a", "b"]' (the pipeline file's syntax) names the topics a and b; before, the split at
    the comma made them '["a"' and '"b"]'. A broken list is one error naming the variable."""
    env = {"ANOMALY_KAFKA_TOPICS": '["a", "b"]', "ANOMALY_DATA_FEATURES": "x, y"}
    cfg = build_config(env=env)
    assert (cfg.kafka.topics, cfg.data.features) == (("a", "b"), ("x", "y"))
    with pytest.raises(ConfigError, match=r"kafka.topics must be a list: .*ANOMALY_KAFKA_TOPICS"):
        build_config(env={"ANOMALY_KAFKA_TOPICS": '["a", "b"'})


@pytest.mark.parametrize("typed", ["\\t", "tab", "\t"])
def test_a_tab_separator_can_be_typed(typed: str) -> None:
    assert build_config(overrides={"data.separator": typed}).data.separator == "\t"


def test_an_infinite_future_limit_says_it_must_be_finite() -> None:
    with pytest.raises(ConfigError, match="must be a finite number of seconds >= 0"):
        build_config(env={"ANOMALY_KAFKA_MAX_FUTURE_SECONDS": "inf"})


def test_a_bad_value_in_the_pipeline_file_names_the_file(tmp_path) -> None:
    """An error from the pipeline file read like one from an option: only a variable was named."""
    toml = tmp_path / "p.toml"
    toml.write_text("[engine]\nsmoothing = -1\n")
    with pytest.raises(ConfigError) as info:
        load_config(toml, env={})
    assert str(info.value) == f"engine.smoothing must be in (0, 1], got -1.0 (from pipeline file {toml})"
    toml.write_text("[engin]\nsmoothing = 0.5\n")
    with pytest.raises(ConfigError) as info:
        load_config(toml, env={})
    assert str(info.value).endswith(
        f"valid sections: data, model, train, engine, kafka, metrics, replay (in pipeline file {toml})"
    )


def test_a_check_between_settings_names_where_each_came_from(tmp_path) -> None:
    """`train.stride = 16` in the file and ANOMALY_MODEL_WINDOW=8 was blamed on ANOMALY_TRAIN_STRIDE, a variable
    nobody had set, sending the user to look for it."""
    toml = tmp_path / "p.toml"
    toml.write_text("[train]\nstride = 16\n[model]\ntargets = ['c']\n")
    with pytest.raises(ConfigError) as info:
        load_config(toml, env={"ANOMALY_MODEL_WINDOW": "8"})
    assert str(info.value) == (
        "train.stride must be between 0 and model.window (8) (train.stride from pipeline file "
        f"{toml}, model.window from environment variable ANOMALY_MODEL_WINDOW)"
    )
    with pytest.raises(ConfigError) as info:
        load_config(toml, {"data.features": ("a", "b")}, env={}, option_names={"data.features": "--features"})
    assert str(info.value).endswith(
        f"(model.targets from pipeline file {toml}, data.features from option --features)"
    )
    with pytest.raises(ConfigError) as info:  # an option the caller did not name
        build_config(overrides={"model.window": 4, "train.stride": 8})
    assert str(info.value) == (
        "train.stride must be between 0 and model.window (4) (train.stride from a command-line option, "
        "model.window from a command-line option)"
    )
    with pytest.raises(ConfigError) as info:  # a library user's dict: no source to name
        build_config({"train": {"stride": 99}})
    assert str(info.value) == "train.stride must be between 0 and model.window (32)"


@pytest.mark.parametrize(
    ("toml", "meant"),
    [
        ({"model": {"epochs": 3}}, "train.epochs"),  # a setting in the wrong section
        (
            {"train": {"threshold": "static"}},
            "engine.threshold",
        ),  # not train.threshold_factor, a near spelling
        ({"engine": {"seed": 1}}, "train.seed"),
        ({"model": {"epoch": 3}}, "train.epochs"),  # misspelt and in the wrong section
        ({"model": {"windw": 3}}, "model.window"),  # its own section's setting first
    ],
)
def test_a_setting_in_the_wrong_section_names_the_section_it_belongs_to(toml, meant) -> None:
    """`[model] epochs = 3` listed the model's settings only, so the user had to hunt for where epochs goes."""
    with pytest.raises(ConfigError) as info:
        build_config(toml)
    ((section, values),) = toml.items()
    assert str(info.value).startswith(
        f"unknown setting {section}.{next(iter(values))}; did you mean {meant}? "
    )


def test_a_pipeline_file_saved_with_a_byte_order_mark_loads(tmp_path) -> None:
    """A UTF-8 BOM (Windows editors) made every pipeline file "not valid TOML: Invalid statement (at line 1,
    column 1)"."""
    toml = tmp_path / "p.toml"
    toml.write_bytes(b"\xef\xbb\xbf[model]\nwindow = 8\n")
    assert load_config(toml, env={}).model.window == 8
    toml.write_bytes(b"\xef\xbb\xbf[model]\nwindow = \xff\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(toml, env={})


@pytest.mark.parametrize(
    ("env", "setting", "why"),
    [
        (
            {"ANOMALY_KAFKA_DEAD_LETTER_TOPIC": "sensors"},
            "dead_letter_topic",
            "each dead letter, refused and written again, for ever",
        ),
        (
            {"ANOMALY_KAFKA_ALERTS_TOPIC": "sensors"},
            "alerts_topic",
            "its alert events, each refused as a dead letter",
        ),
        (
            {"ANOMALY_KAFKA_SCORES_TOPIC": "sensors"},
            "scores_topic",
            "its scores, each refused as a dead letter",
        ),
    ],
)
def test_an_output_topic_that_is_also_an_input_topic_is_refused(env, setting, why) -> None:
    """dead_letter_topic = an input topic was accepted: the daemon read each dead letter back, refused it and wrote it
    again, for ever (alerts and scores came back as dead letters)."""
    with pytest.raises(ConfigError) as info:
        build_config(env=env)
    variable = f"ANOMALY_KAFKA_{setting.upper()}"
    assert str(info.value) == (
        f"kafka.{setting} 'sensors' is also an input topic (kafka.topics): the daemon would read what it writes "
        f"({why}); give it a topic of its own "
        f"(from environment variable {variable})"
    )
    with pytest.raises(ConfigError, match=rf"^kafka.{setting} 'sensors' is also an input topic"):
        build_config({"kafka": {"topics": ["in", "sensors"], setting: "sensors"}})
    assert build_config({"kafka": {"topics": ["in"], setting: "sensors"}}).kafka.topics == ("in",)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ({"data": {"time_column": False}}, "data.time_column must be text, got False"),
        ({"data": {"key_column": True}}, "data.key_column must be text, got True"),
        ({"data": {"features": ["a", False]}}, "data.features must be text, got False"),
        ({"kafka": {"group_id": True}}, "kafka.group_id must be text, got True"),
    ],
)
def test_true_or_false_for_a_text_setting_is_refused(toml, message) -> None:
    """`time_column = false` (meaning: no time column) was read as the column name 'False', and the error blamed the
    data file; a number still names a column (`--no-header` names them 1, 2, 3)."""
    with pytest.raises(ConfigError) as info:
        build_config(toml)
    assert str(info.value) == message
    assert build_config({"data": {"features": [1, 2]}}).data.features == ("1", "2")


def test_true_or_false_in_a_variable_of_a_text_setting_is_refused_naming_the_empty_value() -> None:
    """ANOMALY_DATA_TIME_COLUMN=false (meaning --no-time-column) looked for a column named 'false', where the
    pipeline file's `time_column = false` is refused; the empty value is no time column."""
    with pytest.raises(ConfigError) as info:
        build_config(env={"ANOMALY_DATA_TIME_COLUMN": "false"})
    assert str(info.value) == (
        "environment variable ANOMALY_DATA_TIME_COLUMN=false: data.time_column is text, not true or false; "
        "ANOMALY_DATA_TIME_COLUMN= (empty) is no time column, as --no-time-column; a value named 'false' is written "
        'time_column = "false" in a pipeline file'
    )
    with pytest.raises(
        ConfigError, match=r"^environment variable ANOMALY_KAFKA_GROUP_ID=True: kafka.group_id is"
    ):
        build_config(env={"ANOMALY_KAFKA_GROUP_ID": "True"})
    assert build_config(env={"ANOMALY_DATA_TIME_COLUMN": ""}).data.time_column == ""
    assert build_config({"data": {"time_column": "false"}}).data.time_column == "false"  # quoted: a name
    assert build_config(env={"ANOMALY_KAFKA_SASL_PASSWORD": "true"}).kafka.sasl_password == "true"


def test_a_template_with_an_unmatched_brace_says_so() -> None:
    """`changelog_topic = "changelog-{group"` was refused as "got {?}", a placeholder nobody wrote."""
    with pytest.raises(ConfigError) as info:
        build_config({"kafka": {"changelog_topic": "changelog-{group"}})
    assert str(info.value) == (
        "kafka.changelog_topic 'changelog-{group' is not a valid template (expected '}' before end of string): "
        "placeholders are {group}, {topic}, and a literal brace is written {{ or }}"
    )
    assert (
        build_config({"kafka": {"changelog_topic": "c{{x}}-{group}"}}).kafka.changelog_topic
        == "c{{x}}-{group}"
    )


@pytest.mark.parametrize(
    ("template", "state", "which"),
    [
        ("{topic}", "sensors", "an input topic (kafka.topics)"),
        ("anomaly-alerts", "anomaly-alerts", "kafka.alerts_topic"),
        ("anomaly-dead-letters", "anomaly-dead-letters", "kafka.dead_letter_topic"),
    ],
)
def test_a_changelog_template_that_names_an_input_or_output_topic_is_refused(template, state, which) -> None:
    """`changelog_topic = "{topic}"` made the input topic the changelog: the daemon's compaction check then told the
    operator to set cleanup.policy=compact on the input topic."""
    with pytest.raises(ConfigError) as info:
        build_config({"kafka": {"changelog_topic": template}})
    assert str(info.value) == (
        f"kafka.changelog_topic makes the changelog of 'sensors' {state!r}, which is {which}: checkpoints would be "
        "written into it; give the changelog a name of its own (default changelog__{group}--{topic})"
    )
    assert (
        build_config({"kafka": {"changelog_topic": "state-{topic}"}}).kafka.changelog_topic == "state-{topic}"
    )


def test_an_output_topic_named_as_a_changelog_names_where_it_came_from() -> None:
    with pytest.raises(ConfigError) as info:
        build_config(env={"ANOMALY_KAFKA_ALERTS_TOPIC": "changelog__anomaly--sensors"})
    assert str(info.value).endswith(
        "which is kafka.alerts_topic: checkpoints would be written into it; give the changelog a name of its own "
        "(default changelog__{group}--{topic}) (from environment variable ANOMALY_KAFKA_ALERTS_TOPIC)"
    )


@pytest.mark.parametrize(
    ("kafka", "message"),
    [
        (
            {"topics": ["sensors,alarms"]},
            "kafka.topics 'sensors,alarms' is not a Kafka topic name: letters, digits, '.', '_' and '-', at most 249 "
            '(a list is written ["a", "b"])',
        ),
        (
            {"alerts_topic": "plant alerts"},
            "kafka.alerts_topic 'plant alerts' is not a Kafka topic name: letters, digits, '.', '_' and '-', at most "
            "249",
        ),
        (
            {"dead_letter_topic": ".."},
            "kafka.dead_letter_topic '..' is not a Kafka topic name: letters, digits, '.', '_' and '-', at most 249",
        ),
    ],
)
def test_a_topic_name_kafka_does_not_allow_is_refused_where_it_is_set(kafka, message) -> None:
    """`topics = ["sensors,alarms"]` was one topic named 'sensors,alarms': the daemon then said it was not found, or
    the broker refused to create it."""
    with pytest.raises(ConfigError) as info:
        build_config({"kafka": kafka})
    assert str(info.value) == message
    assert build_config({"kafka": {"topics": ["a.b_c-D9"], "scores_topic": "s"}}).kafka.topics == (
        "a.b_c-D9",
    )


def test_a_fetch_wait_the_consumer_refuses_is_refused_naming_the_setting() -> None:
    """fetch_max_wait_ms = 30000 or more passed the config and the daemon then exited with "Kafka error at ...
    (consumer): KafkaConfigurationError", naming no setting: kafka-python wants it below its request timeout."""
    from anomaly.config import CONSUMER_REQUEST_TIMEOUT_MS
    from anomaly.errors import AnomalyError
    from anomaly.kafka.clients import make_consumer

    with pytest.raises(ConfigError) as info:
        build_config(env={"ANOMALY_KAFKA_FETCH_MAX_WAIT_MS": "30000"})
    assert str(info.value) == (
        "kafka.fetch_max_wait_ms must be below the consumer's request timeout (30000 ms), got 30000 "
        "(from environment variable ANOMALY_KAFKA_FETCH_MAX_WAIT_MS)"
    )
    longest = {"fetch_max_wait_ms": CONSUMER_REQUEST_TIMEOUT_MS - 1, "bootstrap_servers": "127.0.0.1:1"}
    with pytest.raises(
        AnomalyError
    ) as reach:  # the longest wait allowed builds a consumer: no broker to reach
        make_consumer(build_config({"kafka": longest}).kafka, bootstrap_timeout_s=0.2)
    assert str(reach.value).startswith("cannot reach Kafka at 127.0.0.1:1 (consumer)")


def test_bootstrap_servers_may_be_written_as_a_list(tmp_path) -> None:
    """`bootstrap_servers = ["h1:9092", "h2:9093"]`, as kafka-python takes it, was refused: 'must be text'."""
    from anomaly.kafka.clients import connection_settings

    toml = tmp_path / "p.toml"
    toml.write_text('[kafka]\nbootstrap_servers = ["127.0.0.1:9092", " 127.0.0.1:9093"]\n')
    listed = load_config(toml, env={}).kafka
    assert listed.bootstrap_servers == "127.0.0.1:9092,127.0.0.1:9093"
    assert connection_settings(listed)["bootstrap_servers"] == ["127.0.0.1:9092", "127.0.0.1:9093"]
    env = {"ANOMALY_KAFKA_BOOTSTRAP_SERVERS": '["127.0.0.1:9094", "127.0.0.1:9095"]'}
    assert load_config(None, env=env).kafka.bootstrap_servers == "127.0.0.1:9094,127.0.0.1:9095"
    with pytest.raises(ConfigError, match=r"^kafka.bootstrap_servers must not be empty"):
        build_config({"kafka": {"bootstrap_servers": []}})


@pytest.mark.parametrize(
    ("value", "what"),
    [
        ("[9092]", "entry 9092 of [9092]"),
        ('["h1:9092", 9093]', "entry 9093 of ['h1:9092', 9093]"),
        ("9092", "9092"),
    ],
)
def test_bootstrap_servers_that_are_numbers_say_each_must_be_host_port_text(tmp_path, value, what) -> None:
    """`bootstrap_servers = [9092]` (the port alone, as a number) got "must be text, got [9092]", though a list
    is accepted; a bare `9092` was taken as a host named 9092."""
    toml = tmp_path / "p.toml"
    toml.write_text(f"[kafka]\nbootstrap_servers = {value}\n")
    with pytest.raises(ConfigError) as err:
        load_config(toml, env={})
    assert str(err.value) == (
        'kafka.bootstrap_servers must be "host:port" text, or a list of it (e.g. "localhost:9092" or '
        f'["h1:9092", "h2:9092"]); {what} is not text (from pipeline file {toml})'
    )


def test_a_bare_port_as_text_is_refused_from_every_source(tmp_path) -> None:
    """`9092` in a variable or an option, `"9092"` in a pipeline file, was taken as a host named 9092 ("cannot
    reach Kafka at 9092"), though the README says a bare port is refused naming it."""
    toml = tmp_path / "p.toml"
    toml.write_text('[kafka]\nbootstrap_servers = ["h1:9092", "9093"]\n')
    expected = 'kafka.bootstrap_servers must be "host:port" entries (e.g. "localhost:9092"); {!r} is a port without a host'
    for call, port, source in (
        (lambda: load_config(toml, env={}), "9093", f"pipeline file {toml}"),
        (
            lambda: load_config(None, env={"ANOMALY_KAFKA_BOOTSTRAP_SERVERS": "9092"}),
            "9092",
            "environment variable ANOMALY_KAFKA_BOOTSTRAP_SERVERS",
        ),
        (
            lambda: load_config(None, {"kafka.bootstrap_servers": "h1:9092, 9094"}, env={}),
            "9094",
            "a command-line option",
        ),
    ):
        with pytest.raises(ConfigError) as err:
            call()
        assert str(err.value) == f"{expected.format(port)} (from {source})"
    assert (
        KafkaConfig(bootstrap_servers="broker1,h2:9093").bootstrap_servers == "broker1,h2:9093"
    )  # a host alone


@pytest.mark.parametrize("value", ["", " "])
def test_an_empty_key_column_is_refused_from_every_source(tmp_path, value) -> None:
    """`key_column = ""` was read as unset (one series for the whole file) though DataConfig refuses an empty
    key column: a pipeline file, a variable or an option said what a library user could not."""
    toml = tmp_path / "p.toml"
    toml.write_text(f'[data]\nkey_column = "{value}"\n')
    expected = "data.key_column must not be empty (leave it out for one series)"
    for call, source in (
        (lambda: load_config(toml, env={}), f"pipeline file {toml}"),
        (
            lambda: load_config(None, env={"ANOMALY_DATA_KEY_COLUMN": value}),
            "environment variable ANOMALY_DATA_KEY_COLUMN",
        ),
        (lambda: load_config(None, {"data.key_column": value}, env={}), "a command-line option"),
    ):
        with pytest.raises(ConfigError) as err:
            call()
        assert str(err.value) == f"{expected} (from {source})"
    assert load_config(None, env={"ANOMALY_DATA_KEY_COLUMN": "device"}).data.key_column == "device"


def test_a_setting_another_setting_leaves_unused_is_warned_about(tmp_path, caplog) -> None:
    """`engine.static_threshold` under the dynamic threshold, `kafka.commit_in_background` without transactions:
    kept without a word, as if they applied."""
    toml = tmp_path / "p.toml"
    toml.write_text(
        "[engine]\nstatic_threshold = 2.5\n[kafka]\ntransactional = false\ncommit_in_background = true\n"
    )
    with caplog.at_level("WARNING", logger="anomaly.config"):
        load_config(toml, env={})
    assert caplog.messages == [
        f"engine.static_threshold (from pipeline file {toml}) has no effect: engine.threshold is dynamic, not "
        "static",
        f"kafka.commit_in_background (from pipeline file {toml}) has no effect: kafka.transactional is false (it "
        "commits a checkpoint's transaction)",
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="anomaly.config"):
        load_config(toml, env={"ANOMALY_ENGINE_THRESHOLD": "static", "ANOMALY_KAFKA_TRANSACTIONAL": "true"})
        load_config(
            None, env={"ANOMALY_KAFKA_COMMIT_IN_BACKGROUND": "false", "ANOMALY_KAFKA_TRANSACTIONAL": "0"}
        )
    assert caplog.messages == []  # each applies, or is off
    with caplog.at_level("WARNING", logger="anomaly.config"):
        load_config(None, env={"ANOMALY_ENGINE_STATIC_THRESHOLD": "3", "ANOMALY_ENGINE_THRESHOLD": "spot"})
    assert caplog.messages == [
        "engine.static_threshold (from environment variable ANOMALY_ENGINE_STATIC_THRESHOLD) has no effect: "
        "engine.threshold is spot, not static"
    ]


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_a_seed_numpy_or_torch_refuses_is_refused_naming_the_setting(tmp_path, seed) -> None:
    """`train.seed = -1` (numpy: "expected non-negative integer") or 2**64 (torch: "Overflow when unpacking long
    long") passed the settings and ended `anomaly train` with a traceback once training began."""
    toml = tmp_path / "p.toml"
    toml.write_text(f"[train]\nseed = {seed}\n" if seed < 2**63 else "")
    expected = f"train.seed must be between 0 and 2**64 - 1, got {seed}"
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"ANOMALY_TRAIN_SEED": str(seed)})
    assert str(info.value) == f"{expected} (from environment variable ANOMALY_TRAIN_SEED)"
    with pytest.raises(ConfigError) as info:
        load_config(None, {"train.seed": seed}, env={}, option_names={"train.seed": "--seed"})
    assert str(info.value) == f"{expected} (from option --seed)"
    if seed < 0:  # (TOML integers are 64-bit signed: 2**64 cannot be written there)
        with pytest.raises(ConfigError) as info:
            load_config(toml, env={})
        assert str(info.value) == f"{expected} (from pipeline file {toml})"
    assert TrainConfig(seed=2**64 - 1).seed == 2**64 - 1  # the largest both take


def test_a_threshold_kinds_settings_under_another_kind_are_warned_about(tmp_path, caplog) -> None:
    """`spot_q` under the default `dynamic` threshold, `dynamic_min` under `dspot`, `feature_reference_floor` under
    the mean score: kept without a word, as if they applied (only `static_threshold` was warned about)."""
    toml = tmp_path / "p.toml"
    toml.write_text(
        "[engine]\nspot_q = 0.01\ndynamic_min = 2.0\nspot_depth = 4\nfeature_reference_floor = 0.2\n"
    )
    with caplog.at_level("WARNING", logger="anomaly.config"):
        load_config(toml, env={})
    assert caplog.messages == [
        f"engine.spot_q (from pipeline file {toml}) has no effect: engine.threshold is dynamic, not spot or dspot",
        f"engine.spot_depth (from pipeline file {toml}) has no effect: engine.threshold is dynamic, not dspot",
        f"engine.feature_reference_floor (from pipeline file {toml}) has no effect: engine.score is mean, not "
        "max_feature",
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="anomaly.config"):
        load_config(toml, env={"ANOMALY_ENGINE_THRESHOLD": "dspot", "ANOMALY_ENGINE_SCORE": "max_feature"})
    assert caplog.messages == [
        f"engine.dynamic_min (from pipeline file {toml}) has no effect: engine.threshold is dspot, not dynamic"
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="anomaly.config"):
        load_config(None, env={"ANOMALY_ENGINE_SPOT_INIT": "64", "ANOMALY_ENGINE_THRESHOLD": "spot"})
        # an option is the command's to refuse (as --static-threshold without --threshold static)
        load_config(None, {"engine.threshold": "static", "engine.spot_q": 0.01}, env={})
    assert caplog.messages == []


def test_every_threshold_setting_is_read_by_some_kind() -> None:
    """The kinds' `reads` cover every threshold setting, so a new one is warned about under the other kinds."""
    from anomaly.config import EngineConfig
    from anomaly.thresholds import THRESHOLDS

    fields = {f for f in EngineConfig.__dataclass_fields__ if f.startswith(("spot_", "dynamic_", "static_"))}
    assert {n for cls in THRESHOLDS.values() for n in cls.reads} == fields


def test_a_whole_number_written_with_a_decimal_point_is_the_same_from_every_source(tmp_path) -> None:
    """`window = 32.0` in a pipeline file is 32; `ANOMALY_MODEL_WINDOW=32.0` (or `1e2`) was refused as "must be an
    integer"."""
    toml = tmp_path / "p.toml"
    toml.write_text("[model]\nwindow = 32.0\n[engine]\nmax_keys = 1e2\n")
    from_file = load_config(toml, env={})
    from_env = load_config(None, env={"ANOMALY_MODEL_WINDOW": "32.0", "ANOMALY_ENGINE_MAX_KEYS": "1e2"})
    assert (from_file.model.window, from_file.engine.max_keys) == (
        from_env.model.window,
        from_env.engine.max_keys,
    )
    assert (from_env.model.window, from_env.engine.max_keys) == (32, 100)
    for text in ("32.5", "1e400", "nan", "abc"):
        with pytest.raises(ConfigError) as info:
            load_config(None, env={"ANOMALY_MODEL_WINDOW": text})
        assert str(info.value) == (
            f"model.window must be an integer, got {text!r} (from environment variable ANOMALY_MODEL_WINDOW)"
        )


def test_settings_are_checked_once_every_layer_is_in(tmp_path) -> None:
    """Each layer (and each section of a layer) was checked as it came in, against the defaults of what came
    later: `[train] stride = 40` above `[model] window = 64` in one file was refused (the same lines the other way
    round were not), and so was a file's stride with the window from a variable or an option, naming the default
    window 32; a file's `topics = ["anomaly-alerts"]` with its alerts topic moved by a variable, too."""
    toml = tmp_path / "p.toml"
    toml.write_text("[train]\nstride = 40\n[model]\nwindow = 64\n")
    assert (load_config(toml, env={}).train.stride, load_config(toml, env={}).model.window) == (40, 64)
    toml.write_text("[train]\nstride = 40\n")
    assert load_config(toml, env={"ANOMALY_MODEL_WINDOW": "64"}).model.window == 64
    assert load_config(toml, {"model.window": 64}, env={}).train.stride == 40
    with pytest.raises(ConfigError) as info:  # the final window too small: named, with its source
        load_config(toml, {"model.window": 16}, env={}, option_names={"model.window": "--window"})
    assert str(info.value) == (
        f"train.stride must be between 0 and model.window (16) (train.stride from pipeline file {toml}, "
        "model.window from option --window)"
    )
    toml.write_text('[kafka]\ntopics = ["anomaly-alerts"]\n')
    cfg = load_config(toml, env={"ANOMALY_KAFKA_ALERTS_TOPIC": "alerts"})
    assert (cfg.kafka.topics, cfg.kafka.alerts_topic) == (("anomaly-alerts",), "alerts")
    # variables come in the environment's order: the targets before the features they name
    env = {"ANOMALY_MODEL_TARGETS": "b", "ANOMALY_DATA_FEATURES": "a,b"}
    assert load_config(None, env=env).model.targets == ("b",)


def test_a_null_in_a_list_variable_is_refused_not_read_as_a_name() -> None:
    """`ANOMALY_DATA_FEATURES='["a", null]'` (JSON, as the file's list syntax is read) named a column 'None'."""
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"ANOMALY_DATA_FEATURES": '["a", null]'})
    assert (
        str(info.value)
        == "data.features must be text, got None (from environment variable ANOMALY_DATA_FEATURES)"
    )
    assert load_config(None, env={"ANOMALY_DATA_FEATURES": '["a", 2]'}).data.features == ("a", "2")


@pytest.mark.parametrize(("section", "name"), [("kafka", "group_id"), ("metrics", "host")])
@pytest.mark.parametrize("value", [" ", "\t "])
def test_whitespace_only_group_id_and_metrics_host_are_refused_as_empty(
    section: str, name: str, value: str
) -> None:
    """`kafka.group_id = " "` was a consumer group named " " (and its changelog topic changelog___--sensors);
    `metrics.host = " "` was accepted and the address failed only when the daemon bound it. Both are refused like
    an empty value, from the file and from the environment."""
    with pytest.raises(ConfigError) as err:
        build_config({section: {name: value}})
    assert str(err.value) == f"{section}.{name} must not be empty"
    with pytest.raises(ConfigError) as err:
        load_config(None, env={f"ANOMALY_{section.upper()}_{name.upper()}": value})
    assert str(err.value).startswith(f"{section}.{name} must not be empty")


def test_model_num_layers_beyond_a_sane_bound_is_refused() -> None:
    """`model.num_layers = 10000000` (a tiny hidden_size, so that the weights fit in memory) built the model one
    layer at a time for hours; 10,000 layers took 25 s to build."""
    with pytest.raises(ConfigError) as err:
        build_config({"model": {"num_layers": 10_000_000}})
    assert str(err.value) == "model.num_layers must be at most 1000, got 10000000"
    assert build_config({"model": {"num_layers": 1000}}).model.num_layers == 1000


def test_data_dayfirst_with_a_time_format_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        build_config({"data": {"dayfirst": True, "time_format": "%d/%m/%Y"}})
    assert str(err.value) == (
        "data.dayfirst true does nothing with data.time_format '%d/%m/%Y', whose %d and %m give the order of day "
        "and month: leave one out"
    )
    assert (err.value.key, err.value.related) == ("data.dayfirst", ("data.time_format",))
    assert build_config({"data": {"dayfirst": False}}).data.dayfirst is False
    assert build_config({"data": {"time_format": "%d/%m/%Y"}}).data.time_format == "%d/%m/%Y"


@pytest.mark.parametrize("name", ["key_field", "time_field", "values_field", "readings_field"])
@pytest.mark.parametrize("value", [" ", "\t "])
def test_whitespace_only_message_field_names_are_refused_as_empty(name: str, value: str) -> None:
    """`kafka.key_field = " "` was accepted: no message has a field named " ", so every message fell back to its
    Kafka message key or was dead-lettered as missing_field (and the same for the time, values and readings
    fields). Refused like an empty name, from the file and from the environment, as data.key_column is."""
    with pytest.raises(ConfigError) as err:
        build_config({"kafka": {name: value}})
    assert str(err.value) == f"kafka.{name} must not be empty"
    with pytest.raises(ConfigError) as err:
        load_config(None, env={f"ANOMALY_KAFKA_{name.upper()}": value})
    assert str(err.value).startswith(f"kafka.{name} must not be empty")
    with pytest.raises(ConfigError) as err:
        build_config({"data": {"key_column": value}})
    assert str(err.value) == "data.key_column must not be empty (leave it out for one series)"


def test_the_date_column_is_layered_like_the_time_column(tmp_path) -> None:
    """data.date_column from a pipeline file, an ANOMALY_DATA_DATE_COLUMN variable, or an option, as any setting."""
    toml = tmp_path / "p.toml"
    toml.write_text('[data]\ntime_column = "Time"\ndate_column = "Date"\n')
    assert load_config(toml).data.date_column == "Date"
    assert load_config(toml, env={"ANOMALY_DATA_DATE_COLUMN": "Day"}).data.date_column == "Day"
    assert (
        load_config(toml, {"data.date_column": "D"}, env={"ANOMALY_DATA_DATE_COLUMN": "Day"}).data.date_column
        == "D"
    )
    assert load_config(None).data.date_column is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"time_column": "", "date_column": "Date"},
            "data.date_column is joined to the time column's times of day, and there is none (--no-time-column): "
            "leave one out",
        ),
        (
            {"time_column": "Date", "date_column": "Date"},
            "data.date_column names the time column 'Date' too: the date and the times of day are two columns",
        ),
        ({"date_column": "Date", "features": ["Date", "a"]}, "data.features includes the date column 'Date'"),
        ({"date_column": " "}, "data.date_column must not be empty (leave it out)"),
    ],
)
def test_a_date_column_without_its_time_column_is_refused(data, message) -> None:
    with pytest.raises(ConfigError) as err:
        build_config({"data": data})
    assert str(err.value).startswith(message)


def test_every_numeric_train_and_engine_setting_out_of_range_is_one_line_with_its_value(tmp_path):
    """From a pipeline file, each count below its range was refused without the value ("train.epochs must be
    positive"); the settings that size a key's state at 2**63 - 1 (the largest TOML integer) passed and ended
    replay and consume with numpy's "array is too big" traceback."""
    import dataclasses
    import math

    from anomaly.config import EngineConfig

    bad = {"train": {}, "engine": {}}
    for section, cls in (("train", TrainConfig), ("engine", EngineConfig)):
        for f in dataclasses.fields(cls):
            default = getattr(cls(), f.name)
            if isinstance(default, bool) or not isinstance(default, int | float) or f.name == "seed":
                continue
            bad[section][f.name] = -1 if isinstance(default, int) else -math.inf
    bad["engine"].update(static_threshold=-math.inf, max_gap_seconds=-math.inf)  # None by default
    assert len(bad["train"]) + len(bad["engine"]) == 40
    for section, names in bad.items():
        for name, value in names.items():
            path = tmp_path / "p.toml"
            path.write_text(f"[{section}]\n{name} = {'-inf' if value == -math.inf else value}\n")
            with pytest.raises(ConfigError) as err:
                load_config(path)
            line = str(err.value)
            assert "\n" not in line and line.startswith(f"{section}.{name} must ")
            assert line.endswith(f"got {value!r} (from pipeline file {path})"), line
    for name in ("dynamic_history", "spot_init", "spot_peaks", "spot_depth"):
        (tmp_path / "p.toml").write_text(f"[engine]\n{name} = {2**63 - 1}\n")
        with pytest.raises(ConfigError) as err:
            load_config(tmp_path / "p.toml")
        assert str(err.value).startswith(f"engine.{name} must be at least ") and str(err.value).endswith(
            f" and below 2**31, got {2**63 - 1} (from pipeline file {tmp_path / 'p.toml'})"
        )


def test_credentials_the_security_protocol_does_not_use_are_warned_about_without_the_secret(caplog) -> None:
    """`kafka.sasl_password` under PLAINTEXT (or SSL) was kept without a word where no Kafka client is built
    (`anomaly config`, replay); the Kafka commands refuse it. The warning names the setting, never its value."""
    env = {"ANOMALY_KAFKA_SASL_PASSWORD": "hunter2", "ANOMALY_KAFKA_SECURITY_PROTOCOL": "SSL"}
    with caplog.at_level("WARNING", logger="anomaly.config"):
        load_config(None, env=env)
    assert caplog.messages == [
        "kafka.sasl_password (from environment variable ANOMALY_KAFKA_SASL_PASSWORD) has no effect: "
        "kafka.security_protocol is SSL, not SASL_PLAINTEXT or SASL_SSL"
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="anomaly.config"):
        load_config(None, env={"ANOMALY_KAFKA_SSL_CAFILE": "ca.pem", "ANOMALY_KAFKA_SASL_USERNAME": "u"})
        load_config(None, env={**env, "ANOMALY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"})
    assert caplog.messages == [
        "kafka.sasl_username (from environment variable ANOMALY_KAFKA_SASL_USERNAME) has no effect: "
        "kafka.security_protocol is PLAINTEXT, not SASL_PLAINTEXT or SASL_SSL",
        "kafka.ssl_cafile (from environment variable ANOMALY_KAFKA_SSL_CAFILE) has no effect: "
        "kafka.security_protocol is PLAINTEXT, not SSL or SASL_SSL",
    ]  # SASL_SSL uses both: nothing

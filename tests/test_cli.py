"""The command line as a user meets it: help texts, a small end-to-end run, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from anomaly.cli import ONEDNN_CACHE_CAPACITY, main

COMMANDS = sorted(main.commands)


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_top_level_help_lists_every_command() -> None:
    out = invoke("--help").output
    for name in ["generate", "train", "inspect", "replay", "demo", "bench", "consume", "produce"]:
        assert name in COMMANDS
        assert f"  {name} " in out


def test_anomaly_without_a_command_prints_its_help_as_written() -> None:
    """It printed the whole help squeezed into one `error: Usage: ...` line."""
    result = invoke()
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == invoke("--help").stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_documents_its_options(name) -> None:
    result = invoke(name, "--help")
    assert result.exit_code == 0
    command = main.commands[name]
    for param in command.params:
        if param.param_type_name == "option" and param.name != "help":
            assert param.help, f"{name} --{param.name} has no help text"
            has_default = param.show_default or "[default:" in param.help or param.is_flag or param.required
            assert has_default, f"{name} --{param.name} does not state its default"


def test_generate_train_inspect_replay(tmp_path) -> None:
    train_csv, test_csv, model = tmp_path / "train.csv", tmp_path / "test.csv", tmp_path / "m.pt"
    r = invoke("generate", "-o", str(train_csv), "--points", "1500", "--sensors", "3")
    assert r.exit_code == 0 and "wrote 1500 rows (0 labelled anomalous)" in r.output
    r = invoke(
        "generate",
        "-o",
        str(test_csv),
        "--points",
        "600",
        "--sensors",
        "3",
        "--anomalies",
        "2",
        "--seed",
        "5",
    )
    assert r.exit_code == 0
    pipeline = tmp_path / "p.toml"
    pipeline.write_text("[model]\nwindow = 8\nhidden_size = 8\n[train]\nepochs = 2\n")
    r = invoke(
        "train",
        str(train_csv),
        "-o",
        str(model),
        "--pipeline",
        str(pipeline),
        "--epochs",
        "1",
        env={"ANOMALY_MODEL_HIDDEN_SIZE": "12"},
    )
    assert r.exit_code == 0, r.output
    assert "1 epoch " in r.output and "windows/s" in r.output
    meta = json.loads(invoke("inspect", str(model), "--json").output)
    assert meta["architecture"]["window"] == 8  # pipeline file
    assert meta["architecture"]["hidden_size"] == 12  # environment beats the file
    assert meta["training"]["epochs_run"] == 1  # option beats the file
    assert meta["features"] == ["sensor_1", "sensor_2", "sensor_3"]
    r = invoke("replay", str(test_csv), "--model", str(model), "--out", str(tmp_path / "r"), "--no-plots")
    assert r.exit_code == 0, r.output
    assert "F1" in r.output and "FAR, %" in r.output
    assert (tmp_path / "r" / "summary.json").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "missing.csv"], "error: data file not found: missing.csv"),
        (["inspect", "missing.pt"], "error: model bundle not found: missing.pt"),
        (["train", "{csv}", "--pipeline", "none.toml"], "error: pipeline file not found: none.toml"),
        (["replay", "{csv}", "--model", "{csv}"], "is not an anomaly model bundle"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path) -> None:
    csv = tmp_path / "x.csv"
    csv.write_text("timestamp,a\n1,2\n")
    args = [a.replace("{csv}", str(csv)) for a in args]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output


def test_bad_option_value_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["train", "x.csv", "--window", "zero"])
    assert result.exit_code == 2 and "Invalid value for '--window'" in result.output


def test_bad_environment_setting_is_one_line(tmp_path) -> None:
    csv = tmp_path / "x.csv"
    csv.write_text("timestamp,a\n1,2\n")
    result = CliRunner().invoke(main, ["train", str(csv)], env={"ANOMALY_MODEL_WINDOW": "big"})
    assert result.exit_code == 2 and result.output.strip() == (
        "error: model.window must be an integer, got 'big' (from environment variable ANOMALY_MODEL_WINDOW)"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["train", "{csv}", "-o", "{dir}/m.pt"],
        ["replay", "{csv}", "-m", "{dir}/none.pt"],
        ["consume", "-m", "{dir}/none.pt"],
        ["demo", "-o", "{csv}/demo"],
    ],
)
def test_a_setting_left_unused_is_a_warning_line(args, tmp_path) -> None:
    """The warning that a pipeline file's setting has no effect was a timestamped log line (`2026-... WARNING
    anomaly.config: ...`) among the `warning:` lines train and replay print for everything else."""
    csv = tmp_path / "x.csv"
    csv.write_text("timestamp,a\nbroken\n")
    toml = tmp_path / "p.toml"
    toml.write_text('[engine]\nthreshold = "dynamic"\nstatic_threshold = 2.5\n')
    argv = [a.replace("{csv}", str(csv)).replace("{dir}", str(tmp_path)) for a in args]
    result = CliRunner().invoke(main, [*argv, "--pipeline", str(toml)])
    assert result.stderr.splitlines()[0] == (
        f"warning: engine.static_threshold (from pipeline file {toml}) has no effect: engine.threshold is "
        "dynamic, not static"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--static-threshold", "-1"],
            "error: engine.static_threshold must be a positive number of score units (1.0 = calibration quantile), "
            "got -1.0 (from option --static-threshold)",
        ),
        (
            ["--separator", ",", "--decimal", ","],
            "error: data.separator must differ from data.decimal (data.separator from option --separator, "
            "data.decimal from option --decimal)",
        ),
    ],
)
def test_a_bad_option_value_names_the_option(args, expected, tmp_path) -> None:
    """The error named the setting (engine.static_threshold) but not the option the user typed."""
    csv = tmp_path / "x.csv"
    csv.write_text("timestamp,a\n1,2\n")
    result = CliRunner().invoke(main, ["replay", str(csv), "-m", "none.pt", *args])
    assert (result.exit_code, result.output) == (2, expected + "\n")


@pytest.mark.parametrize(
    ("args", "env", "seed"),
    [([], {}, 0), ([], {"ANOMALY_TRAIN_SEED": "3"}, 3), (["--seed", "5"], {"ANOMALY_TRAIN_SEED": "3"}, 5)],
)
def test_demo_seed_follows_the_documented_precedence(args, env, seed, monkeypatch, tmp_path) -> None:
    """`--seed` always passed its default 0 as an option, so ANOMALY_TRAIN_SEED (and a pipeline's train.seed)
    never reached `anomaly demo`. The data and the training take the seed in force."""
    from anomaly.commands import replay_cmds
    from anomaly.errors import AnomalyError
    from anomaly.synthetic import SyntheticSpec

    seen: dict[str, object] = {}
    real_generate = replay_cmds.generate

    def small(spec):  # type: ignore[no-untyped-def]
        seen.setdefault("data", []).append(spec.seed)  # type: ignore[union-attr]
        return real_generate(SyntheticSpec(n_points=50, seed=spec.seed))  # a small file, no anomalies

    def stop(paths, cfg, out):  # type: ignore[no-untyped-def]
        seen["train"] = cfg.train.seed
        raise AnomalyError("stopped after the settings")

    monkeypatch.setattr(replay_cmds, "generate", small)
    monkeypatch.setattr(replay_cmds, "run_training", stop)
    result = CliRunner().invoke(main, ["demo", "-o", str(tmp_path), *args], env=env)
    assert (result.exit_code, seen) == (2, {"data": [seed, seed + 1], "train": seed})


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (
            [],
            {},
            "error: --static-threshold sets the static threshold, but engine.threshold is dynamic: add --threshold "
            "static (see: anomaly replay --help)",
        ),
        (["--threshold", "static"], {}, "error: model bundle not found: none.pt"),
        ([], {"ANOMALY_ENGINE_THRESHOLD": "static"}, "error: model bundle not found: none.pt"),
    ],
)
def test_a_static_threshold_without_the_static_kind_is_refused(args, env, expected, tmp_path) -> None:
    """`replay --static-threshold 3` under the default dynamic threshold replayed as if it had not been given."""
    csv = tmp_path / "x.csv"
    csv.write_text("timestamp,a\n1,2\n")
    argv = ["replay", str(csv), "-m", "none.pt", "--static-threshold", "3", *args]
    result = CliRunner().invoke(main, argv, env=env, prog_name="anomaly")
    assert (result.exit_code, result.output) == (2, expected + "\n")


def test_replay_lists_the_files_it_wrote(bundle_path, test_csv, tmp_path) -> None:
    """With replay.parquet = false the last lines still listed scores.parquet, which was not written."""
    out = tmp_path / "r"
    args = ["replay", str(test_csv), "-m", str(bundle_path), "-o", str(out), "--no-plots"]
    result = CliRunner().invoke(main, args, env={"ANOMALY_REPLAY_PARQUET": "false"})
    listed = [line for line in result.output.splitlines() if line.startswith("results: ")]
    assert (result.exit_code, listed, sorted(p.name for p in out.iterdir())) == (
        0,
        [f"results: {out}/ (scores.csv, alerts.jsonl, rejections.jsonl, summary.json)"],
        ["alerts.jsonl", "rejections.jsonl", "scores.csv", "summary.json"],
    )
    # --metrics-out (the demo writes DIR/metrics.prom) was written and named nowhere
    metrics = tmp_path / "m.prom"
    result = CliRunner().invoke(main, [*args, "--metrics-out", str(metrics)])
    tail = result.output.splitlines()[-2:]
    assert (result.exit_code, tail) == (
        0,
        [
            f"results: {out}/ (scores.csv, scores.parquet, alerts.jsonl, rejections.jsonl, summary.json)",
            f"metrics: {metrics}",
        ],
    )
    assert metrics.read_text().startswith("# HELP ")
    # the wall-clock latency of a backtest measured the years since the data's event times: not observed; the
    # decision delay, in event time, is
    text = metrics.read_text()
    assert "anomaly_latency_seconds_count 0.0\n" in text
    assert "anomaly_decision_delay_seconds_count 0.0\n" not in text


@pytest.mark.parametrize(
    ("args", "option", "instead"),
    [
        (["train", "x.csv", "--features", ""], "--features", "leave the option out for all numeric columns"),
        (
            ["replay", "x.csv", "-m", "m.pt", "--features", " , "],
            "--features",
            "leave the option out for the model's",
        ),
        (
            ["produce", "x.csv", "--features", ""],
            "--features",
            "leave the option out for the model's features, or all numeric ones",
        ),
        (
            ["train", "x.csv", "--time-column", ""],
            "--time-column",
            "pass --no-time-column for files without one",
        ),
        (
            ["replay", "x.csv", "-m", "m.pt", "--time-column", ""],
            "--time-column",
            "pass --no-time-column for files without one",
        ),
    ],
)
def test_an_empty_column_option_is_refused(args, option, instead) -> None:
    """`--features "$FEATURES"` with the variable unset trained on every numeric column, and `--time-column ""`
    numbered the readings as --no-time-column does (the file's time became a text column), without a word."""
    result = CliRunner().invoke(main, args, prog_name="anomaly")
    value = args[args.index(option) + 1]
    assert (result.exit_code, result.output) == (
        2,
        f"error: Invalid value for '{option}': {value!r} names no column ({instead}) (see: anomaly {args[0]} --help)\n",
    )


@pytest.mark.parametrize("command", ["train", "replay", "skab"])
def test_an_empty_pipeline_path_is_refused(command, tmp_path) -> None:
    """`-p "$PIPELINE"` with the variable unset (an empty path) ran on the defaults without a word."""
    args = {"train": ["x.csv"], "replay": ["x.csv", "-m", "m.pt"], "skab": [str(tmp_path)]}[command]
    result = CliRunner().invoke(main, [command, *args, "-p", ""], prog_name="anomaly")
    assert (result.exit_code, result.output) == (
        2,
        "error: Invalid value for '--pipeline' / '-p': an empty path names no pipeline file (leave the option out "
        f"for the defaults) (see: anomaly {command} --help)\n",
    )


def test_demo_pipeline_file_matches_the_embedded_default() -> None:
    from pathlib import Path

    from anomaly.commands.replay_cmds import DEMO
    from anomaly.config import build_config, read_toml

    path = Path(__file__).resolve().parents[1] / "pipelines" / "demo.toml"
    assert build_config(read_toml(path)) == build_config(DEMO)


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (
            ["replay", "x.csv", "--threads", "2"],
            {},
            "error: --threads is an option of anomaly itself, not of replay: put it before the command "
            "(anomaly --threads N replay ...)",
        ),
        (
            ["inspect", "m.pt"],
            {"ANOMALY_THREADS": "many"},
            "error: Invalid value for '--threads': 'many' is not a valid integer range. "
            "(from environment variable ANOMALY_THREADS) (see: anomaly --help)",
        ),
        (
            ["train", "x.csv", "--windw", "8"],
            {},
            "error: No such option '--windw'. Did you mean '--window'? (see: anomaly train --help)",
        ),
        (  # torch's "Overflow when unpacking long" traceback, before anything else ran
            ["inspect", "m.pt"],
            {"ANOMALY_THREADS": "99999999999999999999"},
            "error: Invalid value for '--threads': 99999999999999999999 is not in the range 1<=x<=2147483647. "
            "(from environment variable ANOMALY_THREADS) (see: anomaly --help)",
        ),
        (
            ["--threads", "2147483648", "inspect", "m.pt"],
            {},
            "error: Invalid value for '--threads': 2147483648 is not in the range 1<=x<=2147483647. "
            "(see: anomaly --help)",
        ),
    ],
)
def test_click_usage_errors_are_one_error_line(args, env, expected) -> None:
    """Issue 9: click's own errors were three lines ending in `Error:` and never named the variable."""
    result = CliRunner().invoke(main, args, env=env, prog_name="anomaly")
    assert result.exit_code == 2
    assert [line for line in result.output.splitlines() if line.strip()] == [expected]


def test_inspect_prints_readable_lines_not_dicts_or_long_floats(bundle_path) -> None:
    import re

    out = invoke("inspect", str(bundle_path)).output
    assert "{" not in out and "'" not in out
    assert not re.search(r"\d\.\d{6,}", out), out  # no 16-digit floats
    assert "sampling:        every 60 s; a gap over 18,000 s resets a key (0 in the training data)" in out


def test_train_and_inspect_name_the_scored_features(train_csv, tmp_path) -> None:
    """model.targets (or train.wander_screen) leaves features unscored; `inspect` showed only `targets [0]` among
    the architecture's numbers and `train` nothing, so a misspelt or screened target went unnoticed."""
    model = tmp_path / "m.pt"
    args = ["train", str(train_csv), "-o", str(model), "--epochs", "1", "--window", "8", "--hidden-size", "4"]
    trained = CliRunner().invoke(main, args, env={"ANOMALY_MODEL_TARGETS": "sensor_2"})
    shown = invoke("inspect", str(model)).output.splitlines()
    assert (
        trained.exit_code,
        [line for line in trained.output.splitlines() if "targets" in line],
        shown[3],
    ) == (
        0,
        ["scored features (targets): sensor_2; context: sensor_1, sensor_3, sensor_4"],
        "targets (1):     sensor_2; context, read but not scored: sensor_1, sensor_3, sensor_4",
    )
    assert shown[8].startswith("training:        1 epoch (best 1), best val loss ")  # was '1 epochs'


def test_inspect_of_a_bundle_scoring_every_feature_has_no_targets_line(bundle_path) -> None:
    assert "targets (" not in invoke("inspect", str(bundle_path)).output


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:9108/metrics"),
        ("::", "http://[::1]:9108/metrics"),
        ("10.1.2.3", "http://10.1.2.3:9108/metrics"),
        ("fe80::1", "http://[fe80::1]:9108/metrics"),
    ],
)
def test_the_metrics_address_printed_is_a_usable_url(host, url) -> None:
    from anomaly.commands.kafka_cmds import metrics_url

    assert metrics_url(host, 9108) == url


def test_produce_that_may_not_create_its_topic_says_so_in_one_line(monkeypatch, tmp_path) -> None:
    """A broker refusing the topic's creation (an ACL, say) ended produce with a kafka-python traceback."""
    import kafka.errors

    from anomaly.kafka import clients

    class Admin:
        def close(self) -> None:
            pass

    def refuse(*args, **kwargs):
        raise kafka.errors.TopicAuthorizationFailedError("not allowed")

    monkeypatch.setattr(clients, "make_admin", lambda cfg: Admin())
    monkeypatch.setattr(clients, "create_topics", refuse)
    csv = tmp_path / "d.csv"
    csv.write_text("timestamp,a\n1,1.0\n2,2.0\n")
    result = CliRunner().invoke(
        main, ["produce", str(csv), "-t", "t", "--partitions", "2", "-b", "127.0.0.1:1"]
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("error: cannot create topic t on 127.0.0.1:1: [Error 29] ")
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("topics", "expected"),
    [
        (None, "error: cannot create topic sensors on 127.0.0.1:1: "),
        ('["plant"]', "error: cannot create topic plant on 127.0.0.1:1: "),
        ('["a", "b"]', "error: kafka.topics names 2 topics (a, b): pass --topic"),
    ],
)
def test_produce_without_topic_writes_to_the_topic_consume_reads(
    monkeypatch, tmp_path, topics, expected
) -> None:
    """`produce` required -t even where the pipeline names the topic `consume` reads (kafka.topics): now that topic
    is the default, and a pipeline naming several is refused in one line."""
    import kafka.errors

    from anomaly.kafka import clients

    class Admin:
        def close(self) -> None:
            pass

    def refuse(admin, names, *args, **kwargs):
        raise kafka.errors.TopicAuthorizationFailedError(f"not allowed: {names}")

    monkeypatch.setattr(clients, "make_admin", lambda cfg: Admin())
    monkeypatch.setattr(clients, "create_topics", refuse)
    csv = tmp_path / "d.csv"
    csv.write_text("timestamp,a\n1,1.0\n2,2.0\n")
    args = ["produce", str(csv), "--partitions", "2", "-b", "127.0.0.1:1"]
    if topics is not None:
        (tmp_path / "p.toml").write_text(f"[kafka]\ntopics = {topics}\n")
        args += ["-p", str(tmp_path / "p.toml")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert result.stderr.startswith(expected)
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("given", "env", "check"),
    [
        (["-b", "127.0.0.1:1"], {}, "--bootstrap-servers (kafka.bootstrap_servers)"),
        (["-p", "P"], {}, "kafka.bootstrap_servers (from pipeline file {pipeline})"),
        (
            ["-p", "P"],
            {"ANOMALY_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"},
            "kafka.bootstrap_servers (from environment variable ANOMALY_KAFKA_BOOTSTRAP_SERVERS)",
        ),
        ([], {}, "kafka.bootstrap_servers (not set: the default; --bootstrap-servers sets it)"),
    ],
)
def test_an_unreachable_broker_names_where_its_address_came_from(
    monkeypatch, tmp_path, given, env, check
) -> None:
    """`produce -b 127.0.0.1:1` (a broker that does not answer) said "check kafka.bootstrap_servers", a setting
    the user never wrote: the error names the option that gave the address, else the variable or the file."""
    import kafka.errors

    from anomaly.kafka import clients

    def unreachable(cfg, *args, **kwargs):
        raise clients._fail("admin client", cfg, kafka.errors.KafkaTimeoutError())

    monkeypatch.setattr(clients, "make_admin", unreachable)
    csv = tmp_path / "d.csv"
    csv.write_text("timestamp,a\n1,1.0\n2,2.0\n")
    pipeline = tmp_path / "p.toml"
    pipeline.write_text('[kafka]\nbootstrap_servers = "127.0.0.1:1"\n')
    args = [str(pipeline) if a == "P" else a for a in given]
    result = CliRunner().invoke(main, ["produce", str(csv), "-t", "t", *args], env=env)
    where = "127.0.0.1:9092" if not given else "127.0.0.1:1"
    assert (result.exit_code, result.stderr) == (
        2,
        f"error: cannot reach Kafka at {where} (admin client): no usable connection; check "
        f"{check.format(pipeline=pipeline)}, that the broker is up and the security settings "
        "(security_protocol PLAINTEXT)\n",
    )


def test_consume_refuses_a_zero_checkpoint_interval_before_connecting() -> None:
    """The option's range is the setting's (kafka.checkpoint_interval_s > 0): its help says x>0.0, and 0 is a
    usage error naming the option, not a settings error after start-up."""
    result = CliRunner().invoke(main, ["consume", "--checkpoint-interval", "0"])
    assert result.exit_code == 2
    assert "Invalid value for '--checkpoint-interval'" in result.output and "x>0.0" in result.output
    assert "x>0.0" in CliRunner().invoke(main, ["consume", "--help"]).output


@pytest.mark.parametrize(("best", "run", "noted"), [(1, 6, True), (1, 1, False), (4, 9, False)])
def test_train_notes_a_model_whose_best_epoch_was_the_first(best, run, noted, capsys) -> None:
    from types import SimpleNamespace

    from anomaly.commands.model_cmds import print_training

    training = {"rows": 604, "series": 1, "epochs_run": run, "best_epoch": best, "best_val_loss": 0.5}
    result = SimpleNamespace(
        bundle=SimpleNamespace(meta={"training": training}, features=["a"], targets=["a"], calibration={}),
        device="cpu",
        amp_dtype=None,
        windows_per_second=1.0,
    )
    print_training(result, "m.pt")  # type: ignore[arg-type]
    out = capsys.readouterr()
    assert f"{run} {'epoch' if run == 1 else 'epochs'} (best {best}," in out.out
    assert ("note: the validation loss was lowest after the first of" in out.err) is noted
    assert "note:" not in out.out


def test_ctrl_c_while_the_command_line_loads_ends_in_one_line() -> None:
    """Importing the command line takes a second or two (torch, pandas): Ctrl-C then used to print the
    traceback of whatever module was loading. The entry point (`anomaly`, `python -m anomaly`) ends as Ctrl-C
    does later. The interrupt is raised at the import itself, so the test does not depend on timing."""
    import subprocess
    import sys
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    entry = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]["anomaly"]
    assert entry == "anomaly.__main__:run"
    code = (
        "import builtins\n"
        "real = builtins.__import__\n"
        "def interrupted(name, *args, **kwargs):\n"
        "    if name == 'anomaly.cli':\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = interrupted\n"
        "from anomaly.__main__ import run\n"
        "run()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root)
    assert (done.returncode, done.stderr, done.stdout) == (1, "\nerror: aborted\n", "")
    ok = subprocess.run(
        [sys.executable, "-m", "anomaly", "--help"], capture_output=True, text=True, timeout=60, cwd=root
    )
    assert ok.returncode == 0 and ok.stdout.startswith("Usage: python -m anomaly [OPTIONS] COMMAND")


def _run_with_stdout_closed(args: list[str]):  # type: ignore[no-untyped-def]
    """`python -m anomaly ARGS` writing to a pipe whose read end is closed before the command starts, so every
    write fails whatever the timing."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "anomaly", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            cwd=root,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize("args", [["inspect"], ["inspect", "--json"]])
def test_stdout_closed_early_is_a_quiet_exit_141(bundle_path, args) -> None:
    """`anomaly inspect model.pt | head -1` printed `error: Broken pipe` and exited 2. A closed stdout is the
    reader's choice, not an error: no line on stderr (no `Exception ignored ... BrokenPipeError` at exit
    either) and status 141 (128 + SIGPIPE), as a shell reports for `git log | head -1`."""
    done = _run_with_stdout_closed([args[0], str(bundle_path), *args[1:]])
    assert (done.returncode, done.stderr) == (141, "")


@pytest.mark.parametrize("args", [["--help"], ["replay", "--help"], ["--version"]])
def test_help_and_version_cut_short_exit_141_as_other_output(args) -> None:
    """`anomaly replay --help | head -1` exited 1 (click's own handling of a broken pipe, in the option callbacks
    that print the help and the version, outside every command's error handling) where every other output cut
    short by its reader exits quietly with 141."""
    done = _run_with_stdout_closed(args)
    assert (done.returncode, done.stderr) == (141, "")


@pytest.mark.parametrize("out", ["-", "/dev/stdout"])
def test_generate_to_stdout_cut_short_is_a_quiet_exit_141(out) -> None:
    """`anomaly generate -o - | head -1` wrote a file named `-`, and `-o /dev/stdout | head -1` said `error:
    cannot write the CSV file /dev/stdout: Broken pipe` with status 2: an output cut short by its reader ends
    quietly with 141, as every other command's does."""
    done = _run_with_stdout_closed(["generate", "-o", out, "--points", "2000"])
    assert (done.returncode, done.stderr) == (141, "")


def test_generate_dash_writes_the_csv_to_stdout_and_what_it_wrote_to_stderr(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["generate", "-o", "-", "--points", "500", "--anomalies", "1"])
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()
    assert rows[0] == "timestamp,sensor_1,sensor_2,sensor_3,sensor_4,sensor_5,sensor_6,anomaly,anomaly_kind"
    assert len(rows) == 501
    labelled = sum(int(r.split(",")[7]) for r in rows[1:])
    assert result.stderr == f"wrote 500 rows ({labelled} labelled anomalous) to standard output\n"
    assert list(tmp_path.iterdir()) == []


def test_a_broken_pipe_that_is_not_stdout_stays_an_error(bundle_path, monkeypatch) -> None:
    """Only stdout's reader going away is quiet: a broken pipe elsewhere (a socket, a FIFO named as a file) is
    still one `error:` line and status 2."""
    from anomaly.commands import model_cmds

    def broken(path):  # type: ignore[no-untyped-def]
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(model_cmds, "read_metadata", broken)
    out = CliRunner().invoke(main, ["inspect", str(bundle_path)])
    assert (out.exit_code, out.stderr) == (2, "error: Broken pipe\n")


def test_generate_with_a_sub_second_interval_writes_times_train_reads(tmp_path) -> None:
    """`generate --interval 0.1` wrote whole seconds (ten readings a time), and train refused its own file as
    times cut to the second."""
    import numpy as np

    from anomaly.config import DataConfig
    from anomaly.data import load_series, sampling_interval

    path = tmp_path / "hz.csv"
    assert (
        invoke("generate", "-o", str(path), "--points", "30", "--sensors", "1", "--interval", "0.1").exit_code
        == 0
    )
    lines = path.read_text().splitlines()
    assert lines[1].startswith("2023-11-14T22:13:20.000Z,") and lines[4].startswith(
        "2023-11-14T22:13:20.300Z,"
    )
    (s,), _ = load_series([path], DataConfig())
    assert sampling_interval([s]) == 0.1 and np.diff(s.timestamps).min() > 0.09
    minutes = tmp_path / "minutes.csv"
    assert invoke("generate", "-o", str(minutes), "--points", "10", "--sensors", "1").exit_code == 0
    assert minutes.read_text().splitlines()[2].startswith("2023-11-14T22:14:20Z,")  # whole seconds as before


def test_generate_with_an_interval_finer_than_milliseconds_keeps_its_steps(tmp_path) -> None:
    """`generate --interval 0.0015` (the option allows down to 0.001) wrote times cut to the millisecond: steps
    of 1 and 2 ms in turn, not the interval asked for. Such times get microseconds."""
    import numpy as np

    from anomaly.config import DataConfig
    from anomaly.data import load_series

    path = tmp_path / "fine.csv"
    args = ("generate", "-o", str(path), "--points", "10", "--sensors", "1", "--interval", "0.0015")
    assert invoke(*args).exit_code == 0
    assert path.read_text().splitlines()[2].startswith("2023-11-14T22:13:20.001500Z,")
    (s,), _ = load_series([path], DataConfig())
    assert np.allclose(np.diff(s.timestamps), 0.0015, rtol=0, atol=1e-6)


def _fake_produce(monkeypatch, features):
    """`produce` against a fake broker and a fake bundle of ``features``: returns the list its sends land in."""
    from types import SimpleNamespace

    import anomaly.bundle
    from anomaly.kafka import clients

    sent: list[tuple[bytes, bytes]] = []

    class Producer:
        def send(self, topic, key, value):
            sent.append((key, value))
            return SimpleNamespace(add_errback=lambda fn: None)

        def flush(self):
            pass

        def close(self):
            pass

    monkeypatch.setattr(clients, "make_admin", lambda cfg: SimpleNamespace(close=lambda: None))
    monkeypatch.setattr(clients, "check_topics", lambda *a, **k: None)
    monkeypatch.setattr(clients, "make_producer", lambda *a, **k: Producer())
    monkeypatch.setattr(anomaly.bundle, "load_bundle", lambda path: SimpleNamespace(features=list(features)))
    return sent


@pytest.mark.parametrize("given", [["--features", "b,a"], ["-p", "PIPELINE"]])
def test_produce_with_a_model_sends_its_order_even_where_features_are_named(
    monkeypatch, tmp_path, given
) -> None:
    """With --model and --features (or data.features in the pipeline) naming the model's features in another
    order, values went in the named order, which the daemon reads by position: every sensor in another's place."""
    sent = _fake_produce(monkeypatch, ["a", "b"])
    csv = tmp_path / "d.csv"
    csv.write_text("timestamp,b,a\n1700000000,2.0,1.0\n")
    (tmp_path / "p.toml").write_text('[data]\nfeatures = ["b", "a"]\n')
    given = [str(tmp_path / "p.toml") if g == "PIPELINE" else g for g in given]
    result = CliRunner().invoke(main, ["produce", str(csv), "-t", "t", "-m", "m.pt", *given])
    assert result.exit_code == 0, result.output
    assert [json.loads(v)["values"] for _, v in sent] == [[1.0, 2.0]]


def test_produce_counts_one_key_one_message_and_one_reading_in_the_singular(monkeypatch, tmp_path) -> None:
    """`anomaly produce` of one reading said `sent 1 messages (1 readings of 1 keys)`."""
    _fake_produce(monkeypatch, ["a"])
    csv = tmp_path / "d.csv"
    csv.write_text("timestamp,a\n1700000000,1.0\n")
    result = CliRunner().invoke(main, ["produce", str(csv), "-t", "t", "-m", "m.pt"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["sent 1 message (1 reading of 1 key) to t"]


def test_produce_refuses_features_that_are_not_the_models(monkeypatch, tmp_path) -> None:
    """--features naming other sensors than --model's sent messages the daemon refuses one by one."""
    sent = _fake_produce(monkeypatch, ["a", "b"])
    csv = tmp_path / "d.csv"
    csv.write_text("timestamp,a,b,c\n1700000000,1.0,2.0,3.0\n")
    result = CliRunner().invoke(main, ["produce", str(csv), "-t", "t", "-m", "m.pt", "--features", "a,c"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: --features / data.features (a, c) are not the features of m.pt (a, b)"
    ]
    assert sent == []


def test_a_model_too_large_for_memory_is_one_error_line(train_csv, tmp_path) -> None:
    """`--hidden-size 100000000` (a few zeros too many) ended `anomaly train` with torch's allocation traceback."""
    result = CliRunner().invoke(
        main,
        [
            "train",
            str(train_csv),
            "--hidden-size",
            "100000000",
            "--device",
            "cpu",
            "-o",
            str(tmp_path / "m.pt"),
        ],
    )
    assert result.exit_code == 2, result.output
    line = result.stderr.splitlines()[-1]
    assert (
        line.startswith(
            "error: the model does not fit in memory on cpu (120,000,004,000,000,008 parameters need "
        )
        and "GiB available)" in line
    )
    assert line.endswith("): model.hidden_size 100000000 with model.num_layers 1 is too large")
    assert not (tmp_path / "m.pt").exists()


def test_consume_help_does_not_call_one_poll_one_engine_batch() -> None:
    """--max-poll-records said "(one engine batch)", but a batch takes further polls of fetched records up to
    kafka.max_batch_bytes (2 MiB by default), so an operator sizing batches by it was misled."""
    (option,) = [p for p in main.commands["consume"].params if p.name == "max_poll_records"]
    assert "one engine batch)" not in (option.help or "")
    assert "kafka.max_batch_bytes" in (option.help or "")


def test_train_and_replay_refuse_a_time_option_their_time_column_cannot_use(tmp_path, test_csv, bundle_path):
    """`--time-unit ms` on ISO times, `--time-format` on epoch numbers: both commands read on, ignoring it."""
    numbers = tmp_path / "numbers.csv"
    numbers.write_text("timestamp,sensor_1\n" + "".join(f"{1700000000 + i},{i % 3}\n" for i in range(50)))
    train = CliRunner().invoke(
        main, ["train", str(numbers), "--time-format", "%H:%M", "-o", str(tmp_path / "m")]
    )
    assert train.exit_code == 2
    assert train.output == (
        f"error: {numbers}: --time-format '%H:%M' (data.time_format) reads text times, but time column "
        "'timestamp' holds numbers such as 1700000000 (epoch times): leave it out, and give their unit with "
        "--time-unit if it is not told apart by magnitude\n"
    )
    args = [
        "replay",
        str(test_csv),
        "-m",
        str(bundle_path),
        "--out",
        str(tmp_path / "r"),
        "--time-unit",
        "ms",
    ]
    replay = CliRunner().invoke(main, args)
    assert replay.exit_code == 2
    assert replay.output == (
        f"error: {test_csv}: --time-unit ms (data.time_unit) is the unit of numeric times, but time column "
        "'timestamp' holds text such as '2023-11-14T22:13:20Z', read as dates: leave it out (give "
        "--time-format if the dates are not ISO-like)\n"
    )


def test_demo_with_a_pipeline_for_other_files_says_it_is_the_demos_data(tmp_path) -> None:
    """`anomaly demo -p pipelines/kafka.toml` stopped at `runs/demo/data/train.csv: key column 'sensor_id' not
    found`, a file the user never wrote: the demo generates its data, and the pipeline's [data] (or an
    ANOMALY_DATA_* variable) describes other files. The error says so."""
    pipeline = tmp_path / "p.toml"
    pipeline.write_text('[data]\nkey_column = "unit"\n')
    result = CliRunner().invoke(main, ["demo", "-o", str(tmp_path / "d"), "-p", str(pipeline)])
    train = tmp_path / "d" / "data" / "train.csv"
    columns = "timestamp, sensor_1, sensor_2, sensor_3, sensor_4, sensor_5, sensor_6, anomaly, anomaly_kind"
    assert (result.exit_code, result.stderr) == (
        2,
        f"error: {train}: key column 'unit' not found; columns are {columns}; that is the demo's own generated "
        f"data, which the [data] settings of the pipeline file {pipeline} may not describe: run the demo without "
        "them (its pipeline is pipelines/demo.toml)\n",
    )
    result = CliRunner().invoke(
        main, ["demo", "-o", str(tmp_path / "d")], env={"ANOMALY_DATA_TIME_COLUMN": "t"}
    )
    assert result.exit_code == 2 and result.stderr.endswith(
        "; that is the demo's own generated data, which the variable ANOMALY_DATA_TIME_COLUMN may not describe: run the "
        "demo without them (its pipeline is pipelines/demo.toml)\n"
    )


def test_generate_refuses_a_negative_seed_in_one_line(tmp_path) -> None:
    """`anomaly generate --seed -1` ended with numpy's traceback ("expected non-negative integer")."""
    result = CliRunner().invoke(main, ["generate", "-o", str(tmp_path / "g.csv"), "--seed", "-1"])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1].startswith(
        "error: Invalid value for '--seed': -1 is not in the range x>=0"
    )
    assert not (tmp_path / "g.csv").exists()


# A process started through the command line, then an LSTM called with many input shapes, as a daemon's polls
# give: the RssAnon (kB) it gained. oneDNN reads its cache capacity when it builds its first primitive.
_SHAPES = """
import random, torch
from anomaly.cli import main
main(["consume", "--help"], standalone_mode=False)
torch.set_num_threads(1)
lstm = torch.nn.LSTM(4, 16, batch_first=True)
def anon():
    return int([line for line in open("/proc/self/status") if line.startswith("RssAnon")][0].split()[1])
def call(batch, length):
    with torch.inference_mode():
        lstm(torch.zeros(batch, length, 4))
call(1, 1)
before = anon()
for batch, length in random.Random(0).sample([(b, n) for b in range(1, 201) for n in range(1, 6)], 400):
    call(batch, length)
print(anon() - before)
"""
_CACHE_VARS = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_a_model_called_in_ever_new_shapes_does_not_grow_the_process_by_a_cached_primitive_each() -> None:
    # Before session 20 each new shape kept a oneDNN primitive of about 0.3 MB, up to 1,024 of them: a daemon's
    # RSS crept up for hours (these 400 shapes: about +120 MB). The command line now caps the cache.
    env = {k: v for k, v in os.environ.items() if k not in _CACHE_VARS}
    run = subprocess.run(
        [sys.executable, "-c", _SHAPES], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    grown_kb = int(run.stdout.strip().splitlines()[-1])
    assert grown_kb < 40_000, f"{grown_kb} kB"


def test_the_onednn_cache_capacity_a_user_set_is_kept(monkeypatch) -> None:
    env = {k: v for k, v in os.environ.items() if k not in _CACHE_VARS}
    monkeypatch.setattr(os, "environ", env)
    assert CliRunner().invoke(main, ["consume", "--help"]).exit_code == 0
    assert env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(ONEDNN_CACHE_CAPACITY)
    env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = "1024"
    assert CliRunner().invoke(main, ["consume", "--help"]).exit_code == 0
    assert env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "1024"
    del env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"]
    env["DNNL_PRIMITIVE_CACHE_CAPACITY"] = "512"
    assert CliRunner().invoke(main, ["consume", "--help"]).exit_code == 0
    assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in env


@pytest.mark.parametrize(
    ("env", "warned"),
    [
        # max_request_bytes lowered alone (to a broker's message.max.bytes)
        ({"ANOMALY_KAFKA_MAX_REQUEST_BYTES": "200000"}, (900_000, 200_000)),
        ({"ANOMALY_KAFKA_DEAD_LETTER_MAX_BYTES": "2000000"}, (2_000_000, 1_048_576)),
        ({"ANOMALY_KAFKA_MAX_REQUEST_BYTES": "904096"}, None),  # the default dead-letter limit fits exactly
        ({}, None),
    ],
)
def test_consume_warns_when_its_dead_letters_cannot_fit_the_producers_request_limit(
    tmp_path, env: dict[str, str], warned: tuple[int, int] | None
) -> None:
    """kafka.dead_letter_max_bytes above kafka.max_request_bytes less a dead letter's headers was accepted without
    a word, and every dead letter cut to more than the producer takes was then refused and lost: `consume` says so
    at start, naming both settings and the values that fit (then goes on: here, to the missing model)."""
    model = tmp_path / "none.pt"
    result = CliRunner().invoke(main, ["consume", "-m", str(model), "--metrics-port", "0"], env=env)
    lines = result.stderr.splitlines()
    assert (result.exit_code, lines[-1]) == (2, f"error: model bundle not found: {model}")
    if warned is None:
        assert len(lines) == 1
        return
    dead, request = warned
    room = request - 4096
    assert lines[:-1] == [
        f"warning: kafka.dead_letter_max_bytes {dead} leaves no room under kafka.max_request_bytes {request} for a "
        f"dead letter's headers (up to 4096 bytes): a dead letter of more than about {room} bytes is refused by the "
        f"producer and lost; set kafka.dead_letter_max_bytes to at most {room} or raise kafka.max_request_bytes to "
        f"at least {dead + 4096}"
    ]


@pytest.mark.parametrize(("flag", "value"), [("--dayfirst", "true"), ("--monthfirst", "false")])
def test_dayfirst_with_a_time_format_is_refused_not_ignored(tmp_path, flag: str, value: str) -> None:
    """`--dayfirst --time-format '%m/%d/%Y %H:%M'` trained on month-first dates without a word (the format won):
    the order is given twice, so the pair is refused in one line, naming where each came from, like the other
    time options that would be ignored."""
    csv = tmp_path / "d.csv"
    csv.write_text("timestamp,a\n02/01/2023 10:00,1\n02/01/2023 10:01,2\n")
    fmt = "%m/%d/%Y %H:%M"
    result = CliRunner().invoke(
        main, ["train", str(csv), flag, "--time-format", fmt, "-o", str(tmp_path / "m.pt")]
    )
    assert (result.exit_code, result.stderr) == (
        2,
        f"error: data.dayfirst {value} does nothing with data.time_format '{fmt}', whose %d and %m give the order "
        f"of day and month: leave one out (data.dayfirst from option {flag}, data.time_format from option "
        "--time-format)\n",
    )
    assert not (tmp_path / "m.pt").exists()


def test_train_layers_option_has_the_settings_range() -> None:
    """`--layers` takes what model.num_layers takes (1 to 1000): 10000000 is a usage error naming the option."""
    result = CliRunner().invoke(main, ["train", "x.csv", "--layers", "10000000"])
    assert result.exit_code == 2
    assert "Invalid value for '--layers': 10000000 is not in the range 1<=x<=1000." in result.output
    assert "1<=x<=1000" in CliRunner().invoke(main, ["train", "--help"]).output


def test_train_and_replay_name_keys_that_differ_only_in_case_or_spaces(tmp_path) -> None:
    """`s1` and `S1 ` were two series without a word: one device whose name was typed two ways, cut in two."""
    rows = [
        f"2023-01-01T{i // 60:02d}:{i % 60:02d}:00Z,{('s1', 'S1 ')[i % 2]},{i % 7}.5,{i % 5}\n"
        for i in range(240)
    ]
    csv = tmp_path / "d.csv"
    csv.write_text("timestamp,device,a,b\n" + "".join(rows))
    model = tmp_path / "m.pt"
    common = ["--key-column", "device"]
    train = invoke(
        "train", str(csv), "-o", str(model), "--epochs", "1", "--window", "8", "--hidden-size", "4", *common
    )
    warning = (
        "warning: keys 's1' and 'S1 ' differ only in case or spaces: each is a series of its own, as the daemon "
        "keys them (key values are read as written); if they name one device, write its key one way\n"
    )
    assert train.exit_code == 0 and warning in train.stderr
    replay = invoke("replay", str(csv), "-m", str(model), "-o", str(tmp_path / "r"), "--no-plots", *common)
    assert replay.exit_code == 0 and replay.stderr.count(warning) == 1
    # in summary.json's warnings too (it was on stderr only), once
    warnings = json.loads((tmp_path / "r" / "summary.json").read_text())["warnings"]
    assert [w for w in warnings if "differ only in case" in w] == [
        warning.removeprefix("warning: ").rstrip("\n")
    ]


def test_dayfirst_on_iso_times_warns_that_it_had_no_effect(tmp_path) -> None:
    """`train --dayfirst` on ISO-8601 times read 2023-02-01 as 2 January (and 2023-02-13 as 13 February); the
    option has no day/month date to order there, so it is left out with one `warning:` line saying so."""
    csv = tmp_path / "d.csv"
    csv.write_text(
        "timestamp,a\n" + "".join(f"2023-02-01T{i // 60:02d}:{i % 60:02d},{i % 5}\n" for i in range(90))
    )
    model = tmp_path / "m.pt"
    args = ["train", str(csv), "-o", str(model), "--epochs", "1", "--window", "8", "--hidden-size", "4"]
    result = CliRunner().invoke(main, [*args, "--dayfirst"])
    assert result.exit_code == 0, result.output
    assert [line for line in result.stderr.splitlines() if line.startswith("warning:")] == [
        "warning: --dayfirst (data.dayfirst = true) had no effect: time column 'timestamp' holds dates such as "
        "'2023-02-01T00:00', not day/month dates (ISO-8601 dates are year first)"
    ]


def test_train_and_replay_read_the_date_and_the_time_from_two_columns(tmp_path) -> None:
    """`--date-column Date --time-column Time`: train and replay read a file with the date and the time of day in
    two columns (passing midnight) as the same file with one column of date-times: the same scores at the same
    times. The bundle remembers no data setting, so replay is given the columns again, as it is --time-column."""
    start = 1700000000 - 1700000000 % 86400 + 86400 - 1800  # half an hour before a midnight
    rows = [(start + 30 * i, (i * 7) % 11, (i * 3) % 5) for i in range(180)]

    def stamp(t: int, fmt: str) -> str:
        return __import__("datetime").datetime.fromtimestamp(t, __import__("datetime").UTC).strftime(fmt)

    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = tmp_path / "one" / "d.csv"  # one name: the series' key is the file's
    one.write_text(
        "timestamp,a,b\n" + "".join(f"{stamp(t, '%Y-%m-%d %H:%M:%S')},{a},{b}\n" for t, a, b in rows)
    )
    two = tmp_path / "two" / "d.csv"
    two.write_text(
        "Date,Time,a,b\n"
        + "".join(f"{stamp(t, '%d.%m.%Y')},{stamp(t, '%H:%M:%S')},{a},{b}\n" for t, a, b in rows)
    )
    model = tmp_path / "m.pt"
    columns = ["--date-column", "Date", "--time-column", "Time", "--dayfirst"]
    args = ["--epochs", "1", "--window", "8", "--hidden-size", "4"]
    train = invoke("train", str(two), "-o", str(model), *columns, *args)
    assert train.exit_code == 0, train.output
    for name, path, options in (("one", one, []), ("two", two, columns)):
        out = tmp_path / f"{name}-out"
        replay = invoke("replay", str(path), "-m", str(model), "-o", str(out), "--no-plots", *options)
        assert replay.exit_code == 0, replay.output
    scores = [(tmp_path / f"{name}-out" / "scores.csv").read_text() for name in ("one", "two")]
    assert scores[0] == scores[1] and len(scores[0].splitlines()) > 100


def test_a_date_column_without_a_time_column_is_refused(tmp_path) -> None:
    csv = tmp_path / "d.csv"
    csv.write_text("Date,a\n2023-11-14,1\n")
    result = CliRunner().invoke(main, ["train", str(csv), "--no-time-column", "--date-column", "Date"])
    assert (result.exit_code, result.stderr) == (
        2,
        "error: data.date_column is joined to the time column's times of day, and there is none "
        "(--no-time-column): leave one out (data.date_column from option --date-column, data.time_column from a "
        "command-line option)\n",
    )


def test_replay_puts_the_datas_warnings_in_summary_json_once(tmp_path) -> None:
    """Replay's load-time warnings (here `--dayfirst` on ISO-8601 times) were printed on stderr only: summary.json,
    which a backtest keeps, did not say the option had had no effect. They go with the run's other warnings now,
    in summary.json and, once, on stderr."""
    csv = tmp_path / "d.csv"
    csv.write_text(
        "timestamp,a\n" + "".join(f"2023-02-01T{i // 60:02d}:{i % 60:02d},{i % 5}\n" for i in range(90))
    )
    model = tmp_path / "m.pt"
    args = ["train", str(csv), "-o", str(model), "--epochs", "1", "--window", "8", "--hidden-size", "4"]
    assert CliRunner().invoke(main, args).exit_code == 0
    out = tmp_path / "r"
    result = CliRunner().invoke(
        main, ["replay", str(csv), "-m", str(model), "-o", str(out), "--no-plots", "--dayfirst"]
    )
    assert result.exit_code == 0, result.output
    warning = (
        "--dayfirst (data.dayfirst = true) had no effect: time column 'timestamp' holds dates such as "
        "'2023-02-01T00:00', not day/month dates (ISO-8601 dates are year first)"
    )
    assert json.loads((out / "summary.json").read_text())["warnings"].count(warning) == 1
    assert result.stderr.count(warning) == 1


def test_train_notes_the_features_constant_in_the_rows_it_trained_on(tmp_path) -> None:
    """A sensor stuck or switched off for the whole training span was named by `inspect` alone."""
    csv = tmp_path / "d.csv"
    csv.write_text(
        "timestamp,a,b,c\n" + "".join(f"{1700000000 + 60 * i},{i % 7},{(i * 3) % 5},5\n" for i in range(90))
    )
    args = [
        "train",
        str(csv),
        "-o",
        str(tmp_path / "m.pt"),
        "--epochs",
        "1",
        "--window",
        "8",
        "--hidden-size",
        "4",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert [line for line in result.stderr.splitlines() if line.startswith("note:")] == [
        "note: 1 feature constant in every row trained on (c): its scale is 1 raw unit, so a later change of 5 "
        "reads as 5 standard deviations; train on a span where it moves, or leave a setting (not a sensor) out "
        "with --features"
    ]


def test_replay_prints_the_datas_warnings_when_it_fails_after_loading(tmp_path) -> None:
    """The data's warnings waited for the summary to be printed with it; a replay that failed after loading
    (here --evaluate-after beyond the labelled series) ended with its error line alone, and a --dayfirst that
    had no effect was never named."""
    rows = [f"2023-02-01T{i // 60:02d}:{i % 60:02d},{i % 5}" for i in range(90)]
    train, csv = tmp_path / "t.csv", tmp_path / "d.csv"
    train.write_text("timestamp,a\n" + "".join(f"{row}\n" for row in rows))
    csv.write_text("timestamp,a,anomaly\n" + "".join(f"{row},0\n" for row in rows))
    model = tmp_path / "m.pt"
    args = ["train", str(train), "-o", str(model), "--epochs", "1", "--window", "8", "--hidden-size", "4"]
    assert CliRunner().invoke(main, args).exit_code == 0
    result = CliRunner().invoke(
        main,
        ["replay", str(csv), "-m", str(model), "-o", str(tmp_path / "r"), "--no-plots", "--dayfirst"]
        + ["--evaluate-after", "90"],
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        "warning: --dayfirst (data.dayfirst = true) had no effect: time column 'timestamp' holds dates such as "
        "'2023-02-01T00:00', not day/month dates (ISO-8601 dates are year first)",
        "error: replay.evaluate_after (--evaluate-after) 90 leaves no reading to evaluate: the longest labelled "
        "series has 90 readings",
    ]


@pytest.mark.parametrize(
    ("template", "warned"),
    [
        ("changelog-{topic}", True),  # one topic per input topic, the same for every group
        ("plant-state", True),
        ("state-{{group}}-{topic}", True),  # a literal "{group}", no placeholder
        ("state-{group}", False),
        (None, False),  # the default, changelog__{group}--{topic}
    ],
)
def test_consume_warns_when_its_changelog_topic_would_be_every_groups(
    tmp_path, template: str | None, warned: bool
) -> None:
    """A kafka.changelog_topic without {group} (two pipelines run from copies of one pipeline file) made every
    group checkpoint into the same topic under the same record keys, where compaction lets one group's records
    replace the other's: nothing said so until a restore counted other_group. `consume` says so at start."""
    model = tmp_path / "none.pt"
    env = {"ANOMALY_KAFKA_CHANGELOG_TOPIC": template} if template else {}
    result = CliRunner().invoke(main, ["consume", "-m", str(model), "--metrics-port", "0"], env=env)
    lines = result.stderr.splitlines()
    assert (result.exit_code, lines[-1]) == (2, f"error: model bundle not found: {model}")
    assert lines[:-1] == (
        [
            f"warning: kafka.changelog_topic {template!r} has no {{group}}: every consumer group given it "
            "checkpoints into the same topic under the same record keys, and on a compacting broker one group's "
            "checkpoints replace another's (a restore ignores the other group's, counted as other_group in "
            "anomaly_restore_refused_total, and its own may be gone); keep {group} in it (default "
            "changelog__{group}--{topic})"
        ]
        if warned
        else []
    )


def test_inspect_shows_each_features_scaler_and_training_range(tmp_path) -> None:
    """`inspect` printed neither the scaler nor the range of the data trained on (only `--json` had the scaler,
    and no bundle had the range), so a feature scaled by an odd reading, or trained on another range than it
    will see, could not be read off it."""
    import numpy as np
    import pandas as pd

    n = 400
    rng = np.random.default_rng(0)
    data = pd.DataFrame(
        {
            "timestamp": 1_700_000_000 + 60 * np.arange(n),
            "a": np.sin(np.arange(n) / 10) + 0.01 * rng.standard_normal(n),
            "b": np.round(rng.standard_normal(n), 1) * 10 + 100,
        }
    )
    data.loc[7, "b"] = np.nan  # a dropped row (nan_policy reject) is not in the range
    csv, model = tmp_path / "d.csv", tmp_path / "m.pt"
    data.to_csv(csv, index=False)
    r = invoke("train", str(csv), "-o", str(model), "--epochs", "1", "--window", "8", "--hidden-size", "4")
    assert r.exit_code == 0, r.output
    meta = json.loads(invoke("inspect", str(model), "--json").output)
    kept = data.drop(index=7)
    assert (meta["training"]["feature_min"], meta["training"]["feature_max"]) == (
        [kept["a"].min(), kept["b"].min()],
        [kept["a"].max(), kept["b"].max()],
    )
    from anomaly.commands.model_cmds import _num

    mean, scale = meta["scaler"]["mean"], meta["scaler"]["scale"]
    expected = "scaler:          " + "; ".join(
        f"{f} mean {_num(mean[i])}, scale {_num(scale[i])} (trained on {_num(kept[f].min())} .. {_num(kept[f].max())})"
        for i, f in enumerate(["a", "b"])
    )
    assert [x for x in invoke("inspect", str(model)).output.splitlines() if x.startswith("scaler:")] == [
        expected
    ]


def test_inspect_of_a_bundle_without_training_ranges_shows_mean_and_scale() -> None:
    from anomaly.commands.model_cmds import _scaler_line

    meta = {
        "features": [f"f{i}" for i in range(8)],
        "scaler": {"mean": [float(i) for i in range(8)], "scale": [0.5] * 8},
        "training": {},
    }
    assert _scaler_line(meta) == (
        "f0 mean 0, scale 0.5; f1 mean 1, scale 0.5; f2 mean 2, scale 0.5; f3 mean 3, scale 0.5; "
        "f4 mean 4, scale 0.5; f5 mean 5, scale 0.5; 2 more in --json"
    )


def test_the_same_train_command_twice_differs_only_in_its_time_and_throughput(train_csv, tmp_path) -> None:
    """README (Training): the same command with the same seed gives equal weights, calibration and metadata,
    but not equal bundle bytes: creation time, model version (which holds it) and throughput differ."""
    metas = []
    for name in ("a.pt", "b.pt"):
        args = ["train", str(train_csv), "-o", str(tmp_path / name), "--epochs", "2", "--window", "8"]
        assert invoke(*args, "--hidden-size", "4", "--seed", "7").exit_code == 0
        meta = json.loads(invoke("inspect", str(tmp_path / name), "--json").output)
        metas.append(meta)
    a, b = metas
    varying = {"created_at", "model_version"}
    assert {k for k in a if a[k] != b[k]} <= varying | {"training"}
    ta, tb = a.pop("training"), b.pop("training")
    assert {k for k in ta if ta[k] != tb[k]} <= {"windows_per_second"}
    assert {k: v for k, v in a.items() if k not in varying} == {
        k: v for k, v in b.items() if k not in varying
    }

"""The SKAB runner on a tiny SKAB-shaped folder written by the test (never the real data set)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from anomaly import skab
from anomaly.commands.skab_cmds import skab_cmd
from anomaly.config import build_config, read_toml

FEATURES = [
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
]
ROWS = 523  # 400 training rows + 123 test rows: 15 windows of 8 and a 3-row tail (flushed at the end)
PIPELINE = Path(__file__).resolve().parents[1] / "pipelines" / "skab.toml"
TINY = {"model.window": 8, "model.hidden_size": 4, "train.epochs": 2, "train.patience": 1}


def write_file(path: Path, seed: int, labelled: bool = True, fault: tuple[int, int] = (450, 490)) -> None:
    rng = np.random.default_rng(seed)
    t = pd.date_range("2020-03-09 10:00:00", periods=ROWS, freq="s")
    frame = pd.DataFrame(
        rng.normal(0.0, 1.0, (ROWS, len(FEATURES))) + np.arange(len(FEATURES)), columns=FEATURES
    )
    frame.insert(0, "datetime", t.strftime("%Y-%m-%d %H:%M:%S"))
    if labelled:
        anomaly = np.zeros(ROWS)
        anomaly[fault[0] : fault[1]] = 1.0
        frame.loc[fault[0] : fault[1] - 1, "Volume Flow RateRMS"] += 25.0
        frame["anomaly"] = anomaly
        frame["changepoint"] = 0.0
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep=";", index=False)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("skab")
    write_file(base / "valve1" / "10.csv", 1)
    write_file(base / "valve1" / "2.csv", 2)
    write_file(base / "anomaly-free" / "anomaly-free.csv", 3, labelled=False)
    return base


@pytest.fixture(scope="module")
def cfg():
    return build_config(skab.DEFAULTS, None, TINY)


def test_files_are_labelled_ones_in_natural_order(root):
    assert [skab.file_key(p, root) for p in skab.skab_files(root)] == ["valve1/2", "valve1/10"]


def test_benchmark_pools_the_test_rows_of_every_file(root, cfg):
    result = skab.run_benchmark(root, cfg)
    assert [r.key for r in result.files] == ["valve1/2", "valve1/10"]
    for r in result.files:
        assert len(r.frame) == ROWS - skab.TRAIN_ROWS
        assert r.frame["timestamp"].iloc[0] == pd.Timestamp("2020-03-09 10:06:40", tz="UTC").timestamp()
        assert r.unscored == 0  # a forecast model decides every reading; the last 3 are flushed at the end
        assert np.array_equal(r.frame["decided_at"].to_numpy(), r.frame["timestamp"].to_numpy())
        assert sum(r.metrics["counts"]["point"].values()) == ROWS - skab.TRAIN_ROWS
    c = result.pooled["counts"]["point"]
    assert c["tp"] + c["fn"] == 2 * 40
    assert sum(c.values()) == 2 * (ROWS - skab.TRAIN_ROWS)
    for name in ("tp", "fp", "fn", "tn"):
        assert c[name] == sum(r.metrics["counts"]["point"][name] for r in result.files)


def test_parallel_jobs_give_identical_results(root, cfg):
    one = skab.run_benchmark(root, cfg, jobs=1)
    two = skab.run_benchmark(root, cfg, jobs=2)
    assert one.pooled == two.pooled
    for a, b in zip(one.files, two.files, strict=True):
        assert np.array_equal(a.frame["score"].to_numpy(), b.frame["score"].to_numpy(), equal_nan=True)


def test_comparison_table_lists_published_rows():
    rows = [line.split() for line in skab.comparison_table({"f1": 0.8, "far": 0.1, "mar": 0.25}).splitlines()]
    assert rows[1] == ["anomaly", "(this", "run)", "0.80", "10.00", "25.00"]
    assert rows[2:] == [
        ["Conv-AE", "0.78", "13.55", "28.02"],
        ["MSET", "0.78", "39.73", "14.13"],
        ["LSTM-AE", "0.74", "29.96", "25.92"],
    ]


def test_command_ends_with_a_json_summary(root, tmp_path):
    args = [
        str(root),
        "--limit",
        "1",
        "--plots",
        str(tmp_path / "plots"),
        "--json-out",
        str(tmp_path / "s.json"),
    ]
    env = {f"ANOMALY_{k.replace('.', '_').upper()}": str(v) for k, v in TINY.items()}
    res = CliRunner().invoke(skab_cmd, ["--pipeline", str(PIPELINE), *args], env=env)
    assert res.exit_code == 0, res.output
    last = json.loads(res.output.strip().splitlines()[-1])
    assert last["benchmark"] == "SKAB" and last["files"] == 1
    assert set(last) >= {"f1", "far_pct", "mar_pct"}
    assert "Conv-AE" in res.output and "point-adjusted (not comparable with SKAB)" in res.output
    assert "oracle, for diagnosis only" in res.output
    assert set(json.loads((tmp_path / "s.json").read_text())["quality"]) == {"model", "zscore", "pca"}
    assert (tmp_path / "plots" / "valve1_2.png").stat().st_size > 20_000
    written = json.loads((tmp_path / "s.json").read_text())
    assert written["per_file"].keys() == {"valve1/2"}
    # one file: its own oracle F1 per scorer is the pooled one, and it is the better-of-two mean's only term
    per = written["per_file"]["valve1/2"]["oracle_f1"]
    for name in ("model", "zscore", "pca"):
        assert per[name] == pytest.approx(written["quality"][name]["oracle_f1"], abs=1e-4)
    rk = written["ranking"]
    assert rk["ahead"] + rk["behind"] + rk["level"] == ["valve1/2"]
    assert rk["better_of_two_mean"] == pytest.approx(max(per["model"], per["zscore"]), abs=1e-4)
    assert "per file (oracle F1, diagnosis only): model ahead of zscore" in res.output


def test_defaults_and_the_builtin_pipeline_take_anomaly_environment_overrides(root, tmp_path):
    env = {f"ANOMALY_{k.replace('.', '_').upper()}": str(v) for k, v in TINY.items()}
    env["ANOMALY_ENGINE_THRESHOLD"] = "static"
    for flags in (["--defaults"], []):
        out = tmp_path / "s.json"
        res = CliRunner().invoke(
            skab_cmd, [str(root), "--limit", "1", "--json-out", str(out), *flags], env=env
        )
        assert res.exit_code == 0, res.output
        settings = json.loads(out.read_text())["settings"]
        assert settings["engine"]["threshold"] == "static" and settings["model"]["window"] == 8
        # --defaults still means no pipeline file: the engine's other settings are the project defaults
        want = "mean" if flags else "max_feature"
        assert settings["engine"]["score"] == want


@pytest.mark.parametrize(
    ("flags", "env", "rows"),
    [
        ([], {}, 400),
        ([], {"ANOMALY_DATA_TRAIN_ROWS": "300"}, 300),
        (["--train-rows", "350"], {"ANOMALY_DATA_TRAIN_ROWS": "300"}, 350),
    ],
)
def test_training_rows_follow_the_setting_and_the_option(root, tmp_path, flags, env, rows):
    """data.train_rows (pipeline or ANOMALY_DATA_TRAIN_ROWS) was ignored: every file trained on 400 rows."""
    env = {**env, **{f"ANOMALY_{k.replace('.', '_').upper()}": str(v) for k, v in TINY.items()}}
    out = tmp_path / "s.json"
    res = CliRunner().invoke(skab_cmd, [str(root), "--limit", "1", "--json-out", str(out), *flags], env=env)
    assert (res.exit_code, json.loads(out.read_text())["settings"]["train_rows"]) == (0, rows)


def test_bad_data_folder_is_a_one_line_error(tmp_path):
    res = CliRunner().invoke(skab_cmd, [str(tmp_path / "missing")])
    assert res.exit_code == 2
    assert res.output.strip() == f"error: SKAB data folder not found: {tmp_path / 'missing'}"


def test_a_folder_of_other_csv_files_is_a_one_line_error_without_foreign_advice(tmp_path):
    """A folder of other CSV files failed on the first one's time column, suggesting --time-column, an option
    `skab` does not have."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "y.csv").write_text("time,v1,v2\n1,2,3\n2,3,4\n")
    (tmp_path / "z.csv").write_text("datetime;v1;anomaly\n2020-01-01;2;0\n")
    res = CliRunner().invoke(skab_cmd, [str(tmp_path)])
    assert res.exit_code == 2
    assert res.output.strip() == (
        f"error: {tmp_path} does not look like SKAB's data/ folder: 1 of its 2 CSV files (e.g. sub/y.csv) lacks "
        "SKAB's columns 'datetime' and 'anomaly'; give the data/ folder of a SKAB checkout (valve1/, valve2/, "
        "other/)"
    )


def test_a_pipeline_without_a_data_section_reads_skab_with_its_column_mapping(root, tmp_path):
    """`anomaly skab DATA -p mine.toml`, a pipeline of engine settings only, read SKAB's files with the default
    time column `timestamp` and stopped at the first one, hinting at a --time-column that skab does not take.
    SKAB's column mapping lies under the file's own [data]: the run equals --defaults with the same setting."""
    pipeline = tmp_path / "mine.toml"
    pipeline.write_text('[engine]\nthreshold = "static"\n')
    env = {f"ANOMALY_{k.replace('.', '_').upper()}": str(v) for k, v in TINY.items()}
    runs = {}
    static = {"ANOMALY_ENGINE_THRESHOLD": "static"}
    for name, flags, extra in (("file", ["-p", str(pipeline)], {}), ("defaults", ["--defaults"], static)):
        out = tmp_path / f"{name}.json"
        res = CliRunner().invoke(
            skab_cmd, [str(root), "--limit", "1", "--json-out", str(out), *flags], env={**env, **extra}
        )
        assert res.exit_code == 0, res.output
        runs[name] = json.loads(out.read_text())
    assert runs["file"]["settings"]["engine"]["threshold"] == "static"
    assert runs["file"]["settings"] == runs["defaults"]["settings"]
    assert runs["file"]["skab"] == runs["defaults"]["skab"]


def test_defaults_match_the_pipeline_file():
    assert build_config(read_toml(PIPELINE)) == build_config(skab.DEFAULTS)


def test_defaults_flag_keeps_only_the_column_mapping(root):
    both = CliRunner().invoke(skab_cmd, [str(root), "--defaults", "--pipeline", str(PIPELINE)])
    assert both.exit_code == 2 and "either --pipeline or --defaults" in both.output
    assert {k: v for k, v in skab.DEFAULTS["data"].items() if k != "features"} == skab.DATA
    cfg = build_config({"data": skab.DATA})
    assert cfg.data.features == () and cfg.engine == build_config({}).engine


def test_bench_formats_scores_a_file_as_the_benchmark_does(tmp_path, cfg):
    """`anomaly bench --formats` scores each SKAB file as `anomaly skab` does: the file's last, partial report
    window flushed, decisions without look-ahead. It flushed nothing, so a fault lasting to the file's end lost
    its last readings (here 3) and the formats' F1 was not the benchmark's."""
    import torch

    from anomaly.bench_formats import _score_file
    from anomaly.data import load_series
    from anomaly.training import train

    path = tmp_path / "valve1" / "0.csv"
    write_file(path, 4, fault=(500, ROWS))  # the fault lasts to the last row
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as run_file trains: the same model
    try:
        (s,), features = load_series([path], cfg.data)
        s.key = skab.file_key(path, tmp_path)
        head, test = s.head(skab.TRAIN_ROWS), s.tail_from(skab.TRAIN_ROWS)
        bundle = train([head], features, cfg.model, cfg.train).bundle
    finally:
        torch.set_num_threads(threads)
    bench = _score_file(bundle, cfg, s.key, head, test, features)
    expected = skab.run_file(path, tmp_path, cfg).metrics
    assert bench["counts"]["point"] == expected["counts"]["point"]
    assert bench == expected


def test_an_unwritable_plot_folder_is_refused_before_the_run(root, tmp_path):
    """--plots under a file was refused only after every file had trained, and the --json-out file, written
    after the plots, was lost with it."""
    blocker = tmp_path / "notes.txt"
    blocker.write_text("")
    env = {f"ANOMALY_{k.replace('.', '_').upper()}": str(v) for k, v in TINY.items()}
    out = tmp_path / "s.json"
    res = CliRunner().invoke(
        skab_cmd,
        [str(root), "--limit", "1", "--plots", str(blocker / "plots"), "--json-out", str(out)],
        env=env,
    )
    assert (res.exit_code, res.output) == (
        2,
        f"error: cannot write the plot folder {blocker / 'plots'}: {blocker} is not a folder\n",
    )
    assert not out.exists()


def test_a_damaged_byte_in_a_header_name_is_the_readers_refusal_naming_the_line(tmp_path):
    """The header check read files with errors="replace": a damaged byte in 'anomaly' (U+FFFD) called the folder
    not SKAB's. It is now left to the reader, which names the file, the line and the byte, as `replay` does."""
    path = tmp_path / "valve1" / "0.csv"
    path.parent.mkdir()
    path.write_bytes(b"datetime;v1;anom\xe9ly;changepoint\n2020-01-01 00:00:00;2;0;0\n")
    assert skab.skab_files(tmp_path) == [path]
    res = CliRunner().invoke(skab_cmd, [str(tmp_path)])
    assert res.exit_code == 2
    assert res.output.startswith(
        f"error: cannot read {path} as CSV: it is not UTF-8 text (byte 0xe9 on line 1: 'datetime;v1;anom\u00e9ly;"
    )
    assert res.output.count("\n") == 1
    bom = (
        tmp_path / "valve1" / "1.csv"
    )  # a UTF-8 byte-order mark, which the reader accepts, is SKAB's header too
    bom.write_bytes(b"\xef\xbb\xbfdatetime;v1;anomaly;changepoint\n2020-01-01 00:00:00;2;0;0\n")
    assert skab.skab_files(tmp_path) == [path, bom]


def test_the_header_check_reads_utf16_as_the_reader_does(tmp_path, monkeypatch):
    """The header check read every file as UTF-8 bytes: a UTF-16 file (byte-order mark) was undecodable and so
    passed whatever its columns (a folder of other UTF-16 CSVs failed deep in loading, with advice `skab` has no
    use for), and a UTF-16 file without a mark read with data.encoding = utf-16-le was 'not SKAB's folder'."""
    text = "datetime;v1;anomaly;changepoint\n2020-01-01 00:00:00;2;0;0\n"
    (tmp_path / "valve1").mkdir()
    marked, plain = tmp_path / "valve1" / "0.csv", tmp_path / "valve1" / "1.csv"
    marked.write_bytes(text.encode("utf-16"))
    plain.write_bytes(text.encode("utf-16-le"))
    assert skab.skab_files(tmp_path, "utf-16-le") == [marked, plain]
    other = tmp_path / "other"
    other.mkdir()
    (other / "y.csv").write_bytes("time,v1,v2\n1,2,3\n2,3,4\n".encode("utf-16"))
    res = CliRunner().invoke(skab_cmd, [str(other)])
    assert (res.exit_code, res.output.strip()) == (
        2,
        f"error: {other} does not look like SKAB's data/ folder: its one CSV file (y.csv) lacks "
        "SKAB's columns 'datetime' and 'anomaly'; give the data/ folder of a SKAB checkout (valve1/, valve2/, "
        "other/)",
    )

"""The NASA SMAP/MSL harness on a tiny synthetic dataset in the same layout (never the real data)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from anomaly import evaluation, nasa
from anomaly.cli import main
from anomaly.config import build_config
from anomaly.errors import DataError

SMALL = {
    "model": {"window": 8, "hidden_size": 8},
    "train": {"epochs": 2, "batch_size": 16, "device": "cpu"},
    "replay": {"predict": "point"},
    # 160 test points: shorter than the default SPOT's calibration (spot_init), so the fixed threshold
    "engine": {"threshold": "static"},
}


def write_dataset(root, channels=("A-1", "B-2"), n_train=240, n_test=160):
    rng = np.random.default_rng(0)
    parts = {"train": [], "test": []}
    for c, chan in enumerate(channels):
        for part, n in (("train", n_train), ("test", n_test)):
            t = np.arange(n)
            frame = pd.DataFrame(
                {
                    "chan_id": chan,
                    "step": t,
                    "telemetry": np.sin(t / 7 + c) + rng.normal(0, 0.05, n),
                    "cmd_01": (t % 20 < 3).astype(float),
                    "cmd_02": 0.0,
                }
            )
            if part == "test":
                label = np.zeros(n, np.int8)
                label[100 + 10 * c : 115 + 10 * c] = 1
                frame.loc[label == 1, "telemetry"] += 4.0
                frame.insert(2, "label", label)
            parts[part].append(frame)
    folder = root / "smap"
    folder.mkdir(parents=True)
    for part, frames in parts.items():
        pd.concat(frames).to_csv(folder / f"{part}.csv.gz", index=False)
    return root


def test_every_channel_gets_a_model_and_both_baselines_pooled(tmp_path):
    root = write_dataset(tmp_path)
    cfg = build_config({**SMALL, "data": nasa.DATA})
    result = nasa.run_benchmark(root, "smap", cfg)
    assert [r.key for r in result.channels] == ["A-1", "B-2"]
    assert list(result.quality) == ["model", "zscore", "pca"]
    for name, q in result.quality.items():
        pooled = evaluation.Counts()
        for r in result.channels:
            pooled = pooled + r.points[name].counts
        assert q.metrics == pooled.metrics()
        assert q.metrics["counts"]["point"]["tp"] + q.metrics["counts"]["point"]["fn"] == 30
        scores = np.concatenate([r.points[name].scores for r in result.channels])
        labels = np.concatenate([r.points[name].labels for r in result.channels])
        assert (q.oracle_f1, q.oracle_threshold) == evaluation.oracle_best_f1(scores, labels)
        each = [
            evaluation.oracle_best_f1(r.points[name].scores, r.points[name].labels)[0]
            for r in result.channels
        ]
        assert q.oracle_f1_per_series == pytest.approx(np.mean(each))
        assert [r.oracle_f1()[name] for r in result.channels] == each
    model = result.quality["model"].metrics
    assert model == evaluation.pool(r.metrics for r in result.channels)
    # a +4 sigma level shift of 15 points: the z-score baseline finds both events
    assert result.quality["zscore"].metrics["event_recall"] == 1.0
    only = nasa.run_benchmark(root, "smap", cfg, channels=["B-2"])
    assert [r.key for r in only.channels] == ["B-2"]
    assert only.channels[0].metrics == result.channels[1].metrics


def test_cli_prints_the_oracle_as_diagnosis_and_refuses_unknown_channels(tmp_path):
    root = write_dataset(tmp_path, channels=("A-1",))
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        '[model]\nwindow = 8\nhidden_size = 8\n[train]\nepochs = 1\nbatch_size = 16\ndevice = "cpu"\n'
    )
    runner = CliRunner()
    out = tmp_path / "s.json"
    res = runner.invoke(
        main, ["nasa", str(root), "--dataset", "smap", "-p", str(pipeline), "--json-out", str(out)]
    )
    assert res.exit_code == 0, res.output
    # telemanom's protocol: the telemetry is scored, the cmd_* flags are context inputs
    assert json.loads(out.read_text())["settings"]["model"]["targets"] == ["telemetry"]
    assert "oracle, for diagnosis only" in res.output
    written = json.loads(out.read_text())
    per = written["per_channel"]["A-1"]["oracle_f1"]
    assert set(per) == {"model", "zscore", "pca"} and written["quality"]["zscore"][
        "oracle_f1"
    ] == pytest.approx(per["zscore"], abs=1e-4)  # one channel: its own oracle is the pooled one
    rk = written["ranking"]
    assert rk["ahead"] + rk["behind"] + rk["level"] == ["A-1"]
    side = (
        "ahead"
        if per["model"] >= per["zscore"] + 0.05
        else "behind"
        if per["model"] <= per["zscore"] - 0.05
        else "level"
    )
    assert rk[side] == ["A-1"]
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["channels"] == 1 and {"model_f1", "zscore_f1", "pca_oracle_f1"} <= summary.keys()
    bad = runner.invoke(main, ["nasa", str(root), "--channels", "Z-9", "-p", str(pipeline)])
    assert bad.exit_code == 2 and "unknown smap channel(s) Z-9" in bad.output
    assert "per channel (oracle F1, diagnosis only): model ahead of zscore by >= 0.05 on" in res.output
    missing = runner.invoke(main, ["nasa", str(root), "--dataset", "msl"])
    assert missing.exit_code == 2 and "msl/train.csv.gz not found" in missing.output


def test_replay_with_labels_reports_the_baselines(bundle_path, test_csv, tmp_path):
    from anomaly.commands.replay_cmds import run_replay

    cfg = build_config({"replay": {"plots": False}})
    result = run_replay([str(test_csv)], str(bundle_path), str(tmp_path / "out"), cfg, progress=False)
    q = result.summary["quality"]
    assert set(q) == {"model", "zscore", "pca"}
    assert q["model"]["f1"] == result.summary["metrics"]["f1"]
    for name in q:
        assert q[name]["lift_f1"] == pytest.approx(q[name]["f1"] - q["zscore"]["f1"])
        assert q[name]["threshold_loss"] == pytest.approx(q[name]["oracle_f1"] - q[name]["f1"])


def test_ranking_counts_series_won_and_lost_by_the_margin():
    from anomaly import quality
    from anomaly.quality import ScorerPoints

    labels = np.array([0, 0, 1, 1, 0, 0], bool)
    good = np.array([0, 0, 5, 5, 0, 0], float)  # ranks the anomaly first: oracle F1 1.0
    poor = np.array([5, 0, 1, 1, 0, 5], float)  # two normal points above it: oracle F1 0.667

    def series(key, model, zscore, y=labels):
        pts = {n: ScorerPoints(evaluation.Counts(), s, y) for n, s in (("model", model), ("zscore", zscore))}
        return key, pts

    runs = [
        series("A", good, poor),
        series("B", poor, good),
        series("C", poor, poor),
        series("D", good, poor, np.zeros(6, bool)),  # no anomaly: counted nowhere
    ]
    assert quality.series_oracle(runs[0][1]) == {"model": 1.0, "zscore": pytest.approx(2 / 3)}
    assert quality.series_oracle(runs[3][1]) == {"model": None, "zscore": None}
    rk = quality.ranking(runs)
    assert (rk["ahead"], rk["behind"], rk["level"]) == (["A"], ["B"], ["C"])
    assert rk["better_of_two_mean"] == pytest.approx((1 + 1 + 2 / 3) / 3)
    # the event [2, 4) peaks at 5 in `good` (above every normal reading), at 1 in `poor` (two normal 5s above it)
    assert (rk["events"], rk["events_standing_out"]) == (3, {"model": 1, "zscore": 1})
    assert quality.ranking(runs[:1])["events_standing_out"] == {"model": 1, "zscore": 0}
    assert "ahead of zscore by >= 0.05 on 1, behind on 1, level on 1" in quality.format_ranking(rk, "channel")


def test_channels_train_with_the_engine_settings_they_are_scored_with(tmp_path):
    """`anomaly nasa` trained each channel with the default gap rule and missing-value policy whatever the
    pipeline's engine section said, while its test part was scored with them: a pipeline whose
    engine.max_gap_seconds (0.5 s) lies below the one-step sampling trained a model on windows the engine
    never forms (it resets at every reading). Training now cuts at the same gap, and says why nothing is left."""
    from anomaly.errors import DataError

    root = write_dataset(tmp_path, channels=("A-1",))
    cfg = build_config({**SMALL, "engine": {**SMALL["engine"], "max_gap_seconds": 0.5}, "data": nasa.DATA})
    with pytest.raises(DataError, match="no stretch of 8 rows without a gap longer than 0.5 s"):
        nasa.run_benchmark(root, "smap", cfg)


@pytest.mark.parametrize("part", ["train", "test"])
def test_a_channel_in_one_part_only_is_refused_not_left_out(tmp_path, part):
    """A channel missing from one part was left out without a word (the pooled numbers then covered fewer
    channels than the data set has), and `--channels` called it unknown although it is in the data."""
    root = write_dataset(tmp_path)
    path = root / "smap" / f"{part}.csv.gz"
    frame = pd.read_csv(path)
    frame[frame["chan_id"] != "B-2"].to_csv(path, index=False)
    cfg = build_config({**SMALL, "data": nasa.DATA})
    other = "test" if part == "train" else "train"
    want = (
        f"smap channel(s) B-2 ({other} only): a channel needs rows in both {root / 'smap' / 'train.csv.gz'} "
        "and test.csv.gz (name the complete ones with --channels)"
    )
    for channels in (None, ["B-2"]):
        with pytest.raises(DataError) as err:
            nasa.run_benchmark(root, "smap", cfg, channels=channels)
        assert str(err.value) == want
    assert [r.key for r in nasa.run_benchmark(root, "smap", cfg, channels=["A-1"]).channels] == ["A-1"]


@pytest.mark.parametrize("value", ["", " , ,"])
def test_channels_naming_no_channel_is_refused(tmp_path, value):
    """`--channels "$CHANNELS"` with the variable unset ran every channel of the data set."""
    res = CliRunner().invoke(main, ["nasa", str(tmp_path), "--channels", value])
    assert res.exit_code == 2
    assert "Invalid value for '--channels': names no channel (leave the option out for all)" in res.output


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        ("truncated", "it ends early (a truncated download?)"),
        ("empty", "No columns to parse from file"),
        ("plain", "Not a gzipped file (b'ch')"),
    ],
)
def test_a_damaged_part_is_a_one_line_error_naming_the_file(tmp_path, damage, why):
    """A truncated download said only `error: aborted` (click's word for Ctrl-C) with status 1; an empty file
    ended in pandas' traceback; a file that is not gzip in an error that did not name it."""
    root = write_dataset(tmp_path)
    path = root / "smap" / "train.csv.gz"
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "empty":
        path.write_bytes(gzip.compress(b""))
    else:
        path.write_bytes(gzip.decompress(raw))
    res = CliRunner().invoke(main, ["nasa", str(root)])
    assert (res.exit_code, res.output) == (2, f"error: cannot read {path}: {why}\n")


@pytest.mark.parametrize(
    ("pipeline_targets", "env", "args", "scored"),
    [
        ("", {}, [], ["telemetry"]),  # telemanom's protocol by default
        ("targets = []\n", {}, [], []),  # the file's every feature: it scored the telemetry only
        ("", {"ANOMALY_MODEL_TARGETS": ""}, [], []),  # so did the variable's
        ("targets = []\n", {}, ["--targets", "telemetry"], ["telemetry"]),  # the option beats both
    ],
    ids=["default", "file", "variable", "option"],
)
def test_nasa_reads_model_targets_from_the_pipeline_file_and_the_environment(
    tmp_path, monkeypatch, pipeline_targets, env, args, scored
):
    """`--targets` had the default telemetry, given as an option: a pipeline file's or an ANOMALY_MODEL_TARGETS
    model.targets was replaced by it without a word."""
    root = write_dataset(tmp_path, channels=("A-1",))
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        f"[model]\nwindow = 8\nhidden_size = 8\n{pipeline_targets}[train]\nepochs = 1\nbatch_size = 16\n"
        'device = "cpu"\n'
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "s.json"
    res = CliRunner().invoke(
        main,
        ["nasa", str(root), "--dataset", "smap", "-p", str(pipeline), "--json-out", str(out), *args],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["settings"]["model"]["targets"] == scored


def test_nasa_says_that_data_settings_for_other_files_have_no_effect(tmp_path, monkeypatch):
    """NASA's column mapping replaced a pipeline file's or an ANOMALY_DATA_* variable's time, key and label columns
    without a word."""
    root = write_dataset(tmp_path, channels=("A-1",))
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        '[data]\ntime_column = "timestamp"\nkey_column = "chan_id"\n'  # the second is NASA's own: no warning
        '[model]\nwindow = 8\nhidden_size = 8\n[train]\nepochs = 1\nbatch_size = 16\ndevice = "cpu"\n'
    )
    monkeypatch.setenv("ANOMALY_DATA_LABEL", "anomaly")
    res = CliRunner().invoke(main, ["nasa", str(root), "--dataset", "smap", "-p", str(pipeline)])
    assert res.exit_code == 0, res.output
    assert [line for line in res.stderr.splitlines() if line.startswith("warning: data.")] == [
        f"warning: data.time_column (from pipeline file {pipeline}) has no effect: anomaly nasa reads NASA's "
        "columns (data.time_column is 'step')",
        "warning: data.label (from environment variable ANOMALY_DATA_LABEL) has no effect: anomaly nasa reads "
        "NASA's columns (data.label is 'label')",
    ]

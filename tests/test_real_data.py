"""Issue 9 end to end: real-world inputs through the command line. Each test feeds exactly one such input and
checks that the run either works as on clean data or stops with one clear line, never silently degrades."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from anomaly.bundle import load_bundle
from anomaly.cli import main
from tests.helpers import split_by_time


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def replay(csv, model, out, *extra: str, env: dict[str, str] | None = None):
    return run("replay", csv, "--model", model, "--out", out, "--no-plots", *extra, env=env)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture
def frame(test_csv) -> pd.DataFrame:
    return pd.read_csv(test_csv)


def test_epoch_milliseconds_replay_exactly_like_seconds(frame, bundle_path, test_csv, tmp_path) -> None:
    """Item 1: epoch ms used to make every 60 s step a 60,000 s gap: 0 windows scored, exit 0."""
    ms = tmp_path / "ms.csv"
    epoch_ms = (pd.to_datetime(frame["timestamp"], utc=True) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(
        "1ms"
    )
    frame.assign(timestamp=epoch_ms).to_csv(ms, index=False)
    a = replay(test_csv, bundle_path, tmp_path / "s")
    b = replay(ms, bundle_path, tmp_path / "ms")
    assert a.exit_code == b.exit_code == 0, b.output
    sa, sb = (pd.read_csv(tmp_path / d / "scores.csv") for d in ("s", "ms"))
    assert np.array_equal(sa["score"].to_numpy(), sb["score"].to_numpy(), equal_nan=True)
    assert json.loads((tmp_path / "ms" / "summary.json").read_text())["warnings"] == []


def test_a_run_that_scores_nothing_says_why_and_exits_2(bundle_path, test_csv, tmp_path) -> None:
    """Item 1: a gap rule finer than the data's step used to give `0 windows scored`, F1 0.000 and exit 0."""
    r = replay(test_csv, bundle_path, tmp_path / "r", env={"ANOMALY_ENGINE_MAX_GAP_SECONDS": "10"})
    assert r.exit_code == 2
    # a forecast model scores each reading, but every one of them from a cold state after a reset: the output
    # says so wherever it counts them, instead of "1200 readings scored" above "nothing was scored"
    assert lines(r.stderr) == [
        "error: nothing was scored from a full window: the forecast model scored 1,200 readings, each from a "
        "cold state (less than a window of history), which says nothing about anomalies: 1,199 gaps longer than "
        "engine.max_gap_seconds = 10 s reset the keys; the median step in these files is 60 s; check the time "
        "unit (--time-unit) or set engine.max_gap_seconds"
    ]
    assert "F1" not in r.stdout  # no table of zeros
    assert "(1,200 readings, all from a cold state)" in r.stdout
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["warnings"][0].startswith("nothing was scored")
    assert summary["coverage"]["scored"] == 1200 and summary["coverage"]["cold_only"] is True


def test_a_file_too_short_for_one_window_is_not_a_table_of_zeros(frame, bundle_path, tmp_path) -> None:
    short = tmp_path / "short.csv"
    frame.head(5).to_csv(short, index=False)
    r = replay(short, bundle_path, tmp_path / "r")
    assert r.exit_code == 2 and "F1" not in r.stdout
    assert "(5 readings, all from a cold state)" in r.stdout
    assert lines(r.stderr) == [
        "error: nothing was scored from a full window: the forecast model scored 5 readings, each from a cold "
        "state (less than a window of history), which says nothing about anomalies: every series is shorter "
        "than the model window (8 readings); give each key at least 8"
    ]


def test_mostly_unscored_warns_with_the_reason(frame, bundle_path, tmp_path) -> None:
    holes = tmp_path / "holes.csv"
    broken = frame.copy()
    broken.loc[broken.index % 5 != 0, "sensor_1"] = np.nan  # 80% of readings have a missing value
    broken.to_csv(holes, index=False)
    r = replay(holes, bundle_path, tmp_path / "r")
    assert r.exit_code == 0 and lines(r.stderr) == [
        "warning: 960 of 1200 readings (80%) were not scored: 960 of 1200 readings were rejected "
        "(reasons in rejections.jsonl)"
    ]
    assert "960 rejected, 0 in windows never filled before a gap or a series end" in r.stdout


@pytest.mark.parametrize("batch", ["4096", "7"])
def test_one_nan_refuses_one_reading_whatever_the_batch_size(frame, bundle_path, test_csv, tmp_path, batch):
    """Item 2: one NaN used to refuse its whole 4096-reading block, so results depended on batch_readings."""
    nan = tmp_path / "nan.csv"
    frame.assign(sensor_2=frame["sensor_2"].where(frame.index != 100)).to_csv(nan, index=False)
    env = {"ANOMALY_REPLAY_BATCH_READINGS": batch}
    assert replay(nan, bundle_path, tmp_path / "r", env=env).exit_code == 0
    clean = tmp_path / "clean.csv"
    frame.drop(index=100).to_csv(clean, index=False)
    assert replay(clean, bundle_path, tmp_path / "c", env=env).exit_code == 0
    got, want = (pd.read_csv(tmp_path / d / "scores.csv", keep_default_na=False) for d in ("r", "c"))
    assert got["rejected"].tolist() == ["non_finite" if i == 100 else "" for i in range(len(frame))]
    assert np.array_equal(
        pd.to_numeric(got["score"].drop(index=100)).to_numpy(),
        pd.to_numeric(want["score"]).to_numpy(),
        equal_nan=True,
    )
    rejections = [json.loads(x) for x in (tmp_path / "r" / "rejections.jsonl").read_text().splitlines()]
    assert [(x["reason"], x["count"], x["whole"]) for x in rejections] == [("non_finite", 1, False)]


def tiny_pipeline(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text("[model]\nwindow = 8\nhidden_size = 8\n[train]\nepochs = 1\n")
    return path


def test_training_on_missing_values_drops_them_and_saves_a_finite_bundle(frame, tmp_path) -> None:
    """Item 3: NaN or `n/a` in training data used to save a bundle with NaN calibration that never alerts."""
    data = frame.head(600).astype({"sensor_1": object})
    data.loc[[10, 11], "sensor_1"] = "n/a"
    data.loc[50, "sensor_3"] = np.nan
    csv = tmp_path / "gaps.csv"
    data.to_csv(csv, index=False)
    model = tmp_path / "m.pt"
    r = run("train", csv, "-o", model, "-p", tiny_pipeline(tmp_path))
    assert r.exit_code == 0, r.output
    assert "missing values (engine.nan_policy = reject): 3 rows dropped, 0 cells forward-filled" in r.output
    bundle = load_bundle(model)
    assert np.isfinite(bundle.reference_error) and bundle.meta["training"]["rows"] == 597
    assert all(bool(t.isfinite().all()) for t in bundle.model.state_dict().values())
    assert stat.S_IMODE(os.stat(model).st_mode) == 0o666 & ~_umask()  # not 0600: readable like other outputs


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_non_finite_bundle_is_never_saved(bundle, tmp_path) -> None:
    from anomaly.bundle import save_bundle
    from anomaly.errors import BundleError

    bundle.calibration = dict(bundle.calibration, reference_error=float("nan"))
    with pytest.raises(BundleError, match="non-finite calibration"):
        save_bundle(bundle, tmp_path / "nan.pt")
    assert not (tmp_path / "nan.pt").exists()


def test_a_text_cell_stops_training_and_replay_naming_the_cell(frame, bundle_path, tmp_path) -> None:
    """Item 4: `broken` in a sensor column used to drop that sensor from training, then fail replay."""
    data = frame.astype({"sensor_1": object})
    data.loc[3, "sensor_1"] = "broken"
    csv = tmp_path / "broken.csv"
    data.to_csv(csv, index=False)
    expected = (
        f"error: {csv}: column 'sensor_1' line 5 holds 'broken', not a number (1 such cell(s)); fix the "
        "file, or pass --bad-cells missing to treat them as missing values (engine.nan_policy then applies)"
    )
    for r in (run("train", csv, "-o", tmp_path / "m.pt"), replay(csv, bundle_path, tmp_path / "r")):
        assert r.exit_code == 2 and lines(r.output) == [expected]
    r = replay(csv, bundle_path, tmp_path / "r", "--bad-cells", "missing")
    assert r.exit_code == 0 and "1 reading rejected" in r.stdout


def test_several_series_without_key_column_are_refused_naming_it(tmp_path) -> None:
    """Item 5: the interleaved series used to be trained on as one."""
    csv = tmp_path / "keys.csv"
    assert run("generate", "-o", csv, "--points", "200", "--sensors", "2", "--keys", "3").exit_code == 0
    r = run("train", csv, "-o", tmp_path / "m.pt")
    assert r.exit_code == 2 and lines(r.output) == [
        f"error: {csv}: 400 of 600 rows repeat another row's timestamp, so the file looks like several "
        "series interleaved; the likely key column is 'sensor_id': pass --key-column sensor_id"
    ]


def test_day_first_dates_need_the_order_and_leak_no_warning(frame, tmp_path) -> None:
    """Item 6: 02/01/2023 was read as 2 February, and pandas' UserWarning leaked."""
    data = frame.head(300).copy()
    data["timestamp"] = pd.to_datetime(data["timestamp"], utc=True).dt.strftime("%d/%m/%Y %H:%M")
    assert data["timestamp"].iloc[0] == "14/11/2023 22:13"  # 14 > 12: day first beyond doubt
    csv = tmp_path / "dates.csv"
    data.to_csv(csv, index=False)
    r = run("train", csv, "-o", tmp_path / "m.pt", "-p", tiny_pipeline(tmp_path))
    assert r.exit_code == 0 and "Warning" not in r.output and "sampling interval 60 s" in r.output
    ambiguous = tmp_path / "ambiguous.csv"
    pd.DataFrame({"timestamp": ["02/01/2023 10:00", "03/01/2023 10:00"], "a": [1.0, 2.0]}).to_csv(
        ambiguous, index=False
    )
    r = run("train", ambiguous, "-o", tmp_path / "m.pt")
    assert r.exit_code == 2 and lines(r.output) == [
        f"error: {ambiguous}: time column 'timestamp' has dates like '02/01/2023 10:00' that read as day/month or "
        "month/day; pass --dayfirst or --monthfirst (or --time-format)"
    ]


def test_replay_features_selects_and_validates_columns(frame, bundle_path, tmp_path) -> None:
    """Confusing today: --features banana replayed all features; an extra numeric column was an error."""
    extra = tmp_path / "extra.csv"
    frame.assign(humidity=1.0).to_csv(extra, index=False)
    r = replay(extra, bundle_path, tmp_path / "r")
    assert (
        r.exit_code == 2 and "unexpected humidity (use only the model's columns with --features)" in r.output
    )
    feats = "sensor_1,sensor_2,sensor_3,sensor_4"
    assert replay(extra, bundle_path, tmp_path / "r", "--features", feats).exit_code == 0
    r = replay(extra, bundle_path, tmp_path / "r", "--features", "banana")
    assert r.exit_code == 2 and lines(r.output) == [
        "error: --features (data.features) names banana, which the model does not use; its features are "
        "sensor_1, sensor_2, sensor_3, sensor_4"
    ]


def test_features_from_a_pipeline_file_are_named_as_the_setting(bundle_path, test_csv, tmp_path) -> None:
    """`replay -p pipelines/skab.toml` on other data said `--features names Accelerometer1RMS, ...`, an option the
    user never typed: the names came from the pipeline file's data.features (or ANOMALY_DATA_FEATURES)."""
    pipeline = tmp_path / "p.toml"
    pipeline.write_text('[data]\nfeatures = ["Current", "Pressure"]\n')
    r = replay(test_csv, bundle_path, tmp_path / "r", "-p", pipeline)
    assert r.exit_code == 2 and lines(r.output) == [
        "error: --features (data.features) names Current, Pressure, which the model does not use; its features "
        "are sensor_1, sensor_2, sensor_3, sensor_4"
    ]
    r = replay(test_csv, bundle_path, tmp_path / "r", env={"ANOMALY_DATA_FEATURES": "sensor_1,sensor_2"})
    assert r.exit_code == 2 and lines(r.output) == [
        "error: --features (data.features) leaves out sensor_3, sensor_4; the model needs all of "
        "sensor_1, sensor_2, sensor_3, sensor_4"
    ]


def test_a_label_column_with_another_name_suggests_label(frame, bundle_path, tmp_path) -> None:
    csv = tmp_path / "label.csv"
    frame.rename(columns={"anomaly": "label"}).to_csv(csv, index=False)
    r = replay(csv, bundle_path, tmp_path / "r")
    assert (
        r.exit_code == 2
        and "column 'label' looks like labels (0/1), not a sensor; pass --label label" in r.output
    )
    r = replay(csv, bundle_path, tmp_path / "r", "--label", "label")
    assert r.exit_code == 0 and "F1" in r.output


def test_replaying_into_a_used_folder_leaves_no_stale_report(bundle_path, test_csv, tmp_path) -> None:
    out = tmp_path / "r"
    out.mkdir()
    (out / "report-old-series.png").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    assert replay(test_csv, bundle_path, out).exit_code == 0
    assert not (out / "report-old-series.png").exists() and (out / "notes.txt").read_text() == "mine"


def test_make_skab_passes_options_that_anomaly_skab_takes() -> None:
    """Item 8: `make skab` passed --data/--out, which `anomaly skab` does not take."""
    import re
    import shlex
    from pathlib import Path

    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    recipe = re.search(r"^skab:.*\n\t(.+)$", makefile, re.M).group(1)
    args = shlex.split(recipe.replace("$(SKAB_DATA)", "/data/skab"))[2:]  # drop `$(BIN)/anomaly skab`
    ctx = main.commands["skab"].make_context("skab", args)
    assert ctx.params["data"] == "/data/skab" and ctx.params["pipeline"] == "pipelines/skab.toml"


def test_no_progress_frames_when_stderr_is_not_a_terminal(bundle_path, test_csv, tmp_path) -> None:
    """Confusing today: progress bars wrote carriage-return frames into logs."""
    r = run("replay", test_csv, "--model", bundle_path, "--out", tmp_path / "r", "--no-plots")
    assert r.exit_code == 0 and "\r" not in r.output and "replay:" not in r.stderr


def test_the_package_license_is_an_spdx_string() -> None:
    """Confusing today: setuptools warned that the `project.license` table is deprecated."""
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert project["build-system"]["requires"] == ["setuptools>=77"]  # the first to take SPDX strings


def test_training_that_drops_most_rows_warns(frame, tmp_path) -> None:
    data = frame.head(600).copy()
    data.loc[data.index % 3 != 0, "sensor_2"] = np.nan
    csv = tmp_path / "sparse.csv"
    data.to_csv(csv, index=False)
    r = run("train", csv, "-o", tmp_path / "m.pt", "-p", tiny_pipeline(tmp_path))
    assert r.exit_code == 0 and lines(r.stderr) == [
        "warning: most training rows had a missing value (400 dropped, 200 kept); check the file, or set "
        'engine.nan_policy = "ffill"'
    ]
    r = run(
        "train",
        csv,
        "-o",
        tmp_path / "m.pt",
        "-p",
        tiny_pipeline(tmp_path),
        env={"ANOMALY_ENGINE_NAN_POLICY": "ffill"},
    )
    assert r.exit_code == 0 and "0 rows dropped, 400 cells forward-filled" in r.stdout and r.stderr == ""


def test_a_sensor_without_any_value_is_named_by_train_and_replay(frame, bundle_path, tmp_path) -> None:
    """A sensor column that is empty in every row silently left the model (train said nothing), and replay
    called the column, which is in the file, 'missing'."""
    csv = tmp_path / "off.csv"
    frame.head(600).assign(sensor_2=np.nan).to_csv(csv, index=False)
    r = run("train", csv, "-o", tmp_path / "m.pt", "-p", tiny_pipeline(tmp_path))
    assert r.exit_code == 0, r.output
    assert lines(r.stdout)[0] == (
        "features (3): sensor_1, sensor_3, sensor_4; not features: sensor_2 (no value in any row), "
        "anomaly_kind (text)"
    )
    r = replay(csv, bundle_path, tmp_path / "r")
    assert r.exit_code == 2 and lines(r.output) == [
        f"error: {csv} does not match the model's features: missing sensor_2 (no value in any row)"
    ]


def test_rows_ending_with_a_separator_train_and_replay_like_the_clean_file(
    frame, bundle_path, tmp_path
) -> None:
    """Rows that end with a separator made pandas shift every column one to the left: a traceback here (the
    text column met a number's place), silently wrong readings in a file without text columns."""
    clean, trailing = tmp_path / "clean.csv", tmp_path / "trailing.csv"
    frame.head(300).to_csv(clean, index=False)
    head, *rows = clean.read_text().splitlines()
    trailing.write_text("\n".join([head, *(row + "," for row in rows)]) + "\n")
    a, b = replay(clean, bundle_path, tmp_path / "a"), replay(trailing, bundle_path, tmp_path / "b")
    assert a.exit_code == b.exit_code == 0, b.output
    sa, sb = (pd.read_csv(tmp_path / d / "scores.csv") for d in "ab")
    assert sa.drop(columns="key").equals(sb.drop(columns="key"))


def test_replay_without_the_label_column_says_there_is_no_evaluation(bundle_path, test_csv, tmp_path) -> None:
    """A misspelt --label (or unlabelled files) silently printed no evaluation at all."""
    r = replay(test_csv, bundle_path, tmp_path / "r", "--label", "anomly")
    assert r.exit_code == 0, r.output
    assert lines(r.stdout)[1] == "no evaluation: the files have no label column 'anomly' (--label names it)"
    assert "F1" not in r.stdout


def test_training_on_fewer_rows_than_a_window_says_so(frame, tmp_path) -> None:
    """Ten rows gave 'no stretch of 8 rows without a gap longer than ...': gaps were not the reason."""
    csv = tmp_path / "short.csv"
    frame.head(5).to_csv(csv, index=False)
    r = run("train", csv, "-o", tmp_path / "m.pt", "-p", tiny_pipeline(tmp_path))
    assert r.exit_code == 2 and lines(r.stderr) == [
        "error: not enough training data: the longest series has 5 rows, fewer than one window (8 rows, "
        "model.window)"
    ]
    frame.head(1).to_csv(csv, index=False)
    r = run("train", csv, "-o", tmp_path / "m.pt", "-p", tiny_pipeline(tmp_path))
    assert lines(r.stderr) == [  # not '1 rows'
        "error: not enough training data: the longest series has 1 row, fewer than one window (8 rows, "
        "model.window)"
    ]


def test_a_key_in_several_files_replays_as_one_stream(bundle_path, tmp_path) -> None:
    """The same keys in two files (with --key-column) crashed replay with an IndexError traceback."""
    whole, early, late = split_by_time(tmp_path)
    a = replay(whole, bundle_path, tmp_path / "a", "--key-column", "sensor_id")
    b = run("replay", early, late, "-m", bundle_path, "-o", tmp_path / "b", "--key-column", "sensor_id")
    assert a.exit_code == b.exit_code == 0, b.output
    sa, sb = (pd.read_csv(tmp_path / d / "scores.csv") for d in "ab")
    assert sa.equals(sb) and len(sa) == 600
    assert (tmp_path / "a" / "alerts.jsonl").read_text() == (tmp_path / "b" / "alerts.jsonl").read_text()


def test_a_reading_without_a_time_is_refused_alone_and_the_report_still_drawn(frame, bundle_path, tmp_path):
    """An empty time cell: in a text column it refused the whole file ('cannot parse time value nan ...'); in a
    numeric one the reading was refused but the report crashed on its missing time (a matplotlib traceback)."""
    epoch = (pd.to_datetime(frame["timestamp"], utc=True) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta("1s")
    for name, times in (("text", frame["timestamp"].astype(object)), ("numeric", epoch.astype(float))):
        csv = tmp_path / f"{name}.csv"
        times = times.copy()
        times.iloc[100] = None
        frame.head(400).assign(timestamp=times.head(400)).to_csv(csv, index=False)
        r = run("replay", csv, "-m", bundle_path, "-o", tmp_path / name)
        assert r.exit_code == 0, r.output
        assert (tmp_path / name / f"report-{name}.png").stat().st_size > 0
        rejected = [json.loads(x) for x in (tmp_path / name / "rejections.jsonl").read_text().splitlines()]
        assert [(x["reason"], x["detail"]) for x in rejected] == [("non_finite", "timestamp is not finite")]


def test_drop_anomalies_without_the_label_column_is_an_error(frame, tmp_path) -> None:
    """--drop-anomalies with a misspelt --label (or unlabelled files) trained on everything without a word."""
    csv = tmp_path / "data.csv"
    frame.head(300).to_csv(csv, index=False)
    r = run(
        "train",
        csv,
        "-o",
        tmp_path / "m.pt",
        "-p",
        tiny_pipeline(tmp_path),
        "--drop-anomalies",
        "--label",
        "y",
    )
    assert r.exit_code == 2 and lines(r.stderr) == [
        "error: --drop-anomalies needs the label column 'y', which the files lack (--label names it)"
    ]
    assert not (tmp_path / "m.pt").exists()


def test_a_key_in_several_files_trains_as_one_series(tmp_path) -> None:
    """Monthly exports of the same keys (with --key-column) trained as one series per file part: --train-rows N
    took N rows from each file, so replay --evaluate-after N counted rows the model was trained on, and the
    bundle said 4 series for 2 keys."""
    whole, early, late = split_by_time(tmp_path)
    common = ("--key-column", "sensor_id", "--train-rows", "100", "-p", tiny_pipeline(tmp_path))
    a = run("train", whole, "-o", tmp_path / "a.pt", *common)
    b = run("train", early, late, "-o", tmp_path / "b.pt", *common)
    assert a.exit_code == b.exit_code == 0, b.output
    ta, tb = (load_bundle(tmp_path / f"{n}.pt").meta for n in "ab")
    assert (tb["training"]["rows"], tb["training"]["series"]) == (ta["training"]["rows"], 2) == (200, 2)
    assert tb["training_fingerprint"] == ta["training_fingerprint"]
    assert "trained on 200 rows of 2 series" in b.output
    pd.read_csv(late).drop(columns=["anomaly"]).to_csv(late, index=False)  # one month labelled, one not
    c = run("train", early, late, "-o", tmp_path / "c.pt", *common)
    assert c.exit_code == 0, c.output
    assert load_bundle(tmp_path / "c.pt").meta["training_fingerprint"] == ta["training_fingerprint"]
    d = run("train", early, late, "-o", tmp_path / "d.pt", *common, "--drop-anomalies")
    assert d.exit_code == 2 and "has labels in" in d.output and "label both or neither" in d.output


def test_a_column_that_counts_the_readings_is_refused_as_a_sensor(frame, tmp_path) -> None:
    """Epoch seconds beside a text time (or telemanom's `step` under --no-time-column) became a feature: the
    model was trained on the clock, whose every later value is out of the training range (SKAB valve1/0 with an
    epoch column: one alert from early in the test part to a level_shift close). --features chooses it anyway.
    The refusal said a model trained on it finds every later reading out of range, untrue of a sensor that
    ramps over the same range again (NASA SMAP F-3, -1..1 in equal steps in its train and test parts): it now
    says what a clock does and offers --features for such a sensor."""
    data = frame.head(300).copy()
    data.insert(1, "unix_time", 1_700_000_000 + 60 * np.arange(300))
    csv = tmp_path / "clock.csv"
    data.to_csv(csv, index=False)
    r = run("train", csv, "-o", tmp_path / "m.pt", "-p", tiny_pipeline(tmp_path))
    assert r.exit_code == 2
    assert lines(r.output)[-1] == (
        "error: column 'unix_time' counts up reading by reading in equal steps, like a clock or a row number: "
        "taken as a sensor, a clock keeps rising past every value the model was trained on; pass --time-column "
        "unix_time if it is the time, leave it out with --features sensor_1,sensor_2,sensor_3,sensor_4; if it is "
        "a sensor that ramps over the same range again, name it in --features "
        "unix_time,sensor_1,sensor_2,sensor_3,sensor_4"
    )
    assert not (tmp_path / "m.pt").exists()
    r = run(
        "train",
        csv,
        "-o",
        tmp_path / "m.pt",
        "-p",
        tiny_pipeline(tmp_path),
        "--features",
        "sensor_1,unix_time",
    )
    assert r.exit_code == 0, r.output
    assert load_bundle(tmp_path / "m.pt").features == ["sensor_1", "unix_time"]


def test_a_key_sampled_far_slower_than_the_others_is_named_by_train_and_replay(tmp_path) -> None:
    """Keys at different rates in one file: the gap rule follows the median step over all keys, so a key read
    every 10 minutes beside 1-second keys was reset at every reading. Training never saw a window of it and
    replay scored each of its readings from a cold state, both without a word (the run as a whole looked
    scored)."""
    rng = np.random.default_rng(0)
    parts = []
    for key, step, n in (("fast", 1, 400), ("slow", 600, 40)):
        parts.append(
            pd.DataFrame(
                {
                    "timestamp": 1_700_000_000 + step * np.arange(n),
                    "device": key,
                    "a": np.sin(np.arange(n) / 9) + rng.normal(0, 0.1, n),
                    "b": np.cos(np.arange(n) / 7) + rng.normal(0, 0.1, n),
                }
            )
        )
    csv = tmp_path / "rates.csv"
    pd.concat(parts).sort_values("timestamp", kind="stable").to_csv(csv, index=False)
    model = tmp_path / "m.pt"
    r = run("train", csv, "--key-column", "device", "-o", model, "-p", tiny_pipeline(tmp_path))
    assert r.exit_code == 0, r.output
    assert (
        "warning: 1 of 2 series gave no window to train on ('slow'): no 8 readings in a row without a gap over "
        "300 s; in replay they have less than a window of history too"
    ) in r.output
    assert load_bundle(model).meta["training"]["keys_without_window"] == ["slow"]
    r = run("replay", csv, "--key-column", "device", "-m", model, "-o", tmp_path / "r", "--no-plots")
    assert r.exit_code == 0, r.output
    expected = (
        "1 of 2 series were reset by gaps longer than engine.max_gap_seconds = 300 s at half of their readings "
        "or more, so those readings had less than a window of history (cold scores, or none): 'slow' (39 of 40 "
        "readings after a gap, median step 600 s); series sampled this far apart need engine.max_gap_seconds "
        "above their step, or a model of their own"
    )
    assert f"warning: {expected}" in lines(r.output)
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["warnings"] == [expected]


def test_train_names_local_times_repeated_at_a_dst_change(tmp_path) -> None:
    """One file of local times without an offset across the autumn change: train warned of 'files that overlap in
    time, or a file given twice' and said to check that the files do not overlap (replay names the hour)."""
    times = pd.date_range("2023-10-28 12:00", "2023-10-30 12:00", freq="5min", tz="Europe/Berlin")
    rng = np.random.default_rng(0)
    csv = tmp_path / "local.csv"
    pd.DataFrame(
        {
            "timestamp": times.tz_localize(None).strftime("%Y-%m-%d %H:%M:%S"),
            "a": rng.normal(size=len(times)),
            "b": rng.normal(size=len(times)),
        }
    ).to_csv(csv, index=False)
    r = run("train", csv, "-o", tmp_path / "m.pt", "-p", tiny_pipeline(tmp_path))
    assert r.exit_code == 0, r.output
    (warning,) = [line for line in lines(r.stderr) if "repeat" in line]
    assert warning.startswith(
        "warning: 12 readings repeat their key's previous timestamp (files that overlap in time, a file given "
        "twice, or local times without a UTC offset, whose hour repeats at a daylight-saving change)"
    )
    text = csv.read_text().splitlines()[:100]
    csv.write_text("\n".join([*text, text[-1]]) + "\n")  # one row twice, before the daylight-saving change
    r = run("train", csv, "-o", tmp_path / "m.pt", "-p", tiny_pipeline(tmp_path))
    assert r.exit_code == 0, r.output
    (warning,) = [line for line in lines(r.stderr) if "repeat" in line]
    assert warning.startswith("warning: 1 reading repeats its key's previous timestamp (")


def test_replay_names_a_key_shorter_than_a_window(tmp_path) -> None:
    """Training warned that a key of 3 rows 'in replay has less than a window of history too', but replay scored
    its readings from a cold state without a word: the run as a whole looked scored."""
    rng = np.random.default_rng(0)
    parts = [
        pd.DataFrame(
            {
                "timestamp": 1_700_000_000 + 60 * np.arange(n),
                "device": key,
                "a": np.sin(np.arange(n) / 9) + rng.normal(0, 0.1, n),
                "b": np.cos(np.arange(n) / 7) + rng.normal(0, 0.1, n),
            }
        )
        for key, n in (("long", 300), ("tiny", 3))
    ]
    csv = tmp_path / "keys.csv"
    pd.concat(parts).to_csv(csv, index=False)
    model = tmp_path / "m.pt"
    r = run("train", csv, "--key-column", "device", "-o", model, "-p", tiny_pipeline(tmp_path))
    assert r.exit_code == 0, r.output
    r = run("replay", csv, "--key-column", "device", "-m", model, "-o", tmp_path / "r", "--no-plots")
    assert r.exit_code == 0, r.output
    expected = (
        "1 of 2 series have fewer readings than the model window (8), so their readings had less than a window "
        "of history (cold scores, or none): 'tiny' (3 readings)"
    )
    assert f"warning: {expected}" in lines(r.output)
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["warnings"] == [expected]


def test_drop_anomalies_cuts_the_series_where_labelled_rows_were_removed(frame, tmp_path) -> None:
    """--drop-anomalies removed the labelled rows and joined the readings on either side as if consecutive (the
    hole was shorter than the gap limit), so the model learnt a jump that never happened. Now each removed
    stretch inside a series cuts it as a gap does, and the cuts are counted (a stretch at an end cuts nothing)."""
    data = frame.head(600).copy()
    data["anomaly"] = 0
    data.loc[200:219, "anomaly"] = 1  # twenty minutes of a one-minute series: far below the 300-minute gap
    data.loc[400:404, "anomaly"] = 1
    data.loc[595:, "anomaly"] = 1  # at the end: removed, nothing to cut
    csv = tmp_path / "labelled.csv"
    data.to_csv(csv, index=False)
    r = run("train", csv, "-o", tmp_path / "m.pt", "-p", tiny_pipeline(tmp_path), "--drop-anomalies")
    assert r.exit_code == 0, r.output
    assert (
        "--drop-anomalies: 30 rows labelled anomalous left out; the series are cut at 2 removed stretches (as at "
        "a gap), so no training window joins the readings on either side of one" in lines(r.output)
    )
    meta = load_bundle(tmp_path / "m.pt").meta
    assert meta["anomalies_dropped"] == {"rows": 30, "cuts": 2}
    t = meta["training"]
    assert (t["rows"], t["series"], meta["sampling"]["gap_splits"]) == (570, 1, 0)
    assert "trained on 570 rows of 1 series" in r.output
    shown = run("inspect", tmp_path / "m.pt")
    expected = "dropped:         30 rows labelled anomalous (--drop-anomalies), the series cut at 2 removed stretches"
    assert expected in lines(shown.output)


def test_one_removed_stretch_is_counted_in_the_singular(frame, tmp_path) -> None:
    """`anomaly inspect` said `the series cut at 1 removed stretches`."""
    data = frame.head(600).copy()
    data["anomaly"] = 0
    data.loc[200:219, "anomaly"] = 1
    csv = tmp_path / "labelled.csv"
    data.to_csv(csv, index=False)
    r = run("train", csv, "-o", tmp_path / "m.pt", "-p", tiny_pipeline(tmp_path), "--drop-anomalies")
    assert r.exit_code == 0, r.output
    assert "the series are cut at 1 removed stretch (as at a gap)" in r.output
    expected = (
        "dropped:         20 rows labelled anomalous (--drop-anomalies), the series cut at 1 removed stretch"
    )
    assert expected in lines(run("inspect", tmp_path / "m.pt").output)


def test_cut_out_labelled_leaves_no_piece_across_a_removed_stretch() -> None:
    from anomaly.data import Series, cut_out_labelled

    labels = np.array([1, 0, 0, 1, 1, 0, 0, 0, 1, 0], np.int8)
    s = Series("k", np.arange(10.0), np.arange(10.0).reshape(-1, 1), labels, "f.csv", np.arange(2, 12))
    pieces, dropped, cuts = cut_out_labelled([s, Series("u", np.arange(3.0), np.zeros((3, 1)))])
    assert [p.timestamps.tolist() for p in pieces] == [[1.0, 2.0], [5.0, 6.0, 7.0], [9.0], [0.0, 1.0, 2.0]]
    assert [p.key for p in pieces] == ["k", "k", "k", "u"]
    assert pieces[1].lines.tolist() == [7, 8, 9]
    assert (dropped, cuts) == (4, 2)


def test_drop_anomalies_that_leaves_no_window_between_cuts_says_so(frame, tmp_path) -> None:
    data = frame.head(60).copy()
    data["anomaly"] = 0
    data.loc[[5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55], "anomaly"] = 1  # pieces of four rows, window 8
    csv = tmp_path / "holes.csv"
    data.to_csv(csv, index=False)
    r = run("train", csv, "-o", tmp_path / "m.pt", "-p", tiny_pipeline(tmp_path), "--drop-anomalies")
    assert r.exit_code == 2 and lines(r.stderr) == [
        "error: not enough training data: the longest series has 5 rows (--drop-anomalies cut the series at 11 "
        "removed stretches), fewer than one window (8 rows, model.window)"
    ]


def test_train_refuses_an_unwritable_bundle_path_before_training(frame, tmp_path, monkeypatch) -> None:
    """`-o data.csv/model.pt` (a file where a folder should be) failed only after the whole training run, its
    work lost; `-o data.csv`, the training file itself, replaced the user's data with the bundle."""
    import anomaly.commands.model_cmds as cmds

    csv = tmp_path / "data.csv"
    frame.head(300).to_csv(csv, index=False)
    monkeypatch.setattr(cmds, "train", lambda *a, **k: pytest.fail("trained before checking the output"))
    r = run("train", csv, "-o", tmp_path / "data.csv" / "m.pt", "-p", tiny_pipeline(tmp_path))
    assert r.exit_code == 2 and lines(r.stderr) == [
        f"error: cannot write the model bundle {tmp_path}/data.csv/m.pt: {tmp_path}/data.csv is not a folder"
    ]
    before = csv.read_bytes()
    r = run("train", csv, "-o", f"{tmp_path}/./data.csv", "-p", tiny_pipeline(tmp_path))
    assert r.exit_code == 2 and lines(r.stderr) == [
        f"error: the model bundle {tmp_path}/./data.csv is the data file {csv}: training would replace the data "
        "with the bundle; name another file with --out"
    ]
    assert csv.read_bytes() == before and r.stdout == ""
    r = run("train", csv, "-o", f"{tmp_path}/models/", "-p", tiny_pipeline(tmp_path))  # wrote a file 'models'
    assert r.exit_code == 2 and lines(r.stderr) == [
        f"error: cannot write the model bundle {tmp_path}/models/: a name ending in / is a folder, not a file; "
        f"give the bundle's file name, e.g. {tmp_path}/models/model.pt"
    ]
    assert not (tmp_path / "models").exists()
    other = (
        tmp_path / "other.csv"
    )  # a mistyped -o naming another data file: replaced with the bundle, no word
    frame.head(50).to_csv(other, index=False)
    kept = other.read_bytes()
    r = run("train", csv, "-o", other, "-p", tiny_pipeline(tmp_path))
    assert r.exit_code == 2 and lines(r.stderr) == [
        f"error: cannot write the model bundle {other}: it exists and holds text data, not a model (writing would "
        "replace the data); remove it first or name another file with --out"
    ]
    assert other.read_bytes() == kept


def test_a_key_with_fewer_rows_than_a_window_is_not_blamed_on_gaps(tmp_path) -> None:
    """A key with 3 rows beside long ones was reported as 'no 8 readings in a row without a gap over ...
    (readings far apart need engine.max_gap_seconds above their step ...)': it has no gap, only too few rows."""
    rng = np.random.default_rng(0)
    parts = [
        pd.DataFrame(
            {
                "timestamp": 1_700_000_000 + 60 * np.arange(n),
                "device": key,
                "a": rng.normal(0, 1, n),
                "b": rng.normal(0, 1, n),
            }
        )
        for key, n in (("long", 300), ("short", 3), ("slow", 0))
    ]
    slow = 1_700_000_000 + 600_000 * np.arange(20)  # readings a week apart: a gap at each one
    parts[2] = pd.DataFrame({"timestamp": slow, "device": "slow", "a": rng.normal(0, 1, 20), "b": 0.0})
    csv = tmp_path / "keys.csv"
    pd.concat(parts).to_csv(csv, index=False)
    model = tmp_path / "m.pt"
    r = run("train", csv, "--key-column", "device", "-o", model, "-p", tiny_pipeline(tmp_path))
    assert r.exit_code == 0, r.output
    warnings = [line for line in lines(r.stderr) if line.startswith("warning:")]
    assert warnings[0] == (
        "warning: 1 of 3 series have fewer readings than a window (8) and gave none to train on ('short'); in "
        "replay they have less than a window of history too (cold scores, or none)"
    )
    assert warnings[1].startswith("warning: 1 of 3 series gave no window to train on ('slow'): no 8 readings")
    t = load_bundle(model).meta["training"]
    assert (t["series_without_window"], t["keys_without_window"]) == (2, ["short", "slow"])
    assert (t["series_shorter_than_window"], t["keys_shorter_than_window"]) == (1, ["short"])


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_train_on_cuda_without_a_gpu_fails_before_reading_the_data(frame, tmp_path) -> None:
    """`--device cuda` on a CPU machine read (and listed the features of) every file before failing."""
    csv = tmp_path / "data.csv"
    frame.head(300).to_csv(csv, index=False)
    r = run("train", csv, "-o", tmp_path / "m.pt", "-p", tiny_pipeline(tmp_path), "--device", "cuda")
    assert (r.exit_code, r.stdout, lines(r.stderr)) == (
        2,
        "",
        [
            "error: train.device is cuda but no CUDA device is available: use cpu or auto (anomaly train --device cpu, or ANOMALY_TRAIN_DEVICE=cpu)"
        ],
    )


def test_train_warns_about_readings_the_engine_refuses_as_repeated_times(frame, tmp_path) -> None:
    """One file given twice (or exports that overlap) trained on every reading twice without a word, while
    replay and the daemon refuse the second copy (duplicate_timestamp): the model learnt from readings it never
    scores. Training now leaves them out as the engine does, and says so."""
    csv, copy = tmp_path / "a.csv", tmp_path / "b.csv"
    frame.head(300).assign(device="d1").to_csv(csv, index=False)
    frame.head(300).assign(device="d1").to_csv(copy, index=False)
    model = tmp_path / "m.pt"
    key = ("--key-column", "device")  # without one, each file is a series of its own
    r = run("train", csv, copy, *key, "-o", model, "-p", tiny_pipeline(tmp_path))
    assert r.exit_code == 0, r.output
    assert [line for line in lines(r.stderr) if "repeat" in line] == [
        "warning: 300 readings repeat their key's previous timestamp (files that overlap in time, a file given "
        "twice, or local times without a UTC offset, whose hour repeats at a daylight-saving change): the engine "
        'refuses them live and in replay (engine.duplicate_policy = "drop"), so training left them out too, keeping '
        "the first reading at each time; check that the files do not overlap and that their times are UTC or carry "
        "an offset"
    ]
    assert load_bundle(model).meta["training"]["repeated_timestamps"] == 300
    assert load_bundle(model).meta["training"]["rows"] == 300
    kept = run(
        "train",
        csv,
        copy,
        *key,
        "-o",
        model,
        "-p",
        tiny_pipeline(tmp_path),
        env={"ANOMALY_ENGINE_DUPLICATE_POLICY": "keep"},
    )
    assert kept.exit_code == 0 and "repeat" not in kept.output
    assert "repeated_timestamps" not in load_bundle(model).meta["training"]
    once = run("train", csv, *key, "-o", model, "-p", tiny_pipeline(tmp_path))
    assert once.exit_code == 0 and "repeat" not in once.output


def test_a_wander_screen_that_would_remove_every_feature_says_it_screened_nothing(tmp_path) -> None:
    """train.wander_screen keeps every feature scored when all of them wander; train said nothing, so the user
    took the screen to have found no wandering feature."""
    rng = np.random.default_rng(0)
    n = 400
    ramp = np.linspace(0, 10, n)
    csv = tmp_path / "ramps.csv"
    pd.DataFrame(
        {"timestamp": 1_700_000_000 + 60 * np.arange(n), "up": ramp + rng.normal(0, 0.1, n), "down": -ramp}
    ).to_csv(csv, index=False)
    env = {"ANOMALY_TRAIN_WANDER_SCREEN": "0.5"}
    r = run(
        "train", csv, "-o", tmp_path / "m.pt", "-p", tiny_pipeline(tmp_path), "--features", "up,down", env=env
    )
    assert r.exit_code == 0, r.output
    notes = [line for line in lines(r.stderr) if "wander_screen" in line]
    assert notes == [
        "note: train.wander_screen = 0.5 screened nothing: every scored feature wanders over the training span "
        "(up 0.98, down 0.98), so all stay scored: the screen never removes every scored feature"
    ]
    assert load_bundle(tmp_path / "m.pt").targets == ["up", "down"]


def test_a_key_with_a_missing_value_in_every_row_does_not_crash_training(tmp_path) -> None:
    """Under nan_policy 'reject' such a key is left with no rows, and calibration fed it to the LSTM: a
    RuntimeError traceback ('Expected sequence length to be larger than 0 in RNN') instead of a bundle."""
    rng = np.random.default_rng(0)
    parts = [
        pd.DataFrame(
            {
                "timestamp": 1_700_000_000 + 60 * np.arange(300),
                "device": key,
                "a": rng.normal(0, 1, 300) if key == "ok" else np.nan,
                "b": rng.normal(0, 1, 300),
            }
        )
        for key in ("ok", "dead")
    ]
    csv = tmp_path / "keys.csv"
    pd.concat(parts).to_csv(csv, index=False)
    model = tmp_path / "m.pt"
    r = run("train", csv, "--key-column", "device", "-o", model, "-p", tiny_pipeline(tmp_path))
    assert r.exit_code == 0, r.output
    assert [line for line in lines(r.stderr) if line.startswith("warning:")] == [
        "warning: 1 of 2 series have fewer readings than a window (8) once those with a missing value were "
        "dropped and gave none to train on ('dead'); in replay they have less than a window of history too "
        "(cold scores, or none)"
    ]
    meta = load_bundle(model).meta
    assert (meta["training"]["series"], meta["training"]["rows"]) == (2, 300)
    assert meta["sampling"]["gap_splits"] == 0 and meta["missing_values"]["rows_dropped"] == 300


def test_a_key_labelled_anomalous_throughout_does_not_crash_drop_anomalies(tmp_path) -> None:
    """--drop-anomalies left such a key with no rows, and calibration crashed on it (RNN traceback)."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "timestamp": np.tile(1_700_000_000 + 60 * np.arange(300), 2),
            "device": np.repeat(["ok", "broken"], 300),
            "a": rng.normal(0, 1, 600),
            "anomaly": np.repeat([0, 1], 300),
        }
    )
    csv = tmp_path / "keys.csv"
    frame.to_csv(csv, index=False)
    model = tmp_path / "m.pt"
    args = ("--key-column", "device", "--drop-anomalies", "-o", model, "-p", tiny_pipeline(tmp_path))
    r = run("train", csv, *args)
    assert r.exit_code == 0, r.output
    assert "gave none to train on ('broken')" in r.stderr
    assert load_bundle(model).meta["anomalies_dropped"] == {"rows": 300, "cuts": 0}


def test_a_file_whose_sensor_reports_less_often_than_its_rows_is_not_taken_for_a_wrong_time_unit(
    tmp_path,
) -> None:
    """Rows every second, one sensor with a value only every minute (nan_policy "reject"): training learns
    the step between the readings kept (60 s), as the engine's clock moves only with the readings it accepts;
    replaying the very training file compared that with the step between all its rows (1 s) and warned "these
    files are sampled every 1 s but the model was trained on data sampled every 60 s; check the time unit"."""
    n = 3000
    slow = np.full(n, np.nan)
    slow[::60] = np.cos(np.arange(0, n, 60) / 300)
    csv = tmp_path / "slow.csv"
    pd.DataFrame(
        {"timestamp": 1_700_000_000 + np.arange(n), "a": np.sin(np.arange(n) / 30), "b": slow}
    ).to_csv(csv, index=False)
    model = tmp_path / "m.pt"
    r = run("train", csv, "-o", model, "-p", tiny_pipeline(tmp_path))
    assert r.exit_code == 0, r.output
    assert (
        "sampling interval 60 s between the readings kept; gaps over 18,000 s reset a key (0 in the training data)"
        in lines(r.output)
    )
    shown = lines(run("inspect", model).output)  # `inspect` says it in the same format
    assert "sampling:        every 60 s; a gap over 18,000 s resets a key (0 in the training data)" in shown
    r = run("replay", csv, "-m", model, "-o", tmp_path / "r", "--no-plots")
    assert r.exit_code == 0, r.output
    assert [
        w for w in json.loads((tmp_path / "r" / "summary.json").read_text())["warnings"] if "sampled" in w
    ] == []


def test_a_sensor_empty_in_the_rows_trained_on_is_not_said_to_be_empty_in_every_row(tmp_path) -> None:
    """`train --train-rows 100` on a file whose sensor `w` starts reporting at row 150: the error said `w` has "no
    value in any row", though 50 rows of the file hold one; it now says which rows were trained on."""
    n = 200
    t = 1_700_000_000 + 10 * np.arange(n)
    w = np.where(np.arange(n) >= 150, 1.0, np.nan)
    csv = tmp_path / "late.csv"
    pd.DataFrame({"timestamp": t, "v": np.sin(np.arange(n) / 3), "w": w}).to_csv(csv, index=False)
    r = run("train", csv, "-o", tmp_path / "m.pt", "-p", tiny_pipeline(tmp_path), "--train-rows", "100")
    assert r.exit_code == 2
    assert lines(r.stderr)[-1] == (
        "error: no training rows left: every row has a missing value (NaN, empty or text like n/a) and "
        "engine.nan_policy = 'reject' drops it; column(s) 'w' have no value in any row trained on (the first 100 "
        "rows of each series, --train-rows): leave them out with --features v"
    )


def test_training_data_labelled_anomalous_throughout_says_so_under_drop_anomalies(frame, tmp_path) -> None:
    """Every row labelled anomalous and --drop-anomalies: the run ended with `error: no training rows left`,
    which named neither the option that removed them nor the label column to check."""
    data = frame.head(300).assign(anomaly=1)
    csv = tmp_path / "all.csv"
    data.to_csv(csv, index=False)
    r = run("train", csv, "-o", tmp_path / "m.pt", "-p", tiny_pipeline(tmp_path), "--drop-anomalies")
    assert r.exit_code == 2 and lines(r.stderr) == [
        "error: no training rows left: every one of the 300 rows is labelled anomalous in 'anomaly' and "
        "--drop-anomalies left them all out; train on normal data, or check the label column (--label, "
        "--label-map: which value means normal)"
    ]
    assert not (tmp_path / "m.pt").exists()


def test_a_feature_whose_scale_one_extreme_reading_sets_is_named_by_train_and_inspect(
    frame, tmp_path
) -> None:
    """One reading of 1e9 among readings of about 1 made the feature's scale about 2e7 without a word: every
    ordinary change of it standardized to ~0 (a +20 shift that scored 247 with the reading removed scored 0.675,
    no alert). Training still computes the same (SKAB and NASA numbers do not move); it now says so, and the
    bundle records it."""
    data = frame.head(600).copy()
    data.loc[100, "sensor_2"] = 1e9
    csv = tmp_path / "outlier.csv"
    data.to_csv(csv, index=False)
    r = run("train", csv, "-o", tmp_path / "m.pt", "-p", tiny_pipeline(tmp_path))
    assert r.exit_code == 0, r.output
    col = data["sensor_2"].to_numpy(np.float64)
    scale = float(np.float32(col.std()))
    without = float(np.delete(col, 100).std())
    assert (
        f"warning: feature 'sensor_2' has its scale ({scale:.4g}) set by 1 extreme reading (the farthest 1e+09): "
        f"without it the scale is {without:.4g}, so ordinary changes of 'sensor_2' barely move a score; remove "
        "or label the reading(s) (--drop-anomalies) if they are errors"
    ) in lines(r.stderr)
    meta = load_bundle(tmp_path / "m.pt").meta
    assert meta["training"]["scale_outliers"] == {
        "sensor_2": {
            "value": 1e9,
            "readings": 1,
            "scale": scale,
            "scale_without": pytest.approx(without, rel=1e-12),
        }
    }
    shown = [x for x in lines(run("inspect", tmp_path / "m.pt").output) if x.startswith("scale outliers:")]
    assert shown == [
        f"scale outliers:  sensor_2 scale {scale:,.0f} ({without:.4g} without 1 extreme reading, farthest "
        "1,000,000,000)"
    ]
    data.loc[100, "sensor_2"] = data.loc[99, "sensor_2"]
    data.to_csv(csv.with_name("clean.csv"), index=False)
    clean = run("train", csv.with_name("clean.csv"), "-o", tmp_path / "c.pt", "-p", tiny_pipeline(tmp_path))
    assert clean.exit_code == 0 and "scale_outliers" not in load_bundle(tmp_path / "c.pt").meta["training"]
    assert "extreme reading" not in clean.output


def test_outlier_scales_leaves_out_flags_quantized_and_ordinary_features() -> None:
    from anomaly.data import Scaler
    from anomaly.training import outlier_scales

    rng = np.random.default_rng(0)
    n = 3000
    ordinary = rng.standard_normal(n)
    flag = np.zeros(n)
    flag[[5, 900]] = 1.0  # constant but for two readings: nothing ordinary to drown
    steps = (
        np.round(rng.standard_normal(n) * 0.01) * 100.0
    )  # mostly 0, steps of 100: the quantum sets the scale
    spiked = rng.standard_normal(n)
    spiked[[10, 20, 30]] = 1e6  # three readings among 3,000: the 0.1 % left out
    spiked[20] = -2e6
    many = rng.standard_normal(n)
    many[::300] = 1e6  # ten readings among 3,000: more than the 0.1 % left out, so not named (a limit)
    values = np.column_stack([ordinary, flag, steps, spiked, many])
    scale = Scaler.fit(values).scale
    found = outlier_scales(values, scale)
    assert sorted(found) == [3]
    assert (found[3]["value"], found[3]["readings"], found[3]["scale"]) == (-2e6, 3, float(scale[3]))
    assert found[3]["scale_without"] == pytest.approx(np.delete(values[:, 3], [10, 20, 30]).std(), rel=1e-12)

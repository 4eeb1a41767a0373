"""Replay end to end on generated files: outputs, evaluation, and equality with the streaming engine."""

from __future__ import annotations

import csv
import json

import numpy as np
import pandas as pd
import pytest

from anomaly import evaluation
from anomaly.commands.replay_cmds import run_replay
from anomaly.config import build_config
from anomaly.data import Series, load_series, to_epoch_seconds
from anomaly.engine import Engine, Event
from anomaly.errors import DataError, SchemaError
from anomaly.replay import replay
from anomaly.synthetic import SyntheticSpec, generate, generate_keys


def test_replay_writes_consistent_outputs(bundle_path, test_csv, tmp_path) -> None:
    cfg = build_config()
    result = run_replay(
        [str(test_csv)],
        str(bundle_path),
        str(tmp_path / "out"),
        cfg,
        metrics_out=str(tmp_path / "out" / "metrics.prom"),
        progress=False,
    )
    out = tmp_path / "out"
    scores = pd.read_csv(out / "scores.csv")
    source = pd.read_csv(test_csv)
    assert len(scores) == len(source)
    assert np.array_equal(scores["label"].to_numpy(), source["anomaly"].to_numpy())
    pq = pd.read_parquet(out / "scores.parquet")
    assert np.allclose(pq["score"].to_numpy(), scores["score"].to_numpy(), equal_nan=True)
    alerts = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["alert_events"] == len(alerts) == len(result.alerts)
    assert summary["alerts_raised"] == sum(a["status"] == "open" for a in alerts) > 0
    assert {a["status"] for a in alerts} <= {"open", "closed"}
    expected = evaluation.evaluate(
        scores["label"], scores["predicted"], scores["timestamp"], scores["decided_at"]
    )
    assert summary["metrics"]["f1"] == pytest.approx(expected["f1"])
    assert evaluation.Counts.from_json(summary["metrics"]["counts"]) == evaluation.Counts.from_json(
        expected["counts"]
    )
    window = result.engine.window
    scored = scores[scores["scored"]]
    ts = scored["timestamp"].to_numpy()
    assert np.array_equal(scored["decided_at"].to_numpy(), ts)  # a forecast model decides each on arrival
    assert scores.loc[~scores["scored"], "decided_at"].isna().all()
    assert summary["unscored_readings"] == len(source) % window
    assert summary["totals"]["windows_scored"] == len(source) // window
    assert summary["coverage"] == {
        "readings": len(source),
        "scored": len(scored),
        "rejected": 0,
        "unscored": len(source) % window,
        "scored_fraction": round(len(scored) / len(source), 6),
        "cold_only": False,
    }
    assert summary["warnings"] == []
    png = out / "report-test.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    prom = (out / "metrics.prom").read_text()
    assert f"anomaly_readings_scored_total {float(len(source))}" in prom.splitlines()
    assert f"anomaly_windows_scored_total {float(len(source) // window)}" in prom.splitlines()


def test_replay_equals_the_engine_fed_one_reading_at_a_time(bundle, bundle_path, tmp_path) -> None:
    frame = generate_keys(SyntheticSpec(n_sensors=4, n_points=300, anomalies=2, seed=4), 3)
    path = tmp_path / "keys.csv"
    frame.to_csv(path, index=False)
    cfg = build_config(
        {"data": {"key_column": "sensor_id"}, "replay": {"batch_readings": 37, "plots": False}}
    )
    result = run_replay([str(path)], str(bundle_path), str(tmp_path / "r"), cfg, progress=False)
    engine = Engine(bundle, cfg.engine)
    live: dict[str, list[np.ndarray]] = {}
    alert_ids = []
    ts = to_epoch_seconds(frame["timestamp"])
    with path.open() as fh:  # the CSV's decimals as Python reads them: the numeric contract of anomaly.data
        rows = list(csv.DictReader(fh))
    for i, row in enumerate(rows):
        values = np.array([float(row[f]) for f in bundle.features])
        out = engine.process([Event(row["sensor_id"], np.array([ts[i]]), values)])
        for w in out.windows:
            live.setdefault(w.key, []).append(w.scores)
        alert_ids += [a.id + a.status for a in out.alerts]
    for w in engine.flush().windows:  # the data ends: replay reports the readings still waiting for a window
        live[w.key].append(w.scores)
    for key, f in result.frames.items():
        assert f["scored"].all()
        replayed = f.loc[f["scored"], "score"].to_numpy()
        assert np.array_equal(replayed, np.concatenate(live[key]))
    assert sorted(a["id"] + a["status"] for a in result.alerts) == sorted(alert_ids)


def test_replay_refuses_data_with_other_features(bundle_path, tmp_path) -> None:
    frame = generate(SyntheticSpec(n_sensors=5, n_points=100))
    path = tmp_path / "five.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(SchemaError, match="unexpected sensor_5"):
        run_replay([str(path)], str(bundle_path), str(tmp_path / "r"), build_config(), progress=False)
    frame.drop(columns=["sensor_2", "sensor_5"]).to_csv(path, index=False)
    with pytest.raises(SchemaError, match="missing sensor_2"):
        run_replay([str(path)], str(bundle_path), str(tmp_path / "r"), build_config(), progress=False)


def test_a_feature_renamed_only_in_case_is_pointed_out(bundle_path, tmp_path) -> None:
    """`missing sensor_2; unexpected Sensor_2` left the user to spot that the names differ only in case."""
    frame = generate(SyntheticSpec(n_sensors=4, n_points=100)).rename(columns={"sensor_2": "Sensor_2"})
    path = tmp_path / "cased.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(SchemaError) as info:
        run_replay([str(path)], str(bundle_path), str(tmp_path / "r"), build_config(), progress=False)
    assert str(info.value) == (
        f"{path} does not match the model's features: missing sensor_2; unexpected Sensor_2; the names differ "
        "only in case: the model's 'sensor_2' is 'Sensor_2' in the file (rename the column in the file as the "
        "model names it)"
    )


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"data.time_column": "sensor_1"}, "named as the time column: --time-column, data.time_column"),
        ({"data.key_column": "sensor_1"}, "named as the key column: --key-column, data.key_column"),
        ({"data.label": "sensor_1"}, "named as the label column: --label, data.label"),
    ],
)
def test_a_model_feature_named_as_time_key_or_label_column_says_so(bundle_path, tmp_path, overrides, why):
    """`replay --time-column sensor_1` (or --key-column, --label) said `missing sensor_1 (mostly text)` of a
    column of numbers: the option had taken it out of the features."""
    path = tmp_path / "data.csv"
    generate(SyntheticSpec(n_sensors=4, n_points=100)).to_csv(path, index=False)
    with pytest.raises(SchemaError) as info:
        run_replay([str(path)], str(bundle_path), str(tmp_path / "r"), build_config(None, None, overrides))
    assert str(info.value) == f"{path} does not match the model's features: missing sensor_1 ({why})"


def test_a_title_row_above_the_header_is_pointed_out(bundle_path, tmp_path) -> None:
    """A title row above the header: replay said only 'missing sensor_1, ...; unexpected ...', where train says
    that the names seem to be on line 2 (the model's columns are checked before the time column)."""
    frame = generate(SyntheticSpec(n_sensors=4, n_points=100))
    path = tmp_path / "titled.csv"
    path.write_text("plant 7,export,,,,,,\n" + frame.to_csv(index=False))
    with pytest.raises(SchemaError) as info:
        run_replay([str(path)], str(bundle_path), str(tmp_path / "r"), build_config(), progress=False)
    assert str(info.value).endswith("; the column names seem to be on line 2: pass --skip-rows 1")
    run_replay(
        [str(path)],
        str(bundle_path),
        str(tmp_path / "r"),
        build_config(overrides={"data.skip_rows": 1}),
        progress=False,
    )
    assert len(pd.read_csv(tmp_path / "r" / "scores.csv")) == 100


def test_a_numeric_time_column_under_another_name_is_pointed_out(bundle_path, tmp_path) -> None:
    """Epoch seconds in a column 'ts': replay said 'unexpected ts (use only the model's columns with
    --features)', and following that led to 'time column not found' only on the second try."""
    frame = generate(SyntheticSpec(n_sensors=4, n_points=100))
    frame["timestamp"] = pd.to_datetime(frame["timestamp"]).map(lambda t: int(t.timestamp()))
    for name in ("ts", "t_0"):  # by its name, or as a column that counts up in equal steps
        path = tmp_path / f"{name}.csv"
        frame.rename(columns={"timestamp": name}).to_csv(path, index=False)
        with pytest.raises(SchemaError) as info:
            run_replay([str(path)], str(bundle_path), str(tmp_path / "r"), build_config(), progress=False)
        assert str(info.value) == (
            f"{path} does not match the model's features: unexpected {name} (use only the model's columns with "
            f"--features); the file has no time column 'timestamp': if '{name}' is the time, pass --time-column "
            f"{name}"
        )
    run_replay(
        [str(path)],
        str(bundle_path),
        str(tmp_path / "r"),
        build_config(overrides={"data.time_column": "t_0"}),
        progress=False,
    )
    assert len(pd.read_csv(tmp_path / "r" / "scores.csv")) == 100


def test_scores_mark_only_the_refused_copies_of_a_repeated_timestamp(bundle_path, test_csv, tmp_path) -> None:
    """A timestamp repeated in the file: the first reading is scored, the copies are refused as
    duplicate_timestamp, and scores.csv marks exactly the refused rows (it marked every row sharing the
    timestamp, the scored one too, so scores.csv and summary.json disagreed); an earlier timestamp seen again
    later is refused on the later row only."""
    frame = pd.read_csv(test_csv)
    frame.loc[41:43, "timestamp"] = frame.loc[40, "timestamp"]  # three copies of row 40's time
    frame.loc[70, "timestamp"] = frame.loc[60, "timestamp"]  # row 60's time again, ten rows later
    path = tmp_path / "repeats.csv"
    frame.to_csv(path, index=False)
    run_replay([str(path)], str(bundle_path), str(tmp_path / "out"), build_config(), progress=False)
    scores = pd.read_csv(tmp_path / "out" / "scores.csv")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    refused = scores["rejected"].fillna("").to_numpy() != ""
    t40, t60 = to_epoch_seconds(frame.loc[[40, 60], "timestamp"]).tolist()
    ts = scores["timestamp"].to_numpy()
    assert sorted(ts[refused].tolist()) == sorted([t40, t40, t40, t60])  # the file's rows, sorted by time
    assert set(scores.loc[refused, "rejected"]) == {"duplicate_timestamp"}
    assert not scores.loc[refused, "scored"].any()
    for t in (t40, t60):  # the one reading taken at each repeated time is scored and not marked
        kept = (ts == t) & ~refused
        assert kept.sum() == 1 and scores.loc[kept, "scored"].all()
    assert summary["coverage"]["rejected"] == 4 == int(refused.sum())


def test_report_names_never_let_two_keys_share_a_file() -> None:
    from anomaly.replay import report_names

    names = report_names(["pump 1", "a/b", "a_b", "Pump", "pump", "ok-key.v2"])
    assert names["pump 1"] == "report-pump_1.png" and names["ok-key.v2"] == "report-ok-key.v2.png"
    assert len({n.casefold() for n in names.values()}) == 6  # distinct even where case is ignored
    for key in ("a/b", "a_b", "Pump", "pump"):  # the colliding ones keep a readable name, plus a hash
        assert names[key].startswith(f"report-{key.replace('/', '_')}-") and names[key].endswith(".png")
    assert report_names(["a/b", "a_b"]) == {k: names[k] for k in ("a/b", "a_b")}  # stable across runs


def test_scores_put_each_kept_repeat_of_a_timestamp_on_its_own_row(bundle_path, test_csv, tmp_path) -> None:
    """duplicate_policy=keep takes every reading of a repeated timestamp: each gets its own row in scores.csv
    (all their results landed on the first row, the others showed as unscored and never flagged)."""
    frame = pd.read_csv(test_csv)
    frame.loc[41:43, "timestamp"] = frame.loc[40, "timestamp"]
    path = tmp_path / "repeats.csv"
    frame.to_csv(path, index=False)
    cfg = build_config({"engine": {"duplicate_policy": "keep"}})
    result = run_replay([str(path)], str(bundle_path), str(tmp_path / "out"), cfg, progress=False)
    scores = pd.read_csv(tmp_path / "out" / "scores.csv")
    assert scores.loc[40:43, "scored"].all()
    engine = Engine(result.engine.bundle, cfg.engine)
    ts = np.asarray(to_epoch_seconds(frame["timestamp"]), np.float64)
    values = frame[result.engine.bundle.features].to_numpy(np.float64)
    out = engine.process([Event("repeats", ts, values)])
    out.windows += engine.flush().windows
    direct = np.concatenate([w.scores for w in out.windows])
    assert np.array_equal(
        scores.loc[scores["scored"], "score"].to_numpy(np.float32), direct.astype(np.float32)
    )


def test_evaluate_after_counts_only_the_held_out_part(bundle, test_series, tmp_path) -> None:
    """A file that holds both parts (train --train-rows N) was evaluated whole: the rows the model was trained
    on counted as true negatives (a Yahoo A1-layout file showed half its FAR). The rows are still replayed."""
    skip = 200
    whole = replay(bundle, [test_series], build_config(), tmp_path / "whole")
    held = replay(
        bundle, [test_series], build_config(overrides={"replay.evaluate_after": skip}), tmp_path / "held"
    )
    frame = whole.frames[test_series.key]
    assert held.frames[test_series.key].equals(frame)  # the same replay, decisions included
    expected = evaluation.evaluate(
        frame["label"].to_numpy()[skip:],
        frame["predicted"].to_numpy()[skip:],
        frame["timestamp"].to_numpy()[skip:],
        frame["decided_at"].to_numpy()[skip:],
    )
    assert held.summary["metrics"]["counts"]["point"] == expected["counts"]["point"]
    assert sum(held.summary["metrics"]["counts"]["point"].values()) == len(test_series) - skip
    assert held.summary["evaluate_after"] == skip and set(held.quality) == set(whole.quality)
    # the setting is named as well as the option: ANOMALY_REPLAY_EVALUATE_AFTER named only an option never given
    leaves = rf"^replay.evaluate_after \(--evaluate-after\) {len(test_series)} leaves no reading to evaluate"
    with pytest.raises(DataError, match=leaves):
        replay(
            bundle,
            [test_series],
            build_config(overrides={"replay.evaluate_after": len(test_series)}),
            tmp_path / "none",
        )


def test_evaluate_after_header_counts_only_the_evaluated_readings_unscored(
    bundle, test_series, tmp_path, capsys
) -> None:
    """The evaluation header's `N readings unscored hold the last decision` counted the readings before
    --evaluate-after too (the first window's, never scored), which no metric counts."""
    from anomaly.commands.replay_cmds import print_result

    skip = 200
    values = test_series.values.copy()
    values[[50, 60, 70, 250]] = (
        np.nan
    )  # refused (engine.nan_policy = "reject"): three before the cut, one after
    series = Series(test_series.key, test_series.timestamps, values, test_series.labels)
    held = replay(
        bundle, [series], build_config(overrides={"replay.evaluate_after": skip}), tmp_path / "held"
    )
    frame = held.frames[series.key]
    assert held.summary["coverage"]["rejected"] == 4
    counted = int((~frame["scored"].iloc[skip:]).sum())
    print_result(held)
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("evaluation ("))
    verb, noun = ("holds", "reading") if counted == 1 else ("hold", "readings")
    expected = f"; {counted:,} {noun} unscored {verb} the last decision: 1 rejected, {counted - 1:,} in windows never"
    assert expected in header
    assert held.summary["evaluated"] == {"readings": len(frame) - skip, "unscored": counted, "rejected": 1}


def test_evaluate_after_names_the_labelled_series_it_leaves_wholly_out(bundle, test_series, tmp_path) -> None:
    """A key that started late (or a short one) with no reading past --evaluate-after was replayed and then left
    out of every metric without a word, its labelled anomalies with it."""
    import dataclasses

    skip = 200
    part = test_series.take(slice(0, 150))
    late = dataclasses.replace(part, key="late", labels=np.ones(150, np.int8))
    result = replay(
        bundle, [test_series, late], build_config(overrides={"replay.evaluate_after": skip}), tmp_path
    )
    assert set(result.summary["per_series"]) == {test_series.key}
    assert result.summary["warnings"][-1] == (
        "1 of 2 labelled series have no reading after the first 200 (--evaluate-after), so no metric counts "
        "them or their 150 anomalous labels: 'late' (150 readings)"
    )
    assert not any(
        "--evaluate-after" in w
        for w in replay(bundle, [test_series, late], build_config(), tmp_path).summary["warnings"]
    )


def test_false_alerts_per_day_count_the_days_with_data_not_a_gap(bundle, test_series, tmp_path) -> None:
    """A replay whose series stops for 30 days midway divided its false alerts by those 30 days too."""
    import dataclasses

    half = len(test_series) // 2
    ts = test_series.timestamps.copy()
    ts[half:] += 30 * 86_400.0
    result = replay(bundle, [dataclasses.replace(test_series, timestamps=ts)], build_config(), tmp_path)
    observed = float(ts[-1] - ts[0]) - float(ts[half] - ts[half - 1])
    metrics = result.summary["metrics"]
    assert metrics["counts"]["events"]["seconds"] == observed
    assert metrics["false_alerts_per_day"] == metrics["counts"]["events"]["false_alerts"] / (
        observed / 86_400.0
    )


def test_a_sensor_named_like_a_result_column_keeps_its_values(tmp_path) -> None:
    """Sensors called `error`, `score` or `key`: scores.csv wrote the engine's error and score over their readings
    (or their readings over the series key), and the report then crashed with a matplotlib traceback ('x and y
    must be the same size'). Their values now go to `value_NAME` and every result is what the same data with
    other column names gives."""
    from anomaly.bundle import save_bundle
    from anomaly.config import ModelConfig, TrainConfig
    from anomaly.data import load_series
    from anomaly.training import train

    frame = generate(SyntheticSpec(n_sensors=4, n_points=400, anomalies=2, seed=5))
    names = {"sensor_1": "error", "sensor_2": "score", "sensor_3": "key", "sensor_4": "value_error"}
    got = {}
    for name, data in (("plain", frame), ("clash", frame.rename(columns=names))):
        path = tmp_path / f"{name}.csv"
        data.to_csv(path, index=False)
        series, feats = load_series([path], build_config().data)
        result = train(
            series, feats, ModelConfig(window=8, hidden_size=8), TrainConfig(epochs=1, device="cpu")
        )
        model = save_bundle(result.bundle, tmp_path / f"{name}.pt")
        run_replay([str(path)], str(model), str(tmp_path / name), build_config(), progress=False)
        got[name] = pd.read_csv(tmp_path / name / "scores.csv")
        assert (tmp_path / name / f"report-{name}.png").stat().st_size > 0
    plain, clash = got["plain"], got["clash"]
    values = ["value_value_error", "value_score", "value_key", "value_error"]  # sensor_1 .. sensor_4
    assert list(clash.columns) == [*plain.columns[:3], *values, *plain.columns[7:]]
    assert (clash["key"] == "clash").all()
    for old, new in zip(["sensor_1", "sensor_2", "sensor_3", "sensor_4"], values, strict=True):
        assert clash[new].equals(plain[old])
    results = ["label", "error", "score", "threshold", "anomalous", "alert_open", "scored", "decided_at"]
    assert clash[results].equals(plain[results])


@pytest.mark.parametrize("batch", [4096, 1, 3])
def test_rejections_point_at_the_refused_rows_of_the_file(bundle_path, test_csv, tmp_path, batch) -> None:
    """Each record of rejections.jsonl names the file lines of the readings it refused (it named the file and
    the first reading of the engine's block, `repeats.csv:0`, another reading than the refused one): copies of
    a time refuse the later rows, a missing value its own row (not the row beside it at the same time), and a
    blank line in the file is counted as an editor counts it."""
    frame = pd.read_csv(test_csv)
    frame.loc[41:43, "timestamp"] = frame.loc[40, "timestamp"]  # rows 41-43 repeat row 40's time
    frame.loc[70, "timestamp"] = frame.loc[60, "timestamp"]  # row 60's time again, ten rows later
    frame.loc[200, "timestamp"] = frame.loc[199, "timestamp"]
    frame.loc[199, "sensor_1"] = np.nan  # row 199 has no value; row 200, at its time, is taken
    path = tmp_path / "repeats.csv"
    text = frame.to_csv(index=False).splitlines()
    text.insert(30, "")  # a blank line after data row 28: later rows are one line further down
    path.write_text("\n".join(text) + "\n")
    cfg = build_config({"replay": {"batch_readings": batch}})
    run_replay([str(path)], str(bundle_path), str(tmp_path / "out"), cfg, progress=False)
    records = [json.loads(line) for line in (tmp_path / "out" / "rejections.jsonl").read_text().splitlines()]
    refs = sorted((r["reason"], r["ref"].replace(str(tmp_path / "x")[:-1], "")) for r in records)
    # data row i is on line i + 2 (header on line 1), i + 3 below the blank line
    if batch == 1:  # one record per refused reading
        want = [("duplicate_timestamp", f"repeats.csv:{i + 3}") for i in (41, 42, 43, 70)]
    elif batch == 3:  # blocks of three readings in time order: rows 39-41 are one, rows 42-44 the next
        want = [("duplicate_timestamp", "repeats.csv:44"), ("duplicate_timestamp", "repeats.csv:45,46")]
        want.append(("duplicate_timestamp", "repeats.csv:73"))
    else:  # one block: one record for the key's refused copies
        want = [("duplicate_timestamp", "repeats.csv:44,45,46,73")]
    assert refs == sorted([*want, ("non_finite", "repeats.csv:202")])
    assert sum(r["count"] for r in records) == 5


def test_rejections_of_a_key_read_from_two_files_name_the_file_of_the_refused_row(
    bundle_path, test_csv, tmp_path
) -> None:
    frame = pd.read_csv(test_csv).assign(device="pump")
    first, second = frame.iloc[:600].copy(), frame.iloc[600:].copy()
    second.iloc[5, second.columns.get_loc("timestamp")] = first["timestamp"].iloc[100]  # a time a.csv has
    first.to_csv(tmp_path / "a.csv", index=False)
    second.to_csv(tmp_path / "b.csv", index=False)
    cfg = build_config({"data": {"key_column": "device"}})
    paths = [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]
    run_replay(paths, str(bundle_path), str(tmp_path / "out"), cfg, progress=False)
    records = [json.loads(line) for line in (tmp_path / "out" / "rejections.jsonl").read_text().splitlines()]
    assert [(r["reason"], r["count"], r["ref"]) for r in records] == [
        ("duplicate_timestamp", 1, f"{tmp_path / 'b.csv'}:7")  # data row 5 of b.csv, below its header
    ]


def test_replay_counts_are_printed_singular_and_plural(tmp_path, capsys) -> None:
    """`1 readings rejected`, `1 alerts raised`: a count of one took the plural."""
    from pathlib import Path

    from anomaly.commands.replay_cmds import print_result
    from anomaly.replay import ReplayResult

    def printed(n: int) -> list[str]:
        summary = {
            "totals": {"windows_scored": n},
            "coverage": {"readings": n, "scored": n, "rejected": n, "unscored": n},
            "series": 1,
            "alerts_raised": n,
            "alert_events": n,
            "warnings": [],
            "label": "anomaly",
        }
        print_result(ReplayResult({}, [], summary, Path(tmp_path)))
        return capsys.readouterr().out.splitlines()

    assert printed(1)[0] == (
        "replayed 1 reading of 1 series: 1 window scored (1 reading), 1 alert raised (1 open/close event), "
        "1 reading rejected"
    )
    assert printed(2)[0] == (
        "replayed 2 readings of 1 series: 2 windows scored (2 readings), 2 alerts raised (2 open/close events), "
        "2 readings rejected"
    )


def test_the_time_column_prints_each_reading_at_its_own_microsecond() -> None:
    """10 Hz readings: `time` in scores.csv used to truncate the float seconds, printing 20.300 s as
    20.299999 (half of all millisecond times)."""
    from anomaly.data import Series
    from anomaly.replay import point_frame

    seconds = to_epoch_seconds(pd.Series([1_700_000_000_000 + 100 * i for i in range(20)]))
    s = Series("k", seconds, np.zeros((20, 1)))
    got = {"timestamps": np.zeros(0)}
    frame = point_frame(s, ["a"], got, "alert")
    assert frame["time"].tolist() == [
        f"2023-11-14T22:13:{20 + i // 10:02d}.{i % 10}00000Z" for i in range(20)
    ]


def test_labels_that_mark_no_reading_are_a_warning_not_a_silent_f1_of_zero(
    bundle_path, test_csv, tmp_path
) -> None:
    """A label column empty in every row (a placeholder, or the labels in another column) was evaluated as
    all-normal without a word: F1 0.000 and 0 of 0 events, as if the model had found nothing."""
    from click.testing import CliRunner

    from anomaly.cli import main

    frame = pd.read_csv(test_csv)
    frame["anomaly"] = ""
    path = tmp_path / "empty.csv"
    frame.to_csv(path, index=False)
    out = tmp_path / "out"
    got = CliRunner().invoke(
        main, ["replay", str(path), "-m", str(bundle_path), "-o", str(out), "--no-plots"]
    )
    want = (
        "no evaluated reading is labelled anomalous (all 1,200 labels are 0 or empty): recall, F1 and the event "
        "metrics are 0 by construction, and only FAR and false alerts per day measure this run; if the labels are "
        "in another column or file, name it with --label or --labels"
    )
    assert got.exit_code == 0
    assert [line for line in got.stderr.splitlines() if line.startswith("warning:")] == [f"warning: {want}"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["warnings"] == [want]
    assert summary["metrics"]["counts"]["events"]["true_events"] == 0


def test_local_times_across_the_autumn_clock_change_are_named_not_only_counted(
    bundle_path, test_csv, tmp_path
):
    """Naive Berlin times over the night of 2023-10-29: the hour 02:00-02:59 comes twice, and its second pass
    was refused as `duplicate_timestamp` with nothing but a count ("60 readings rejected")."""
    from click.testing import CliRunner

    from anomaly.cli import main

    frame = pd.read_csv(test_csv).drop(columns=["anomaly", "anomaly_kind"], errors="ignore")
    utc = pd.date_range("2023-10-28 16:00", periods=len(frame), freq="min", tz="UTC")
    frame["timestamp"] = utc.tz_convert("Europe/Berlin").tz_localize(None).strftime("%Y-%m-%d %H:%M:%S")
    path = tmp_path / "berlin.csv"
    frame.to_csv(path, index=False)
    out = tmp_path / "out"
    got = CliRunner().invoke(
        main, ["replay", str(path), "-m", str(bundle_path), "-o", str(out), "--no-plots"]
    )
    assert got.exit_code == 0, got.output
    assert got.stdout.splitlines()[0].endswith("60 readings rejected (60 duplicate_timestamp)")
    want = (
        "60 readings of series 'berlin' repeat earlier times within one hour (2023-10-29 02:00:00 to 2023-10-29 "
        "02:59:00) and were refused: local times without a UTC offset across a daylight-saving change? Write the "
        "times with their UTC offset (2023-10-29T02:00:00+HH:MM) or in UTC"
    )
    assert [line for line in got.stderr.splitlines() if line.startswith("warning:")] == [f"warning: {want}"]
    assert json.loads((out / "summary.json").read_text())["warnings"] == [want]
    # the same readings with their offsets: nothing refused, nothing said
    frame["timestamp"] = utc.tz_convert("Europe/Berlin").strftime("%Y-%m-%dT%H:%M:%S%z")
    frame.to_csv(path, index=False)
    got = CliRunner().invoke(
        main, ["replay", str(path), "-m", str(bundle_path), "-o", str(out), "--no-plots"]
    )
    assert got.stdout.splitlines()[0].endswith(" 0 readings rejected") and "warning:" not in got.stderr


def test_reports_are_drawn_for_at_most_max_reports_keys_those_with_alerts_first(
    bundle_path, tmp_path
) -> None:
    """A file of 5,000 devices drew 5,000 PNG reports, about a second each: over an hour after the scores were
    written, with no word. Now at most `replay.max_reports`, the keys with the most alerts first, and a warning
    says how many were drawn."""
    frame = generate_keys(SyntheticSpec(n_sensors=4, n_points=300, seed=4), 4)
    loud = frame["sensor_id"] == "unit-002"
    sensors = [c for c in frame.columns if c.startswith("sensor_") and c != "sensor_id"]
    frame.loc[loud & (frame["timestamp"] >= frame["timestamp"].iloc[600]), sensors] *= 3.0  # its alerts
    path = tmp_path / "keys.csv"
    frame.to_csv(path, index=False)
    cfg = build_config({"data": {"key_column": "sensor_id"}, "replay": {"max_reports": 1}})
    result = run_replay([str(path)], str(bundle_path), str(tmp_path / "r"), cfg, progress=False)
    raised = {k: sum(a["key"] == k for a in result.alerts) for k in result.frames}
    assert max(raised, key=raised.get) == "unit-002"
    assert [p.name for p in result.reports] == ["report-unit-002.png"]
    assert sorted(p.name for p in (tmp_path / "r").glob("*.png")) == ["report-unit-002.png"]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["warnings"][-1] == (
        "reports drawn for 1 of 4 series (replay.max_reports = 1), those with the most alerts first; every "
        "series is in scores.csv"
    )
    every = run_replay(
        [str(path)],
        str(bundle_path),
        str(tmp_path / "all"),
        build_config({"data": {"key_column": "sensor_id"}}),
        progress=False,
    )
    assert len(every.reports) == 4  # the default (100) draws them all


def test_the_baselines_of_a_labelled_replay_draw_a_progress_bar_too(
    bundle_path, test_csv, tmp_path, monkeypatch
) -> None:
    """With labels, replay runs the engine twice more, for the z-score and PCA baselines: on a 100k-reading
    file the bar reached 100 % and the command then sat for as long again without a word."""
    import tqdm

    bars: list[dict] = []

    class Recorder:
        def __init__(self, total, desc, **kwargs) -> None:
            self.seen = {"desc": desc, "total": total, "done": 0}
            bars.append(self.seen)

        def update(self, n) -> None:
            self.seen["done"] += n

        def close(self) -> None:
            pass

    monkeypatch.setattr(tqdm, "tqdm", Recorder)
    run_replay([str(test_csv)], str(bundle_path), str(tmp_path / "r"), build_config(), progress=True)
    n = len(pd.read_csv(test_csv))
    assert bars == [
        {"desc": "replay", "total": n, "done": n},
        {"desc": "baseline zscore", "total": n, "done": n},
        {"desc": "baseline pca", "total": n, "done": n},
    ]


def test_replay_reads_each_file_once(tmp_path, bundle_path, test_csv, monkeypatch) -> None:
    """Without --features, the check of the files' columns against the model's parsed every file in full, and
    loading parsed it again (about 3.5 s per 100 MB, and a second copy of the file held): one parse per file
    now, the check made on the frame that loading reads. Errors and results are those of before."""
    from anomaly.data import reading

    parsed: list[str] = []
    real = reading.pd.read_csv

    def counted(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        parsed.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(reading.pd, "read_csv", counted)
    second = tmp_path / "second.csv"
    second.write_bytes(test_csv.read_bytes())
    cfg = build_config(overrides={"replay.plots": False})
    run_replay([str(test_csv), str(second)], str(bundle_path), str(tmp_path / "r"), cfg, progress=False)
    assert parsed == [str(test_csv), str(second)]
    bad = tmp_path / "bad.csv"
    bad.write_text(test_csv.read_text().replace("sensor_2", "Sensor_2", 1))
    parsed.clear()
    with pytest.raises(SchemaError, match="the model's 'sensor_2' is 'Sensor_2' in the file"):
        run_replay([str(test_csv), str(bad)], str(bundle_path), str(tmp_path / "r2"), cfg, progress=False)
    assert parsed == [str(test_csv), str(bad)]


def _series_with_shared_times(keys: int, n: int, seed: int) -> list:  # type: ignore[type-arg]
    from anomaly.data import Series

    rng = np.random.default_rng(seed)
    out = []
    for k in range(keys):
        ts = np.sort(rng.integers(0, n // 2, n)).astype(np.float64)  # times shared across keys and repeated
        out.append(Series(f"k{k}", ts, rng.normal(size=(n, 2)), None, "mem"))
    return out


def test_merged_batches_are_what_a_scan_per_key_gives() -> None:
    """The batches of a replay (cut every batch_readings, one event per key) are those of the per-key scan
    they were made by before: same keys in the same order, same readings in the same order."""
    from anomaly.replay import merged_batches

    series = _series_with_shared_times(37, 50, seed=3)
    ts = np.concatenate([s.timestamps for s in series])
    which = np.concatenate([np.full(len(s), i) for i, s in enumerate(series)])
    index = np.concatenate([np.arange(len(s)) for s in series])
    order = np.lexsort((index, which, ts))
    got = list(merged_batches(series, 97))
    assert len(got) == -(-len(order) // 97)
    for lo, batch in zip(range(0, len(order), 97), got, strict=True):
        chunk = order[lo : lo + 97]
        w = which[chunk]
        expected = [(series[i].key, index[chunk[w == i]]) for i in np.unique(w)]
        assert [(e.key, e.ref.positions.tolist()) for e in batch.events] == [
            (k, rows.tolist()) for k, rows in expected
        ]
        for e in batch.events:
            s = e.ref.series
            assert np.array_equal(e.timestamps, s.timestamps[e.ref.positions])
            assert np.array_equal(e.values, s.values[e.ref.positions])
        assert batch.messages == len(chunk)


class _Counted(np.ndarray):
    """An array that counts the elements every elementwise operation on it goes through."""

    work = 0

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):  # type: ignore[no-untyped-def]
        _Counted.work += max(np.size(x) for x in inputs)
        plain = [x.view(np.ndarray) if isinstance(x, _Counted) else x for x in inputs]
        return getattr(ufunc, method)(*plain, **kwargs)


def test_a_batch_is_grouped_by_key_in_work_linear_in_its_readings() -> None:
    """A batch of 5,000 keys was grouped by comparing each of its readings with every key (`w == i` per key):
    25 million comparisons for 5,000 readings, seconds per batch. One stable sort now: elementwise work of a
    few passes over the batch, whatever the number of keys."""
    from anomaly.replay import positions_by_key

    rng = np.random.default_rng(0)
    w = rng.permutation(np.repeat(np.arange(5000), 2)).view(_Counted)
    _Counted.work = 0
    got = list(positions_by_key(w))
    assert _Counted.work <= 3 * len(w)
    plain = w.view(np.ndarray)
    assert [k for k, _ in got] == list(range(5000))
    assert all(at.tolist() == np.flatnonzero(plain == k).tolist() for k, at in got)


def test_scores_csv_is_written_without_a_copy_of_every_result(tmp_path, bundle_path, monkeypatch) -> None:
    """scores.csv was written from the concatenation of every series' per-point table: a second copy of every
    result at once (hundreds of MB for millions of readings). Without Parquet (which is written from that
    concatenation), tables of the same columns are written one after the other, the same bytes."""
    path = tmp_path / "keys.csv"
    generate_keys(SyntheticSpec(n_sensors=4, n_points=300, anomalies=2, seed=4), 3).to_csv(path, index=False)
    overrides = {"data.key_column": "sensor_id", "replay.plots": False, "replay.parquet": False}
    cfg = build_config(overrides=overrides)
    joined: list[int] = []
    real = pd.concat

    def counted(objs, *args, **kwargs):  # type: ignore[no-untyped-def]
        objs = list(objs)
        joined.append(sum(len(o) for o in objs))
        return real(objs, *args, **kwargs)

    monkeypatch.setattr(pd, "concat", counted)
    result = run_replay([str(path)], str(bundle_path), str(tmp_path / "r"), cfg, progress=False)
    assert 900 not in joined  # no table of all 3 x 300 results
    monkeypatch.setattr(pd, "concat", real)
    whole = pd.concat(result.frames.values(), ignore_index=True)
    assert (tmp_path / "r" / "scores.csv").read_text() == whole.to_csv(index=False)


def test_a_replay_whose_keys_outgrow_the_memory_for_their_state_is_one_error_line(
    bundle_path, tmp_path, monkeypatch
):
    """`engine.dynamic_history` that fits the store's first 64 keys, then a file of more keys: the growth to 128
    did not fit in memory and the replay ended with numpy's allocation traceback (status 1). Now one line
    naming the settings and what the growth asked for, status 2, and no outputs (the folder is made first)."""
    from click.testing import CliRunner

    from anomaly.bundle import load_bundle
    from anomaly.cli import main
    from anomaly.engine import state
    from tests.helpers import NoRoomFor

    bundle = load_bundle(bundle_path)
    values = ",".join(["1.0"] * len(bundle.features))
    path = tmp_path / "many.csv"
    rows = [f"2024-01-01T00:00:0{t}Z,unit-{k:03d},{values}\n" for t in range(2) for k in range(70)]
    path.write_text(f"timestamp,sensor_id,{','.join(bundle.features)}\n" + "".join(rows))
    config = build_config({"engine": {"dynamic_history": 100_000}}).engine
    per_key = Engine(bundle, config).store.bytes_per_key()
    monkeypatch.setattr(state, "np", NoRoomFor(128))
    out = tmp_path / "out"
    got = CliRunner().invoke(
        main,
        [
            "replay",
            str(path),
            "-m",
            str(bundle_path),
            "-o",
            str(out),
            "--key-column",
            "sensor_id",
            "--no-plots",
        ],
        env={"ANOMALY_ENGINE_DYNAMIC_HISTORY": "100000"},
    )
    assert got.exit_code == 2, got.output
    assert got.stderr.splitlines()[-1] == (
        "error: the engine's per-key state does not fit in memory: growing it from 64 to 128 keys asked for "
        f"{state.size_text(128 * per_key)} ({state.size_text(per_key)} a key): engine.threshold dynamic keeps "
        "engine.dynamic_history = 100000 scores a key, and engine.max_keys = 100000 keys are held at most; lower "
        "them or give the process more memory"
    )
    assert list(out.iterdir()) == []  # no scores, alerts or summary


def test_alerts_jsonl_is_in_decision_time_order_whatever_the_batch_size(bundle_path, tmp_path) -> None:
    """The engine emits a call's alerts key by key, so alerts.jsonl listed them grouped by key within each batch
    of `replay.batch_readings`: 1 and 7 readings per batch gave the same records in another order. The file is
    in decision-time order (`at`, then key; a key's open before its close), the same bytes for any batch. Three
    keys with the same readings, each one reading ahead of the one before, alert one reading apart: a batch of 7
    readings (two and a third timestamps) puts a key's later reading beside another's earlier one."""
    one = generate(SyntheticSpec(n_sensors=4, n_points=400, anomalies=3, seed=11))
    n = len(one) - 2
    keys = [
        one.iloc[k : k + n].assign(timestamp=one["timestamp"].to_numpy()[:n], sensor_id=key)
        for k, key in enumerate("abc")
    ]
    frame = pd.concat(keys).sort_values("timestamp", kind="stable")
    path = tmp_path / "keys.csv"
    frame.to_csv(path, index=False)
    texts = {}
    for batch in (1, 7, 4096):
        cfg = build_config(
            {
                "data": {"key_column": "sensor_id"},
                "engine": {"threshold": "static"},
                "replay": {"batch_readings": batch, "plots": False},
            }
        )
        result = run_replay([str(path)], str(bundle_path), str(tmp_path / str(batch)), cfg, progress=False)
        texts[batch] = (tmp_path / str(batch) / "alerts.jsonl").read_text()
        assert [json.dumps(a) for a in result.alerts] == texts[batch].splitlines()
    records = [json.loads(line) for line in texts[1].splitlines()]
    assert texts[1] == texts[7] == texts[4096]
    assert [(r["at"], r["key"]) for r in records] == sorted((r["at"], r["key"]) for r in records)
    for key in "abc":  # each key's records: open, closed, open, ...
        statuses = [r["status"] for r in records if r["key"] == key]
        assert statuses == ["open", "closed"] * (len(statuses) // 2) + ["open"] * (len(statuses) % 2)
        assert len(statuses) >= 2


def test_a_file_of_many_other_columns_is_refused_in_a_line_of_readable_length(bundle_path, tmp_path) -> None:
    """A 200-column file against a 4-feature model: the error listed all 200 names, a line of 1,400 characters
    whose end (the hint) no terminal showed together with its start."""
    frame = generate(SyntheticSpec(n_sensors=4, n_points=100))
    wide = pd.concat(
        [frame[["timestamp"]], pd.DataFrame(1.0, frame.index, [f"f{i:03d}" for i in range(200)])], axis=1
    )
    path = tmp_path / "wide.csv"
    wide.to_csv(path, index=False)
    with pytest.raises(SchemaError) as info:
        run_replay([str(path)], str(bundle_path), str(tmp_path / "r"), build_config(), progress=False)
    assert str(info.value) == (
        f"{path} does not match the model's features: missing sensor_1, sensor_2, sensor_3, sensor_4; unexpected "
        + ", ".join(f"f{i:03d}" for i in range(10))
        + " and 190 more"
    )


class EmittedAlerts:
    """An observer: every alert record in the order the engine emitted them."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def observe(self, out, batch, engine, now) -> None:
        self.records += [alert.to_json() for alert in out.alerts]


@pytest.mark.parametrize("batch", [3, 4096])
def test_alerts_jsonl_keeps_each_keys_records_in_emission_order(bundle, tmp_path, batch: int) -> None:
    """alerts.jsonl is sorted by (`at`, key) at close, which keeps a key's records in the order the engine emitted
    them only while a key's `at` never goes back. It does not, on every path that emits a record: open, a normal
    close, a level_shift close (engine.max_alert_seconds), an eviction close (TTL: key b is silent for 450 minutes
    with an alert open while a and c read; its close is when its TTL passed, and it opens again later), a
    gap reset (c) and the end-of-replay flush, a reading of each key per call (as a daemon reads) and in one
    call. Each key's records in the file are the ones emitted, in that order, and their `at` never decreases."""
    one = generate(SyntheticSpec(n_sensors=4, n_points=1200, anomalies=4, seed=2))
    minute = np.arange(len(one))  # one reading a minute
    parts = [
        one.assign(sensor_id="a"),
        one[(minute < 250) | (minute >= 700)].assign(sensor_id="b"),  # silent from within its first alert
        one[(minute < 500) | (minute >= 560)].assign(sensor_id="c"),  # a 60-minute gap
    ]
    path = tmp_path / "keys.csv"
    pd.concat(parts).to_csv(path, index=False)
    series, _ = load_series([path], build_config({"data": {"key_column": "sensor_id"}}).data, bundle.features)
    reasons: set[str] = set()
    for engine in (
        {"ttl_seconds": 3 * 3600, "max_gap_seconds": 1800},
        {"ttl_seconds": 3 * 3600, "max_gap_seconds": 1800, "max_alert_seconds": 600},
    ):
        cfg = build_config(
            {"engine": {"threshold": "static", **engine}, "replay": {"batch_readings": batch, "plots": False}}
        )
        emitted = EmittedAlerts()
        out = tmp_path / f"{batch}-{len(engine)}"
        result = replay(bundle, series, cfg, out, observer=emitted)
        written = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
        assert sorted(map(json.dumps, written)) == sorted(map(json.dumps, emitted.records))
        for key in "abc":
            mine = [r for r in emitted.records if r["key"] == key]
            assert [r for r in written if r["key"] == key] == mine
            assert [r["at"] for r in mine] == sorted(r["at"] for r in mine)
        reasons |= {r["reason"] for r in written}
        counters = result.summary["engine_counters"]
        assert counters["gap_resets"] >= 1
        assert counters["evicted"] == (1 if batch == 3 else 0)  # one call: b's silence is a gap (README)
    assert reasons == {"", "normal", "level_shift"} | ({"evicted"} if batch == 3 else set())


def test_an_expired_keys_alert_closes_when_its_ttl_passed_whatever_the_batch_size(bundle, tmp_path) -> None:
    """Keys a and b read a minute apart; b stops within an alert at minute 2000 for 5 hours (longer than
    engine.ttl_seconds, 3 h, and engine.max_gap_seconds, 4 h), then reads again. Its alert closes (reason evicted)
    at the moment its TTL passed (its last reading + 3 h) with batches of 4096 readings and of 1 alike, before its
    next reading, and the silence up to then is no gap (3 h). Before, `at` was the event time the call reached:
    with 4096, the end of a's message in the batch where b reads again (minute 2400, 100 minutes after b's next
    reading, with 400 minutes of silence counted as a gap), with 1, the reading after the TTL passed; and
    alerts.jsonl differed between the two."""
    one = generate(SyntheticSpec(n_sensors=4, n_points=2401, seed=3))
    minute = np.arange(len(one))
    b = one[(minute <= 2000) | (minute >= 2300)].assign(sensor_id="b")
    b.loc[b.index[(b.index >= 1990) & (b.index <= 2000)], "sensor_1"] += 50 * bundle.scaler.scale[0]
    path = tmp_path / "keys.csv"
    pd.concat([one.assign(sensor_id="a"), b]).sort_values("timestamp", kind="stable").to_csv(
        path, index=False
    )
    series, _ = load_series([path], build_config({"data": {"key_column": "sensor_id"}}).data, bundle.features)
    last, back = (float(to_epoch_seconds(one["timestamp"])[i]) for i in (2000, 2300))
    texts = {}
    for batch in (1, 4096):
        cfg = build_config(
            {
                "engine": {"threshold": "static", "ttl_seconds": 3 * 3600, "max_gap_seconds": 4 * 3600},
                "replay": {"batch_readings": batch, "plots": False},
            }
        )
        replay(bundle, series, cfg, tmp_path / str(batch))
        texts[batch] = (tmp_path / str(batch) / "alerts.jsonl").read_text()
    records = [json.loads(line) for line in texts[1].splitlines()]
    closes = [(r["key"], r["at"], r["gap_seconds"]) for r in records if r["reason"] == "evicted"]
    assert closes == [("b", last + 3 * 3600, 0.0)] and last + 3 * 3600 < back
    assert texts[4096] == texts[1]

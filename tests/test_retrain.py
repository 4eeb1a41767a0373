"""Retraining and promotion: time ranges, alert-span exclusion, the training set, policy and atomic promotion."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import numpy as np
import pytest
from click.testing import CliRunner

from anomaly.bundle import load_bundle, read_metadata, save_bundle
from anomaly.cli import main
from anomaly.config import DataConfig, EngineConfig, build_config
from anomaly.data import Series, load_series
from anomaly.engine.alerts import alert_id
from anomaly.errors import ConfigError, DataError
from anomaly.promotion import PromotionPolicy, ShadowResult, compare, promote
from anomaly.retrain import TimeRange, alert_spans, champion_sections, training_set
from anomaly.synthetic import SyntheticSpec, generate


def series(key: str, n: int, start: float = 0.0) -> Series:
    rng = np.random.default_rng(len(key))
    return Series(key, start + np.arange(n, dtype=np.float64), rng.normal(size=(n, 2)).astype(np.float32))


def test_time_range_from_since_or_from_to() -> None:
    assert TimeRange.parse("2h", None, None, now=10_000.0) == TimeRange(2_800.0, 10_000.0)
    assert TimeRange.parse(None, "2024-01-01T00:00:00", "2024-01-02", now=0) == TimeRange(
        1704067200.0, 1704153600.0
    )
    assert TimeRange(0, 100).split(0.25) == (TimeRange(0, 75), TimeRange(75, 100))
    with pytest.raises(ConfigError, match="give --since or --from, not both"):
        TimeRange.parse("1d", "0", None)
    with pytest.raises(ConfigError, match="cannot read duration '7 days'"):
        TimeRange.parse("7 days", None, None)
    with pytest.raises(ConfigError, match="empty time range"):
        TimeRange.parse(None, "100", "50")


def test_promote_or_retrain_without_data_files_or_range_names_both(bundle_path, tmp_path) -> None:
    """Without files the topic is read, and the error named only a time range: a user who forgot the CSV files
    was told to give --since."""
    champion = copy_of(bundle_path, tmp_path)
    for args in (("promote", bundle_path, "-m", champion), ("retrain", "-m", champion)):
        result = run_cli(*args)
        assert (result.exit_code, result.output) == (
            2,
            "error: give a time range of the input topic: --since 7d, or --from TIME [--to TIME] (or CSV files "
            "to read instead of the topic)\n",
        )


def test_alert_spans_from_lifecycle_events_deduplicated_by_id() -> None:
    events = [
        {"id": "a@1000", "key": "a", "status": "open", "start": 1.0, "end": None},
        {"id": "a@1000", "key": "a", "status": "closed", "start": 1.0, "end": 5.0},
        {"id": "a@1000", "key": "a", "status": "open", "start": 1.0, "end": None},  # re-delivered
        {"id": "a@9000", "key": "a", "status": "open", "start": 9.0, "end": None},  # still open
        {"id": "b@2000", "key": "b", "status": "closed", "start": 2.0, "end": 3.0},
        {"not": "an alert"},
    ]
    assert alert_spans(events) == {"a": [(1.0, 5.0), (9.0, np.inf)], "b": [(2.0, 3.0)]}


def test_two_alerts_of_one_key_within_a_millisecond_keep_both_spans() -> None:
    """Sampled every 10 us, an alert closed after 30 normal readings and the next one start 0.4 ms apart: one
    id (``key@start-ms``). Before, deduplicated by id, the first span was lost and its anomalous readings went
    into the challenger's training data."""
    first, second = 1_700_000_000.0001, 1_700_000_000.0005
    assert alert_id("a", first) == alert_id("a", second)
    events = [
        {"id": alert_id("a", first), "key": "a", "status": "open", "start": first, "end": None},
        {"id": alert_id("a", first), "key": "a", "status": "closed", "start": first, "end": first + 1e-5},
        {"id": alert_id("a", second), "key": "a", "status": "open", "start": second, "end": None},
    ]
    assert alert_spans(events) == {"a": [(first, first + 1e-5), (second, np.inf)]}


def test_training_set_leaves_out_alert_spans_and_cuts_the_series_there() -> None:
    s = series("a", 100)
    data = training_set([s, series("b", 50)], {"a": [(20.0, 29.0), (95.0, np.inf)]}, window=8, min_windows=5)
    assert data.excluded_alert_readings == 10 + 5
    assert [(p.key, p.timestamps[0], len(p)) for p in data.series] == [
        ("a", 0.0, 20),
        ("a", 30.0, 65),
        ("b", 0.0, 50),
    ]
    assert np.array_equal(data.series[1].values, s.values[30:95])
    assert data.readings == 135 and data.keys == ["a", "b"]
    short = training_set([s], {"a": [(4.0, 10.0)]}, window=8, margin_s=1.0, min_windows=5)
    assert (short.excluded_alert_readings, short.excluded_short_readings) == (
        9,
        3,
    )  # 3..11 out; 0..2 too short


def test_too_little_normal_data_is_one_clear_error() -> None:
    with pytest.raises(DataError) as info:
        training_set([series("a", 100)], {"a": [(50.0, np.inf)]}, window=8, min_windows=10)
    assert str(info.value) == (
        "too little normal data to retrain: 50 usable readings from 1 of 1 keys (100 read, 50 inside alert "
        "spans, 0 in pieces shorter than a window); need at least 80 (10 windows of 8); widen the time range or "
        "select more keys"
    )
    # a key left with nothing usable (all of it inside an alert) is not counted among those giving readings
    with pytest.raises(DataError, match=r": 50 usable readings from 1 of 2 keys \(150 read, 100 inside"):
        training_set(
            [series("a", 100), series("b", 50)],
            {"a": [(50.0, np.inf)], "b": [(0.0, np.inf)]},
            window=8,
            min_windows=10,
        )


def test_champion_sections_are_the_recorded_settings(bundle) -> None:
    sections = champion_sections(bundle.meta)
    assert sections["model"] == {
        "window": 8,
        "hidden_size": 16,
        "num_layers": 2,
        "dropout": 0.1,
        "forecast": True,
        "targets": [],  # every feature scored; a challenger keeps the champion's targets
    }
    assert sections["train"]["epochs"] == 4 and sections["train"]["batch_size"] == 16


def test_a_champion_trained_on_cuda_retrains_on_the_cpu_with_device(csv_world, bundle, tmp_path, monkeypatch):
    """The champion's recorded train.device was reused with no way to change it: one trained with --device cuda
    could not be retrained on a CPU-only host ('train.device is cuda but no CUDA device is available', after
    reading all the data; neither an option nor ANOMALY_TRAIN_DEVICE changed it)."""
    import torch

    from anomaly.bundle import save_bundle

    path, alerts = csv_world
    bundle.meta["training"]["config"]["train"]["device"] = "cuda"
    champion = save_bundle(bundle, tmp_path / "gpu-trained.pt")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "challenger.pt"
    args = ["retrain", "-m", champion, path, "--alerts", alerts, "-o", out, "--epochs", 1]
    result = run_cli(*args)
    assert (result.exit_code, result.stdout, result.stderr) == (
        2,
        "",  # refused before reading or training
        "error: the champion was trained with train.device cuda, but this machine has no CUDA device: give "
        "--device cpu (or auto)\n",
    )
    result = run_cli(*args, "--device", "cpu")
    assert result.exit_code == 0, result.output
    training = read_metadata(out)[0]["training"]
    assert (training["device"], training["config"]["train"]["device"]) == ("cpu", "cpu")


def result(version: str, rate: float, psi: float | None, f1: float | None = None) -> ShadowResult:
    metrics = None if f1 is None else {"f1": f1, "far": 0.0, "mar": 0.0}
    return ShadowResult(version, 1000, 100, int(rate), rate, 0.0, 0.5, 1.0, psi, metrics)


def test_policy_decisions_with_reasons() -> None:
    policy = PromotionPolicy(f1_tolerance=0.01)
    ok, reasons = policy.decide(result("a", 2.0, 0.4, 0.80), result("b", 1.0, 0.05, 0.795))
    assert ok and reasons == [
        "F1 0.7950 vs champion 0.8000 (prediction = alert; ok; tolerance 0.01)",
        "alerts opened 1 vs champion 2 (1.000 vs 2.000 per 1,000 readings; ok; limit 3 = 1 x the champion's + 1)",
        "drift PSI 0.050 vs champion 0.400 (ok; limit 0.25)",
    ]
    assert policy.decide(result("a", 2.0, 0.4, 0.80), result("b", 1.0, 0.05, 0.78))[0] is False  # worse F1
    assert policy.decide(result("a", 1.0, 0.4), result("b", 3.0, 0.05))[0] is False  # more alerts
    assert policy.decide(result("a", 1.0, 0.4), result("b", 1.0, 0.3))[0] is False  # does not fit recent data


def test_a_quiet_champion_does_not_reject_a_challenger_for_one_alert() -> None:
    """The limit was the champion's alerts times the ratio, with no allowance and no option: a champion that
    opened none on a quiet stream rejected every challenger that alerted once. One alert more is allowed by
    default (--alert-allowance); two are not, and on a busy stream the ratio decides."""
    quiet, one, two = result("a", 0.0, 0.1), result("b", 1.0, 0.1), result("b", 2.0, 0.1)
    ok, reasons = PromotionPolicy().decide(quiet, one)
    assert (ok, reasons[0]) == (
        True,
        "alerts opened 1 vs champion 0 (1.000 vs 0.000 per 1,000 readings; ok; limit 1 = 1 x the champion's + 1)",
    )
    assert PromotionPolicy().decide(quiet, two)[0] is False
    assert PromotionPolicy(alert_allowance=0).decide(quiet, one)[0] is False
    assert PromotionPolicy(alert_allowance=2).decide(quiet, two)[0] is True
    busy = result("a", 40.0, 0.1)
    assert PromotionPolicy().decide(busy, result("b", 41.0, 0.1))[0] is True
    assert PromotionPolicy().decide(busy, result("b", 42.0, 0.1))[0] is False
    assert PromotionPolicy(max_alert_rate_ratio=1.5).decide(busy, result("b", 61.0, 0.1))[0] is True
    with pytest.raises(ValueError, match="alert_allowance"):
        PromotionPolicy(alert_allowance=-1)


def test_promote_alert_allowance_option_decides_a_quiet_champion(csv_world, bundle_path, tmp_path):
    """The option reaches the policy: the same comparison passes or is rejected by --alert-allowance alone."""
    from unittest import mock

    from anomaly import promotion

    path, _ = csv_world
    champion = copy_of(bundle_path, tmp_path)
    real = promotion.shadow_score
    calls = iter(range(10))

    def quiet_champion(bundle, series, cfg, predict):  # type: ignore[no-untyped-def]
        got = real(bundle, series, cfg, predict)
        opened = 0 if next(calls) % 2 == 0 else 1  # champion first, then challenger
        got.alerts_opened, got.alert_rate = opened, 1000.0 * opened / got.readings
        got.false_alerts = None  # as on a slice without labels, where every alert counts
        return got

    with mock.patch.object(promotion, "shadow_score", quiet_champion):
        allowed = run_cli("promote", bundle_path, "-m", champion, path, "--max-drift", "100", "--dry-run")
        refused = run_cli(
            "promote",
            bundle_path,
            "-m",
            champion,
            path,
            "--max-drift",
            "100",
            "--dry-run",
            "--alert-allowance",
            "0",
        )
    assert (allowed.exit_code, refused.exit_code) == (0, 3), allowed.output + refused.output
    assert (
        "alerts opened 1 vs champion 0 (" in allowed.stdout
        and "ok; limit 1 = 1 x the champion's + 1)" in (allowed.stdout)
    )
    assert "more; limit 0 = 1 x the champion's + 0)" in refused.stdout


def test_promotion_replaces_the_file_atomically_and_records_the_decision(
    bundle, bundle_path, test_series, tmp_path
):
    champion_path = tmp_path / "model.pt"
    champion_path.write_bytes(bundle_path.read_bytes())
    challenger = load_bundle(bundle_path)
    challenger.meta["model_version"] = "challenger-1"
    challenger.meta["lineage"] = {"parent_version": bundle.version, "promotion": None}
    cmp = compare(bundle, challenger, [test_series], EngineConfig(), PromotionPolicy())
    assert cmp.champion.readings == cmp.challenger.readings == len(test_series)
    assert cmp.champion.alert_rate == cmp.challenger.alert_rate  # same weights: same numbers
    assert cmp.champion.metrics == cmp.challenger.metrics and cmp.champion.metrics is not None
    assert cmp.promote
    promote(challenger, champion_path, cmp)
    meta, _ = read_metadata(champion_path)
    assert meta["model_version"] == "challenger-1"
    assert meta["lineage"]["parent_version"] == bundle.version
    decision = meta["lineage"]["promotion"]
    assert (decision["decision"], decision["policy_passed"], decision["forced"]) == ("promoted", True, False)
    assert (
        decision["champion"]["version"] == bundle.version
        and decision["challenger"]["version"] == "challenger-1"
    )
    assert read_metadata(tmp_path / "model.pt.previous")[0]["model_version"] == bundle.version
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.pt",
        "model.pt.previous",
    ]  # no temp file left


@pytest.fixture
def csv_world(tmp_path, bundle_path):
    """A labelled recent CSV and a replay's alerts for it."""
    frame = generate(SyntheticSpec(n_sensors=4, n_points=1500, anomalies=3, seed=8))
    path = tmp_path / "recent.csv"
    frame.to_csv(path, index=False)
    runner = CliRunner()
    out = runner.invoke(main, ["replay", str(path), "-m", str(bundle_path), "-o", str(tmp_path / "rep")])
    assert out.exit_code == 0, out.output
    return path, tmp_path / "rep" / "alerts.jsonl"


def test_retrain_from_csv_with_champion_settings_records_lineage(csv_world, bundle, bundle_path, tmp_path):
    path, alerts = csv_world
    spans = alert_spans(json.loads(line) for line in alerts.read_text().splitlines())
    assert spans  # the replay alerted, so something is left out
    out = tmp_path / "challenger.pt"
    result = CliRunner().invoke(
        main,
        [
            "retrain",
            "-m",
            str(bundle_path),
            str(path),
            "--alerts",
            str(alerts),
            "-o",
            str(out),
            "--epochs",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    challenger = load_bundle(out)
    assert challenger.arch == bundle.arch and challenger.features == bundle.features
    lineage = challenger.meta["lineage"]
    (recent,), _ = load_series([path], DataConfig(), bundle.features)
    inside = np.zeros(len(recent), bool)
    for lo, hi in spans["recent"]:
        inside |= (recent.timestamps >= lo) & (recent.timestamps <= hi)
    assert lineage["parent_version"] == bundle.version
    assert lineage["data"]["source"] == "csv" and lineage["data"]["key_names"] == ["recent"]
    assert lineage["data"]["excluded_alert_readings"] == int(inside.sum())
    assert lineage["data"]["readings"] + lineage["data"]["excluded_short_readings"] == 1500 - int(
        inside.sum()
    )
    assert lineage["training"]["epochs_run"] == challenger.meta["training"]["epochs_run"] == 2
    assert lineage["promotion"] is None
    assert f"parent {bundle.version} -> {out}" in result.stdout


def test_promote_command_rejects_and_leaves_the_champion_alone(csv_world, bundle_path, tmp_path):
    path, _ = csv_world
    champion = tmp_path / "model.pt"
    champion.write_bytes(bundle_path.read_bytes())
    before = champion.read_bytes()
    result = CliRunner().invoke(
        main, ["promote", str(bundle_path), "-m", str(champion), str(path), "--max-drift", "0"]
    )
    assert result.exit_code == 3, result.output  # not promoted: it exited 0 as a promotion does
    assert "decision: rejected; " in result.stdout and "(too high; limit 0)" in result.stdout
    assert champion.read_bytes() == before and not (tmp_path / "model.pt.previous").exists()
    dry = CliRunner().invoke(
        main, ["promote", str(bundle_path), "-m", str(champion), str(path), "--max-drift", "0", "--dry-run"]
    )
    assert dry.exit_code == 3 and "decision: rejected; " in dry.stdout
    forced = CliRunner().invoke(
        main, ["promote", str(bundle_path), "-m", str(champion), str(path), "--max-drift", "0", "--force"]
    )
    assert forced.exit_code == 0 and "decision: promoted (forced)" in forced.stdout
    decision = read_metadata(champion)[0]["lineage"]["promotion"]
    assert (decision["decision"], decision["forced"], decision["policy_passed"]) == ("promoted", True, False)
    shown = CliRunner().invoke(main, ["inspect", str(champion)]).stdout
    assert (  # it said `promoted at`
        f"promotion:       promoted (forced) at {decision['at']}; champion {decision['champion']['version']}\n"
        in shown
    )
    as_json = json.loads(CliRunner().invoke(main, ["inspect", str(champion), "--json"]).stdout)
    assert as_json["lineage"]["promotion"]["forced"] is True
    champion.write_bytes(bundle_path.read_bytes())
    passed = CliRunner().invoke(main, ["promote", str(bundle_path), "-m", str(champion), str(path)])
    assert passed.exit_code == 0, passed.output
    decision = read_metadata(champion)[0]["lineage"]["promotion"]
    shown = CliRunner().invoke(main, ["inspect", str(champion)]).stdout
    assert (
        f"promotion:       promoted at {decision['at']}; champion {decision['champion']['version']}\n"
        in shown
    )


def test_retrain_promote_that_is_rejected_writes_the_challenger_and_exits_3(csv_world, bundle_path, tmp_path):
    """A rejected `retrain --promote` exited 0, as a promotion does: a script could not tell them apart."""
    path, _ = csv_world
    champion = copy_of(bundle_path, tmp_path)
    before = champion.read_bytes()
    out = tmp_path / "challenger.pt"
    result = run_cli(
        "retrain", "-m", champion, path, "-o", out, "--epochs", "1", "--promote", "--max-drift", "0"
    )
    assert result.exit_code == 3, result.output
    assert "decision: rejected; " in result.stdout
    assert champion.read_bytes() == before and load_bundle(out).meta["lineage"]["parent_version"]


def test_retrain_with_too_little_data_is_a_one_line_error(bundle_path, tmp_path):
    path = tmp_path / "tiny.csv"
    generate(SyntheticSpec(n_sensors=4, n_points=100, seed=3)).to_csv(path, index=False)
    result = CliRunner().invoke(
        main, ["retrain", "-m", str(bundle_path), str(path), "-o", str(tmp_path / "c.pt")]
    )
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "error: too little normal data to retrain: 100 usable readings from 1 of 1 keys"
    )


def test_retrain_promote_holds_out_the_recent_part_and_records_the_decision(csv_world, bundle_path, tmp_path):
    path, alerts = csv_world
    champion = tmp_path / "model.pt"
    champion.write_bytes(bundle_path.read_bytes())
    out = tmp_path / "challenger.pt"
    args = [
        "retrain",
        "-m",
        str(champion),
        str(path),
        "--alerts",
        str(alerts),
        "-o",
        str(out),
        "--epochs",
        "2",
    ]
    result = CliRunner().invoke(main, [*args, "--promote", "--holdout", "0.25", "--max-drift", "100"])
    assert result.exit_code == 0, result.output
    assert "decision: promoted (policy passed)" in result.stdout  # no alerts either side; drift allowed
    challenger = read_metadata(out)[0]
    holdout = challenger["lineage"]["data"]["holdout"]
    assert holdout["share"] == 0.25
    (recent,), _ = load_series([path], DataConfig(), load_bundle(bundle_path).features)
    held = (
        recent.timestamps
        >= recent.timestamps[0] + (recent.timestamps[-1] + 1e-6 - recent.timestamps[0]) * 0.75
    )
    meta = read_metadata(champion)[0]
    decision = meta["lineage"]["promotion"]
    assert meta["model_version"] == challenger["model_version"]
    assert decision["champion"]["readings"] == decision["challenger"]["readings"] == int(held.sum()) == 375
    assert decision["slice"] == holdout


def test_promote_on_a_key_split_over_two_files_equals_one_file(bundle_path, tmp_path):
    """The same keys in two CSV files crashed promote (and replay) with an IndexError traceback."""
    from tests.helpers import split_by_time

    whole, early, late = split_by_time(tmp_path)
    champion = tmp_path / "model.pt"
    champion.write_bytes(bundle_path.read_bytes())
    common = ["promote", str(bundle_path), "-m", str(champion), "--key-column", "sensor_id", "--dry-run"]
    one = CliRunner().invoke(main, [*common, str(whole)])
    two = CliRunner().invoke(main, [*common, str(early), str(late)])
    assert one.exit_code == two.exit_code and one.exit_code in (0, 3), two.output
    assert two.stdout == one.stdout and "readings streamed             600 " in one.stdout


def test_retrain_with_an_alerts_file_that_is_not_jsonl_is_a_one_line_error(csv_world, bundle_path, tmp_path):
    """A damaged --alerts file ended retrain with a JSONDecodeError traceback."""
    path, alerts = csv_world
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text(alerts.read_text().splitlines()[0] + "\n\n{not json\n")
    result = CliRunner().invoke(
        main,
        [
            "retrain",
            "-m",
            str(bundle_path),
            str(path),
            "--alerts",
            str(damaged),
            "-o",
            str(tmp_path / "c.pt"),
        ],
    )
    assert result.exit_code == 2 and result.stderr == (
        f"error: {damaged} line 3 is not an alert record (a JSON object with key and start per line, as a "
        "replay's alerts.jsonl holds)\n"
    )


# --- an operator's misuse: every case one defined outcome (life11) ---------------------------------------------


def run_cli(*args: object):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, [str(a) for a in args])


def copy_of(bundle_path, tmp_path, name: str = "model.pt"):  # type: ignore[no-untyped-def]
    path = tmp_path / name
    path.write_bytes(bundle_path.read_bytes())
    return path


def test_times_that_are_no_date_are_one_clear_error_not_a_traceback() -> None:
    """Epoch milliseconds, nan, 1e20 or a --since beyond year 1 ended retrain/promote with a ValueError or
    OverflowError traceback from formatting the date."""
    with pytest.raises(ConfigError, match=r"milliseconds\? that is 1700000000 in seconds"):
        TimeRange.parse(None, "1700000000000", None)
    for text in ("nan", "inf", "1e20"):
        with pytest.raises(ConfigError, match=f"time '{text}' is not a date between the years 1 and 9999;"):
            TimeRange.parse(None, "0", text)
    with pytest.raises(ConfigError, match="time 'now - 99999999w' is not a date"):
        TimeRange.parse("99999999w", None, None)


def test_to_alone_cuts_csv_rows_and_is_recorded(csv_world, bundle_path, tmp_path):
    """`--to` without --since/--from was silently ignored for CSV files: the challenger learnt every row."""
    path, _ = csv_world
    assert TimeRange.parse_for_files(None, None, None) is None
    cut = 1_700_000_000 + 1000 * 60  # the first 1000 readings (one a minute)
    assert TimeRange.parse_for_files(None, None, str(cut)) == TimeRange(-np.inf, cut)
    out = tmp_path / "c.pt"
    result = run_cli("retrain", "-m", bundle_path, path, "-o", out, "--epochs", 1, "--to", cut)
    assert result.exit_code == 0, result.output
    assert ": 1 epoch (best 1, val loss " in result.stdout  # was '1 epochs'
    data = read_metadata(out)[0]["lineage"]["data"]
    assert data["readings"] + data["excluded_short_readings"] == 1000
    assert (data["from"], data["to"]) == (None, "2023-11-15T14:53:20+00:00")
    champion = copy_of(bundle_path, tmp_path)
    shown = run_cli("promote", bundle_path, "-m", champion, path, "--dry-run", "--to", cut)
    assert shown.exit_code == 0, shown.output
    assert "readings streamed             1,000 " in shown.stdout


def test_inspect_counts_one_key_of_a_retrain_in_the_singular(csv_world, bundle_path, tmp_path):
    """`anomaly inspect` of a challenger retrained from one series said `readings of 1 keys`."""
    path, _ = csv_world
    out = tmp_path / "c.pt"
    cut = 1_700_000_000 + 600 * 60
    assert run_cli("retrain", "-m", bundle_path, path, "-o", out, "--epochs", 1, "--to", cut).exit_code == 0
    readings = read_metadata(out)[0]["lineage"]["data"]["readings"]
    lineage = next(
        line for line in run_cli("inspect", out).stdout.splitlines() if line.startswith("lineage:")
    )
    assert lineage.endswith(f", {readings:,} readings of 1 key")


def test_a_range_without_rows_names_the_range(csv_world, bundle_path, tmp_path):
    """... and where the files' readings are: `retrain -m model.pt last-month.csv --since 7d` (a range counted
    back from now) said only that the files held no reading in it."""
    from anomaly.retrain import iso

    path, _ = csv_world
    (s,), _ = load_series([path], DataConfig(), load_bundle(bundle_path).features)
    expected = (
        "error: no readings from 2030-01-01T00:00:00+00:00 to 2030-01-02T00:00:00+00:00 in the files: their "
        f"readings run from {iso(s.timestamps[0])} to {iso(s.timestamps[-1])} (the range is in the readings' own "
        "time, and ends now unless --to ends it)\n"
    )
    result = run_cli("retrain", "-m", bundle_path, path, "--from", "2030-01-01", "--to", "2030-01-02")
    assert (result.exit_code, result.stderr) == (2, expected)
    # promote said only 'the evaluation slice is empty', not which range or keys left nothing
    champion = copy_of(bundle_path, tmp_path)
    result = run_cli(
        "promote", bundle_path, "-m", champion, path, "--from", "2030-01-01", "--to", "2030-01-02"
    )
    assert (result.exit_code, result.stderr) == (2, expected)
    result = run_cli("promote", bundle_path, "-m", champion, path, "--keys", "pump-7")
    assert (result.exit_code, result.stderr) == (2, "error: no readings for keys pump-7 in the files\n")


def test_an_alerts_file_of_other_records_is_refused_and_foreign_alerts_are_warned_of(
    csv_world, bundle_path, tmp_path
):
    """JSON objects that are not alerts (a summary, scores) were skipped: nothing left out, no word said."""
    path, alerts = csv_world
    other = tmp_path / "other.jsonl"
    other.write_text('{"readings": 10, "windows": 3}\n')
    result = run_cli("retrain", "-m", bundle_path, path, "--alerts", other, "-o", tmp_path / "c.pt")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {other} line 1 is not an alert record (a JSON object with key")
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text(alerts.read_text().replace('"key": "recent"', '"key": "pump-7"'))
    result = run_cli(
        "retrain", "-m", bundle_path, path, "--alerts", foreign, "-o", tmp_path / "c.pt", "--epochs", 1
    )
    assert result.exit_code == 0, result.output
    assert (  # said 'none of the 1 alerts in ... falls'
        f"warning: the alert in {foreign} does not fall on the selected data (keys pump-7); nothing is left out "
        "for alerts\n"
    ) in result.stderr
    assert "(0 left out in alert spans)" in result.stdout


def test_alerts_of_the_held_out_part_are_not_called_foreign(csv_world, bundle_path, tmp_path):
    """With --promote, the alerts file was checked against the training part only: alerts in the held-out recent
    part (where they are most likely) gave `warning: none of the N alerts ... falls on the selected data`, the
    warning meant for another stream's replay."""
    path, _ = csv_world
    (recent,), _ = load_series([path], DataConfig(), load_bundle(bundle_path).features)
    last = float(recent.timestamps[-1])
    alerts = tmp_path / "late.jsonl"
    alert = {"id": "recent@late", "key": "recent", "status": "closed", "start": last - 600, "end": last - 300}
    alerts.write_text(json.dumps(alert) + "\n")
    common = ["retrain", "-m", copy_of(bundle_path, tmp_path), path, "--alerts", alerts, "--epochs", 1]
    whole = run_cli(*common, "-o", tmp_path / "a.pt")
    assert whole.exit_code == 0, whole.output
    assert whole.stderr == "" and "(6 left out in alert spans)" in whole.stdout
    held_out = run_cli(*common, "-o", tmp_path / "b.pt", "--promote", "--holdout", "0.25", "--max-drift", 100)
    assert held_out.exit_code in (0, 3), held_out.output
    assert held_out.stderr == "" and "(0 left out in alert spans)" in held_out.stdout


def test_a_row_without_a_time_is_left_out_as_the_topic_read_leaves_it_out(csv_world, bundle_path, tmp_path):
    """One empty time cell: retrain trained, then crashed on the lineage's last reading (ValueError: Invalid value
    NaN) and wrote nothing; with --promote, the NaN end of the range left '0 usable readings from 0 of 0 keys'."""
    path, _ = csv_world
    lines = path.read_text().splitlines()
    lines[-1] = "," + lines[-1].split(",", 1)[1]  # the last row's timestamp cell emptied
    blank = tmp_path / "blank.csv"
    blank.write_text("\n".join(lines) + "\n")
    out = tmp_path / "c.pt"
    result = run_cli("retrain", "-m", bundle_path, blank, "-o", out, "--epochs", 1)
    assert result.exit_code == 0, result.output
    data = read_metadata(out)[0]["lineage"]["data"]
    (recent,), _ = load_series([path], DataConfig(), load_bundle(bundle_path).features)
    assert (data["readings"], data["dropped_readings"]) == (1499, 1)
    assert data["last_reading"] == datetime.fromtimestamp(recent.timestamps[-2], UTC).isoformat(
        timespec="seconds"
    )
    champion = copy_of(bundle_path, tmp_path)
    held = run_cli(
        "retrain", "-m", champion, blank, "-o", out, "--epochs", 1, "--promote", "--max-drift", 100
    )
    assert held.exit_code in (0, 3), held.output
    assert "training set: 1,199 readings of 1 key (0 left out" in held.stdout


def test_files_that_train_and_replay_read_with_options_retrain_and_promote_alike(
    csv_world, bundle_path, tmp_path
):
    """retrain/promote had none of the options that say how to read a file (--decimal, --separator,
    --time-format, --bad-cells, ...): a file replayed with --decimal , was refused by retrain with '(numbers with
    decimal commas need --decimal ,)', and --decimal , was 'No such option'."""
    path, alerts = csv_world
    text = path.read_text()
    assert "," in text and ";" not in text
    semi = tmp_path / "semi" / path.name  # the same key (the file's name)
    semi.parent.mkdir()
    semi.write_text(text.replace(",", ";").replace(".", ","))
    outs = {}
    for name, args in (("dot", [path]), ("comma", [semi, "--decimal", ","])):
        outs[name] = tmp_path / f"{name}.pt"
        result = run_cli(
            "retrain", "-m", bundle_path, *args, "--alerts", alerts, "-o", outs[name], "--epochs", 1
        )
        assert result.exit_code == 0, result.output
    dot, comma = (read_metadata(outs[n])[0] for n in ("dot", "comma"))
    assert dot["training_fingerprint"] == comma["training_fingerprint"]
    assert dot["lineage"]["data"]["readings"] == comma["lineage"]["data"]["readings"] == 1495
    champion = copy_of(bundle_path, tmp_path)
    shown = [
        run_cli("promote", outs["dot"], "-m", champion, *args, "--dry-run")
        for args in ([path], [semi, "--decimal", ","])
    ]
    assert shown[0].exit_code == shown[1].exit_code and shown[0].exit_code in (0, 3), shown[1].output
    assert shown[0].stdout == shown[1].stdout


def test_keys_without_a_reading_are_named(csv_world, bundle_path, tmp_path):
    """`--keys recent,pump-7` (a typo, or a quiet key) trained on `recent` alone without a word."""
    path, alerts = csv_world
    result = run_cli(
        "retrain",
        "-m",
        bundle_path,
        path,
        "--alerts",
        alerts,
        "--keys",
        "recent,pump-7",
        "-o",
        tmp_path / "c.pt",
    )
    assert result.exit_code == 0, result.output
    warning = "warning: no readings for 1 of the 2 keys of --keys (pump-7); using the others\n"
    assert result.stderr == warning and "training set: 1,495 readings of 1 key (5 left out" in result.stdout
    champion = copy_of(bundle_path, tmp_path)
    result = run_cli("promote", bundle_path, "-m", champion, path, "--keys", "recent,pump-7", "--dry-run")
    assert result.exit_code in (0, 3) and result.stderr == warning, result.output


def test_a_slice_labelled_in_another_column_is_compared_by_f1(csv_world, bundle_path, tmp_path):
    """promote had no --label/--label-map: labels in a column not named `anomaly` (or text labels) were not read,
    so F1 was left out of the comparison and the decision without a word."""
    import pandas as pd

    path, _ = csv_world
    frame = pd.read_csv(path)
    frame["attack"] = frame.pop("anomaly").map({0: "Normal", 1: "Attack"})
    other = tmp_path / "other" / path.name  # the same key (the file's name)
    other.parent.mkdir()
    frame.to_csv(other, index=False)
    champion = copy_of(bundle_path, tmp_path)
    common = ["promote", bundle_path, "-m", champion, "--dry-run"]
    labelled = run_cli(*common, path)
    relabelled = run_cli(*common, other, "--label", "attack", "--label-map", "Normal=0,Attack=1")
    assert labelled.exit_code in (0, 3), labelled.output
    assert "F1 / FAR / MAR" in labelled.stdout
    assert (relabelled.exit_code, relabelled.stdout) == (labelled.exit_code, labelled.stdout)


def test_promote_from_a_topic_reads_no_alerts(csv_world, bundle, bundle_path, tmp_path, monkeypatch):
    """promote from a topic read the whole alerts topic and dropped it (it compares on every reading), so an
    alerts topic of another name, or none, ended it with 'error: topic anomaly-alerts not found'."""
    from anomaly.kafka import KafkaError, history

    path, _ = csv_world
    (recent,), _ = load_series([path], DataConfig(), bundle.features)

    def no_alerts_topic(cfg, topic, timeout_s=10.0):  # type: ignore[no-untyped-def]
        raise KafkaError(f"topic {topic} not found")

    monkeypatch.setattr(history, "read_alert_events", no_alerts_topic)
    monkeypatch.setattr(history, "read_dead_letter_positions", lambda *a, **k: set())
    monkeypatch.setattr(
        history, "read_topic_range", lambda *a, **k: history.TopicHistory([recent], messages=len(recent))
    )
    champion = copy_of(bundle_path, tmp_path)
    result = run_cli("promote", bundle_path, "-m", champion, "--since", "1h", "--force")
    assert result.exit_code == 0 and result.stderr == "", result.output
    assert "readings streamed             1,500 " in result.stdout
    assert "alerts_topic" not in read_metadata(champion)[0]["lineage"]["promotion"]["slice"]


@pytest.mark.parametrize("command", ["retrain", "promote"])
def test_group_id_names_the_group_whose_alerts_and_dead_letters_are_read(
    command, csv_world, bundle, bundle_path, tmp_path, monkeypatch
):
    """A daemon run with `consume --group-id plant-b` writes group header plant-b; `retrain --group-id plant-b`
    was "no such option", and without it retrain read group 'anomaly''s alerts (none: a retrain that learnt the
    alerts' readings as normal). With CSV files the option is refused, as the other topic options."""
    from anomaly.kafka import history

    path, _ = csv_world
    (recent,), _ = load_series([path], DataConfig(), bundle.features)
    groups: list[tuple[str, str]] = []
    monkeypatch.setattr(
        history, "read_alert_events", lambda cfg, topic, group, others: groups.append(("alerts", group)) or []
    )
    monkeypatch.setattr(
        history,
        "read_dead_letter_positions",
        lambda cfg, topic, since_ms, group, others: groups.append(("dead letters", group)) or set(),
    )
    monkeypatch.setattr(
        history, "read_topic_range", lambda *a, **k: history.TopicHistory([recent], messages=len(recent))
    )
    champion = copy_of(bundle_path, tmp_path)
    first = (
        ["-m", champion, "-o", tmp_path / "c.pt", "--epochs", "1"]
        if command == "retrain"
        else [bundle_path, "-m", champion, "--dry-run"]
    )
    result = run_cli(command, *first, "--since", "1h", "--group-id", "plant-b")
    assert result.exit_code in (0, 3), result.output
    read = [("dead letters", "plant-b")] + ([("alerts", "plant-b")] if command == "retrain" else [])
    assert groups == read
    result = run_cli(command, *first, path, "--group-id", "plant-b")
    assert (result.exit_code, result.stderr) == (
        2,
        "error: --group-id is for reading a topic, but CSV files were given: give either the files or a topic "
        f"range{' (with files, --alerts names a replay' + chr(39) + 's alerts.jsonl)' if command == 'retrain' else ''}\n",
    )


def test_alerts_file_with_a_topic_source_is_refused(bundle_path, tmp_path):
    """From a topic, --alerts FILE was ignored without a word (alert spans come from the alerts topic)."""
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_text("")
    result = run_cli("retrain", "-m", bundle_path, "--since", "1h", "--alerts", alerts, "-b", "127.0.0.1:1")
    assert result.exit_code == 2 and result.stderr.startswith("error: --alerts is for CSV files;")


@pytest.mark.parametrize("command", ["retrain", "promote"])
def test_an_unreachable_broker_is_one_line_without_kafka_python_logs(
    command, bundle_path, tmp_path, caplog, monkeypatch
):
    """retrain/promote from a topic printed kafka-python's reconnect warnings and errors (about 20 lines, one per
    attempt) before their one `error:` line; consume and produce quiet them unless -v, and so do they now."""
    import logging

    from anomaly.kafka import clients, history

    monkeypatch.setattr(history, "_consumer", lambda cfg, t: clients.make_consumer(cfg, 1.0, group=False))
    kafka_log = logging.getLogger("kafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.NOTSET)  # as in a fresh process (another test's consume may have set it)
    first = (
        ["-m", bundle_path] if command == "retrain" else [copy_of(bundle_path, tmp_path), "-m", bundle_path]
    )
    try:
        result = run_cli(command, *first, "--since", "1h", "-b", "127.0.0.1:1")
    finally:
        kafka_log.setLevel(level)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: cannot reach Kafka at 127.0.0.1:1 (consumer): no usable connection; check --bootstrap-servers "
        "(kafka.bootstrap_servers), that the broker is up and the security settings (security_protocol PLAINTEXT)"
    ]
    assert [r.getMessage() for r in caplog.records if r.name.startswith("kafka")] == []


def test_promote_alerts_topic_is_a_warning_that_it_has_no_effect(bundle_path, tmp_path, monkeypatch):
    """`promote --alerts-topic T` was accepted and ignored (promote reads no alerts): it still runs, as a command
    line copied from retrain's should, with a warning line saying the option does nothing."""
    from anomaly.kafka import clients, history

    monkeypatch.setattr(history, "_consumer", lambda cfg, t: clients.make_consumer(cfg, 0.2, group=False))
    args = [copy_of(bundle_path, tmp_path), "-m", bundle_path, "--since", "1h", "-b", "127.0.0.1:1"]
    result = run_cli("promote", *args, "--alerts-topic", "alerts")
    assert (result.exit_code, result.stderr.splitlines()[0]) == (
        2,
        "warning: --alerts-topic has no effect in promote, which compares the models on every reading of the "
        "range and reads no alerts (retrain reads them to leave their readings out); leave it out",
    )
    assert result.stderr.splitlines()[1].startswith("error: cannot reach Kafka at 127.0.0.1:1 (consumer)")


def test_topic_options_with_csv_files_are_refused_not_ignored(csv_world, bundle_path, tmp_path):
    """With CSV files, --alerts-topic (and --topic, -b, --dead-letter-topic) were ignored without a word:
    `retrain data.csv --alerts-topic anomaly-alerts` trained on the readings inside the alerts as normal data, and
    `promote ... data.csv --topic sensors` compared on the files, not the topic."""
    path, _ = csv_world
    out = tmp_path / "challenger.pt"
    result = run_cli("retrain", "-m", bundle_path, path, "--alerts-topic", "anomaly-alerts", "-o", out)
    assert (result.exit_code, result.stderr) == (
        2,
        "error: --alerts-topic is for reading a topic, but CSV files were given: give either the files or a topic "
        "range (with files, --alerts names a replay's alerts.jsonl)\n",
    )
    assert not out.exists()
    champion = copy_of(bundle_path, tmp_path)
    before = champion.read_bytes()
    result = run_cli(
        "promote", bundle_path, "-m", champion, path, "--topic", "sensors", "-b", "127.0.0.1:1", "--force"
    )
    assert (result.exit_code, result.stderr) == (
        2,
        "error: --topic, --bootstrap-servers are for reading a topic, but CSV files were given: give either the "
        "files or a topic range\n",
    )
    assert champion.read_bytes() == before and not champion.with_name("model.pt.previous").exists()


def test_from_pipeline_needs_a_pipeline_and_says_when_the_architecture_changes(
    csv_world, bundle_path, tmp_path
):
    """--from-pipeline without --pipeline trained with the built-in defaults (another architecture, 30 epochs)
    in silence; with a pipeline that changes the architecture nothing said that a reload resets the state."""
    path, _ = csv_world
    result = run_cli("retrain", "-m", bundle_path, path, "--from-pipeline", "-o", tmp_path / "c.pt")
    assert result.exit_code == 2 and result.stderr.startswith("error: --from-pipeline trains with a pipeline")
    pipeline = tmp_path / "p.toml"
    pipeline.write_text("[model]\nwindow = 8\nhidden_size = 8\n[train]\nepochs = 1\n")
    out = tmp_path / "c.pt"
    result = run_cli("retrain", "-m", bundle_path, path, "--from-pipeline", "-p", pipeline, "-o", out)
    assert result.exit_code == 0, result.output
    assert load_bundle(out).arch.hidden_size == 8
    assert "note: the challenger's architecture differs from the champion's" in result.stdout


@pytest.mark.parametrize(
    ("option", "role"),
    [("--time-column", "time column"), ("--key-column", "key column"), ("--label", "label column")],
)
@pytest.mark.parametrize("command", ["retrain", "promote"])
def test_an_option_naming_a_model_feature_as_time_key_or_label_says_so(
    bundle_path, tmp_path, command, option, role
):
    """`promote c.pt -m model.pt recent.csv --time-column sensor_1` said "data.features includes the time column
    'sensor_1' (data.features from a command-line option, ...)": no --features was given, the features are the
    model's."""
    path = tmp_path / "recent.csv"
    generate(SyntheticSpec(n_sensors=4, n_points=100, seed=3)).to_csv(path, index=False)
    if command == "retrain":
        args = ["retrain", "-m", bundle_path, path, "-o", tmp_path / "c.pt"]
    else:
        args = ["promote", bundle_path, "-m", copy_of(bundle_path, tmp_path), path, "--dry-run"]
    result = run_cli(*args, option, "sensor_1")
    features = ", ".join(load_bundle(bundle_path).features)
    assert (result.exit_code, result.stderr) == (
        2,
        f"error: {option} names 'sensor_1', one of the model's features ({features}): name the file's {role}\n",
    )


def test_from_pipeline_warns_of_an_unused_setting_once(bundle_path, tmp_path):
    """retrain --from-pipeline read the pipeline file twice (data settings, then model and training settings), and
    printed each `warning:` of a setting left unused twice."""
    path = tmp_path / "tiny.csv"
    generate(SyntheticSpec(n_sensors=4, n_points=100, seed=3)).to_csv(path, index=False)
    pipeline = tmp_path / "p.toml"
    pipeline.write_text('[engine]\nthreshold = "dynamic"\nstatic_threshold = 2.5\n')
    result = run_cli(
        "retrain", "-m", bundle_path, path, "--from-pipeline", "-p", pipeline, "-o", tmp_path / "c.pt"
    )
    assert result.exit_code == 2  # too little data: the warnings come before it
    lines = result.stderr.splitlines()
    assert lines[:-1] == [
        f"warning: engine.static_threshold (from pipeline file {pipeline}) has no effect: engine.threshold is "
        "dynamic, not static"
    ]
    assert lines[-1].startswith("error: too little normal data to retrain")


def test_retrain_promote_with_from_and_no_to_holds_out_the_recent_readings(csv_world, bundle_path, tmp_path):
    """With --from and no --to the holdout was the last 20 % of [from, now]: no reading in it, so retrain
    trained, then failed with 'the evaluation slice is empty'."""
    path, _ = csv_world
    champion = copy_of(bundle_path, tmp_path)
    args = ["retrain", "-m", champion, path, "-o", tmp_path / "c.pt", "--epochs", 1, "--from", "2023-11-01"]
    result = run_cli(*args, "--promote", "--max-drift", 100, "--max-alert-ratio", 100)
    assert result.exit_code == 0, result.output
    assert "readings streamed             300 " in result.stdout  # 20 % of the 1,500 readings


def test_onnx_on_either_side_of_a_promotion_is_refused_before_anything_is_written(bundle_path, tmp_path):
    """An ONNX challenger crashed after the comparison (AttributeError: 'OnnxStep' has no state_dict), leaving a
    .previous; an ONNX champion file was overwritten with a .pt bundle the daemon could no longer load."""
    from anomaly.export import export_onnx

    data = tmp_path / "d.csv"
    generate(SyntheticSpec(n_sensors=4, n_points=400, seed=4)).to_csv(data, index=False)
    onnx, _ = export_onnx(load_bundle(bundle_path), tmp_path / "m.onnx")
    champion = copy_of(bundle_path, tmp_path)
    before = (champion.read_bytes(), onnx.read_bytes())
    for chall, champ in ((onnx, champion), (bundle_path, onnx)):
        result = run_cli("promote", chall, "-m", champ, data)
        assert result.exit_code == 2 and result.stderr.startswith("error: promotion writes a model bundle")
    assert (champion.read_bytes(), onnx.read_bytes()) == before
    assert not list(tmp_path.glob("*.previous"))
    result = run_cli("promote", champion, "-m", champion, data)
    assert result.exit_code == 2 and result.stderr.startswith(f"error: {champion} is the champion's own file")


def test_labels_of_one_class_do_not_decide_by_f1(csv_world, bundle_path, tmp_path):
    """All-0 labels printed 'F1 0.0000 vs champion 0.0000 (ok ...)'; all-1 labels compared F1s that only
    reward alerting on everything."""
    import pandas as pd

    path, _ = csv_world
    frame = pd.read_csv(path)
    champion = copy_of(bundle_path, tmp_path)
    for value, why, shown in (
        (0, "no reading of the slice is labelled anomalous", r"n/a / \d+\.\d\d% / n/a"),
        (1, "every reading of the slice", r"n/a / n/a / \d+\.\d\d%"),
    ):
        labelled = tmp_path / f"labels{value}.csv"
        frame.assign(anomaly=value).to_csv(labelled, index=False)
        result = run_cli("promote", bundle_path, "-m", champion, labelled, "--dry-run")
        assert result.exit_code == 0, result.output
        assert f"  - F1: not measurable ({why}" in result.stdout and "  - F1 0." not in result.stdout
        # the table above it printed "0.000 / ... / 0.00%" too: only what the labels measure is a number (FAR
        # needs readings labelled normal, MAR readings labelled anomalous, F1 both)
        (row,) = [line for line in result.stdout.splitlines() if line.startswith("F1 / FAR / MAR")]
        assert re.fullmatch(rf"F1 / FAR / MAR +{shown} +{shown}", row), row
        # nor are false alerts counted or shown: every alert counts
        assert "false alerts" not in result.stdout and "  - alerts opened " in result.stdout


def test_a_slice_too_small_for_drift_is_rejected_and_one_without_a_scored_reading_is_an_error(
    bundle_path, tmp_path
):
    """40 readings gave a PSI of noise (0.6-0.8) that decided the promotion; a feature without a value in any
    row left nothing scored, and the policy passed ('would promote')."""
    import pandas as pd

    frame = generate(SyntheticSpec(n_sensors=4, n_points=400, seed=4))
    tiny, empty = tmp_path / "tiny.csv", tmp_path / "empty.csv"
    frame.head(40).to_csv(tiny, index=False)
    feature = load_bundle(bundle_path).features[1]
    frame.assign(**{feature: pd.NA}).to_csv(empty, index=False)
    champion = copy_of(bundle_path, tmp_path)
    result = run_cli("promote", bundle_path, "-m", champion, tiny, "--dry-run")
    assert result.exit_code == 3, result.output
    assert "  - drift: not measurable on 40 scored readings (needs 200; widen the slice)" in result.stdout
    assert "decision: rejected" in result.stdout
    result = run_cli("promote", bundle_path, "-m", champion, empty, "--dry-run")
    assert result.exit_code == 2
    assert result.stderr == f"error: {empty}: no value in any row for {feature}, which the model needs\n"


def test_policy_skips_f1_of_one_class_and_rejects_an_unmeasured_drift() -> None:
    counts = {"point": {"tp": 0, "fp": 3, "fn": 0, "tn": 97}}
    a = ShadowResult("a", 100, 10, 1, 1.0, 0.0, 0.5, 1.0, 0.1, {"f1": 0.0, "counts": counts}, 100)
    b = ShadowResult("b", 100, 10, 1, 1.0, 0.0, 0.5, 1.0, None, {"f1": 0.0, "counts": counts}, 100)
    ok, reasons = PromotionPolicy().decide(a, b)
    assert not ok and reasons[0].startswith("F1: not measurable (no reading of the slice is labelled")
    assert reasons[-1] == "drift: not measurable on 100 scored readings (needs 200; widen the slice)"


def level_shifts(path, magnitudes: list[float], n: int = 3000, seed: int = 7) -> Series:  # type: ignore[no-untyped-def]
    """A generated normal stream with a labelled 60-reading step in sensor_1 every 400 readings, one per
    magnitude (in standard deviations of sensor_1), read back from `path` as the CLI reads it."""
    frame = generate(SyntheticSpec(n_sensors=4, n_points=n, seed=seed))
    sd = frame["sensor_1"].std()
    frame["anomaly"] = 0
    for i, m in enumerate(magnitudes):
        start = 400 + 400 * i
        frame.loc[start : start + 59, "sensor_1"] += m * sd
        frame.loc[start : start + 59, "anomaly"] = 1
    frame.to_csv(path, index=False)
    return load_series([path], DataConfig())[0][0]


def test_labelled_slice_counts_false_alerts_against_the_champion_not_true_ones(bundle, bundle_path, tmp_path):
    """A stale champion (its unit of error 4x too large: it sees only the largest steps) against the model it
    drifted from. On the labelled slice the challenger finds more labelled anomalies (higher F1) and so opens
    more alerts, 5 vs 2: the alert rule counted every alert and rejected it (limit 1 x 2 + 1 = 3). With labels
    of both classes it counts the alerts overlapping no labelled anomaly, as replay's false alerts; without
    labels (or on a series without them) every alert counts, as before."""
    import dataclasses

    stale = load_bundle(bundle_path)
    stale.calibration["reference_error"] *= 4
    stale.meta["model_version"] = "stale"
    labelled = level_shifts(tmp_path / "slice.csv", [1, 2, 3, 4, 6, 8])
    # the steps are 12 % of the slice: drift is not the point here
    policy = PromotionPolicy(max_drift_psi=1.0)
    cmp = compare(stale, bundle, [labelled], EngineConfig(), policy)
    a, b = cmp.champion, cmp.challenger
    assert a.metrics is not None and b.metrics is not None and b.metrics["f1"] > a.metrics["f1"] + 0.1
    assert (a.alerts_opened, b.alerts_opened) == (2, 5)  # the old rule: 5 > 1 x 2 + 1, rejected
    assert (a.false_alerts, b.false_alerts) == (0, 1)
    assert cmp.promote and cmp.reasons[1] == (
        "false alerts 1 vs champion 0 (alerts overlapping no labelled anomaly, of 5 vs 2 opened; ok; "
        "limit 1 = 1 x the champion's + 1)"
    )
    # the same stream under another key without labels, beside the labelled one: each of its alerts counts
    other = Series("b", labelled.timestamps, labelled.values)
    cmp = compare(stale, bundle, [labelled, other], EngineConfig(), policy)
    assert (cmp.champion.alerts_opened, cmp.challenger.alerts_opened) == (2 + 2, 5 + 5)
    assert (cmp.champion.false_alerts, cmp.challenger.false_alerts) == (0 + 2, 1 + 5)
    assert not cmp.promote and cmp.reasons[1].startswith("false alerts 6 vs champion 2 (")
    # without labels every alert counts, as before
    unlabelled = dataclasses.replace(cmp.challenger, metrics=None, false_alerts=None)
    ok, reasons = policy.decide(
        dataclasses.replace(cmp.champion, metrics=None, false_alerts=None), unlabelled
    )
    assert not ok and reasons[0] == (
        "alerts opened 10 vs champion 4 (1.667 vs 0.667 per 1,000 readings; more; limit 5 = 1 x the champion's + 1)"
    )


def test_inspect_of_a_promoted_export_shows_no_none(bundle_path, tmp_path):
    """A bundle promoted without retrain lineage showed 'lineage: parent X; None data None .. None'."""
    from anomaly.export import to_int8
    from anomaly.promotion import Comparison

    int8 = to_int8(load_bundle(bundle_path))
    r = ShadowResult("a", 100, 10, 1, 1.0, 0.0, 0.5, 1.0, 0.1, None, 300)
    champion = copy_of(bundle_path, tmp_path)
    promote(int8, champion, Comparison(r, r, True, []))
    shown = run_cli("inspect", champion).stdout
    assert "lineage:         parent none\n" in shown and "None" not in shown
    assert "; champion a\n" in shown and f"parent_version {load_bundle(bundle_path).version}" in shown


def test_a_promoted_bundle_not_made_by_retrain_has_no_parent(bundle_path, tmp_path):
    """Promotion gave a bundle without lineage (made by `train`, or a rollback onto `model.pt.previous`) the
    champion it replaced as its parent: after a challenger retrained from model A was promoted and then rolled
    back, A's `inspect` said `lineage: parent <the challenger>`, a model made from A. The parent is the model a
    challenger was retrained from; the replaced champion is named in the promotion row, and a retrained
    challenger keeps its own parent."""
    from anomaly.promotion import Comparison

    made = load_bundle(bundle_path)
    r = ShadowResult("the-replaced-one", 100, 10, 1, 1.0, 0.0, 0.5, 1.0, 0.1, None, 300)
    champion = copy_of(bundle_path, tmp_path)
    promote(made, champion, Comparison(r, r, True, []))
    lineage = read_metadata(champion)[0]["lineage"]
    assert (
        lineage["parent_version"] is None
        and lineage["promotion"]["champion"]["version"] == "the-replaced-one"
    )
    shown = run_cli("inspect", champion).stdout.splitlines()
    assert shown[-2:] == [
        "lineage:         parent none",
        f"promotion:       promoted at {lineage['promotion']['at']}; champion the-replaced-one",
    ]
    made.meta["lineage"] = {"parent_version": "its-own-parent", "promotion": None}  # retrain's record
    promote(made, champion, Comparison(r, r, True, []))
    assert read_metadata(champion)[0]["lineage"]["parent_version"] == "its-own-parent"


def test_a_challenger_with_other_features_says_which(bundle):
    """Features in another order were refused as 'different features (3 vs 3)', which reads as no difference."""
    import dataclasses

    slice_ = [series("k", 300)]
    feats = bundle.features
    reordered = dataclasses.replace(bundle, features=[feats[1], feats[0], *feats[2:]])
    with pytest.raises(DataError) as err:
        compare(bundle, reordered, slice_, EngineConfig(), PromotionPolicy())
    assert str(err.value) == (
        f"champion and challenger have different features (the same {len(feats)} in another order: feature 1 "
        f"is {feats[0]} vs {feats[1]}); they cannot score the same stream"
    )
    fewer = dataclasses.replace(bundle, features=feats[:-1])
    with pytest.raises(DataError) as err:
        compare(bundle, fewer, slice_, EngineConfig(), PromotionPolicy())
    assert str(err.value) == (
        f"champion and challenger have different features ({len(feats)} vs {len(feats) - 1}; only the "
        f"champion's: {feats[-1]}); they cannot score the same stream"
    )


def test_retrain_refuses_to_write_the_challenger_over_the_champion(csv_world, bundle_path, tmp_path):
    """`retrain -m model.pt -o model.pt` replaced the champion with an unvetted challenger (no policy, no
    .previous), and a running daemon hot-reloaded it."""
    path, _ = csv_world
    champion = copy_of(bundle_path, tmp_path)
    before = champion.read_bytes()
    result = run_cli("retrain", "-m", champion, path, "-o", champion, "--epochs", 1)
    assert result.exit_code == 2 and result.stderr.startswith(f"error: -o {champion} is the champion's file")
    assert champion.read_bytes() == before and not list(tmp_path.glob("*.previous"))


def test_retrain_refuses_to_write_the_challenger_over_the_rollback_copy(csv_world, bundle_path, tmp_path):
    """`retrain -m model.pt -o model.pt.previous` silently replaced the copy a rollback restores; it is refused in
    one line, as -o model.pt is, before anything is read or trained (also when named by another path)."""
    path, _ = csv_world
    champion = copy_of(bundle_path, tmp_path)
    previous = tmp_path / "model.pt.previous"
    previous.write_bytes(b"the last champion")
    for out in (previous, tmp_path / "sub" / ".." / "model.pt.previous"):
        result = run_cli("retrain", "-m", champion, path, "-o", out, "--epochs", 1)
        assert (result.exit_code, result.stderr) == (
            2,
            f"error: -o {out} is the champion's rollback copy (kept by the last promotion): write the challenger "
            "to another file\n",
        )
    assert previous.read_bytes() == b"the last champion"


def test_retrain_refuses_to_write_the_challenger_over_its_data_or_alerts_file(
    csv_world, bundle_path, tmp_path
):
    """`retrain -m model.pt recent.csv -o recent.csv` trained and replaced the data file with the challenger
    bundle (so did `-o` naming the --alerts file); `train -o` refused it. Refused in one line before anything is
    read or trained, and so is a name ending in / (refused only after the training, its work lost)."""
    path, alerts = csv_world
    champion = copy_of(bundle_path, tmp_path)
    data, events = path.read_bytes(), alerts.read_bytes()
    for out, what in (
        (path, "data file {}: training would replace the data"),
        (alerts, "alerts file {}: training would replace the alerts"),
    ):
        result = run_cli("retrain", "-m", champion, path, "--alerts", alerts, "-o", out, "--epochs", 1)
        assert (result.exit_code, result.stderr) == (  # the alerts file was called 'the data file'
            2,
            f"error: the model bundle {out} is the {what.format(out)} with the bundle; name another file with "
            "--out\n",
        )
    folder = f"{tmp_path / 'models'}/"
    result = run_cli("retrain", "-m", champion, path, "-o", folder, "--epochs", 1)
    assert result.exit_code == 2 and result.stderr.startswith(
        f"error: cannot write the model bundle {folder}: "
    )
    assert (path.read_bytes(), alerts.read_bytes()) == (data, events)
    assert not (tmp_path / "models").exists()


def test_csv_files_that_overlap_train_on_each_reading_once(csv_world, bundle_path, tmp_path):
    """A topic read leaves out readings at a timestamp their key already had (the engine drops them); from CSV
    files that overlap (two exports of one key), retrain trained on both copies of every shared reading."""
    import pandas as pd

    path, _ = csv_world
    frame = pd.read_csv(path).assign(k="pump")
    frame.to_csv(whole := tmp_path / "whole.csv", index=False)
    frame.iloc[:1000].to_csv(early := tmp_path / "early.csv", index=False)
    frame.iloc[500:].to_csv(late := tmp_path / "late.csv", index=False)
    metas, said = [], []
    for name, files in (("one.pt", [whole]), ("two.pt", [early, late])):
        out = tmp_path / name
        result = run_cli("retrain", "-m", bundle_path, *files, "--key-column", "k", "-o", out, "--epochs", 1)
        assert result.exit_code == 0, result.output
        metas.append(read_metadata(out)[0])
        said.append(result.stdout.splitlines()[0])
    one, two = (m["lineage"]["data"] for m in metas)
    assert two["readings"] + two["excluded_short_readings"] == 1500
    assert (one["dropped_readings"], two["dropped_readings"]) == (0, 500)
    # the 500 were left out without a word: 2,000 rows read, a training set of 1,500 readings
    assert said == [
        f"training set: {one['readings']:,} readings of 1 key (0 left out in alert spans)",
        f"training set: {two['readings']:,} readings of 1 key (0 left out in alert spans, 500 left out at a "
        "timestamp their key already had, or at none)",
    ]
    # counted among the keys selected: another key's file given twice is not this training set's concern
    frame.assign(k="other").to_csv(other := tmp_path / "other.csv", index=False)
    out = tmp_path / "three.pt"
    args = ("--keys", "pump", "--key-column", "k", "-o", out, "--epochs", 1)
    result = run_cli("retrain", "-m", bundle_path, whole, other, other, *args)
    assert result.exit_code == 0, result.output
    assert read_metadata(out)[0]["lineage"]["data"]["dropped_readings"] == 0
    assert metas[0]["training_fingerprint"] == metas[1]["training_fingerprint"]


def test_repeated_timestamps_are_kept_under_duplicate_policy_keep(
    csv_world, bundle_path, tmp_path, monkeypatch
):
    """Under engine.duplicate_policy = "keep" the engine scores a reading at its key's last timestamp, and
    `train` trains on it; retrain left every such reading out (from CSV files and from a topic) as under "drop".
    It follows the policy: the overlapping files' 500 shared readings are kept twice, as train keeps them."""
    import pandas as pd

    from anomaly.kafka import history
    from anomaly.kafka.codec import Decoder, MessageFormat

    path, _ = csv_world
    frame = pd.read_csv(path).assign(k="pump")
    frame.iloc[:1000].to_csv(early := tmp_path / "early.csv", index=False)
    frame.iloc[500:].to_csv(late := tmp_path / "late.csv", index=False)
    keep = tmp_path / "keep.toml"
    keep.write_text('[engine]\nduplicate_policy = "keep"\n')
    counts = {}
    for name, pipeline in (("drop.pt", []), ("keep.pt", ["-p", keep])):
        out = tmp_path / name
        args = ("--key-column", "k", "-o", out, "--epochs", 1, *pipeline)
        result = run_cli("retrain", "-m", bundle_path, early, late, *args)
        assert result.exit_code == 0, result.output
        data = read_metadata(out)[0]["lineage"]["data"]
        counts[name] = (data["readings"] + data["excluded_short_readings"], data["dropped_readings"])
    assert counts == {"drop.pt": (1500, 500), "keep.pt": (2000, 0)}

    class Record:  # a topic holding each reading at t = 1, 2, 2, 3 (the 2 sent twice)
        def __init__(self, offset: int, t: float) -> None:
            self.topic, self.partition, self.offset, self.timestamp = "in", 0, offset, 1000
            self.key, self.value = b"pump", json.dumps({"key": "pump", "ts": t, "values": [t]}).encode()

    class Consumer:
        def close(self, autocommit: bool = True) -> None:
            pass

    monkeypatch.setattr(history, "_consumer", lambda cfg, timeout_s: Consumer())
    monkeypatch.setattr(history, "_ranges", lambda *args: {})
    monkeypatch.setattr(history, "_scan", lambda *a: iter([Record(i, t) for i, t in enumerate([1, 2, 2, 3])]))
    decoder = Decoder(MessageFormat(("x",), max_future_seconds=0))
    read = {
        policy: history.read_topic_range(
            build_config().kafka, ["in"], decoder, 0.0, 2.0, duplicate_policy=policy
        )
        for policy in ("drop", "keep")
    }
    assert [(h.series[0].timestamps.tolist(), h.duplicates) for h in read.values()] == [
        ([1.0, 2.0, 3.0], 1),
        ([1.0, 2.0, 2.0, 3.0], 0),
    ]


def _history_of(monkeypatch, records, keys, policy, exclude):  # type: ignore[no-untyped-def]
    from anomaly.kafka import history
    from anomaly.kafka.codec import Decoder, MessageFormat

    class Consumer:
        def close(self, autocommit: bool = True) -> None:
            pass

    monkeypatch.setattr(history, "_consumer", lambda cfg, timeout_s: Consumer())
    monkeypatch.setattr(history, "_ranges", lambda *args: {})
    monkeypatch.setattr(history, "_scan", lambda *a: iter(records))
    decoder = Decoder(MessageFormat(("x", "y"), max_future_seconds=0))
    cfg = build_config().kafka
    return history.read_topic_range(
        cfg, ["in"], decoder, 0.0, 2.0, keys=keys, exclude=exclude, duplicate_policy=policy
    )


def _session20_history(records, keys, policy, exclude):  # type: ignore[no-untyped-def]
    """read_topic_range's accumulation up to session 20, verbatim: two numpy arrays a message, per key, joined at
    the end (the reference the buffered accumulation must equal bit for bit)."""
    from anomaly.kafka.codec import DecodeError, Decoder, MessageFormat

    decoder = Decoder(MessageFormat(("x", "y"), max_future_seconds=0))
    stamps: dict[str, list[np.ndarray]] = {}
    values: dict[str, list[np.ndarray]] = {}
    counts = {"messages": 0, "dead_letters": 0, "invalid": 0, "other_keys": 0, "duplicates": 0, "readings": 0}
    for rec in records:
        if not 0 <= rec.timestamp < 2000:
            continue
        counts["messages"] += 1
        if (rec.topic, rec.partition, rec.offset) in exclude:
            counts["dead_letters"] += 1
            continue
        try:
            event = decoder.decode(rec)
        except DecodeError:
            counts["invalid"] += 1
            continue
        key = str(event.key)
        if keys is not None and key not in keys:
            counts["other_keys"] += 1
            continue
        stamps.setdefault(key, []).append(np.asarray(event.timestamps, np.float64).reshape(-1))
        values.setdefault(key, []).append(
            np.asarray(event.values, np.float64).reshape(-1, decoder.n_features)
        )
    series = []
    for key in sorted(stamps):
        ts = np.concatenate(stamps[key])
        vals = np.concatenate(values[key])
        order = np.argsort(ts, kind="stable")
        ts, vals = ts[order], vals[order]
        keep = np.isfinite(ts)
        keep[1:] &= np.diff(ts) >= 0 if policy == "keep" else np.diff(ts) > 0
        counts["duplicates"] += int((~keep).sum())
        counts["readings"] += int(keep.sum())
        series.append((key, ts[keep], vals[keep]))
    return series, counts


@pytest.mark.parametrize("policy", ["drop", "keep"])
def test_history_read_into_buffers_equals_the_arrays_of_every_message(monkeypatch, policy):
    """Reading a range kept two numpy arrays a message until the range was read (about 640 MiB per million
    one-reading messages, deploy/measure_retrain_memory.py); each key's readings now go into two float64 buffers.
    The Series are those of the old accumulation bit for bit (NaN values kept, order of equal timestamps, duplicates
    dropped per the policy) over one-reading and block messages of keys interleaved out of order, with messages
    out of the range, dead-lettered, undecodable and of other keys, and the counts are the same."""
    rng = np.random.default_rng(21)

    class Record:
        def __init__(self, offset: int, body: object, at: int = 1000) -> None:
            self.topic, self.partition, self.offset, self.timestamp = "in", offset % 3, offset, at
            self.key, self.value = None, body if isinstance(body, bytes) else json.dumps(body).encode()

    def reading(i: int) -> dict[str, object]:
        vals = [round(float(v), 3) for v in rng.normal(size=2)]
        return {
            "ts": int(rng.integers(0, 60)) + 0.5 * (i % 2),
            "values": [None, vals[1]] if i % 7 == 0 else vals,
        }

    records = []
    for i in range(400):
        key = ["a", "b", "c", "d"][int(rng.integers(0, 4))]
        if i % 5 == 0:
            body: object = {"key": key, "readings": [reading(i + j) for j in range(int(rng.integers(1, 6)))]}
        else:
            body = {"key": key, **reading(i)}
        at = 3000 if i % 31 == 0 else 1000  # produced after the range
        records.append(Record(i, b"{not json" if i % 23 == 0 else body, at))
    exclude = {("in", i % 3, i) for i in range(5, 400, 17)}
    hist = _history_of(monkeypatch, records, {"a", "b", "c"}, policy, exclude)
    series, counts = _session20_history(records, {"a", "b", "c"}, policy, exclude)
    assert [(s.key, s.timestamps.tobytes(), s.values.tobytes(), s.values.shape) for s in hist.series] == [
        (key, ts.tobytes(), vals.tobytes(), vals.shape) for key, ts, vals in series
    ]
    got = {k: getattr(hist, k) for k in counts}
    assert got == counts
    assert [s.key for s in hist.series] == ["a", "b", "c"]
    assert counts["duplicates"] > 0 if policy == "drop" else counts["duplicates"] == 0
    assert min(counts["dead_letters"], counts["invalid"], counts["other_keys"]) > 0
    assert any(np.isnan(s.values).any() for s in hist.series)


def test_key_readings_sorts_stably_and_drops_non_finite_and_repeated_timestamps():
    """KeyReadings: a stable sort (readings at one timestamp stay in reading order under "keep"), readings at a
    NaN or infinite timestamp dropped and counted, NaN values kept; an empty key gives an empty Series."""
    from anomaly.kafka.history import KeyReadings

    read = KeyReadings(2)
    read.add([3.0, 1.0], [[30.0, 31.0], [10.0, np.nan]])
    read.add(np.array([np.nan]), np.array([[0.0, 0.0]]))
    read.add([1.0, np.inf, 2.0], [[11.0, 12.0], [9.0, 9.0], [20.0, 21.0]])
    kept, dropped = read.series("k", "kafka:in", "keep")
    assert (kept.key, kept.source, kept.timestamps.tolist(), dropped) == (
        "k",
        "kafka:in",
        [1.0, 1.0, 2.0, 3.0],
        2,
    )
    assert np.array_equal(
        kept.values, [[10.0, np.nan], [11.0, 12.0], [20.0, 21.0], [30.0, 31.0]], equal_nan=True
    )
    dedup, dropped = read.series("k", "kafka:in", "drop")
    assert (dedup.timestamps.tolist(), dedup.values[:, 0].tolist(), dropped) == (
        [1.0, 2.0, 3.0],
        [10.0, 20.0, 30.0],
        3,
    )
    empty, dropped = KeyReadings(2).series("e", "kafka:in")
    assert (empty.timestamps.shape, empty.values.shape, dropped) == ((0,), (0, 2), 0)


def test_promote_force_installs_the_challenger_where_no_champion_is(bundle, bundle_path, tmp_path):
    """A first deploy: promote loaded the champion first, so without a model.pt it failed and the operator copied
    the file by hand (no rename, no record). Without --force the error says to use it; with it the challenger is
    installed in one rename, recorded as forced onto a missing champion, and no data slice is needed."""
    challenger = copy_of(bundle_path, tmp_path, "challenger.pt")
    champion = tmp_path / "model.pt"
    refused = run_cli("promote", challenger, "-m", champion)
    assert (refused.exit_code, refused.stderr) == (
        2,
        f"error: the champion {champion} does not exist: there is nothing to compare {challenger} with; to "
        "install it as the champion without a comparison, add --force\n",
    )
    dry = run_cli("promote", challenger, "-m", champion, "--force", "--dry-run")
    assert dry.exit_code == 0 and not champion.exists()
    done = run_cli("promote", challenger, "-m", champion, "--force")
    assert done.exit_code == 0, done.output
    assert done.stdout.splitlines()[0] == (
        f"the champion {champion} does not exist: installing {challenger} without a comparison (--force)"
    )
    meta = read_metadata(champion)[0]
    decision = meta["lineage"]["promotion"]
    assert meta["model_version"] == bundle.version
    assert (
        decision["decision"],
        decision["forced"],
        decision["policy_passed"],
        decision["champion_state"],
    ) == (
        "promoted",
        True,
        False,
        "missing",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".model.pt.lock",  # the promotion lock (empty; it stays)
        "challenger.pt",
        "model.pt",
    ]  # no .previous, no temp
    shown = run_cli("inspect", champion).stdout
    assert f"promotion:       promoted (forced; champion missing) at {decision['at']}\n" in shown
    assert "lineage:         parent none\n" in shown


def test_promote_force_rolls_back_onto_an_unreadable_champion_and_keeps_it_aside(
    bundle, bundle_path, tmp_path
):
    """A rollback onto a damaged model.pt failed loading it. With --force the rollback copy is installed; the
    damaged file is kept as model.pt.unreadable, and model.pt.previous, the last model that loaded (here the
    challenger itself), is left as it was rather than replaced by the damaged bytes."""
    champion = tmp_path / "model.pt"
    champion.write_bytes(b"PK\x03\x04 truncated")
    previous = copy_of(bundle_path, tmp_path, "model.pt.previous")
    good = previous.read_bytes()
    refused = run_cli("promote", previous, "-m", champion)
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("error: the champion cannot be loaded (cannot read model bundle ")
    assert refused.stderr.endswith("to install it as the champion without a comparison, add --force\n")
    assert champion.read_bytes() == b"PK\x03\x04 truncated"
    done = run_cli("promote", previous, "-m", champion, "--force")
    assert done.exit_code == 0, done.output
    assert done.stdout.splitlines()[0].endswith(
        "without a comparison (--force); the unreadable file is kept as model.pt.unreadable"
    )
    assert read_metadata(champion)[0]["model_version"] == bundle.version
    assert read_metadata(champion)[0]["lineage"]["promotion"]["champion_state"] == "unreadable"
    assert (tmp_path / "model.pt.unreadable").read_bytes() == b"PK\x03\x04 truncated"
    assert previous.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".model.pt.lock",
        "model.pt",
        "model.pt.previous",
        "model.pt.unreadable",
    ]


@pytest.mark.parametrize(
    "args, option",
    [
        (["--holdout", "0.3"], "--holdout"),
        (["--f1-tolerance", "0.1"], "--f1-tolerance"),
        (["--max-alert-ratio", "4"], "--max-alert-ratio"),
        (["--alert-allowance", "2"], "--alert-allowance"),
        (["--max-drift", "1"], "--max-drift"),
        (["--force"], "--force"),
        (["--predict", "point"], "--predict"),
    ],
)
def test_promotion_options_without_promote_are_refused_not_ignored(
    csv_world, bundle_path, tmp_path, args, option
):
    """`retrain --holdout 0.3` (no --promote) trained on the whole range and compared nothing, without a word."""
    path, _ = csv_world
    out = tmp_path / "challenger.pt"
    result = run_cli("retrain", "-m", bundle_path, path, "-o", out, "--epochs", 1, *args)
    assert (result.exit_code, result.stderr.splitlines()[0]) == (
        2,
        f"error: {option} only applies with --promote, without which it would be ignored (see: main retrain --help)",
    )
    assert not out.exists()


def test_promote_says_when_the_challenger_architecture_resets_the_daemon_state(
    csv_world, bundle_path, window_bundle, tmp_path
):
    """A challenger of another architecture was promoted without a word, though a daemon that reloads it starts
    every key afresh (only `retrain --from-pipeline` said so); the same architecture gets no note."""
    path, _ = csv_world
    other = save_bundle(window_bundle, tmp_path / "other.pt")
    champion = copy_of(bundle_path, tmp_path)
    result = run_cli("promote", other, "-m", champion, path, "--force")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == (
        "note: the challenger's architecture differs from the champion's (num layers 1 vs 2, dropout 0.0 vs 0.1, "
        "forecast False vs True); a daemon that reloads it starts every key's state afresh (its open alerts "
        "close, reason evicted)"
    )
    same = run_cli("promote", bundle_path, "-m", copy_of(bundle_path, tmp_path, "again.pt"), path, "--force")
    assert same.exit_code == 0, same.output
    assert "note:" not in same.stdout


def test_an_int8_export_is_not_promoted_over_a_float32_champion_without_force(bundle_path, tmp_path):
    """`promote model-int8.pt -m model.pt` replaced the float32 champion with its int8 export: `retrain -m
    model.pt` was then refused ('retrain from the float32 model bundle'), the float32 weights left only in
    model.pt.previous, which the next promotion replaces. Now it is refused before any data is read, naming why;
    --force still promotes it, and retrain then names the float32 model and where it is."""
    from anomaly.export import to_int8

    data = tmp_path / "d.csv"
    generate(SyntheticSpec(n_sensors=4, n_points=400, seed=4)).to_csv(data, index=False)
    champion = copy_of(bundle_path, tmp_path)
    v = load_bundle(champion).version
    int8 = save_bundle(to_int8(load_bundle(champion)), tmp_path / "model-int8.pt")
    before = champion.read_bytes()
    result = run_cli("promote", int8, "-m", champion, tmp_path / "no-such.csv")
    assert result.exit_code == 2 and result.stderr == (
        f"error: {int8} is an int8 export (model {v}-int8) and {champion} holds the float32 model {v}: "
        "promoted, the float32 weights would be kept only in model.pt.previous (until the next promotion "
        f"replaces it), and `anomaly retrain -m {champion}` needs them; keep the champion float32 (an int8 "
        "export scores no faster: its gain is a smaller file), or add --force to promote it anyway\n"
    )
    assert champion.read_bytes() == before and not (tmp_path / "model.pt.previous").exists()
    forced = run_cli("promote", int8, "-m", champion, data, "--force")
    assert forced.exit_code == 0, forced.output
    meta = read_metadata(champion)[0]
    assert meta["model_version"] == f"{v}-int8" and meta["lineage"]["promotion"]["forced"] is True
    assert meta["lineage"]["promotion"]["reasons"][-1] == (
        f"precision: an int8 export over the float32 champion (--force; retrain needs the float32 model {v})"
    )
    assert "decision: promoted (forced); " in forced.stdout
    refused = run_cli("retrain", "-m", champion, data, "-o", tmp_path / "c.pt")
    assert refused.exit_code == 2 and refused.stderr == (
        f"error: the champion {champion} is model {v}-int8, an export of model {v}: retrain from the float32 "
        f"bundle of {v}; {champion}.previous holds it\n"
    )
    # a float32 challenger over the int8 champion is compared as any other (exit 0 or 3, not an error)
    back = run_cli("promote", bundle_path, "-m", champion, data, "--dry-run")
    assert back.exit_code in (0, 3) and "decision: " in back.stdout


def test_promote_measures_f1_with_the_pipelines_prediction_as_replay_does(csv_world, bundle_path, tmp_path):
    """promote counted a reading as predicted anomalous inside an open alert whatever the pipeline said: with
    `[replay] predict = "point"` replay and promote gave other F1s for one model on one slice, and promote did
    not say which it used. Now it follows replay.predict (--predict overrides it) and its F1 reason says which;
    false alerts stay alerts either way."""
    path, _ = csv_world
    pipeline = tmp_path / "point.toml"
    pipeline.write_text('[replay]\npredict = "point"\n')
    rep = run_cli("replay", path, "-m", bundle_path, "-o", tmp_path / "point", "-p", pipeline, "--no-plots")
    assert rep.exit_code == 0, rep.output
    f1 = {
        predict: json.loads((tmp_path / folder / "summary.json").read_text())["metrics"]["f1"]
        for predict, folder in (("alert", "rep"), ("point", "point"))  # csv_world's replay: alert
    }
    assert f1["alert"] != f1["point"]
    champion = copy_of(bundle_path, tmp_path)
    shown = {}
    for predict, extra in (("point", ()), ("alert", ("--predict", "alert"))):
        result = run_cli("promote", bundle_path, "-m", champion, path, "-p", pipeline, "--dry-run", *extra)
        assert result.exit_code == 0, result.output
        f = f1[predict]
        assert (
            f"  - F1 {f:.4f} vs champion {f:.4f} (prediction = {predict}; ok; tolerance 0)\n" in result.stdout
        )
        (row,) = [line for line in result.stdout.splitlines() if line.startswith("false alerts")]
        shown[predict] = row
    assert shown["point"] == shown["alert"]


@pytest.mark.parametrize("from_pipeline", [False, True])
def test_a_bad_training_option_is_named_as_the_option(bundle_path, tmp_path, from_pipeline):
    """retrain built its training settings without the options' names: `--seed -1` said "(from a command-line
    option)" where train and demo say "(from option --seed)"."""
    path = tmp_path / "tiny.csv"
    generate(SyntheticSpec(n_sensors=4, n_points=100, seed=3)).to_csv(path, index=False)
    pipeline = tmp_path / "p.toml"
    pipeline.write_text('[engine]\nthreshold = "dynamic"\n')
    extra = ["--from-pipeline", "-p", pipeline] if from_pipeline else []
    result = run_cli("retrain", "-m", bundle_path, path, *extra, "--seed", "-1", "-o", tmp_path / "c.pt")
    assert (result.exit_code, result.stderr) == (
        2,
        "error: train.seed must be between 0 and 2**64 - 1, got -1 (from option --seed)\n",
    )


# --- two promotions of one champion at once (session 22) -------------------------------------------------------


def test_a_second_promotion_of_a_champion_is_refused_while_one_holds_it(csv_world, bundle_path, tmp_path):
    """Two promotions at once each copied the file they found to model.pt.previous and renamed their challenger
    over it: the second replaced a champion it had not compared with, and could copy the first one's challenger
    over the only copy of the old champion (measured: 4 of 4 overlapping runs lost it). A promotion now holds
    the champion's lock (.model.pt.lock) from loading it to the rename; a second one, `promote` or `retrain
    --promote`, is refused at once in one line and writes nothing. A dry run writes nothing and takes no lock."""
    from anomaly.promotion import promotion_lock

    path, _ = csv_world
    champion = copy_of(bundle_path, tmp_path)
    challenger = copy_of(bundle_path, tmp_path, "challenger.pt")
    before = champion.read_bytes()
    busy = (
        f"error: another promotion of {champion} is running (it holds {tmp_path / '.model.pt.lock'}): let it "
        "finish, then run this one again to compare with the champion it leaves\n"
    )
    with promotion_lock(champion):
        refused = run_cli("promote", challenger, "-m", champion, path, "--force")
        assert (refused.exit_code, refused.stderr) == (2, busy)
        retrained = run_cli(
            "retrain", "-m", champion, path, "-o", tmp_path / "ch2.pt", "--epochs", "1", "--promote"
        )
        assert (retrained.exit_code, retrained.stderr) == (2, busy)
        dry = run_cli("promote", challenger, "-m", champion, path, "--dry-run")
        assert dry.exit_code == 0 and "decision: would promote (dry run)" in dry.stdout
        assert champion.read_bytes() == before
        assert sorted(
            p.name for p in tmp_path.iterdir() if p.name.startswith(("model", ".model", "ch2"))
        ) == [
            ".model.pt.lock",
            "model.pt",
        ]
    done = run_cli("promote", challenger, "-m", champion, path)  # released: the next one runs
    assert done.exit_code == 0, done.output
    assert (tmp_path / "model.pt.previous").read_bytes() == before


def test_a_champion_replaced_during_the_comparison_is_not_replaced(csv_world, bundle, bundle_path, tmp_path):
    """A champion file changed while the challenger was compared with it (a `cp` by hand, or a promotion from
    another host where the lock does not reach) was replaced all the same, by a challenger never compared with
    the model it replaced, and .previous kept the changed file. The promotion now checks the file is the one it
    loaded (device, inode, size, mtime) before it writes anything, and stops with one line."""
    from anomaly.commands import lifecycle_cmds

    path, _ = csv_world
    champion = copy_of(bundle_path, tmp_path)
    challenger = copy_of(bundle_path, tmp_path, "challenger.pt")
    other = load_bundle(bundle_path)
    other.meta["model_version"] = "copied-by-hand"
    real_compare = lifecycle_cmds.compare

    def compare_while_someone_copies(*args, **kwargs):  # type: ignore[no-untyped-def]
        save_bundle(other, tmp_path / "other.pt")
        (tmp_path / "other.pt").replace(champion)
        return real_compare(*args, **kwargs)

    lifecycle_cmds.compare = compare_while_someone_copies
    try:
        result = run_cli("promote", challenger, "-m", champion, path, "--force")
    finally:
        lifecycle_cmds.compare = real_compare
    assert (result.exit_code, result.stderr) == (
        2,
        f"error: {champion} changed while the challenger was compared with it (another promotion, or a copy "
        "over it): it was not replaced; run the promotion again to compare with the model it holds now\n",
    )
    assert read_metadata(champion)[0]["model_version"] == "copied-by-hand"
    assert not (tmp_path / "model.pt.previous").exists()


def test_install_refuses_a_champion_that_appeared_since_it_was_found_missing(bundle, bundle_path, tmp_path):
    """`promote --force` onto a missing champion (a first deploy) replaced a file that another install had put
    there meanwhile, without keeping it: it is now an error and the file stays."""
    from anomaly.promotion import identity, install

    champion = tmp_path / "model.pt"
    loaded = identity(champion)
    assert loaded is None
    champion.write_bytes(bundle_path.read_bytes())
    with pytest.raises(DataError, match="changed while the challenger was compared with it"):
        install(bundle, champion, "missing", "first deploy", loaded=loaded)
    assert champion.read_bytes() == bundle_path.read_bytes()
    assert install(bundle, champion, "missing", "first deploy", loaded=identity(champion)) == champion


def test_a_promotion_that_cannot_write_beside_the_champion_stops_before_reading_data(bundle_path, tmp_path):
    """A promotion checks first that the champion's folder takes a new file (here a file is where the folder
    should be): one line naming the champion, before any data is read, instead of after the comparison. A
    champion in a folder that does not exist yet (a first deploy onto a new path) is still installed, the folder
    made, as before the lock."""
    challenger = copy_of(bundle_path, tmp_path, "challenger.pt")
    (tmp_path / "file").write_text("")
    champion = tmp_path / "file" / "model.pt"
    result = run_cli("promote", challenger, "-m", champion, tmp_path / "never-read.csv", "--force")
    assert (result.exit_code, result.stderr) == (
        2,
        f"error: cannot write the model bundle {champion}: {tmp_path / 'file'} is not a folder\n",
    )
    first = tmp_path / "new" / "models" / "model.pt"
    installed = run_cli("promote", challenger, "-m", first, "--force")
    assert installed.exit_code == 0, installed.output
    assert read_metadata(first)[0]["lineage"]["promotion"]["champion_state"] == "missing"


@pytest.mark.parametrize("command", ["retrain", "promote"])
def test_a_range_whose_messages_all_fail_to_decode_says_so(
    command, bundle, bundle_path, tmp_path, monkeypatch
):
    """A champion trained on other features than the stream carries (2 features, messages of 3 values) read
    4,500 messages that did not decode, and retrain and promote said only `no readings from ... on sensors`, as
    for an empty range. The error now counts the range's messages and says what became of them."""
    from anomaly.kafka import history

    monkeypatch.setattr(history, "read_alert_events", lambda *a, **k: [])
    monkeypatch.setattr(history, "read_dead_letter_positions", lambda *a, **k: set())
    monkeypatch.setattr(
        history,
        "read_topic_range",
        lambda *a, **k: history.TopicHistory([], messages=4500, invalid=4490, dead_letters=4, other_keys=6),
    )
    champion = copy_of(bundle_path, tmp_path)
    args = ["-o", tmp_path / "c.pt"] if command == "retrain" else [bundle_path, "--force"]
    result = run_cli(
        command, *([] if command == "retrain" else [args.pop(0)]), "-m", champion, "--since", "1h", *args
    )
    assert result.exit_code == 2, result.output
    features = ", ".join(bundle.features[:5]) + (", ..." if len(bundle.features) > 5 else "")
    assert result.stderr.endswith(
        " on sensors: 4,500 messages in the range, 4,490 that do not decode as readings of the model's "
        f"{len(bundle.features)} features ({features}), 4 dead-lettered by the daemon, 6 of keys not selected; a "
        "model trained on other features than the stream carries decodes none\n"
    )
    assert result.stderr.startswith("error: no readings from ") and result.stderr.count("\n") == 1


def test_retrain_without_from_pipeline_warns_that_model_and_train_variables_are_unread(
    bundle, bundle_path, train_csv, tmp_path, monkeypatch
):
    """ANOMALY_MODEL_* / ANOMALY_TRAIN_* (a ConfigMap's) were ignored without a word: the challenger takes the
    champion's settings unless --from-pipeline."""
    monkeypatch.setenv("ANOMALY_MODEL_WINDOW", "16")
    monkeypatch.setenv("ANOMALY_TRAIN_SEED", "7")
    out = tmp_path / "challenger.pt"
    result = run_cli("retrain", "-m", bundle_path, train_csv, "-o", out, "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "warning: ANOMALY_MODEL_WINDOW, ANOMALY_TRAIN_SEED have no effect: retrain trains with the champion's "
        "[model] and [train] settings; add --from-pipeline (with --pipeline) to train with the pipeline's and these "
        "variables (--epochs, --seed and --device override either)"
    ]
    challenger = load_bundle(out)
    assert challenger.arch == bundle.arch and challenger.window == 8
    assert challenger.meta["training"]["config"]["train"]["seed"] == 0  # the champion's, not 7


def test_a_topic_read_refuses_an_unused_security_setting_in_one_line(bundle_path, tmp_path, monkeypatch):
    """retrain and promote from a topic printed a `warning:` that kafka.ssl_cafile has no effect, then refused it
    with an `error:` when connecting; from files the warning stays (nothing connects)."""
    monkeypatch.setenv("ANOMALY_KAFKA_SSL_CAFILE", "ca.pem")
    refusal = (
        "error: kafka.ssl_cafile is set, but security_protocol PLAINTEXT does not use it: set "
        "kafka.security_protocol to SSL or SASL_SSL, or leave kafka.ssl_cafile out (from environment variable "
        "ANOMALY_KAFKA_SSL_CAFILE)\n"
    )
    servers = ("--bootstrap-servers", "127.0.0.1:9")
    result = run_cli("retrain", "-m", bundle_path, *servers, "-o", tmp_path / "c.pt")
    assert (result.exit_code, result.stderr) == (2, refusal)
    result = run_cli("promote", bundle_path, "-m", copy_of(bundle_path, tmp_path), *servers)
    assert (result.exit_code, result.stderr) == (2, refusal)

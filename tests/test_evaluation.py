"""Backtest metrics against hand-computed examples."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anomaly.evaluation import (
    Confusion,
    Counts,
    causal,
    count,
    decision_index,
    evaluate,
    events_standing_out,
    format_table,
    oracle_best_f1,
    point_adjust,
    pool,
    segments,
)

# index:          0  1  2  3  4  5  6  7  8  9
LABELS = np.array([0, 0, 1, 1, 1, 0, 0, 1, 1, 0])
PREDS = np.array([0, 1, 0, 1, 0, 0, 0, 0, 0, 1])
STEP = 9600.0  # 9 steps = 86,400 s: exactly one day of evaluated time
TIMES = np.arange(10) * STEP


def test_segments_are_half_open_runs_of_ones():
    assert segments(LABELS) == [(2, 5), (7, 9)]
    assert segments(PREDS) == [(1, 2), (3, 4), (9, 10)]
    assert segments([0, 0]) == []
    assert segments([1, 1]) == [(0, 2)]


def test_point_wise_counts_and_skab_formulas():
    m = evaluate(LABELS, PREDS, TIMES)
    assert m["counts"]["point"] == {"tp": 1, "fp": 2, "fn": 4, "tn": 3}
    assert m["f1"] == 1 / (1 + (4 + 2) / 2) == 0.25
    assert m["precision"] == 1 / 3
    assert m["recall"] == 1 / 5
    assert m["far"] == 2 / (2 + 3)
    assert m["mar"] == 4 / (4 + 1)


def test_skab_f1_is_the_harmonic_mean_of_precision_and_recall():
    c = Confusion(tp=7, fp=3, fn=5, tn=11)
    assert c.f1 == pytest.approx(2 * c.precision * c.recall / (c.precision + c.recall), abs=1e-15)


def test_point_adjust_fills_detected_segments_only():
    assert point_adjust(LABELS, PREDS).astype(int).tolist() == [0, 1, 1, 1, 1, 0, 0, 0, 0, 1]
    m = evaluate(LABELS, PREDS, TIMES)
    assert m["counts"]["adjusted"] == {"tp": 3, "fp": 2, "fn": 2, "tn": 3}
    assert m["pa_f1"] == 3 / (3 + (2 + 2) / 2) == 0.6
    assert m["pa_precision"] == 3 / 5
    assert m["pa_recall"] == 3 / 5


def test_event_metrics():
    m = evaluate(LABELS, PREDS, TIMES)
    e = m["counts"]["events"]
    assert (e["true_events"], e["detected_events"]) == (2, 1)
    assert (e["predicted_events"], e["matched_predictions"], e["false_alerts"]) == (3, 1, 2)
    assert m["event_recall"] == 0.5
    assert m["event_precision"] == 1 / 3
    assert m["mean_delay_s"] == STEP  # segment [2, 5) starts at t=2*STEP, first predicted point at t=3*STEP
    assert e["seconds"] == 86_400.0
    assert m["false_alerts_per_day"] == 2.0


def test_delay_is_averaged_over_detected_events():
    labels = [1, 1, 1, 0, 1, 1, 1, 0]
    preds = [1, 0, 0, 0, 0, 0, 1, 0]
    m = evaluate(labels, preds, [0, 1, 2, 3, 10, 11, 12, 13])
    assert m["mean_delay_s"] == (0 + 2) / 2
    assert m["event_recall"] == 1.0
    assert m["counts"]["events"]["false_alerts"] == 0


def test_pool_sums_counts_before_dividing():
    a = evaluate(LABELS, PREDS, TIMES)
    b = evaluate([1, 1, 0, 0], [1, 1, 1, 0], [0.0, 1.0, 2.0, 3.0])
    pooled = pool([a, b])
    assert pooled["counts"]["point"] == {"tp": 3, "fp": 3, "fn": 4, "tn": 4}
    assert pooled["f1"] == 3 / (3 + (4 + 3) / 2)
    assert pooled["far"] == 3 / 7
    assert pooled["mar"] == 4 / 7
    assert pooled["f1"] != (a["f1"] + b["f1"]) / 2
    assert pooled["counts"]["series"] == 2
    assert pooled["counts"]["events"]["seconds"] == 86_403.0
    assert pooled["mean_delay_s"] == (STEP + 0.0) / 2


def test_pool_accepts_counts_and_json_round_trips():
    a, b = count(LABELS, PREDS, TIMES), count([1, 0], [0, 1], [0.0, 5.0])
    assert pool([a, b]) == pool([json.loads(json.dumps(a.metrics())), b])
    assert (a + b).point == Confusion(1, 3, 5, 3)
    assert pool([]) == Counts().metrics()


def test_degenerate_inputs_follow_the_documented_conventions():
    silent = evaluate([0, 0, 1, 1], [0, 0, 0, 0], [0, 1, 2, 3])
    assert (silent["f1"], silent["precision"], silent["far"], silent["mar"]) == (0.0, 0.0, 0.0, 1.0)
    assert silent["mean_delay_s"] is None
    assert silent["event_precision"] == 0.0
    perfect = evaluate([0, 1, 1, 0], [0, 1, 1, 0], [0, 1, 2, 3])
    assert (perfect["f1"], perfect["far"], perfect["mar"], perfect["pa_f1"]) == (1.0, 0.0, 0.0, 1.0)
    normal_only = evaluate([0, 0], [0, 1], [0, 0])
    assert (normal_only["mar"], normal_only["far"]) == (0.0, 0.5)
    assert normal_only["false_alerts_per_day"] is None  # no time elapsed


def test_bad_shapes_raise_value_error():
    with pytest.raises(ValueError, match="differ in length"):
        evaluate([0, 1], [0], [0, 1])
    with pytest.raises(ValueError, match="1-d"):
        evaluate([[0, 1]], [[0, 1]], [0, 1])


def test_format_table_shows_skab_metrics_and_labels_point_adjust():
    text = format_table(evaluate(LABELS, PREDS, TIMES))
    lines = text.splitlines()
    assert any(line.split() == ["F1", "0.250"] for line in lines)
    assert any(line.split() == ["FAR,", "%", "40.00"] for line in lines)
    assert any(line.split() == ["MAR,", "%", "80.00"] for line in lines)
    assert "point-adjusted (not comparable with SKAB)" in text
    assert any(line.split() == ["PA-F1", "0.600"] for line in lines)
    assert "1 / 2 / 4 / 3" in text


def test_decisions_delay_what_the_pipeline_has_said():
    # a window of 4 decided by its last reading: readings 0-3 are known at 3, 4-7 at 7, 8-11 at 11
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0])
    preds = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0])  # e.g. an alert open over 5-8
    ts = np.arange(12) * 60.0
    decided_at = np.repeat([3, 7, 11], 4) * 60.0
    m = evaluate(labels, preds, ts, decided_at)
    # what was announced by each reading: nothing until 7; at 7 the alert is open (reading 7's state), held to 10;
    # at 11 it is closed
    assert m["counts"]["point"] == {"tp": 1, "fp": 3, "fn": 2, "tn": 6}
    assert m["counts"]["marked"] == {"tp": 3, "fp": 1, "fn": 0, "tn": 8}
    assert (m["median_delay_readings"], m["mean_delay_readings"]) == (
        2.0,
        2.0,
    )  # event starts at 5, seen at 7
    assert (m["median_delay_s"], m["mean_delay_s"]) == (120.0, 120.0)
    assert m["event_recall"] == 1.0
    # wait from arrival to decision: 3, 2, 1, 0 readings per window
    assert m["counts"]["latency"]["readings"] == {3: 3, 2: 3, 1: 3, 0: 3}
    assert (m["latency_readings_median"], m["latency_readings_p99"]) == (1.0, 3.0)
    assert (m["latency_s_median"], m["latency_s_p99"]) == (60.0, 180.0)


def test_without_decisions_every_reading_decides_itself():
    m = evaluate(LABELS, PREDS, TIMES)
    assert m["counts"]["point"] == m["counts"]["marked"]
    assert m == evaluate(LABELS, PREDS, TIMES, TIMES)
    assert m["latency_readings_p99"] == 0.0


def test_a_late_decision_still_detects_a_short_event_and_counts_its_delay():
    labels = np.array([0, 1, 0, 0, 0, 0])
    preds = np.array([0, 1, 0, 0, 0, 0])
    ts = np.array([0.0, 10.0, 20.0, 30.0, 40.0, 50.0])
    m = evaluate(labels, preds, ts, [30.0, 30.0, 30.0, 30.0, np.nan, np.nan])
    assert m["event_recall"] == 1.0 and m["median_delay_readings"] == 2.0 and m["mean_delay_s"] == 20.0
    assert m["counts"]["point"]["tp"] == 0  # the spike is flagged only after it ended
    with pytest.raises(ValueError, match="before it arrives"):
        evaluate(labels, preds, ts, [0.0] * 6)


def test_causal_holds_the_latest_decided_reading():
    dec = np.array([1, 1, 3, 3, 6, 6])  # index 6 = never decided
    assert causal([0, 1, 0, 0, 1, 1], dec, False).tolist() == [False, True, True, False, False, False]
    assert causal([1.0, 2.0, 5.0, 4.0, 9.0, 9.0], dec, np.nan)[1:].tolist() == [2.0, 2.0, 4.0, 4.0, 4.0]
    ts = np.array([0.0, 1.0, 2.0, 3.0])
    assert decision_index(ts, [1.0, 1.0, 3.0, np.nan]).tolist() == [1, 1, 3, 4]


def test_oracle_best_f1_tries_every_threshold():
    scores = np.array([0.1, 0.9, 0.8, 0.3, 0.7, 0.2, np.nan])
    labels = np.array([0, 1, 1, 0, 0, 1, 1])
    # thresholds: 0.9 -> tp1 fp0 fn3: 0.4; 0.8 -> tp2 fn2: 2/3=0.667; 0.7 -> tp2 fp1 fn2: 4/7; 0.2 -> tp3 fp2 fn1: 2/3
    f1, thr = oracle_best_f1(scores, labels)
    assert f1 == pytest.approx(2 / 3) and thr == 0.8  # ties: the first (highest) threshold reaching the best
    assert oracle_best_f1([1.0, 1.0, 0.0], [1, 0, 0]) == (2 / 3, 1.0)  # tied scores flag together
    assert oracle_best_f1([0.5, 0.1], [0, 0]) == (0.0, float("inf"))


def test_pool_keeps_delays_and_latency_through_json():
    a = count([0, 1, 1, 0], [0, 0, 1, 0], [0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 3.0, 3.0])
    b = count([1, 1], [1, 1], [0.0, 1.0])
    pooled = pool([json.loads(json.dumps(a.metrics())), b])
    assert pooled == pool([a, b])
    assert Counts.from_json(pooled["counts"]).events.delays_readings == (2, 0)
    assert pooled["mean_delay_readings"] == 1.0
    assert pooled["counts"]["latency"]["readings"] == {0: 4, 1: 2}


def test_rows_out_of_time_order_map_decisions_in_file_order():
    ts = np.array([0.0, 1.0, 0.5, 2.0, 3.0])  # row 2 went backwards (the engine refused it: never decided)
    decided = np.array([1.0, 1.0, np.nan, 3.0, 3.0])
    assert decision_index(ts, decided).tolist() == [1, 1, 5, 4, 4]
    m = evaluate([0, 0, 0, 1, 1], [0, 0, 0, 1, 1], ts, decided)
    assert m["median_delay_readings"] == 1.0 and m["counts"]["point"]["tp"] == 1


def test_an_event_stands_out_when_its_peak_beats_all_but_the_normal_rate():
    labels = np.zeros(120, bool)
    labels[[10, 11, 50, 90, 91]] = True  # three events: [10, 12), [50, 51), [90, 92)
    scores = np.arange(120, dtype=float) / 1000  # normal readings rise from 0 to 0.119
    scores[11] = 5.0  # above every normal reading
    scores[50] = 0.1185  # below one normal reading (0.119) of 115: beats 114 / 115 = 99.1 %
    scores[90:92] = [0.05, np.nan]  # beats about half of them; NaN counts as lowest
    assert events_standing_out(scores, labels, 0.01) == (2, 3)
    assert events_standing_out(scores, labels, 0.005) == (1, 3)
    assert events_standing_out(scores, labels, 0.6) == (3, 3)
    assert events_standing_out(scores, np.zeros(120, bool)) == (0, 0)


def test_a_repeated_timestamp_is_decided_by_the_reading_the_engine_took():
    # rows 3 and 4 repeat row 2's time: the engine took row 2 (decided on its arrival) and refused the repeats
    ts = np.array([0.0, 1.0, 2.0, 2.0, 2.0, 3.0, 4.0])
    labels = np.array([0, 0, 1, 1, 1, 1, 0])
    preds = np.array([0, 0, 1, 0, 0, 1, 0])  # refused rows are never flagged as marked
    decided = np.array([0.0, 1.0, 2.0, np.nan, np.nan, 3.0, 4.0])
    assert decision_index(ts, decided).tolist() == [0, 1, 2, 7, 7, 5, 6]
    m = evaluate(labels, preds, ts, decided)
    assert m["counts"]["point"] == {"tp": 4, "fp": 0, "fn": 0, "tn": 3}  # the repeats hold row 2's flag
    assert m["median_delay_readings"] == 0.0
    assert m["counts"]["latency"]["readings"] == {0: 5}
    # duplicate_policy=keep: every repeat is taken and decided on its own arrival
    assert decision_index([0.0, 1.0, 1.0, 1.0, 2.0], [0.0, 1.0, 1.0, 1.0, 2.0]).tolist() == [0, 1, 2, 3, 4]


def test_a_refused_reading_inside_an_alert_does_not_split_it():
    # one alert over readings 2-7, outlasting the label (2-4); reading 5 was refused (NaN value): never scored,
    # so never marked, but the pipeline's alert stayed open through it
    ts = np.arange(10) * 60.0
    labels = np.array([0, 0, 1, 1, 1, 0, 0, 0, 0, 0])
    preds = np.array([0, 0, 1, 1, 1, 0, 1, 1, 0, 0])
    decided = ts.copy()
    decided[5] = np.nan
    m = evaluate(labels, preds, ts, decided)
    e = m["counts"]["events"]
    assert (e["predicted_events"], e["matched_predictions"], e["false_alerts"]) == (1, 1, 0)
    assert m["event_precision"] == 1.0 and m["false_alerts_per_day"] == 0.0
    assert m["counts"]["point"]["fp"] == 3  # reading 5 counts as flagged, as the alert was open


def test_a_reading_without_a_time_leaves_the_evaluated_time_and_false_alerts_per_day():
    # the loader sorts a row with no time last; the engine refuses it (never decided)
    ts = np.array([0.0, 43_200.0, 86_400.0, np.nan])
    m = evaluate([0, 0, 0, 0], [0, 1, 0, 0], ts, [0.0, 43_200.0, 86_400.0, np.nan])
    assert m["counts"]["events"]["seconds"] == 86_400.0
    assert m["false_alerts_per_day"] == 1.0


def _false_alerts_line(preds: np.ndarray, times: np.ndarray) -> list[str]:
    (line,) = [
        x for x in format_table(evaluate(np.zeros(10, int), preds, times)).splitlines() if "per day" in x
    ]
    return line.split()


def test_a_rare_false_alert_rate_is_printed_with_its_digits():
    """8 false alerts over 282 days were printed as 0.0 per day: below one a rate keeps two significant digits."""
    one_false = np.array([0, 0, 0, 1, 0, 0, 0, 0, 0, 0])
    assert _false_alerts_line(one_false, TIMES * 36)[4:6] == ["0.028", "(1"]  # one in 36 days
    assert _false_alerts_line(one_false, TIMES)[4] == "1.0"  # one in one day
    assert _false_alerts_line(np.zeros(10, int), TIMES)[4] == "0.0"


def test_an_event_of_refused_readings_inside_an_open_alert_is_detected_at_once():
    """A fault that makes the sensor send NaN while an alert is open: its readings are refused, never scored, and
    counted as flagged point-wise (the alert stayed open), so the event is detected, with no delay; it was
    reported missed (event recall 0 of 1 beside a point recall and PA-recall of 1.0)."""
    ts = np.arange(10) * 60.0
    labels = np.array([0, 0, 0, 1, 1, 0, 0, 0, 0, 0])
    preds = np.array([0, 1, 1, 0, 0, 1, 1, 0, 0, 0])  # the alert opened at 1; 3 and 4 refused (NaN)
    decided = ts.copy()
    decided[[3, 4]] = np.nan
    m = evaluate(labels, preds, ts, decided)
    assert m["counts"]["point"] == {"tp": 2, "fp": 4, "fn": 0, "tn": 4}
    assert m["pa_recall"] == 1.0
    e = m["counts"]["events"]
    assert (e["true_events"], e["detected_events"], e["matched_predictions"]) == (1, 1, 1)
    assert (e["delays_readings"], e["delays_seconds"]) == ((0,), (0.0,))
    assert m["event_recall"] == 1.0


def test_a_refused_first_reading_inside_an_open_alert_delays_nothing():
    ts = np.arange(8) * 10.0
    labels = np.array([0, 0, 1, 1, 1, 0, 0, 0])
    # the alert was open before the event; the event's first reading was refused
    preds = np.array([0, 1, 0, 1, 1, 1, 0, 0])
    decided = ts.copy()
    decided[2] = np.nan
    m = evaluate(labels, preds, ts, decided)
    assert m["counts"]["events"]["delays_readings"] == (0,)
    assert m["counts"]["events"]["delays_seconds"] == (0.0,)
    # a closed alert held over a refused reading detects nothing; the next flagged reading does, 2 readings in
    closed = np.array([0, 0, 0, 0, 1, 1, 0, 0])
    m = evaluate(labels, closed, ts, decided)
    assert m["counts"]["events"]["delays_readings"] == (2,)
    assert m["counts"]["point"]["tp"] == 1


def test_an_alert_that_detected_an_event_late_is_not_a_false_alert():
    """Window-end scoring (model.forecast = false): a short event inside one window is flagged when the window
    ends, after the event; the alert the pipeline announces then detects the event and is not a false alert
    (it was counted both ways: 1 of 1 events detected beside 0 of 1 predicted segments matched, 1 false alert)."""
    ts = np.arange(12) * 60.0
    labels = np.array([0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    preds = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0])  # alert state at each window's decision
    decided = np.repeat([3, 7, 11], 4) * 60.0
    m = evaluate(labels, preds, ts, decided)
    e = m["counts"]["events"]
    assert (e["detected_events"], e["delays_readings"]) == (1, (2,))
    assert (e["predicted_events"], e["matched_predictions"], e["false_alerts"]) == (1, 1, 0)
    assert m["event_precision"] == 1.0 and m["false_alerts_per_day"] == 0.0
    assert m["counts"]["point"] == {"tp": 0, "fp": 8, "fn": 2, "tn": 2}  # point-wise: what was said by then
    # an alert whose decisions flagged no labelled reading stays false
    m = evaluate(np.zeros(12, int), preds, ts, decided)
    assert m["counts"]["events"]["false_alerts"] == 1


def test_a_gap_in_the_data_is_no_time_for_false_alerts_per_day():
    """Two days of readings with a 28-day hole between them: one false alert was 1/30 per day, divided by days
    that had no data; the hole is a gap the engine resets at (longer than max_gap_seconds), not observed time."""
    ts = np.array([0.0, 43_200.0, 86_400.0, 30 * 86_400.0, 30 * 86_400.0 + 43_200.0, 31 * 86_400.0])
    labels, preds = [0] * 6, [0, 1, 0, 0, 0, 0]
    m = evaluate(labels, preds, ts, ts, max_gap_seconds=86_400.0)
    assert (m["counts"]["events"]["seconds"], m["false_alerts_per_day"]) == (2 * 86_400.0, 0.5)
    assert (
        evaluate(labels, preds, ts, ts)["counts"]["events"]["seconds"] == 31 * 86_400.0
    )  # no gap rule given
    # a step of max_gap_seconds itself is not a gap (the engine resets only after a longer one)
    assert evaluate(labels, preds, ts, ts, max_gap_seconds=29 * 86_400.0)["false_alerts_per_day"] == 1 / 31


def test_a_labelled_reading_without_a_time_is_in_no_event():
    """A row with an empty time cell and label 1 (sorted last, refused, holding the open alert) made an event of
    its own whose delay in seconds was NaN: `nan` in the table and `NaN` in summary.json, for every pooled key."""
    ts = np.array([0.0, 60.0, 120.0, 180.0, np.nan])
    labels = [0, 1, 1, 0, 1]
    preds = [0, 0, 1, 1, 0]
    m = evaluate(labels, preds, ts, [0.0, 60.0, 120.0, 180.0, np.nan])
    e = m["counts"]["events"]
    assert (e["true_events"], e["detected_events"], e["delays_seconds"]) == (1, 1, (60.0,))
    assert (m["mean_delay_s"], m["median_delay_s"], m["event_precision"]) == (60.0, 60.0, 1.0)
    assert m["counts"]["point"] == {"tp": 2, "fp": 1, "fn": 1, "tn": 1}  # it still counts point-wise (held)
    assert "nan" not in format_table(m)

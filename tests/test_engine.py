"""The streaming engine: grouping invariance, snapshots, data hygiene, thresholds, alerts, eviction."""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections import OrderedDict

import numpy as np
import pytest

from anomaly.config import EngineConfig
from anomaly.engine import Engine, EngineOutput, Event, StateError
from anomaly.engine.types import Readings
from anomaly.errors import BundleError
from anomaly.thresholds import THRESHOLDS, Threshold
from anomaly.training import distinct_values, max_runs, series_errors
from tests.helpers import NoRoomFor, chunks, make_series


def feed(engine: Engine, series, pieces) -> tuple[np.ndarray, list]:
    scores, alerts = [], []
    for lo, hi in pieces:
        out = engine.process([Event(series.key, series.timestamps[lo:hi], series.values[lo:hi])])
        scores += [w.scores for w in out.windows]
        alerts += [a.id + a.status for a in out.alerts]
    return (np.concatenate(scores) if scores else np.zeros(0)), alerts


SMALL = {"dynamic_warmup": 32, "dynamic_history": 64, "spot_init": 32, "spot_depth": 8, "spot_peaks": 16}


@pytest.mark.parametrize("threshold", list(THRESHOLDS))
def test_single_readings_odd_blocks_and_one_pass_score_identically(bundle, test_series, threshold) -> None:
    cfg = EngineConfig(threshold=threshold, max_alert_seconds=120.0, **SMALL)
    n = len(test_series)
    one_by_one = feed(Engine(bundle, cfg), test_series, chunks(n, [1]))
    in_blocks = feed(Engine(bundle, cfg), test_series, chunks(n, [7, 3, 13, 1]))
    one_pass = feed(Engine(bundle, cfg), test_series, [(0, n)])
    assert len(one_by_one[0]) == n // bundle.window * bundle.window
    assert np.array_equal(one_by_one[0], in_blocks[0]) and np.array_equal(one_by_one[0], one_pass[0])
    assert one_by_one[1] == in_blocks[1] == one_pass[1]


@pytest.mark.parametrize("scored", ["reading", "window"])
def test_threshold_state_updated_in_place_equals_the_generic_write_back(
    bundle, window_bundle, scored
) -> None:
    """Many keys, short wrapping rings, alerts: the dynamic threshold's in-place ring update gives the same
    windows, alerts and snapshot bytes as gathering every key's whole ring and writing it back."""
    model = bundle if scored == "reading" else window_bundle
    cfg = EngineConfig(threshold="dynamic", dynamic_warmup=8, dynamic_history=16, alert_open_after=1)
    fast, generic = Engine(model, cfg), Engine(model, cfg)
    generic.threshold.update_rows = functools.partial(Threshold.update_rows, generic.threshold)  # type: ignore[method-assign]
    series = [make_series(f"k{i}", 200, len(model.features), seed=i) for i in range(6)]
    for s in series[:2]:
        s.values[50:60] += 8.0  # an alert holds the ring still
    runs = []
    for engine in (fast, generic):
        scores, alerts = [], []
        for lo, hi in chunks(200, [1, 5, 2, 17]):
            out = engine.process([Event(s.key, s.timestamps[lo:hi], s.values[lo:hi]) for s in series])
            scores += [w.scores for w in out.windows]
            alerts += [a.id + a.status for a in out.alerts]
        runs.append((np.concatenate(scores), alerts, engine.snapshot()))
    assert runs[0][1] and runs[0][1] == runs[1][1]
    assert runs[0][0].tobytes() == runs[1][0].tobytes() and runs[0][2] == runs[1][2]


@pytest.mark.parametrize(
    "scored,limit", [("reading", "seconds"), ("window", "seconds"), ("reading", "readings")]
)
def test_quiet_keys_skip_the_alert_steps_with_the_same_result(bundle, window_bundle, scored, limit) -> None:
    """Keys with no anomalous point and no open alert take a piece's run-counter steps at once; stepping every
    key point by point gives the same windows, alerts (opens, closes, level shifts) and snapshot bytes."""
    model = bundle if scored == "reading" else window_bundle
    cfg = EngineConfig(
        threshold="static",
        static_threshold=1000.0,
        smoothing=1.0,
        alert_open_after=2,
        alert_close_after=4,
        **({"max_alert_seconds": 40.0} if limit == "seconds" else {"max_alert_readings": 40}),
    )
    fast, stepped = Engine(model, cfg), Engine(model, cfg)
    stepped.alerts.busy = lambda rows, anomalous: np.arange(len(rows))  # type: ignore[method-assign]
    series = []
    for i in range(8):
        s = make_series(f"k{i}", 240, len(model.features), seed=i)
        noise = np.random.default_rng(i).normal(0, 0.05, s.values.shape)
        s.values[:] = model.scaler.mean + noise * model.scaler.scale
        if i < 6:  # short spikes (closed as normal), and two long ones (closed as level shifts)
            s.values[20 + 9 * i : 26 + 9 * i + (50 if i >= 4 else 0)] += 60 * model.scaler.scale
            s.values[150 + 3 * i : 153 + 3 * i] += 60 * model.scaler.scale
        series.append(s)
    runs = []
    for engine in (fast, stepped):
        scores, alerts = [], []
        for lo, hi in chunks(240, [1, 3, 32, 2, 11]):
            out = engine.process([Event(s.key, s.timestamps[lo:hi], s.values[lo:hi]) for s in series])
            scores += [np.concatenate([w.scores, w.alert_open, w.anomalous]) for w in out.windows]
            alerts += [(a.id, a.status, a.at, a.reason) for a in out.alerts]
        runs.append((np.concatenate(scores), alerts, engine.snapshot()))
    assert {a[3] for a in runs[0][1]} == {"", "normal", "level_shift"}
    assert runs[0][1] == runs[1][1]
    assert runs[0][0].tobytes() == runs[1][0].tobytes() and runs[0][2] == runs[1][2]


def test_full_report_windows_equal_windows_cut_reading_by_reading(bundle) -> None:
    """Full report buffers become ScoredWindows row by row (the fast path); the same as cutting each row to its
    fill, field by field, dtype included."""
    rng = np.random.default_rng(7)
    e, k, w, f = Engine(bundle, EngineConfig()), 5, bundle.window, len(bundle.features)
    cols = [
        rng.normal(size=(k, w)),
        rng.random((k, w)).astype(np.float32),
        rng.random((k, w)).astype(np.float32),
        rng.random((k, w)).astype(np.float32),
        rng.random((k, w)) < 0.3,
        rng.random((k, w)) < 0.3,
        rng.random((k, f)).astype(np.float32),
        rng.normal(size=(k, w)),
    ]
    keys, fill = [f"k{i}" for i in range(k)], np.full(k, w, np.int32)
    fast, cut = e.reports.full_windows(keys, fill, *cols), e.reports.cut_windows(keys, fill, *cols)
    assert len(fast) == len(cut) == k
    for a, b in zip(fast, cut, strict=True):
        for name in [fl.name for fl in dataclasses.fields(a)]:
            x, y = getattr(a, name), getattr(b, name)
            if isinstance(x, np.ndarray):
                assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), name
            else:
                assert x == y, name


def test_flush_reports_the_last_partial_window_and_nothing_twice(bundle, window_bundle, test_series) -> None:
    w = bundle.window
    n = 5 * w + 3
    cfg = EngineConfig(threshold="static")
    e = Engine(bundle, cfg)
    out = e.process([Event(test_series.key, test_series.timestamps[:n], test_series.values[:n])])
    longer = Engine(bundle, cfg).process([Event(test_series.key, test_series.timestamps, test_series.values)])
    tail = e.flush()
    assert [len(x.timestamps) for x in out.windows] == [w] * 5 and [
        len(x.timestamps) for x in tail.windows
    ] == [3]
    got = np.concatenate([x.scores for x in out.windows + tail.windows])
    # the flushed readings were decided on arrival: the same scores as in a longer stream, each decided on itself
    assert np.array_equal(got, np.concatenate([x.scores for x in longer.windows])[:n])
    assert np.array_equal(tail.windows[0].decided_at, test_series.timestamps[n - 3 : n])
    assert e.flush().windows == [] and e.counters["windows"] == 6
    # a whole-window model has nothing scored and waiting
    e = Engine(window_bundle, cfg)
    e.process([Event(test_series.key, test_series.timestamps[:n], test_series.values[:n])])
    assert e.flush().windows == []


def test_window_scored_bundles_group_invariantly(window_bundle, test_series) -> None:
    """A reconstruction-only bundle is scored by whole windows; grouping still does not matter."""
    cfg = EngineConfig(threshold="dynamic", dynamic_warmup=32, dynamic_history=64)
    n = 30 * window_bundle.window + 5
    one_by_one = feed(Engine(window_bundle, cfg), test_series, chunks(n, [1]))
    in_blocks = feed(Engine(window_bundle, cfg), test_series, chunks(n, [7, 3, 13, 1]))
    assert len(one_by_one[0]) == 30 * window_bundle.window
    assert np.array_equal(one_by_one[0], in_blocks[0]) and one_by_one[1] == in_blocks[1]


def spike_decisions(bundle, spike: int) -> tuple[int, list, np.ndarray]:
    """Feed a flat series with one spiked reading one reading per call; return the index of the call that
    opened an alert, the alerts, and the decided_at of every reported reading."""
    cfg = EngineConfig(
        threshold="static", static_threshold=50.0, smoothing=1.0, alert_open_after=1, alert_close_after=5
    )
    s = spiky(bundle, n=6 * bundle.window, spans=((spike, spike + 1),))
    e = Engine(bundle, cfg)
    opened_in, alerts, decided = -1, [], []
    for i in range(len(s)):
        out = e.process([Event(s.key, s.timestamps[i : i + 1], s.values[i : i + 1])])
        if any(a.status == "open" for a in out.alerts):
            opened_in = i
        alerts += out.alerts
        decided += [w.decided_at for w in out.windows]
    return opened_in, alerts, np.concatenate(decided)


def test_a_spike_is_decided_at_its_own_reading(bundle, window_bundle) -> None:
    w = bundle.window
    spike = 3 * w + 2  # early in a window
    opened_in, alerts, decided = spike_decisions(bundle, spike)
    assert opened_in == spike  # the call that delivers the spike opens the alert
    assert alerts[0].start == alerts[0].at == float(spike)  # (spiky series: timestamp = index)
    assert np.array_equal(decided, np.arange(len(decided), dtype=np.float64))  # each reading on arrival
    # a reconstruction-only bundle decides the same reading only when its window is full
    opened_in, alerts, decided = spike_decisions(window_bundle, spike)
    assert opened_in == 4 * w - 1 and alerts[0].start == float(spike) and alerts[0].at == 4 * w - 1
    assert decided[spike] == 4 * w - 1


def test_many_keys_in_one_batch_score_as_if_alone(bundle, test_series) -> None:
    n = 400
    alone = feed(Engine(bundle, EngineConfig()), test_series, chunks(n, [5]))[0]
    engine = Engine(bundle, EngineConfig())
    start = float(test_series.timestamps[0])
    others = [make_series(f"k{i}", n, len(bundle.features), seed=i, start=start) for i in range(5)]
    together = []
    for lo, hi in chunks(n, [5]):
        events = [Event(s.key, s.timestamps[lo:hi], s.values[lo:hi]) for s in [*others, test_series]]
        out = engine.process(events)
        assert all(b == 6 for b in out.batches)  # one batched model call per round, all keys in it
        together += [w.scores for w in out.windows if w.key == test_series.key]
    assert np.array_equal(alone, np.concatenate(together))


@pytest.mark.parametrize("scored", ["reading", "window"])
def test_calls_of_one_reading_per_key_equal_calls_with_keys_repeated(bundle, window_bundle, scored) -> None:
    """The daemon's live shape, a call holding one reading of each key (the engine's shorter path for it),
    gives the same windows, alerts, counters and snapshot bytes as the general path, where a key has several
    readings in a call. A stuck sensor, spikes and a level shift are mixed in."""
    from anomaly.engine.types import Readings

    model = bundle if scored == "reading" else window_bundle
    model.calibration["feature_max_run"] = [1] * len(model.features)
    cfg = EngineConfig(
        threshold="dynamic", dynamic_warmup=16, dynamic_history=32, alert_close_after=5, max_alert_readings=60
    )
    n, f = 160, len(model.features)
    series = [make_series(f"k{i}", n, f, seed=i, start=0.0) for i in range(12)]
    for i, s in enumerate(series[:4]):
        s.values[40 + 5 * i : 44 + 5 * i] += 40 * model.scaler.scale  # spikes
    series[4].values[60:80, 1] = series[4].values[60, 1]  # a stuck sensor
    series[5].values[70:] += 30 * model.scaler.scale  # a level shift
    msgs = [
        Event(s.key, s.timestamps[j : j + 1], s.values[j : j + 1].astype(np.float64), (s.key, j))
        for j in range(n)
        for s in series
    ]

    def run(size: int) -> tuple:
        engine, windows, alerts = Engine(model, cfg), [], []
        for lo in range(0, len(msgs), size):
            out = engine.process(Readings.from_events(msgs[lo : lo + size], f))
            windows += [
                (
                    w.key,
                    w.timestamps.tobytes(),
                    w.scores.tobytes(),
                    w.anomalous.tobytes(),
                    w.alert_open.tobytes(),
                )
                for w in out.windows
            ]
            alerts += [(a.id, a.status, a.at, a.reason, a.top_features) for a in out.alerts]
        return windows, alerts, engine.counters, engine.snapshot(), engine.keys()

    once = run(len(series))  # each call: every key once
    repeated = run(3 * len(series) + 5)  # each call: keys with 3-4 readings
    assert {a[3] for a in once[1]} >= {"normal", "level_shift"}
    assert once == repeated


@pytest.mark.parametrize("threshold", list(THRESHOLDS))
def test_snapshot_restore_mid_window_is_bit_identical(bundle, test_series, threshold) -> None:
    cfg = EngineConfig(threshold=threshold, max_alert_seconds=120.0, **SMALL)
    n, cut = len(test_series), 8 * 40 + 5  # mid-window
    straight = feed(Engine(bundle, cfg), test_series, chunks(n, [3]))
    first = Engine(bundle, cfg)
    a = feed(first, test_series, [(lo, hi) for lo, hi in chunks(cut, [3])])
    blob = first.snapshot()
    second = Engine(bundle, cfg)
    assert second.restore(blob) == [test_series.key]
    b = feed(second, test_series, [(lo + cut, hi + cut) for lo, hi in chunks(n - cut, [3])])
    assert np.array_equal(np.concatenate([a[0], b[0]]), straight[0])
    assert a[1] + b[1] == straight[1]
    assert second.snapshot() == feed_and_snapshot(bundle, cfg, test_series)


def feed_and_snapshot(bundle, cfg, series) -> bytes:
    e = Engine(bundle, cfg)
    feed(e, series, chunks(len(series), [3]))
    return e.snapshot()


@pytest.mark.parametrize(
    ("before", "after", "restores"),
    [
        ({"threshold": "static"}, {"threshold": "dynamic"}, True),  # the new kind's fields start fresh
        ({"threshold": "spot"}, {"threshold": "dspot"}, True),
        ({"threshold": "dynamic"}, {"threshold": "dynamic", "spot_init": 64, "spot_depth": 4}, True),
        ({"threshold": "spot"}, {"threshold": "spot", "dynamic_history": 64, "spot_depth": 4}, True),
        ({"threshold": "dynamic"}, {"threshold": "static"}, False),
        ({"threshold": "dspot"}, {"threshold": "spot"}, False),
        ({"threshold": "dynamic"}, {"threshold": "dynamic", "dynamic_history": 64}, False),
        ({"threshold": "spot"}, {"threshold": "spot", "spot_peaks": 64}, False),
    ],
)
def test_which_threshold_setting_changes_leave_a_snapshot_restorable(bundle, before, after, restores) -> None:
    """What the README's engine.threshold row says (it said any change of kind, or of dynamic_history or a SPOT
    size under any kind, made the state unrestorable): from static to another kind and from spot to dspot restore,
    so does a size setting of a kind not in use; another change of kind or of the kind's own sizes does not."""
    s = make_series("k", 40, len(bundle.features), seed=1)
    first = Engine(bundle, EngineConfig(**before))
    first.process([Event(s.key, s.timestamps, s.values)])
    second = Engine(bundle, EngineConfig(**after))
    if restores:
        assert second.restore(first.snapshot()) == ["k"]
    else:
        with pytest.raises(StateError, match="does not fit"):
            second.restore(first.snapshot())


def test_snapshot_of_chosen_keys_and_corruption(bundle) -> None:
    e = Engine(bundle, EngineConfig())
    for i in range(4):
        s = make_series(f"k{i}", 20, len(bundle.features), seed=i)
        e.process([Event(s.key, s.timestamps, s.values)])
    part = e.snapshot(["k1", "k3", "nope"])
    fresh = Engine(bundle, EngineConfig())
    assert fresh.restore(part) == ["k1", "k3"]
    assert fresh.snapshot(["k1", "k3"]) == part
    with pytest.raises(StateError, match="corrupted"):
        fresh.restore(part[:-3])
    with pytest.raises(StateError, match="corrupted"):
        fresh.restore(b"garbage")
    with pytest.raises(StateError, match="does not fit"):
        Engine(bundle, EngineConfig(threshold="spot")).restore(part)  # another kind keeps other state


# --- data hygiene ----------------------------------------------------------------------------------------------


def one(bundle, value=0.0, n=1):
    return np.full((n, len(bundle.features)), value)


def test_nan_refuses_only_that_reading(bundle) -> None:
    e = Engine(bundle, EngineConfig())
    e.process([Event("a", np.array([1.0, 2.0]), one(bundle, n=2))])
    bad = one(bundle, n=3)
    bad[1, 0] = np.nan
    out = e.process([Event("a", np.array([3.0, 4.0, 5.0]), bad, ref=("p", 7))])
    assert [(r.reason, r.count, r.whole, r.ref, r.timestamps.tolist()) for r in out.rejections] == [
        ("non_finite", 1, False, ("p", 7), [4.0])
    ]
    assert out.readings == 2 and e.store.arrays["last_ts"][e.store.slots["a"]] == 5.0
    before = e.snapshot()
    all_bad = one(bundle, n=2)
    all_bad[:, 0] = np.nan
    out = e.process([Event("a", np.array([6.0, 7.0]), all_bad)])
    assert [(r.count, r.whole) for r in out.rejections] == [(2, True)] and e.snapshot() == before
    inf = one(bundle)
    inf[0, 1] = np.inf
    assert e.process([Event("b", np.array([1.0]), inf)]).rejections[0].reason == "non_finite"
    assert "b" not in e.keys() and e.counters["rejected_non_finite"] == 4
    out = e.process([Event("a", np.array([np.nan, 8.0]), one(bundle, n=2))])
    assert [(r.reason, r.count, r.detail) for r in out.rejections] == [
        ("non_finite", 1, "timestamp is not finite")
    ]


@pytest.mark.parametrize("policy", ["reject", "ffill"])
def test_missing_values_give_the_same_results_in_blocks_of_any_size(bundle, test_series, policy) -> None:
    """Issue 9 item 2: one NaN used to refuse its whole block, so results depended on the block size."""
    s = dataclasses.replace(test_series, values=test_series.values.copy())
    n = 400
    s.values[[5, 6, 77, 200, 201, 202], 0] = np.nan
    s.values[300, :] = np.nan
    cfg = EngineConfig(nan_policy=policy)
    runs = []
    for sizes in ([1], [7, 3], [n]):
        e = Engine(bundle, cfg)
        scores, rejected = [], 0
        for lo, hi in chunks(n, sizes):
            out = e.process([Event(s.key, s.timestamps[lo:hi], s.values[lo:hi])])
            scores += [w.scores for w in out.windows]
            rejected += sum(r.count for r in out.rejections)
        runs.append((np.concatenate(scores), rejected, e.snapshot()))
    for scores, rejected, snap in runs[1:]:
        assert np.array_equal(scores, runs[0][0]) and rejected == runs[0][1] and snap == runs[0][2]
    if policy == "reject":
        assert runs[0][1] == 7
        ok = np.isfinite(s.values[:n]).all(axis=1)
        clean = Engine(bundle, cfg)
        out = clean.process([Event(s.key, s.timestamps[:n][ok], s.values[:n][ok])])
        assert np.array_equal(np.concatenate([w.scores for w in out.windows]), runs[0][0])
    else:
        assert runs[0][1] == 0


@pytest.mark.parametrize("huge", [1e25, 3.4e38, 1e300])
@pytest.mark.parametrize("columnar", [False, True])
def test_a_finite_reading_far_beyond_any_range_is_a_huge_score_that_decays(
    bundle, test_series, huge, columnar
):
    """A finite value no sensor reaches (1e25, float32's 3.4e38 "no value" sentinel, 1e300) is standardized within
    Z_LIMIT: its score is huge but finite, and the key's later scores return to those of the same stream without
    it. Before, its squared error overflowed to inf and the EWMA held the key's score at inf for good (1e50 and
    up also cast to an inf model input)."""
    ts, vals = test_series.timestamps[:400], test_series.values[:400].astype(np.float64)
    spiked = vals.copy()
    spiked[100, 0] = huge

    def scores(values):
        e = Engine(bundle, EngineConfig(threshold="static"))
        events = [Event("k", ts[i : i + 1], values[i : i + 1]) for i in range(len(ts))]
        feed = Readings.from_events(events, len(bundle.features)) if columnar else events
        out = e.process(feed)
        out.windows.extend(e.flush().windows)
        assert not out.rejections
        return np.concatenate([w.scores for w in out.windows])

    with np.errstate(all="raise"):
        got, clean = scores(spiked), scores(vals)
    assert np.isfinite(got).all() and len(got) == 400
    np.testing.assert_array_equal(got[:100], clean[:100])
    assert got[100] > 1e20 * clean[100]
    assert np.abs(got[-50:] - clean[-50:]).max() < 0.05  # 250 readings on: the imprint on the state has faded


def test_a_huge_reading_does_not_deafen_the_dynamic_threshold_to_a_later_fault(bundle) -> None:
    """One 1e25 reading, then a 20-sigma fault 400 readings later: the fault opens an alert as it does without
    the 1e25 (the spike's points before its alert opened were learnt by the dynamic threshold, which then stood
    at ~1e22 for hundreds of readings and let the fault pass)."""
    rng = np.random.default_rng(0)
    n, f = 1400, len(bundle.features)
    ts = np.arange(n) * 60.0 + 1.7e9
    normal = bundle.scaler.mean + rng.normal(0, 0.3, (n, f)) * bundle.scaler.scale
    normal[700:720] += 20 * bundle.scaler.scale
    starts = {}
    for spiked in (False, True):
        values = normal.copy()
        if spiked:
            values[300, 0] = 1e25
        out = Engine(bundle, EngineConfig()).process([Event("k", ts, values)])
        starts[spiked] = [(a.start - ts[0]) / 60 for a in out.alerts if a.status == "open"]
    assert starts == {False: [700.0], True: [300.0, 700.0]}


@pytest.mark.parametrize("threshold", ["spot", "dspot", "dynamic"])
def test_a_huge_reading_while_spot_calibrates_does_not_deafen_the_key(bundle, threshold) -> None:
    """One 1e25 at a key's 50th reading, before SPOT can alert (its first `spot_init` scores calibrate it, and
    no alert can shut the spike's smoothed imprint out): the fault 650 readings later opens an alert as it does
    without the 1e25. Before, the imprint (about 230 scores decaying from 1e22) made up the calibration
    sample, t stood at ~1e20 for good and the key never alerted again. The dynamic threshold warming up (its
    first `dynamic_warmup` scores) is guarded the same way: before, the imprint held its threshold at 1.2e9
    at reading 700, and the fault opened no alert."""
    rng = np.random.default_rng(0)
    n, f = 1400, len(bundle.features)
    ts = np.arange(n) * 60.0 + 1.7e9
    normal = bundle.scaler.mean + rng.normal(0, 0.3, (n, f)) * bundle.scaler.scale
    normal[700:720] += 20 * bundle.scaler.scale
    starts, last = {}, {}
    for spiked in (False, True):
        values = normal.copy()
        if spiked:
            values[50, 0] = 1e25
        out = Engine(bundle, EngineConfig(threshold=threshold)).process([Event("k", ts, values)])
        starts[spiked] = [(a.start - ts[0]) / 60 for a in out.alerts if a.status == "open"]
        last[spiked] = float(out.windows[-1].thresholds[-1])
    assert starts == {False: [700.0], True: [700.0]}
    assert last[True] == last[False] == 1.0  # spot_min: the bar of a key whose scores run low


def test_nan_forward_fill_policy(bundle) -> None:
    e = Engine(bundle, EngineConfig(nan_policy="ffill"))
    e.process([Event("a", np.array([1.0]), one(bundle, 2.5))])
    bad = one(bundle, 1.0)
    bad[0, 0] = np.nan
    out = e.process([Event("a", np.array([2.0]), bad)])
    assert out.rejections == [] and out.readings == 1
    row = e.store.slots["a"]
    assert e.store.arrays["last_values"][row][0] == 2.5 and e.store.arrays["last_values"][row][1] == 1.0
    first = one(bundle)
    first[0, 0] = np.nan
    assert e.process([Event("new", np.array([1.0]), first)]).rejections[0].reason == "non_finite"


def test_wrong_feature_count(bundle) -> None:
    e = Engine(bundle, EngineConfig())
    out = e.process([Event("a", np.array([1.0]), np.zeros((1, len(bundle.features) + 1)))])
    r = out.rejections[0]
    assert (r.reason, r.whole) == ("feature_count", True)
    assert f"expected {len(bundle.features)} features, got {len(bundle.features) + 1}" == r.detail
    assert len(e) == 0


def test_backwards_and_duplicate_timestamps_are_dropped_and_counted(bundle) -> None:
    e = Engine(bundle, EngineConfig())
    e.process([Event("a", np.array([10.0, 11.0]), one(bundle, n=2))])
    out = e.process([Event("a", np.array([9.0, 11.0, 12.0, 12.0, 13.0]), one(bundle, n=5))])
    reasons = {r.reason: (r.count, r.whole) for r in out.rejections}
    assert reasons == {"time_backwards": (1, False), "duplicate_timestamp": (2, False)}
    assert out.readings == 2 and e.counters["readings"] == 4
    keep = Engine(bundle, EngineConfig(duplicate_policy="keep"))
    keep.process([Event("a", np.array([10.0]), one(bundle))])
    assert keep.process([Event("a", np.array([10.0]), one(bundle))]).readings == 1


def test_backwards_and_duplicate_refusals_say_how_far_behind_the_keys_clock_they_are(bundle) -> None:
    """A `time_backwards` or `duplicate_timestamp` dead letter named no time at all (its `detail` header was
    empty), so an operator could not tell a clock gone back an hour from a reading a moment late or a resend."""
    e = Engine(bundle, EngineConfig())
    e.process([Event("a", np.array([1700003600.5]), one(bundle))])
    out = e.process([Event("a", np.array([1700000000.25, 1700003600.5, 1700003000.0]), one(bundle, n=3))])
    details = {r.reason: (r.count, r.detail) for r in out.rejections}
    assert details == {
        "time_backwards": (
            2,
            "timestamp 1700000000.25 is 3600.25 s before the key's last accepted reading (1700003600.5)",
        ),
        "duplicate_timestamp": (
            1,
            "timestamp 1700003600.5 is the key's last accepted reading's (engine.duplicate_policy = drop)",
        ),
    }


def test_long_gap_resets_the_key(bundle, test_series) -> None:
    cfg = EngineConfig(max_gap_seconds=1000.0)
    w = bundle.window
    s = test_series
    e = Engine(bundle, cfg)
    e.process([Event(s.key, s.timestamps[: w + 3], s.values[: w + 3])])
    late = s.timestamps[w + 3 : w + 3 + w] + 10_000.0
    out = e.process([Event(s.key, late, s.values[w + 3 : w + 3 + w])])
    assert e.counters["gap_resets"] == 1
    fresh = Engine(bundle, cfg).process([Event(s.key, late, s.values[w + 3 : w + 3 + w])])
    # the 3 readings before the gap were scored on arrival; the gap reports them as a short window, then the
    # encoder starts cold: same as a new key
    assert len(out.windows) == 2 and len(out.windows[0].errors) == 3
    assert np.array_equal(out.windows[0].timestamps, s.timestamps[w : w + 3])
    assert np.array_equal(out.windows[1].errors, fresh.windows[0].errors)


@pytest.mark.parametrize("gap_days", [0.5, 3.0])
def test_an_alert_open_at_a_gap_reset_stays_open_however_long_the_gap(bundle, gap_days) -> None:
    """A gap resets the key's encoder, partial window and smoothing, not its alert: the alert open before it
    closes after `alert_close_after` normal readings after it. `max_alert_seconds` (a day) counts observed time
    only, so a gap longer than that does not close it as a level shift (README, Data hygiene)."""
    rng = np.random.default_rng(0)
    n, f = 300, len(bundle.features)
    ts = np.arange(n) * 60.0
    values = bundle.scaler.mean + rng.normal(0, 0.05, (n, f)) * bundle.scaler.scale
    values[100:160] += 60 * bundle.scaler.scale  # the fault goes on after the gap, for 10 readings
    ts[150:] += gap_days * 86_400
    cfg = EngineConfig(threshold="static", static_threshold=1000.0, smoothing=1.0, max_gap_seconds=3600.0)
    e = Engine(bundle, cfg)
    out = e.process([Event("k", ts, values)])
    assert e.counters["gap_resets"] == 1
    got = [(a.status, int(np.searchsorted(ts, a.at)), a.reason) for a in out.alerts]
    assert got == [("open", 102, ""), ("closed", 189, "normal")]  # 30 normal readings after 159


def gap_fault(bundle, gap_at: int | None, n: int = 1000):
    """The README's measurement (Data hygiene): quiet readings a minute apart, a 20-sigma fault on one of the
    four features over readings 600-700, and a 3-day gap before reading `gap_at` (None: no gap)."""
    rng = np.random.default_rng(3)
    f = len(bundle.features)
    ts = np.arange(n) * 60.0
    values = bundle.scaler.mean + rng.normal(0, 0.05, (n, f)) * bundle.scaler.scale
    values[600:700, 1] += 20 * bundle.scaler.scale[1]
    if gap_at is not None:
        ts[gap_at:] += 3 * 86_400.0
    return ts, values


@pytest.mark.parametrize("model", ["forecast", "window"])
@pytest.mark.parametrize("split", [None, 640, 650, 660])
def test_a_fault_through_a_gap_longer_than_max_alert_seconds_is_one_alert(
    bundle, window_bundle, model, split
) -> None:
    """A sensor that goes offline during a fault for 3 days (longer than `max_alert_seconds`, a day) and comes
    back still faulty is still in the same alert, closed as `normal` when the fault ends, as without the gap:
    the level-shift timer counts observed time only, and the level EWMA does not decay over the gap (else the
    fault's level became the key's baseline and the fault's end opened a second alert that stayed open). Fed in
    one call, or split before, at or after the gap with a snapshot restored in between (the gaps counted so
    far are key state, restored bit for bit)."""
    b = bundle if model == "forecast" else window_bundle
    cfg = EngineConfig(threshold="static", max_gap_seconds=3600.0)

    def alerts(gap_at):
        ts, values = gap_fault(b, gap_at)
        e = Engine(b, cfg)
        resets = 0
        if split is None:
            out = [e.process([Event("k", ts, values)])]
        else:
            first = e.process([Event("k", ts[:split], values[:split])])
            snap = e.snapshot()
            e2 = Engine(b, cfg)
            e2.restore(snap)
            assert e2.snapshot() == snap
            if gap_at is not None and split > gap_at:  # mid-alert, after the gap: its seconds are counted
                assert e2.store.arrays["alert_gap"][e2.store.slots["k"]] == 3 * 86_400.0 + 60.0
            out = [first, e2.process([Event("k", ts[split:], values[split:])])]
            resets, e = e.counters["gap_resets"], e2
        got = [(a.status, int(np.searchsorted(ts, a.at)), a.reason) for o in out for a in o.alerts]
        return got, resets + e.counters["gap_resets"]

    gapped, resets = alerts(650)
    assert resets == 1
    assert [(s, r) for s, _, r in gapped] == [("open", ""), ("closed", "normal")]
    assert 600 <= gapped[0][1] < 650 and 700 <= gapped[1][1] < 800
    if model == "forecast":  # scored reading by reading: the same alert as without the gap
        assert gapped == alerts(None)[0]


@pytest.mark.parametrize("model", ["forecast", "window"])
def test_an_alert_open_through_a_gap_reports_the_gap_seconds_it_spans(bundle, window_bundle, model) -> None:
    """An alert whose key went silent for 3 days while it was open spans the gap (start before it, end or `at`
    after it), and nothing said so: an on-call engineer read end - start as 3 days of anomaly. Its records now
    carry `gap_seconds`, the seconds between `start` and `at` without a reading (intervals longer than
    engine.max_gap_seconds), so at - start - gap_seconds is the time it was in force and observed: the fault
    still there after the gap, or gone (the close hold after the gap; `end` before it). 0 without a gap; None
    where the engine does not count gaps (engine.max_alert_seconds = 0). Across a snapshot taken mid-alert
    after the gap too (the count is key state)."""
    b = bundle if model == "forecast" else window_bundle
    gap = 3 * 86_400.0 + 60.0  # the interval from reading 649 to 650

    def alerts(gap_at, back_normal=False, split=None, **settings):
        ts, values = gap_fault(b, gap_at)
        if back_normal:
            values[650:700, 1] -= 20 * b.scaler.scale[1]
        cfg = EngineConfig(threshold="static", max_gap_seconds=3600.0, **settings)
        e = Engine(b, cfg)
        out = []
        if split is not None:
            out.append(e.process([Event("k", ts[:split], values[:split])]))
            e, snap = Engine(b, cfg), e.snapshot()
            e.restore(snap)
        out.append(e.process([Event("k", ts[split or 0 :], values[split or 0 :])]))
        got = [a.to_json() for o in out for a in o.alerts]
        return [(a["status"], a["reason"], a["gap_seconds"]) for a in got], got

    through, records = alerts(650)
    assert through == [("open", "", 0.0), ("closed", "normal", gap)]
    closed = records[1]
    assert closed["start"] < 649 * 60.0 and closed["end"] > 650 * 60.0 + gap  # the span holds the gap
    assert alerts(650, split=660)[0] == through
    over, records = alerts(650, back_normal=True)
    assert over == [("open", "", 0.0), ("closed", "normal", gap)]
    assert records[1]["end"] < 650 * 60.0 < records[1]["at"] - gap  # the fault ended before the gap
    assert alerts(None)[0] == [("open", "", 0.0), ("closed", "normal", 0.0)]
    assert alerts(650, max_alert_seconds=0.0)[0] == [("open", "", None), ("closed", "normal", None)]


def test_an_evicted_alert_counts_its_keys_silence_up_to_the_eviction_as_a_gap(bundle) -> None:
    """A key that stops mid-alert is evicted after engine.ttl_seconds of other keys' event time; its alert closes
    (reason evicted) `at` the moment its TTL passed, its last reading + ttl_seconds (before: the event time the
    call reached, the end of j's message that passed it), and the silence before it, longer than engine.max_gap_seconds, is a gap of
    the alert's (`gap_seconds`), as a reading after it would have made it."""
    ts, values = gap_fault(bundle, None, n=2000)
    cfg = EngineConfig(threshold="static", max_gap_seconds=3600.0, ttl_seconds=7200.0)
    e = Engine(bundle, cfg)
    quiet = np.tile(bundle.scaler.mean, (2000, 1))
    out = e.process([Event("k", ts[:650], values[:650]), Event("j", ts[:650], quiet[:650])])
    for i in range(650, 2000, 50):  # j alone, past k's TTL
        out.alerts += e.process([Event("j", ts[i : i + 50], quiet[i : i + 50])]).alerts
    closed = [a for a in out.alerts if a.key == "k" and a.status == "closed"]
    assert [(a.reason, a.at, a.gap_seconds) for a in closed] == [("evicted", ts[649] + 7200.0, 7200.0)]


def test_the_level_does_not_decay_over_a_gap(bundle) -> None:
    """The settled level (which a level shift re-baselines on) of a key that comes back after a 3-day gap moves by
    one reading's step (engine.partial_shift_readings / 8 readings), not to the first reading after the gap (a
    constant of max_alert_seconds / 8 in event time forgot everything before such a gap)."""
    ts, values = gap_fault(bundle, 650)
    cfg = EngineConfig(threshold="static", max_gap_seconds=3600.0)
    e = Engine(bundle, cfg)
    e.process([Event("k", ts[:650], values[:650])])
    row = e.store.slots["k"]
    before = e.store.arrays["level"][row].astype(np.float64)
    e.process([Event("k", ts[650:651], values[650:651])])
    after = e.store.arrays["level"][row].astype(np.float64)
    v = (values[650] - bundle.scaler.mean) / bundle.scaler.scale
    assert v[1] - before[1] > 5  # the level was still moving towards the fault's when the gap came
    step = 1.0 - np.exp(-1.0 / (cfg.partial_shift_readings / 8.0))
    np.testing.assert_allclose(after, before + step * (v - before), rtol=0, atol=1e-5)


def without_field(data: bytes, name: str) -> bytes:
    """A snapshot as an engine without per-key state field `name` wrote it (the upgrade path)."""
    import json
    import struct

    from anomaly.engine.state import MAGIC, StateStore

    header, arrays = StateStore.read_snapshot(data)
    header["layout"]["extra"] = [e for e in header["layout"]["extra"] if e[0] != name]
    header["arrays"] = [spec for spec in header["arrays"] if spec["name"] != name]
    head = json.dumps(header, separators=(",", ":")).encode()
    parts = [arrays[spec["name"]].reshape(-1).view(np.uint8) for spec in header["arrays"]]
    return b"".join([MAGIC, struct.pack("<I", len(head)), head, *parts])


def test_a_snapshot_from_before_the_gap_count_restores_with_no_gap_counted(
    bundle, monkeypatch, caplog
) -> None:
    """Upgrade path for `alert_gap` (the gaps' seconds an open alert does not count): a snapshot written
    without it, mid-alert before a 3-day gap, restores (logged once) with nothing counted, and the fault through
    the gap is one alert closed as `normal`, as in one call; the restored state snapshots back bit for bit."""
    from anomaly.engine import state

    monkeypatch.setattr(state, "_REPORTED_ADDED", set())
    cfg = EngineConfig(threshold="static", max_gap_seconds=3600.0)
    ts, values = gap_fault(bundle, 650)
    want = Engine(bundle, cfg).process([Event("k", ts, values)]).alerts
    e = Engine(bundle, cfg)
    first = e.process([Event("k", ts[:640], values[:640])]).alerts
    snap = e.snapshot()
    old = without_field(snap, "alert_gap")
    assert len(old) == len(snap) - 8 - len(b',["alert_gap",[],"float64","zero"]') - len(
        b',{"name":"alert_gap","dtype":"float64","shape":[1]}'
    )
    new = Engine(bundle, cfg)
    with caplog.at_level("WARNING", logger="anomaly.engine.state"):
        assert new.restore(old) == ["k"]
    assert [r.getMessage() for r in caplog.records] == [
        "engine snapshot written without state field(s) alert_gap (by an older version, or with a threshold kind "
        "or policy that keeps less per-key state): restored with their initial values"
    ]
    assert new.snapshot() == snap
    after = new.process([Event("k", ts[640:], values[640:])]).alerts
    got = [(a.status, a.start, a.at, a.reason) for a in first + after]
    assert got == [(a.status, a.start, a.at, a.reason) for a in want]
    assert [a.reason for a in want] == ["", "normal"]


# --- thresholds and alerts -------------------------------------------------------------------------------------


def process_all(engine, batches):
    """Every batch through ``engine.process``: the engine, its evicted keys and its alerts as (id, status, at)."""
    evicted, alerts = [], []
    for b in batches:
        out = engine.process(b)
        evicted += out.evicted
        alerts += [(a.id, a.status, a.at) for a in out.alerts]
    return engine, evicted, alerts


def spiky(bundle, n=400, spans=((160, 200),), dip=None):
    s = make_series("unit", n, len(bundle.features), seed=5)
    noise = np.random.default_rng(0).normal(0, 0.05, s.values.shape)
    s.values[:] = bundle.scaler.mean + noise * bundle.scaler.scale  # quiet normal values (not stuck)
    for lo, hi in spans:
        s.values[lo:hi] += 60 * bundle.scaler.scale
    return s


def test_alert_opens_after_k_closes_after_m_and_never_refires(bundle) -> None:
    cfg = EngineConfig(
        threshold="static", static_threshold=1000.0, smoothing=1.0, alert_open_after=3, alert_close_after=10
    )
    s = spiky(bundle, spans=((160, 180), (183, 200)))  # a 3-point dip inside the anomaly (< m)
    e = Engine(bundle, cfg)
    alerts = []
    for lo, hi in chunks(len(s), [5]):
        alerts += e.process([Event(s.key, s.timestamps[lo:hi], s.values[lo:hi])]).alerts
    assert [a.status for a in alerts] == ["open", "closed"]
    opened, closed = alerts
    assert opened.id == closed.id == "unit@160000"
    assert opened.start == 160.0 and opened.at == 162.0  # 3rd consecutive anomalous point
    assert closed.end == 199.0 and closed.at == 209.0  # 10th normal point after the last anomalous one
    assert closed.peak_score >= opened.peak_score > 1000.0 and closed.threshold == 1000.0
    assert len(closed.top_features) == 3 and closed.model_version == bundle.version
    assert e.active_alerts == 0 and e.counters["alerts_opened"] == e.counters["alerts_closed"] == 1


def test_max_feature_score_is_the_largest_per_feature_ratio(bundle, test_series) -> None:
    """engine.score: `mean` = mean error / reference, `max_feature` = max_f(err_f / ref_f); smoothing 1.0 keeps
    the raw scores, so both equal a hand computation from the model's per-feature errors."""
    n, w = 40 * bundle.window, bundle.window
    ts, vals = test_series.timestamps[:n], test_series.values[:n].copy()
    vals[25 * w : 26 * w, 0] += 8 * bundle.scaler.scale[0]  # one feature of four moves
    runs = {
        score: Engine(bundle, EngineConfig(score=score, smoothing=1.0)).process([Event("k", ts, vals)])
        for score in ("mean", "max_feature")
    }
    scores = {k: np.concatenate([wd.scores for wd in out.windows]) for k, out in runs.items()}
    errors = np.concatenate([wd.errors for wd in runs["mean"].windows])
    assert np.array_equal(errors, np.concatenate([wd.errors for wd in runs["max_feature"].windows]))
    assert np.array_equal(scores["mean"], errors / np.float32(bundle.reference_error))
    err_f = series_errors(bundle.model, bundle.scaler.transform(vals))  # (n, F), the same stream in one call
    ref_f = np.asarray(bundle.feature_reference_error, np.float32)
    assert err_f.shape == (n, len(bundle.features)) and ref_f.shape == (len(bundle.features),)
    np.testing.assert_allclose(err_f.mean(axis=1), errors, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(scores["max_feature"], (err_f / ref_f).max(axis=1), rtol=1e-4, atol=1e-6)
    spike = slice(25 * w, 26 * w)
    assert scores["max_feature"][spike].max() > 2 * scores["mean"][spike].max()
    assert (scores["max_feature"] >= 0).all()


def test_max_feature_score_needs_a_per_feature_calibration(bundle) -> None:
    bundle.calibration.pop("feature_reference_error")
    Engine(bundle, EngineConfig())  # the default score does not need it
    with pytest.raises(BundleError, match="max_feature"):
        Engine(bundle, EngineConfig(score="max_feature"))


def test_dynamic_threshold_waits_for_warmup(bundle) -> None:
    w = bundle.window
    cfg = EngineConfig(threshold="dynamic", dynamic_warmup=10 * w, dynamic_history=512, smoothing=1.0)
    early = spiky(bundle, spans=((2 * w, 3 * w),))
    e = Engine(bundle, cfg)
    out = e.process([Event(early.key, early.timestamps, early.values)])
    first = [wd for wd in out.windows][:10]
    assert not any(wd.anomalous.any() for wd in first)  # huge errors, but still warming up
    late = spiky(bundle, n=40 * w, spans=((30 * w, 31 * w),))
    e2 = Engine(bundle, cfg)
    out2 = e2.process([Event(late.key, late.timestamps, late.values)])
    flagged = np.concatenate([wd.timestamps[wd.anomalous] for wd in out2.windows])
    assert len(flagged) and flagged.min() >= 30 * w  # fires on the anomaly after warm-up
    thr = np.concatenate([wd.thresholds for wd in out2.windows])
    assert (thr >= cfg.dynamic_min).all()


def test_eviction_caps_keys_lru_and_ttl(bundle) -> None:
    e = Engine(bundle, EngineConfig(max_keys=5, ttl_seconds=0))
    for i in range(10):
        e.process([Event(f"k{i}", np.array([float(i)]), one(bundle))])
        assert len(e) == min(i + 1, 5)
    e.process([Event("k6", np.array([20.0]), one(bundle))])  # touch: k6 becomes most recent
    e.process([Event("new", np.array([21.0]), one(bundle))])
    assert e.keys() == ["k7", "k8", "k9", "k6", "new"]  # k5 was least recently used
    assert e.counters["evicted"] == 6
    ttl = Engine(bundle, EngineConfig(ttl_seconds=100))
    ttl.process([Event("old", np.array([0.0]), one(bundle)), Event("young", np.array([50.0]), one(bundle))])
    out = ttl.process([Event("young", np.array([120.0]), one(bundle))])
    assert out.evicted == ["old"] and ttl.keys() == ["young"]


@pytest.mark.parametrize("order", [("early", "late"), ("late", "early")])
def test_a_key_idle_past_the_ttl_is_evicted_whatever_order_the_keys_arrived_in(bundle, order) -> None:
    """The TTL is event time since a key's last reading, not its place in the LRU order: a key that arrived
    after another but carries an older time (a lagging partition) expires when its own time is up. Before, the
    scan stopped at the first young key in LRU order and kept `early` held when it had arrived last."""
    at = {"early": 0.0, "late": 1000.0}
    e = Engine(bundle, EngineConfig(ttl_seconds=1000))
    for key in order:
        e.process([Event(key, np.array([at[key]]), one(bundle))])
    out = e.process([Event("now", np.array([1600.0]), one(bundle))])
    assert out.evicted == ["early"] and e.keys() == ["late", "now"]
    assert e.counters["evicted"] == 1


def test_the_key_cap_evicts_no_more_than_it_must_once_expired_keys_are_gone(bundle) -> None:
    """With `max_keys` 2, a young key, an expired one and a new one: only the expired key goes (two are left,
    within the cap). Before, the young key was evicted for the cap first, then the expired one as well."""
    e = Engine(bundle, EngineConfig(ttl_seconds=1000, max_keys=2))
    e.process([Event("young", np.array([1000.0]), one(bundle))])
    e.process([Event("expired", np.array([0.0]), one(bundle))])
    out = e.process([Event("new", np.array([1600.0]), one(bundle))])
    assert out.evicted == ["expired"] and e.keys() == ["young", "new"]


@pytest.mark.parametrize("threshold", list(THRESHOLDS))
def test_compacting_the_store_after_a_peak_changes_nothing_but_its_size(bundle, threshold) -> None:
    """A call of many new keys grows the store; compact() gives the rows back. The engine that compacted
    scores, alerts, evicts and snapshots exactly as its twin that did not (a call's outputs of different keys
    come in row order, which moves), and its held rows lie in LRU order."""
    cfg = EngineConfig(threshold=threshold, max_keys=8, ttl_seconds=0, **SMALL)
    n, f = 320, len(bundle.features)
    series = [make_series(f"s{i}", n, f, seed=i) for i in range(6)]
    # a peak of 300 new keys, read before the series' readings of the same call: they are the least recently
    # used at its end and evicted; the series' keys and their state stay
    peak = [Event(f"new{i}", np.array([i / 1000]), one(bundle)) for i in range(300)]
    twins = [Engine(bundle, cfg), Engine(bundle, cfg)]
    got: list[list] = [[], []]
    for i, (lo, hi) in enumerate(chunks(n, [7, 1, 12])):
        events = [Event(s.key, s.timestamps[lo:hi], s.values[lo:hi]) for s in series]
        for e, out in zip(twins, got, strict=True):
            res = e.process(peak + events if i == 10 else events)
            # per key in order; across keys a call's outputs follow the rows, which compaction moves
            out.append(sorted([(w.key, w.scores.tobytes()) for w in res.windows], key=lambda x: x[0]))
            out.append(sorted(a.id + a.status for a in res.alerts))
            out.append(sorted(res.evicted))
        if i == 10:  # mid-stream, mid-window: one of the twins compacts
            assert [e.store.capacity for e in twins] == [512, 512]
            assert {k for k in twins[0].keys() if k.startswith("s")} == {s.key for s in series}
            assert twins[0].compact() == 512 - 64 and twins[0].store.capacity == 64
            assert list(twins[0].store.slots.values()) == list(range(len(twins[0])))
            assert twins[0].compact() == 0  # nothing left to give back
    assert got[0] == got[1] and sum(map(len, got[0][::3])) > 200
    assert twins[0].keys() == twins[1].keys()
    assert twins[0].snapshot() == twins[1].snapshot()
    assert twins[0].active_alerts == twins[1].active_alerts


def test_compacting_gives_back_the_key_maps_peak_table_too(bundle) -> None:
    """A dict keeps the table of its peak when keys leave (deleting never shrinks it), and every snapshot looks
    each key up in it: after a peak of new keys, compact() leaves the key map the size of one built from the keys
    held, in the same LRU order."""
    e = Engine(bundle, EngineConfig(max_keys=8))
    e.process([Event(f"new{i}", np.array([float(i)]), one(bundle)) for i in range(5000)])
    held = e.keys()
    assert (len(held), e.compact()) == (8, 8192 - 64)
    fresh = OrderedDict.fromkeys(held, 0)
    assert (e.keys(), sys.getsizeof(e.store.slots)) == (held, sys.getsizeof(fresh))


def test_a_store_that_restored_keys_over_the_cap_shrinks_back_once_evicted_to_the_cap(bundle) -> None:
    """A daemon at its cap (max_keys 100, 128 rows) takes over another member's partitions: it restores 50 more
    keys (256 rows), and its next call evicts back to 100. compact() kept the 256 rows for good (it shrank only a
    store at most an eighth full: 262,144 rows for 100,000 keys in the daemon, 1.5-1.8 GiB until the pod
    restarted); now it gives back the 128 rows the cap does not need. Scoring and snapshots stay those of the
    twin that kept its rows."""
    f = len(bundle.features)
    cfg = EngineConfig(max_keys=100, ttl_seconds=0)
    other = Engine(bundle, EngineConfig(max_keys=150))
    other.process([Event(f"o{i}", np.array([1.0, 2.0]), np.full((2, f), i / 50)) for i in range(50)])
    taken = other.snapshot()
    twins = [Engine(bundle, cfg), Engine(bundle, cfg)]
    mine = [Event(f"k{i}", np.array([1.0, 2.0]), np.full((2, f), i / 100)) for i in range(100)]
    later = [Event(f"{p}{i}", np.array([3.0]), np.full((1, f), 0.5)) for p in "ko" for i in range(0, 50, 7)]
    for e in twins:
        e.process(mine)
        assert (e.store.capacity, len(e)) == (128, 100)
        e.restore(taken)
        assert (e.store.capacity, len(e)) == (256, 150)
        assert len(e.process(later[:1]).evicted) == 50
    assert twins[0].compact() == 128 and twins[0].store.capacity == 128
    assert twins[0].compact() == 0 and twins[1].store.capacity == 256
    outs = [e.process(later) for e in twins]
    assert [sorted((w.key, w.scores.tobytes()) for w in o.windows) for o in outs[:1]] == [
        sorted((w.key, w.scores.tobytes()) for w in o.windows) for o in outs[1:]
    ]
    assert outs[0].evicted == outs[1].evicted and twins[0].snapshot() == twins[1].snapshot()


@pytest.mark.parametrize("max_keys", [100, 116, 117, 120, 128])
def test_compacting_between_calls_of_churn_at_the_cap_does_not_thrash(bundle, max_keys) -> None:
    """Keys churn at the cap: every call brings new keys and evicts as many, and the store is compacted between
    calls (the daemon's idle moments). A store compacted to exactly its keys' power of two (128 rows for 128
    keys) would grow (a full copy) at the next call and shrink after it, every call: a shrink keeps an eighth
    of the rows free, so the store settles at one size and stays there. (The store before session 20 never
    shrank at these sizes: this guards the shrink that gives back an over-cap restore's rows.)"""
    f = len(bundle.features)
    e = Engine(bundle, EngineConfig(max_keys=max_keys, ttl_seconds=0))
    sizes = []
    for c in range(40):
        e.process([Event(f"c{c}-{i}", np.array([float(c)]), np.zeros((1, f))) for i in range(12)])
        e.compact()
        sizes.append(e.store.capacity)
    # 12 new keys over 117 held need 129 rows: 256, which 128 rows would hold no longer with an eighth free
    expected = 128 if max_keys + 12 <= 128 else 256
    assert len(e) == max_keys and sizes[10:] == [expected] * 30
    assert sizes == sorted(sizes)  # grown while the keys came, never shrunk


def test_a_restore_that_does_not_fit_in_memory_restores_nothing(bundle, monkeypatch) -> None:
    """A restore takes rows for all its new keys first, in one growth (64 rows to 256 for 150 keys, not 128 then
    256, copying the rows of the first growth). A growth that does not fit in memory left the keys restored
    before it (the first 64) held, the rest not; now nothing of the snapshot is restored and the store is as it
    was."""
    from anomaly.engine import state
    from anomaly.engine.state import StateMemoryError

    f = len(bundle.features)
    other = Engine(bundle, EngineConfig())
    other.process([Event(f"o{i}", np.array([1.0]), np.full((1, f), i / 150)) for i in range(150)])
    taken = other.snapshot()
    e = Engine(bundle, EngineConfig(max_keys=100))
    monkeypatch.setattr(state, "np", NoRoomFor(128))
    with pytest.raises(StateMemoryError):
        e.restore(taken)
    assert (e.store.capacity, len(e), e.keys()) == (64, 0, [])
    monkeypatch.undo()
    grown: list[int] = []
    monkeypatch.setattr(e.store, "_grow", lambda n, grow=e.store._grow: grown.append(n) or grow(n))
    assert e.restore(taken) == other.keys() and grown == [256]
    assert e.snapshot() == taken


def test_rows_a_store_grows_to_take_memory_only_once_a_key_uses_them(bundle) -> None:
    """A store grown to 16,384 rows holds its keys' state in few of them until keys come (a restore over the cap
    doubles it for a moment); writing zeros into every new row made all of them resident at once (262,144 rows,
    904 MiB, for 150,000 restored keys). The fields that start as zero are left as `np.zeros` allocated them,
    unwritten, so the operating system maps a row's pages when a key first uses it."""

    def rss() -> int:
        status = open("/proc/self/status").read()
        return int(next(ln for ln in status.splitlines() if ln.startswith("VmRSS")).split()[1]) * 1024

    e = Engine(bundle, EngineConfig(threshold="dynamic", dynamic_history=4096))
    before = rss()
    e.store.reserve([f"k{i}" for i in range(10_000)])
    nbytes = sum(a.nbytes for a in e.store.arrays.values())
    assert (e.store.capacity, nbytes > 16_384 * 16_384) == (16_384, True)
    assert rss() - before < nbytes / 4  # most of them the 4,096-score histories
    fresh = Engine(bundle, EngineConfig(threshold="dynamic", dynamic_history=4096)).store
    assert all(np.array_equal(a[:64], fresh.arrays[n], equal_nan=True) for n, a in e.store.arrays.items())
    assert all(np.array_equal(a[:1], a[-1:], equal_nan=True) for a in e.store.arrays.values())


def test_reload_keeps_state_for_same_architecture(bundle) -> None:
    e = Engine(bundle, EngineConfig())
    e.process([Event("a", np.array([1.0, 2.0]), one(bundle, n=2))])
    assert e.reload(bundle) is True and e.keys() == ["a"]
    other = dataclasses.replace(bundle, features=[*bundle.features[1:], bundle.features[0]])
    assert e.reload(other) is False and e.keys() == []
    assert e.counters["reloads_kept"] == 1 and e.counters["reloads_reset"] == 1


def test_a_reload_that_resets_state_retires_every_key_under_the_model_that_opened_its_alert(bundle) -> None:
    """A reload that resets per-key state (other features, say) retires every key into `retired` as an eviction does,
    under the model in use until then: an open alert closes with reason `evicted` and the old version. It was the
    daemon's job, and the daemon decided by architecture and features alone: a reload that reset the state for
    another layout dropped the open alerts without a close."""
    s = make_series("k", 200, len(bundle.features), seed=3)
    base = {"threshold": "static", "static_threshold": 1e-9, "smoothing": 1.0, "max_alert_seconds": 0.0}
    e = Engine(bundle, EngineConfig(**base))
    opened = e.process([Event(s.key, s.timestamps, s.values)]).alerts
    assert [a.status for a in opened] == ["open"] and e.active_alerts == 1
    other = dataclasses.replace(
        bundle,
        features=[*bundle.features[1:], bundle.features[0]],
        meta={**bundle.meta, "model_version": "v2"},
    )
    retired = EngineOutput()
    assert e.reload(other, retired) is False and e.keys() == []
    closes = [(a.id, a.status, a.reason, a.model_version, a.at) for a in retired.alerts]
    assert closes == [(opened[0].id, "closed", "evicted", bundle.version, float(s.timestamps[-1]))]
    assert retired.evicted == ["k"] and e.counters["evicted"] == 1
    kept = EngineOutput()
    assert e.reload(other, kept) is True and kept.alerts == [] and kept.evicted == []


def test_a_refused_event_leaves_the_rest_of_the_stream_unchanged(bundle, test_series) -> None:
    """Bad events take the policy path, good ones the array path; neither may disturb the other."""
    s = test_series
    n = 300
    clean = feed(Engine(bundle, EngineConfig()), s, chunks(n, [4]))[0]
    e = Engine(bundle, EngineConfig())
    got = []
    other = make_series("other", n, len(bundle.features), seed=9, start=float(s.timestamps[0]))
    for i, (lo, hi) in enumerate(chunks(n, [4])):
        bad_vals = s.values[lo:hi].copy()
        bad_vals[:, 0] = np.nan
        events = [
            Event(s.key, s.timestamps[lo:hi], s.values[lo:hi]),
            Event(other.key, other.timestamps[lo:hi], other.values[lo:hi]),
        ]
        if i % 5 == 2:
            events.insert(1, Event(s.key, s.timestamps[lo:hi] + 0.5, bad_vals))  # NaN: refused whole
            events.append(Event(other.key, other.timestamps[lo : lo + 1] - 100.0, other.values[lo : lo + 1]))
        out = e.process(events)
        got += [w.scores for w in out.windows if w.key == s.key]
    assert np.array_equal(np.concatenate(got), clean)
    assert e.counters["rejected_non_finite"] > 0 and e.counters["rejected_time_backwards"] > 0


def test_evicting_a_key_closes_its_open_alert(bundle) -> None:
    cfg = EngineConfig(
        threshold="static", static_threshold=1000.0, smoothing=1.0, alert_open_after=3, max_keys=1
    )
    s = spiky(bundle, n=64, spans=((0, 64),))
    e = Engine(bundle, cfg)
    opened = e.process([Event(s.key, s.timestamps, s.values)]).alerts
    assert [a.status for a in opened] == ["open"]
    out = e.process([Event("other", np.array([100.0]), one(bundle))])
    assert out.evicted == ["unit"]
    assert [(a.id, a.status, a.end) for a in out.alerts] == [(opened[0].id, "closed", 63.0)]
    assert e.active_alerts == 0


@pytest.mark.parametrize("cap", ["ttl", "max_keys"])
def test_an_evicted_key_reports_the_readings_waiting_for_its_report_window(bundle, cap) -> None:
    """Readings scored on arrival wait in the key's state until its report window fills. A key evicted (idle
    past the TTL, or least recently used above max_keys) reports them first, as a short window, like the end of
    a replay: they were decided, and a replay of series that end at different times used to lose the last
    readings of every series that ended more than a TTL before the others."""
    w, f = bundle.window, len(bundle.features)
    a, b = make_series("a", w + 3, f, seed=1), make_series("b", w + 3, f, seed=2)
    cfg = EngineConfig(ttl_seconds=100.0) if cap == "ttl" else EngineConfig(max_keys=1, ttl_seconds=0)
    e = Engine(bundle, cfg)
    first = e.process([Event("a", a.timestamps, a.values)])
    assert [(x.key, len(x.timestamps)) for x in first.windows] == [("a", w)]
    later = Event("b", b.timestamps + (1000.0 if cap == "ttl" else 0.0), b.values)
    out = e.process([later])
    assert out.evicted == ["a"]
    short = [x for x in out.windows if x.key == "a"]
    assert len(short) == 1 and np.array_equal(short[0].timestamps, a.timestamps[w:])
    ref = Engine(bundle, EngineConfig())  # the same scores and decisions as a replay of a alone, flushed
    alone = ref.process([Event("a", a.timestamps, a.values)]).windows + ref.flush().windows
    assert np.array_equal(short[0].scores, alone[-1].scores)
    assert np.array_equal(short[0].anomalous, alone[-1].anomalous)


def test_a_key_cap_eviction_closes_an_open_alert_at_the_event_time_reached(bundle) -> None:
    """The key cap (engine.max_keys) evicts a key that has not expired: it has no expiry moment, so its open
    alert closes at the event time reached (the other key's reading, 150), not at its last reading + TTL (163);
    the same key expired (TTL) closes at 163."""
    s = spiky(bundle, n=64, spans=((0, 64),))
    closes = []
    for max_keys, at in ((1, 150.0), (10, 170.0)):
        cfg = EngineConfig(
            threshold="static", static_threshold=1000.0, smoothing=1.0, ttl_seconds=100.0, max_keys=max_keys
        )
        e = Engine(bundle, cfg)
        out = e.process([Event("k", s.timestamps, s.values)])  # 0..63: opens an alert
        assert [a.status for a in out.alerts] == ["open"]
        out = e.process([Event("j", np.array([at]), one(bundle))])
        closes += [(out.evicted, [(a.key, a.status, a.at, a.reason) for a in out.alerts])]
    assert closes == [
        (["k"], [("k", "closed", 150.0, "evicted")]),  # the cap: j's reading, k last seen 87 s before
        (["k"], [("k", "closed", 163.0, "evicted")]),  # the TTL: k's last reading 63 + 100
    ]


def test_a_key_expiring_mid_call_is_handled_as_with_one_message_per_call(bundle) -> None:
    """Event-time TTL between messages, not per call: b's jump expires a, so a's next reading in the same call
    starts a fresh key, and an open alert closed by expiry carries the moment its TTL passed (last reading 63 +
    TTL 100; before, 175, the event time of the expiring message, which depended on how messages were cut into
    calls)."""
    from anomaly.engine.types import Readings

    cfg = EngineConfig(threshold="static", static_threshold=1000.0, smoothing=1.0, ttl_seconds=100.0)
    s = spiky(bundle, n=64, spans=((0, 64),))
    msgs = [
        Event(s.key, s.timestamps, s.values),  # opens an alert, last seen at 63
        Event("a", np.array([70.0]), one(bundle)),
        Event("b", np.array([71.0]), one(bundle)),
        Event("b", np.array([175.0]), one(bundle)),  # expires unit (63) and a (70)
        Event("a", np.array([176.0]), one(bundle, 1.0)),
        Event("b", np.array([177.0]), one(bundle)),
    ]

    def run(batches):
        e, evicted, alerts = process_all(Engine(bundle, cfg), batches)
        return (
            evicted,
            alerts,
            e.snapshot(sorted(e.keys())),
            int(e.store.arrays["readings"][e.store.slots["a"]]),
        )

    single = run([[m] for m in msgs])
    assert single[0] == ["unit", "a"] and single[3] == 1 and single[1][-1][1:] == ("closed", 163.0)
    assert run([msgs]) == single
    assert run([msgs[:2], Readings.from_events(msgs[2:], len(bundle.features))]) == single


def test_a_poll_already_past_the_ttl_is_one_call_and_equals_one_message_per_call(bundle) -> None:
    """A lagging partition of a backfill: every reading of the poll is older than the clock minus the TTL, so
    the clock stands still and its keys expire as soon as eviction reaches them. With every key read once, one
    call (not message by message, which costs a whole engine call per message) gives the same state,
    evictions and alerts (closed when each key's TTL passed, its last reading + 100; before, at the clock, 1000);
    only the interleaving of different keys' events differs."""
    from anomaly.engine.types import Readings

    cfg = EngineConfig(
        threshold="static", static_threshold=1000.0, smoothing=1.0, ttl_seconds=100.0, max_keys=4
    )
    front = [Event("front", np.array([1000.0]), one(bundle))]
    lagging = []
    for i in range(3):  # blocks that open an alert, each in its single message
        s = spiky(bundle, n=64, spans=((0, 64),))
        lagging.append(Event(f"s{i}", np.arange(64.0) + 100.0 * i, s.values))
    lagging += [Event(f"q{i}", np.array([500.0 + i]), one(bundle)) for i in range(5)]

    def run(batches):
        e, evicted, alerts = process_all(Engine(bundle, cfg), batches)
        return sorted(evicted), sorted(alerts), e.snapshot(sorted(e.keys())), e.counters

    engine = Engine(bundle, cfg)
    engine.process(front)
    poll = Readings.from_events(lagging, len(bundle.features))
    assert not engine._may_expire(poll)  # taken as one call

    single = run([front, *[[m] for m in lagging]])
    # every lagging key expires; `front` (young) stays. Before, the TTL scan stopped at `front` (least
    # recently used but young), the lagging keys piled up behind it and the key cap evicted `front`.
    assert single[0] == sorted(m.key for m in lagging)
    assert [a[1:] for a in single[1] if a[1] == "closed"] == [
        ("closed", 163.0),
        ("closed", 263.0),
        ("closed", 363.0),
    ]
    assert run([front, poll]) == single
    assert run([front, lagging]) == single  # Events: message by message, as before


def test_a_call_mixing_a_leading_and_a_lagging_partition_is_split_not_sent_message_by_message(bundle) -> None:
    """A batch of two partitions: a lagging one reads keys already held, then a leading one moves the clock more
    than the TTL past them, so the whole call may expire keys mid-call (and close an open alert, at the moment
    its TTL passed: 263 + 100). It is processed in halves, each as one call where it can be: the
    same state, evictions and alerts as one message per call, in far fewer model calls."""
    from anomaly.engine.types import Readings

    cfg = EngineConfig(
        threshold="static", static_threshold=1000.0, smoothing=1.0, ttl_seconds=100.0, max_keys=64
    )
    s = spiky(bundle, n=64, spans=((0, 64),))
    start = [Event("s", np.arange(64.0) + 200.0, s.values)]  # opens an alert
    start += [Event(f"g{i}", np.array([264.0 + i]), one(bundle)) for i in range(8)]
    lagging = [Event(f"g{i % 8}", np.array([300.0 + i]), one(bundle, 0.1 * i)) for i in range(16)]
    leading = [Event(f"f{i}", np.array([1000.0 + i]), one(bundle)) for i in range(16)]
    mixed = [*lagging, *leading]

    def run(batches):
        e, evicted, alerts = process_all(Engine(bundle, cfg), batches)
        return sorted(evicted), sorted(alerts), e.snapshot(sorted(e.keys())), e.counters

    poll = Readings.from_events(mixed, len(bundle.features))
    assert [(ev.key, ev.timestamps.tolist()) for ev in poll.messages(3, 20).events()] == [
        (ev.key, ev.timestamps.tolist()) for ev in mixed[3:20]
    ]
    engine = Engine(bundle, cfg)
    engine.process(start)
    assert engine._may_expire(poll)  # as one call it could expire keys mid-call
    calls = len(engine.process(poll).batches)

    single = run([start, *[[m] for m in mixed]])
    assert single[0] == sorted(["s", *(f"g{i}" for i in range(8))])
    assert [a[1:] for a in single[1] if a[1] == "closed"] == [("closed", 363.0)]
    assert run([start, poll]) == single
    assert run([start, mixed]) == single
    assert 0 < calls <= 8 < len(mixed)  # message by message: one model call per message


def test_a_poll_in_columns_equals_one_event_at_a_time(bundle, test_series) -> None:
    """The daemon's columnar input (Readings, one message per reading) against the simplest feeding: each
    message alone through process(). Bad readings (NaN, backwards, duplicate, long gap) are mixed in."""
    from anomaly.engine.types import Readings

    n = 240
    series = [test_series] + [
        make_series(f"k{i}", n, len(bundle.features), seed=i, start=float(test_series.timestamps[0]))
        for i in range(4)
    ]
    messages = []
    for j in range(n):
        for s in series:
            ts, vals = s.timestamps[j : j + 1].copy(), s.values[j : j + 1].astype(np.float64)
            if j % 41 == 7:
                vals[0, 1] = np.nan
            if j % 53 == 9:
                ts -= 5.0  # backwards
            if j % 67 == 3 and j:
                ts[0] = s.timestamps[j - 1]  # duplicate
            if j >= 150 and s.key == "k1":
                ts += 50_000.0  # a gap longer than max_gap (the key resets), shorter than the TTL
            messages.append(Event(s.key, ts, vals, ref=len(messages)))

    def collect(engine, batches):
        windows, alerts, refused = {}, [], []
        for b in batches:
            out = engine.process(b)
            for w in out.windows:
                windows.setdefault(w.key, []).append(w.scores.tobytes() + w.timestamps.tobytes())
            alerts += [a.id + a.status for a in out.alerts]
            refused += [(r.key, r.reason, r.count, r.whole, r.ref) for r in out.rejections]
        state = engine.snapshot(sorted(engine.keys()))
        return windows, sorted(alerts), sorted(refused), state, engine.counters["gap_resets"]

    cfg = EngineConfig(threshold="dynamic", dynamic_warmup=16, dynamic_history=32)
    single = collect(Engine(bundle, cfg), [[m] for m in messages])
    polls = [
        Readings.from_events(messages[lo:hi], len(bundle.features))
        for lo, hi in chunks(len(messages), [50, 7, 333])
    ]
    columns = collect(Engine(bundle, cfg), polls)
    assert columns == single
    assert {r[1] for r in single[2]} == {"non_finite", "time_backwards", "duplicate_timestamp"}
    assert single[4] == 1 and len(single[1]) > 0


def test_a_level_shift_closes_after_max_alert_seconds_and_a_later_spike_alerts_again(bundle) -> None:
    """A sensor settles at a new level 60 sigma away: the alert closes as a level shift after
    max_alert_seconds, the key re-baselines (the new level is normal), and a later spike on top alerts again."""
    w = bundle.window
    s = spiky(bundle, n=60 * w, spans=())
    s.values[10 * w :, 0] += 60 * bundle.scaler.scale[0]  # lasting shift from t = 80 s
    s.values[45 * w : 47 * w] += 60 * bundle.scaler.scale  # a spike on the new level
    cfg = EngineConfig(threshold="static", static_threshold=100.0, smoothing=1.0, max_alert_seconds=100.0)
    e, alerts = Engine(bundle, cfg), []
    for lo, hi in chunks(len(s), [7]):
        alerts += e.process([Event(s.key, s.timestamps[lo:hi], s.values[lo:hi])]).alerts
    got = [(a.status, a.start, a.reason) for a in alerts]
    assert got[:3] == [("open", 80.0, ""), ("closed", 80.0, "level_shift"), ("open", 360.0, "")]
    assert alerts[1].at == 180.0 and got[3:] == [("closed", 360.0, "normal")]
    assert e.counters["level_shifts"] == 1 and e.active_alerts == 0
    never = Engine(bundle, dataclasses.replace(cfg, max_alert_seconds=0.0, max_alert_readings=0))
    kept = never.process([Event(s.key, s.timestamps, s.values)]).alerts
    assert [(a.status, a.start) for a in kept] == [("open", 80.0)]  # without the policy it never closes


# A static threshold no shifted reading stays under, and a level-shift close at an alert's 101st reading (no time
# limit), for the level-shift tests below.
SHIFT_AT_101 = EngineConfig(
    threshold="static",
    static_threshold=100.0,
    smoothing=1.0,
    max_alert_seconds=0.0,
    max_alert_readings=101,
    max_gap_seconds=600.0,
)


@pytest.mark.parametrize("step", [1.0, 60.0])
def test_a_level_shift_closes_after_max_alert_readings_whatever_the_clock(bundle, step) -> None:
    """The same 60-sigma shift with readings 1 s or 1 min apart and no time limit: the alert closes as a level
    shift at its 101st reading either way, the key re-baselines and a later spike alerts again. A snapshot taken
    while the alert is open restores its length, so the restored engine closes it at the same reading."""
    w = bundle.window
    s = spiky(bundle, n=60 * w, spans=())
    s.values[10 * w :, 0] += 60 * bundle.scaler.scale[0]  # lasting shift from reading 80
    s.values[45 * w : 47 * w] += 60 * bundle.scaler.scale  # a spike on the new level
    s.timestamps[:] = s.timestamps * step
    cfg = SHIFT_AT_101
    e, alerts = Engine(bundle, cfg), []
    for lo, hi in chunks(len(s), [7]):
        alerts += e.process([Event(s.key, s.timestamps[lo:hi], s.values[lo:hi])]).alerts
    got = [(a.status, a.start / step, a.at / step, a.reason) for a in alerts]
    assert got == [
        ("open", 80.0, 82.0, ""),
        ("closed", 80.0, 180.0, "level_shift"),  # reading 180 is the alert's 101st
        ("open", 360.0, 362.0, ""),
        ("closed", 360.0, 405.0, "normal"),
    ]
    assert e.counters["level_shifts"] == 1
    first = Engine(bundle, cfg)
    before = first.process([Event(s.key, s.timestamps[:150], s.values[:150])]).alerts
    restored = Engine(bundle, cfg)
    restored.restore(first.snapshot())
    after = restored.process([Event(s.key, s.timestamps[150:], s.values[150:])]).alerts
    assert [(a.status, a.start, a.at, a.reason) for a in before + after] == [
        (a.status, a.start, a.at, a.reason) for a in alerts
    ]


@pytest.mark.parametrize("moved", ["one", "all"])
def test_a_partial_level_shift_closes_when_a_minority_of_features_moved(bundle, moved) -> None:
    """engine.partial_shift_readings, no other limit: one feature of four settles 60 sigma away, so the alert
    closes as a level shift at its 101st reading, only that feature re-baselines and a later spike alerts again
    (in blocks of 7 or all at once, and from a snapshot taken mid-alert, the same alerts). When every feature moved it is not a partial
    shift: the alert stays open."""
    w = bundle.window
    assert len(bundle.features) == 4
    s = spiky(bundle, n=60 * w, spans=())
    cols = [0] if moved == "one" else list(range(4))
    s.values[10 * w :, cols] += 60 * bundle.scaler.scale[cols]  # lasting shift from reading 80
    s.values[45 * w : 47 * w] += 60 * bundle.scaler.scale  # a spike on the new level
    cfg = EngineConfig(
        threshold="static",
        static_threshold=100.0,
        smoothing=1.0,
        max_alert_seconds=0.0,
        partial_shift_readings=101,
    )
    e, alerts = Engine(bundle, cfg), []
    for lo, hi in chunks(len(s), [7]):
        alerts += e.process([Event(s.key, s.timestamps[lo:hi], s.values[lo:hi])]).alerts
    got = [(a.status, a.start, a.at, a.reason) for a in alerts]
    if moved == "all":
        assert got == [("open", 80.0, 82.0, "")] and e.counters["level_shifts"] == 0
        return
    assert got == [
        ("open", 80.0, 82.0, ""),
        ("closed", 80.0, 180.0, "level_shift"),  # reading 180 is the alert's 101st
        ("open", 360.0, 362.0, ""),
        ("closed", 360.0, 405.0, "normal"),
    ]
    assert (e.store.arrays["offset"][e.store.slots[s.key]] != 0).tolist() == [True, False, False, False]
    one_pass = Engine(bundle, cfg).process([Event(s.key, s.timestamps, s.values)]).alerts
    assert [(a.status, a.start, a.at, a.reason) for a in one_pass] == got  # however the readings are grouped
    first = Engine(bundle, cfg)
    before = first.process([Event(s.key, s.timestamps[:150], s.values[:150])]).alerts
    restored = Engine(bundle, cfg)
    restored.restore(first.snapshot())
    after = restored.process([Event(s.key, s.timestamps[150:], s.values[150:])]).alerts
    assert [(a.status, a.start, a.at, a.reason) for a in before + after] == got


def test_a_snapshot_from_before_the_alert_count_restores_with_the_count_starting_there(
    bundle, monkeypatch, caplog
) -> None:
    """Upgrade path: an engine without `alert_len` (no readings limit: the layout before the partial level shift
    became a default) snapshots a key with an open alert; an engine with the partial shift restores it (logged)
    with the count at 0, so the alert closes as a level shift at the 101st reading after the restore. A snapshot
    of another model's dimensions, or one holding a field this engine lacks, is still refused."""
    from anomaly.engine import state

    monkeypatch.setattr(state, "_REPORTED_ADDED", set())
    w = bundle.window
    s = spiky(bundle, n=60 * w, spans=())
    s.values[10 * w :, 0] += 60 * bundle.scaler.scale[0]  # one of four features settles 60 sigma away at 80
    s.values[45 * w : 47 * w] += 60 * bundle.scaler.scale
    base = {"threshold": "static", "static_threshold": 100.0, "smoothing": 1.0, "max_alert_seconds": 0.0}
    old = Engine(bundle, EngineConfig(**base, partial_shift_readings=0))
    assert "alert_len" not in old.store.arrays
    opened = old.process([Event(s.key, s.timestamps[:150], s.values[:150])]).alerts
    new = Engine(bundle, EngineConfig(**base, partial_shift_readings=101))
    with caplog.at_level("WARNING", logger="anomaly.engine.state"):
        assert new.restore(old.snapshot()) == [s.key]
        new.restore(old.snapshot())  # the same upgrade again: logged once
    assert [r.getMessage() for r in caplog.records] == [
        "engine snapshot written without state field(s) alert_len (by an older version, or with a threshold kind "
        "or policy that keeps less per-key state): restored with their initial values"
    ]
    after = new.process([Event(s.key, s.timestamps[150:], s.values[150:])]).alerts
    got = [(a.status, a.start, a.at, a.reason) for a in opened + after]
    assert got == [
        ("open", 80.0, 82.0, ""),
        ("closed", 80.0, 250.0, "level_shift"),  # 150..250: the alert's 101st reading since the restore
        ("open", 360.0, 362.0, ""),
        ("closed", 360.0, 405.0, "normal"),
    ]
    with pytest.raises(StateError, match="does not fit"):  # a field this engine does not keep
        old.restore(new.snapshot())


def test_a_window_model_closes_a_level_shift_after_max_alert_readings_whatever_the_clock(
    window_bundle,
) -> None:
    """Whole-window scoring: the level settles and the alert closes as a level shift at the same reading with
    readings 1 s or 1 h apart (no time limit), and the re-baselined key alerts again on a later spike."""
    w = window_bundle.window
    got = []
    for step in (1.0, 3600.0):
        s = spiky(window_bundle, n=60 * w, spans=())
        s.values[10 * w :, 0] += 60 * window_bundle.scaler.scale[0]
        s.values[45 * w : 47 * w] += 60 * window_bundle.scaler.scale
        s.timestamps[:] = s.timestamps * step
        cfg = EngineConfig(
            threshold="static",
            static_threshold=100.0,
            smoothing=1.0,
            max_alert_seconds=0.0,
            max_alert_readings=100,
            max_gap_seconds=4000.0,
        )
        alerts = Engine(window_bundle, cfg).process([Event(s.key, s.timestamps, s.values)]).alerts
        got.append([(a.status, a.start / step, a.at / step, a.reason) for a in alerts])
    assert got[0] == got[1]
    assert [(st, start, reason) for st, start, _, reason in got[0]][:3] == [
        ("open", 80.0, ""),
        ("closed", 80.0, "level_shift"),
        ("open", 360.0, ""),
    ]


@pytest.mark.parametrize("kind", ["forecast", "window"])
def test_after_a_level_shift_closes_both_model_kinds_flag_the_same_readings(
    bundle, window_bundle, kind
) -> None:
    """`anomalous` (replay's --predict point) is the verdict the alert lifecycle acted on. After a level shift
    closes an alert, the key waits for its re-baseline at the next window without a verdict: a model scored on
    arrival marked the waiting readings normal, while a whole-window model marked the rest of the closing window
    anomalous (score above the threshold) though its lifecycle ignored them; so the same stream gave
    --predict point other predictions by model kind. Now both mark readings 181-183 (after the close at the
    alert's 101st reading, 180, to the window's end) normal, and every other reading by its score."""
    b = bundle if kind == "forecast" else window_bundle
    w = b.window
    s = spiky(b, n=30 * w, spans=())
    s.values[10 * w :, 0] += 60 * b.scaler.scale[0]  # lasting shift from reading 80
    cfg = SHIFT_AT_101
    out = Engine(b, cfg).process([Event(s.key, s.timestamps, s.values)])
    assert [(a.status, a.at, a.reason) for a in out.alerts][:2] == [
        ("open", 82.0 if kind == "forecast" else 87.0, ""),
        ("closed", 180.0 if kind == "forecast" else 183.0, "level_shift"),  # a window decides at its end
    ]
    ts = np.concatenate([x.timestamps for x in out.windows])
    above = np.concatenate([x.scores > x.thresholds for x in out.windows])
    flagged = np.concatenate([x.anomalous for x in out.windows])
    assert ts.tolist() == list(map(float, range(len(s))))
    assert np.flatnonzero(above != flagged).tolist() == [181, 182, 183]
    assert above[181:184].all() and not flagged[181:184].any()


def test_a_window_model_closes_a_partial_level_shift_and_keeps_a_whole_one_open(window_bundle) -> None:
    """Whole-window scoring: one feature of four settling 60 sigma away closes as a level shift once the alert is
    100 readings long and the re-baselined key alerts again on a later spike; all four moving stays open."""
    w = window_bundle.window
    cfg = EngineConfig(
        threshold="static",
        static_threshold=100.0,
        smoothing=1.0,
        max_alert_seconds=0.0,
        partial_shift_readings=100,
    )
    got = {}
    for moved in ([0], [0, 1, 2, 3]):
        s = spiky(window_bundle, n=60 * w, spans=())
        s.values[10 * w :, moved] += 60 * window_bundle.scaler.scale[moved]
        s.values[45 * w : 47 * w] += 60 * window_bundle.scaler.scale
        alerts = Engine(window_bundle, cfg).process([Event(s.key, s.timestamps, s.values)]).alerts
        got[len(moved)] = [(a.status, a.start, a.reason) for a in alerts]
    assert got[1][:3] == [("open", 80.0, ""), ("closed", 80.0, "level_shift"), ("open", 360.0, "")]
    assert got[4] == [("open", 80.0, "")]


def test_a_stuck_sensor_alerts_and_a_quantized_one_holding_as_long_does_not(bundle) -> None:
    """Training data: features 0-1 continuous, 2-3 the same kind of signal but reported in steps (each value
    held for 20 readings). Live, one key's feature 0 freezes for 30 readings and another key's feature 2 holds a
    value for 30 readings: only the first is stuck (30 >= 8 for a never-repeating sensor, 30 < 2 x 20)."""
    rng = np.random.default_rng(0)
    train = rng.normal(0, 1, (400, 4))
    train[:, 2:] = np.repeat(rng.normal(0, 1, (20, 2)), 20, axis=0)
    assert max_runs([train]).tolist() == [1, 1, 20, 20]
    bundle.calibration["feature_max_run"] = max_runs([train]).tolist()
    cfg = EngineConfig(threshold="static", static_threshold=1000.0, smoothing=1.0, alert_close_after=10)

    def live(frozen: int) -> np.ndarray:
        v = bundle.scaler.mean + rng.normal(0, 1, (30 * bundle.window, 4)) * bundle.scaler.scale
        v[:, 2:] = np.repeat(v[::20, 2:], 20, axis=0)[
            : len(v)
        ]  # quantized features hold each value 20 readings
        v[100:130, frozen] = v[100, frozen]
        return v

    ts = np.arange(30 * bundle.window, dtype=np.float64)
    e = Engine(bundle, cfg)
    out = e.process([Event("stuck", ts, live(0)), Event("quantized", ts, live(2))])
    assert [(a.key, a.status, a.start, a.end, a.at) for a in out.alerts] == [
        ("stuck", "open", 107.0, None, 109.0),  # from the 8th identical reading; open after 3 such points
        ("stuck", "closed", 107.0, 129.0, 139.0),  # the last frozen reading; 10 normal points later
    ]
    assert e.counters["alerts_opened"] == 1
    # the frozen sensor is named first, marked stuck: its error share alone is about nothing (before, the alert
    # named the features beside it); by the close it moves again, and the shares alone name the features
    opened, closed = out.alerts
    assert opened.top_features[0] == {
        "feature": bundle.features[0],
        "share": opened.top_features[0]["share"],
        "stuck": True,
    }
    rest = opened.top_features[1:]
    assert [t["share"] for t in rest] == sorted((t["share"] for t in rest), reverse=True)
    assert not any("stuck" in t for t in closed.top_features)
    frozen = live(0)  # reading by reading, as a daemon may get them: the same alerts, named alike
    whole = Engine(bundle, cfg).process([Event("stuck", ts, frozen)]).alerts
    one = Engine(bundle, cfg)
    single = [
        al
        for i in range(len(ts))
        for al in one.process([Event("stuck", ts[i : i + 1], frozen[i : i + 1])]).alerts
    ]
    assert [a.to_json() for a in single] == [a.to_json() for a in whole]
    assert whole[0].top_features[0]["stuck"] is True
    # a frozen sensor of a real model has about no error share: named first all the same, then the shares
    contrib = np.array([0.01, 0.5, 0.3, 0.19])
    stuck = np.array([True, False, False, False])
    named = e.alerts.alert("k", "open", 0.0, None, 0.0, 9.0, 1.0, contrib, stuck=stuck).top_features
    assert named == [
        {"feature": bundle.features[0], "share": 0.01, "stuck": True},
        {"feature": bundle.features[1], "share": 0.5},
        {"feature": bundle.features[2], "share": 0.3},
    ]
    by_share = e.alerts.alert("k", "open", 0.0, None, 0.0, 9.0, 1.0, contrib).top_features
    assert [t["feature"] for t in by_share] == [bundle.features[i] for i in (1, 2, 3)]  # what alerts named
    off = Engine(bundle, dataclasses.replace(cfg, stuck_min_run=0))
    assert off.process([Event("stuck", ts, live(0))]).alerts == []


def test_a_flag_that_holds_is_not_a_stuck_sensor(bundle) -> None:
    """Training: feature 3 is a 0/1 command flag that switches every 10 readings (2 distinct values, longest run
    10). Live it holds 1 for 300 readings: the stuck rule leaves it alone (fewer than stuck_min_distinct training
    values), unless the engine is told to watch features with 2 distinct values."""
    rng = np.random.default_rng(1)
    train = rng.normal(0, 1, (400, 4))
    train[:, 3] = np.repeat(np.arange(40) % 2, 10)
    assert distinct_values([train]).tolist() == [400, 400, 400, 2] and max_runs([train])[3] == 10
    bundle.calibration["feature_max_run"] = max_runs([train]).tolist()
    bundle.calibration["feature_distinct"] = distinct_values([train]).tolist()
    v = bundle.scaler.mean + rng.normal(0, 1, (20 * bundle.window, 4)) * bundle.scaler.scale
    v[:, 3] = bundle.scaler.mean[3] + bundle.scaler.scale[3]
    ts = np.arange(len(v), dtype=np.float64)
    cfg = EngineConfig(threshold="static", static_threshold=1000.0, smoothing=1.0)
    assert Engine(bundle, cfg).process([Event("flag", ts, v)]).alerts == []
    watched = Engine(bundle, dataclasses.replace(cfg, stuck_min_distinct=2)).process([Event("flag", ts, v)])
    assert [(a.status, a.start) for a in watched.alerts] == [("open", 19.0)]  # 2 x 10 identical readings


def test_a_near_constant_feature_gets_a_floored_reference_error(bundle) -> None:
    bundle.calibration["feature_reference_error"] = [
        1e-6,
        2.0,
        4.0,
        4.0,
    ]  # feature 0 barely moved in training
    e = Engine(bundle, EngineConfig(score="max_feature"))
    assert e.feature_reference is not None
    assert e.feature_reference.tolist() == [0.30000001192092896, 2.0, 4.0, 4.0]  # 0.1 x median 3.0
    raw = Engine(bundle, EngineConfig(score="max_feature", feature_reference_floor=0.0)).feature_reference
    assert raw is not None and raw[0] == np.float32(1e-6)


def test_row_gather_and_scatter_helpers_equal_fancy_indexing() -> None:
    """put_rows / take_rows (the store's fast row copies) write and read the same bytes as column[rows]."""
    from anomaly.engine.state import put_rows, take_rows

    rng = np.random.default_rng(0)
    for shape, dtype in [
        ((40, 6), "float32"),
        ((40, 2, 8), "float32"),
        ((40, 5), "bool"),
        ((40, 3), "int32"),
    ]:
        for values_of in (lambda v: v, lambda v: v.astype("float64"), lambda v: np.asfortranarray(v)):
            column = rng.normal(size=shape).astype(dtype)
            expected = column.copy()
            rows = rng.permutation(40)[:17]
            values = values_of(rng.normal(size=(17, *shape[1:])).astype(dtype))
            expected[rows] = values
            put_rows(column, rows, values)
            assert column.tobytes() == expected.tobytes()
            assert take_rows(column, rows).tobytes() == expected[rows].tobytes()


def test_readings_of_no_message_are_no_events() -> None:
    """An empty poll's columns give no events (it raised a zip length error); one message gives one."""
    from anomaly.engine.types import Readings

    empty = Readings([], np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 3)), [])
    assert empty.events() == []
    one = Readings(["k"], np.zeros(1, np.int64), np.ones(1, np.int64), np.ones(1), np.ones((1, 3)), ["ref"])
    (event,) = one.events()
    assert (event.key, event.timestamps.tolist(), event.values.tolist(), event.ref) == (
        "k",
        [1.0],
        [[1.0] * 3],
        "ref",
    )


def test_a_dynamic_snapshot_from_before_the_warm_up_guard_restores_and_scores_alike(
    bundle, monkeypatch, caplog
) -> None:
    """Upgrade path for `dyn_doubt` (session 16): a snapshot of the dynamic threshold's state written without it
    (by the engine before the guard) restores, logged once, with the guard clear, and the key goes on exactly as
    in the engine that wrote it (no huge reading: the guard never acts). An engine from before cannot restore a
    snapshot holding it."""
    from anomaly.engine import state
    from anomaly.thresholds import DynamicThreshold, push_history

    monkeypatch.setattr(state, "_REPORTED_ADDED", set())
    s = spiky(bundle, n=600, spans=((400, 440),))
    rest = [Event(s.key, s.timestamps[300:], s.values[300:])]
    with monkeypatch.context() as before:  # the dynamic threshold as it was: no `dyn_doubt`, no guard
        before.setattr(
            DynamicThreshold,
            "fields",
            lambda self: {
                "hist": ((self.cfg.dynamic_history,), "float32", "zero"),
                "pushed": ((), "int64", "zero"),
            },
        )
        before.setattr(
            DynamicThreshold,
            "update_rows",
            lambda self, a, rows, scores, anomalous, open_pts: push_history(
                a["hist"], a["pushed"], scores, ~open_pts, rows
            ),
        )
        old = Engine(bundle, EngineConfig())
        assert "dyn_doubt" not in old.store.arrays
        old.process([Event(s.key, s.timestamps[:300], s.values[:300])])
        snap = old.snapshot()
        want = old.process(rest)
    new = Engine(bundle, EngineConfig())
    with caplog.at_level("WARNING", logger="anomaly.engine.state"):
        assert new.restore(snap) == [s.key]
    assert [r.getMessage() for r in caplog.records] == [
        "engine snapshot written without state field(s) dyn_doubt (by an older version, or with a threshold kind "
        "or policy that keeps less per-key state): restored with their initial values"
    ]
    got = new.process(rest)
    assert len(got.windows) == len(want.windows) > 0
    assert [w.scores.tobytes() + w.thresholds.tobytes() for w in got.windows] == [
        w.scores.tobytes() + w.thresholds.tobytes() for w in want.windows
    ]
    assert [(a.status, a.start, a.at) for a in got.alerts] == [(a.status, a.start, a.at) for a in want.alerts]
    assert len(got.alerts) > 0
    with pytest.raises(StateError, match="does not fit"):
        old.restore(new.snapshot())


# --- clock domains (the daemon's partitions) ---------------------------------------------------------------------


def in_domain(events, domain: str, n_features: int) -> Readings:
    """Events as one partition's messages (the daemon's source names each partition's clock domain)."""
    r = Readings.from_events(events, n_features)
    r.domains = ((0, domain),)
    return r


def test_a_lagging_domains_keys_expire_by_its_own_clock_not_the_leading_ones(bundle) -> None:
    """A backfill of two partitions read one after the other: "lead" is a day ahead of "lag" in event time.
    Each partition is its own clock domain, so lag's key is not evicted after each message (the old single
    clock evicted it: every message scored as a new key's), and expires only once lag's own event time passes
    its last reading by more than the TTL; its open alert then closes at the moment that happened, its last
    reading + TTL (163; before, lag's clock, 170)."""
    f = len(bundle.features)
    cfg = EngineConfig(threshold="static", static_threshold=1000.0, smoothing=1.0, ttl_seconds=100.0)
    e = Engine(bundle, cfg)
    e.process(in_domain([Event("front", np.array([100_000.0]), one(bundle))], "in:0", f))
    s = spiky(bundle, n=64, spans=((0, 64),))
    out = e.process(in_domain([Event("k", s.timestamps, s.values)], "in:1", f))  # 0..63: opens an alert
    assert out.evicted == [] and [a.status for a in out.alerts] == ["open"]
    assert (e.clock("in:0"), e.clock("in:1"), e.max_ts) == (100_000.0, 63.0, 100_000.0)
    out = e.process(in_domain([Event("k2", np.array([150.0]), one(bundle))], "in:1", f))  # k: 87 s idle
    assert out.evicted == [] and sorted(e.keys()) == ["front", "k", "k2"]
    out = e.process(in_domain([Event("k2", np.array([170.0]), one(bundle))], "in:1", f))  # k: 107 s idle
    assert out.evicted == ["k"] and [(a.status, a.at, a.reason) for a in out.alerts] == [
        ("closed", 163.0, "evicted")
    ]
    assert sorted(e.keys()) == ["front", "k2"] and e.clock("in:0") == 100_000.0  # lead's key stays: own clock
    # a key takes the domain of its latest message (partitions added): k2 now reads on in:0, far ahead
    e.process(in_domain([Event("k2", np.array([100_001.0]), one(bundle))], "in:0", f))
    assert sorted(e.keys()) == ["front", "k2"]
    e.process(in_domain([Event("front", np.array([100_200.0]), one(bundle))], "in:0", f))
    assert e.keys() == ["front"]  # k2 now expires by in:0's clock


def test_a_poll_of_several_domains_equals_each_domains_messages_one_by_one(bundle) -> None:
    """One call holding several partitions' messages (the daemon's batches) gives the same evictions, alerts
    and state as every message in its own call; the leading partition does not expire the lagging one's keys,
    while a key of the leading partition idle past the TTL does expire mid-call."""
    f = len(bundle.features)
    cfg = EngineConfig(threshold="static", static_threshold=1000.0, smoothing=1.0, ttl_seconds=100.0)
    s = spiky(bundle, n=64, spans=((0, 64),))
    lag = [
        Event("s", s.timestamps, s.values),
        *[Event(f"g{i % 4}", np.array([64.0 + i]), one(bundle)) for i in range(8)],
    ]
    lead = [
        Event("old", np.array([5000.0]), one(bundle)),
        *[Event(f"f{i}", np.array([5200.0 + i]), one(bundle)) for i in range(8)],
    ]
    poll = Readings.concat([in_domain(lag, "in:1", f), in_domain(lead, "in:0", f)], f)
    assert poll.domain_runs() == [(0, 9, "in:1"), (9, 18, "in:0")]

    def run(batches):
        e, evicted, alerts = process_all(Engine(bundle, cfg), batches)
        return sorted(evicted), sorted(alerts), e.snapshot(sorted(e.keys())), e.counters

    one_by_one = run([in_domain([m], "in:1", f) for m in lag] + [in_domain([m], "in:0", f) for m in lead])
    assert one_by_one[0] == ["old"]  # lag's keys (seen 63..71) are not expired by lead's clock (5207)
    assert run([poll]) == one_by_one
    assert run([poll.messages(0, 5), poll.messages(5, 18)]) == one_by_one


def test_clock_domains_survive_a_snapshot_and_an_old_snapshot_restores(bundle) -> None:
    """A checkpoint of one partition carries its clock; restored, the partition's keys expire exactly as in the
    engine that wrote it. A snapshot from before clock domains (one "max_ts", the newest of every partition)
    restored for a partition starts its clock at its keys' newest reading."""
    f = len(bundle.features)
    cfg = EngineConfig(ttl_seconds=100.0)
    e = Engine(bundle, cfg)
    e.process(in_domain([Event("front", np.array([100_000.0]), one(bundle))], "in:0", f))
    e.process(
        in_domain(
            [Event("a", np.array([10.0]), one(bundle)), Event("b", np.array([60.0]), one(bundle))], "in:1", f
        )
    )
    data = e.snapshot(["a", "b"], domain="in:1")
    # a snapshot from before clock domains: header {"max_ts": newest of all partitions}, no "clocks"
    header, _ = e.store.read_snapshot(data)
    old = e.store.snapshot(
        ["a", "b"], {"model_version": header["meta"]["model_version"], "max_ts": 100_000.0}
    )
    r = Engine(bundle, cfg)
    assert r.restore(data, domain="in:1") == ["a", "b"] and r.clock("in:1") == 60.0 and r.max_ts == 60.0
    nxt = in_domain([Event("b", np.array([115.0]), one(bundle))], "in:1", f)
    assert r.process(nxt).evicted == e.process(nxt).evicted == ["a"]
    # every key and clock at once (the daemon's --state-out): each key keeps its domain
    whole = Engine(bundle, cfg)
    whole.restore(e.snapshot())
    assert (whole.clock("in:0"), whole.clock("in:1")) == (100_000.0, 115.0)
    later = in_domain([Event("b", np.array([200.0]), one(bundle))], "in:1", f)
    assert whole.process(later).evicted == [] and sorted(whole.keys()) == ["b", "front"]
    o = Engine(bundle, cfg)
    assert o.restore(old, domain="in:1") == ["a", "b"] and o.clock("in:1") == 60.0
    p = Engine(bundle, cfg)
    p.restore(old)  # no partition named: the default domain, from "max_ts", as before
    assert p.clock("") == 100_000.0 and p.keys() == ["a", "b"]


def test_a_partition_assigned_again_takes_its_checkpoints_clock_not_the_one_this_engine_reached(
    bundle,
) -> None:
    """A partition handed back to a member that owned it before: the member reached a later event time there
    than the checkpoint it restores from (records it read and did not checkpoint); clocks only move forward, so
    the daemon forgets the partition's clock before the restore (`reset_clock`), else the restored keys would
    expire by a time the checkpoint never reached."""
    f = len(bundle.features)
    cfg = EngineConfig(ttl_seconds=100.0)
    e = Engine(bundle, cfg)
    e.process(in_domain([Event("a", np.array([10.0]), one(bundle))], "in:1", f))
    checkpoint = e.snapshot(["a"], domain="in:1")
    e.process(in_domain([Event("b", np.array([500.0]), one(bundle))], "in:1", f))  # not checkpointed
    e.drop(e.keys())  # revoked
    e.reset_clock("in:1")
    e.restore(checkpoint, domain="in:1")
    assert e.clock("in:1") == 10.0
    nxt = in_domain([Event("a", np.array([60.0]), one(bundle))], "in:1", f)
    assert e.process(nxt).evicted == [] and e.keys() == ["a"]


def test_settings_difference_names_only_what_other_engine_settings_make_unrestorable(
    bundle, window_bundle
) -> None:
    """What the daemon checks before it restores or writes anything: the restore's own words for a snapshot of
    this model's dimensions that other [engine] settings cannot take, and None for one that restores (fields
    added), another model's (its reset is intended) or an unreadable one (refused at the restore, as ever)."""
    s = make_series("k", 40, len(bundle.features), seed=1)
    dyn = Engine(bundle, EngineConfig(threshold="dynamic"))
    dyn.process([Event(s.key, s.timestamps, s.values)])
    static = Engine(bundle, EngineConfig(threshold="static"))
    shorter = Engine(bundle, EngineConfig(threshold="dynamic", dynamic_history=64))
    for engine in (static, shorter):
        with pytest.raises(StateError) as refused:
            engine.restore(dyn.snapshot())
        prefix = "snapshot state does not fit this engine: "
        assert engine.settings_difference(dyn.snapshot()) == str(refused.value)[len(prefix) :]
    assert dyn.settings_difference(static.snapshot()) is None  # static -> dynamic: fields added
    assert dyn.settings_difference(dyn.snapshot()) is None
    assert Engine(window_bundle, EngineConfig(threshold="static")).settings_difference(dyn.snapshot()) is None
    assert static.settings_difference(b"not a snapshot") is None
    assert static.settings_difference(dyn.snapshot()[:20]) is None


def test_a_snapshot_that_does_not_fit_says_which_state_differs(bundle, window_bundle) -> None:
    """A checkpoint refused as bad_state printed both whole layouts (about 1.6 KB of JSON per partition) and never
    said what changed; now the differing fields or dimensions, and the settings that shape them."""
    s = make_series("k", 40, len(bundle.features), seed=1)
    dyn = Engine(bundle, EngineConfig(threshold="dynamic"))
    dyn.process([Event(s.key, s.timestamps, s.values)])
    with pytest.raises(StateError) as static:
        Engine(bundle, EngineConfig(threshold="static")).restore(dyn.snapshot())
    fields = [
        name
        for name, *_ in dyn.store.layout.extra
        if name not in Engine(bundle, EngineConfig(threshold="static")).store.arrays
    ]
    assert len(fields) >= 2
    assert str(static.value).startswith(
        f"snapshot state does not fit this engine: field {fields[0]} is not kept here; field {fields[1]} is not kept here"
    )
    assert str(static.value).endswith(
        "(the [engine] settings that shape per-key state differ from the ones it was written with: threshold kind, "
        "dynamic_history, spot_init, spot_peaks, spot_depth, or a level-shift or stuck-sensor policy)"
    )
    assert len(str(static.value)) < 500
    with pytest.raises(
        StateError, match=r"field hist is float32\[\d+\] in the snapshot, float32\[\d+\] here"
    ):
        Engine(bundle, EngineConfig(threshold="dynamic", dynamic_history=64)).restore(dyn.snapshot())
    with pytest.raises(
        StateError,
        match=r"^snapshot state does not fit this engine: model dimensions differ \(.*window \d+ in the snapshot, \d+ here\): another model's state$",
    ):
        Engine(window_bundle, EngineConfig(threshold="dynamic")).restore(dyn.snapshot())


@pytest.mark.parametrize(
    ("threshold", "setting"),
    [("dynamic", "dynamic_history"), ("spot", "spot_peaks"), ("dspot", "spot_depth")],
)
def test_a_per_key_history_too_large_for_memory_is_a_config_error_naming_it(
    bundle, threshold, setting
) -> None:
    """`dynamic_history = 100000000000` (a few zeros too many) ended replay and consume with numpy's allocation
    traceback; the CLI prints a ConfigError as one line. (Since session 23 a size of 2**31 or more is refused when
    the settings are loaded; the largest allowed is still far too large.)"""
    from anomaly.errors import ConfigError

    cfg = EngineConfig(threshold=threshold, **{setting: 2**31 - 1})
    with pytest.raises(ConfigError) as info:
        Engine(bundle, cfg)
    message = str(info.value)
    assert message.startswith("the engine's per-key state does not fit in memory (")
    assert f"engine.threshold {threshold} keeps " in message and f"engine.{setting} = 2147483647" in message


@pytest.mark.parametrize("case", ["second new key", "in parts"])
def test_a_call_whose_new_keys_do_not_fit_in_memory_is_not_applied_at_all(bundle, monkeypatch, case) -> None:
    """A library user who catches StateMemoryError and carries on (with memory freed) must not see half a call
    applied. The store grew at the first new key with no free row, in the middle of the call: a new key before it
    stayed in the store without a reading, and the parts of a call processed before it (one that could expire a
    key by engine.ttl_seconds is processed in parts) were applied with their outputs lost, so the same call again
    refused k0's reading as a duplicate. Now a call reserves its new keys' rows before it changes anything: the
    error leaves the engine as it was, and the call again gives what it gives on an engine that never failed."""
    from anomaly.engine import state
    from anomaly.engine.state import StateMemoryError

    f = len(bundle.features)
    first = [Event(f"k{i}", np.array([1.0]), np.full((1, f), float(i))) for i in range(64)]
    if case == "second new key":  # one free row: k63 fits, k64 grows the store
        cfg, first = EngineConfig(), first[:63]
        call = [Event(k, np.array([2.0]), np.zeros((1, f))) for k in ("k63", "k64")]
    else:  # k0's reading at 50 s is one part, k64's at 200 s (past the others' TTL) another
        cfg = EngineConfig(ttl_seconds=100.0)
        call = [
            Event("k0", np.array([50.0]), np.zeros((1, f))),
            Event("k64", np.array([200.0]), np.zeros((1, f))),
        ]
    e, never = Engine(bundle, cfg), Engine(bundle, cfg)
    e.process(first)
    never.process(first)
    before = e.snapshot()
    monkeypatch.setattr(state, "np", NoRoomFor(128))
    with pytest.raises(StateMemoryError):
        e.process(call)
    monkeypatch.undo()
    assert e.snapshot() == before
    assert e.keys() == never.keys()

    again, once = e.process(call), never.process(call)
    assert (again.readings, [r.reason for r in again.rejections]) == (once.readings, []) == (len(call), [])
    assert [a.to_json() for a in again.alerts] == [a.to_json() for a in once.alerts]
    assert [(w.key, w.timestamps.tolist(), w.scores.tolist()) for w in again.windows] == [
        (w.key, w.timestamps.tolist(), w.scores.tolist()) for w in once.windows
    ]
    assert e.snapshot() == never.snapshot()


def test_a_state_store_that_cannot_grow_is_left_as_it_was_and_the_error_names_the_settings(
    bundle, monkeypatch
) -> None:
    """A key more than the store's rows (64, then each doubling) grows every field; a growth that did not fit in
    memory ended replay and consume with numpy's allocation traceback, and left the fields grown before the
    failing one at the new size and the others at the old: a store whose rows no longer lined up. Now it is
    all or nothing, and one error names the settings that size the state and what the growth asked for."""
    from anomaly.engine import state
    from anomaly.engine.state import StateMemoryError, size_text

    e = Engine(bundle, EngineConfig(threshold="dynamic", dynamic_history=4096))
    f = len(bundle.features)
    e.process([Event(f"k{i}", np.array([1.0]), np.full((1, f), float(i))) for i in range(64)])
    assert (e.store.capacity, len(e.store)) == (64, 64)
    before = e.snapshot()
    no_room = NoRoomFor(128, fail_at=3)  # the third field's larger rows do not fit
    monkeypatch.setattr(state, "np", no_room)

    with pytest.raises(StateMemoryError) as info:
        e.process([Event("k64", np.array([2.0]), np.zeros((1, f)))])
    per_key = e.store.bytes_per_key()
    assert per_key == e.store.layout.bytes_per_key() > 4096 * 4
    assert str(info.value) == (
        f"the engine's per-key state does not fit in memory: growing it from 64 to 128 keys asked for "
        f"{size_text(128 * per_key)} ({size_text(per_key)} a key): engine.threshold dynamic keeps "
        "engine.dynamic_history = 4096 scores a key, and engine.max_keys = 100000 keys are held at most; lower "
        "them or give the process more memory"
    )
    assert (info.value.rows, info.value.nbytes) == (128, 128 * per_key)
    assert {name: len(a) for name, a in e.store.arrays.items()} == dict.fromkeys(e.store.arrays, 64)
    assert (e.store.capacity, len(e.store), e.store.free) == (64, 64, [])
    assert e.snapshot() == before

    monkeypatch.undo()  # memory again: the same key grows the store and is held
    e.process([Event("k64", np.array([2.0]), np.zeros((1, f)))])
    assert (e.store.capacity, list(e.store.slots)) == (128, [f"k{i}" for i in range(65)])
    assert size_text(977 * 2**20) == "977 MiB" and size_text(1.5 * 2**30) == "1.5 GiB"


def test_compacting_to_the_recent_peak_keeps_steady_churns_rows_and_gives_back_a_burst(bundle) -> None:
    """A busy daemon compacts between calls to the most keys held at once over the last two windows
    (``compact(recent_peak=True)``): under steady churn at the cap (40 new keys a call over 100 held) the store
    keeps the rows its calls need, where compacting to the keys held would shrink it after every call and grow it
    (a copy, the rows zero-filled anew) at the next; a burst of 1,000 new keys that does not come again is given
    back at the second window after it. Every snapshot is the same bytes as an engine never compacted."""
    f = len(bundle.features)
    e = Engine(bundle, EngineConfig(max_keys=100, ttl_seconds=0))
    twin = Engine(bundle, EngineConfig(max_keys=100, ttl_seconds=0))
    sizes, freed = [], []

    def call(events: list[Event]) -> None:
        assert e.process(events).evicted == twin.process(events).evicted
        freed.append(e.compact(recent_peak=True))
        sizes.append(e.store.capacity)
        assert e.snapshot() == twin.snapshot()

    for c in range(10):
        call([Event(f"c{c}-{i}", np.array([float(c)]), np.full((1, f), i / 40)) for i in range(40)])
    call([Event(f"burst-{i}", np.array([10.0]), np.full((1, f), i / 1000)) for i in range(1000)])
    for c in range(11, 16):
        call([Event(f"c{c}-{i}", np.array([float(c)]), np.full((1, f), i / 40)) for i in range(40)])
    # 140 rows a call from the fourth on: 256; the burst's 1,100: 2,048, kept one window more, then 256 again
    assert sizes == [64, 128, 128, *[256] * 7, 2048, 2048, 256, 256, 256, 256]
    assert freed[12] == 2048 - 256 and sum(freed) == freed[12]
    idle = Engine(bundle, EngineConfig(max_keys=100, ttl_seconds=0))  # compacting to the keys held: thrash
    grown = []
    for c in range(10):
        idle.process([Event(f"c{c}-{i}", np.array([float(c)]), np.zeros((1, f))) for i in range(40)])
        grown.append(idle.store.capacity)
        idle.compact()
    assert grown[3:] == [256] * 7 and idle.store.capacity == 128  # grown and shrunk again at every call

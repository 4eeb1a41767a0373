"""Backtest metrics: point-wise (SKAB's F1/FAR/MAR), point-adjusted, and event-wise. Pure numpy, no I/O.

Every metric is a ratio of counts, and the counts add up: :func:`evaluate` scores one series and keeps its raw
counts under ``"counts"``; :func:`pool` sums those counts over series and recomputes every ratio. Pooling is
therefore micro-averaging, as SKAB does (TP, FP, FN, TN summed over all test files, then one F1).

Conventions for ratios with a zero denominator: precision, recall and F1 are 0.0 (scikit-learn's
``zero_division=0``); FAR is 0.0 when there are no negatives and MAR is 0.0 when there are no positives (no false
alarm or missed alarm was possible); the mean detection delay and false alerts per day are None when nothing
was detected or no time elapsed.

Segments ("events") are maximal runs of consecutive 1s in a 0/1 array, by position, not by time.

No look-ahead. A streaming pipeline decides about a reading only when some later reading arrives (a window is
scored at its last reading), so every point carries the index of the reading whose arrival decided it
(:func:`decision_index`, from the engine's ``decided_at``). Point-wise metrics are computed on what the pipeline
had said *by* each reading (:func:`causal`): reading k counts as flagged when the latest reading decided at or
before k was flagged (for alerts: the alert state the pipeline had announced), held until the next decision.
An event counts as detected at the earliest decision that flags one of its readings, and its delay runs from
the event's first reading to that decision. Without decision indices every reading is taken as decided on its
own arrival (the metrics of a detector that scores each reading as it comes). The flags as marked (look-ahead)
are kept under ``f1_marked`` for comparison.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

SECONDS_PER_DAY = 86_400.0


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


@dataclass(frozen=True)
class Confusion:
    """Point-wise confusion counts. ``a + b`` pools two series; all ratios follow SKAB's definitions."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @classmethod
    def of(cls, labels: np.ndarray, predictions: np.ndarray) -> Confusion:
        y, p = _binary(labels), _binary(predictions)
        return cls(int(np.sum(y & p)), int(np.sum(~y & p)), int(np.sum(y & ~p)), int(np.sum(~y & ~p)))

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        """SKAB's form: TP / (TP + (FN + FP) / 2), equal to the harmonic mean of precision and recall."""
        return _ratio(self.tp, self.tp + (self.fn + self.fp) / 2)

    @property
    def far(self) -> float:
        """False alarm rate FP / (FP + TN), a fraction (SKAB prints it as a percentage)."""
        return _ratio(self.fp, self.fp + self.tn)

    @property
    def mar(self) -> float:
        """Missing alarm rate FN / (FN + TP), a fraction (SKAB prints it as a percentage)."""
        return _ratio(self.fn, self.fn + self.tp)


def _merge(a: Mapping[Any, int], b: Mapping[Any, int]) -> dict[Any, int]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out


def _quantile(hist: Mapping[Any, int], q: float) -> float | None:
    """The q-quantile (lower, nearest rank) of a value -> count histogram; None when empty."""
    total = sum(hist.values())
    if not total:
        return None
    values = sorted(hist)
    cum = np.cumsum([hist[v] for v in values])
    rank = max(1, int(np.ceil(q * total)))
    return float(values[int(np.searchsorted(cum, rank))])


@dataclass(frozen=True)
class Latency:
    """Wait from each scored reading's arrival to the decision that covers it, as histograms (value -> count),
    in readings and in seconds (rounded to the millisecond); ``a + b`` pools them."""

    readings: Mapping[int, int] = dataclasses.field(default_factory=dict)
    seconds: Mapping[float, int] = dataclasses.field(default_factory=dict)

    def __add__(self, other: Latency) -> Latency:
        return Latency(_merge(self.readings, other.readings), _merge(self.seconds, other.seconds))

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Latency:
        return cls(
            {int(k): int(v) for k, v in d.get("readings", {}).items()},
            {float(k): int(v) for k, v in d.get("seconds", {}).items()},
        )


@dataclass(frozen=True)
class EventCounts:
    """Segment-level counts of one or more series; ``a + b`` pools them."""

    true_events: int = 0  # true anomalous segments
    detected_events: int = 0  # true segments with at least one predicted point
    predicted_events: int = 0  # predicted segments
    matched_predictions: int = 0  # predicted segments overlapping at least one true segment
    false_alerts: int = 0  # predicted segments overlapping no true segment
    delay_seconds: float = 0.0  # sum over detected events of (detecting decision - segment start)
    seconds: float = 0.0  # evaluated time: sum over series of (last - first finite timestamp - gaps)
    delays_readings: tuple[int, ...] = ()  # per detected event: readings from its start to the detection
    delays_seconds: tuple[float, ...] = ()  # per detected event: seconds from its start to the detection

    def __add__(self, other: EventCounts) -> EventCounts:
        return EventCounts(
            *(getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self))
        )

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> EventCounts:
        rest = {k: v for k, v in d.items() if k not in ("delays_readings", "delays_seconds")}
        return cls(
            **rest,
            delays_readings=tuple(int(v) for v in d.get("delays_readings", ())),
            delays_seconds=tuple(float(v) for v in d.get("delays_seconds", ())),
        )

    @property
    def recall(self) -> float:
        return _ratio(self.detected_events, self.true_events)

    @property
    def precision(self) -> float:
        return _ratio(self.matched_predictions, self.predicted_events)

    @property
    def mean_delay_seconds(self) -> float | None:
        return self.delay_seconds / self.detected_events if self.detected_events else None

    @property
    def false_alerts_per_day(self) -> float | None:
        return self.false_alerts / (self.seconds / SECONDS_PER_DAY) if self.seconds > 0 else None


@dataclass(frozen=True)
class Counts:
    """Everything the metrics are computed from: point-wise (no look-ahead), point-adjusted, event counts, the
    point-wise counts of the flags as marked (look-ahead), and the decision latency."""

    point: Confusion = Confusion()
    adjusted: Confusion = Confusion()
    events: EventCounts = EventCounts()
    series: int = 0
    marked: Confusion = Confusion()
    latency: Latency = Latency()

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.point + other.point,
            self.adjusted + other.adjusted,
            self.events + other.events,
            self.series + other.series,
            self.marked + other.marked,
            self.latency + other.latency,
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Counts:
        return cls(
            Confusion(**d["point"]),
            Confusion(**d["adjusted"]),
            EventCounts.from_json(d["events"]),
            int(d["series"]),
            Confusion(**d.get("marked", d["point"])),
            Latency.from_json(d.get("latency", {})),
        )

    def metrics(self) -> dict[str, Any]:
        """Flat metric dict (fractions, not percentages) plus the raw counts under ``"counts"``."""
        p, a, e, lat = self.point, self.adjusted, self.events, self.latency
        dr, ds = e.delays_readings, e.delays_seconds
        return {
            "precision": p.precision,
            "recall": p.recall,
            "f1": p.f1,
            "far": p.far,
            "mar": p.mar,
            "pa_precision": a.precision,
            "pa_recall": a.recall,
            "pa_f1": a.f1,
            "event_precision": e.precision,
            "event_recall": e.recall,
            "mean_delay_s": e.mean_delay_seconds,
            "median_delay_s": float(np.median(ds)) if ds else None,
            "mean_delay_readings": float(np.mean(dr)) if dr else None,
            "median_delay_readings": float(np.median(dr)) if dr else None,
            "false_alerts_per_day": e.false_alerts_per_day,
            "f1_marked": self.marked.f1,
            "latency_readings_median": _quantile(lat.readings, 0.5),
            "latency_readings_p99": _quantile(lat.readings, 0.99),
            "latency_s_median": _quantile(lat.seconds, 0.5),
            "latency_s_p99": _quantile(lat.seconds, 0.99),
            "counts": self.to_json(),
        }


def _binary(a: Any) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-d array, got shape {arr.shape}")
    return arr.astype(bool)


def segments(mask: Any) -> list[tuple[int, int]]:
    """Maximal runs of True as half-open index ranges [start, stop)."""
    m = _binary(mask).astype(np.int8)
    edges = np.diff(np.concatenate([[0], m, [0]]))
    starts = np.flatnonzero(edges == 1)
    stops = np.flatnonzero(edges == -1)
    return list(zip(starts.tolist(), stops.tolist(), strict=True))


def point_adjust(labels: Any, predictions: Any) -> np.ndarray:
    """The standard point-adjust: a true segment with any predicted point counts as wholly predicted."""
    y, p = _binary(labels), _binary(predictions).copy()
    for start, stop in segments(y):
        if p[start:stop].any():
            p[start:stop] = True
    return p


def decision_index(timestamps: Any, decided_at: Any) -> np.ndarray:
    """Index of the reading whose arrival decided each point (its timestamp is `decided_at`);
    ``len(timestamps)`` for points never decided (``decided_at`` NaN).

    Only a reading the engine took can decide (a deciding reading is scored by its own decision, so its
    `decided_at` is finite): where several rows share that timestamp, the decision belongs to the first scored
    one at or after the point, never to a repeat the engine refused (duplicate_policy=drop) that came after it.
    A `decided_at` that no scored row carries as its timestamp (hand-built inputs) maps to the last row at or
    before that time, in file order when rows are out of time order."""
    ts = np.asarray(timestamps, dtype=np.float64)
    d = np.asarray(decided_at, dtype=np.float64)
    n = len(ts)
    idx = np.full(n, n, np.int64)
    known = np.flatnonzero(np.isfinite(d))
    if not len(known):
        return idx
    # scored rows by (time, position); a query (decided_at[k], k) finds the first one at that time from row k on
    takers = known[np.isfinite(ts[known])]
    takers = takers[np.lexsort((takers, ts[takers]))]
    t_sorted = ts[takers]
    lo = np.searchsorted(t_sorted, d[known], side="left")
    hi = np.searchsorted(t_sorted, d[known], side="right")
    group = np.searchsorted(t_sorted, t_sorted, side="left")
    j = np.searchsorted(group * (n + 1) + takers, lo * (n + 1) + known, side="left")
    j = np.where(j < hi, j, lo)  # none at or after the point: the first at that time
    found = lo < hi
    idx[known[found]] = takers[j[found]]
    rest = known[~found]
    if len(rest):
        idx[rest] = _last_at_or_before(ts, d[rest])
    return idx


def _last_at_or_before(ts: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Index of the last row with a timestamp at or before each of `d` (in file order when rows are out of
    time order); -1 when none."""
    if np.all(ts[1:] >= ts[:-1]):
        return np.searchsorted(ts, d, side="right") - 1
    order = np.argsort(ts, kind="stable")
    pos = np.searchsorted(ts[order], d, side="right") - 1
    return np.where(pos >= 0, order[np.maximum(pos, 0)], -1)


def causal(values: Any, decided: Any, fill: Any) -> np.ndarray:
    """What the pipeline had said by each reading: at reading k, the value of the latest reading decided at or
    before k (the most recent point the pipeline had a verdict on: for alerts, the alert state it had
    announced), held until the next decision; `fill` before the first decision. With ``decided[i] == i`` this
    returns `values` unchanged."""
    v = np.asarray(values)
    dec = np.asarray(decided, dtype=np.int64)
    n = len(v)
    out = np.full(n, fill, dtype=np.result_type(v.dtype, np.asarray(fill).dtype))
    known = np.flatnonzero(dec < n)
    if not len(known):
        return out
    newest = np.full(n, -1, np.int64)  # per decision index: the latest reading it decided
    np.maximum.at(newest, dec[known], known)
    latest = np.maximum.accumulate(newest)
    has = latest >= 0
    out[has] = v[latest[has]]
    return out


def event_counts(
    labels: Any, predictions: Any, timestamps: Any, decided: Any = None, max_gap_seconds: float | None = None
) -> EventCounts:
    """Event counts; an event is detected at the earliest decision (`decided`, reading indices) that flags one of
    its readings -- by its own verdict on that reading, or by being the verdict in force at it (a reading refused
    inside an open alert counts as flagged point-wise, so it detects its event too) -- and its delay runs from the
    event's first reading to that decision (in readings and seconds; 0 when the decision came before the event).
    Predicted segments (alerts, with ``--predict alert``) are runs of what the pipeline had said by each reading
    (:func:`causal`): a reading it refused or never scored holds the last decision, so it does not cut one open
    alert into two predicted segments (nor add a false alert). A segment is matched (not a false alert) when it
    overlaps a labelled reading or when a decision in force during it flagged one (the late detection above).
    Readings without a time are in no event (they have no place in time), labelled or not.
    The evaluated time (``seconds``, what false alerts per day divide by) is the time the series was observed:
    from its first reading to its last, less each step longer than `max_gap_seconds` (the engine's gap, after
    which a key starts fresh), during which no reading came that could have raised an alert."""
    y, p = _binary(labels), _binary(predictions)
    ts = np.asarray(timestamps, dtype=np.float64)
    n = len(y)
    dec = np.arange(n) if decided is None else np.asarray(decided, dtype=np.int64)
    seen = causal(p, dec, False)
    held_by = causal(dec, dec, n)  # at each reading, the decision in force (the reading that made it)
    # a reading without a time (refused; the loader sorts it last) counts point-wise but has no place in time, so
    # it is in no event: a labelled one made an event at the series end whose delay in seconds was NaN
    y = y & np.isfinite(ts)
    true_segs, pred_segs = segments(y), segments(seen)
    d_readings: list[int] = []
    d_seconds: list[float] = []
    for start, stop in true_segs:
        # a decision flags a reading of the event by its own verdict (possibly after the event ended), or by
        # being in force at it, as the point-wise counts have it (a reading refused inside an open alert); one
        # made before the event (the alert was already open) detects it at its first reading
        own = dec[start:stop][p[start:stop]]
        held = np.maximum(held_by[start:stop][seen[start:stop]], start)
        hits = np.concatenate([own, held])
        hits = hits[hits < n]
        if len(hits):
            at = int(hits.min())
            d_readings.append(at - start)
            d_seconds.append(float(ts[at] - ts[start]))
    # a predicted segment is matched when it overlaps a labelled reading, or when a decision in force during it
    # flagged a labelled reading: with window-end scoring the alert a short event raises is announced after the
    # event ended, and it is that event's (late) detection, not a false alert
    detecting = np.zeros(n + 1, bool)
    flagged_event = (dec < n) & p & y
    detecting[dec[flagged_event]] = True
    matched = sum(
        1 for start, stop in pred_segs if y[start:stop].any() or detecting[held_by[start:stop]].any()
    )
    timed = ts[np.isfinite(ts)]  # a reading without a time (refused) spans no time
    seconds = float(timed.max() - timed.min()) if len(timed) else 0.0
    if max_gap_seconds is not None and len(timed) > 1:
        steps = np.diff(np.sort(timed))  # a replay with a week's hole: not a week of data
        seconds -= float(steps[steps > max_gap_seconds].sum())
    return EventCounts(
        len(true_segs),
        len(d_readings),
        len(pred_segs),
        matched,
        len(pred_segs) - matched,
        float(sum(d_seconds)),
        seconds,
        tuple(d_readings),
        tuple(d_seconds),
    )


def decision_latency(timestamps: Any, decided: Any) -> Latency:
    """Histogram of the wait from each decided reading's arrival to its decision, in readings and seconds."""
    ts = np.asarray(timestamps, dtype=np.float64)
    dec = np.asarray(decided, dtype=np.int64)
    idx = np.flatnonzero(dec < len(ts))
    readings = dec[idx] - idx
    seconds = np.round(ts[dec[idx]] - ts[idx], 3)
    r_vals, r_counts = np.unique(readings, return_counts=True)
    s_vals, s_counts = np.unique(seconds, return_counts=True)
    return Latency(
        dict(zip(r_vals.tolist(), r_counts.tolist(), strict=True)),
        dict(zip(s_vals.tolist(), s_counts.tolist(), strict=True)),
    )


def count(
    labels: Any,
    predictions: Any,
    timestamps: Any,
    decided_at: Any = None,
    max_gap_seconds: float | None = None,
) -> Counts:
    """Counts of one series. labels and predictions are 0/1 (or bool) per point; timestamps in seconds, in time
    order; `decided_at` the event time of the reading whose arrival decided each point (NaN: never decided).
    Without `decided_at` every point is taken as decided on its own arrival. Steps longer than `max_gap_seconds`
    are gaps, left out of the evaluated time (see :func:`event_counts`)."""
    y, p = _binary(labels), _binary(predictions)
    ts = np.asarray(timestamps, dtype=np.float64)
    if not (len(y) == len(p) == len(ts)):
        raise ValueError(
            f"labels, predictions and timestamps differ in length: {len(y)}, {len(p)}, {len(ts)}"
        )
    if decided_at is None:
        dec = np.arange(len(y))
    else:
        if len(decided_at) != len(y):
            raise ValueError(f"decided_at has {len(decided_at)} points, labels {len(y)}")
        dec = decision_index(ts, decided_at)
        early = dec < np.arange(len(y))
        if np.any(early & (np.asarray(decided_at, np.float64) < ts)):
            raise ValueError("a point is decided before it arrives (decided_at < timestamp)")
        dec = np.maximum(dec, np.arange(len(y)))  # out-of-order rows: never count a decision before arrival
    seen = causal(p, dec, False)
    return Counts(
        Confusion.of(y, seen),
        Confusion.of(y, point_adjust(y, seen)),
        event_counts(y, p, ts, dec, max_gap_seconds),
        1,
        Confusion.of(y, p),
        decision_latency(ts, dec),
    )


def evaluate(
    labels: Any,
    predictions: Any,
    timestamps: Any,
    decided_at: Any = None,
    max_gap_seconds: float | None = None,
) -> dict[str, Any]:
    """All metrics of one series (see :meth:`Counts.metrics`); pass several results to :func:`pool`."""
    return count(labels, predictions, timestamps, decided_at, max_gap_seconds).metrics()


def oracle_best_f1(scores: Any, labels: Any) -> tuple[float, float]:
    """The best point-wise F1 any threshold on `scores` reaches against `labels` (flag ``score >= t``), and that
    threshold. Exact: one sort, every distinct score tried as the threshold. NaN scores are never flagged.
    It looks at the labels, so it is a diagnosis of how well the score ranks points, never a threshold to use.
    Returns (0.0, inf) when there is no positive label."""
    s = np.asarray(scores, dtype=np.float64)
    y = _binary(labels)
    if len(s) != len(y):
        raise ValueError(f"scores and labels differ in length: {len(s)}, {len(y)}")
    positives = int(y.sum())
    ok = ~np.isnan(s)
    s, yk = s[ok], y[ok]
    if positives == 0 or not len(s):
        return 0.0, float("inf")
    order = np.argsort(-s, kind="stable")
    s, yk = s[order], yk[order]
    tp = np.cumsum(yk)
    fp = np.cumsum(~yk)
    last_of_tie = np.append(s[1:] != s[:-1], True)
    tp, fp, thr = tp[last_of_tie], fp[last_of_tie], s[last_of_tie]
    f1 = tp / (tp + (fp + (positives - tp)) / 2)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thr[best])


def events_standing_out(scores: Any, labels: Any, normal_rate: float = 0.01) -> tuple[int, int]:
    """(events that stand out, labelled events) of one series: an event stands out when its highest score is above
    all but `normal_rate` of the series' normal readings (at least 1 - rate of them score strictly below it), so a
    threshold flagging that share of normal readings would catch it -- telemanom's event view, threshold-free. It
    looks at the labels: a diagnosis of ranking, never a result. NaN scores count as lowest."""
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    y = _binary(labels)
    if len(s) != len(y):
        raise ValueError(f"scores and labels differ in length: {len(s)}, {len(y)}")
    events = segments(y)
    normal = np.sort(s[~y])
    if not len(normal):
        return len(events), len(events)
    below = [np.searchsorted(normal, s[a:b].max(), side="left") / len(normal) for a, b in events]
    return sum(1 for v in below if v >= 1.0 - normal_rate), len(events)


def pool(results: Iterable[Mapping[str, Any] | Counts]) -> dict[str, Any]:
    """Micro-average: sum the counts of :func:`evaluate` results (or :class:`Counts`) and recompute every metric."""
    total = Counts()
    for r in results:
        total = total + (r if isinstance(r, Counts) else Counts.from_json(r["counts"]))
    return total.metrics()


def _fmt(value: float | None, scale: float = 1.0, digits: int = 3) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _per_day(value: float | None) -> str:
    """A rate per day: one decimal from 1 up, two significant digits below (8 false alerts in 282 days is 0.028,
    not 0.0)."""
    if value is None or value >= 1 or value == 0:
        return _fmt(value, digits=1)
    return f"{value:.2g}"


def format_table(metrics: Mapping[str, Any]) -> str:
    """A plain-text table of one metrics dict (from :func:`evaluate` or :func:`pool`)."""
    c = metrics["counts"]["point"]
    e = metrics["counts"]["events"]
    rows = [
        ("point-wise (SKAB), no look-ahead", ""),
        ("  F1", _fmt(metrics["f1"])),
        ("  FAR, %", _fmt(metrics["far"], 100, 2)),
        ("  MAR, %", _fmt(metrics["mar"], 100, 2)),
        ("  precision", _fmt(metrics["precision"])),
        ("  recall", _fmt(metrics["recall"])),
        ("  TP / FP / FN / TN", f"{c['tp']} / {c['fp']} / {c['fn']} / {c['tn']}"),
        ("  F1 of the flags as marked (look-ahead)", _fmt(metrics.get("f1_marked"))),
        ("point-adjusted (not comparable with SKAB)", ""),
        ("  PA-F1", _fmt(metrics["pa_f1"])),
        ("  PA-precision", _fmt(metrics["pa_precision"])),
        ("  PA-recall", _fmt(metrics["pa_recall"])),
        ("event-wise", ""),
        (
            "  recall",
            f"{_fmt(metrics['event_recall'])}  ({e['detected_events']} of {e['true_events']} events)",
        ),
        (
            "  precision",
            f"{_fmt(metrics['event_precision'])}  "
            f"({e['matched_predictions']} of {e['predicted_events']} predicted segments)",
        ),
        (
            "  detection delay, readings (median / mean)",
            f"{_fmt(metrics.get('median_delay_readings'), digits=1)} / "
            f"{_fmt(metrics.get('mean_delay_readings'), digits=1)}",
        ),
        (
            "  detection delay, s (median / mean)",
            f"{_fmt(metrics.get('median_delay_s'), digits=1)} / {_fmt(metrics['mean_delay_s'], digits=1)}",
        ),
        (
            "  false alerts per day",
            _per_day(metrics["false_alerts_per_day"])
            + f"  ({e['false_alerts']} in {e['seconds'] / 3600:.2f} h)",
        ),
    ]
    rows += [
        ("decision latency (reading arrival -> decision covering it)", ""),
        (
            "  readings (median / p99)",
            f"{_fmt(metrics.get('latency_readings_median'), digits=0)} / "
            f"{_fmt(metrics.get('latency_readings_p99'), digits=0)}",
        ),
        (
            "  seconds (median / p99)",
            f"{_fmt(metrics.get('latency_s_median'), digits=1)} / "
            f"{_fmt(metrics.get('latency_s_p99'), digits=1)}",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}".rstrip() for name, value in rows)

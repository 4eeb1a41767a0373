"""Backtest metrics: point-wise (SKAB's F1/FAR/MAR), point-adjusted, and event-wise. Pure numpy, no I/O.

Every metric is a ratio of counts, and the counts add up: :func:`evaluate` scores one series and keeps its raw
counts under ``"counts"``; :func:`pool` sums those counts over series and recomputes every ratio. Pooling is
therefore micro-averaging, as SKAB does (TP, FP, FN, TN summed over all test files, then one F1).

Conventions for ratios with a zero denominator: precision, recall and F1 are 0.0 (scikit-learn's
``zero_division=0``); FAR is 0.0 when there are no negatives and MAR is 0.0 when there are no positives (no false
alarm or missed alarm was possible); the mean detection delay and false alerts per day are None when nothing
was detected or no time elapsed.

Segments ("events") are maximal runs of consecutive 1s in a 0/1 array, by position, not by time.
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


@dataclass(frozen=True)
class EventCounts:
    """Segment-level counts of one or more series; ``a + b`` pools them."""

    true_events: int = 0  # true anomalous segments
    detected_events: int = 0  # true segments with at least one predicted point
    predicted_events: int = 0  # predicted segments
    matched_predictions: int = 0  # predicted segments overlapping at least one true segment
    false_alerts: int = 0  # predicted segments overlapping no true segment
    delay_seconds: float = 0.0  # sum over detected events of (first predicted point - segment start)
    seconds: float = 0.0  # evaluated time: sum over series of (last timestamp - first timestamp)

    def __add__(self, other: EventCounts) -> EventCounts:
        return EventCounts(
            *(getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self))
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
    """Everything the metrics are computed from: point-wise, point-adjusted and event counts."""

    point: Confusion = Confusion()
    adjusted: Confusion = Confusion()
    events: EventCounts = EventCounts()
    series: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.point + other.point,
            self.adjusted + other.adjusted,
            self.events + other.events,
            self.series + other.series,
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Counts:
        return cls(
            Confusion(**d["point"]), Confusion(**d["adjusted"]), EventCounts(**d["events"]), int(d["series"])
        )

    def metrics(self) -> dict[str, Any]:
        """Flat metric dict (fractions, not percentages) plus the raw counts under ``"counts"``."""
        p, a, e = self.point, self.adjusted, self.events
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
            "false_alerts_per_day": e.false_alerts_per_day,
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


def event_counts(labels: Any, predictions: Any, timestamps: Any) -> EventCounts:
    y, p = _binary(labels), _binary(predictions)
    ts = np.asarray(timestamps, dtype=np.float64)
    true_segs, pred_segs = segments(y), segments(p)
    detected, delay = 0, 0.0
    for start, stop in true_segs:
        hits = np.flatnonzero(p[start:stop])
        if len(hits):
            detected += 1
            delay += float(ts[start + hits[0]] - ts[start])
    matched = sum(1 for start, stop in pred_segs if y[start:stop].any())
    seconds = float(ts[-1] - ts[0]) if len(ts) else 0.0
    return EventCounts(
        len(true_segs), detected, len(pred_segs), matched, len(pred_segs) - matched, delay, seconds
    )


def count(labels: Any, predictions: Any, timestamps: Any) -> Counts:
    """Counts of one series. labels and predictions are 0/1 (or bool) per point; timestamps in seconds."""
    y, p = _binary(labels), _binary(predictions)
    ts = np.asarray(timestamps, dtype=np.float64)
    if not (len(y) == len(p) == len(ts)):
        raise ValueError(
            f"labels, predictions and timestamps differ in length: {len(y)}, {len(p)}, {len(ts)}"
        )
    return Counts(Confusion.of(y, p), Confusion.of(y, point_adjust(y, p)), event_counts(y, p, ts), 1)


def evaluate(labels: Any, predictions: Any, timestamps: Any) -> dict[str, Any]:
    """All metrics of one series (see :meth:`Counts.metrics`); pass several results to :func:`pool`."""
    return count(labels, predictions, timestamps).metrics()


def pool(results: Iterable[Mapping[str, Any] | Counts]) -> dict[str, Any]:
    """Micro-average: sum the counts of :func:`evaluate` results (or :class:`Counts`) and recompute every metric."""
    total = Counts()
    for r in results:
        total = total + (r if isinstance(r, Counts) else Counts.from_json(r["counts"]))
    return total.metrics()


def _fmt(value: float | None, scale: float = 1.0, digits: int = 3) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def format_table(metrics: Mapping[str, Any]) -> str:
    """A plain-text table of one metrics dict (from :func:`evaluate` or :func:`pool`)."""
    c = metrics["counts"]["point"]
    e = metrics["counts"]["events"]
    rows = [
        ("point-wise (SKAB)", ""),
        ("  F1", _fmt(metrics["f1"])),
        ("  FAR, %", _fmt(metrics["far"], 100, 2)),
        ("  MAR, %", _fmt(metrics["mar"], 100, 2)),
        ("  precision", _fmt(metrics["precision"])),
        ("  recall", _fmt(metrics["recall"])),
        ("  TP / FP / FN / TN", f"{c['tp']} / {c['fp']} / {c['fn']} / {c['tn']}"),
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
        ("  mean detection delay, s", _fmt(metrics["mean_delay_s"], digits=1)),
        (
            "  false alerts per day",
            _fmt(metrics["false_alerts_per_day"], digits=1)
            + f"  ({e['false_alerts']} in {e['seconds'] / 3600:.2f} h)",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}".rstrip() for name, value in rows)

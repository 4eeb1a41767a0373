"""Retraining a challenger from recent data: time ranges, alert-span exclusion, training sets and lineage.

Pure code: the sources (a Kafka topic range in :mod:`anomaly.kafka.history`, or CSV files) hand over series;
this module removes what must not be learned as normal — readings inside alert spans (from the alerts topic or
a replay's ``alerts.jsonl``) and, for topics, messages that went to dead letters — cuts the series where
readings were removed, and refuses a range that holds too little normal data. The lineage recorded in the
challenger's bundle says where it came from: parent version, data range, keys, training metrics.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from anomaly.config import ModelConfig, TrainConfig
from anomaly.data import Series
from anomaly.errors import ConfigError, DataError

DEFAULT_MIN_WINDOWS = 50  # full windows of normal data a challenger needs at least
MAX_LINEAGE_KEYS = 100  # keys listed in the lineage by name (all are counted and hashed)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """'90s', '30m', '12h', '7d', '2w' -> seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ConfigError(f"cannot read duration {text!r}; use a number and one of s, m, h, d, w (e.g. 7d)")
    return float(m.group(1)) * _UNIT[m.group(2)]


def parse_time(text: str) -> float:
    """Epoch seconds, or an ISO-8601 date/date-time (naive means UTC) -> epoch seconds."""
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        _check_time(value, text)
        return value
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"cannot read time {text!r}; use epoch seconds or ISO-8601 (2024-05-01T12:00)"
        ) from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _check_time(value: float, text: str) -> None:
    """A time a date can show: finite and within years 1..9999 (so `iso` never fails). Epoch milliseconds
    (1.7e12 is the year 55840 in seconds) are the usual way to get there, so the message names them."""
    try:
        iso(value)
    except (ValueError, OverflowError, OSError):
        ms = 1e11 < value < 1e14
        hint = f" (milliseconds? that is {value / 1000:.0f} in seconds)" if ms else ""
        raise ConfigError(
            f"time {text!r} is not a date between the years 1 and 9999{hint}; use epoch seconds or ISO-8601 "
            "(2024-05-01T12:00)"
        ) from None


@dataclass(frozen=True)
class TimeRange:
    start: float  # epoch seconds, inclusive
    end: float  # epoch seconds, exclusive

    @classmethod
    def parse(
        cls, since: str | None, start: str | None, end: str | None, now: float | None = None
    ) -> TimeRange:
        """--since (relative to now) or --from; --to defaults to now."""
        now = time.time() if now is None else now
        if since and start:
            raise ConfigError("give --since or --from, not both")
        if not since and not start:
            # reached without data files: the topic is read, so a user who forgot the files is told of both
            raise ConfigError(
                "give a time range of the input topic: --since 7d, or --from TIME [--to TIME] (or CSV files to "
                "read instead of the topic)"
            )
        hi = parse_time(end) if end else now
        lo = hi - parse_duration(since) if since else parse_time(start or "")
        if since:
            _check_time(lo, f"{end or 'now'} - {since}")
        if not lo < hi:
            raise ConfigError(f"empty time range: from {iso(lo)} is not before to {iso(hi)}")
        return cls(lo, hi)

    @classmethod
    def parse_for_files(cls, since: str | None, start: str | None, end: str | None) -> TimeRange | None:
        """The range of CSV rows to use: None (all rows) when no option is given; `--to` alone keeps the rows
        before it (the range then starts at the beginning of time)."""
        if since or start:
            return cls.parse(since, start, end)
        if end:
            return cls(-np.inf, parse_time(end))
        return None

    def split(self, holdout: float) -> tuple[TimeRange, TimeRange]:
        """(training part, the most recent `holdout` fraction for shadow evaluation)."""
        cut = self.end - (self.end - self.start) * holdout
        return TimeRange(self.start, cut), TimeRange(cut, self.end)

    def to_json(self) -> dict[str, str | None]:
        return {
            "from": iso(self.start) if np.isfinite(self.start) else None,
            "to": iso(self.end) if np.isfinite(self.end) else None,
        }


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def alert_spans(events: Iterable[Mapping[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Per key, the [start, end] event-time spans of alerts, from alert lifecycle events (``Alert.to_json()``:
    the alerts topic or a replay's alerts.jsonl). An alert without a closed event is open: [start, +inf).
    Events are deduplicated by key and start (alerts are delivered at least once, a re-sent one byte-identical),
    not by id: ``key@start-ms`` is one id for two alerts of a key that start within one millisecond (data
    sampled every few microseconds), and the first one's span was then replaced by the second's."""
    by_id: dict[tuple[str, float], tuple[str, float, float]] = {}
    for ev in events:
        try:
            key, start = str(ev["key"]), float(ev["start"])
        except (KeyError, TypeError, ValueError):
            continue  # not an alert event
        end = ev.get("end") if ev.get("status") == "closed" else None
        span_end = float(end) if end is not None else np.inf
        alert_id = (key, start)
        if alert_id in by_id and by_id[alert_id][2] < np.inf and span_end == np.inf:
            continue  # a re-delivered open event after the close
        by_id[alert_id] = (key, start, span_end)
    spans: dict[str, list[tuple[float, float]]] = {}
    for key, start, end in by_id.values():
        spans.setdefault(key, []).append((start, end))
    return {k: sorted(v) for k, v in spans.items()}


@dataclass
class TrainingSet:
    """Normal data for a challenger: contiguous pieces of series, and what was left out on the way."""

    series: list[Series]
    keys: list[str]
    readings: int
    excluded_alert_readings: int
    excluded_short_readings: int  # pieces between removed readings too short for a window
    first_ts: float
    last_ts: float
    source: dict[str, Any] = field(default_factory=dict)  # what the source reported (dead letters, ...)

    def to_json(self) -> dict[str, Any]:
        return {
            "readings": self.readings,
            "keys": len(self.keys),
            "key_names": self.keys[:MAX_LINEAGE_KEYS],
            "pieces": len(self.series),
            "first_reading": iso(self.first_ts),
            "last_reading": iso(self.last_ts),
            "excluded_alert_readings": self.excluded_alert_readings,
            "excluded_short_readings": self.excluded_short_readings,
            **self.source,
        }


def _contiguous(s: Series, keep: np.ndarray) -> list[Series]:
    """Runs of consecutive kept readings of one series, each its own piece."""
    out = []
    edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.astype(np.int8), [0]])))
    for lo, hi in zip(edges[::2], edges[1::2], strict=True):
        out.append(s.take(slice(lo, hi)))
    return out


def training_set(
    series: Sequence[Series],
    spans: Mapping[str, Sequence[tuple[float, float]]],
    window: int,
    *,
    margin_s: float = 0.0,
    min_windows: int = DEFAULT_MIN_WINDOWS,
    source: Mapping[str, Any] | None = None,
) -> TrainingSet:
    """Remove readings inside alert spans (widened by `margin_s` each side), cut series where readings were
    removed, drop pieces shorter than one window; DataError when fewer than `min_windows` windows remain."""
    pieces: list[Series] = []
    excluded = short = 0
    for s in series:
        keep = np.ones(len(s), bool)
        for lo, hi in spans.get(s.key, ()):
            keep &= ~((s.timestamps >= lo - margin_s) & (s.timestamps <= hi + margin_s))
        excluded += int((~keep).sum())
        for piece in _contiguous(s, keep):
            if len(piece) >= window:
                pieces.append(piece)
            else:
                short += len(piece)
    readings = sum(len(p) for p in pieces)
    need = min_windows * window
    if readings < need:
        total = sum(len(s) for s in series)
        raise DataError(
            f"too little normal data to retrain: {readings} usable readings from "
            f"{len({p.key for p in pieces})} of {len({s.key for s in series})} keys "
            f"({total} read, {excluded} inside alert spans, {short} in pieces shorter than a window); need at "
            f"least {need} ({min_windows} windows of {window}); widen the time range or select more keys"
        )
    keys = sorted({p.key for p in pieces})
    first = min(float(p.timestamps[0]) for p in pieces)
    last = max(float(p.timestamps[-1]) for p in pieces)
    return TrainingSet(pieces, keys, readings, excluded, short, first, last, dict(source or {}))


def champion_sections(meta: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The champion's [model] and [train] settings as pipeline sections (fields this version knows)."""
    config = (meta.get("training") or {}).get("config") or {}
    out: dict[str, dict[str, Any]] = {}
    for name, cls in (("model", ModelConfig), ("train", TrainConfig)):
        known = {f.name for f in dataclasses.fields(cls)}
        out[name] = {k: v for k, v in (config.get(name) or {}).items() if k in known}
    if not out["model"]:
        raise DataError(
            "the champion bundle does not record its training settings; give them with --pipeline and "
            "--from-pipeline"
        )
    return out


def lineage(
    parent: Any | None,
    data: TrainingSet,
    data_source: Mapping[str, Any],
    bundle_meta: Mapping[str, Any],
) -> dict[str, Any]:
    """What a challenger's bundle records about its origin (``meta["lineage"]``)."""
    t = bundle_meta.get("training", {})
    return {
        "parent_version": None if parent is None else parent.version,
        "data": {**data_source, **data.to_json()},
        "training": {
            k: t.get(k)
            for k in ("epochs_run", "best_epoch", "best_val_loss", "final_loss", "train_windows", "rows")
        },
        "promotion": None,  # filled in by `anomaly promote` / `retrain --promote`
    }

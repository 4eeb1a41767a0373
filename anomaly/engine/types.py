"""The engine's input and output records. Pure data: no Kafka, no Prometheus."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import numpy as np

# Why a reading or a whole event was refused. Sinks and metrics use these strings as label values.
REJECT_REASONS = (
    "non_finite",  # NaN or infinite value (with nan_policy=reject) or non-finite timestamp
    "feature_count",  # values do not have the model's number of features
    "time_backwards",  # timestamp earlier than the key's last accepted one
    "duplicate_timestamp",  # timestamp equal to the key's last accepted one (duplicate_policy=drop)
    "malformed",  # set by sources: undecodable message, missing fields, oversized
)


@dataclass(frozen=True)
class Event:
    """Readings of one key: a single reading (n = 1) or a block. Values are raw units in bundle feature order.

    `ref` is opaque to the engine (a Kafka (partition, offset), a CSV row) and is echoed in rejections.
    """

    key: str
    timestamps: np.ndarray  # float64 epoch seconds, shape (n,)
    values: np.ndarray  # float, shape (n, F)
    ref: Any = None

    @classmethod
    def single(cls, key: str, timestamp: float, values, ref: Any = None) -> Event:
        return cls(
            key, np.asarray([timestamp], np.float64), np.asarray(values, np.float64).reshape(1, -1), ref
        )


@dataclass
class Readings:
    """Many messages' readings as columns: what a source hands the engine when building one :class:`Event`
    per message would cost more than the scoring (the daemon's hot path).

    Message ``i`` belongs to key ``names[kid[i]]`` and holds ``counts[i]`` consecutive readings of
    ``timestamps``/``values``; ``refs[i]`` is echoed in its rejections. Feeding the engine a ``Readings`` or
    the equivalent one-event-per-message list gives identical state, output and rejections.
    """

    names: list[str]  # distinct keys, in order of first appearance
    kid: np.ndarray  # int64 (M,): index into `names` per message
    counts: np.ndarray  # int64 (M,): readings per message (>= 1)
    timestamps: np.ndarray  # float64 (N,), N = counts.sum()
    values: np.ndarray  # float64 (N, F)
    refs: list[Any]  # (M,)
    # The clock domains (event-time clocks, see :class:`anomaly.engine.Engine`) of the messages, as runs: (index of
    # the run's first message, domain name), first run at message 0. Empty: every message is of the default
    # domain "" (a replay). The daemon names each partition's messages after their partition.
    domains: tuple[tuple[int, str], ...] = ()

    def __len__(self) -> int:
        return len(self.refs)

    @classmethod
    def from_events(cls, events: list[Event], n_features: int) -> Readings:
        """Columns of well-formed events (float64 (n,) timestamps and (n, F) values, n >= 1)."""
        return cls.from_parts(
            [ev.key for ev in events],
            [len(ev.timestamps) for ev in events],
            [ev.timestamps for ev in events],
            [ev.values for ev in events],
            [ev.ref for ev in events],
            n_features,
        )

    @classmethod
    def from_regular_events(cls, events: Sequence[Event], n_features: int) -> Readings | None:
        """Columns of events in one go when every event is well formed (string key, (n,) timestamps and
        (n, F) numeric values); None otherwise. Python work per event is a few C-level passes."""
        ts_list = list(map(_TIMESTAMPS, events))
        val_list = list(map(_VALUES, events))
        keys = list(map(_KEY, events))
        try:
            counts = list(map(len, ts_list))
            if counts != list(map(len, val_list)) or 0 in counts or set(map(type, keys)) != {str}:
                return None
            ts = np.concatenate(ts_list)
            vals = np.concatenate(val_list)
        except (TypeError, ValueError):  # scalars, mixed dimensions
            return None
        if ts.ndim != 1 or vals.ndim != 2 or vals.shape[1] != n_features or vals.dtype.kind not in "fiu":
            return None
        if ts.dtype.kind not in "fiu":
            return None
        names, kid = _key_ids(keys)  # ts and vals are new arrays (concatenated): no second copy
        return cls(
            names,
            kid,
            np.asarray(counts, np.int64),
            ts.astype(np.float64, copy=False),
            vals.astype(np.float64, copy=False),
            list(map(_REF, events)),
        )

    @classmethod
    def from_parts(
        cls,
        keys: list[str],
        counts: list[int],
        timestamps: list[np.ndarray],
        values: list[np.ndarray],
        refs: list[Any],
        n_features: int,
    ) -> Readings:
        """Columns of per-message parts (``timestamps[i]`` (counts[i],), ``values[i]`` (counts[i], F))."""
        if not keys:
            return cls(
                [], np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros((0, n_features)), []
            )
        names, kid = _key_ids(keys)
        return cls(
            names,
            kid,
            np.asarray(counts, np.int64),
            np.concatenate(timestamps).astype(np.float64, copy=False),
            np.concatenate(values).astype(np.float64, copy=False),
            refs,
        )

    @classmethod
    def concat(cls, parts: list[Readings], n_features: int) -> Readings:
        """One ``Readings`` of several, messages in the order given."""
        if len(parts) == 1:
            return parts[0]
        index: dict[str, int] = {}
        kids = []
        runs: list[tuple[int, str]] = []
        start = 0
        for p in parts:
            for lo, name in p.domains or ((0, ""),):
                if not runs or runs[-1][1] != name:
                    runs.append((start + lo, name))
            start += len(p.refs)
            remap = np.asarray([index.setdefault(n, len(index)) for n in p.names], np.int64)
            kids.append(remap[p.kid] if len(p.kid) else p.kid)
        return cls(
            list(index),
            np.concatenate(kids) if kids else np.zeros(0, np.int64),
            np.concatenate([p.counts for p in parts]) if parts else np.zeros(0, np.int64),
            np.concatenate([p.timestamps for p in parts]) if parts else np.zeros(0),
            np.concatenate([p.values for p in parts]) if parts else np.zeros((0, n_features)),
            [r for p in parts for r in p.refs],
            () if runs == [(0, "")] or not runs else tuple(runs),
        )

    def messages(self, lo: int, hi: int) -> Readings:
        """Messages ``lo:hi`` as a ``Readings`` of their own (keys renumbered in order of first appearance)."""
        kid = self.kid[lo:hi]
        uniq, first = np.unique(kid, return_index=True)
        order = uniq[np.argsort(first, kind="stable")]
        remap = np.zeros(len(self.names), np.int64)
        remap[order] = np.arange(len(order))
        starts = np.concatenate([[0], np.cumsum(self.counts)])
        a, b = int(starts[lo]), int(starts[hi])
        return Readings(
            [self.names[i] for i in order.tolist()],
            remap[kid],
            self.counts[lo:hi],
            self.timestamps[a:b],
            self.values[a:b],
            self.refs[lo:hi],
            self._domain_runs(lo, hi),
        )

    def _domain_runs(self, lo: int, hi: int) -> tuple[tuple[int, str], ...]:
        """The domain runs of messages ``lo:hi``, renumbered from 0."""
        if not self.domains:
            return ()
        runs = [(max(start - lo, 0), name) for start, name in self.domains if start < hi]
        i = max(j for j, (start, _) in enumerate(runs) if start == 0)  # the run holding message lo
        return tuple(runs[i:])

    def domain_runs(self) -> list[tuple[int, int, str]]:
        """(first message, end message, domain name) of each run; one run of domain "" when none is set."""
        runs = self.domains or ((0, ""),)
        ends = [start for start, _ in runs[1:]] + [len(self.refs)]
        return [(start, end, name) for (start, name), end in zip(runs, ends, strict=True)]

    def events(self) -> list[Event]:
        """One event per message (tests, and the engine's per-event path for irregular keys)."""
        ends = np.cumsum(self.counts).tolist()
        starts = [0, *ends[:-1]] if ends else []  # no message, no event
        return [
            Event(self.names[k], self.timestamps[lo:hi], self.values[lo:hi], ref)
            for k, lo, hi, ref in zip(self.kid.tolist(), starts, ends, self.refs, strict=True)
        ]


_TIMESTAMPS, _VALUES, _KEY, _REF = (attrgetter(name) for name in ("timestamps", "values", "key", "ref"))


def _key_ids(keys: list[str]) -> tuple[list[str], np.ndarray]:
    """The distinct keys in order of first appearance, and each message's index into them."""
    names = list(dict.fromkeys(keys))
    pos = {k: i for i, k in enumerate(names)}
    return names, np.fromiter(map(pos.__getitem__, keys), np.int64, len(keys))


@dataclass(frozen=True)
class Rejection:
    """Readings the engine did not apply. `whole` means the event was refused entirely (state untouched)."""

    key: str
    reason: str
    count: int
    whole: bool
    ref: Any = None
    detail: str = ""
    timestamps: np.ndarray | None = None  # the refused readings' timestamps, when the engine knows them


@dataclass(frozen=True)
class ScoredWindow:
    """One full window of one key, scored. Arrays have one entry per reading of the window."""

    key: str
    timestamps: np.ndarray  # float64 (W,)
    errors: np.ndarray  # float32 (W,): mean squared reconstruction error over features, standardized units
    scores: (
        np.ndarray
    )  # float32 (W,): EWMA-smoothed error / bundle reference error (1.0 = calibration quantile)
    thresholds: np.ndarray  # float32 (W,): threshold in force at each point (score units)
    # bool (W,): score above threshold (and past warm-up) or a stuck sensor; never after a level shift closed
    # an alert, up to the key's re-baseline at the next window (the verdicts the alert lifecycle acted on)
    anomalous: np.ndarray
    alert_open: np.ndarray  # bool (W,): an alert of this key was open at this point
    contributions: np.ndarray  # float32 (F,): share of the window's error per feature, sums to 1
    model_version: str = ""
    # float64 (W,): event time of the reading whose arrival produced each point's score and flag (its decision
    # time). A window scored when its last reading arrives decides all its points then; None means exactly that.
    decided_at: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.decided_at is None:
            ts = np.asarray(self.timestamps, np.float64)
            last = ts[-1] if len(ts) else np.nan
            object.__setattr__(self, "decided_at", np.full(ts.shape, last, np.float64))


@dataclass(frozen=True)
class Alert:
    """An alert lifecycle event: status "open" when it fires, "closed" when it resolves. `id` is key + start,
    so the same alert re-sent after a crash is recognisably the same."""

    id: str
    key: str
    status: str  # open | closed
    start: float  # epoch seconds of the first anomalous point
    end: float | None  # epoch seconds of the last anomalous point (closed alerts)
    at: float  # event time at which this status was decided
    peak_score: float
    threshold: float
    model_version: str
    top_features: list[dict[str, float | str]] = field(default_factory=list)
    reason: str = ""  # closed alerts: "normal", "level_shift" (open past max_alert_seconds) or "evicted"
    # seconds between `start` and `at` that lay in gaps (intervals longer than engine.max_gap_seconds without a
    # reading of the key): the alert was in force for at - start - gap_seconds of observed time. None when the
    # engine does not count them (engine.max_alert_seconds = 0).
    gap_seconds: float | None = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "key": self.key,
            "status": self.status,
            "start": self.start,
            "end": self.end,
            "at": self.at,
            "peak_score": round(float(self.peak_score), 6),
            "threshold": round(float(self.threshold), 6),
            "model_version": self.model_version,
            "top_features": self.top_features,
            "reason": self.reason,
            "gap_seconds": self.gap_seconds,
        }


@dataclass
class EngineOutput:
    windows: list[ScoredWindow] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    readings: int = 0  # readings accepted into state
    batches: list[int] = field(default_factory=list)  # size of every batched model call made
    evicted: list[str] = field(default_factory=list)  # keys dropped for TTL or the key cap during this call
    # event times of the readings this call decided, one (K, L) array per model call: the readings it scored on
    # arrival, or every reading of the windows it scored (a window's readings are decided by its last). A wall
    # clock read after the call minus these is each reading's decision latency (readings decided in an earlier
    # call and only reported now, in a report window, are not among them).
    decided: list[np.ndarray] = field(default_factory=list)

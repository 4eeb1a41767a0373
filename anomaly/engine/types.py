"""The engine's input and output records. Pure data: no Kafka, no Prometheus."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    anomalous: np.ndarray  # bool (W,): score above threshold (and past warm-up)
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
        }


@dataclass
class EngineOutput:
    windows: list[ScoredWindow] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    readings: int = 0  # readings accepted into state
    batches: list[int] = field(default_factory=list)  # size of every batched model call made
    evicted: list[str] = field(default_factory=list)  # keys dropped for TTL or the key cap during this call

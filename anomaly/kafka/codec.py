"""Message formats: JSON bytes -> engine :class:`Event`, engine output -> JSON bytes, refusals -> dead letters.

Input message body (field names configurable, see :class:`MessageFormat`)::

    {"key": "pump-1", "ts": 1700000000.0, "values": [1.0, 2.0, 3.0]}              # one reading
    {"key": "pump-1", "ts": "2023-11-14T22:13:20Z", "values": {"temp": 1.0, ...}}   # features by name
    {"key": "pump-1", "readings": [{"ts": ..., "values": [...]}, ...]}            # a block of readings

The entity key comes from the body, else from the Kafka message key. Timestamps are epoch seconds (number) or
ISO-8601 strings (naive means UTC). ``null`` values become NaN and are left to the engine's ``nan_policy``.
A message that cannot be decoded raises :class:`DecodeError`, whose ``reason`` is a short, bounded code used
as the dead-letter ``reason`` header and metric label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from anomaly.engine.types import Alert, Event, Rejection, ScoredWindow

# Reasons a message is refused before the engine (dead-letter `reason` header, messages_invalid label).
DECODE_REASONS = (
    "oversized",
    "invalid_json",
    "missing_field",
    "bad_timestamp",
    "bad_values",
    "feature_count",
)


class DecodeError(ValueError):
    """A message that cannot become an event. ``reason`` is one of :data:`DECODE_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class MessageFormat:
    """Field names of the JSON body and the model's feature order (for `values` given as an object)."""

    features: tuple[str, ...]
    key_field: str = "key"
    time_field: str = "ts"
    values_field: str = "values"
    readings_field: str = "readings"
    max_message_bytes: int = 1_048_576


def parse_time(value: Any) -> float:
    """Epoch seconds from a number or an ISO-8601 string; DecodeError otherwise (bools are not numbers)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        ts = float(value)
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip())
        except ValueError:
            try:
                ts = float(value)
            except ValueError:
                raise DecodeError("bad_timestamp", f"cannot parse timestamp {value[:40]!r}") from None
        else:
            ts = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
    else:
        raise DecodeError(
            "bad_timestamp", f"timestamp must be a number or ISO-8601 string, got {value!r:.40}"
        )
    if not math.isfinite(ts):
        raise DecodeError("bad_timestamp", f"timestamp is not finite: {value!r:.40}")
    return ts


class Decoder:
    """Turns one Kafka record (anything with ``key`` and ``value`` bytes) into one :class:`Event`.

    The record itself becomes ``Event.ref``, so a refusal later in the engine still reaches the original bytes,
    topic, partition and offset for its dead letter.
    """

    def __init__(self, fmt: MessageFormat) -> None:
        self.fmt = fmt
        self.n_features = len(fmt.features)
        self._index = {name: i for i, name in enumerate(fmt.features)}

    def decode(self, record: Any) -> Event:
        raw = record.value
        fmt = self.fmt
        if raw is None:
            raise DecodeError("invalid_json", "empty message (tombstone)")
        if len(raw) > fmt.max_message_bytes:
            raise DecodeError("oversized", f"{len(raw)} bytes > max_message_bytes {fmt.max_message_bytes}")
        try:
            body = orjson.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:  # orjson.JSONDecodeError is a ValueError
            raise DecodeError("invalid_json", f"not JSON: {str(exc)[:80]}") from None
        if not isinstance(body, dict):
            raise DecodeError("invalid_json", f"body must be a JSON object, got {type(body).__name__}")
        key = body.get(fmt.key_field)
        if key is None:
            if record.key is None:
                raise DecodeError("missing_field", f"no {fmt.key_field!r} field and no message key")
            try:
                key = record.key.decode("utf-8")
            except UnicodeDecodeError:
                raise DecodeError("missing_field", "message key is not UTF-8") from None
        elif not isinstance(key, str):
            if isinstance(key, bool) or not isinstance(key, int | float):
                raise DecodeError("missing_field", f"{fmt.key_field!r} must be a string or number")
            key = str(key)
        block = body.get(fmt.readings_field)
        if block is None:
            ts = parse_time(self._field(body, fmt.time_field))
            row = self._values(self._field(body, fmt.values_field))
            return Event(key, np.array((ts,), np.float64), row.reshape(1, -1), record)
        if not isinstance(block, list) or not block:
            raise DecodeError("bad_values", f"{fmt.readings_field!r} must be a non-empty list of readings")
        fast = self._block_fast(block)
        if fast is not None:
            return Event(key, fast[0], fast[1], record)
        stamps = np.empty(len(block), np.float64)
        rows = []
        for i, reading in enumerate(block):
            if not isinstance(reading, dict):
                raise DecodeError("bad_values", f"reading {i} of the block is not an object")
            stamps[i] = parse_time(self._field(reading, fmt.time_field))
            rows.append(self._values(self._field(reading, fmt.values_field)))
        return Event(key, stamps, np.stack(rows), record)

    def _block_fast(self, block: list[Any]) -> tuple[np.ndarray, np.ndarray] | None:
        """Vectorized decode of a block whose timestamps are numbers and values lists (the common case);
        None sends anything else (ISO times, objects, errors) through the per-reading path."""
        tf, vf = self.fmt.time_field, self.fmt.values_field
        try:
            stamps = np.array([r[tf] for r in block], np.float64)
            values = np.array([r[vf] for r in block], np.float64)
        except (TypeError, ValueError, KeyError):
            return None
        if values.shape != (len(block), self.n_features) or stamps.ndim != 1 or not np.isfinite(stamps).all():
            return None
        return stamps, values

    @staticmethod
    def _field(body: dict[str, Any], name: str) -> Any:
        value = body.get(name)
        if value is None:
            raise DecodeError("missing_field", f"missing field {name!r}")
        return value

    def _values(self, values: Any) -> np.ndarray:
        """One reading's values as float64 (F,). ``null`` becomes NaN (numpy's float conversion of None)."""
        if isinstance(values, dict):
            missing = [f for f in self.fmt.features if f not in values]
            if missing or len(values) != self.n_features:
                extra = [k for k in values if k not in self._index]
                raise DecodeError(
                    "feature_count",
                    f"features do not match the model: missing {missing[:5]}, unexpected {extra[:5]}",
                )
            values = [values[f] for f in self.fmt.features]
        elif not isinstance(values, list):
            raise DecodeError("bad_values", "values must be a list or an object of feature: value")
        if len(values) != self.n_features:
            raise DecodeError(
                "feature_count", f"{len(values)} values, the model has {self.n_features} features"
            )
        try:
            row = np.array(values, np.float64)
        except (TypeError, ValueError):
            row = None
        if row is None or row.ndim != 1:
            raise DecodeError("bad_values", "values must be numbers or null")
        return row


def source_rejection(record: Any, err: DecodeError) -> Rejection:
    """A refusal before the engine. Engine reason ``malformed`` (``feature_count`` stays itself); the
    precise decode reason travels in ``detail`` as ``"<reason>: <message>"``."""
    reason = "feature_count" if err.reason == "feature_count" else "malformed"
    key = record.key.decode("utf-8", "replace") if record.key is not None else ""
    return Rejection(key, reason, 1, True, record, f"{err.reason}: {err.detail}")


def alert_message(alert: Alert) -> tuple[bytes, bytes]:
    """(key, value) of an alert record: keyed by entity so one key's alerts stay ordered in one partition."""
    return alert.key.encode(), orjson.dumps(alert.to_json())


def window_json(window: ScoredWindow, features: Sequence[str]) -> dict[str, Any]:
    """A scored window as JSON. float32 arrays go through float(), which is exact, so parity is testable."""
    return {
        "key": window.key,
        "start": float(window.timestamps[0]),
        "end": float(window.timestamps[-1]),
        "model_version": window.model_version,
        "timestamps": window.timestamps.tolist(),
        "errors": window.errors.tolist(),
        "scores": window.scores.tolist(),
        "thresholds": window.thresholds.tolist(),
        "anomalous": window.anomalous.tolist(),
        "alert_open": window.alert_open.tolist(),
        "decided_at": window.decided_at.tolist() if window.decided_at is not None else None,
        "contributions": dict(zip(features, window.contributions.tolist(), strict=False)),
    }


def window_message(window: ScoredWindow, features: Sequence[str]) -> tuple[bytes, bytes]:
    return window.key.encode(), orjson.dumps(window_json(window, features))


def dead_letter(rejection: Rejection) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """(key, value, headers) of a dead letter: the original bytes untouched, why and where in the headers.

    ``reason`` is the decode reason for source refusals and the engine reason otherwise; ``count`` is the
    number of readings of the message the engine refused (a block may be refused in part).
    """
    record = rejection.ref
    reason, detail = rejection.reason, rejection.detail
    head, sep, tail = detail.partition(": ")
    if sep and head in DECODE_REASONS:
        reason, detail = head, tail
    headers = [
        ("reason", reason.encode()),
        ("detail", detail[:500].encode()),
        ("entity_key", rejection.key.encode()),
        ("count", str(rejection.count).encode()),
    ]
    if record is None or not hasattr(record, "offset"):
        return rejection.key.encode(), None, headers
    headers += [
        ("source_topic", str(record.topic).encode()),
        ("source_partition", str(record.partition).encode()),
        ("source_offset", str(record.offset).encode()),
    ]
    return record.key, record.value, headers

"""Message formats: JSON bytes -> engine :class:`Event`, engine output -> JSON bytes, refusals -> dead letters.

Input message body (field names configurable, see :class:`MessageFormat`)::

    {"key": "pump-1", "ts": 1700000000.0, "values": [1.0, 2.0, 3.0]}              # one reading
    {"key": "pump-1", "ts": "2023-11-14T22:13:20Z", "values": {"temp": 1.0, ...}}   # features by name
    {"key": "pump-1", "readings": [{"ts": ..., "values": [...]}, ...]}            # a block of readings

The entity key comes from the body, else from the Kafka message key. Timestamps are epoch seconds (number) or
ISO-8601 strings (naive means UTC). Values are JSON numbers, read as float64 (the numeric contract of
:mod:`anomaly.data`); ``null`` values become NaN and are left to the engine's ``nan_policy``; strings and
booleans are refused (``bad_values``).
A message that cannot be decoded raises :class:`DecodeError`, whose ``reason`` is a short, bounded code used
as the dead-letter ``reason`` header and metric label.
"""

from __future__ import annotations

import gc
import math
import operator
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import chain, groupby, repeat
from typing import Any

import numpy as np
import orjson

from anomaly.data import EPOCH_MS_FROM, epoch_seconds
from anomaly.data.times import in_seconds
from anomaly.engine.types import Alert, Event, Readings, Rejection, ScoredWindow

# Reasons a message is refused before the engine (dead-letter `reason` header, messages_invalid label).
DECODE_REASONS = (
    "oversized",
    "invalid_json",
    "missing_field",
    "bad_timestamp",
    "future_timestamp",
    "bad_values",
    "feature_count",
)


# the most bytes one character of a key takes in an output: 4 in UTF-8 (the message key), 6 escaped in JSON
# (a control character, \u0001, in an alert's ``id`` and ``key``); keys shorter than the limit over this are
# not measured
KEY_BYTES_PER_CHAR = 6

# a number key as a float at or beyond this (2**53) may have lost digits: orjson reads an integer outside 64 bits
# (an ICCID of 20 digits) as the nearest float64, the same one for neighbouring integers, so distinct sensors would
# be pooled into one entity
_EXACT_KEY_FLOATS = 2.0**53


class DecodeError(ValueError):
    """A message that cannot become an event. ``reason`` is one of :data:`DECODE_REASONS`; ``key`` is the
    entity key when the body's key had been read before the refusal (None: it could not be), so that the dead
    letter names the entity even when the message key is empty or differs."""

    def __init__(self, reason: str, detail: str, key: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.key = key


@dataclass(frozen=True)
class MessageFormat:
    """Field names of the JSON body and the model's feature order (for `values` given as an object)."""

    features: tuple[str, ...]
    key_field: str = "key"
    time_field: str = "ts"
    values_field: str = "values"
    readings_field: str = "readings"
    max_message_bytes: int = 1_048_576
    max_future_seconds: float = (
        86_400.0  # readings stamped further ahead of the wall clock are refused; 0: no limit
    )
    # a longer entity key (UTF-8 bytes) is refused (`oversized`): an alert record carries it three times (message
    # key, `key`, `id`), so its outputs could not be written; the daemon uses kafka.max_request_bytes / 4
    max_key_bytes: int = 262_144


def parse_time(value: Any) -> float:
    """Epoch seconds from a number (seconds, milliseconds, microseconds or nanoseconds, told by magnitude as in
    CSV files: :func:`anomaly.data.epoch_seconds`) or an ISO-8601 string; DecodeError otherwise (bools are not
    numbers)."""
    numeric = True
    if isinstance(value, int | float) and not isinstance(value, bool):
        ts = float(value)
    elif isinstance(value, str):
        dt: datetime | None
        try:
            dt = datetime.fromisoformat(value.strip())
        except ValueError:
            dt = None
            try:
                ts = float(value)
            except ValueError:
                dt = _rfc3339_lower_case(value)
        if dt is not None:
            ts, numeric = _iso_seconds(value, dt if dt.tzinfo else dt.replace(tzinfo=UTC)), False
    else:
        raise DecodeError(
            "bad_timestamp", f"timestamp must be a number or ISO-8601 string, got {value!r:.40}"
        )
    if not math.isfinite(ts):
        raise DecodeError("bad_timestamp", f"timestamp is not finite: {value!r:.40}")
    if numeric and abs(ts) >= EPOCH_MS_FROM:
        return float(epoch_seconds(np.array(ts)))
    return ts


def _rfc3339_lower_case(value: str) -> datetime:
    """A time written with RFC 3339's lower-case ``t`` and ``z`` (``2023-11-14t22:13:20z``), which Python's
    fromisoformat refuses and the CSV path (pandas) reads: it was a dead letter ``bad_timestamp`` here only."""
    text = value.strip()
    if len(text) <= 40 and ("t" in text or "z" in text):
        try:
            return datetime.fromisoformat(text.replace("t", "T").replace("z", "Z"))
        except ValueError:
            pass
    raise DecodeError("bad_timestamp", f"cannot parse timestamp {value[:40]!r}")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SUB_MICROSECOND = re.compile(r"\d\.(\d{7,})(?!\d)")  # a fraction of more than 6 digits (Go's RFC3339Nano)


def _iso_seconds(text: str, dt: datetime) -> float:
    """Epoch seconds of an ISO-8601 time read into the aware ``dt``. Python's datetime keeps microseconds and drops
    further digits; a fraction with more of them (up to nanoseconds) is read from the text as the CSV path reads
    it (pandas' nanoseconds, :func:`anomaly.data.times.in_seconds`), so both give the same float64."""
    long = _SUB_MICROSECOND.search(text)
    if long is None:
        return dt.timestamp()
    whole = (dt.replace(microsecond=0) - _EPOCH) // timedelta(seconds=1)
    ns = whole * 1_000_000_000 + int(long.group(1)[:9].ljust(9, "0"))
    return float(in_seconds(np.array([ns], np.int64), "ns")[0])


def _key_ids(keys: list[str]) -> tuple[list[str], np.ndarray]:
    """The distinct keys in order of first appearance, and each message's index into them."""
    names = list(dict.fromkeys(keys))
    pos = {k: i for i, k in enumerate(names)}
    return names, np.fromiter(map(pos.__getitem__, keys), np.int64, len(keys))


class Decoder:
    """Turns Kafka records (anything with ``key`` and ``value`` bytes) into engine input.

    :meth:`decode` makes one :class:`Event` of one record and is the reference for every rule and refusal.
    :meth:`decode_poll` does the same for a whole poll in columns (:class:`Readings`): one ``orjson.loads``
    per record, then field extraction, type checks and conversion over the whole poll at C speed. Records it
    cannot take in bulk (nulls, anything malformed) go through
    :meth:`decode`, so both give the same readings and the same refusals (a test proves it).

    The record itself becomes the event's ``ref``, so a refusal later in the engine still reaches the
    original bytes, topic, partition and offset for its dead letter. Values must be JSON numbers or ``null``:
    strings ("1.5") and booleans are refused as ``bad_values``; numbers become float64 exactly as Python's
    ``float()`` reads them (the numeric contract in :mod:`anomaly.data`).
    """

    BULK_MIN = 32  # below this many records a poll chunk is decoded record by record

    def __init__(self, fmt: MessageFormat, clock: Callable[[], float] = time.time) -> None:
        self.fmt = fmt
        self.n_features = len(fmt.features)
        self._index = {name: i for i, name in enumerate(fmt.features)}
        # an object's values in the model's feature order
        self._in_order = operator.itemgetter(*fmt.features) if fmt.features else dict.values
        self._clock = clock
        self._latest = (
            math.inf
        )  # the newest timestamp taken: the clock + max_future_seconds, read once a call

    def _set_latest(self) -> None:
        ahead = self.fmt.max_future_seconds
        self._latest = self._clock() + ahead if ahead > 0 else math.inf

    def _check_future(self, stamps: np.ndarray) -> None:
        """DecodeError ``future_timestamp`` when a reading (epoch seconds) is stamped past ``_latest``."""
        if stamps.size and float(stamps.max()) > self._latest:
            ahead = float(stamps.max()) - (self._latest - self.fmt.max_future_seconds)
            raise DecodeError(
                "future_timestamp",
                f"timestamp {float(stamps.max())!r} is {ahead:.4g} s ahead of this machine's clock "
                f"(kafka.max_future_seconds = {self.fmt.max_future_seconds:g})",
            )

    # --- one record ------------------------------------------------------------------------------------------

    def decode(self, record: Any) -> Event:
        """One record's event, or DecodeError (its ``reason`` one of :data:`DECODE_REASONS`)."""
        self._set_latest()
        return self._decode(record)

    def _decode(self, record: Any) -> Event:
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
        return self._from_body(body, record)

    def _from_body(self, body: Any, record: Any) -> Event:
        """The event of a parsed body (``decode`` after size checks and JSON parsing)."""
        fmt = self.fmt
        if not isinstance(body, dict):
            raise DecodeError("invalid_json", f"body must be a JSON object, got {type(body).__name__}")
        key = self._key(body.get(fmt.key_field), record)
        try:
            return self._event(body, key, record)
        except DecodeError as err:
            err.key = key  # refused after the key was read: its dead letter names the entity
            raise

    def _event(self, body: dict[str, Any], key: str, record: Any) -> Event:
        fmt = self.fmt
        block = body.get(fmt.readings_field)
        if block is None:
            stamp = np.array((parse_time(self._field(body, fmt.time_field)),), np.float64)
            self._check_future(stamp)
            row = self._values(self._field(body, fmt.values_field))
            return Event(key, stamp, row.reshape(1, -1), record)
        if not isinstance(block, list) or not block:
            raise DecodeError("bad_values", f"{fmt.readings_field!r} must be a non-empty list of readings")
        self._one_key_block(body, block, key)
        fast = self._block_fast(block, record.value)
        if fast is not None:
            self._check_future(fast[0])
            return Event(key, fast[0], fast[1], record)
        stamps = np.empty(len(block), np.float64)
        rows = []
        for i, reading in enumerate(block):
            if not isinstance(reading, dict):
                raise DecodeError("bad_values", f"reading {i} of the block is not an object")
            stamps[i] = parse_time(self._field(reading, fmt.time_field))
            self._check_future(stamps[i : i + 1])
            rows.append(self._values(self._field(reading, fmt.values_field)))
        return Event(key, stamps, np.stack(rows), record)

    def _one_key_block(self, body: dict[str, Any], block: list[Any], key: str) -> None:
        """DecodeError ``bad_values`` for a block that would be read otherwise than it was meant: a reading of its
        own beside the block (it was dropped without a word), or a reading naming another key than the message's
        (a producer batching several sensors into one block: all of them were scored as the message's key)."""
        fmt = self.fmt
        if fmt.time_field in body or fmt.values_field in body:
            raise DecodeError(
                "bad_values",
                f"a message is one reading ({fmt.time_field!r}, {fmt.values_field!r}) or a block "
                f"({fmt.readings_field!r}), not both",
            )
        kf = fmt.key_field
        for i, reading in enumerate(block):
            if type(reading) is dict and kf in reading:
                own = reading[kf]
                if isinstance(own, bool) or not isinstance(own, str | int | float) or str(own) != key:
                    raise DecodeError(
                        "bad_values",
                        f"reading {i} of the block names {kf!r} {own!r:.40}, the message's is {key!r:.40}: a "
                        "block holds one key's readings",
                    )

    def _key(self, key: Any, record: Any) -> str:
        """The entity key: the body's key field, else the message key. An empty key is refused like a missing
        one: it would pool every keyless sensor into one entity (replay refuses an empty key cell alike)."""
        if key is None:
            if not record.key:
                raise DecodeError(
                    "missing_field",
                    f"no {self.fmt.key_field!r} field and no message key"
                    + (" (the message key is empty)" if record.key is not None else ""),
                )
            try:
                return self._short(record.key.decode("utf-8"))
            except UnicodeDecodeError:
                raise DecodeError("missing_field", "message key is not UTF-8") from None
        if isinstance(key, str):
            if not key:
                raise DecodeError("missing_field", f"{self.fmt.key_field!r} is empty")
            return self._short(key)
        if isinstance(key, bool) or not isinstance(key, int | float):
            raise DecodeError("missing_field", f"{self.fmt.key_field!r} must be a string or number")
        if isinstance(key, float) and abs(key) >= _EXACT_KEY_FLOATS:
            raise DecodeError(  # orjson reads an integer beyond 64 bits as a float: keys that differ merged
                "missing_field",
                f"{self.fmt.key_field!r} is a number too large to keep exactly ({key!r}: digits lost as a "
                "float64); send the key as a string",
            )
        return str(key)

    def _short(self, key: str) -> str:
        """``key`` if it is at most ``max_key_bytes`` long in UTF-8 and as a JSON string, else DecodeError
        ``oversized``: the outputs that carry it (an alert three times: the message key, and ``id`` and ``key``
        in its JSON, where a control character takes 6 bytes and a quote 2) would outgrow what the producer may
        send, and the record refused there would stop the daemon at every restart."""
        limit = self.fmt.max_key_bytes
        if len(key) * KEY_BYTES_PER_CHAR <= limit:
            return key
        utf8 = len(key.encode())
        if utf8 > limit:
            raise DecodeError("oversized", f"key of {utf8} bytes > {limit} (kafka.max_request_bytes / 4)")
        escaped = len(orjson.dumps(key)) - 2
        if escaped > limit:
            raise DecodeError(
                "oversized",
                f"key of {utf8} bytes, {escaped} as a JSON string > {limit} (kafka.max_request_bytes / 4)",
            )
        return key

    def _block_fast(self, block: list[Any], raw: bytes) -> tuple[np.ndarray, np.ndarray] | None:
        """Vectorized decode of a block whose timestamps are numbers (or text :func:`parse_time` takes) and values
        lists of F numbers (the common case); None sends anything else (objects, nulls, errors) through the
        per-reading path."""
        tf, vf = self.fmt.time_field, self.fmt.values_field
        try:
            return self._convert([r[tf] for r in block], [r[vf] for r in block])
        except (TypeError, KeyError):
            return None

    @staticmethod
    def _field(body: dict[str, Any], name: str) -> Any:
        value = body.get(name)
        if value is None:
            raise DecodeError("missing_field", f"missing field {name!r}")
        return value

    def _values(self, values: Any) -> np.ndarray:
        """One reading's values as float64 (F,). ``null`` becomes NaN; anything but numbers and null is
        refused (``"1.5"`` and ``true`` included)."""
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
        if not _NUMBER_TYPES.issuperset(map(type, values)):
            bad = next(v for v in values if type(v) not in _NUMBER_TYPES)
            raise DecodeError("bad_values", f"values must be numbers or null, got {bad!r:.40}")
        try:
            return np.array([math.nan if v is None else float(v) for v in values], np.float64)
        except OverflowError:  # an integer beyond float64
            raise DecodeError("bad_values", "a value is too large for float64") from None

    # --- a whole poll ----------------------------------------------------------------------------------------

    def decode_poll(self, records: Sequence[Any]) -> tuple[Readings, list[tuple[Any, DecodeError]]]:
        """(readings of the decodable records, (record, error) of the others), both in record order.

        Every record is parsed once. Runs of plain single readings are converted together
        (:meth:`_bulk`); a run that does not convert is halved until it does, so one odd record costs a few
        bulk attempts and at most BULK_MIN records converted one by one. Blocks and anything unparsable go
        record by record (a block's readings are already converted together by ``_block_fast``).

        The cyclic garbage collector is paused meanwhile (:func:`collector_paused`): the parsed bodies (a dict
        and a list per reading) stay alive until they are converted, and with the collector running their
        allocation set off a young-generation collection every 700 containers, each walking the bodies
        still alive (measured: 40 % of parsing a poll of 32-reading blocks). They hold no cycles; reference
        counting frees them when the poll is converted."""
        self._set_latest()
        with collector_paused():
            return self._decode_poll(records)

    def _decode_poll(self, records: Sequence[Any]) -> tuple[Readings, list[tuple[Any, DecodeError]]]:
        bodies = self._parse(records)
        rf = self.fmt.readings_field
        # 1: a single reading, 2: a block, 0: anything else (not an object, not parsed)
        kinds = [(2 if rf in b else 1) if type(b) is dict else 0 for b in bodies]
        parts: list[Readings] = []
        errors: list[tuple[Any, DecodeError]] = []
        lo = 0
        for kind, run in groupby(kinds):
            hi = lo + len(list(run))
            if kind:
                convert = self._bulk if kind == 1 else self._blocks
                self._bulk_into(records[lo:hi], bodies[lo:hi], parts, errors, convert)
            else:
                self._one_by_one(records[lo:hi], bodies[lo:hi], parts, errors)
            lo = hi
        return Readings.concat(parts, self.n_features) if parts else self._empty(), errors

    def _parse(self, records: Sequence[Any]) -> list[Any]:
        """``orjson.loads`` of every value; ``_UNPARSED`` where that fails or the size rules refuse it."""
        raws = [r.value for r in records]
        if None not in raws and max(map(len, raws), default=0) <= self.fmt.max_message_bytes:
            try:
                return list(map(orjson.loads, raws))
            except (UnicodeDecodeError, ValueError):
                pass
        bodies = []
        for raw in raws:
            try:
                ok = raw is not None and len(raw) <= self.fmt.max_message_bytes
                bodies.append(orjson.loads(raw) if ok else _UNPARSED)
            except (UnicodeDecodeError, ValueError):
                bodies.append(_UNPARSED)
        return bodies

    def _one_by_one(self, records: Sequence[Any], bodies: list[Any], parts: list, errors: list) -> None:
        events = []
        for rec, body in zip(records, bodies, strict=True):
            try:
                events.append(self._decode(rec) if body is _UNPARSED else self._from_body(body, rec))
            except DecodeError as err:
                errors.append((rec, err))
        if events:
            parts.append(Readings.from_events(events, self.n_features))

    def _bulk_into(
        self, records: Sequence[Any], bodies: list[Any], parts: list, errors: list, convert: Any
    ) -> None:
        """`convert` (:meth:`_bulk` or :meth:`_blocks`) the run at once, else halve it; short runs go one by one."""
        if len(records) >= self.BULK_MIN:
            bulk = convert(records, bodies)
            if bulk is not None:
                parts.append(bulk)
                return
            mid = len(records) // 2
            self._bulk_into(records[:mid], bodies[:mid], parts, errors, convert)
            self._bulk_into(records[mid:], bodies[mid:], parts, errors, convert)
            return
        self._one_by_one(records, bodies, parts, errors)

    def _blocks(self, records: Sequence[Any], bodies: list[dict[str, Any]]) -> Readings | None:
        """Columns of parsed block bodies, each with a string key and a non-empty list of readings that all have
        a number timestamp and a list of F numbers; None if any body is otherwise (the caller splits the run).
        All readings of the run are converted together: per reading only C-level `map`s run."""
        keys = self._bulk_keys(records, bodies)
        blocks: list[Any] = list(map(dict.get, bodies, repeat(self.fmt.readings_field)))
        if keys is None or set(map(type, blocks)) != {list}:
            return None
        counts = list(map(len, blocks))
        readings = list(chain.from_iterable(blocks))
        if 0 in counts or set(map(type, readings)) != {dict}:
            return None
        fmt = self.fmt
        if any(map(dict.__contains__, readings, repeat(fmt.key_field))) or any(
            fmt.time_field in b or fmt.values_field in b for b in bodies
        ):
            return None  # keys in readings, or a reading beside the block: checked record by record
        return self._readings(records, keys, readings, np.asarray(counts, np.int64))

    def _readings(
        self, records: Sequence[Any], keys: list[str], readings: list[dict[str, Any]], counts: np.ndarray
    ) -> Readings | None:
        """Columns of the poll: each reading's time and values (None when any is not a plain number, see
        :meth:`_columns`), the message keys (strings, checked by the caller) as ids, ``counts`` readings per
        message."""
        fmt = self.fmt
        stamps = list(map(dict.get, readings, repeat(fmt.time_field)))
        values = list(map(dict.get, readings, repeat(fmt.values_field)))
        converted = self._columns(records, stamps, values)
        if converted is None:
            return None
        names, kid = _key_ids(keys)
        return Readings(names, kid, counts, *converted, list(records))

    def _columns(
        self, records: Sequence[Any], stamps: list[Any], values: list[Any]
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """:meth:`_convert` of a poll's readings; None also where a reading is stamped past ``_latest`` (refused
        one by one, with the reason)."""
        converted = self._convert(stamps, values)
        if converted is not None and len(stamps) and float(converted[0].max()) > self._latest:
            return None
        return converted

    def _convert(self, stamps: list[Any], values: list[Any]) -> tuple[np.ndarray, np.ndarray] | None:
        """float64 timestamps (N,, epoch seconds: :func:`anomaly.data.epoch_seconds`, or :func:`parse_time` where some
        are text: ISO-8601 producers) and values (N, F) when every timestamp is a finite JSON number or a string
        :func:`parse_time` takes, and every values field a list of F JSON numbers (no null, string, boolean,
        object or nesting); else None.

        The types are checked before numpy sees the lists: ``np.array`` of a list holding one string makes a
        fixed-width text array as wide as the longest string for every element, so a single message with a
        500 KB string in a poll of 2,000 asked for gigabytes (a MemoryError, or the kernel's OOM killer, at
        every restart, as the message is never committed)."""
        n = len(stamps)
        if values and type(values[0]) is dict:  # features by name
            rows = self._by_name(values)
            if rows is None:
                return None
            values = rows
        try:
            kinds = set(map(type, chain.from_iterable(values)))
        except TypeError:  # a values field that is a number or null
            return None
        if not kinds <= _PLAIN_NUMBERS or not set(map(type, values)) <= {list, tuple}:
            return None  # nulls, strings, booleans, objects or nesting (per record: the reason)
        try:
            vals = np.array(values)
        except (ValueError, TypeError):  # ragged lists
            return None
        if vals.dtype.kind not in "fi" or vals.shape != (n, self.n_features):
            return None  # an integer beyond int64 / uint64 (object), wrong feature count
        stamp_kinds = set(map(type, stamps))
        if stamp_kinds <= _PLAIN_NUMBERS:
            ts = np.array(stamps)
            if ts.dtype.kind not in "fi" or ts.shape != (n,):
                return None
            ts = ts.astype(np.float64)
            if not np.isfinite(ts).all():
                return None
            ts = epoch_seconds(ts)
        elif stamp_kinds <= _PLAIN_NUMBERS | {str}:  # ISO-8601 or numbers as text: each as decode() reads it
            try:
                ts = np.fromiter(map(parse_time, stamps), np.float64, n)
            except DecodeError:
                return None
        else:
            return None  # nulls, booleans, lists, objects
        return ts, vals.astype(np.float64)

    def _by_name(self, values: list[Any]) -> list[Any] | None:
        """Values given as objects of exactly the model's features, as rows in the model's order (as
        :meth:`_values` takes them); None where any is not such an object (read one by one, with the reason)."""
        if set(map(type, values)) != {dict} or set(map(len, values)) != {self.n_features}:
            return None
        try:
            rows = list(map(self._in_order, values))
        except KeyError:  # a feature missing (another in its place)
            return None
        return (
            rows if self.n_features > 1 else [[v] for v in rows]
        )  # itemgetter of one name: the value itself

    def _bulk(self, records: Sequence[Any], bodies: list[dict[str, Any]]) -> Readings | None:
        """Columns of parsed single-reading bodies, each with a string key, a number timestamp and a list of F
        numbers; None if any body is otherwise (the caller splits the run)."""
        keys = self._bulk_keys(records, bodies)
        if keys is None:
            return None
        return self._readings(records, keys, bodies, np.ones(len(bodies), np.int64))

    def _bulk_keys(self, records: Sequence[Any], bodies: list[dict[str, Any]]) -> list[str] | None:
        """The entity key of every body as :meth:`_key` reads it (the body's key field, else the message key)
        when each is a non-empty string of at most ``max_key_bytes / KEY_BYTES_PER_CHAR`` characters; None
        otherwise (a key that is a number, missing, empty, not UTF-8 or long is read record by record). A
        producer that keys by the message key alone (no key field) decoded one record at a time, 8x slower."""
        fmt = self.fmt
        keys: list[Any] = list(map(dict.get, bodies, repeat(fmt.key_field)))
        if None in keys:
            try:
                keys = [r.key.decode("utf-8") if k is None else k for k, r in zip(keys, records, strict=True)]
            except (AttributeError, UnicodeDecodeError):  # no message key, or not UTF-8
                return None
        if (
            set(map(type, keys)) != {str}
            or "" in keys
            or max(map(len, keys)) * KEY_BYTES_PER_CHAR > fmt.max_key_bytes
        ):
            return None  # an empty or a long key is refused record by record
        return keys

    def _empty(self) -> Readings:
        return Readings(
            [], np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros((0, self.n_features)), []
        )


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for the block (a no-op where it is already off). Objects freed
    by reference counting are freed as usual; only the cycle search waits until the block ends."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


_NUMBER_TYPES = frozenset((float, int, type(None)))
_PLAIN_NUMBERS = frozenset((float, int))
_UNPARSED = object()  # a record whose value is missing, too large or not JSON: `decode` says which


def source_rejection(record: Any, err: DecodeError) -> Rejection:
    """A refusal before the engine. Engine reason ``malformed`` (``feature_count`` stays itself); the
    precise decode reason travels in ``detail`` as ``"<reason>: <message>"``. The key is the entity key the
    decoder read (the body's key field, else the message key), else the message key as it is, else ""."""
    reason = "feature_count" if err.reason == "feature_count" else "malformed"
    if err.key is not None:
        key = err.key
    else:
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

"""Reading history back from Kafka for retraining: an input topic over a time range, alerts, dead letters.

A time range selects records by their Kafka timestamp (when they were produced; CreateTime): the scan of each
partition starts at ``offsets_for_times(from)`` and ends at ``offsets_for_times(to)`` (or the end of the
partition), and every record is checked against the range too — so a broker whose timestamp index is coarse
(Tansu answers with an earlier offset) still gives exactly the records of the range. Messages that appear on the
dead-letter topic (``source_topic``/``source_partition``/``source_offset`` headers) or that do not decode are
left out: the daemon refused them, so they are not normal data. Missing values (``null``, NaN) are kept: training
applies ``engine.nan_policy`` to them, as it does to CSV files and as the engine does live.
"""

from __future__ import annotations

import array
import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from kafka import KafkaConsumer, TopicPartition

from anomaly.config import KafkaConfig
from anomaly.data import Series
from anomaly.kafka import KafkaError, clients
from anomaly.kafka.codec import DecodeError, Decoder
from anomaly.kafka.sinks import GROUP_HEADER, group_value

Position = tuple[str, int, int]  # topic, partition, offset
# retrain and promote name their input topics with --topic (consume: --topics)
INPUT = clients.TopicRole("input topic", "kafka.topics", "--topic")


@dataclass
class TopicHistory:
    """Per-key readings of a time range, and what was left out."""

    series: list[Series]
    messages: int = 0
    readings: int = 0
    invalid: int = 0  # messages that do not decode (they are dead letters too)
    dead_letters: int = 0  # decodable messages the daemon refused (on the dead-letter topic)
    other_keys: int = 0  # messages of keys not selected
    duplicates: int = 0  # readings at a timestamp the key already had, or at a non-finite one
    partitions: dict[str, list[int]] = field(
        default_factory=dict
    )  # "topic:partition" -> [start, end) offsets

    def to_json(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "invalid_messages": self.invalid,
            "dead_letter_messages": self.dead_letters,
            "other_key_messages": self.other_keys,
            "dropped_readings": self.duplicates,
            "offsets": self.partitions,
        }


class KeyReadings:
    """One key's readings as the range is read: timestamps and values appended, as raw float64, to two growable
    ``array.array`` buffers (over-allocated, amortized), so a reading costs its ``8 * (1 + n_features)`` bytes
    rather than two numpy arrays (about 100 bytes of object each) a message until the range is read."""

    __slots__ = ("n_features", "stamps", "values")

    def __init__(self, n_features: int) -> None:
        self.n_features = n_features
        self.stamps = array.array("d")
        self.values = array.array("d")

    def add(self, stamps: Any, values: Any) -> None:
        """One message's readings: timestamps (N,) and values (N, n_features), anything numpy takes as float64."""
        ts = np.asarray(stamps, np.float64).reshape(-1)
        vals = np.asarray(values, np.float64).reshape(-1, self.n_features)
        self.stamps.frombytes(ts.tobytes())
        self.values.frombytes(vals.tobytes())

    def series(self, key: str, source: str, duplicate_policy: str = "drop") -> tuple[Series, int]:
        """The key's Series in time order (a stable sort: readings of one timestamp stay in reading order), without
        readings at a non-finite timestamp or, unless `duplicate_policy` is "keep", at a repeated one (as the
        engine would), and how many readings were dropped. New arrays: the buffers may be dropped afterwards."""
        ts = np.frombuffer(self.stamps, np.float64) if self.stamps else np.empty(0, np.float64)
        flat = np.frombuffer(self.values, np.float64) if self.values else np.empty(0, np.float64)
        vals = flat.reshape(-1, self.n_features)
        order = np.argsort(ts, kind="stable")
        ts, vals = ts[order], vals[order]
        keep = np.isfinite(ts)
        # the engine drops a reading at its key's last timestamp (unless engine.duplicate_policy = "keep")
        keep[1:] &= np.diff(ts) >= 0 if duplicate_policy == "keep" else np.diff(ts) > 0
        return Series(key, ts[keep], vals[keep], None, source), int((~keep).sum())


def _consumer(cfg: KafkaConfig, timeout_s: float) -> KafkaConsumer:
    return clients.make_consumer(cfg, timeout_s, group=False, max_poll_records=5000)


def _ranges(
    consumer: KafkaConsumer,
    topic: str,
    start_ms: int | None,
    end_ms: int | None,
    missing: str,
) -> dict[TopicPartition, tuple[int, int]]:
    """Per partition, the offsets [lo, hi) to scan: lo from offsets_for_times(start), hi from
    offsets_for_times(end) or the end offset. Both only bound the scan (records are filtered by timestamp), so
    hi is never below lo + 1: a broker that under-reports its end offset still gets asked. ``missing``: the
    error when the topic does not exist."""
    parts = consumer.partitions_for_topic(topic)
    if not parts:
        raise KafkaError(missing)
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    first = consumer.beginning_offsets(tps)
    last = consumer.end_offsets(tps)
    lo = dict(first)
    hi = dict(last)
    if start_ms is not None:
        for tp, found in consumer.offsets_for_times({tp: start_ms for tp in tps}).items():
            usable = found is not None and found.timestamp is not None and found.timestamp >= 0
            lo[tp] = max(first[tp], found.offset) if usable else last[tp]  # type: ignore[union-attr]
    if end_ms is not None:
        for tp, found in consumer.offsets_for_times({tp: end_ms for tp in tps}).items():
            usable = found is not None and found.timestamp is not None and found.timestamp >= end_ms
            if usable and found.offset > lo[tp]:  # type: ignore[union-attr]
                hi[tp] = min(last[tp], found.offset)  # type: ignore[union-attr]
    return {tp: (lo[tp], max(hi[tp], lo[tp] + 1)) for tp in tps}


def _scan(
    consumer: KafkaConsumer,
    ranges: dict[TopicPartition, tuple[int, int]],
    progress: Callable[[int], None] | None = None,
    idle_polls: int = 3,
) -> Iterator[Any]:
    """Every record from each partition's start offset until its position passes its end offset, or until
    `idle_polls` consecutive polls return nothing (an empty partition, or a broker's end offset that was too
    high). Whole fetched batches are yielded: the caller filters by timestamp."""
    if not ranges:
        return
    consumer.assign(list(ranges))
    for tp, (lo, _) in ranges.items():
        consumer.seek(tp, lo)
    todo = dict(ranges)
    idle = 0
    while todo:
        polled = consumer.poll(timeout_ms=300)
        idle = 0 if any(polled.values()) else idle + 1
        if idle >= idle_polls:
            return
        for tp, records in polled.items():
            if tp in todo and records:
                yield from records
                if progress is not None:
                    progress(len(records))
        for tp in list(todo):
            if consumer.position(tp) >= todo[tp][1]:
                del todo[tp]
                consumer.pause(tp)


def other_group(rec: Any, group: str | None, others: Counter[str] | None) -> bool:
    """Whether `rec` was written by another consumer group than `group` (its ``group`` header, which daemons
    write since session 22; a record without one, from an older daemon or written by hand, counts as the group's
    own), counted by group in `others`."""
    if group is None:
        return False
    writer = next((v for k, v in (rec.headers or []) if k == GROUP_HEADER), None)
    if writer is None or bytes(writer) == group_value(group):
        return False
    if others is not None:
        others[bytes(writer).decode(errors="replace")] += 1
    return True


def read_alert_events(
    cfg: KafkaConfig,
    topic: str,
    timeout_s: float = 10.0,
    group: str | None = None,
    others: Counter[str] | None = None,
) -> list[dict[str, Any]]:
    """Every alert event on the alerts topic (alerts are few; spans may start before any range) written by
    consumer group `group` (None: any; the others are counted in `others`)."""
    consumer = _consumer(cfg, timeout_s)
    try:
        out = []
        missing = clients.not_found(cfg, [(topic, clients.ALERTS)])
        for rec in _scan(consumer, _ranges(consumer, topic, None, None, missing)):
            if other_group(rec, group, others):
                continue
            try:
                out.append(json.loads(rec.value))
            except (TypeError, ValueError):
                continue
        return out
    finally:
        consumer.close(autocommit=False)


def read_dead_letter_positions(
    cfg: KafkaConfig,
    topic: str,
    start_ms: int | None,
    timeout_s: float = 10.0,
    group: str | None = None,
    others: Counter[str] | None = None,
) -> set[Position]:
    """Source positions of the dead letters produced at or after `start_ms` (a dead letter is produced after
    the message it refers to, so earlier ones cannot concern the range) by consumer group `group` (None: any;
    the others are counted in `others`)."""
    consumer = _consumer(cfg, timeout_s)
    try:
        out: set[Position] = set()
        missing = clients.not_found(cfg, [(topic, clients.DEAD_LETTERS)])
        for rec in _scan(consumer, _ranges(consumer, topic, start_ms, None, missing)):
            if other_group(rec, group, others):
                continue
            h = {k: v for k, v in (rec.headers or [])}
            try:
                out.add(
                    (
                        h["source_topic"].decode(),
                        int(h["source_partition"].decode()),
                        int(h["source_offset"].decode()),
                    )
                )
            except (KeyError, ValueError, AttributeError):
                continue
        return out
    finally:
        consumer.close(autocommit=False)


def read_topic_range(
    cfg: KafkaConfig,
    topics: Sequence[str],
    decoder: Decoder,
    start: float,
    end: float,
    *,
    keys: set[str] | None = None,
    exclude: set[Position] | None = None,
    progress: bool = False,
    timeout_s: float = 10.0,
    duplicate_policy: str = "drop",
) -> TopicHistory:
    """Readings of `topics` produced in [start, end) (epoch seconds), per key in time order (readings at a
    non-finite timestamp dropped, and at a repeated one unless `duplicate_policy` is "keep", as the engine
    would; missing values kept for ``engine.nan_policy``), without the messages at `exclude` positions."""
    start_ms, end_ms = int(start * 1000), int(end * 1000)
    exclude = exclude or set()
    consumer = _consumer(cfg, timeout_s)
    hist = TopicHistory([])
    read: dict[str, KeyReadings] = {}
    try:
        ranges: dict[TopicPartition, tuple[int, int]] = {}
        for topic in topics:
            missing = clients.not_found(cfg, [(topic, INPUT)])
            ranges.update(_ranges(consumer, topic, start_ms, end_ms, missing))
        hist.partitions = {f"{tp.topic}:{tp.partition}": [lo, hi] for tp, (lo, hi) in ranges.items()}
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(
                total=sum(hi - lo for lo, hi in ranges.values()), desc="read", unit="msg", disable=None
            )
        for rec in _scan(consumer, ranges, bar.update if bar is not None else None):
            if not start_ms <= rec.timestamp < end_ms:
                continue
            hist.messages += 1
            if (rec.topic, rec.partition, rec.offset) in exclude:
                hist.dead_letters += 1
                continue
            try:
                event = decoder.decode(rec)
            except DecodeError:
                hist.invalid += 1
                continue
            key = str(event.key)
            if keys is not None and key not in keys:
                hist.other_keys += 1
                continue
            if key not in read:
                read[key] = KeyReadings(decoder.n_features)
            read[key].add(event.timestamps, event.values)
        if bar is not None:
            bar.close()
    finally:
        consumer.close(autocommit=False)
    for key in sorted(read):
        series, dropped = read.pop(key).series(key, f"kafka:{','.join(topics)}", duplicate_policy)
        hist.duplicates += dropped
        hist.readings += len(series.timestamps)
        hist.series.append(series)
    return hist

"""The daemon's source: a large batch at the head of the stream is scored in several engine calls, oldest records
first, with the same results as one call; a catch-up (old records) stays one call; a small batch of a busy stream
waits for the fetch in flight."""

from __future__ import annotations

import threading
import time
import types
from typing import Any

import numpy as np
import orjson
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import TopicPartition

from anomaly.config import EngineConfig
from anomaly.engine import Engine
from anomaly.kafka.checkpoint import PartitionTracker
from anomaly.kafka.codec import Decoder, MessageFormat
from anomaly.kafka.source import MAX_CALLS, KafkaSource, split_oldest_first
from anomaly.runner import run

TPS = [TopicPartition("in", p) for p in range(3)]


def _record(tp: TopicPartition, offset: int, stamp_ms: int, value: bytes) -> Any:
    return ConsumerRecord(
        tp.topic, tp.partition, 0, offset, stamp_ms, 0, None, value, [], None, -1, len(value), -1
    )


def _poll(features: int, per_partition: int, seed: int = 0, age_s: float = 0.0) -> dict[Any, list[Any]]:
    """Three partitions of single readings, 12 keys each, their broker timestamps interleaved across partitions
    (partition p's i-th record at 3i + p ms, one out of order), the newest ``age_s`` old; readings every second
    per key."""
    rng = np.random.default_rng(seed)
    t0 = int((time.time() - age_s) * 1000) - 3 * per_partition
    out: dict[Any, list[Any]] = {}
    for tp in TPS:
        recs = []
        for i in range(per_partition):
            key = f"p{tp.partition}-k{i % 12}"
            body = {
                "key": key,
                "ts": 1000.0 + i // 12,
                "values": rng.normal(0, 1, features).round(4).tolist(),
            }
            stamp = t0 + 3 * i + tp.partition - (5 if i == 7 else 0)
            recs.append(_record(tp, i, stamp, orjson.dumps(body)))
        out[tp] = recs
    return out


def test_split_oldest_first_keeps_each_partitions_records_in_order_and_cuts_by_time() -> None:
    records = _poll(3, 40)
    size = records[TPS[0]][0].serialized_value_size
    parts = split_oldest_first(records, 10 * size)
    assert len(parts) > 3
    for tp in TPS:  # every record once, each partition's in offset order
        assert [r for p in parts for r in p.get(tp, [])] == records[tp]
    largest = max(r.serialized_value_size for rs in records.values() for r in rs)
    assert all(
        sum(r.serialized_value_size for rs in p.values() for r in rs) <= 10 * size + largest for p in parts
    )
    latest = [max(r.timestamp for rs in p.values() for r in rs) for p in parts]
    earliest = [min(r.timestamp for rs in p.values() for r in rs if r.offset != 7) for p in parts]
    assert all(a <= b for a, b in zip(latest, earliest[1:], strict=False))  # oldest first across partitions
    assert split_oldest_first(records, 10**9) == [records]


def _run(bundle: Any, records: dict[Any, list[Any]], max_call_bytes: int) -> tuple[Any, ...]:
    """Score one poll through KafkaSource -> runner -> engine; (windows by key, alerts, runner batches,
    positions per runner batch)."""
    tracker = PartitionTracker()
    tracker.owned.update(TPS)
    stop = threading.Event()
    polls = iter([{tp: list(recs) for tp, recs in records.items()}])

    def poll(timeout_ms: int) -> dict[Any, list[Any]]:
        got = next(polls, None)
        if got is None:
            stop.set()
            return {}
        return got

    consumer = types.SimpleNamespace(poll=poll)
    source = KafkaSource(
        consumer,  # type: ignore[arg-type]
        Decoder(MessageFormat(tuple(bundle.features))),
        tracker,
        stop,
        max_call_bytes=max_call_bytes,
    )
    engine = Engine(bundle, EngineConfig())
    windows: dict[str, list[np.ndarray]] = {}
    alerts: list[Any] = []
    positions: list[Any] = []

    def on_batch(batch: Any, out: Any) -> None:
        if batch.messages:
            positions.append(batch.position)
        for w in out.windows:
            windows.setdefault(w.key, []).append(np.concatenate([w.timestamps, w.scores, w.errors]))
        alerts.extend(a.to_json() for a in out.alerts)

    run(engine, source.batches(), [], on_batch=on_batch)
    return windows, alerts, source.calls - 1, positions, engine.snapshot()


def test_a_batch_at_the_head_is_scored_in_calls_oldest_first_with_the_results_of_one_call(bundle) -> None:
    records = _poll(len(bundle.features), 120)
    size = sum(r.serialized_value_size for recs in records.values() for r in recs)
    whole = _run(bundle, records, 0)
    calls = _run(bundle, records, size // 5)
    assert whole[2] == 1 and calls[2] >= 5
    assert calls[0].keys() == whole[0].keys() and len(whole[0]) == 36
    for key, arrays in whole[0].items():
        assert np.array_equal(np.concatenate(arrays), np.concatenate(calls[0][key]))
    assert sorted(map(str, calls[1])) == sorted(map(str, whole[1]))
    assert calls[4] == whole[4]  # the same state, bit for bit
    assert {tp: n for p in calls[3] for tp, n in p.items()} == whole[3][0] == {tp: 120 for tp in TPS}
    for tp in TPS:  # each call reports the next offset of every partition it held, increasing
        seen = [p[tp] for p in calls[3] if tp in p]
        assert seen == sorted(seen) and len(seen) > 1


def test_a_catch_up_stays_one_call_and_no_batch_makes_more_than_max_calls(bundle) -> None:
    size = sum(r.serialized_value_size for recs in _poll(len(bundle.features), 120).values() for r in recs)
    assert _run(bundle, _poll(len(bundle.features), 120, age_s=1.5), size // 5)[2] == 1  # records 1.5 s old
    assert _run(bundle, _poll(len(bundle.features), 120, age_s=0.5), size // 5)[2] >= 5
    assert _run(bundle, _poll(len(bundle.features), 120), 1)[2] == MAX_CALLS


def test_a_small_batch_waits_for_the_fetch_in_flight_within_max_batch_ms() -> None:
    """Under min_batch_bytes the source asks for the fetch in flight (a wait bounded by what is left of the
    linger) and adds its records; over it, or with min_batch_bytes 0, it never waits."""
    tp = TPS[0]
    recs = [_record(tp, i, i, b'{"key":"k","ts":%d,"values":[1.5]}' % i) for i in range(6)]
    asked: list[tuple[int, float]] = []

    def buffered(n: int, wait_ms: float = 0.0) -> dict[Any, list[Any]]:
        asked.append((n, wait_ms))
        waits = sum(1 for _, w in asked if w)
        if wait_ms and waits < 3:
            return {tp: [recs[1 + waits]]}
        return {}

    def batch(min_batch_bytes: int) -> Any:
        asked.clear()
        stop = threading.Event()
        tracker = PartitionTracker()
        tracker.owned.add(tp)
        consumer = types.SimpleNamespace(poll=lambda timeout_ms: {tp: recs[:2]})
        source = KafkaSource(
            consumer,  # type: ignore[arg-type]
            Decoder(MessageFormat(("a",))),
            tracker,
            stop,
            buffered=buffered,
            max_batch_bytes=10**6,
            max_batch_s=60.0,
            min_batch_bytes=min_batch_bytes,
            linger_s=0.01,
        )
        return next(source.batches())

    size = recs[0].serialized_value_size
    assert batch(0).messages == 2 and asked == [(2000, 0.0)]
    assert batch(3 * size).messages == 3  # waited once: 3 records are enough
    assert [w > 0 for _, w in asked] == [False, True, False] and 0 < asked[1][1] <= 10
    assert batch(8 * size).messages == 4  # waited until a wait brought nothing
    assert batch(9 * size).messages == 2 and asked == [(2000, 0.0)]  # under a quarter of it: a slow stream

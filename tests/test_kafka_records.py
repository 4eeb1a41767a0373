"""The fast record path equals kafka-python's own: same records, offsets, counters and errors, fetch by fetch."""

from __future__ import annotations

import collections
import struct
import threading
import types
from typing import Any

import pytest
from kafka.consumer.fetcher import ConsumerRecord, Fetcher, IsolationLevel
from kafka.errors import CorruptRecordError
from kafka.protocol.old.fetch import AbortedTransaction
from kafka.record.default_records import DefaultRecordBase, DefaultRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords
from kafka.record.util import calc_crc32c
from kafka.structs import TopicPartition

from anomaly.config import KafkaConfig
from anomaly.kafka import clients
from anomaly.kafka import records as fast
from anomaly.kafka.checkpoint import PartitionTracker
from anomaly.kafka.codec import Decoder, MessageFormat
from anomaly.kafka.source import KafkaSource

TP = TopicPartition("readings", 3)
T0 = 1_700_000_000_000
B = DefaultRecordBase


def _batch(
    base: int,
    items: list[tuple[Any, Any, list[Any]]],
    *,
    codec: int = 0,
    pid: int = -1,
    control: bool = False,
    log_append: bool = False,
    step_ms: int = 3,
) -> bytes:
    """One v2 batch at offset ``base``; ``control``/``log_append`` set the attribute bits only a broker sets."""
    build = DefaultRecordBatchBuilder(
        2, codec, pid >= 0, pid, 0 if pid >= 0 else -1, 0 if pid >= 0 else -1, 1 << 24
    )
    for i, (key, value, headers) in enumerate(items):
        build.append(i, T0 + i * step_ms, key, value, headers)
    raw = bytearray(build.build())
    struct.pack_into(">q", raw, 0, base)
    if control or log_append:
        attrs = struct.unpack_from(">h", raw, B.ATTRIBUTES_OFFSET)[0]
        attrs |= (B.CONTROL_MASK if control else 0) | (B.TIMESTAMP_TYPE_MASK if log_append else 0)
        struct.pack_into(">h", raw, B.ATTRIBUTES_OFFSET, attrs)
        struct.pack_into(">I", raw, B.CRC_OFFSET, calc_crc32c(memoryview(raw)[B.ATTRIBUTES_OFFSET :]))
    return bytes(raw)


def _marker(base: int, pid: int, commit: bool) -> bytes:
    return _batch(base, [(struct.pack(">hh", 0, int(commit)), b"", [])], pid=pid, control=True)


def _readings(n: int, size: int = 60) -> list[tuple[Any, Any, list[Any]]]:
    return [
        (f"k{i % 7}".encode(), b'{"key":"k%d","ts":%d,"values":[1.5]}' % (i % 7, i) + b" " * size, [])
        for i in range(n)
    ]


def _drain(cls: Any, data: bytes, fetch_offset: int = 0, chunk: int = 7, **kw: Any) -> list[Any]:
    """Everything observable of a PartitionRecords, take by take: records, offsets, counters, errors."""
    part = cls(fetch_offset, TP, MemoryRecords(data), **kw)
    seen = []
    for _ in range(10_000):
        try:
            got = part.take(chunk)
        except Exception as exc:  # noqa: BLE001 - the error itself is compared
            seen.append(("raised", type(exc), str(exc)))
            continue
        seen.append((got, part.next_fetch_offset, part.records_read, part.bytes_read, part.leader_epoch))
        if not part or not got:  # drained, or a generator that raised and is finished
            return seen
    raise AssertionError("never drained")


def _same(data: bytes, **kw: Any) -> list[Any]:
    public = _drain(Fetcher.PartitionRecords, data, **kw)
    assert _drain(fast.FastPartitionRecords, data, **kw) == public
    return public


def test_the_fast_path_is_active_for_this_kafka_python() -> None:
    assert fast.supported()  # else every test below compares the public path with itself


@pytest.mark.parametrize("chunk", [1, 7, 2000])
def test_plain_batches_give_the_same_records_offsets_and_counters(chunk: int) -> None:
    data = _batch(0, _readings(40)) + _batch(40, _readings(25, 9000)) + _batch(65, _readings(3))
    seen = _same(data, chunk=chunk)
    assert sum(len(s[0]) for s in seen) == 68


def test_taken_from_inside_a_batch_and_read_in_one_loop() -> None:
    data = _batch(100, _readings(50))
    seen = _same(data, fetch_offset=117)
    assert seen[0][0][0].offset == 117
    batch = MemoryRecords(data).next_batch()
    assert fast.read_batch(batch, TP.topic, TP.partition, 0) is not None


@pytest.mark.parametrize(
    "items",
    [
        [(None, b"v", []), (b"", None, []), (b"k" * 64, b"v" * 8192, []), (b"k" * 63, b"", [])],
        [(b"a", b"b" * 200_000, [])],  # a three-byte length varint
    ],
    ids=["null-and-empty-keys-values-varint-edges", "large"],
)
def test_null_empty_and_large_keys_and_values(items: list[Any]) -> None:
    _same(_batch(0, items, step_ms=40_000))


def test_compressed_and_log_append_time_batches() -> None:
    _same(_batch(0, _readings(30), codec=B.CODEC_GZIP) + _batch(30, _readings(5), log_append=True))


def test_records_with_headers_go_through_kafka_pythons_loop() -> None:
    items = [(b"k", b"v", [("trace", b"x")]), (b"k", b"w", [("a", None)])]
    data = _batch(0, _readings(4)) + _batch(4, items) + _batch(6, _readings(4))
    assert fast.read_batch(MemoryRecords(_batch(4, items)).next_batch(), "t", 0, 0) is None
    _same(data)


@pytest.mark.parametrize("isolation", [IsolationLevel.READ_COMMITTED, IsolationLevel.READ_UNCOMMITTED])
def test_transactions_aborted_skipped_and_control_batches_hidden(isolation: IsolationLevel) -> None:
    data = (
        _batch(0, _readings(3))
        + _batch(3, _readings(4), pid=7)  # aborted
        + _batch(7, _readings(2), pid=8)  # committed
        + _marker(9, 7, commit=False)
        + _marker(10, 8, commit=True)
        + _batch(11, _readings(3), pid=7)  # committed later
        + _marker(14, 7, commit=True)
    )
    aborted = [AbortedTransaction(7, 3)]
    seen = _same(data, isolation_level=isolation, aborted_transactions=aborted)
    offsets = [r.offset for s in seen for r in s[0]]
    if isolation == IsolationLevel.READ_COMMITTED:
        assert offsets == [0, 1, 2, 7, 8, 11, 12, 13]
    else:
        assert offsets == [0, 1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 13]
    assert seen[-1][1] == 15  # past the last control batch


def test_the_daemons_input_consumer_skips_an_upstream_producers_aborted_transaction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exactly-once job upstream that writes the sensors topic aborts a transaction and sends its readings
    again. The daemon's group consumer read the input uncommitted (kafka-python's default): it scored the
    aborted readings, then refused their committed copies as duplicate or backward. It reads committed records
    only, as Kafka Streams' and Quix's exactly-once consumers do (Tansu 0.6 sends no abort markers, so a fetch
    built as Kafka sends it stands in for the broker)."""
    settings: dict[str, Any] = {}
    monkeypatch.setattr(clients, "KafkaConsumer", lambda **kw: settings.update(kw))
    clients.make_consumer(KafkaConfig(topics=("readings",)))
    data = (
        _batch(0, _readings(3))
        + _batch(3, _readings(4), pid=7)  # aborted upstream
        + _marker(7, 7, commit=False)
        + _batch(8, _readings(4), pid=7)  # the same readings again, committed
        + _marker(12, 7, commit=True)
    )
    seen = _drain(
        fast.FastPartitionRecords,
        data,
        isolation_level=IsolationLevel.build_from(
            settings.get("isolation_level", "read_uncommitted")
        ),  # its default
        aborted_transactions=[AbortedTransaction(7, 3)],
    )
    assert [r.offset for s in seen for r in s[0]] == [0, 1, 2, 8, 9, 10, 11]


@pytest.mark.parametrize("last_byte", [1, 2], ids=["negative-header-count", "headers-past-the-end"])
def test_corrupt_batches_raise_kafka_pythons_errors_after_the_same_records(last_byte: int) -> None:
    good = _batch(0, _readings(5))
    flipped = bytearray(_batch(5, _readings(5)))
    flipped[-40] ^= 0xFF  # a bit flip inside a record: the batch's CRC check fails
    seen = _same(good + bytes(flipped) + _batch(10, _readings(2)))
    assert [s[1] for s in seen if s[0] == "raised"] == [CorruptRecordError]
    broken = bytearray(_batch(5, _readings(5)))
    broken[-1] = last_byte  # the last record's header count (zigzag: -1, 1)
    seen = _same(good + bytes(broken), check_crcs=False)
    assert [s[1] for s in seen if s[0] == "raised"] == [CorruptRecordError]
    assert [r.offset for s in seen if s[0] != "raised" for r in s[0]] == list(range(9))  # those before it


def test_install_only_where_the_checked_source_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    fetch_records = object()
    consumer = types.SimpleNamespace(
        _fetcher=types.SimpleNamespace(PartitionRecords=Fetcher.PartitionRecords, fetch_records=fetch_records)
    )
    monkeypatch.setattr(fast, "_CHECKED", {**fast._CHECKED, "DefaultRecordBatch._read_msg": "other"})
    fast.supported.cache_clear()
    try:
        assert not fast.install(consumer)
        assert consumer._fetcher.PartitionRecords is Fetcher.PartitionRecords
    finally:
        monkeypatch.undo()
        fast.supported.cache_clear()
    assert consumer._fetcher.fetch_records is fetch_records
    assert fast.install(consumer)
    assert consumer._fetcher.PartitionRecords is fast.FastPartitionRecords
    assert consumer._fetcher.fetch_records is not fetch_records  # wrapped by no_false_idle


class _RacyFetcher:
    """kafka-python 3.0.12's Fetcher at the moment of the race: the fetch in flight completes (its response is
    buffered) after fetch_records drained the buffer and before it set up its wait, so it answers "no records,
    nothing in flight" with the records in its buffer."""

    def __init__(self, race: bool, ready: dict[Any, list[int]] | None = None) -> None:
        self._completed_fetches: collections.deque[str] = collections.deque()
        self.race, self.ready, self.calls = race, ready, []

    def fetch_records(self, max_records=None, update_offsets=True, timeout_ms=None):  # type: ignore[no-untyped-def]
        self.calls.append(("fetch_records", max_records, update_offsets, timeout_ms))
        if self.ready:
            return self.ready, False
        if self.race:
            self._completed_fetches.append("completed fetch")
        return {}, True

    def fetched_records(self, max_records=None, update_offsets=True):  # type: ignore[no-untyped-def]
        self.calls.append(("fetched_records", max_records, update_offsets))
        self._completed_fetches.popleft()
        return {TopicPartition("in", 0): [7, 8]}, False


def test_a_fetch_completed_between_drain_and_wait_is_returned_not_slept_on() -> None:
    racy = _RacyFetcher(race=True)
    fetch = fast.no_false_idle(racy)
    assert fetch(5, update_offsets=True, timeout_ms=100) == ({TopicPartition("in", 0): [7, 8]}, False)
    assert racy.calls == [("fetch_records", 5, True, 100), ("fetched_records", 5, True)]
    quiet = _RacyFetcher(race=False)  # really idle: nothing buffered, nothing in flight -> poll may sleep
    assert fast.no_false_idle(quiet)(5, timeout_ms=100) == ({}, True)
    assert quiet.calls == [("fetch_records", 5, True, 100)]
    ready = _RacyFetcher(race=False, ready={TopicPartition("in", 1): [1]})
    assert fast.no_false_idle(ready)(None) == ({TopicPartition("in", 1): [1]}, False)


def test_an_error_met_while_adding_fetched_records_is_raised_after_their_batch() -> None:
    """Records whose positions moved are scored before the error surfaces (the next round, before polling),
    as kafka-python defers an error met after records it already returned."""
    seen: list[Any] = []
    tp = TopicPartition("in", 0)
    fetched: list[Any] = [{tp: [_rec(2), _rec(3)]}, CorruptRecordError("bad batch")]
    source, _ = _source_with(iter([{tp: [_rec(0), _rec(1)]}]), fetched, seen)
    rounds = source.batches()
    batch = next(rounds)
    assert (batch.messages, batch.position) == (4, {tp: 4})
    assert seen == [("poll", 100), ("buffered", 2), ("buffered", 2)]
    with pytest.raises(CorruptRecordError, match="bad batch"):
        next(rounds)


def _source_with(polls: Any, fetched: list[Any], seen: list[Any]) -> tuple[KafkaSource, Any]:
    tp = TopicPartition("in", 0)
    tracker = PartitionTracker()
    tracker.owned.add(tp)

    def poll(timeout_ms: int) -> dict[Any, list[Any]]:
        seen.append(("poll", timeout_ms))
        return next(polls)

    def buffered(n: int) -> dict[Any, list[Any]]:
        seen.append(("buffered", n))
        more = fetched.pop(0) if fetched else {}
        if isinstance(more, BaseException):
            raise more
        return more

    source = KafkaSource(
        types.SimpleNamespace(poll=poll),  # type: ignore[arg-type]
        Decoder(MessageFormat(("a",))),
        tracker,
        threading.Event(),
        buffered=buffered,
        max_batch_bytes=10**6,
        max_batch_s=60.0,
        max_poll_records=2,
        poll_timeout_ms=100,
    )
    return source, tp


def _rec(offset: int) -> Any:
    value = b'{"key":"k","ts":%d,"values":[1.5]}' % offset
    return ConsumerRecord("in", 0, 0, offset, 0, 0, b"k", value, [], None, 1, len(value), -1)


def test_records_fetched_ahead_during_a_checkpoint_head_the_next_batch_in_offset_order() -> None:
    """fetch_ahead (called while the loop stands in a checkpoint) takes what was fetched, which sends the next
    fetch; those records come first in the next batch, then the poll's (which does not wait for more), and the
    position is past both."""
    seen: list[Any] = []
    polls = iter([{}, {}])
    source, tp = _source_with(polls, [{}, {}], seen)
    rounds = source.batches()
    assert next(rounds).messages == 0
    seen.clear()
    polls = iter([{tp: [_rec(4), _rec(5)]}])
    source.consumer.poll = lambda timeout_ms: seen.append(("poll", timeout_ms)) or next(polls)  # type: ignore[attr-defined]
    fetched = [{tp: [_rec(0), _rec(1)]}, {tp: [_rec(2), _rec(3)]}, {}]
    source.buffered = lambda n: seen.append(("buffered", n)) or fetched.pop(0)
    source.fetch_ahead()
    source.fetch_ahead()
    assert [r.offset for r in source.ahead[tp]] == [0, 1, 2, 3]
    batch = next(rounds)
    assert seen == [("buffered", 2), ("buffered", 2), ("poll", 0), ("buffered", 2)]
    assert (batch.messages, batch.position, source.ahead) == (6, {tp: 6}, {})
    assert batch.events.timestamps.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_records_fetched_ahead_are_dropped_when_the_consumer_reads_them_again() -> None:
    seen: list[Any] = []
    source, tp = _source_with(iter([{tp_: [_rec(7)]} for tp_ in [TopicPartition("in", 0)]]), [], seen)
    source.buffered = lambda n: {tp: [_rec(5), _rec(6)]}
    source.fetch_ahead()
    source.drop_ahead([tp])  # a seek back to offset 5 (a restore inside poll)
    assert (source.ahead, source.ahead_bytes) == ({}, 0)
    source.buffered = lambda n: {}
    batch = next(source.batches())
    assert (batch.messages, batch.position) == (1, {tp: 8})


def test_an_error_met_while_fetching_ahead_is_raised_after_the_records_taken_before_it() -> None:
    seen: list[Any] = []
    tp = TopicPartition("in", 0)
    source, _ = _source_with(iter([]), [{tp: [_rec(0), _rec(1)]}, CorruptRecordError("bad batch")], seen)
    source.fetch_ahead()
    source.fetch_ahead()
    rounds = source.batches()
    batch = next(rounds)  # no poll: the error is due
    assert (batch.messages, batch.position) == (2, {tp: 2})
    with pytest.raises(CorruptRecordError, match="bad batch"):
        next(rounds)

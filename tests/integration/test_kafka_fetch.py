"""The daemon's record path (:mod:`anomaly.kafka.records`) reads a real broker's fetches exactly as kafka-python:
plain, gzip-compressed and transactional records (committed ones and the commit markers, i.e. control batches,
between them), with both isolation levels. Tansu 0.6 does not serve aborted transactions as Kafka does (their
records are dropped or served without abort markers, depending on timing), so the skipping of aborted batches is
compared on built fetches in tests/test_kafka_records.py."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from anomaly.kafka import records
from anomaly.kafka.checkpoint import PartitionTracker
from anomaly.kafka.codec import Decoder, MessageFormat
from anomaly.kafka.source import KafkaSource

pytestmark = pytest.mark.integration


def _read_all(bootstrap: str, topic: str, fast: bool, isolation: str) -> tuple[list[Any], dict[int, int]]:
    """Every record of the topic's two partitions, poll by poll, and the positions at the end."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level=isolation,
        max_poll_records=7,  # polls that end inside a batch
        fetch_max_wait_ms=50,
    )
    if fast:
        assert records.install(consumer)
    tps = [TopicPartition(topic, p) for p in (0, 1)]
    consumer.assign(tps)
    consumer.seek_to_beginning()
    polls = []
    idle = 0
    while idle < 5:  # until nothing more comes (Tansu's end offsets can lag its log)
        got = consumer.poll(timeout_ms=100)
        idle = 0 if got else idle + 1
        polls += [recs for _, recs in sorted(got.items())]
    positions = {tp.partition: consumer.position(tp) for tp in tps}
    consumer.close()
    return sorted(r for recs in polls for r in recs), positions


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_fast_records_equal_kafka_pythons_on_the_broker(
    tansu: Any, compression: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    read, taken = records.read_batch, []
    monkeypatch.setattr(records, "read_batch", lambda *a: taken.append(read(*a)) or taken[-1])
    bootstrap = tansu.bootstrap
    topic = f"records-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 2, 1)])
    admin.close()
    body = b'{"key":"k%d","ts":%d,"values":[0.5,1.5,2.5]}'
    plain = KafkaProducer(bootstrap_servers=bootstrap, compression_type=compression, linger_ms=5)
    txn = KafkaProducer(
        bootstrap_servers=bootstrap, compression_type=compression, transactional_id=f"t-{topic}", linger_ms=5
    )
    txn.init_transactions()
    for round_, commit in enumerate((True, False, True, False)):
        for i in range(60):
            plain.send(topic, key=b"k%d" % (i % 5), value=body % (i % 5, i), partition=i % 2)
        plain.send(topic, key=b"gone", value=None, partition=0)  # a tombstone
        plain.flush()
        txn.begin_transaction()
        for i in range(40):
            txn.send(topic, key=b"t%d" % round_, value=body % (round_, i), partition=i % 2)
        txn.commit_transaction() if commit else txn.abort_transaction()
    plain.close()
    txn.close()

    for isolation in ("read_committed", "read_uncommitted"):
        public, public_at = _read_all(bootstrap, topic, False, isolation)
        fast, fast_at = _read_all(bootstrap, topic, True, isolation)
        assert fast == public
        assert fast_at == public_at
        assert len([r for r in public if r.key in (b"t0", b"t2")]) == 80  # committed: all of them
        assert sum(r.value is None for r in public) == 4
        assert len([r for r in public if r.key.startswith(b"k")]) == 240
        assert None not in taken and taken  # every batch went through the fast loop
        taken.clear()


def _source(consumer: KafkaConsumer, tps: list[TopicPartition], max_batch_bytes: int) -> KafkaSource:
    tracker = PartitionTracker()
    tracker.owned.update(tps)
    return KafkaSource(
        consumer,
        Decoder(MessageFormat(("a", "b", "c"))),
        tracker,
        threading.Event(),
        buffered=records.buffered(consumer),
        max_batch_bytes=max_batch_bytes,
        max_batch_s=1.0,
        max_poll_records=300,
    )


def test_a_batch_adds_records_already_fetched_every_record_once_in_order(tansu: Any) -> None:
    """Batches hold several polls (several partitions) while under max_batch_bytes, every record once and in
    order, and the positions they report are those of their last records."""
    bootstrap = tansu.bootstrap
    topic = f"drain-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 4, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for i in range(4000):
        body = b'{"key":"k%d","ts":%d,"values":[1,2,3]}' % (i % 40, i)
        producer.send(topic, key=b"k%d" % (i % 40), value=body, partition=i % 4)
    producer.close()
    tps = [TopicPartition(topic, p) for p in range(4)]
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=300)
    consumer.assign(tps)
    consumer.seek_to_beginning()
    source = _source(consumer, tps, 700 * 40)  # values of 36-40 bytes: 700 records or more, polls of 300
    got: dict[int, list[int]] = {p: [] for p in range(4)}
    sizes = []
    until = time.monotonic() + 60
    for batch in source.batches():
        sizes.append(batch.messages)
        for ref in batch.events.refs if batch.messages else []:
            got[ref.partition].append(ref.offset)
        assert batch.position == {tp: got[tp.partition][-1] + 1 for tp in batch.position}
        if sum(map(len, got.values())) >= 4000 or time.monotonic() > until:
            break
    consumer.close()
    assert got == {p: list(range(1000)) for p in range(4)}
    assert 300 < max(sizes) <= 900  # polls added until the bound is passed, never more

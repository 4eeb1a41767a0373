"""The Kafka benchmark's latency feeder: what it sends must be what the daemon reads."""

from __future__ import annotations

import numpy as np
import orjson
from kafka.cluster import ClusterMetadata
from kafka.partitioner.default import DefaultPartitioner

from anomaly.bench_kafka import FeedTemplates
from anomaly.kafka.codec import Decoder, MessageFormat
from tests.helpers import Record


class FourPartitions(ClusterMetadata):
    def topics(self, exclude_internal_topics: bool = True) -> set[str]:
        return {"live"}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}


def test_feed_messages_decode_to_their_stamp_and_go_where_kafka_python_puts_their_key():
    templates = FeedTemplates.build(7, [10.0, -1.0, 0.5], [2.0, 0.1, 1.0], partitions=4)
    decoder = Decoder(MessageFormat(("a", "b", "c")))
    default = DefaultPartitioner()
    seen_values = set()
    for n in range(30):
        stamp = 1.7e9 + n * 0.123456789
        key, value, partition = templates.message(n, stamp)
        event = decoder.decode(Record("live", partition, n, key, value))
        assert (event.key, event.timestamps.tolist()) == (f"k{n % 7}", [stamp])
        assert event.values.tolist() == [orjson.loads(value)["values"]]
        assert partition == default.partition("live", None, key, None, None, FourPartitions())
        seen_values.add(tuple(event.values[0]))
    assert len(seen_values) == 30  # readings differ from message to message
    assert np.all(np.abs(np.asarray(sorted(seen_values))[:, 0] - 10.0) < 10.0)  # drawn around the mean

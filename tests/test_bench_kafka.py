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


def _cpus_of(pid: int) -> set[frozenset[int]]:
    """The CPU set of every thread of ``pid``, as read from /proc (not from the affinity call under test)."""
    import os

    sets = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            line = next(x for x in f if x.startswith("Cpus_allowed_list:"))
        cpus: set[int] = set()
        for part in line.split(":", 1)[1].strip().split(","):
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
        sets.add(frozenset(cpus))
    return sets


def test_core_split_places_every_thread_and_puts_them_back():
    import os
    import subprocess
    import sys
    import threading

    import pytest

    from anomaly.bench_kafka import CoreSplit

    if not CoreSplit.possible():
        pytest.skip("needs two CPUs and sched_setaffinity")
    everything = frozenset(os.sched_getaffinity(0))
    # a stand-in for the broker: a process with several threads
    broker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import threading,time\nfor _ in range(3): threading.Thread(target=time.sleep,"
            " args=(60,), daemon=True).start()\ntime.sleep(60)",
        ]
    )
    idle = threading.Event()
    worker = threading.Thread(target=idle.wait, daemon=True)
    worker.start()  # a thread of this process that exists before the split
    try:
        while len(os.listdir(f"/proc/{broker.pid}/task")) < 4:
            pass
        split = CoreSplit(broker.pid)
        assert split.own | split.others == everything and not split.own & split.others
        assert len(split.own) == 1
        with split:
            assert _cpus_of(os.getpid()) == {split.own}
            assert _cpus_of(broker.pid) == {split.others}
            started = threading.Thread(target=idle.wait, daemon=True)
            started.start()  # a thread started inside inherits the daemon's CPU
            assert _cpus_of(os.getpid()) == {split.own}
        assert _cpus_of(os.getpid()) == {everything}
        assert _cpus_of(broker.pid) == {everything}
    finally:
        idle.set()
        broker.kill()
        broker.wait()
        os.sched_setaffinity(0, everything)

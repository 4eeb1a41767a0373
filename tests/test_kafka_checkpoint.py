"""The checkpointer's order of operations: outputs acknowledged before (or, in a transaction, together with)
the state that covers them, and nothing committed after a refused record."""

from __future__ import annotations

import types
from typing import Any

import pytest
from kafka.structs import TopicPartition

from anomaly.kafka.checkpoint import KafkaCheckpointer, PartitionTracker
from anomaly.kafka.sinks import DeliveryError

TPS = [TopicPartition("in", p) for p in range(2)]


class _Delivery:
    def __init__(self, calls: list[Any], transactional: bool, refuse: bool = False) -> None:
        self.calls, self.transactional, self.refuse = calls, transactional, refuse
        self.in_transaction = transactional

    def flush(self) -> None:
        self.calls.append("flush")
        if self.refuse:
            raise DeliveryError("1 record(s) were not delivered (test)")

    def commit(self, offsets: dict[Any, Any], group_metadata: Any) -> None:
        self.calls.append(("commit", sorted((tp.partition, o.offset) for tp, o in offsets.items())))


def _checkpoint(transactional: bool, refuse: bool = False, calls: list[Any] | None = None) -> list[Any]:
    calls = [] if calls is None else calls
    tracker = PartitionTracker()
    for i, tp in enumerate(TPS):
        tracker.owned.add(tp)
        tracker.see(f"k{i}", tp)
    tracker.advance({TPS[0]: 11, TPS[1]: 21})
    consumer = types.SimpleNamespace(
        commit=lambda offsets, timeout_ms: calls.append(
            ("consumer.commit", sorted((tp.partition, o.offset) for tp, o in offsets.items()))
        ),
        group_metadata=lambda: "group",
    )
    changelog = types.SimpleNamespace(
        write=lambda pid, offset, snapshot, n, epoch: calls.append(("write", pid, offset)) or len(snapshot)
    )
    dead = types.SimpleNamespace(flush=lambda: calls.append("dead letters flush"))
    engine = types.SimpleNamespace(keys=lambda: ["k0", "k1"], snapshot=lambda keys: b"state")
    delivery = _Delivery(calls, transactional, refuse)
    checkpointer = KafkaCheckpointer(
        consumer,  # type: ignore[arg-type]
        changelog,  # type: ignore[arg-type]
        delivery,  # type: ignore[arg-type]
        tracker,
        5.0,
        dead_letters=dead,
    )
    checkpointer.checkpoint(engine)
    return calls


def test_a_transactional_checkpoint_flushes_outputs_and_state_once_then_commits() -> None:
    assert _checkpoint(True) == [
        "dead letters flush",
        ("write", "in:0", 10),
        ("write", "in:1", 20),
        "flush",
        ("commit", [(0, 11), (1, 21)]),
    ]


def test_without_transactions_outputs_are_acknowledged_before_the_state_that_covers_them() -> None:
    assert _checkpoint(False) == [
        "flush",
        "dead letters flush",
        ("write", "in:0", 10),
        ("write", "in:1", 20),
        "flush",
        ("consumer.commit", [(0, 11), (1, 21)]),
    ]


@pytest.mark.parametrize("transactional", [True, False])
def test_a_refused_record_commits_nothing(transactional: bool) -> None:
    calls: list[Any] = []
    with pytest.raises(DeliveryError):
        _checkpoint(transactional, refuse=True, calls=calls)
    assert "flush" in calls and not [c for c in calls if isinstance(c, tuple) and "commit" in c[0]]


def test_an_idle_streams_timer_ticks_are_not_samples_of_the_checkpoint_time() -> None:
    from prometheus_client import CollectorRegistry

    from anomaly.metrics import PipelineMetrics

    metrics = PipelineMetrics(CollectorRegistry())
    calls: list[Any] = []
    tracker = PartitionTracker()
    tracker.owned.add(TPS[0])
    tracker.see("k0", TPS[0])
    delivery = _Delivery(calls, transactional=True)
    delivery.in_transaction = False
    delivery.commit = lambda offsets, group_metadata: None  # type: ignore[method-assign]
    consumer = types.SimpleNamespace(group_metadata=lambda: "group")
    changelog = types.SimpleNamespace(write=lambda pid, offset, snapshot, n, epoch: len(snapshot))
    engine = types.SimpleNamespace(keys=lambda: ["k0"], snapshot=lambda keys: b"state")
    checkpointer = KafkaCheckpointer(consumer, changelog, delivery, tracker, 5.0, metrics)  # type: ignore[arg-type]

    def sample(name: str) -> float:
        return metrics.registry.get_sample_value(name) or 0.0

    tracker.advance({TPS[0]: 11})
    checkpointer.checkpoint(engine)  # state written, offsets committed
    last = sample("anomaly_checkpoint_last_timestamp_seconds")
    checkpointer.checkpoint(engine)  # the timer of an idle stream: nothing to write or commit
    checkpointer.checkpoint(engine)
    assert [
        sample("anomaly_checkpoint_duration_seconds_count"),
        sample("anomaly_checkpoint_commit_seconds_count"),
        sample("anomaly_checkpoint_state_seconds_count"),
        checkpointer.checkpoints,
    ] == [1.0, 1.0, 1.0, 3]
    assert sample("anomaly_checkpoint_last_timestamp_seconds") >= last > 0

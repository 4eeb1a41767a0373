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

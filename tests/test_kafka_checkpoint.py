"""The checkpointer's order of operations: outputs acknowledged before (or, in a transaction, together with)
the state that covers them, and nothing committed after a refused record. The periodic transactional commit
ends in a helper thread: the loop scores on meanwhile, its outputs go out in the next transaction, in order,
and the commit's error stops the loop where the synchronous commit's did.

The real :class:`Delivery` and :class:`KafkaCheckpointer` over a producer double that records the calls
kafka-python's would get (the ordering logic is ours; the broker's side is proved on Tansu by the
integration tests)."""

from __future__ import annotations

import logging
import threading
import time
import types
from typing import Any

import kafka.errors as kerr
import pytest
from kafka.structs import TopicPartition

from anomaly.config import EngineConfig
from anomaly.engine import Engine
from anomaly.engine.types import Event
from anomaly.kafka import KafkaError
from anomaly.kafka.changelog import ChangelogStore, Owner, decode_record, decompress_state
from anomaly.kafka.checkpoint import FinalCheckpointError, KafkaCheckpointer, PartitionTracker
from anomaly.kafka.codec import window_message
from anomaly.kafka.identity import TopicChangedError
from anomaly.kafka.sinks import (
    AlertSink,
    Delivery,
    DeliveryError,
    FencedError,
    ScoreSink,
    TransactionTimeoutError,
)
from anomaly.runner import Batch, run

TPS = [TopicPartition("in", p) for p in range(2)]


class _Future:
    def __init__(self, producer: _Producer) -> None:
        self.producer = producer

    def add_errback(self, callback: Any) -> None:
        self.producer.errbacks.append(callback)


class _Producer:
    """Records the KafkaProducer calls in order. ``gate``: commit_transaction waits for it (a commit in flight);
    ``refuse``: the next flush reports its records refused; ``fail``: commit_transaction raises it."""

    def __init__(self, calls: list[Any], refuse: bool = False, fail: BaseException | None = None) -> None:
        self.calls, self.refuse, self.fail = calls, refuse, fail
        self.gate = threading.Event()
        self.gate.set()
        self.changelog_gate = threading.Event()  # sends to topic "cl" wait for it
        self.changelog_gate.set()
        self.errbacks: list[Any] = []

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def send(self, topic: str, key: Any = None, value: Any = None, headers: Any = None) -> _Future:
        if topic == "cl":
            self.changelog_gate.wait(30)
        self.calls.append(("send", topic, key, value))
        return _Future(self)

    def flush(self, timeout: float | None = None) -> None:
        self.calls.append("flush")
        if self.refuse:
            for callback in self.errbacks:
                callback(kerr.KafkaError("refused (test)"))
        self.errbacks = []

    def send_offsets_to_transaction(self, offsets: dict[Any, Any], group: Any) -> None:
        self.calls.append(("offsets", sorted((tp.partition, o.offset) for tp, o in offsets.items())))

    def commit_transaction(self) -> None:
        self.gate.wait(30)
        if self.fail is not None:
            raise self.fail
        self.calls.append("commit")

    def abort_transaction(self) -> None:
        self.calls.append("abort")


def _checkpointer(
    calls: list[Any],
    delivery: Delivery,
    tracker: PartitionTracker,
    metrics: Any = None,
    interval_s: float = 5.0,
    background: bool = False,
    verify: Any = None,
) -> KafkaCheckpointer:
    consumer = types.SimpleNamespace(
        commit=lambda offsets, timeout_ms: calls.append(
            ("consumer.commit", sorted((tp.partition, o.offset) for tp, o in offsets.items()))
        ),
        commit_async=lambda offsets: calls.append("consumer.commit_async"),
        group_metadata=lambda: "group",
    )

    def write(
        pid: str, offset: int, snapshot: bytes, n: int, epoch: int, owner: Any = None, send: Any = None
    ) -> int:
        (send or delivery.send)("changelog", pid.encode(), str(offset).encode())
        return len(snapshot)

    dead = types.SimpleNamespace(flush=lambda: calls.append("dead letters flush"))
    return KafkaCheckpointer(
        consumer,  # type: ignore[arg-type]
        types.SimpleNamespace(write=write, owner="owner"),  # type: ignore[arg-type]
        delivery,
        tracker,
        interval_s,
        metrics,
        dead_letters=dead,
        background=background,
        verify=verify,
    )


def _checkpoint(
    transactional: bool, refuse: bool = False, calls: list[Any] | None = None, verify: Any = None
) -> list[Any]:
    calls = [] if calls is None else calls
    tracker = PartitionTracker()
    for i, tp in enumerate(TPS):
        tracker.owned.add(tp)
        tracker.see(f"k{i}", tp)
    tracker.advance({TPS[0]: 11, TPS[1]: 21})
    delivery = Delivery(_Producer(calls, refuse), transactional=transactional)  # type: ignore[arg-type]
    engine = types.SimpleNamespace(keys=lambda: ["k0", "k1"], snapshot=lambda keys, domain=None: b"state")
    _checkpointer(calls, delivery, tracker, verify=verify).checkpoint(engine)
    return calls


def _k0_scored() -> PartitionTracker:
    """A tracker owning TPS[0], where key k0 was seen and the position reached offset 11 (not checkpointed)."""
    tracker = PartitionTracker()
    tracker.owned.add(TPS[0])
    tracker.see("k0", TPS[0])
    tracker.advance({TPS[0]: 11})
    return tracker


def _k0_engine() -> Any:
    """An engine holding key k0, whose snapshot is b"state"."""
    return types.SimpleNamespace(keys=lambda: ["k0"], snapshot=lambda keys, domain=None: b"state")


def test_a_transactional_checkpoint_flushes_outputs_and_state_once_then_commits() -> None:
    assert _checkpoint(True) == [
        "dead letters flush",
        "begin",
        ("send", "changelog", b"in:0", b"10"),
        ("send", "changelog", b"in:1", b"20"),
        "flush",
        ("offsets", [(0, 11), (1, 21)]),
        "commit",
    ]


def test_without_transactions_outputs_are_acknowledged_before_the_state_that_covers_them() -> None:
    assert _checkpoint(False) == [
        "flush",
        "dead letters flush",
        ("send", "changelog", b"in:0", b"10"),
        ("send", "changelog", b"in:1", b"20"),
        "flush",
        ("consumer.commit", [(0, 11), (1, 21)]),
    ]


@pytest.mark.parametrize("transactional", [True, False])
def test_a_refused_record_commits_nothing(transactional: bool) -> None:
    calls: list[Any] = []
    with pytest.raises(DeliveryError):
        _checkpoint(transactional, refuse=True, calls=calls)
    assert "flush" in calls
    assert not [c for c in calls if c in ("commit", "abort") or (isinstance(c, tuple) and "commit" in c[0])]


class _AwayProducer(_Producer):
    """A broker that does not answer: every flush times out."""

    def flush(self, timeout: float | None = None) -> None:
        self.calls.append("flush")
        raise kerr.KafkaTimeoutError("no answer (test)")


@pytest.mark.parametrize("transactional", [True, False])
def test_a_stop_while_the_outputs_are_unacknowledged_is_a_final_checkpoint_not_completed(
    transactional: bool,
) -> None:
    """SIGTERM while the broker is away with alerts sent but not acknowledged: before, the runner flushed the
    alerts sink before the final checkpoint, and its timeout ended the daemon with `error: producer flush timed
    out after 10s (broker away?)`, status 2, instead of the final checkpoint's line and status 3 (README; the
    integration test met it when the broker paused before the last alerts were acknowledged)."""
    calls: list[Any] = []
    tracker = _k0_scored()  # scored, not checkpointed
    delivery = Delivery(_AwayProducer(calls), transactional=transactional)  # type: ignore[arg-type]
    delivery.send("alerts", b"k0", b"{}")
    engine = _k0_engine()
    checkpointer = _checkpointer(calls, delivery, tracker)
    with pytest.raises(FinalCheckpointError) as err:
        run(engine, [], [AlertSink(delivery, "alerts")], checkpointer=checkpointer)
    assert str(err.value) == (
        "the final checkpoint was not completed (producer flush timed out after 60s (broker away?)); the restart "
        "restores the last committed checkpoint and reads on from there"
    )
    assert not [
        c for c in calls if c == "commit" or (isinstance(c, tuple) and c[0] in ("offsets", "consumer.commit"))
    ]


@pytest.mark.parametrize("transactional", [True, False])
def test_a_refused_output_names_its_topic(transactional: bool) -> None:
    """Before: `error: 1 record(s) were not delivered (KafkaError)`, with no word of which of the daemon's topics
    (alerts, scores, changelog) refused it."""
    delivery = Delivery(_Producer([], refuse=True), transactional=transactional)  # type: ignore[arg-type]
    delivery.send("cl", b"in:0", b"state")
    delivery.send("alerts", b"pump-7", b"{}")
    with pytest.raises(DeliveryError) as err:
        delivery.flush()
    assert str(err.value) == "2 record(s) were not delivered (KafkaError, the last one to topic 'alerts')"


@pytest.mark.parametrize("transactional", [True, False])
def test_a_checkpoint_on_replaced_topics_writes_and_commits_nothing_and_raises(transactional: bool) -> None:
    """An input or changelog topic created again (a broker restarted without its data): before, the checkpoint
    wrote the old state into the new changelog and committed the old offsets on the new topic."""
    calls: list[Any] = []

    def replaced() -> None:
        calls.append("verify")
        raise TopicChangedError("input topic 'in' was created again")

    with pytest.raises(TopicChangedError):
        _checkpoint(transactional, calls=calls, verify=replaced)
    assert calls == ["verify"]


def test_a_checkpoint_whose_topics_cannot_be_checked_is_postponed() -> None:
    calls: list[Any] = []

    def unanswered() -> None:
        calls.append("verify")
        raise KafkaError("cannot check the input and changelog topics (KafkaTimeoutError)")

    tracker = _k0_scored()
    delivery = Delivery(_Producer(calls), transactional=True)  # type: ignore[arg-type]
    engine = _k0_engine()
    assert _checkpointer(calls, delivery, tracker, verify=unanswered).checkpoint(engine) is False
    assert calls == ["verify"]
    assert tracker.dirty == {TPS[0]}  # written at the next checkpoint


def test_checkpoints_postponed_in_a_row_are_logged_at_the_start_once_a_minute_and_at_the_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A broker outage postpones every checkpoint (every checkpoint_interval_s): one warning when it starts, at
    most one a minute with how long checkpoints have been postponed, and one when a checkpoint completes again
    (it logged "checkpoint postponed: ..." at every try and nothing when they completed again)."""
    calls: list[Any] = []
    answering = [False]
    why = "cannot check the input, changelog and output topics at b:9092 (KafkaTimeoutError)"

    def verify() -> None:
        if not answering[0]:
            raise KafkaError(why)

    tracker = _k0_scored()
    delivery = Delivery(_Producer(calls), transactional=True)  # type: ignore[arg-type]
    engine = _k0_engine()
    checkpointer = _checkpointer(calls, delivery, tracker, verify=verify)
    now = [0.0]
    checkpointer.clock = lambda: now[0]
    caplog.set_level(logging.WARNING, logger="anomaly.kafka.checkpoint")
    for _ in range(16):  # a try every 10 s for 150 s
        assert checkpointer.checkpoint(engine) is False
        now[0] += 10.0
    answering[0] = True
    assert checkpointer.checkpoint(engine) is True
    assert [r.getMessage() for r in caplog.records] == [
        f"checkpoint postponed: {why}",
        f"checkpoints postponed for 60 s: {why}",
        f"checkpoints postponed for 120 s: {why}",
        "checkpoint completed after 160 s of postponed checkpoints",
    ]


def test_a_key_that_moved_partition_leaves_its_old_partitions_next_checkpoint() -> None:
    """Partitions added to the input topic move keys (the producer hashes over more partitions). Before, the old
    partition's latest changelog record kept the key's older state until a message of its own came, and a restore
    of both partitions brought back whichever it restored last."""
    written: list[tuple[str, int, bytes]] = []

    def write(pid: str, offset: int, snapshot: bytes, n: int, epoch: int, **_: Any) -> int:
        written.append((pid, offset, snapshot))
        return len(snapshot)

    tracker = PartitionTracker()
    tracker.owned.update(TPS)
    held = ["k", "j"]
    engine = types.SimpleNamespace(
        keys=lambda: held, snapshot=lambda keys, domain=None: ",".join(keys).encode()
    )
    delivery = Delivery(_Producer([]), transactional=True)  # type: ignore[arg-type]
    consumer = types.SimpleNamespace(group_metadata=lambda: "group")
    checkpointer = KafkaCheckpointer(
        consumer,  # type: ignore[arg-type]
        types.SimpleNamespace(write=write, owner="owner"),  # type: ignore[arg-type]
        delivery,
        tracker,
        5.0,
    )
    tracker.see("k", TPS[0])
    tracker.see("j", TPS[0])
    tracker.advance({TPS[0]: 10})
    checkpointer.checkpoint(engine)
    tracker.see("k", TPS[1])  # k's next message came on partition 1
    tracker.advance({TPS[1]: 4})
    checkpointer.checkpoint(engine)
    assert written == [("in:0", 9, b"k,j"), ("in:0", 9, b"j"), ("in:1", 3, b"k")]


def test_an_idle_streams_timer_ticks_are_not_samples_of_the_checkpoint_time() -> None:
    from prometheus_client import CollectorRegistry

    from anomaly.metrics import PipelineMetrics

    metrics = PipelineMetrics(CollectorRegistry())
    calls: list[Any] = []
    tracker = PartitionTracker()
    tracker.owned.add(TPS[0])
    tracker.see("k0", TPS[0])
    delivery = Delivery(_Producer(calls), transactional=True)  # type: ignore[arg-type]
    checkpointer = _checkpointer(calls, delivery, tracker, metrics)
    engine = _k0_engine()

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
        sample("anomaly_checkpoint_loop_seconds_count"),
        checkpointer.checkpoints,
    ] == [1.0, 1.0, 1.0, 1.0, 3]
    assert sample("anomaly_checkpoint_last_timestamp_seconds") >= last > 0


def _scored_while_committing(
    bundle: Any, series: Any, producer: _Producer, metrics: Any = None, release_at: int = 4
) -> tuple[list[Any], list[Any], list[tuple[bool, int, bool]]]:
    """The runner over a real engine and ScoreSink: the checkpoint after the first batch commits in the
    background and its commit waits for ``producer.gate`` until batch ``release_at``. Returns the windows
    scored, the producer's calls and, per batch as it is handed to the loop, (commit not settled yet, score
    records the producer had got, partition still owed a commit)."""
    calls = producer.calls
    delivery = Delivery(producer, transactional=True, max_block_s=2.0)  # type: ignore[arg-type]
    tracker = PartitionTracker()
    tracker.owned.add(TPS[0])
    checkpointer = _checkpointer(calls, delivery, tracker, metrics, interval_s=3600.0, background=True)
    checkpointer.last = -float("inf")  # the first batch is checkpointed, then none until the final one
    engine = Engine(bundle, EngineConfig())
    windows: list[Any] = []
    seen: list[tuple[bool, int, bool]] = []

    def batches() -> Any:
        for i in range(6):
            if i == release_at:
                producer.gate.set()
                deadline = time.monotonic() + 10
                while delivery.committing and delivery._ending.finished == 0.0:  # type: ignore[union-attr]
                    assert time.monotonic() < deadline, "the commit did not end"
                    time.sleep(0.001)
            sent = sum(1 for c in calls if c[0] == "send" and c[1] == "scores")
            seen.append((delivery.committing, sent, TPS[0] in tracker.uncommitted))
            lo, hi = 40 * i, 40 * (i + 1)
            for key in ("a", "b"):
                tracker.see(key, TPS[0])
            events = [Event(key, series.timestamps[lo:hi], series.values[lo:hi]) for key in ("a", "b")]
            yield Batch(events, messages=2, position={TPS[0]: 2 * (i + 1)})

    sink = ScoreSink(delivery, "scores", bundle.features)
    producer.gate.clear()
    run(
        engine,
        batches(),
        [sink],
        checkpointer=checkpointer,
        on_batch=lambda b, out: windows.append(out.windows),
    )
    return windows, calls, seen


def _transactions(calls: list[Any]) -> list[list[Any]]:
    """The producer's calls cut into transactions: begin .. commit, without the markers."""
    out: list[list[Any]] = []
    for call in calls:
        if call == "begin":
            out.append([])
        elif call != "commit" and out:
            out[-1].append(call)
    return out


def test_the_loop_scores_while_a_commit_is_in_flight_and_its_outputs_follow_in_the_next_transaction(
    bundle: Any, test_series: Any
) -> None:
    from prometheus_client import CollectorRegistry

    from anomaly.metrics import PipelineMetrics

    metrics = PipelineMetrics(CollectorRegistry())
    windows, calls, seen = _scored_while_committing(bundle, test_series, _Producer([]), metrics)
    first = [("send", "scores", *window_message(w, bundle.features)) for w in windows[0]]
    rest = [("send", "scores", *window_message(w, bundle.features)) for ws in windows[1:] for w in ws]
    assert first and rest
    # batches 1-3 were scored while the commit was in flight; the producer got nothing of theirs meanwhile and
    # the partition was owed its commit; batch 4 came once it had ended: it is settled and sent then
    assert seen == [
        (False, 0, False),
        (True, len(first), True),
        (True, len(first), True),
        (True, len(first), True),
        (True, len(first), True),
        (False, len(first) + len(rest[: len(rest) - len(windows[5])]), False),
    ]
    assert _transactions(calls) == [
        [*first, "dead letters flush", ("send", "changelog", b"in:0", b"1"), "flush", ("offsets", [(0, 2)])],
        [  # the final checkpoint flushes the outputs once, after its state (no flush of the sinks before it)
            *rest,
            "dead letters flush",
            ("send", "changelog", b"in:0", b"11"),
            "flush",
            ("offsets", [(0, 12)]),
        ],
    ]
    assert calls.count("commit") == 2
    sample = metrics.registry.get_sample_value
    assert sample("anomaly_checkpoint_duration_seconds_count") == 2.0
    assert sample("anomaly_checkpoint_loop_seconds_count") == 2.0
    # the background commit's time is until it ended (the gate held it for batches 1-3), not the loop's part
    assert sample("anomaly_checkpoint_duration_seconds_sum") > sample("anomaly_checkpoint_loop_seconds_sum")


@pytest.mark.parametrize(
    "fail, error",
    [
        (kerr.KafkaError("fenced (test)"), FencedError),
        (None, TransactionTimeoutError),  # the commit outlasts max_block_s
    ],
)
def test_a_background_commits_error_stops_the_loop_and_its_held_outputs_are_dropped(
    bundle: Any, test_series: Any, fail: BaseException | None, error: type[Exception]
) -> None:
    producer = _Producer([], fail=fail)
    if fail is None:
        producer.gate = threading.Event()  # never set within max_block_s (2 s): the commit's wait times out
        producer.gate.set = lambda: None  # type: ignore[method-assign]
    with pytest.raises(error):
        _scored_while_committing(bundle, test_series, producer, release_at=1 if fail is not None else 5)
    calls = producer.calls
    scores = [c for c in calls if c[0] == "send" and c[1] == "scores"]
    # only the first batch's outputs reached the producer: the ones held behind the failed commit are dropped,
    # no new transaction began, and a fenced commit was aborted
    assert calls.count("begin") == 1
    assert calls[-1] == ("abort" if fail is not None else ("offsets", [(0, 2)]))
    assert scores == [c for c in calls[: calls.index(("offsets", [(0, 2)]))] if c in scores]


def test_a_background_checkpoint_writes_the_state_and_owner_of_its_moment() -> None:
    """The snapshot is taken on the loop thread, compressed and sent in the helper: what the engine (or a
    model reload) does meanwhile does not reach the record."""
    calls: list[Any] = []
    producer = _Producer(calls)
    delivery = Delivery(producer, transactional=True)  # type: ignore[arg-type]
    tracker = _k0_scored()
    changelog = ChangelogStore(delivery.send, None, lambda _: "cl", Owner("g", "model-1"))  # type: ignore[arg-type]
    state = [b"state up to offset 10"]
    engine = types.SimpleNamespace(keys=lambda: ["k0"], snapshot=lambda keys, domain=None: state[0])
    consumer = types.SimpleNamespace(group_metadata=lambda: "group")
    checkpointer = KafkaCheckpointer(consumer, changelog, delivery, tracker, 5.0)  # type: ignore[arg-type]
    producer.changelog_gate.clear()
    assert checkpointer.checkpoint(engine, background=True)
    state[0] = b"later state"
    changelog.owner = Owner("g", "model-2")
    producer.changelog_gate.set()
    assert delivery.settle() is True
    [(_, topic, key, value)] = [c for c in calls if c[0] == "send"]
    head, payload = decode_record(value)
    assert (topic, key, head["offset"], head["model"]) == ("cl", b"in:0", 10, "model-1")
    assert decompress_state(head, payload) == b"state up to offset 10"
    assert calls[-2:] == [("offsets", [(0, 11)]), "commit"] and not tracker.uncommitted


def test_past_hold_max_held_records_a_send_waits_for_the_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    from anomaly.kafka import sinks

    monkeypatch.setattr(sinks, "HOLD_MAX", 2)
    calls: list[Any] = []
    producer = _Producer(calls)
    delivery = Delivery(producer, transactional=True)  # type: ignore[arg-type]
    delivery.send("scores", b"k", b"0")
    producer.gate.clear()
    assert delivery.commit({}, types.SimpleNamespace(group_id="g"), wait=False)
    delivery.send("scores", b"k", b"1")
    delivery.send("scores", b"k", b"2")
    assert (calls.count("commit"), len(delivery.held)) == (0, 2)
    threading.Timer(0.2, producer.gate.set).start()
    delivery.send("scores", b"k", b"3")  # one too many: waits for the commit, then all go out in order
    assert calls == [
        "begin",
        ("send", "scores", b"k", b"0"),
        "flush",
        ("offsets", []),
        "commit",
        "begin",
        *[("send", "scores", b"k", v) for v in (b"1", b"2", b"3")],
    ]
    assert delivery.waited_s >= 0.1 and not delivery.committing


def test_by_default_the_periodic_checkpoint_waits_for_its_commit() -> None:
    calls: list[Any] = []
    delivery = Delivery(_Producer(calls), transactional=True)  # type: ignore[arg-type]
    tracker = PartitionTracker()
    tracker.owned.add(TPS[0])
    tracker.see("k0", TPS[0])
    checkpointer = _checkpointer(calls, delivery, tracker, interval_s=0.0)
    engine = _k0_engine()
    checkpointer.after_batch(engine, Batch([], position={TPS[0]: 11}), [])
    assert calls[-3:] == ["flush", ("offsets", [(0, 11)]), "commit"]
    assert not delivery.committing and not tracker.uncommitted


def test_a_requested_checkpoint_commits_the_open_transaction_at_the_next_batch_of_an_idle_stream() -> None:
    """Records sent outside a batch (a hot reload's closes) wait in the open transaction, unseen by
    read_committed readers until its commit; requested, the commit comes at the next (idle) batch, not at the
    interval (an hour here; 5 s by default)."""
    calls: list[Any] = []
    delivery = Delivery(_Producer(calls), transactional=True)  # type: ignore[arg-type]
    delivery.group_found = True
    checkpointer = _checkpointer(calls, delivery, PartitionTracker(), interval_s=3600.0)
    checkpointer.last = time.monotonic()
    engine = types.SimpleNamespace(keys=lambda: [], snapshot=lambda keys, domain=None: b"")
    delivery.send("alerts", b"k", b"closed")
    checkpointer.after_batch(engine, Batch([]), [])  # an idle poll: the interval has not passed
    assert calls == ["begin", ("send", "alerts", b"k", b"closed")]
    checkpointer.request()
    checkpointer.after_batch(engine, Batch([]), [])
    assert calls[2:] == ["dead letters flush", "flush", "commit"]
    assert not delivery.in_transaction and delivery.transactions == 1
    checkpointer.after_batch(engine, Batch([]), [])  # the request is spent
    assert calls[5:] == []


@pytest.mark.parametrize("transactional", [True, False])
def test_the_periodic_checkpoint_fetches_ahead_at_its_start_and_before_its_commit(
    transactional: bool,
) -> None:
    """kafka-python sends no fetch while the loop stands in a checkpoint: the idle hook (the source's
    fetch_ahead) runs at its start and once the state is written, before the commit, and nothing it writes or
    commits changes; a rebalance's checkpoint (inside a callback) does not call it."""
    calls: list[Any] = []
    tracker = PartitionTracker()
    for i, tp in enumerate(TPS):
        tracker.owned.add(tp)
        tracker.see(f"k{i}", tp)
    delivery = Delivery(_Producer(calls), transactional=transactional)  # type: ignore[arg-type]
    engine = types.SimpleNamespace(keys=lambda: ["k0", "k1"], snapshot=lambda keys, domain=None: b"state")
    checkpointer = _checkpointer(calls, delivery, tracker, interval_s=0.0)
    checkpointer.idle = lambda: calls.append("fetch ahead")
    checkpointer.after_batch(engine, Batch([], position={TPS[0]: 11, TPS[1]: 21}), [])
    plain = _checkpoint(transactional)
    assert [c for c in calls if c != "fetch ahead"] == plain
    assert calls.index("fetch ahead") == 0
    second = calls.index("fetch ahead", 1)
    assert calls[second - 1] == ("send", "changelog", b"in:1", b"20")
    assert calls.count("fetch ahead") == 2
    calls.clear()
    tracker.advance({TPS[0]: 12})
    checkpointer.checkpoint(engine, [TPS[0]], in_callback=True)
    assert calls and "fetch ahead" not in calls


def test_offset_commits_failing_in_a_row_are_logged_with_the_error_text_once_a_minute_and_at_the_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A non-transactional offset commit that fails (the group coordinator away) logged `offset commit failed
    (KafkaConnectionError)` at every checkpoint (every checkpoint_interval_s), with the error's type only. Now the
    first failure is logged with the error's text, then at most once a minute with how many failed since, and the
    next commit that succeeds says so; each failure is still counted (anomaly_commit_failures_total)."""
    from kafka.errors import KafkaConnectionError

    from anomaly.metrics import PipelineMetrics

    calls: list[Any] = []
    failing = [True]
    tracker = _k0_scored()
    tracker.uncommitted.add(TPS[0])
    delivery = Delivery(_Producer(calls), transactional=False)  # type: ignore[arg-type]
    metrics = PipelineMetrics()
    checkpointer = _checkpointer(calls, delivery, tracker, metrics=metrics)

    def commit(offsets: Any, timeout_ms: int) -> None:
        if failing[0]:
            raise KafkaConnectionError("Connection to coordinator 1 at b:9092 closed")
        calls.append("consumer.commit")

    checkpointer.consumer.commit = commit  # type: ignore[attr-defined]
    now = [0.0]
    checkpointer.clock = lambda: now[0]
    caplog.set_level(logging.WARNING, logger="anomaly.kafka.checkpoint")
    for _ in range(16):  # a try every 10 s for 150 s
        assert checkpointer.commit([TPS[0]]) is False
        now[0] += 10.0
    failing[0] = False
    assert checkpointer.commit([TPS[0]]) is True
    text = "KafkaConnectionError: Connection to coordinator 1 at b:9092 closed"
    after = "; state is checkpointed, commit retried later"
    assert [r.getMessage() for r in caplog.records] == [
        f"offset commit failed ({text}){after}",
        f"offset commit failed 6 more time(s), failing for 60 s ({text}){after}",
        f"offset commit failed 6 more time(s), failing for 120 s ({text}){after}",
        "offset commit succeeded again after 160 s (16 failed)",
    ]
    assert metrics.registry.get_sample_value("anomaly_commit_failures_total") == 16.0
    assert tracker.uncommitted == set()


def test_dead_letters_refused_in_a_row_are_logged_with_the_error_text_once_a_minute_and_at_the_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every dead letter the broker refused logged `dead letter refused by Kafka (KafkaTimeoutError)`, one line
    per refused message during an outage, with the error's type only. Now the first refusal is logged with the
    error's text, then at most once a minute with how many were refused since, and the next dead letter accepted
    says so; every refusal is still counted (anomaly_dead_letters_refused_total), and a refusal raised at send
    (a record too large) goes the same way."""
    from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

    from anomaly.engine import EngineOutput
    from anomaly.engine.types import Rejection
    from anomaly.kafka.sinks import DeadLetterSink
    from anomaly.metrics import PipelineMetrics

    class Future:
        def __init__(self) -> None:
            self.callbacks: list[Any] = []
            self.errbacks: list[Any] = []

        def add_callback(self, callback: Any) -> None:
            self.callbacks.append(callback)

        def add_errback(self, callback: Any) -> None:
            self.errbacks.append(callback)

    class Producer:
        def __init__(self) -> None:
            self.futures: list[Future] = []
            self.too_large = False

        def send(self, topic: str, key: Any = None, value: Any = None, headers: Any = None) -> Future:
            if self.too_large:
                raise MessageSizeTooLargeError("The message is 2000000 bytes when serialized")
            self.futures.append(Future())
            return self.futures[-1]

    producer = Producer()
    metrics = PipelineMetrics()
    sink = DeadLetterSink(producer, "dead", 1000, metrics)  # type: ignore[arg-type]
    now = [0.0]
    sink.refusals.clock = lambda: now[0]
    out = EngineOutput(rejections=[Rejection("k", "nan", 1, True, None, "not finite")])
    caplog.set_level(logging.WARNING, logger="anomaly.kafka.sinks")
    timeout = KafkaTimeoutError(
        "Batch for TopicPartition(topic='dead', partition=0) containing 1 record(s) expired"
    )
    for _ in range(30):  # a refused dead letter every 5 s for 145 s
        sink.write(out, None)  # type: ignore[arg-type]
        producer.futures[-1].errbacks[0](timeout)
        now[0] += 5.0
    producer.too_large = True
    sink.write(out, None)  # type: ignore[arg-type]
    producer.too_large = False
    sink.write(out, None)  # type: ignore[arg-type]
    producer.futures[-1].callbacks[0]("metadata")
    text = "KafkaTimeoutError: Batch for TopicPartition(topic='dead', partition=0) containing 1 record(s) expired"
    assert [r.getMessage() for r in caplog.records] == [
        f"dead letter refused by Kafka ({text}); the stream carries on",
        f"dead letter refused by Kafka 12 more time(s), failing for 60 s ({text}); the stream carries on",
        f"dead letter refused by Kafka 12 more time(s), failing for 120 s ({text}); the stream carries on",
        "dead letters accepted by Kafka again after 150 s (31 failed)",
    ]
    assert [r.levelname for r in caplog.records] == ["ERROR"] * 4
    assert metrics.registry.get_sample_value("anomaly_dead_letters_refused_total") == 31.0
    assert sink.refused == 31

"""Daemon bookkeeping without a broker: changelog record selection (group, epoch), the partition tracker under
key churn, dead letters that always fit, and the [kafka] settings."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import zlib
from typing import Any

import numpy as np
import pytest
from kafka import TopicPartition

from anomaly.config import EngineConfig, build_config, changelog_topic
from anomaly.engine import Engine, EngineOutput, Event
from anomaly.engine.types import Rejection
from anomaly.errors import ConfigError
from anomaly.kafka import KafkaError
from anomaly.kafka.changelog import (
    WRITE_CODEC,
    ChangelogStore,
    Checkpoint,
    Owner,
    decode_record,
    decompress_state,
    encode_header,
    latest_records,
    writers_to_fence,
)
from anomaly.kafka.checkpoint import EvictionSink, KafkaCheckpointer, PartitionTracker
from anomaly.kafka.codec import DecodeError, Decoder, MessageFormat, dead_letter, source_rejection
from anomaly.kafka.daemon import STOPPED_WITHOUT_CHECKPOINT
from anomaly.kafka.sinks import fit_dead_letter
from anomaly.kafka.source import KafkaSource
from anomaly.runner import run
from tests.helpers import NoRoomFor, Record


def header_record(pid: str, offset: int | None, group: str, epoch: int, payload: bytes = b"x") -> Record:
    head = encode_header(pid, offset, payload, 1, owner=Owner(group, "m"), epoch=epoch)
    return Record("cl", 0, 0, pid.encode(), head + b"\n" + payload)


def test_restore_takes_the_highest_epoch_of_its_own_group_whatever_the_log_order():
    log = [
        header_record("in:0", 10, "g1", 1),
        header_record("in:0", 20, "g1", 2),  # the new owner's claim/checkpoint
        header_record("in:0", 99, "g1", 1, b"zombie"),  # a fenced zombie writes late: older epoch
        header_record("in:0", 500, "g2", 7),  # another group sharing the topic
        header_record("in:1", 5, "g2", 1),
        header_record("in:0", 30, "g1", 2),  # the owner's next checkpoint, same epoch: the last one wins
    ]
    heads, _, foreign = latest_records(log, lambda pid: True, "g1")
    assert {pid: (h["offset"], h["epoch"]) for pid, (h, _) in heads.items()} == {"in:0": (30, 2)}
    assert foreign == {"in:0": "g2", "in:1": "g2"}


def test_writers_to_fence_are_the_current_owner_and_late_zombies_and_the_read_ends_past_the_last_own_record():
    def rec(offset: int, pid: str, epoch: int, txn: str, group: str = "g1", partition: int = 0) -> Record:
        head = encode_header(pid, 1, b"x", 1, owner=Owner(group, "m", txn), epoch=epoch)
        return Record("cl", partition, offset, pid.encode(), head + b"\nx")

    log = [
        rec(0, "in:0", 1, "x-0"),  # fenced by b before b claimed epoch 2: not again
        rec(1, "in:1", 1, "a-0"),
        rec(2, "in:0", 2, "b-0"),  # b's claim
        rec(3, "in:0", 1, "a-0"),  # zombie a writes after b's claim: may still hold an open transaction
        Record("cl", 0, 4, b"in:0/gen/0", b"chunk"),  # chunks carry no writer; their header follows them
        rec(5, "in:0", 2, "b-1"),  # b after a rotation
        rec(6, "in:1", 9, "c-0", group="g2"),  # another group: neither fenced nor read for
        rec(7, "in:2", 4, "d-0"),  # not wanted
        rec(3, "in:1", 1, "a-0", partition=1),
    ]
    writers, ends = writers_to_fence(log, {"in:0", "in:1"}.__contains__, "g1")
    assert writers == {"b-0", "a-0", "b-1"}
    assert ends == {0: 6, 1: 4}
    assert writers_to_fence(log, {"in:2"}.__contains__, "g1") == ({"d-0"}, {0: 8})
    assert writers_to_fence(log, {"in:3"}.__contains__, "g1") == (set(), {})


def test_tracker_forgets_evicted_keys_so_its_tables_follow_max_keys(bundle):
    engine = Engine(bundle, EngineConfig(max_keys=50))
    tracker = PartitionTracker()
    fmt = MessageFormat(tuple(bundle.features))
    source = KafkaSource(None, Decoder(fmt), tracker, threading.Event())  # type: ignore[arg-type]
    tps = [TopicPartition("in", p) for p in range(3)]
    tracker.owned.update(tps)
    n_feat = len(bundle.features)

    def batches() -> Any:
        for r in range(4):  # 4 rounds of 300 new keys each
            records: dict[Any, list[Record]] = {tp: [] for tp in tps}
            for i in range(300):
                tp = tps[i % 3]
                body = {"key": f"r{r}-k{i}", "ts": float(r * 1000 + i), "values": [0.1] * n_feat}
                off = r * 100 + len(records[tp])
                records[tp].append(Record("in", tp.partition, off, None, json.dumps(body).encode()))
            yield source.to_batch(records)

    totals = run(engine, batches(), [EvictionSink(tracker, engine)])
    assert totals["messages"] == 1200
    assert len(engine) == 50
    assert set(tracker.key_partition) == set(engine.keys())
    assert sorted(k for keys in tracker.partition_keys.values() for k in keys) == sorted(engine.keys())

    # Keys of one partition evicted by another partition's messages: the first one's state changed, so its next
    # checkpoint must be written (else a restore would bring the evicted keys back).
    tracker.dirty.clear()
    (holder,) = [
        tp for tp in tps if tracker.partition_keys.get(tp)
    ]  # the last 50 keys came from one poll part
    other = next(tp for tp in tps if tp != holder)
    records = {other: []}
    for i in range(50):
        body = {"key": f"late-{i}", "ts": 9000.0 + i, "values": [0.1] * n_feat}
        records[other].append(Record("in", other.partition, 1000 + i, None, json.dumps(body).encode()))
    before = set(tracker.partition_keys[holder])
    run(engine, iter([source.to_batch(records)]), [EvictionSink(tracker, engine)])
    assert len(before) == 50 and not before & set(engine.keys())  # every key of `holder` was evicted
    assert tracker.dirty == {holder}  # (`other` becomes dirty with its position, in the checkpointer)


def test_keys_whose_every_reading_the_engine_refuses_leave_the_tracker_so_it_does_not_grow_with_them(bundle):
    # A fleet of keys that only ever send refused readings (NaN under the default nan_policy, here each key once:
    # a key with the time in its name) is never held by the engine, so never evicted: before session 20 each stayed
    # in the tracker's tables for as long as the daemon owned its partition, growing with every such key seen.
    engine = Engine(bundle, EngineConfig(ttl_seconds=60.0))
    tracker = PartitionTracker()
    source = KafkaSource(None, Decoder(MessageFormat(tuple(bundle.features))), tracker, threading.Event())  # type: ignore[arg-type]
    tp = TopicPartition("in", 0)
    tracker.owned.add(tp)
    n_feat = len(bundle.features)

    def batches() -> Any:
        for r in range(20):
            recs = []
            for i in range(10):
                good = {"key": f"live-{i}", "ts": 1000.0 + r, "values": [0.1] * n_feat}
                nan = {"key": f"nan-{r}-{i}", "ts": 1000.0 + r, "values": [None] * n_feat}
                recs += [json.dumps(good).encode(), json.dumps(nan).encode()]
            yield source.to_batch({tp: [Record("in", 0, r * 20 + j, None, v) for j, v in enumerate(recs)]})

    totals = run(engine, batches(), [EvictionSink(tracker, engine)])
    assert totals["rejected"] == 200
    assert sorted(engine.keys()) == [f"live-{i}" for i in range(10)]
    assert set(tracker.key_partition) == set(engine.keys())
    assert tracker.partition_keys == {tp: set(engine.keys())}


def test_a_partition_read_more_than_the_ttl_behind_another_keeps_its_keys_as_a_replay_does(bundle):
    """A backfill of two partitions read one after the other: "lag" is more than engine.ttl_seconds behind
    "lead" in event time. Each partition is a clock domain of its own (the source names it), so lag's key is
    not evicted after each message (it was: every message scored as a new key's, unlike a replay of the same
    data) and scores exactly as in an engine that reads lag's data alone."""
    engine = Engine(bundle, EngineConfig(ttl_seconds=86_400.0))
    tracker = PartitionTracker()
    source = KafkaSource(None, Decoder(MessageFormat(tuple(bundle.features))), tracker, threading.Event())  # type: ignore[arg-type]
    lead, lag = TopicPartition("in", 0), TopicPartition("in", 1)
    tracker.owned.update([lead, lag])
    n_feat = len(bundle.features)
    rng = np.random.default_rng(4)

    def poll(tp: Any, key: str, times: Any, first: int) -> Any:
        recs = [
            Record(
                "in",
                tp.partition,
                first + i,
                key.encode(),
                json.dumps({"ts": t, "values": rng.normal(0.0, 1.0, n_feat).tolist()}).encode(),
            )
            for i, t in enumerate(times)
        ]
        return source.to_batch({tp: recs})

    polls = [
        poll(lead, "lead", [200_000.0 + 60 * i for i in range(5)], 0),
        poll(lag, "lag", [60.0 * i for i in range(20)], 0),
        poll(lag, "lag", [1200.0 + 60 * i for i in range(7)], 20),
    ]
    got: list[Any] = []
    run(engine, iter(polls), [EvictionSink(tracker, engine)], on_batch=lambda b, out: got.extend(out.windows))
    assert "lag" in engine.keys() and engine.counters["evicted"] == 0
    assert (engine.clock("in:0"), engine.clock("in:1")) == (200_240.0, 1560.0)
    alone = Engine(bundle, EngineConfig(ttl_seconds=86_400.0))
    ref: list[Any] = []
    run(alone, iter(polls[1:]), [], on_batch=lambda b, out: ref.extend(out.windows))
    got = [w for w in got if w.key == "lag"]
    assert len(got) == len(ref) > 0
    for a, b in zip(got, ref, strict=True):
        assert np.array_equal(a.scores, b.scores) and np.array_equal(a.timestamps, b.timestamps)


def test_a_checkpoint_lists_each_partitions_keys_least_recently_used_first_so_a_restore_keeps_that_order(
    bundle,
):
    engine = Engine(bundle, EngineConfig(max_keys=100, ttl_seconds=0))
    tracker = PartitionTracker()
    tps = [TopicPartition("in", p) for p in range(3)]
    rng = np.random.default_rng(3)
    for step, i in enumerate(rng.integers(0, 30, 200).tolist()):  # keys touched in a random order
        engine.process([Event(f"k{i}", np.array([float(step)]), np.zeros((1, len(bundle.features))))])
        tracker.see(f"k{i}", tps[i % 3])
    tracker.see("rejected", tps[0])  # a key the engine does not hold (its messages were refused)
    checkpointer = KafkaCheckpointer(None, None, None, tracker, 1.0)  # type: ignore[arg-type]
    held = checkpointer._held_by_partition(engine, {tps[0], tps[2]})
    lru = engine.keys()
    for tp in (tps[0], tps[2]):
        assert held[tp] == [k for k in lru if tracker.key_partition[k] == tp]
    assert sorted(held) == [tps[0], tps[2]] and "rejected" not in held[tps[0]]
    restored = Engine(bundle, EngineConfig(max_keys=100, ttl_seconds=0))
    restored.restore(engine.snapshot(held[tps[2]]))
    assert restored.keys() == held[tps[2]]  # the partition's LRU order survives the restore


def test_an_idle_daemon_gives_back_the_state_rows_a_peak_of_new_keys_left(bundle_path):
    from types import SimpleNamespace

    from anomaly.kafka.daemon import Daemon

    daemon = Daemon(build_config({"engine": {"max_keys": 8}}), str(bundle_path))  # not connected: no broker
    f = len(daemon.bundle.features)
    daemon.engine.process([Event(f"k{i}", np.array([float(i)]), np.zeros((1, f))) for i in range(300)])
    assert (daemon.engine.store.capacity, len(daemon.engine)) == (512, 8)
    daemon.source = SimpleNamespace(last_polled=40, polled=1)  # the last poll returned records: busy
    daemon._housekeeping()
    assert daemon.engine.store.capacity == 512
    daemon.source.last_polled = 0  # the stream went idle after work
    daemon._housekeeping()
    assert daemon.engine.store.capacity == 64 and len(daemon.engine) == 8


def test_an_idle_daemon_trims_its_heap_only_after_enough_messages_to_be_worth_the_page_faults(
    bundle_path, monkeypatch
):
    from types import SimpleNamespace

    import anomaly.kafka.daemon as daemon_module
    from anomaly.kafka.daemon import Daemon, DaemonOptions

    trims: list[int] = []
    monkeypatch.setattr(daemon_module, "trim_heap", lambda: trims.append(daemon.source.polled) or True)
    options = DaemonOptions(trim_interval_s=0.0, trim_min_messages=1000)
    daemon = Daemon(build_config({"engine": {"max_keys": 8}}), str(bundle_path), options=options)  # no broker
    daemon.source = SimpleNamespace(last_polled=0, polled=0)
    for polled in (4, 8, 600, 1200, 1204, 1300, 2300, 2300, 2304):  # idle after each (a probe, a round, ...)
        daemon.source.polled = polled
        daemon._housekeeping()
    assert trims == [1200, 2300]
    # a peak of new keys grew the store: shrinking it frees its arrays, which are given back whatever the count
    f = len(daemon.bundle.features)
    daemon.engine.process([Event(f"k{i}", np.array([float(i)]), np.zeros((1, f))) for i in range(3000)])
    daemon.source.polled = 2310
    daemon._housekeeping()
    assert (trims, daemon.engine.store.capacity) == ([1200, 2300, 2310], 64)


def test_an_idle_daemon_gives_back_the_peak_of_its_key_tables_with_the_stores(bundle_path, monkeypatch):
    """Under key churn the engine's store and the partition tracker's tables grow to max_keys plus a batch of new
    keys; when the stream goes idle the store shrinks, and the tracker's dict and sets (which never shrink when
    keys leave, and which every checkpoint looks each held key up in) are rebuilt at the size of the keys held."""
    from types import SimpleNamespace

    import anomaly.kafka.daemon as daemon_module
    from anomaly.kafka.daemon import Daemon, DaemonOptions

    monkeypatch.setattr(daemon_module, "trim_heap", lambda: True)
    daemon = Daemon(
        build_config({"engine": {"max_keys": 8}}),
        str(bundle_path),
        options=DaemonOptions(trim_interval_s=0.0),
    )
    daemon.source = SimpleNamespace(last_polled=0, polled=5000)
    tps = [TopicPartition("in", p) for p in range(2)]
    f = len(daemon.bundle.features)
    keys = [f"k{i}" for i in range(5000)]
    for i, key in enumerate(keys):
        daemon.tracker.see(key, tps[i % 2])
    out = daemon.engine.process(
        [Event(k, np.array([float(i)]), np.zeros((1, f))) for i, k in enumerate(keys)]
    )
    daemon.tracker.forget(out.evicted)
    fresh = PartitionTracker()
    for key, tp in daemon.tracker.key_partition.items():
        fresh.see(key, tp)
    tables = (daemon.tracker.key_partition, daemon.tracker.partition_keys)
    assert len(fresh.key_partition) == 8 and tables == (fresh.key_partition, fresh.partition_keys)
    daemon._housekeeping()
    t = daemon.tracker
    assert (daemon.engine.store.capacity, t.key_partition, t.partition_keys) == (64, *tables)
    sizes = [sys.getsizeof(x) for x in (t.key_partition, *t.partition_keys.values())]
    assert sizes == [sys.getsizeof(x) for x in (fresh.key_partition, *fresh.partition_keys.values())]


def test_dead_letters_are_cut_to_fit_and_say_what_was_there():
    big = b"x" * 5000
    rec = Record("in", 1, 7, b"pump-1", big)
    key, value, headers = dead_letter(Rejection("pump-1", "malformed", 1, True, rec, "oversized: too big"))
    k2, v2, h2 = fit_dead_letter(key, value, headers, 1024)
    extra = dict(h2[len(headers) :])
    assert (k2, len(v2 or b""), v2) == (b"pump-1", 1024 - 6, big[: 1024 - 6])
    assert extra == {
        "truncated": b"1",
        "original_bytes": b"5000",
        "original_sha256": hashlib.sha256(big).hexdigest().encode(),
    }
    assert fit_dead_letter(key, b"small", headers, 1024) == (key, b"small", headers)


def test_a_huge_entity_key_is_cut_so_the_dead_letter_still_fits():
    """The entity_key header repeats the key: a 250 KB body key in an 850 KB message (or a 700 KB message key) made
    a dead letter above 1 MiB, which the producer refused (max_request_bytes 1 MiB), so the refusal was lost. The key and header are cut to 1 KiB
    (on a character boundary) with the truncation headers, the payload only when it is too large itself."""
    decoder = Decoder(MessageFormat(("a", "b")))
    body_key = "é" * 125_000  # 250 KB of UTF-8, under the key limit (256 KiB); the body 850 KB
    value = json.dumps(
        {"key": body_key, "ts": "yesterday", "values": [1, 2], "note": "x" * 600_000}, ensure_ascii=False
    ).encode()
    for rec, entity in [
        (Record("in", 0, 3, b"k", value), body_key),  # refused after the body key was read
        (Record("in", 0, 4, b"M" * 700_000, b"{not json"), "M" * 700_000),  # only the message key
        (Record("in", 0, 5, b"M" * 700_000, None), "M" * 700_000),  # a tombstone
    ]:
        with pytest.raises(DecodeError) as err:
            decoder.decode(rec)
        key, val, headers = fit_dead_letter(*dead_letter(source_rejection(rec, err.value)), 900_000)
        h = dict(headers)
        size = len(key or b"") + len(val or b"") + sum(len(n) + len(v) for n, v in headers)
        assert size <= 900_000 + 4096  # max_request_bytes 1 MiB leaves 148 KB for the rest
        assert (key, val) == (rec.key[:1024], rec.value)
        assert h["entity_key"] == entity.encode()[:1024].decode("utf-8", "ignore").encode()
        assert len(h["entity_key"]) in (1023, 1024)
        assert h.get("truncated") == (None if rec.value is None else b"1")
    # a key that fits is left alone, as before
    rec = Record("in", 0, 6, b"pump-1", b"{not json")
    with pytest.raises(DecodeError) as err:
        decoder.decode(rec)
    letter = dead_letter(source_rejection(rec, err.value))
    assert fit_dead_letter(*letter, 900_000) == letter


def test_kafka_settings_are_validated_and_changelog_names_are_per_group_and_topic():
    cfg = build_config({"kafka": {"group_id": "plant a", "topics": ["s1", "s2"]}})
    assert [changelog_topic(cfg.kafka, t) for t in cfg.kafka.topics] == [
        "changelog__plant_a--s1",
        "changelog__plant_a--s2",
    ]
    fixed = build_config({"kafka": {"changelog_topic": "shared"}})
    assert changelog_topic(fixed.kafka, "sensors") == "shared"
    for settings, message in [
        ({"auto_offset_reset": "middle"}, "kafka.auto_offset_reset must be one of: earliest, latest"),
        ({"changelog_codec": "lz4"}, "kafka.changelog_codec must be one of: zstd, zlib"),
        (
            {"changelog_topic": "cl-{host}"},
            "kafka.changelog_topic may only use the placeholders {group}, {topic}",
        ),
        ({"topic_partitions": 0}, "kafka.topic_partitions must be at least 1"),
        ({"replication_factor": 0}, "kafka.replication_factor must be at least 1"),
        ({"max_batch_bytes": -1}, "kafka.max_batch_bytes must be >= 0"),
        ({"max_batch_ms": float("nan")}, "kafka.max_batch_ms must be >= 0 milliseconds"),
        ({"max_block_ms": 999}, "kafka.max_block_ms must be at least 1000"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
            build_config({"kafka": settings})
    assert build_config({"kafka": {"auto_offset_reset": "latest"}}).kafka.auto_offset_reset == "latest"
    assert (build_config({}).kafka.changelog_codec, WRITE_CODEC) == ("zstd", "zstd")
    assert build_config({"kafka": {"changelog_codec": "zlib"}}).kafka.changelog_codec == "zlib"


def test_a_taken_metrics_port_is_one_error_line(tmp_path):
    import socket

    from click.testing import CliRunner

    from anomaly.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            main, ["consume", "-m", str(tmp_path / "model.pt"), "--metrics-port", str(port)]
        )
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: cannot serve metrics on 127.0.0.1:{port}: Address already in use "
        "(another daemon on this host? set --metrics-port or metrics.port)\n"
    )


def test_a_fence_is_recognised_directly_and_behind_a_rebalance_callbacks_error():
    import kafka.errors as kerr

    from anomaly.kafka.daemon import _fenced
    from anomaly.kafka.sinks import FENCED, DeliveryError, FencedError

    fenced = FencedError(FENCED)
    try:  # kafka-python re-raises a rebalance listener's exception from poll() as a KafkaError caused by it
        try:
            raise fenced
        except FencedError as exc:
            raise kerr.KafkaError("User rebalance callback throws an error") from exc
    except kerr.KafkaError as wrapped:
        assert _fenced(wrapped) is fenced
    assert _fenced(fenced) is fenced
    assert _fenced(kerr.KafkaError("User rebalance callback throws an error")) is None
    assert _fenced(DeliveryError("2 record(s) were not delivered")) is None


def test_a_member_fenced_three_times_in_a_row_without_a_commit_exits():
    """README: "Only a member fenced three times in a row without one committed transaction in between ... exits
    with `error: fenced: ...`". It rejoined the group after a third such fence and exited at the fourth."""
    import threading
    from types import SimpleNamespace
    from unittest import mock

    from anomaly.kafka.daemon import Daemon, DaemonOptions
    from anomaly.kafka.sinks import FENCED, FencedError

    daemon = Daemon.__new__(Daemon)  # only the fence bookkeeping and what a rejoin touches
    daemon.opts = DaemonOptions()
    daemon.delivery = SimpleNamespace(transactions=5)
    daemon._fenced_in_a_row, daemon._transactions_at_fence = 0, -1
    daemon._queue_lock, daemon._deferred, daemon.stop = threading.Lock(), [], threading.Event()
    daemon.metrics = None
    for name in ("tracker", "source", "engine", "consumer", "cfg", "_refresh_ready", "_rotate"):
        setattr(daemon, name, mock.MagicMock())
    daemon.engine.drop.return_value = 0

    rejoined = []
    for _ in range(2):
        daemon._rejoin_after_fence(FencedError(FENCED))
        rejoined.append(daemon.consumer.subscribe.call_count)
    daemon.delivery.transactions = 6  # a committed transaction: the count starts again
    for _ in range(2):
        daemon._rejoin_after_fence(FencedError(FENCED))
        rejoined.append(daemon.consumer.subscribe.call_count)
    with pytest.raises(FencedError, match="fenced 3 times in a row without a commit: exiting"):
        daemon._rejoin_after_fence(FencedError(FENCED))
    assert rejoined == [1, 2, 3, 4]


def test_a_stop_that_comes_with_a_fence_ends_cleanly_with_the_whole_runs_counts():
    """SIGTERM while the daemon is fenced (a stall past session_timeout_ms, then the operator stops it): the rejoin
    sees the stop and the loop ends. Its counts were those of the loop runs that ended normally only, so such a
    stop had none and `consume` died on KeyError 'messages' (a traceback, exit 1); now the runs' counts add up,
    the fenced run's included (measured with a daemon SIGSTOPped 8 s on the Tansu broker)."""
    import threading
    from types import SimpleNamespace
    from unittest import mock

    from anomaly.kafka.daemon import Daemon, DaemonOptions
    from anomaly.kafka.sinks import FENCED, FencedError
    from anomaly.runner import Batch

    daemon = Daemon.__new__(Daemon)
    daemon.opts, daemon.stop, daemon.metrics = DaemonOptions(), threading.Event(), None
    daemon.restored_keys = 0
    daemon.consumer, daemon.sinks = mock.MagicMock(), []
    daemon.engine = mock.MagicMock()
    daemon.engine.process.side_effect = lambda events: EngineOutput(readings=len(events))
    daemon.checkpointer = mock.MagicMock()

    def batches():
        yield Batch(["r"] * 3, messages=3)
        yield Batch(["r"] * 2, messages=2)
        raise FencedError(FENCED)

    daemon.source = SimpleNamespace(batches=batches, skipped=0)
    daemon._rejoin_after_fence = lambda exc: daemon.stop.set()  # SIGTERM came meanwhile
    daemon._refresh_ready = daemon._close_clients = lambda *a: None

    totals = daemon.run()
    assert (totals["messages"], totals["readings"], totals["windows"], totals["alerts"]) == (5, 5, 0, 0)
    daemon.checkpointer.final.assert_not_called()  # fenced: its state was dropped, nothing to checkpoint


def test_a_broker_call_without_a_timeout_is_bounded_and_its_result_or_error_comes_through():
    import threading
    import time

    from anomaly.kafka.sinks import TransactionTimeoutError, bounded

    assert bounded(lambda: 42, 1.0, "an answer") == 42
    with pytest.raises(ZeroDivisionError):
        bounded(lambda: 1 / 0, 1.0, "a failure")
    never = threading.Event()
    t0 = time.monotonic()
    with pytest.raises(
        TransactionTimeoutError, match=r"did not complete the commit within 0.2s \(kafka.max_block_ms\)"
    ):
        bounded(never.wait, 0.2, "the commit")
    assert 0.2 <= time.monotonic() - t0 < 2.0
    never.set()


def test_checkpoints_are_written_in_zstd_and_zlib_records_of_older_daemons_still_restore(bundle):
    engine = Engine(bundle, EngineConfig())
    rng = np.random.default_rng(0)
    engine.process(
        [Event(f"k{i}", np.arange(40.0), rng.normal(size=(40, len(bundle.features)))) for i in range(6)]
    )
    snap = engine.snapshot()
    sent: list[Record] = []
    owner = Owner("g", "m")

    def store(codec: str = WRITE_CODEC) -> ChangelogStore:
        send = lambda t, k, v: sent.append(Record(t, 0, len(sent), k, v))  # noqa: E731
        return ChangelogStore(send, None, lambda _: "cl", owner, codec=codec)  # type: ignore[arg-type]

    def restored(rec: Record) -> Checkpoint:
        head, payload = decode_record(rec.value or b"")
        return store()._checkpoint("cl", "in:0", head, payload, {})

    store().write("in:0", 41, snap, 6, 3)
    head, payload = decode_record(sent[-1].value or b"")
    assert (head["codec"], head["raw"], WRITE_CODEC) == ("zstd", len(snap), "zstd")
    assert payload[:4] == b"\x28\xb5\x2f\xfd"  # a standard zstd frame
    cp = restored(sent[-1])
    assert (cp.snapshot, cp.offset, cp.epoch, cp.codec) == (snap, 41, 3, "zstd")
    store().write("in:0", 41, cp.snapshot, cp.keys, 4, stored=cp)  # a claim: the stored payload as it was
    assert decode_record(sent[-1].value or b"")[1] == payload
    # a record of a daemon from before the codec field grew "raw" (zlib only)
    old = json.loads(encode_header("in:0", 41, zlib.compress(snap, 1), 6, owner=owner, codec="zlib"))
    del old["raw"]
    sent.append(Record("cl", 0, 9, b"in:0", json.dumps(old).encode() + b"\n" + zlib.compress(snap, 1)))
    assert restored(sent[-1]).snapshot == snap
    store("zlib").write("in:0", 41, snap, 6)
    assert (decode_record(sent[-1].value or b"")[0]["codec"], restored(sent[-1]).snapshot) == ("zlib", snap)
    fresh = Engine(bundle, EngineConfig())
    fresh.restore(restored(sent[-3]).snapshot)
    assert fresh.snapshot() == snap
    with pytest.raises(ValueError, match="choose one of zstd, zlib"):
        store("lz4")
    with pytest.raises(KafkaError, match="does not decompress"):
        decompress_state({"codec": "zstd", "raw": len(snap)}, payload[:-9])


def test_state_out_that_cannot_be_written_is_refused_before_the_daemon_starts(tmp_path, bundle_path):
    """Found out only at shutdown, after hours of running, the snapshot was lost (and an EIO was a traceback)."""
    from anomaly.kafka.daemon import Daemon, DaemonOptions, check_writable

    cfg = build_config()
    (tmp_path / "afile").write_bytes(b"")
    with pytest.raises(
        ConfigError, match="--state-out: cannot write the state snapshot .*afile/state.bin: .*afile"
    ):
        Daemon(cfg, str(bundle_path), options=DaemonOptions(state_out=str(tmp_path / "afile" / "state.bin")))
    with pytest.raises(ConfigError, match="--state-out: cannot write the state snapshot .*: Is a directory"):
        Daemon(cfg, str(bundle_path), options=DaemonOptions(state_out=str(tmp_path)))
    check_writable(str(tmp_path / "missing" / "state.bin"))  # created when the snapshot is written
    assert not (tmp_path / "missing").exists()
    fresh = tmp_path / "state.bin"
    check_writable(str(fresh))
    assert not fresh.exists()  # the probe leaves nothing behind
    kept = tmp_path / "kept.bin"
    kept.write_bytes(b"old")
    check_writable(str(kept))
    assert kept.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "kept.bin"]  # nor a temporary file


def test_a_corrupt_model_file_in_place_is_counted_and_the_model_in_use_keeps_scoring(tmp_path, bundle_path):
    """A failed hot reload was only an ERROR log line: /metrics still showed the old model and nothing told an
    alert rule that the file on disk is not the one in use."""
    from prometheus_client import CollectorRegistry

    from anomaly.kafka.daemon import Daemon
    from anomaly.metrics import PipelineMetrics

    live = tmp_path / "live.pt"
    live.write_bytes(bundle_path.read_bytes())
    metrics = PipelineMetrics(CollectorRegistry())
    daemon = Daemon(build_config(), str(live), metrics=metrics)
    version = daemon.bundle.version
    live.write_bytes(bundle_path.read_bytes()[:20_000])  # a copy cut short
    daemon.request_reload()
    daemon._maybe_reload()
    assert daemon.bundle.version == version
    assert metrics.registry.get_sample_value("anomaly_model_reload_failures_total") == 1.0
    assert metrics.registry.get_sample_value("anomaly_model_reloads_total", {"state": "kept"}) == 0.0


def test_a_model_copy_finished_within_one_mtime_tick_of_a_failed_reload_is_still_loaded(
    tmp_path, bundle_path
):
    """The daemon told a new model file by its mtime alone. A `cp` that the daemon looked at half-way failed to
    load (counted); when the copy finished within the file system's timestamp tick, the complete file had the
    same mtime and was never loaded: the old model kept scoring until the file changed again."""
    import os
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    from anomaly.kafka.changelog import Owner
    from anomaly.kafka.daemon import Daemon
    from anomaly.metrics import PipelineMetrics

    live = tmp_path / "live.pt"
    live.write_bytes(bundle_path.read_bytes())
    metrics = PipelineMetrics(CollectorRegistry())
    daemon = Daemon(build_config(), str(live), metrics=metrics)
    daemon.changelog = SimpleNamespace(owner=Owner("g", "m"))  # not connected: no broker
    daemon.source = SimpleNamespace(decoder=None)
    daemon.sinks = []
    complete = bundle_path.read_bytes()  # the same model, copied in again: a new file all the same
    in_use = daemon.bundle
    tick = os.stat(live).st_mtime_ns + 1_000_000_000
    live.write_bytes(complete[: len(complete) // 2])  # the daemon looks while the copy is half-way
    os.utime(live, ns=(tick, tick))
    daemon._maybe_reload()
    assert metrics.registry.get_sample_value("anomaly_model_reload_failures_total") == 1.0
    with open(live, "r+b") as f:  # the rest, within the same timestamp tick
        f.seek(len(complete) // 2)
        f.write(complete[len(complete) // 2 :])
    os.utime(live, ns=(tick, tick))
    daemon._maybe_reload()
    assert daemon.bundle is not in_use
    assert metrics.registry.get_sample_value("anomaly_model_reloads_total", {"state": "kept"}) == 1.0


def test_the_checkpoint_age_counts_from_the_daemons_start_until_its_first_checkpoint(tmp_path, bundle_path):
    """At 0 until the first checkpoint, `time() - anomaly_checkpoint_last_timestamp_seconds` (the dashboard's
    "Checkpoint age", CheckpointStale's value) read 56 years for the scrapes after every restart (seen on a real
    Prometheus scraping a restarted daemon)."""
    import time

    from prometheus_client import CollectorRegistry

    from anomaly.kafka.daemon import Daemon
    from anomaly.metrics import PipelineMetrics

    metrics = PipelineMetrics(CollectorRegistry())
    before = time.time()
    Daemon(build_config(), str(bundle_path), metrics=metrics)
    started = metrics.registry.get_sample_value("anomaly_checkpoint_last_timestamp_seconds")
    assert before <= started <= time.time()


def test_lag_of_an_assigned_partition_not_read_from_yet_is_counted_from_the_consumer_position():
    """The lag gauge had series only for partitions the loop had processed a message of: a partition with a
    backlog whose records were still in the fetcher (or taken ahead) showed no lag at all."""
    from kafka.errors import IllegalStateError

    from anomaly.kafka.daemon import partition_lags

    tps = [TopicPartition("sensors", p) for p in range(5)]

    class Consumer:
        def assignment(self) -> set[TopicPartition]:
            return set(tps)

        def highwater(self, tp: TopicPartition) -> int | None:
            return None if tp.partition == 4 else 100  # partition 4: no fetch response yet

        def position(self, tp: TopicPartition, timeout_ms: int | None = None) -> int:
            if tp.partition == 3:
                raise IllegalStateError("Partition is not assigned")  # revoked meanwhile
            return 40

    processed = {tps[0]: 90}  # the loop processed up to offset 89
    ahead = {tps[1]: [Record("sensors", 1, 70, None, b"{}")]}  # taken ahead of the loop, not processed
    assert partition_lags(Consumer(), processed, ahead) == {
        ("sensors", 0): 10,
        ("sensors", 1): 30,
        ("sensors", 2): 60,
    }


def test_a_restore_counts_each_partition_whose_state_it_refuses_by_reason(bundle_path):
    """Refused state started a partition's keys fresh and was only logged; anomaly_restore_refused_total says it
    (other_group, counted when the changelog is read, is checked on Tansu in test_kafka_cluster)."""
    from types import SimpleNamespace

    from anomaly.kafka.changelog import Checkpoint, model_fingerprint
    from anomaly.kafka.daemon import Daemon
    from anomaly.metrics import PipelineMetrics

    metrics = PipelineMetrics()
    daemon = Daemon(build_config(), str(bundle_path), metrics=metrics)  # not connected: no broker
    mine = model_fingerprint(daemon.bundle.features, daemon.bundle.arch.to_json())
    daemon.changelog = SimpleNamespace(owner=SimpleNamespace(model=mine))
    f = len(daemon.bundle.features)
    daemon.engine.process([Event("k", np.array([1.0]), np.zeros((1, f)))])
    state = daemon.engine.snapshot(["k"])

    restored = [
        daemon._restore_one("in:0", Checkpoint("in:0", 5, state, 1, 1, mine)),
        daemon._restore_one("in:1", Checkpoint("in:1", 5, state, 1, 1, "another-model")),
        daemon._restore_one("in:2", Checkpoint("in:2", 5, b"not a snapshot", 1, 1, mine)),
    ]
    refused = _refusals(metrics)
    assert restored == [["k"], None, None]
    assert refused == {"other_group": 0.0, "incompatible_model": 1.0, "bad_state": 1.0}


def _state_of_other_settings(daemon: Any, **engine: Any) -> bytes:
    """A snapshot of the daemon's model, one key with an open alert, written by an engine with ``engine``."""
    other = Engine(daemon.bundle, EngineConfig(**engine))
    f = len(daemon.bundle.features)
    other.process([Event("k", np.array([7.0]), np.zeros((1, f)))])
    row = other.store.slots["k"]
    arrays = other.store.arrays
    arrays["alert_open"][row], arrays["alert_start"][row] = True, 3.0
    arrays["alert_peak"][row], arrays["alert_thr"][row], arrays["last_anom_ts"][row] = 9.0, 2.0, 6.0
    return other.snapshot(["k"])


def test_a_checkpoint_of_other_state_shaping_settings_stops_the_restore_before_anything_is_written(
    bundle_path,
):
    """A restart with `dynamic` turned back to `static` (or another dynamic_history) restored nothing: every
    partition's keys started fresh (bad_state), their open alerts never closed, and the start's claims replaced
    the checkpoints, so rolling the setting back did not bring the state back. Now the restore stops with one
    line naming what differs and how to go on, before any claim; another model's state still starts fresh."""
    from types import SimpleNamespace

    from anomaly.kafka.changelog import Checkpoint, model_fingerprint
    from anomaly.kafka.daemon import Daemon, IncompatibleStateError

    daemon = Daemon(build_config({"engine": {"threshold": "static"}}), str(bundle_path))  # not connected
    mine = model_fingerprint(daemon.bundle.features, daemon.bundle.arch.to_json())
    daemon.changelog = SimpleNamespace(owner=SimpleNamespace(model=mine))
    state = _state_of_other_settings(daemon, threshold="dynamic")
    checkpoints = {
        f"in:{p}": Checkpoint(f"in:{p}", 5, state, 1, 1, mine if p < 5 else "another-model") for p in range(6)
    }
    checkpoints["in:9"] = Checkpoint("in:9", None, b"", 0, 1, mine)  # a claim without state

    with pytest.raises(IncompatibleStateError) as caught:
        daemon._refuse_other_settings(checkpoints)
    fields = [n for n, *_ in daemon.engine.store.layout.extra]
    theirs = [n for n, *_ in Engine(daemon.bundle, EngineConfig(threshold="dynamic")).store.layout.extra]
    lacking = "; ".join(f"field {n} is not kept here" for n in theirs if n not in fields)
    assert (
        lacking
        == "field hist is not kept here; field pushed is not kept here; field dyn_doubt is not kept here"
    )
    assert str(caught.value) == (
        f"cannot restore the state of 5 partition(s) (in:0, in:1, in:2, in:3 and 1 more): {lacking} (the "
        "[engine] settings that shape per-key state differ from the ones it was written with: threshold kind, "
        "dynamic_history, spot_init, spot_peaks, spot_depth, or a level-shift or stuck-sensor policy). Nothing "
        "was restored or written: roll those settings back (or run the anomaly version that wrote it) to "
        "continue with that state, or start once with --reset-state to discard it (those keys start fresh from "
        "the committed offsets, their open alerts closed with reason evicted)"
    )
    daemon._refuse_other_settings({"in:5": checkpoints["in:5"], "in:9": checkpoints["in:9"]})  # no error
    fits = daemon.engine.snapshot([], domain="in:0")
    daemon._refuse_other_settings({"in:0": Checkpoint("in:0", 5, fits, 0, 1, mine)})


def _in_state_format(snapshot: bytes, written: str) -> bytes:
    """``snapshot`` with its header's state format replaced (a newer version's snapshot, as far as this one can
    tell)."""
    import json
    import struct

    (n,) = struct.unpack("<I", snapshot[4:8])
    header = json.loads(snapshot[8 : 8 + n])
    head = json.dumps({**header, "format": written}).encode()
    return snapshot[:4] + struct.pack("<I", len(head)) + head + snapshot[8 + n :]


def test_a_checkpoint_that_cannot_be_read_stops_the_restore_unless_reset_state_discards_it(bundle_path):
    """A checkpoint of this group and model whose snapshot cannot be read (a newer version's state format, met
    after a downgrade, or corrupted bytes) was discarded silently at the restore (bad_state): its keys started
    fresh and this start's claims replaced it, so running the version that wrote it did not bring it back. Now
    the restore stops with one line naming the partition and what is wrong, before any claim; --reset-state
    discards it (a corrupted record would stop every start otherwise)."""
    from types import SimpleNamespace

    from anomaly.kafka.changelog import Checkpoint, model_fingerprint
    from anomaly.kafka.daemon import Daemon, IncompatibleStateError

    daemon = Daemon(build_config(), str(bundle_path))  # not connected
    mine = model_fingerprint(daemon.bundle.features, daemon.bundle.arch.to_json())
    daemon.changelog = SimpleNamespace(owner=SimpleNamespace(model=mine))
    f = len(daemon.bundle.features)
    daemon.engine.process([Event("k", np.array([1.0]), np.zeros((1, f)))])
    state = daemon.engine.snapshot(["k"], domain="in:0")
    newer = _in_state_format(state, "anomaly-state/3")
    fits = Checkpoint("in:0", 5, state, 1, 1, mine)
    checkpoints = {
        "in:0": fits,
        "in:1": Checkpoint("in:1", 5, newer, 1, 1, mine),
        "in:2": Checkpoint("in:2", 5, state[:-3], 1, 1, mine),  # truncated
        "in:3": Checkpoint("in:3", 5, b"not a snapshot", 1, 1, "another-model"),  # refused at the restore
    }

    with pytest.raises(IncompatibleStateError) as caught:
        daemon._refuse_other_settings(checkpoints)
    assert str(caught.value) == (
        "cannot restore the state of 2 partition(s) (in:1, in:2): the checkpoint of in:1 was written in state "
        "format 'anomaly-state/3'; this version reads 'anomaly-state/2'. Nothing was restored or written: run the "
        "anomaly version that wrote it to continue with that state, or start once with --reset-state to discard "
        "it (those keys start fresh from the committed offsets); until then every start stops here"
    )
    with pytest.raises(IncompatibleStateError) as caught:
        daemon._refuse_other_settings({"in:0": fits, "in:2": checkpoints["in:2"]})
    assert str(caught.value).startswith(
        "cannot restore the state of 1 partition(s) (in:2): the checkpoint of in:2 is corrupted (truncated). "
        "Nothing was restored or written: no anomaly version can restore it (damaged, or not written by anomaly): "
        "start once with --reset-state"
    )  # a truncated snapshot: running the version that wrote it does not help (said so before session 19)
    daemon._refuse_other_settings({"in:0": fits, "in:3": checkpoints["in:3"]})  # no error

    _, restored, refused = _reset_restores(bundle_path, daemon.changelog, checkpoints)
    assert restored == [["k"], None, None, None]
    assert refused == {"other_group": 0.0, "incompatible_model": 1.0, "bad_state": 2.0}


def _refusals(metrics: Any) -> dict[str, float | None]:
    """anomaly_restore_refused_total per reason."""
    from anomaly.metrics import RESTORE_REFUSALS

    return {
        r: metrics.registry.get_sample_value("anomaly_restore_refused_total", {"reason": r})
        for r in RESTORE_REFUSALS
    }


def _reset_restores(
    bundle_path: Any, changelog: Any, checkpoints: dict[str, Any]
) -> tuple[Any, list[list[str] | None], dict[str, float | None]]:
    """A daemon started with --reset-state on the same changelog: its check of `checkpoints` (no error: what
    cannot be restored is discarded at the restore), what each restore gives, and the refusals it counted."""
    from anomaly.kafka.daemon import Daemon, DaemonOptions
    from anomaly.metrics import PipelineMetrics

    metrics = PipelineMetrics()
    reset = Daemon(build_config(), str(bundle_path), metrics=metrics, options=DaemonOptions(reset_state=True))
    reset.changelog = changelog
    reset._refuse_other_settings(checkpoints)
    restored = [reset._restore_one(pid, cp) for pid, cp in checkpoints.items()]
    return reset, restored, _refusals(metrics)


def _renamed(chunks: dict[str, bytes], pid: str) -> dict[str, bytes]:
    """Chunks of partition in:0's checkpoint as those of ``pid``."""
    return {pid + key.removeprefix("in:0"): value for key, value in chunks.items()}


def test_a_header_naming_more_chunks_than_were_read_is_refused_without_listing_them(monkeypatch):
    """A hand-written header with `"chunks": 1000000000000` made the restore build a list of 10^12 chunk keys
    (memory and time without end) before finding them missing. Now the chunks are counted among those read, and
    a count no record can need (more than its bytes, or below 0) is a reason of its own; the restore refuses the
    record as any it cannot read."""
    import builtins

    from anomaly.kafka import changelog

    sent: list[Record] = []
    send = lambda t, k, v: sent.append(Record(t, 0, len(sent), k, v))  # noqa: E731
    store = ChangelogStore(send, None, lambda _: "cl", Owner("g", "m"), chunk_bytes=64)  # type: ignore[arg-type]
    store.write("in:0", 41, bytes(range(256)) * 2, 1, 3)
    chunks = {r.key.decode(): r.value for r in sent[:-1] if r.key and r.value}
    head, payload = decode_record(sent[-1].value or b"")
    assert head["chunks"] == len(chunks) > 1

    def bounded(*args: int) -> range:  # the old restore called range(10**12) and listed every key
        assert max(args) <= len(chunks), f"range{args}: more keys than the chunks read"
        return builtins.range(*args)

    monkeypatch.setattr(changelog, "range", bounded, raising=False)
    n = 10**12
    cases = {
        "more than bytes": {**head, "chunks": n},
        "more than read": {**head, "chunks": n, "bytes": n},
        "negative": {**head, "chunks": -1},
        "as written": head,
    }
    got = {name: store._checkpoint("cl", "in:0", h, payload, chunks) for name, h in cases.items()}
    assert {name: (cp.problem, cp.snapshot == b"") for name, cp in got.items()} == {
        "more than bytes": (
            f"has a header whose 'chunks' is {n}, more than its 'bytes' ({head['bytes']}) can fill in "
            "changelog topic cl",
            True,
        ),
        "more than read": (f"is missing {n - len(chunks)} of its {n} chunk(s) in changelog topic cl", True),
        "negative": ("has a header whose 'chunks' is -1, not a count in changelog topic cl", True),
        "as written": ("", False),
    }
    # chunks of another generation or partition, or keys that only look like a chunk's, are not counted
    odd = {
        "in:0/x/0": b"a",
        "in:1/" + next(iter(chunks)).split("/", 1)[1]: b"b",
        f"in:0/{head['gen']}/01": b"c",
    }
    short = dict(list(chunks.items())[1:])
    assert store._checkpoint("cl", "in:0", head, payload, {**short, **odd}).problem == (
        f"is missing 1 of its {len(chunks)} chunk(s) in changelog topic cl"
    )


def test_a_changelog_record_whose_state_cannot_be_read_stops_the_restore_unless_reset_state_discards_it(
    bundle_path, caplog
):
    """A changelog record whose bytes do not match its checksum, that misses chunks or does not decompress stopped
    every start with one line (KafkaError) and --reset-state did not get past it: the only way on was deleting
    the changelog topic, every partition's state with it; one in a newer changelog format (after a downgrade) was
    read as this one's. Now each is refused as a snapshot that cannot be read:
    the start stops naming the partition and what is wrong, and --reset-state discards that partition's state
    alone (bad_state)."""
    import logging
    from types import SimpleNamespace

    from anomaly.kafka.changelog import model_fingerprint
    from anomaly.kafka.daemon import Daemon, IncompatibleStateError

    daemon = Daemon(build_config(), str(bundle_path))  # not connected
    mine = model_fingerprint(daemon.bundle.features, daemon.bundle.arch.to_json())
    owner = Owner("g", mine)
    f = len(daemon.bundle.features)
    daemon.engine.process([Event("k", np.array([1.0]), np.zeros((1, f)))])
    state = daemon.engine.snapshot(["k"], domain="in:0")
    sent: list[Record] = []
    send = lambda t, k, v: sent.append(Record(t, 0, len(sent), k, v))  # noqa: E731
    store = ChangelogStore(send, None, lambda _: "cl", owner, chunk_bytes=64)  # type: ignore[arg-type]
    store.write("in:0", 41, state, 1, 3)
    chunks = {r.key.decode(): r.value for r in sent[:-1] if r.key and r.value}
    head, payload = decode_record(sent[-1].value or b"")
    assert head["chunks"] == len(chunks) > 1

    whole = store._checkpoint("cl", "in:0", head, payload, chunks)
    assert (whole.snapshot, whole.problem) == (state, "")
    lost = dict(list(chunks.items())[1:])
    flipped = {k: v if i else b"x" + v[1:] for i, (k, v) in enumerate(chunks.items())}
    unzipped = {**head, "codec": "zlib"}
    newer = {**head, "format": "anomaly-changelog/2"}
    checkpoints = {
        "in:0": store._checkpoint("cl", "in:0", head, payload, lost),
        "in:1": store._checkpoint("cl", "in:1", head, payload, _renamed(flipped, "in:1")),
        "in:2": store._checkpoint("cl", "in:2", unzipped, payload, _renamed(chunks, "in:2")),
        "in:3": store._checkpoint("cl", "in:3", newer, payload, _renamed(chunks, "in:3")),
    }
    assert {pid: (cp.problem, cp.snapshot, cp.offset, cp.epoch) for pid, cp in checkpoints.items()} == {
        "in:0": (f"is missing 1 of its {len(chunks)} chunk(s) in changelog topic cl", b"", 41, 3),
        "in:1": (
            "is corrupted in changelog topic cl (its bytes do not match its header's checksum)",
            b"",
            41,
            3,
        ),
        "in:2": (
            "does not decompress (Error -3 while decompressing data: incorrect header check)",
            b"",
            41,
            3,
        ),
        "in:3": (
            "was written in changelog format 'anomaly-changelog/2'; this version reads 'anomaly-changelog/1'",
            b"",
            41,
            3,
        ),
    }
    daemon.changelog = SimpleNamespace(owner=owner)
    with pytest.raises(IncompatibleStateError) as caught:
        daemon._refuse_other_settings({"in:1": checkpoints["in:1"]})
    assert str(caught.value) == (
        "cannot restore the state of 1 partition(s) (in:1): the checkpoint of in:1 is corrupted in changelog topic "
        "cl (its bytes do not match its header's checksum). Nothing was restored or written: no anomaly version "
        "can restore it (damaged, or not written by anomaly): start once with --reset-state to discard it (those "
        "keys start fresh from the committed offsets); until then every start stops here"
    )

    with caplog.at_level(logging.INFO, logger="anomaly.kafka.daemon"):
        reset, restored, _ = _reset_restores(bundle_path, daemon.changelog, checkpoints)
    assert restored == [None] * 4
    assert [(r.levelname, r.getMessage()) for r in caplog.records][0] == (
        "WARNING",
        f"--reset-state: discarded the state of in:0 (its checkpoint is missing 1 of its {len(chunks)} chunk(s) "
        "in changelog topic cl): its keys start fresh from the committed offset",
    )  # an ERROR line before; how many keys and alerts it held cannot be read
    assert reset._restore_one("in:4", whole) == ["k"]
    refused = _refusals(reset.metrics)
    assert refused == {"other_group": 0.0, "incompatible_model": 0.0, "bad_state": 4.0}


def test_a_changelog_record_whose_header_cannot_be_read_stops_the_restore_unless_reset_state_discards_it(
    bundle_path,
):
    """A record under a partition's key whose header is not a changelog header (not JSON, another JSON value, a
    field of the wrong type: written by hand or by another tool) ended the start with a Python traceback
    (JSONDecodeError, AttributeError, ValueError; KeyError for a header without 'bytes'). Now it is refused as
    an unreadable checkpoint: one line naming the partition and the record, unless --reset-state discards it;
    its claim then replaces it, and the restore reads past it."""
    from types import SimpleNamespace

    from anomaly.kafka.changelog import model_fingerprint
    from anomaly.kafka.daemon import Daemon, IncompatibleStateError

    daemon = Daemon(build_config(), str(bundle_path))  # not connected
    mine = model_fingerprint(daemon.bundle.features, daemon.bundle.arch.to_json())
    owner = Owner("g", mine, "t-1")
    f = len(daemon.bundle.features)
    daemon.engine.process([Event("k", np.array([1.0]), np.zeros((1, f)))])
    state = daemon.engine.snapshot(["k"], domain="in:0")
    sent: list[Record] = []
    send = lambda t, k, v: sent.append(Record(t, 0, len(sent), k, v))  # noqa: E731
    store = ChangelogStore(send, None, lambda _: "cl", owner)  # type: ignore[arg-type]
    for p in range(6):
        store.write(f"in:{p}", 41, state, 1, 3)
    head = json.loads((sent[0].value or b"").split(b"\n")[0])
    bad = {
        "in:0": b"hello, not a header\n",
        "in:1": b"\xff\xfe\n",
        "in:2": b"[1, 2]\n",
        "in:3": json.dumps({**head, "epoch": "4"}).encode() + b"\n",
        "in:4": json.dumps({k: v for k, v in head.items() if k != "bytes"}).encode() + b"\n",
        "in:5": json.dumps({**head, "offset": "x", "keys": "y"}).encode() + b"\n",
    }
    for pid, value in bad.items():
        send("cl", pid.encode(), value)
    send("cl", b"\xff\xfe", sent[0].value)  # a key that is not UTF-8: no partition's
    store._records = lambda topic, reader=None, until=None: iter(sent)  # type: ignore[method-assign]

    assert writers_to_fence(sent, set(bad).__contains__, "g") == ({"t-1"}, {0: len(sent) - 1})
    checkpoints = store.read(bad)
    assert {pid: (cp.problem, cp.offset, cp.epoch, cp.snapshot) for pid, cp in checkpoints.items()} == {
        "in:0": (
            "cannot be read: the record at offset 6 of changelog topic cl partition 0 has a header that is not "
            "JSON (Expecting value: line 1 column 1 (char 0))",
            -1,
            3,
            b"",
        ),
        "in:1": (
            "cannot be read: the record at offset 7 of changelog topic cl partition 0 has a header that is not "
            "JSON (Expecting value: line 1 column 1 (char 0))",
            -1,
            3,
            b"",
        ),
        "in:2": (
            "cannot be read: the record at offset 8 of changelog topic cl partition 0 has a header that is a "
            "JSON list, not an object",
            -1,
            3,
            b"",
        ),
        "in:3": (
            "cannot be read: the record at offset 9 of changelog topic cl partition 0 has a header whose 'epoch' "
            'is "4", not an integer',
            -1,
            3,
            b"",
        ),
        "in:4": ("has a header without 'bytes' in changelog topic cl", 41, 3, b""),
        "in:5": (
            "has a header whose 'offset' is \"x\", not an integer or null in changelog topic cl",
            -1,
            3,
            b"",
        ),
    }
    daemon.changelog = SimpleNamespace(owner=owner)
    with pytest.raises(IncompatibleStateError) as caught:
        daemon._refuse_other_settings(checkpoints)
    assert str(caught.value) == (
        "cannot restore the state of 6 partition(s) (in:0, in:1, in:2, in:3 and 2 more): the checkpoint of in:0 "
        "cannot be read: the record at offset 6 of changelog topic cl partition 0 has a header that is not JSON "
        "(Expecting value: line 1 column 1 (char 0)). Nothing was restored or written: no anomaly version can "
        "restore it (damaged, or not written by anomaly): start once with --reset-state to discard it (those keys "
        "start fresh from the committed offsets); until then every start stops here"
    )

    _, restored, refused = _reset_restores(bundle_path, daemon.changelog, checkpoints)
    assert restored == [None] * 6
    assert refused == {"other_group": 0.0, "incompatible_model": 0.0, "bad_state": 6.0}
    # the reset's claims, at the next epoch, are what the next start reads
    for pid, cp in checkpoints.items():
        store.write(pid, None, b"", 0, cp.epoch + 1)
    claims = store.read(bad)
    assert {(cp.problem, cp.offset, cp.epoch) for cp in claims.values()} == {("", None, 4)}


def _offline_restorer(
    bundle_path: Any, reset_state: bool, keys: int = 1, metrics: Any = None
) -> tuple[Any, dict[str, Any], list[tuple[Any, ...]]]:
    """A daemon not connected whose restore (``_restore``) reads three checkpoints of ``keys`` keys each
    (partitions in:0, in:1, in:2 of input topic "in") and records the changelog records it writes."""
    from types import SimpleNamespace

    from anomaly.kafka.changelog import Checkpoint, model_fingerprint
    from anomaly.kafka.daemon import Daemon, DaemonOptions

    cfg = build_config({"kafka": {"transactional": False}})
    options = DaemonOptions(reset_state=reset_state)
    daemon = Daemon(cfg, str(bundle_path), options=options, metrics=metrics)  # not connected
    mine = model_fingerprint(daemon.bundle.features, daemon.bundle.arch.to_json())
    source = Engine(daemon.bundle, daemon.engine.config)
    f = len(daemon.bundle.features)
    checkpoints = {}
    for p in range(3):
        names = [f"k{p}-{i}" for i in range(keys)]
        source.process([Event(k, np.arange(5.0) + p, np.full((5, f), float(p))) for k in names])
        pid = f"in:{p}"
        checkpoints[pid] = Checkpoint(pid, 4, source.snapshot(names, domain=pid), keys, 2, mine)
    written: list[tuple[Any, ...]] = []
    daemon.changelog = SimpleNamespace(  # type: ignore[assignment]
        owner=Owner("g", mine),
        foreign={},
        read=lambda pids: checkpoints,
        write=lambda *a, **k: written.append(a),
    )
    daemon.identity = SimpleNamespace(check=lambda admin: None, ids={})  # type: ignore[assignment]
    daemon.admin, daemon.changelog_topics = None, {"in": "cl"}
    daemon._committed = lambda: {}  # type: ignore[method-assign]
    daemon.delivery = SimpleNamespace(flush=lambda: None, settle=lambda: None)  # type: ignore[assignment]
    daemon.checkpointer = SimpleNamespace(commit=lambda tps, wait: True)  # type: ignore[assignment]
    return daemon, checkpoints, written


@pytest.mark.parametrize("reset_state", [False, True])
def test_a_restore_reads_each_checkpoints_snapshot_once(bundle_path, monkeypatch, reset_state):
    """A restart read each assigned checkpoint's snapshot five times (the check that it can be read, twice, its
    settings, the store's restore and the engine's for the clocks, each parsing its header, three of them
    copying every array), twice with --reset-state: now once, by the check, and the restore uses what it read
    (views of the snapshot's bytes, copied once, into the store's rows)."""
    from types import SimpleNamespace

    from anomaly.engine import state as state_module

    daemon, checkpoints, written = _offline_restorer(bundle_path, reset_state)
    reads = []
    counted = SimpleNamespace(
        loads=lambda text: reads.append(len(text)) or json.loads(text),
        dumps=json.dumps,
        JSONDecodeError=json.JSONDecodeError,
    )
    monkeypatch.setattr(state_module, "json", counted)

    daemon._restore([TopicPartition("in", p) for p in range(3)], seek=False)
    assert len(reads) == 3  # one header per checkpoint
    assert [(a[0], a[1], a[4]) for a in written] == [("in:0", 4, 3), ("in:1", 4, 3), ("in:2", 4, 3)]
    assert {pid: daemon.engine.snapshot([f"k{pid[-1]}-0"], domain=pid) for pid in checkpoints} == {
        pid: cp.snapshot for pid, cp in checkpoints.items()
    }
    assert daemon.restored_keys == 3


@pytest.mark.parametrize("reset_state", [False, True])
def test_a_restore_whose_keys_outgrow_the_memory_for_their_state_stops_the_daemon_with_one_line(
    bundle_path, monkeypatch, reset_state
):
    """Restoring checkpoints of more keys than the state store's rows grows it (64, 128, ...); a growth that did
    not fit in memory raised numpy's MemoryError inside the rebalance callback: kafka-python's `User rebalance
    callback throws an error` and a traceback, with the store's fields grown up to the one that failed. Now
    the store stays as it was, and the error is the one line the loop raises after its poll (status 2),
    before the claim of the partition it was restoring is written and before any checkpoint; --reset-state
    does not take it for unreadable state (bad_state) to discard."""
    from types import SimpleNamespace

    from anomaly.engine import state
    from anomaly.engine.state import StateMemoryError
    from anomaly.metrics import PipelineMetrics

    metrics = PipelineMetrics()
    daemon, _, written = _offline_restorer(bundle_path, reset_state, keys=40, metrics=metrics)
    monkeypatch.setattr(state, "np", NoRoomFor(128))  # in:1's keys need rows 64 to 79
    daemon.source = SimpleNamespace(polling=True, drop_ahead=lambda tps: None)  # type: ignore[assignment]
    daemon.consumer = SimpleNamespace(seek=lambda tp, offset: None)  # type: ignore[assignment]

    daemon.on_rebalance("assigned", [TopicPartition("in", p) for p in range(3)])
    assert isinstance(daemon._fatal, StateMemoryError)
    assert str(daemon._fatal).startswith(
        "the engine's per-key state does not fit in memory: growing it from 64 to 128 keys asked for "
    )
    assert [a[0] for a in written] == ["in:0"]  # the claim of the partition restored before, not in:1's
    assert {name: len(a) for name, a in daemon.engine.store.arrays.items()} == dict.fromkeys(
        daemon.engine.store.arrays, 64
    )
    bad = metrics.registry.get_sample_value("anomaly_restore_refused_total", {"reason": "bad_state"})
    assert bad == 0.0
    with pytest.raises(StateMemoryError):  # the loop's next step after the poll
        daemon._apply_deferred()
    # the daemon's line (consume prints it as `error: ...`, status 2) says what became of the state: it said
    # only that the state did not fit, not that nothing was checkpointed and what a restart restores
    closed = _runnable(daemon, lambda: (daemon._apply_deferred(), (yield from ())))
    with pytest.raises(StateMemoryError) as caught:
        daemon.run()
    assert str(caught.value) == f"{daemon._fatal}; {STOPPED_WITHOUT_CHECKPOINT}"
    assert STOPPED_WITHOUT_CHECKPOINT == (
        "the daemon stopped without a checkpoint: a restart restores the last committed one and reads on from "
        "there (after a change of the [engine] settings that shape per-key state, only with --reset-state, "
        "which discards it)"
    )
    assert [a[0] for a in written] == ["in:0"] and closed == [
        "consumer",
        "producer",
    ]  # no commit, no checkpoint


def _runnable(daemon: Any, batches: Any) -> list[str]:
    """``daemon`` (not connected) made able to run its loop on ``batches()`` without a broker; returns the list
    of what was checkpointed or closed (the consumer without committing, the producer without a commit)."""
    import gc
    from types import SimpleNamespace

    done: list[str] = []
    closing = lambda name: lambda **kw: done.append(name)  # noqa: E731
    daemon.source.batches = batches
    daemon.sinks = []
    daemon.checkpointer = SimpleNamespace(
        after_batch=lambda *a: done.append("checkpoint"), final=lambda *a: done.append("final checkpoint")
    )
    daemon.consumer = SimpleNamespace(close=closing("consumer"), seek=lambda tp, offset: None)
    daemon.producer = SimpleNamespace(close=closing("producer"))
    daemon.dead_producer = daemon.changelog.reader = daemon.admin = SimpleNamespace(close=lambda **kw: None)
    daemon.changelog.peek = None
    loop = daemon.run

    def run() -> Any:
        try:
            return loop()
        finally:
            gc.unfreeze()  # the loop freezes what the process holds (for a daemon); not this test process

    daemon.run = run
    return done


def test_a_batch_whose_new_keys_outgrow_the_memory_for_their_state_stops_the_daemon_saying_what_a_restart_restores(
    bundle_path, monkeypatch
):
    """A batch of 100 new keys grows the store from 64 to 128 rows; that growth failing stopped the daemon with
    the engine's line alone: nothing said that the batch (and those since the last checkpoint) was not
    checkpointed and what a restart restores. The loop stops before the batch's sinks and checkpoint."""
    from types import SimpleNamespace

    from anomaly.engine import state
    from anomaly.engine.state import StateMemoryError
    from anomaly.kafka.daemon import Daemon, DaemonOptions
    from anomaly.runner import Batch

    daemon = Daemon(
        build_config({"kafka": {"transactional": False}}), str(bundle_path), options=DaemonOptions()
    )
    daemon.source = SimpleNamespace(polling=False)  # type: ignore[assignment]
    daemon.changelog = SimpleNamespace()  # type: ignore[assignment]
    f = len(daemon.bundle.features)
    batch = Batch([Event(f"k{i}", np.array([1.0]), np.zeros((1, f))) for i in range(100)], messages=100)
    done = _runnable(daemon, lambda: iter([batch]))
    monkeypatch.setattr(state, "np", NoRoomFor(128))
    with pytest.raises(StateMemoryError) as caught:
        daemon.run()
    assert str(caught.value).startswith(
        "the engine's per-key state does not fit in memory: growing it from 64 to 128 keys asked for "
    )
    assert str(caught.value).endswith(
        f"; lower them or give the process more memory; {STOPPED_WITHOUT_CHECKPOINT}"
    )
    assert done == ["consumer", "producer"]  # neither the batch's checkpoint nor a final one


def test_reset_state_discards_a_checkpoint_of_other_settings_and_closes_its_open_alerts(bundle_path, caplog):
    """--reset-state does what a restart with such settings did before (the keys start fresh, bad_state
    counted), and closes the state's open alerts as an incompatible model's are (they stayed open for ever).
    The discard is what the operator asked for: one warning naming the partition, why, its keys and the alerts
    closed (it was an ERROR line, "state of in:0 not restored", that read as a failure of the run)."""
    import logging
    from types import SimpleNamespace

    from anomaly.engine import Alert
    from anomaly.kafka.changelog import Checkpoint, model_fingerprint
    from anomaly.kafka.daemon import Daemon, DaemonOptions
    from anomaly.metrics import PipelineMetrics

    metrics = PipelineMetrics()
    cfg = build_config({"engine": {"threshold": "static"}})
    daemon = Daemon(cfg, str(bundle_path), metrics=metrics, options=DaemonOptions(reset_state=True))
    mine = model_fingerprint(daemon.bundle.features, daemon.bundle.arch.to_json())
    daemon.changelog = SimpleNamespace(owner=SimpleNamespace(model=mine))
    state = _state_of_other_settings(daemon, threshold="dynamic", dynamic_history=64)
    checkpoint = Checkpoint("in:0", 5, state, 1, 1, mine)

    daemon._refuse_other_settings({"in:0": checkpoint})  # no error: discarded at the restore
    with caplog.at_level(logging.INFO, logger="anomaly.kafka.daemon"):
        assert daemon._restore_one("in:0", checkpoint) is None
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            "--reset-state: discarded the state of in:0 (snapshot state does not fit this engine: field hist is "
            "not kept here; field pushed is not kept here; field dyn_doubt is not kept here (the [engine] settings "
            "that shape per-key state differ from the ones it was written with: threshold kind, dynamic_history, "
            "spot_init, spot_peaks, spot_depth, or a level-shift or stuck-sensor policy)): its 1 key(s) start "
            "fresh from the committed offset, 1 open alert(s) closed (reason evicted)",
        )
    ]
    refused = _refusals(metrics)
    assert refused == {"other_group": 0.0, "incompatible_model": 0.0, "bad_state": 1.0}
    version = daemon.bundle.version
    assert daemon._retired == [
        Alert("k@3000", "k", "closed", 3.0, 6.0, 7.0, 9.0, 2.0, version, [], "evicted")
    ]
    assert daemon.engine.keys() == []


def test_a_reload_asked_for_while_the_model_file_is_missing_is_logged_and_counted(
    tmp_path, bundle_path, caplog
):
    """A SIGHUP while the -m file was missing (moved away, a deploy half-way) did nothing and logged nothing: the
    operator who asked for a reload had no sign that none happened. A missing file with no SIGHUP stays quiet (a
    rename's gap), and the model in use keeps scoring either way."""
    import logging

    from prometheus_client import CollectorRegistry

    from anomaly.kafka.daemon import Daemon
    from anomaly.metrics import PipelineMetrics

    live = tmp_path / "live.pt"
    live.write_bytes(bundle_path.read_bytes())
    metrics = PipelineMetrics(CollectorRegistry())
    daemon = Daemon(build_config(), str(live), metrics=metrics)
    version = daemon.bundle.version
    live.unlink()
    with caplog.at_level(logging.ERROR, logger="anomaly.kafka.daemon"):
        daemon._maybe_reload()  # no request: quiet
        assert caplog.records == []
        daemon.request_reload()
        daemon._maybe_reload()
        daemon._maybe_reload()  # said once per request
    assert [r.getMessage() for r in caplog.records] == [
        f"model reload failed, keeping version {version}: cannot read {live}: No such file or directory"
    ]
    assert daemon.bundle.version == version
    assert metrics.registry.get_sample_value("anomaly_model_reload_failures_total") == 1.0


def test_a_hot_reload_that_resets_state_counts_what_it_retires(tmp_path, bundle_path, window_bundle):
    """A reload of a model with another architecture closes every open alert (reason evicted) and reports every
    key's waiting readings, as an eviction does; those closes and windows went to the sinks but not to /metrics:
    anomaly_alerts_closed_total stayed below anomaly_alerts_opened_total for good, and the reported windows were
    in no count or histogram."""
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    from anomaly.bundle import save_bundle
    from anomaly.kafka.changelog import Owner
    from anomaly.kafka.daemon import Daemon
    from anomaly.metrics import PipelineMetrics
    from tests.helpers import make_series

    live = tmp_path / "live.pt"
    live.write_bytes(bundle_path.read_bytes())
    metrics = PipelineMetrics(CollectorRegistry())
    cfg = build_config(
        {
            "engine": {
                "threshold": "static",
                "static_threshold": 50.0,
                "smoothing": 1.0,
                "alert_open_after": 1,
                "alert_close_after": 5,
            }
        }
    )
    daemon = Daemon(cfg, str(live), metrics=metrics)  # not connected: no broker
    bundle = daemon.bundle
    assert window_bundle.features == bundle.features and window_bundle.arch != bundle.arch
    written: list[Any] = []
    daemon.sinks = [SimpleNamespace(write=lambda out, batch: written.append(out))]
    daemon.changelog = SimpleNamespace(owner=Owner("g", "m"))
    daemon.source = SimpleNamespace(decoder=None)
    requests: list[bool] = []  # the closes are committed at the next batch (see the checkpointer's test)
    daemon.checkpointer = SimpleNamespace(request=lambda: requests.append(True))
    s = make_series("unit", 6 * bundle.window + 3, len(bundle.features), seed=5)  # 3 readings unreported
    noise = np.random.default_rng(0).normal(0, 0.05, s.values.shape)
    s.values[:] = bundle.scaler.mean + noise * bundle.scaler.scale
    s.values[-3:] += 60 * bundle.scaler.scale  # an alert opens and stays open
    for i in range(len(s)):
        out = daemon.engine.process([Event(s.key, s.timestamps[i : i + 1], s.values[i : i + 1])])
        metrics.observe(out, None, daemon.engine, 0.0)  # as the runner does after each batch

    def sample(name: str) -> float | None:
        return metrics.registry.get_sample_value(name)

    assert (sample("anomaly_alerts_opened_total"), sample("anomaly_alerts_closed_total")) == (1.0, 0.0)
    assert sample("anomaly_keys_held") == 1.0
    windows_before = sample("anomaly_windows_scored_total")

    save_bundle(window_bundle, live)
    daemon.request_reload()
    daemon._maybe_reload()
    retired = [a for out in written for a in out.alerts if a.status == "closed"]
    reported = sum(len(out.windows) for out in written)
    assert (len(retired), reported) == (1, 1)
    assert requests == [True]
    assert (sample("anomaly_alerts_opened_total"), sample("anomaly_alerts_closed_total")) == (1.0, 1.0)
    assert sample("anomaly_windows_scored_total") == windows_before + reported
    assert (sample("anomaly_keys_held"), sample("anomaly_keys_evicted_total")) == (0.0, 1.0)
    assert sample("anomaly_alerts_active") == 0.0
    assert metrics.registry.get_sample_value("anomaly_model_reloads_total", {"state": "reset"}) == 1.0


def test_a_model_file_that_cannot_be_loaded_is_flagged_until_one_in_its_place_loads(tmp_path, bundle_path):
    """ModelReloadFailed alerted on the failures' increase over 15 minutes, so it resolved 15 minutes after a bad
    file was put in place, the bad file still there (the daemon looks at a file once; a restart would fail on it).
    anomaly_model_file_rejected says it for as long as it lasts: set by a failed load, cleared by one that loads,
    including the same file put back after a SIGHUP found it missing."""
    import os
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    from anomaly.kafka.changelog import Owner
    from anomaly.kafka.daemon import Daemon
    from anomaly.metrics import PipelineMetrics

    live = tmp_path / "live.pt"
    live.write_bytes(bundle_path.read_bytes())
    metrics = PipelineMetrics(CollectorRegistry())
    daemon = Daemon(build_config(), str(live), metrics=metrics)
    daemon.sinks = []
    daemon.changelog = SimpleNamespace(owner=Owner("g", "m"))
    daemon.source = SimpleNamespace(decoder=None)

    def rejected() -> float | None:
        return metrics.registry.get_sample_value("anomaly_model_file_rejected")

    assert rejected() == 0.0
    (tmp_path / "bad.pt").write_bytes(bundle_path.read_bytes()[:1000])  # a truncated copy
    os.replace(tmp_path / "bad.pt", live)
    daemon._maybe_reload()
    assert rejected() == 1.0
    daemon._maybe_reload()  # nothing new: the bad file is still the one in place
    assert rejected() == 1.0
    (tmp_path / "good.pt").write_bytes(bundle_path.read_bytes())
    os.replace(tmp_path / "good.pt", live)
    daemon._maybe_reload()
    assert rejected() == 0.0

    os.replace(live, tmp_path / "away.pt")  # moved away, then SIGHUP
    daemon.request_reload()
    daemon._maybe_reload()
    assert rejected() == 1.0
    os.replace(tmp_path / "away.pt", live)  # the very file in use put back: same mtime, size and inode
    daemon._maybe_reload()
    assert rejected() == 0.0
    assert metrics.registry.get_sample_value("anomaly_model_reload_failures_total") == 2.0
    assert metrics.registry.get_sample_value("anomaly_model_reloads_total", {"state": "kept"}) == 2.0


def test_a_busy_daemon_gives_back_the_rows_of_a_peak_that_did_not_come_again_without_an_idle_poll(
    bundle_path, monkeypatch
):
    """A daemon that never goes idle (a poll always returns records) kept the rows of any peak (a burst of new
    keys, an over-cap restore) until its stream paused. Now, at most every trim_interval_s while busy, the store
    shrinks to the most keys held at once over that interval and the one before: steady churn keeps the rows its
    batches need (no shrink, no heap trim), a peak that does not come again is given back within two intervals,
    with the tracker's tables and a heap trim."""
    from types import SimpleNamespace

    import anomaly.kafka.daemon as daemon_module
    from anomaly.kafka.daemon import Daemon, DaemonOptions

    trims: list[int] = []
    monkeypatch.setattr(daemon_module, "trim_heap", lambda: trims.append(daemon.source.polled) or True)
    options = DaemonOptions(trim_interval_s=0.0)
    daemon = Daemon(build_config({"engine": {"max_keys": 8}}), str(bundle_path), options=options)  # no broker
    daemon.source = SimpleNamespace(last_polled=300, polled=0)  # every poll returns records: busy
    f = len(daemon.bundle.features)
    tp = TopicPartition("in", 0)
    sizes = []
    for c in range(6):  # steady churn: 300 new keys a batch, 8 kept
        keys = [f"c{c}-{i}" for i in range(300)]
        for key in keys:
            daemon.tracker.see(key, tp)
        out = daemon.engine.process([Event(k, np.array([float(c)]), np.zeros((1, f))) for k in keys])
        daemon.tracker.forget(out.evicted)
        daemon.source.polled += 300
        daemon._housekeeping()
        sizes.append(daemon.engine.store.capacity)
    assert (sizes, trims) == ([512] * 6, [])
    known = daemon.engine.keys()
    same = []
    for r in range(3):  # then only the keys held read on: the churn's peak does not come again
        daemon.engine.process([Event(k, np.array([10.0 + r]), np.zeros((1, f))) for k in known])
        daemon.source.polled += 8
        before = daemon.engine.snapshot()
        daemon._housekeeping()
        same.append(daemon.engine.snapshot() == before)
        sizes.append(daemon.engine.store.capacity)
    assert (sizes[6:], trims, same) == ([512, 64, 64], [1816], [True] * 3)  # the second interval after it
    assert daemon.engine.keys() == known and sorted(daemon.tracker.key_partition) == sorted(known)


def test_a_dead_letter_says_which_group_refused_it_and_a_huge_group_name_still_fits():
    """Since session 22 every dead letter carries its consumer group (two pipelines share the default dead-letter
    topic, and retrain reads only its own pipeline's). A group name of any length is cut to 1 KiB on a character
    boundary, as entity_key is, so the letter stays within the room left for its headers; the retrain filter
    compares the cut names, so it still knows the group's own letters and counts the others'."""
    from collections import Counter
    from types import SimpleNamespace

    from anomaly.kafka.history import other_group
    from anomaly.kafka.sinks import DeadLetterSink

    sent: list[Any] = []

    class Producer:
        def send(self, topic: str, key: Any = None, value: Any = None, headers: Any = None) -> Any:
            sent.append(SimpleNamespace(topic=topic, key=key, value=value, headers=headers))
            return SimpleNamespace(add_callback=lambda f: None, add_errback=lambda f: None)

    huge = "é" * 3000  # 6 KB of UTF-8
    rec = Record("in", 0, 9, b"pump-1", b"{not json")
    out = EngineOutput(rejections=[Rejection("pump-1", "malformed", 1, True, rec, "invalid_json: bad")])
    for group in ("canary", huge):
        DeadLetterSink(Producer(), "dead", 900_000, group=group).write(out, None)  # type: ignore[arg-type]
    small, cut = (dict(r.headers) for r in sent)
    assert (small["group"], small["source_offset"], sent[0].value) == (b"canary", b"9", b"{not json")
    assert cut["group"] == ("é" * 512).encode()  # 1024 bytes
    assert sum(len(n) + len(v) for n, v in sent[1].headers) <= 4096
    others: Counter[str] = Counter()
    assert [other_group(r, g, others) for r in sent for g in ("canary", huge)] == [False, True, True, False]
    assert [other_group(r, None, others) for r in sent] == [False, False]  # no group given: all are read
    assert others == Counter({"canary": 1, "é" * 512: 1})
    old = SimpleNamespace(headers=[("reason", b"invalid_json")])  # from a daemon before session 22
    assert not other_group(old, "canary", others)

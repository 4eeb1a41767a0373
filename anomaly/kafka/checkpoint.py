"""Which keys live on which partition, and the daemon's checkpointer: flush sinks -> changelog -> commit.

Order matters and is the whole delivery contract:

1. flush the producers: every alert/score/dead letter of the messages processed so far is acknowledged;
2. write each dirty partition's state (its keys' ``engine.snapshot``) with the last offset it covers and the
   partition's owner epoch to the changelog, and flush again (transactional: outputs and checkpoints are
   committed together, so one flush after the changelog writes acknowledges both, and a refused record still
   raises before the commit; only the dead letters, outside the transaction, are flushed first);
3. commit ``offset + 1`` for those partitions: transactional, the offsets join the producer's transaction
   (outputs and checkpoints of step 1-2) and it is committed; otherwise a plain consumer commit.

A transaction's flush, offsets and commit (step 2's flush, step 3) run in a helper thread
(:meth:`Delivery.commit`), which the loop thread waits for. With ``background`` (``kafka.commit_in_background``,
off by default) the periodic checkpoint (:meth:`KafkaCheckpointer.after_batch`) does not wait: it takes the
snapshots on the loop thread (the engine is its own) and the helper also compresses and sends them (at most
:data:`DEFER_BYTES` of snapshots wait there, the rest is compressed on the loop thread); the loop goes on polling
and scoring, the sinks' records are held until the commit has ended and then go out in the next transaction. The
commit is settled on the loop thread (tracker, metrics, its error raised there) at the next batch after it
ended, and waited for by the next checkpoint, a rebalance, the final checkpoint and any flush. Rebalance and
final checkpoints, and a non-transactional commit (the consumer is not thread-safe), always wait in place.

The periodic checkpoint stands the loop thread still for tens of ms, and kafka-python sends no fetch meanwhile.
With ``idle`` (the source's :meth:`~anomaly.kafka.source.KafkaSource.fetch_ahead`, ``kafka.fetch_in_checkpoint``)
it takes what was fetched for the next batch at its start and again once the state is written, before the
commit, so the next fetch goes out and answers during the checkpoint instead of after it. It changes nothing of
what the checkpoint writes or commits (the state and offsets are those of the batches scored). Not during the
commit itself: fetching beside it (parsing on the loop thread, the broker serving fetches) made the commit 2-5x
slower on a 2-core box.

A crash between any two steps leaves the committed offset at or below the checkpointed one; a restorer seeks
past the checkpointed offset, so state sees every message exactly once and outputs are at-least-once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import kafka.errors as kerr
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from anomaly.engine import Engine
from anomaly.engine.types import EngineOutput
from anomaly.kafka import KafkaError
from anomaly.kafka.changelog import ChangelogStore, partition_id
from anomaly.kafka.clients import RepeatedFailure, error_text
from anomaly.kafka.identity import TopicChangedError
from anomaly.kafka.sinks import Delivery, DeliveryError
from anomaly.runner import Batch

log = logging.getLogger(__name__)
# Raw state a transactional checkpoint hands to the helper thread to compress and send (beyond it the rest is
# compressed on the loop thread as before): the snapshots wait there uncompressed, about 5x their stored size.
DEFER_BYTES = 64 << 20
# A checkpoint postponed again and again (the broker away) is logged when it starts, then at most this often.
POSTPONED_REPEAT_S = 60.0


class FinalCheckpointError(KafkaError):
    """The checkpoint of a clean stop could not be completed (the daemon exits with status 3, as when the
    shutdown timeout passes without it)."""


class PartitionTracker:
    """key -> partition (last seen), partition -> keys, the restored floor offset, the next uncommitted
    position and the owner epoch of each partition. A key that moves partition (producer repartitioned) follows
    its last message; a key the engine evicts is forgotten (:meth:`forget`), so memory follows the engine's
    ``max_keys``, not every key ever seen."""

    def __init__(self) -> None:
        self.key_partition: dict[str, TopicPartition] = {}
        self.partition_keys: dict[TopicPartition, set[str]] = {}
        self.floor: dict[TopicPartition, int] = {}  # last offset already in restored state: skip <= floor
        self.position: dict[TopicPartition, int] = {}  # next offset to read, per processed partition
        self.epoch: dict[TopicPartition, int] = {}  # owner epoch claimed in the changelog at assignment
        self.dirty: set[TopicPartition] = set()  # processed since its last checkpoint
        self.uncommitted: set[TopicPartition] = set()  # checkpointed, commit still owed
        self.owned: set[TopicPartition] = set()  # assigned and restored: records of other partitions dropped

    def see(self, key: str, tp: TopicPartition) -> None:
        """``key`` had a message on ``tp``. A key that moved from another partition (partitions added to the
        input topic, a producer that changed its partitioner) leaves that partition's checkpoint: the partition
        is dirty, so its next checkpoint no longer holds the key's older state, which a restore (after a restart
        or a rebalance) would otherwise bring back over the newer one, depending on the order of the restores."""
        old = self.key_partition.get(key)
        if old != tp:
            if old is not None:
                self.partition_keys.get(old, set()).discard(key)
                if old in self.position:
                    self.dirty.add(old)
            self.key_partition[key] = tp
            self.partition_keys.setdefault(tp, set()).add(key)

    def forget(self, keys: Iterable[str]) -> None:
        """Keys the engine evicted: they leave every table, and their partition is dirty (its state changed even
        when the eviction was caused by another partition's messages): its next checkpoint no longer holds them,
        so a restore does not bring evicted keys back."""
        for key in keys:
            tp = self.key_partition.pop(key, None)
            if tp is not None:
                self.partition_keys.get(tp, set()).discard(key)
                self.dirty.add(tp)

    def compact(self) -> None:
        """Rebuild the key tables at the size of the keys held. A dict or set keeps the table of its peak when
        keys leave (deleting never shrinks it; under key churn the peak is ``max_keys`` plus a batch of new keys),
        and every checkpoint looks each held key up in :attr:`key_partition`. The daemon calls it when the
        engine's store gave a peak back (:meth:`anomaly.engine.Engine.compact`)."""
        held = self.key_partition
        self.key_partition = {}
        self.partition_keys = {tp: set() for tp in self.partition_keys}
        for key, tp in held.items():
            self.see(key, tp)

    def advance(self, position: dict[TopicPartition, int] | None) -> None:
        for tp, nxt in (position or {}).items():
            self.position[tp] = nxt
            self.dirty.add(tp)

    def adopt(self, tp: TopicPartition, keys: Iterable[str], offset: int) -> None:
        """A partition restored from its checkpoint covering source offsets up to ``offset``. It owes a commit of
        ``offset + 1``: the group's committed offset can be behind the restored state (the previous owner died
        between its checkpoint and its commit, or its transaction was aborted on a broker that still shows
        aborted records, Tansu 0.6), and with no new message on the partition nothing else would commit it."""
        for key in keys:
            self.see(key, tp)
        self.owned.add(tp)
        self.floor[tp] = offset
        self.position[tp] = offset + 1
        self.uncommitted.add(tp)

    def release(self, tps: Iterable[TopicPartition]) -> list[str]:
        """Forget revoked partitions; returns their keys (for ``engine.drop``)."""
        gone: list[str] = []
        for tp in tps:
            keys = self.partition_keys.pop(tp, set())
            for key in keys:
                if self.key_partition.get(key) == tp:
                    del self.key_partition[key]
            gone.extend(keys)
            for table in (self.floor, self.position, self.epoch):
                table.pop(tp, None)
            self.dirty.discard(tp)
            self.uncommitted.discard(tp)
            self.owned.discard(tp)
        return gone


class EvictionSink:
    """A runner sink that keeps the tracker in step with the engine: evicted keys are forgotten, and so are keys
    the engine refused every reading of and does not hold (the source tracks each decoded key before the engine
    judges it; such a key is never evicted, so the tracker held it, one more for every such key seen)."""

    def __init__(self, tracker: PartitionTracker, engine: Engine) -> None:
        self.tracker = tracker
        self.engine = engine

    def write(self, out: EngineOutput, batch: Batch) -> None:
        if out.evicted:
            self.tracker.forget(out.evicted)
        if out.rejections:
            engine = self.engine
            self.tracker.forget(k for k in {r.key for r in out.rejections} if k not in engine)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class KafkaCheckpointer:
    """The runner's checkpointer for the daemon (see the module docstring for the order of operations)."""

    def __init__(
        self,
        consumer: KafkaConsumer,
        changelog: ChangelogStore,
        delivery: Delivery,
        tracker: PartitionTracker,
        interval_s: float,
        metrics: Any = None,
        on_health: Callable[[bool], None] | None = None,
        commit_timeout_ms: int = 10_000,
        dead_letters: Any = None,
        background: bool = False,
        idle: Callable[[], None] | None = None,
        verify: Callable[[], None] | None = None,
    ) -> None:
        self.consumer = consumer
        self.changelog = changelog
        self.delivery = delivery
        self.tracker = tracker
        self.interval_s = interval_s
        self.metrics = metrics
        self.on_health = on_health
        self.commit_timeout_ms = commit_timeout_ms
        self.dead_letters = dead_letters  # DeadLetterSink (own producer) flushed with the outputs
        self.background = background  # the periodic checkpoint ends its transaction in a helper thread
        self.idle = idle  # called at the periodic checkpoint's start and before its commit (fetch ahead)
        # called before anything is written or committed: raises TopicChangedError (fatal) when the topics are
        # not those the state belongs to, KafkaError (postponed) when that cannot be told now
        self.verify = verify
        self.last = time.monotonic()
        self.checkpoints = 0
        self.postponed_by: KafkaError | None = None  # why the last checkpoint was postponed
        self.clock: Callable[[], float] = time.monotonic  # monotonic; tests set their own
        # checkpoints postponed in a row (a broker outage): logged when it starts, at most once a
        # POSTPONED_REPEAT_S after, and when a checkpoint completes again
        self._postponements = RepeatedFailure(
            "checkpoint postponed: {error}",
            "checkpoints postponed for {seconds:.0f} s: {error}",
            "checkpoint completed after {seconds:.0f} s of postponed checkpoints",
            log,
            repeat_s=POSTPONED_REPEAT_S,
            clock=lambda: self.clock(),
        )
        # offset commits failed in a row (non-transactional): logged at the first, at most once a minute after,
        # and at the next commit that succeeds
        self._commit_failures = RepeatedFailure.counted(
            "offset commit failed",
            "offset commit succeeded again",
            "; state is checkpointed, commit retried later",
            logger=log,
            clock=lambda: self.clock(),
        )
        self.requested = False  # the next batch checkpoints whatever the interval (see :meth:`request`)

    def request(self) -> None:
        """Checkpoint after the next batch (an idle stream's included) instead of at the interval: outputs
        written outside a batch (the closes of a hot reload that resets state) are in the open transaction, which
        ``read_committed`` readers do not see before its commit (up to ``interval_s`` later)."""
        self.requested = True

    def after_batch(self, engine: Any, batch: Batch, sinks: Sequence[Any]) -> None:
        self.tracker.advance(batch.position)
        self.delivery.settle(wait=False)  # a commit in flight that has ended: its held outputs go out now
        if self.requested or time.monotonic() - self.last >= self.interval_s:
            self.requested = False
            self.checkpoint(engine, background=self.background, idle=self.idle)

    def final(self, engine: Any, sinks: Sequence[Any]) -> None:
        """The checkpoint of a clean stop; it flushes the sinks' records (the delivery's and the dead letters'),
        as every checkpoint does, so a broker that does not acknowledge them makes it postponed, not a flush
        error of its own. FinalCheckpointError when it was postponed (the broker did not
        answer in time) or its offsets not committed: the stop was not clean, and the exit status must say so
        (the restart restores the last committed checkpoint, so nothing is lost)."""
        self.postponed_by = None
        if not self.checkpoint(engine):
            why = self.postponed_by or KafkaError("the broker did not answer")
            raise FinalCheckpointError(
                f"the final checkpoint was not completed ({why}); the restart restores the last committed "
                "checkpoint and reads on from there"
            )

    def checkpoint(
        self,
        engine: Any,
        tps: Iterable[TopicPartition] | None = None,
        *,
        in_callback: bool = False,
        background: bool = False,
        idle: Callable[[], None] | None = None,
    ) -> bool:
        """Checkpoint the dirty partitions among ``tps`` (all if None) and commit them. False when the broker
        did not answer in time (state stays dirty, retried next time); DeliveryError propagates (outputs were
        lost for good: the daemon must stop so a restart reprocesses them). ``in_callback``: inside a rebalance
        callback (kafka-python's IO thread), where only the non-blocking commit_async may be used.
        ``background`` (transactional only): the transaction's flush and commit run in a helper thread and this
        returns True at once; its outcome is settled later (see the module docstring), a postponement there
        marks the partitions dirty again. A commit still in flight from the last checkpoint is settled first.
        ``idle``: called at the start and once the state is written (not inside a rebalance callback; see the
        module docstring)."""
        entered = time.monotonic()
        self.delivery.settle()
        pause = idle if idle is not None and not in_callback else _nothing
        pause()
        t0 = time.monotonic()
        self.last = t0
        t = self.tracker
        chosen = set(t.dirty) if tps is None else set(tps) & t.dirty
        transactional = self.delivery.transactional
        try:
            if self.verify is not None and (chosen or t.uncommitted or self.delivery.in_transaction):
                self.verify()
            # outputs acknowledged before the checkpoint that covers them; in a transaction the commit makes both
            # visible at once, so one flush after the changelog writes (in Delivery.commit) does for both
            if not transactional:
                self.delivery.flush()
            if self.dead_letters is not None:
                self.dead_letters.flush()
            state_s, state_cpu_s, state_bytes = 0.0, 0.0, 0
            # in the background: the snapshots are taken here (the engine is this thread's), compressed and sent
            # by the helper thread that ends the transaction
            defer = transactional and background and not in_callback
            deferred: list[tuple[str, int, bytes, int, int]] = []
            if chosen:
                t1, c1 = time.monotonic(), time.thread_time()
                raw = 0
                for tp, keys in sorted(self._held_by_partition(engine, chosen).items()):
                    pid = partition_id(tp.topic, tp.partition)
                    one = (
                        pid,
                        t.position[tp] - 1,
                        engine.snapshot(keys, domain=pid),  # with the partition's event-time clock
                        len(keys),
                        t.epoch.get(tp, 0),
                    )
                    if defer and raw + len(one[2]) <= DEFER_BYTES:
                        raw += len(one[2])
                        deferred.append(one)
                    else:
                        state_bytes += self.changelog.write(*one)
                state_s, state_cpu_s = time.monotonic() - t1, time.thread_time() - c1
                pause()
                if not transactional:
                    self.delivery.flush()
        except (DeliveryError, TopicChangedError):
            raise
        except KafkaError as exc:
            return self._postponed(exc)
        t.dirty -= chosen
        t.uncommitted |= chosen
        owed = t.uncommitted if tps is None else t.uncommitted & set(tps)
        self.checkpoints += 1
        # an idle stream's timer tick: no state to write, no offset owed, no transaction open
        if not chosen and not owed and not self.delivery.in_transaction:
            # not a sample of the checkpoint time (it would pull its quantiles toward ~0 on a quiet stream)
            if self.metrics is not None:
                self.metrics.checkpoint_idle(time.time())
            return True
        t2 = time.monotonic()
        owner = self.changelog.owner

        def write(send: Callable[..., Any]) -> None:  # in the helper thread
            nonlocal state_s, state_cpu_s, state_bytes
            t1, c1 = time.monotonic(), time.thread_time()
            for one in deferred:
                state_bytes += self.changelog.write(*one, owner=owner, send=send)
            state_s += time.monotonic() - t1
            state_cpu_s += time.thread_time() - c1

        def done(finished: float) -> None:
            self._completed()
            if self.metrics is not None:
                at = time.time() - (time.monotonic() - finished)
                self.metrics.checkpoint_done(
                    finished - t0, at, state_s, state_bytes, finished - t2, state_cpu_s
                )

        ok = self.commit(
            owed,
            wait=not in_callback,
            background=background and not in_callback,
            done=done,
            chosen=chosen,
            write=write if deferred else None,
        )
        if self.metrics is not None:
            self.metrics.checkpoint_loop_done(time.monotonic() - entered)
        return ok

    def _postponed(self, exc: KafkaError) -> bool:
        self._postponements.failed(exc)
        self.postponed_by = exc
        if self.on_health is not None:
            self.on_health(False)
        return False

    def _completed(self) -> None:
        self._postponements.succeeded()

    def _held_by_partition(self, engine: Any, chosen: set[TopicPartition]) -> dict[TopicPartition, list[str]]:
        """The keys the engine holds on each chosen partition, least recently used first: a restore then
        rebuilds the partition's LRU order (eviction keeps evicting the least recently used keys after a
        restart or rebalance, not an arbitrary set), and a compacted store (rows in LRU order) is read in row
        order. One pass over the keys held."""
        out: dict[TopicPartition, list[str]] = {tp: [] for tp in chosen}
        where = self.tracker.key_partition
        for key in engine.keys():
            tp = where.get(key)
            if tp in out:
                out[tp].append(key)  # type: ignore[index]
        return out

    def commit(
        self,
        tps: Iterable[TopicPartition],
        wait: bool = True,
        *,
        background: bool = False,
        done: Callable[[float], None] | None = None,
        chosen: Iterable[TopicPartition] = (),
        write: Callable[[Callable[..., Any]], None] | None = None,
    ) -> bool:
        """Commit the positions of ``tps`` (transactional: with the open transaction). ``done(finished)`` runs
        once it has ended (monotonic time; a failed non-transactional commit ends too). ``background``
        (transactional only): see :meth:`checkpoint`; a postponement then marks ``chosen`` dirty again.
        ``write`` (transactional only): records the helper thread adds first (:meth:`Delivery.commit`)."""
        offsets = {
            tp: OffsetAndMetadata(self.tracker.position[tp], "", -1)
            for tp in tps
            if tp in self.tracker.position
        }
        if self.delivery.transactional:
            if not offsets and not self.delivery.in_transaction and write is None:
                if done is not None:
                    done(time.monotonic())
                return True
            tracker, dirty = self.tracker, set(chosen)

            def committed(finished: float) -> None:
                tracker.uncommitted -= set(offsets)
                if done is not None:
                    done(finished)

            def postponed(exc: KafkaError) -> None:
                tracker.dirty |= dirty
                self._postponed(exc)

            # FencedError (a DeliveryError) propagates, now or when settled: the state in memory is ahead of
            # what was committed.
            return self.delivery.commit(
                offsets,
                self.consumer.group_metadata(),
                committed,
                postponed,
                wait=not background,
                write=write,
            )
        ok = self._consumer_commit(offsets, wait)
        if done is not None:
            done(time.monotonic())
        return ok

    def _consumer_commit(self, offsets: dict[TopicPartition, OffsetAndMetadata], wait: bool) -> bool:
        if not offsets:
            return True
        try:
            if not wait:  # sent before the rebalance's JoinGroup; the changelog covers it if it is lost
                self.consumer.commit_async(offsets)
            else:
                self.consumer.commit(offsets, timeout_ms=self.commit_timeout_ms)
        except (kerr.KafkaError, OSError) as exc:
            # The changelog already covers these offsets; the next owner (or our next try) skips past them.
            self._commit_failures.failed(exc)
            if self.metrics is not None:
                self.metrics.commit_failed()
            self.postponed_by = KafkaError(f"offset commit failed: {error_text(exc)}")
            return False
        if wait:  # commit_async's outcome is not known here
            self._commit_failures.succeeded()
        self.tracker.uncommitted -= set(offsets)
        return True


def _nothing() -> None:
    pass

"""The consumer daemon: wiring, rebalances, health, hot reload and shutdown around :func:`anomaly.runner.run`.

Scoring goes through the same runner loop as `anomaly replay`; this module only provides its source (Kafka
poll), sinks (alerts, scores, dead letters) and checkpointer, plus the lifecycle:

* start-up: broker reachable within ``bootstrap_timeout_s``, input and output topics exist (or are created with
  ``auto_create_topics``), the changelog topic of each input topic for this group created (compacted) at the
  group's first start, refused when it is missing although the group has committed offsets (its state is gone)
  or when its cleanup policy is not compact, the transactional producer initialised — else one
  :class:`KafkaError`;
* assignment: each assigned partition's state is restored from the changelog (only a record of this group and a
  compatible model; otherwise its keys start fresh from the group's committed offset; a checkpoint of this model
  written with other [engine] settings that shape per-key state, or whose snapshot cannot be read, stops the daemon
  before it writes anything, :class:`IncompatibleStateError`, unless ``reset_state`` discards it as another
  model's), the consumer seeks past the checkpointed offset, and a claim record with the next owner epoch is
  written at once, so a fenced zombie's late checkpoints (older epoch) are ignored by every later restore;
  ``/readyz`` turns ready once that is done and the broker answers;
* revocation: the revoked partitions are checkpointed and committed (bounded by the flush/commit timeouts),
  then their keys dropped from memory;
* SIGTERM/SIGINT: the in-flight batch finishes, a final checkpoint + commit, close; a watchdog exits the process
  if that takes longer than ``shutdown_timeout_s``; a second signal exits at once; a final checkpoint that
  cannot be completed (the broker does not answer) is an error (:class:`FinalCheckpointError`, status 3);
* the input, changelog and output topics are those of start-up (their topic ids,
  :mod:`anomaly.kafka.identity`): one gone or created again (a broker restarted without its data, a topic
  deleted) stops the daemon with one line before it writes or commits anything more, and a restore refuses a
  checkpoint of an input topic created again since it was written (its ``input_id``);
* at a restore, the group's committed offset past a partition's checkpoint (offsets reset forward while the
  daemon was stopped) is where it resumes, the keys keeping their state;
* fenced (another member took the partitions while this process stalled): every partition's state dropped,
  a fresh transactional producer, the group left and rejoined, the new assignment restored as above;
* SIGHUP or a new bundle file mtime: ``engine.reload(bundle)``, logged and counted; SIGUSR1: every thread's
  stack to stderr;
* no broker call waits forever: kafka-python's transactional waits (offsets, commit, abort) are bounded by
  ``kafka.max_block_ms``; past it the daemon exits with one error line (status 2) and a restart restores the
  last committed checkpoint;
* when the stream goes idle after work (at most every ``trim_interval_s``): the engine's state store shrinks to
  the keys held (``Engine.compact``: a batch of many new keys grows it to ``max_keys`` plus those keys, a restore
  at a rebalance to the keys held plus the ones restored, evicted to ``max_keys`` by the next batch) and the
  C heap's free memory is given back to the operating system (:func:`trim_heap`) when the store shrank or
  ``trim_min_messages`` were read since the last trim, so RSS follows the live state under key churn (after a
  few messages there is little to give back, and the next checkpoint would fault its buffers back in: ~1,000
  page faults, 1 ms); while the stream is busy, at most every ``trim_interval_s``, the store shrinks to the
  most keys it held at once over the last two such intervals (``Engine.compact(recent_peak=True)``: what a
  peak that did not come again left behind, an over-cap restore or a burst of new keys; steady churn keeps
  the rows its batches need), then the heap is trimmed if it shrank.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import faulthandler
import gc
import logging
import os
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import kafka.errors as kerr
from kafka import ConsumerRebalanceListener

from anomaly import atomic
from anomaly.atomic import write_bytes
from anomaly.bundle import load_bundle
from anomaly.config import PipelineConfig, changelog_topic, redacted
from anomaly.engine import Alert, Engine, EngineOutput, StateError
from anomaly.engine.alerts import alert_id
from anomaly.engine.state import Snapshot, StateMemoryError, StateStore
from anomaly.errors import AnomalyError, ConfigError, OutputError
from anomaly.kafka import KafkaError, clients, records
from anomaly.kafka.changelog import (
    ChangelogStore,
    Owner,
    model_fingerprint,
    partition_id,
    source_topic,
)
from anomaly.kafka.checkpoint import EvictionSink, KafkaCheckpointer, PartitionTracker
from anomaly.kafka.codec import Decoder, MessageFormat
from anomaly.kafka.identity import TopicChangedError, TopicIdentity
from anomaly.kafka.sinks import (
    FENCED,
    AlertSink,
    DeadLetterSink,
    Delivery,
    FencedError,
    ScoreSink,
    TransactionTimeoutError,
)
from anomaly.kafka.source import KafkaSource
from anomaly.runner import Batch, run
from anomaly.thresholds import ALERT_GAP

log = logging.getLogger(__name__)
DUPLICATE_STOP_S = 1.0  # a stop signal this soon after the first one is the same request, delivered twice
_E = TypeVar("_E", bound=BaseException)


def partition_lags(
    consumer: Any, processed: Mapping[Any, int], ahead: Mapping[Any, list[Any]]
) -> dict[tuple[str, int], int]:
    """Messages behind the log end of every assigned partition whose end is known (a fetch response gave its
    highwater): from the next offset the loop processes, which is the tracker's position once a message of the
    partition was processed, else the first record taken ahead, else the consumer's position (a partition
    not read from yet still has its lag, or 0, instead of no series)."""
    lags = {}
    for tp in consumer.assignment():
        high = consumer.highwater(tp)
        if high is None:
            continue
        nxt = processed.get(tp)
        if nxt is None and ahead.get(tp):
            nxt = ahead[tp][0].offset
        if nxt is None:
            try:
                nxt = consumer.position(tp, timeout_ms=0)  # known once it was fetched from: no round trip
            except kerr.KafkaError:  # revoked meanwhile (IllegalStateError), or no position yet: no series
                nxt = None
        if nxt is not None:
            lags[(tp.topic, tp.partition)] = high - nxt
    return lags


@dataclass(frozen=True)
class DaemonOptions:
    bootstrap_timeout_s: float = 10.0
    shutdown_timeout_s: float = 30.0
    poll_timeout_ms: int = 100
    probe_interval_s: float = 1.0  # broker liveness probe for /readyz
    reload_check_s: float = 2.0  # how often the bundle file's mtime is looked at
    flush_timeout_s: float = 10.0
    max_fenced_in_a_row: int = 3  # fences in a row, no commit between, at which it exits (status 2)
    # at most this often: compact (idle: to the keys held; busy: to the recent peak), maybe trim_heap() (1-5 ms)
    trim_interval_s: float = 1.0
    trim_min_messages: int = 10_000  # trim_heap() also when compaction freed no rows after this many messages
    state_out: str | None = None  # write engine.snapshot() here after the final checkpoint (tests, audits)
    # discard checkpoints written with other [engine] settings that shape per-key state, or that cannot be read
    # (corrupted, another state format) (else: refuse to run)
    reset_state: bool = False


class IncompatibleStateError(AnomalyError):
    """Checkpoints of this model written with other [engine] settings that shape per-key state, or whose snapshot
    cannot be read (corrupted, or another state format: a newer version's, after a downgrade), met without
    ``--reset-state``: the daemon stops before it restores or writes anything (status 2), so rolling the settings
    (or the version) back restores that state."""


# What a daemon that stops on an error of the loop (no final checkpoint: the state of the batch that failed is not
# consistent with its output) tells the operator about its state: nothing since the last checkpoint is lost,
# it is read again. The checkpoint's settings are checked at the restore as at any restart.
STOPPED_WITHOUT_CHECKPOINT = (
    "the daemon stopped without a checkpoint: a restart restores the last committed one and reads on from there "
    "(after a change of the [engine] settings that shape per-key state, only with --reset-state, which "
    "discards it)"
)


def message_format(cfg: PipelineConfig, features: list[str]) -> MessageFormat:
    k = cfg.kafka
    return MessageFormat(
        tuple(features),
        k.key_field,
        k.time_field,
        k.values_field,
        k.readings_field,
        k.max_message_bytes,
        k.max_future_seconds,
        max_key_bytes=k.max_request_bytes // 4,
    )


class Daemon:
    def __init__(
        self,
        cfg: PipelineConfig,
        model_path: str,
        *,
        metrics: Any = None,
        server: Any = None,
        options: DaemonOptions | None = None,
    ) -> None:
        self.cfg = cfg
        self.model_path = model_path
        self.metrics = metrics
        self.server = server  # MetricsServer or None
        self.opts = options or DaemonOptions()
        if self.opts.state_out:
            check_writable(self.opts.state_out)
        self.bundle = load_bundle(model_path)
        self.engine = Engine(self.bundle, cfg.engine)
        self.stop = threading.Event()
        self.stop_requested_at = -float("inf")  # time.monotonic() of the first stop signal
        self.tracker = PartitionTracker()
        self._reload_requested = False
        self._retired: list[Alert] = []  # open alerts of refused (incompatible) state, closed at the restore
        self._file = _file_signature(model_path)
        self._next_reload_check = 0.0
        self._assigned_once = False
        self._rebalancing = False
        self._broker_ok = True
        self.restored_keys = 0
        self._deferred: list[tuple[str, list[Any]]] = []
        self._queue_lock = threading.Lock()
        self._fenced_in_a_row = 0
        self._polled_at_idle = 0  # source.polled when the stream last went idle (compacted)
        self._polled_at_trim = 0  # source.polled at the last heap trim
        self._idle_at = -float("inf")
        # when a busy stream's store was last looked at (compacted if too large)
        self._busy_at = -float("inf")
        self._transactions_at_fence = -1
        self._fatal: AnomalyError | None = None  # raised in a rebalance callback: re-raised after the poll
        if metrics is not None:
            metrics.pipeline_started(cfg.kafka.group_id, cfg.kafka.topics)
            metrics.model_loaded(self.bundle)
            metrics.daemon_started(time.time())

    # --- start-up --------------------------------------------------------------------------------------------

    def connect(self) -> None:
        k = self.cfg.kafka
        log.info("starting with settings %s", redacted(self.cfg)["kafka"])
        t = self.opts.bootstrap_timeout_s
        self.admin = clients.make_admin(k, t)
        clients.ensure_topics(self.admin, k)
        self.changelog_topics = {topic: changelog_topic(k, topic) for topic in k.topics}
        for name in dict.fromkeys(self.changelog_topics.values()):
            inputs = [topic for topic, changelog in self.changelog_topics.items() if changelog == name]
            clients.ensure_changelog(self.admin, k, name, inputs)
        # the ids of the topics the state depends on, and of those the outputs go to: one gone or created again
        # while this runs stops it (an output topic deleted was auto-created again by the producer, with the
        # broker's defaults, or its writes were refused: alerts lost to its readers without a word)
        roles = {t: clients.INPUT for t in k.topics}
        roles.update({name: clients.CHANGELOG for name in self.changelog_topics.values()})
        for topic, role in clients.daemon_topics(k).items():
            roles.setdefault(topic, role)
        self.identity = TopicIdentity(roles, k.bootstrap_servers)
        try:
            self.identity.record(self.admin)
        except (kerr.KafkaError, OSError) as exc:
            raise KafkaError(
                f"Kafka error at {k.bootstrap_servers} (describe topics): {type(exc).__name__}"
            ) from None
        # unique per process start: a restarted container keeps its host name and pid, and a reused id would let
        # the next owner of its old partitions fence the new process's live producer
        self._txn_base = f"{clients.transactional_id(k)}-{uuid.uuid4().hex[:6]}"
        self._txn_n = 0
        txn = {"transactional_id": f"{self._txn_base}-0"} if k.transactional else {}
        self.producer = clients.make_producer(k, t, **txn)
        self.dead_producer = clients.make_producer(k, t)
        self.delivery = Delivery(
            self.producer,
            self.opts.flush_timeout_s,
            transactional=k.transactional,
            max_block_s=k.max_block_ms / 1000,
        )
        # the changelog readers never create a missing changelog (as a broker with auto.create.topics.enable
        # would, without compaction): a restore then fails with one line instead of starting keys fresh
        no_create = {"allow_auto_create_topics": False}
        reader = clients.make_consumer(k, t, group=False, **no_create)
        peek = (
            clients.make_consumer(k, t, group=False, committed_only=False, **no_create)
            if k.transactional
            else None
        )
        owner = Owner(
            k.group_id,
            model_fingerprint(self.bundle.features, self.bundle.arch.to_json()),
            txn.get("transactional_id", ""),
        )
        self.changelog = ChangelogStore(
            self.delivery.send,
            reader,
            self.changelog_topics.__getitem__,
            owner,
            chunk_bytes=min(512 * 1024, k.max_request_bytes // 2),
            read_timeout_s=30.0 + (k.transaction_timeout_ms / 1000 if k.transactional else 0.0),
            peek=peek,
            codec=k.changelog_codec,
            where=k.bootstrap_servers,
        )
        self.changelog.input_ids = {  # in every checkpoint: restores refuse one of another incarnation
            topic: self.identity.ids[topic] for topic in k.topics if topic in self.identity.ids
        }
        # no input topic is created by the consumer's metadata requests: after a broker restarted without its
        # data it would be created again, empty, with the broker's default partition count
        self.consumer = clients.make_consumer(k, t, allow_auto_create_topics=False)
        records.install(self.consumer)  # kafka-python's records read in one loop per batch (same records)
        dead = DeadLetterSink(
            self.dead_producer, k.dead_letter_topic, k.dead_letter_max_bytes, self.metrics, group=k.group_id
        )
        self.checkpointer = KafkaCheckpointer(
            self.consumer,
            self.changelog,
            self.delivery,
            self.tracker,
            k.checkpoint_interval_s,
            self.metrics,
            self._set_broker_ok,
            dead_letters=dead,
            background=k.transactional and k.commit_in_background,
            verify=self._verify_topics,
        )
        self.source = KafkaSource(
            self.consumer,
            Decoder(message_format(self.cfg, self.bundle.features)),
            self.tracker,
            self.stop,
            metrics=self.metrics,
            poll_timeout_ms=self.opts.poll_timeout_ms,
            before_poll=self._housekeeping,
            after_poll=self._apply_deferred,
            buffered=records.buffered(self.consumer),
            max_batch_bytes=k.max_batch_bytes,
            max_batch_s=k.max_batch_ms / 1000,
            max_poll_records=k.max_poll_records,
        )
        if k.fetch_in_checkpoint:  # the periodic checkpoint keeps the consumer fetching (see checkpoint.py)
            self.checkpointer.idle = self.source.fetch_ahead
        self.sinks: list[Any] = [AlertSink(self.delivery, k.alerts_topic, k.group_id)]
        if k.scores_topic:
            self.sinks.append(ScoreSink(self.delivery, k.scores_topic, self.bundle.features, k.group_id))
        self.sinks += [dead, EvictionSink(self.tracker, self.engine)]
        self.consumer.subscribe(list(k.topics), listener=_Rebalance(self))
        threading.Thread(target=self._probe, name="broker-probe", daemon=True).start()

    # --- the loop --------------------------------------------------------------------------------------------

    def run(self) -> dict[str, int]:
        """Consume until stopped; returns the runner's totals. Raises KafkaError/AnomalyError on fatal errors."""
        if not hasattr(self, "consumer"):
            self.connect()
        # Everything loaded so far (torch, the model, clients) lives as long as the process: out of the garbage
        # collector's sight, a full collection no longer walks it (it took 0.2-0.4 s, the latency p99).
        gc.freeze()
        totals: dict[str, int] = {}  # the runner adds to it: what a fenced run counted is kept
        stuck = False  # a transaction the broker never completed: close without waiting for it
        try:
            while True:
                try:
                    run(
                        self.engine,
                        self.source.batches(),
                        self.sinks,
                        observer=self.metrics,
                        checkpointer=self.checkpointer,
                        totals=totals,
                    )
                except (FencedError, kerr.KafkaError) as exc:
                    if not _fenced(exc):
                        cause = _cause(exc, AnomalyError)
                        if cause is not None and cause is not exc:  # raised in a rebalance callback
                            raise cause from None
                        raise
                    self._rejoin_after_fence(exc)
                    if self.stop.is_set():
                        break
                    continue
                break
            if self.opts.state_out:  # after the final checkpoint: the state is safe in the changelog anyway
                try:
                    write_bytes(self.opts.state_out, self.engine.snapshot(), "state snapshot")
                except OutputError as exc:
                    raise AnomalyError(f"{exc} (the final checkpoint was committed)") from None
            totals["skipped"] = self.source.skipped
            totals["restored_keys"] = self.restored_keys
            return totals
        except TransactionTimeoutError:
            stuck = True
            raise
        except StateMemoryError as exc:  # a batch's new keys, or a restore's: raised before its checkpoint
            raise StateMemoryError(
                f"{exc}; {STOPPED_WITHOUT_CHECKPOINT}", rows=exc.rows, nbytes=exc.nbytes
            ) from None
        finally:
            self._refresh_ready()
            self._close_clients(stuck)

    def _close_clients(self, stuck: bool = False) -> None:
        """Close every client, each bounded (a few seconds; the broker may be away); a client that fails to close
        is logged, so the error that ended the loop (if any) stays the one reported. ``stuck``: the producer's
        transaction never completed; it is closed at once and the group left within 2 s."""
        closes = [
            lambda: self.consumer.close(autocommit=False, timeout_ms=2000 if stuck else 5000),
            lambda: self.producer.close(timeout=0 if stuck else 5),
            lambda: self.dead_producer.close(timeout=5),
            lambda: self.changelog.reader.close(autocommit=False, timeout_ms=5000),
        ]
        if self.changelog.peek is not None:
            peek = self.changelog.peek
            closes.append(lambda: peek.close(autocommit=False, timeout_ms=5000))
        closes.append(self.admin.close)
        for close in closes:
            try:
                close()
            except (kerr.KafkaError, OSError) as exc:
                log.warning("closing a Kafka client failed: %s", type(exc).__name__)

    def request_stop(self) -> None:
        """The first stop signal: finish the batch, checkpoint, commit, close. A second one exits at once, unless it
        comes within ``DUPLICATE_STOP_S`` of the first: then it is the same request delivered twice (GNU `timeout`
        signals the process and then its process group, so the daemon gets each of its signals twice)."""
        now = time.monotonic()
        if self.stop.is_set():
            if now - self.stop_requested_at < DUPLICATE_STOP_S:
                log.info(
                    "stop signal again within %.1fs of the first: the same request, still stopping",
                    DUPLICATE_STOP_S,
                )
                return
            log.warning("second stop signal: exiting now")
            os._exit(130)
        self.stop_requested_at = now
        log.info("stopping: finishing the current batch, checkpointing, committing")
        self.stop.set()
        timer = threading.Timer(self.opts.shutdown_timeout_s, self._overdue)
        timer.daemon = True
        timer.start()

    def _overdue(self) -> None:
        log.error(
            "shutdown took longer than %.0fs; exiting without a final checkpoint",
            self.opts.shutdown_timeout_s,
        )
        os._exit(3)

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())
        # Where is it waiting? Every thread's stack to stderr, without stopping anything (a daemon that
        # consumes and commits nothing is then a stack trace away from a diagnosis, in CI too).
        signal.signal(signal.SIGUSR1, lambda *_: dump_stacks())
        faulthandler.enable(all_threads=True)  # a crash (SIGSEGV, SIGABRT, ...) leaves its stacks in the log

    def request_reload(self) -> None:
        self._reload_requested = True

    def _rejoin_after_fence(self, exc: BaseException) -> None:
        """Fenced (another member owns our partitions now; this process was paused or stalled past the session
        timeout): like a Kafka Streams task that migrated, every partition's state is dropped without a
        checkpoint (what it held past its last committed checkpoint was aborted with the fenced transaction), the
        producer replaced by one with a fresh transactional id, and the consumer rejoins the group; whatever it
        gets is restored from the changelog like any assignment. ``max_fenced_in_a_row`` fences without one
        committed transaction in between mean the broker refuses this member's transactions for good: the
        error is raised (exit status 2)."""
        if self.delivery.transactions == self._transactions_at_fence:
            self._fenced_in_a_row += 1
        else:
            self._fenced_in_a_row = 1
        if self._fenced_in_a_row >= self.opts.max_fenced_in_a_row:
            raise FencedError(
                f"{FENCED}; fenced {self._fenced_in_a_row} times in a row without a commit: exiting"
            ) from exc
        self._rebalancing = True
        self._refresh_ready()
        with self._queue_lock:
            self._deferred.clear()  # events of the old membership; the rejoin brings fresh ones
        tps = set(self.tracker.owned) | set(self.tracker.position) | set(self.tracker.partition_keys)
        self.tracker.release(tps)
        self.source.drop_ahead(list(self.source.ahead))  # the consumer forgets its positions too
        dropped = self.engine.drop(self.engine.keys())
        self._rotate(force=True)
        self._transactions_at_fence = self.delivery.transactions
        self.consumer.unsubscribe()  # leaves the group (if still a member) and forgets fetch positions
        log.warning(
            "%s; dropped the state of %d partition(s) (%d key(s)) without a checkpoint; rejoining the group",
            _fenced(exc) or FENCED,
            len(tps),
            dropped,
        )
        if self.metrics is not None:
            self.metrics.fenced_rejoined()
        if not self.stop.is_set():
            self.consumer.subscribe(list(self.cfg.kafka.topics), listener=_Rebalance(self))

    # --- housekeeping between polls --------------------------------------------------------------------------

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if (
            self.source.last_polled == 0
            and self.source.polled != self._polled_at_idle
            and now - self._idle_at >= self.opts.trim_interval_s
        ):  # the stream went idle after work: give the heap freed since (evicted keys, fetch buffers) back
            self._polled_at_idle, self._idle_at = self.source.polled, now
            # the state rows a peak of new keys left behind (max_keys + a batch), then the heap they freed
            rows_freed = self.engine.compact()
            if rows_freed:
                self.tracker.compact()  # its key tables held the same peak
            if rows_freed or self.source.polled - self._polled_at_trim >= self.opts.trim_min_messages:
                self._polled_at_trim = self.source.polled
                trim_heap()
        elif self.source.last_polled and now - self._busy_at >= self.opts.trim_interval_s:
            # busy: the rows a peak that has not come again for a while left behind (an over-cap restore, a
            # burst of new keys), given back without waiting for an idle poll; steady churn keeps its batches'
            self._busy_at = now
            if self.engine.compact(recent_peak=True):
                self.tracker.compact()
                self._polled_at_trim = self.source.polled
                trim_heap()
        if self._reload_requested or now >= self._next_reload_check:
            self._next_reload_check = now + self.opts.reload_check_s
            self._maybe_reload()
        if self.metrics is not None:
            self.metrics.set_partition_lag(
                partition_lags(self.consumer, self.tracker.position, self.source.ahead)
            )

    def _maybe_reload(self) -> None:
        try:
            file = _file_signature(self.model_path)
        except OSError as exc:
            # a SIGHUP asked for a reload: say why nothing was loaded (without one, a missing file is a rename's gap)
            if self._reload_requested:
                self._reload_requested = False
                log.error(
                    "model reload failed, keeping version %s: cannot read %s: %s",
                    self.bundle.version,
                    self.model_path,
                    exc.strerror or exc,
                )
                if self.metrics is not None:
                    self.metrics.model_reload_failed()
                self._file = (0, 0, 0)  # whatever file comes back is loaded (and clears the failure)
            return
        if not self._reload_requested and file == self._file:
            return
        self._reload_requested = False
        self._file = file
        try:
            bundle = load_bundle(self.model_path)
        except AnomalyError as exc:
            log.error("model reload failed, keeping version %s: %s", self.bundle.version, exc)
            # counted, so /metrics says that the file in place is not the model in use
            if self.metrics is not None:
                self.metrics.model_reload_failed()
            return
        retired = EngineOutput()
        kept = self.engine.reload(bundle, retired)  # a reset retires every key first, as an eviction does
        if not kept:
            self._write_retired(retired)
            self.checkpointer.request()  # committed at the next batch, not up to checkpoint_interval_s later
        self.bundle = bundle
        self.changelog.owner = dataclasses.replace(  # keeps the transactional id: records must name it
            self.changelog.owner, model=model_fingerprint(bundle.features, bundle.arch.to_json())
        )
        self.source.decoder = Decoder(message_format(self.cfg, bundle.features))
        for sink in self.sinks:
            if isinstance(sink, ScoreSink):
                sink.features = list(bundle.features)
        log.warning(
            "model reloaded: version %s, per-key state %s", bundle.version, "kept" if kept else "reset"
        )
        if self.metrics is not None:
            self.metrics.model_loaded(bundle)
            self.metrics.model_reloaded(kept)

    def _write_retired(self, out: EngineOutput) -> None:
        """The keys a reload that reset per-key state retired (:meth:`Engine.reload`: readings scored but not yet
        reported as a short window, open alerts closed with reason ``evicted`` under the model that opened them)
        go to the sinks, so no alert is left open forever on the alerts topic (where `retrain` would leave the
        key's readings out from its start on) and no decided reading goes unreported."""
        self._emit(out)
        closed = sum(1 for a in out.alerts if a.status == "closed")
        if out.evicted:
            log.warning(
                "model reload resets per-key state: %d key(s) retired, %d open alert(s) closed (reason evicted)",
                len(out.evicted),
                closed,
            )

    def _emit(self, out: EngineOutput) -> None:
        """Output made outside the loop (the keys a resetting reload retired, the open alerts of state a restore
        refused) to the sinks and /metrics, as the loop's own: its closes count in anomaly_alerts_closed_total
        and its windows in the window counts; no batch of messages goes with it."""
        batch = Batch(events=[])
        for sink in self.sinks:
            sink.write(out, batch)
        if self.metrics is not None:
            self.metrics.observe(out, batch, self.engine, time.time())

    # --- rebalances ------------------------------------------------------------------------------------------

    def on_rebalance(self, kind: str, tps: list[Any]) -> None:
        """Listener entry point. kafka-python 3 calls listeners on its IO thread: acted on at once only while the
        loop thread is blocked in poll() (engine consistent); otherwise queued for the loop thread."""
        if self.source.polling:
            if self._fatal is not None:
                return  # the loop stops after this poll
            try:
                self._apply(kind, list(tps), in_callback=True)
            except FencedError:
                raise  # the loop rejoins the group (see run)
            except AnomalyError as exc:  # raised after the poll: one error line, not kafka-python's traceback
                self._fatal = exc
        else:
            with self._queue_lock:
                self._deferred.append((kind, list(tps)))

    def _apply_deferred(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        while self._deferred:
            with self._queue_lock:
                kind, tps = self._deferred.pop(0)
            self._apply(kind, tps, in_callback=False)

    def _apply(self, kind: str, tps: list[Any], in_callback: bool) -> None:
        # the periodic checkpoint's commit, if still in flight, ends first: the assignment (claims, a new
        # producer) and the revocation's checkpoint go on from its outcome (or stop on its error)
        self.delivery.settle()
        if kind == "assigned":
            self._restore(tps, seek=in_callback)
            return
        self._rebalancing = True
        self._refresh_ready()
        if kind == "revoked" and tps:  # lost partitions are not checkpointed: another member may own them
            log.info("revoking %d partition(s): checkpointing them", len(tps))
            self.checkpointer.checkpoint(self.engine, tps, in_callback=in_callback)
        keys = self.tracker.release(tps)
        self.engine.drop(keys)
        if tps:
            log.info(
                "%s %d partition(s); dropped %d key(s)%s",
                kind,
                len(tps),
                len(keys),
                " after checkpointing them" if kind == "revoked" else "",
            )

    def _restore(self, assigned: list[Any], seek: bool) -> None:
        """Restore each partition's state and skip what it covers (seek when inside poll, else the source's
        floor filter drops the already-fetched records at or below the checkpointed offset), then claim the
        next owner epoch of every assigned partition in the changelog."""
        by_pid = {partition_id(tp.topic, tp.partition): tp for tp in assigned}
        if by_pid:  # nothing restored from (or claimed in) a changelog that is not the one checkpointed to
            self._check_topics_before_restore()
        transactional = self.cfg.kafka.transactional and bool(by_pid)
        fenced: set[str] = set()
        if transactional:  # writers with open transactions first: until fenced they hide later records
            writers = self.changelog.open_writers(by_pid)
            self._rotate()
            self._fence(writers, fenced)
        checkpoints = self.changelog.read(by_pid)
        self._refuse_other_input(checkpoints)
        snapshots = self._refuse_other_settings(checkpoints)  # read once: restored from what was checked
        for pid, group in sorted(self.changelog.foreign.items()):
            log.warning(
                "changelog record of %s written by group %s ignored (not this group's state)", pid, group
            )
            self._count_refusal("other_group")
        if transactional:
            self._fence({cp.txn for cp in checkpoints.values() if cp.txn}, fenced)
        # read once every previous writer is fenced: no commit of theirs can land after it
        committed = self._committed() if any(cp.offset is not None for cp in checkpoints.values()) else {}
        restored = 0
        for pid, tp in by_pid.items():
            self.tracker.owned.add(tp)
            cp = checkpoints.get(pid)
            epoch = cp.epoch + 1 if cp is not None else 1
            self.tracker.epoch[tp] = epoch
            offset = cp.offset if cp is not None else None
            self.engine.reset_clock(pid)  # the partition's event time is its checkpoint's (or none yet)
            keys = self._restore_one(pid, cp, snapshots.pop(pid, None)) if offset is not None else None
            if cp is not None and offset is not None and keys is not None:
                offset = self._resume_after(pid, offset, committed.get((tp.topic, tp.partition)))
                self.tracker.adopt(tp, keys, offset)
                if seek:
                    self.consumer.seek(tp, offset + 1)
                    self.source.drop_ahead([tp])  # fetched ahead of the old position: read again from here
                self.restored_keys += len(keys)
                restored += 1
                self.changelog.write(pid, offset, cp.snapshot, cp.keys, epoch, stored=cp)
            else:  # no state: resume from the group's committed offset; the claim still fences older owners
                self.changelog.write(pid, None, b"", 0, epoch)
        if self._retired:  # in the claims' transaction: the refused state and its open alerts end together
            out, self._retired = EngineOutput(alerts=self._retired), []
            self._emit(out)
        if by_pid:  # claims and the restored positions committed now: an open transaction on the changelog
            self.delivery.flush()  # holds back every other member's restore (read_committed stops at it)
            self.checkpointer.commit(by_pid.values(), wait=not seek)
        log.info("assigned %d partition(s); restored %d from the changelog", len(assigned), restored)
        self._rebalancing = False
        self._assigned_once = True
        self._refresh_ready()

    def _committed(self) -> dict[tuple[str, int], int]:
        """The group's committed offsets, read at a restore (KafkaError when the broker does not answer within
        ``bootstrap_timeout_s``: one line, the restart restores again)."""
        return clients.committed_offsets(self.admin, self.cfg.kafka, self.opts.bootstrap_timeout_s)

    def _resume_after(self, pid: str, offset: int, committed: int | None) -> int:
        """The last source offset a restored partition counts as done: its checkpoint's ``offset``, or, when the
        group's committed offset is past ``offset + 1``, the offset before it. The daemon commits the offset
        after its checkpoint's (in the checkpoint's transaction, or after the checkpoint is written), and every
        earlier writer is fenced by now, so a committed offset further on was set from outside: offsets reset
        forward while the daemon was stopped (``kafka-consumer-groups --reset-offsets --to-latest`` to skip a
        backlog), followed as asked, the keys keeping their state. A committed offset behind the checkpoint is
        a commit lost in a crash (or an aborted transaction's checkpoint that Tansu 0.6 shows), or a reset back,
        which cannot be told apart and cannot be followed (the state holds those readings already): the restore
        resumes past the checkpoint, as always."""
        if committed is None or committed == offset + 1:
            return offset
        if committed > offset + 1:
            log.warning(
                "%s: the group's committed offset %d is past its checkpoint (offset %d): offsets reset forward "
                "while the daemon was stopped; skipping the %d message(s) in between as asked, the keys keep "
                "their state",
                pid,
                committed,
                offset,
                committed - offset - 1,
            )
            return committed - 1
        log.info(
            "%s: the group's committed offset %d is behind its checkpoint (offset %d): resuming at %d, the restored "
            "state holds the messages in between (a commit lost in a crash, or offsets reset back by hand, which "
            "a restore does not follow)",
            pid,
            committed,
            offset,
            offset + 1,
        )
        return offset

    def _check_topics_before_restore(self) -> None:
        """The topics checked before a restore reads or claims anything; a broker that does not answer is asked
        again for ``bootstrap_timeout_s`` (a broker restarted without its data may answer the changelog reads a
        moment later, with topics created again), then KafkaError."""
        deadline = time.monotonic() + self.opts.bootstrap_timeout_s
        while True:
            try:
                self.identity.check(self.admin)
                return
            except (kerr.KafkaError, OSError) as exc:
                if time.monotonic() >= deadline:
                    raise KafkaError(
                        f"cannot check the input and changelog topics before restoring partitions "
                        f"({type(exc).__name__}): the broker at {self.cfg.kafka.bootstrap_servers} did not answer"
                    ) from None
                time.sleep(0.2)

    def _refuse_other_input(self, checkpoints: Mapping[str, Any]) -> None:
        """KafkaError for a checkpoint with state written for another topic id of its input topic (deleted and
        created again since the checkpoint): restoring it would skip the new topic's messages up to the old
        offset, silently. Checked before any claim is written, so the changelog stays as it was."""
        for pid, cp in sorted(checkpoints.items()):
            topic = source_topic(pid)
            now = self.identity.ids.get(topic)
            if cp.offset is None or not cp.input_id or not now or cp.input_id == now:
                continue
            changelog = self.changelog_topics[topic]
            raise KafkaError(
                f"{clients.CHANGELOG.describe(changelog)} holds the state of {pid} checkpointed at offset "
                f"{cp.offset} of an earlier input topic '{topic}' (topic id {cp.input_id}, now {now}): the topic "
                f"was deleted and created again, its offsets started again at 0, and restoring would skip its "
                f"first {cp.offset + 1} messages as already scored. To start its keys fresh, delete the changelog "
                f"topic (kafka-topics --delete --topic {changelog}) and restart"
            )

    def _refuse_other_settings(self, checkpoints: Mapping[str, Any]) -> dict[str, Snapshot]:
        """IncompatibleStateError, unless ``reset_state``, for checkpoints of this model written with other
        [engine] settings that shape per-key state (threshold kind, its sizes, a policy): restoring them is
        impossible, and starting their keys fresh would lose every key's calibration and open alerts for good
        (this start's claims and checkpoints would replace them). As Kafka Streams refuses incompatible state
        until an application reset, the daemon stops instead, before any claim is written: the changelog and the
        committed offsets stay as they were, and a start with the settings rolled back restores them. Met at a
        later assignment (a member with other settings checkpointed the partition: a rolling deploy), the same
        error stops this member; its own partitions were checkpointed at their revocation. Another model's state
        is not this: a model change resets state by design (refused as ``incompatible_model`` at the restore).
        A checkpoint of this model whose snapshot cannot be read at all (corrupted bytes, or a state format this
        version does not read: a newer version's, after a downgrade) stops the start the same way; it was
        discarded silently as ``bad_state``, for good. A truly corrupted one would stop every start: the message
        names --reset-state, which discards it, as the way on. Returns the snapshots it read (per partition id,
        those of this model that can be read), which the restore restores: each is read once."""
        snapshots: dict[str, Snapshot] = {}
        misfits: dict[str, str] = {}
        unreadable: dict[str, str] = {}
        for pid, cp in sorted(checkpoints.items()):
            if cp.offset is None or (cp.model and cp.model != self.changelog.owner.model):
                continue
            if cp.problem:
                unreadable[pid] = cp.problem
                continue
            try:
                snapshots[pid] = self.engine.read(cp.snapshot)
            except StateError as exc:
                unreadable[pid] = str(exc).removeprefix("engine snapshot ")
                continue
            difference = self.engine.settings_difference(snapshots[pid])
            if difference is not None:
                misfits[pid] = difference
        if self.opts.reset_state:  # each is discarded at its restore
            return snapshots
        if misfits:
            pids = list(misfits)
            raise IncompatibleStateError(
                f"cannot restore the state of {len(pids)} partition(s) ({_shown(pids)}): {misfits[pids[0]]}. "
                "Nothing was restored or written: roll those settings back (or run the anomaly version that wrote "
                "it) to continue with that state, or start once with --reset-state to discard it (those keys start "
                "fresh from the committed offsets, their open alerts closed with reason evicted)"
            )
        if unreadable:  # a corrupted record stops every start until --reset-state discards it
            pids = list(unreadable)
            # another version can read state of its own format; no version reads damaged or hand-written bytes
            versioned = any("was written in" in why for why in unreadable.values())
            way_on = (
                "run the anomaly version that wrote it to continue with that state, or start once with "
                "--reset-state to discard it"
                if versioned
                else "no anomaly version can restore it (damaged, or not written by anomaly): start once with "
                "--reset-state to discard it"
            )
            raise IncompatibleStateError(
                f"cannot restore the state of {len(pids)} partition(s) ({_shown(pids)}): the checkpoint of "
                f"{pids[0]} {unreadable[pids[0]]}. Nothing was restored or written: {way_on} (those keys start "
                "fresh from the committed offsets); until then every start stops here"
            )
        return snapshots

    def _rotate(self, force: bool = False) -> None:
        """A fresh transactional id for this assignment, so a member that takes partitions from us later fences
        only our old producer (not the one now writing the partitions we keep or get). ``force``: the producer
        was fenced, its id is dead."""
        if not (force or self.delivery.transactions or self.delivery.in_transaction):
            return  # the id of this producer is in no record yet
        self._txn_n += 1
        txn_id = f"{self._txn_base}-{self._txn_n}"
        k = self.cfg.kafka
        self.delivery.replace(
            clients.make_producer(k, self.opts.bootstrap_timeout_s, transactional_id=txn_id)
        )
        self.producer = self.delivery.producer
        self.changelog.owner = dataclasses.replace(self.changelog.owner, txn=txn_id)

    def _fence(self, previous: set[str], done: set[str]) -> None:
        """Fence the previous owners' transactional ids (``done``: already fenced in this assignment): their
        open transactions are aborted and a zombie's late writes are refused by the broker. Not remembered across
        assignments: a repeated fence costs one round trip, a memo would grow with every id ever seen."""
        for txn_id in sorted(previous - {self.changelog.owner.txn} - done):
            clients.fence(self.cfg.kafka, txn_id, self.opts.bootstrap_timeout_s)
            done.add(txn_id)
            log.info("fenced transactional id %s of the partitions' previous owner", txn_id)

    def _restore_one(self, pid: str, cp: Any, snapshot: Snapshot | None = None) -> list[str] | None:
        """The checkpoint's keys restored into the engine (from ``snapshot``, its state as
        :meth:`_refuse_other_settings` read it, when given), or None when it is refused (another model)."""
        if cp.model and cp.model != self.changelog.owner.model:
            closes = retired_alerts(cp.snapshot)
            self._retired.extend(closes)
            log.error(
                "state of %s not restored: written by an incompatible model (features or architecture differ); "
                "its keys start fresh from the committed offset (%d open alert(s) closed, reason evicted)",
                pid,
                len(closes),
            )
            self._count_refusal("incompatible_model")
            return None
        if cp.problem:  # the record's state cannot be read (only with --reset-state)
            self._discarded(pid, f"its checkpoint {cp.problem}", None, None)
            return None
        state = cp.snapshot if snapshot is None else snapshot
        try:
            return self.engine.restore(state, domain=pid)
        except StateError as exc:  # other [engine] settings, an unreadable snapshot: only with --reset-state
            closes = retired_alerts(state)
            self._retired.extend(closes)
            keys = _snapshot_keys(state)  # None: unreadable, so no alert could be closed either
            self._discarded(pid, str(exc), keys, None if keys is None else len(closes))
            return None

    def _discarded(self, pid: str, why: str, keys: int | None, closed: int | None) -> None:
        """A checkpoint of this model not restored (``why``), its keys started fresh: what ``--reset-state``
        asked for, so a warning that names what it discarded (the partition, why, how many keys and open alerts)
        as the daemon's other deliberate resets are (a model reload that resets state, offsets reset forward).
        It was an ERROR line that read as a failure of the run. Without the option the start stops before this
        (:meth:`_refuse_other_settings`); were a restore to fail here anyway, it stays an error."""
        what = "its keys" if keys is None else f"its {keys} key(s)"
        alerts = "" if closed is None else f", {closed} open alert(s) closed (reason evicted)"
        if self.opts.reset_state:
            log.warning(
                "--reset-state: discarded the state of %s (%s): %s start fresh from the committed offset%s",
                pid,
                why,
                what,
                alerts,
            )
        else:
            log.error(
                "state of %s not restored (%s): %s start fresh from the committed offset%s",
                pid,
                why,
                what,
                alerts,
            )
        self._count_refusal("bad_state")

    def _count_refusal(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.restore_refusal(reason)

    def _verify_topics(self) -> None:
        """Before a checkpoint writes: TopicChangedError (fatal) when an input or changelog topic is gone or
        was created again; KafkaError (the checkpoint is postponed) when the broker does not answer."""
        try:
            self.identity.check(self.admin)
        except (kerr.KafkaError, OSError) as exc:
            raise KafkaError(
                f"cannot check the input, changelog and output topics at {self.cfg.kafka.bootstrap_servers} "
                f"({clients.error_text(exc)})"
            ) from None

    # --- health ----------------------------------------------------------------------------------------------

    def _probe(self) -> None:
        probe = None
        outage = clients.broker_outage(self.cfg.kafka.bootstrap_servers, log)  # its start, repeats, end
        while not self.stop.is_set():
            operation = "connecting the readiness probe"
            try:
                if probe is None:
                    probe = clients.make_admin(self.cfg.kafka, self.opts.probe_interval_s * 3, 2000)
                operation = "metadata request of the readiness probe"
                self.identity.check(probe)  # a metadata request: the broker answers, the topics are the same
                outage.succeeded()
                self._set_broker_ok(True)
            except TopicChangedError as exc:  # raised by the loop thread after its next poll (its one line)
                if self._fatal is None:
                    self._fatal = exc
                self._set_broker_ok(False)
                break
            except Exception as exc:  # noqa: BLE001 - any failure means "not reachable now"
                outage.failed(exc, operation=operation)
                self._set_broker_ok(False)
                if probe is not None:
                    probe.close()
                    probe = None
            self.stop.wait(self.opts.probe_interval_s)
        if probe is not None:
            probe.close()

    def _set_broker_ok(self, ok: bool) -> None:
        self._broker_ok = ok
        self._refresh_ready()

    def _refresh_ready(self) -> None:
        ready = self._broker_ok and self._assigned_once and not self._rebalancing and not self.stop.is_set()
        if self.server is not None:
            self.server.set_ready(ready)

    @property
    def ready(self) -> bool:
        return self._broker_ok and self._assigned_once and not self._rebalancing


def check_writable(path: str) -> None:
    """Refuse at start-up a ``--state-out`` path that could not be written at shutdown (a directory, a file where
    a folder should be, a folder that takes no new file): found out only after hours of running, the snapshot
    would be lost. The same probe as every other output's (:func:`anomaly.atomic.check_writable`); a missing
    folder is created when the snapshot is written, as for the other outputs."""
    try:
        atomic.check_writable(path, "state snapshot")
    except OutputError as exc:
        raise ConfigError(f"--state-out: {exc}", key="state_out") from None


def _libc_malloc_trim() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def dump_stacks() -> None:
    """Every thread's stack to stderr, most recent call first (faulthandler's format), taken under the GIL.

    Not ``faulthandler.register(SIGUSR1, all_threads=True)``: its C handler walks the interpreter's thread list
    without a lock, and a thread starting or ending meanwhile (a transaction helper, a metrics request) can
    crash the process it was asked to describe. A Python handler runs between bytecodes of the main thread;
    the waits a stuck daemon sits in (socket selects, lock waits) return to run it."""
    names = {t.ident: t.name for t in threading.enumerate()}
    lines = []
    for ident, frame in sys._current_frames().items():
        lines.append(f"Thread 0x{ident:016x} ({names.get(ident, 'unnamed')}) (most recent call first):")
        lines += [
            f'  File "{f.f_code.co_filename}", line {lineno} in {f.f_code.co_name}'
            for f, lineno in traceback.walk_stack(frame)
        ]
        lines.append("")
    text = ("\n".join(lines)).encode(errors="replace")
    try:  # straight to the file descriptor: the handler may run inside a write to sys.stderr (a reentrant call)
        while text:
            text = text[os.write(2, text) :]
    except OSError:
        pass


def trim_heap() -> bool:
    """Return the C heap's free memory to the operating system (glibc ``malloc_trim(0)``, every arena; a few
    ms). Under key churn the allocator otherwise keeps what evicted keys, snapshots and fetch buffers freed, in
    amounts that depend on how allocations happened to interleave, so RSS wanders by tens of MB with the same
    live state. False where there is no glibc."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


def _fenced(exc: BaseException) -> FencedError | None:
    """The FencedError behind ``exc``: raised directly by the loop, or by a rebalance callback (kafka-python
    re-raises a listener's exception from ``poll`` as a KafkaError caused by it)."""
    return _cause(exc, FencedError)


def _cause(exc: BaseException, kind: type[_E]) -> _E | None:
    """The first exception of type ``kind`` in ``exc``'s chain of causes (``exc`` itself included)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__
    return None


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def on_partitions_revoked(self, revoked: list[Any]) -> None:
        self.daemon.on_rebalance("revoked", revoked)

    def on_partitions_lost(self, lost: list[Any]) -> None:
        self.daemon.on_rebalance("lost", lost)

    def on_partitions_assigned(self, assigned: list[Any]) -> None:
        self.daemon.on_rebalance("assigned", assigned)


def _shown(pids: list[str]) -> str:
    """At most four partition ids, then how many more."""
    return ", ".join(pids[:4]) + (f" and {len(pids) - 4} more" if len(pids) > 4 else "")


def _snapshot_keys(snapshot: bytes | Snapshot) -> int | None:
    """How many keys a checkpoint's snapshot holds; None when it cannot be read."""
    try:
        header = snapshot.header if isinstance(snapshot, Snapshot) else StateStore.read_snapshot(snapshot)[0]
        return len(header["keys"])
    except (StateError, KeyError, TypeError, ValueError):
        return None


def retired_alerts(snapshot: bytes | Snapshot) -> list[Alert]:
    """The open alerts of a checkpoint that is not restored (written by a model of other features or architecture,
    or with other state-shaping [engine] settings and discarded by ``--reset-state``), closed as an evicted key's
    are (reason ``evicted``, at the event time the state had reached, under the model version that opened them; no
    top features, which need that model's feature names). Before, they were dropped with the state and stayed open
    forever on the alerts topic. A snapshot that cannot be read closes none."""
    try:
        header, arrays = snapshot if isinstance(snapshot, Snapshot) else StateStore.read_snapshot(snapshot)
        meta = header.get("meta", {})
        at, version = float(meta.get("max_ts", float("nan"))), str(meta.get("model_version", ""))
        fields = [arrays[f] for f in ("alert_open", "alert_start", "last_anom_ts", "alert_peak", "alert_thr")]
    except (StateError, KeyError, TypeError, ValueError):
        return []
    is_open, start, end, peak, thr = fields
    gaps = arrays.get(ALERT_GAP)  # not kept with engine.max_alert_seconds = 0
    return [
        Alert(
            alert_id(key, float(start[i])),
            key,
            "closed",
            float(start[i]),
            float(end[i]),
            at,
            float(peak[i]),
            float(thr[i]),
            version,
            [],
            "evicted",
            None if gaps is None else float(gaps[i]),
        )
        for i, key in enumerate(header["keys"])
        if is_open[i]
    ]


def _file_signature(path: str) -> tuple[int, int, int]:
    """What tells a new model file from the one last looked at: mtime (ns), size and inode. The mtime alone
    missed a copy finished within the file system's timestamp tick (a jiffy, 1-10 ms) after a look at its first
    part: the reload of that half failed, and the complete file, with the same mtime, was never loaded."""
    st = Path(path).stat()
    return st.st_mtime_ns, st.st_size, st.st_ino

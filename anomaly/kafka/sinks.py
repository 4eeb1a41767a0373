"""Runner sinks that produce to Kafka: alerts and per-window scores over one shared producer, dead letters
over their own.

``flush()`` returns only when every record sent so far is acknowledged by the broker (acks=all), and raises
:class:`DeliveryError` if any was refused for good; the checkpointer flushes before it commits offsets, so a
committed message always has its alerts on the broker. With ``transactional`` the shared producer writes
alerts, scores and changelog checkpoints inside a transaction that the checkpointer commits together with the
consumed offsets (:meth:`Delivery.commit`). The daemon's periodic checkpoint ends its transaction in a helper
thread (flush, offsets, commit: 10-50 ms of broker round trips) while the loop goes on scoring; what the sinks
send meanwhile is held in order and sent in the next transaction once that commit has ended
(:meth:`Delivery.settle`).

Dead letters go through a separate, non-transactional producer and always fit: a payload larger than
``max_bytes`` is cut, and its original size and SHA-256 travel in the headers. A dead letter the broker still
refuses is logged and counted, never raised: one poison message must not stop (and crash-loop) the stream.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import kafka.errors as kerr
from kafka import KafkaProducer

from anomaly.engine.types import EngineOutput
from anomaly.kafka import KafkaError
from anomaly.kafka.clients import RepeatedFailure
from anomaly.kafka.codec import alert_message, dead_letter, window_message
from anomaly.runner import Batch

log = logging.getLogger(__name__)


class DeliveryError(KafkaError):
    """The broker refused records for good (after the producer's retries): their offsets must not be committed."""


class TransactionTimeoutError(KafkaError):
    """A transactional request the broker did not complete within ``kafka.max_block_ms``. The transaction's
    outcome is unknown and this producer cannot go on with it: the daemon exits (status 2), and a restart
    fences this transactional id and restores the last committed checkpoint (state exactly once again)."""


def bounded(call: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """``call()`` (a kafka-python call that waits without a timeout of its own) in a helper thread, waited for at
    most ``timeout_s``: its result, or its exception re-raised here, or :class:`TransactionTimeoutError`.

    kafka-python 3.0 waits for ``send_offsets_to_transaction``, ``commit_transaction`` and ``abort_transaction``
    with no timeout (the Java client stops at ``max.block.ms`` with a TimeoutException): a request the broker
    never completes (it keeps answering with a retriable error, or it is stopped) would hang the loop thread
    forever, without a log line. Timed out, the helper thread stays blocked; the process is about to exit."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = exc

    helper = threading.Thread(target=target, name=f"kafka {what}", daemon=True)
    helper.start()
    helper.join(timeout_s)
    if helper.is_alive():
        raise TransactionTimeoutError(
            f"the broker did not complete {what} within {timeout_s:g}s (kafka.max_block_ms); the "
            "transaction's outcome is unknown: exiting so that a restart restores the last committed checkpoint"
        )
    if "error" in box:
        raise box["error"]
    return box.get("value")


HOLD_MAX = 100_000  # records held while a commit is in flight; one more and the loop waits for the commit


class _Ending:
    """A transaction's end running in a helper thread (:meth:`Delivery.commit`): what the loop thread needs to
    settle it. ``finished``: monotonic time it ended (0.0 while running); ``ended``: the transaction was
    committed or aborted (not left open by a flush that timed out, nor stuck in a request); ``postponed``: the
    flush timed out, nothing was committed and the transaction stays open."""

    def __init__(
        self,
        work: Callable[[_Ending], None],
        on_done: Callable[[float], None] | None,
        on_postponed: Callable[[KafkaError], None] | None,
    ) -> None:
        self.on_done = on_done
        self.on_postponed = on_postponed
        self.finished = 0.0
        self.ended = False
        self.postponed: KafkaError | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._run, args=(work,), name="kafka transaction end", daemon=True
        )

    def _run(self, work: Callable[[_Ending], None]) -> None:
        try:
            work(self)
        except BaseException as exc:  # noqa: BLE001 - handed to the settling thread
            self.error = exc
        finally:
            self.finished = time.monotonic()


class Delivery:
    """The shared producer plus what failed on it; every sink sends through :meth:`send`.

    Transactional: the first send after a commit begins a transaction; :meth:`commit` flushes it, adds the
    consumed offsets (with the consumer's group metadata, so a broker can fence a stale member, KIP-447) and
    commits it, in a helper thread. Until the loop thread has settled that commit (:meth:`settle`), nothing is
    sent on the producer (a new transaction can only begin after the commit): :meth:`send` holds the records, in
    order, and the settle sends them, so outputs stay in the order they were scored and each is in exactly one
    transaction. Every other use of the producer (flush, replace, the next commit) settles first.
    """

    def __init__(
        self,
        producer: KafkaProducer,
        flush_timeout_s: float = 60.0,
        transactional: bool = False,
        max_block_s: float = 60.0,
    ) -> None:
        self.producer = producer
        self.flush_timeout_s = flush_timeout_s
        self.transactional = transactional
        self.max_block_s = max_block_s  # longest wait for a transactional request (kafka.max_block_ms)
        self.in_transaction = False
        self.failures = 0
        self.last_error: str = ""
        self.last_topic: str = (
            ""  # of the last record refused: named in the error (alerts, scores, changelog)
        )
        self.transactions = 0
        self.group_found = False  # this producer knows the group coordinator (has sent offsets once)
        self.held: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None]] = []
        self.waited_s = 0.0  # loop thread's time blocked waiting for commits in flight (settle with wait)
        self._ending: _Ending | None = None

    def _on_error(self, exc: BaseException, topic: str = "") -> None:
        self.failures += 1
        self.last_error = type(exc).__name__
        self.last_topic = topic

    @property
    def committing(self) -> bool:
        """A commit is in flight or ended but not settled yet."""
        return self._ending is not None

    def replace(self, producer: KafkaProducer) -> None:
        """Use a new producer (a new transactional id after a rebalance); the old one's open transaction is
        aborted (its outputs belong to state that was dropped or handed over; left open, it would hold back
        read_committed readers until the transaction timeout) and the producer closed. A commit in flight is
        waited for first; its outcome no longer matters (the old producer and what it held go)."""
        self.held = []
        try:
            self.settle()
        except (kerr.KafkaError, OSError, KafkaError):
            pass
        old, self.producer = self.producer, producer
        try:
            if self.in_transaction:
                bounded(old.abort_transaction, self.max_block_s, "aborting the old producer's transaction")
        except (kerr.KafkaError, OSError, KafkaError):
            pass  # e.g. already fenced, or the broker away: the new owner's fence (or Kafka's timeout) aborts it
        finally:
            self.in_transaction = False
            self.failures = 0
            self.group_found = False
        try:
            old.close(timeout=1)
        except (kerr.KafkaError, OSError):
            pass

    def _begin(self) -> None:
        if self.transactional and not self.in_transaction:
            self.producer.begin_transaction()
            self.in_transaction = True

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Any:
        """Send one record (in the open transaction, begun if none is). While a commit is in flight the record
        is held (returns None) and sent when the commit is settled; held records go out first, in order."""
        ending = self._ending
        if ending is not None:
            if not ending.finished and len(self.held) < HOLD_MAX:
                self.held.append((topic, key, value, headers))
                return None
            self.settle()
        return self._send(topic, key, value, headers)

    def _send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Any:
        self._begin()
        try:
            future = self.producer.send(topic, key=key, value=value, headers=headers)
        except kerr.KafkaError as exc:  # the producer already failed for good, e.g. fenced by a new owner
            if isinstance(exc, kerr.ProducerFencedError) or any(
                isinstance(a, kerr.ProducerFencedError) for a in exc.args
            ):
                raise FencedError(FENCED) from None
            raise
        future.add_errback(lambda exc: self._on_error(exc, topic))
        return future

    def flush(self) -> None:
        """Block until everything sent is acknowledged; DeliveryError if anything was lost, KafkaError on timeout.
        A commit in flight is settled first (its held records are sent, then flushed too)."""
        self.settle()
        self._flush(self.producer)

    def _flush(self, producer: KafkaProducer) -> None:
        try:
            producer.flush(timeout=self.flush_timeout_s)
        except kerr.KafkaTimeoutError:
            raise KafkaError(
                f"producer flush timed out after {self.flush_timeout_s:.0f}s (broker away?)"
            ) from None
        if self.failures:
            n, self.failures = self.failures, 0
            if self.last_error == "ProducerFencedError":
                raise FencedError(FENCED)
            raise DeliveryError(
                f"{n} record(s) were not delivered ({self.last_error}, the last one to topic '{self.last_topic}')"
            )

    def commit(
        self,
        offsets: dict[Any, Any],
        group_metadata: Any,
        on_done: Callable[[float], None] | None = None,
        on_postponed: Callable[[KafkaError], None] | None = None,
        *,
        wait: bool = True,
        write: Callable[[Callable[..., Any]], None] | None = None,
    ) -> bool:
        """Transactional only: end the open transaction in a helper thread: flush it (every record
        acknowledged; a refused one raises :class:`DeliveryError` before anything is committed), add the
        offsets, commit. A fenced or failed commit aborts it and raises :class:`FencedError` (the caller's state
        is ahead of what was committed); a request the broker does not complete within ``max_block_s`` raises
        :class:`TransactionTimeoutError`; a flush that times out commits nothing, leaves the transaction open and
        calls ``on_postponed`` (the next commit retries). ``on_done(finished)`` (monotonic time the commit
        ended) runs on the settling thread once it is committed.

        ``wait``: settle it now (returns True committed, False postponed, or raises); otherwise return True at
        once and let a later :meth:`settle` (at the latest the next send after it ended, flush, commit or
        replace) finish it and raise its error there. ``write(send)``: runs first in the helper thread, to add
        records to the transaction (``send`` is :meth:`send` without the hold; the changelog's state, compressed
        there, off the loop thread); its errors count as the flush's."""
        self.settle()
        self._begin()
        producer, group_found = self.producer, self.group_found
        ending = _Ending(
            lambda e: self._end(producer, offsets, group_metadata, group_found, e, write),
            on_done,
            on_postponed,
        )
        self._ending = ending
        ending.thread.start()
        if not wait:
            return True
        return self.settle() is not False

    def _end(
        self,
        producer: KafkaProducer,
        offsets: dict[Any, Any],
        group_metadata: Any,
        group_found: bool,
        ending: _Ending,
        write: Callable[[Callable[..., Any]], None] | None = None,
    ) -> None:
        """Write, flush, offsets, commit (in the helper thread; nothing else uses the producer meanwhile)."""
        try:
            if write is not None:
                write(self._send)
            self._flush(producer)
        except DeliveryError:
            raise
        except KafkaError as exc:
            ending.postponed = exc
            return
        limit = self.max_block_s
        try:
            if offsets:
                bounded(
                    lambda: producer.send_offsets_to_transaction(offsets, group_metadata),
                    limit,
                    "adding the consumed offsets to the transaction",
                )
            elif not group_found:
                # Nothing to commit yet (claims at assignment): an empty offset commit, by bare group id (it
                # commits nothing and fences nothing), so the producer looks up the group coordinator now
                # and not in the stream's first checkpoint, where the lookup's two retry backoffs stalled
                # the loop for 0.2 s.
                bounded(
                    lambda: producer.send_offsets_to_transaction({}, group_metadata.group_id),
                    limit,
                    "looking up the group coordinator for the transaction",
                )
            bounded(producer.commit_transaction, limit, "the transaction's commit")
        except TransactionTimeoutError:
            raise  # in flight: neither committed nor aborted (an abort would queue behind it)
        except (kerr.KafkaError, OSError) as exc:
            ending.ended = True
            try:
                bounded(producer.abort_transaction, limit, "the transaction's abort")
            except (kerr.KafkaError, OSError, TransactionTimeoutError):
                pass
            raise FencedError(f"{FENCED} ({type(exc).__name__})") from None
        ending.ended = True

    def settle(self, wait: bool = True) -> bool | None:
        """Finish the commit in flight on this (the loop) thread: wait for it (``wait``; else only when it has
        already ended), then raise its error, or send the records held meanwhile, in order, in a new transaction
        (or, postponed, in the still open one). Returns None when there was nothing to settle (or it is still
        running and ``wait`` is False), True when committed, False when postponed. A failed commit drops the
        held records: they belong to state past the last committed checkpoint, which the daemon drops (fenced)
        or a restart rebuilds (the other errors stop it)."""
        ending = self._ending
        if ending is None or not (wait or ending.finished):
            return None
        running, t0 = not ending.finished, time.monotonic()
        ending.thread.join()  # when finished, the thread is only returning
        if running:
            self.waited_s += time.monotonic() - t0
        self._ending = None
        held, self.held = self.held, []
        if ending.ended:
            self.in_transaction = False
        if ending.error is not None:
            raise ending.error
        if ending.postponed is not None:
            if ending.on_postponed is not None:
                ending.on_postponed(ending.postponed)
            self._send_held(held)
            return False
        self.group_found = True
        self.transactions += 1
        if ending.on_done is not None:
            ending.on_done(ending.finished)
        self._send_held(held)
        return True

    def _send_held(
        self, held: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None]]
    ) -> None:
        for topic, key, value, headers in held:
            self._send(topic, key, value, headers)


FENCED = (
    "fenced: another member took over this daemon's partitions (paused or stalled longer than "
    "session_timeout_ms?) and the broker refused its transaction"
)


class FencedError(DeliveryError):
    """A transaction could not be committed: this process may be a fenced zombie; its state must be discarded
    (the daemon drops it and rejoins the group)."""


GROUP_HEADER = "group"


def group_header(group: str) -> list[tuple[str, bytes]]:
    """The ``group`` header of every alert, score and dead letter: the consumer group (the pipeline) that wrote it,
    so that ``anomaly retrain`` of one pipeline leaves out only its own alerts and dead letters where two pipelines
    share the topic (the default names are the same for every group). At most 1 KiB (``KEY_BYTES``), as a dead
    letter's ``entity_key``: its headers must stay within the room left for them; a longer ``kafka.group_id`` is
    refused when loaded (since session 23: before, it was cut here, and two ids alike in their first 1,024 bytes
    wrote the same header, so a retrain of one read the other's alerts)."""
    return [(GROUP_HEADER, group_value(group))] if group else []


def group_value(group: str) -> bytes:
    """The ``group`` header's value for consumer group `group`."""
    return _cut_text(group.encode(), KEY_BYTES)


class AlertSink:
    """Alert lifecycle events as JSON (``Alert.to_json()``), keyed by entity, with the writer's ``group`` header."""

    def __init__(self, delivery: Delivery, topic: str, group: str = "") -> None:
        self.delivery = delivery
        self.topic = topic
        self.headers = group_header(group) or None

    def write(self, out: EngineOutput, batch: Batch) -> None:
        for alert in out.alerts:
            key, value = alert_message(alert)
            self.delivery.send(self.topic, key, value, self.headers)

    def flush(self) -> None:
        self.delivery.flush()

    def close(self) -> None:
        """The producer is shared: the daemon closes it after the final checkpoint."""


class ScoreSink(AlertSink):
    """One JSON record per scored window (see :func:`anomaly.kafka.codec.window_json`)."""

    def __init__(self, delivery: Delivery, topic: str, features: Sequence[str], group: str = "") -> None:
        super().__init__(delivery, topic, group)
        self.features = list(features)

    def write(self, out: EngineOutput, batch: Batch) -> None:
        for window in out.windows:
            key, value = window_message(window, self.features)
            self.delivery.send(self.topic, key, value, self.headers)


class DeadLetterSink(AlertSink):
    """Every refusal (source or engine) with a Kafka record behind it: original bytes (cut to ``max_bytes``),
    reason and position. Sent on its own non-transactional producer: a refused dead letter is counted and
    logged, never fatal."""

    def __init__(
        self, producer: KafkaProducer, topic: str, max_bytes: int, metrics: Any = None, group: str = ""
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.group = group_header(group)
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.refused = 0
        # refusals in a row (a broker outage refuses every dead letter): logged at the first, at most once a
        # minute after, and at the next dead letter accepted
        self.refusals = RepeatedFailure.counted(
            "dead letter refused by Kafka",
            "dead letters accepted by Kafka again",
            "; the stream carries on",
            logger=log,
            level=logging.ERROR,
        )

    def _refused(self, exc: BaseException) -> None:
        self.refused += 1
        self.refusals.failed(exc)
        if self.metrics is not None:
            self.metrics.dead_letter_refused()

    def write(self, out: EngineOutput, batch: Batch) -> None:
        for rejection in out.rejections:
            key, value, headers = fit_dead_letter(*dead_letter(rejection), self.max_bytes)
            headers = headers + self.group
            try:
                future = self.producer.send(self.topic, key=key, value=value, headers=headers)
            except (kerr.KafkaError, ValueError) as exc:  # e.g. MessageSizeTooLargeError, raised at once
                self._refused(exc)
                continue
            future.add_callback(self.refusals.succeeded)
            future.add_errback(self._refused)

    def flush(self) -> None:
        """Wait for the dead letters sent so far; refusals were counted, a timeout is the broker being away."""
        try:
            self.producer.flush(timeout=60)
        except kerr.KafkaTimeoutError:
            raise KafkaError("dead-letter producer flush timed out (broker away?)") from None


KEY_BYTES = 1024  # a dead letter's key and its entity_key header are cut to this when it is cut


def fit_dead_letter(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]], max_bytes: int
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """Cut a payload (and key) larger than ``max_bytes``; ``original_bytes``, ``original_sha256`` and
    ``truncated`` headers say what was there, so the message can be found in the source topic by offset.

    An ``entity_key`` header above :data:`KEY_BYTES` (a huge body key or message key) is cut to it too, with the
    key, even when the payload fits: the header repeats the key, and uncut it made the record larger than the
    producer takes (``max_request_bytes``), so the dead letter was refused and lost."""
    entity = next((v for name, v in headers if name == "entity_key"), b"")
    if (value is None or len(value) + len(key or b"") <= max_bytes) and len(entity) <= KEY_BYTES:
        return key, value, headers
    headers = [(name, _cut_text(v, KEY_BYTES) if name == "entity_key" else v) for name, v in headers]
    if key is not None and len(key) > KEY_BYTES:
        key = key[:KEY_BYTES]
    if value is None:
        return key, value, headers
    headers += [
        ("truncated", b"1"),
        ("original_bytes", str(len(value)).encode()),
        ("original_sha256", hashlib.sha256(value).hexdigest().encode()),
    ]
    return key, value[: max(0, max_bytes - len(key or b""))], headers


def _cut_text(text: bytes, limit: int) -> bytes:
    """UTF-8 ``text`` cut to at most ``limit`` bytes on a character boundary."""
    return text[:limit].decode("utf-8", "ignore").encode() if len(text) > limit else text

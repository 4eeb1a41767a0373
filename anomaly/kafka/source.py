"""The daemon's source: Kafka poll -> :class:`anomaly.runner.Batch`.

Each poll becomes one batch: the decoded readings in columns (:class:`anomaly.engine.types.Readings`, no
object per message), refusals for the messages that could not be decoded (they go to the dead-letter sink with their bytes), and the next offset of
every partition seen. Messages at or below a partition's restored checkpoint offset are skipped. An empty
batch is yielded when a poll returns nothing, so the checkpointer's timer still runs on an idle stream.
Rebalance callbacks run inside ``consumer.poll``, i.e. between two batches, when the engine is consistent.

One batch may hold more than one poll: after a poll, records the consumer has already fetched (the rest of
the fetch response: more of the same partition, then other partitions) are added, poll by poll, while the
batch's values add up to less than ``max_batch_bytes`` and for at most ``max_batch_s``
(:func:`anomaly.kafka.records.buffered`: no wait, no group coordination). The engine's cost per reading falls
with the readings per call: a poll of 2,000 single readings mostly holds one partition's records (at 1,000 keys
over 4 partitions, 250 keys of 8 readings), where the per-call and per-reading-position costs weigh most; a poll
of blocks is already large and is left as it is. A rebalance callback that comes meanwhile is deferred as on any other
path outside ``poll`` (``after_poll`` applies it before the batch is built: records of a revoked partition are
left out, those at or below a restored checkpoint skipped).

While the loop thread stands still in a periodic checkpoint (tens of ms), kafka-python sends no fetch: the next
one goes out only once the loop has taken what the last one brought. :meth:`KafkaSource.fetch_ahead` (the
checkpointer's ``idle`` hook, ``kafka.fetch_in_checkpoint``) takes what has been fetched so far, which sends the
next fetches; those records head the next batch. They are records fetched and not yet scored, like those of a poll: a partition no longer
owned leaves them out, and a seek (a restore inside ``poll``) or a rejoin drops them
(:meth:`KafkaSource.drop_ahead`: the consumer reads them again from its new position).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from itertools import chain
from operator import attrgetter
from typing import Any

from kafka import KafkaConsumer

from anomaly.engine.types import Readings, Rejection
from anomaly.kafka.changelog import partition_id
from anomaly.kafka.checkpoint import PartitionTracker
from anomaly.kafka.codec import Decoder, source_rejection
from anomaly.runner import Batch


class KafkaSource:
    def __init__(
        self,
        consumer: KafkaConsumer,
        decoder: Decoder,
        tracker: PartitionTracker,
        stop: threading.Event,
        *,
        metrics: Any = None,
        poll_timeout_ms: int = 100,
        before_poll: Callable[[], None] | None = None,
        after_poll: Callable[[], None] | None = None,
        buffered: Callable[[int], dict[Any, list[Any]]] | None = None,
        max_batch_bytes: int = 0,
        max_batch_s: float = 0.0,
        max_poll_records: int = 2000,
    ) -> None:
        self.consumer = consumer
        self.decoder = decoder  # replaced by the daemon when a reloaded model has other features
        self.tracker = tracker
        self.stop = stop
        self.metrics = metrics
        self.poll_timeout_ms = poll_timeout_ms
        self.before_poll = before_poll
        self.after_poll = after_poll  # applies rebalance events deferred by callbacks outside poll()
        self.polling = False  # True while the loop thread is blocked in poll(): rebalance callbacks may act
        self.skipped = 0  # messages at or below a restored checkpoint (already in state)
        self.polled = 0  # records returned by every poll so far
        self.last_polled = 0  # records returned by the last poll (0: the stream is idle)
        self.buffered = buffered  # anomaly.kafka.records.buffered(consumer), None: one poll per batch
        self.max_batch_bytes = max_batch_bytes
        self.max_batch_s = max_batch_s
        self.max_poll_records = max_poll_records
        self._error: BaseException | None = (
            None  # raised while adding fetched records: raised at the next poll
        )
        self.ahead: dict[
            Any, list[Any]
        ] = {}  # fetched during a checkpoint (fetch_ahead): the next batch's head
        self.ahead_bytes = 0

    def batches(self) -> Iterator[Batch]:
        """Until ``stop`` is set: one batch per poll. Returning ends the runner loop cleanly."""
        while not self.stop.is_set():
            if self._error is not None and not self.ahead:  # where kafka-python would have raised it: the
                error, self._error = self._error, None  # poll after the records (those taken ahead first)
                raise error
            records: dict[Any, list[Any]] = {}
            if self._error is None:
                if self.before_poll is not None:
                    self.before_poll()
                self.polling = True
                try:  # records taken ahead: no wait for more
                    records = self.consumer.poll(timeout_ms=0 if self.ahead else self.poll_timeout_ms)
                finally:
                    self.polling = False
            if self.ahead:
                records = self._take_ahead(records)
            if records and self.buffered is not None and self._error is None:
                self._add_fetched(records, self.buffered)
            self.last_polled = sum(map(len, records.values()))
            self.polled += self.last_polled
            if self.after_poll is not None:
                self.after_poll()
            yield self.to_batch(records)

    def _add_fetched(
        self, records: dict[Any, list[Any]], buffered: Callable[[int], dict[Any, list[Any]]]
    ) -> None:
        """Add the records already fetched to a poll's, in order, a poll's worth at a time, while their values
        add up to less than ``max_batch_bytes`` and for ``max_batch_s`` seconds at most. An error is kept for the
        next round, so the records returned before it are scored first, as kafka-python defers its own errors."""
        size = _value_bytes(records)
        until = time.perf_counter() + self.max_batch_s
        while size < self.max_batch_bytes and time.perf_counter() < until:
            try:
                more = buffered(self.max_poll_records)
            except Exception as exc:  # noqa: BLE001 - re-raised by batches() before the next poll
                self._error = exc
                return
            if not more:
                return
            for tp, recs in more.items():
                if tp in records:
                    records[tp].extend(recs)
                else:
                    records[tp] = recs
            size += _value_bytes(more)

    def fetch_ahead(self) -> None:
        """Take up to ``max_poll_records`` of the records the consumer has fetched so far (while less than
        ``max_batch_bytes`` is held), which sends its next fetches once none is left, and keep them for the next
        batch. Called by the checkpointer while the loop thread stands still in a periodic checkpoint; never
        waits, no group coordination (no rebalance callback runs here). An error is kept and raised after the
        records taken before it are scored, as while adding fetched records."""
        if self.buffered is None or self._error is not None:
            return
        if self.ahead_bytes >= max(self.max_batch_bytes, 1):
            return
        try:
            more = self.buffered(self.max_poll_records)
        except Exception as exc:  # noqa: BLE001 - re-raised by batches() before the next poll
            self._error = exc
            return
        for tp, recs in more.items():
            self.ahead.setdefault(tp, []).extend(recs)
        self.ahead_bytes += _value_bytes(more)

    def drop_ahead(self, tps: Any) -> None:
        """Forget the records taken ahead of these partitions: the consumer's position moved back (a seek, or
        it forgot its positions), so it reads them again."""
        for tp in tps:
            self.ahead.pop(tp, None)
        if not self.ahead:
            self.ahead_bytes = 0

    def _take_ahead(self, records: dict[Any, list[Any]]) -> dict[Any, list[Any]]:
        """The records taken ahead, then the poll's (later offsets of the same partitions), in one dict."""
        out, self.ahead, self.ahead_bytes = self.ahead, {}, 0
        for tp, recs in records.items():
            if tp in out:
                out[tp].extend(recs)
            else:
                out[tp] = recs
        return out

    def to_batch(self, records: dict[Any, list[Any]]) -> Batch:
        """One poll as columns (:meth:`Decoder.decode_poll`), partition by partition in poll order; each
        partition's messages are of its own clock domain (``topic:partition``): the engine judges its keys'
        idleness (``engine.ttl_seconds``) by that partition's event time, not by the others'."""
        parts: list[Readings] = []
        rejections: list[Rejection] = []
        position: dict[Any, int] = {}
        n = 0
        owned = self.tracker.owned
        decoder = self.decoder
        for tp, recs in records.items():
            if not recs or tp not in owned:  # lost while the records were in flight
                continue
            floor = self.tracker.floor.get(tp, -1)
            if recs[0].offset <= floor:
                kept = [r for r in recs if r.offset > floor]
                self.skipped += len(recs) - len(kept)
                recs = kept
            if not recs:
                continue
            readings, errors = decoder.decode_poll(recs)
            for rec, err in errors:
                rejections.append(source_rejection(rec, err))
                if self.metrics is not None:
                    self.metrics.message_invalid(err.reason)
            if len(readings):
                readings.domains = ((0, partition_id(tp.topic, tp.partition)),)  # the partition's clock
                parts.append(readings)
                see = self.tracker.see
                for key in readings.names:  # once per key and partition, not per message
                    see(key, tp)
            n += len(recs)
            position[tp] = recs[-1].offset + 1
        if n and self.metrics is not None:
            self.metrics.message_consumed(n)
        events: Readings | list = Readings.concat(parts, decoder.n_features) if parts else []
        return Batch(events, rejections, messages=n, position=position)


def _value_bytes(records: dict[Any, list[Any]]) -> int:
    """Bytes of the records' values (a null value counts -1): what the readings of a batch scale with."""
    return sum(map(attrgetter("serialized_value_size"), chain.from_iterable(records.values())))

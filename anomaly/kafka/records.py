"""A faster way through kafka-python's fetched records, for the daemon's consumer only.

kafka-python turns every fetched record into a ``ConsumerRecord`` in pure Python
(``Fetcher.PartitionRecords._unpack_records``): seven varints each decoded by a function call, a
``DefaultRecord`` with property accessors, deserializer calls and a header-size sum. Measured on this
project's messages (3,000 single-reading JSON records in one batch): about 5 µs a record, more than the
daemon's decoding and scoring of the same message together.

:class:`FastPartitionRecords` keeps kafka-python's generator as it is, batch by batch: CRC checks of the
batch, read_committed's aborted-transaction skipping, control batches, compressed batches,
``next_fetch_offset``, ``records_read`` / ``bytes_read`` and the skipping below the fetch offset
(``_maybe_skip_record``, inherited). Only the records of a plain message-format-2 data batch are read in one
tight loop (:func:`read_batch`): varints of one or two bytes inline, key and value sliced from one copy of
the batch, and the same ``ConsumerRecord`` tuples built column-wise. Anything the loop does not take exactly
(record headers, deserializers, a malformed record, an older message format) goes through kafka-python's
own per-record loop, from the batch's start, so errors and partial results are kafka-python's own.

It is used only where it was checked: :func:`install` does nothing unless kafka-python is 3.0.x and the
source of the generator and record reader it replaces is the one this module was written against (a
fingerprint of their source), so an upgrade falls back to the public path until someone re-checks it.
The benchmark's ceiling (the plain kafka-python loop) does not use it.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
from collections.abc import Callable
from functools import partial
from itertools import repeat
from typing import Any

import kafka
import kafka.errors as Errors
from kafka.consumer.fetcher import ConsumerRecord, Fetcher, IsolationLevel
from kafka.record.default_records import DefaultRecordBatch
from kafka.record.util import decode_varint

log = logging.getLogger(__name__)

# sha256 of the source of what the fast path stands in for, in kafka-python 3.0.12
_CHECKED = {
    "PartitionRecords._unpack_records": "d91ccce28d83483f1b029fb2d5198d63fb1ed0f0fcea0c6f1edc32f548415544",
    "DefaultRecordBatch._read_msg": "b203a6ee5e4f423b6e746cbb4310b123b980a27b6e84d0e1314289a400e2d89b",
    "DefaultRecordBatch.__next__": "ff2fba2efdb152f41314379c8183d6947e2eaddf400a8b57fe6095f69e7dc81a",
    "DefaultRecordBatch.__init__": "8df1286ebd1e7110a0e59e895b14642eefb692211c335adbf9e86a19f47e6c78",
    "DefaultRecordBatch._maybe_uncompress": "35e0360528daf8bd286d00078d8bfd154fd44bb6440e2a9e06e6ea53bf06138a",
    "Fetcher.fetch_records": "aec7275fea19760d658c3cfce6a98e570a3694ae1011d74181117e3417b115fc",
    "Fetcher.fetched_records": "bf91319f1a2fda4651d03c3df9be603522854bd499b4ff863fc7512799ea08ae",
}

_new_record = partial(tuple.__new__, ConsumerRecord)


def _fingerprints() -> dict[str, str]:
    found = {}
    for name, fn in (
        ("PartitionRecords._unpack_records", Fetcher.PartitionRecords._unpack_records),
        ("DefaultRecordBatch._read_msg", DefaultRecordBatch._read_msg),
        ("DefaultRecordBatch.__next__", DefaultRecordBatch.__next__),
        ("DefaultRecordBatch.__init__", DefaultRecordBatch.__init__),
        ("DefaultRecordBatch._maybe_uncompress", DefaultRecordBatch._maybe_uncompress),
        ("Fetcher.fetch_records", Fetcher.fetch_records),
        ("Fetcher.fetched_records", Fetcher.fetched_records),
    ):
        try:
            found[name] = hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()
        except (OSError, TypeError):
            found[name] = "unavailable"
    return found


@functools.cache
def supported() -> bool:
    """True when this kafka-python is the one the fast path was checked against."""
    return kafka.__version__.startswith("3.0.") and _fingerprints() == _CHECKED


def install(consumer: Any) -> bool:
    """Make ``consumer`` (a KafkaConsumer) read fetched records through :class:`FastPartitionRecords`;
    False (and the public path stays) where kafka-python is not the checked version."""
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None or not supported():
        log.info("kafka-python %s: fetched records go through its public path", kafka.__version__)
        return False
    fetcher.PartitionRecords = FastPartitionRecords
    fetcher.fetch_records = no_false_idle(fetcher)
    return True


def no_false_idle(fetcher: Any) -> Callable[..., tuple[dict[Any, list[Any]], bool]]:
    """``fetcher.fetch_records`` without its false "idle": kafka-python 3.0.12 drains what was fetched, sends the
    next fetches (dropping completed fetch futures) and then waits on the fetches in flight. A fetch that
    completes on the I/O thread between the drain and that wait is buffered but no longer waited on, so it
    answers "no records, nothing in flight", and ``KafkaConsumer.poll`` then sleeps ``retry_backoff_ms``
    (100 ms) with the records in its buffer: one stall of 100 ms every second or so on a busy stream (measured
    on Tansu: 8 polls of ~105 ms returning nothing in 15 s at 27k msg/s). Here such an answer drains the
    buffered records at once instead (and is never idle, so poll does not sleep)."""
    fetch_records = fetcher.fetch_records

    def fetch(
        max_records: int | None = None, update_offsets: bool = True, timeout_ms: float | None = None
    ) -> tuple[dict[Any, list[Any]], bool]:
        records, idle = fetch_records(max_records, update_offsets=update_offsets, timeout_ms=timeout_ms)
        if idle and not records and fetcher._completed_fetches:
            return fetcher.fetched_records(max_records, update_offsets=update_offsets)[0], False
        return records, idle

    return fetch


def buffered(consumer: Any) -> Callable[..., dict[Any, list[Any]]] | None:
    """``more(n)``: up to ``n`` records the consumer has already fetched, as ``poll`` returns them, without the
    group coordination ``poll`` does first (so no rebalance callback runs inside it), and the next fetches
    requested once nothing is left, as ``poll`` does (kafka-python's ``Fetcher.fetch_records``); it never waits.
    Positions move as in ``poll``. None where kafka-python is not the checked version."""
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None or not supported():
        return None

    def more(n: int) -> dict[Any, list[Any]]:
        records, partial = fetcher.fetched_records(n)
        if not partial:
            fetcher.send_fetches()
        return records  # type: ignore[no-any-return]

    return more


def read_batch(batch: DefaultRecordBatch, topic: str, partition: int, leader_epoch: int) -> Any:
    """(records, sizes) of a message-format-2 data batch, exactly as kafka-python's per-record loop makes
    them (``ConsumerRecord`` with no deserializers; ``size`` is the record's length field, what
    ``bytes_read`` adds up); None when any record has headers or is malformed, or bytes are left over (the
    caller then reads the batch the public way, which raises kafka-python's own error).

    The batch must not have been iterated; it is decompressed here as iteration would, its read position is
    left alone."""
    batch._maybe_uncompress()
    buf = bytes(batch._buffer)  # slices of bytes are bytes: one copy instead of two per key and value
    pos = batch._pos
    count = batch._num_records
    base, first_ts, max_ts = batch.base_offset, batch.first_timestamp, batch.max_timestamp
    ts_type = batch.timestamp_type
    deltas: list[int] = []
    stamps: list[int] = []
    keys: list[bytes | None] = []
    values: list[bytes | None] = []
    key_sizes: list[int] = []
    value_sizes: list[int] = []
    sizes: list[int] = []
    varint = decode_varint
    # A varint of one byte b is (b >> 1) ^ -(b & 1); of two bytes b, c (b >= 128 > c) it is r = (b & 127) |
    # c << 7 zigzag-decoded the same way; longer ones go through kafka-python's decode_varint.
    try:
        for _ in range(count):
            b = buf[pos]
            if b < 128:
                length, pos = (b >> 1) ^ -(b & 1), pos + 1
            elif buf[pos + 1] < 128:
                r = (b & 127) | buf[pos + 1] << 7
                length, pos = (r >> 1) ^ -(r & 1), pos + 2
            else:
                length, pos = varint(buf, pos)
            start = pos
            if buf[pos] < 128:  # attributes: unused, as in kafka-python
                pos += 1
            else:
                pos = varint(buf, pos)[1]
            b = buf[pos]
            if b < 128:
                ts_delta, pos = (b >> 1) ^ -(b & 1), pos + 1
            elif buf[pos + 1] < 128:
                r = (b & 127) | buf[pos + 1] << 7
                ts_delta, pos = (r >> 1) ^ -(r & 1), pos + 2
            else:
                ts_delta, pos = varint(buf, pos)
            b = buf[pos]
            if b < 128:
                delta, pos = (b >> 1) ^ -(b & 1), pos + 1
            elif buf[pos + 1] < 128:
                r = (b & 127) | buf[pos + 1] << 7
                delta, pos = (r >> 1) ^ -(r & 1), pos + 2
            else:
                delta, pos = varint(buf, pos)
            b = buf[pos]
            if b < 128:
                n, pos = (b >> 1) ^ -(b & 1), pos + 1
            elif buf[pos + 1] < 128:
                r = (b & 127) | buf[pos + 1] << 7
                n, pos = (r >> 1) ^ -(r & 1), pos + 2
            else:
                n, pos = varint(buf, pos)
            if n >= 0:
                keys.append(buf[pos : pos + n])
                key_sizes.append(n)
                pos += n
            else:
                keys.append(None)
                key_sizes.append(-1)
            b = buf[pos]
            if b < 128:
                n, pos = (b >> 1) ^ -(b & 1), pos + 1
            elif buf[pos + 1] < 128:
                r = (b & 127) | buf[pos + 1] << 7
                n, pos = (r >> 1) ^ -(r & 1), pos + 2
            else:
                n, pos = varint(buf, pos)
            if n >= 0:
                values.append(buf[pos : pos + n])
                value_sizes.append(n)
                pos += n
            else:
                values.append(None)
                value_sizes.append(-1)
            if buf[pos]:  # headers (or a bad count): kafka-python's loop
                return None
            pos += 1
            if pos - start != length:
                return None
            deltas.append(delta)
            stamps.append(ts_delta)
            sizes.append(length)
    except (ValueError, IndexError):
        return None
    if pos != len(buf):  # a key or value cut short would have run into an IndexError above
        return None
    offsets = [base + d for d in deltas]
    if ts_type == batch.LOG_APPEND_TIME:
        stamps = [max_ts] * count
    else:
        stamps = [first_ts + d for d in stamps]
    columns = zip(
        repeat(topic),
        repeat(partition),
        repeat(leader_epoch),
        offsets,
        stamps,
        repeat(ts_type),
        keys,
        values,
        [[] for _ in range(count)],  # headers: a list of its own per record, as kafka-python gives
        repeat(None),  # checksum: None in message format 2
        key_sizes,
        value_sizes,
        repeat(-1),  # header size: -1 without headers
    )
    return list(map(_new_record, columns)), sizes


class FastPartitionRecords(Fetcher.PartitionRecords):  # type: ignore[misc]
    """kafka-python's ``PartitionRecords`` with the per-record loop of plain v2 batches in :func:`read_batch`.

    ``_unpack_records`` below is kafka-python 3.0.12's, line for line, except where marked."""

    def _unpack_records(self, tp: Any, records: Any, key_deserializer: Any, value_deserializer: Any) -> Any:
        plain = key_deserializer is None and value_deserializer is None  # changed: the fast path's condition
        try:
            batch = records.next_batch()
            last_batch = None
            while batch is not None:
                last_batch = batch

                if self.check_crcs and not batch.validate_crc():
                    raise Errors.CorruptRecordError(
                        "Record batch for partition %s at offset %s failed crc check"  # noqa: UP031 (kafka-python's)
                        % (self.topic_partition, batch.base_offset)
                    )

                # Try DefaultsRecordBatch / message log format v2
                # base_offset, last_offset_delta, aborted transactions, and control batches
                if batch.magic == 2:
                    self.leader_epoch = batch.leader_epoch
                    if self.isolation_level == IsolationLevel.READ_COMMITTED and batch.has_producer_id():
                        # remove from the aborted transaction queue all aborted transactions which have begun
                        # before the current batch's last offset and add the associated producerIds to the
                        # aborted producer set
                        self._consume_aborted_transactions_up_to(batch.last_offset)

                        producer_id = batch.producer_id
                        if self._contains_abort_marker(batch):
                            try:
                                self.aborted_producer_ids.remove(producer_id)
                            except KeyError:
                                pass
                        elif self._is_batch_aborted(batch):
                            log.debug(
                                "Skipping aborted record batch from partition %s with producer_id %s and"
                                " offsets %s to %s",
                                self.topic_partition,
                                producer_id,
                                batch.base_offset,
                                batch.last_offset,
                            )
                            self.next_fetch_offset = batch.next_offset
                            batch = records.next_batch()
                            continue

                    # Control batches have a single record indicating whether a transaction
                    # was aborted or committed. These are not returned to the consumer.
                    if batch.is_control_batch:
                        self.next_fetch_offset = batch.next_offset
                        batch = records.next_batch()
                        continue

                    # changed: the records of a plain v2 data batch in one loop
                    fast = read_batch(batch, tp.topic, tp.partition, self.leader_epoch) if plain else None
                    if fast is not None:
                        for record, size in zip(*fast, strict=True):
                            self.records_read += 1
                            self.bytes_read += size
                            self.next_fetch_offset = record[3] + 1
                            yield record
                        batch = records.next_batch()
                        continue

                for record in batch:
                    if self.check_crcs and not record.validate_crc():
                        raise Errors.CorruptRecordError(
                            "Record for partition %s at offset %s failed crc check"  # noqa: UP031 (kafka-python's)
                            % (self.topic_partition, record.offset)
                        )
                    key_size = len(record.key) if record.key is not None else -1
                    value_size = len(record.value) if record.value is not None else -1
                    key = self._deserialize(key_deserializer, tp.topic, record.headers, record.key)
                    value = self._deserialize(value_deserializer, tp.topic, record.headers, record.value)
                    headers = record.headers
                    header_size = (
                        sum(
                            len(h_key.encode("utf-8")) + (len(h_val) if h_val is not None else 0)
                            for h_key, h_val in headers
                        )
                        if headers
                        else -1
                    )
                    self.records_read += 1
                    self.bytes_read += record.size_in_bytes
                    self.next_fetch_offset = record.offset + 1
                    yield ConsumerRecord(
                        tp.topic,
                        tp.partition,
                        self.leader_epoch,
                        record.offset,
                        record.timestamp,
                        record.timestamp_type,
                        key,
                        value,
                        record.headers,
                        record.checksum,
                        key_size,
                        value_size,
                        header_size,
                    )

                batch = records.next_batch()
            else:
                # Message format v2 preserves the last offset in a batch even if the last record is removed
                # through compaction. By using the next offset computed from the last offset in the batch,
                # we ensure that the offset of the next fetch will point to the next batch, which avoids
                # unnecessary re-fetching of the same batch (in the worst case, the consumer could get stuck
                # fetching the same batch repeatedly).
                if last_batch and last_batch.magic == 2:
                    self.next_fetch_offset = last_batch.next_offset
                self.drain()

        # If unpacking raises StopIteration, it is erroneously
        # caught by the generator. We want all exceptions to be raised
        # back to the user. See Issue 545
        except StopIteration:
            log.exception("StopIteration raised unpacking messageset")
            raise RuntimeError("StopIteration raised unpacking messageset")  # noqa: B904


__all__ = ["FastPartitionRecords", "install", "read_batch", "supported"]

"""Replay series into a Kafka topic as daemon-readable JSON, in timestamp order, at a rate or flat out.

Used by `anomaly produce`, the integration tests and the benchmark. Values and timestamps are the float64
numbers read from the CSV (the numeric contract of :mod:`anomaly.data`), written by ``json`` as their shortest
round-trip text, so the daemon scores bit-identical inputs to what `anomaly replay` reads from the CSV. A missing
or infinite value goes as ``null`` (JSON has no NaN or Infinity, and the daemon refuses a message holding
Python's ``NaN`` text as invalid JSON): the engine treats a ``null`` value as replay treats that cell
(``nan_policy``). A time that is missing or infinite goes as ``null`` too, which the daemon refuses
(``missing_field``) as replay refuses that reading (``non_finite``). Such a reading always goes in a message of
its own, also under ``block`` > 1: the daemon refuses a block holding one whole, which lost the block's other
readings that replay scores.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import kafka.errors
import numpy as np

from anomaly.data import Series
from anomaly.kafka import KafkaError
from anomaly.kafka.codec import MessageFormat


def merged_order(series: Sequence[Series]) -> tuple[np.ndarray, np.ndarray]:
    """(series index, row index) of every reading, ordered by (timestamp, series order, row)."""
    ts = np.concatenate([s.timestamps for s in series])
    which = np.concatenate([np.full(len(s), i) for i, s in enumerate(series)])
    index = np.concatenate([np.arange(len(s)) for s in series])
    order = np.lexsort((index, which, ts))
    return which[order], index[order]


def messages(
    series: Sequence[Series], fmt: MessageFormat, block: int = 1
) -> Iterator[tuple[bytes, bytes, float]]:
    """(key, value, last timestamp) per message in timestamp order; a block message is emitted when a key has
    collected ``block`` readings, and partial blocks at the end. A reading without a finite time goes as a
    single-reading message, never in a block (the daemon refuses it alone, as replay does)."""
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    which, rows = merged_order(series)
    pending: dict[int, list[int]] = {}

    finite = [np.isfinite(s.values).all(axis=1) for s in series]

    def values(i: int, r: int) -> list[float | None]:
        row = series[i].values[r].tolist()
        return row if finite[i][r] else [x if math.isfinite(x) else None for x in row]

    def stamp(i: int, r: int) -> float | None:
        t = float(series[i].timestamps[r])
        return t if math.isfinite(t) else None

    def encode(i: int, idx: list[int], single: bool) -> tuple[bytes, bytes, float]:
        s = series[i]
        if single:
            r = idx[0]
            body: dict[str, Any] = {
                fmt.key_field: s.key,
                fmt.time_field: stamp(i, r),
                fmt.values_field: values(i, r),
            }
        else:
            body = {
                fmt.key_field: s.key,
                fmt.readings_field: [
                    {fmt.time_field: stamp(i, r), fmt.values_field: values(i, r)} for r in idx
                ],
            }
        text = json.dumps(body, separators=(",", ":"), allow_nan=False)
        return s.key.encode(), text.encode(), float(s.timestamps[idx[-1]])

    for i, r in zip(which.tolist(), rows.tolist(), strict=True):
        if block == 1 or stamp(i, r) is None:
            yield encode(i, [r], True)
            continue
        buf = pending.setdefault(i, [])
        buf.append(r)
        if len(buf) == block:
            yield encode(i, buf, False)
            del pending[i]
    for i, buf in pending.items():
        yield encode(i, buf, False)


def message_count(series: Sequence[Series], block: int = 1) -> int:
    """How many messages :func:`messages` makes of these series (a reading without a finite time is one)."""
    n = 0
    for s in series:
        timed = int(np.isfinite(s.timestamps).sum())
        n += len(s) - timed + (timed if block == 1 else -(-timed // block))
    return n


def produce(
    producer: Any,
    topic: str,
    msgs: Iterator[tuple[bytes, bytes, float]],
    *,
    rate: float = 0.0,
    progress: Any = None,
    total: int | None = None,
) -> int:
    """Send messages, paced at ``rate`` messages/s (0: as fast as possible); flush; returns the count sent.

    Raises :class:`anomaly.kafka.KafkaError` (one line) when a message cannot be sent (e.g. larger than the
    producer's ``max_request_size``: a ``--block`` too large) after flushing the ones before it, and when any
    message the broker was sent is not acknowledged: kafka-python reports both on the send's future, which
    nobody read, so such messages were lost while the count said they were sent."""
    failed: list[BaseException] = []
    n = 0
    t0 = time.monotonic()
    for key, value, _ in msgs:
        try:
            future = producer.send(topic, key=key, value=value)
        except kafka.errors.KafkaError as exc:
            producer.flush()
            hint = (
                "; send smaller blocks (--block) or raise kafka.max_request_bytes"
                if isinstance(exc, kafka.errors.MessageSizeTooLargeError)
                else ""
            )
            raise KafkaError(
                f"message {n + 1} ({len(value)} bytes) could not be sent to {topic}, {n} were: {exc}{hint}"
            ) from None
        future.add_errback(failed.append)
        n += 1
        if progress is not None and n % 256 == 0:
            progress.update(256)
        if rate > 0:
            ahead = n / rate - (time.monotonic() - t0)
            if ahead > 0.001:
                time.sleep(ahead)
    producer.flush()
    if progress is not None:
        progress.update(n % 256)
    if failed:
        raise KafkaError(
            f"{len(failed):,} of {n:,} messages to {topic} {'was' if len(failed) == 1 else 'were'} not delivered: {failed[0]}"
        )
    return n

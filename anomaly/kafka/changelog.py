"""Per-partition engine state checkpoints in a compacted changelog topic.

One logical record per source partition, key ``"<topic>:<partition>"``; its value is a small JSON header line,
``\\n``, then the zlib-compressed ``engine.snapshot(keys)`` bytes of the keys seen on that partition (level 1:
state is mostly float arrays with zero-filled rings, and kafka-python checksums every byte it sends). The header's ``offset`` is
the last source offset the state reflects, so a restorer skips messages at or below it (every message enters
the state exactly once).

Snapshots larger than ``chunk_bytes`` (many keys) are split: chunk records ``"<topic>:<partition>/<gen>/<i>"``
are written first, then the header record naming ``gen`` and the chunk count. Chunk keys are unique per
generation, so compaction never replaces a chunk the current header needs; the previous generation's chunks
are tombstoned once a newer header is acknowledged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from anomaly.kafka import KafkaError

log = logging.getLogger(__name__)
FORMAT = "anomaly-changelog/1"


def partition_id(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


@dataclass(frozen=True)
class Checkpoint:
    """Restored state of one source partition: the last offset it covers and the engine snapshot bytes."""

    partition_id: str
    offset: int
    snapshot: bytes
    keys: int


def encode_header(pid: str, offset: int, payload: bytes, keys: int, gen: str = "", chunks: int = 0) -> bytes:
    """``payload`` is the compressed snapshot; ``bytes`` and ``sha256`` are of the payload as stored."""
    head = {
        "format": FORMAT,
        "source": pid,
        "offset": offset,
        "keys": keys,
        "codec": "zlib",
        "bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest()[:32],
        "gen": gen,
        "chunks": chunks,
        "written_at": round(time.time(), 3),
    }
    return json.dumps(head, separators=(",", ":")).encode()


def decode_record(value: bytes) -> tuple[dict[str, Any], bytes]:
    head, _, payload = value.partition(b"\n")
    return json.loads(head), payload


class ChangelogStore:
    """Writes checkpoints through a shared producer (the caller flushes) and reads them back by partition id."""

    def __init__(
        self,
        producer: KafkaProducer,
        reader: KafkaConsumer,
        topic: str,
        chunk_bytes: int = 512 * 1024,
        read_timeout_s: float = 30.0,
    ) -> None:
        self.producer = producer
        self.reader = reader
        self.topic = topic
        self.chunk_bytes = chunk_bytes
        self.read_timeout_s = read_timeout_s
        self._live_chunks: dict[str, list[str]] = {}  # pid -> chunk keys of its last written generation

    def write(self, pid: str, offset: int, snapshot: bytes, keys: int) -> list[Any]:
        """Send one checkpoint; returns the send futures. Not durable until the producer is flushed."""
        futures = []
        stale = self._live_chunks.pop(pid, [])
        snapshot = zlib.compress(snapshot, 1)
        if len(snapshot) <= self.chunk_bytes:
            value = encode_header(pid, offset, snapshot, keys) + b"\n" + snapshot
            futures.append(self.producer.send(self.topic, key=pid.encode(), value=value))
        else:
            gen = uuid.uuid4().hex[:12]
            chunk_keys = []
            for i, start in enumerate(range(0, len(snapshot), self.chunk_bytes)):
                ck = f"{pid}/{gen}/{i}"
                chunk_keys.append(ck)
                futures.append(
                    self.producer.send(
                        self.topic, key=ck.encode(), value=snapshot[start : start + self.chunk_bytes]
                    )
                )
            header = encode_header(pid, offset, snapshot, keys, gen, len(chunk_keys))
            futures.append(self.producer.send(self.topic, key=pid.encode(), value=header + b"\n"))
            self._live_chunks[pid] = chunk_keys
        # Tombstones of the previous generation go after the new header: same partition, so ordered after it.
        for ck in stale:
            futures.append(self.producer.send(self.topic, key=ck.encode(), value=None))
        return futures

    def read(self, pids: Iterable[str]) -> dict[str, Checkpoint]:
        """Latest checkpoint of each wanted partition id (absent: never checkpointed). Reads the changelog from
        its beginning to its current end; only the wanted partitions' bytes are kept in memory."""
        wanted = set(pids)
        if not wanted:
            return {}
        parts = self.reader.partitions_for_topic(self.topic)
        if not parts:
            raise KafkaError(f"changelog topic {self.topic} not found")
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        self.reader.assign(tps)
        end = self.reader.end_offsets(tps)
        self.reader.seek_to_beginning(*tps)
        heads: dict[str, tuple[dict[str, Any], bytes]] = {}
        chunks: dict[str, bytes] = {}
        deadline = time.monotonic() + self.read_timeout_s
        # Tansu reports the end as the last batch's base offset + 1; a fetch returns whole batches, so reading
        # until position >= end is complete on Tansu and on Kafka alike.
        while any(self.reader.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise KafkaError(f"timed out reading changelog topic {self.topic}")
            for records in self.reader.poll(timeout_ms=500).values():
                for rec in records:
                    key = rec.key.decode() if rec.key else ""
                    pid = key.split("/", 1)[0]
                    if pid not in wanted:
                        continue
                    if "/" in key:
                        if rec.value is None:
                            chunks.pop(key, None)
                        else:
                            chunks[key] = rec.value
                    elif rec.value is not None:
                        heads[pid] = decode_record(rec.value)
        out = {}
        for pid, (head, payload) in heads.items():
            if head.get("chunks"):
                keys = [f"{pid}/{head['gen']}/{i}" for i in range(head["chunks"])]
                lost = [k for k in keys if k not in chunks]
                if lost:
                    raise KafkaError(
                        f"changelog {self.topic}: checkpoint of {pid} is missing {len(lost)} chunk(s)"
                    )
                payload = b"".join(chunks[k] for k in keys)
                self._live_chunks[pid] = keys
            if len(payload) != head["bytes"] or hashlib.sha256(payload).hexdigest()[:32] != head["sha256"]:
                raise KafkaError(f"changelog {self.topic}: checkpoint of {pid} is corrupted")
            out[pid] = Checkpoint(
                pid, int(head["offset"]), zlib.decompress(payload), int(head.get("keys", 0))
            )
        return out

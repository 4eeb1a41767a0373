"""Per-partition engine state checkpoints in compacted changelog topics, one per consumer group and input topic.

One logical record per source partition, key ``"<topic>:<partition>"``; its value is a small JSON header line,
``\\n``, then the compressed ``engine.snapshot(keys)`` bytes of the keys seen on that partition. The header's
``codec`` names the compression: ``zstd`` (level 1, through pyarrow, already a dependency) since the checkpoint
became the daemon's longest stall: on 1,000 keys' state (3.6 MB, mostly float arrays with zero-filled rings) it
takes 1-3 ms where zlib level 1 took 18-32 ms, and its output is 4-8 % smaller. Records written as ``zlib`` (older
daemons) are still restored; ``raw`` is the snapshot's size (zstd needs it to decompress). The header's
``offset`` is the last source offset the state reflects, so a restorer skips messages at or below it (every
message enters the state exactly once); ``offset: null`` marks an owner that holds no restored state (it resumes
from the group's committed offset).

Who wrote a record travels in its header, so a restorer never takes state that is not its own:

* ``group``: records of another consumer group (a changelog topic shared by configuration) are ignored;
* ``model``: a fingerprint of the features and architecture; state of an incompatible model is refused;
* ``epoch``: the owner epoch of the partition. Every new owner reads the latest record, takes ``epoch + 1`` and
  writes a claim record at once. Restore takes the record with the highest epoch (the last one among equals),
  so late writes of a zombie (an older epoch) never replace the new owner's state, even on a broker that
  shows records of aborted transactions to ``read_committed`` readers (Tansu 0.6);
* ``txn``: the writer's transactional id. The new owner initialises a producer with it, which aborts the previous
  owner's open transaction and fences that producer at the broker (its later sends and commits fail);
* ``input_id``: the input topic's topic id when the record was written. Offsets belong to one topic: a restore
  refuses a checkpoint of an input topic deleted and created again since (its offsets started again at 0, and
  the checkpoint's offset would skip the new topic's messages as already scored).

A record whose state cannot be read (another changelog format, chunks missing, bytes that do not match the
header's checksum, a payload that does not decompress) is read as a :class:`Checkpoint` with its ``problem`` and no snapshot: the restore refuses it
(the daemon stops, or ``--reset-state`` discards it) as it refuses a snapshot the engine cannot read. So is a
record under a partition's key whose header cannot be read (not JSON, a field of the wrong type: written by
hand or by another tool): whose it is cannot be told, so it counts as this group's latest record of the
partition until a later one of the group (the ``--reset-state`` claim) replaces it.

Snapshots larger than ``chunk_bytes`` (many keys) are split: chunk records ``"<topic>:<partition>/<gen>/<i>"``
are written first, then the header record naming ``gen`` and the chunk count. Chunk keys are unique per
generation, so compaction never replaces a chunk the current header needs; the previous generation's chunks
are tombstoned once a newer header is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import kafka.errors as kerr
import pyarrow as pa
from kafka import KafkaConsumer, TopicPartition

from anomaly.kafka import KafkaError
from anomaly.kafka.clients import CHANGELOG

log = logging.getLogger(__name__)
FORMAT = "anomaly-changelog/1"
CODECS = ("zstd", "zlib")  # what a checkpoint's payload may be compressed with; the first is written
_ZSTD = pa.Codec("zstd", compression_level=1) if pa.Codec.is_available("zstd") else None
WRITE_CODEC = "zstd" if _ZSTD is not None else "zlib"


def compress_state(snapshot: bytes, codec: str = WRITE_CODEC) -> bytes:
    """``engine.snapshot`` bytes as stored in a changelog record (``codec`` one of :data:`CODECS`)."""
    if codec == "zstd" and _ZSTD is not None:
        return bytes(_ZSTD.compress(snapshot, asbytes=True))
    if codec == "zlib":
        return zlib.compress(snapshot, 1)
    raise ValueError(f"unknown changelog codec {codec!r}; choose one of {', '.join(CODECS)}")


def decompress_state(head: dict[str, Any], payload: bytes) -> bytes:
    """The snapshot bytes of a record's payload, by its header's ``codec`` (absent: ``zlib``, the first format).
    Raises :class:`KafkaError` for a payload that does not decompress to the size the header names."""
    codec = head.get("codec", "zlib")
    try:
        if codec == "zlib":
            return zlib.decompress(payload)
        if codec == "zstd" and _ZSTD is not None:
            raw = int(head["raw"])
            return bytes(_ZSTD.decompress(payload, decompressed_size=raw, asbytes=True))
    except (zlib.error, pa.ArrowException, OSError, KeyError, TypeError, ValueError) as exc:
        raise KafkaError(f"checkpoint of {head.get('source')} does not decompress ({exc})") from None
    raise KafkaError(f"checkpoint of {head.get('source')} has codec {codec!r}, which this build cannot read")


def partition_id(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def source_topic(pid: str) -> str:
    return pid.rsplit(":", 1)[0]


def model_fingerprint(features: Iterable[str], arch: Any) -> str:
    """What makes state restorable: the feature names in order and the architecture (as ``engine.reload``)."""
    text = json.dumps({"features": list(features), "arch": arch}, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Checkpoint:
    """The latest record of one source partition for this group. ``offset`` None: the owner held no state."""

    partition_id: str
    offset: int | None
    snapshot: bytes
    keys: int
    epoch: int
    model: str
    payload: bytes = b""  # the compressed snapshot as stored (a claim re-writes it without recompressing)
    txn: str = ""  # transactional id of the writer: a new owner fences it (aborts its open transaction)
    codec: str = WRITE_CODEC  # how ``payload`` is compressed
    input_id: str = ""  # topic id of the input topic when written ("": not known, or an older daemon)
    # why the record's state cannot be read, in words ("is missing 1 of its 3 chunk(s)"; "": it can), its
    # snapshot then empty: the restore refuses it as the engine refuses a snapshot it cannot read
    problem: str = ""


@dataclass(frozen=True)
class Owner:
    """Who writes: the consumer group, the model fingerprint, the writer's transactional id (empty when not
    transactional) and, per record, the owner epoch."""

    group: str
    model: str
    txn: str = ""


def encode_header(
    pid: str,
    offset: int | None,
    payload: bytes,
    keys: int,
    gen: str = "",
    chunks: int = 0,
    *,
    owner: Owner | None = None,
    epoch: int = 0,
    codec: str = WRITE_CODEC,
    raw: int = 0,
    input_id: str = "",
) -> bytes:
    """``payload`` is the snapshot compressed with ``codec`` (``raw``: its size before); ``bytes`` and
    ``sha256`` are of the payload as stored."""
    head = {
        "format": FORMAT,
        "source": pid,
        "offset": offset,
        "keys": keys,
        "codec": codec,
        "raw": raw,
        "bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest()[:32],
        "gen": gen,
        "chunks": chunks,
        "group": owner.group if owner else "",
        "model": owner.model if owner else "",
        "epoch": epoch,
        "txn": owner.txn if owner else "",
        "input_id": input_id,
        "written_at": round(time.time(), 3),
    }
    return json.dumps(head, separators=(",", ":")).encode()


def _chunks_problem(pid: str, head: dict[str, Any], chunks: dict[str, bytes]) -> str:
    """Why the chunks a header names cannot be joined ("": they can), counted without listing their keys: a
    count no record can need (a chunk holds at least one of the header's ``bytes``), or chunks not read. A
    hand-written ``"chunks": 1e12`` made the restore build a list of 10^12 keys (memory and time without end)."""
    n, size = head["chunks"], head["bytes"]
    if n < 0:
        return f"has a header whose 'chunks' is {n}, not a count"
    if n > size:
        return f"has a header whose 'chunks' is {n}, more than its 'bytes' ({size}) can fill"
    prefix = f"{pid}/{head['gen']}/"
    present = 0
    for key in chunks:  # the keys read, not the ones named: as many as the records the restore read
        index = key[len(prefix) :] if key.startswith(prefix) else ""
        if index.isascii() and index.isdigit() and str(int(index)) == index and int(index) < n:
            present += 1
    return f"is missing {n - present} of its {n} chunk(s)" if present < n else ""


class RecordError(ValueError):
    """A changelog record whose header cannot be read (not JSON, not an object, a group or epoch of the wrong
    type): hand-written, or written by another tool under a partition's key. Whose it is cannot be told."""


# the header fields a restore reads and their types (NoneType: may be null); "bytes" and "sha256" are required in
# this changelog format, the others have defaults
_HEADER_TYPES: dict[str, tuple[type, ...]] = {
    "group": (str,),  # these two in any changelog format: they choose the record a restore takes
    "epoch": (int,),
    "format": (str,),
    "source": (str,),
    "offset": (int, type(None)),
    "keys": (int,),
    "codec": (str,),
    "raw": (int,),
    "bytes": (int,),
    "sha256": (str,),
    "gen": (str,),
    "chunks": (int,),
    "model": (str,),
    "txn": (str,),
    "input_id": (str, type(None)),
}


def decode_record(value: bytes) -> tuple[dict[str, Any], bytes]:
    """A changelog header record's header and payload; :class:`RecordError`, in words, when its header is not a
    JSON object or its group or epoch cannot be read (the other fields: :func:`header_problem`)."""
    raw, _, payload = value.partition(b"\n")
    try:
        head = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise RecordError(f"has a header that is not JSON ({exc})") from None
    if not isinstance(head, dict):
        raise RecordError(f"has a header that is a JSON {type(head).__name__}, not an object")
    problem = _field_problem(head, ("group", "epoch"))
    if problem:
        raise RecordError(problem)
    return head, payload


def header_problem(head: dict[str, Any]) -> str:
    """What is wrong with the fields of a header of this changelog format that a restore reads, in words (a
    field missing or of the wrong type); "" when nothing is. A header in another format is not checked (its
    ``format`` is what a restore refuses)."""
    if head.get("format", FORMAT) != FORMAT:
        return ""
    for name in ("bytes", "sha256"):
        if name not in head:
            return f"has a header without {name!r}"
    return _field_problem(head, tuple(_HEADER_TYPES))


def _field_problem(head: dict[str, Any], names: tuple[str, ...]) -> str:
    for name in names:
        if name not in head:
            continue
        value, types = head[name], _HEADER_TYPES[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return f"has a header whose {name!r} is {json.dumps(value)[:40]}, not {_kind(types)}"
    return ""


def _kind(types: tuple[type, ...]) -> str:
    names = {int: "an integer", str: "a string", type(None): "null"}
    return " or ".join(names[t] for t in types)


def _unreadable(rec: Any, why: RecordError, epoch: int) -> dict[str, Any]:
    """The header a restore takes for a record whose header cannot be read: its state, if any, cannot be read
    (``unreadable``), so the restore refuses it as it refuses a corrupted one (``offset`` -1: what it covered is
    not known). Its epoch is not known either: it counts as the latest record of the partition so far (``epoch``,
    the highest read before it), so a later record of the group (a ``--reset-state`` claim) replaces it."""
    where = f"offset {rec.offset} of changelog topic {rec.topic} partition {rec.partition}"
    return {
        "format": FORMAT,
        "offset": -1,
        "epoch": epoch,
        "keys": 0,
        "chunks": 0,
        "unreadable": f"cannot be read: the record at {where} {why}",
    }


def latest_records(
    records: Iterable[Any], wanted: Callable[[str], bool], group: str | None
) -> tuple[dict[str, tuple[dict[str, Any], bytes]], dict[str, bytes], dict[str, str]]:
    """From changelog records in log order: per partition id the header and payload of the record with the
    highest epoch (the last among equals) written by ``group`` (None: any group), the chunks, and the foreign
    groups seen per partition id (for the log)."""
    heads: dict[str, tuple[dict[str, Any], bytes]] = {}
    chunks: dict[str, bytes] = {}
    foreign: dict[str, str] = {}
    for rec in records:
        key = _key(rec)
        pid = key.split("/", 1)[0]
        if not wanted(pid):
            continue
        if "/" in key:
            if rec.value is None:
                chunks.pop(key, None)
            else:
                chunks[key] = rec.value
            continue
        if rec.value is None:
            continue
        try:
            head, payload = decode_record(rec.value)
        except RecordError as exc:  # whose it is cannot be told: refused as this group's own
            old = heads.get(pid)
            heads[pid] = (_unreadable(rec, exc, int(old[0].get("epoch", 0)) if old else 0), b"")
            continue
        if group is not None and head.get("group", "") != group:
            foreign[pid] = head.get("group") or "(unknown)"
            continue
        old = heads.get(pid)
        if old is None or int(head.get("epoch", 0)) >= int(old[0].get("epoch", 0)):
            heads[pid] = (head, payload)
    return heads, chunks, foreign


def writers_to_fence(
    records: Iterable[Any], wanted: Callable[[str], bool], group: str
) -> tuple[set[str], dict[int, int]]:
    """From changelog records in log order, uncommitted ones included: the transactional ids that may hold an
    open transaction on the wanted partitions, and per changelog partition the offset just past the last record
    of a wanted partition (what a restore must read up to).

    Per partition id: the writer of every record from the first one with the highest epoch on (the current
    owner and any older-epoch zombie that wrote after its claim). Writers of earlier records were fenced by the
    owner that claimed the highest epoch, before it claimed."""
    tail: dict[str, set[str]] = {}
    best: dict[str, int] = {}
    ends: dict[int, int] = {}
    for rec in records:
        key = _key(rec)
        if "/" in key or rec.value is None or not wanted(key):  # chunks precede their header
            continue
        try:
            head, _ = decode_record(rec.value)
        except RecordError:  # no writer to fence, but the restore must read it (and refuse it)
            ends[rec.partition] = rec.offset + 1
            continue
        if head.get("group", "") != group:
            continue
        ends[rec.partition] = rec.offset + 1
        epoch = int(head.get("epoch", 0))
        if key not in best or epoch > best[key]:
            best[key], tail[key] = epoch, set()
        if head.get("txn"):
            tail[key].add(str(head["txn"]))
    return set().union(*tail.values()), ends


def _key(rec: Any) -> str:
    """A changelog record's key as text; one that is not UTF-8 (another tool's) matches no partition id."""
    return rec.key.decode(errors="replace") if rec.key else ""


class ChangelogStore:
    """Writes checkpoints through a shared producer (the caller flushes) and reads them back by partition id.

    ``topic_for(input_topic)`` names the changelog topic of an input topic; ``send(topic, key, value)`` is the
    delivery's send (inside the current transaction when the daemon is transactional).
    """

    def __init__(
        self,
        send: Callable[[str, bytes, bytes | None], Any],
        reader: KafkaConsumer,
        topic_for: Callable[[str], str],
        owner: Owner,
        chunk_bytes: int = 512 * 1024,
        read_timeout_s: float = 30.0,
        peek: KafkaConsumer | None = None,
        codec: str = WRITE_CODEC,
        where: str = "",
    ) -> None:
        if codec not in CODECS:
            raise ValueError(f"unknown changelog codec {codec!r}; choose one of {', '.join(CODECS)}")
        if codec == "zstd" and _ZSTD is None:
            raise KafkaError('this pyarrow build has no zstd codec: set kafka.changelog_codec = "zlib"')
        self.send = send
        self.reader = reader
        self.peek = peek  # read_uncommitted reader: finds the writers of open transactions
        self.topic_for = topic_for
        self.owner = owner
        self.chunk_bytes = chunk_bytes
        self.read_timeout_s = read_timeout_s
        self.codec = codec  # compression of the checkpoints written (restores read any of CODECS)
        self.where = where  # the bootstrap servers, for errors
        self.foreign: dict[str, str] = {}  # pid -> group of ignored records, from the last read
        self._read_to: dict[str, dict[int, int]] = {}  # topic -> partition -> end, from open_writers
        self._live_chunks: dict[str, list[str]] = {}  # pid -> chunk keys of its last written generation
        # input topic -> its topic id, written in every header: a restore tells a checkpoint of an input topic
        # deleted and created again since (its offsets started again at 0) from one of the topic it reads
        self.input_ids: dict[str, str] = {}

    def write(
        self,
        pid: str,
        offset: int | None,
        snapshot: bytes,
        keys: int,
        epoch: int = 0,
        *,
        stored: Checkpoint | None = None,
        owner: Owner | None = None,
        send: Callable[[str, bytes, bytes | None], Any] | None = None,
    ) -> int:
        """Send one checkpoint (``offset`` None and no snapshot: a claim without state); returns the compressed
        state's size. ``stored``: the restored checkpoint whose state this is (its payload is re-written as
        stored, not compressed again). Not durable until the producer is flushed (or the transaction
        committed). ``owner`` (default: the current one) and ``send`` (default: the store's): a checkpoint
        written in the helper thread that ends a transaction names the owner of the moment its state was
        taken, and sends past the records held for that transaction's commit."""
        owner = self.owner if owner is None else owner
        send = self.send if send is None else send
        topic = self.topic_for(source_topic(pid))
        stale = self._live_chunks.pop(pid, [])
        codec = stored.codec if stored is not None else self.codec
        if stored is not None:
            payload = stored.payload
        else:
            payload = compress_state(snapshot, codec) if snapshot else b""

        def header(gen: str = "", chunks: int = 0) -> bytes:
            return encode_header(
                pid,
                offset,
                payload,
                keys,
                gen,
                chunks,
                owner=owner,
                epoch=epoch,
                codec=codec,
                raw=len(snapshot),
                input_id=self.input_ids.get(source_topic(pid), ""),
            )

        if len(payload) <= self.chunk_bytes:
            head = header()
            send(topic, pid.encode(), head + b"\n" + payload)
        else:
            gen = uuid.uuid4().hex[:12]
            chunk_keys = []
            for i, start in enumerate(range(0, len(payload), self.chunk_bytes)):
                ck = f"{pid}/{gen}/{i}"
                chunk_keys.append(ck)
                send(topic, ck.encode(), payload[start : start + self.chunk_bytes])
            head = header(gen, len(chunk_keys))
            send(topic, pid.encode(), head + b"\n")
            self._live_chunks[pid] = chunk_keys
        # Tombstones of the previous generation go after the new header: same partition, so ordered after it.
        for ck in stale:
            send(topic, ck.encode(), None)
        return len(payload)

    def read(self, pids: Iterable[str]) -> dict[str, Checkpoint]:
        """Latest checkpoint of each wanted partition id written by this group (absent: none). Reads each
        changelog topic from its beginning to its current end, or, after :meth:`open_writers`, to just past the
        last record of a wanted partition it saw; only the wanted partitions' bytes are kept."""
        by_topic: dict[str, set[str]] = {}
        for pid in pids:
            by_topic.setdefault(self.topic_for(source_topic(pid)), set()).add(pid)
        out: dict[str, Checkpoint] = {}
        self.foreign = {}
        for topic, wanted in by_topic.items():
            records = self._records(topic, until=self._read_to.pop(topic, None))
            heads, chunks, foreign = latest_records(records, wanted.__contains__, self.owner.group)
            self.foreign.update(foreign)
            for pid, (head, payload) in heads.items():
                out[pid] = self._checkpoint(topic, pid, head, payload, chunks)
        return out

    def open_writers(self, pids: Iterable[str]) -> set[str]:
        """Transactional ids to fence before :meth:`read` (see :func:`writers_to_fence`), from a read of the
        changelog that includes uncommitted records; it also sets how far the next :meth:`read` goes.

        Both are needed on any broker: a ``read_committed`` reader stops at the first open transaction of the
        changelog partition (Kafka's last stable offset; Tansu 0.6 too) until its writer commits or is fenced,
        and Tansu 0.6 then even reports the partition's end as 0 to ``read_committed`` readers, which made a
        restore read nothing and start the keys fresh. Reading up to the last wanted record seen here needs
        neither that end offset nor the other members' open transactions behind it."""
        if self.peek is None:
            return set()
        wanted = set(pids)
        out: set[str] = set()
        for topic in {self.topic_for(source_topic(pid)) for pid in wanted}:
            writers, ends = writers_to_fence(
                self._records(topic, self.peek), wanted.__contains__, self.owner.group
            )
            out |= writers
            self._read_to[topic] = ends
        return out

    def _missing(self, topic: str) -> KafkaError:
        on = f" on {self.where}" if self.where else ""
        return KafkaError(
            f"{CHANGELOG.describe(topic)} not found{on} while restoring partitions: it was deleted while the "
            "daemon ran, or the broker lost it; restart the daemon (it creates the topic at a group's first "
            "start, and refuses to start, saying what to do, when the group's checkpointed state is gone)"
        )

    def _partitions(self, topic: str) -> list[TopicPartition]:
        parts = self.reader.partitions_for_topic(topic)
        if not parts:
            raise self._missing(topic)
        return [TopicPartition(topic, p) for p in sorted(parts)]

    def _records(
        self, topic: str, reader: KafkaConsumer | None = None, until: dict[int, int] | None = None
    ) -> Iterable[Any]:
        reader = reader or self.reader
        tps = self._partitions(topic)
        reader.assign(tps)
        deadline = time.monotonic() + self.read_timeout_s
        try:  # metadata cached from before the topic was deleted: kafka-python fails inside (KeyError)
            if until is None:
                end = reader.end_offsets(tps, timeout_ms=int(self.read_timeout_s * 1000))
            else:
                end = {tp: until.get(tp.partition, 0) for tp in tps}
            reader.seek_to_beginning(*tps)
        except (KeyError, kerr.UnknownTopicOrPartitionError):
            raise self._missing(topic) from None

        def behind(tp: TopicPartition) -> bool:  # position() without a timeout may wait for good
            left_ms = max(1, int((deadline - time.monotonic()) * 1000))
            try:
                position = reader.position(tp, timeout_ms=left_ms)
            except (KeyError, kerr.UnknownTopicOrPartitionError):
                raise self._missing(topic) from None
            return position is None or position < end[tp]

        # Tansu reports the end as the last batch's base offset + 1; a fetch returns whole batches, so reading
        # until position >= end is complete on Tansu and on Kafka alike.
        while any(behind(tp) for tp in tps):
            if time.monotonic() > deadline:
                raise KafkaError(f"timed out reading changelog topic {topic}")
            for records in reader.poll(timeout_ms=500).values():
                yield from records

    def _checkpoint(
        self, topic: str, pid: str, head: dict[str, Any], payload: bytes, chunks: dict[str, bytes]
    ) -> Checkpoint:
        # a header that cannot be read (see latest_records), or fields of it
        problem = str(head.get("unreadable", ""))
        fields = "" if problem else header_problem(head)
        if fields:
            problem = f"{fields} in changelog topic {topic}"
        written = head.get("format", FORMAT)
        # another format: a newer version's record, after a downgrade, whose payload may be laid out otherwise
        if problem or written != FORMAT:
            problem = problem or f"was written in changelog format {written!r}; this version reads {FORMAT!r}"
        elif head.get("chunks"):
            problem = _chunks_problem(pid, head, chunks)
            if problem:
                problem = f"{problem} in changelog topic {topic}"
            else:
                keys = [f"{pid}/{head['gen']}/{i}" for i in range(head["chunks"])]
                payload = b"".join(chunks[k] for k in keys)
                self._live_chunks[pid] = keys
        if not problem and (
            len(payload) != head["bytes"] or hashlib.sha256(payload).hexdigest()[:32] != head["sha256"]
        ):
            problem = (
                f"is corrupted in changelog topic {topic} (its bytes do not match its header's checksum)"
            )
        snapshot = b""
        if not problem and payload:
            try:
                snapshot = decompress_state(head, payload)
            except KafkaError as exc:
                problem = str(exc).removeprefix(f"checkpoint of {head.get('source')} ")
        offset = head.get("offset")
        if not isinstance(offset, int) and offset is not None:  # refused above: what it covered is not known
            offset = -1
        keys = head.get("keys", 0)
        return Checkpoint(
            pid,
            offset,
            snapshot,
            keys if isinstance(keys, int) else 0,
            int(head.get("epoch", 0)),
            str(head.get("model", "")),
            payload,
            str(head.get("txn", "")),
            str(head.get("codec", "zlib")),
            str(head.get("input_id") or ""),
            problem,
        )

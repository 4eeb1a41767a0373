"""Benchmark of the Kafka daemon, measured side by side in one run against one broker (a Tansu it starts, or
yours): ratios, not absolute numbers, are what carry over between machines.

Rows, all on the same topics of the same broker, in alternating rounds so that load from elsewhere hits them
alike:

* ceiling: the fastest plain kafka-python loop with the daemon's own consumer settings (the same
  :func:`anomaly.kafka.clients.make_consumer`), ``orjson`` and ``crc32c``, counting messages per key so that it
  touches every message. The daemon cannot be faster than its client; this is the number to compare with.
* bytewax (the peer, when the optional ``bench`` extra is installed): a Bytewax KafkaSource -> ``orjson`` ->
  ``stateful_map`` count per key on the same topic, in its own process.
* single: 1,000 keys, one reading per message; consume -> decode -> score -> alerts -> checkpoint -> commit,
  timed from the daemon's first poll that returns records to the commit of the last offset. Target >= 0.8x the ceiling.
* block: the same keys, 32 readings per message: readings scored per second. Target >= 2x Bytewax's
  per-message rate (>= 5x the ceiling when Bytewax is absent).
* latency: messages stamped with the wall clock, produced at half the measured daemon rate by a feeder
  process that only stamps pre-encoded templates (:class:`FeedTemplates`) and sends them with librdkafka
  when the ``bench`` extra is installed (kafka-python otherwise), so that it keeps the rate without starving
  the machine; p50/p99 of (time a window is scored - wall-clock stamp of its last reading). Target p99
  <= 100 ms. Also p50/p99 over every reading of (time it is decided - its stamp), the daemon's own
  ``anomaly_latency_seconds``: the feed sends all keys in turn, so every key completes its report window in
  the same burst, and the windows' latency is that of ~1 burst in 32 readings. A plain kafka-python consumer of the same feed is the floor. Each row's feed reports the rate it
  achieved, its CPU and stamp -> broker acknowledgement (the producer's share of the latency).
  With ``latency_cores="both"`` (the default where it can be done: a broker this bench started, two CPUs or
  more) the same two legs run again with the work split across the cores (:class:`CoreSplit`): this process
  (the daemon, then the plain consumer) on CPU 0, the broker and the feeder on the others, as when the broker
  runs on other machines, so the daemon's own share of the latency shows apart from competing for the same
  cores with the broker it reads.
* memory: RSS of an `anomaly consume` process holding ``rss_keys`` keys (steady and peak).
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import operator
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from anomaly.bundle import Bundle, load_bundle, save_bundle
from anomaly.config import KafkaConfig, ModelConfig, PipelineConfig, TrainConfig
from anomaly.data import Series
from anomaly.errors import extra_hint
from anomaly.kafka import clients
from anomaly.kafka import records as record_path_module
from anomaly.kafka.daemon import Daemon, DaemonOptions
from anomaly.kafka.tansu import TansuBroker, free_port
from anomaly.metrics import PipelineMetrics


class _LatencyMetrics(PipelineMetrics):
    """PipelineMetrics that also keeps every window's latency (its last reading's, the reading that completes
    it) and every reading's decision latency (``anomaly_latency_seconds``; the histogram only keeps buckets)."""

    def __init__(self) -> None:
        super().__init__()
        self.latencies: list[float] = []
        self.reading_latencies: list[np.ndarray] = []
        self.windows = 0

    def observe(self, out: Any, batch: Any, engine: Any, now: float) -> None:
        super().observe(out, batch, engine, now)
        self.windows += len(out.windows)
        self.latencies.extend(now - float(w.timestamps[-1]) for w in out.windows)
        if out.decided:
            self.reading_latencies.append(now - np.concatenate([d.reshape(-1) for d in out.decided]))


def _bundle(path: str | None, features: int) -> tuple[str, Bundle]:
    if path:
        return path, load_bundle(path)
    from anomaly.synthetic import SyntheticSpec, generate
    from anomaly.training import train

    frame = generate(SyntheticSpec(n_sensors=features, n_points=3000))
    cols = [c for c in frame.columns if c.startswith("sensor_")]
    ts = np.arange(len(frame), dtype=np.float64)
    result = train(
        [Series("s", ts, frame[cols].to_numpy(np.float32))],
        cols,
        ModelConfig(),
        TrainConfig(epochs=1, device="cpu"),
    )
    out = Path(tempfile.mkdtemp(prefix="anomaly-bench-")) / "model.pt"
    save_bundle(result.bundle, out)
    return str(out), result.bundle


def _messages(
    bundle: Bundle, keys: int, readings: int, block: int, t0: float, live: bool = False
) -> list[tuple]:
    """(key, value) pairs: `readings` readings per key in time order, `block` per message, keys interleaved."""
    rng = np.random.default_rng(0)
    mean, scale = bundle.scaler.mean, bundle.scaler.scale
    out = []
    for start in range(0, readings, block):
        for k in range(keys):
            rows = [
                {
                    "ts": t0 + (start + i) * 1.0,
                    "values": (mean + scale * rng.normal(size=len(mean))).round(4).tolist(),
                }
                for i in range(min(block, readings - start))
            ]
            body = {"key": f"k{k}", **rows[0]} if block == 1 else {"key": f"k{k}", "readings": rows}
            out.append((f"k{k}".encode(), json.dumps(body, separators=(",", ":")).encode()))
    return out


def _produce(bootstrap: str, topic: str, msgs: list[tuple]) -> dict[int, int]:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=262_144, acks=1)
    futures = [producer.send(topic, key=k, value=v) for k, v in msgs]
    producer.flush()
    ends: dict[int, int] = {}
    for f in futures[-5000:] if len(futures) > 5000 else futures:
        md = f.get()
        ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)
    producer.close()
    return ends


def _bench_kafka_config(bootstrap: str, topic: str, tag: str) -> KafkaConfig:
    """The daemon's settings in every row (defaults except short group timeouts: Tansu waits that long to
    form a group)."""
    return KafkaConfig(
        bootstrap_servers=bootstrap,
        topics=(topic,),
        group_id=f"bench-{tag}",
        alerts_topic=f"bench-alerts-{tag}",
        changelog_topic=f"bench-cl-{tag}",
        dead_letter_topic=f"bench-dead-{tag}",
        checkpoint_interval_s=5.0,
        max_poll_interval_ms=3000,
        session_timeout_ms=3000,
    )


def _ceiling_rate(bootstrap: str, topic: str, n: int, record_path: bool = False) -> float:
    """Messages/s of the fastest plain kafka-python loop: the daemon's consumer (same settings, group
    subscription), ``orjson.loads`` of every value and a count per key (C-level ``Counter.update``).
    ``record_path``: the same loop reading fetched records the daemon's way (:mod:`anomaly.kafka.records`)."""
    cfg = _bench_kafka_config(bootstrap, topic, uuid.uuid4().hex[:6])
    consumer = clients.make_consumer(cfg)
    if record_path and not record_path_module.install(consumer):
        raise RuntimeError("the daemon's record path is not available with this kafka-python")
    consumer.subscribe([topic])
    loads, key = orjson.loads, operator.itemgetter("key")
    counts: Counter[str] = Counter()
    got, t0 = 0, 0.0
    while got < n:
        for recs in consumer.poll(timeout_ms=500).values():
            t0 = t0 or time.perf_counter()  # timed from the first records, like the daemon's first poll
            counts.update(map(key, map(loads, [r.value for r in recs])))
            got += len(recs)
    rate = n / (time.perf_counter() - t0)
    consumer.close(autocommit=False)
    if sum(counts.values()) != n:
        raise RuntimeError(f"ceiling loop counted {sum(counts.values())} of {n} messages")
    return rate


def bytewax_available() -> bool:
    try:
        import bytewax.connectors.kafka  # noqa: F401
    except ImportError:
        return False
    return True


def _bytewax_flow(bootstrap: str, topic: str, n: int, out: Any) -> None:
    """Child process: KafkaSource -> orjson -> stateful_map count per key -> a sink that keeps nothing.
    Sends (first message time, end time, messages counted) through ``out``."""
    import bytewax.operators as op
    from bytewax.connectors.kafka import KafkaSource
    from bytewax.dataflow import Dataflow
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import run_main

    first: list[float] = []
    seen = [0]

    class _Drop(StatelessSinkPartition):
        def write_batch(self, items: list[Any]) -> None:
            seen[0] += len(items)

    class _DropSink(DynamicSink):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> _Drop:
            return _Drop()

    def parse(msg: Any) -> tuple[str, int]:
        if not first:
            first.append(time.perf_counter())
        return orjson.loads(msg.value)["key"], 1

    def count(state: int | None, one: int) -> tuple[int, int]:
        state = (state or 0) + one
        return state, state

    flow = Dataflow("bench-count")
    src = op.input("kafka", flow, KafkaSource([bootstrap], [topic], tail=False, batch_size=2000))
    counted = op.stateful_map("count", op.map("parse", src, parse), count)
    op.output("drop", counted, _DropSink())
    run_main(flow)
    out.send((first[0] if first else 0.0, time.perf_counter(), seen[0]))


def _bytewax_rate(bootstrap: str, topic: str, n: int) -> float | None:
    """Messages/s of the Bytewax peer on the same topic, in its own interpreter; None without bytewax."""
    if not bytewax_available():
        return None
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_bytewax_flow, args=(bootstrap, topic, n, send), daemon=True)
    proc.start()
    if not recv.poll(300):
        proc.kill()
        raise RuntimeError("the Bytewax flow did not finish within 300 s")
    t0, t1, seen = recv.recv()
    proc.join(30)
    if seen != n:
        raise RuntimeError(f"the Bytewax flow counted {seen} of {n} messages")
    return n / (t1 - t0)


def _run_daemon(
    bootstrap: str,
    model: str,
    topic: str,
    ends: dict[int, int] | None,
    *,
    stop_after: float = 0.0,
    metrics: _LatencyMetrics | None = None,
    when_ready: Any = None,
) -> tuple[float, Daemon]:
    """Run a daemon in a thread until it has read every offset in `ends` (or for `stop_after` seconds from its
    first batch), then stop it; returns seconds from its first poll that returned records to the end of its final
    checkpoint and commit, i.e. until every message's alerts and state are durable and its offset committed."""
    cfg = PipelineConfig(kafka=_bench_kafka_config(bootstrap, topic, uuid.uuid4().hex[:6]))
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(cfg.kafka.alerts_topic, 1, 1), NewTopic(cfg.kafka.dead_letter_topic, 1, 1)])
    admin.close()
    daemon = Daemon(cfg, model, metrics=metrics or PipelineMetrics(), options=DaemonOptions())
    daemon.connect()
    first: list[float] = []
    poll = daemon.source.consumer.poll

    def timed(*args: Any, **kwargs: Any) -> Any:
        records = poll(*args, **kwargs)
        if records and not first:  # like the ceiling: the clock starts when the first records are returned,
            first.append(time.perf_counter())  # before the source adds what was already fetched to them
        return records

    daemon.source.consumer.poll = timed  # type: ignore[method-assign]
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    t = daemon.tracker
    if when_ready is not None:
        while not daemon.ready:
            time.sleep(0.005)
        when_ready()
    started = time.perf_counter()
    while True:
        time.sleep(0.002)
        if not first:
            if time.perf_counter() - started > 120:  # e.g. the feeder died: fail instead of waiting forever
                daemon.stop.set()
                thread.join(120)
                raise RuntimeError(f"the daemon read nothing from {topic} within 120 s")
            continue
        if stop_after and time.perf_counter() - first[0] >= stop_after:
            break
        if ends and all(t.position.get(TopicPartition(topic, p), 0) >= e for p, e in ends.items()):
            break
    daemon.stop.set()  # the loop ends after this batch: final checkpoint (flush, changelog) and commit
    thread.join(120)
    seconds = time.perf_counter() - first[0]
    return seconds, daemon


def _rss(bootstrap: str, model: str, bundle: Bundle, keys: int) -> dict[str, float]:
    topic = f"bench-rss-{uuid.uuid4().hex[:6]}"
    KafkaAdminClient(bootstrap_servers=bootstrap).create_topics([NewTopic(topic, 4, 1)])
    ends = _produce(bootstrap, topic, _messages(bundle, keys, 1, 1, time.time()))
    port = free_port()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("anomaly")),
            "consume",
            "-m",
            model,
            "-b",
            bootstrap,
            "--topics",
            topic,
            "--group-id",
            f"g-{topic}",
            "--changelog-topic",
            f"cl-{topic}",
            "--alerts-topic",
            topic,
            "--dead-letter-topic",
            topic,
            "--metrics-port",
            str(port),
            "--max-poll-interval-ms",
            "3000",
            "--session-timeout-ms",
            "3000",
            "--checkpoint-interval",
            "1000",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=f"g-{topic}", enable_auto_commit=False)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            import urllib.request

            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                held = [
                    float(ln.split()[1]) for ln in text.splitlines() if ln.startswith("anomaly_keys_held ")
                ]
                if held and held[0] >= keys:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        rss = {
            ln.split(":")[0]: int(ln.split()[1]) / 1024
            for ln in status.splitlines()
            if ln.startswith(("VmRSS", "VmHWM"))
        }
        del ends
        return {"keys": keys, "rss_mb": round(rss["VmRSS"], 1), "peak_rss_mb": round(rss["VmHWM"], 1)}
    finally:
        proc.terminate()
        proc.wait(60)
        consumer.close()


FEED_PARTITIONS = 4  # partitions of every bench topic
_FEED_VALUES = 4096  # encoded value lists the feeder cycles through


@dataclass(frozen=True)
class FeedTemplates:
    """The latency feeder's messages, encoded before the clock starts: per key its key bytes, its partition
    (murmur2 of the key, where kafka-python's default partitioner puts it) and the JSON head up to the
    timestamp; a pool of encoded value lists drawn like a live sensor (scaler mean
    + scale x N(0, 1), 4 decimals). A message is ``head + repr(stamp) + values``: the wall-clock stamp is the
    only per-message work, so a Python feeder can keep the rate on two cores (building a dict, drawing from
    numpy and ``json.dumps`` per message cost ~10 us, and kafka-python's ``send`` 15-30 us more)."""

    keys: list[bytes]
    partitions: list[int]
    heads: list[bytes]
    values: list[bytes]

    @classmethod
    def build(cls, keys: int, mean: list[float], scale: list[float], partitions: int) -> FeedTemplates:
        from kafka.partitioner.default import murmur2

        rng = np.random.default_rng(1)
        m, sc = np.asarray(mean), np.asarray(scale)
        names = [f"k{k}" for k in range(keys)]
        return cls(
            keys=[n.encode() for n in names],
            partitions=[(murmur2(n.encode()) & 0x7FFFFFFF) % partitions for n in names],
            heads=[b'{"key":"%b","ts":' % n.encode() for n in names],
            values=[
                b',"values":' + orjson.dumps((m + sc * rng.normal(size=len(m))).round(4).tolist()) + b"}"
                for _ in range(_FEED_VALUES)
            ],
        )

    def message(self, n: int, stamp: float) -> tuple[bytes, bytes, int]:
        """(key, value, partition) of the n-th message: keys in turn, stamped ``stamp``."""
        k = n % len(self.keys)
        return (
            self.keys[k],
            self.heads[k] + repr(stamp).encode() + self.values[n % _FEED_VALUES],
            self.partitions[k],
        )


def _feed_producer(bootstrap: str) -> tuple[str, Any, Any, Any]:
    """(name, send(topic, key, value, partition, on_ack), wait(seconds), close()) of the latency feeder's
    producer, acks=1. librdkafka (``confluent-kafka``, in the ``bench`` extra) with its default linger of
    5 ms when importable: ~0.2 cores at 30,000 msg/s, and Tansu ~0.1 for its requests. Else kafka-python
    (linger 1 ms): ~0.7 cores for the same rate, whose sender thread competes for the GIL, which delays
    acknowledgements (p99 100-200 ms on a busy 2-core box). librdkafka with linger 1 ms sends ~10 records a
    request, and Tansu then took ~0.25 cores and acknowledged in 100+ ms (p50) while serving fetches.
    ``on_ack`` (or None) is called without arguments once the broker has acknowledged that message."""
    try:
        from confluent_kafka import Producer
    except ImportError:
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=1, acks=1)

        def send_kp(topic: str, key: bytes, value: bytes, partition: int, on_ack: Any) -> None:
            future = producer.send(topic, key=key, value=value, partition=partition)
            if on_ack is not None:
                future.add_callback(lambda _metadata: on_ack())

        def close_kp() -> None:
            producer.flush(30)
            producer.close()

        return "kafka-python (linger 1 ms)", send_kp, time.sleep, close_kp
    fast = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": 1})

    def delivered(on_ack: Any, err: Any, _msg: Any) -> None:
        if err is None:
            on_ack()

    def send_ck(topic: str, key: bytes, value: bytes, partition: int, on_ack: Any) -> None:
        if on_ack is None:
            fast.produce(topic, value, key, partition)
        else:
            fast.produce(topic, value, key, partition, on_delivery=functools.partial(delivered, on_ack))
        fast.poll(0)  # serves delivery reports

    def close_ck() -> None:
        fast.flush(30)

    return "confluent-kafka (librdkafka, linger 5 ms)", send_ck, fast.poll, close_ck


def _feed(
    bootstrap: str,
    topic: str,
    rate: float,
    templates: FeedTemplates,
    go: Any,
    stop: Any,
    out: Any,
    ack_every: int = 16,
    cpus: frozenset[int] | None = None,
) -> None:
    """Producer process of the latency run: one reading per message stamped with the wall clock at send, at
    ``rate`` messages/s (:func:`_feed_producer`). Sends back through ``out`` what it achieved: producer,
    messages, seconds, its CPU seconds and, for every ``ack_every``-th message, stamp -> broker
    acknowledgement in seconds. ``cpus``: the CPUs it runs on (set before its producer starts threads,
    which inherit them); None: wherever the scheduler puts it."""
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    name, send, wait, close = _feed_producer(bootstrap)
    acks: list[tuple[float, float]] = []

    def acked(stamp: float) -> None:
        acks.append((stamp, time.time() - stamp))

    message = templates.message
    go.wait()
    n, t0, cpu0 = 0, time.monotonic(), time.process_time()
    while not stop.is_set():
        stamp = time.time()
        key, value, partition = message(n, stamp)
        send(topic, key, value, partition, functools.partial(acked, stamp) if n % ack_every == 0 else None)
        n += 1
        ahead = n / rate - (time.monotonic() - t0)
        if ahead > 0.001:
            wait(ahead)  # librdkafka: serves delivery reports meanwhile
    seconds, cpu = time.monotonic() - t0, time.process_time() - cpu0
    close()
    out.send({"producer": name, "messages": n, "seconds": seconds, "cpu_seconds": cpu, "acks": acks})


class _Feed:
    """Handle of a running feeder: ``go`` starts it; ``result`` (after the block) is what it sent back."""

    def __init__(self, go: Any) -> None:
        self.go = go
        self.result: dict[str, Any] = {}

    def summary(self, rate: float) -> dict[str, Any]:
        """Achieved rate, the feeder's CPU share and stamp -> ack p50/p99 (ms) after the first fifth."""
        r = self.result
        if not r:
            return {}
        acks = sorted(r["acks"])
        ack_ms = np.asarray([a for _, a in acks[len(acks) // 5 :]]) * 1000
        out = {
            "producer": r["producer"],
            "target_msgs_per_s": round(rate),
            "msgs_per_s": round(r["messages"] / r["seconds"]),
            "cpu_cores": round(r["cpu_seconds"] / r["seconds"], 2),
        }
        if ack_ms.size:
            out["ack_p50_ms"] = round(float(np.percentile(ack_ms, 50)), 1)
            out["ack_p99_ms"] = round(float(np.percentile(ack_ms, 99)), 1)
        return out


@contextlib.contextmanager
def _feeding(
    topic: str, bootstrap: str, rate: float, templates: FeedTemplates, cpus: frozenset[int] | None = None
) -> Iterator[_Feed]:
    """A `_feed` producer process on ``topic`` (on ``cpus``, None: anywhere) for the duration of the block; it
    starts sending when the yielded feed's ``go`` is set, and its report is in ``result`` after the block."""
    ctx = multiprocessing.get_context("spawn")  # its own interpreter: no GIL shared with the consumer
    go, stop = ctx.Event(), ctx.Event()
    recv, send = ctx.Pipe(duplex=False)
    feeder = ctx.Process(
        target=_feed,
        args=(bootstrap, topic, rate, templates, go, stop, send),
        kwargs={"cpus": cpus},
        daemon=True,
    )
    feeder.start()
    feed = _Feed(go)
    try:
        yield feed
    finally:
        stop.set()
        if recv.poll(60):
            feed.result = recv.recv()
        feeder.join(30)


def _feed_line(row: str, fed: dict[str, Any]) -> str:
    """One line on the feed of a latency row: producer, achieved rate, the feeder's CPU and its share of the latency
    (stamp -> broker acknowledgement), with a warning when it fell short of the rate."""
    if not fed:
        return f"  feed of the {row} row: no report from the feeder"
    line = (
        f"  feed of the {row} row: {fed['producer']}, {fed['msgs_per_s']:,} msg/s sent "
        f"({fed['cpu_cores']:.2f} cores), stamp -> broker ack p50 {fed.get('ack_p50_ms')} ms, "
        f"p99 {fed.get('ack_p99_ms')} ms"
    )
    if fed["msgs_per_s"] < 0.95 * fed["target_msgs_per_s"]:
        line += f" -- warning: below the {fed['target_msgs_per_s']:,} msg/s asked for (feeder short of CPU)"
    return line


def _plain_latency(bootstrap: str, topic: str, seconds: float, go: Any) -> np.ndarray:
    """Latency floor: a plain kafka-python consumer (the daemon's settings) of the same feed, per message
    (time polled - wall-clock stamp), first fifth skipped as warm-up."""
    cfg = _bench_kafka_config(bootstrap, topic, uuid.uuid4().hex[:6])
    consumer = clients.make_consumer(cfg)
    consumer.subscribe([topic])
    while not consumer.assignment():
        consumer.poll(timeout_ms=100)
    go.set()
    loads = orjson.loads
    lats: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for recs in consumer.poll(timeout_ms=100).values():
            now = time.time()
            lats.extend(now - loads(r.value)["ts"] for r in recs)
    consumer.close(autocommit=False)
    return np.asarray(lats[len(lats) // 5 :])


def _tasks(pid: int) -> list[int]:
    """Thread ids of process ``pid`` (Linux /proc); [] once it has exited."""
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except (FileNotFoundError, ProcessLookupError):
        return []


def _place(pid: int, cpus: frozenset[int] | set[int]) -> None:
    """Every thread of process ``pid`` on ``cpus`` (threads it starts later inherit their creator's set)."""
    for tid in _tasks(pid):
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):  # a thread that ended meanwhile
            os.sched_setaffinity(tid, cpus)


class CoreSplit:
    """The latency legs' placement when split: this process (the daemon or the plain consumer) on the first of
    the CPUs it may use, the broker (``broker_pid``) and the feeder on the rest; as a context manager it
    places this process and the broker, and on exit puts both back on every CPU they had. Needs Linux
    ``sched_setaffinity`` and two CPUs or more (:meth:`possible`)."""

    def __init__(self, broker_pid: int) -> None:
        self.broker_pid = broker_pid
        allowed = sorted(os.sched_getaffinity(0))
        self.all = frozenset(allowed)
        self.own = frozenset(allowed[:1])
        self.others = frozenset(allowed[1:])

    @staticmethod
    def possible() -> bool:
        return hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2

    def __enter__(self) -> CoreSplit:
        _place(os.getpid(), self.own)
        _place(self.broker_pid, self.others)
        return self

    def __exit__(self, *exc: object) -> None:
        _place(os.getpid(), self.all)
        _place(self.broker_pid, self.all)


def _latency_legs(
    bootstrap: str,
    model: str,
    topics: tuple[str, str],
    rate: float,
    templates: FeedTemplates,
    seconds: float,
    split: CoreSplit | None,
) -> dict[str, Any]:
    """The daemon's latency leg on ``topics[0]``, then the plain consumer's on ``topics[1]``, each fed at ``rate``
    by its own feeder; with ``split`` this process and the broker are placed for both legs and the feeders run
    on the broker's CPUs. Returns p50/p99 (ms), window count and both feeds' summaries."""
    feed_cpus = split.others if split else None
    placed = split if split is not None else contextlib.nullcontext()
    metrics = _LatencyMetrics()
    with placed:
        with _feeding(topics[0], bootstrap, rate, templates, feed_cpus) as feed:
            _run_daemon(
                bootstrap, model, topics[0], None, stop_after=seconds, metrics=metrics, when_ready=feed.go.set
            )
        with _feeding(topics[1], bootstrap, rate, templates, feed_cpus) as raw_feed:
            raw_lat = _plain_latency(bootstrap, topics[1], seconds, raw_feed.go)
    lat = np.asarray(metrics.latencies[len(metrics.latencies) // 5 :])  # skip the first fifth (warm-up)
    per_reading = np.concatenate(metrics.reading_latencies) if metrics.reading_latencies else np.zeros(0)
    per_reading = per_reading[per_reading.size // 5 :]
    out: dict[str, Any] = {
        "windows": int(lat.size),
        "readings": int(per_reading.size),
        "feed": feed.summary(rate),
        "plain_feed": raw_feed.summary(rate),
    }
    for name, values in (("", lat), ("readings_", per_reading), ("plain_", raw_lat)):
        if values.size:
            out[f"{name}p50_ms"] = round(float(np.percentile(values, 50)) * 1000, 1)
            out[f"{name}p99_ms"] = round(float(np.percentile(values, 99)) * 1000, 1)
    return out


def run_kafka_bench(
    bootstrap: str | None = None,
    model: str | None = None,
    *,
    keys: int = 1000,
    readings: int = 300,  # per key: 300,000 single-reading messages, as the issue measured
    block: int = 32,
    block_rounds: int = 8,  # 8,000 blocks, 256,000 readings: long enough that the final checkpoint is not a fifth of it
    rounds: int = 2,
    peer: bool = True,
    latency_s: float = 10.0,
    latency_cores: str = "both",
    rss_keys: int = 100_000,
    features: int = 6,
    log: Any = print,
) -> dict[str, Any]:
    """Run every measurement and return them as a dict (also printed through ``log``).

    Throughput rows are measured ``rounds`` times, alternating (ceiling, peer, daemon single, daemon
    blocks), and each ratio is taken within a round; the best round of each row is reported next to them.
    ``latency_cores``: ``shared`` (every process on every core), ``split`` (:class:`CoreSplit`) or ``both``,
    shared first."""
    broker = None if bootstrap else TansuBroker().start()
    bootstrap = bootstrap or broker.bootstrap  # type: ignore[union-attr]
    try:
        model, bundle = _bundle(model, features)
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        tag = uuid.uuid4().hex[:6]
        single, blocks = f"bench-single-{tag}", f"bench-block-{tag}"
        live, live_raw = f"bench-live-{tag}", f"bench-live-raw-{tag}"
        live_split, live_split_raw = f"bench-live-split-{tag}", f"bench-live-split-raw-{tag}"
        admin.create_topics(
            [
                NewTopic(t, FEED_PARTITIONS, 1)
                for t in (single, blocks, live, live_raw, live_split, live_split_raw)
            ]
        )
        admin.close()
        res: dict[str, Any] = {
            "keys": keys,
            "window": bundle.window,
            "hidden": bundle.arch.hidden_size,
            "features": len(bundle.features),
            "torch_threads": torch.get_num_threads(),
            "max_poll_records": KafkaConfig().max_poll_records,
            "batch_settings": {  # the daemon's batch and call bounds in this run (KafkaConfig defaults)
                name: getattr(KafkaConfig(), name)
                for name in (
                    "max_batch_bytes",
                    "max_batch_ms",
                )
            },
            "checkpoint_interval_s": 5.0,
            "load_average": os.getloadavg()[0],
        }
        n_single = keys * readings
        ends = _produce(bootstrap, single, _messages(bundle, keys, readings, 1, 1.7e9))
        n_block = keys * block * block_rounds
        block_ends = _produce(bootstrap, blocks, _messages(bundle, keys, block * block_rounds, block, 1.7e9))
        use_peer = peer and bytewax_available()
        if not use_peer:
            log(f"bytewax is not installed ({extra_hint('bench')}): no peer row")
        per_round: list[dict[str, float]] = []
        for r in range(rounds):
            row: dict[str, float] = {"ceiling": _ceiling_rate(bootstrap, single, n_single)}
            if (
                record_path_module.supported()
            ):  # the stricter ceiling: the plain loop given the daemon's record path
                row["ceiling_fast"] = _ceiling_rate(bootstrap, single, n_single, record_path=True)
            if use_peer:
                row["bytewax"] = _bytewax_rate(bootstrap, single, n_single) or 0.0
            secs, _ = _run_daemon(bootstrap, model, single, ends)
            row["single"] = n_single / secs
            secs, _ = _run_daemon(bootstrap, model, blocks, block_ends)
            row["block"] = n_block / secs
            row["single_ratio"] = row["single"] / row["ceiling"]
            row["block_vs_ceiling"] = row["block"] / row["ceiling"]
            if "ceiling_fast" in row:
                row["single_vs_fast"] = row["single"] / row["ceiling_fast"]
            if use_peer:
                row["block_vs_bytewax"] = row["block"] / row["bytewax"]
                row["single_vs_bytewax"] = row["single"] / row["bytewax"]
            per_round.append(row)
            log(
                f"round {r + 1}: ceiling {row['ceiling']:,.0f} msg/s"
                + (f", bytewax {row['bytewax']:,.0f} msg/s" if use_peer else "")
                + (
                    f", with the record path {row['ceiling_fast']:,.0f} msg/s"
                    if "ceiling_fast" in row
                    else ""
                )
                + f", daemon single {row['single']:,.0f} msg/s ({row['single_ratio']:.2f}x ceiling"
                + (f", {row['single_vs_fast']:.2f}x with the record path)" if "ceiling_fast" in row else ")")
                + f", daemon blocks of {block} {row['block']:,.0f} readings/s"
                + (f" ({row['block_vs_bytewax']:.2f}x bytewax)" if use_peer else "")
            )
        res["rounds"] = [{k: round(v, 3) for k, v in row.items()} for row in per_round]

        def best(name: str) -> float:
            return max(row[name] for row in per_round)

        def ratios(name: str) -> list[float]:
            return [round(row[name], 2) for row in per_round]

        res["raw_msgs_per_s"] = round(best("ceiling"))
        res["daemon_msgs_per_s"] = round(best("single"))
        res["block_readings_per_s"] = round(best("block"))
        res["single_ratio"] = ratios("single_ratio")
        res["block_ratio"] = ratios("block_vs_ceiling")
        fast = all("ceiling_fast" in row for row in per_round)
        if fast:
            res["raw_record_path_msgs_per_s"] = round(best("ceiling_fast"))
            res["single_vs_record_path"] = ratios("single_vs_fast")
        if use_peer:
            res["bytewax_msgs_per_s"] = round(best("bytewax"))
            res["block_vs_bytewax"] = ratios("block_vs_bytewax")
        log("")
        log(
            f"{'row (best of ' + str(rounds) + ' rounds)':<44} {'msgs/s':>10} {'readings/s':>11}  ratios per round"
        )
        log(
            f"{'kafka-python ceiling (orjson, count per key)':<44} {best('ceiling'):>10,.0f} {best('ceiling'):>11,.0f}  1"
        )
        if fast:
            log(
                f"{'  the same, with the daemon record path':<44} {best('ceiling_fast'):>10,.0f} "
                f"{best('ceiling_fast'):>11,.0f}  {ratios('single_vs_fast')} = daemon single / this"
            )
        if use_peer:
            log(
                f"{'bytewax KafkaSource -> stateful_map count':<44} {best('bytewax'):>10,.0f} "
                f"{best('bytewax'):>11,.0f}  {ratios('single_vs_bytewax')} = daemon single / bytewax"
            )
        log(
            f"{'anomaly consume, 1 reading/message':<44} {best('single'):>10,.0f} {best('single'):>11,.0f}  "
            f"{ratios('single_ratio')} x ceiling (target >= 0.8)"
        )
        target = "x bytewax (target >= 2)" if use_peer else "x ceiling (target >= 5)"
        log(
            f"{f'anomaly consume, {block} readings/message':<44} {best('block') / block:>10,.0f} "
            f"{best('block'):>11,.0f}  {ratios('block_vs_bytewax' if use_peer else 'block_vs_ceiling')} {target}"
        )

        # half the daemon's rate in its slowest round: a rate it sustains on this machine now
        rate = min(row["single"] for row in per_round) / 2
        templates = FeedTemplates.build(
            keys, bundle.scaler.mean.tolist(), bundle.scaler.scale.tolist(), FEED_PARTITIONS
        )
        split = None
        if latency_cores != "shared":
            if broker is None:
                log("latency with the cores split: skipped (the broker is yours: this bench cannot place it)")
            elif not CoreSplit.possible():
                log("latency with the cores split: skipped (needs two CPUs and Linux sched_setaffinity)")
            else:
                split = CoreSplit(broker.proc.pid)  # type: ignore[union-attr]
        legs: list[tuple[str, CoreSplit | None, tuple[str, str]]] = []
        if latency_cores in ("shared", "both") or split is None:
            legs.append(("", None, (live, live_raw)))
        if split is not None:
            legs.append(("split_", split, (live_split, live_split_raw)))
        res["latency_rate_msgs_per_s"] = round(rate)
        for prefix, placement, topics in legs:
            leg = _latency_legs(bootstrap, model, topics, rate, templates, latency_s, placement)
            res[f"latency_{prefix}windows"] = leg["windows"]
            res[f"latency_{prefix}feed"] = leg["feed"]
            res[f"plain_latency_{prefix}feed"] = leg["plain_feed"]
            res[f"latency_{prefix}readings"] = leg["readings"]
            for q in ("p50", "p99"):
                for who in ("", "readings_", "plain_"):
                    if f"{who}{q}_ms" in leg:
                        res[f"{who}latency_{prefix}{q}_ms"] = leg[f"{who}{q}_ms"]
            where = (
                f"the daemon on CPU {min(placement.own)}, broker and feeder on CPU "
                f"{','.join(map(str, sorted(placement.others)))}"
                if placement
                else "all sharing every core"
            )
            log(
                f"latency at {rate:,.0f} msg/s (half the daemon's slowest round; {where}): daemon p50 "
                f"{leg.get('p50_ms')} ms, p99 {leg.get('p99_ms')} ms over {leg['windows']} windows "
                f"(target p99 <= 100 ms); every reading's decision (anomaly_latency_seconds): p50 "
                f"{leg.get('readings_p50_ms')} ms, p99 {leg.get('readings_p99_ms')} ms over {leg['readings']} "
                f"readings; a plain kafka-python consumer of the same feed, placed alike: p50 "
                f"{leg.get('plain_p50_ms')} ms, p99 {leg.get('plain_p99_ms')} ms"
            )
            for who, fed in (("daemon", leg["feed"]), ("plain consumer", leg["plain_feed"])):
                log(_feed_line(who, fed))
        if rss_keys:
            res.update({f"rss_{k}": v for k, v in _rss(bootstrap, model, bundle, rss_keys).items()})
            log(
                f"memory: {res['rss_keys']:,} keys held -> RSS {res['rss_rss_mb']:,} MB "
                f"(peak {res['rss_peak_rss_mb']:,} MB)"
            )
        res["load_average_end"] = os.getloadavg()[0]
        log(f"load average (1 min) at start {res['load_average']:.1f}, at end {res['load_average_end']:.1f}")
        return res
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":  # python -m anomaly.bench_kafka [KEYS_FOR_RSS]
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    torch.set_num_threads(1)  # as `anomaly --threads 1` does
    print(json.dumps(run_kafka_bench(rss_keys=int(sys.argv[1]) if len(sys.argv) > 1 else 100_000), indent=2))

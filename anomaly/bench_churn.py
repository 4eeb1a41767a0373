"""Key-churn benchmark of the daemon: memory and checkpoint time must stay flat while new keys keep arriving
and ``engine.max_keys`` evicts old ones (every evicted key must leave every structure, not only the engine's).

Two ``anomaly consume`` processes (max_keys = ``max_keys``, same model and settings, each its own input topic and
consumer group) run side by side on a Tansu broker the bench starts (or yours):

* the **churned** daemon reads rounds of ``round_keys`` messages, each of a key never seen before;
* the **control** daemon reads, each round, only the keys the churned daemon ends the round holding (read from
  its changelog; a daemon consumes its partitions unevenly, so they are spread unevenly, and differently every
  round), renamed ``c...`` for ``r...``, on the same partitions, with the same timestamps and values, and the
  same probes: the same state held and written, after ``max_keys`` evictions a round instead of ``round_keys``
  (a churn history 300 times smaller at the defaults).

After each round the churned daemon is idle and committed (an idle daemon compacts its state store and, after
that many messages, gives the C heap's free memory back, see ``anomaly.kafka.daemon``); then its RSS
(``/proc/<pid>/status``) once it has settled (that housekeeping runs up to a second after the round's last
message: sampled at the instant the round was committed, as until session 21, RSS was before or after it by
chance; that instant's RSS is kept beside it), where it lies (C heap, other anonymous, files), ``VmHWM`` (the
peak so far: ``max_keys`` plus one engine batch's new keys), the round's own checkpoints, how long the round took
and the CPU seconds of the daemon and of the broker are taken.

Then ``probes`` **pairs** of probe checkpoints (after ``WARMUP_PAIRS`` not counted): one reading on every
partition of the churned daemon, so that its next checkpoint writes the state of every key held, and the same on
the control, next to it, alternating which goes first (ABBA). Both daemons checkpoint every
``checkpoint_interval_s`` (0.1 s: a probe takes about 0.25 s, so 100 pairs a round fit in about 50 s).
While probes are taken, the two daemons run on one core and the broker and the bench on another (where there are
two: :class:`_Placement`), and the daemon not probed is stopped (SIGSTOP) until the probe's checkpoint is
committed, so that its poll loop, timer ticks and heartbeats cannot land in the measured checkpoint; both
daemons are treated alike. Each probe gives the whole checkpoint time (``anomaly_checkpoint_duration_seconds``,
until the transaction's commit ended; an idle stream's timer ticks are not observed there), its parts (the
daemon's own work: key walk, snapshot, compression, handing the records to the producer,
``anomaly_checkpoint_state_seconds`` and its loop-thread CPU time; waiting on the broker: the rest) and the
daemon process's page faults. After each churned probe the bench commits a plain transaction of the same size
through its own producer: the broker round trip alone.

The headline, fixed before the quiet-window runs (README "Key churn"): per round, the median over the pairs of
churned / control (whole checkpoint) with its distribution-free 95 % interval (``anomaly.bench_stats``); target:
max/min of those medians over the rounds <= 1.10. Whatever the shared machine does to a moment, it does to both
probes of a pair. Also printed: last/first, the change fitted over every pair (least squares of the log ratios on
the round) with its interval, the same for each part, the headline's noise floor (its bootstrap distribution if
nothing changed between the rounds), and the raw per-round medians of each daemon as before (max/min and
last/first), which the machine's own drift moves. A warm-up round is not counted.

``aa``: the A/A check of the noise floor: the churned daemon gets no churn (each round only the ``max_keys`` keys
it then holds, as the control does; the churn messages go to a topic nobody reads), so whatever the headline
shows is measurement noise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata

from anomaly.bench_stats import flatness, noise_floor, paired, trend
from anomaly.bench_stats import median as _median
from anomaly.config import KafkaConfig, changelog_topic
from anomaly.kafka.tansu import TansuBroker, free_port

PARTITIONS = 4
WARMUP_PAIRS = 2  # probe pairs at the start of each round that are not counted
POLL_S = 0.05  # how often the bench asks whether a probe's checkpoint has been committed and settled
# the idle RSS is taken once it has settled (see _settled_rss_mb): not before this long after the round was
# committed (the daemon's idle housekeeping waits trim_interval_s = 1 s between runs), then when it has stayed
# within SETTLE_MB for SETTLE_WINDOW_S, sampled every SETTLE_POLL_S
SETTLE_AFTER_S = 2.0
SETTLE_WINDOW_S = 2.0
SETTLE_MB = 0.5
SETTLE_POLL_S = 0.1
# the parts of a probe checkpoint compared pair by pair, churned / control
PAIRED_PARTS = {
    "ms": "whole checkpoint",
    "state_ms": "own part",
    "cpu_ms": "own part CPU",
    "broker_ms": "waiting on the broker",
}
# per-round medians reported raw (each daemon on its own, round against round), as before the pairs
RAW_ROWS = {
    "full_checkpoint_ms": "churned checkpoint",
    "full_state_ms": "its own part",
    "full_state_cpu_ms": "its own part CPU",
    "full_broker_ms": "its broker wait",
    "control_checkpoint_ms": "control checkpoint",
    "control_state_cpu_ms": "control own part CPU",
    "plain_txn_ms": "plain transaction",
    "rss_mb": "RSS idle",
    "rss_at_commit_mb": "RSS when committed",
    "control_rss_mb": "control RSS",
    "checkpoint_ms": "the rounds' own checkpoints",
}


def _metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        out = {}
        for line in resp.read().decode().splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory now (``VmRSS``) or its peak over the process's life (``VmHWM``), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


def _rss_parts_mb(pid: int) -> dict[str, float]:
    """Where the resident memory lies (``/proc/<pid>/smaps``), MB: the C heap (``[heap]``, the main arena that
    ``trim_heap`` gives back), other anonymous memory (thread arenas, large arrays, Python's object arenas,
    stacks) and file-backed pages (libraries, torch)."""
    parts = {"heap": 0, "anon": 0, "file": 0}
    kind = "anon"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(maxsplit=6)
        if head and not head[0].endswith(":"):  # a mapping's first line: address range, perms, ..., path
            path = head[5] if len(head) > 5 else ""
            kind = "heap" if path == "[heap]" else "file" if path.startswith("/") else "anon"
        elif head[:1] == ["Rss:"]:
            parts[kind] += int(head[1])
    return {name: round(kb / 1024, 1) for name, kb in parts.items()}


def _settled_rss_mb(
    pid: int,
    since: float,
    *,
    after_s: float = SETTLE_AFTER_S,
    window_s: float = SETTLE_WINDOW_S,
    tolerance_mb: float = SETTLE_MB,
    timeout_s: float = 30.0,
    clock: Any = time.monotonic,
    sleep: Any = time.sleep,
    rss: Any = _rss_mb,
) -> tuple[float, float]:
    """The daemon's idle RSS once it has settled, and when (seconds after ``since``): an idle daemon compacts
    its store and trims its heap at its first idle poll at least ``trim_interval_s`` (1 s) after the last one,
    so up to a second after the round's last message; sampled at a fixed instant, RSS was sometimes before that
    housekeeping and sometimes after. Waits at least ``after_s`` after ``since``, then until the RSS sampled
    every ``SETTLE_POLL_S`` has stayed within ``tolerance_mb`` for ``window_s`` (at most ``timeout_s``: the
    last sample then)."""
    samples: list[tuple[float, float]] = []
    while True:
        now = clock()
        samples.append((now, rss(pid)))
        recent = [mb for t, mb in samples if t >= now - window_s]
        if now - since >= after_s and samples[0][0] <= now - window_s:
            if max(recent) - min(recent) <= tolerance_mb or now - since >= timeout_s:
                return samples[-1][1], now - since
        sleep(SETTLE_POLL_S)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _minor_faults(pid: int) -> int:
    """Minor page faults of a process so far, all threads (``/proc/<pid>/stat`` field 10)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of a process onto ``cpus`` (threads started later inherit it from the thread starting
    them). A thread that ended meanwhile is skipped."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass


class _Placement:
    """Where the processes run while probes are taken: both daemons on one core, the broker and the bench on
    another, so a pair's two checkpoints run on the same core and the broker's and the bench's work does not
    preempt them. Only on a machine with at least two cores of ours; undone after the probes."""

    def __init__(self, daemon_pids: list[int], other_pids: list[int]) -> None:
        self.allowed = sorted(os.sched_getaffinity(0))
        self.daemon_pids, self.other_pids = daemon_pids, other_pids
        self.active = len(self.allowed) >= 2
        self.cores = (self.allowed[0], self.allowed[1]) if self.active else None

    def pin(self) -> None:
        if self.cores is not None:
            for pid in self.daemon_pids:
                _pin(pid, {self.cores[0]})
            for pid in self.other_pids:
                _pin(pid, {self.cores[1]})

    def unpin(self) -> None:
        if self.cores is not None:
            for pid in self.daemon_pids + self.other_pids:
                _pin(pid, set(self.allowed))


def _send_keys(bootstrap: str, topic: str, prefix: str, t0: float, keys: range, features: int) -> None:
    """One message for each new key ``<prefix><i>``, i in ``keys``, at event time ``t0 + i``."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=262_144, acks=1)
    values = [round(0.1 * i, 3) for i in range(features)]
    for i in keys:
        key = f"{prefix}{i}"
        body = {"key": key, "ts": t0 + i, "values": values}
        producer.send(topic, key=key.encode(), value=json.dumps(body, separators=(",", ":")).encode())
    producer.flush()
    producer.close()


def _send_named(bootstrap: str, topic: str, keys: dict[int, list[tuple[str, float]]], features: int) -> None:
    """One message per ``(key, ts)`` of ``keys[p]``, on partition ``p``."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks=1)
    values = [round(0.1 * i, 3) for i in range(features)]
    for p, named in sorted(keys.items()):
        for key, ts in named:
            body = {"key": key, "ts": ts, "values": values}
            producer.send(topic, key=key.encode(), value=json.dumps(body).encode(), partition=p)
    producer.flush()
    producer.close()


def _held_keys(bootstrap: str, changelog: str, topic: str) -> dict[int, list[str]]:
    """The keys in the latest checkpoint of every partition of ``topic`` (from its changelog): what the daemon
    holds per partition once it has checkpointed (an eviction makes its partition's next checkpoint due)."""
    from anomaly.engine.state import StateStore
    from anomaly.kafka.changelog import decompress_state, latest_records

    reader = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(changelog, p) for p in sorted(reader.partitions_for_topic(changelog) or ())]
        reader.assign(tps)
        reader.seek_to_beginning(*tps)
        end = reader.end_offsets(tps)
        records: list[Any] = []
        deadline = time.monotonic() + 60
        while any(reader.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
            for batch in reader.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        reader.close(autocommit=False)
    heads, _, _ = latest_records(records, lambda pid: pid.startswith(f"{topic}:"), None)
    out: dict[int, list[str]] = {}
    for pid, (head, payload) in heads.items():  # the churn bench's snapshots are never chunked
        names = StateStore.read_snapshot(decompress_state(head, payload))[0]["keys"] if payload else []
        out[int(pid.rsplit(":", 1)[1])] = list(names)
    return out


def _send_probe(producer: KafkaProducer, topic: str, r: int, ts: float, features: int) -> None:
    """One reading on every partition at once: the next checkpoint then writes every partition's state, i.e. the
    state of every key held, so probe checkpoints are alike from round to round (the round's own checkpoints
    write whichever partitions happened to be dirty when the timer fired). Through the bench's one probe
    producer (a new producer per probe cost the bench ~50 ms of CPU next to the checkpoint it measures)."""
    values = [round(0.1 * i, 3) for i in range(features)]
    for p in range(PARTITIONS):
        body = {"key": f"probe{r}-{p}", "ts": ts, "values": values}
        producer.send(topic, value=json.dumps(body, separators=(",", ":")).encode(), partition=p)
    producer.flush()


class _PlainTransaction:
    """The broker round trip alone: a transactional producer of the bench's own writes four records of
    ``kib`` KiB in all (random bytes: as incompressible as compressed state) to a compacted topic, adds an
    offset and commits, as a checkpoint does without the daemon around it."""

    def __init__(self, bootstrap: str, topic: str, source: str, kib: float = 46.0) -> None:
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=topic, acks="all")
        self.producer.init_transactions()
        self.topic, self.source, self.n = topic, source, 0
        self.values = [os.urandom(int(kib * 256)) for _ in range(4)]

    def commit_ms(self) -> dict[str, float]:
        """ms in all and per step: the records sent and flushed, the offsets added, the commit."""
        t0 = time.perf_counter()
        self.producer.begin_transaction()
        for i, value in enumerate(self.values):
            self.producer.send(self.topic, key=f"p{i}".encode(), value=value)
        self.producer.flush()
        t1 = time.perf_counter()
        offsets = {TopicPartition(self.source, 0): OffsetAndMetadata(self.n, "", -1)}
        self.producer.send_offsets_to_transaction(offsets, self.topic)
        t2 = time.perf_counter()
        self.producer.commit_transaction()
        t3 = time.perf_counter()
        self.n += 1
        return {
            "ms": 1000 * (t3 - t0),
            "send_ms": 1000 * (t1 - t0),
            "offsets_ms": 1000 * (t2 - t1),
            "commit_ms": 1000 * (t3 - t2),
        }

    def close(self) -> None:
        self.producer.close(timeout=5)


class _Daemon:
    """One ``anomaly consume`` process of the bench on its own input topic and consumer group, with a consumer
    that watches the group's committed offsets (it never joins the group)."""

    def __init__(
        self,
        bootstrap: str,
        model: str,
        topic: str,
        group: str,
        out: str,
        max_keys: int,
        checkpoint_interval_s: float,
    ) -> None:
        self.bootstrap, self.topic, self.group = bootstrap, topic, group
        self.port = free_port()
        self.want = 0  # messages sent to its topic so far
        env = {**os.environ, "ANOMALY_ENGINE_MAX_KEYS": str(max_keys), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
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
                group,
                "--alerts-topic",
                out,
                "--dead-letter-topic",
                out,
                "--metrics-port",
                str(self.port),
                "--max-poll-interval-ms",
                "3000",
                "--session-timeout-ms",
                "3000",
                "--checkpoint-interval",
                str(checkpoint_interval_s),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.watcher = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        self.last: dict[str, float] = {}  # /metrics when the last probe (or round) was taken
        self.interval_s = checkpoint_interval_s

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2)
                self.last = _metrics(self.port)
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"the daemon of group {self.group} was not ready within {timeout_s:.0f}s")

    def committed(self) -> int:
        """The group's committed offsets, summed (``committed`` asks the coordinator each time for partitions
        that are not assigned to the asking consumer)."""
        parts = self.watcher.partitions_for_topic(self.topic) or set()
        return sum(self.watcher.committed(TopicPartition(self.topic, p)) or 0 for p in parts)

    def wait_committed(self, consumed: bool = True) -> float:
        """Wait until the group committed every message sent; returns when the daemon had consumed them (its
        ``anomaly_messages_consumed_total``, monotonic clock, when ``consumed``): consuming vs committing after
        it."""
        consumed_at = None
        while self.committed() < self.want:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with status {self.proc.returncode}")
            if (
                consumed
                and consumed_at is None
                and _metrics(self.port).get("anomaly_messages_consumed_total", 0.0) >= self.want
            ):
                consumed_at = time.monotonic()
            time.sleep(POLL_S if not consumed else 0.2)
        return consumed_at if consumed_at is not None else time.monotonic()

    def probe(
        self, producer: KafkaProducer, r: int, ts: float, features: int, other: _Daemon | None = None
    ) -> dict[str, float] | None:
        """One probe and the checkpoint it causes: its time and parts, or None when the probe's readings were
        split over two checkpoints (not alike: left out). ``other`` (the other daemon) is stopped (SIGSTOP) while
        it runs: its poll loop (a fetch every 50 ms), idle timer ticks and heartbeats then cannot land in this
        checkpoint; each daemon is stopped during the other's probes alike, a fraction of a second at a time
        (well within the session timeout)."""
        if other is not None:
            os.kill(other.proc.pid, signal.SIGSTOP)
        try:
            return self._probe(producer, r, ts, features)
        finally:
            if other is not None:
                os.kill(other.proc.pid, signal.SIGCONT)

    def _probe(self, producer: KafkaProducer, r: int, ts: float, features: int) -> dict[str, float] | None:
        faults0 = _minor_faults(self.proc.pid)
        _send_probe(producer, self.topic, r, ts, features)
        self.want += PARTITIONS
        # Hands off while the daemon reads the probe (a fetch waits up to 50 ms) and its checkpoint timer fires
        # (within one interval): asking the broker for committed offsets or the daemon for /metrics during the
        # checkpoint competed with it for the core and the daemon's GIL, and made single probes vary.
        time.sleep(self.interval_s + 0.1)
        self.wait_committed(consumed=False)
        # the transaction's commit ends in a helper thread; the loop thread settles it (and observes the
        # checkpoint's metrics) at its next poll, within one fetch wait
        deadline = time.monotonic() + 2.0
        while True:
            after = _metrics(self.port)
            d = {name: after.get(name, 0.0) - self.last.get(name, 0.0) for name in after}
            if d.get("anomaly_checkpoint_duration_seconds_count", 0.0) >= 1 or time.monotonic() > deadline:
                break
            time.sleep(POLL_S / 2)
        faults = _minor_faults(self.proc.pid) - faults0
        self.last = after
        if d.get("anomaly_checkpoint_state_seconds_count", 0.0) != 1:
            return None
        out = {
            # an idle stream's timer ticks are not observed (anomaly.metrics): this is the probe's checkpoint
            "ms": 1000 * d["anomaly_checkpoint_duration_seconds_sum"],
            "checkpoints": d["anomaly_checkpoint_duration_seconds_count"],
            "faults": float(faults),  # the daemon process's, from the probe sent to its checkpoint committed
            "state_ms": 1000 * d["anomaly_checkpoint_state_seconds_sum"],
            "commit_ms": 1000 * d.get("anomaly_checkpoint_commit_seconds_sum", float("nan")),
            "cpu_ms": 1000 * d.get("anomaly_checkpoint_state_cpu_seconds_total", float("nan")),
            "kb": d["anomaly_checkpoint_state_bytes_total"] / 1024,
        }
        # the state part runs partly on the loop thread (snapshots), partly in the helper thread that ends the
        # transaction (compression, send), inside the commit's time: the rest is waiting on the broker
        out["broker_ms"] = out["ms"] - out["state_ms"]  # flushes + offsets + commit
        out["loop_ms"] = 1000 * d.get("anomaly_checkpoint_loop_seconds_sum", float("nan"))  # the loop's stall
        return out

    def close(self) -> None:
        self.watcher.close(autocommit=False)
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # in case the bench stopped while it was stopped
            self.proc.terminate()
            self.proc.wait(60)


def _medians(probes: list[dict[str, float]], prefix: str) -> dict[str, float]:
    """Per-round medians of the probes' parts (``<prefix>_checkpoint_ms``, ``_state_ms``, ...)."""
    names = {
        "ms": "checkpoint_ms",
        "state_ms": "state_ms",
        "cpu_ms": "state_cpu_ms",
        "commit_ms": "commit_ms",
    }
    names |= {"loop_ms": "loop_ms", "broker_ms": "broker_ms", "kb": "state_kb", "faults": "faults"}
    return {f"{prefix}_{out}": round(_median([p[key] for p in probes]), 2) for key, out in names.items()}


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b > 0 else float("nan")


def run_churn_bench(
    bootstrap: str | None = None,
    model: str | None = None,
    *,
    round_keys: int = 300_000,
    rounds: int = 5,
    max_keys: int = 1000,
    features: int = 3,
    probes: int = 100,
    checkpoint_interval_s: float = 0.1,
    aa: bool = False,
    log: Any = print,
) -> dict[str, Any]:
    """Warm-up + ``rounds`` rounds of ``round_keys`` new keys; per-round RSS, checkpoint times, and the churned
    daemon's probe checkpoints next to a control daemon's (the same keys held, without the churn)."""
    from anomaly.bench_kafka import _bundle

    broker = None if bootstrap else TansuBroker().start()
    bootstrap = bootstrap or broker.bootstrap  # type: ignore[union-attr]
    daemons: list[_Daemon] = []
    plain = None
    probe_producer = None
    try:
        model, bundle = _bundle(model, features)
        n_feat = len(bundle.features)
        tag = uuid.uuid4().hex[:6]
        topic, control_topic, out = f"churn-{tag}", f"churn-control-{tag}", f"churn-out-{tag}"
        unread = f"churn-unread-{tag}"  # A/A: the churn messages, read by nobody
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics(
            [
                NewTopic(topic, PARTITIONS, 1),
                NewTopic(control_topic, PARTITIONS, 1),
                NewTopic(out, 1, 1),
                *([NewTopic(unread, PARTITIONS, 1)] if aa else []),
                NewTopic(f"{out}-plain", 1, 1, topic_configs={"cleanup.policy": "compact"}),
            ]
        )
        admin.close()
        plain = _PlainTransaction(bootstrap, f"{out}-plain", topic)
        probe_producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1)
        interval = checkpoint_interval_s
        churned = _Daemon(bootstrap, model, topic, f"churn-{tag}", out, max_keys, interval)
        daemons.append(churned)
        control = _Daemon(bootstrap, model, control_topic, f"churn-control-{tag}", out, max_keys, interval)
        daemons.append(control)
        churned.wait_ready()
        control.wait_ready()
        placement = _Placement(
            [churned.proc.pid, control.proc.pid],
            [os.getpid()] + ([broker.proc.pid] if broker is not None and broker.proc else []),
        )
        rows = []
        before = churned.last
        for r in range(rounds + 1):
            t0 = time.monotonic()
            cpu0 = _cpu_s(churned.proc.pid)
            broker_cpu0 = _cpu_s(broker.proc.pid) if broker is not None and broker.proc else 0.0
            t_round = 1.7e9 + r * round_keys
            if aa:
                # A/A: the "churned" daemon gets only the max_keys keys it then holds, the control's treatment
                # (no churn); the round's other messages go to a topic nobody reads (the same load on the broker)
                _send_keys(bootstrap, topic, f"r{r}-k", t_round, range(max_keys), n_feat)
                _send_keys(bootstrap, unread, f"r{r}-k", t_round, range(max_keys, round_keys), n_feat)
            else:
                _send_keys(bootstrap, topic, f"r{r}-k", t_round, range(round_keys), n_feat)
            sent_s = time.monotonic() - t0
            churned.want += max_keys if aa else round_keys
            consumed_at = churned.wait_committed()
            committed_at = time.monotonic()
            rss_at_commit = _rss_mb(churned.proc.pid)  # the instant sampled until session 21
            round_s, daemon_cpu_s = time.monotonic() - t0, _cpu_s(churned.proc.pid) - cpu0
            broker_cpu_s = _cpu_s(broker.proc.pid) - broker_cpu0 if broker and broker.proc else float("nan")
            now = _metrics(churned.port)
            churned.last = now
            # the control gets the keys the churned daemon now holds, on the same partitions, with the same
            # timestamps and values, named alike ("c" for "r"): the same state, without the churn before it
            held = _held_keys(bootstrap, changelog_topic(KafkaConfig(group_id=churned.group), topic), topic)
            twins = {
                p: [
                    ("c" + k[1:], t_round + int(k.rsplit("-k", 1)[1]))
                    for k in names
                    if k.startswith(f"r{r}-k")
                ]
                for p, names in held.items()
            }
            _send_named(bootstrap, control_topic, twins, n_feat)
            control.want += sum(map(len, twins.values()))
            control.wait_committed(consumed=False)
            control.last = _metrics(control.port)
            rss_idle, settle_s = _settled_rss_mb(churned.proc.pid, committed_at)
            d = {name: now.get(name, 0.0) - before.get(name, 0.0) for name in now}
            n = d["anomaly_checkpoint_duration_seconds_count"]
            s = d["anomaly_checkpoint_duration_seconds_sum"]
            ns = d.get("anomaly_checkpoint_state_seconds_count", 0.0)
            row: dict[str, Any] = {
                "round": r,
                "rss_mb": round(rss_idle, 1),  # settled: after the idle housekeeping
                "rss_settle_s": round(settle_s, 1),  # when, after the round was committed
                "rss_at_commit_mb": round(rss_at_commit, 1),  # the instant the round was committed
                "rss_parts_mb": _rss_parts_mb(churned.proc.pid),  # heap, other anonymous, file-backed
                "peak_rss_mb": round(_rss_mb(churned.proc.pid, "VmHWM"), 1),  # the process's peak so far
                "control_rss_mb": round(_rss_mb(control.proc.pid), 1),
                "held_by_partition": [len(twins.get(p, ())) for p in range(PARTITIONS)],
                "checkpoint_ms": round(1000 * s / max(n, 1), 1),
                "checkpoints": int(n),
                # idle checkpoints (nothing processed since the last) cost ~nothing but dilute the mean by a
                # number that varies per round: the mean over checkpoints that wrote state leaves them out
                "checkpoints_with_state": int(ns),
                "state_checkpoint_ms": round(1000 * s / max(ns, 1), 1),
                "state_ms": round(1000 * d.get("anomaly_checkpoint_state_seconds_sum", 0.0) / max(ns, 1), 2),
                "state_kb": round(d.get("anomaly_checkpoint_state_bytes_total", 0.0) / 1024 / max(ns, 1), 1),
                "keys_held": int(now.get("anomaly_keys_held", 0)),
                "seconds": round(round_s, 1),
                "consumed_seconds": round(consumed_at - t0, 1),  # until the daemon had consumed the round
                "send_seconds": round(sent_s, 1),  # the bench's own producer, inside "seconds"
                "daemon_cpu_s": round(daemon_cpu_s, 1),
                "broker_cpu_s": round(broker_cpu_s, 1),  # nan: a broker of yours, not measured
            }
            # Like for like: probes that make every partition dirty, so each probe's checkpoint writes the state
            # of every key held (max_keys of them), alternating between the two daemons (ABBA order), the
            # control's next to the churned one's, under the same load: a pair. The first WARMUP_PAIRS pairs of a
            # round are not counted (the churned daemon trimmed its heap after the round, the control, which read
            # 1,000 messages, did not: a checkpoint after a trim faults its buffers back in).
            n_pairs = probes if r else min(probes, 10)
            placement.pin()
            t_probes = time.monotonic()
            got: dict[str, list[dict[str, float]]] = {"churned": [], "control": []}
            pairs: list[tuple[dict[str, float], dict[str, float]]] = []
            plain_ms: list[dict[str, float]] = []
            for j in range(-WARMUP_PAIRS, n_pairs):
                order = [("churned", churned), ("control", control)]
                taken: dict[str, dict[str, float] | None] = {}
                for name, daemon in order if j % 2 == 0 else order[::-1]:
                    ts = 1.7e9 + (r + 1) * round_keys + j + WARMUP_PAIRS
                    other = control if daemon is churned else churned
                    taken[name] = daemon.probe(probe_producer, r, ts, n_feat, other)
                    if daemon is churned and taken[name] is not None and j >= 0:
                        plain_ms.append(plain.commit_ms())  # the daemon is idle again: the broker alone
                if j < 0:
                    continue
                for name, probe in taken.items():
                    if probe is not None:
                        got[name].append(probe)
                a, b = taken["churned"], taken["control"]
                if a is not None and b is not None:
                    pairs.append((a, b))
            placement.unpin()
            row["probes"] = len(got["churned"])
            row["control_probes"] = len(got["control"])
            row["probe_parts"] = {  # each probe's parts, in order
                name: {
                    part: [round(p[part], 3) for p in got[name]]
                    for part in ("state_ms", "cpu_ms", "commit_ms")
                }
                for name in got
            }
            row["probe_checkpoint_ms"] = [round(p["ms"], 2) for p in got["churned"]]  # each probe's, in order
            row["control_probe_checkpoint_ms"] = [round(p["ms"], 2) for p in got["control"]]
            row |= _medians(got["churned"], "full")
            row |= _medians(got["control"], "control")
            row["churned_over_control"] = _ratio(row["full_checkpoint_ms"], row["control_checkpoint_ms"])
            row["pairs"] = len(pairs)
            # per pair: churned / control, of the whole checkpoint and of its parts
            row["pair_ratios"] = {part: [_ratio(a[part], b[part]) for a, b in pairs] for part in PAIRED_PARTS}
            row["paired"] = {part: paired(row["pair_ratios"][part]).as_dict() for part in PAIRED_PARTS}
            row["pair_ratio_median"] = row["paired"]["ms"]["median"]
            row["plain_txn_ms"] = round(_median([x["ms"] for x in plain_ms]), 2)
            for part in ("send_ms", "offsets_ms", "commit_ms"):
                row[f"plain_txn_{part}"] = round(_median([x[part] for x in plain_ms]), 2)
            row["plain_txn_each_ms"] = [round(x["ms"], 2) for x in plain_ms]
            row["probe_seconds"] = round(time.monotonic() - t_probes, 1)
            before = churned.last
            rows.append(row)
            label = "warm-up" if r == 0 else f"round {r}"
            pm = row["paired"]["ms"]
            log(
                f"churn {label}: {round_keys:,} new keys in {row['seconds']} s ({row['send_seconds']} s sending, "
                f"consumed after {row['consumed_seconds']} s; CPU s: daemon {row['daemon_cpu_s']}, broker "
                f"{row['broker_cpu_s']}); RSS {row['rss_mb']} MB idle, settled after {row['rss_settle_s']} s ({row['rss_at_commit_mb']} MB when committed; "
                f"heap {row['rss_parts_mb']['heap']}, other anonymous {row['rss_parts_mb']['anon']}, files "
                f"{row['rss_parts_mb']['file']} MB; peak so far {row['peak_rss_mb']} MB; control "
                f"{row['control_rss_mb']} MB); keys held {row['keys_held']:,} per partition "
                f"{row['held_by_partition']}; the round's checkpoints: mean {row['checkpoint_ms']} ms over "
                f"{row['checkpoints']} ({row['state_checkpoint_ms']} ms over the {row['checkpoints_with_state']} that "
                f"wrote state, own part {row['state_ms']} ms, {row['state_kb']} KiB)"
            )
            log(
                f"  probes ({row['pairs']} pairs, {row['probe_seconds']} s): checkpoint of every key held, median "
                f"churned {row['full_checkpoint_ms']} ms (own part {row['full_state_ms']} ms, CPU "
                f"{row['full_state_cpu_ms']} ms, {row['full_faults']:.0f} page faults; broker {row['full_broker_ms']} "
                f"ms), control {row['control_checkpoint_ms']} ms (own {row['control_state_ms']} ms, CPU "
                f"{row['control_state_cpu_ms']} ms, {row['control_faults']:.0f} faults; broker "
                f"{row['control_broker_ms']} ms); churned/control: median of pairs {pm['median']:.3f} "
                f"[95 % {pm['lo']:.3f}-{pm['hi']:.3f}], own CPU {row['paired']['cpu_ms']['median']:.3f}, broker "
                f"{row['paired']['broker_ms']['median']:.3f}; medians' ratio {row['churned_over_control']}; plain "
                f"transaction {row['plain_txn_ms']} ms"
            )
            log(f"  each probe, churned: {row['probe_checkpoint_ms']}")
            log(f"  each probe, control: {row['control_probe_checkpoint_ms']}")
        measured = rows[1:]

        def flat(name: str) -> float:
            return round(flatness([x[name] for x in measured])[0], 3)

        def last_first(name: str) -> float:
            return round(flatness([x[name] for x in measured])[1], 3)

        res: dict[str, Any] = {
            "round_keys": round_keys,
            "rounds": rounds,
            "max_keys": max_keys,
            "probes": probes,
            "warmup_pairs": WARMUP_PAIRS,
            "checkpoint_interval_s": checkpoint_interval_s,
            "aa": aa,
            "placement": {"daemons_core": placement.cores[0], "broker_and_bench_core": placement.cores[1]}
            if placement.cores
            else None,
            "other_daemon_stopped_during_a_probe": True,
            "rows": rows,
        }
        # The headline (decided before the runs; README "Key churn"): max/min over the measured rounds of the
        # per-round median of the paired ratios churned/control of the whole probe checkpoint, target <= 1.10.
        # The pairs cancel what the machine does to a round (the control alone moved 11-17 % between rounds);
        # each round's 95 % interval says how far its median can be trusted.
        meds = [x["paired"]["ms"]["median"] for x in measured]
        res["headline"] = {
            "statistic": "max/min of the per-round median of paired ratios churned/control (probe checkpoint)",
            "per_round": meds,
            "per_round_ci95": [[x["paired"]["ms"]["lo"], x["paired"]["ms"]["hi"]] for x in measured],
            "max_over_min": round(flatness(meds)[0], 3),
            "last_over_first": round(flatness(meds)[1], 3),
            "met": flatness(meds)[0] <= 1.10,
            "trend": trend([x["pair_ratios"]["ms"] for x in measured]).as_dict(),
            # added beside it: the same statistic's spread if nothing changed between the rounds (bootstrap)
            "noise_floor": noise_floor([x["pair_ratios"]["ms"] for x in measured]).as_dict(),
        }
        res["paired_flatness"] = {
            part: {
                "per_round": [x["paired"][part]["median"] for x in measured],
                "max_over_min": round(flatness([x["paired"][part]["median"] for x in measured])[0], 3),
                "last_over_first": round(flatness([x["paired"][part]["median"] for x in measured])[1], 3),
                "trend": trend([x["pair_ratios"][part] for x in measured]).as_dict(),
            }
            for part in PAIRED_PARTS
        }
        res["pooled_pair_ratio"] = paired([q for x in measured for q in x["pair_ratios"]["ms"]]).as_dict()
        # the raw statistics, as before: each daemon's own per-round medians, RSS
        res["raw"] = {
            name: {
                "per_round": [x[name] for x in measured],
                "max_over_min": flat(name),
                "last_over_first": last_first(name),
            }
            for name in RAW_ROWS
        }
        res["rss_flatness"] = flat("rss_mb")
        res["full_checkpoint_flatness"] = flat("full_checkpoint_ms")
        res["peak_rss_mb"] = measured[-1]["peak_rss_mb"]
        h, raw = res["headline"], res["raw"]
        log(
            f"churn, headline (target <= 1.10): churned/control, median of pairs per round {h['per_round']} "
            f"(95 % intervals {h['per_round_ci95']}): max/min {h['max_over_min']:.3f}, last/first "
            f"{h['last_over_first']:.3f} -> {'met' if h['met'] else 'missed'}; fitted change over the rounds "
            f"{h['trend']['change']:.3f} [95 % {h['trend']['lo']:.3f}-{h['trend']['hi']:.3f}] from "
            f"{h['trend']['pairs']} pairs; all pairs pooled {res['pooled_pair_ratio']['median']:.3f}"
        )
        nf = h["noise_floor"]
        log(
            f"churn, the headline's noise floor (bootstrap of each round's pairs, no change between the rounds): "
            f"max/min median {nf['median']:.3f}, 95 % {nf['p95']:.3f}, above {nf['limit']:.2f} in "
            f"{100 * nf['p_over']:.1f} % of {nf['draws']} draws"
        )
        log(
            "churn, paired parts (max/min of per-round medians; fitted change): "
            + "; ".join(
                f"{PAIRED_PARTS[part]} {v['max_over_min']:.3f} ({v['trend']['change']:.3f} "
                f"[{v['trend']['lo']:.3f}-{v['trend']['hi']:.3f}])"
                for part, v in res["paired_flatness"].items()
            )
        )
        log(
            "churn, raw per-round medians, max/min (last/first): "
            + "; ".join(
                f"{RAW_ROWS[name]} {v['max_over_min']:.3f} ({v['last_over_first']:.3f})"
                for name, v in raw.items()
            )
            + f"; peak RSS of the churned daemon {res['peak_rss_mb']} MB"
        )
        return res
    finally:
        if probe_producer is not None:
            probe_producer.close()
        if plain is not None:
            plain.close()
        for daemon in daemons:
            daemon.close()
        if broker is not None:
            broker.stop()

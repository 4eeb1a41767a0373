"""Key-churn benchmark of the daemon: memory and checkpoint time must stay flat while new keys keep arriving
and ``engine.max_keys`` evicts old ones (every evicted key must leave every structure, not only the engine's).

One ``anomaly consume`` process (max_keys = ``max_keys``) reads rounds of ``round_keys`` messages, each of a key
never seen before, from a Tansu broker it starts (or yours). After each round the daemon is idle and committed
(an idle daemon gives the C heap's free memory back, see ``anomaly.kafka.daemon.trim_heap``); then its RSS
(``/proc/<pid>/status``), the round's checkpoints (its own ``anomaly_checkpoint_duration_seconds``, the
in-process part ``anomaly_checkpoint_state_seconds`` and the state size), how long the round took (sending,
until consumed, until committed) and the CPU seconds of the daemon and of the broker are taken. Then ``probes``
probes, one reading on every partition at once, each followed by a checkpoint of every key held: the same work
in every round; their median is the round's like-for-like checkpoint time, split into its in-process part
(snapshot + compression; also its CPU time on the loop thread, ``anomaly_checkpoint_state_cpu_seconds``, which
this shared machine's preemption does not inflate), the broker's commit (``anomaly_checkpoint_commit_seconds``) and the rest (producer
flushes). After each probe the bench itself commits a plain transaction of the same size (four records, offsets,
commit) through its own transactional producer: the broker round trip's own spread on this machine, measured
side by side. A warm-up round is not counted (allocator and client buffers settle). Flatness = largest /
smallest value over the measured rounds; target <= 1.10.
"""

from __future__ import annotations

import json
import os
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

from anomaly.kafka.tansu import TansuBroker, free_port


def _metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        out = {}
        for line in resp.read().decode().splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _send_round(bootstrap: str, topic: str, r: int, n: int, features: int) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=262_144, acks=1)
    values = [round(0.1 * i, 3) for i in range(features)]
    t0 = 1.7e9 + r * n
    for i in range(n):
        key = f"r{r}-k{i}"
        body = {"key": key, "ts": t0 + i, "values": values}
        producer.send(topic, key=key.encode(), value=json.dumps(body, separators=(",", ":")).encode())
    producer.flush()
    producer.close()


def _send_probe(
    bootstrap: str, topic: str, partitions: int, r: int, j: int, ts: float, features: int
) -> None:
    """One reading on every partition at once: the next checkpoint then writes every partition's state, i.e. the
    state of every key held, so probe checkpoints are alike from round to round (the round's own checkpoints
    write whichever partitions happened to be dirty when the timer fired)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks=1)
    values = [round(0.1 * i, 3) for i in range(features)]
    for p in range(partitions):
        body = {"key": f"probe{r}-{p}", "ts": ts, "values": values}
        producer.send(topic, value=json.dumps(body, separators=(",", ":")).encode(), partition=p)
    producer.flush()
    producer.close()


class _PlainTransaction:
    """The broker round trip alone: a transactional producer of the bench's own writes four records of
    ``kib`` KiB in all (random bytes: as incompressible as compressed state) to a compacted topic, adds an
    offset and commits, as a checkpoint does without the daemon around it."""

    def __init__(self, bootstrap: str, topic: str, source: str, kib: float = 46.0) -> None:
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=topic, acks="all")
        self.producer.init_transactions()
        self.topic, self.source, self.n = topic, source, 0
        self.values = [os.urandom(int(kib * 256)) for _ in range(4)]

    def commit_ms(self) -> float:
        t0 = time.perf_counter()
        self.producer.begin_transaction()
        for i, value in enumerate(self.values):
            self.producer.send(self.topic, key=f"p{i}".encode(), value=value)
        self.producer.flush()
        offsets = {TopicPartition(self.source, 0): OffsetAndMetadata(self.n, "", -1)}
        self.producer.send_offsets_to_transaction(offsets, self.topic)
        self.producer.commit_transaction()
        self.n += 1
        return 1000 * (time.perf_counter() - t0)

    def close(self) -> None:
        self.producer.close(timeout=5)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _committed(consumer: KafkaConsumer, topic: str) -> int:
    """The group's committed offsets of ``topic``, summed (one long-lived consumer that never joins the group:
    ``committed`` asks the coordinator each time for partitions that are not assigned to it)."""
    parts = consumer.partitions_for_topic(topic) or set()
    return sum(consumer.committed(TopicPartition(topic, p)) or 0 for p in parts)


def run_churn_bench(
    bootstrap: str | None = None,
    model: str | None = None,
    *,
    round_keys: int = 300_000,
    rounds: int = 5,
    max_keys: int = 1000,
    features: int = 3,
    probes: int = 15,
    log: Any = print,
) -> dict[str, Any]:
    """Warm-up + ``rounds`` rounds of ``round_keys`` new keys; per-round RSS and mean checkpoint time."""
    from anomaly.bench_kafka import _bundle

    broker = None if bootstrap else TansuBroker().start()
    bootstrap = bootstrap or broker.bootstrap  # type: ignore[union-attr]
    proc = None
    watcher = None
    plain = None
    try:
        model, bundle = _bundle(model, features)
        tag = uuid.uuid4().hex[:6]
        topic, out = f"churn-{tag}", f"churn-out-{tag}"
        group = f"churn-{tag}"
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        partitions = 4
        compact = {"cleanup.policy": "compact"}
        admin.create_topics(
            [
                NewTopic(topic, partitions, 1),
                NewTopic(out, 1, 1),
                NewTopic(f"{out}-plain", 1, 1, topic_configs=compact),
            ]
        )
        admin.close()
        plain = _PlainTransaction(bootstrap, f"{out}-plain", topic)
        port = free_port()
        env = {**os.environ, "ANOMALY_ENGINE_MAX_KEYS": str(max_keys), "PYTHONUNBUFFERED": "1"}
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
                group,
                "--alerts-topic",
                out,
                "--dead-letter-topic",
                out,
                "--metrics-port",
                str(port),
                "--max-poll-interval-ms",
                "3000",
                "--session-timeout-ms",
                "3000",
                "--checkpoint-interval",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2)
                break
            except OSError:
                time.sleep(0.3)
        rows = []
        before = _metrics(port)
        want = 0

        watcher = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)

        def wait_committed(n: int, consumed: bool = True) -> float:
            """Wait until the group committed ``n`` messages; returns when the daemon had consumed them (its
            ``anomaly_messages_consumed_total``, monotonic clock, when ``consumed``): consuming vs committing
            after it."""
            consumed_at = None
            while _committed(watcher, topic) < n:
                if proc.poll() is not None:
                    raise RuntimeError(f"the daemon exited with status {proc.returncode}")
                if (
                    consumed
                    and consumed_at is None
                    and _metrics(port).get("anomaly_messages_consumed_total", 0.0) >= n
                ):
                    consumed_at = time.monotonic()
                time.sleep(0.2)
            return consumed_at if consumed_at is not None else time.monotonic()

        for r in range(rounds + 1):
            t0 = time.monotonic()
            cpu0 = _cpu_s(proc.pid)
            broker_cpu0 = _cpu_s(broker.proc.pid) if broker is not None and broker.proc else 0.0
            _send_round(bootstrap, topic, r, round_keys, len(bundle.features))
            sent_s = time.monotonic() - t0
            want += round_keys
            consumed_at = wait_committed(want)
            now = _metrics(port)
            d = {name: now.get(name, 0.0) - before.get(name, 0.0) for name in now}
            n = d["anomaly_checkpoint_duration_seconds_count"]
            s = d["anomaly_checkpoint_duration_seconds_sum"]
            ns = d.get("anomaly_checkpoint_state_seconds_count", 0.0)
            row: dict[str, Any] = {
                "round": r,
                "rss_mb": round(_rss_mb(proc.pid), 1),
                "checkpoint_ms": round(1000 * s / max(n, 1), 1),
                "checkpoints": int(n),
                # idle checkpoints (nothing processed since the last) cost ~nothing but dilute the mean by a
                # number that varies per round: the mean over checkpoints that wrote state leaves them out
                "checkpoints_with_state": int(ns),
                "state_checkpoint_ms": round(1000 * s / max(ns, 1), 1),
                "state_ms": round(1000 * d.get("anomaly_checkpoint_state_seconds_sum", 0.0) / max(ns, 1), 2),
                "state_kb": round(d.get("anomaly_checkpoint_state_bytes_total", 0.0) / 1024 / max(ns, 1), 1),
                "keys_held": int(now.get("anomaly_keys_held", 0)),
                "seconds": round(time.monotonic() - t0, 1),
                "consumed_seconds": round(consumed_at - t0, 1),  # until the daemon had consumed the round
                "send_seconds": round(sent_s, 1),  # the bench's own producer, inside "seconds"
                "daemon_cpu_s": round(_cpu_s(proc.pid) - cpu0, 1),
                "broker_cpu_s": round(_cpu_s(broker.proc.pid) - broker_cpu0, 1)
                if broker and broker.proc
                else float("nan"),  # a broker of yours: not measured
            }
            # like-for-like: probes that make every partition dirty, so each probe's checkpoint writes the state
            # of every key held (max_keys of them); the median over the probes per round
            full_ms, full_state_ms, full_commit_ms, full_kb, plain_ms, full_cpu_ms = [], [], [], [], [], []
            for j in range(probes):
                ts = 1.7e9 + (r + 1) * round_keys + j
                _send_probe(bootstrap, topic, partitions, r, j, ts, len(bundle.features))
                want += partitions
                # Hands off while the daemon reads the probe and its 1 s checkpoint timer fires: asking the broker
                # for committed offsets or the daemon for /metrics during the checkpoint competed with it for
                # the two cores and the daemon's GIL, and made single probes vary.
                time.sleep(2.0)
                wait_committed(want, consumed=False)
                after = _metrics(port)
                pd = {name: after.get(name, 0.0) - now.get(name, 0.0) for name in after}
                now = after
                if pd.get("anomaly_checkpoint_state_seconds_count", 0.0) != 1:
                    continue  # the probe's readings were split over two checkpoints: not alike, left out
                full_ms.append(1000 * pd["anomaly_checkpoint_duration_seconds_sum"])
                full_state_ms.append(1000 * pd["anomaly_checkpoint_state_seconds_sum"])
                full_commit_ms.append(1000 * pd.get("anomaly_checkpoint_commit_seconds_sum", float("nan")))
                full_cpu_ms.append(1000 * pd.get("anomaly_checkpoint_state_cpu_seconds_total", float("nan")))
                full_kb.append(pd["anomaly_checkpoint_state_bytes_total"] / 1024)
                plain_ms.append(plain.commit_ms())  # the daemon is idle again: the broker alone, same size
            row["probes"] = len(full_ms)
            row["probe_checkpoint_ms"] = [round(x, 2) for x in full_ms]  # each probe's, in order
            row["full_checkpoint_ms"] = round(_median(full_ms), 2) if full_ms else float("nan")
            row["full_state_ms"] = round(_median(full_state_ms), 2) if full_ms else float("nan")
            row["full_state_kb"] = round(_median(full_kb), 1) if full_ms else float("nan")
            row["full_commit_ms"] = round(_median(full_commit_ms), 2) if full_ms else float("nan")
            # the loop thread's CPU time in the in-process part: the work, without this machine's preemption
            row["full_state_cpu_ms"] = round(_median(full_cpu_ms), 2) if full_ms else float("nan")
            row["full_flush_ms"] = (  # the producer flushes: what is neither the state part nor the commit
                round(
                    _median(
                        [a - b - c for a, b, c in zip(full_ms, full_state_ms, full_commit_ms, strict=True)]
                    ),
                    2,
                )
                if full_ms
                else float("nan")
            )
            row["plain_txn_ms"] = round(_median(plain_ms), 2) if plain_ms else float("nan")
            row["plain_txn_each_ms"] = [round(x, 2) for x in plain_ms]
            before = now
            rows.append(row)
            label = "warm-up" if r == 0 else f"round {r}"
            log(
                f"churn {label}: {round_keys:,} new keys -> RSS {row['rss_mb']} MB, checkpoint mean "
                f"{row['checkpoint_ms']} ms over {row['checkpoints']} ({row['state_checkpoint_ms']} ms over the "
                f"{row['checkpoints_with_state']} that wrote state; in-process part {row['state_ms']} ms, "
                f"{row['state_kb']} KiB), keys held {row['keys_held']:,} ({row['seconds']} s, {row['send_seconds']} s of "
                f"them sending, all consumed after {row['consumed_seconds']} s; CPU s: daemon {row['daemon_cpu_s']}, broker {row['broker_cpu_s']}); checkpoint of "
                f"every key held (median of {row['probes']} probes): {row['full_checkpoint_ms']} ms, in-process "
                f"{row['full_state_ms']} ms (CPU {row['full_state_cpu_ms']} ms), commit {row['full_commit_ms']} ms, flushes {row['full_flush_ms']} ms, "
                f"{row['full_state_kb']} KiB; each probe: {row['probe_checkpoint_ms']}; a plain transaction of the "
                f"same size by the bench (median): {row['plain_txn_ms']} ms, each: {row['plain_txn_each_ms']}"
            )
        measured = rows[1:]

        def flat(name: str) -> float:
            vals = [x[name] for x in measured]
            return round(max(vals) / max(min(vals), 1e-9), 3)

        rss = [x["rss_mb"] for x in measured]
        ckpt = [x["checkpoint_ms"] for x in measured]
        res = {
            "round_keys": round_keys,
            "rounds": rounds,
            "max_keys": max_keys,
            "rows": rows,
            "rss_flatness": flat("rss_mb"),
            "checkpoint_flatness": flat("checkpoint_ms"),
            "state_checkpoint_flatness": flat("state_checkpoint_ms"),
            "state_ms_flatness": flat("state_ms"),
            "state_kb_flatness": flat("state_kb"),
            "full_checkpoint_flatness": flat("full_checkpoint_ms"),
            "full_state_ms_flatness": flat("full_state_ms"),
            "full_state_kb_flatness": flat("full_state_kb"),
            "full_commit_flatness": flat("full_commit_ms"),
            "full_state_cpu_flatness": flat("full_state_cpu_ms"),
            "full_flush_flatness": flat("full_flush_ms"),
            "plain_txn_flatness": flat("plain_txn_ms"),
            "rss_last_over_first": round(rss[-1] / rss[0], 3),
            "checkpoint_last_over_first": round(ckpt[-1] / max(ckpt[0], 1e-9), 3),
        }
        log(
            f"churn flatness over {rounds} rounds (max/min, target <= 1.10): RSS {res['rss_flatness']:.3f}, "
            f"checkpoint time {res['checkpoint_flatness']:.3f} (of checkpoints that wrote state "
            f"{res['state_checkpoint_flatness']:.3f}; their in-process part {res['state_ms_flatness']:.3f}, "
            f"state size {res['state_kb_flatness']:.3f}); checkpoint of every key held (probes) "
            f"{res['full_checkpoint_flatness']:.3f} (in-process part {res['full_state_ms_flatness']:.3f}, its CPU "
            f"time {res['full_state_cpu_flatness']:.3f}, commit "
            f"{res['full_commit_flatness']:.3f}, flushes {res['full_flush_flatness']:.3f}, state size "
            f"{res['full_state_kb_flatness']:.3f}); a plain transaction of the same size (the broker alone) "
            f"{res['plain_txn_flatness']:.3f}; last/first: RSS {res['rss_last_over_first']:.3f}, "
            f"checkpoint {res['checkpoint_last_over_first']:.3f}"
        )
        return res
    finally:
        if plain is not None:
            plain.close()
        if watcher is not None:
            watcher.close(autocommit=False)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(60)
        if broker is not None:
            broker.stop()

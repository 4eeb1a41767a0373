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

After each round the churned daemon is idle and committed (an idle daemon gives the C heap's free memory back,
see ``anomaly.kafka.daemon.trim_heap``); then its RSS (``/proc/<pid>/status``), the round's checkpoints (its own
``anomaly_checkpoint_duration_seconds``, the in-process part ``anomaly_checkpoint_state_seconds`` and the state
size), how long the round took (sending, until consumed, until committed) and the CPU seconds of the daemon and
of the broker are taken. Then ``probes`` probes of each daemon, alternating (churned first, then control, then
control first, ...): one reading on every partition at once, followed by a checkpoint of every key held, the
same work in every round and in both daemons. A round's like-for-like checkpoint time is the median of its
probes, split into the in-process part (snapshot + compression; also its CPU time on the loop thread,
``anomaly_checkpoint_state_cpu_seconds``, which this shared machine's preemption does not inflate), the broker's
commit (``anomaly_checkpoint_commit_seconds``) and the rest (producer flushes).

Whether checkpoint time grows with churn is answered side by side: per round the churned daemon's median over
the control's median, and the median of the per-pair ratios (each churned probe over the control probe taken
next to it), so that what this shared machine does to both in a round cancels. The old statistic (largest /
smallest of the churned daemon's medians over the rounds; target <= 1.10) is printed as before, next to the
control's own (the same work without churn: how much the machine alone moves it). After each churned probe the
bench also commits a plain transaction of the same size through its own transactional producer (four records,
offsets, commit; each step timed): the broker round trip alone. A warm-up round is not counted.

At the end the probe checkpoints are split, churned and control, into the daemon's own work (tracker walk,
snapshot, compression, handing the records to the producer: ``anomaly_checkpoint_state_seconds`` and its CPU time)
and waiting on the broker (flushes, offsets, commit: the rest), each part's max/min and last/first over the rounds
printed beside the raw checkpoint's: whether a change over the rounds is the daemon's (it would walk more keys) or
the broker's (its in-memory log grows with every round's changelog and output records). RSS is taken when the
daemon is idle after the round (it has compacted its state store and trimmed the heap); ``peak_rss_mb`` is the
process's peak so far (``VmHWM``: ``max_keys`` plus one engine batch's new keys held at once during a round).
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

from anomaly.config import KafkaConfig, changelog_topic
from anomaly.kafka.tansu import TansuBroker, free_port

PARTITIONS = 4


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


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def _send_probe(bootstrap: str, topic: str, r: int, ts: float, features: int) -> None:
    """One reading on every partition at once: the next checkpoint then writes every partition's state, i.e. the
    state of every key held, so probe checkpoints are alike from round to round (the round's own checkpoints
    write whichever partitions happened to be dirty when the timer fired)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks=1)
    values = [round(0.1 * i, 3) for i in range(features)]
    for p in range(PARTITIONS):
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

    def __init__(self, bootstrap: str, model: str, topic: str, group: str, out: str, max_keys: int) -> None:
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
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.watcher = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        self.last: dict[str, float] = {}  # /metrics when the last probe (or round) was taken

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
            time.sleep(0.2)
        return consumed_at if consumed_at is not None else time.monotonic()

    def probe(self, r: int, ts: float, features: int) -> dict[str, float] | None:
        """One probe and the checkpoint it causes: its time and parts, or None when the probe's readings were
        split over two checkpoints (not alike: left out)."""
        _send_probe(self.bootstrap, self.topic, r, ts, features)
        self.want += PARTITIONS
        # Hands off while the daemon reads the probe and its 1 s checkpoint timer fires: asking the broker for
        # committed offsets or the daemon for /metrics during the checkpoint competed with it for the two cores
        # and the daemon's GIL, and made single probes vary.
        time.sleep(2.0)
        self.wait_committed(consumed=False)
        after = _metrics(self.port)
        d = {name: after.get(name, 0.0) - self.last.get(name, 0.0) for name in after}
        self.last = after
        if d.get("anomaly_checkpoint_state_seconds_count", 0.0) != 1:
            return None
        out = {
            "ms": 1000 * d["anomaly_checkpoint_duration_seconds_sum"],
            "state_ms": 1000 * d["anomaly_checkpoint_state_seconds_sum"],
            "commit_ms": 1000 * d.get("anomaly_checkpoint_commit_seconds_sum", float("nan")),
            "cpu_ms": 1000 * d.get("anomaly_checkpoint_state_cpu_seconds_total", float("nan")),
            "kb": d["anomaly_checkpoint_state_bytes_total"] / 1024,
        }
        out["flush_ms"] = (
            out["ms"] - out["state_ms"] - out["commit_ms"]
        )  # neither the state part nor the commit
        out["broker_ms"] = out["ms"] - out["state_ms"]  # waiting on the broker: flushes + offsets + commit
        return out

    def close(self) -> None:
        self.watcher.close(autocommit=False)
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _medians(probes: list[dict[str, float]], prefix: str) -> dict[str, float]:
    """Per-round medians of the probes' parts (``<prefix>_checkpoint_ms``, ``_state_ms``, ...)."""
    names = {
        "ms": "checkpoint_ms",
        "state_ms": "state_ms",
        "cpu_ms": "state_cpu_ms",
        "commit_ms": "commit_ms",
    }
    names |= {"flush_ms": "flush_ms", "broker_ms": "broker_ms", "kb": "state_kb"}
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
    probes: int = 15,
    log: Any = print,
) -> dict[str, Any]:
    """Warm-up + ``rounds`` rounds of ``round_keys`` new keys; per-round RSS, checkpoint times, and the churned
    daemon's probe checkpoints next to a control daemon's (the same keys held, without the churn)."""
    from anomaly.bench_kafka import _bundle

    broker = None if bootstrap else TansuBroker().start()
    bootstrap = bootstrap or broker.bootstrap  # type: ignore[union-attr]
    daemons: list[_Daemon] = []
    plain = None
    try:
        model, bundle = _bundle(model, features)
        n_feat = len(bundle.features)
        tag = uuid.uuid4().hex[:6]
        topic, control_topic, out = f"churn-{tag}", f"churn-control-{tag}", f"churn-out-{tag}"
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics(
            [
                NewTopic(topic, PARTITIONS, 1),
                NewTopic(control_topic, PARTITIONS, 1),
                NewTopic(out, 1, 1),
                NewTopic(f"{out}-plain", 1, 1, topic_configs={"cleanup.policy": "compact"}),
            ]
        )
        admin.close()
        plain = _PlainTransaction(bootstrap, f"{out}-plain", topic)
        churned = _Daemon(bootstrap, model, topic, f"churn-{tag}", out, max_keys)
        daemons.append(churned)
        control = _Daemon(bootstrap, model, control_topic, f"churn-control-{tag}", out, max_keys)
        daemons.append(control)
        churned.wait_ready()
        control.wait_ready()
        rows = []
        before = churned.last
        for r in range(rounds + 1):
            t0 = time.monotonic()
            cpu0 = _cpu_s(churned.proc.pid)
            broker_cpu0 = _cpu_s(broker.proc.pid) if broker is not None and broker.proc else 0.0
            t_round = 1.7e9 + r * round_keys
            _send_keys(bootstrap, topic, f"r{r}-k", t_round, range(round_keys), n_feat)
            sent_s = time.monotonic() - t0
            churned.want += round_keys
            consumed_at = churned.wait_committed()
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
            d = {name: now.get(name, 0.0) - before.get(name, 0.0) for name in now}
            n = d["anomaly_checkpoint_duration_seconds_count"]
            s = d["anomaly_checkpoint_duration_seconds_sum"]
            ns = d.get("anomaly_checkpoint_state_seconds_count", 0.0)
            row: dict[str, Any] = {
                "round": r,
                "rss_mb": round(_rss_mb(churned.proc.pid), 1),
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
            # control's next to the churned one's, under the same load.
            got: dict[str, list[dict[str, float]]] = {"churned": [], "control": []}
            pairs: list[tuple[float, float]] = []
            cpu_pairs: list[tuple[float, float]] = []
            plain_ms: list[dict[str, float]] = []
            for j in range(probes):
                order = [("churned", churned), ("control", control)]
                taken: dict[str, dict[str, float] | None] = {}
                for name, daemon in order if j % 2 == 0 else order[::-1]:
                    taken[name] = daemon.probe(r, 1.7e9 + (r + 1) * round_keys + j, n_feat)
                    if daemon is churned and taken[name] is not None:
                        plain_ms.append(plain.commit_ms())  # the daemon is idle again: the broker alone
                for name, probe in taken.items():
                    if probe is not None:
                        got[name].append(probe)
                a, b = taken["churned"], taken["control"]
                if a is not None and b is not None:
                    pairs.append((a["ms"], b["ms"]))
                    cpu_pairs.append((a["cpu_ms"], b["cpu_ms"]))
            row["probes"] = len(got["churned"])
            row["control_probes"] = len(got["control"])
            row["probe_checkpoint_ms"] = [round(p["ms"], 2) for p in got["churned"]]  # each probe's, in order
            row["control_probe_checkpoint_ms"] = [round(p["ms"], 2) for p in got["control"]]
            row |= _medians(got["churned"], "full")
            row |= _medians(got["control"], "control")
            row["churned_over_control"] = _ratio(row["full_checkpoint_ms"], row["control_checkpoint_ms"])
            row["cpu_churned_over_control"] = _ratio(row["full_state_cpu_ms"], row["control_state_cpu_ms"])
            row["pair_ratios"] = [_ratio(a, b) for a, b in pairs]
            row["pair_ratio_median"] = round(_median(row["pair_ratios"]), 3)
            row["cpu_pair_ratio_median"] = round(_median([_ratio(a, b) for a, b in cpu_pairs]), 3)
            row["pairs"] = len(pairs)
            row["plain_txn_ms"] = round(_median([x["ms"] for x in plain_ms]), 2)
            for part in ("send_ms", "offsets_ms", "commit_ms"):
                row[f"plain_txn_{part}"] = round(_median([x[part] for x in plain_ms]), 2)
            row["plain_txn_each_ms"] = [round(x["ms"], 2) for x in plain_ms]
            before = churned.last
            rows.append(row)
            label = "warm-up" if r == 0 else f"round {r}"
            log(
                f"churn {label}: {round_keys:,} new keys -> RSS {row['rss_mb']} MB (peak so far "
                f"{row['peak_rss_mb']} MB; control {row['control_rss_mb']} MB), checkpoint mean {row['checkpoint_ms']} ms over "
                f"{row['checkpoints']} ({row['state_checkpoint_ms']} ms over the {row['checkpoints_with_state']} "
                f"that wrote state; in-process part {row['state_ms']} ms, {row['state_kb']} KiB), keys held "
                f"{row['keys_held']:,} ({row['seconds']} s, {row['send_seconds']} s of them sending, all consumed "
                f"after {row['consumed_seconds']} s; CPU s: daemon {row['daemon_cpu_s']}, broker "
                f"{row['broker_cpu_s']}); checkpoint of every key held (median of {row['probes']} probes): "
                f"{row['full_checkpoint_ms']} ms = the daemon's own part {row['full_state_ms']} ms (CPU "
                f"{row['full_state_cpu_ms']} ms) + waiting on the broker {row['full_broker_ms']} ms (commit "
                f"{row['full_commit_ms']} ms, flushes {row['full_flush_ms']} ms), {row['full_state_kb']} KiB; control (as many keys held per partition, "
                f"{row['held_by_partition']}, without the churn) "
                f"(median of {row['control_probes']}): {row['control_checkpoint_ms']} ms, in-process "
                f"{row['control_state_ms']} ms (CPU {row['control_state_cpu_ms']} ms), broker "
                f"{row['control_broker_ms']} ms (commit {row['control_commit_ms']} ms), {row['control_state_kb']} KiB; "
                f"churned/control: medians "
                f"{row['churned_over_control']}, median of {row['pairs']} pairs {row['pair_ratio_median']}, CPU "
                f"{row['cpu_churned_over_control']} (pairs {row['cpu_pair_ratio_median']}); each probe: "
                f"{row['probe_checkpoint_ms']}, control: {row['control_probe_checkpoint_ms']}; a plain "
                f"transaction of the same size by the bench (median): {row['plain_txn_ms']} ms (records sent "
                f"and flushed {row['plain_txn_send_ms']} ms, offsets {row['plain_txn_offsets_ms']} ms, commit "
                f"{row['plain_txn_commit_ms']} ms), each: {row['plain_txn_each_ms']}"
            )
        measured = rows[1:]

        def flat(name: str) -> float:
            vals = [x[name] for x in measured]
            return round(max(vals) / max(min(vals), 1e-9), 3)

        def spread(name: str) -> list[float]:
            vals = [x[name] for x in measured]
            return [min(vals), max(vals)]

        rss = [x["rss_mb"] for x in measured]
        ckpt = [x["checkpoint_ms"] for x in measured]
        res: dict[str, Any] = {
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
            "full_broker_flatness": flat("full_broker_ms"),
            "control_state_flatness": flat("control_state_ms"),
            "control_broker_flatness": flat("control_broker_ms"),
            "plain_txn_send_flatness": flat("plain_txn_send_ms"),
            "plain_txn_offsets_flatness": flat("plain_txn_offsets_ms"),
            "plain_txn_commit_flatness": flat("plain_txn_commit_ms"),
            "control_checkpoint_flatness": flat("control_checkpoint_ms"),
            "control_state_cpu_flatness": flat("control_state_cpu_ms"),
            "churned_over_control": [x["churned_over_control"] for x in measured],
            "churned_over_control_flatness": flat("churned_over_control"),
            "pair_ratio_median": [x["pair_ratio_median"] for x in measured],
            "pair_ratio_flatness": flat("pair_ratio_median"),
            "cpu_churned_over_control": [x["cpu_churned_over_control"] for x in measured],
            "pooled_pair_ratio": round(_median([q for x in measured for q in x["pair_ratios"]]), 3),
            "rss_last_over_first": round(rss[-1] / rss[0], 3),
            "peak_rss_mb": measured[-1]["peak_rss_mb"],
            "checkpoint_last_over_first": round(ckpt[-1] / max(ckpt[0], 1e-9), 3),
        }
        lo, hi = spread("churned_over_control")
        log(
            f"churn flatness over {rounds} rounds (max/min, target <= 1.10): RSS {res['rss_flatness']:.3f}, "
            f"checkpoint time {res['checkpoint_flatness']:.3f} (of checkpoints that wrote state "
            f"{res['state_checkpoint_flatness']:.3f}; their in-process part {res['state_ms_flatness']:.3f}, "
            f"state size {res['state_kb_flatness']:.3f}); checkpoint of every key held (probes) "
            f"{res['full_checkpoint_flatness']:.3f} (in-process part {res['full_state_ms_flatness']:.3f}, its CPU "
            f"time {res['full_state_cpu_flatness']:.3f}, commit {res['full_commit_flatness']:.3f}, flushes "
            f"{res['full_flush_flatness']:.3f}, state size {res['full_state_kb_flatness']:.3f}); the control's "
            f"(same keys held, no churn) {res['control_checkpoint_flatness']:.3f} (CPU "
            f"{res['control_state_cpu_flatness']:.3f}); a plain transaction of the same size (the broker alone) "
            f"{res['plain_txn_flatness']:.3f}; last/first: RSS {res['rss_last_over_first']:.3f}, checkpoint "
            f"{res['checkpoint_last_over_first']:.3f}"
        )
        log(
            f"churned/control side by side, per round: medians {res['churned_over_control']} ({lo:.3f}-{hi:.3f}, "
            f"max/min {res['churned_over_control_flatness']:.3f}), median of pairs {res['pair_ratio_median']} "
            f"(max/min {res['pair_ratio_flatness']:.3f}), in-process CPU {res['cpu_churned_over_control']}; all "
            f"pairs pooled {res['pooled_pair_ratio']:.3f}"
        )
        # Where a probe checkpoint's time moves: the daemon's own work (tracker walk, snapshot, compression,
        # handing the records to the producer) or waiting on the broker (flushes, offsets, commit).
        res["split"] = {
            who: {
                part: {
                    "max_over_min": flat(f"{who}_{part}"),
                    "last_over_first": round(measured[-1][f"{who}_{part}"] / measured[0][f"{who}_{part}"], 3),
                }
                for part in ("checkpoint_ms", "state_ms", "state_cpu_ms", "broker_ms")
            }
            for who in ("full", "control")
        }
        sp = res["split"]
        log(
            "probe checkpoint split, max/min (last/first) over the rounds: "
            + "; ".join(
                f"{name}: raw {sp[who]['checkpoint_ms']['max_over_min']:.3f} "
                f"({sp[who]['checkpoint_ms']['last_over_first']:.3f}), the daemon's own part "
                f"{sp[who]['state_ms']['max_over_min']:.3f} ({sp[who]['state_ms']['last_over_first']:.3f}), its "
                f"CPU {sp[who]['state_cpu_ms']['max_over_min']:.3f} ({sp[who]['state_cpu_ms']['last_over_first']:.3f}), "
                f"waiting on the broker {sp[who]['broker_ms']['max_over_min']:.3f} "
                f"({sp[who]['broker_ms']['last_over_first']:.3f})"
                for name, who in (("churned", "full"), ("control", "control"))
            )
            + f"; the bench's plain transaction {res['plain_txn_flatness']:.3f} (records sent and flushed "
            f"{res['plain_txn_send_flatness']:.3f}, offsets {res['plain_txn_offsets_flatness']:.3f}, commit "
            f"{res['plain_txn_commit_flatness']:.3f}); peak RSS of the churned daemon {res['peak_rss_mb']} MB"
        )
        return res
    finally:
        if plain is not None:
            plain.close()
        for daemon in daemons:
            daemon.close()
        if broker is not None:
            broker.stop()

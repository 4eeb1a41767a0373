"""Shared fixtures of the integration tests: a real Tansu broker, a tiny trained model, a test stream, and a
:class:`KafkaEnv` helper that produces, runs `anomaly consume` as a subprocess, and reads topics back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import Fetcher
from kafka.record import MemoryRecords

from anomaly.bundle import Bundle, load_bundle, save_bundle
from anomaly.config import DataConfig, EngineConfig, ModelConfig, TrainConfig
from anomaly.data import Series, load_series
from anomaly.engine import Engine, EngineOutput
from anomaly.kafka.changelog import decompress_state, latest_records
from anomaly.kafka.codec import MessageFormat, window_json
from anomaly.kafka.produce import messages
from anomaly.kafka.tansu import TansuBroker, free_port
from anomaly.replay import merged_batches
from anomaly.runner import Batch, run
from anomaly.synthetic import SyntheticSpec, generate_keys
from anomaly.training import train

ANOMALY = [str(Path(sys.executable).with_name("anomaly"))]
# Short group timeouts: Tansu waits the whole rebalance timeout (max.poll.interval.ms) before a first join.
FAST_GROUP = ["--max-poll-interval-ms", "3000", "--session-timeout-ms", "3000"]

# These tests prove the daemon equals the replay loop on short streams. They pin the static threshold: the
# default SPOT needs spot_init scores per key before it may alert, longer than these streams' warm-up.
DAEMON_ENV = {"ANOMALY_ENGINE_THRESHOLD": "static"}


@pytest.fixture(scope="session")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    broker = TansuBroker(log_path=tmp_path_factory.mktemp("tansu") / "tansu.log").start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Bundle]:
    """Window 8, hidden 16, 3 epochs on normal synthetic data of 3 sensors: trains in a few seconds."""
    frame = generate_keys(SyntheticSpec(n_sensors=3, n_points=1500, seed=7), 2)
    d = tmp_path_factory.mktemp("model")
    frame.to_csv(d / "train.csv", index=False)
    series, feats = load_series([d / "train.csv"], DataConfig(key_column="sensor_id"))
    result = train(
        series,
        feats,
        ModelConfig(window=8, hidden_size=16),
        TrainConfig(epochs=3, batch_size=32, device="cpu", seed=0),
    )
    path = save_bundle(result.bundle, d / "tiny.pt")
    return path, load_bundle(path)


@pytest.fixture(scope="session")
def stream(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: tuple[Path, Bundle]
) -> tuple[Path, list[Series]]:
    """6 keys x 400 readings with injected anomalies, as a CSV file and as series."""
    frame = generate_keys(SyntheticSpec(n_sensors=3, n_points=400, anomalies=3, seed=11), 6)
    path = tmp_path_factory.mktemp("stream") / "stream.csv"
    frame.to_csv(path, index=False)
    series, _ = load_series([path], DataConfig(key_column="sensor_id"), tiny_model[1].features)
    return path, series


@dataclass
class Names:
    input: str
    alerts: str
    scores: str
    dead: str
    changelog: str
    group: str

    def args(self) -> list[str]:
        return [
            "--topics",
            self.input,
            "--alerts-topic",
            self.alerts,
            "--scores-topic",
            self.scores,
            "--dead-letter-topic",
            self.dead,
            "--changelog-topic",
            self.changelog,
            "--group-id",
            self.group,
        ]


@dataclass
class Expected:
    """What an uninterrupted, single-engine run over the same readings produces (the replay loop)."""

    windows: dict[tuple[str, float], dict[str, Any]]
    alert_ids: set[tuple[str, str]]  # (id, status)
    engine: Engine


def replay_expected(
    bundle: Bundle, series: Sequence[Series], batch_readings: int = 97, config: EngineConfig | None = None
) -> Expected:
    engine = Engine(bundle, config or EngineConfig(threshold="static"))
    outs: list[EngineOutput] = []
    run(engine, merged_batches(series, batch_readings), [], on_batch=lambda b, o: outs.append(o))
    windows = {
        (w.key, float(w.timestamps[0])): window_json(w, bundle.features) for o in outs for w in o.windows
    }
    alerts = {(a.id, a.status) for o in outs for a in o.alerts}
    return Expected(windows, alerts, engine)


def cut_with_open_alerts(bundle: Bundle, series: Sequence[Series]) -> tuple[list[Series], set[str]]:
    """The series' first readings, cut where a replay (``static`` threshold) has alerts open at the end, and the
    ids of those open alerts."""
    cut = next(
        c
        for c in range(100, 400, 10)
        if replay_expected(bundle, [s.head(c) for s in series]).engine.alerting_keys()
    )
    first = [s.head(cut) for s in series]
    ids = replay_expected(bundle, first).alert_ids
    return first, {i for i, s in ids if s == "open"} - {i for i, s in ids if s == "closed"}


class KafkaEnv:
    def __init__(self, broker: TansuBroker, model: Path, workdir: Path) -> None:
        self.broker = broker
        self.model = model
        self.workdir = workdir
        self.producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []  # one per started daemon, in start order

    def names(self, partitions: int = 4) -> Names:
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic

        tag = uuid.uuid4().hex[:8]
        n = Names(
            f"in-{tag}", f"alerts-{tag}", f"scores-{tag}", f"dead-{tag}", f"changelog-{tag}", f"g-{tag}"
        )
        admin = KafkaAdminClient(bootstrap_servers=self.broker.bootstrap)
        admin.create_topics(
            [NewTopic(n.input, partitions, 1)] + [NewTopic(t, 1, 1) for t in (n.alerts, n.scores, n.dead)]
        )
        admin.close()
        return n

    def produce(
        self,
        topic: str,
        series: Sequence[Series],
        features: Sequence[str],
        block: int = 1,
        raw: Sequence[tuple[bytes | None, bytes]] = (),
        rate: float = 0.0,
    ) -> dict[int, int]:
        """Send the series (and raw (key, value) messages first), at `rate` messages/s if given; returns the end
        offset of every partition."""
        futures = [self.producer.send(topic, key=k, value=v) for k, v in raw]
        t0 = time.monotonic()
        for i, (k, v, _) in enumerate(messages(series, MessageFormat(tuple(features)), block)):
            futures.append(self.producer.send(topic, key=k, value=v))
            if rate and (i + 1) / rate > time.monotonic() - t0:
                self.producer.flush()
                time.sleep(max(0.0, (i + 1) / rate - (time.monotonic() - t0)))
        self.producer.flush()
        ends: dict[int, int] = {}
        for f in futures:
            md = f.get()
            ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)
        return ends

    def start(
        self,
        names: Names,
        *extra: str,
        metrics_port: int | None = None,
        log_name: str = "daemon",
        model: Path | None = None,
        command: Sequence[str] = ANOMALY,
        env: dict[str, str] | None = None,
    ) -> tuple[subprocess.Popen[bytes], int]:
        """`anomaly consume` (or ``command`` + ``consume``: an instrumented launcher) on this broker."""
        port = metrics_port or free_port()
        self.logs.append(self.workdir / f"{log_name}-{len(self.procs)}.log")
        log = open(self.logs[-1], "wb")  # noqa: SIM115
        cmd = [
            *command,
            "consume",
            "-m",
            str(model or self.model),
            "-b",
            self.broker.bootstrap,
            *names.args(),
            *FAST_GROUP,
            "--metrics-port",
            str(port),
            "-v",
            *extra,
        ]
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **DAEMON_ENV, **(env or {})},
        )
        self.procs.append(proc)
        return proc, port

    def committed(self, group: str, topic: str) -> dict[int, int]:
        consumer = KafkaConsumer(
            bootstrap_servers=self.broker.bootstrap, group_id=group, enable_auto_commit=False
        )
        try:
            parts = consumer.partitions_for_topic(topic) or set()
            out = {}
            for p in parts:
                c = consumer.committed(TopicPartition(topic, p))
                out[p] = c if c is not None else 0
            return out
        finally:
            consumer.close(autocommit=False)

    def wait_committed(self, group: str, topic: str, ends: dict[int, int], timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = self.committed(group, topic)
            if all(got.get(p, 0) >= end for p, end in ends.items()):
                return
            time.sleep(0.3)
        raise AssertionError(
            f"group {group} did not commit {ends} within {timeout_s}s (got {got})\n" + self.stacks()
        )

    def stacks(self) -> str:
        """Every live daemon's thread stacks (SIGUSR1 makes a daemon write them to its log) and log tail: where
        a daemon that commits nothing is waiting."""
        live = [(p, log) for p, log in zip(self.procs, self.logs, strict=True) if p.poll() is None]
        for proc, _ in live:
            proc.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        return "\n".join(
            f"--- {log.name} (pid {proc.pid}), last 80 lines:\n"
            + "\n".join(log.read_text(errors="replace").splitlines()[-80:])
            for proc, log in live
        )

    def read(self, topic: str) -> list[Any]:
        """Every record of a topic, from the beginning to the current end."""
        consumer = KafkaConsumer(bootstrap_servers=self.broker.bootstrap, enable_auto_commit=False)
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=300).values():
                out.extend(recs)
        consumer.close(autocommit=False)
        return out

    def transactions(
        self, topic: str
    ) -> list[tuple[int, int, bytes | None, bytes | None, str, tuple[int, int]]]:
        """(partition, offset, key, value, outcome, (producer id, epoch)) of every data record of the topic, in log
        order; ``outcome``: ``plain`` (not transactional), ``committed`` or ``aborted`` (a commit or abort marker
        of its producer, id and epoch, follows it in the partition) or ``open`` (no marker yet). An Apache Kafka
        ``read_committed`` reader gets the plain and committed ones; Tansu 0.6 also serves the aborted ones to
        ``read_committed`` readers, but writes the markers (control batches) to its log, read here."""
        batches: dict[int, dict[int, Any]] = {}

        class Keeping(Fetcher.PartitionRecords):  # type: ignore[misc]
            def __init__(
                self, fetch_offset: int, tp: TopicPartition, records: Any, *a: Any, **kw: Any
            ) -> None:
                data = MemoryRecords(bytes(records._buffer))
                while (batch := data.next_batch()) is not None:
                    batches.setdefault(tp.partition, {})[batch.base_offset] = (
                        batch.producer_id,
                        batch.producer_epoch,
                        batch.is_transactional,
                        batch.is_control_batch,
                        [(r.offset, r.key, r.value) for r in batch],
                    )
                super().__init__(fetch_offset, tp, records, *a, **kw)

        consumer = KafkaConsumer(bootstrap_servers=self.broker.bootstrap, enable_auto_commit=False)
        consumer._fetcher.PartitionRecords = Keeping
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        deadline = time.monotonic() + 60
        quiet = 0  # polls that brought no batch: the end offset can be short of a last commit marker
        while (
            quiet < 3 or any(consumer.position(tp) < end[tp] for tp in tps)
        ) and time.monotonic() < deadline:
            before = sum(map(len, batches.values()))
            consumer.poll(timeout_ms=100)
            quiet = quiet + 1 if sum(map(len, batches.values())) == before else 0
        behind = {
            tp.partition: (consumer.position(tp), end[tp]) for tp in tps if consumer.position(tp) < end[tp]
        }
        consumer.close(autocommit=False)
        assert not behind, f"{topic}: read only up to {behind} (position, end) within 60 s"
        out: list[tuple[int, int, bytes | None, bytes | None, str, tuple[int, int]]] = []
        for partition, by_offset in sorted(batches.items()):
            open_txns: dict[tuple[int, int], list[int]] = {}  # (producer id, epoch) -> indices into out
            for _, (pid, epoch, transactional, control, recs) in sorted(by_offset.items()):
                if control:  # one record; its key's type field: 0 abort, 1 commit
                    commit = bool(recs) and recs[0][1] is not None and recs[0][1][2:4] == b"\x00\x01"
                    for i in open_txns.pop((pid, epoch), []):
                        out[i] = (*out[i][:4], "committed" if commit else "aborted", out[i][5])
                    continue
                for offset, key, value in recs:
                    if transactional:
                        open_txns.setdefault((pid, epoch), []).append(len(out))
                    out.append(
                        (partition, offset, key, value, "open" if transactional else "plain", (pid, epoch))
                    )
        return out

    def windows(self, topic: str) -> dict[tuple[str, float], dict[str, Any]]:
        """Scores topic deduplicated by (key, window start); a re-sent window must equal the first one."""
        out: dict[tuple[str, float], dict[str, Any]] = {}
        for rec in self.read(topic):
            w = json.loads(rec.value)
            k = (w["key"], w["start"])
            assert out.setdefault(k, w) == w, f"window {k} was produced twice with different content"
        return out

    def alert_ids(self, topic: str) -> set[tuple[str, str]]:
        """(id, status) of every alert event; a re-sent event (after a crash or a fence) must be byte-identical
        to the first, key included (README Delivery guarantees)."""
        seen: dict[tuple[str, str], tuple[bytes | None, bytes]] = {}
        for rec in self.read(topic):
            a = json.loads(rec.value)
            k = (a["id"], a["status"])
            assert seen.setdefault(k, (rec.key, rec.value)) == (rec.key, rec.value), (
                f"alert {k} was produced twice with different bytes"
            )
        return set(seen)

    def changelog_state(
        self, topic: str, bundle: Bundle, group: str | None = None, config: EngineConfig | None = None
    ) -> Engine:
        """A fresh engine (``config``, else the static threshold) restored from the latest checkpoint of every
        source partition, chosen as the daemon chooses (highest owner epoch; of ``group`` when given)."""
        heads, chunks, _ = latest_records(self.read(topic), lambda pid: True, group)
        engine = Engine(bundle, config or EngineConfig(threshold="static"))
        for pid, (head, payload) in heads.items():
            if head["chunks"]:
                payload = b"".join(chunks[f"{pid}/{head['gen']}/{i}"] for i in range(head["chunks"]))
            if payload:
                engine.restore(decompress_state(head, payload))
        return engine

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def segments(series: Sequence[Series], n: int) -> list[list[Series]]:
    """The stream cut into n consecutive time segments (every key's rows split at the same time points)."""
    ts = np.concatenate([s.timestamps for s in series])
    cuts = np.quantile(ts, np.linspace(0, 1, n + 1)[1:-1])
    out = []
    for lo, hi in zip([-np.inf, *cuts], [*cuts, np.inf], strict=True):
        part = []
        for s in series:
            m = (s.timestamps > lo) & (s.timestamps <= hi)
            part.append(Series(s.key, s.timestamps[m], s.values[m], None, s.source))
        out.append(part)
    return out


def metric(port: int, name: str, labels: str = "") -> float:
    """A sample of the daemon's /metrics (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(f"{name}{labels} "):
                return float(line.split()[1])
    return 0.0


def http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def http_answer(port: int, path: str, within_s: float = 20.0) -> int:
    """The status the daemon answers on ``path``: asks again while there is no answer at all (a 2 s timeout can
    pass on a loaded machine), never when there is one, so an assertion on the code stays as strict."""
    deadline = time.monotonic() + within_s
    while (status := http_status(port, path)) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    return status


def wait_for(pred: Any, timeout_s: float, what: str, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def terminate(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout_s)


def terminate_all(*procs: subprocess.Popen[bytes], timeout_s: float = 30.0) -> list[int]:
    """SIGTERM every process first, then wait for each (their shutdowns overlap)."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    return [proc.wait(timeout_s) for proc in procs]


def same_state(a: Engine, b: Engine) -> None:
    """Per-key state arrays equal bit for bit (the snapshot header's global max_ts is not compared)."""
    assert sorted(a.keys()) == sorted(b.keys())
    for key in sorted(a.keys()):
        _, xa = a.store.read_snapshot(a.snapshot([key]))
        _, xb = b.store.read_snapshot(b.snapshot([key]))
        for name in xa:
            assert xa[name].tobytes() == xb[name].tobytes(), f"{key}: state field {name} differs"


def restored_aborted_writers(kafka_env: Any, names: Any) -> set[tuple[int, int]]:
    """The producers (id, epoch) whose aborted transaction held a checkpoint that a restore took (its claim, a
    committed record of the same partition and offset with a higher owner epoch, follows it). Tansu 0.6 shows
    aborted records to ``read_committed`` readers, the daemon's changelog reads included, so a daemon restarted
    after a kill inside a checkpoint's commit restores that checkpoint and goes on past its offset; Apache Kafka
    hides it, and the restart there reads those messages again and writes their outputs in a committed
    transaction. On Tansu the outputs of such a transaction are therefore in no committed one."""
    log = kafka_env.transactions(names.changelog)
    heads = [
        (i, key.decode(), json.loads(value.partition(b"\n")[0]), outcome, writer)
        for i, (_, _, key, value, outcome, writer) in enumerate(log)
        if key is not None and value is not None and b"/" not in key
    ]
    out = set()
    for i, pid, head, outcome, writer in heads:
        if outcome == "aborted" and head.get("offset") is not None:
            if any(
                j > i
                and p == pid
                and h.get("offset") == head["offset"]
                and h.get("epoch", 0) > head.get("epoch", 0)
                for j, p, h, o, _ in heads
                if o == "committed"
            ):
                out.add(writer)
    return out


def assert_exactly_once_for_read_committed(
    kafka_env: Any, names: Any, expected: Expected
) -> tuple[set[tuple[str, float]], set[tuple[int, int]]]:
    """What an Apache Kafka ``read_committed`` reader of the scores and alerts topics gets holds every window and
    alert event of the replay at most once and nothing else (README Delivery guarantees: the outputs of a
    transaction aborted by a daemon killed before its commit are hidden from it; the restart writes them again
    in a committed one), and all of them but those of an aborted transaction whose checkpoint a restore took,
    which only Tansu shows (:func:`restored_aborted_writers`). Returns the windows missing and those writers."""
    excused = restored_aborted_writers(kafka_env, names)
    scores = kafka_env.transactions(names.scores)
    windows = [json.loads(v) for _, _, _, v, o, _ in scores if v is not None and o in ("plain", "committed")]
    assert not [r for r in scores if r[4] == "open"]
    seen = [(w["key"], w["start"]) for w in windows]
    assert len(seen) == len(set(seen)), "a window committed twice"
    got = {(w["key"], w["start"]): w for w in windows}
    # nothing but the replay's windows, as the replay has them
    assert {k: expected.windows.get(k) for k in got} == got
    missing = set(expected.windows) - set(got)
    lost = {
        (w["key"], w["start"])
        for w in (json.loads(v) for _, _, _, v, o, writer in scores if o == "aborted" and writer in excused)
    }
    assert missing <= lost, (
        f"{len(missing - lost)} window(s) in no committed transaction: {sorted(missing - lost)[:5]}"
    )
    alerts = kafka_env.transactions(names.alerts)
    events = [
        (a["id"], a["status"])
        for a in (
            json.loads(v) for _, _, _, v, o, _ in alerts if v is not None and o in ("plain", "committed")
        )
    ]
    assert len(events) == len(set(events)), "an alert event committed twice"
    assert set(events) <= expected.alert_ids
    lost_alerts = {
        (a["id"], a["status"])
        for a in (json.loads(v) for _, _, _, v, o, writer in alerts if o == "aborted" and writer in excused)
    }
    assert expected.alert_ids - set(events) <= lost_alerts
    return missing, excused


def assert_matches_replay(kafka_env: Any, names: Any, bundle: Bundle, series: Sequence[Series]) -> Expected:
    """The daemon's scores topic, alert ids and checkpointed state equal a replay of the same series; returns
    the replay's result for further comparisons."""
    expected = replay_expected(bundle, series)
    assert kafka_env.windows(names.scores) == expected.windows
    assert kafka_env.alert_ids(names.alerts) == expected.alert_ids
    same_state(kafka_env.changelog_state(names.changelog, bundle), expected.engine)
    return expected


@pytest.fixture
def kafka_env(tansu: TansuBroker, tiny_model: tuple[Path, Bundle], tmp_path: Path) -> Iterator[KafkaEnv]:
    env = KafkaEnv(tansu, tiny_model[0], tmp_path)
    yield env
    env.stop_all()
    env.producer.close()


__all__ = [
    "Batch",
    "Expected",
    "KafkaEnv",
    "Names",
    "http_answer",
    "http_status",
    "replay_expected",
    "same_state",
    "terminate",
    "wait_for",
]

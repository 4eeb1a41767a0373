"""Benchmark of the Kafka daemon, measured side by side in one run against one broker (a Tansu it starts, or
yours): ratios, not absolute numbers, are what carry over between machines.

* single: 1,000 keys, one reading per message. The raw rate is kafka-python consuming and ``json.loads``-ing
  the same messages (no scoring); the daemon rate is consume -> decode -> score -> produce alerts ->
  checkpoint -> commit, timed from its first batch to the commit of the last offset. Target >= 0.8x.
* block: the same keys, 32 readings per message: readings scored per second vs the raw single-message rate.
  Target >= 6x.
* latency: messages stamped with the wall clock, produced at half the measured daemon rate; p50/p99 of
  (time a window is scored - event time of its last reading).
* memory: RSS of an `anomaly consume` process holding ``rss_keys`` keys (steady and peak).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from anomaly.bundle import Bundle, load_bundle, save_bundle
from anomaly.config import KafkaConfig, ModelConfig, PipelineConfig, TrainConfig
from anomaly.data import Series
from anomaly.kafka.daemon import Daemon, DaemonOptions
from anomaly.kafka.tansu import TansuBroker, free_port
from anomaly.metrics import PipelineMetrics


class _LatencyMetrics(PipelineMetrics):
    """PipelineMetrics that also keeps every window's latency (the histogram only keeps buckets)."""

    def __init__(self) -> None:
        super().__init__()
        self.latencies: list[float] = []
        self.windows = 0

    def observe(self, out: Any, batch: Any, engine: Any, now: float) -> None:
        super().observe(out, batch, engine, now)
        self.windows += len(out.windows)
        self.latencies.extend(now - float(w.timestamps[-1]) for w in out.windows)


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


def _raw_rate(bootstrap: str, topic: str, n: int) -> float:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=2000)
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    got, t0 = 0, 0.0
    while got < n:
        for recs in consumer.poll(timeout_ms=500).values():
            t0 = t0 or time.perf_counter()  # timed from the first records, like the daemon's first batch
            for r in recs:
                json.loads(r.value)
            got += len(recs)
    rate = n / (time.perf_counter() - t0)
    consumer.close()
    return rate


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
    first batch), then stop it; returns seconds from its first non-empty batch to the end of its final
    checkpoint and commit, i.e. until every message's alerts and state are durable and its offset committed."""
    tag = uuid.uuid4().hex[:6]
    cfg = PipelineConfig(
        kafka=KafkaConfig(
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
    )
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(cfg.kafka.alerts_topic, 1, 1), NewTopic(cfg.kafka.dead_letter_topic, 1, 1)])
    admin.close()
    daemon = Daemon(cfg, model, metrics=metrics or PipelineMetrics(), options=DaemonOptions())
    daemon.connect()
    first: list[float] = []
    to_batch = daemon.source.to_batch

    def timed(records: Any) -> Any:
        if records and not first:
            first.append(time.perf_counter())
        return to_batch(records)

    daemon.source.to_batch = timed  # type: ignore[method-assign]
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    t = daemon.tracker
    if when_ready is not None:
        while not daemon.ready:
            time.sleep(0.005)
        when_ready()
    while True:
        time.sleep(0.002)
        if not first:
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


def _feed(
    bootstrap: str,
    topic: str,
    rate: float,
    keys: int,
    mean: list[float],
    scale: list[float],
    go: Any,
    stop: Any,
) -> None:
    """Producer process of the latency run: one reading per message stamped with the wall clock at send."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=1, acks=1)
    rng = np.random.default_rng(1)
    m, sc = np.asarray(mean), np.asarray(scale)
    go.wait()
    n, t0 = 0, time.monotonic()
    while not stop.is_set():
        k = n % keys
        body = {
            "key": f"k{k}",
            "ts": time.time(),
            "values": (m + sc * rng.normal(size=len(m))).round(4).tolist(),
        }
        producer.send(topic, key=f"k{k}".encode(), value=json.dumps(body).encode())
        n += 1
        ahead = n / rate - (time.monotonic() - t0)
        if ahead > 0.001:
            time.sleep(ahead)
    producer.close()


def run_kafka_bench(
    bootstrap: str | None = None,
    model: str | None = None,
    *,
    keys: int = 1000,
    readings: int = 120,
    block: int = 32,
    block_rounds: int = 4,
    latency_s: float = 10.0,
    rss_keys: int = 100_000,
    features: int = 6,
    log: Any = print,
) -> dict[str, Any]:
    """Run every measurement and return them as a dict (also printed through ``log``)."""
    broker = None if bootstrap else TansuBroker().start()
    bootstrap = bootstrap or broker.bootstrap  # type: ignore[union-attr]
    try:
        model, bundle = _bundle(model, features)
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        tag = uuid.uuid4().hex[:6]
        single, blocks, live = f"bench-single-{tag}", f"bench-block-{tag}", f"bench-live-{tag}"
        admin.create_topics([NewTopic(t, 4, 1) for t in (single, blocks, live)])
        admin.close()
        res: dict[str, Any] = {
            "keys": keys,
            "window": bundle.window,
            "hidden": bundle.arch.hidden_size,
            "features": len(bundle.features),
            "torch_threads": torch.get_num_threads(),
        }
        n_single = keys * readings
        ends = _produce(bootstrap, single, _messages(bundle, keys, readings, 1, 1.7e9))
        res["raw_msgs_per_s"] = round(_raw_rate(bootstrap, single, n_single))
        secs, _ = _run_daemon(bootstrap, model, single, ends)
        res["daemon_msgs_per_s"] = round(n_single / secs)
        res["single_ratio"] = round(res["daemon_msgs_per_s"] / res["raw_msgs_per_s"], 3)
        log(
            f"single readings: raw consume+decode {res['raw_msgs_per_s']:,} msg/s, daemon end-to-end "
            f"{res['daemon_msgs_per_s']:,} msg/s -> {res['single_ratio']:.2f}x (target >= 0.8x)"
        )

        n_block = keys * block * block_rounds
        ends = _produce(bootstrap, blocks, _messages(bundle, keys, block * block_rounds, block, 1.7e9))
        secs, _ = _run_daemon(bootstrap, model, blocks, ends)
        res["block_readings_per_s"] = round(n_block / secs)
        res["block_ratio"] = round(res["block_readings_per_s"] / res["raw_msgs_per_s"], 2)
        log(
            f"blocks of {block}: {res['block_readings_per_s']:,} readings/s scored -> {res['block_ratio']:.1f}x the "
            f"raw single-message rate (target >= 6x)"
        )

        rate = res["daemon_msgs_per_s"] / 2
        metrics = _LatencyMetrics()
        ctx = multiprocessing.get_context("spawn")  # its own interpreter: no GIL shared with the daemon
        go, stop = ctx.Event(), ctx.Event()
        feeder = ctx.Process(
            target=_feed,
            args=(
                bootstrap,
                live,
                rate,
                keys,
                bundle.scaler.mean.tolist(),
                bundle.scaler.scale.tolist(),
                go,
                stop,
            ),
            daemon=True,
        )
        feeder.start()
        _run_daemon(bootstrap, model, live, None, stop_after=latency_s, metrics=metrics, when_ready=go.set)
        stop.set()
        feeder.join(30)
        lat = np.asarray(metrics.latencies[len(metrics.latencies) // 5 :])  # skip the first fifth (warm-up)
        res["latency_rate_msgs_per_s"] = round(rate)
        res["latency_windows"] = int(lat.size)
        if lat.size:
            res["latency_p50_ms"] = round(float(np.percentile(lat, 50)) * 1000, 1)
            res["latency_p99_ms"] = round(float(np.percentile(lat, 99)) * 1000, 1)
        log(
            f"latency at {rate:,.0f} msg/s (half the daemon rate): p50 {res.get('latency_p50_ms')} ms, "
            f"p99 {res.get('latency_p99_ms')} ms over {lat.size} windows"
        )

        if rss_keys:
            res.update({f"rss_{k}": v for k, v in _rss(bootstrap, model, bundle, rss_keys).items()})
            log(
                f"memory: {res['rss_keys']:,} keys held -> RSS {res['rss_rss_mb']:,} MB "
                f"(peak {res['rss_peak_rss_mb']:,} MB)"
            )
        return res
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":  # python -m anomaly.bench_kafka [KEYS_FOR_RSS]
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    torch.set_num_threads(1)  # as `anomaly --threads 1` does
    print(json.dumps(run_kafka_bench(rss_keys=int(sys.argv[1]) if len(sys.argv) > 1 else 100_000), indent=2))

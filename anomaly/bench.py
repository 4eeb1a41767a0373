"""`anomaly bench`: engine throughput against a naive baseline, flatness over a long stream, and memory.

Every figure is a ratio of two measurements taken side by side in the same run, so a noisy or slower machine
shifts both sides alike. Nothing here is a pass/fail test; the targets are printed next to the measurements.
"""

from __future__ import annotations

import gc
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from anomaly.bundle import Bundle
from anomaly.config import EngineConfig
from anomaly.data import Scaler
from anomaly.engine import Engine, Event
from anomaly.model import Architecture, LSTMAutoencoder, reading_errors

POLL = 2000  # events per engine call, like one Kafka poll of max_poll_records


def demo_bundle(
    n_features: int = 6, window: int = 32, hidden: int = 64, seed: int = 0, forecast: bool = True
) -> Bundle:
    """The demo architecture with fixed random weights: the work per reading is the same as a trained model's.
    `forecast`: scored one reading at a time (the default model) or by whole windows (reconstruction only)."""
    torch.manual_seed(seed)
    model = LSTMAutoencoder(Architecture(n_features, window, hidden, 1, 0.0, forecast)).eval()
    cal = {"reference_error": 1.0, "default_threshold": 1.5}
    scaler = Scaler(np.zeros(n_features, np.float32), np.ones(n_features, np.float32))
    return Bundle(model, [f"f{i}" for i in range(n_features)], scaler, cal, {"model_version": "bench"})


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def stream(n_keys: int, n_readings: int, n_features: int, seed: int = 0):
    """Round-robin single-reading events over n_keys keys, one reading per key per second."""
    rng = np.random.default_rng(seed)
    values = rng.normal(0, 1, (min(n_readings, 100_000), n_features))
    keys = [f"sensor-{i}" for i in range(n_keys)]
    for i in range(n_readings):
        yield Event(keys[i % n_keys], np.array([float(i // n_keys)]), values[i % len(values)].reshape(1, -1))


def engine_rate(bundle: Bundle, n_keys: int, n_readings: int) -> float:
    engine = Engine(bundle, EngineConfig())
    events = list(stream(n_keys, n_readings, len(bundle.features)))
    t0 = time.perf_counter()
    for lo in range(0, len(events), POLL):
        engine.process(events[lo : lo + POLL])
    return n_readings / (time.perf_counter() - t0)


def naive_rate(bundle: Bundle, n_keys: int, n_readings: int) -> float:
    """Re-score each key's last full window for every new reading, cold state, one model call per reading."""
    model, w = bundle.model, bundle.window
    history: dict[str, deque] = {}
    events = list(stream(n_keys, n_readings + n_keys * w, len(bundle.features)))
    warm, timed = events[: n_keys * w], events[n_keys * w :]
    for ev in warm:
        history.setdefault(ev.key, deque(maxlen=w)).append(ev.values[0])
    t0 = time.perf_counter()
    with torch.inference_mode():
        for ev in timed:
            buf = history[ev.key]
            buf.append(ev.values[0])
            x = torch.from_numpy(np.asarray(buf, np.float32)).unsqueeze(0)
            out, _ = model(x)
            float(reading_errors(out, x)[0, -1].mean())
    return len(timed) / (time.perf_counter() - t0)


def flatness(bundle: Bundle, n_keys: int, total: int, span: int, repeats: int = 5) -> tuple[float, float]:
    """Throughput over the first `span` readings of a stream vs over readings [total - span, total).

    Spans of 10k readings last tens of milliseconds, so each side is a median of `repeats`: the first span of
    that many fresh engines, and that many consecutive spans starting at `total - span` of one long stream.
    Events are built before the clock starts."""

    def batches(gen, n: int) -> list[list[Event]]:
        return [[next(gen) for _ in range(min(POLL, n - lo))] for lo in range(0, n, POLL)]

    def rate(engine: Engine, todo: list[list[Event]]) -> float:
        t0 = time.perf_counter()
        for batch in todo:
            engine.process(batch)
        return sum(len(b) for b in todo) / (time.perf_counter() - t0)

    n_features = len(bundle.features)
    firsts = [
        rate(Engine(bundle, EngineConfig()), batches(stream(n_keys, span, n_features), span))
        for _ in range(repeats)
    ]
    engine = Engine(bundle, EngineConfig())
    gen = stream(n_keys, total + (repeats - 1) * span, n_features)
    for _ in range(0, total - span, POLL):
        engine.process([next(gen) for _ in range(POLL)])
    lasts = [rate(engine, batches(gen, span)) for _ in range(repeats)]
    return float(np.median(firsts)), float(np.median(lasts))


def memory(bundle: Bundle, n_keys: int) -> dict[str, float]:
    gc.collect()
    before = rss_bytes()
    engine = Engine(bundle, EngineConfig(max_keys=max(n_keys, 1)))
    events = stream(n_keys, n_keys * (bundle.window // 2), len(bundle.features))  # half-filled windows
    batch: list[Event] = []
    for ev in events:
        batch.append(ev)
        if len(batch) == POLL:
            engine.process(batch)
            batch = []
    engine.process(batch)
    gc.collect()
    after = rss_bytes()
    return {
        "keys": len(engine),
        "state_bytes_per_key": engine.store.bytes_per_key(),
        "rss_growth_mb": (after - before) / 2**20,
        "rss_total_mb": after / 2**20,
    }


FLAT_SPAN = 10_000  # readings in each of the flatness check's first and last spans


def run_engine_bench(
    keys: tuple[int, ...] = (1, 100, 1000, 10000),
    flat_total: int = 1_010_000,
    memory_keys: int = 100_000,
    say: Callable[[str], Any] = print,
) -> dict[str, Any]:
    bundle = demo_bundle()
    w = bundle.window
    say(
        f"engine benchmark: demo architecture (window {w}, hidden 64, 6 features), torch threads "
        f"{torch.get_num_threads()}, {POLL} single-reading events per engine call"
    )
    say(f"{'keys':>7} {'engine readings/s':>18} {'naive readings/s':>17} {'ratio':>7}")
    rows = []
    for k in keys:
        n = max(20_000, k * w * 3)
        eng = engine_rate(bundle, k, n)
        naive = naive_rate(bundle, k, 400)
        rows.append({"keys": k, "engine": eng, "naive": naive, "ratio": eng / naive})
        say(f"{k:>7} {eng:>18,.0f} {naive:>17,.0f} {eng / naive:>6.1f}x")
    at_1000 = next((r["ratio"] for r in rows if r["keys"] == 1000), None)
    if at_1000 is not None:
        say(f"target: >= 20x the naive baseline at 1,000 keys -> {at_1000:.1f}x")
    result: dict[str, Any] = {"throughput": rows}
    if flat_total:
        span = FLAT_SPAN
        first, last = flatness(bundle, 1000, flat_total, span)
        say(
            f"flatness (1,000 keys, medians of 5 spans): first {span:,} readings {first:,.0f}/s, readings "
            f"{flat_total - span:,}-{flat_total:,} {last:,.0f}/s -> ratio {last / first:.2f} (target >= 0.95)"
        )
        result["flatness"] = {"first": first, "last": last, "ratio": last / first, "total": flat_total}
    if memory_keys:
        mem = memory(bundle, memory_keys)
        say(
            f"memory: {mem['state_bytes_per_key']:,} bytes of state per key; {mem['keys']:,} active keys grew the "
            f"process by {mem['rss_growth_mb']:.0f} MB to {mem['rss_total_mb']:.0f} MB RSS (target < 1 GB)"
        )
        result["memory"] = mem
    return result

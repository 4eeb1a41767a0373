"""Memory of the retrain CronJob, to size deploy/k8s/retrain-cronjob.yaml's request and limit (README:
deploy/README.md, Kubernetes). Run from the repository root with the test extra installed (the Tansu broker):

    .venv/bin/python deploy/measure_retrain_memory.py [--keys K] [--readings R] [--block B] [--epochs E]

The CronJob's command, `anomaly retrain -m MODEL -p pipeline.toml --since 7d -o challenger.pt --promote`, with
deploy/k8s/configmap.yaml's pipeline.toml (only the broker address and the replication factor changed, for a
local single-node Tansu) and a champion of the demo architecture (window 32, hidden 64, 6 features), on a
6-partition input topic holding R readings of each of K keys spread over the last 7 days (B readings a message;
1: one reading a message, as the daemon's measurement sends). `retrain` holds the whole range in memory, so its
memory grows with the readings in it: run two sizes to get the part per million readings.
--epochs overrides the champion's (1 for this champion): each epoch walks the same arrays, so the peak is that of
the first. VmRSS is sampled every 0.1 s and split by the command's own lines: reading the topic (until
`training set:`), training (until `challenger`), then the champion-challenger comparison on the holdout.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from kafka import KafkaProducer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anomaly.bench_kafka import _bundle  # noqa: E402
from anomaly.kafka.tansu import TansuBroker  # noqa: E402
from deploy.measure_memory import create_topics, pipeline_text  # noqa: E402

WEEK = 7 * 86_400.0


def produce(bootstrap: str, bundle, keys: int, readings: int, block: int) -> int:  # type: ignore[no-untyped-def]
    """R readings of each of K keys, evenly spread over the last 7 days (less a minute), keys interleaved."""
    rng = np.random.default_rng(0)
    mean, scale = bundle.scaler.mean, bundle.scaler.scale
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=262_144, acks=1)
    t0, step = time.time() - WEEK + 60, (WEEK - 120) / readings
    sent = 0
    for start in range(0, readings, block):
        n = min(block, readings - start)
        values = (mean + scale * rng.normal(size=(keys, n, len(mean)))).round(4)
        for k in range(keys):
            rows = [
                {"ts": round(t0 + (start + i) * step, 3), "values": values[k, i].tolist()} for i in range(n)
            ]
            body = {"key": f"k{k}", **rows[0]} if block == 1 else {"key": f"k{k}", "readings": rows}
            producer.send(
                "sensors", key=f"k{k}".encode(), value=json.dumps(body, separators=(",", ":")).encode()
            )
            sent += 1
    producer.flush()
    producer.close()
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1000, help="keys in the range")
    parser.add_argument("--readings", type=int, default=1000, help="readings of each key in the range")
    parser.add_argument("--block", type=int, default=1, help="readings a message")
    parser.add_argument("--epochs", type=int, default=0, help="override the champion's epochs (0: keep them)")
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="anomaly-retrain-memory-"))
    broker = TansuBroker().start()
    model = ""
    try:
        model, bundle = _bundle(None, 6)
        text = pipeline_text(broker.bootstrap, 9108)
        (work / "pipeline.toml").write_text(text)
        create_topics(broker.bootstrap)
        started = time.monotonic()
        messages = produce(broker.bootstrap, bundle, opts.keys, opts.readings, opts.block)
        produced_s = time.monotonic() - started
        champion = work / "model.pt"
        shutil.copy(model, champion)
        args = ["retrain", "-m", str(champion), "-p", str(work / "pipeline.toml"), "--since", "7d"]
        args += ["-o", str(work / "challenger.pt"), "--promote"]
        args += ["--epochs", str(opts.epochs)] if opts.epochs else []
        exe = str(Path(sys.executable).with_name("anomaly"))
        out = open(work / "retrain.log", "w")  # noqa: SIM115
        started = time.monotonic()
        proc = subprocess.Popen([exe, *args], stdout=out, stderr=subprocess.STDOUT)
        samples: list[tuple[str, float, float, float]] = []

        def phase() -> str:
            log = (work / "retrain.log").read_text(errors="replace")
            if re.search(r"^challenger ", log, re.M):
                return "compare on the holdout"
            return "train" if "training set:" in log else "read the topic"

        def sample() -> None:
            while proc.poll() is None:
                try:
                    status = Path(f"/proc/{proc.pid}/status").read_text()
                except OSError:
                    break
                v = {
                    ln.split(":")[0]: int(ln.split()[1]) / 1024
                    for ln in status.splitlines()
                    if ln.startswith(("VmRSS", "VmHWM"))
                }
                if "VmRSS" in v:
                    samples.append((phase(), v["VmRSS"], v["VmHWM"], time.monotonic() - started))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        proc.wait()
        sampler.join()
        out.close()
        took = time.monotonic() - started
        log = (work / "retrain.log").read_text(errors="replace")
        lines = [
            ln
            for ln in log.splitlines()
            if ln.startswith(("training set:", "challenger ", "decision:", "error:"))
        ]
        print(
            f"{opts.keys:,} keys x {opts.readings:,} readings = {opts.keys * opts.readings:,} readings in "
            f"{messages:,} messages (produced in {produced_s:.0f} s); retrain exit {proc.returncode} in {took:.0f} s"
        )
        print("\n".join(lines))
        print("| phase | RSS min | RSS max | peak (VmHWM) so far | seconds |\n|---|---|---|---|---|")
        names = list(dict.fromkeys(p for p, _, _, _ in samples))
        # a phase lasts from its first sample to the next phase's first (the first from the start, the last to
        # the exit): to 0.1 s, the sampling period
        bounds = [0.0] + [next(t for p, _, _, t in samples if p == n) for n in names[1:]] + [took]
        for i, name in enumerate(names):
            rss = [r for p, r, _, _ in samples if p == name]
            hwm = max(h for p, _, h, _ in samples if p == name)
            print(
                f"| {name} | {min(rss):.0f} | {max(rss):.0f} | {hwm:.0f} | {bounds[i + 1] - bounds[i]:.1f} |"
            )
        print("(MiB; seconds of wall time, the first phase including the start of the command)")
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
        if model:
            shutil.rmtree(Path(model).parent, ignore_errors=True)


if __name__ == "__main__":
    main()

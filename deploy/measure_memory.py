"""Memory of the k8s daemon, to size deploy/k8s/deployment.yaml's requests and limits (README: deploy/README.md,
Kubernetes). Run from the repository root with the test extra installed (the Tansu broker):

    .venv/bin/python deploy/measure_memory.py [--keys N] [--seconds S]

`anomaly consume` with deploy/k8s/configmap.yaml's pipeline.toml (only the broker address, the changelog's
replication factor and the group timeouts changed, for a local single-node Tansu) and a model of the demo
architecture (window 32, hidden 64, 6 features), on a 6-partition input topic. Phases, VmRSS sampled every 0.1 s:

- idle: started, nothing read;
- steady: KEYS keys held (default engine.max_keys), then one reading a second on every partition for S seconds,
  so that every 5 s checkpoint writes the state of every key;
- churn: KEYS // 2 never-seen keys in 110-byte messages (fewer new keys in one 2 MiB batch than the store has
  free rows), then S seconds as in steady;
- churn, small messages: KEYS never-seen keys in 50-byte messages, then S seconds as in steady;
- restart: the daemon stopped (SIGTERM, final checkpoint) and a new one started, which restores the KEYS keys
  from the changelog (as a restarted or rescheduled pod does), then S seconds as in steady;
- restore over the cap: a daemon allowed 1.5 KEYS keys takes KEYS // 2 more, checkpoints and stops; the shipped
  daemon restores those 1.5 KEYS keys (a rebalance handing a daemon at its cap another member's partitions), then
  evicts down to KEYS; then S seconds as in steady.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.request
from pathlib import Path

import numpy as np
import yaml
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anomaly.bench_kafka import _bundle  # noqa: E402
from anomaly.kafka.tansu import TansuBroker, free_port  # noqa: E402


def pipeline_text(bootstrap: str, port: int) -> str:
    (configmap,) = [d for d in yaml.safe_load_all((ROOT / "deploy/k8s/configmap.yaml").read_text()) if d]
    text = configmap["data"]["pipeline.toml"]
    text = re.sub(r'bootstrap_servers = ".*"', f'bootstrap_servers = "{bootstrap}"', text)
    text = text.replace(
        "replication_factor = 3",
        "replication_factor = 1\nmax_poll_interval_ms = 3000\nsession_timeout_ms = 3000",
    )
    return text.replace("port = 9108", f"port = {port}").replace('host = "0.0.0.0"', 'host = "127.0.0.1"')


def create_topics(bootstrap: str) -> None:
    """The ConfigMap's topics: the input (6 partitions), the alerts and the dead letters."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics(
        [NewTopic("sensors", 6, 1), NewTopic("anomaly-alerts", 1, 1), NewTopic("anomaly-dead-letters", 1, 1)]
    )
    admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--keys",
        type=int,
        default=0,
        help="engine.max_keys and the keys held (default: the ConfigMap's max_keys)",
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of each steady phase")
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="anomaly-memory-"))
    broker = TansuBroker().start()
    proc = None
    model = ""
    try:
        model, bundle = _bundle(None, 6)
        port = free_port()
        text = pipeline_text(broker.bootstrap, port)
        keys = opts.keys or tomllib.loads(text)["engine"]["max_keys"]
        text = re.sub(r"max_keys = \d+", f"max_keys = {keys}", text)
        (work / "pipeline.toml").write_text(text)
        create_topics(broker.bootstrap)
        args = ["consume", "-m", model, "-p", str(work / "pipeline.toml"), "--shutdown-timeout", "30"]
        log = open(work / "daemon.log", "w")  # noqa: SIM115

        def start(env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
            exe = str(Path(sys.executable).with_name("anomaly"))
            return subprocess.Popen([exe, *args], stdout=log, stderr=log, env={**os.environ, **(env or {})})

        proc = start()
        phase = ["start"]
        samples: list[tuple[str, float, float]] = []

        def sample() -> None:
            while phase[0] != "done":
                try:
                    status = Path(f"/proc/{proc.pid}/status").read_text()
                except OSError:
                    time.sleep(0.1)
                    continue
                v = {
                    ln.split(":")[0]: int(ln.split()[1]) / 1024
                    for ln in status.splitlines()
                    if ln.startswith(("VmRSS", "VmHWM"))
                }
                if "VmRSS" in v:  # not while the process is exiting
                    samples.append((phase[0], v["VmRSS"], v["VmHWM"]))
                time.sleep(0.1)

        threading.Thread(target=sample, daemon=True).start()

        def metric(name: str) -> float:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            return next(float(ln.split()[1]) for ln in body.splitlines() if ln.startswith(name + " "))

        def wait_ready() -> None:
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"the daemon ended: {(work / 'daemon.log').read_text()}")
                try:
                    if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200:
                        return
                except OSError:
                    pass
                time.sleep(0.5)

        wait_ready()
        time.sleep(8)
        phase[0] = "idle"
        time.sleep(5)

        rng = np.random.default_rng(0)
        mean, scale = bundle.scaler.mean, bundle.scaler.scale
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20, batch_size=262_144, acks=1)
        t0 = 1.7e9

        def send(names: list[str], i: int, small: bool = False) -> list[tuple[str, object]]:
            futures = []
            for k in names:
                if small:
                    value = {"key": k, "ts": int(t0) + i, "values": [1, 2, 3, 4, 5, 6]}
                else:
                    value = {
                        "key": k,
                        "ts": t0 + i,
                        "values": (mean + scale * rng.normal(size=6)).round(4).tolist(),
                    }
                body = json.dumps(value, separators=(",", ":")).encode()
                futures.append((k, producer.send("sensors", key=k.encode(), value=body)))
            producer.flush()
            return futures

        def steady(name: str, start: int, on_partition: dict[int, str]) -> int:
            phase[0] = name
            end, i = time.monotonic() + opts.seconds, start
            while time.monotonic() < end:
                send(list(on_partition.values()), i)
                i += 1
                time.sleep(1)
            return i

        phase[0] = "ingest"
        send([f"k{k}" for k in range(keys)], 0)
        futures = send([f"k{k}" for k in range(keys)], 1)
        on_partition: dict[int, str] = {}
        for k, f in futures[:2000]:
            on_partition.setdefault(f.get().partition, k)  # type: ignore[attr-defined]
        while metric("anomaly_keys_held") < keys:
            time.sleep(0.5)
        i = steady("steady", 2, on_partition)
        phase[0] = "churn"
        send([f"n{k}" for k in range(keys // 2)], i)
        i = steady("after churn", i + 1, on_partition)
        phase[0] = "churn, small messages"
        send([f"s{k}" for k in range(keys)], i, small=True)
        i = steady("after churn, small messages", i + 1, on_partition)
        held, evicted = metric("anomaly_keys_held"), metric("anomaly_keys_evicted_total")
        phase[0] = "stop"
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        first_status = proc.returncode
        phase[0] = "restart: restore"
        proc = start()
        wait_ready()
        i = steady("after the restore", i, on_partition)
        restored = metric("anomaly_keys_held")  # set by the batches after the restore
        phase[0] = "stop"
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        # A rebalance gives a daemon at its cap another member's partitions: it restores more keys than max_keys
        # (then evicts down to it). Played by a daemon allowed 1.5x the keys that takes half as many new keys
        # again, then the shipped daemon restoring its checkpoint.
        proc = start({"ANOMALY_ENGINE_MAX_KEYS": str(keys * 3 // 2)})
        wait_ready()
        send([f"r{k}" for k in range(keys // 2)], i)
        while metric("anomaly_keys_held") < keys * 3 // 2:
            send(list(on_partition.values()), i + 1)
            i += 1
            time.sleep(1)
        time.sleep(12)  # two checkpoints
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        phase[0] = "restart: restore of 1.5x max_keys"
        proc = start()
        wait_ready()
        steady("after that restore", i + 1, on_partition)
        over_cap = metric("anomaly_keys_held")
        phase[0] = "stop"
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        phase[0] = "done"
        print(
            f"keys held {held:,.0f}, evicted {evicted:,.0f}; after the restart {restored:,.0f}; after the restore "
            f"of 1.5x max_keys {over_cap:,.0f}; exit status of the first and last daemon {first_status}, {proc.returncode}"
        )
        print("| phase | RSS min | RSS max | RSS at the end | peak (VmHWM) so far |\n|---|---|---|---|---|")
        for name in dict.fromkeys(p for p, _, _ in samples if p not in ("start", "stop", "done")):
            rss = [r for p, r, _ in samples if p == name]
            hwm = max(h for p, _, h in samples if p == name)
            print(f"| {name} | {min(rss):.0f} | {max(rss):.0f} | {rss[-1]:.0f} | {hwm:.0f} |")
        print("(MiB)")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
        if model:
            shutil.rmtree(Path(model).parent, ignore_errors=True)


if __name__ == "__main__":
    main()

"""`anomaly consume` against a real Tansu broker: parity with the replay loop, dead letters, lifecycle."""

from __future__ import annotations

import pytest
from conftest import http_status, replay_expected, same_state, terminate, wait_for

pytestmark = pytest.mark.integration

BAD = [
    (b"unit-000", b"{not json"),
    (b"unit-000", b'{"ts": 1, "values": [1, 2]}'),  # 2 values, the model has 3 features
    (None, b'{"ts": 1, "values": [1, 2, 3]}'),  # no key anywhere
    (b"unit-001", b'{"values": [1, 2, 3]}'),  # no timestamp
    (b"unit-002", b'{"ts": "yesterday", "values": [1, 2, 3]}'),
    (b"bad-nan", b'{"ts": 1, "values": [null, 2, 3]}'),  # NaN: refused by the engine (nan_policy=reject)
    (b"unit-003", b"x" * 3000),  # oversized (max_message_bytes lowered to 2000 below)
    (b"unit-004", b'{"ts": 1e30, "values": [1, 2, 3]}'),  # far ahead of the clock: would make every key idle
]
BAD_REASONS = [
    "invalid_json",
    "feature_count",
    "missing_field",
    "missing_field",
    "bad_timestamp",
    "non_finite",
    "oversized",
    "future_timestamp",
]


def test_uninterrupted_run_equals_replay_and_refusals_go_to_dead_letters(
    kafka_env, stream, tiny_model, monkeypatch
):
    _, series = stream
    path, bundle = tiny_model
    names = kafka_env.names(partitions=4)
    ends = kafka_env.produce(names.input, series, bundle.features, raw=BAD)
    monkeypatch.setenv("ANOMALY_KAFKA_MAX_MESSAGE_BYTES", "2000")
    state_out = kafka_env.workdir / "state.bin"
    proc, port = kafka_env.start(names, "--checkpoint-interval", "0.5", "--state-out", str(state_out))
    wait_for(lambda: http_status(port, "/readyz") == 200, 30, "daemon ready")
    assert http_status(port, "/healthz") == 200
    kafka_env.wait_committed(names.group, names.input, ends)
    assert terminate(proc) == 0

    expected = replay_expected(bundle, series)
    got_windows = kafka_env.windows(names.scores)
    assert got_windows == expected.windows
    assert kafka_env.alert_ids(names.alerts) == expected.alert_ids
    assert len(expected.alert_ids) > 0

    dead = kafka_env.read(names.dead)
    assert sorted((r.value, dict(r.headers)["reason"].decode()) for r in dead) == sorted(
        zip([v for _, v in BAD], BAD_REASONS, strict=True)
    )
    for rec in dead:
        h = {k: v.decode() for k, v in rec.headers}
        assert h["source_topic"] == names.input
        assert int(h["source_offset"]) >= 0 and int(h["source_partition"]) in range(4)

    from anomaly.config import EngineConfig
    from anomaly.engine import Engine

    dumped = Engine(bundle, EngineConfig(threshold="static"))
    dumped.restore(state_out.read_bytes())
    same_state(dumped, expected.engine)
    same_state(kafka_env.changelog_state(names.changelog, bundle), expected.engine)


def _consume(*args: str, env: dict[str, str] | None = None):
    from click.testing import CliRunner

    from anomaly.cli import main

    return CliRunner().invoke(main, ["consume", *args, "--metrics-port", "0"], env=env)


def test_bad_settings_fail_with_one_line_and_never_show_the_password(kafka_env, tiny_model):
    model = str(tiny_model[0])
    bootstrap = kafka_env.broker.bootstrap
    missing = _consume(
        "-m",
        model,
        "-b",
        bootstrap,
        "--topics",
        "no-such-topic",
        "--alerts-topic",
        "no-such-alerts",
        "--dead-letter-topic",
        "no-such-dead",
    )
    assert (missing.exit_code, missing.stderr) == (
        2,
        f"error: input topic 'no-such-topic' (kafka.topics, --topics), alerts topic 'no-such-alerts' "
        "(kafka.alerts_topic, --alerts-topic), dead-letter topic 'no-such-dead' (kafka.dead_letter_topic, "
        f"--dead-letter-topic) not found on {bootstrap}; create them first or set kafka.auto_create_topics = "
        "true\n",
    )
    unreachable = _consume("-m", model, "-b", "127.0.0.1:1", "--bootstrap-timeout", "1")
    assert (unreachable.exit_code, unreachable.stderr) == (
        2,
        (
            "error: cannot reach Kafka at 127.0.0.1:1 (admin client): no usable connection; check --bootstrap-servers "
            "(kafka.bootstrap_servers), that the broker is up and the security settings (security_protocol "
            "PLAINTEXT)\n"
        ),
    )
    secret = {
        "ANOMALY_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "ANOMALY_KAFKA_SASL_USERNAME": "u",
        "ANOMALY_KAFKA_SASL_PASSWORD": "s3cret-pw",
    }
    sasl = _consume(
        "-m",
        model,
        "-b",
        bootstrap,
        "--security-protocol",
        "SASL_PLAINTEXT",
        "--bootstrap-timeout",
        "1",
        env=secret,
    )  # Tansu runs without SASL: the handshake fails
    assert sasl.exit_code == 2 and len(sasl.stderr.splitlines()) == 1
    assert "s3cret-pw" not in sasl.output
    bad_mechanism = _consume(
        "-m",
        model,
        "-b",
        bootstrap,
        "--security-protocol",
        "SASL_SSL",
        env={**secret, "ANOMALY_KAFKA_SASL_MECHANISM": "GSSAPI"},
    )
    assert (bad_mechanism.exit_code, bad_mechanism.stderr) == (
        2,
        (
            "error: kafka.sasl_mechanism must be one of: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512; got 'GSSAPI' (from "
            "environment variable ANOMALY_KAFKA_SASL_MECHANISM)\n"
        ),
    )


def test_the_producer_finds_the_group_coordinator_at_assignment(kafka_env, tiny_model):
    """The transactional producer looks up the group coordinator on its first offset commit, with two retry
    backoffs (0.2 s). The claims committed at assignment do that lookup, so the stream's first checkpoint does
    not stall the loop for it."""
    import threading

    from kafka.protocol.metadata.find_coordinator import CoordinatorType

    from anomaly.config import KafkaConfig, PipelineConfig
    from anomaly.kafka.daemon import Daemon

    names = kafka_env.names(partitions=2)
    kafka = KafkaConfig(
        bootstrap_servers=kafka_env.broker.bootstrap,
        topics=(names.input,),
        group_id=names.group,
        alerts_topic=names.alerts,
        dead_letter_topic=names.dead,
        changelog_topic=names.changelog,
        checkpoint_interval_s=3600.0,
        max_poll_interval_ms=3000,
        session_timeout_ms=3000,
    )
    daemon = Daemon(PipelineConfig(kafka=kafka), str(tiny_model[0]))
    daemon.connect()
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: daemon.ready, 30, "partitions assigned")
        manager = daemon.delivery.producer._transaction_manager  # no public accessor
        assert manager.coordinator(CoordinatorType.GROUP) is not None
    finally:
        daemon.stop.set()
        thread.join(60)


def test_lag_has_a_series_for_every_assigned_partition_read_from_or_not(kafka_env, stream, tiny_model):
    """anomaly_consumer_lag_messages had series only for partitions the daemon had read a message from: the
    three partitions of four that got no message had none, not 0 (and one with lag and nothing read yet none
    either; tests/test_kafka_state.py shows that case)."""
    import json
    import re
    import urllib.request

    _, series = stream
    names = kafka_env.names(partitions=4)
    s = series[0]
    for t, row in zip(s.timestamps[:50].tolist(), s.values[:50].tolist(), strict=True):
        body = json.dumps({"key": s.key, "ts": t, "values": row}).encode()
        kafka_env.producer.send(names.input, key=s.key.encode(), value=body, partition=0)
    kafka_env.producer.flush()
    proc, port = kafka_env.start(names, "--checkpoint-interval", "0.5")
    kafka_env.wait_committed(names.group, names.input, {0: 50})

    def lags() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
        found = re.findall(
            r'^anomaly_consumer_lag_messages\{partition="(\d+)",topic="[^"]+"\} (\S+)$', text, re.M
        )
        return {p: float(v) for p, v in found}

    wait_for(lambda: len(lags()) == 4, 20, "a lag series for each of the 4 assigned partitions")
    assert lags() == {"0": 0.0, "1": 0.0, "2": 0.0, "3": 0.0}
    assert terminate(proc) == 0


def connecting_daemon(model, tmp_path):
    """`consume` pointed at a port where no broker listens (it keeps connecting, up to its 120 s bootstrap
    timeout), once its endpoint answers: the process and its log (stdout and stderr)."""
    import os
    import subprocess

    from conftest import ANOMALY

    from anomaly.kafka.tansu import free_port

    port = free_port()
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*ANOMALY, "consume", "-m", str(model), "-b", "127.0.0.1:1", "--bootstrap-timeout", "120"]
            + ["--metrics-port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        wait_for(lambda: http_status(port, "/healthz") == 200, 60, "the endpoint up, the daemon connecting")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, log


def test_a_sigterm_another_thread_takes_while_connecting_ends_it_at_once(tiny_model, tmp_path):
    """Connecting (a broker away), the main thread waits inside kafka-python's bootstrap, and Linux gives a
    process's signal to another thread when the main thread has one pending (a SIGHUP and a SIGTERM back to
    back): Python ran the SIGTERM's handler only when the main thread next woke, up to --bootstrap-timeout (120 s
    here) later. The SIGTERM is sent to a thread other than the main one (tgkill), as the kernel then does, so
    the case is met every run; it ends the start within seconds, status 143, one line."""
    import ctypes
    import os
    import signal
    import time

    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "tgkill"):  # glibc 2.30 and later
        pytest.skip("no tgkill in this C library")
    proc, log = connecting_daemon(tiny_model[0], tmp_path)
    try:
        others = sorted(int(t) for t in os.listdir(f"/proc/{proc.pid}/task") if int(t) != proc.pid)
        assert others  # the metrics server's thread at least
        sent = time.monotonic()
        assert libc.tgkill(proc.pid, others[0], signal.SIGTERM) == 0, os.strerror(ctypes.get_errno())
        assert proc.wait(10) == 143  # well under the bootstrap timeout of 120 s
        assert time.monotonic() - sent < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert log.read_text().splitlines() == ["error: terminated"]


def test_sigusr1_and_sighup_while_connecting_leave_the_start_going(tiny_model, tmp_path):
    """A daemon slow to connect (a broker away) already answers /healthz: its operator's SIGUSR1, the stack dump
    that says where it waits, ended it instead (the default action), as did a SIGHUP: the daemon installed its
    handlers only once connected. Both are handled from before the endpoint answers; SIGTERM still stops it.

    Each signal is sent once the kernel has delivered the one before (no signal pending on any of the process's
    threads): so the SIGHUP is the main thread's. (Before session 24 this was needed: a signal another thread took
    was handled only when the main thread's bootstrap wait ended; that case is the test above.)"""
    import glob
    import signal
    from pathlib import Path

    def delivered() -> bool:
        if proc.poll() is not None:  # killed by it (the old start): the dump below never comes
            return True
        status = glob.glob(f"/proc/{proc.pid}/task/*/status") + [f"/proc/{proc.pid}/status"]
        masks = [
            line.split()[1]
            for path in status
            for line in Path(path).read_text().splitlines()
            if line.startswith(("SigPnd:", "ShdPnd:"))
        ]
        return all(int(mask, 16) == 0 for mask in masks)

    proc, log = connecting_daemon(tiny_model[0], tmp_path)
    try:
        proc.send_signal(signal.SIGHUP)
        wait_for(delivered, 30, "the SIGHUP delivered")
        proc.send_signal(signal.SIGUSR1)
        wait_for(lambda: "(MainThread) (most recent call first)" in log.read_text(), 30, "a stack dump")
        assert proc.poll() is None
        assert terminate(proc) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert log.read_text().splitlines()[-1] == "error: terminated"

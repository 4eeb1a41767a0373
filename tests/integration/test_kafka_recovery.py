"""Exactly-once state under kill -9, rebalances between two daemons, and a broker outage (real Tansu broker)."""

from __future__ import annotations

import json
import random
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    assert_exactly_once_for_read_committed,
    assert_matches_replay,
    http_answer,
    http_status,
    metric,
    same_state,
    segments,
    terminate,
    wait_for,
)

from anomaly.data import Series

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "env",
    [
        None,
        {"ANOMALY_KAFKA_COMMIT_IN_BACKGROUND": "true"},
        {"ANOMALY_KAFKA_FETCH_IN_CHECKPOINT": "true"},
    ],
    ids=["commit-on-loop", "commit-in-background", "fetch-in-checkpoint"],
)
def test_kill_9_at_random_points_changes_nothing(kafka_env, stream, tiny_model, env):
    """Also with ``kafka.commit_in_background`` (off by default): the checkpoint's transaction ends in a helper
    thread while the loop scores on, so a kill can land with a commit in flight and outputs held. And with
    ``kafka.fetch_in_checkpoint``: records taken ahead during a checkpoint head the next batch (a kill can land
    with some taken and not scored; the restart's restore seeks and drops them)."""
    _, series = stream
    _, bundle = tiny_model
    names = kafka_env.names(partitions=4)
    rng = random.Random(4)
    slow = ["--checkpoint-interval", "0.2", "--max-poll-records", "20"]
    parts = segments(series, 6)
    ends: dict[int, int] = {}

    def send(part: list[Series]) -> None:
        for p, e in kafka_env.produce(names.input, part, bundle.features, rate=1000).items():
            ends[p] = max(ends.get(p, 0), e)

    behind = 0
    for part in parts[:5]:
        proc, port = kafka_env.start(names, *slow, env=env)
        wait_for(lambda: http_status(port, "/readyz") == 200, 60, "daemon ready")  # noqa: B023
        sender = threading.Thread(target=send, args=(part,))
        sender.start()  # the segment arrives while the daemon runs, so the kill lands mid-stream
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        sender.join()
        committed = kafka_env.committed(names.group, names.input)
        behind += any(committed.get(p, 0) < e for p, e in ends.items())
    assert behind == 5  # every kill left work uncommitted
    send(parts[5])
    state_out = kafka_env.workdir / "final.bin"
    proc, port = kafka_env.start(names, *slow, "--state-out", str(state_out), env=env)
    kafka_env.wait_committed(names.group, names.input, ends, timeout_s=90)
    assert terminate(proc) == 0

    expected = assert_matches_replay(kafka_env, names, bundle, series)
    assert_exactly_once_for_read_committed(kafka_env, names, expected)
    from anomaly.config import EngineConfig
    from anomaly.engine import Engine

    dumped = Engine(bundle, EngineConfig(threshold="static"))
    dumped.restore(state_out.read_bytes())
    same_state(dumped, expected.engine)


def test_a_kill_inside_a_checkpoints_commit_loses_nothing_a_read_committed_reader_of_kafka_would_get(
    kafka_env, stream, tiny_model
):
    """Killed with its first data checkpoint's records (outputs, state) on the broker and neither its offsets nor
    its commit sent: the restart fences it (the transaction is aborted) and equals the replay. Tansu shows the
    aborted checkpoint, so the restart restores it and goes on past its offset: that transaction's windows are
    then in no committed transaction, which is what the random-kill tests' read_committed check found missing
    (session 17); on Apache Kafka the restart does not see that checkpoint and writes them again."""
    _, series = stream
    _, bundle = tiny_model
    names = kafka_env.names(partitions=2)
    first, second = segments(series, 2)
    ends = kafka_env.produce(names.input, first, bundle.features)
    launcher = [sys.executable, str(Path(__file__).with_name("in_commit.py"))]
    slow = ["--checkpoint-interval", "0.2", "--max-poll-records", "20"]
    proc, _ = kafka_env.start(names, *slow, command=launcher, env={"KILL_AT_COMMIT": "1"})
    assert proc.wait(60) == -signal.SIGKILL
    for p, e in kafka_env.produce(names.input, second, bundle.features).items():
        ends[p] = max(ends.get(p, 0), e)
    proc, _ = kafka_env.start(names, *slow)
    kafka_env.wait_committed(names.group, names.input, ends, timeout_s=90)
    assert terminate(proc) == 0
    assert "restored 2 from the changelog" in kafka_env.logs[-1].read_text()
    expected = assert_matches_replay(kafka_env, names, bundle, series)
    missing, excused = assert_exactly_once_for_read_committed(kafka_env, names, expected)
    killed = {(writer, outcome) for *_, outcome, writer in kafka_env.transactions(names.scores)}
    assert len(excused) == 1 and (next(iter(excused)), "aborted") in killed
    written = {
        (w["key"], w["start"])
        for w in (
            json.loads(v) for *_, v, _, writer in kafka_env.transactions(names.scores) if writer in excused
        )
    }
    assert missing == written and missing


def test_two_daemons_split_partitions_and_hand_over_state(kafka_env, stream, tiny_model):
    """A clean hand-over: B takes A's partitions when A stops, restoring their state. The group timeouts are
    longer than the suite's 3 s, which a busy CI machine's stalls can pass: then a member is fenced as a
    zombie, which is not what this tests (test_kafka_cluster's paused-zombie test is about that). Session
    22's CI run failed here once, its alerts topic one event (an open) short of the replay, its logs gone; 80
    runs here, 50 of them on a loaded machine, did not fail. A fence inside a checkpoint's transaction
    would explain it on Tansu 0.6, which serves the aborted transaction's records that reached it (the
    checkpoint, then restored) and not those its producer had yet to send (kafka-python's requests take
    partitions in turn, not in the order written); Apache Kafka hides that checkpoint from the restore."""
    _, series = stream
    _, bundle = tiny_model
    names = kafka_env.names(partitions=4)
    first, second = segments(series, 2)
    calm = ["--checkpoint-interval", "0.3", "--session-timeout-ms", "10000"]
    calm += ["--max-poll-interval-ms", "10000"]
    a, port_a = kafka_env.start(names, *calm, log_name="a")
    b, port_b = kafka_env.start(names, *calm, log_name="b")
    wait_for(
        lambda: http_status(port_a, "/readyz") == 200 and http_status(port_b, "/readyz") == 200,
        60,
        "both daemons ready",
    )
    # Produced once both own partitions: produced before, A could consume all of it before B joined.
    ends = kafka_env.produce(names.input, first, bundle.features)
    kafka_env.wait_committed(names.group, names.input, ends)
    metrics_a = _metric(port_a, "anomaly_messages_consumed_total")
    metrics_b = _metric(port_b, "anomaly_messages_consumed_total")
    assert metrics_a > 0 and metrics_b > 0  # both took part
    assert terminate(a) == 0  # b takes over a's partitions, restoring their state from the changelog
    for p, e in kafka_env.produce(names.input, second, bundle.features).items():
        ends[p] = max(ends.get(p, 0), e)
    kafka_env.wait_committed(names.group, names.input, ends)
    state_out = kafka_env.workdir / "b.bin"
    b.send_signal(signal.SIGTERM)
    assert b.wait(30) == 0
    del state_out

    assert_matches_replay(kafka_env, names, bundle, series)


def test_broker_outage_not_ready_then_carries_on(kafka_env, stream, tiny_model):
    _, series = stream
    _, bundle = tiny_model
    names = kafka_env.names(partitions=2)
    first, second = segments(series, 2)
    ends = kafka_env.produce(names.input, first, bundle.features)
    proc, port = kafka_env.start(names, "--checkpoint-interval", "0.5")
    wait_for(lambda: http_status(port, "/readyz") == 200, 60, "daemon ready")
    kafka_env.wait_committed(names.group, names.input, ends)
    assert metric(port, "anomaly_ready") == 1.0
    kafka_env.broker.pause()
    try:
        wait_for(lambda: http_status(port, "/readyz") == 503, 15, "not ready while the broker is away")
        away = time.monotonic() + 30
        while time.monotonic() < away:  # alive and not ready for the whole outage
            assert proc.poll() is None
            assert http_answer(port, "/readyz") == 503
            assert metric(port, "anomaly_ready") == 0.0  # what DaemonNotReady alerts on
            time.sleep(1)
        assert http_answer(port, "/healthz") == 200
        # why it needs its own series: the idle checkpoint timer kept the checkpoint age far below
        # CheckpointStale's 600 s all through the outage, and the daemon is still scraped (up = 1)
        assert time.time() - metric(port, "anomaly_checkpoint_last_timestamp_seconds") < 20
    finally:
        kafka_env.broker.resume()
    wait_for(lambda: http_status(port, "/readyz") == 200, 60, "ready again after the broker is back")
    assert metric(port, "anomaly_ready") == 1.0
    for p, e in kafka_env.produce(names.input, second, bundle.features).items():
        ends[p] = max(ends.get(p, 0), e)
    kafka_env.wait_committed(names.group, names.input, ends, timeout_s=90)
    assert terminate(proc) == 0

    # The log says what the operator needs once: where and how the broker failed, and when it answered again
    # (it said "broker not answering: KafkaError" every second of the outage, and nothing at its end).
    lines = kafka_env.logs[-1].read_text().splitlines()
    outage = [line.split(": ", 1)[1] for line in lines if " anomaly.kafka.daemon: broker at " in line]
    bootstrap = kafka_env.broker.bootstrap
    assert outage[0].startswith(f"broker at {bootstrap} not answering (")
    assert "readiness probe): " in outage[0]
    assert not outage[0].endswith("): KafkaError")  # the error's text, not only its type
    # an outage longer than a minute (a slow machine) adds one reminder a minute, nothing more
    assert all(f"broker at {bootstrap} still not answering after " in line for line in outage[1:-1]), outage
    back = re.fullmatch(rf"broker at {re.escape(bootstrap)} reachable again after (\d+) s", outage[-1])
    assert back is not None and 25 <= int(back[1]) and len(outage) - 2 <= int(back[1]) // 60, outage

    assert_matches_replay(kafka_env, names, bundle, series)


RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ (\S+):")


def own_tracebacks(lines: list[str]) -> list[int]:
    """Indices of the log's tracebacks that kafka-python did not log itself. The daemon runs with -v, which
    shows kafka-python's own errors: its producer I/O thread, force-closed in the middle of the stuck
    transaction, may log "Uncaught error" with a traceback (a fresh-clone run did once), and its selector
    "Unhandled exception in task" with a chained one ("During handling of the above exception, another
    exception occurred:", a second traceback in the same record; another fresh-clone run, session 19). A
    traceback is kafka-python's when a kafka.* log record is the line before it, or when it is chained to one
    that is; the daemon's own code must print none."""
    own: list[int] = []
    kafkas = False  # whether the last traceback was kafka-python's
    for i, line in enumerate(lines):
        if not line.startswith("Traceback"):
            continue
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        record = RECORD.match(before)
        if before.startswith(("During handling of the above exception", "The above exception was")):
            pass  # chained to the traceback before it: whoever logged that one
        else:
            kafkas = bool(record and record[1].startswith("kafka."))
        if not kafkas:
            own.append(i)
    return own


def test_a_commit_the_broker_never_completes_ends_the_daemon_with_one_line_and_a_restart_is_exact(
    kafka_env, stream, tiny_model
):
    """The broker stopped (SIGSTOP) just before a checkpoint's transactional commit: kafka-python would wait for
    it forever; the daemon gives up after kafka.max_block_ms with one error line and status 2, and a restart
    (broker back) restores what was committed, fences the stuck transaction, and equals the replay."""
    _, series = stream
    _, bundle = tiny_model
    names = kafka_env.names(partitions=2)
    first, second = segments(series, 2)
    mark = kafka_env.workdir / "stopped-at"
    launcher = [sys.executable, str(Path(__file__).with_name("in_commit.py"))]
    probe = {
        "ANOMALY_KAFKA_MAX_BLOCK_MS": "3000",
        "STOP_AT_COMMIT": "3",
        "STOP_BROKER_PID": str(kafka_env.broker.proc.pid),
        "STOP_MARK": str(mark),
    }
    proc, port = kafka_env.start(names, "--checkpoint-interval", "0.2", command=launcher, env=probe)
    wait_for(lambda: http_status(port, "/readyz") == 200, 60, "daemon ready")
    proc.send_signal(signal.SIGUSR1)  # every thread's stack to the log, and the daemon carries on
    log = kafka_env.logs[-1]
    wait_for(lambda: "(most recent call first)" in log.read_text(), 10, "a stack dump")
    ends: dict[int, int] = {}
    sender = threading.Thread(  # blocks while the broker is stopped, completes once it is back
        target=lambda: ends.update(kafka_env.produce(names.input, first, bundle.features, rate=1000))
    )
    sender.start()
    try:
        status = proc.wait(90)
        exited = time.time()
    finally:
        kafka_env.broker.resume()
    sender.join()
    assert status == 2, log.read_text()[-4000:]
    assert 3.0 <= exited - float(mark.read_text()) < 3.0 + 12.0  # the bound, plus closing the clients
    lines = log.read_text().splitlines()
    assert [line for line in lines if line.startswith("error:")] == [
        "error: the broker did not complete adding the consumed offsets to the transaction within 3s "
        "(kafka.max_block_ms); the transaction's outcome is unknown: exiting so that a restart restores the "
        "last committed checkpoint"
    ]
    tracebacks = own_tracebacks(lines)
    assert not tracebacks, (
        "\n".join(lines[max(0, tracebacks[0] - 20) : tracebacks[0] + 40]) if tracebacks else ""
    )
    committed = kafka_env.committed(names.group, names.input)
    assert any(committed.get(p, 0) < e for p, e in ends.items())  # it stopped with work uncommitted

    for p, e in kafka_env.produce(names.input, second, bundle.features).items():
        ends[p] = max(ends.get(p, 0), e)
    proc, _ = kafka_env.start(names, "--checkpoint-interval", "0.2")
    kafka_env.wait_committed(names.group, names.input, ends, timeout_s=90)
    assert terminate(proc) == 0
    assert_matches_replay(kafka_env, names, bundle, series)


def _metric(port: int, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def test_a_stop_while_the_broker_is_away_says_the_final_checkpoint_was_not_completed_and_loses_nothing(
    kafka_env, stream, tiny_model
):
    """SIGTERM with scored, uncheckpointed messages while the broker does not answer: before, the final
    checkpoint was postponed (a warning) and the daemon printed its totals and exited with status 0, as after a
    clean stop. Now status 3 and one line, as when --shutdown-timeout passes; the restart loses nothing."""
    from conftest import metric

    _, series = stream
    _, bundle = tiny_model
    names = kafka_env.names(partitions=2)
    first, second = segments(series, 2)
    proc, port = kafka_env.start(names, "--checkpoint-interval", "600")  # no periodic checkpoint meanwhile
    wait_for(lambda: http_status(port, "/readyz") == 200, 60, "daemon ready")
    ends = kafka_env.produce(names.input, first, bundle.features)
    total = sum(ends.values())
    wait_for(lambda: metric(port, "anomaly_messages_consumed_total") == total, 60, "the segment scored")
    kafka_env.broker.pause()
    try:
        status = terminate(proc, timeout_s=60)
    finally:
        kafka_env.broker.resume()
    lines = kafka_env.logs[-1].read_text().splitlines()
    postponed = [
        line.split("checkpoint postponed: ", 1)[1] for line in lines if "checkpoint postponed: " in line
    ]
    assert status == 3
    assert [line for line in lines if line.startswith("error:")] == [
        f"error: the final checkpoint was not completed ({postponed[-1]}); the restart restores the last "
        "committed checkpoint and reads on from there"
    ]
    assert not [line for line in lines if line.startswith("stopped:")]

    for p, e in kafka_env.produce(names.input, second, bundle.features).items():
        ends[p] = max(ends.get(p, 0), e)
    proc, _ = kafka_env.start(names, "--checkpoint-interval", "0.5")
    kafka_env.wait_committed(names.group, names.input, ends, timeout_s=90)
    assert terminate(proc) == 0
    assert_matches_replay(kafka_env, names, bundle, series)

"""A backfill of several partitions (the daemon started on a topic already holding hours of data): the consumer
reads the partitions one after another, not in time order, so one partition runs ahead of another in event
time by up to the data's span. Each partition is a clock domain of its own, so the TTL judges a key by its own
partition's event time and the daemon equals the replay (real Tansu broker)."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Sequence

import pytest
from conftest import Expected, http_status, same_state, terminate, wait_for
from kafka.partitioner.default import murmur2

from anomaly.bundle import Bundle
from anomaly.config import EngineConfig
from anomaly.data import Series
from anomaly.engine import Engine, EngineOutput
from anomaly.kafka.codec import window_json
from anomaly.replay import merged_batches
from anomaly.runner import run

pytestmark = pytest.mark.integration

TTL = 3600.0  # an hour: 60 readings of the test stream (one a minute, 6.7 hours)


def replay_with_ttl(bundle: Bundle, series: Sequence[Series]) -> Expected:
    engine = Engine(bundle, EngineConfig(threshold="static", ttl_seconds=TTL))
    outs: list[EngineOutput] = []
    run(engine, merged_batches(series, 97), [], on_batch=lambda b, o: outs.append(o), finish=False)
    windows = {
        (w.key, float(w.timestamps[0])): window_json(w, bundle.features) for o in outs for w in o.windows
    }
    return Expected(windows, {(a.id, a.status) for o in outs for a in o.alerts}, engine)


def partition_of(key: str, partitions: int) -> int:
    """kafka-python's default partitioner (murmur2 of the key), as the producer places each key."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


@pytest.mark.parametrize("kills", [0, 2])
def test_a_backfill_of_several_partitions_spanning_more_than_the_ttl_equals_the_replay(
    kafka_env, stream, tiny_model, kills
):
    """Six keys over four partitions, 6.7 hours of readings, TTL one hour, all produced before the daemon starts.
    One key stops halfway while another key of its partition reads on: it expires by its partition's event time
    (as in the replay, by the replay's). Before, the one event-time clock ran ahead with the partition read
    first, and every later partition's keys were evicted after each message (scored as new keys: no alert).
    With ``kills``, the daemon is killed (-9) mid-backfill and restarted: the partitions' clocks come back with
    their checkpoints."""
    _, series = stream
    _, bundle = tiny_model
    where = {s.key: partition_of(s.key, 4) for s in series}
    shared = [s for s in series if sum(p == where[s.key] for p in where.values()) > 1]
    assert shared, where
    stop = shared[0].key
    half = len(shared[0].timestamps) // 2
    data = [
        Series(s.key, s.timestamps[:half], s.values[:half], None, s.source) if s.key == stop else s
        for s in series
    ]
    names = kafka_env.names(partitions=4)
    ends = kafka_env.produce(names.input, data, bundle.features)
    env = {"ANOMALY_ENGINE_TTL_SECONDS": str(TTL)}
    # a few records per engine call (no batch extended with fetched records): the kills land mid-backfill
    env_slow = {**env, "ANOMALY_KAFKA_MAX_BATCH_BYTES": "0"}
    slow = ["--checkpoint-interval", "0.2", "--max-poll-records", "2"]
    rng = random.Random(7)
    behind = 0
    for _ in range(kills):
        proc, port = kafka_env.start(names, *slow, env=env_slow)
        wait_for(lambda: http_status(port, "/readyz") == 200, 60, "daemon ready")  # noqa: B023
        time.sleep(rng.uniform(0.2, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        committed = kafka_env.committed(names.group, names.input)
        behind += any(committed.get(p, 0) < e for p, e in ends.items())
    assert behind == kills  # every kill left work uncommitted
    proc, port = kafka_env.start(names, *slow, env=env)
    kafka_env.wait_committed(names.group, names.input, ends, timeout_s=120)
    assert terminate(proc) == 0

    expected = replay_with_ttl(bundle, data)
    assert stop not in expected.engine.keys()  # the stopped key expired in the replay
    assert len(expected.alert_ids) > 0
    assert kafka_env.windows(names.scores) == expected.windows
    assert kafka_env.alert_ids(names.alerts) == expected.alert_ids
    same_state(kafka_env.changelog_state(names.changelog, bundle), expected.engine)

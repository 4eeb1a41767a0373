"""The numeric contract end to end: a plain producer's JSON scores bit for bit like the replay of the CSV it
was made from, for arbitrary decimals and large magnitudes; values that are not JSON numbers are refused."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import assert_matches_replay, http_status, terminate, wait_for
from kafka import KafkaProducer

from anomaly.config import DataConfig
from anomaly.data import load_series

pytestmark = pytest.mark.integration

BAD_VALUES = [
    (b"unit-009", b'{"key": "unit-009", "ts": 1700000000, "values": ["1.5", 2.0, 3.0]}'),
    (b"unit-009", b'{"key": "unit-009", "ts": 1700000001, "values": [true, 2.0, 3.0]}'),
    (b"unit-009", b'{"key": "unit-009", "readings": [{"ts": 1700000002, "values": [1.0, "2", 3.0]}]}'),
]


def write_csv(path, features) -> None:
    """4 keys x 240 readings: two keys with 7-12 significant decimals near 1, two near 1e6 with 1-4 decimals
    (neither is float32-exact). The text is what both the replay and the producer read."""
    rng = np.random.default_rng(21)
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["timestamp", "sensor_id", *features])
        for i in range(240):
            for k in range(4):
                if k < 2:
                    vals = [
                        f"{x:.{d}f}" for x, d in zip(rng.normal(0, 1, 3), rng.integers(7, 13, 3), strict=True)
                    ]
                else:
                    vals = [
                        f"{x:.{d}f}"
                        for x, d in zip(rng.normal(1e6, 2e3, 3), rng.integers(1, 5, 3), strict=True)
                    ]
                out.writerow([f"{1.7e9 + i * 1.5:.1f}", f"unit-{k:03d}", *vals])


def test_plain_producer_json_scores_like_the_replay_of_its_csv(kafka_env, tiny_model, tmp_path):
    path, bundle = tiny_model
    data = tmp_path / "decimals.csv"
    write_csv(data, bundle.features)
    names = kafka_env.names(partitions=3)
    producer = KafkaProducer(bootstrap_servers=kafka_env.broker.bootstrap, acks="all")
    for k, v in BAD_VALUES:
        producer.send(names.input, key=k, value=v)
    with data.open() as fh:  # the CSV text pasted into JSON: no float conversion on the producer side
        for row in csv.DictReader(fh):
            values = ",".join(row[f] for f in bundle.features)
            body = f'{{"key":"{row["sensor_id"]}","ts":{row["timestamp"]},"values":[{values}]}}'
            producer.send(names.input, key=row["sensor_id"].encode(), value=body.encode())
    producer.flush()
    producer.close()
    proc, port = kafka_env.start(names, "--checkpoint-interval", "0.5")
    wait_for(lambda: http_status(port, "/readyz") == 200, 30, "daemon ready")
    kafka_env.wait_committed(names.group, names.input, _ends(kafka_env, names))
    assert terminate(proc) == 0

    series, _ = load_series([data], DataConfig(key_column="sensor_id"), bundle.features)
    assert max(float(np.abs(s.values).max()) for s in series) > 9e5
    assert_matches_replay(kafka_env, names, bundle, series)
    dead = kafka_env.read(names.dead)
    assert sorted((r.value, dict(r.headers)["reason"]) for r in dead) == sorted(
        (v, b"bad_values") for _, v in BAD_VALUES
    )


def _ends(kafka_env, names) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=kafka_env.broker.bootstrap)
    tps = [TopicPartition(names.input, p) for p in sorted(consumer.partitions_for_topic(names.input))]
    ends = {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
    consumer.close()
    return ends

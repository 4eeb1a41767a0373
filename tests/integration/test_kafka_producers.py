"""Messages as a plant's own producers send them (not `anomaly produce`): compressed batches of every codec a
Kafka producer may choose, record headers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from conftest import assert_matches_replay, http_status, terminate, wait_for
from kafka import KafkaProducer

from anomaly.kafka.codec import MessageFormat
from anomaly.kafka.produce import messages

pytestmark = pytest.mark.integration

CODECS = ("gzip", "snappy", "lz4", "zstd")


def test_compressed_topics_of_every_codec_score_like_the_replay(kafka_env, tiny_model, stream):
    """Java and librdkafka producers often set compression.type = lz4, snappy or zstd: kafka-python reads such
    batches only with the codec's library installed, and without it every poll of the partition failed
    (UnsupportedCodecError): the daemon exited with one error line at every restart and never got past it."""
    path, bundle = tiny_model
    _, series = stream
    names = kafka_env.names(partitions=2)
    producers = [
        KafkaProducer(
            bootstrap_servers=kafka_env.broker.bootstrap, acks="all", compression_type=c, linger_ms=5
        )
        for c in CODECS
    ]
    fmt = MessageFormat(tuple(bundle.features))
    keys = sorted(s.key for s in series)
    for key, value, _ in messages(series, fmt, block=3):
        # each key always through the same producer (its order kept); every codec carries some keys
        producers[keys.index(key.decode()) % len(CODECS)].send(
            names.input, key=key, value=value, headers=[("source", b"plc-7"), ("trace", b"\xff\x00")]
        )
    for p in producers:
        p.flush()
        p.close()
    proc, port = kafka_env.start(names, "--checkpoint-interval", "0.5")
    wait_for(lambda: http_status(port, "/readyz") == 200, 30, "daemon ready")
    ends = {tp: off for tp, off in _ends(kafka_env, names.input).items()}
    kafka_env.wait_committed(names.group, names.input, ends)
    assert terminate(proc) == 0
    assert_matches_replay(kafka_env, names, bundle, series)
    assert kafka_env.read(names.dead) == []


GOOD = b'{"key": "odd", "ts": 1700000000, "values": [1.0, 2.0, 3.0]}'
ODD = [  # (record key, value, dead-letter reason)
    (b"odd", b"\xef\xbb\xbf" + GOOD, "invalid_json"),  # a byte order mark
    (b"odd", GOOD + b"xyz", "invalid_json"),  # trailing garbage
    (b"odd", GOOD + b"\n" + GOOD, "invalid_json"),  # two objects in one message
    (b"odd", None, "invalid_json"),  # a tombstone
    (b"odd", b'{"key": "", "ts": 1700000000, "values": [1, 2, 3]}', "missing_field"),
    (None, b'{"ts": 1700000000, "values": [1, 2, 3]}', "missing_field"),
    (b"\xff\xfe", b'{"ts": 1700000000, "values": [1, 2, 3]}', "missing_field"),
    (b"odd", b'{"key": "odd", "readings": []}', "bad_values"),
    (b"odd", b'{"key": "odd", "ts": 1700000000, "values": [1, "NaN", 3]}', "bad_values"),
    (b"odd", b'{"key": "odd", "ts": 1700000000, "values": [1, "1.5", 3]}', "bad_values"),
    (b"odd", b'{"key": "odd", "values": [1, 2, 3]}', "missing_field"),  # no time: the record's is not used
]


def _shaped(i: int, key: str, ts: float, row: list[float], features) -> dict:
    """Reading ``ts, row`` of the i-th key in one of the shapes real producers send."""
    iso = datetime.fromtimestamp(ts, UTC)
    if i == 1:  # features by name, in another order; ISO time with Z
        return {
            "ts": iso.isoformat().replace("+00:00", "Z"),
            "values": dict(reversed(list(zip(features, row, strict=True)))),
        }
    if i == 2:  # time as a numeric string; no body key (the record key is the entity)
        return {"ts": repr(ts), "values": row}
    if i == 3:  # an offset other than UTC, ISO with comma decimals
        local = iso.astimezone(timezone(timedelta(hours=-5))).isoformat(timespec="milliseconds")
        return {"key": key, "ts": local.replace(".", ","), "values": row}
    return {"key": key, "ts": int(ts) if ts == int(ts) else ts, "values": row}


def test_messages_in_every_shape_a_plant_sends_are_scored_or_refused_with_a_reason(
    kafka_env, tiny_model, stream
):
    path, bundle = tiny_model
    _, series = stream
    names = kafka_env.names(partitions=2)
    producer = KafkaProducer(bootstrap_servers=kafka_env.broker.bootstrap, acks="all", linger_ms=5)
    for k, v, _ in ODD:
        producer.send(names.input, key=k, value=v)
    order = sorted((float(t), i, r) for i, s in enumerate(series) for r, t in enumerate(s.timestamps))
    pending: dict[int, list[dict]] = {}
    for _, i, r in order:
        s = series[i]
        reading = _shaped(
            r % 4 if i % 4 == 0 else i % 4,
            s.key,
            float(s.timestamps[r]),
            s.values[r].tolist(),
            bundle.features,
        )
        if i % 4 == 0:  # blocks of 5 whose readings mix the shapes
            pending.setdefault(i, []).append({k: v for k, v in reading.items() if k != "key"})
            if len(pending[i]) < 5 and r < len(s) - 1:
                continue
            body = {"key": s.key, "readings": pending.pop(i)}
        else:
            body = reading
        producer.send(
            names.input,
            key=s.key.encode(),
            value=(json.dumps(body) + " \n").encode(),
            headers=[("content-type", b"application/json")],
        )
    producer.flush()
    producer.close()
    proc, port = kafka_env.start(names, "--checkpoint-interval", "0.5")
    wait_for(lambda: http_status(port, "/readyz") == 200, 30, "daemon ready")
    kafka_env.wait_committed(names.group, names.input, _ends(kafka_env, names.input))
    assert terminate(proc) == 0
    assert_matches_replay(kafka_env, names, bundle, series)
    dead = kafka_env.read(names.dead)
    assert sorted((r.key or b"", r.value or b"", dict(r.headers)["reason"].decode()) for r in dead) == sorted(
        (k or b"", v or b"", reason) for k, v, reason in ODD
    )


def _ends(kafka_env, topic) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=kafka_env.broker.bootstrap)
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    ends = {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
    consumer.close()
    return ends

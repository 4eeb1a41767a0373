"""Messages as a plant's own producers send them (not `anomaly produce`): compressed batches of every codec a
Kafka producer may choose, record headers."""

from __future__ import annotations

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
        KafkaProducer(bootstrap_servers=kafka_env.broker.bootstrap, acks="all", compression_type=c, linger_ms=5)
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


def _ends(kafka_env, topic) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=kafka_env.broker.bootstrap)
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    ends = {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
    consumer.close()
    return ends

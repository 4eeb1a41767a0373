"""The daemon's output side against a real Tansu broker: output topics replaced under a running daemon."""

from __future__ import annotations

import threading

import pytest
from conftest import http_status, segments, wait_for
from kafka import KafkaAdminClient
from test_kafka_topics_replaced import _either, _error_lines, _ids

pytestmark = pytest.mark.integration


def test_an_alerts_topic_deleted_under_a_running_daemon_stops_it_with_one_line(kafka_env, stream, tiny_model):
    """Before, it went on: its producer created the topic again (Tansu, or Kafka with auto.create.topics.enable:
    the broker's defaults, not the topic's retention or compaction) and wrote on, its readers' offsets now past
    the new topic's end; on a broker without auto-creation every alert send waited max_block_ms and failed."""
    _, series = stream
    _, bundle = tiny_model
    names = kafka_env.names(partitions=1)
    first, second = segments(series[:2], 2)
    ends = kafka_env.produce(names.input, first, bundle.features)
    proc, port = kafka_env.start(names, "--checkpoint-interval", "0.2")
    wait_for(lambda: http_status(port, "/readyz") == 200, 30, "daemon ready")
    kafka_env.wait_committed(names.group, names.input, ends)
    old = _ids(kafka_env.broker.bootstrap, names.alerts)[names.alerts]
    admin = KafkaAdminClient(bootstrap_servers=kafka_env.broker.bootstrap)
    admin.delete_topics([names.alerts])
    admin.close()
    sender = threading.Thread(
        target=kafka_env.produce, args=(names.input, second, bundle.features), kwargs={"rate": 200}
    )
    sender.start()
    try:
        assert proc.wait(30) == 2
    finally:
        sender.join()
    new = _ids(kafka_env.broker.bootstrap, names.alerts)[names.alerts]
    role = f"alerts topic '{names.alerts}' (kafka.alerts_topic, --alerts-topic)"
    lines = _error_lines(kafka_env.logs[-1])
    assert len(lines) == 1 and lines[0].split(" (see README")[0] in {
        line.split(": deleted by hand")[0]
        + ": deleted by hand, or the broker restarted without its data. Its readers lost what it held, and "
        "outputs written now would go to a topic auto-created with the broker's defaults or be refused, so the "
        "daemon stopped before committing anything more: the restart (once the topic exists again) writes every "
        "output since the last committed checkpoint again"
        for line in _either(role, kafka_env.broker.bootstrap, old, new)
    }
    assert kafka_env.committed(names.group, names.input) == ends  # nothing committed after the deletion

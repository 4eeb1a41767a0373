"""The daemon's output side against a real Tansu broker: output topics replaced under a running daemon."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_matches_replay, http_status, segments, terminate, wait_for
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata
from test_kafka_topics_replaced import _either, _error_lines, delete_under_running_daemon

from anomaly.data import Series

pytestmark = pytest.mark.integration


def test_an_alerts_topic_deleted_under_a_running_daemon_stops_it_with_one_line(kafka_env, stream, tiny_model):
    """Before, it went on: its producer created the topic again (Tansu, or Kafka with auto.create.topics.enable:
    the broker's defaults, not the topic's retention or compaction) and wrote on, its readers' offsets now past
    the new topic's end; on a broker without auto-creation every alert send waited max_block_ms and failed."""
    names = kafka_env.names(partitions=1)
    ends, old, new = delete_under_running_daemon(kafka_env, stream, tiny_model, names, "alerts")
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


def _joined(*parts: list[Series]) -> list[Series]:
    """Each key's readings of several time segments, in one series per key."""
    return [
        Series(
            pieces[0].key,
            np.concatenate([s.timestamps for s in pieces]),
            np.concatenate([s.values for s in pieces]),
            None,
            pieces[0].source,
        )
        for pieces in zip(*parts, strict=True)
    ]


def test_offsets_reset_forward_while_stopped_are_followed_at_the_restore(kafka_env, stream, tiny_model):
    """`kafka-consumer-groups --reset-offsets --to-latest` while the daemon is stopped, to skip a backlog: the
    restore keeps the keys' state and resumes at the reset offset. Before, it resumed past its checkpoint and
    scored the whole backlog (the reset was ignored without a word)."""
    _, series = stream
    _, bundle = tiny_model
    names = kafka_env.names(partitions=1)
    first, backlog, third = segments(series[:2], 3)
    ends = kafka_env.produce(names.input, first, bundle.features)
    proc, port = kafka_env.start(names, "--checkpoint-interval", "0.5")
    wait_for(lambda: http_status(port, "/readyz") == 200, 30, "daemon ready")
    kafka_env.wait_committed(names.group, names.input, ends)
    assert terminate(proc) == 0

    skipped = kafka_env.produce(names.input, backlog, bundle.features)
    operator = KafkaConsumer(
        bootstrap_servers=kafka_env.broker.bootstrap, group_id=names.group, enable_auto_commit=False
    )
    operator.commit({TopicPartition(names.input, 0): OffsetAndMetadata(skipped[0], "", -1)})
    operator.close(autocommit=False)
    assert kafka_env.committed(names.group, names.input) == skipped
    ends = kafka_env.produce(names.input, third, bundle.features)

    proc, port = kafka_env.start(names, "--checkpoint-interval", "0.5")
    kafka_env.wait_committed(names.group, names.input, ends)
    assert terminate(proc) == 0
    assert_matches_replay(kafka_env, names, bundle, _joined(first, third))
    log = kafka_env.logs[-1].read_text()
    assert (
        f"{names.input}:0: the group's committed offset {skipped[0]} is past its checkpoint (offset "
        f"{ends[0] - len(third[0]) - len(third[1]) - len(backlog[0]) - len(backlog[1]) - 1}): offsets reset "
        f"forward while the daemon was stopped; skipping the {len(backlog[0]) + len(backlog[1])} message(s) in "
        "between as asked, the keys keep their state"
    ) in log

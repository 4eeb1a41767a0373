"""Topics replaced under a running daemon, against a real Tansu broker: the broker restarted without its data
(every topic and committed offset gone), the changelog topic deleted. Before, the daemon went on: the consumer
rejoined, restored nothing, and scored the new topics from offset 0 with every key started fresh, committing
checkpoints and offsets on topics they did not belong to (and, on Tansu, the first messages of a topic created
again were skipped as covered by the old checkpoints)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from conftest import KafkaEnv, http_status, segments, terminate, wait_for
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from anomaly.kafka.tansu import TansuBroker

pytestmark = pytest.mark.integration

HOW = (
    "deleted by hand, or the broker restarted without its data. The state checkpointed in the changelog, the "
    "input offsets it covers and the group's committed offsets no longer belong together, so the daemon stopped "
    "before writing or committing anything more (see README 'Running the daemon' for how to go on)"
)


def delete_under_running_daemon(kafka_env, stream, tiny_model, names, topic: str):
    """Start a daemon on the first half of two keys' readings, delete its `topic` topic (an attribute of `names`)
    once those are committed, and stream the second half on: the daemon must stop with status 2. Returns the
    committed ends before the deletion and the topic's id before and after (None: not created again)."""
    _, series = stream
    _, bundle = tiny_model
    name = getattr(names, topic)
    first, second = segments(series[:2], 2)
    ends = kafka_env.produce(names.input, first, bundle.features)
    proc, port = kafka_env.start(names, "--checkpoint-interval", "0.2")
    wait_for(lambda: http_status(port, "/readyz") == 200, 30, "daemon ready")
    kafka_env.wait_committed(names.group, names.input, ends)
    old = _ids(kafka_env.broker.bootstrap, name)[name]
    admin = KafkaAdminClient(bootstrap_servers=kafka_env.broker.bootstrap)
    admin.delete_topics([name])
    admin.close()
    sender = threading.Thread(
        target=kafka_env.produce, args=(names.input, second, bundle.features), kwargs={"rate": 200}
    )
    sender.start()  # the stream goes on: checkpoints are due
    try:
        assert proc.wait(30) == 2
    finally:
        sender.join()
    return ends, old, _ids(kafka_env.broker.bootstrap, name)[name]


def _ids(bootstrap: str, *topics: str) -> dict[str, str | None]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return {
            t["name"]: (t["topic_id"] if not t["error_code"] else None) for t in admin.describe_topics(topics)
        }
    finally:
        admin.close()


def _records(env: KafkaEnv, topic: str) -> list[object]:
    """Every record of ``topic``; none when it does not exist."""
    return env.read(topic) if _ids(env.broker.bootstrap, topic)[topic] is not None else []


def _error_lines(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("error:")]


def _either(what: str, bootstrap: str, old: str | None, new: str | None) -> set[str]:
    """The daemon's line when it saw the topic gone, and when it saw it created again (a client's metadata
    request creates it again on Tansu, which ignores allow_auto_create_topics=false: which one the daemon's
    check meets first is a race)."""
    lines = {f"error: {what} is gone from {bootstrap} while the daemon ran: {HOW}"}
    if new is not None:
        lines.add(
            f"error: {what} on {bootstrap} was created again (topic id {old} at start-up, now {new}) while the "
            f"daemon ran: {HOW}"
        )
    return lines


def test_a_broker_restarted_without_its_data_stops_the_daemon_with_one_line(tmp_path, tiny_model, stream):
    _, series = stream
    model, bundle = tiny_model
    broker = TansuBroker(log_path=tmp_path / "tansu.log").start()  # its own: restarted on the same port
    env = KafkaEnv(broker, model, tmp_path)
    try:
        names = env.names(partitions=2)
        first, second = segments(series[:2], 2)
        ends = env.produce(names.input, first, bundle.features)
        proc, port = env.start(names, "--checkpoint-interval", "0.5")
        wait_for(lambda: http_status(port, "/readyz") == 200, 30, "daemon ready")
        env.wait_committed(names.group, names.input, ends)
        old = _ids(broker.bootstrap, names.input, names.changelog)

        broker.stop()
        broker.start()  # same port, empty
        env.producer.close()  # its producer id is unknown to the new broker: a fresh one, as a restarted plant's
        env.producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5)
        # the plant's producers go on sending: on a broker with auto.create.topics.enable the input topic is
        # created again, empty, and its offsets start at 0
        env.produce(names.input, second, bundle.features)
        assert proc.wait(30) == 2
        new = _ids(broker.bootstrap, names.input, names.changelog)
        lines = _error_lines(env.logs[-1])
        assert len(lines) == 1
        where = broker.bootstrap
        input_role = f"input topic '{names.input}' (kafka.topics, --topics)"
        changelog_role = f"changelog topic '{names.changelog}' (kafka.changelog_topic, --changelog-topic)"
        assert lines[0] in _either(input_role, where, old[names.input], new[names.input]) | _either(
            changelog_role, where, old[names.changelog], new[names.changelog]
        )
        # nothing of the old state or offsets written to the new broker
        assert env.committed(names.group, names.input) == dict.fromkeys(
            env.committed(names.group, names.input), 0
        )
        assert _records(env, names.changelog) == []
    finally:
        env.stop_all()
        env.producer.close()
        broker.stop()


def test_a_changelog_deleted_under_a_running_daemon_stops_it_with_one_line(kafka_env, stream, tiny_model):
    """Before, it went on and its next checkpoint created the topic again (auto-created, not compacted)."""
    names = kafka_env.names(partitions=2)
    ends, old, new = delete_under_running_daemon(kafka_env, stream, tiny_model, names, "changelog")
    role = f"changelog topic '{names.changelog}' (kafka.changelog_topic, --changelog-topic)"
    lines = _error_lines(kafka_env.logs[-1])
    assert len(lines) == 1 and lines[0] in _either(role, kafka_env.broker.bootstrap, old, new)
    assert _records(kafka_env, names.changelog) == []  # no checkpoint written after the deletion
    assert kafka_env.committed(names.group, names.input) == ends  # nor an offset committed


def test_an_input_topic_created_again_while_stopped_is_refused_at_the_restore(kafka_env, stream, tiny_model):
    """Before, the restart restored the old topic's checkpoint and skipped the new topic's messages up to its
    offset as already scored: here all of them, nothing consumed, without a word."""
    _, series = stream
    _, bundle = tiny_model
    names = kafka_env.names(partitions=1)
    first, second = segments(series[:2], 2)
    ends = kafka_env.produce(names.input, first, bundle.features)
    proc, port = kafka_env.start(names, "--checkpoint-interval", "0.5")
    wait_for(lambda: http_status(port, "/readyz") == 200, 30, "daemon ready")
    kafka_env.wait_committed(names.group, names.input, ends)
    assert terminate(proc) == 0
    old = _ids(kafka_env.broker.bootstrap, names.input)[names.input]
    admin = KafkaAdminClient(bootstrap_servers=kafka_env.broker.bootstrap)
    admin.delete_topics([names.input])
    wait_for(lambda: names.input not in admin.list_topics(), 10, "input topic deleted")
    admin.create_topics([NewTopic(names.input, 1, 1)])
    admin.close()
    new = _ids(kafka_env.broker.bootstrap, names.input)[names.input]
    assert new not in (None, old)
    kafka_env.produce(names.input, second, bundle.features)
    changelog = [(r.key, r.value) for r in kafka_env.read(names.changelog)]

    restarted, _ = kafka_env.start(names, "--checkpoint-interval", "0.5")
    assert restarted.wait(60) == 2
    offset = ends[0] - 1
    assert _error_lines(kafka_env.logs[-1]) == [
        f"error: changelog topic '{names.changelog}' (kafka.changelog_topic, --changelog-topic) holds the state "
        f"of {names.input}:0 checkpointed at offset {offset} of an earlier input topic '{names.input}' (topic id "
        f"{old}, now {new}): the topic was deleted and created again, its offsets started again at 0, and "
        f"restoring would skip its first {offset + 1} messages as already scored. To start its keys fresh, delete "
        f"the changelog topic (kafka-topics --delete --topic {names.changelog}) and restart"
    ]
    assert [(r.key, r.value) for r in kafka_env.read(names.changelog)] == changelog  # no claim written

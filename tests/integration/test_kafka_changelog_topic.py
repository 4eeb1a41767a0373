"""The changelog topic as the daemon finds it against a real Tansu broker: missing after the group checkpointed
state (deleted, or a broker that lost its data), or not compacted."""

from __future__ import annotations

import pytest
from conftest import http_status, terminate, wait_for
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

from anomaly.kafka import KafkaError
from anomaly.kafka.changelog import ChangelogStore, Owner

pytestmark = pytest.mark.integration


def _admin(kafka_env):
    return KafkaAdminClient(bootstrap_servers=kafka_env.broker.bootstrap)


def _error_lines(kafka_env) -> list[str]:
    return [line for line in kafka_env.logs[-1].read_text().splitlines() if line.startswith("error:")]


def test_a_changelog_deleted_after_checkpoints_stops_the_restart_with_one_line(kafka_env, stream, tiny_model):
    """The restart created the changelog anew, empty, and restored nothing: every key's state silently lost."""
    _, series = stream
    _, bundle = tiny_model
    names = kafka_env.names(partitions=2)
    ends = kafka_env.produce(names.input, series[:2], bundle.features)
    proc, port = kafka_env.start(names, "--checkpoint-interval", "0.5")
    wait_for(lambda: http_status(port, "/readyz") == 200, 30, "daemon ready")
    kafka_env.wait_committed(names.group, names.input, ends)
    assert terminate(proc) == 0
    admin = _admin(kafka_env)
    described = admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, names.changelog)], config_filter="all"
    )
    assert (
        described["topic"][names.changelog]["cleanup.policy"]["value"] == "compact"
    )  # as the daemon created it
    admin.delete_topics([names.changelog])
    assert names.changelog not in admin.list_topics()

    restarted, _ = kafka_env.start(names, "--checkpoint-interval", "0.5")
    assert restarted.wait(60) == 2
    committed = ", ".join(f"{names.input}:{p}" for p in sorted(ends))
    assert _error_lines(kafka_env) == [
        f"error: changelog topic '{names.changelog}' (kafka.changelog_topic, --changelog-topic) not found on "
        f"{kafka_env.broker.bootstrap}, but group {names.group} has committed offsets on {committed}: the state "
        "checkpointed with them is gone (topic deleted, or a broker that lost its data). Restore the topic, or "
        "accept starting those keys fresh from the committed offsets by creating it empty (kafka-topics --create "
        f"--topic {names.changelog} --config cleanup.policy=compact), or delete the group's offsets to read the "
        "input again from kafka.auto_offset_reset"
    ]
    assert names.changelog not in admin.list_topics()  # not recreated behind the operator's back
    assert kafka_env.committed(names.group, names.input) == ends  # nothing consumed past the lost state

    # what the error offers: the topic created empty (compacted) by hand; the daemon then starts
    admin.create_topics([NewTopic(names.changelog, 1, 1, topic_configs={"cleanup.policy": "compact"})])
    admin.close()
    accepted, port = kafka_env.start(names, "--checkpoint-interval", "0.5")
    wait_for(lambda: http_status(port, "/readyz") == 200, 30, "daemon ready after the changelog was created")
    assert terminate(accepted) == 0


def test_a_changelog_with_cleanup_policy_delete_is_refused_at_start(kafka_env, tiny_model):
    names = kafka_env.names(partitions=1)
    admin = _admin(kafka_env)
    admin.create_topics([NewTopic(names.changelog, 1, 1, topic_configs={"cleanup.policy": "delete"})])
    admin.close()
    proc, _ = kafka_env.start(names)
    assert proc.wait(60) == 2
    bootstrap = kafka_env.broker.bootstrap
    assert _error_lines(kafka_env) == [
        f"error: changelog topic '{names.changelog}' (kafka.changelog_topic, --changelog-topic) on {bootstrap} "
        "has cleanup.policy=delete: retention would delete the state checkpoints. Make it compacted: "
        f"kafka-configs --bootstrap-server {bootstrap} --alter --entity-type topics --entity-name "
        f"{names.changelog} --add-config cleanup.policy=compact"
    ]


def test_a_restore_from_a_changelog_gone_since_start_up_names_it(kafka_env):
    """The restore of an assignment said 'changelog topic X not found' (or failed inside kafka-python)."""
    reader = KafkaConsumer(
        bootstrap_servers=kafka_env.broker.bootstrap, enable_auto_commit=False, allow_auto_create_topics=False
    )
    store = ChangelogStore(
        lambda *a: None, reader, lambda t: "gone-changelog", Owner("g", "m"), where=kafka_env.broker.bootstrap
    )
    with pytest.raises(KafkaError) as err:
        store.read(["in:0"])
    reader.close(autocommit=False)
    assert str(err.value) == (
        "changelog topic 'gone-changelog' (kafka.changelog_topic, --changelog-topic) not found on "
        f"{kafka_env.broker.bootstrap} while restoring partitions: it was deleted while the daemon ran, or the "
        "broker lost it; restart the daemon (it creates the topic at a group's first start, and refuses to "
        "start, saying what to do, when the group's checkpointed state is gone)"
    )
    assert "gone-changelog" not in _admin(kafka_env).list_topics()

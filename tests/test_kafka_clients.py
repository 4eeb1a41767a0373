"""Start-up checks of the Kafka topics against a stubbed admin client: the changelog topic (missing after state
was checkpointed, or not compacted) and the role named in every "not found" error."""

from __future__ import annotations

import logging
from typing import Any

import kafka.errors as kerr
import pytest
from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata

from anomaly.config import KafkaConfig, changelog_topic, legacy_changelog_topic
from anomaly.errors import ConfigError
from anomaly.kafka import KafkaError, clients, history

CFG = KafkaConfig(bootstrap_servers="127.0.0.1:9092", group_id="g", topics=("in",))


class Admin:
    """What the start-up checks ask of a KafkaAdminClient."""

    def __init__(
        self,
        topics: tuple[str, ...] = (),
        policy: str | None = "compact",
        offsets: dict[TopicPartition, OffsetAndMetadata] | None = None,
        describe_error: Exception | None = None,
    ) -> None:
        self.topics = list(topics)
        self.policy = policy
        self.offsets = offsets or {}
        self.describe_error = describe_error
        self.created: list[Any] = []

    def list_topics(self) -> list[str]:
        return list(self.topics)

    def list_group_offsets(self, specs: dict[str, Any]) -> dict[str, Any]:
        return {group: dict(self.offsets) for group in specs}

    def create_topics(self, new: list[Any]) -> None:
        self.created += new
        self.topics += [t.name for t in new]

    def describe_configs(self, resources: list[Any], config_filter: str = "modified") -> dict[str, Any]:
        assert config_filter == "all"  # "modified" leaves out a policy at the broker's default (delete)
        if self.describe_error is not None:
            raise self.describe_error
        (res,) = resources
        entries = {} if self.policy is None else {"cleanup.policy": {"value": self.policy}}
        return {"topic": {res.name: entries}}


def test_a_missing_changelog_is_created_compacted_at_the_groups_first_start():
    admin = Admin(topics=("in",), offsets={TopicPartition("other", 0): OffsetAndMetadata(5, "", -1)})
    clients.ensure_changelog(admin, CFG, "cl", ["in"])
    assert [(t.name, t.topic_configs) for t in admin.created] == [("cl", {"cleanup.policy": "compact"})]


def test_a_missing_changelog_with_committed_offsets_is_refused_not_recreated():
    """It was created anew, empty, and every partition restored nothing: the group's state silently lost."""
    offsets = {
        TopicPartition("in", 1): OffsetAndMetadata(40, "", -1),
        TopicPartition("in", 0): OffsetAndMetadata(7, "", -1),
    }
    admin = Admin(topics=("in",), offsets=offsets)
    with pytest.raises(KafkaError) as err:
        clients.ensure_changelog(admin, CFG, "cl", ["in"])
    assert str(err.value) == (
        "changelog topic 'cl' (kafka.changelog_topic, --changelog-topic) not found on 127.0.0.1:9092, but group g "
        "has committed offsets on in:0, in:1: the state checkpointed with them is gone (topic deleted, or a broker "
        "that lost its data). Restore the topic, or accept starting those keys fresh from the committed offsets by "
        "creating it empty (kafka-topics --create --topic cl --config cleanup.policy=compact), or delete the "
        "group's offsets to read the input again from kafka.auto_offset_reset"
    )
    assert admin.created == []


def test_a_changelog_renamed_since_session_23_is_refused_with_how_to_keep_its_old_name():
    """Group 'plant a' checkpointed into changelog__plant_a--in, now the name of group 'plant_a''s changelog; its own
    is changelog__plant_a--in-<hash>. Where the group has committed offsets and the old topic exists, the start is
    refused saying how to keep the old one (the new one was created empty: the group's state silently left)."""
    cfg = KafkaConfig(bootstrap_servers="127.0.0.1:9092", group_id="plant a", topics=("in",))
    new, old = changelog_topic(cfg, "in"), legacy_changelog_topic(cfg, "in")
    assert (old, new[:-9]) == ("changelog__plant_a--in", "changelog__plant_a--in")
    admin = Admin(topics=("in", old), offsets={TopicPartition("in", 0): OffsetAndMetadata(7, "", -1)})
    with pytest.raises(KafkaError) as err:
        clients.ensure_changelog(admin, cfg, new, ["in"], legacy=old)
    assert str(err.value) == (
        f"changelog topic '{new}' (kafka.changelog_topic, --changelog-topic) not found on 127.0.0.1:9092, but "
        "group plant a has committed offsets on in:0 and 'changelog__plant_a--in' exists: the name of this "
        "changelog before session 23 (characters Kafka does not allow in a topic name, or past its 249, were "
        "replaced or cut, so groups such as 'a b' and 'a_b' shared one changelog; such a name now ends in a hash). "
        "To keep the state checkpointed in it, set kafka.changelog_topic = 'changelog__plant_a--{topic}'; to start "
        f"those keys fresh, create {new} empty (kafka-topics --create --topic {new} --config cleanup.policy=compact)"
    )
    assert admin.created == []
    # a new group (no committed offsets) gets its own changelog, whoever holds the old name
    fresh = Admin(topics=("in", old))
    clients.ensure_changelog(fresh, cfg, new, ["in"], legacy=old)
    assert [t.name for t in fresh.created] == [new]


def test_the_committed_offsets_are_asked_again_while_the_coordinator_is_not_ready(monkeypatch):
    """A new cluster answers COORDINATOR_NOT_AVAILABLE until its offsets topic exists: a first start asks again."""
    monkeypatch.setattr(clients.time, "sleep", lambda s: None)
    admin = Admin(topics=("in",))
    answers = [kerr.CoordinatorNotAvailableError(), kerr.CoordinatorNotAvailableError()]
    real = admin.list_group_offsets

    def flaky(specs: dict[str, Any]) -> dict[str, Any]:
        if answers:
            raise answers.pop()
        return real(specs)

    admin.list_group_offsets = flaky  # type: ignore[method-assign]
    clients.ensure_changelog(admin, CFG, "cl", ["in"])
    assert (answers, [t.name for t in admin.created]) == ([], ["cl"])

    def refused(specs: dict[str, Any]) -> dict[str, Any]:
        raise kerr.GroupAuthorizationFailedError()  # not retriable: one line at once

    denied = Admin(topics=("in",))
    denied.list_group_offsets = refused  # type: ignore[method-assign]
    with pytest.raises(KafkaError) as err:
        clients.ensure_changelog(denied, CFG, "cl", ["in"])
    assert (
        str(err.value)
        == "Kafka error at 127.0.0.1:9092 (committed offsets of group g): GroupAuthorizationFailedError"
    )


@pytest.mark.parametrize("policy", ["compact", "compact,delete", "delete, compact"])
def test_a_changelog_whose_policy_includes_compact_passes(policy, caplog):
    with caplog.at_level(logging.WARNING):
        clients.ensure_changelog(Admin(topics=("in", "cl"), policy=policy), CFG, "cl", ["in"])
    assert caplog.records == []


def test_a_changelog_with_cleanup_policy_delete_is_refused():
    with pytest.raises(KafkaError) as err:
        clients.ensure_changelog(Admin(topics=("in", "cl"), policy="delete"), CFG, "cl", ["in"])
    assert str(err.value) == (
        "changelog topic 'cl' (kafka.changelog_topic, --changelog-topic) on 127.0.0.1:9092 has "
        "cleanup.policy=delete: retention would delete the state checkpoints. Make it compacted: kafka-configs "
        "--bootstrap-server 127.0.0.1:9092 --alter --entity-type topics --entity-name cl --add-config "
        "cleanup.policy=compact"
    )


@pytest.mark.parametrize(
    ("admin", "why"),
    [
        (
            Admin(topics=("cl",), describe_error=kerr.UnsupportedVersionError()),
            "describe_configs: UnsupportedVersionError",
        ),
        (
            Admin(topics=("cl",), describe_error=kerr.KafkaConnectionError()),
            "describe_configs: KafkaConnectionError",
        ),
        (Admin(topics=("cl",), policy=None), "the broker did not report it"),
    ],
)
def test_a_broker_that_cannot_tell_the_policy_is_warned_about_once_and_let_be(admin, why, caplog):
    with caplog.at_level(logging.WARNING):
        clients.ensure_changelog(admin, CFG, "cl", ["in"])
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot check the cleanup.policy of changelog topic cl ({why}); make sure it is compact"
    ]


def test_missing_daemon_topics_are_named_with_their_role_and_setting():
    cfg = KafkaConfig(
        topics=("in", "in2"),
        alerts_topic="al",
        dead_letter_topic="dl",
        scores_topic="sc",
        bootstrap_servers="b:1",
    )
    with pytest.raises(KafkaError) as err:
        clients.ensure_topics(Admin(topics=("in2",)), cfg)
    assert str(err.value) == (
        "input topic 'in' (kafka.topics, --topics), alerts topic 'al' (kafka.alerts_topic, --alerts-topic), "
        "dead-letter topic 'dl' (kafka.dead_letter_topic, --dead-letter-topic), scores topic 'sc' "
        "(kafka.scores_topic, --scores-topic) not found on b:1; create them first or set "
        "kafka.auto_create_topics = true"
    )
    with pytest.raises(KafkaError) as one:
        clients.ensure_topics(Admin(topics=("in", "in2", "dl", "sc")), cfg)
    assert str(one.value) == (
        "alerts topic 'al' (kafka.alerts_topic, --alerts-topic) not found on b:1; create it first or set "
        "kafka.auto_create_topics = true"
    )


class NoTopics:
    """A group-less consumer on a broker without the topic asked for."""

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set()

    def close(self, autocommit: bool = False) -> None:
        pass


@pytest.mark.parametrize(
    ("read", "expected"),
    [
        (
            lambda cfg: history.read_alert_events(cfg, "al"),
            "alerts topic 'al' (kafka.alerts_topic, --alerts-topic) not found on b:1",
        ),
        (
            lambda cfg: history.read_dead_letter_positions(cfg, "dl", None),
            "dead-letter topic 'dl' (kafka.dead_letter_topic, --dead-letter-topic) not found on b:1",
        ),
        (
            lambda cfg: history.read_topic_range(cfg, ["in"], None, 0.0, 1.0),  # type: ignore[arg-type]
            "input topic 'in' (kafka.topics, --topic) not found on b:1",
        ),
    ],
)
def test_retrain_and_promote_name_the_role_of_a_missing_topic(read, expected, monkeypatch):
    """retrain/promote said 'topic al not found': neither which setting nor which broker."""
    monkeypatch.setattr(history, "_consumer", lambda cfg, timeout_s: NoTopics())
    with pytest.raises(KafkaError) as err:
        read(KafkaConfig(bootstrap_servers="b:1"))
    assert str(err.value) == expected


def test_the_group_consumer_refreshes_its_metadata_every_kafka_metadata_max_age_ms():
    """Partitions added to an input topic are seen, and the group rebalanced onto them, at the group consumer's next
    metadata refresh: kafka-python's default age of 5 minutes left them unread that long. The setting, from the
    pipeline file or the environment, reaches the client (not tested on a broker: Tansu 0.6 cannot add
    partitions); the changelog readers keep kafka-python's default."""
    from anomaly.config import build_config

    env = {"ANOMALY_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}  # api_version given: nothing connects here
    configs = {
        "default": build_config(env=env).kafka,
        "toml": build_config({"kafka": {"metadata_max_age_ms": 15000}}, env=env).kafka,
        "env": build_config(env={**env, "ANOMALY_KAFKA_METADATA_MAX_AGE_MS": "5000"}).kafka,
    }
    ages = {}
    for name, cfg in configs.items():
        consumer = clients.make_consumer(cfg, 0.5, api_version=(2, 8))
        reader = clients.make_consumer(cfg, 0.5, group=False, api_version=(2, 8))
        try:
            ages[name] = (
                consumer.config["metadata_max_age_ms"],
                consumer._client.cluster.config["metadata_max_age_ms"],
                reader.config["metadata_max_age_ms"],
            )
        finally:
            consumer.close()
            reader.close()
    assert ages == {
        "default": (30000, 30000, 300000),
        "toml": (15000, 15000, 300000),
        "env": (5000, 5000, 300000),
    }


def test_a_metadata_age_under_a_second_is_refused():
    with pytest.raises(ConfigError) as err:
        KafkaConfig(metadata_max_age_ms=500)
    assert str(err.value) == "kafka.metadata_max_age_ms must be at least 1000"


def test_every_compression_codec_a_producer_may_choose_can_be_read():
    """A topic written with compression.type lz4, snappy or zstd (common in Java and librdkafka producers) stopped
    the daemon at its first poll (UnsupportedCodecError), at every restart: their libraries are dependencies."""
    from kafka import codec

    assert (codec.has_gzip(), codec.has_snappy(), codec.has_lz4(), codec.has_zstd()) == (True,) * 4
    payload = b'{"key": "pump-7", "ts": 1700000000, "values": [1.0, 2.0, 3.0]}' * 20
    assert codec.lz4_decode(codec.lz4_encode(payload)) == payload
    assert codec.snappy_decode(codec.snappy_encode(payload)) == payload
    assert codec.zstd_decode(codec.zstd_encode(payload)) == payload


def test_a_broker_outage_is_logged_once_then_each_minute_then_its_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The readiness probe fails every second while the broker is away: one warning naming the operation, the
    bootstrap address and the error's text, a reminder at most every minute with the outage's duration, and one
    line when the broker answers again (the daemon logged "broker not answering: KafkaError" at every probe and
    nothing when it came back)."""
    now = [100.0]
    outage = clients.broker_outage(
        "kafka-0:9092", logging.getLogger("t"), repeat_s=60.0, clock=lambda: now[0]
    )
    caplog.set_level(logging.INFO, logger="t")
    outage.succeeded()  # no outage: nothing to say
    for _ in range(150):  # 150 s of failed probes, one a second
        outage.failed(
            kerr.KafkaTimeoutError("no metadata in 2.0 s"),
            operation="metadata request of the readiness probe",
        )
        now[0] += 1.0
    outage.succeeded()
    outage.succeeded()
    outage.failed(
        KafkaError("cannot reach Kafka at kafka-0:9092 (admin client)"),
        operation="connecting the readiness probe",
    )
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            "broker at kafka-0:9092 not answering (metadata request of the readiness probe): "
            "KafkaTimeoutError: no metadata in 2.0 s",
        ),
        (
            "WARNING",
            "broker at kafka-0:9092 still not answering after 60 s (metadata request of the readiness probe): "
            "KafkaTimeoutError: no metadata in 2.0 s",
        ),
        (
            "WARNING",
            "broker at kafka-0:9092 still not answering after 120 s (metadata request of the readiness probe): "
            "KafkaTimeoutError: no metadata in 2.0 s",
        ),
        ("WARNING", "broker at kafka-0:9092 reachable again after 150 s"),
        (
            "WARNING",
            "broker at kafka-0:9092 not answering (connecting the readiness probe): "
            "cannot reach Kafka at kafka-0:9092 (admin client)",
        ),
    ]
    # an error without text is named by its type; one whose text names its type is not named twice
    assert clients.error_text(kerr.KafkaConnectionError()) == "KafkaConnectionError"
    assert (
        clients.error_text(kerr.RequestTimedOutError("Request timed out after 1999 ms"))
        == "[Error 7] RequestTimedOutError: Request timed out after 1999 ms"
    )


def test_kafka_pythons_repeated_log_lines_pass_once_a_minute_and_say_how_many_were_held_back() -> None:
    """With -v, kafka-python logged each reconnect attempt of each connection: a broker outage of 20 s wrote
    650 lines to a soaked daemon's log. Each of its lines (logger, level, text before its arguments) now passes
    at most once a minute; the daemon's own lines are not limited."""
    import io

    from anomaly.commands.common import RepeatedRecords, limit_kafka_repeats

    now = [0.0]
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    handler.addFilter(RepeatedRecords(clock=lambda: now[0]))
    loggers = [logging.getLogger(name) for name in ("kafka.net.connection", "anomaly.kafka.daemon")]
    levels = [lg.level for lg in loggers]  # a CLI test before this one may have left "kafka" at CRITICAL
    for lg in loggers:
        lg.addHandler(handler)
        lg.propagate = False
        lg.setLevel(logging.DEBUG)
    try:
        for i in range(100):  # every 0.2 s, as kafka-python's reconnects
            now[0] = i * 0.2
            loggers[0].error("%s: Connection lost: %s", f"<node {i % 3}>", "ECONNREFUSED")
        # another level: its own line
        loggers[0].warning("%s: Connection lost: %s", "<node 0>", "ECONNREFUSED")
        loggers[1].warning("broker not answering")
        loggers[1].warning("broker not answering")
        now[0] = 61.0
        loggers[0].error("%s: Connection lost: %s", "<node 1>", "ECONNREFUSED")
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.propagate = True
            lg.setLevel(level)
    assert stream.getvalue().splitlines() == [
        "kafka.net.connection <node 0>: Connection lost: ECONNREFUSED",
        "kafka.net.connection <node 0>: Connection lost: ECONNREFUSED",
        "anomaly.kafka.daemon broker not answering",
        "anomaly.kafka.daemon broker not answering",
        "kafka.net.connection <node 1>: Connection lost: ECONNREFUSED (99 more like it in the last 61 s not shown)",
    ]
    root = logging.getLogger()
    installed = logging.StreamHandler(io.StringIO())
    others, root.handlers = root.handlers, [installed]  # pytest's own handlers stay as they are
    try:
        limit_kafka_repeats()
        limit_kafka_repeats()  # once per handler
        assert [type(f) for f in installed.filters] == [RepeatedRecords]
    finally:
        root.handlers = others

"""kafka-python clients built from :class:`KafkaConfig`: security passthrough and start-up checks.

Every client (consumer, producer, admin, changelog reader) gets the same connection settings, so SSL and SASL
(PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) configured once apply everywhere. Failures a user can fix (broker
unreachable, topic missing, bad security settings) become one-line :class:`KafkaError` messages; the password
never appears in them.
"""

from __future__ import annotations

import logging
import threading
import time
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import kafka.errors as kerr
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

from anomaly.config import (
    CONSUMER_REQUEST_TIMEOUT_MS,
    KafkaConfig,
    legacy_changelog_template,
    refuse_unused_security,
)
from anomaly.errors import ConfigError
from anomaly.kafka import KafkaError

log = logging.getLogger(__name__)

# the settings' own choices (config.py), so that this connect-time check cannot drift from them
_HINTS = typing.get_type_hints(KafkaConfig)
SECURITY_PROTOCOLS: tuple[str, ...] = typing.get_args(_HINTS["security_protocol"])
SASL_MECHANISMS: tuple[str, ...] = typing.get_args(typing.get_args(_HINTS["sasl_mechanism"])[0])


def connection_settings(cfg: KafkaConfig, bootstrap_timeout_s: float = 10.0) -> dict[str, Any]:
    """kafka-python keyword arguments shared by every client; ConfigError for unusable security settings."""
    if cfg.security_protocol not in SECURITY_PROTOCOLS:
        raise ConfigError(
            f"kafka.security_protocol must be one of: {', '.join(SECURITY_PROTOCOLS)}",
            key="kafka.security_protocol",
        )
    out: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in cfg.bootstrap_servers.split(",") if s.strip()],
        "security_protocol": cfg.security_protocol,
        "bootstrap_timeout_ms": int(bootstrap_timeout_s * 1000),
    }
    if not out["bootstrap_servers"]:
        raise ConfigError("kafka.bootstrap_servers is empty", key="kafka.bootstrap_servers")
    refuse_unused_security(cfg)
    if cfg.security_protocol.startswith("SASL"):
        if cfg.sasl_mechanism not in SASL_MECHANISMS:
            raise ConfigError(
                f"kafka.sasl_mechanism must be one of: {', '.join(SASL_MECHANISMS)} with "
                f"security_protocol {cfg.security_protocol}",
                key="kafka.sasl_mechanism",
            )
        if not cfg.sasl_username or not cfg.sasl_password:
            raise ConfigError(
                f"SASL {cfg.sasl_mechanism} needs kafka.sasl_username and kafka.sasl_password "
                "(e.g. ANOMALY_KAFKA_SASL_PASSWORD)",
                key="kafka.sasl_username",
            )
        out.update(
            sasl_mechanism=cfg.sasl_mechanism,
            sasl_plain_username=cfg.sasl_username,
            sasl_plain_password=cfg.sasl_password,
        )
    if cfg.security_protocol.endswith("SSL"):
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(cfg, name)
            if path:
                try:  # kafka-python only logs a PEM file it cannot load, then calls the broker unreachable
                    with open(path, "rb"):
                        pass
                except OSError as exc:
                    raise ConfigError(
                        f"kafka.{name}: cannot read {path}: {exc.strerror or exc}", key=f"kafka.{name}"
                    ) from None
                out[name] = path
        out["ssl_check_hostname"] = True
    return out


def error_text(exc: BaseException) -> str:
    """An exception as a log line should name it: its type and its text. kafka-python's errors often carry no
    text (the type says it all); this package's :class:`KafkaError` lines already say what failed, where."""
    kind = type(exc).__name__
    text = str(exc).strip()
    if not text or text == kind:
        return kind
    return text if isinstance(exc, KafkaError) or kind in text else f"{kind}: {text}"


class RepeatedFailure:
    """What one caller logs of an operation that fails again and again while the broker is away (once per probe,
    message, batch or checkpoint): the first failure, then at most one line every ``repeat_s`` seconds, and one
    line at the next success. Each line is a template (``first``, ``repeat``, ``end``) formatted with ``error``
    (the error's text, :func:`error_text`), ``seconds`` (how long it has failed), ``more`` (failures since the
    last line), ``failures`` (in a row), the ``fields`` given here and those given to :meth:`failed`.
    Thread-safe: a producer's callbacks run on its IO thread."""

    def __init__(
        self,
        first: str,
        repeat: str,
        end: str,
        logger: logging.Logger = log,
        level: int = logging.WARNING,
        repeat_s: float = 60.0,
        clock: typing.Callable[[], float] = time.monotonic,
        **fields: Any,
    ) -> None:
        self.first, self.repeat, self.end, self.fields = first, repeat, end, fields
        self.log, self.level, self.repeat_s, self.clock = logger, level, repeat_s, clock
        self.since: float | None = None  # monotonic time of the first failure in a row; None after a success
        self.failures = 0  # in a row
        self._logged_at, self._logged_n = 0.0, 0
        self._lock = threading.Lock()

    @classmethod
    def counted(cls, failing: str, recovered: str, after: str = "", **kw: Any) -> RepeatedFailure:
        """Lines ``{failing} (ERROR){after}``, ``{failing} N more time(s), failing for N s (ERROR){after}`` and
        ``{recovered} after N s (N failed)``: for an operation tried once per message or batch."""
        return cls(
            failing + " ({error})" + after,
            failing + " {more} more time(s), failing for {seconds:.0f} s ({error})" + after,
            recovered + " after {seconds:.0f} s ({failures} failed)",
            **kw,
        )

    def failed(self, exc: BaseException, **fields: Any) -> None:
        with self._lock:
            now = self.clock()
            self.failures += 1
            if self.since is None:
                self.since, self._logged_at, self._logged_n = now, now, self.failures
                template = self.first
            elif now - self._logged_at >= self.repeat_s:
                template = self.repeat
            else:
                return
            more, self._logged_at, self._logged_n = self.failures - self._logged_n, now, self.failures
            self.log.log(
                self.level,
                template.format(
                    **self.fields, **fields, error=error_text(exc), seconds=now - self.since, more=more
                ),
            )

    def succeeded(self, *_: Any) -> None:
        if self.since is None:  # the usual case, without the lock
            return
        with self._lock:
            if self.since is None:
                return
            seconds = self.clock() - self.since
            self.log.log(self.level, self.end.format(**self.fields, seconds=seconds, failures=self.failures))
            self.since, self.failures = None, 0


def broker_outage(bootstrap: str, logger: logging.Logger = log, **kw: Any) -> RepeatedFailure:
    """What one caller logs of a broker outage (``failed(exc, operation=...)``, ``succeeded()``): one warning
    when the broker stops answering (the operation that failed, the bootstrap address, the error), at most one
    more a minute with the outage's duration so far, and one line when it answers again, with the outage's
    duration. Logged as warnings: the daemon shows warnings only without ``-v``, and the end of an outage belongs
    where its start was shown."""
    return RepeatedFailure(
        "broker at {bootstrap} not answering ({operation}): {error}",
        "broker at {bootstrap} still not answering after {seconds:.0f} s ({operation}): {error}",
        "broker at {bootstrap} reachable again after {seconds:.0f} s",
        logger,
        bootstrap=bootstrap,
        **kw,
    )


class UnreachableError(KafkaError):
    """No usable connection to the bootstrap servers. The message says to check `setting`: the setting's name, or
    with where its value came from when the caller knows (the CLI: `--bootstrap-servers (kafka.bootstrap_servers)`
    for an address given by the option, which the bare setting's name did not point at)."""

    def __init__(
        self, what: str, bootstrap: str, protocol: str, setting: str = "kafka.bootstrap_servers"
    ) -> None:
        super().__init__(
            f"cannot reach Kafka at {bootstrap} ({what}): no usable connection; check {setting}, that the broker "
            f"is up and the security settings (security_protocol {protocol})"
        )
        self.what, self.bootstrap, self.protocol = what, bootstrap, protocol

    def checking(self, setting: str) -> UnreachableError:
        """The same error, telling to check `setting` (e.g. the option that gave the address)."""
        return UnreachableError(self.what, self.bootstrap, self.protocol, setting)


def _fail(what: str, cfg: KafkaConfig, exc: Exception) -> KafkaError:
    kind = type(exc).__name__
    if isinstance(exc, kerr.KafkaTimeoutError | kerr.BrokerNotAvailableError):
        return UnreachableError(what, cfg.bootstrap_servers, cfg.security_protocol)
    if isinstance(exc, kerr.SaslAuthenticationFailedError):
        return KafkaError(
            f"Kafka authentication failed at {cfg.bootstrap_servers} ({what}); check the SASL/SSL settings"
        )
    return KafkaError(f"Kafka error at {cfg.bootstrap_servers} ({what}): {kind}")


def make_admin(
    cfg: KafkaConfig, bootstrap_timeout_s: float = 10.0, request_timeout_ms: int = 10_000
) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(
            **connection_settings(cfg, bootstrap_timeout_s),
            client_id="anomaly-admin",
            request_timeout_ms=request_timeout_ms,
        )
    except (kerr.KafkaError, OSError) as exc:
        raise _fail("admin client", cfg, exc) from None


def make_producer(cfg: KafkaConfig, bootstrap_timeout_s: float = 10.0, **extra: Any) -> KafkaProducer:
    """acks=all, small linger; ``transactional_id`` in ``extra`` makes it transactional (idempotent, and
    ``init_transactions`` is called here, which fences an earlier producer with the same id)."""
    settings = {
        "acks": "all",
        "linger_ms": 5,
        "client_id": "anomaly",
        "max_request_size": cfg.max_request_bytes,
        "max_block_ms": cfg.max_block_ms,
        **extra,
    }
    if settings.get("transactional_id"):
        settings.setdefault("enable_idempotence", True)
        settings.setdefault("transaction_timeout_ms", cfg.transaction_timeout_ms)
    try:
        producer = KafkaProducer(**connection_settings(cfg, bootstrap_timeout_s), **settings)
        if settings.get("transactional_id"):
            producer.init_transactions()
        return producer
    except (kerr.KafkaError, OSError) as exc:
        raise _fail("producer", cfg, exc) from None


def fence(cfg: KafkaConfig, txn_id: str, bootstrap_timeout_s: float = 10.0) -> None:
    """Initialise a producer with another writer's transactional id and close it: the broker aborts that
    writer's open transaction and rejects its later sends and commits (ProducerFencedError)."""
    make_producer(cfg, bootstrap_timeout_s, transactional_id=txn_id).close(timeout=5)


def transactional_id(cfg: KafkaConfig) -> str:
    """The configured template filled in (default: unique per group, host and process)."""
    import os
    import socket

    return cfg.transactional_id.format(group=cfg.group_id, host=socket.gethostname(), pid=os.getpid())


def make_consumer(
    cfg: KafkaConfig,
    bootstrap_timeout_s: float = 10.0,
    group: bool = True,
    committed_only: bool = True,
    **extra: Any,
) -> KafkaConsumer:
    """A group consumer with manual commits (the checkpointer commits), or a group-less one (group=False)."""
    settings: dict[str, Any] = {
        "enable_auto_commit": False,
        "auto_offset_reset": cfg.auto_offset_reset if group else "earliest",
        "client_id": "anomaly",
    }
    if cfg.transactional and not group and committed_only:  # the changelog reader: aborted checkpoints stay
        settings["isolation_level"] = (
            "read_committed"  # hidden where the broker can (not Tansu 0.6: epochs do)
        )
    if group:
        settings.update(
            # the input: records of an upstream producer's aborted transaction (an exactly-once job writing the
            # sensors topic, retried after a failure) were scored, and their retried copies then refused as
            # duplicate or backward readings; Kafka Streams' and Quix's exactly-once consumers read committed too
            isolation_level="read_committed",
            group_id=cfg.group_id,
            max_poll_records=cfg.max_poll_records,
            fetch_max_wait_ms=cfg.fetch_max_wait_ms,
            request_timeout_ms=CONSUMER_REQUEST_TIMEOUT_MS,  # above fetch_max_wait_ms (the config checks it)
            max_poll_interval_ms=cfg.max_poll_interval_ms,
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=max(100, cfg.session_timeout_ms // 3),
            metadata_max_age_ms=cfg.metadata_max_age_ms,  # partitions added to an input topic: seen at a refresh
            fetch_max_bytes=max(52_428_800, cfg.max_message_bytes),
            max_partition_fetch_bytes=max(1_048_576, cfg.max_message_bytes + 1024),
        )
    settings.update(extra)
    try:
        return KafkaConsumer(**connection_settings(cfg, bootstrap_timeout_s), **settings)
    except (kerr.KafkaError, OSError) as exc:
        raise _fail("consumer", cfg, exc) from None


@dataclass(frozen=True)
class TopicRole:
    """What a topic is to a command, and where its name comes from: named in every "not found" error."""

    name: str  # "alerts topic"
    setting: str  # "kafka.alerts_topic" ("" when only an option names it)
    option: str  # "--alerts-topic"

    def describe(self, topic: str) -> str:
        where = ", ".join(w for w in (self.setting, self.option) if w)
        return f"{self.name} '{topic}' ({where})"


INPUT = TopicRole("input topic", "kafka.topics", "--topics")
ALERTS = TopicRole("alerts topic", "kafka.alerts_topic", "--alerts-topic")
SCORES = TopicRole("scores topic", "kafka.scores_topic", "--scores-topic")
DEAD_LETTERS = TopicRole("dead-letter topic", "kafka.dead_letter_topic", "--dead-letter-topic")
CHANGELOG = TopicRole("changelog topic", "kafka.changelog_topic", "--changelog-topic")


def not_found(cfg: KafkaConfig, missing: Iterable[tuple[str, TopicRole]]) -> str:
    """``<role> '<topic>' (<setting>, <option>)[, ...] not found on <bootstrap>``."""
    return f"{', '.join(role.describe(t) for t, role in missing)} not found on {cfg.bootstrap_servers}"


def check_topics(
    admin: KafkaAdminClient, cfg: KafkaConfig, topics: Mapping[str, TopicRole], hint: str = ""
) -> None:
    """KafkaError naming each topic that does not exist, with its role and setting (``hint`` default: create
    them first or set ``kafka.auto_create_topics``)."""
    try:
        present = set(admin.list_topics())
    except (kerr.KafkaError, OSError) as exc:
        raise _fail("list topics", cfg, exc) from None
    missing = [(t, role) for t, role in topics.items() if t not in present]
    if missing:
        them = "it" if len(missing) == 1 else "them"
        raise KafkaError(
            f"{not_found(cfg, missing)}; "
            + (hint or f"create {them} first or set kafka.auto_create_topics = true")
        )


def daemon_topics(cfg: KafkaConfig) -> dict[str, TopicRole]:
    """Input and output topics of the daemon (not the changelog), with their roles (the first role of a topic
    named twice)."""
    named = [(t, INPUT) for t in cfg.topics] + [
        (cfg.alerts_topic, ALERTS),
        (cfg.dead_letter_topic, DEAD_LETTERS),
    ]
    if cfg.scores_topic:
        named.append((cfg.scores_topic, SCORES))
    out: dict[str, TopicRole] = {}
    for topic, role in named:
        out.setdefault(topic, role)
    return out


def ensure_topics(admin: KafkaAdminClient, cfg: KafkaConfig) -> None:
    """With ``auto_create_topics``: create the missing input/output topics (``topic_partitions`` x
    ``replication_factor``); always: KafkaError if an input or output topic is still missing."""
    names = daemon_topics(cfg)
    if cfg.auto_create_topics:
        try:
            create_topics(admin, names, cfg.topic_partitions, cfg.replication_factor)
        except (kerr.KafkaError, OSError) as exc:
            raise _fail("create topics", cfg, exc) from None
    check_topics(admin, cfg, names)


def ensure_changelog(
    admin: KafkaAdminClient,
    cfg: KafkaConfig,
    topic: str,
    inputs: Iterable[str],
    partitions: int = 1,
    legacy: str | None = None,
) -> None:
    """At start-up: create the changelog topic of ``inputs`` (cleanup.policy=compact) at the group's first
    start; refuse (KafkaError) when it is missing although the group has committed offsets on ``inputs`` (the
    state checkpointed with them is gone: starting on would silently drop it), and when it exists with a
    cleanup policy without ``compact`` (see :func:`check_compacted`). ``legacy``: the changelog's name before
    session 23 (:func:`~anomaly.config.legacy_changelog_topic`); where that topic exists, the refusal says how to
    keep the state in it."""
    try:
        names = set(admin.list_topics())
    except (kerr.KafkaError, OSError) as exc:
        raise _fail("list topics", cfg, exc) from None
    if topic in names:
        check_compacted(admin, cfg, topic)
        return
    committed = committed_partitions(admin, cfg, inputs)
    if committed and legacy is not None and legacy != topic and legacy in names:
        template = legacy_changelog_template(cfg)
        keep = (
            f"kafka.changelog_topic = {template!r}"
            if template
            else f"a kafka.changelog_topic naming {legacy}"
        )
        raise KafkaError(
            f"{not_found(cfg, [(topic, CHANGELOG)])}, but group {cfg.group_id} has committed offsets on "
            f"{', '.join(committed)} and {legacy!r} exists: the name of this changelog before session 23 (characters "
            "Kafka does not allow in a topic name, or past its 249, were replaced or cut, so groups such as 'a b' "
            "and 'a_b' shared one changelog; such a name now ends in a hash). To keep the state checkpointed in "
            f"it, set {keep}; to start those keys fresh, create {topic} empty (kafka-topics --create --topic "
            f"{topic} --config cleanup.policy=compact)"
        )
    if committed:
        raise KafkaError(
            f"{not_found(cfg, [(topic, CHANGELOG)])}, but group {cfg.group_id} has committed offsets on "
            f"{', '.join(committed)}: the state checkpointed with them is gone (topic deleted, or a broker "
            "that lost its data). Restore the topic, or accept starting those keys fresh from the committed "
            f"offsets by creating it empty (kafka-topics --create --topic {topic} --config "
            "cleanup.policy=compact), or delete the group's offsets to read the input again from "
            "kafka.auto_offset_reset"
        )
    try:
        admin.create_topics(
            [NewTopic(topic, partitions, cfg.replication_factor, topic_configs={"cleanup.policy": "compact"})]
        )
        log.info("created changelog topic %s (cleanup.policy=compact)", topic)
    except kerr.TopicAlreadyExistsError:
        return
    except (kerr.KafkaError, OSError) as exc:
        raise _fail(f"create changelog topic {topic}", cfg, exc) from None


def committed_partitions(
    admin: KafkaAdminClient, cfg: KafkaConfig, inputs: Iterable[str], retry_s: float = 10.0
) -> list[str]:
    """``topic:partition`` of each partition of ``inputs`` with an offset committed by ``kafka.group_id``
    (retriable errors retried for ``retry_s``)."""
    wanted = set(inputs)
    return sorted(
        f"{topic}:{partition}"
        for topic, partition in committed_offsets(admin, cfg, retry_s)
        if topic in wanted
    )


def committed_offsets(
    admin: KafkaAdminClient, cfg: KafkaConfig, retry_s: float = 10.0
) -> dict[tuple[str, int], int]:
    """The offset ``kafka.group_id`` has committed on each partition, by ``(topic, partition)`` (partitions
    without one left out; retriable errors retried for ``retry_s``, then KafkaError)."""
    deadline = time.monotonic() + retry_s
    while True:
        try:
            offsets = admin.list_group_offsets({cfg.group_id: None}).get(cfg.group_id, {})
            break
        except (kerr.KafkaError, OSError) as exc:
            # a new cluster answers COORDINATOR_NOT_AVAILABLE until its offsets topic exists
            if getattr(exc, "retriable", False) and time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            raise _fail(f"committed offsets of group {cfg.group_id}", cfg, exc) from None
    return {
        (tp.topic, tp.partition): om.offset for tp, om in offsets.items() if om is not None and om.offset >= 0
    }


def check_compacted(admin: KafkaAdminClient, cfg: KafkaConfig, topic: str) -> None:
    """KafkaError when the changelog topic's ``cleanup.policy`` has no ``compact`` (``delete`` ages the
    checkpoints out under retention: state lost at a later restore). A broker that does not tell the policy
    (an error, or no such entry, as Tansu for a topic created without configs) is logged once and let be."""
    why = "the broker did not report it"
    try:
        answer = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all"
        )
        entry = answer.get("topic", {}).get(topic, {}).get("cleanup.policy")
    except (kerr.KafkaError, OSError, AttributeError, TypeError, ValueError) as exc:
        entry, why = None, f"describe_configs: {type(exc).__name__}"
    if not entry or entry.get("value") is None:
        log.warning(
            "cannot check the cleanup.policy of changelog topic %s (%s); make sure it is compact", topic, why
        )
        return
    policy = str(entry["value"])
    if "compact" not in {p.strip() for p in policy.split(",")}:
        raise KafkaError(
            f"{CHANGELOG.describe(topic)} on {cfg.bootstrap_servers} has cleanup.policy={policy}: retention "
            "would delete the state checkpoints. Make it compacted: kafka-configs --bootstrap-server "
            f"{cfg.bootstrap_servers} --alter --entity-type topics --entity-name {topic} --add-config "
            "cleanup.policy=compact"
        )


def create_topics(
    admin: KafkaAdminClient, names: Iterable[str], partitions: int, replication: int = 1
) -> None:
    """Create missing plain topics; existing ones are left alone."""
    present = set(admin.list_topics())
    new = [NewTopic(n, partitions, replication) for n in names if n not in present]
    if new:
        try:
            admin.create_topics(new)
        except kerr.TopicAlreadyExistsError:
            pass
        for topic in new:
            log.info("created topic %s (%d partitions, replication %d)", topic.name, partitions, replication)

"""The identity of the topics the daemon's state depends on and writes to, checked while it runs.

The state checkpointed in a changelog topic is only right together with the input partitions' offsets it
names and the group's committed offsets. Each of these lives on the broker, and each can vanish under a running
daemon: the broker restarted without its data (every topic and committed offset gone, and the topics created
again, empty, by the first client that asks for them on a broker with ``auto.create.topics.enable``), or a
topic deleted (and perhaps created again) by hand. Kafka names every topic with a topic id (KIP-516, Kafka 2.8+)
that a topic created again does not share, so the daemon records the ids of its input and changelog topics at
start-up and checks them (one metadata request, no auto-creation) before every checkpoint writes or commits,
before every assignment's restore, and every second in the broker probe. A topic gone or with another id stops
the daemon with one line (:class:`TopicChangedError`) before it writes anything more: going on would restore
nothing, score the new topic's messages against state of the old one (or skip them as covered by a checkpoint
of the old one), and commit offsets and checkpoints that describe neither.

The output topics (alerts, scores, dead letters) are checked the same way. One deleted under a running daemon
took what its readers had not read yet with it, and the daemon's next writes either created it again with the
broker's defaults (``auto.create.topics.enable``: a compacted or long-retention alerts topic became a default
one, its readers' offsets pointing past its end) or waited ``max_block_ms`` for it and were refused. Stopping
before the next commit leaves the outputs since the last committed checkpoint to the restart, which writes them
again into the topic that exists then.

A broker that reports no topic ids (before Kafka 2.8) is not checked (logged once at start-up).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from anomaly.kafka import KafkaError, clients
from anomaly.kafka.clients import TopicRole

log = logging.getLogger(__name__)
NO_ID = ("", "00000000-0000-0000-0000-000000000000", "AAAAAAAAAAAAAAAAAAAAAA")


OUTPUTS = (clients.ALERTS, clients.SCORES, clients.DEAD_LETTERS)
STATE_CHANGED = (
    "The state checkpointed in the changelog, the input offsets it covers and the group's committed offsets no "
    "longer belong together, so the daemon stopped before writing or committing anything more"
)
OUTPUT_CHANGED = (
    "Its readers lost what it held, and outputs written now would go to a topic auto-created with the "
    "broker's defaults or be refused, so the daemon stopped before committing anything more: the restart "
    "(once the topic exists again) writes every output since the last committed checkpoint again"
)


class TopicChangedError(KafkaError):
    """A watched topic is gone or was created again since start-up: fatal, never a postponed checkpoint."""


def topic_ids(admin: Any, topics: list[str]) -> dict[str, str | None]:
    """The topic id of each topic (None: missing or no id reported), from one metadata request that creates
    nothing. Raises kafka-python's errors when the broker does not answer."""
    out: dict[str, str | None] = dict.fromkeys(topics)
    for entry in admin.describe_topics(topics):
        name = entry.get("name")
        if name in out and not entry.get("error_code"):
            tid = entry.get("topic_id")
            out[name] = None if tid is None or str(tid) in NO_ID else str(tid)
    return out


class TopicIdentity:
    """The topic ids of the watched topics at start-up (``roles``: topic -> its role, for the error line)."""

    def __init__(self, roles: Mapping[str, TopicRole], where: str) -> None:
        self.roles = dict(roles)
        self.where = where
        self.ids: dict[str, str] = {}

    def record(self, admin: Any) -> None:
        """Remember the current ids (at start-up, once every watched topic exists)."""
        ids = topic_ids(admin, list(self.roles))
        self.ids = {topic: tid for topic, tid in ids.items() if tid is not None}
        unknown = sorted(set(self.roles) - set(self.ids))
        if unknown:
            log.warning(
                "the broker reports no topic id for %s: a topic deleted or created again while the daemon runs "
                "(or a broker restarted without its data) cannot be noticed",
                ", ".join(unknown),
            )

    def check(self, admin: Any) -> None:
        """TopicChangedError for the first watched topic that is gone or has another id than at start-up."""
        if not self.ids:
            return
        now = topic_ids(admin, list(self.ids))
        for topic, was in self.ids.items():
            is_now = now.get(topic)
            if is_now == was:
                continue
            what = self.roles[topic].describe(topic)
            if is_now is None:
                change = f"is gone from {self.where}"
            else:
                change = f"on {self.where} was created again (topic id {was} at start-up, now {is_now})"
            why = OUTPUT_CHANGED if self.roles[topic] in OUTPUTS else STATE_CHANGED
            raise TopicChangedError(
                f"{what} {change} while the daemon ran: deleted by hand, or the broker restarted without its "
                f"data. {why} (see README 'Running the daemon' for how to go on)"
            )

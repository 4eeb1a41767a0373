"""The topic identity checks without a broker: an admin double answers describe_topics as kafka-python's does
(the broker's side, Tansu restarted or a topic deleted, is proved by tests/integration/test_kafka_topics_replaced.py)."""

from __future__ import annotations

import types
from typing import Any

import kafka.errors as kerr
import pytest

from anomaly.kafka import KafkaError
from anomaly.kafka.clients import ALERTS, CHANGELOG, DEAD_LETTERS, INPUT
from anomaly.kafka.daemon import Daemon, DaemonOptions
from anomaly.kafka.identity import TopicChangedError, TopicIdentity


class _Admin:
    """describe_topics from a dict topic -> id (None: missing); ``fail``: that many calls raise first."""

    def __init__(self, ids: dict[str, str | None], fail: int = 0) -> None:
        self.ids, self.fail, self.calls = ids, fail, 0

    def describe_topics(self, topics: list[str]) -> list[dict[str, Any]]:
        self.calls += 1
        if self.fail:
            self.fail -= 1
            raise kerr.KafkaTimeoutError("no answer (test)")
        return [
            {"name": t, "error_code": 0 if self.ids.get(t) else 3, "topic_id": self.ids.get(t)}
            for t in topics
        ]


ROLES = {"in": INPUT, "cl": CHANGELOG}


def _recorded(admin: _Admin) -> TopicIdentity:
    identity = TopicIdentity(ROLES, "host:9092")
    identity.record(admin)
    return identity


def test_the_same_topics_pass() -> None:
    admin = _Admin({"in": "id-in", "cl": "id-cl"})
    _recorded(admin).check(admin)
    assert admin.calls == 2


@pytest.mark.parametrize(
    ("now", "message"),
    [
        (
            {"in": "id-in-2", "cl": "id-cl"},
            "input topic 'in' (kafka.topics, --topics) on host:9092 was created again (topic id id-in at start-up, "
            "now id-in-2) while the daemon ran",
        ),
        (
            {"in": "id-in", "cl": None},
            "changelog topic 'cl' (kafka.changelog_topic, --changelog-topic) is gone from host:9092 while the "
            "daemon ran",
        ),
    ],
    ids=["created-again", "gone"],
)
def test_a_topic_created_again_or_gone_is_named(now: dict[str, str | None], message: str) -> None:
    identity = _recorded(_Admin({"in": "id-in", "cl": "id-cl"}))
    with pytest.raises(TopicChangedError) as err:
        identity.check(_Admin(now))
    assert str(err.value).startswith(message + ": deleted by hand, or the broker restarted without its data.")


@pytest.mark.parametrize("role", [ALERTS, DEAD_LETTERS], ids=["alerts", "dead-letters"])
def test_an_output_topic_gone_is_named_with_what_the_restart_does(role: Any) -> None:
    """Before, output topics were not watched: deleted, the producer created them again with the broker's
    defaults (or waited max_block_ms and was refused) and the daemon went on without a word."""
    identity = TopicIdentity({"in": INPUT, "out": role}, "host:9092")
    identity.record(_Admin({"in": "id-in", "out": "id-out"}))
    with pytest.raises(TopicChangedError) as err:
        identity.check(_Admin({"in": "id-in", "out": None}))
    assert str(err.value) == (
        f"{role.describe('out')} is gone from host:9092 while the daemon ran: deleted by hand, or the broker "
        "restarted without its data. Its readers lost what it held, and outputs written now would go to a topic "
        "auto-created with the broker's defaults or be refused, so the daemon stopped before committing anything "
        "more: the restart (once the topic exists again) writes every output since the last committed "
        "checkpoint again (see README 'Running the daemon' for how to go on)"
    )


def test_a_broker_without_topic_ids_is_not_checked() -> None:
    identity = _recorded(_Admin({"in": "00000000-0000-0000-0000-000000000000", "cl": ""}))
    later = _Admin({})
    identity.check(later)  # everything gone: cannot be told from a broker that reports no ids
    assert (identity.ids, later.calls) == ({}, 0)


def _daemon(admin: _Admin) -> Daemon:
    daemon = Daemon.__new__(Daemon)
    daemon.admin = admin
    daemon.identity = _recorded(_Admin({"in": "id-in", "cl": "id-cl"}))
    daemon.opts = DaemonOptions(bootstrap_timeout_s=0.5)
    daemon.cfg = types.SimpleNamespace(kafka=types.SimpleNamespace(bootstrap_servers="host:9092"))  # type: ignore[assignment]
    return daemon


def test_a_restore_asks_again_while_the_broker_does_not_answer_then_checks() -> None:
    """Before, a restore went on unchecked when the check went unanswered: on a broker restarted without its
    data, the changelog reads a moment later could restore nothing and claim the new topics."""
    admin = _Admin({"in": "id-in-2", "cl": "id-cl"}, fail=1)
    with pytest.raises(TopicChangedError):
        _daemon(admin)._check_topics_before_restore()
    assert admin.calls == 2


def test_a_restore_whose_topics_cannot_be_checked_in_time_fails() -> None:
    admin = _Admin({"in": "id-in", "cl": "id-cl"}, fail=1000)
    with pytest.raises(KafkaError) as err:
        _daemon(admin)._check_topics_before_restore()
    assert str(err.value) == (
        "cannot check the input and changelog topics before restoring partitions (KafkaTimeoutError): the broker "
        "at host:9092 did not answer"
    )


# where a restore resumes, given the group's committed offset (the reset forward itself, on Tansu:
# tests/integration/test_kafka_outputs.py)
@pytest.mark.parametrize(
    ("committed", "resume_after"),
    [
        (None, 99),  # no committed offset (expired, or deleted): the checkpoint's
        (100, 99),  # the daemon's own commit
        (40, 99),  # behind: a commit lost in a crash, or a reset back (not followed)
        (250, 249),  # a reset forward while stopped: followed
    ],
    ids=["none", "own", "behind", "forward"],
)
def test_a_restore_follows_only_a_committed_offset_past_its_checkpoint(
    committed: int | None, resume_after: int
) -> None:
    assert Daemon._resume_after(_daemon(_Admin({})), "in:0", 99, committed) == resume_after

"""The daemon's stop signals: the first one stops it gracefully (batch, checkpoint, commit, close), a second one
exits at once, and the same signal delivered twice at once (GNU `timeout` signals the process, then its
process group) is one request, not an order to skip the final checkpoint."""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace

import pytest

from anomaly.kafka import daemon


def test_a_stop_signal_delivered_twice_at_once_is_one_request(monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[int] = []
    clock = [100.0]
    monkeypatch.setattr(daemon.os, "_exit", exits.append)
    monkeypatch.setattr(daemon.time, "monotonic", lambda: clock[0])
    running = SimpleNamespace(
        stop=threading.Event(),
        stop_requested_at=-float("inf"),
        opts=SimpleNamespace(shutdown_timeout_s=0.01),
        _overdue=lambda: None,  # the shutdown deadline's timer: not under test here
    )
    daemon.Daemon.request_stop(running)  # type: ignore[arg-type]
    assert running.stop.is_set() and exits == []
    clock[0] += daemon.DUPLICATE_STOP_S / 2  # the same signal again, from the process group
    daemon.Daemon.request_stop(running)  # type: ignore[arg-type]
    assert exits == []
    clock[0] += daemon.DUPLICATE_STOP_S  # a second request: the escape hatch of a shutdown that hangs
    daemon.Daemon.request_stop(running)  # type: ignore[arg-type]
    assert exits == [130]


def _clients_that_log_while_closing() -> SimpleNamespace:
    """Clients whose close makes kafka-python's producer I/O thread log what a force-closed transaction costs it."""

    def close(*_args, **_kwargs) -> None:
        try:
            raise RuntimeError("I/O operation on closed epoll object")
        except RuntimeError:
            logging.getLogger("kafka.producer.sender").exception(
                "Uncaught error in kafka producer I/O thread"
            )

    client = SimpleNamespace(close=close)
    return SimpleNamespace(
        consumer=client,
        producer=client,
        dead_producer=client,
        changelog=SimpleNamespace(reader=client, peek=None),
        admin=client,
    )


def test_after_a_stuck_transaction_kafka_pythons_closing_errors_do_not_follow_the_one_error_line(caplog):
    kafka_logger = logging.getLogger("kafka")
    level = kafka_logger.level
    try:
        with caplog.at_level(logging.WARNING):
            daemon.Daemon._close_clients(_clients_that_log_while_closing(), stuck=False)  # type: ignore[arg-type]
            assert any(r.name == "kafka.producer.sender" for r in caplog.records)  # an ordinary close: shown
            caplog.clear()
            daemon.Daemon._close_clients(_clients_that_log_while_closing(), stuck=True)  # type: ignore[arg-type]
            assert [r for r in caplog.records if r.name.startswith("kafka")] == []
    finally:
        kafka_logger.setLevel(level)

"""The daemon's stop signals: the first one stops it gracefully (batch, checkpoint, commit, close), a second one
exits at once, and the same signal delivered twice at once (GNU `timeout` signals the process, then its
process group) is one request, not an order to skip the final checkpoint."""

from __future__ import annotations

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

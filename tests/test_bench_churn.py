"""The churn bench's probe isolation: where its processes run while probes are taken, and the other daemon
stopped during a probe (the bench itself needs a broker: ``anomaly bench --churn-keys N``)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from anomaly.bench_churn import _Daemon, _Placement


def _state(pid: int, not_: str = "", want: str = "", timeout_s: float = 5.0) -> str:
    """The process's state letter (``/proc/<pid>/stat``), once it is ``want`` or not ``not_`` (signals are
    delivered asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if (want and state == want) or (not_ and state != not_) or time.monotonic() > deadline:
            return state
        time.sleep(0.01)


def test_the_daemons_run_on_one_core_and_the_broker_and_bench_on_another_while_probing() -> None:
    allowed = set(os.sched_getaffinity(0))
    daemons = [subprocess.Popen(["sleep", "30"]) for _ in range(2)]
    broker = subprocess.Popen(["sleep", "30"])
    try:
        placement = _Placement([d.pid for d in daemons], [broker.pid])
        placement.pin()
        pinned = [os.sched_getaffinity(p.pid) for p in (*daemons, broker)]
        placement.unpin()
        after = [os.sched_getaffinity(p.pid) for p in (*daemons, broker)]
    finally:
        for p in (*daemons, broker):
            p.kill()
            p.wait()
    first, second = sorted(allowed)[:2] if len(allowed) >= 2 else (None, None)
    expected = [{first}, {first}, {second}] if len(allowed) >= 2 else [allowed] * 3
    assert (pinned, after) == (expected, [allowed] * 3)


def test_a_probe_stops_the_other_daemon_until_it_ends_even_when_it_fails() -> None:
    other = SimpleNamespace(proc=subprocess.Popen(["sleep", "30"]))
    probed = _Daemon.__new__(_Daemon)
    seen: list[str] = []

    def failing_probe(*args: object) -> None:
        seen.append(_state(other.proc.pid, want="T"))
        raise RuntimeError("the daemon exited")

    probed.__dict__["_probe"] = failing_probe
    try:
        with pytest.raises(RuntimeError, match="the daemon exited"):
            probed.probe(None, 1, 0.0, 3, other)  # type: ignore[arg-type]
        seen.append(_state(other.proc.pid, not_="T"))
    finally:
        other.proc.kill()
        other.proc.wait()
    assert [state == "T" for state in seen] == [True, False]  # stopped (T) during it, running after


def test_the_idle_rss_is_taken_once_it_has_settled_not_at_the_instant_the_round_was_committed() -> None:
    """The daemon compacts and trims its heap at an idle poll up to a second after the round's last message: RSS
    sampled at once was before or after that by chance (session 20: 397, 357, 387, 357, 402 MB). The bench
    waits SETTLE_AFTER_S, then until RSS stayed within SETTLE_MB for SETTLE_WINDOW_S."""
    from anomaly.bench_churn import _settled_rss_mb

    now = [100.0]
    # 0.1 s a sample: busy-level RSS for 1.2 s, the housekeeping's drop, a little noise, then flat
    trace = [620.0] * 12 + [470.0, 468.0, 469.5] + [468.5] * 100

    def rss(pid: int) -> float:
        return trace[round((now[0] - 100.0) / 0.1)]

    def sleep(s: float) -> None:
        now[0] += s

    got = _settled_rss_mb(
        1, 100.0, after_s=2.0, window_s=2.0, tolerance_mb=0.5, clock=lambda: now[0], sleep=sleep, rss=rss
    )
    # flat from 1.5 s on: within 0.5 MB over 2 s at 3.5 s
    assert (got[0], round(got[1], 1)) == (468.5, 3.5)
    # a daemon that never settles: the last sample at the timeout
    now[0] = 100.0
    trace[:] = [400.0 + (i % 2) for i in range(400)]
    got = _settled_rss_mb(1, 100.0, timeout_s=4.95, clock=lambda: now[0], sleep=sleep, rss=rss)
    assert (got[0], round(got[1], 1)) == (400.0, 5.0)

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

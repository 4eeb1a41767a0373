"""Detection-quality summaries: what the backtests write about the model and its baselines."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from anomaly import evaluation, quality
from anomaly.quality import Quality, ScorerPoints, assess


def test_without_a_labelled_anomaly_the_summary_is_strict_json():
    """Labels without an anomaly leave no oracle threshold: it is written as null (it was Infinity, which
    strict JSON readers refuse)."""
    counts = evaluation.count([0, 0, 0], [0, 1, 0], [0.0, 1.0, 2.0])
    points = evaluation.causal(np.array([0.1, 0.5, 0.2]), np.arange(3), np.nan)
    q = assess("model", [ScorerPoints(counts, points, np.zeros(3, bool))])
    assert (q.oracle_f1, q.oracle_threshold) == (0.0, float("inf"))
    out = q.to_json()
    assert out["oracle_threshold"] is None
    json.dumps(out, allow_nan=False)
    assert Quality("model", q.metrics, 0.5, 0.25).to_json()["oracle_threshold"] == 0.25


def _state(pid: int) -> str:
    """A process's state letter from /proc ('Z' for a zombie nobody reaped); '' when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


WORKERS = """
import os, sys, time
from pathlib import Path
from anomaly.quality import run_tasks

def task(i):
    Path(sys.argv[1], str(os.getpid())).write_text("")
    time.sleep(120)
    return i

run_tasks(task, [0, 1], jobs=2)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG are Linux's")
def test_workers_end_when_the_benchmark_is_killed(tmp_path):
    """`anomaly nasa -j 2` killed by SIGTERM left both workers running for ever: each finished its channel,
    then blocked writing the result to a pipe nobody read."""
    script = tmp_path / "run.py"
    script.write_text(WORKERS)
    pids = tmp_path / "pids"
    pids.mkdir()
    parent = subprocess.Popen([sys.executable, str(script), str(pids)])
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
            workers = [int(p.name) for p in pids.iterdir()]
        assert len(workers) == 2
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=30) == -signal.SIGTERM
        deadline = time.monotonic() + 10
        while any(_state(w) not in ("", "Z") for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [_state(w) in ("", "Z") for w in workers] == [True, True]
    finally:
        parent.kill()
        parent.wait()
        for w in workers:
            with contextlib.suppress(OSError):
                os.kill(w, signal.SIGKILL)


def test_no_more_worker_processes_than_tasks(monkeypatch):
    """`-j 64` on three files started 64 processes, 61 of them with nothing to do."""
    started: list[int] = []

    class Pool(quality.ProcessPoolExecutor):
        def __init__(self, max_workers: int, **kwargs):
            started.append(max_workers)
            super().__init__(max_workers, **kwargs)

    monkeypatch.setattr(quality, "ProcessPoolExecutor", Pool)
    assert quality.run_tasks(abs, [-1, -2, -3], jobs=64) == [1, 2, 3]
    assert quality.run_tasks(abs, [-4], jobs=64) == [4]  # one task: no process at all
    assert started == [3]


def test_workers_from_a_fork_server_still_run():
    """A worker whose parent is a fork server (Python 3.14's default on Linux) is not the command's child:
    taken for an orphan, it would end before its first task."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork server here")
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(
        2,
        mp_context=multiprocessing.get_context("forkserver"),
        initializer=quality.end_with_parent,
        initargs=(os.getpid(),),
    ) as pool:
        assert list(pool.map(abs, [-1, -2, -3])) == [1, 2, 3]

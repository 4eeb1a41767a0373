"""SIGUSR1's stack dump (anomaly.kafka.daemon.dump_stacks): every thread, named, most recent call first, and the
process carries on, also while its main thread sits in a lock wait and threads start and end around it."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

CHILD = textwrap.dedent(
    """
    import signal, sys, threading
    from anomaly.kafka.daemon import dump_stacks

    signal.signal(signal.SIGUSR1, lambda *_: dump_stacks())
    parked = threading.Event()

    def parked_here():
        parked.wait()

    def churn():  # threads starting and ending while the dumps run
        while not parked.is_set():
            t = threading.Thread(target=lambda: None)
            t.start()
            t.join()

    threading.Thread(target=parked_here, name="parked").start()
    threading.Thread(target=churn, name="churn").start()
    print("ready", flush=True)
    sys.stdin.readline()  # the main thread waits here until the parent is done signalling
    parked.set()
    print("carried on", flush=True)
    """
)


def test_sigusr1_writes_every_threads_stack_and_the_process_carries_on():
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdin is not None
    assert child.stdout.readline() == "ready\n"
    for _ in range(20):
        child.send_signal(signal.SIGUSR1)
        time.sleep(0.05)
    out, err = child.communicate("go\n", timeout=30)
    assert child.returncode == 0, err
    assert out == "carried on\n"
    dumps = err.count("(MainThread) (most recent call first):")  # signals sent close together may merge
    assert 1 <= dumps <= 20
    assert err.count("(parked) (most recent call first):") == dumps
    assert "in parked_here" in err
    assert "Traceback" not in err

"""SIGTERM (`kill`, `timeout`, a CI job cancelled) ends every command as Ctrl-C does: its temporary files are
removed, nothing half-written is renamed into place, one `error: terminated` line, status 143 (128 + SIGTERM).
Before, Python's default ended the process where it stood: a `replay` left a hidden `.scores.csv.*.tmp` beside
a complete `alerts.jsonl`, with no line at all."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anomaly.commands.common import Terminated, sigterm_ends_cleanly

ROOT = Path(__file__).resolve().parents[1]

# The command runs until the file named PREFIX... is complete in its temporary file and about to be renamed
# into place; it then says so on the pipe `READY` and waits there for the test's signal.
PAUSED_RUN = """
import os, sys, time
from anomaly import atomic
ready, prefix = int(sys.argv[1]), sys.argv[2]
real_sync = atomic._sync
def paused(path, directory=False):
    if not directory and path.name.startswith(prefix):
        os.write(ready, b"paused\\n")
        for _ in range(3000):  # short sleeps: a signal taken by another thread (tqdm's) wakes no long one
            time.sleep(0.1)
    return real_sync(path, directory)
atomic._sync = paused
sys.argv = ["anomaly", *sys.argv[3:]]
from anomaly.__main__ import run
run()
"""


def _signalled_when_ready(
    script: str, args: list[str], ready_line: bytes, signum: int, signals: int = 1
) -> subprocess.CompletedProcess[str]:
    """Run `python -c SCRIPT WRITE_FD ARGS` until it writes `ready_line` on the pipe WRITE_FD, then send it
    `signum` `signals` times in a row."""
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(write_end), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        pass_fds=(write_end,),
    )
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], 180)
        assert ready and os.read(read_end, 100) == ready_line, proc.communicate(timeout=60)
        for _ in range(signals):
            proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(read_end)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _terminated_while_writing(
    prefix: str, args: list[str], signals: int = 1
) -> subprocess.CompletedProcess[str]:
    """Run `anomaly ARGS` until the file `prefix...` is written to its temporary file, then send it SIGTERM
    `signals` times in a row (GNU `timeout` signals the process, then its process group: two at once)."""
    return _signalled_when_ready(PAUSED_RUN, [prefix, *args], b"paused\n", signal.SIGTERM, signals)


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


def test_sigterm_during_replay_leaves_no_temporary_file(tmp_path, bundle_path, test_csv) -> None:
    out = tmp_path / "run"
    done = _terminated_while_writing(
        ".scores.csv.", ["replay", str(test_csv), "-m", str(bundle_path), "-o", str(out), "--no-plots"], 2
    )
    assert (done.returncode, done.stderr) == (143, "error: terminated\n")
    assert _temporaries(tmp_path) == []
    # the files completed before the signal are whole; the one being written and those after it are not there
    assert sorted(p.name for p in out.iterdir()) == ["alerts.jsonl", "rejections.jsonl"]


def test_sigterm_during_train_leaves_no_bundle_nor_temporary_file(tmp_path, train_csv) -> None:
    args = ["train", str(train_csv), "-o", str(tmp_path / "m.pt"), "--epochs", "1", "--window", "8"]
    done = _terminated_while_writing(".m.pt.", [*args, "--hidden-size", "4"])
    assert (done.returncode, done.stderr.splitlines()[-1:]) == (143, ["error: terminated"])
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_sigterm_during_generate_keeps_the_old_file(tmp_path) -> None:
    old = tmp_path / "data.csv"
    old.write_text("old\n")
    done = _terminated_while_writing(".data.csv.", ["generate", "-o", str(old), "--points", "500"])
    assert (done.returncode, done.stderr) == (143, "error: terminated\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv"]
    assert old.read_text() == "old\n"


def test_a_repeated_sigterm_during_the_clean_up_is_ignored_and_the_handler_restored() -> None:
    """The copy of the signal that GNU `timeout` sends to the process group arrives while the first one's
    clean-up runs: it must not interrupt that clean-up (which would leave the temporary file after all)."""
    before = signal.getsignal(signal.SIGTERM)
    cleaned = []
    with pytest.raises(Terminated), sigterm_ends_cleanly(repeat_within_s=60):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(60)  # interrupted by the signal
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # the second copy
            cleaned.append("removed")
    assert cleaned == ["removed"]
    assert signal.getsignal(signal.SIGTERM) is before


# A command that has finished and is shutting down (torch's teardown, exit handlers) says so on the pipe and
# waits there for the test's Ctrl-C.
SLOW_TEARDOWN = """
import atexit, os, sys, time
ready = int(sys.argv[1])
def slow_teardown():
    os.write(ready, b"exiting\\n")
    for _ in range(10):
        time.sleep(0.1)
atexit.register(slow_teardown)
sys.argv = ["anomaly", "--version"]
from anomaly.__main__ import run
run()
"""


def test_ctrl_c_after_the_command_finished_changes_nothing() -> None:
    """A Ctrl-C that came while the interpreter shut down, after the command had done its work and printed its
    result (a promotion's decision), ended it by SIGINT (status 130, no line) or with a KeyboardInterrupt
    traceback from an exit handler; the command's own status stands now."""
    done = _signalled_when_ready(SLOW_TEARDOWN, [], b"exiting\n", signal.SIGINT)
    assert (done.returncode, done.stdout.split(",")[0], done.stderr) == (0, "anomaly", "")

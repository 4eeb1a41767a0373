"""`anomaly` that kills itself (SIGKILL) right after it logs the first line containing ``KILL_AT_LOG`` (unset or
empty: never). A test that polls the log from outside and then sends the kill lands some time later: on a busy
machine, after the daemon has moved on past the point it means (a revocation's rejoin already assigned).

Everything else is the real daemon and the real broker."""

from __future__ import annotations

import logging
import os
import signal

from anomaly.cli import main

_KILL_AT = os.environ.get("KILL_AT_LOG", "")
_handle = logging.Logger.handle


def handle(self: logging.Logger, record: logging.LogRecord) -> None:
    _handle(
        self, record
    )  # written (and flushed: a stream handler flushes each line) first, as the test reads it
    if _KILL_AT and _KILL_AT in record.getMessage():
        os.kill(os.getpid(), signal.SIGKILL)


logging.Logger.handle = handle  # type: ignore[method-assign]

if __name__ == "__main__":
    main()

"""`anomaly` with one probe added: the ``STOP_AT_COMMIT``-th transactional commit of consumed offsets first stops
the broker (SIGSTOP to ``STOP_BROKER_PID``) and writes the time to ``STOP_MARK``, so the broker is away exactly
while the daemon commits a checkpoint's transaction. Everything else is the real daemon and the real broker."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from anomaly.cli import main
from anomaly.kafka import sinks

_commit = sinks.Delivery.commit
_seen = 0


def commit(self: sinks.Delivery, offsets: dict[Any, Any], group_metadata: Any) -> None:
    global _seen
    if offsets:
        _seen += 1
        if _seen == int(os.environ["STOP_AT_COMMIT"]):
            os.kill(int(os.environ["STOP_BROKER_PID"]), signal.SIGSTOP)
            Path(os.environ["STOP_MARK"]).write_text(repr(time.time()))
    _commit(self, offsets, group_metadata)


sinks.Delivery.commit = commit  # type: ignore[method-assign]

if __name__ == "__main__":
    main()

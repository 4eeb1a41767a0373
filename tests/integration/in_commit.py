"""`anomaly` with one probe added at the N-th transactional commit of consumed offsets, when the transaction's
records (outputs, checkpoints) are flushed to the broker and its offsets and end not yet sent:

* ``KILL_AT_COMMIT=N``: the process kills itself (SIGKILL);
* ``STOP_AT_COMMIT=N``: the broker is stopped (SIGSTOP to ``STOP_BROKER_PID``) and the time written to
  ``STOP_MARK``, so the broker is away exactly while the daemon commits a checkpoint's transaction.

Everything else is the real daemon and the real broker."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from kafka import KafkaProducer

from anomaly.cli import main

_send_offsets = KafkaProducer.send_offsets_to_transaction
_seen = 0


def send_offsets_to_transaction(self: KafkaProducer, offsets: dict[Any, Any], group: Any) -> Any:
    global _seen
    if offsets:
        _seen += 1
        if _seen == int(os.environ.get("KILL_AT_COMMIT", 0)):
            os.kill(os.getpid(), signal.SIGKILL)
        if _seen == int(os.environ.get("STOP_AT_COMMIT", 0)):
            os.kill(int(os.environ["STOP_BROKER_PID"]), signal.SIGSTOP)
            Path(os.environ["STOP_MARK"]).write_text(repr(time.time()))
    return _send_offsets(self, offsets, group)


KafkaProducer.send_offsets_to_transaction = send_offsets_to_transaction  # type: ignore[method-assign]

if __name__ == "__main__":
    main()

"""`anomaly` with one probe added: the ``STOP_AT_COMMIT``-th transactional commit of consumed offsets first stops
the broker (SIGSTOP to ``STOP_BROKER_PID``) and writes the time to ``STOP_MARK``, so the broker is away exactly
while the daemon commits a checkpoint's transaction (its records flushed, its offsets and end not yet sent).
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
        if _seen == int(os.environ["STOP_AT_COMMIT"]):
            os.kill(int(os.environ["STOP_BROKER_PID"]), signal.SIGSTOP)
            Path(os.environ["STOP_MARK"]).write_text(repr(time.time()))
    return _send_offsets(self, offsets, group)


KafkaProducer.send_offsets_to_transaction = send_offsets_to_transaction  # type: ignore[method-assign]

if __name__ == "__main__":
    main()

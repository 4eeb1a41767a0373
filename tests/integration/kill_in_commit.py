"""`anomaly` with one probe added: the ``KILL_AT_COMMIT``-th transactional commit of consumed offsets kills the
process (SIGKILL) first: the transaction's records (outputs, checkpoints) are flushed to the broker, its offsets
and end never sent. Everything else is the real daemon."""

from __future__ import annotations

import os
import signal
from typing import Any

from kafka import KafkaProducer

from anomaly.cli import main

_send_offsets = KafkaProducer.send_offsets_to_transaction
_seen = 0


def send_offsets_to_transaction(self: KafkaProducer, offsets: dict[Any, Any], group: Any) -> Any:
    global _seen
    if offsets:
        _seen += 1
        if _seen == int(os.environ["KILL_AT_COMMIT"]):
            os.kill(os.getpid(), signal.SIGKILL)
    return _send_offsets(self, offsets, group)


KafkaProducer.send_offsets_to_transaction = send_offsets_to_transaction  # type: ignore[method-assign]

if __name__ == "__main__":
    main()

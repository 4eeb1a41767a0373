"""The one loop. `replay` and `consume` both call :func:`run`; only the source, sinks and checkpointer differ.

A source yields :class:`Batch` objects (events plus what it already refused, e.g. undecodable messages). Each
batch goes through ``engine.process`` once; every sink sees the engine's output; then the checkpointer (the
daemon's: flush sinks, snapshot state, commit offsets) gets its chance. Metrics are observed here, so a
backtest and the daemon count the same things the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from anomaly.engine.types import EngineOutput, Event, Readings, Rejection


@dataclass
class Batch:
    events: Sequence[Event] | Readings  # Readings: the same messages in columns (the daemon's hot path)
    rejections: list[Rejection] = field(default_factory=list)  # refused before the engine (malformed input)
    messages: int = 0  # source records behind this batch (Kafka messages, CSV rows)
    position: Any = None  # source position after this batch (offsets), for the checkpointer


class Sink(Protocol):
    def write(self, out: EngineOutput, batch: Batch) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class Checkpointer(Protocol):
    def after_batch(self, engine: Any, batch: Batch, sinks: Sequence[Sink]) -> None: ...

    def final(self, engine: Any, sinks: Sequence[Sink]) -> None:
        """The last checkpoint when the source stops: flushes ``sinks`` (the runner does not, when there is a
        checkpointer) and commits what they wrote with the state."""


class Observer(Protocol):
    def observe(self, out: EngineOutput, batch: Batch, engine: Any, now: float) -> None: ...


TOTALS = ("messages", "readings", "windows", "alerts", "rejected")


def run(
    engine: Any,
    batches: Iterable[Batch],
    sinks: Sequence[Sink],
    *,
    observer: Observer | None = None,
    checkpointer: Checkpointer | None = None,
    clock: Callable[[], float] = time.time,
    on_batch: Callable[[Batch, EngineOutput], None] | None = None,
    finish: bool = False,
    totals: dict[str, int] | None = None,
) -> dict[str, int]:
    """Drive batches through the engine until the source ends (replay) or stops (daemon shutdown).

    finish=True (a replay, whose data has an end): after the last batch, `engine.flush()` reports the readings
    still waiting for their report window to fill, as one more (empty) batch. The daemon never finishes: its
    waiting readings stay in the engine's state.

    `totals`: counts added to in place (and returned), so what was counted before an error survives it (the
    daemon's loop, ended by a fence and run again, reports the whole run's counts at its stop)."""
    if totals is None:
        totals = {}
    for name in TOTALS:
        totals.setdefault(name, 0)

    def batches_then_flush() -> Iterable[tuple[Batch, EngineOutput]]:
        for batch in batches:
            yield batch, engine.process(batch.events)
        if finish:
            yield Batch([]), engine.flush()

    try:
        for batch, out in batches_then_flush():
            if batch.rejections:
                out.rejections[:0] = batch.rejections
            for sink in sinks:
                sink.write(out, batch)
            if observer is not None:
                observer.observe(out, batch, engine, clock())
            if checkpointer is not None:
                checkpointer.after_batch(engine, batch, sinks)
            if on_batch is not None:
                on_batch(batch, out)
            totals["messages"] += batch.messages
            totals["readings"] += out.readings
            totals["windows"] += len(out.windows)
            totals["alerts"] += len(out.alerts)
            totals["rejected"] += len(out.rejections)
        if checkpointer is None:
            for sink in sinks:
                sink.flush()
        else:  # it flushes the sinks itself, as every checkpoint does: a flush that fails is its own outcome
            checkpointer.final(engine, sinks)
    finally:
        for sink in sinks:
            sink.close()
    return totals

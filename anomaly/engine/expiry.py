"""Expiry within a call: whether the event time a call reaches could expire (TTL) a key that matters before
the call ends, and the call then processed in parts, so that keys expire between messages exactly as if every
message came in its own call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from anomaly.engine.state import StateStore
from anomaly.engine.types import EngineOutput, Event, Readings


def may_expire(events: Sequence[Event] | Readings, store: StateStore, max_ts: float, ttl: float) -> bool:
    """Whether the event time reached in this call expires (TTL) a key that matters before the call ends: one
    that reads again in this call, or one whose open alert the expiry closes (its `at` is the event time
    then). Conservative: True may still expire nothing; message by message is right either way. Message by
    message costs a whole engine call per message (about 1 ms with the dynamic threshold), so a backfill
    whose partitions run more than a TTL apart in event time must not take it for every lagging poll."""
    if ttl <= 0:
        return False
    if isinstance(events, Readings):
        ts, names = events.timestamps, events.names
    else:
        try:
            ts = np.concatenate([np.asarray(ev.timestamps, np.float64).reshape(-1) for ev in events])
            names = list({str(ev.key): None for ev in events})
        except (TypeError, ValueError):
            return True
    ts = ts[np.isfinite(ts)]
    if not len(ts):
        return False
    horizon = max(max_ts, float(ts.max())) - ttl  # keys last seen before this expire
    seen = store.arrays["seen"]
    if not horizon > np.fmin(np.fmin.reduce(seen), ts.min()):
        return False  # the common case: no key at all is that old
    if horizon > ts.min():  # a reading of this call is already past the horizon: its key can expire mid-call
        if float(ts.max()) > max_ts or not isinstance(events, Readings):
            return True  # the clock moves during the call: when each key expires depends on the message
        # The clock stands still (a lagging partition of a backfill: every reading at or before the event
        # time already reached), so the horizon is the same after every message. One by one, each such key
        # would be evicted right after its message; here at the end of the call, with the same close time
        # (`at` = max_ts) for an alert it opened. That differs only for a key read again in this call.
        if len(events.kid) > len(events.names):
            return True
    slots = store.slots
    rows = [slots[k] for k in names if k in slots]
    matter = np.concatenate([seen[rows], seen[store.arrays["alert_open"]]])
    return bool(len(matter)) and bool(horizon > np.fmin.reduce(matter))


def in_parts(
    events: Sequence[Event] | Readings, process: Callable[[Sequence[Event] | Readings], EngineOutput]
) -> EngineOutput:
    """The call's two halves, in order, each through `process`: a half whose event time cannot expire a key
    mid-call is one call, any other is halved again, down to single messages, which are exact. Processing
    parts in order equals processing their messages one by one whenever each part does, so this equals
    message by message, at the cost of a few calls where a call mixes, say, a partition that moves the
    clock with one that lags it by more than the TTL (batches of several partitions, see the source)."""
    half = len(events) // 2
    if isinstance(events, Readings):
        parts: tuple[Sequence[Event] | Readings, ...] = (
            events.messages(0, half),
            events.messages(half, len(events)),
        )
    else:
        parts = (events[:half], events[half:])
    out = EngineOutput()
    for chunk in parts:
        part = process(chunk)
        out.windows += part.windows
        out.alerts += part.alerts
        out.rejections += part.rejections
        out.readings += part.readings
        out.batches += part.batches
        out.decided += part.decided
        out.evicted += part.evicted
    return out

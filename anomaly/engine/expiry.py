"""Expiry within a call: whether the event time a call reaches could expire (TTL) a key that matters before
the call ends, and the call then processed in parts, so that keys expire between messages exactly as if every
message came in its own call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from anomaly.engine.state import StateStore
from anomaly.engine.types import EngineOutput, Event, Readings


def domain_runs(dom: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs of messages of one clock domain (`dom`: one per message, `counts`: readings per message): the first
    reading of each run and its domain."""
    starts = np.flatnonzero(dom[1:] != dom[:-1]) + 1  # the first message of each run but the first
    lo = np.concatenate(([0], np.cumsum(counts)[starts - 1]))
    return lo, dom[np.concatenate(([0], starts))]


def may_expire(
    events: Sequence[Event] | Readings,
    store: StateStore,
    clocks: np.ndarray,
    ttl: float,
    dom: int | np.ndarray = 0,
) -> bool:
    """Whether the event time reached in this call expires (TTL) a key that matters before the call ends: one
    that reads again in this call, or one whose open alert the expiry closes (the close's `at` is when the
    key's TTL passed, whatever the call; message by message puts the record between the messages where it
    expires). Conservative: True may still expire nothing; message by message is right either way. Message by
    message costs a whole engine call per message (about 1 ms with the dynamic threshold), so a call must not
    take it for readings that merely lag another clock domain.

    Each key is judged against its own clock domain's event time: `clocks` holds the time reached per domain
    before the call, `dom` the domain of every message (one index for all, or one per message), and the store's
    `domain` field each key's."""
    if ttl <= 0:
        return False
    if isinstance(events, Readings):
        ts, names = events.timestamps, events.names
        if not isinstance(dom, int):
            return _several_domains(events, store, clocks, ttl, dom)
    else:
        try:
            ts = np.concatenate([np.asarray(ev.timestamps, np.float64).reshape(-1) for ev in events])
            names = list({str(ev.key): None for ev in events})
        except (TypeError, ValueError):
            return True
        dom = 0
    ts = ts[np.isfinite(ts)]
    if not len(ts):
        return False
    reach = clocks.copy()  # the event time each domain reaches in this call
    reach[dom] = max(reach[dom], float(ts.max()))
    horizon = reach - ttl  # per domain: its keys last seen before this expire
    seen = store.arrays["seen"]
    limit = horizon[0] if len(horizon) == 1 else horizon[store.arrays["domain"]]  # per row
    late = horizon[dom] > ts.min()  # a reading already past the horizon: its key can expire mid-call
    if not late and not (seen < limit).any():
        return False  # the common case: no key at all is that old
    if late:
        if reach[dom] > clocks[dom] or not isinstance(events, Readings):
            return True  # the clock moves during the call: when each key expires depends on the message
        # The domain's clock stands still (every reading at or before the event time already reached there), so
        # its horizon is the same after every message. One by one, each such key would be evicted right after
        # its message; here at the end of the call, with the same close time (`at` = when its TTL passed) for an
        # alert it opened. That differs only for a key read again in this call.
        if len(events.kid) > len(events.names):
            return True
    return _matter(store, names, limit)


def _matter(store: StateStore, names: list[str], limit: float | np.ndarray) -> bool:
    """Whether a key read in the call (`names`) or with an open alert was last seen before `limit` (one time,
    or one per row)."""
    slots, seen = store.slots, store.arrays["seen"]
    rows = np.asarray([slots[k] for k in names if k in slots], np.int64)
    matter = np.concatenate([rows, np.flatnonzero(store.arrays["alert_open"])])
    lim = limit[matter] if isinstance(limit, np.ndarray) else limit
    return bool(np.any(seen[matter] < lim))


def _several_domains(
    events: Readings, store: StateStore, clocks: np.ndarray, ttl: float, dom: np.ndarray
) -> bool:
    """:func:`may_expire` for a call of several clock domains (the daemon's batch of several partitions, as
    runs of messages), with a few array operations per run, none per reading. A reading past its own domain's
    horizon (a late reading) makes it True: the call is then processed in parts, down to runs of one domain."""
    ts = events.timestamps
    if not np.isfinite(ts).all():
        return True  # rare (such readings are refused): the parts decide
    lo, run_dom = domain_runs(dom, events.counts)
    reach = clocks.copy()  # the event time each domain reaches in this call
    np.maximum.at(reach, run_dom, np.maximum.reduceat(ts, lo))
    horizon = reach - ttl
    if (np.minimum.reduceat(ts, lo) < horizon[run_dom]).any():
        return True
    seen = store.arrays["seen"]
    limit = horizon[store.arrays["domain"]]  # per row: its key's domain's horizon
    if not (seen < limit).any():
        return False  # the common case: no key at all is that old
    return _matter(store, events.names, limit)


def in_parts(
    events: Sequence[Event] | Readings, process: Callable[[Sequence[Event] | Readings], EngineOutput]
) -> EngineOutput:
    """The call's two halves, in order, each through `process`: a half whose event time cannot expire a key
    mid-call is one call, any other is halved again, down to single messages, which are exact. Processing
    parts in order equals processing their messages one by one whenever each part does, so this equals
    message by message, at the cost of a few calls where a call mixes, say, readings that move a clock past
    the TTL of a key read in the call with late readings of another clock domain (batches of several
    partitions, see the source)."""
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

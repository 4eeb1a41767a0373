"""Ingest of a call's events as columns: keys whose readings are all regular (finite, in time order, no long
gap) are assembled with array operations into the pieces they are scored in (readings up to the end of each
key's report window, or whole windows with each key's partial window carried in its state); the few others go
event by event through :class:`anomaly.engine.screen.EventIngest`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import numpy as np

from anomaly.config import EngineConfig
from anomaly.engine.expiry import domain_runs
from anomaly.engine.part import Part
from anomaly.engine.pieces import Pieces, report_pieces, run_lengths, window_pieces
from anomaly.engine.screen import EventIngest
from anomaly.engine.state import StateStore, put_rows
from anomaly.engine.types import EngineOutput, Event, Readings

if TYPE_CHECKING:
    from anomaly.engine.settings import Settings


class Ingest(Part):
    """Ingest into the keys of `store`. Readings are standardized with the settings' `s.mean` and `s.scale`; a gap longer than
    `s.max_gap` seconds resets a key; keys of a model scored on arrival (`s.per_reading`) are cut into
    report-window pieces of at most `s.window` readings, the others into whole windows. During a call of
    `batch`, `clocks` is the engine's event time reached per clock domain (moved in place by accepted readings)
    and `dom` the domain of each message (one index for all, or one per message)."""

    def __init__(
        self, store: StateStore, config: EngineConfig, counters: dict[str, int], s: Settings
    ) -> None:
        super().__init__(store, config, counters, s)
        self.clocks = np.full(1, -math.inf)
        self.dom: int | np.ndarray = 0
        self.events = EventIngest(store, config, counters, s)

    def batch(
        self,
        events: Sequence[Event] | Readings,
        clocks: np.ndarray,
        dom: int | np.ndarray,
        queues: dict[int, deque],
        row_keys: dict[int, str],
        regular: list[Pieces],
        out: EngineOutput,
    ) -> None:
        """Events become columns (:class:`Readings`); events that are not well-formed arrays are refused here,
        in order, by the per-event path (`_ingest`: :class:`EventIngest`), which owns the reasons. Keys that
        took the per-event path are left in `queues` (units and Gap markers), the others as `regular` pieces;
        `row_keys` maps every row touched to its key. `clocks` (the event time reached per clock domain)
        moves in place; `dom`: the clock domain of every message (events: the default domain 0)."""
        self.clocks, self.dom = clocks, dom
        if isinstance(events, Readings):
            if len(events):
                self._ingest_readings(events, queues, row_keys, regular, out)
            return
        self.dom = 0
        f = self.s.n_features
        cols = Readings.from_regular_events(events, f)  # the common case, without a loop over events
        if cols is not None:
            self._ingest_readings(cols, queues, row_keys, regular, out)
            return
        keys, counts, ts_parts, val_parts, refs = [], [], [], [], []
        for ev in events:
            ts = (
                ev.timestamps
                if isinstance(ev.timestamps, np.ndarray)
                else np.asarray(ev.timestamps, np.float64)
            )
            vals = ev.values if isinstance(ev.values, np.ndarray) else np.asarray(ev.values)
            n = ts.shape[0] if ts.ndim == 1 else -1
            if vals.ndim == 1 and n == 1:
                vals = vals.reshape(1, -1)
            if n < 0 or vals.shape != (n, f) or vals.dtype.kind not in "fiu":
                self._ingest(ev, queues, row_keys, out)  # rejects it with the precise reason
                continue
            if n == 0:
                continue
            keys.append(str(ev.key))
            counts.append(n)
            ts_parts.append(ts)
            val_parts.append(vals)
            refs.append(ev.ref)
        if keys:
            batch = Readings.from_parts(keys, counts, ts_parts, val_parts, refs, f)
            self._ingest_readings(batch, queues, row_keys, regular, out)

    def _ingest(
        self,
        ev: Event,
        queues: dict[int, deque],
        row_keys: dict[int, str],
        out: EngineOutput,
        dom: int = 0,
    ) -> None:
        """One event (of clock domain `dom`) through the per-event path; the event time reached in its domain
        moves to its last accepted reading."""
        last = self.events.ingest(ev, queues, row_keys, out)
        row = self.store.slots.get(ev.key)
        if row is not None:
            self.store.arrays["domain"][row] = dom
        if last is not None:
            self.clocks[dom] = max(self.clocks[dom], last)

    def _ingest_readings(
        self,
        r: Readings,
        queues: dict[int, deque],
        row_keys: dict[int, str],
        regular: list[Pieces],
        out: EngineOutput,
    ) -> None:
        """Vectorized ingest of a whole batch. Keys whose readings in this batch are all regular (finite, in
        time order, no long gap) take the array path and become `regular` pieces; the few others go message by
        message through `_ingest`, which owns the policies and queues units per key. Both paths cut readings
        into the same pieces. Python work is per distinct key, not per message."""
        slots, names = self.store.slots, r.names
        got: list[int | None] = list(map(slots.get, names))
        created: set[int] = set()
        if None in got:  # keys are created in order of first appearance
            for i in [i for i, row in enumerate(got) if row is None]:
                row, _ = self.store.slot(names[i])
                got[i] = row
                created.add(row)
        name_rows = np.array(got, np.int64)
        row_keys.update(zip(cast(list[int], got), names, strict=True))  # every row known now
        kid = r.kid
        dom = self.dom  # one clock domain for every message, or one per message
        a = self.store.arrays
        # one message per key (the live daemon's common case): messages are in key order, one reading each
        once = len(kid) == len(names) and len(r.timestamps) == len(kid)
        if once:  # least recently used order: as if each message touched its key in turn
            deque(map(slots.move_to_end, names), maxlen=0)
            a["domain"][name_rows] = dom  # a key's domain: that of its latest message
        elif len(names) > 1:
            last = np.full(len(names), -1, np.int64)  # each key's last message
            np.maximum.at(last, kid, np.arange(len(kid)))
            deque(map(slots.move_to_end, map(names.__getitem__, np.argsort(last).tolist())), maxlen=0)
            a["domain"][name_rows] = dom if isinstance(dom, int) else dom[last]
        else:
            slots.move_to_end(names[0])
            a["domain"][name_rows] = dom if isinstance(dom, int) else dom[-1]
        msg_rows = name_rows[kid]
        rows_r = msg_rows if once else np.repeat(msg_rows, r.counts)
        ts, vals = r.timestamps, r.values
        order = np.argsort(rows_r, kind="stable")
        r_s, t_s, v_s = rows_r[order], ts[order], vals[order]
        d_s: int | np.ndarray | None = dom  # each reading's clock domain: one for all, or in r_s's order
        if once:  # every reading is its key's first
            first = np.ones(len(r_s), bool)
            prev = a["last_ts"][r_s]
        else:
            first = np.empty(len(r_s), bool)
            first[0] = True
            np.not_equal(r_s[1:], r_s[:-1], out=first[1:])
            prev = np.empty_like(t_s)
            prev[1:] = t_s[:-1]
            prev[first] = a["last_ts"][r_s[first]]
        with np.errstate(invalid="ignore"):
            bad = (t_s <= prev) if self.config.duplicate_policy == "drop" else (t_s < prev)
            bad |= (t_s - prev) > self.s.max_gap
        bad |= ~(np.isfinite(v_s).all(axis=1) & np.isfinite(t_s))
        if queues:  # keys already queued by the per-event path in this call stay on it, in order
            bad |= np.isin(r_s, np.fromiter(queues, np.int64, len(queues)))
        if not isinstance(dom, int):  # several clock domains
            if bad.any():  # each kept reading's domain moves its clock (in _assemble)
                d_s = (dom if once else np.repeat(dom, r.counts))[order]
            else:  # every reading is kept: each run of a domain moves its clock, in message order
                run_lo, run_dom = domain_runs(dom, r.counts)
                np.maximum.at(self.clocks, run_dom, np.maximum.reduceat(ts, run_lo))
                d_s = None
        if bad.any():
            irregular = np.unique(r_s[bad])
            self.store.drop(
                row_keys[x] for x in created.intersection(irregular.tolist())
            )  # `_ingest` creates keys only if accepted
            ends = np.cumsum(r.counts)
            for m in np.flatnonzero(np.isin(msg_rows, irregular)).tolist():
                lo, hi = int(ends[m] - r.counts[m]), int(ends[m])
                ev = Event(r.names[kid[m]], ts[lo:hi], vals[lo:hi], r.refs[m])
                self._ingest(ev, queues, row_keys, out, dom if isinstance(dom, int) else int(dom[m]))
            keep = ~np.isin(r_s, irregular)
            r_s, t_s, v_s, first = r_s[keep], t_s[keep], v_s[keep], first[keep]
            if isinstance(d_s, np.ndarray):
                d_s = d_s[keep]
            if not len(r_s):
                return
            first[0] = True
        regular.append(self._assemble(r_s, t_s, v_s, first, out, d_s))

    def _assemble(
        self,
        r: np.ndarray,
        t: np.ndarray,
        raw: np.ndarray,
        first: np.ndarray,
        out: EngineOutput,
        d: int | np.ndarray | None = 0,
    ) -> Pieces:
        """Regular readings (grouped by row, in time order within a row) as pieces, with array operations only:
        cut at report-window ends (scored on arrival), or assembled into whole windows with each key's partial
        window carried in its state (window-scored)."""
        a = self.store.arrays
        v = self.s.standardize(raw)
        starts = np.flatnonzero(first)
        if len(starts) == len(r):  # one reading per key (the live daemon's common case)
            groups, m, last_t, last_raw = r, np.ones(len(r), np.int64), t, raw
        else:
            groups = r[starts]
            m = run_lengths(starts, len(r))
            last = starts + m - 1
            last_t, last_raw = t[last], raw[last]
        if self.s.per_reading:
            pieces = report_pieces(r, first, v, t, a["rep_fill"][groups], self.s.window)
        else:
            pieces = self._windows(r, t, v, starts, groups, m)
        a["readings"][groups] += m
        a["last_ts"][groups] = last_t
        a["seen"][groups] = last_t
        put_rows(a["last_values"], groups, last_raw)
        if isinstance(d, int):  # the event time reached in each clock domain: its accepted readings only
            self.clocks[d] = max(self.clocks[d], float(t.max()))
        elif d is not None:  # (None: moved by the caller)
            np.maximum.at(self.clocks, d, t)
        self.counters["readings"] += len(r)
        out.readings += len(r)
        return pieces

    def _windows(
        self,
        r: np.ndarray,
        t: np.ndarray,
        v: np.ndarray,
        starts: np.ndarray,
        groups: np.ndarray,
        m: np.ndarray,
    ) -> Pieces:
        """Complete windows of window-scored keys (partial windows continue in the `buf` state)."""
        a = self.store.arrays
        w = self.s.unit
        gi = np.repeat(np.arange(len(starts)), m)
        f0 = a["fill"][groups].astype(np.int64)
        pos = f0[gi] + (np.arange(len(r)) - starts[gi])
        wi, p = pos // w, pos % w
        n_complete = (f0 + m) // w
        complete = wi < n_complete[gi]
        pieces = Pieces.empty(self.s.n_features)
        if n_complete.any():
            base = np.concatenate([[0], np.cumsum(n_complete)[:-1]])
            total = int(n_complete.sum())
            xs = np.empty((total, w, self.s.n_features), np.float32)
            tss = np.empty((total, w), np.float64)
            carry = (n_complete > 0) & (f0 > 0)
            xs[base[carry]] = a["buf"][groups[carry]]
            tss[base[carry]] = a["buf_ts"][groups[carry]]
            wid = base[gi[complete]] + wi[complete]
            xs[wid, p[complete]] = v[complete]
            tss[wid, p[complete]] = t[complete]
            nz = n_complete > 0
            pieces = window_pieces(groups[nz], n_complete[nz], xs, tss)
        part = ~complete
        a["buf"][r[part], p[part]] = v[part]
        a["buf_ts"][r[part], p[part]] = t[part]
        a["fill"][groups] = (f0 + m) % w
        return pieces

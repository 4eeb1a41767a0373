"""Engine: turns events of many keys into scored readings, scored windows and alerts, one batched model call
per round.

process(events) first ingests every event in order (validation, time order, gaps, assembly into scoring
units), and cuts each key's units into pieces, as columns (:mod:`anomaly.engine.pieces`). Then it scores in
rounds: round r takes the r-th piece of every key that has one and runs them through the model in ONE call
(one call per distinct piece length),
writing each key's new (h, c) back. Rounds preserve per-key order, so feeding a series one reading per event,
in blocks, or all at once gives identical results. Batches of one row are padded to two: CPU kernels take a
different path for a single row, and padding keeps every key's numbers independent of what else shares its
batch.

The scoring unit depends on the model. A bundle with a forecast head is scored reading by reading: a piece is
a key's queued readings up to the end of its current report window, each reading's score (its one-step
forecast error) and alert decision are made in the call that delivers it, so nothing waits for a window to
fill (`decided_at` = the reading's own time); per-reading results are gathered in the key's state and
reported as a ScoredWindow once `window` readings are scored. Whatever must not depend on how readings were
grouped into calls (the threshold in force, a re-baseline after a level shift) changes only at a report
window's first reading. A bundle without a forecast head (reconstruction only) is scored a whole window at a
time, and every reading of the window is decided when its last reading arrives.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from typing import cast

import numpy as np

from anomaly.bundle import Bundle
from anomaly.config import EngineConfig
from anomaly.engine.alerts import AlertLifecycle, alert_id, counts_alert_readings
from anomaly.engine.levels import LevelTracker
from anomaly.engine.pieces import RESET, Pieces, from_queues, report_pieces, run_lengths, window_pieces
from anomaly.engine.report import ReportBuffers
from anomaly.engine.scoring import BatchScorer, feature_references
from anomaly.engine.state import Layout, StateStore, put_rows
from anomaly.engine.stuck import stuck_limits
from anomaly.engine.types import (
    REJECT_REASONS,
    EngineOutput,
    Event,
    Readings,
    Rejection,
)
from anomaly.thresholds import ALERT_LENGTH, THRESHOLDS

__all__ = ["Engine", "alert_id"]


class Engine:
    def __init__(self, bundle: Bundle, config: EngineConfig) -> None:
        self.config = config
        self.counters: dict[str, int] = dict.fromkeys(
            [
                "readings",
                "windows",
                "gap_resets",
                "evicted",
                "alerts_opened",
                "alerts_closed",
                "reloads_kept",
                "reloads_reset",
                "level_shifts",
            ],
            0,
        )
        self.counters.update({f"rejected_{r}": 0 for r in REJECT_REASONS})
        self.max_ts = -math.inf
        self._use(bundle)
        self.store = StateStore(self._layout())
        self._wire()

    # --- model -----------------------------------------------------------------------------------------------

    def _use(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.model = bundle.model.eval()
        self.window = bundle.window  # readings per reported ScoredWindow
        self.per_reading = bool(getattr(bundle.arch, "forecast", False))  # score each reading on arrival
        self.unit = 1 if self.per_reading else self.window  # readings per queued unit
        self.n_features = len(bundle.features)
        # the features whose error scores a reading (model.targets); None: all. Context features are read by
        # the model but have error 0, no stuck rule and no share in alerts.
        self.targets: tuple[int, ...] | None = getattr(bundle.arch, "targets", None)
        self._mean = bundle.scaler.mean.astype(np.float64)
        self._scale = bundle.scaler.scale.astype(np.float64)
        self.reference = bundle.reference_error
        self.feature_reference = feature_references(bundle, self.config, self.n_features, self.targets)
        gap = self.config.max_gap_seconds
        self.max_gap = gap if gap is not None else bundle.max_gap_seconds  # the gap training cut at
        self.static_threshold = float(
            self.config.static_threshold
            if self.config.static_threshold is not None
            else bundle.default_threshold
        )
        self.threshold = THRESHOLDS[self.config.threshold](self.config, float(bundle.default_threshold))
        # per feature: identical readings in a row that count as stuck
        self.stuck_limit = stuck_limits(bundle, self.config, self.n_features, self.targets)

    def _wire(self) -> None:
        """(Re)build the parts over the current store and model."""
        store, config, counters = self.store, self.config, self.counters
        self.levels = LevelTracker(store, config, self.targets, self.stuck_limit)
        self.alerts = AlertLifecycle(
            store, config, counters, self.bundle, self.targets, self.per_reading, self.levels
        )
        self.reports = ReportBuffers(
            store, self.window, self.n_features, self.bundle, self.per_reading, counters
        )
        self.scorer = BatchScorer(
            store,
            config,
            counters,
            self.bundle,
            model=self.model,
            per_reading=self.per_reading,
            targets=self.targets,
            reference=self.reference,
            feature_reference=self.feature_reference,
            threshold=self.threshold,
            stuck_limit=self.stuck_limit,
            levels=self.levels,
            alerts=self.alerts,
            reports=self.reports,
        )

    def _layout(self) -> Layout:
        a = self.bundle.arch
        f = a.n_features
        extra: list[tuple[str, tuple[int, ...], str, str]] = [
            ("offset", (f,), "float32", "zero"),  # per-key input re-baseline (standardized units)
            ("level", (f,), "float32", "nan"),  # slow EWMA of window means (standardized units)
            ("stuck_last", (f,), "float32", "nan"),  # last standardized reading
            ("stuck_run", (f,), "int32", "zero"),  # identical readings in a row, per feature
            (
                "stuck_mute",
                (f,),
                "bool",
                "zero",
            ),  # stuck feature accepted after a level shift, until it moves
        ]
        if counts_alert_readings(self.config):
            extra.append((ALERT_LENGTH, (), "int32", "zero"))  # points since the open alert's start
        extra += [
            (name, shape, dtype, fill) for name, (shape, dtype, fill) in self.threshold.fields().items()
        ]
        if self.per_reading:
            w = self.window
            extra += [  # readings scored on arrival, not yet reported in a ScoredWindow
                ("rep_ts", (w,), "float64", "zero"),
                ("rep_err", (w,), "float32", "zero"),
                ("rep_score", (w,), "float32", "zero"),
                ("rep_thr", (w,), "float32", "zero"),
                ("rep_anom", (w,), "bool", "zero"),
                ("rep_open", (w,), "bool", "zero"),
                ("rep_sq", (f,), "float32", "zero"),
                ("rep_fill", (), "int32", "zero"),
                ("rep_eps", (), "float32", "zero"),  # threshold chosen at the report window's first reading
                ("rep_warm", (), "bool", "zero"),
                ("rebase", (), "bool", "zero"),  # a level shift closed: re-baseline at the next window
                ("level_ts", (), "float64", "nan"),  # time of the last reading in `level`
            ]
        return Layout(a.num_layers, a.hidden_size, self.unit, f, tuple(extra))

    def reload(self, bundle: Bundle) -> bool:
        """Swap the model. Per-key state is kept when the architecture and features match, else reset.
        Returns True when state was kept."""
        same = bundle.arch == self.bundle.arch and bundle.features == self.bundle.features
        self._use(bundle)
        same = same and self._layout() == self.store.layout
        if same:
            self.counters["reloads_kept"] += 1
        else:
            self.store = StateStore(self._layout())
            self.counters["reloads_reset"] += 1
        self._wire()
        return same

    # --- bookkeeping -----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.store)

    def keys(self) -> list[str]:
        """The keys held, least recently used first."""
        return list(self.store.slots)

    def alerting_keys(self) -> list[str]:
        """The keys held with an open alert (``active_alerts`` of them), least recently used first."""
        is_open = self.store.arrays["alert_open"]
        return [key for key, row in self.store.slots.items() if is_open[row]]

    def drop(self, keys: Iterable[str]) -> int:
        return self.store.drop(keys)

    def compact(self) -> int:
        """Shrink the state store to the keys held when a peak (a call of many new keys) left it at most a
        quarter full; returns the rows given back (see :meth:`StateStore.compact`). Between calls only: the
        daemon calls it when its stream goes idle. Scoring and snapshots are unchanged."""
        return self.store.compact()

    @property
    def active_alerts(self) -> int:
        # rows without a key are reset (alert_open False), so the whole column counts only held keys
        return int(np.count_nonzero(self.store.arrays["alert_open"]))

    def snapshot(self, keys: Iterable[str] | None = None) -> bytes:
        """State of `keys` (all if None) as bytes; restore() of them continues bit for bit."""
        return self.store.snapshot(keys, {"model_version": self.bundle.version, "max_ts": self.max_ts})

    def restore(self, data: bytes) -> list[str]:
        keys = self.store.restore(data)
        header, _ = StateStore.read_snapshot(data)
        self.max_ts = max(self.max_ts, float(header["meta"].get("max_ts", -math.inf)))
        return keys

    # --- processing ------------------------------------------------------------------------------------------

    def process(self, events: Sequence[Event] | Readings) -> EngineOutput:
        """Ingest, score and evict. Keys expire (TTL) between messages, as if every message came in its own
        call: when a call's event time could expire a key mid-call, it is processed in parts (`_in_parts`)."""
        if not isinstance(events, Readings):
            events = Readings.from_regular_events(events, self.n_features) or events
        if len(events) > 1 and self._may_expire(events):
            return self._in_parts(events)
        out = EngineOutput()
        queues: dict[int, deque] = {}  # keys that took the per-event path: units and RESET markers
        row_keys: dict[int, str] = {}
        regular: list[Pieces] = []  # keys that took the columnar path
        self._ingest_batch(events, queues, row_keys, regular, out)
        if queues:
            fill = self.store.arrays["rep_fill"] if self.per_reading else None
            regular.insert(0, from_queues(queues, fill, self.window, self.n_features))
        pieces = Pieces.concat(regular, self.n_features)
        key_of = row_keys.__getitem__
        for resets, calls in pieces.rounds():
            if len(resets):
                self.reports.flush(resets, list(map(key_of, resets.tolist())), out)
                self.store.reset_model_state(resets)
            for rows, x, ts in calls:
                self.scorer.score(rows, x, ts, list(map(key_of, rows.tolist())), out)
        ttl = self.config.ttl_seconds
        out.evicted = self.store.evict(
            self.config.max_keys,
            self.max_ts - ttl if ttl > 0 else None,
            lambda keys, rows: self._on_evict(keys, rows, out),
        )
        self.counters["evicted"] += len(out.evicted)
        return out

    def _may_expire(self, events: Sequence[Event] | Readings) -> bool:
        """Whether the event time reached in this call expires (TTL) a key that matters before the call ends: one
        that reads again in this call, or one whose open alert the expiry closes (its `at` is the event time
        then). Conservative: True may still expire nothing; message by message is right either way. Message by
        message costs a whole engine call per message (about 1 ms with the dynamic threshold), so a backfill
        whose partitions run more than a TTL apart in event time must not take it for every lagging poll."""
        ttl = self.config.ttl_seconds
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
        horizon = max(self.max_ts, float(ts.max())) - ttl  # keys last seen before this expire
        seen = self.store.arrays["seen"]
        if not horizon > np.fmin(np.fmin.reduce(seen), ts.min()):
            return False  # the common case: no key at all is that old
        if (
            horizon > ts.min()
        ):  # a reading of this call is already past the horizon: its key can expire mid-call
            if float(ts.max()) > self.max_ts or not isinstance(events, Readings):
                return True  # the clock moves during the call: when each key expires depends on the message
            # The clock stands still (a lagging partition of a backfill: every reading at or before the event
            # time already reached), so the horizon is the same after every message. One by one, each such key
            # would be evicted right after its message; here at the end of the call, with the same close time
            # (`at` = max_ts) for an alert it opened. That differs only for a key read again in this call.
            if len(events.kid) > len(events.names):
                return True
        slots = self.store.slots
        rows = [slots[k] for k in names if k in slots]
        matter = np.concatenate([seen[rows], seen[self.store.arrays["alert_open"]]])
        return bool(len(matter)) and bool(horizon > np.fmin.reduce(matter))

    def _in_parts(self, events: Sequence[Event] | Readings) -> EngineOutput:
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
            part = self.process(chunk)
            out.windows += part.windows
            out.alerts += part.alerts
            out.rejections += part.rejections
            out.readings += part.readings
            out.batches += part.batches
            out.decided += part.decided
            out.evicted += part.evicted
        return out

    def flush(self, keys: Iterable[str] | None = None) -> EngineOutput:
        """End of stream: report the readings of `keys` (all if None) that were scored on arrival but wait for
        their report window to fill, as a short ScoredWindow each, so every scored reading is reported. Their
        decisions were made on arrival and do not change; the key's next reading starts a new report window
        (as after a gap). Only a replay that has reached the end of its data calls this: the daemon's stream
        has no end, so a partial window waits in the key's state (and its snapshot) for the next readings. A
        model without a forecast head scores whole windows only; it has nothing waiting and emits nothing."""
        out = EngineOutput()
        if not self.per_reading:
            return out
        slots = self.store.slots
        chosen = list(slots) if keys is None else [k for k in keys if k in slots]
        fill = self.store.arrays["rep_fill"]
        waiting = [k for k in chosen if fill[slots[k]] > 0]
        if waiting:
            self.reports.flush(np.asarray([slots[k] for k in waiting], np.int64), waiting, out)
        return out

    def _on_evict(self, keys: list[str], rows: np.ndarray, out: EngineOutput) -> None:
        """Keys about to be dropped (TTL, key cap): the readings scored on arrival that wait for their report
        window are reported now, as a short ScoredWindow each (as `flush` does at the end of a replay), and an
        open alert is closed, so nothing decided is lost and no alert is left open forever downstream."""
        a = self.store.arrays
        if self.per_reading:
            waiting = np.flatnonzero(a["rep_fill"][rows])
            if len(waiting):
                self.reports.flush(rows[waiting], [keys[i] for i in waiting.tolist()], out)
        for i in np.flatnonzero(a["alert_open"][rows]).tolist():
            self.alerts.close_on_evict(keys[i], int(rows[i]), self.max_ts, out)

    def _ingest_batch(
        self,
        events: Sequence[Event] | Readings,
        queues: dict[int, deque],
        row_keys: dict[int, str],
        regular: list[Pieces],
        out: EngineOutput,
    ) -> None:
        """Events become columns (:class:`Readings`); events that are not well-formed arrays are refused here,
        in order, by `_ingest`, which owns the reasons."""
        if isinstance(events, Readings):
            if len(events):
                self._ingest_readings(events, queues, row_keys, regular, out)
            return
        f = self.n_features
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
        # one message per key (the live daemon's common case): messages are in key order, one reading each
        once = len(kid) == len(names) and len(r.timestamps) == len(kid)
        if once:  # least recently used order: as if each message touched its key in turn
            deque(map(slots.move_to_end, names), maxlen=0)
        elif len(names) > 1:
            last = np.full(len(names), -1, np.int64)  # each key's last message
            np.maximum.at(last, kid, np.arange(len(kid)))
            deque(map(slots.move_to_end, map(names.__getitem__, np.argsort(last).tolist())), maxlen=0)
        else:
            slots.move_to_end(names[0])
        a = self.store.arrays
        msg_rows = name_rows[kid]
        rows_r = msg_rows if once else np.repeat(msg_rows, r.counts)
        ts, vals = r.timestamps, r.values
        order = np.argsort(rows_r, kind="stable")
        r_s, t_s, v_s = rows_r[order], ts[order], vals[order]
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
            bad |= (t_s - prev) > self.max_gap
        bad |= ~(np.isfinite(v_s).all(axis=1) & np.isfinite(t_s))
        if queues:  # keys already queued by the per-event path in this call stay on it, in order
            bad |= np.isin(r_s, np.fromiter(queues, np.int64, len(queues)))
        if bad.any():
            irregular = np.unique(r_s[bad])
            self.store.drop(
                row_keys[x] for x in created.intersection(irregular.tolist())
            )  # `_ingest` creates keys only if accepted
            ends = np.cumsum(r.counts)
            for m in np.flatnonzero(np.isin(msg_rows, irregular)).tolist():
                lo, hi = int(ends[m] - r.counts[m]), int(ends[m])
                ev = Event(r.names[kid[m]], ts[lo:hi], vals[lo:hi], r.refs[m])
                self._ingest(ev, queues, row_keys, out)
            keep = ~np.isin(r_s, irregular)
            r_s, t_s, v_s, first = r_s[keep], t_s[keep], v_s[keep], first[keep]
            if not len(r_s):
                return
            first[0] = True
        regular.append(self._assemble(r_s, t_s, v_s, first, out))

    def _assemble(
        self, r: np.ndarray, t: np.ndarray, raw: np.ndarray, first: np.ndarray, out: EngineOutput
    ) -> Pieces:
        """Regular readings (grouped by row, in time order within a row) as pieces, with array operations only:
        cut at report-window ends (scored on arrival), or assembled into whole windows with each key's partial
        window carried in its state (window-scored)."""
        a = self.store.arrays
        v = ((raw - self._mean) / self._scale).astype(np.float32)
        starts = np.flatnonzero(first)
        if len(starts) == len(r):  # one reading per key (the live daemon's common case)
            groups, m, last_t, last_raw = r, np.ones(len(r), np.int64), t, raw
        else:
            groups = r[starts]
            m = run_lengths(starts, len(r))
            last = starts + m - 1
            last_t, last_raw = t[last], raw[last]
        if self.per_reading:
            pieces = report_pieces(r, first, v, t, a["rep_fill"][groups], self.window)
        else:
            pieces = self._windows(r, t, v, starts, groups, m)
        a["readings"][groups] += m
        a["last_ts"][groups] = last_t
        a["seen"][groups] = last_t
        put_rows(a["last_values"], groups, last_raw)
        self.max_ts = max(self.max_ts, float(t.max()))
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
        w = self.unit
        gi = np.repeat(np.arange(len(starts)), m)
        f0 = a["fill"][groups].astype(np.int64)
        pos = f0[gi] + (np.arange(len(r)) - starts[gi])
        wi, p = pos // w, pos % w
        n_complete = (f0 + m) // w
        complete = wi < n_complete[gi]
        pieces = Pieces.empty(self.n_features)
        if n_complete.any():
            base = np.concatenate([[0], np.cumsum(n_complete)[:-1]])
            total = int(n_complete.sum())
            xs = np.empty((total, w, self.n_features), np.float32)
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

    def _reject(
        self,
        out: EngineOutput,
        key: str,
        reason: str,
        count: int,
        whole: bool,
        ref,
        detail: str = "",
        timestamps: np.ndarray | None = None,
    ):
        out.rejections.append(Rejection(key, reason, count, whole, ref, detail, timestamps))
        self.counters[f"rejected_{reason}"] += count

    def _ingest(
        self, ev: Event, queues: dict[int, deque], row_keys: dict[int, str], out: EngineOutput
    ) -> None:
        key = str(ev.key)
        ts = np.asarray(ev.timestamps, np.float64).reshape(-1)
        try:
            vals = np.asarray(ev.values, np.float64)
        except (TypeError, ValueError):
            return self._reject(out, key, "malformed", len(ts), True, ev.ref, "values are not numbers")
        if vals.ndim == 1 and len(ts) == 1:
            vals = vals.reshape(1, -1)
        n = len(ts)
        if vals.ndim != 2 or vals.shape != (n, self.n_features):
            got = vals.shape[-1] if vals.ndim else 0
            return self._reject(
                out,
                key,
                "feature_count",
                max(n, 1),
                True,
                ev.ref,
                f"expected {self.n_features} features, got {got}",
            )
        if n == 0:
            return None
        keep, vals = self._screen(key, ts, vals, ev.ref, out)
        kept = int(keep.sum())
        if kept == 0:
            return None
        if kept < n:
            ts, vals = ts[keep], vals[keep]
        row, _ = self.store.slot(key)
        a = self.store.arrays  # may have grown
        row_keys[row] = key
        q = queues.setdefault(row, deque())
        scaled = ((vals - self._mean) / self._scale).astype(np.float32)
        before = np.concatenate([[a["last_ts"][row]], ts[:-1]])
        with np.errstate(invalid="ignore"):
            gaps = np.flatnonzero((ts - before) > self.max_gap)
        gap_starts = set(gaps.tolist())
        bounds = sorted({0, kept} | gap_starts)
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            if lo in gap_starts:
                self.counters["gap_resets"] += 1
                a["fill"][row] = 0
                q.append(RESET)
            self._append(row, ts[lo:hi], scaled[lo:hi], q)
        a["last_ts"][row] = ts[-1]
        a["seen"][row] = ts[-1]
        a["last_values"][row] = vals[-1]
        a["readings"][row] += kept
        self.max_ts = max(self.max_ts, float(ts[-1]))
        self.counters["readings"] += kept
        out.readings += kept
        return None

    def _screen(
        self, key: str, ts: np.ndarray, vals: np.ndarray, ref, out: EngineOutput
    ) -> tuple[np.ndarray, np.ndarray]:
        """Judge every reading on its own, in order, against the key's state after the previous ACCEPTED one:
        a reading is refused for a non-finite timestamp, a timestamp before (or, with duplicate_policy=drop,
        equal to) the last accepted one, or a non-finite value left after nan_policy. A refused reading never
        moves the key's clock or its forward-fill values, so the verdicts are the same whether the readings
        arrive one by one or in blocks of any size. Returns (keep mask, values with forward-fills applied)."""
        n = len(ts)
        a = self.store.arrays
        row = self.store.slots.get(key)
        last = float(a["last_ts"][row]) if row is not None else -math.inf
        if math.isnan(last):
            last = -math.inf
        prev = a["last_values"][row].astype(np.float64) if row is not None else None
        ffill = self.config.nan_policy == "ffill"
        drop_dup = self.config.duplicate_policy == "drop"
        row_finite = np.isfinite(vals).all(axis=1).tolist()
        filled = vals
        # reason per reading: 0 kept, 1 timestamp not finite, 2 backwards, 3 duplicate, 4 value not finite
        reason = np.zeros(n, np.int8)
        for i, t in enumerate(ts.tolist()):
            if not math.isfinite(t):
                reason[i] = 1
                continue
            if t < last:
                reason[i] = 2
                continue
            if drop_dup and t == last:
                reason[i] = 3
                continue
            if not row_finite[i]:
                v = vals[i]
                if ffill and prev is not None:
                    v = np.where(np.isfinite(v), v, prev)
                if not np.isfinite(v).all():
                    reason[i] = 4
                    continue
                if filled is vals:
                    filled = vals.copy()
                filled[i] = v
            last = t
            prev = filled[i] if ffill else None
        keep = reason == 0
        whole = not keep.any()
        for code, name, detail in (
            (1, "non_finite", "timestamp is not finite"),
            (2, "time_backwards", ""),
            (3, "duplicate_timestamp", ""),
            (4, "non_finite", "NaN or infinite value"),
        ):
            hit = reason == code
            if hit.any():
                self._reject(out, key, name, int(hit.sum()), whole, ref, detail, ts[hit])
        return keep, filled

    def _append(self, row: int, ts: np.ndarray, vals: np.ndarray, q: deque) -> None:
        a = self.store.arrays
        w = self.unit
        pos = int(a["fill"][row])
        n = len(ts)
        take = min(w - pos, n)
        a["buf"][row, pos : pos + take] = vals[:take]
        a["buf_ts"][row, pos : pos + take] = ts[:take]
        pos += take
        i = take
        if pos == w:
            q.append((a["buf"][row].copy(), a["buf_ts"][row].copy()))
            pos = 0
        while n - i >= w:
            q.append((vals[i : i + w], ts[i : i + w]))
            i += w
        if i < n:
            r = n - i
            a["buf"][row, :r] = vals[i:]
            a["buf_ts"][row, :r] = ts[i:]
            pos = r
        a["fill"][row] = pos

"""Per-event ingest: the path of events that are not clean columns of regular readings (malformed values, a
wrong feature count, refused readings, long gaps). It owns the refusal reasons and the data-hygiene policies
(engine.nan_policy, engine.duplicate_policy), judged reading by reading, and queues each key's accepted
readings as scoring units (Gap markers where a gap resets the key), which
:func:`anomaly.engine.pieces.from_queues` cuts into pieces.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from anomaly.engine.part import Part
from anomaly.engine.pieces import Gap
from anomaly.engine.types import EngineOutput, Event, Rejection

if TYPE_CHECKING:
    pass


class EventIngest(Part):
    """Ingest of single events into the keys of `store`: readings are standardized with `s.mean` and `s.scale`,
    a gap longer than `s.max_gap` seconds resets the key, and units of `s.unit` readings are queued (1: scored
    on arrival; the window: window-scored)."""

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

    def ingest(
        self, ev: Event, queues: dict[int, deque], row_keys: dict[int, str], out: EngineOutput
    ) -> float | None:
        """Validate `ev` and screen its readings (refusals go to `out.rejections`); queue the accepted ones as
        units of its key (a Gap marker, the gap's seconds, before each long gap), update the key's clock and
        counters. Returns the last accepted timestamp (None when nothing was accepted), which the caller folds
        into the event time reached."""
        key = str(ev.key)
        ts = np.asarray(ev.timestamps, np.float64).reshape(-1)
        try:
            vals = np.asarray(ev.values, np.float64)
        except (TypeError, ValueError):
            return self._reject(out, key, "malformed", len(ts), True, ev.ref, "values are not numbers")
        if vals.ndim == 1 and len(ts) == 1:
            vals = vals.reshape(1, -1)
        n = len(ts)
        if vals.ndim != 2 or vals.shape != (n, self.s.n_features):
            got = vals.shape[-1] if vals.ndim else 0
            return self._reject(
                out,
                key,
                "feature_count",
                max(n, 1),
                True,
                ev.ref,
                f"expected {self.s.n_features} features, got {got}",
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
        scaled = self.s.standardize(vals)
        before = np.concatenate([[a["last_ts"][row]], ts[:-1]])
        with np.errstate(invalid="ignore"):
            gaps = np.flatnonzero((ts - before) > self.s.max_gap)
        gap_starts = set(gaps.tolist())
        bounds = sorted({0, kept} | gap_starts)
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            if lo in gap_starts:
                self.counters["gap_resets"] += 1
                a["fill"][row] = 0
                q.append(Gap(ts[lo] - before[lo]))
            self._append(row, ts[lo:hi], scaled[lo:hi], q)
        a["last_ts"][row] = ts[-1]
        a["seen"][row] = ts[-1]
        a["last_values"][row] = vals[-1]
        a["readings"][row] += kept
        self.counters["readings"] += kept
        out.readings += kept
        return float(ts[-1])

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
        behind: tuple[float, float] | None = None  # earliest reading refused as backwards, the clock then
        repeated: float | None = None  # the first time refused as a duplicate
        for i, t in enumerate(ts.tolist()):
            if not math.isfinite(t):
                reason[i] = 1
                continue
            if t < last:
                reason[i] = 2
                if behind is None or t < behind[0]:
                    behind = (t, last)
                continue
            if drop_dup and t == last:
                reason[i] = 3
                if repeated is None:
                    repeated = t
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
            (2, "time_backwards", _behind_detail(behind)),
            (3, "duplicate_timestamp", _repeated_detail(repeated)),
            (4, "non_finite", "NaN or infinite value"),
        ):
            hit = reason == code
            if hit.any():
                self._reject(out, key, name, int(hit.sum()), whole, ref, detail, ts[hit])
        return keep, filled

    def _append(self, row: int, ts: np.ndarray, vals: np.ndarray, q: deque) -> None:
        a = self.store.arrays
        w = self.s.unit
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


def _behind_detail(behind: tuple[float, float] | None) -> str:
    """What a ``time_backwards`` refusal tells an operator: how far behind the key's clock its earliest reading
    was (seconds: a clock gone back an hour, a producer resending yesterday, a reading a moment late), in epoch
    seconds as the message carried them."""
    if behind is None:
        return ""
    t, last = behind
    return f"timestamp {t!r} is {last - t:g} s before the key's last accepted reading ({last!r})"


def _repeated_detail(t: float | None) -> str:
    """What a ``duplicate_timestamp`` refusal tells an operator: the repeated time, and the setting that drops it."""
    if t is None:
        return ""
    return f"timestamp {t!r} is the key's last accepted reading's (engine.duplicate_policy = drop)"

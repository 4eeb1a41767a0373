"""Alert lifecycle of scored points: which keys step through a piece point by point, the steps themselves
(:func:`anomaly.thresholds.step_alerts` over the ALERT_FIELDS state), the Alert records of their transitions
(open, closed, level shift) and the close of an evicted key's open alert.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from anomaly.config import EngineConfig
from anomaly.engine.levels import LevelTracker
from anomaly.engine.part import Part
from anomaly.engine.state import StateStore
from anomaly.engine.types import Alert, EngineOutput
from anomaly.thresholds import ALERT_FIELDS, ALERT_GAP, ALERT_LENGTH, step_alerts

if TYPE_CHECKING:
    from anomaly.engine.settings import Settings


def counts_alert_readings(config: EngineConfig) -> bool:
    """Whether a limit in readings applies to open alerts, so each key counts its alert's readings."""
    return config.max_alert_readings > 0 or config.partial_shift_readings > 0


class AlertLifecycle(Part):
    """Alerts of the keys in `store`. With `s.per_reading` points are scored on arrival (a level shift then
    re-baselines at the key's next report window) rather than by whole windows (at once, via `levels`)."""

    def __init__(
        self,
        store: StateStore,
        config: EngineConfig,
        counters: dict[str, int],
        s: Settings,
        levels: LevelTracker,
    ) -> None:
        super().__init__(store, config, counters, s)
        self.levels = levels
        self.counts_alert_readings = counts_alert_readings(config)
        self.fields = (
            ALERT_FIELDS
            + ((ALERT_LENGTH,) if self.counts_alert_readings else ())
            + ((ALERT_GAP,) if config.max_alert_seconds > 0 else ())
        )

    def after_gap(self, rows: np.ndarray, seconds: np.ndarray) -> None:
        """A gap of `seconds` (K,) before the next readings of `rows` (a reset): engine.max_alert_seconds
        counts observed time, so the gap is added to the seconds it leaves out of the open alert of each key
        (or the anomalous run that may open one; a run that starts with no alert open starts from 0). A sensor
        offline for days during a fault that comes back still faulty is still in the same alert."""
        if self.config.max_alert_seconds <= 0:
            return
        a = self.store.arrays
        inside = a["alert_open"][rows] | (a["run_anom"][rows] > 0)
        a[ALERT_GAP][rows] += np.where(inside, seconds, 0.0)

    def step(
        self,
        rows,
        keys,
        ts,
        scores,
        anomalous,
        eps,
        err_f,
        per_feature,
        out: EngineOutput,
        partial=None,
        stuck_f=None,
    ) -> np.ndarray:
        """Alert lifecycle of a piece (K, L); returns whether an alert was open at each point and updates
        `anomalous` in place (muted while a key waits for its re-baseline). `stuck_f` (K, L, F): the features
        stuck at each point (None: none), named first in the alerts.

        Only keys with an anomalous point or an open alert are stepped through the piece (`_lifecycle`). For the
        others every point is normal and nothing can open or close, so their run counters take the L steps at
        once: the same state as stepping, without per-point work for the quiet majority."""
        a = self.store.arrays
        k, n = anomalous.shape
        if self.s.per_reading:
            # after a level shift closed, the key waits for its re-baseline (next report window) in silence
            waiting = a["rebase"][rows]
            if waiting.any():
                anomalous &= ~waiting[:, None]
        busy = self.busy(rows, anomalous)
        open_pts = np.zeros((k, n), bool)
        if len(busy) < k:
            if len(busy):
                quiet = np.ones(k, bool)
                quiet[busy] = False
                idle = rows[quiet]
            else:
                idle = rows
            a["run_anom"][idle] = 0
            a["run_norm"][idle] += n
            if not len(busy):
                return open_pts
            rows, keys, ts, scores, eps = (
                rows[busy],
                [keys[i] for i in busy.tolist()],
                ts[busy],
                scores[busy],
                eps[busy],
            )
            err_f = err_f[busy]
            per_feature = None if per_feature is None else per_feature[busy]
            partial = None if partial is None else partial[busy]
            stuck_f = None if stuck_f is None else stuck_f[busy]
        anom = anomalous[busy]
        fields = self.fields
        state = {name: a[name][rows] for name in fields}
        if self.s.per_reading:  # reading by reading, so that alert contributions do not depend on grouping
            opened = np.empty(anom.shape, bool)
            rebase = a["rebase"][rows]
            for j in range(n):
                if j:  # a level shift may have closed at the previous reading
                    anom[:, j] &= ~rebase
                opened[:, j : j + 1] = self._lifecycle(
                    state,
                    rows,
                    keys,
                    ts[:, j : j + 1],
                    scores[:, j : j + 1],
                    anom[:, j : j + 1],
                    eps,
                    err_f[:, j],
                    out,
                    None if partial is None else partial[:, j : j + 1],
                    None if stuck_f is None else stuck_f[:, j],
                )
                rebase = a["rebase"][rows]
        else:  # a window's alerts are decided at its last reading
            last = None if stuck_f is None else stuck_f[:, -1]
            opened = self._lifecycle(
                state, rows, keys, ts, scores, anom, eps, per_feature, out, partial, last
            )
        for name in fields:
            a[name][rows] = state[name]
        anomalous[busy] = anom
        open_pts[busy] = opened
        return open_pts

    def busy(self, rows: np.ndarray, anomalous: np.ndarray) -> np.ndarray:
        """Positions of the piece's keys that must step through their points: an anomalous point or an open
        alert. Any superset gives the same result (tests use all keys)."""
        some = anomalous[:, 0] if anomalous.shape[1] == 1 else np.logical_or.reduce(anomalous, axis=1)
        return (some | self.store.arrays["alert_open"][rows]).nonzero()[0]

    def _lifecycle(
        self,
        state,
        rows,
        keys,
        ts,
        scores,
        anomalous,
        eps,
        per_feature,
        out: EngineOutput,
        partial=None,
        stuck=None,
    ) -> np.ndarray:
        """Step the rows' alert state (`state`: their ALERT_FIELDS, gathered by the caller, who writes them back)
        through the window (thresholds.step_alerts) and emit its transitions. `stuck` (K, F): the features stuck
        at the point (the window's last) the transitions are decided at; None when none is."""
        open_pts, transitions = step_alerts(
            state,
            ts,
            scores,
            anomalous,
            eps,
            per_feature,
            self.config.alert_open_after,
            self.config.alert_close_after,
            self.config.max_alert_seconds,
            self.config.max_alert_readings,
            self.config.partial_shift_readings,
            partial,
        )
        shifted = []
        for t in transitions:
            out.alerts.append(
                self.alert(
                    keys[t.row],
                    t.status,
                    t.start,
                    t.end,
                    # a window is decided when its last reading arrives: that, not the point's time, is `at`
                    t.at if self.s.per_reading else float(ts[t.row, -1]),
                    t.peak,
                    t.threshold,
                    t.contributions,
                    t.reason,
                    stuck=None if stuck is None else stuck[t.row],
                    gap=t.gap,
                )
            )
            self.counters["alerts_opened" if t.status == "open" else "alerts_closed"] += 1
            if t.reason == "level_shift":
                shifted.append(rows[t.row])
                self.counters["level_shifts"] += 1
        if shifted and self.s.per_reading:
            self.store.arrays["rebase"][np.asarray(shifted)] = True  # applied at the next report window
        elif shifted:
            self.levels.rebaseline(np.asarray(shifted))
        return open_pts

    def close_on_evict(self, key: str, row: int, at: float, out: EngineOutput) -> None:
        """An evicted key's open alert is closed, `at` the moment of the eviction (the engine's: when its TTL
        passed, or the event time reached for the key cap and resets). The key's silence up to then
        counts as a gap when it is one (longer than engine.max_gap_seconds), as the next reading would have."""
        a = self.store.arrays
        if a["alert_open"][row]:
            gap = None
            if ALERT_GAP in a:
                silence = at - float(a["last_ts"][row])
                gap = float(a[ALERT_GAP][row]) + (silence if silence > self.s.max_gap else 0.0)
            out.alerts.append(
                self.alert(
                    key,
                    "closed",
                    a["alert_start"][row],
                    a["last_anom_ts"][row],
                    at,
                    a["alert_peak"][row],
                    a["alert_thr"][row],
                    a["alert_contrib"][row],
                    "evicted",
                    gap=gap,
                )
            )
            self.counters["alerts_closed"] += 1

    def alert(
        self, key, status, start, end, at, peak, thr, contrib, reason="", stuck=None, gap=None
    ) -> Alert:
        """The Alert record of a transition; its top features are the features stuck at the point it is decided
        at (`stuck`, marked so: a frozen sensor has almost no error, so its share alone would name the sensors
        beside it), then the largest shares of `contrib` among the scored features. `gap`: the seconds of gaps
        since its start, which the record reports (None: not counted, engine.max_alert_seconds = 0)."""
        total = float(contrib.sum()) or 1.0
        order = np.argsort(-contrib, kind="stable")
        if stuck is not None and stuck.any():
            order = np.concatenate([np.flatnonzero(stuck), order[~stuck[order]]])
        if self.s.targets is not None:  # context features are never a cause
            order = order[np.isin(order, self.s.targets)]
        order = order[: self.config.top_features]
        top: list[dict[str, float | str]] = [
            {"feature": self.s.bundle.features[i], "share": round(float(contrib[i]) / total, 4)}
            for i in order
        ]
        for i, entry in zip(order, top, strict=True):
            if stuck is not None and stuck[i]:
                entry["stuck"] = True
        return Alert(
            alert_id(key, float(start)),
            key,
            status,
            float(start),
            None if end is None else float(end),
            float(at),
            float(peak),
            float(thr),
            self.s.bundle.version,
            top,
            reason,
            gap,
        )


def alert_id(key: str, start: float) -> str:
    """Deterministic alert id: the key and the start time in milliseconds."""
    return f"{key}@{int(round(start * 1000))}"

"""Level tracking and re-baselining: each key's settled level (a slow EWMA of its standardized inputs, the
`level` and `level_ts` state), the partial-shift condition judged on it, and the re-baseline (`offset` state)
that follows an alert closed as a level shift.

An alert open longer than engine.max_alert_seconds / max_alert_readings (or a partial shift held
partial_shift_readings) closes as a level shift: by then the level has settled at the key's new normal, and
the features whose level moved take it as their new baseline, so the key can alert again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from anomaly.engine.part import Part
from anomaly.engine.state import put_rows, take_rows
from anomaly.thresholds import ALERT_LENGTH

if TYPE_CHECKING:
    pass


class LevelTracker(Part):
    """The level EWMA and re-baseline of the keys in `store`. `s.targets`: the scored features (None: all);
    `s.stuck_limit`: the stuck-sensor limits (a re-baseline mutes the features stuck at that moment)."""

    def _level_rate(self, elapsed: np.ndarray, readings: int) -> np.ndarray:
        """Time constants of the level EWMA elapsed over `elapsed` seconds and `readings` readings (K,): a
        constant of max_alert_seconds / 8 in event time or of max_alert_readings / 8 in readings, whichever is
        shorter, so that by the time an alert counts as a level shift (whichever limit comes first) the level
        has settled at the new normal."""
        if self.config.max_alert_seconds > 0:
            rate = elapsed / (self.config.max_alert_seconds / 8.0)
        else:
            rate = np.zeros(len(elapsed))
        for limit in (self.config.max_alert_readings, self.config.partial_shift_readings):
            if limit > 0:
                rate = np.maximum(rate, readings / (limit / 8.0))
        return rate

    @property
    def tracks_level(self) -> bool:
        """Whether some level-shift limit is on, so each key tracks its settled level."""
        c = self.config
        return c.max_alert_seconds > 0 or c.max_alert_readings > 0 or c.partial_shift_readings > 0

    def _partial_due(self, rows: np.ndarray, n: int) -> bool:
        """Whether some key's alert may reach engine.partial_shift_readings within the next `n` points, so the
        partial-shift condition must be judged there (elsewhere no alert can be that long: same result)."""
        limit = self.config.partial_shift_readings
        if limit <= 0:
            return False
        if limit <= n:
            return True
        a = self.store.arrays
        opened = a["alert_open"][rows]
        return bool(opened.any()) and bool((opened & (a[ALERT_LENGTH][rows] + n >= limit)).any())

    def _partial_shift(self, level: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """engine.partial_shift_readings: whether a key's level (..., F) has moved more than one training
        standard deviation from its baseline (`offset`, broadcast to it) for at least one and fewer than half
        of the scored features (...): the alert is then held open by a minority of features that settled
        elsewhere, and those are the features `rebaseline` moves."""
        moved = np.isfinite(level) & (np.abs(level - offset) > 1.0)
        if self.s.targets is not None:
            moved = moved[..., list(self.s.targets)]
        n = moved.sum(axis=-1)
        return (n > 0) & (2 * n < moved.shape[-1])

    def track(self, rows: np.ndarray, x: np.ndarray, ts: np.ndarray) -> np.ndarray | None:
        """Slow EWMA of each key's window means (standardized inputs, before the re-baseline offset), see
        `_level_rate`. Returns, with engine.partial_shift_readings on, whether each point (K, W) may close a
        partial level shift (`_partial_shift` of the level after the window)."""
        if not self.tracks_level:
            return None
        a = self.store.arrays
        w = x.shape[1]
        span = (ts[:, -1] - ts[:, 0]) * w / max(w - 1, 1)
        beta = (1.0 - np.exp(-self._level_rate(span, w)))[:, None]
        mean = x.mean(axis=1, dtype=np.float64)
        level = a["level"][rows].astype(np.float64)
        a["level"][rows] = np.where(np.isnan(level), mean, level + beta * (mean - level))
        if not self._partial_due(rows, w):
            return None
        partial = self._partial_shift(a["level"][rows], a["offset"][rows])
        return np.repeat(partial[:, None], w, axis=1)

    def track_readings(self, rows: np.ndarray, x: np.ndarray, ts: np.ndarray) -> np.ndarray | None:
        """`track` for readings scored one at a time: the same slow EWMA, stepped per reading with the time
        since the key's previous reading, so the level does not depend on how readings were grouped; the
        partial-shift condition (K, L) is judged on the level after each reading."""
        if not self.tracks_level:
            return None
        a = self.store.arrays
        level = take_rows(a["level"], rows).astype(np.float64)
        prev = a["level_ts"][rows]
        levels = np.empty(x.shape, np.float32) if self._partial_due(rows, x.shape[1]) else None
        for j in range(x.shape[1]):
            t = ts[:, j]
            beta = (1.0 - np.exp(-self._level_rate(np.where(np.isnan(prev), 0.0, t - prev), 1)))[:, None]
            v = x[:, j].astype(np.float64)
            # rounded to the stored float32 at every reading, so a call of many readings equals many calls
            level = (
                np.where(np.isnan(level), v, level + beta * (v - level)).astype(np.float32).astype(np.float64)
            )
            prev = t
            if levels is not None:
                levels[:, j] = level
        put_rows(a["level"], rows, level.astype(np.float32))  # float32 values already (rounded above)
        a["level_ts"][rows] = prev
        return None if levels is None else self._partial_shift(levels, a["offset"][rows][:, None, :])

    def after_gap(self, rows: np.ndarray) -> None:
        """A gap longer than engine.max_gap_seconds before the next readings of `rows` (a reset): the level EWMA
        of readings scored on arrival does not decay over it (the time since the key's previous reading is
        taken as 0 at the next one), so a key that comes back after days keeps the level it had, not that of
        its first reading. Window means never span a gap (the partial window is dropped): nothing to do."""
        if self.s.per_reading and self.tracks_level:
            self.store.arrays["level_ts"][rows] = np.nan

    def rebaseline(self, rows: np.ndarray) -> None:
        """After a level shift: features whose settled level moved more than one (training) standard deviation
        from the key's baseline get that level as their new baseline (subtracted before the model), and the
        score smoothing restarts, so the key judges its new normal as normal and can alert again."""
        a = self.store.arrays
        level, offset = a["level"][rows], a["offset"][rows]
        moved = np.isfinite(level) & (np.abs(level - offset) > 1.0)
        a["offset"][rows] = np.where(moved, level, offset)
        a["ewma"][rows] = np.nan
        if self.s.stuck_limit is not None:
            a["stuck_mute"][rows] |= a["stuck_run"][rows] >= self.s.stuck_limit

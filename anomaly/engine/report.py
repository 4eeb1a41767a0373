"""Report buffers of keys scored on arrival: each reading's time, error, score, threshold and decisions are
gathered in the key's state (`rep_*` fields) as it is scored, and reported as one ScoredWindow once `window`
readings are in (a short one after a gap, at a flush or at eviction).
"""

from __future__ import annotations

from itertools import repeat
from typing import TYPE_CHECKING

import numpy as np

from anomaly.engine.part import Part
from anomaly.engine.state import put_rows, take_rows
from anomaly.engine.types import EngineOutput, ScoredWindow

if TYPE_CHECKING:
    pass


class ReportBuffers(Part):
    """The report buffers of the keys in `store`, `s.window` readings each, reported with the bundle's version.
    For a window-scored model (`s.per_reading` False: it reports whole windows as it scores them) there are no
    buffers and `flush` emits nothing."""

    def append(
        self, rows, keys, fill, ts, errors, scores, thresholds, anomalous, open_pts, err_f, out: EngineOutput
    ) -> None:
        """Per-reading scoring: append this call's readings of every row to its report buffer (state), and
        emit a ScoredWindow for rows whose buffer holds `window` readings. `fill`: the rows' report-window
        fill before this call; `thresholds` (K, L) or (K, 1) for all of the call's readings."""
        a = self.store.arrays
        n = ts.shape[1]
        pos = fill.astype(np.int64)
        # flat index into the (capacity, window) columns, C-contiguous as the store allocates them
        at = (rows * self.s.window + pos)[:, None]
        if n > 1:
            at = at + np.arange(n)
        a["rep_ts"].reshape(-1)[at] = ts
        a["rep_err"].reshape(-1)[at] = errors
        a["rep_score"].reshape(-1)[at] = scores
        a["rep_thr"].reshape(-1)[at] = thresholds
        a["rep_anom"].reshape(-1)[at] = anomalous
        a["rep_open"].reshape(-1)[at] = open_pts
        sq = take_rows(a["rep_sq"], rows)
        for j in range(n):  # reading by reading: the float32 sum must not depend on grouping
            sq += err_f[:, j]
        put_rows(a["rep_sq"], rows, sq)
        pos += n
        a["rep_fill"][rows] = pos
        full = (pos == self.s.window).nonzero()[0]
        if len(full):
            self.flush(rows[full], [keys[j] for j in full.tolist()], out)

    def flush(self, rows: np.ndarray, keys: list[str], out: EngineOutput) -> None:
        """Emit the report buffers of `rows` as ScoredWindows (a short one after a gap) and empty them. Each
        reading was decided on its own arrival: decided_at = its timestamp."""
        if not self.s.per_reading:
            return
        a = self.store.arrays
        fill = a["rep_fill"][rows]
        if not fill.all():
            keep = np.flatnonzero(fill)
            rows, fill, keys = rows[keep], fill[keep], [keys[i] for i in keep.tolist()]
        if not len(rows):
            return
        sq = take_rows(a["rep_sq"], rows)
        total = sq.sum(axis=1, keepdims=True)
        shares = np.divide(sq, total, out=np.full_like(sq, 1.0 / self.s.n_features), where=total > 0)
        ts, decided = take_rows(a["rep_ts"], rows), take_rows(a["rep_ts"], rows)
        err, score = take_rows(a["rep_err"], rows), take_rows(a["rep_score"], rows)
        thr, anom = take_rows(a["rep_thr"], rows), take_rows(a["rep_anom"], rows)
        opened = take_rows(a["rep_open"], rows)
        cut = self.full_windows if (fill == self.s.window).all() else self.cut_windows
        out.windows += cut(keys, fill, ts, err, score, thr, anom, opened, shares, decided)
        a["rep_fill"][rows] = 0
        a["rep_sq"][rows] = 0
        a["windows"][rows] += 1
        self.counters["windows"] += len(rows)

    def full_windows(
        self, keys, fill, ts, err, score, thr, anom, opened, shares, decided
    ) -> list[ScoredWindow]:
        """ScoredWindows of report buffers that are all full (the common case): each row as it is."""
        version = repeat(self.s.bundle.version)
        return list(map(ScoredWindow, keys, ts, err, score, thr, anom, opened, shares, version, decided))

    def cut_windows(
        self, keys, fill, ts, err, score, thr, anom, opened, shares, decided
    ) -> list[ScoredWindow]:
        """ScoredWindows of report buffers holding `fill` readings each (a short one after a gap or a flush)."""
        version = self.s.bundle.version
        return [
            ScoredWindow(
                key,
                ts[i, :n],
                err[i, :n],
                score[i, :n],
                thr[i, :n],
                anom[i, :n],
                opened[i, :n],
                shares[i],
                version,
                decided[i, :n],
            )
            for i, (key, n) in enumerate(zip(keys, fill.tolist(), strict=True))
        ]

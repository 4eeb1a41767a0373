"""Scoring work of one engine call as columns: the pieces every key's accepted readings are cut into, and the
rounds in which they go through the model.

A piece is what one key contributes to one model call: a whole window (window-scored bundles), or the key's
next readings up to the end of its current report window (bundles scored on arrival). A key's pieces are
numbered in order (its rounds); round r of a call scores the r-th piece of every key that has one, one model
call per distinct piece length. `reset` marks a piece that starts after a long gap (the key's report window is
flushed and its encoder state reset first), `gap` the gap's length in seconds; a piece of length 0 is a reset
alone.

Everything here is arrays over pieces, built without a Python loop over keys or readings, except for keys that
went through the engine's per-event path (irregular input: gaps, refused readings), which arrive as per-key
queues and are cut in Python (:func:`from_queues`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


class Gap(float):
    """Queue marker: the key's stream had a gap of this many seconds; reset its model state at this point."""


@dataclass
class Pieces:
    """P pieces over N queued readings: piece i is readings ``start[i] : start[i] + length[i]`` of ``x``/``ts``
    (standardized values (N, F) float32, timestamps (N,) float64), key row ``row[i]``, its round ``round[i]``."""

    row: np.ndarray  # int64 (P,)
    round: np.ndarray  # int64 (P,)
    start: np.ndarray  # int64 (P,)
    length: np.ndarray  # int64 (P,)
    reset: np.ndarray  # bool (P,)
    x: np.ndarray  # float32 (N, F)
    ts: np.ndarray  # float64 (N,)
    gap: np.ndarray | None = None  # float64 (P,): seconds of the gap before a reset piece (None: no gaps)

    @classmethod
    def empty(cls, n_features: int) -> Pieces:
        i = np.zeros(0, np.int64)
        return cls(i, i, i, i, np.zeros(0, bool), np.zeros((0, n_features), np.float32), np.zeros(0))

    def __len__(self) -> int:
        return len(self.row)

    @classmethod
    def concat(cls, parts: list[Pieces], n_features: int) -> Pieces:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty(n_features)
        if len(parts) == 1:
            return parts[0]
        offsets = np.cumsum([0] + [len(p.ts) for p in parts[:-1]])
        return cls(
            np.concatenate([p.row for p in parts]),
            np.concatenate([p.round for p in parts]),
            np.concatenate([p.start + o for p, o in zip(parts, offsets, strict=True)]),
            np.concatenate([p.length for p in parts]),
            np.concatenate([p.reset for p in parts]),
            np.concatenate([p.x for p in parts]),
            np.concatenate([p.ts for p in parts]),
            None
            if all(p.gap is None for p in parts)
            else np.concatenate([np.zeros(len(p)) if p.gap is None else p.gap for p in parts]),
        )

    def rounds(
        self,
    ) -> Iterator[tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]]:
        """Per round, in order: the rows to reset first and their gaps (seconds), then per distinct length
        (ascending) the rows, x (K, L, F) and ts (K, L) of one model call. Within a call rows keep the order the
        pieces were given in."""
        if not len(self):
            return
        if self.round.any():
            order = np.lexsort((self.length, self.round))  # stable: ties keep the given order
            rnd = self.round[order]
            sels = np.split(order, np.flatnonzero(rnd[1:] != rnd[:-1]) + 1)
        else:  # one round (no key's readings cross a report window's end): the same order, one sort fewer
            sels = [np.argsort(self.length, kind="stable")]
        for sel in sels:
            reset = sel[self.reset[sel]]
            gap = np.zeros(len(reset)) if self.gap is None else self.gap[reset]
            yield self.row[reset], gap, self._calls(sel)

    def _calls(self, sel: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The model calls of one round's pieces `sel` (ordered by length): one per distinct length."""
        lengths = self.length[sel]
        if lengths[0] == lengths[-1]:  # one length (sorted): one call
            groups = [sel]
        else:
            groups = np.split(sel, np.flatnonzero(lengths[1:] != lengths[:-1]) + 1)
        calls = []
        for g in groups:
            n = int(self.length[g[0]])
            if n == 0:
                continue
            idx = self.start[g][:, None] + np.arange(n)
            calls.append((self.row[g], self.x[idx], self.ts[idx]))
        return calls


def run_lengths(starts: np.ndarray, n: int) -> np.ndarray:
    """Lengths of the runs that begin at `starts` (ascending, starts[0] == 0) in a sequence of `n` items."""
    m = np.empty(len(starts), np.int64)
    np.subtract(starts[1:], starts[:-1], out=m[:-1])
    m[-1:] = n - starts[-1:]
    return m


def report_pieces(
    rows: np.ndarray, first: np.ndarray, x: np.ndarray, ts: np.ndarray, fill: np.ndarray, window: int
) -> Pieces:
    """Pieces of readings scored on arrival: `rows` (N,) grouped by key, in time order within a key (`first`
    marks each key's first reading), cut at the end of every report window. `fill` (N_keys,) is each key's
    report-window fill before these readings, given per group in group order."""
    starts = np.flatnonzero(first)
    n = len(rows)
    if len(starts) == n:  # one reading per key (the live daemon's common case): a piece each, all in round 0
        i = np.arange(n, dtype=np.int64)
        return Pieces(
            rows.astype(np.int64), np.zeros(n, np.int64), i, np.ones(n, np.int64), np.zeros(n, bool), x, ts
        )
    m = run_lengths(starts, n)
    gi = np.repeat(np.arange(len(starts)), m)
    pos = fill.astype(np.int64)[gi] + (np.arange(n) - starts[gi])
    pid = pos // window
    new = first.copy()
    new[1:] |= pid[1:] != pid[:-1]
    pstart = np.flatnonzero(new)
    length = run_lengths(pstart, n)
    return Pieces(
        rows[pstart].astype(np.int64),
        pid[pstart] - pid[starts][gi[pstart]],
        pstart.astype(np.int64),
        length,
        np.zeros(len(pstart), bool),
        x,
        ts,
    )


def window_pieces(rows: np.ndarray, counts: np.ndarray, xs: np.ndarray, tss: np.ndarray) -> Pieces:
    """Pieces of window-scored keys: `counts[g]` complete windows of row `rows[g]`, stacked in `xs` (total, W, F)
    and `tss` (total, W) in that order; the j-th window of a key is its round j."""
    total, w = tss.shape
    g = np.repeat(np.arange(len(rows)), counts)
    base = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return Pieces(
        rows[g].astype(np.int64),
        np.arange(total) - base[g],
        np.arange(total, dtype=np.int64) * w,
        np.full(total, w, np.int64),
        np.zeros(total, bool),
        xs.reshape(total * w, -1),
        tss.reshape(-1),
    )


def from_queues(queues: dict[int, deque], fill: np.ndarray | None, window: int, n_features: int) -> Pieces:
    """Pieces of the keys that went through the per-event path: each queue holds units (x (L, F), ts (L,))
    and Gap markers in order. `fill` (rows,) is the report-window fill per row (readings scored on arrival;
    a piece ends where the report window does) or None (whole windows: one unit per piece)."""
    rows, rounds, starts, lengths, resets = [], [], [], [], []
    gaps: list[float] = []
    xs: list[np.ndarray] = []
    tss: list[np.ndarray] = []
    n = 0
    for row, q in queues.items():
        f = int(fill[row]) if fill is not None else 0
        r = 0
        while q:
            reset, gap = False, 0.0
            while q and isinstance(q[0], Gap):
                gap += q.popleft()  # two gaps in a row (no piece between them): their sum
                reset, f = True, 0
            length = 0
            room = 1 if fill is None else window - f
            units = 0
            while q and not isinstance(q[0], Gap) and units < room:
                x, ts = q.popleft()
                xs.append(x)
                tss.append(ts)
                length += len(ts)
                units += 1 if fill is None else len(ts)
            rows.append(row)
            rounds.append(r)
            starts.append(n)
            lengths.append(length)
            resets.append(reset)
            gaps.append(gap)
            n += length
            if fill is not None:
                f = (f + length) % window
            r += 1
    if not rows:
        return Pieces.empty(n_features)
    return Pieces(
        np.asarray(rows, np.int64),
        np.asarray(rounds, np.int64),
        np.asarray(starts, np.int64),
        np.asarray(lengths, np.int64),
        np.asarray(resets, bool),
        np.concatenate(xs).astype(np.float32, copy=False).reshape(-1, n_features)
        if xs
        else np.zeros((0, n_features), np.float32),
        np.concatenate(tss).astype(np.float64, copy=False) if tss else np.zeros(0),
        np.asarray(gaps, np.float64),
    )

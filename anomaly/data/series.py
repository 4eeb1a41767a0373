"""A :class:`Series` (one entity's readings in time order) and what is done to whole series once they are
read: joining a key's parts from several files, the missing-value policy of training data, the sampling
interval and the gaps that cut a series, and the fingerprint a bundle stores of its training data."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from anomaly.errors import SchemaError


@dataclass
class Series:
    key: str
    timestamps: np.ndarray  # float64 epoch seconds, shape (n,)
    values: np.ndarray  # float64 raw units, shape (n, F)
    labels: np.ndarray | None = None  # int8 0/1, shape (n,)
    source: str = ""
    lines: np.ndarray | None = None  # int64 (n,): each reading's line in its file, as an editor numbers it

    def __len__(self) -> int:
        return len(self.timestamps)

    def take(self, index: slice | np.ndarray) -> Series:
        """The readings at `index` (a slice, a boolean mask or positions), labels along, same key and source."""
        return Series(
            self.key,
            self.timestamps[index],
            self.values[index],
            None if self.labels is None else self.labels[index],
            self.source,
            None if self.lines is None else self.lines[index],
        )

    def head(self, n: int) -> Series:
        return self.take(slice(None, n))

    def tail_from(self, n: int) -> Series:
        return self.take(slice(n, None))


def merge_keys(series: Sequence[Series]) -> list[Series]:
    """One series per key: the parts of a key found in several files (monthly exports of the same sensors, with a
    key column) joined in time order, as the engine sees one stream per key. Labels must be in every part or in
    none. Readings at a time another part also has stay: the engine refuses the repeat, and training
    with it (:func:`screen_readings`)."""
    parts: dict[str, list[Series]] = {}
    for s in series:
        parts.setdefault(s.key, []).append(s)
    out = []
    for key, group in parts.items():
        if len(group) == 1:
            out.append(group[0])
            continue
        labelled = [s.source for s in group if s.labels is not None]
        if labelled and len(labelled) < len(group):
            unlabelled = next(s.source for s in group if s.labels is None)
            raise SchemaError(
                f"key {key!r} has labels in {labelled[0]} but not in {unlabelled}; label both or neither"
            )
        ts = np.concatenate([s.timestamps for s in group])
        order = np.argsort(ts, kind="stable")
        out.append(
            Series(
                key,
                ts[order],
                np.concatenate([s.values for s in group])[order],
                np.concatenate([s.labels for s in group if s.labels is not None])[order]
                if labelled
                else None,
                "+".join(dict.fromkeys(s.source for s in group)),
                np.concatenate([s.lines for s in group])[order]  # each in its own file
                if all(s.lines is not None for s in group)
                else None,
            )
        )
    return out


def apply_nan_policy(series: Sequence[Series], policy: str) -> tuple[list[Series], int, int]:
    """Missing values in training data, handled as the engine handles them live (:func:`screen_readings` with
    every repeated time kept). Returns (series, readings dropped, cells filled)."""
    screened = screen_readings(series, policy, "keep")
    return screened.series, screened.missing, screened.filled


@dataclass
class Screened:
    """Training series as the engine's screen accepts their readings, and what it refused."""

    series: list[Series]
    missing: int  # readings refused for a missing (non-finite) time or value left after nan_policy
    filled: int  # cells of accepted readings forward-filled (nan_policy "ffill")
    repeated: int  # refused for a time before, or (duplicate_policy "drop") equal to, the last accepted one


def screen_readings(series: Sequence[Series], nan_policy: str, duplicate_policy: str = "drop") -> Screened:
    """Every series' readings judged in order as the engine's screen (:mod:`anomaly.engine.screen`) judges a
    fresh key's: a reading is refused for a non-finite time, a time before the last accepted one or (with
    `duplicate_policy` "drop", the engine's default) equal to it, or a value still non-finite after
    `nan_policy` ("reject": none filled; "ffill": each missing cell filled from the last ACCEPTED reading, so
    nothing is filled before a first complete reading). A refused reading neither moves the clock nor feeds a
    fill, so training sees exactly the readings the engine would score (a file given twice, overlapping
    exports: each time once)."""
    out: list[Series] = []
    missing = filled = repeated = 0
    drop_dup = duplicate_policy == "drop"
    for s in series:
        ts = np.asarray(s.timestamps, np.float64)
        values = s.values
        n = len(ts)
        ts_ok = np.isfinite(ts)
        row_ok = np.isfinite(values).all(axis=1)
        ffill = nan_policy == "ffill" and not row_ok.all()
        if ffill:
            # once a reading is accepted every later one can be filled from the last accepted: only readings
            # before the first complete one are refused for their values
            first = np.flatnonzero(ts_ok & row_ok)
            row_ok = np.arange(n) >= (first[0] if len(first) else n)
        # the last accepted time before each reading is the running maximum of the earlier readings that have
        # a finite time and values (one refused for its time never exceeds that maximum)
        candidate = np.where(ts_ok & row_ok, ts, -np.inf)
        last = np.concatenate([[-np.inf], np.maximum.accumulate(candidate)[:-1]]) if n else candidate
        reason_repeat = ts_ok & ((ts < last) | ((ts == last) & drop_dup))
        keep = ts_ok & row_ok & ~reason_repeat
        if ffill and keep.any():  # each missing cell from the last accepted reading's (itself filled) value
            taken = values[keep]
            filled += int((~np.isfinite(taken)).sum())
            values = values.copy()
            frame = pd.DataFrame(taken).replace([np.inf, -np.inf], np.nan)
            values[keep] = frame.ffill().to_numpy(values.dtype)
        repeated += int(reason_repeat.sum())
        missing += int((~keep & ~reason_repeat).sum())
        out.append(_kept(s, keep, values))
    return Screened(out, missing, filled, repeated)


def _kept(s: Series, keep: np.ndarray, values: np.ndarray) -> Series:
    return Series(
        s.key,
        s.timestamps[keep],
        values[keep],
        None if s.labels is None else s.labels[keep],
        s.source,
        None if s.lines is None else s.lines[keep],
    )


def cut_out_labelled(series: Sequence[Series]) -> tuple[list[Series], int, int]:
    """Training data without its readings labelled anomalous (`--drop-anomalies`): each series is cut where a
    labelled stretch was removed, as a gap cuts it, so no training window joins the readings before and after
    one as if they were consecutive. Pieces keep the series key; series without labels stay whole. Returns
    (pieces, readings dropped, cuts: removed stretches with readings on both sides)."""
    out: list[Series] = []
    dropped = cuts = 0
    for s in series:
        if s.labels is None:
            out.append(s)
            continue
        normal = np.asarray(s.labels) == 0
        dropped += int((~normal).sum())
        edges = np.flatnonzero(np.diff(np.concatenate([[0], normal.astype(np.int8), [0]])))
        pieces = [
            s.take(slice(lo, hi)) for lo, hi in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True)
        ]
        cuts += max(len(pieces) - 1, 0)
        out.extend(pieces or [s.take(slice(0, 0))])
    return out, dropped, cuts


def counting_features(series: Sequence[Series], features: Sequence[str]) -> list[str]:
    """The features that count up reading by reading, nine steps in ten (per series, in time order) the same
    positive amount: a clock or a row number kept as a column (epoch seconds beside a text time, telemanom's
    `step` under --no-time-column), not a sensor. A model trained on one sees every later reading out of range."""
    same = np.zeros(len(features))
    total = 0
    for s in series:
        if len(s) < 3:
            continue
        steps = np.diff(s.values, axis=0)
        for j in range(len(features)):
            up = steps[:, j][steps[:, j] > 0]
            if len(up):
                same[j] += float(np.sum(steps[:, j] == np.median(up)))
        total += len(steps)
    return [f for j, f in enumerate(features) if total and same[j] >= 0.9 * total]


# The default gap rule: a key whose readings stop for longer than this many sampling intervals starts fresh
# (1-second data: 300 s). Training splits series at the same gaps, so train and replay agree.
GAP_INTERVALS = 300
FALLBACK_MAX_GAP_SECONDS = 300.0  # bundles trained before the interval was learnt


def sampling_interval(series: Sequence[Series]) -> float | None:
    """The median step between consecutive readings over all series (seconds, to the microsecond); None when
    no series has two readings at distinct times. Steps between today's epoch times in float64 are 0.24 us
    coarse: 10 Hz readings differ by 0.0999999 or 0.1000001 s, and the median of those is not their step."""
    steps = [np.diff(s.timestamps) for s in series if len(s) > 1]
    pooled = np.concatenate(steps) if steps else np.zeros(0)
    pooled = pooled[np.isfinite(pooled) & (pooled > 0)]
    if not len(pooled):
        return None
    step = round(float(np.median(pooled)), 6)
    return step if step > 0 else float(np.median(pooled))  # (steps under half a microsecond stay as they are)


def default_max_gap(interval: float | None) -> float:
    return FALLBACK_MAX_GAP_SECONDS if interval is None else GAP_INTERVALS * interval


def split_at_gaps(series: Sequence[Series], max_gap: float) -> list[Series]:
    """Cut every series where consecutive readings are more than `max_gap` seconds apart, as the engine resets
    a key there. Pieces keep the series key (they are never streamed, only trained on)."""
    out = []
    for s in series:
        cuts = (np.flatnonzero(np.diff(s.timestamps) > max_gap) + 1).tolist()
        for lo, hi in zip([0, *cuts], [*cuts, len(s)], strict=True):
            out.append(s.take(slice(lo, hi)))
    return out


def look_alike_keys(series: Sequence[Series], shown: int = 3) -> str | None:
    """A warning naming keys that differ only in case or spaces (`s1`, `S1 `): each is a series of its own, as
    the daemon keys them, which a device whose name was written two ways cuts in two. None when there are none."""
    groups: dict[str, dict[str, None]] = {}
    for s in series:
        groups.setdefault(" ".join(s.key.split()).casefold(), {})[s.key] = None
    alike = [list(g) for g in groups.values() if len(g) > 1]
    if not alike:
        return None
    names = "; ".join(" and ".join(repr(k) for k in g) for g in alike[:shown])
    more = f" (and {len(alike) - shown} more such groups)" if len(alike) > shown else ""
    return (
        f"keys {names}{more} differ only in case or spaces: each is a series of its own, as the daemon keys them "
        "(key values are read as written); if they name one device, write its key one way"
    )


def fingerprint(series: Sequence[Series]) -> str:
    """A short content hash of training data, stored in the bundle to tell what a model was trained on."""
    h = hashlib.sha256()
    for s in series:
        h.update(s.key.encode())
        h.update(np.ascontiguousarray(s.values).tobytes())
        h.update(np.ascontiguousarray(s.timestamps).tobytes())
    return h.hexdigest()[:16]

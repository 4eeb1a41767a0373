"""Per-key engine state as a slab of numpy arrays (one row per key), with LRU/TTL eviction and snapshots.

Everything the engine remembers about a key lives in one row of the arrays below, so scoring many keys is a
gather/scatter of rows, memory per key is a fixed number of bytes, and a snapshot is those rows written out
byte for byte (no pickle): restoring them gives bit-identical scoring.
"""

from __future__ import annotations

import json
import logging
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from anomaly.errors import AnomalyError

MAGIC = b"ANST"
FORMAT = "anomaly-state/2"  # 2: threshold state fields declared by the threshold kind

log = logging.getLogger(__name__)
_REPORTED_ADDED: set[tuple[str, ...]] = set()  # added-field sets already logged (once per process each)


class StateError(AnomalyError):
    """A snapshot cannot be restored: corrupted, or made for an incompatible model or engine settings."""


class StateMemoryError(AnomalyError):
    """The state store could not grow to hold more keys: its larger rows did not fit in memory (MemoryError).
    The store is left as it was, every key and row it held intact; the engine names the settings that size a
    key's state (:attr:`StateStore.sizing`)."""

    def __init__(self, message: str, *, rows: int, nbytes: int) -> None:
        super().__init__(message)
        self.rows = rows  # the rows the growth asked for
        self.nbytes = nbytes  # the bytes it asked for


def size_text(nbytes: float) -> str:
    """``977 MiB``, ``1.5 GiB``, ``7.6 KiB``: a size in binary units, for messages."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            value = nbytes / scale
            return f"{value:,.1f} {unit}" if value < 100 else f"{value:,.0f} {unit}"
    return f"{nbytes:,.0f} bytes"


class Snapshot(NamedTuple):
    """A snapshot read once (:meth:`StateStore.read_snapshot`): its header (``keys``, ``meta``, ``layout``,
    ``arrays``) and each field's rows, read-only views of the snapshot's bytes. The daemon checks a checkpoint
    and restores it from one read."""

    header: dict[str, Any]
    arrays: dict[str, np.ndarray]


def _layout_difference(theirs: Layout, mine: Layout, most: int = 4) -> str:
    """What differs between a snapshot's layout and this engine's, in words: the model's dimensions, or the
    per-key fields of the threshold kind and policies (their names and shapes), at most `most` of them. The two
    whole layouts (about 1.6 KB of JSON) told an operator nothing about which setting changed."""
    names = ("num_layers", "hidden", "window", "n_features")
    a = (theirs.num_layers, theirs.hidden, theirs.window, theirs.n_features)
    b = (mine.num_layers, mine.hidden, mine.window, mine.n_features)
    if a != b:
        diff = [f"{n} {x} in the snapshot, {y} here" for n, x, y in zip(names, a, b, strict=True) if x != y]
        return "model dimensions differ (" + "; ".join(diff) + "): another model's state"
    have = {name: (list(shape), dtype) for name, shape, dtype, _ in mine.extra}
    notes = []
    for name, shape, dtype, _ in theirs.extra:
        spec = (list(shape), dtype)
        if name not in have:
            notes.append(f"field {name} is not kept here")
        elif have[name] != spec:
            notes.append(
                f"field {name} is {spec[1]}{spec[0]} in the snapshot, {have[name][1]}{have[name][0]} here"
            )
    shown = "; ".join(notes[:most]) + (f"; and {len(notes) - most} more" if len(notes) > most else "")
    return (
        f"{shown} (the [engine] settings that shape per-key state differ from the ones it was written with: "
        "threshold kind, dynamic_history, spot_init, spot_peaks, spot_depth, or a level-shift or stuck-sensor "
        "policy)"
    )


@dataclass(frozen=True)
class Layout:
    """What fixes the shape of a key's state; a snapshot only restores into an engine of the same layout.
    `extra` are the fields of the threshold kind and other policies: (name, shape per key, dtype, "zero"/"nan")."""

    num_layers: int
    hidden: int
    window: int
    n_features: int
    extra: tuple[tuple[str, tuple[int, ...], str, str], ...] = ()

    def dims(self) -> tuple[int, int, int, int]:
        """The model's dimensions: (num_layers, hidden, window, n_features)."""
        return self.num_layers, self.hidden, self.window, self.n_features

    def fields(self) -> dict[str, tuple[tuple[int, ...], str]]:
        L, H, W, F = self.num_layers, self.hidden, self.window, self.n_features
        out = {
            "h": ((L, H), "float32"),
            "c": ((L, H), "float32"),  # encoder state carried between windows
            "buf": ((W, F), "float32"),
            "buf_ts": ((W,), "float64"),
            "fill": ((), "int32"),  # partial window
            "last_ts": ((), "float64"),
            "last_values": ((F,), "float64"),  # raw units, float64 like every raw value (see anomaly/data)
            "seen": ((), "float64"),
            "ewma": ((), "float32"),  # last smoothed score (NaN: none yet)
            "run_anom": ((), "int32"),
            "run_norm": ((), "int32"),
            "run_start": ((), "float64"),
            "last_anom_ts": ((), "float64"),
            "alert_open": ((), "bool"),
            "alert_start": ((), "float64"),
            "alert_peak": ((), "float32"),
            "alert_thr": ((), "float32"),
            "alert_contrib": ((F,), "float32"),
            "readings": ((), "int64"),
            "windows": ((), "int64"),
            # the key's clock domain (the engine's index of the domain of its latest message): local to the
            # engine, not written in snapshots (the engine records the domains in the snapshot's header)
            "domain": ((), "int32"),
        }
        for name, shape, dtype, _ in self.extra:
            out[name] = (tuple(shape), dtype)
        return out

    def bytes_per_key(self) -> int:
        """The bytes of one key's state (one row of every field)."""
        return sum(
            int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize
            for shape, dt in self.fields().values()
        )

    def nan_fields(self) -> set[str]:
        return set(NAN_FIELDS) | {name for name, _, _, fill in self.extra if fill == "nan"}

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "extra": [list(e) for e in self.extra]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Layout:
        extra = tuple((n, tuple(shape), dt, fill) for n, shape, dt, fill in d.get("extra", ()))
        return cls(d["num_layers"], d["hidden"], d["window"], d["n_features"], extra)


def take_rows(column: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``column[rows]`` of a store column: the same copy, by `np.take` (faster for rows of several items)."""
    return np.take(column, rows, axis=0)


def put_rows(column: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """``column[rows] = values`` for distinct `rows`. Values of the column's dtype and shape go in as one opaque
    item per row, by numpy's fast one-dimensional assignment: the same bytes land in the same rows."""
    if (
        values.dtype == column.dtype
        and values.shape == (len(rows), *column.shape[1:])
        and column.ndim > 1
        and len(rows)
        and values.flags.c_contiguous
        and column.flags.c_contiguous
    ):
        item = np.dtype((np.void, column.itemsize * (column.size // max(len(column), 1))))
        flat = column.reshape(len(column), -1).view(item).reshape(-1)  # views of the column's own bytes
        flat[rows] = values.reshape(len(values), -1).view(item).reshape(-1)
    else:
        column[rows] = values


_DTYPE_NAMES = {np.dtype(n): n for n in ("float32", "float64", "int32", "int64", "bool", "int8", "uint8")}

NAN_FIELDS = ("last_ts", "ewma", "run_start", "last_anom_ts", "alert_start", "seen")
LOCAL_FIELDS = ("domain",)  # per-key fields a snapshot leaves out (their meaning is local to one engine)


class StateStore:
    """Rows of per-key state plus the key -> row map in least-recently-used order."""

    def __init__(self, layout: Layout, capacity: int = 64) -> None:
        self.layout = layout
        self.slots: OrderedDict[str, int] = OrderedDict()
        self.free: list[int] = []
        self.arrays: dict[str, np.ndarray] = {}
        self._capacity = 0
        self._nan = layout.nan_fields()
        # what sizes the state, in words, for the error of a growth that does not fit in memory (the engine names
        # its settings: "engine.threshold dynamic keeps engine.dynamic_history = 512 scores a key, ...")
        self.sizing = ""
        # the most keys held at once (a call's new keys in, before its evictions) in the current and the previous
        # window of busy compaction (see compact(recent_peak=True)); an idle compaction resets both
        self.peaks = [0, 0]
        self._grow(capacity)

    def __len__(self) -> int:
        return len(self.slots)

    def __contains__(self, key: str) -> bool:
        return key in self.slots

    def bytes_per_key(self) -> int:
        return sum(a[0].nbytes for a in self.arrays.values())

    def _grow(self, capacity: int) -> None:
        """Rows for ``capacity`` keys, the held ones copied over. All or nothing: every larger field is allocated
        before any replaces its field, so an allocation that fails (:class:`StateMemoryError`) leaves the store
        as it was (a field grown and the next not was a store whose rows no longer lined up)."""
        old = self._capacity
        fields = self.layout.fields()
        try:
            grown = {name: np.zeros((capacity, *shape), dtype) for name, (shape, dtype) in fields.items()}
        except MemoryError:
            per_key = self.layout.bytes_per_key()
            held = f"from {old:,} to {capacity:,} keys" if old else f"for its first {capacity:,} keys"
            sizing = f": {self.sizing}; lower them or give the process more memory" if self.sizing else ""
            raise StateMemoryError(
                f"the engine's per-key state does not fit in memory: growing it {held} asked for "
                f"{size_text(capacity * per_key)} ({size_text(per_key)} a key){sizing}",
                rows=capacity,
                nbytes=capacity * per_key,
            ) from None
        for name, arr in grown.items():
            if old:
                arr[:old] = self.arrays[name]
            self.arrays[name] = arr
        self.free.extend(range(capacity - 1, old - 1, -1))
        self._capacity = capacity
        self._fresh_rows(old, capacity)

    @property
    def capacity(self) -> int:
        return self._capacity

    def compact(self, min_capacity: int = 64, *, recent_peak: bool = False) -> int:
        """Give back the rows a peak left behind: when the keys held fit a smaller store, the held rows move to
        rows ``0..n-1`` in least-recently-used order (the order :attr:`slots` and a snapshot of every key list
        them, so that gather is sequential) and the arrays shrink to the smallest power of two (and
        ``min_capacity``) that holds the ``n`` keys with an eighth of its rows free; the key map is rebuilt at
        its new size. The store grows whenever one call brings more new keys than it has free rows (``max_keys``
        plus a batch's new keys under churn, or the keys a restore adds to those held) and otherwise never
        shrinks. Only where a key's state lies changes: every row's bytes, the LRU order and every snapshot stay
        the same. Returns the number of rows given back (0: nothing to do).

        The eighth kept free is the hysteresis against thrash: a store shrunk to ``T`` rows grows again only for
        a call of more than ``T / 8`` new keys, so a shrink and the growth after it cost O(1) a reading; a
        store whose keys fill more than seven eighths of the smaller size keeps its rows. (Until session 20 it
        shrank only when at most an eighth of its rows were in use: a daemon at ``max_keys`` 100,000 that
        restored 150,000 keys at a rebalance kept the 262,144 rows it grew to, twice the cap's 131,072, until
        it restarted.)

        ``recent_peak`` (a busy stream, between calls): sized for the most keys held at once over this window and
        the one before it (:attr:`peaks`, taken at each call's evictions: ``max_keys`` plus the call's new keys
        under churn) instead of the keys held now, and the window moves on. Under steady churn every window has
        such a peak, so the rows the batches need are kept (a store shrunk after each batch is grown again by the
        next, its rows zero-filled anew); a peak that does not come again (an over-cap restore, a burst of new
        keys) is given back within two windows, without waiting for the stream to go idle."""
        n = len(self.slots)
        need = max(n, *self.peaks) if recent_peak else n
        self.peaks = [self.peaks[1], n] if recent_peak else [n, n]
        target = max(min_capacity, 1 << max(need - 1, 0).bit_length())  # the smallest power of two of >= need
        if need > target - target // 8:
            target *= 2
        if self._capacity <= target:
            return 0
        rows = np.fromiter(self.slots.values(), np.int64, n)
        old = self._capacity
        for name, arr in self.arrays.items():
            small = np.zeros((target, *arr.shape[1:]), arr.dtype)  # the free rows: see _fresh_rows
            np.take(arr, rows, axis=0, out=small[:n], mode="clip")  # "raise" buffers `out`: a copy more
            self.arrays[name] = small
        # the key map as well: a dict keeps the table of its peak when keys leave (deleting never shrinks it),
        # and every snapshot looks each key up in it (a 16x larger table after 300,000 keys of churn)
        self.slots = OrderedDict(zip(self.slots, range(n), strict=True))
        self.free = list(range(target - 1, n - 1, -1))  # slot() pops from the end: rows n, n+1, ... first
        self._capacity = target
        self._fresh_rows(n, target)
        return old - target

    def reset_rows(self, rows: np.ndarray) -> None:
        for name, arr in self.arrays.items():
            arr[rows] = np.nan if name in self._nan else 0

    def _fresh_rows(self, lo: int, hi: int) -> None:
        """:meth:`reset_rows` of rows ``lo..hi-1`` of arrays just allocated by `np.zeros`: only the fields that
        start as NaN are written (a few bytes a row). The others are zero already, and their pages stay
        unwritten, so the operating system maps them only when a key first uses the row: a store grown or
        compacted to more rows than it holds keys costs the memory of its keys, not of its rows. (Writing the
        zeros again made every row resident at once: a store doubled to 262,144 rows for a restore of 150,000
        keys took the memory of all 262,144.) The rows' bytes are the same either way."""
        for name in self._nan:
            self.arrays[name][lo:hi] = np.nan

    def reset_model_state(self, rows: np.ndarray) -> None:
        """Forget the encoder state and the score smoothing (after a gap in the stream)."""
        a = self.arrays
        a["h"][rows] = 0
        a["c"][rows] = 0
        a["ewma"][rows] = np.nan

    def slot(self, key: str) -> tuple[int, bool]:
        """Row of `key`, created if new; touching it makes it most recently used. Returns (row, created)."""
        row = self.slots.get(key)
        if row is not None:
            self.slots.move_to_end(key)
            return row, False
        if not self.free:
            self._grow(self._capacity * 2)
        row = self.free.pop()
        self.slots[key] = row
        return row, True

    def reserve(self, keys: Sequence[str]) -> None:
        """Rows for every one of `keys` that the store does not hold, grown now if the free rows are too few (by
        doubling, as :meth:`slot` would grow it). A call of the engine reserves its keys before it changes
        anything, so a growth that does not fit in memory (:class:`StateMemoryError`) leaves the whole call
        unapplied: a growth at its n-th new key left the keys before it created without readings, and the parts
        of a call processed before (engine.ttl_seconds) applied, their outputs lost with the error. The free
        rows are used in the order :meth:`slot` would have used them (the old ones first)."""
        free = len(self.free)
        if len(keys) <= free:  # the common case: no key to look up
            return
        new = sum(1 for k in dict.fromkeys(keys) if k not in self.slots)
        if new <= free:
            return
        capacity = self._capacity
        while free + capacity - self._capacity < new:
            capacity *= 2
        old = list(self.free)
        self._grow(capacity)  # all or nothing
        self.free = self.free[len(old) :] + old

    def drop(self, keys: Iterable[str]) -> int:
        rows = [self.slots.pop(k) for k in keys if k in self.slots]
        if rows:
            self.reset_rows(np.asarray(rows))
            self.free.extend(rows)
        return len(rows)

    def evict(
        self,
        max_keys: int,
        oldest_allowed: float | np.ndarray | None,
        on_evict: Callable[[list[str], np.ndarray], None] | None = None,
    ) -> list[str]:
        """Drop every key last seen before `oldest_allowed` (one time for all keys, or one per row: each key's
        clock domain has its own; wherever it stands in the LRU order), then the
        least-recently-used keys still above `max_keys`. `on_evict(keys, rows)` sees the evicted rows (least
        recently used first) before they are cleared.

        The LRU order is the order keys were last touched, not their event time: a key that arrived after
        another one may be the older in event time (a lagging partition, a producer whose clock is behind), so
        the TTL cannot stop at the first key that is young enough."""
        seen = self.arrays["seen"]
        held = len(self.slots)
        if held > self.peaks[1]:  # the call's new keys are in: the most rows this window needed
            self.peaks[1] = held
        # unheld rows have seen = NaN, which is never older than anything
        expired = 0 if oldest_allowed is None else int(np.count_nonzero(seen < oldest_allowed))
        if held - expired <= max_keys and not expired:
            return []
        # the common case: the expired keys lead the LRU order, and the keys over the cap follow them
        keys: list[str] = []
        found = 0
        for key, row in self.slots.items():
            old = oldest_allowed is not None and bool(
                seen[row]
                < (oldest_allowed[row] if isinstance(oldest_allowed, np.ndarray) else oldest_allowed)
            )
            if not (old or held - len(keys) - (expired - found) > max_keys):
                break
            keys.append(key)
            found += old
        if found < expired:  # a key that arrived after a younger one is expired too: a pass over all keys
            order = np.fromiter(self.slots.values(), np.int64, held)  # least recently used first
            limit = oldest_allowed[order] if isinstance(oldest_allowed, np.ndarray) else oldest_allowed
            drop = seen[order] < limit
            drop[: len(keys)] = True  # young keys evicted for the cap above: the least recently used
            keys = [key for key, gone in zip(self.slots, drop.tolist(), strict=True) if gone]
        rows = np.fromiter((self.slots[k] for k in keys), np.int64, len(keys))
        if on_evict is not None:
            on_evict(keys, rows)
        for key in keys:
            del self.slots[key]
        self.reset_rows(rows)
        self.free.extend(rows.tolist())
        return keys

    # --- snapshots -------------------------------------------------------------------------------------------

    def snapshot(self, keys: Iterable[str] | None, meta: dict) -> bytes:
        names = list(self.slots) if keys is None else [k for k in keys if k in self.slots]
        rows = np.asarray([self.slots[k] for k in names], dtype=np.int64)
        specs: list[dict[str, Any]] = []
        header = {
            "format": FORMAT,
            "layout": self.layout.to_json(),
            "keys": names,
            "meta": meta,
            "arrays": specs,
        }
        # buffer slots past `fill` hold stale readings that never matter; zero them so that equal states
        # give equal bytes however the readings arrived
        stale = np.arange(self.layout.window)[None, :] >= self.arrays["fill"][rows][:, None]
        rep_stale = None
        parts: list[Any] = []
        for name, arr in self.arrays.items():
            if name in LOCAL_FIELDS:
                continue
            part = arr[rows]  # a fresh C-contiguous copy: joined below without another copy
            if name in ("buf", "buf_ts"):
                part[stale] = 0
            elif name.startswith("rep_") and part.ndim == 2 and name != "rep_sq":
                # readings of the report window not yet scored (per-reading scoring): stale as well
                if rep_stale is None:
                    rep_stale = np.arange(part.shape[1])[None, :] >= self.arrays["rep_fill"][rows][:, None]
                part[rep_stale] = 0
            specs.append(
                {
                    "name": name,
                    "dtype": _DTYPE_NAMES.get(arr.dtype) or str(arr.dtype),
                    "shape": list(part.shape),
                }
            )
            parts.append(part.reshape(-1).view(np.uint8))
        head = json.dumps(header, separators=(",", ":")).encode()
        return b"".join([MAGIC, struct.pack("<I", len(head)), head, *parts])

    @staticmethod
    def read_snapshot(data: bytes) -> Snapshot:
        """The snapshot's header and rows (views of ``data``, not copies: a restore copies them into its rows).
        StateError saying why it cannot be read: ``engine snapshot was written in state format
        'anomaly-state/3'; this version reads 'anomaly-state/2'`` (a newer version's), ``engine snapshot is
        corrupted (truncated)``. Whether it fits this engine is :meth:`settings_difference`'s and
        :meth:`restore`'s question."""
        try:
            if data[:4] != MAGIC:
                raise ValueError("bad magic")
            (n,) = struct.unpack("<I", data[4:8])
            header = json.loads(data[8 : 8 + n])
            written = header.get("format")
            if isinstance(written, str) and written != FORMAT:
                raise StateError(
                    f"engine snapshot was written in state format {written!r}; this version reads {FORMAT!r}"
                )
            pos = 8 + n
            arrays = {}
            for spec in header["arrays"]:
                dtype = np.dtype(spec["dtype"])
                count = int(np.prod(spec["shape"], dtype=np.int64))
                size = count * dtype.itemsize
                if pos + size > len(data):
                    raise ValueError("truncated")
                arrays[spec["name"]] = np.frombuffer(data, dtype, count, pos).reshape(spec["shape"])
                pos += size
            if pos != len(data) or written != FORMAT:
                raise ValueError("trailing bytes or unknown format")
            keys = header["keys"]
            if not isinstance(keys, list) or not isinstance(header["meta"], dict):
                raise ValueError("keys or meta of the wrong type")
            if any(len(arr) != len(keys) for arr in arrays.values()):
                raise ValueError("arrays of another length than the keys")
            Layout.from_json(header["layout"])
        except (ValueError, KeyError, TypeError, AttributeError, struct.error, json.JSONDecodeError) as exc:
            raise StateError(f"engine snapshot is corrupted ({exc})") from None
        return Snapshot(header, arrays)

    def restore(self, data: bytes | Snapshot) -> list[str]:
        header, arrays = data if isinstance(data, Snapshot) else self.read_snapshot(data)
        try:
            layout = Layout.from_json(header["layout"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"engine snapshot is corrupted ({exc})") from None
        added = self._added_fields(layout)
        keys = header["keys"]
        # rows for every new key first, in one growth: all or nothing (StateMemoryError leaves the store as it
        # was, no key of the snapshot half restored), and no copy of a store grown to the half-way size (the
        # doublings key by key copied 131,072 rows to restore 150,000 keys into a fresh store)
        self.reserve(keys)
        for i, key in enumerate(keys):
            row, _ = self.slot(key)
            if added:  # what the snapshot lacks starts as for a new key; the rest is overwritten below
                self.reset_rows(np.asarray([row]))
            for name, arr in arrays.items():
                self.arrays[name][row] = arr[i]
        return keys

    def settings_difference(self, data: bytes | Snapshot) -> str | None:
        """What differs, in words, when a snapshot of this store's model dimensions does not restore here because
        the [engine] settings that shape per-key state (threshold kind, its sizes, the policies) differ from the
        ones it was written with; else None: it restores, or it is another model's state (other dimensions), or
        it cannot be read (:meth:`restore` refuses those two as ever). Reads the header only, so the daemon can
        check every assigned partition's checkpoint before it restores or writes anything."""
        if isinstance(data, Snapshot):
            return self._misfit_dims(Layout.from_json(data.header["layout"]))
        try:
            if data[:4] != MAGIC:
                return None
            (n,) = struct.unpack("<I", data[4:8])
            header = json.loads(data[8 : 8 + n])
            if header.get("format") != FORMAT:
                return None
            layout = Layout.from_json(header["layout"])
        except (ValueError, KeyError, TypeError, AttributeError, struct.error):
            return None
        return self._misfit_dims(layout)

    def _misfit_dims(self, layout: Layout) -> str | None:
        """:meth:`_misfit` of state of this model's dimensions (another model's: None)."""
        if layout.dims() != self.layout.dims():
            return None
        return self._misfit(layout)

    def _misfit(self, layout: Layout) -> str | None:
        """Why state of `layout` does not restore here (see :meth:`_added_fields`), in words; None when it does."""
        mine = {name: (tuple(shape), dtype, fill) for name, shape, dtype, fill in self.layout.extra}
        theirs = {name: (tuple(shape), dtype, fill) for name, shape, dtype, fill in layout.extra}
        if layout.dims() != self.layout.dims() or any(
            mine.get(name) != spec for name, spec in theirs.items()
        ):
            return _layout_difference(layout, self.layout)
        return None

    def _added_fields(self, layout: Layout) -> tuple[str, ...]:
        """The extra fields this store has and a snapshot of `layout` lacks. A snapshot restores when its layout
        is this store's, or this store's minus some extra fields (written by an engine from before a field
        was added, or with a policy off that keeps it): those fields take their initial value ("zero" or
        "nan") for each restored key, as for a new key, and the first such restore per field set is logged.
        Any other difference (model dimensions, a field of another shape or dtype, a field this store lacks)
        is a StateError."""
        if layout == self.layout:
            return ()
        misfit = self._misfit(layout)
        if misfit is not None:
            raise StateError(f"snapshot state does not fit this engine: {misfit}")
        theirs = {name for name, _, _, _ in layout.extra}
        added = tuple(name for name, _, _, _ in self.layout.extra if name not in theirs)
        if added not in _REPORTED_ADDED:
            _REPORTED_ADDED.add(added)
            log.warning(
                "engine snapshot written without state field(s) %s (by an older version, or with a threshold kind "
                "or policy that keeps less per-key state): restored with their initial values",
                ", ".join(added),
            )
        return added

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

`Engine` is the facade: it owns the state store, the config, the counters and the event time reached, and
runs one call's steps in order. The steps live in their own modules, each over the same store:
:mod:`~anomaly.engine.ingest` (events as columns, window assembly) and :mod:`~anomaly.engine.screen` (the
per-event path: refusals, hygiene policies, gaps); :mod:`~anomaly.engine.scoring` (the batched model call,
scores, thresholds); :mod:`~anomaly.engine.report` (report buffers of readings scored on arrival);
:mod:`~anomaly.engine.alerts` (alert lifecycle); :mod:`~anomaly.engine.levels` (level tracking, re-baseline);
:mod:`~anomaly.engine.stuck` (stuck sensors); :mod:`~anomaly.engine.expiry` (TTL within a call).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from anomaly.bundle import Bundle
from anomaly.config import EngineConfig
from anomaly.engine.alerts import AlertLifecycle, alert_id, counts_alert_readings
from anomaly.engine.expiry import in_parts, may_expire
from anomaly.engine.ingest import Ingest
from anomaly.engine.levels import LevelTracker
from anomaly.engine.pieces import Pieces, from_queues
from anomaly.engine.report import ReportBuffers
from anomaly.engine.scoring import BatchScorer
from anomaly.engine.settings import Settings
from anomaly.engine.state import Layout, Snapshot, StateMemoryError, StateStore
from anomaly.engine.types import REJECT_REASONS, EngineOutput, Event, Readings
from anomaly.errors import ConfigError
from anomaly.thresholds import ALERT_GAP, ALERT_LENGTH

__all__ = ["Engine", "alert_id"]


class Engine:
    """The facade over the engine's parts, which share the state store, the config and the counters:
    :class:`Ingest` (validation, time order, gaps, assembly into pieces), :class:`BatchScorer` (model calls,
    scores, thresholds), :class:`LevelTracker` (levels, re-baselines), :class:`AlertLifecycle` and
    :class:`ReportBuffers` (each a :class:`~anomaly.engine.part.Part`). What is derived from the model is one
    :class:`~anomaly.engine.settings.Settings`, built at start and at each `reload`; its fields read as the
    engine's own (`window`, `per_reading`, `max_gap`, `threshold`, `stuck_limit`, ...). The parts are rebuilt
    whenever the model or the store changes."""

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
        # The event time reached, per clock domain (index: the key's `domain` state field). A replay is one
        # domain, "" (index 0); the daemon makes each input partition a domain of its own (messages name it,
        # Readings.domains), so a partition read behind another in a backfill judges its keys' idleness (TTL)
        # by its own event time, as Kafka Streams keeps a stream time per partition (task).
        self.domains: dict[str, int] = {"": 0}
        self.clocks = np.full(1, -math.inf)
        self._use(bundle)
        self.store = self._first_store()
        self._wire()

    def _first_store(self) -> StateStore:
        """The state store, or ConfigError naming the settings when its first rows do not fit in memory
        (`dynamic_history = 100000000000` ended `replay` and `consume` with numpy's allocation traceback). Its
        later growths (more keys) name them too (:class:`~anomaly.engine.state.StateMemoryError`)."""
        layout = self._layout()
        try:
            store = StateStore(layout)
        except StateMemoryError:
            raise ConfigError(
                f"the engine's per-key state does not fit in memory ({layout.bytes_per_key() / 2**30:,.1f} GiB a "
                f"key): {self._sizing()}"
            ) from None
        store.sizing = f"{self._sizing()}, and engine.max_keys = {self.config.max_keys} keys are held at most"
        return store

    def _sizing(self) -> str:
        """The settings that size a key's state, in words, for the errors of a store that does not fit."""
        sized = [f"engine.{n} = {getattr(self.config, n)}" for n in type(self.threshold).sized_by]
        return (
            f"engine.threshold {self.config.threshold} keeps {', '.join(sized) or 'no history'} scores a key"
        )

    # --- model -----------------------------------------------------------------------------------------------

    def _use(self, bundle: Bundle) -> None:
        self.settings = Settings.of(bundle, self.config)

    def __getattr__(self, name: str) -> Any:
        """The settings derived from the model in use read as the engine's own (`engine.window`,
        `engine.threshold`, `engine.static_threshold`, ...; see :class:`Settings`)."""
        if name == "settings":  # not set yet: no delegation loop
            raise AttributeError(name)
        return getattr(self.settings, name)

    def _wire(self) -> None:
        """(Re)build the parts over the current store and model."""
        store, config, counters, s = self.store, self.config, self.counters, self.settings
        self.ingest = Ingest(store, config, counters, s)
        self.levels = LevelTracker(store, config, counters, s)
        self.alerts = AlertLifecycle(store, config, counters, s, self.levels)
        self.reports = ReportBuffers(store, config, counters, s)
        self.scorer = BatchScorer(
            store, config, counters, s, levels=self.levels, alerts=self.alerts, reports=self.reports
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
        if self.config.max_alert_seconds > 0:  # seconds of gaps inside the open alert (not counted)
            extra.append((ALERT_GAP, (), "float64", "zero"))
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

    def reload(self, bundle: Bundle, retired: EngineOutput | None = None) -> bool:
        """Swap the model. Per-key state is kept when the architecture, features and state layout match, else
        reset. Returns True when state was kept. With `retired`, a reset first retires every key into it as an
        eviction does, under the model in use until then: readings scored but not yet reported as a short window
        each, an open alert closed with reason ``evicted`` (else such an alert would stay open forever
        downstream)."""
        same = bundle.arch == self.bundle.arch and bundle.features == self.bundle.features
        before = self.settings
        self._use(bundle)
        same = same and self._layout() == self.store.layout
        if same:
            self.counters["reloads_kept"] += 1
        else:
            if retired is not None:
                self.settings = before  # the parts and settings of the model that opened the alerts
                evicted = self.store.evict(0, None, lambda keys, rows: self._on_evict(keys, rows, retired))
                retired.evicted += evicted
                self.counters["evicted"] += len(evicted)
                self._use(bundle)
            self.store = self._first_store()
            self.counters["reloads_reset"] += 1
        self._wire()
        return same

    # --- clock domains ---------------------------------------------------------------------------------------

    @property
    def max_ts(self) -> float:
        """The newest event time reached, over every clock domain (a replay has one)."""
        return float(self.clocks.max())

    def clock(self, domain: str = "") -> float:
        """The event time reached in clock `domain` (-inf: none yet)."""
        i = self.domains.get(domain)
        return -math.inf if i is None else float(self.clocks[i])

    def reset_clock(self, domain: str) -> None:
        """Forget the event time reached in clock `domain` (-inf again): the daemon does it for a partition it is
        assigned, before restoring its checkpoint, so the partition's clock is the checkpoint's, not what this
        process reached when it owned the partition before (records a later owner may not have checkpointed)."""
        i = self.domains.get(domain)
        if i is not None:
            self.clocks[i] = -math.inf

    def _domain(self, name: str) -> int:
        """The index of clock domain `name`, created (clock -inf) if new."""
        i = self.domains.get(name)
        if i is None:
            i = self.domains[name] = len(self.domains)
            self.clocks = np.concatenate([self.clocks, [-math.inf]])
        return i

    def _message_domains(self, events: Sequence[Event] | Readings) -> int | np.ndarray:
        """The clock domain of every message of a call: one index for all (the common case), or one per
        message."""
        if not isinstance(events, Readings) or not events.domains:
            return 0
        runs = events.domain_runs()
        ids = [self._domain(name) for _, _, name in runs]
        if len(set(ids)) == 1:
            return ids[0]
        return np.repeat(np.asarray(ids, np.int64), [end - start for start, end, _ in runs])

    # --- bookkeeping -----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.store)

    def __contains__(self, key: object) -> bool:
        return key in self.store.slots

    def keys(self) -> list[str]:
        """The keys held, least recently used first."""
        return list(self.store.slots)

    def alerting_keys(self) -> list[str]:
        """The keys held with an open alert (``active_alerts`` of them), oldest alert first: by the alert's start
        (the event time in its id, kept in snapshots), then by key. The order depends on the open alerts only, not
        on how the keys came to be held (restore order, use), so a restarted process lists them alike."""
        a = self.store.arrays
        rows = np.flatnonzero(a["alert_open"])
        if not len(rows):
            return []
        # an open alert always has a start; were one NaN, it would sort last (by key) instead of breaking the order
        start = dict(zip(rows.tolist(), a["alert_start"][rows].tolist(), strict=True))
        found = [
            (start[row] != start[row], 0.0 if start[row] != start[row] else start[row], key)
            for key, row in self.store.slots.items()
            if row in start
        ]
        return [key for *_, key in sorted(found)]

    def alert_open(self, key: str) -> bool:
        """Whether ``key`` is held with an open alert (False for a key not held)."""
        row = self.store.slots.get(key)
        return row is not None and bool(self.store.arrays["alert_open"][row])

    def drop(self, keys: Iterable[str]) -> int:
        return self.store.drop(keys)

    def compact(self, recent_peak: bool = False) -> int:
        """Shrink the state store to the keys held when a peak (a call of many new keys, a restore over
        ``max_keys``) left it larger than they need; returns the rows given back (see :meth:`StateStore.compact`).
        Between calls only: the daemon calls it when its stream goes idle, and with ``recent_peak`` (sized for
        the most keys held at once lately, which steady churn needs again at every call) at most every
        ``trim_interval_s`` while it is busy. Scoring and snapshots are unchanged."""
        return self.store.compact(recent_peak=recent_peak)

    @property
    def active_alerts(self) -> int:
        # rows without a key are reset (alert_open False), so the whole column counts only held keys
        return int(np.count_nonzero(self.store.arrays["alert_open"]))

    def snapshot(self, keys: Iterable[str] | None = None, domain: str | None = None) -> bytes:
        """State of `keys` (all if None) as bytes; restore() of them continues bit for bit. The header holds the
        event time reached in each clock domain ("clocks") and each key's domain: with `domain` (the daemon's
        checkpoint of one partition, whose keys are all of that domain) that one domain and its clock only,
        else every domain's clock and, unless every key is of the default domain, the domain of each key
        ("key_domains"). "max_ts" (the newest of those clocks) is what an engine without domains restores."""
        names = list(self.store.slots) if keys is None else [k for k in keys if k in self.store.slots]
        meta: dict[str, Any] = {"model_version": self.bundle.version}
        if domain is not None:
            meta["max_ts"] = self.clock(domain)
            meta["clocks"] = {domain: meta["max_ts"]}
            meta["domain"] = domain
        else:
            meta["max_ts"] = self.max_ts
            meta["clocks"] = dict(zip(self.domains, self.clocks.tolist(), strict=True))
            slots = self.store.slots
            ids = self.store.arrays["domain"][[slots[k] for k in names]]
            if ids.any():
                by_id = list(self.domains)
                meta["key_domains"] = [by_id[i] for i in ids.tolist()]
        return self.store.snapshot(names, meta)

    def settings_difference(self, data: bytes | Snapshot) -> str | None:
        """What differs when a snapshot of this model's dimensions does not restore for other [engine] settings
        that shape per-key state (see :meth:`StateStore.settings_difference`); None otherwise."""
        return self.store.settings_difference(data)

    @staticmethod
    def read(data: bytes) -> Snapshot:
        """A snapshot read once, for :meth:`settings_difference` and :meth:`restore` (the daemon checks every
        assigned checkpoint, then restores them); StateError saying why it cannot be read (corrupted, or another
        state format; see :meth:`StateStore.read_snapshot`)."""
        return StateStore.read_snapshot(data)

    def restore(self, data: bytes | Snapshot, domain: str | None = None) -> list[str]:
        """Restore a snapshot's keys (its bytes, or as :meth:`read` read them) and the event time reached in
        their clock domains (a clock only moves forward). A snapshot from before clock domains (one "max_ts")
        puts its keys in `domain`: the daemon names the partition whose checkpoint it is, whose clock then starts
        at its keys' newest reading (that "max_ts" was the newest of every partition); without `domain`, the
        default domain "" starts at "max_ts", as before."""
        snap = data if isinstance(data, Snapshot) else StateStore.read_snapshot(data)
        keys = self.store.restore(snap)
        meta = snap.header["meta"]
        slots = self.store.slots
        rows = np.fromiter(map(slots.__getitem__, keys), np.int64, len(keys))
        clocks = meta.get("clocks")
        if clocks is None and domain is not None:  # one partition's checkpoint from before clock domains
            # its "max_ts" is every partition's newest: its own is its keys' newest reading (exact unless the
            # key that read it was evicted since for the key cap)
            seen = self.store.arrays["seen"][rows]
            clocks = {domain: float(np.fmax.reduce(seen)) if len(seen) else -math.inf}
        elif clocks is None:  # written before clock domains
            clocks = {"": meta.get("max_ts", -math.inf)}
        for name, ts in clocks.items():
            i = self._domain(str(name))
            self.clocks[i] = max(self.clocks[i], float(ts))
        per_key = meta.get("key_domains")
        if per_key is not None and len(per_key) == len(keys):
            self.store.arrays["domain"][rows] = [self._domain(str(n)) for n in per_key]
        else:
            self.store.arrays["domain"][rows] = self._domain(str(meta.get("domain", domain or "")))
        return keys

    # --- processing ------------------------------------------------------------------------------------------

    def process(self, events: Sequence[Event] | Readings) -> EngineOutput:
        """Ingest, score and evict. Keys expire (TTL) between messages, as if every message came in its own
        call: when a call's event time could expire a key mid-call, it is processed in parts
        (:func:`anomaly.engine.expiry.in_parts`). All or nothing when the state store cannot grow for the
        call's new keys (:class:`~anomaly.engine.state.StateMemoryError`): nothing of the call is applied."""
        if not isinstance(events, Readings):
            events = Readings.from_regular_events(events, self.n_features) or events
        # rows for the call's new keys before anything changes: a store that cannot grow fails the whole call
        self.store.reserve(events.names if isinstance(events, Readings) else [ev.key for ev in events])
        dom = self._message_domains(events)  # first: it may add a domain (a clock)
        if len(events) > 1 and self._may_expire(events, dom):
            return in_parts(events, self.process)
        out = EngineOutput()
        queues: dict[int, deque] = {}  # keys that took the per-event path: units and Gap markers
        row_keys: dict[int, str] = {}
        regular: list[Pieces] = []  # keys that took the columnar path
        self.ingest.batch(events, self.clocks, dom, queues, row_keys, regular, out)
        if queues:
            fill = self.store.arrays["rep_fill"] if self.per_reading else None
            regular.insert(0, from_queues(queues, fill, self.window, self.n_features))
        pieces = Pieces.concat(regular, self.n_features)
        key_of = row_keys.__getitem__
        for resets, gaps, calls in pieces.rounds():
            if len(resets):
                self.reports.flush(resets, list(map(key_of, resets.tolist())), out)
                self.store.reset_model_state(resets)
                self.levels.after_gap(resets)
                self.alerts.after_gap(resets, gaps)
            for rows, x, ts in calls:
                self.scorer.score(rows, x, ts, list(map(key_of, rows.tolist())), out)
        ttl = self.config.ttl_seconds
        oldest: float | np.ndarray | None = (
            None  # keys last seen before this expire: per domain, its clock - TTL
        )
        if ttl > 0:
            clocks = self.clocks
            oldest = float(clocks[0]) - ttl if len(clocks) == 1 else (clocks - ttl)[self._key_domains()]
        out.evicted = self.store.evict(
            self.config.max_keys, oldest, lambda keys, rows: self._on_evict(keys, rows, out, oldest)
        )
        self.counters["evicted"] += len(out.evicted)
        return out

    def _may_expire(self, events: Sequence[Event] | Readings, dom: int | np.ndarray | None = None) -> bool:
        """Whether this call must be processed in parts (:func:`anomaly.engine.expiry.may_expire`); `dom`: the
        messages' clock domains (:meth:`_message_domains`)."""
        if dom is None:
            dom = self._message_domains(events)
        return may_expire(events, self.store, self.clocks, self.config.ttl_seconds, dom)

    def _key_domains(self) -> np.ndarray:
        """Each row's clock domain (rows without a key: the default domain)."""
        return self.store.arrays["domain"]

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

    def _on_evict(
        self,
        keys: list[str],
        rows: np.ndarray,
        out: EngineOutput,
        oldest: float | np.ndarray | None = None,
    ) -> None:
        """Keys about to be dropped (TTL, key cap): the readings scored on arrival that wait for their report
        window are reported now, as a short ScoredWindow each (as `flush` does at the end of a replay), and an
        open alert is closed, so nothing decided is lost and no alert is left open forever downstream.

        The close's `at`: for a key that expired (last seen before `oldest`, its domain's clock - TTL), the
        moment its TTL passed, last seen + engine.ttl_seconds, so it does not depend on how the input was cut
        into calls (a replay's batch, a daemon's poll) and is never after the key's next reading; for any other
        (the key cap, a reload that resets state: no expiry moment), the event time reached in its domain."""
        a = self.store.arrays
        if self.per_reading:
            waiting = np.flatnonzero(a["rep_fill"][rows])
            if len(waiting):
                self.reports.flush(rows[waiting], [keys[i] for i in waiting.tolist()], out)
        seen, ttl = a["seen"], self.config.ttl_seconds
        for i in np.flatnonzero(a["alert_open"][rows]).tolist():
            row = int(rows[i])
            at = float(self.clocks[a["domain"][row]])  # the event time reached in the key's domain
            if oldest is not None and seen[row] < (oldest[row] if isinstance(oldest, np.ndarray) else oldest):
                at = min(at, float(seen[row]) + ttl)  # expired: when its TTL passed
            self.alerts.close_on_evict(keys[i], row, at, out)

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
from anomaly.engine.state import Layout, StateStore
from anomaly.engine.types import REJECT_REASONS, EngineOutput, Event, Readings
from anomaly.thresholds import ALERT_LENGTH

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
        self.max_ts = -math.inf
        self._use(bundle)
        self.store = StateStore(self._layout())
        self._wire()

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
        call: when a call's event time could expire a key mid-call, it is processed in parts
        (:func:`anomaly.engine.expiry.in_parts`)."""
        if not isinstance(events, Readings):
            events = Readings.from_regular_events(events, self.n_features) or events
        if len(events) > 1 and self._may_expire(events):
            return in_parts(events, self.process)
        out = EngineOutput()
        queues: dict[int, deque] = {}  # keys that took the per-event path: units and RESET markers
        row_keys: dict[int, str] = {}
        regular: list[Pieces] = []  # keys that took the columnar path
        self.max_ts = self.ingest.batch(events, self.max_ts, queues, row_keys, regular, out)
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
        """Whether this call must be processed in parts (:func:`anomaly.engine.expiry.may_expire`)."""
        return may_expire(events, self.store, self.max_ts, self.config.ttl_seconds)

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

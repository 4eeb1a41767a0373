"""File and in-memory sinks used by `anomaly replay` (and by tests)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import IO

import numpy as np

from anomaly.engine.types import EngineOutput
from anomaly.runner import Batch


class JsonlAlertSink:
    """Alerts as JSON lines in decision-time order: by `at`, then key, each key's records in the order the engine
    emitted them (an open before its close). The engine emits a call's alerts key by key, so in that order the
    file changed with `replay.batch_readings` (7 or 4096 readings per call: the same records, other lines); sorted,
    it is the same file whatever the batching. The records are written when the sink closes (the file is renamed
    into place only then anyway); `alerts` holds them, in the file's order once closed."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fh: IO[str] = self.path.open("w", encoding="utf-8")
        self.alerts: list[dict] = []

    def write(self, out: EngineOutput, batch: Batch) -> None:
        self.alerts.extend(alert.to_json() for alert in out.alerts)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self._fh.closed:
            return
        # stable: a key's records keep their order, as a key's `at` never goes back (open, normal, level_shift and
        # eviction closes, gaps, flush: test_alerts_jsonl_keeps_each_keys_records_in_emission_order)
        self.alerts.sort(key=lambda r: (r["at"], r["key"]))
        try:
            self._fh.writelines(json.dumps(record) + "\n" for record in self.alerts)
        finally:
            self._fh.close()


class JsonlRejectionSink:
    """Dead letters of a replay: every refused reading or event with key, reason and source position."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fh: IO[str] = self.path.open("w", encoding="utf-8")
        self.count = 0
        self._at: dict[str, list[tuple[np.ndarray, str]]] = defaultdict(list)

    def reasons_at(self, key: str, timestamps: np.ndarray, scored: np.ndarray | None = None) -> np.ndarray:
        """Per row of `key` (its readings' `timestamps`, in source order), the reason that reading was refused
        ("" where none was): what the report marks as holes. Rows are matched by timestamp *and count*: where
        several rows share a timestamp (duplicates) only as many are marked as were refused there, unscored
        rows first (`scored`: whether each row was scored), then the later ones (a duplicate is refused after
        the reading it repeats was taken)."""
        out = np.full(len(timestamps), "", dtype=object)
        records = self._at.get(key, [])
        if not records or not len(timestamps):
            return out
        ts = np.asarray(timestamps, np.float64)
        pos = np.arange(len(ts))
        done = np.zeros(len(ts), bool) if scored is None else np.asarray(scored, bool)
        order = np.lexsort((-pos, done, ts))  # by timestamp; within one, unscored first, then latest first
        ordered = ts[order]
        used: dict[int, int] = {}
        for refused, reason in records:
            values, counts = np.unique(np.asarray(refused, np.float64), return_counts=True)
            starts = np.searchsorted(ordered, values, "left").tolist()
            ends = np.searchsorted(ordered, values, "right").tolist()
            for start, end, count in zip(starts, ends, counts.tolist(), strict=True):
                first = start + used.get(start, 0)
                rows = order[first : min(end, first + count)]
                out[rows] = reason
                used[start] = first + len(rows) - start
        return out

    def write(self, out: EngineOutput, batch: Batch) -> None:
        for r in out.rejections:
            self.count += r.count
            if r.timestamps is not None:
                self._at[r.key].append((np.asarray(r.timestamps), r.reason))
            ref = r.ref if isinstance(r.ref, str | int | float | type(None)) else str(r.ref)
            self._fh.write(
                json.dumps(
                    {
                        "key": r.key,
                        "reason": r.reason,
                        "count": r.count,
                        "whole": r.whole,
                        "ref": ref,
                        "detail": r.detail,
                    }
                )
                + "\n"
            )

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class WindowCollector:
    """Keeps every scored window in memory, per key, to build per-point result tables afterwards."""

    FIELDS = ("timestamps", "errors", "scores", "thresholds", "anomalous", "alert_open", "decided_at")

    def __init__(self) -> None:
        self.by_key: dict[str, dict[str, list[np.ndarray]]] = defaultdict(
            lambda: {f: [] for f in self.FIELDS}
        )

    def write(self, out: EngineOutput, batch: Batch) -> None:
        for w in out.windows:
            d = self.by_key[w.key]
            for f in self.FIELDS:
                d[f].append(np.asarray(getattr(w, f)))

    def arrays(self, key: str) -> dict[str, np.ndarray]:
        d = self.by_key.get(key)
        if not d or not d["timestamps"]:
            return {f: np.zeros(0) for f in self.FIELDS}
        return {f: np.concatenate(v) for f, v in d.items()}

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

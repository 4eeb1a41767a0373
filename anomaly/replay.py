"""Backtests: replay CSV series through the engine (the same runner loop as the daemon) and write results.

Readings of all series are merged in timestamp order and cut into batches; within a batch each key's readings
form one block event. Because per-key results do not depend on how readings are grouped, a replay predicts
exactly what the daemon computes for the same readings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomaly import atomic, evaluation, quality
from anomaly.atomic import atomic_path
from anomaly.bundle import Bundle
from anomaly.config import PipelineConfig
from anomaly.data import Series, merge_keys, plural, sampling_interval, screen_readings
from anomaly.engine import Engine, EngineOutput, Event, Rejection
from anomaly.errors import DataError, OutputError
from anomaly.runner import Batch, Observer, run
from anomaly.sinks.files import JsonlAlertSink, JsonlRejectionSink, WindowCollector


@dataclass
class ReplayResult:
    frames: dict[str, pd.DataFrame]  # per-point results per series key
    alerts: list[dict[str, Any]]
    summary: dict[str, Any]
    out_dir: Path
    reports: list[Path] = field(default_factory=list)
    engine: Engine | None = None
    quality: dict[str, quality.Quality] = field(default_factory=dict)  # model and baselines, with labels


def merged_batches(
    series: Sequence[Series], batch_readings: int, files: dict[str, np.ndarray] | None = None
) -> Iterator[Batch]:
    """All readings in (timestamp, series order), cut every `batch_readings`; one event per key per batch, its
    ref a :class:`Rows` (`files`: the file of each reading of a key joined from several, by key)."""
    ts = np.concatenate([s.timestamps for s in series]) if series else np.zeros(0)
    which = np.concatenate([np.full(len(s), i) for i, s in enumerate(series)]) if series else np.zeros(0, int)
    index = np.concatenate([np.arange(len(s)) for s in series]) if series else np.zeros(0, int)
    order = np.lexsort((index, which, ts))
    for lo in range(0, len(order), batch_readings):
        chunk = order[lo : lo + batch_readings]
        events = []
        for i, at in positions_by_key(which[chunk]):
            rows = index[chunk[at]]
            s = series[i]
            events.append(
                Event(s.key, s.timestamps[rows], s.values[rows], ref=Rows(s, rows, (files or {}).get(s.key)))
            )
        yield Batch(events, messages=len(chunk))


def positions_by_key(w: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(key, positions in `w` of that key, in order) for each key of `w` (integers), keys ascending: what
    ``for i in np.unique(w): np.flatnonzero(w == i)`` gives, from one stable sort instead of a scan of every
    reading per key (a batch of 5,000 keys compared each of its readings 5,000 times)."""
    by_key = np.argsort(w, kind="stable")
    keys = w[by_key]
    starts = np.flatnonzero(np.diff(keys)) + 1
    for at in np.split(by_key, starts) if len(w) else []:
        yield int(w[at[0]]), at


@dataclass(frozen=True, eq=False)
class Rows:
    """The ref of a replayed event: its readings' positions in their series (and the file of each reading of a
    series joined from several files). Echoed in the engine's rejections, it lets :func:`refused_rows` name the
    file lines of just the refused readings."""

    series: Series
    positions: np.ndarray
    files: np.ndarray | None = None  # the file of each reading of the series, when it has several

    def __str__(self) -> str:  # where nothing finer is known: the event's first reading
        return self.locate(self.positions[:1])

    def locate(self, positions: np.ndarray) -> str:
        """`FILE:LINE` of the readings at `positions` (lines joined by commas, files by '; '); `FILE:POSITION`
        in the series when its lines are unknown (a series built in code)."""
        s = self.series
        where = s.lines if s.lines is not None else np.arange(len(s))
        by_file: dict[str, list[str]] = {}
        for p in np.asarray(positions, np.int64).tolist():
            name = s.source if self.files is None else str(self.files[p])
            by_file.setdefault(name, []).append(str(int(where[p])))
        return "; ".join(f"{name}:{','.join(lines)}" for name, lines in by_file.items())


def files_of(parts: Sequence[Series]) -> dict[str, np.ndarray]:
    """The file of each reading of every key found in several files, in the order :func:`merge_keys` joins them."""
    groups: dict[str, list[Series]] = {}
    for s in parts:
        groups.setdefault(s.key, []).append(s)
    out = {}
    for key, group in groups.items():
        if len(group) > 1:
            ts = np.concatenate([s.timestamps for s in group])
            names = np.concatenate([np.full(len(s), s.source, dtype=object) for s in group])
            out[key] = names[np.argsort(ts, kind="stable")]
    return out


class FileRowRejections(JsonlRejectionSink):
    """`rejections.jsonl` of a replay: each record's ref names the file lines of the readings it refused
    (`dups.csv:7`), not the first reading of the block they came in."""

    def write(self, out: EngineOutput, batch: Batch) -> None:
        if any(isinstance(r.ref, Rows) for r in out.rejections):
            rejections = [
                dataclasses.replace(r, ref=r.ref.locate(refused_rows(r.ref, r)))
                if isinstance(r.ref, Rows)
                else r
                for r in out.rejections
            ]
            out = dataclasses.replace(out, rejections=rejections)
        super().write(out, batch)


def refused_rows(ref: Rows, r: Rejection) -> np.ndarray:
    """Positions (in `ref.series`) of the readings rejection `r` refused out of the event `ref` describes: those
    at its refused timestamps; among readings at the same time, the ones a refusal of that kind takes (a
    non-finite value: those with one; a repeat or a step back in time: the latest, as the earlier was taken)."""
    s, pos = ref.series, ref.positions
    if r.timestamps is None or len(r.timestamps) != r.count:
        return pos
    ts = s.timestamps[pos]
    bad_value = ~np.isfinite(s.values[pos]).all(axis=1)
    taken = np.zeros(len(pos), bool)
    out = []
    for t in np.asarray(r.timestamps, np.float64).tolist():
        same = np.isnan(ts) if np.isnan(t) else ts == t
        free = np.flatnonzero(same & ~taken)
        if r.reason == "non_finite" and bad_value[free].any():
            free = free[bad_value[free]]
        if not len(free):
            return pos
        i = free[0] if r.reason == "non_finite" else free[-1]
        taken[i] = True
        out.append(pos[i])
    return np.sort(np.asarray(out, np.int64))


# The columns of a per-point table (scores.csv) that are not a feature's raw values.
RESULT_NAMES = (
    "key",
    "timestamp",
    "time",
    "label",
    "error",
    "score",
    "threshold",
    "anomalous",
    "alert_open",
    "scored",
    "decided_at",
    "predicted",
    "rejected",
)


def value_columns(features: Sequence[str]) -> list[str]:
    """The column of each feature's raw values in a per-point table: the feature's name, or `value_NAME` when
    the name is a result column's (a sensor called `error`, `score` or `key`), so a result never overwrites a
    reading nor a reading a result (`value_value_NAME` if `value_NAME` is a feature too)."""
    taken = set(RESULT_NAMES) | set(features)
    out = []
    for f in features:
        name = f
        if f in RESULT_NAMES:
            name = f"value_{f}"
            while name in taken:
                name = f"value_{name}"
            taken.add(name)
        out.append(name)
    return out


def point_frame(s: Series, features: Sequence[str], got: dict[str, np.ndarray], predict: str) -> pd.DataFrame:
    """Per-point table of one series: raw values (columns named by :func:`value_columns`), label, and the
    engine's results (NaN where unscored)."""
    n = len(s)
    cols: dict[str, Any] = {
        "key": s.key,
        "timestamp": s.timestamps,
        # to the microsecond it prints: a float64 of epoch seconds is within 0.3 us of the time it stands for,
        # and truncating it printed a reading at 20.300 s as 20.299999
        "time": pd.to_datetime(s.timestamps, unit="s", utc=True)
        .round("us")
        .strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }
    for j, name in enumerate(value_columns(features)):
        cols[name] = s.values[:, j]
    if s.labels is not None:
        cols["label"] = s.labels
    res = {
        "error": np.full(n, np.nan, np.float32),
        "score": np.full(n, np.nan, np.float32),
        "threshold": np.full(n, np.nan, np.float32),
        "anomalous": np.zeros(n, bool),
        "alert_open": np.zeros(n, bool),
        "scored": np.zeros(n, bool),
        "decided_at": np.full(n, np.nan),  # event time of the reading whose arrival decided this point
    }
    if len(got["timestamps"]):
        pos = result_rows(s.timestamps, got["timestamps"])
        for name, src in (
            ("error", "errors"),
            ("score", "scores"),
            ("threshold", "thresholds"),
            ("anomalous", "anomalous"),
            ("alert_open", "alert_open"),
            ("decided_at", "decided_at"),
        ):
            res[name][pos] = got[src]
        res["scored"][pos] = True
    cols.update(res)
    cols["predicted"] = res["alert_open"] if predict == "alert" else res["anomalous"]
    return pd.DataFrame(cols)


def result_rows(timestamps: np.ndarray, result_times: np.ndarray) -> np.ndarray:
    """Row of a series (`timestamps`, in time order) for each of its per-reading results (`result_times`, in the
    order the engine emitted them). A timestamp the engine took several times (duplicate_policy=keep) has one
    result per reading: the k-th result at a time goes to the k-th row at it, not all to the first row."""
    t = np.asarray(result_times, np.float64)
    order = np.argsort(t, kind="stable")
    sorted_t = t[order]
    rank = np.empty(len(t), np.int64)
    rank[order] = np.arange(len(t)) - np.searchsorted(sorted_t, sorted_t, side="left")
    return np.searchsorted(timestamps, t, side="left") + rank


def replay(
    bundle: Bundle,
    series: Sequence[Series],
    cfg: PipelineConfig,
    out_dir: str | Path,
    *,
    observer: Observer | None = None,
    progress: bool = False,
    engine: Engine | None = None,
    write_plots: bool | None = None,
    warnings: Sequence[str] = (),
) -> ReplayResult:
    """Replay `series` through the engine into `out_dir`. `warnings`, the caller's about the data (look-alike
    keys, a --dayfirst that had no effect), go into `summary.json`'s "warnings" after the run's own, and so to stderr with them."""
    origins = files_of(series)  # which file each reading of a key found in several comes from
    series = merge_keys(series)  # a key found in several files is one stream, as in the daemon
    skip = cfg.replay.evaluate_after
    labelled = [len(s) for s in series if s.labels is not None]
    if skip and labelled and max(labelled) <= skip:
        raise DataError(
            f"replay.evaluate_after (--evaluate-after) {skip} leaves no reading to evaluate: the longest labelled "
            f"series has {max(labelled)} readings"
        )
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot write to the output folder {out}: {atomic.reason(exc)}", path=str(out)
        ) from None
    with only_writer(out):
        return _replay(bundle, series, cfg, out, observer, progress, engine, write_plots, origins, warnings)


@contextlib.contextmanager
def only_writer(out: Path) -> Iterator[None]:
    """Hold a lock on the folder `out` while a replay writes into it: a second replay into the same folder is
    refused at once, instead of each deleting and replacing the other's files into a mix of two runs. The lock
    is the kernel's (flock on the folder), so a killed replay never leaves a stale one and no lock file."""
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(
                f"another replay is writing to {out}; wait for it to finish or give another --out",
                path=str(out),
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _replay(
    bundle: Bundle,
    series: Sequence[Series],
    cfg: PipelineConfig,
    out: Path,
    observer: Observer | None,
    progress: bool,
    engine: Engine | None,
    write_plots: bool | None,
    origins: dict[str, np.ndarray] | None = None,
    warnings: Sequence[str] = (),
) -> ReplayResult:
    clear_previous(out)
    engine = engine or Engine(bundle, cfg.engine)
    collector = WindowCollector()
    # every file is written to a temporary name and renamed when complete: a run that fails or is interrupted
    # leaves complete files or none, never a truncated one
    with contextlib.ExitStack() as files:
        alerts = JsonlAlertSink(files.enter_context(atomic_path(out / "alerts.jsonl", "alerts file")))
        files.callback(alerts.close)  # closed before the rename (callbacks run last in, first out)
        rejections = FileRowRejections(
            files.enter_context(atomic_path(out / "rejections.jsonl", "rejections file"))
        )
        files.callback(rejections.close)
        totals = _run(engine, series, cfg, [collector, alerts, rejections], observer, progress, origins)
    frames = {
        s.key: point_frame(s, bundle.features, collector.arrays(s.key), cfg.replay.predict) for s in series
    }
    for key, f in frames.items():
        f["rejected"] = rejections.reasons_at(key, f["timestamp"].to_numpy(), f["scored"].to_numpy())
    write_scores(out, frames, cfg.replay.parquet)
    judged = evaluated_part(frames, cfg.replay.evaluate_after)
    per_series = {}
    for key, f in judged.items():
        if "label" in f:
            per_series[key] = evaluation.evaluate(
                f["label"].to_numpy(),
                f["predicted"].to_numpy(),
                f["timestamp"].to_numpy(),
                f["decided_at"].to_numpy(),
                engine.max_gap,  # a gap that reset the key is no time observed: not in false alerts per day
            )
    opened, closed = engine.counters["alerts_opened"], engine.counters["alerts_closed"]
    coverage = coverage_of(series, frames, rejections.count)
    coverage["cold_only"] = cold_only(series, engine)
    summary: dict[str, Any] = {
        "model_version": bundle.version,
        "series": len(series),
        "totals": {
            "messages": totals["messages"],
            "readings_accepted": totals["readings"],
            "windows_scored": totals["windows"],
            "alert_events": totals["alerts"],
            "rejection_records": totals["rejected"],
        },
        "coverage": coverage,
        "unscored_readings": coverage["unscored"],
        "rejected_readings": rejections.count,
        "alerts_raised": opened,
        "alerts_closed": closed,
        "alert_events": len(alerts.alerts),
        "engine_counters": dict(engine.counters),
        "predict": cfg.replay.predict,
        "evaluate_after": cfg.replay.evaluate_after,
        "label": cfg.data.label,
        "threshold": cfg.engine.threshold,
        "static_threshold": engine.static_threshold,
        "max_gap_seconds": engine.max_gap,
        "warnings": coverage_warnings(series, coverage, engine, bundle),
    }
    if not any(
        w.startswith("nothing was scored") for w in summary["warnings"][:1]
    ):  # (then nothing is evaluated)
        summary["warnings"] += label_warnings(judged)
        summary["warnings"] += unevaluated_warnings(frames, cfg.replay.evaluate_after)
    summary["warnings"] += repeated_hour_warnings(frames)
    summary["warnings"] += list(warnings)
    compared: dict[str, quality.Quality] = {}
    if per_series:
        summary["metrics"] = evaluation.pool(per_series.values())
        summary["evaluated"] = evaluated_coverage([judged[key] for key in per_series])
        summary["per_series"] = {
            k: {m: v for m, v in r.items() if m != "counts"} for k, r in per_series.items()
        }
        labelled = [s for s in series if s.key in per_series]
        for name, scorer in quality.scorer_bundles(bundle).items():
            got = (
                frames
                if name == "model"
                else quality.score_series(
                    scorer, labelled, cfg, progress=f"baseline {name}" if progress else None
                )
            )
            got = evaluated_part(got, cfg.replay.evaluate_after)
            compared[name] = quality.assess(name, [quality.ScorerPoints.of(got[s.key]) for s in labelled])
        summary["quality"] = quality.compare(compared)
    plotting = cfg.replay.plots if write_plots is None else write_plots
    by_key: dict[str, list[dict[str, Any]]] = {}
    for a in alerts.alerts:  # each plot is handed its key's alerts, not every alert of the run
        by_key.setdefault(str(a.get("key")), []).append(a)
    # no reading of a key without a finite time has a place to be plotted at
    plotted = [k for k, f in frames.items() if np.isfinite(f["timestamp"].to_numpy(np.float64)).any()]
    chosen = reported_keys(plotted, by_key, cfg.replay.max_reports) if plotting else []
    if plotting and len(chosen) < len(plotted):
        summary["warnings"].append(
            f"reports drawn for {len(chosen):,} of {len(plotted):,} series (replay.max_reports = "
            f"{cfg.replay.max_reports}), those with the most alerts first; every series is in scores.csv"
        )
    atomic.write_text(out / "summary.json", json.dumps(summary, indent=2, default=float), "summary")
    reports: list[Path] = []
    if chosen:
        from anomaly.report import plot_series

        keep = [
            "key",
            "timestamp",
            *value_columns(bundle.features),
            "label",
            "error",
            "score",
            "threshold",
            "anomalous",
            "alert_open",
            "rejected",
        ]
        names = report_names(list(frames))
        for key in chosen:
            f = frames[key]
            path = out / names[key]
            plot_series(f[[c for c in keep if c in f.columns]], by_key.get(key, []), path, title=f"{key}")
            reports.append(path)
    return ReplayResult(frames, alerts.alerts, summary, out, reports, engine, compared)


def write_scores(out: Path, frames: dict[str, pd.DataFrame], parquet: bool) -> None:
    """scores.csv (and scores.parquet): every series' per-point table, one after the other. Tables of the same
    columns and types (those of one run's files, as a rule) are written one by one, as their concatenation
    would be written (the same bytes), without building it: a second copy of every result, hundreds of MB for
    a file of millions of readings. Otherwise, and for Parquet, the concatenation is written."""
    tables = list(frames.values())
    alike = bool(tables) and all(
        list(t.columns) == list(tables[0].columns) and list(t.dtypes) == list(tables[0].dtypes)
        for t in tables
    )
    points = (
        None if alike and not parquet else pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    )
    with atomic_path(out / "scores.csv", "scores file") as tmp:
        if points is not None:
            points.to_csv(tmp, index=False)
        else:
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                for i, t in enumerate(tables):
                    t.to_csv(fh, index=False, header=i == 0)
    if points is not None and parquet:
        with atomic_path(out / "scores.parquet", "scores file") as tmp:
            points.to_parquet(tmp, index=False)


def reported_keys(keys: Sequence[str], alerts: dict[str, list[dict[str, Any]]], limit: int) -> list[str]:
    """The keys that get a PNG report, at most `limit` of them: all when they fit; else those with the most
    alert records first (ties in `keys`' order), kept in `keys`' order. A file of 5,000 devices drew 5,000
    plots, about a second each, for over an hour."""
    if len(keys) <= limit:
        return list(keys)
    rank = sorted(range(len(keys)), key=lambda i: (-len(alerts.get(keys[i], [])), i))
    return [keys[i] for i in sorted(rank[:limit])]


def _run(
    engine: Engine,
    series: Sequence[Series],
    cfg: PipelineConfig,
    sinks: list[Any],
    observer: Observer | None,
    progress: bool,
    files: dict[str, np.ndarray] | None = None,
) -> dict[str, int]:
    batches: Any = merged_batches(series, cfg.replay.batch_readings, files)
    bar = None
    if progress:
        from tqdm import tqdm

        # disable=None: no bar when stderr is not a terminal (no carriage-return frames in logs)
        bar = tqdm(total=sum(len(s) for s in series), desc="replay", unit="reading", disable=None)
    totals = run(
        engine,
        batches,
        sinks,
        observer=observer,
        on_batch=(lambda b, o: bar.update(b.messages)) if bar is not None else None,
        finish=True,  # the files end: report readings still waiting for their report window
    )
    if bar is not None:
        bar.close()
    return totals


OUTPUTS = ("scores.csv", "scores.parquet", "alerts.jsonl", "rejections.jsonl", "summary.json")


def evaluated_part(frames: dict[str, pd.DataFrame], skip: int) -> dict[str, pd.DataFrame]:
    """Each series' per-point frame without its first `skip` readings (time order), the part a model trained
    on (`--train-rows`); series with nothing left are not evaluated. Predictions were made causally over the
    whole series, so cutting afterwards changes what is counted, never what was decided."""
    if skip <= 0:
        return frames
    return {key: f.iloc[skip:] for key, f in frames.items() if len(f) > skip}


def evaluated_coverage(frames: Sequence[pd.DataFrame]) -> dict[str, int]:
    """The readings the metrics count (labelled series, past --evaluate-after): how many, how many of them hold
    the last decision unscored, and how many of those were refused."""
    readings = int(sum(len(f) for f in frames))
    unscored = int(sum(int((~f["scored"].astype(bool)).sum()) for f in frames))
    rejected = int(sum(int((f["rejected"] != "").sum()) for f in frames))
    return {"readings": readings, "unscored": unscored, "rejected": rejected}


def clear_previous(out: Path) -> None:
    """Remove what an earlier replay wrote into `out` (only those file names), so no stale report of another
    run is left beside the new ones, with the temporary files of a replay that was killed while writing them."""
    names = [*OUTPUTS, *(p.name for p in out.glob("report-*.png"))]
    stale = [out / name for name in names] + [
        t for name in names for t in atomic.stray_temporaries(out, name)
    ]
    stale += atomic.stray_temporaries(out, "report-*.png")
    try:
        for path in stale:
            if path.is_file():
                path.unlink()
    except OSError as exc:
        raise OutputError(
            f"cannot write to the output folder {out}: {exc.strerror or exc}", path=str(out)
        ) from None


def coverage_of(series: Sequence[Series], frames: dict[str, pd.DataFrame], rejected: int) -> dict[str, Any]:
    total = int(sum(len(s) for s in series))
    scored = int(sum(int(f["scored"].sum()) for f in frames.values()))
    return {
        "readings": total,
        "scored": scored,
        "rejected": rejected,
        "unscored": total - scored,
        "scored_fraction": round(scored / total, 6) if total else 0.0,
    }


def cold_only(series: Sequence[Series], engine: Engine) -> bool:
    """A forecast model scores every reading on arrival, but one with less than a window of history since its
    key's start or last gap reset is scored from a cold state and says nothing about anomalies. True when that
    is (as good as) every scored reading: every series is shorter than a window, or gaps reset the keys at
    half of the readings or more. Such a run counts as having scored nothing, though its readings have
    scores."""
    total = sum(len(s) for s in series)
    if not engine.per_reading or total == 0:
        return False
    return engine.counters["gap_resets"] >= total // 2 or all(len(s) < engine.window for s in series)


def coverage_warnings(
    series: Sequence[Series], coverage: dict[str, Any], engine: Engine, bundle: Bundle
) -> list[str]:
    """Why little or nothing was scored, in words a user can act on. The first warning of a run that scored
    nothing starts with "nothing was scored"; for a run whose scores all came from a cold state
    (``coverage["cold_only"]``) it says so, and how many readings that was."""
    total, unscored = coverage["readings"], coverage["unscored"]
    if total == 0:
        return ["nothing was scored: the files hold no readings"]
    w = bundle.window
    # the step between the readings the engine takes, as training learnt it (a file of 1-second rows whose one
    # sensor reports every minute, under nan_policy "reject", is a series of readings a minute apart to both)
    step = sampling_interval(
        screen_readings(series, engine.config.nan_policy, engine.config.duplicate_policy).series
    )
    trained = bundle.sampling_interval
    out = []
    if step is not None and trained is not None and not 0.1 <= step / trained <= 10:
        out.append(
            f"these files are sampled every {step:g} s but the model was trained on data sampled every "
            f"{trained:g} s; check the time unit (--time-unit) or the data"
        )
    resets = engine.counters["gap_resets"]
    cold = bool(coverage.get("cold_only"))
    gapped = gapped_series(series, engine.max_gap)
    if gapped and not cold and len(gapped) < len(series):  # (all of them: the run's own warning says why)
        named = ", ".join(
            f"{key!r} ({n} of {m} readings after a gap, median step {step:g} s)"
            for key, n, m, step in gapped[:3]
        )
        out.append(
            f"{len(gapped)} of {len(series)} series were reset by gaps longer than engine.max_gap_seconds = "
            f"{engine.max_gap:g} s at half of their readings or more, so those readings had less than a window "
            f"of history (cold scores, or none): {named}{', ...' if len(gapped) > 3 else ''}; series sampled "
            "this far apart need engine.max_gap_seconds above their step, or a model of their own"
        )
    rows: Counter[str] = Counter()
    for s in series:  # a key read from several files is one series
        rows[s.key] += len(s)
    reset = {key for key, *_ in gapped}
    short = [key for key, n in rows.items() if n < w and key not in reset]
    if short and len(short) < len(rows):  # (all of them: the run's own warning says why)
        out.append(
            f"{len(short)} of {len(rows)} series have fewer readings than the model window ({w}), so their "
            f"readings had less than a window of history (cold scores, or none): "
            f"{', '.join(f'{k!r} ({rows[k]} readings)' for k in short[:3])}{', ...' if len(short) > 3 else ''}"
        )
    if cold:
        unscored = total  # scores from a cold state: as good as nothing
    if unscored <= total // 2:
        return out
    if all(len(s) < w for s in series):
        why = f"every series is shorter than the model window ({w} readings); give each key at least {w}"
    elif coverage["rejected"] >= total // 2:
        why = f"{coverage['rejected']} of {total} readings were rejected (reasons in rejections.jsonl)"
    elif resets * w >= unscored // 2:
        median = "" if step is None else f"; the median step in these files is {step:g} s"
        why = (
            f"{plural(resets, 'gap')} longer than engine.max_gap_seconds = {engine.max_gap:g} s reset the keys"
            f"{median}; check the time unit (--time-unit) or set engine.max_gap_seconds"
        )
    else:
        why = "windows were cut short by gaps, rejections and series ends"
    if cold:
        return [
            f"nothing was scored from a full window: the forecast model scored {coverage['scored']:,} "
            "readings, each from a cold state (less than a window of history), which says nothing about "
            f"anomalies: {why}",
            *out,
        ]
    if coverage["scored"] == 0 or unscored == total:
        return [f"nothing was scored: {why}", *out]
    return [f"{unscored} of {total} readings ({unscored / total:.0%}) were not scored: {why}", *out]


def label_warnings(judged: dict[str, pd.DataFrame]) -> list[str]:
    """A run with labels of which none marks a reading anomalous (a label column empty or 0 in every evaluated
    row: a placeholder column, the labels in another column, or a normal-only file): its recall, F1 and event
    metrics are 0 by construction, which the table alone shows as a model that found nothing."""
    labelled = [f["label"].to_numpy() for f in judged.values() if "label" in f]
    if not labelled or any(y.any() for y in labelled):
        return []
    n = sum(len(y) for y in labelled)
    return [
        f"no evaluated reading is labelled anomalous (all {plural(n, 'label')} are 0 or empty): recall, F1 and "
        "the event metrics are 0 by construction, and only FAR and false alerts per day measure this run; if "
        "the labels are in another column or file, name it with --label or --labels"
    ]


def unevaluated_warnings(frames: dict[str, pd.DataFrame], skip: int) -> list[str]:
    """Labelled series that `--evaluate-after` leaves wholly out (a key that started late, or a short one): they
    were replayed but are in no metric, so their labelled readings and events are not counted, and the table of
    the others did not say so."""
    labelled = {k: f for k, f in frames.items() if "label" in f}
    left = {k: f for k, f in labelled.items() if len(f) <= skip}
    if skip <= 0 or not left:
        return []
    shown = ", ".join(f"{k!r} ({plural(len(f), 'reading')})" for k, f in list(left.items())[:10])
    more = f" and {len(left) - 10} more" if len(left) > 10 else ""
    anomalous = sum(int((f["label"].to_numpy() > 0).sum()) for f in left.values())
    return [
        f"{len(left)} of {len(labelled)} labelled series have no reading after the first {skip} (--evaluate-after), "
        f"so no metric counts them or their {plural(anomalous, 'anomalous label')}: {shown}{more}"
    ]


def repeated_hour_warnings(frames: dict[str, pd.DataFrame]) -> list[str]:
    """A series whose readings refused as repeated times (`duplicate_timestamp`, `time_backwards`) all fall in one
    hour, 2 or more of them: the repeated hour of local times written without an offset across the autumn
    daylight-saving change (the refusal alone says nothing of the cause, and the hour's second pass is lost)."""
    out = []
    for key, f in frames.items():
        if "rejected" not in f:
            continue
        again = f["rejected"].isin(("duplicate_timestamp", "time_backwards")).to_numpy()
        ts = f["timestamp"].to_numpy()[again]
        ts = ts[np.isfinite(ts)]
        if len(ts) >= 2 and ts.max() - ts.min() < 3600:
            lo, hi = (pd.Timestamp(t, unit="s").strftime("%Y-%m-%d %H:%M:%S") for t in (ts.min(), ts.max()))
            out.append(
                f"{plural(len(ts), 'reading')} of series {key!r} repeat earlier times within one hour ({lo} to "
                f"{hi}) and were refused: local times without a UTC offset across a daylight-saving change? "
                f"Write the times with their UTC offset ({lo.replace(' ', 'T')}+HH:MM) or in UTC"
            )
    return out


def gapped_series(series: Sequence[Series], max_gap: float) -> list[tuple[str, int, int, float]]:
    """(key, readings after a gap, readings, median step in seconds) of each series whose key is reset by a gap
    longer than `max_gap` at half of its readings or more: one sampled far slower than the others in a file
    (the bundle's gap rule follows the median step over all series), whose every score then comes from a
    cold state while the run as a whole looks scored."""
    out = []
    for s in series:
        steps = np.diff(s.timestamps)
        steps = steps[np.isfinite(steps)]
        after = int(np.sum(steps > max_gap))
        if len(steps) and after * 2 >= len(s):
            out.append((s.key, after, len(s), float(np.median(steps))))
    return out


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def report_names(keys: Sequence[str]) -> dict[str, str]:
    """Report file name per key: `report-KEY.png` with KEY's characters outside letters, digits and `-_.`
    replaced by `_`. Keys whose names would coincide (`a/b` and `a_b`, or `Pump` and `pump` on a file system
    that ignores case) each get the first 8 hex digits of their key's SHA-1 added, so no report overwrites
    another."""
    safe = {key: _safe(key) for key in keys}
    seen = Counter(name.casefold() for name in safe.values())
    return {
        key: f"report-{name}.png"
        if seen[name.casefold()] == 1
        else f"report-{name}-{hashlib.sha1(key.encode()).hexdigest()[:8]}.png"
        for key, name in safe.items()
    }

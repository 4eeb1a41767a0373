"""The SKAB benchmark (Skoltech Anomaly Benchmark) run through the streaming engine, scored as SKAB scores it.

Protocol (SKAB's own, see its ``core/utils.py``): each of the 34 labelled CSV files is one experiment; a model is
trained on the file's first 400 rows and predicts the remaining rows. Point predictions are compared with the
``anomaly`` column and TP/FP/FN/TN are pooled over all files before F1, FAR and MAR are computed
(:mod:`anomaly.evaluation`). Here every file gets its own bundle from :func:`anomaly.training.train` (so the
threshold is calibrated on the training rows only) and its test rows go through :meth:`Engine.process` in time
order. With ``warm=True`` the 400 training rows are fed first, as a live deployment would have seen them, so
the encoder state, the EWMA and the alert state are warm at row 400; only rows 400+ are evaluated. A forecast
model decides every reading on arrival, and the file's last, partial report window is flushed at its end
(:meth:`Engine.flush`). A reconstruction-only model scores whole windows: points at the end of a file that never
fill a window are never scored; without look-ahead they show what the last decision said (an alert open at the
last decision stays open).

Files are independent, so they may run in worker processes; every run uses one torch thread, which makes the
numbers identical whatever the number of jobs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from anomaly import evaluation, quality
from anomaly.bundle import Bundle
from anomaly.config import PipelineConfig
from anomaly.data import Series, load_series
from anomaly.data.reading import chosen_encoding
from anomaly.engine import Engine, EngineOutput, Event
from anomaly.errors import DataError
from anomaly.replay import point_frame
from anomaly.sinks.files import WindowCollector

TRAIN_ROWS = 400
# SKAB README "Proposed Leaderboard", outlier detection (commit b2c0d46): F1, FAR %, MAR %.
LEADERBOARD: tuple[tuple[str, float, float, float], ...] = (
    ("Conv-AE", 0.78, 13.55, 28.02),
    ("MSET", 0.78, 39.73, 14.13),
    ("LSTM-AE", 0.74, 29.96, 25.92),
)
# The settings of pipelines/skab.toml, used when `anomaly skab` gets no --pipeline (a test keeps them equal).
# Temperature and Thermocouple are left out by a label-free drift screen on the training rows (see the TOML).
FEATURES = ("Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Voltage", "Volume Flow RateRMS")
# SKAB's column mapping: all `anomaly skab --defaults` sets (every other setting is the project default).
DATA: dict[str, Any] = {
    "time_column": "datetime",
    "label": "anomaly",
    "label_columns": ["anomaly", "changepoint"],
}
DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {**DATA, "features": list(FEATURES)},
    "model": {"window": 16, "hidden_size": 32},
    "train": {
        "epochs": 30,
        "patience": 5,
        "device": "cpu",
        "threshold_quantile": 0.99,
        "threshold_factor": 1.0,
        "wander_screen": 0.0,
    },
    "engine": {
        "threshold": "dynamic",
        "score": "max_feature",
        "smoothing": 0.2,
        "dynamic_min": 1.0,
        "alert_open_after": 3,
        "alert_close_after": 30,
    },
    "replay": {"predict": "alert"},
}


@dataclass
class FileResult:
    """One SKAB file: its metrics (with counts, poolable) and per-point results of the test rows."""

    key: str
    metrics: dict[str, Any]
    frame: pd.DataFrame  # point_frame() of the test rows: values, label, error, score, ..., predicted
    alerts: list[dict[str, Any]]  # Alert.to_json() of alerts emitted while the test rows streamed
    unscored: (
        int  # test rows never scored (a whole-window model's unfilled tail: they hold the last decision)
    )
    epochs: int
    seconds: float
    points: dict[str, quality.ScorerPoints] = field(default_factory=dict)  # model and baselines


@dataclass
class BenchmarkResult:
    files: list[FileResult]
    pooled: dict[str, Any]
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, quality.Quality] = field(default_factory=dict)  # model and baselines, pooled


def skab_files(root: str | Path, encoding: str = "auto") -> list[Path]:
    """The labelled CSVs under `root` (SKAB's data/ folder), anomaly-free excluded, in a natural order; their
    headers read in `encoding` (data.encoding) as the reader will read them."""
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"SKAB data folder not found: {base}")

    def natural(p: Path) -> list[Any]:
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.relative_to(base).as_posix())]

    files = sorted((p for p in base.rglob("*.csv") if "anomaly-free" not in p.parts), key=natural)
    if not files:
        raise DataError(f"no labelled SKAB CSV files under {base}")
    foreign = [p for p in files if not _skab_header(p, encoding)]
    if foreign:  # else the first one fails deep in loading, with advice (--time-column) `skab` has no use for
        raise DataError(
            f"{base} does not look like SKAB's data/ folder: "
            + (
                f"its one CSV file ({foreign[0].relative_to(base)}) lacks"
                if len(files) == 1
                else f"{len(foreign):,} of its {len(files):,} CSV files (e.g. {foreign[0].relative_to(base)}) "
                f"{'lacks' if len(foreign) == 1 else 'lack'}"
            )
            + f" SKAB's columns {DATA['time_column']!r} and "
            f"{DATA['label']!r}; give the data/ folder of a SKAB checkout (valve1/, valve2/, other/)"
        )
    return files


def _skab_header(path: Path, encoding: str = "auto") -> bool:
    """Whether the file's header names SKAB's time and label columns (SKAB separates fields with ';'), read in
    the codec the reader will use (data.encoding; under "auto" UTF-16 by its byte-order mark, else UTF-8): a
    UTF-16 file was read as UTF-8 bytes, accepted whatever its columns and refused by the encoding it was given."""
    codec = chosen_encoding(path, encoding)
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return False
    header = head.decode("utf-8-sig" if codec == "utf-8" else codec, errors="replace").split("\n", 1)[0]
    if "\ufffd" in header or "\x00" in header:
        # left to the reader, which refuses the file naming its line and byte (or the UTF-16 byte order to pass);
        # a damaged byte in 'datetime' or 'anomaly' (read as U+FFFD) called the folder not SKAB's
        return True
    names = {name.strip().strip('"').strip("\ufeff") for name in re.split(r"[;,\t]", header)}
    return {DATA["time_column"], DATA["label"]} <= names


def file_key(path: Path, root: str | Path) -> str:
    """The series key of a file: its path below the data folder without suffix, e.g. ``valve1/0``."""
    return path.relative_to(Path(root)).with_suffix("").as_posix()


def run_file(
    path: str | Path, root: str | Path, cfg: PipelineConfig, train_rows: int = TRAIN_ROWS, warm: bool = True
) -> FileResult:
    """Train on the first `train_rows` rows of one file, stream the rest through the engine, evaluate."""
    started = time.perf_counter()
    series, features = load_series([path], cfg.data)
    s = series[0]
    s.key = file_key(Path(path), root)
    if len(s) <= train_rows:
        raise DataError(f"{path} has {len(s)} rows; the SKAB protocol needs more than {train_rows}")
    if s.labels is None:
        raise DataError(f"{path} has no {cfg.data.label!r} column")
    head, test = s.head(train_rows), s.tail_from(train_rows)
    result, runs = quality.train_and_score(
        head, features, cfg, lambda bundle: score_test_rows(bundle, cfg, s.key, head, test, features, warm)
    )
    out, frame = runs["model"]
    metrics = evaluation.evaluate(
        frame["label"].to_numpy(),
        frame["predicted"].to_numpy(),
        frame["timestamp"].to_numpy(),
        frame["decided_at"].to_numpy(),
    )
    return FileResult(
        s.key,
        metrics,
        frame,
        [a.to_json() for a in out.alerts],
        int((~frame["scored"]).sum()),
        int(result.bundle.meta["training"]["epochs_run"]),
        time.perf_counter() - started,
        {name: quality.ScorerPoints.of(f) for name, (_, f) in runs.items()},
    )


def score_test_rows(
    bundle: Bundle,
    cfg: PipelineConfig,
    key: str,
    head: Series,
    test: Series,
    features: list[str],
    warm: bool = True,
) -> tuple[EngineOutput, pd.DataFrame]:
    """One scorer on one file's test rows as the protocol runs them: a fresh engine (fed the training rows
    `head` first when `warm`), the test rows, then the file's last, partial report window (:meth:`Engine.flush`).
    Returns the engine's output and the per-point frame of the test rows (with ``decided_at``)."""
    engine = Engine(bundle, cfg.engine)
    if warm:
        engine.process([Event(key, head.timestamps, head.values, ref=0)])
    out = engine.process([Event(key, test.timestamps, test.values, ref=len(head))])
    out.windows += engine.flush().windows  # the file ends: its last, partial report window
    return out, _test_frame(out, key, test, features, cfg)


def _test_frame(out: EngineOutput, key: str, test: Series, features: list[str], cfg: PipelineConfig):
    collector = WindowCollector()
    collector.write(out, None)  # type: ignore[arg-type]
    got = collector.arrays(key)
    if len(got["timestamps"]):  # a warm engine's first test window may start with buffered training rows
        inside = got["timestamps"] >= test.timestamps[0]
        got = {name: values[inside] for name, values in got.items()}
    return point_frame(test, features, got, cfg.replay.predict)


def _run_file_args(args: tuple[Path, Path, PipelineConfig, int, bool]) -> FileResult:
    return run_file(*args)


def run_benchmark(
    root: str | Path,
    cfg: PipelineConfig,
    *,
    train_rows: int = TRAIN_ROWS,
    warm: bool = True,
    jobs: int = 1,
    limit: int | None = None,
    on_file: Callable[[FileResult], None] | None = None,
) -> BenchmarkResult:
    """Every labelled file of `root` (the first `limit` when given), pooled. Results do not depend on `jobs`."""
    files = skab_files(root, cfg.data.encoding)[:limit]
    started = time.perf_counter()
    tasks = [(p, Path(root), cfg, train_rows, warm) for p in files]
    results = quality.run_tasks(_run_file_args, tasks, jobs, on_file)
    pooled = evaluation.pool(r.metrics for r in results)
    settings = {
        "train_rows": train_rows,
        "warm": warm,
        "predict": cfg.replay.predict,
        "model": vars(cfg.model),
        "train": vars(cfg.train),
        "engine": vars(cfg.engine),
    }
    names = list(results[0].points) if results else []
    compared = {n: quality.assess(n, [r.points[n] for r in results if n in r.points]) for n in names}
    return BenchmarkResult(results, pooled, time.perf_counter() - started, settings, compared)


def comparison_table(pooled: Mapping[str, Any], name: str = "anomaly (this run)") -> str:
    """Pooled point-wise F1 / FAR / MAR next to SKAB's published rows, as plain text."""
    rows = [(name, f"{pooled['f1']:.2f}", f"{pooled['far'] * 100:.2f}", f"{pooled['mar'] * 100:.2f}")]
    rows += [(n, f"{f1:.2f}", f"{far:.2f}", f"{mar:.2f}") for n, f1, far, mar in LEADERBOARD]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'algorithm':<{width}}  {'F1':>5}  {'FAR, %':>7}  {'MAR, %':>7}"]
    lines += [f"{a:<{width}}  {b:>5}  {c:>7}  {d:>7}" for a, b, c, d in rows]
    return "\n".join(lines)


def summary(result: BenchmarkResult) -> dict[str, Any]:
    """Machine-readable summary: pooled metrics (fractions, and SKAB-style rounded percentages), per file."""
    p = result.pooled
    return {
        "benchmark": "SKAB",
        "protocol": f"per-file model on first {result.settings.get('train_rows')} rows, "
        "test on the rest, point-wise, pooled over files",
        "files": len(result.files),
        "skab": {
            "f1": round(p["f1"], 4),
            "far_pct": round(p["far"] * 100, 2),
            "mar_pct": round(p["mar"] * 100, 2),
        },
        "pooled": {k: v for k, v in p.items() if k != "counts"},
        "counts": p["counts"],
        "unscored_points": sum(r.unscored for r in result.files),
        "quality": quality.compare(result.quality),
        "ranking": quality.ranking((r.key, r.points) for r in result.files)
        if quality.REFERENCE in result.quality
        else None,
        "seconds": round(result.seconds, 1),
        "settings": result.settings,
        "per_file": {
            r.key: {
                "f1": round(r.metrics["f1"], 4),
                "far": round(r.metrics["far"], 4),
                "mar": round(r.metrics["mar"], 4),
                "epochs": r.epochs,
                "oracle_f1": {
                    n: None if v is None else round(v, 4) for n, v in quality.series_oracle(r.points).items()
                },
            }
            for r in result.files
        },
    }


def write_plots(results: Sequence[FileResult], out_dir: str | Path) -> list[Path]:
    """One PNG per file (test rows) via :func:`anomaly.report.plot_series`."""
    from anomaly.report import plot_series, safe_name

    paths = []
    for r in results:
        m = r.metrics
        title = f"SKAB {r.key}: F1 {m['f1']:.2f}, FAR {m['far'] * 100:.1f} %, MAR {m['mar'] * 100:.1f} %"
        paths.append(
            plot_series(
                r.frame.drop(columns=["time", "scored", "predicted"], errors="ignore"),
                r.alerts,
                Path(out_dir) / f"{safe_name(r.key)}.png",
                title=title,
            )
        )
    return paths

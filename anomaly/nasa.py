"""The NASA SMAP / MSL spacecraft telemetry benchmark (Hundman et al., KDD 2018), per channel, as a dev dataset.

Layout (see the data folder's SOURCE.md): ``<root>/<dataset>/train.csv.gz`` and ``test.csv.gz``, gzipped CSV
with ``chan_id``, ``step``, (test only) ``label`` and the features ``telemetry, cmd_01..``. Protocol (telemanom's
per-channel one, scored point-wise as SOURCE.md recommends): one model per channel, trained with the pipeline's
settings (defaults unless a pipeline file is given) on that channel's train part only, scoring the ``telemetry``
value with the ``cmd_*`` flags as context inputs (``model.targets``; the CLI's ``--targets``); its test part then
streams through a fresh engine, and every channel's points are pooled (micro-averaged) for the model and for
each no-model baseline, with own-threshold and oracle F1 side by side (:mod:`anomaly.quality`). There are no
timestamps: a step is taken as one second, so delays in seconds equal delays in steps.

Channels are independent, so they may run in worker processes; each uses one torch thread, which makes the
numbers identical whatever the number of jobs.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomaly import evaluation, quality
from anomaly.config import PipelineConfig
from anomaly.data import Series
from anomaly.errors import DataError

DATASETS = ("smap", "msl")
ID_COLUMNS = ("chan_id", "step", "label")
# The settings `anomaly nasa` adds to the pipeline's (or the defaults): where the columns are.
DATA = {"time_column": "step", "key_column": "chan_id", "label": "label", "label_columns": ["label"]}
# telemanom's protocol: the model predicts the telemetry value; the cmd_* flags are inputs only (SOURCE.md).
TARGETS = ("telemetry",)


@dataclass
class ChannelResult:
    key: str
    metrics: dict[str, Any]  # the model's own-threshold metrics (poolable counts included)
    points: dict[str, quality.ScorerPoints]  # model and baselines
    epochs: int
    best_epoch: int
    seconds: float

    def oracle_f1(self) -> dict[str, float | None]:
        """Each scorer's oracle F1 on this channel alone (:func:`anomaly.quality.series_oracle`)."""
        return quality.series_oracle(self.points)


@dataclass
class NasaResult:
    dataset: str
    channels: list[ChannelResult]
    quality: dict[str, quality.Quality]
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)


def read_part(root: str | Path, dataset: str, part: str) -> pd.DataFrame:
    """One part of a dataset as a frame (pandas reads the gzip itself; no separator guessing)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    path = Path(root) / dataset / f"{part}.csv.gz"
    if not path.is_file():
        raise DataError(f"{path} not found; expected <DATA_DIR>/{dataset}/{part}.csv.gz (see SOURCE.md)")
    try:
        frame = pd.read_csv(path)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        # a truncated download ended in EOFError, which click reports as "aborted" (Ctrl-C's word); an empty
        # file in pandas' traceback; a file that is not gzip in a message that did not name it
        why = (
            "it ends early (a truncated download?)"
            if isinstance(exc, EOFError)
            else str(exc) or type(exc).__name__
        )
        raise DataError(f"cannot read {path}: {why}") from None
    missing = [c for c in ID_COLUMNS[:2] + (("label",) if part == "test" else ()) if c not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks column(s) {', '.join(missing)}")
    return frame


def split_channels(frame: pd.DataFrame, features: Sequence[str]) -> dict[str, Series]:
    """One Series per chan_id, in file order; the step is the timestamp (seconds)."""
    out = {}
    for chan, rows in frame.groupby("chan_id", sort=False):
        rows = rows.sort_values("step", kind="stable")
        labels = rows["label"].to_numpy(np.int8) if "label" in rows.columns else None
        out[str(chan)] = Series(
            str(chan),
            rows["step"].to_numpy(np.float64),
            rows[list(features)].to_numpy(np.float32),
            labels,
            str(chan),
        )
    return out


def run_channel(train_series: Series, test_series: Series, features: list[str], cfg: PipelineConfig):
    """Train on the channel's train part, stream its test part through a fresh engine per scorer."""
    started = time.perf_counter()
    result, frames = quality.train_and_score(
        train_series,
        features,
        cfg,
        lambda bundle: quality.score_series(bundle, [test_series], cfg)[test_series.key],
    )
    f = frames["model"]
    metrics = evaluation.evaluate(
        f["label"].to_numpy(),
        f["predicted"].to_numpy(),
        f["timestamp"].to_numpy(),
        f["decided_at"].to_numpy(),
    )
    training = result.bundle.meta["training"]
    return ChannelResult(
        test_series.key,
        metrics,
        {name: quality.ScorerPoints.of(fr) for name, fr in frames.items()},
        int(training["epochs_run"]),
        int(training["best_epoch"]),
        time.perf_counter() - started,
    )


def _run_channel_args(args: tuple[Series, Series, list[str], PipelineConfig]) -> ChannelResult:
    return run_channel(*args)


def run_benchmark(
    root: str | Path,
    dataset: str,
    cfg: PipelineConfig,
    *,
    channels: Sequence[str] | None = None,
    limit: int | None = None,
    jobs: int = 1,
    on_channel: Callable[[ChannelResult], None] | None = None,
) -> NasaResult:
    """Every channel of `dataset` (or the named `channels`, or the first `limit`), pooled."""
    started = time.perf_counter()
    train_frame, test_frame = read_part(root, dataset, "train"), read_part(root, dataset, "test")
    features = [c for c in train_frame.columns if c not in ID_COLUMNS]
    missing = [c for c in features if c not in test_frame.columns]
    if missing:
        raise DataError(f"{dataset} test part lacks feature column(s) {', '.join(missing)}")
    trains, tests = split_channels(train_frame, features), split_channels(test_frame, features)
    names = [c for c in tests if c in trains]
    if channels:
        unknown = [c for c in channels if c not in trains and c not in tests]
        if unknown:
            raise DataError(f"unknown {dataset} channel(s) {', '.join(unknown)}; e.g. {', '.join(names[:5])}")
    # a channel in one part only was left out without a word: the pooled numbers then covered fewer channels
    # than the data set has, and `--channels` called it unknown although it is in the data
    wanted = list(channels) if channels else [*tests, *(c for c in trains if c not in tests)]
    half = [
        f"{c} ({'train' if c in trains else 'test'} only)" for c in wanted if (c in trains) != (c in tests)
    ]
    if half:
        raise DataError(
            f"{dataset} channel(s) {', '.join(half)}: a channel needs rows in both "
            f"{Path(root) / dataset / 'train.csv.gz'} and test.csv.gz (name the complete ones with --channels)"
        )
    if channels:
        names = [c for c in names if c in set(channels)]
    names = names[:limit]
    tasks = [(trains[c], tests[c], features, cfg) for c in names]
    results = quality.run_tasks(_run_channel_args, tasks, jobs, on_channel)
    scorers = list(results[0].points) if results else []
    compared = {n: quality.assess(n, [r.points[n] for r in results if n in r.points]) for n in scorers}
    settings = {
        "channels": names,
        "predict": cfg.replay.predict,
        "model": vars(cfg.model),
        "train": vars(cfg.train),
        "engine": vars(cfg.engine),
    }
    return NasaResult(dataset, results, compared, time.perf_counter() - started, settings)


def summary(result: NasaResult) -> dict[str, Any]:
    model = result.quality.get("model")
    return {
        "benchmark": f"NASA {result.dataset.upper()}",
        "protocol": "per-channel model on the train part, fresh engine on the test part, point-wise, "
        "no point-adjust, no look-ahead, pooled over channels",
        "channels": len(result.channels),
        "seconds": round(result.seconds, 1),
        "quality": quality.compare(result.quality),
        "counts": model.metrics["counts"] if model else None,
        "settings": result.settings,
        "ranking": quality.ranking((r.key, r.points) for r in result.channels)
        if model and quality.REFERENCE in result.quality
        else None,
        "per_channel": {
            r.key: {
                "f1": round(r.metrics["f1"], 4),
                "precision": round(r.metrics["precision"], 4),
                "recall": round(r.metrics["recall"], 4),
                "epochs": r.epochs,
                "best_epoch": r.best_epoch,
                "seconds": round(r.seconds, 1),
                "oracle_f1": {n: None if v is None else round(v, 4) for n, v in r.oracle_f1().items()},
            }
            for r in result.channels
        },
    }

"""Detection quality: the model next to its no-model baselines, the own threshold next to the oracle one.

For every scorer (the model and each baseline of :mod:`anomaly.baselines`, all run by the same engine with the
same settings) a backtest yields per-point frames (:func:`anomaly.replay.point_frame`). From them:

- **own F1**: point-wise, no point adjustment, no look-ahead (:func:`anomaly.evaluation.count` with the
  frames' ``decided_at``), pooled over series;
- **oracle F1**: the best pooled point-wise F1 of any single threshold on the score as the pipeline knew it at
  each reading (:func:`anomaly.evaluation.causal`), the threshold chosen on the test labels. An oracle, for
  diagnosis only: it says how well the score *ranks* points, never what a user gets. Its per-series variant
  (each series its own best threshold, F1 averaged) shows how much a shared score scale costs;
- **lift**: own F1 of a scorer minus the z-score baseline's; **threshold loss**: oracle F1 minus own F1;
  **efficiency**: own F1 / oracle F1.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pandas as pd

from anomaly import evaluation
from anomaly.baselines import BASELINES, baseline_bundle
from anomaly.bundle import Bundle
from anomaly.config import PipelineConfig
from anomaly.data import Series

if TYPE_CHECKING:
    from anomaly.training import TrainResult

T = TypeVar("T")
R = TypeVar("R")


def run_tasks(
    fn: Callable[[T], R], tasks: Sequence[T], jobs: int, on_result: Callable[[R], None] | None = None
) -> list[R]:
    """`fn` over `tasks` in order, in `jobs` worker processes when jobs > 1 (never more than there are tasks:
    `-j 64` on 3 files started 64); `on_result` sees each result as it arrives (in task order). Results do not
    depend on `jobs`: each task is self-contained and seeded."""
    results: list[R] = []
    if jobs <= 1 or len(tasks) <= 1:  # no process for nothing to run beside
        outcomes: Iterable[R] = map(fn, tasks)
        for r in outcomes:
            results.append(r)
            if on_result is not None:
                on_result(r)
        return results
    with ProcessPoolExecutor(
        max_workers=min(jobs, len(tasks)), initializer=end_with_parent, initargs=(os.getpid(),)
    ) as pool:
        for r in pool.map(fn, tasks):
            results.append(r)
            if on_result is not None:
                on_result(r)
    return results


PR_SET_PDEATHSIG = 1  # prctl(2)


def end_with_parent(parent: int) -> None:
    """Worker initializer: the worker ends when the process that started it does. Killed by SIGTERM (`kill`, a
    supervisor), the parent left its workers running without end: each finished its task, then blocked forever
    writing the result to a pipe nobody read. On Linux the kernel sends a forked worker SIGTERM when its parent
    dies (``PR_SET_PDEATHSIG``); a parent already gone before that took effect ends the worker at once. A
    worker started by a fork server (Python 3.14's default on Linux) is not the parent's child: it is left as
    it is (the request would tie it to the server)."""
    if os.getppid() == parent and sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):  # no libc symbol: nothing to ask for
            pass
    if os.getppid() == parent:
        return
    try:  # a fork server's child, or the parent died between the fork and the request
        os.kill(parent, 0)
    except ProcessLookupError:
        os._exit(1)
    except OSError:  # alive, another user's
        pass


ORACLE_NOTE = "oracle F1: threshold chosen on the test labels -- oracle, for diagnosis only"
REFERENCE = "zscore"  # the baseline lift is measured against


@dataclass
class ScorerPoints:
    """What one scorer said about one series: poolable counts plus the causal score and the labels."""

    counts: evaluation.Counts
    scores: np.ndarray  # float64 (n,): score of the latest decided reading at each reading; NaN before any
    labels: np.ndarray  # bool (n,)

    @classmethod
    def of(cls, frame: pd.DataFrame) -> ScorerPoints:
        ts = frame["timestamp"].to_numpy(np.float64)
        decided_at = frame["decided_at"].to_numpy(np.float64)
        labels = frame["label"].to_numpy().astype(bool)
        counts = evaluation.count(labels, frame["predicted"].to_numpy(), ts, decided_at)
        dec = evaluation.decision_index(ts, decided_at)
        scores = evaluation.causal(frame["score"].to_numpy(np.float64), dec, np.nan)
        return cls(counts, scores, labels)


@dataclass
class Quality:
    """Pooled result of one scorer over all series."""

    name: str
    metrics: dict[str, Any]  # evaluation.pool() of the own-threshold predictions
    oracle_f1: float
    oracle_threshold: float
    oracle_f1_per_series: float | None = None  # mean over labelled series of each one's own oracle F1

    @property
    def f1(self) -> float:
        return float(self.metrics["f1"])

    @property
    def threshold_loss(self) -> float:
        return self.oracle_f1 - self.f1

    @property
    def efficiency(self) -> float | None:
        return self.f1 / self.oracle_f1 if self.oracle_f1 > 0 else None

    def to_json(self, reference: Quality | None = None) -> dict[str, Any]:
        m = self.metrics
        out = {
            "f1": m["f1"],
            "precision": m["precision"],
            "recall": m["recall"],
            "far": m["far"],
            "mar": m["mar"],
            "f1_marked": m["f1_marked"],
            "oracle_f1": self.oracle_f1,
            # no labelled anomaly: no threshold (null, not Infinity, which is not JSON)
            "oracle_threshold": self.oracle_threshold if np.isfinite(self.oracle_threshold) else None,
            "oracle_f1_per_series_mean": self.oracle_f1_per_series,
            "threshold_loss": self.threshold_loss,
            "efficiency": self.efficiency,
            "event_recall": m["event_recall"],
            "median_delay_readings": m["median_delay_readings"],
            "mean_delay_readings": m["mean_delay_readings"],
            "median_delay_s": m["median_delay_s"],
            "mean_delay_s": m["mean_delay_s"],
            "latency_readings_median": m["latency_readings_median"],
            "latency_readings_p99": m["latency_readings_p99"],
            "latency_s_median": m["latency_s_median"],
            "latency_s_p99": m["latency_s_p99"],
        }
        if reference is not None:
            out["lift_f1"] = self.f1 - reference.f1
            out["lift_oracle_f1"] = self.oracle_f1 - reference.oracle_f1
        return out


def assess(name: str, points: Iterable[ScorerPoints]) -> Quality:
    pts = list(points)
    metrics = evaluation.pool(p.counts for p in pts)
    if pts:
        f1, thr = evaluation.oracle_best_f1(
            np.concatenate([p.scores for p in pts]), np.concatenate([p.labels for p in pts])
        )
    else:
        f1, thr = 0.0, float("inf")
    each = [evaluation.oracle_best_f1(p.scores, p.labels)[0] for p in pts if p.labels.any()]
    return Quality(name, metrics, f1, thr, float(np.mean(each)) if each else None)


def series_oracle(points: Mapping[str, ScorerPoints]) -> dict[str, float | None]:
    """Each scorer's best F1 on one series alone, threshold chosen on that series' labels: how well the score
    ranks that series' points, apart from any threshold and from how series pool (an oracle, for diagnosis
    only). None for a series without an anomaly."""
    return {
        name: evaluation.oracle_best_f1(p.scores, p.labels)[0] if p.labels.any() else None
        for name, p in points.items()
    }


RANKING_MARGIN = 0.05  # issue 8's lift target: a series counts as won or lost by this much oracle F1
EVENT_NORMAL_RATE = 0.01  # an event stands out when its peak beats all but this share of the normal readings


def ranking(
    series: Iterable[tuple[str, Mapping[str, ScorerPoints]]], name: str = "model", reference: str = REFERENCE
) -> dict[str, Any]:
    """Series by series, `name` against `reference` (each series' own oracle F1, :func:`series_oracle`): the
    series where `name` ranks better or worse by at least RANKING_MARGIN, and the rest, and the mean of each
    series' better score of the two -- the most any per-series choice between the two scores could reach; and,
    for both, the labelled events whose peak stands out of their series' normal readings
    (:func:`anomaly.evaluation.events_standing_out` at EVENT_NORMAL_RATE): the event view point-wise F1 hides."""
    found = {name: 0, reference: 0}
    events = 0
    ahead: list[str] = []
    behind: list[str] = []
    level: list[str] = []
    best: list[float] = []
    for key, points in series:
        o = series_oracle(points)
        a, b = o.get(name), o.get(reference)
        if a is None or b is None:
            continue
        for n in found:
            hit, total = evaluation.events_standing_out(points[n].scores, points[n].labels, EVENT_NORMAL_RATE)
            found[n] += hit
        events += total
        (ahead if a >= b + RANKING_MARGIN else behind if a <= b - RANKING_MARGIN else level).append(key)
        best.append(max(a, b))
    return {
        "score": name,
        "reference": reference,
        "margin": RANKING_MARGIN,
        "ahead": ahead,
        "behind": behind,
        "level": level,
        "better_of_two_mean": float(np.mean(best)) if best else None,
        "event_normal_rate": EVENT_NORMAL_RATE,
        "events": events,
        "events_standing_out": found,
    }


def format_ranking(rk: Mapping[str, Any], unit: str) -> str:
    return (
        f"per {unit} (oracle F1, diagnosis only): {rk['score']} ahead of {rk['reference']} by >= {rk['margin']} on "
        f"{len(rk['ahead'])}, behind on {len(rk['behind'])}, level on {len(rk['level'])}; "
        f"better of the two per {unit}, mean {_f(rk['better_of_two_mean'])}; events whose peak beats all but "
        f"{rk['event_normal_rate']:.0%} of their {unit}'s normal readings: "
        + ", ".join(f"{n} {v}" for n, v in rk["events_standing_out"].items())
        + f" of {rk['events']}"
    )


def scorer_bundles(bundle: Bundle) -> dict[str, Bundle]:
    """The model and every baseline it carries (bundles trained before baselines existed carry none)."""
    out = {"model": bundle}
    for kind in BASELINES:
        if kind in bundle.calibration.get("baselines", {}):
            out[kind] = baseline_bundle(bundle, kind)
    return out


def train_and_score(
    series: Series, features: Sequence[str], cfg: PipelineConfig, score: Callable[[Bundle], T]
) -> tuple[TrainResult, dict[str, T]]:
    """A benchmark's one job (a SKAB file, a NASA channel): train on its training part, then `score` its test part
    with the model and each baseline (:func:`scorer_bundles`, the model first). On one torch thread, as the
    harnesses run one job per core (`-j`), restored after."""
    import torch

    from anomaly.training import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train([series], list(features), cfg.model, cfg.train, engine=cfg.engine)
        return result, {name: score(bundle) for name, bundle in scorer_bundles(result.bundle).items()}
    finally:
        torch.set_num_threads(threads)


def score_series(
    bundle: Bundle, series: Sequence[Series], cfg: PipelineConfig, progress: str | None = None
) -> dict[str, pd.DataFrame]:
    """Per-point frames of `series` scored by `bundle` through the replay loop, without writing files.
    `progress`: the name of a progress bar to draw (on a terminal), as long as replay's own: a baseline runs
    the engine over every reading again."""
    from anomaly.engine import Engine
    from anomaly.replay import merged_batches, point_frame
    from anomaly.runner import run
    from anomaly.sinks.files import WindowCollector

    collector = WindowCollector()
    bar = None
    if progress is not None:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(s) for s in series), desc=progress, unit="reading", disable=None)
    run(
        Engine(bundle, cfg.engine),
        merged_batches(series, cfg.replay.batch_readings),
        [collector],
        on_batch=(lambda b, o: bar.update(b.messages)) if bar is not None else None,
        finish=True,
    )
    if bar is not None:
        bar.close()
    return {
        s.key: point_frame(s, bundle.features, collector.arrays(s.key), cfg.replay.predict) for s in series
    }


def compare(results: Mapping[str, Quality]) -> dict[str, dict[str, Any]]:
    ref = results.get(REFERENCE)
    return {name: q.to_json(ref) for name, q in results.items()}


def _f(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def format_quality(results: Mapping[str, Quality], title: str = "") -> str:
    """Plain-text table: own vs oracle F1 per scorer, lift over z-score, threshold loss, delay, latency."""
    ref = results.get(REFERENCE)
    head = (
        f"{'score':<8} {'own F1':>7} {'prec':>6} {'recall':>6} {'oracle F1':>9} {'per-ser':>7} {'loss':>6} {'eff':>5} "
        f"{'lift':>7} {'events':>7} {'delay rd med/mean':>18} {'delay s med/mean':>18} {'wait rd med/p99':>16}"
    )
    lines = [title] if title else []
    lines.append(head)
    for name, q in results.items():
        m = q.metrics
        e = m["counts"]["events"]
        lift = "" if ref is None or name == REFERENCE else f"{q.f1 - ref.f1:+.3f}"
        lines.append(
            f"{name:<8} {q.f1:>7.3f} {m['precision']:>6.3f} {m['recall']:>6.3f} {q.oracle_f1:>9.3f} "
            f"{_f(q.oracle_f1_per_series):>7} "
            f"{q.threshold_loss:>6.3f} {_f(q.efficiency, 2):>5} {lift:>7} "
            f"{e['detected_events']:>3}/{e['true_events']:<3} "
            f"{_f(m['median_delay_readings'], 1) + ' / ' + _f(m['mean_delay_readings'], 1):>18} "
            f"{_f(m['median_delay_s'], 1) + ' / ' + _f(m['mean_delay_s'], 1):>18} "
            f"{_f(m['latency_readings_median'], 0) + ' / ' + _f(m['latency_readings_p99'], 0):>16}"
        )
    lines.append(
        "own F1: the project's own threshold, point-wise, no point-adjust, no look-ahead; "
        "loss = oracle - own; eff = own / oracle; lift = own F1 - zscore's"
    )
    lines.append(ORACLE_NOTE + "; per-ser: each series its own oracle threshold, F1 averaged")
    return "\n".join(lines)

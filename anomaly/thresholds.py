"""Thresholds and the alert lifecycle, vectorized across keys. Pure numpy.

Scores arrive one window at a time for many keys at once: arrays of shape (K, W). The functions here step
through the W points in order (a short Python loop of whole-array operations), so per-key state evolves
exactly as if the points had come one by one, whatever the batch.

Dynamic threshold: a causal, streaming version of Telemanom's nonparametric dynamic thresholding
(Hundman et al., KDD 2018). Each key keeps the last N smoothed scores seen while no alert was open. Before a
window is classified, epsilon = mean + z * std of that history is chosen per key, with z maximising
(relative drop of mean + relative drop of std when points above epsilon are removed) /
(points above + contiguous sequences above ** 2). Only past scores enter, so the threshold never sees the
window it judges. Until a key has `warmup` scores in its history it cannot alert.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Z_GRID = np.arange(2.5, 12.01, 0.5, dtype=np.float32)


def ordered_history(hist: np.ndarray, pushed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ring buffers (K, N) in time order (oldest first) and a validity mask for partly filled ones."""
    k, n = hist.shape
    start = np.where(pushed >= n, pushed % n, 0)
    idx = (start[:, None] + np.arange(n)[None, :]) % n
    ordered = np.take_along_axis(hist, idx, axis=1)
    valid = np.arange(n)[None, :] < np.minimum(pushed, n)[:, None]
    return ordered, valid


def select_epsilon(hist: np.ndarray, pushed: np.ndarray, floor: float) -> np.ndarray:
    """Per-key epsilon (K,) from past smoothed scores; keys with an empty history get `floor`."""
    e, valid = ordered_history(hist.astype(np.float64), pushed)
    cnt = valid.sum(axis=1)
    safe = np.maximum(cnt, 1)
    ev = np.where(valid, e, 0.0)
    mean = ev.sum(axis=1) / safe
    std = np.sqrt(np.maximum((np.where(valid, e - mean[:, None], 0.0) ** 2).sum(axis=1) / safe, 0.0))
    best_score = np.full(len(e), -np.inf)
    best_eps = mean + Z_GRID[-1] * std
    for z in Z_GRID:
        eps = mean + z * std
        above = valid & (e > eps[:, None])
        below = valid & ~above
        n_above = above.sum(axis=1)
        n_below = np.maximum(below.sum(axis=1), 1)
        mean_b = np.where(below, e, 0.0).sum(axis=1) / n_below
        std_b = np.sqrt((np.where(below, e - mean_b[:, None], 0.0) ** 2).sum(axis=1) / n_below)
        starts = above & ~np.concatenate([np.zeros((len(e), 1), bool), above[:, :-1]], axis=1)
        n_seq = starts.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            gain = (mean - mean_b) / np.where(mean > 0, mean, 1.0) + (std - std_b) / np.where(
                std > 0, std, 1.0
            )
            score = np.where(n_above > 0, gain / (n_above + n_seq**2), -np.inf)
        ok = (n_above > 0) & (n_above < 0.5 * cnt) & (n_seq <= 5) & (score > best_score)
        best_score = np.where(ok, score, best_score)
        best_eps = np.where(ok, eps, best_eps)
    best_eps = np.where(cnt > 0, best_eps, floor)
    return np.maximum(best_eps, floor).astype(np.float32)


def push_history(hist: np.ndarray, pushed: np.ndarray, values: np.ndarray, mask: np.ndarray) -> None:
    """Append values[k, i] where mask[k, i] (in point order) to each key's ring buffer, in place."""
    n = hist.shape[1]
    for i in range(values.shape[1]):
        rows = np.flatnonzero(mask[:, i])
        if len(rows):
            hist[rows, pushed[rows] % n] = values[rows, i]
            pushed[rows] += 1


def ewma(raw: np.ndarray, last: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """EWMA along axis 1 for (K, W) raw scores; `last` (K,) is NaN for keys with no previous value."""
    out = np.empty_like(raw)
    prev = last.copy()
    for i in range(raw.shape[1]):
        x = raw[:, i]
        prev = np.where(np.isnan(prev), x, alpha * x + (1.0 - alpha) * prev)
        out[:, i] = prev
    return out, prev


# Per-key alert state (rows of the engine's state store) that step_alerts reads and updates.
ALERT_FIELDS = (
    "run_anom",
    "run_norm",
    "run_start",
    "last_anom_ts",
    "alert_open",
    "alert_start",
    "alert_peak",
    "alert_thr",
    "alert_contrib",
)


@dataclass(frozen=True)
class Transition:
    """An alert of batch row `row` opened or closed at event time `at`, with its state at that moment."""

    row: int
    status: str  # open | closed
    start: float
    end: float | None
    at: float
    peak: float
    threshold: float
    contributions: np.ndarray


def step_alerts(
    state: dict[str, np.ndarray],
    ts: np.ndarray,
    scores: np.ndarray,
    anomalous: np.ndarray,
    eps: np.ndarray,
    per_feature: np.ndarray,
    open_after: int,
    close_after: int,
) -> tuple[np.ndarray, list[Transition]]:
    """Alert lifecycle for K keys through one window of W points, in point order.

    An alert opens after `open_after` consecutive anomalous points (its start is the first of them), closes after
    `close_after` consecutive normal points (its end is the last anomalous one) and never re-fires while open.
    `state` holds (K, ...) arrays named ALERT_FIELDS and is updated in place. `per_feature` (K, F) is the
    window's squared error per feature, accumulated while an alert is open to name its top features.
    Returns whether an alert was open at each point (K, W) and the transitions in order."""
    run_anom, run_norm = state["run_anom"], state["run_norm"]
    run_start, last_anom = state["run_start"], state["last_anom_ts"]
    is_open, start = state["alert_open"], state["alert_start"]
    peak, thr, contrib = state["alert_peak"], state["alert_thr"], state["alert_contrib"]
    contrib[is_open] += per_feature[is_open]
    open_pts = np.zeros(anomalous.shape, bool)
    out: list[Transition] = []
    for i in range(anomalous.shape[1]):
        an, t, s = anomalous[:, i], ts[:, i], scores[:, i]
        run_start[:] = np.where(an & (run_anom == 0), t, run_start)
        run_anom[:] = np.where(an, run_anom + 1, 0)
        run_norm[:] = np.where(an, 0, run_norm + 1)
        last_anom[:] = np.where(an, t, last_anom)
        for j in np.flatnonzero(~is_open & (run_anom >= open_after)):
            is_open[j], start[j], peak[j], thr[j] = True, run_start[j], s[j], eps[j]
            contrib[j] = per_feature[j]
            out.append(
                Transition(
                    int(j),
                    "open",
                    float(start[j]),
                    None,
                    float(t[j]),
                    float(peak[j]),
                    float(thr[j]),
                    contrib[j].copy(),
                )
            )
        peak[:] = np.where(is_open & an, np.maximum(peak, s), peak)
        for j in np.flatnonzero(is_open & (run_norm >= close_after)):
            is_open[j] = False
            out.append(
                Transition(
                    int(j),
                    "closed",
                    float(start[j]),
                    float(last_anom[j]),
                    float(t[j]),
                    float(peak[j]),
                    float(thr[j]),
                    contrib[j].copy(),
                )
            )
        open_pts[:, i] = is_open
    return open_pts, out

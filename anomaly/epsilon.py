"""The dynamic threshold's epsilon search (Telemanom's nonparametric dynamic thresholding), vectorized across keys.

Each key keeps the last N smoothed scores seen while no alert was open (a ring, see `thresholds.push_history`);
epsilon = mean + z * std of that history with z on `Z_GRID` maximising (relative drop of mean + relative drop of
std when the points above epsilon are removed) / (points above + contiguous sequences above ** 2), among the z
with at least one point above, fewer than half of the points above and at most 5 sequences above.

`select_epsilon` gives, to the bit, what the plain search over the grid (`grid_epsilon`: for each z, masked
passes over every key's whole history) gives, at a fraction of the cost. Every point above any candidate
epsilon is above the smallest one, mean + 2.5 std, and by Chebyshev's inequality at most 16 % of a history
(about 1 % of a bell-shaped one) is. So the counts and the statistics of the points below each epsilon come
from that short tail alone: the history's sums minus the tail's sums above each epsilon. Those sums are
rounded differently from the plain search's, so each key's scores carry a bound on the difference (see
`_score_error`); where the best z's score is not ahead of every other z's (with a different set of points
above) by more than the bounds, the key is handed to `grid_epsilon` itself. Each key's epsilon remains its own
row's arithmetic: it never depends on the other keys in the call.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Search = Callable[[np.ndarray, np.ndarray, float], np.ndarray]
Z_GRID = np.arange(2.5, 12.01, 0.5, dtype=np.float32)
_EPS64 = float(np.finfo(np.float64).eps)
_SAFETY = 4.0  # the score error bounds are multiplied by this before two scores count as apart


def ordered_history(hist: np.ndarray, pushed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ring buffers (K, N) in time order (oldest first) and a validity mask for partly filled ones. Where no
    ring has wrapped, that is `hist` itself; otherwise each row is one contiguous slice of the row written
    twice (a copy per row instead of an element-wise gather)."""
    k, n = hist.shape
    start = np.where(pushed >= n, pushed % n, 0)
    valid = np.arange(n)[None, :] < np.minimum(pushed, n)[:, None]
    if not start.any():
        return hist, valid
    twice = np.lib.stride_tricks.sliding_window_view(np.concatenate([hist, hist], axis=1), n, axis=1)
    return twice[np.arange(k), start], valid


def select_epsilon(hist: np.ndarray, pushed: np.ndarray, floor: float) -> np.ndarray:
    """Per-key epsilon (K,) float32 from past smoothed scores, never below `floor`; keys with an empty history
    get `floor` without their ring being read: a call of many new keys (key churn: tens of thousands in one
    daemon batch) otherwise made float64 copies of every empty ring (300+ MB for 35,000 keys of
    `dynamic_history` 512) for nothing. Bit for bit `grid_epsilon`; each key's epsilon is its own row's
    arithmetic. A history with NaN or infinite scores gives NaN, as the plain search does."""
    return for_nonempty(tail_epsilon, hist, pushed, floor)


def for_nonempty(search: Search, hist: np.ndarray, pushed: np.ndarray, floor: float) -> np.ndarray:
    """`search` over the keys with a history; `floor` for the others."""
    some = np.flatnonzero(pushed > 0)
    if len(some) == len(pushed):
        return search(hist, pushed, floor)
    out = np.full(len(pushed), floor, np.float32)
    if len(some):
        out[some] = search(hist[some], pushed[some], floor)
    return out


def _moments(hist: np.ndarray, pushed: np.ndarray) -> tuple[np.ndarray, ...]:
    """Time-ordered histories as stored (float32), validity, count, and per key the mean, the sum of squared
    deviations and the std, with exactly the plain search's arithmetic in float64 (its epsilons are mean + z * std
    of these very bits). The rings are put in time order before they are widened (half the bytes to move;
    widening is exact either way), and the deviations are squared in the widened copy: fewer large new arrays,
    each of which costs page faults."""
    x, valid = ordered_history(hist, pushed)
    n = x.shape[1]
    cnt = np.minimum(pushed, n)
    full = bool((cnt == n).all())  # every ring filled (the steady state): nothing to mask
    safe = np.maximum(cnt, 1)
    e = x.astype(np.float64) if full else np.where(valid, x, np.float64(0.0))
    mean = e.sum(axis=1) / safe
    e -= mean[:, None]
    if not full:
        e[~valid] = 0.0
    ss = np.square(e, out=e).sum(axis=1)
    return x, valid, cnt, mean, ss, np.sqrt(np.maximum(ss / safe, 0.0))


def tail_epsilon(hist: np.ndarray, pushed: np.ndarray, floor: float) -> np.ndarray:
    """`grid_epsilon` from the points above the smallest candidate epsilon (see the module's docstring)."""
    x, valid, cnt, mean, ss, std = _moments(hist, pushed)
    thr = mean[:, None] + Z_GRID.astype(np.float64)[None, :] * std[:, None]  # (K, Z) candidate epsilons
    choice = np.full(len(x), len(Z_GRID) - 1)  # where no z counts: mean + the largest z * std
    keys, ok, n_above, score, err = tail_scores(x, valid, cnt, mean, ss, std, thr)
    best = np.argmax(score, axis=1)
    at_best = np.arange(len(keys)), best
    # a z whose score may be the best's (the bounds overlap) with other points above: the plain search decides;
    # so it does where a bound is not finite
    near = ok & (score + err >= (score - err)[at_best][:, None])
    unsure = (near & (n_above != n_above[at_best][:, None])).any(axis=1)
    unsure |= (ok & ~np.isfinite(score + err)).any(axis=1)
    counted = ok.any(axis=1) & ~unsure
    choice[keys[counted]] = best[counted]
    out = np.maximum(np.where(cnt > 0, thr[np.arange(len(x)), choice], floor), floor).astype(np.float32)
    if unsure.any():
        grid_rows = keys[unsure]
        out[grid_rows] = grid_epsilon(hist[grid_rows], pushed[grid_rows], floor)
    return out


def tail_scores(
    x: np.ndarray,
    valid: np.ndarray,
    cnt: np.ndarray,
    mean: np.ndarray,
    ss: np.ndarray,
    std: np.ndarray,
    thr: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """For the keys (K',) with a point above their smallest candidate epsilon: which z count (K', Z) bool, the
    points above each epsilon, the scores (-inf where a z does not count) and their error bounds (`_scores`).
    Inputs are `_moments` (histories as stored; compared with and subtracted from float64, so exactly widened)
    and the candidate epsilons `thr` (K, Z)."""
    n, z = x.shape[1], thr.shape[1]
    over = x > thr[:, :1]  # NaN thresholds (NaN or inf in the history) have no point above
    if not (cnt == n).all():
        over &= valid
    at = np.flatnonzero(over)  # the tail, grouped by key
    rows, cols = np.divmod(at, n)
    new_key = np.ones(len(at), bool)
    new_key[1:] = rows[1:] != rows[:-1]
    keys = rows[new_key]  # the keys with a tail
    slot = np.cumsum(new_key) - 1  # each tail point's key among them
    # each tail point is above the first `a` candidate epsilons; the point before it (valid: histories are a
    # prefix in time order) above the first `a_before`, so a sequence above starts at it for a_before <= z < a
    flat, t = x.reshape(-1), thr[rows]
    ones = np.ones(z, np.int8)  # counting by a product: a sum over a short axis is slow
    a = ((flat[at][:, None] > t).view(np.int8) @ ones).astype(np.int64)
    a_before = np.where(cols > 0, (flat[at - 1][:, None] > t).view(np.int8) @ ones, 0)
    d = flat[at] - mean[rows]
    bins = z + 1
    per_bin = len(keys) * bins
    at_bin = slot * bins + a

    def above(weights: np.ndarray | None) -> np.ndarray:
        """Per key and z: the sum of `weights` over the tail points above epsilon (K', Z), from sums per bin."""
        sums = np.bincount(at_bin, weights, per_bin).reshape(len(keys), bins)
        return np.cumsum(sums[:, ::-1], axis=1)[:, ::-1][:, 1:]

    n_above, s1, s2 = above(None), above(d), above(d * d)
    rises = np.flatnonzero(a > a_before)
    edges = np.concatenate([slot[rises] * bins + a_before[rises], at_bin[rises]])
    signs = np.repeat([1.0, -1.0], len(rises))
    n_seq = np.cumsum(np.bincount(edges, signs, per_bin).reshape(len(keys), bins), axis=1)[:, :z]
    ok = (n_above < 0.5 * cnt[keys][:, None]) & (n_seq <= 5) & (n_above > 0)
    j, zi = np.nonzero(ok)  # score only the candidates that count (a few per key)
    r = keys[j]
    score, err = np.full(ok.shape, -np.inf), np.zeros(ok.shape)
    score[j, zi], err[j, zi] = _scores(
        mean[r], std[r], ss[r], n_above[j, zi], cnt[r] - n_above[j, zi], n_seq[j, zi], s1[j, zi], s2[j, zi], n
    )
    return keys, ok, n_above, score, err


def _scores(
    mean: np.ndarray,
    std: np.ndarray,
    ss: np.ndarray,
    n_above: np.ndarray,
    n_below: np.ndarray,
    n_seq: np.ndarray,
    s1: np.ndarray,
    s2: np.ndarray,
    n: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Telemanom's score of candidate epsilons (1-D, one entry per key and z) from the history's mean, std and
    sum of squared deviations `ss` and the sums over the points above epsilon of their deviations from the mean
    (`s1`) and of the squares (`s2`); and a bound on its difference from the plain search's score of the same
    points. The bound adds each side's worst-case rounding (n-term sums: within (4 n + 128) ulps of the largest
    magnitude involved, `scale` bounding every |score| in the history; the square root's sensitivity where the
    variance below epsilon is small), times `_SAFETY`. Measured differences stay below 4 % of the bound."""
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = -s1 / n_below  # mean below epsilon minus the whole history's mean
        var_b = (ss - s2) / n_below - shift * shift
        std_b = np.sqrt(np.maximum(var_b, 0.0))
        m_div, s_div = np.where(mean > 0, mean, 1.0), np.where(std > 0, std, 1.0)
        a, b = -shift / m_div, (std - std_b) / s_div
        den = n_above + n_seq**2
        score = (a + b) / den
        scale = np.abs(mean) + np.sqrt(ss) * (1.0 + 1e-6)  # >= the largest |score| in the history
        err_mean = (4 * n + 128) * _EPS64 * scale
        err_var = (
            (4 * n + 128) * _EPS64 * (ss + s2) / n_below
            + 4 * np.abs(shift) * err_mean
            + 4 * err_mean**2
            + 4 * _EPS64 * shift**2
        )
        err_std = np.where(
            var_b > 0, np.minimum(np.sqrt(err_var), err_var / np.sqrt(var_b)), np.sqrt(err_var)
        )
        err_a = 2 * err_mean / m_div + 8 * _EPS64 * np.abs(a)
        err_b = err_std / s_div + 8 * _EPS64 * np.abs(b)
        err = _SAFETY * ((err_a + err_b) / den + 8 * _EPS64 * np.abs(score))
    return score, err


def grid_epsilon(hist: np.ndarray, pushed: np.ndarray, floor: float) -> np.ndarray:
    """The plain search, for keys with a history (K,): for each z, masked passes over every key's history.

    A candidate z only counts for a key with at least one score above mean + z * std. That bound grows with z,
    so once a key's largest score is not above it, no larger z can count either: each z is evaluated only for
    the keys whose maximum is still above it, and the grid stops when none is. Row by row the arithmetic is the
    full grid's (each key's sums are taken over its own row), so the result is the same to the bit."""
    e, valid = ordered_history(hist.astype(np.float64), pushed)
    full = bool(valid.all())  # every ring filled (the steady state): nothing to mask
    cnt = valid.sum(axis=1)
    safe = np.maximum(cnt, 1)
    mean = (e if full else np.where(valid, e, 0.0)).sum(axis=1) / safe
    std = np.sqrt(np.maximum(_masked_squares(e, mean, None if full else valid).sum(axis=1) / safe, 0.0))
    top = np.fmax.reduce(e if full else np.where(valid, e, -np.inf), axis=1)  # NaN is never above anything
    best_score = np.full(len(e), -np.inf)
    best_eps = mean + Z_GRID[-1] * std
    for z in Z_GRID:
        live = np.flatnonzero(top > mean + z * std)
        if not len(live):
            break
        e_l, valid_l = (e, valid) if len(live) == len(e) else (e[live], valid[live])
        eps = mean[live] + z * std[live]
        above = e_l > eps[:, None]
        if not full:
            above &= valid_l
        n_above = above.sum(axis=1)
        n_seq = (above[:, 1:] & ~above[:, :-1]).sum(axis=1) + above[:, 0]  # runs above epsilon
        # only keys that pass the count rules need the mean and std of the scores below epsilon
        c = np.flatnonzero((n_above < 0.5 * cnt[live]) & (n_seq <= 5))
        if not len(c):
            continue
        rows, e_c, eps, n_above, n_seq = live[c], e_l[c], eps[c], n_above[c], n_seq[c]
        below = ~above[c]
        if not full:
            below &= valid_l[c]
        mean_c, std_c = mean[rows], std[rows]
        n_below = np.maximum(below.sum(axis=1), 1)
        mean_b = np.where(below, e_c, 0.0).sum(axis=1) / n_below
        std_b = np.sqrt(_masked_squares(e_c, mean_b, below).sum(axis=1) / n_below)
        with np.errstate(divide="ignore", invalid="ignore"):
            gain = (mean_c - mean_b) / np.where(mean_c > 0, mean_c, 1.0) + (std_c - std_b) / np.where(
                std_c > 0, std_c, 1.0
            )
            score = gain / (n_above + n_seq**2)
        ok = score > best_score[rows]
        best_score[rows[ok]] = score[ok]
        best_eps[rows[ok]] = eps[ok]
    best_eps = np.where(cnt > 0, best_eps, floor)
    return np.maximum(best_eps, floor).astype(np.float32)


def _masked_squares(e: np.ndarray, mean: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    """(e - mean per row) ** 2 where `keep` (everywhere if None), 0 elsewhere: one new array, squared in place."""
    d = e - mean[:, None]
    if keep is not None:
        d[~keep] = 0.0
    return np.square(d, out=d)

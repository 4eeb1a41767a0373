"""Thresholds and the alert lifecycle as pure functions over (keys, points) arrays."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly.config import EngineConfig
from anomaly.thresholds import (
    ALERT_FIELDS,
    ALERT_LENGTH,
    Z_GRID,
    DSpotThreshold,
    DynamicThreshold,
    SpotThreshold,
    Threshold,
    ewma,
    fit_gpd,
    gpd_quantile,
    ordered_history,
    push_history,
    select_epsilon,
    step_alerts,
)


def test_epsilon_separates_rare_spikes_from_the_bulk() -> None:
    rng = np.random.default_rng(0)
    hist = rng.normal(1.0, 0.05, (1, 200)).astype(np.float32)
    hist[0, [50, 51, 120]] = 5.0
    eps = select_epsilon(hist, np.array([200]), floor=0.0)[0]
    bulk = np.delete(hist[0], [50, 51, 120])
    assert bulk.max() < eps < 5.0


def test_epsilon_without_outliers_is_mean_plus_the_largest_z() -> None:
    hist = np.tile(np.array([1.0, 2.0], np.float32), 50)[None, :]
    eps = select_epsilon(hist, np.array([100]), floor=0.0)[0]
    assert eps == np.float32(1.5 + Z_GRID[-1] * 0.5)


def test_epsilon_uses_only_filled_history_and_respects_the_floor() -> None:
    hist = np.zeros((2, 8), np.float32)
    hist[0, :3] = [0.1, 0.2, 0.3]
    eps = select_epsilon(hist, np.array([3, 0]), floor=0.0)
    seen = hist[0, :3].astype(np.float64)
    assert eps[0] == np.float32(seen.mean() + Z_GRID[-1] * seen.std())  # the zeros past `pushed` are ignored
    assert eps[1] == 0.0  # empty history: the floor
    assert select_epsilon(hist, np.array([3, 0]), floor=2.0).tolist() == [2.0, 2.0]


def _full_grid_scores(hist: np.ndarray, pushed: np.ndarray) -> tuple[np.ndarray, ...]:
    """The dynamic threshold's definition evaluated at every z for every key: the scores (K, Z), -inf where a z
    does not count, the candidate epsilons (K, Z), the epsilon where none counts (K,) and the counts (K,)."""
    e, valid = ordered_history(hist.astype(np.float64), pushed)
    cnt = valid.sum(axis=1)
    safe = np.maximum(cnt, 1)
    mean = np.where(valid, e, 0.0).sum(axis=1) / safe
    std = np.sqrt(np.maximum((np.where(valid, e - mean[:, None], 0.0) ** 2).sum(axis=1) / safe, 0.0))
    scores, candidates = np.full((len(e), len(Z_GRID)), -np.inf), np.zeros((len(e), len(Z_GRID)))
    for j, z in enumerate(Z_GRID):
        eps = mean + z * std
        above = valid & (e > eps[:, None])
        below = valid & ~above
        n_above, n_below = above.sum(axis=1), np.maximum(below.sum(axis=1), 1)
        mean_b = np.where(below, e, 0.0).sum(axis=1) / n_below
        std_b = np.sqrt((np.where(below, e - mean_b[:, None], 0.0) ** 2).sum(axis=1) / n_below)
        n_seq = (above & ~np.concatenate([np.zeros((len(e), 1), bool), above[:, :-1]], axis=1)).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            gain = (mean - mean_b) / np.where(mean > 0, mean, 1.0) + (std - std_b) / np.where(
                std > 0, std, 1.0
            )
            score = np.where(n_above > 0, gain / (n_above + n_seq**2), -np.inf)
        ok = (n_above > 0) & (n_above < 0.5 * cnt) & (n_seq <= 5)
        scores[:, j], candidates[:, j] = np.where(ok, score, -np.inf), eps
    return scores, candidates, mean + Z_GRID[-1] * std, cnt


def _full_grid_epsilon(hist: np.ndarray, pushed: np.ndarray, floor: float) -> np.ndarray:
    """The epsilon of the first z with the best score (NaN scores never win), for every key."""
    scores, candidates, best_eps, cnt = _full_grid_scores(hist, pushed)
    best_score = np.full(len(scores), -np.inf)
    for j in range(len(Z_GRID)):
        ok = scores[:, j] > best_score
        best_score, best_eps = (
            np.where(ok, scores[:, j], best_score),
            np.where(ok, candidates[:, j], best_eps),
        )
    return np.maximum(np.where(cnt > 0, best_eps, floor), floor).astype(np.float32)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_epsilon_equals_the_full_grid_to_the_bit() -> None:
    rng = np.random.default_rng(3)
    for trial in range(240):
        k, n = int(rng.choice([1, 3, 40])), int(rng.choice([16, 33, 128]))
        hist = [
            rng.normal(1.0, 0.3, (k, n)),
            rng.exponential(1.0, (k, n)) ** 2,  # heavy tail: many z count
            rng.integers(0, 4, (k, n)).astype(float),  # ties at epsilon
            rng.standard_cauchy((k, n)),
            rng.normal(1.0, 0.1, (k, n)),
        ][trial % 5].astype(np.float32)
        if trial % 5 == 4:  # a few separate spikes: the best z has up to 5 sequences above it, or just more
            for row in hist:
                row[rng.choice(n, int(rng.integers(1, 8)), replace=False)] += rng.uniform(1.0, 3.0)
        if trial % 5 == 1:
            hist[rng.random((k, n)) < 0.02] = rng.choice([np.nan, np.inf])
        pushed = rng.integers(0, 3 * n, k) if trial % 2 else rng.integers(0, n + 1, k)
        if trial % 3 == 0:  # new keys (empty history) among the others: they take no part in the arithmetic
            pushed[rng.random(k) < 0.4] = 0
        floor = float(rng.choice([0.0, 1.0]))
        assert (
            select_epsilon(hist, pushed, floor).tobytes() == _full_grid_epsilon(hist, pushed, floor).tobytes()
        )


def _histories(rng: np.random.Generator, k: int, n: int, kind: int) -> np.ndarray:
    """Score-like rings of several shapes: spiky gamma (the usual), bell, ties, constant, heavy tails, negative."""
    if kind == 0:
        hist = rng.gamma(4.0, 0.25, (k, n))
        spikes = rng.random((k, n)) < 0.01
        hist[spikes] += rng.uniform(1.0, 6.0, int(spikes.sum()))
    elif kind == 1:
        hist = rng.normal(1.0, 0.1, (k, n))
    elif kind == 2:
        hist = rng.integers(0, 3, (k, n)) * 0.1 + (rng.random((k, n)) < 0.02) * rng.integers(1, 4, (k, n))
    elif kind == 3:
        hist = np.repeat(rng.uniform(0.0, 3.0, (k, 1)), n, axis=1)
        hist[:, rng.integers(0, n)] += rng.choice([0.0, 1e-7, 2.0])
    elif kind == 4:
        hist = rng.standard_cauchy((k, n)) + 1e3 * (rng.random((k, 1)) < 0.5)
    else:
        hist = rng.normal(-1.0, 1.0, (k, n))
    return hist.astype(np.float32)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("hand_all_to_grid", [False, True])
def test_tail_search_equals_the_plain_search_to_the_bit(
    monkeypatch: pytest.MonkeyPatch, hand_all_to_grid: bool
) -> None:
    """The tail search against the plain grid search (kept as `grid_epsilon`), on rings full, wrapped, partly
    filled and empty, with ties, constant rows and NaN/inf. With infinite error bounds every key with a
    candidate z goes to the plain search, so the hand-over is checked as well as the tail arithmetic."""
    from anomaly import epsilon

    if hand_all_to_grid:
        monkeypatch.setattr(epsilon, "_SAFETY", np.inf)
    rng = np.random.default_rng(8)
    for trial in range(60):
        k, n = int(rng.choice([1, 7, 60])), int(rng.choice([8, 64, 512]))
        hist = _histories(rng, k, n, trial % 6)
        if trial % 7 == 3:
            hist[rng.random((k, n)) < 0.01] = rng.choice([np.nan, np.inf, -np.inf])
        pushed = [rng.integers(n, 4 * n, k), rng.integers(0, n + 1, k), rng.integers(0, 3 * n, k)][trial % 3]
        floor = float(rng.choice([0.0, 0.5]))
        expected = _full_grid_epsilon(hist, pushed, floor)
        assert epsilon.select_epsilon(hist, pushed, floor).tobytes() == expected.tobytes()
        assert epsilon.for_nonempty(epsilon.grid_epsilon, hist, pushed, floor).tobytes() == expected.tobytes()


def test_tail_search_settles_almost_every_key_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """On score-like histories the error bounds are tight enough that the plain search is rarely needed (it is
    the slow path), and each key's epsilon is the same alone as among the others."""
    from anomaly import epsilon

    handed: list[int] = []
    grid = epsilon.grid_epsilon
    monkeypatch.setattr(epsilon, "grid_epsilon", lambda h, p, f: handed.append(len(p)) or grid(h, p, f))
    rng = np.random.default_rng(9)
    hist, pushed = _histories(rng, 300, 512, 0), rng.integers(512, 5000, 300)
    together = epsilon.select_epsilon(hist, pushed, 0.0)
    assert sum(handed) <= 3
    alone = [epsilon.select_epsilon(hist[i : i + 1], pushed[i : i + 1], 0.0)[0] for i in range(0, 300, 37)]
    assert np.array(alone).tobytes() == together[::37].tobytes()
    assert together.tobytes() == _full_grid_epsilon(hist, pushed, 0.0).tobytes()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_tail_scores_are_within_their_error_bounds_of_the_plain_scores() -> None:
    """Each tail score differs from the plain search's score of the same z by less than its bound (before the
    safety factor), and the tail counts the same z as the plain search, key by key."""
    from anomaly import epsilon

    rng = np.random.default_rng(10)
    for trial in range(24):
        n = int(rng.choice([16, 64, 512]))
        hist, pushed = _histories(rng, 50, n, trial % 6), rng.integers(1, 3 * n, 50)
        e, valid, cnt, mean, ss, std = epsilon._moments(hist, pushed)
        thr = mean[:, None] + Z_GRID.astype(np.float64)[None, :] * std[:, None]
        keys, ok, _, score, err = epsilon.tail_scores(e, valid, cnt, mean, ss, std, thr)
        plain = _full_grid_scores(hist, pushed)[0]
        counts = np.isfinite(plain)
        assert not counts[np.setdiff1d(np.arange(50), keys)].any()
        assert ok.tolist() == counts[keys].tolist()
        assert (np.abs(score - plain[keys])[ok] <= err[ok] / epsilon._SAFETY).all()


def test_a_sequence_above_does_not_run_across_keys() -> None:
    """Six equal spikes are six sequences above (too many: no z counts), also where a key's first score
    follows another key's last one in memory."""
    hist = np.full((3, 64), 1.0, np.float32) + np.float32(0.01) * (np.arange(64) % 3).astype(np.float32)
    hist[:, [0, 10, 20, 30, 40, 63]] = 3.0
    pushed = np.full(3, 64)
    assert select_epsilon(hist, pushed, 0.0).tobytes() == _full_grid_epsilon(hist, pushed, 0.0).tobytes()


def test_ring_buffer_keeps_the_last_n_in_order() -> None:
    hist = np.zeros((1, 4), np.float32)
    pushed = np.zeros(1, np.int64)
    values = np.arange(1, 7, dtype=np.float32)[None, :]
    mask = np.array([[True, True, False, True, True, True]])
    push_history(hist, pushed, values, mask)
    assert pushed.tolist() == [5]
    from anomaly.thresholds import ordered_history

    ordered, valid = ordered_history(hist, pushed)
    assert ordered[0].tolist() == [2.0, 4.0, 5.0, 6.0] and valid.all()


def test_ordered_history_is_each_ring_from_its_oldest_slot() -> None:
    """Rings unwrapped, wrapped at every offset, and mixed: the rotation by (pushed mod N) of each row."""
    rng = np.random.default_rng(4)
    hist = rng.normal(size=(40, 16))
    for pushed in (rng.integers(0, 17, 40), rng.integers(16, 100, 40), np.arange(40) + 3):
        start = np.where(pushed >= 16, pushed % 16, 0)
        expected = np.take_along_axis(hist, (start[:, None] + np.arange(16)) % 16, axis=1)
        ordered, valid = ordered_history(hist, pushed)
        assert ordered.tobytes() == expected.tobytes()
        assert valid.sum(axis=1).tolist() == np.minimum(pushed, 16).tolist()


def test_ring_pushed_in_place_equals_gather_push_scatter() -> None:
    """The dynamic threshold writes only the pushed slots of the store's rings; the result is the generic
    gather -> update -> write back of every key's whole ring, to the bit (wrapping rings, masked points)."""
    rng = np.random.default_rng(3)
    cfg = EngineConfig(threshold="dynamic", dynamic_history=16, dynamic_warmup=30)
    kind = DynamicThreshold(cfg, 1.0)
    for _ in range(50):
        size = 40
        store = {
            "hist": rng.normal(size=(size, 16)).astype(np.float32),
            "pushed": rng.integers(0, 60, size),
            "dyn_doubt": rng.random(size) < 0.2,
        }
        rows = rng.permutation(size)[: rng.integers(1, size)]
        w = int(rng.integers(1, 12))
        scores = rng.normal(size=(len(rows), w)).astype(np.float32)
        scores[rng.random(scores.shape) < 0.1] = 1e13  # the warm-up guard's imprints
        open_pts = rng.random((len(rows), w)) < 0.3
        anomalous = rng.random((len(rows), w)) < 0.2
        generic = {name: v.copy() for name, v in store.items()}
        Threshold.update_rows(kind, generic, rows, scores, anomalous, open_pts)
        kind.update_rows(store, rows, scores, anomalous, open_pts)
        assert store["hist"].tobytes() == generic["hist"].tobytes()
        assert store["pushed"].tolist() == generic["pushed"].tolist()
        assert store["dyn_doubt"].tolist() == generic["dyn_doubt"].tolist()


def test_ewma_carries_across_windows() -> None:
    raw = np.array([[1.0, 3.0], [2.0, 2.0]])
    out, last = ewma(raw, np.array([np.nan, 0.0]), alpha=0.5)
    assert out.tolist() == [[1.0, 2.0], [1.0, 1.5]] and last.tolist() == [2.0, 1.5]


def fresh(k: int, f: int = 2) -> dict[str, np.ndarray]:
    shapes = {"alert_contrib": (k, f)}
    dtypes = {"run_anom": np.int32, "run_norm": np.int32, "alert_open": bool}
    return {n: np.zeros(shapes.get(n, (k,)), dtypes.get(n, np.float64)) for n in ALERT_FIELDS}


def test_step_alerts_opens_after_k_closes_after_m() -> None:
    flags = np.array([[0, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 0]], bool)  # dips of 1 and 3 points < m = 4
    n = flags.shape[1]
    ts = np.arange(n, dtype=np.float64)[None, :] + 100.0
    scores = np.where(flags, 5.0, 0.5) + np.arange(n)[None, :] * 0.01
    state = fresh(1)
    open_pts, tr = step_alerts(state, ts, scores, flags, np.array([2.0]), np.array([[3.0, 1.0]]), 2, 4)
    assert [(t.status, t.start, t.at) for t in tr] == [("open", 101.0, 102.0)]
    assert open_pts[0].tolist() == [
        False,
        False,
        True,
        True,
        True,
        True,
        True,
        True,
        True,
        True,
        True,
        True,
        True,
    ]
    state2 = dict(state)
    flags2 = np.zeros((1, 3), bool)
    _, tr2 = step_alerts(
        state2, ts[:, :3] + 13, np.full((1, 3), 0.5), flags2, np.array([2.0]), np.array([[1.0, 1.0]]), 2, 4
    )
    assert [(t.status, t.start, t.end, t.at) for t in tr2] == [("closed", 101.0, 110.0, 114.0)]
    assert tr2[0].peak == float(scores[0, 10]) and tr2[0].threshold == 2.0
    assert tr2[0].contributions.tolist() == [4.0, 2.0]  # opening window + the next window's errors


# --- SPOT / DSPOT -------------------------------------------------------------------------------------------------


def test_gpd_method_of_moments_matches_the_sample_mean_and_variance() -> None:
    rng = np.random.default_rng(3)
    y = rng.pareto(4.0, 50).astype(np.float32)
    ring = np.zeros((1, 64), np.float32)
    ring[0, :50] = y
    xi, sigma = fit_gpd(ring, np.array([50]))
    m, v = y.astype(np.float64).mean(), y.astype(np.float64).var(ddof=1)
    # GPD mean sigma / (1 - xi) and variance sigma^2 / ((1 - xi)^2 (1 - 2 xi)) equal the sample's
    assert sigma[0] / (1 - xi[0]) == pytest.approx(m, rel=1e-12)
    assert sigma[0] ** 2 / ((1 - xi[0]) ** 2 * (1 - 2 * xi[0])) == pytest.approx(v, rel=1e-12)
    assert fit_gpd(ring, np.array([1]))[0][0] == 0.0  # one excess: exponential tail
    ring[0, :50] = np.linspace(
        0.0, 1.0, 50
    )  # a bounded (uniform) sample: MoM says xi < 0; taken as exponential
    xi, sigma = fit_gpd(ring, np.array([50]))
    assert xi[0] == 0.0 and sigma[0] == pytest.approx(0.5, rel=1e-7)  # the mean (float32 ring)


def test_gpd_quantile_is_exceeded_with_probability_q() -> None:
    t, xi, sigma, n, nt = np.array([2.0, 2.0]), np.array([0.2, 0.0]), np.array([0.5, 0.5]), 1000, 40
    z = gpd_quantile(t, xi, sigma, 1e-3, np.array([n, n]), np.array([nt, nt]))
    survival = [
        nt / n * (1 + xi[0] * (z[0] - t[0]) / sigma[0]) ** (-1 / xi[0]),
        nt / n * np.exp(-(z[1] - t[1]) / sigma[1]),
    ]
    assert survival == pytest.approx([1e-3, 1e-3], rel=1e-12)
    # a risk above P(X > t) is out of the tail's reach: t itself
    assert gpd_quantile(t, xi, sigma, 0.5, np.array([n, n]), np.array([nt, nt])).tolist() == [2.0, 2.0]


def spot_state(threshold: SpotThreshold, k: int) -> dict[str, np.ndarray]:
    out = {}
    for name, (shape, dtype, fill) in threshold.fields().items():
        out[name] = np.full((k, *shape), np.nan if fill == "nan" else 0, dtype)
    return out


def test_spot_epsilon_equals_a_direct_gpd_computation_on_a_fixed_sample() -> None:
    cfg = EngineConfig(
        threshold="spot", spot_init=200, spot_level=0.9, spot_q=1e-3, spot_peaks=64, spot_min=0.0
    )
    spot = SpotThreshold(cfg, 1.5)
    sample = np.random.default_rng(7).pareto(3.0, (1, 300)).astype(np.float32)  # a heavy tail: xi > 0
    state = spot_state(spot, 1)
    eps0, warm0 = spot.epsilon(state, 1)
    assert not warm0[0] and eps0[0] == 0.0  # calibrating: cannot alert, epsilon is the floor
    never = np.zeros_like(sample, bool)
    spot.update(state, sample[:, :150], never, never)
    spot.update(state, sample[:, 150:], never, never)  # in two windows: state carries
    eps, warm = spot.epsilon(state, 1)
    # the same by hand: t from the calibration sample, excesses of every later point, MoM fit, z_q
    x = sample[0].astype(np.float64)
    t = float(np.float32(np.quantile(x[:200], 0.9)))
    exc = np.concatenate([x[:200][x[:200] > t], x[200:][x[200:] > t]]) - t
    m, v = exc.mean(), exc.var(ddof=1)
    xi, sigma = 0.5 * (1 - m * m / v), 0.5 * m * (m * m / v + 1)
    z = t + sigma / xi * ((1e-3 * 300 / len(exc)) ** (-xi) - 1)
    assert xi > 0.05
    assert warm[0] and state["spot_n"][0] == 300 and state["spot_npeaks"][0] == len(exc)
    assert eps[0] == pytest.approx(z, rel=1e-6)


def test_spot_does_not_learn_points_it_flags_and_dspot_follows_the_baseline() -> None:
    cfg = EngineConfig(spot_init=64, spot_level=0.9, spot_depth=16, spot_min=0.0, spot_q=1e-3)
    rng = np.random.default_rng(1)
    base = rng.normal(0, 0.1, (1, 256)).astype(np.float32)
    spot, dspot = SpotThreshold(cfg, 1.5), DSpotThreshold(cfg, 1.5)
    s1, s2 = spot_state(spot, 1), spot_state(dspot, 1)
    never = np.zeros_like(base, bool)
    spot.update(s1, base, never, never)
    dspot.update(s2, base, never, never)
    before = {k: v.copy() for k, v in s1.items()}
    flagged = np.ones((1, 8), bool)
    spot.update(s1, np.full((1, 8), 50.0, np.float32), flagged, flagged)
    assert all(np.array_equal(before[k], s1[k], equal_nan=True) for k in s1)  # anomalies leave it untouched
    e_spot, e_dspot = spot.epsilon(s1, 1)[0][0], dspot.epsilon(s2, 1)[0][0]
    drift = (rng.normal(0, 0.1, 1000) + np.linspace(0, 5, 1000)).astype(np.float32)[None, :]
    flags = []
    for lo in range(0, 1000, 8):  # a slow drift of the baseline, streamed window by window
        x = drift[:, lo : lo + 8]
        flagged = x > dspot.epsilon(s2, 1)[0][:, None]
        flags.append(flagged)
        dspot.update(s2, x, flagged, flagged)
    assert np.concatenate(flags, axis=1).mean() < 0.01  # DSPOT follows it, SPOT's epsilon stays put
    assert dspot.epsilon(s2, 1)[0][0] == pytest.approx(e_dspot + 5.0, abs=0.3)
    assert spot.epsilon(s1, 1)[0][0] == e_spot


def test_level_shift_closes_an_alert_after_max_open_readings_whatever_the_timestamps() -> None:
    n = 30
    flags = np.ones((1, n), bool)
    flags[0, 5:7] = False  # a short dip (< close_after) inside the alert still counts towards its length
    got = []
    for ts in (np.arange(n, dtype=np.float64), np.arange(n, dtype=np.float64) ** 2 * 1000.0):
        state = fresh(1)
        state[ALERT_LENGTH] = np.zeros(1, np.int32)
        _, tr = step_alerts(
            state, ts[None, :], np.full((1, n), 5.0), flags, np.array([2.0]), np.ones((1, 2)), 3, 4, 0.0, 10
        )
        got.append([(t.status, ts.tolist().index(t.start), ts.tolist().index(t.at), t.reason) for t in tr])
    assert got[0] == got[1] == [("open", 0, 2, ""), ("closed", 0, 9, "level_shift")]  # the 10th point


def test_a_partial_level_shift_closes_only_where_the_caller_allows_it() -> None:
    """partial_readings: the alert closes as a level shift at its N-th point where partial_ok holds there (key 0:
    from point 8 on), and stays open where it never does (key 1)."""
    n = 20
    ts = np.tile(np.arange(n, dtype=np.float64), (2, 1))
    ok = np.zeros((2, n), bool)
    ok[0, 8:] = True  # key 0: a minority of features has moved from point 8 on; key 1: never
    state = fresh(2)
    state[ALERT_LENGTH] = np.zeros(2, np.int32)
    open_pts, tr = step_alerts(
        state,
        ts,
        np.full((2, n), 5.0),
        np.ones((2, n), bool),
        np.array([2.0, 2.0]),
        np.ones((2, 2)),
        3,
        4,
        0.0,
        0,
        6,
        ok,
    )
    assert [(t.row, t.status, t.at, t.reason) for t in tr] == [
        (0, "open", 2.0, ""),
        (1, "open", 2.0, ""),
        (0, "closed", 8.0, "level_shift"),  # open 6 points at point 5, but allowed only from point 8
    ]
    assert open_pts.tolist() == [[False] * 2 + [True] * 6 + [False] * 12, [False] * 2 + [True] * 18]


def test_level_shift_closes_an_alert_after_max_open_seconds() -> None:
    n = 30
    ts = np.arange(n, dtype=np.float64)[None, :]
    flags = np.ones((1, n), bool)
    state = fresh(1)
    open_pts, tr = step_alerts(
        state, ts, np.full((1, n), 5.0), flags, np.array([2.0]), np.ones((1, 2)), 3, 4, 10.0
    )
    assert [(t.status, t.start, t.at, t.reason) for t in tr] == [
        ("open", 0.0, 2.0, ""),
        ("closed", 0.0, 10.0, "level_shift"),
    ]
    assert (
        open_pts[0].tolist() == [False, False] + [True] * 8 + [False] * 20
    )  # muted for the rest of the window
    _, tr2 = step_alerts(
        state, ts + n, np.full((1, n), 5.0), flags, np.array([2.0]), np.ones((1, 2)), 3, 4, 10.0
    )
    assert [(t.status, t.start, t.reason) for t in tr2][:1] == [("open", 30.0, "")]  # can alert again

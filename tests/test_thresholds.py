"""Thresholds and the alert lifecycle as pure functions over (keys, points) arrays."""

from __future__ import annotations

import numpy as np

from anomaly.thresholds import ALERT_FIELDS, Z_GRID, ewma, push_history, select_epsilon, step_alerts


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

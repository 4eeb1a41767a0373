"""`python -m anomaly.bench_epsilon`: CPU of the dynamic threshold's epsilon search, the tail search
(`epsilon.select_epsilon`) against the plain grid search (`epsilon.grid_epsilon`), side by side.

Each case alternates the two on the same histories many times and reports the median of the per-pair CPU time
ratios (plain / tail), so a busy machine slows both sides alike; it also checks that both give the same bits.
Histories: smoothed-score-like (gamma) with a few spikes, as a key's ring holds after a while."""

from __future__ import annotations

import sys
import time

import numpy as np

from anomaly.epsilon import for_nonempty, grid_epsilon, tail_epsilon

HISTORY = 512  # engine.dynamic_history's default


def histories(keys: int, filled: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rings (keys, HISTORY) float32 and their push counts: `filled` is "full" (wrapped rings), "partial"
    (1 to HISTORY - 1 scores) or "sparse" (95 % of the keys new, with an empty ring; the rest full)."""
    rng = np.random.default_rng(seed)
    hist = rng.gamma(4.0, 0.25, (keys, HISTORY)).astype(np.float32)
    spikes = rng.random((keys, HISTORY)) < 0.004
    hist[spikes] += rng.uniform(1.0, 6.0, int(spikes.sum())).astype(np.float32)
    pushed = rng.integers(HISTORY, 50 * HISTORY, keys)
    if filled == "partial":
        pushed = rng.integers(1, HISTORY, keys)
    elif filled == "sparse":
        pushed[rng.random(keys) < 0.95] = 0
    return hist, pushed


def compare(hist: np.ndarray, pushed: np.ndarray, repeats: int) -> tuple[float, float, float, bool]:
    """Median CPU ms of the plain and the tail search, the median of their per-pair ratios (plain / tail), and
    whether both gave the same bits."""
    searches = (grid_epsilon, tail_epsilon)
    outs = [for_nonempty(search, hist, pushed, 0.0) for search in searches]
    cpu: list[list[float]] = [[], []]
    for _ in range(repeats):
        for side, search in enumerate(searches):
            t = time.thread_time()
            for_nonempty(search, hist, pushed, 0.0)
            cpu[side].append(time.thread_time() - t)
    plain, tail = np.array(cpu[0]), np.array(cpu[1])
    same = outs[0].tobytes() == outs[1].tobytes()
    return float(np.median(plain)) * 1e3, float(np.median(tail)) * 1e3, float(np.median(plain / tail)), same


CASES = (
    ("1,000 keys, full rings", 1000, "full"),
    ("1,000 keys, partly filled", 1000, "partial"),
    ("10 keys, full rings", 10, "full"),
    ("35,000 keys, 95 % empty", 35000, "sparse"),
)


def main(repeats: int = 30) -> None:
    print(
        f"{'case':28} {'plain ms':>9} {'tail ms':>8} {'ratio':>6}  (CPU, medians of {repeats} alternating pairs)"
    )
    for name, keys, filled in CASES:
        hist, pushed = histories(keys, filled)
        p, t, r, same = compare(hist, pushed, repeats if keys < 10000 else max(repeats // 3, 3))
        print(f"{name:28} {p:9.2f} {t:8.2f} {r:6.2f}x  {'same bits' if same else 'DIFFERENT epsilons'}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)

"""Statistics of side-by-side benchmarks: paired ratios, a distribution-free confidence interval of their median,
flatness over rounds and a trend fitted over every pair.

The team's rule is "compare, don't clock": on a shared 2-core machine the same work moves 10-30 % from minute to
minute, so a change is shown by two things measured next to each other (a pair), and a round's value is the
median of its pairs' ratios. Pure functions, no I/O: the benchmarks print what these return.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def median_ci_ranks(n: int, level: float = 0.95) -> tuple[int, int] | None:
    """1-based ranks ``(lo, hi)`` of the order statistics that bound the median with at least ``level``
    confidence, for any continuous distribution: the number of values below the true median is Binomial(n, 1/2),
    so ``P(x_(k) <= median <= x_(n+1-k)) = 1 - 2 P(B <= k - 1)``; ``k`` is the largest rank that keeps this at
    or above ``level``. None when ``n`` is too small for that level (n < 6 at 95 %)."""
    if n < 1:
        return None
    tail, k = 0.0, 0
    while True:  # tail = P(B <= k) after each step
        nxt = tail + math.comb(n, k) / 2**n
        if 1 - 2 * nxt < level:
            break
        tail, k = nxt, k + 1
    return (k, n + 1 - k) if k >= 1 else None


@dataclass(frozen=True)
class Paired:
    """A round's pairs: the median ratio and its distribution-free confidence interval (nan when too few)."""

    n: int
    median: float
    lo: float
    hi: float

    def as_dict(self) -> dict[str, float]:
        return {
            "n": self.n,
            "median": round(self.median, 4),
            "lo": round(self.lo, 4),
            "hi": round(self.hi, 4),
        }


def paired(ratios: Sequence[float], level: float = 0.95) -> Paired:
    """Median of the per-pair ratios with its ``level`` confidence interval (order statistics, no assumption on
    the ratios' distribution)."""
    ordered = sorted(r for r in ratios if math.isfinite(r))
    ranks = median_ci_ranks(len(ordered), level)
    lo, hi = (ordered[ranks[0] - 1], ordered[ranks[1] - 1]) if ranks else (float("nan"), float("nan"))
    return Paired(len(ordered), median(ordered), lo, hi)


def flatness(values: Sequence[float]) -> tuple[float, float]:
    """``(max/min, last/first)`` of a quantity over the rounds."""
    return max(values) / min(values), values[-1] / values[0]


@dataclass(frozen=True)
class Trend:
    """Least squares of log(ratio) on the round number over every pair: the change from the first round to the
    last (``change``, a factor) with its 95 % interval (normal approximation of the slope's standard error)."""

    pairs: int
    change: float
    lo: float
    hi: float

    def as_dict(self) -> dict[str, float]:
        return {
            "pairs": self.pairs,
            "change": round(self.change, 4),
            "lo": round(self.lo, 4),
            "hi": round(self.hi, 4),
        }


def trend(rounds: Sequence[Sequence[float]]) -> Trend:
    """The fitted change of the per-pair ratios over ``rounds`` (each a list of ratios, in round order)."""
    xs = [float(i) for i, rs in enumerate(rounds) for r in rs if r > 0 and math.isfinite(r)]
    ys = [math.log(r) for rs in rounds for r in rs if r > 0 and math.isfinite(r)]
    n, span = len(xs), len(rounds) - 1
    if n < 3 or span < 1:
        return Trend(n, float("nan"), float("nan"), float("nan"))
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return Trend(n, float("nan"), float("nan"), float("nan"))
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    resid = sum((y - my - slope * (x - mx)) ** 2 for x, y in zip(xs, ys, strict=True))
    se = math.sqrt(resid / (n - 2) / sxx)
    return Trend(
        n, math.exp(slope * span), math.exp((slope - 1.96 * se) * span), math.exp((slope + 1.96 * se) * span)
    )


@dataclass(frozen=True)
class NoiseFloor:
    """What the headline (max/min over the rounds of the per-round median of pairs) would be with no change at
    all between the rounds, given each round's own spread: ``median`` and ``p95`` of its bootstrap
    distribution, and ``p_over``, the share of draws above ``limit``."""

    draws: int
    median: float
    p95: float
    limit: float
    p_over: float

    def as_dict(self) -> dict[str, float]:
        return {
            "draws": self.draws,
            "median": round(self.median, 4),
            "p95": round(self.p95, 4),
            "limit": self.limit,
            "p_over": round(self.p_over, 4),
        }


def noise_floor(
    rounds: Sequence[Sequence[float]], limit: float = 1.10, draws: int = 2000, seed: int = 0
) -> NoiseFloor:
    """The headline's distribution under "nothing changes between the rounds": each round's pair ratios are
    divided by their median (only their spread is kept), resampled with replacement (as many as the round had)
    and their median taken; max/min of those medians, ``draws`` times (seeded: the same input gives the same
    answer). A headline well inside it is noise; near its 95th percentile, a miss says little."""
    import random

    rng = random.Random(seed)
    centred = []
    for rs in rounds:
        ok = [math.log(r) for r in rs if r > 0 and math.isfinite(r)]
        if ok:
            mid = median(ok)
            centred.append([x - mid for x in ok])
    if len(centred) < 2:
        return NoiseFloor(0, float("nan"), float("nan"), limit, float("nan"))
    spans = []
    for _ in range(draws):
        meds = [median(rng.choices(c, k=len(c))) for c in centred]
        spans.append(math.exp(max(meds) - min(meds)))
    spans.sort()
    p95 = spans[min(len(spans) - 1, math.ceil(0.95 * len(spans)) - 1)]
    return NoiseFloor(draws, median(spans), p95, limit, sum(s > limit for s in spans) / draws)

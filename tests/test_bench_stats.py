"""The side-by-side statistics of the benchmarks (the churn bench's paired ratios)."""

from __future__ import annotations

import math

from anomaly.bench_stats import flatness, median, median_ci_ranks, noise_floor, paired, trend


def test_the_medians_confidence_ranks_are_the_binomial_order_statistics() -> None:
    # the textbook table for 95 %: n = 6 -> (1, 6), 10 -> (2, 9), 20 -> (6, 15), 36 -> (12, 25)
    assert [median_ci_ranks(n) for n in (5, 6, 10, 12, 20, 36, 60)] == [
        None,
        (1, 6),
        (2, 9),
        (3, 10),
        (6, 15),
        (12, 25),
        (22, 39),
    ]
    for n in (6, 10, 20, 36, 60):  # each interval covers at least 95 %, the next narrower one less
        lo, _ = median_ci_ranks(n)  # type: ignore[misc]
        below = sum(math.comb(n, i) for i in range(lo)) / 2**n
        below_next = below + math.comb(n, lo) / 2**n
        assert 1 - 2 * below >= 0.95 > 1 - 2 * below_next


def test_a_rounds_pairs_give_their_median_ratio_and_its_interval() -> None:
    ratios = [1.3, 0.9, 1.0, 1.1, 0.8, 1.2, 1.05, 0.95, 1.15, 0.85]  # sorted: 0.8 0.85 0.9 ... 1.3
    got = paired(ratios + [float("nan")])
    assert (got.n, got.median, got.lo, got.hi) == (10, 1.025, 0.85, 1.2)
    few = paired([1.0, 2.0])
    assert (few.n, few.median, math.isnan(few.lo), math.isnan(few.hi)) == (2, 1.5, True, True)
    assert median([3.0, 1.0, 2.0]) == 2.0 and math.isnan(median([]))


def test_flatness_and_the_fitted_trend_over_rounds() -> None:
    assert flatness([1.0, 1.1, 0.95, 1.05, 1.045]) == (1.1 / 0.95, 1.045)
    steady = [[0.9, 1.0, 1.1 / 0.99 * 0.99, 1.0 / 0.9]] * 5  # the same ratios every round: no change
    flat = trend(steady)
    assert (flat.pairs, round(flat.change, 12)) == (20, 1.0) and flat.lo < 1.0 < flat.hi
    growing = [
        [1.1**r * x for x in (0.9, 1.0, 1.1)] for r in range(5)
    ]  # +10 % a round: 1.1^4 from first to last
    up = trend(growing)
    assert (up.pairs, round(up.change, 12)) == (15, round(1.1**4, 12)) and up.lo > 1.0


def test_the_headlines_noise_floor_keeps_each_rounds_spread_and_drops_its_level() -> None:
    spread = [0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25]
    rounds = [spread, spread, spread, spread, spread]
    floor = noise_floor(rounds, draws=300)
    assert floor.as_dict() == noise_floor(rounds, draws=300).as_dict()  # seeded
    assert 1.0 < floor.median < floor.p95 and 0.0 < floor.p_over < 1.0
    # a level that differs between the rounds is not noise: the floor only sees each round's spread
    levels = [[x * (1 + 0.1 * i) for x in spread] for i in range(5)]
    assert noise_floor(levels, draws=300).as_dict() == floor.as_dict()
    # no spread, no noise; twice the spread, a wider floor
    assert noise_floor([[1.02] * 7, [0.97] * 9], draws=50).as_dict() == {
        "draws": 50,
        "median": 1.0,
        "p95": 1.0,
        "limit": 1.1,
        "p_over": 0.0,
    }
    wide = noise_floor([[x * x for x in spread]] * 5, draws=300)
    assert wide.p95 > floor.p95 and wide.p_over > floor.p_over

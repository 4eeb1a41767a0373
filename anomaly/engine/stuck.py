"""Stuck-sensor rule: per feature, how many identical readings in a row make a sensor stuck (from the bundle's
training statistics), and the per-key runs that count them (`stuck_last`, `stuck_run`, `stuck_mute` state).

A point is anomalous when some watched feature has repeated the identical reading at least its limit times in
a row, whatever the model's error: a frozen sensor can look perfectly normal to a forecaster.
"""

from __future__ import annotations

import numpy as np

from anomaly.bundle import Bundle
from anomaly.config import EngineConfig
from anomaly.engine.state import put_rows, take_rows


def stuck_limits(
    bundle: Bundle, config: EngineConfig, n_features: int, targets: tuple[int, ...] | None
) -> np.ndarray | None:
    """Per feature: identical readings in a row that count as stuck (int32, (F,)); None when the rule is off
    (engine.stuck_min_run = 0) or the bundle carries no run statistics. Features with few distinct training
    values (flags, modes, counters) and context features (a command flag may hold its value for ever) get the
    int32 maximum: never stuck."""
    runs = bundle.calibration.get("feature_max_run")
    if not (config.stuck_min_run > 0 and runs is not None and len(runs) == n_features):
        return None
    limit = np.maximum(
        config.stuck_min_run, np.ceil(config.stuck_factor * np.asarray(runs, np.float64))
    ).astype(np.int32)
    distinct = bundle.calibration.get("feature_distinct")  # absent in older bundles: every feature
    if distinct is not None and len(distinct) == n_features:
        few = np.asarray(distinct) < config.stuck_min_distinct  # flags, modes, counters
        limit[few] = np.iinfo(np.int32).max
    if targets is not None:  # a context input (a command flag) may hold its value for ever
        context = np.setdiff1d(np.arange(n_features), targets)
        limit[context] = np.iinfo(np.int32).max
    return limit


def stuck_points(
    a: dict[str, np.ndarray], rows: np.ndarray, x: np.ndarray, limit: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Stuck-sensor rule (K, W): a point is anomalous when some feature has repeated the identical reading at
    least max(stuck_min_run, stuck_factor x its longest run in training) times in a row. A sensor that is
    quantized or slow repeats values in training too, so its limit is higher; a continuous sensor that
    freezes is caught after stuck_min_run readings, whatever its reconstruction error. `a`: the state arrays;
    the rows' runs are updated. Also returns which features are stuck at each point (K, W, F), None when none
    is: alerts name them."""
    out = np.zeros(x.shape[:2], bool)
    features: np.ndarray | None = None
    if limit is None:
        return out, features
    last, run = take_rows(a["stuck_last"], rows), take_rows(a["stuck_run"], rows)
    mute = take_rows(a["stuck_mute"], rows)
    for i in range(x.shape[1]):
        same = x[:, i] == last
        run = np.where(same, run + 1, 1)
        mute &= same  # an accepted stuck feature is judged again once it moves
        last = x[:, i]
        hit = run >= limit
        if hit.any():  # else no key is stuck at this reading (the common case)
            if features is None:
                features = np.zeros(x.shape, bool)
            features[:, i] = hit & ~mute
            out[:, i] = np.logical_or.reduce(features[:, i], axis=1)
    put_rows(a["stuck_last"], rows, last)
    put_rows(a["stuck_run"], rows, run)
    put_rows(a["stuck_mute"], rows, mute)
    return out, features

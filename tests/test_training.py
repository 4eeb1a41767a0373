from __future__ import annotations

import torch

from anomaly.config import DataConfig, ModelConfig, TrainConfig
from anomaly.data import load_series
from anomaly.training import train


def _train(train_csv, **kw):
    series, feats = load_series([train_csv], DataConfig())
    return train(series, feats, ModelConfig(window=8, hidden_size=16), TrainConfig(device="cpu", **kw))


def test_loss_falls_on_synthetic_data(train_csv) -> None:
    result = _train(train_csv, epochs=6, batch_size=16, patience=10)
    losses = [h["val_loss"] for h in result.history]
    assert len(losses) == 6
    assert min(losses[-2:]) < 0.8 * losses[0]
    assert result.windows_per_second > 0


def test_training_is_deterministic_with_a_seed(train_csv) -> None:
    a = _train(train_csv, epochs=2, seed=3)
    b = _train(train_csv, epochs=2, seed=3)
    for (na, ta), (nb, tb) in zip(
        a.bundle.model.state_dict().items(), b.bundle.model.state_dict().items(), strict=True
    ):
        assert na == nb and torch.equal(ta, tb)
    assert a.history == [dict(h, **{}) for h in b.history]
    assert a.bundle.calibration == b.bundle.calibration


def test_calibration_is_stored(train_csv) -> None:
    cal = _train(train_csv, epochs=1).bundle.calibration
    q = cal["point_error_quantiles"]
    assert cal["reference_error"] == q["0.99"]
    assert q["0.5"] <= q["0.9"] <= q["0.99"] <= cal["point_error_max"]
    assert cal["default_threshold"] == 1.5
    assert len(cal["feature_error_mean"]) == 4


def test_training_learns_the_sampling_interval_and_cuts_where_the_engine_resets() -> None:
    """Issue 9 item 1: 10-minute data used to be reset on every reading by a fixed 300 s gap rule, and
    training ignored gaps. The interval is learnt, stored, and both sides cut at the same gap."""
    import numpy as np

    from anomaly.config import EngineConfig
    from anomaly.engine import Engine
    from tests.helpers import make_series

    s = make_series("a", 200, 3)
    s.timestamps = 1_700_000_000.0 + 600.0 * np.arange(200)
    s.timestamps[120:] += 3 * 86_400.0  # one three-day hole
    result = train(
        [s], ["x", "y", "z"], ModelConfig(window=8, hidden_size=8), TrainConfig(epochs=1, device="cpu")
    )
    bundle = result.bundle
    assert bundle.meta["sampling"] == {
        "interval_seconds": 600.0,
        "max_gap_seconds": 180_000.0,
        "gap_splits": 1,
    }
    assert bundle.sampling_interval == 600.0 and Engine(bundle, EngineConfig()).max_gap == 180_000.0
    assert Engine(bundle, EngineConfig(max_gap_seconds=50.0)).max_gap == 50.0
    assert result.bundle.meta["training"]["rows"] == 200
    legacy = dict(bundle.meta)
    del legacy["sampling"]
    bundle.meta = legacy
    assert bundle.sampling_interval is None and Engine(bundle, EngineConfig()).max_gap == 300.0


def test_training_refuses_data_where_every_reading_is_a_gap() -> None:
    import pytest

    from anomaly.errors import DataError
    from tests.helpers import make_series

    s = make_series("a", 50, 2)  # one reading a second
    with pytest.raises(DataError, match="no stretch of 8 rows without a gap longer than 0.5 s"):
        train(
            [s],
            ["x", "y"],
            ModelConfig(window=8, hidden_size=8),
            TrainConfig(epochs=1, device="cpu"),
            max_gap_seconds=0.5,
        )


def test_wander_share_is_the_variance_of_block_means_over_the_variance() -> None:
    import numpy as np

    from anomaly.training import WANDER_BLOCKS, wander_share

    n, b = 64, WANDER_BLOCKS
    t = np.arange(n, dtype=np.float64)
    v = np.stack(
        [t, np.sin(2 * np.pi * t / 8), np.full(n, 3.0)], axis=1
    )  # a ramp, a cycle per block, constant
    got = wander_share([v])
    # a ramp: block means are n/b apart, so their variance is (b^2 - 1)/12 (n/b)^2 against (n^2 - 1)/12
    assert np.isclose(got[0], (b * b - 1) * (n / b) ** 2 / (n * n - 1))
    assert abs(got[1]) < 1e-12 and got[2] == 0.0
    # averaged over series by length; a series shorter than two rows per block is left out
    assert np.allclose(wander_share([v, v[:32], v[:10]]), (64 * got + 32 * wander_share([v[:32]])) / 96)


def test_wander_screen_reads_a_drifting_feature_as_context(train_csv) -> None:
    import numpy as np

    from anomaly.training import screened_targets

    w = np.array([0.01, 0.9, 0.02])
    assert screened_targets(None, w, 0.5) == (0, 2)
    assert screened_targets((1, 2), w, 0.5) == (2,)
    assert screened_targets(None, w, 0.0) is None  # off
    assert screened_targets((1,), w, 0.5) == (1,)  # never every scored feature
    series, feats = load_series([train_csv], DataConfig())
    s = series[0]
    s.values = s.values.copy()
    s.values[:, 1] += np.linspace(0.0, 50.0 * s.values[:, 1].std(), len(s))  # a slow warm-up
    cfg = TrainConfig(device="cpu", epochs=1, wander_screen=0.5)
    bundle = train([s], feats, ModelConfig(window=8, hidden_size=8), cfg).bundle
    assert bundle.arch.targets == (0, 2, 3) and bundle.calibration["feature_wander"][1] > 0.9
    off = train([s], feats, ModelConfig(window=8, hidden_size=8), TrainConfig(device="cpu", epochs=1))
    assert off.bundle.arch.targets is None  # off by default


def test_too_short_a_validation_part_says_to_raise_val_fraction_not_lower_it() -> None:
    """64 rows with window 8... 32 said 'lower train.val_fraction', which only shrinks the validation part;
    a larger one is what gives it a window (and below two windows, nothing but more rows or a smaller window)."""
    import pytest

    from anomaly.errors import DataError
    from tests.helpers import make_series

    def fails(n: int, **kw) -> str:
        with pytest.raises(DataError) as err:
            train(
                [make_series("a", n, 2)],
                ["x", "y"],
                ModelConfig(window=32, hidden_size=8),
                TrainConfig(epochs=1, device="cpu", **kw),
            )
        return str(err.value)

    assert fails(64) == (
        "not enough data for a validation window of 32 rows (model.window): the validation part of each series "
        "is its last 20 % (train.val_fraction), 13 of the longest series' 64 rows; raise train.val_fraction, lower "
        "model.window, or add data"
    )
    assert fails(40, val_fraction=0.5).endswith(
        "its last 50 % (train.val_fraction), 20 of the longest series' 40 rows; a series needs 64 rows, a window "
        "to train on and one to validate: lower model.window or add data"
    )
    train(
        [make_series("a", 64, 2)],
        ["x", "y"],
        ModelConfig(window=32, hidden_size=8),
        TrainConfig(epochs=1, device="cpu", val_fraction=0.5),
    )


def test_rows_dropped_for_missing_values_are_named_as_the_reason_for_too_little_data() -> None:
    """A column with a value in one row of 50 left 10 rows under nan_policy 'reject', and the error blamed gaps
    ('no stretch of 32 rows without a gap longer than 900000 s'), a sampling interval learnt from the rows left."""
    import numpy as np
    import pytest

    from anomaly.errors import DataError
    from tests.helpers import make_series

    s = make_series("a", 500, 3)
    s.values[:, 2] = np.nan
    s.values[::50, 2] = 1.0
    model = ModelConfig(window=32, hidden_size=8)
    with pytest.raises(DataError) as err:
        train([s], ["x", "y", "z"], model, TrainConfig(epochs=1, device="cpu"))
    assert str(err.value) == (
        "not enough training data: engine.nan_policy = 'reject' dropped 490 of 500 rows for a missing value "
        "(column 'z' misses 490), leaving the longest series 10 rows, fewer than one window (32 rows, "
        "model.window); set engine.nan_policy = \"ffill\", or leave 'z' out with --features x,y"
    )
    s.values[:490, 2] = np.nan  # under ffill only the rows before the column's first value are dropped
    s.values[490:, 2] = 2.0
    with pytest.raises(DataError) as err:
        train([s], ["x", "y", "z"], model, TrainConfig(epochs=1, device="cpu"), nan_policy="ffill")
    assert str(err.value).startswith(
        "not enough training data: engine.nan_policy = 'ffill' dropped 490 of 500"
    )
    assert str(err.value).endswith("(32 rows, model.window); leave 'z' out with --features x,y")
    t = make_series("a", 40, 2)
    t.timestamps[::2] = np.nan  # missing times, not values: no column to blame (it named one 'missing 0')
    with pytest.raises(DataError) as err:
        train([t], ["x", "y"], model, TrainConfig(epochs=1, device="cpu"))
    assert str(err.value) == (
        "not enough training data: engine.nan_policy = 'reject' dropped 20 of 40 rows for a missing value (their "
        "times are missing), leaving the longest series 20 rows, fewer than one window (32 rows, model.window)"
    )


def test_no_rows_left_names_the_column_without_a_value() -> None:
    """`--features a,c` with c empty in every row said only 'every row has a missing value', leaving the user to
    find which column."""
    import numpy as np
    import pytest

    from anomaly.errors import DataError
    from tests.helpers import make_series

    s = make_series("a", 100, 3)
    s.values[:, 1] = np.nan
    with pytest.raises(DataError) as err:
        train([s], ["x", "c", "y"], ModelConfig(window=8, hidden_size=8), TrainConfig(epochs=1, device="cpu"))
    assert str(err.value) == (
        "no training rows left: every row has a missing value (NaN, empty or text like n/a) and "
        "engine.nan_policy = 'reject' drops it; column(s) 'c' have no value in any row: leave them out with "
        "--features x,y"
    )

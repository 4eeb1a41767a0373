from __future__ import annotations

import pytest
import torch

from anomaly.config import DataConfig, EngineConfig, ModelConfig, TrainConfig
from anomaly.data import load_series
from anomaly.training import fit_batch_size, train


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
            engine=EngineConfig(max_gap_seconds=0.5),
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
        train(
            [s],
            ["x", "y", "z"],
            model,
            TrainConfig(epochs=1, device="cpu"),
            engine=EngineConfig(nan_policy="ffill"),
        )
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


def test_no_validation_window_after_rows_dropped_for_missing_values_names_them() -> None:
    """200 rows with one column empty in 141 of them left 59 under nan_policy 'reject': enough for a training
    window but not a validation one, and the error said 'lower model.window or add data' without a word about
    the 141 rows dropped (the missing-value warning comes after training, which never came)."""
    import numpy as np
    import pytest

    from anomaly.errors import DataError
    from tests.helpers import make_series

    s = make_series("a", 200, 3)
    s.values[10:151, 2] = np.nan
    with pytest.raises(DataError) as err:
        train(
            [s], ["x", "y", "z"], ModelConfig(window=32, hidden_size=8), TrainConfig(epochs=1, device="cpu")
        )
    assert str(err.value) == (
        "not enough data for a validation window of 32 rows (model.window): the validation part of each series "
        "is its last 20 % (train.val_fraction), 12 of the longest series' 59 rows; a series needs 64 rows, a "
        "window to train on and one to validate: lower model.window or add data; before that, engine.nan_policy "
        "= 'reject' dropped 141 of 200 rows for a missing value (column 'z' misses 141); set engine.nan_policy = "
        "\"ffill\", or leave 'z' out with --features x,y"
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
        "engine.nan_policy = 'reject' drops it; column(s) 'c' have no value in any row trained on: leave them "
        "out with "
        "--features x,y"
    )


def _messy(n: int = 240, features: int = 4, seed: int = 5):
    """A series in the shapes training data takes: missing values (whole rows and single cells, some at the
    start), repeated times (a file given twice), a few going back in time and a missing time."""
    import numpy as np

    from tests.helpers import make_series

    rng = np.random.default_rng(seed)
    s = make_series("k", n, features, seed=seed)
    s.values = s.values.astype(np.float64)
    s.values[0, 1] = np.nan  # nothing to fill from yet: refused under both policies
    s.values[1, 0] = np.nan
    s.values[rng.random((n, features)) < 0.05] = np.nan
    s.values[rng.random(n) < 0.03] = np.nan
    ts = s.timestamps
    ts[rng.choice(np.arange(2, n), 20, replace=False)] -= 1.0  # repeats the previous reading's time
    ts[[50, 90]] -= 5.0  # back in time
    ts[120] = np.nan
    return s


@pytest.mark.parametrize("nan_policy", ["reject", "ffill"])
@pytest.mark.parametrize("duplicate_policy", ["drop", "keep"])
def test_training_keeps_exactly_the_readings_the_engine_accepts(bundle, nan_policy, duplicate_policy) -> None:
    """Training screens its series reading by reading as the engine's screen does (anomaly.engine.screen):
    the same readings kept, refused for the same reasons, the same values filled."""
    import numpy as np

    from anomaly.config import EngineConfig
    from anomaly.data import screen_readings
    from anomaly.engine import Engine, Event

    s = _messy(features=len(bundle.features))
    engine = Engine(bundle, EngineConfig(nan_policy=nan_policy, duplicate_policy=duplicate_policy))
    for i in range(len(s)):
        engine.process([Event(s.key, s.timestamps[i : i + 1], s.values[i : i + 1])])
    screened = screen_readings([s], nan_policy, duplicate_policy)
    kept = screened.series[0]
    c = engine.counters
    assert (len(kept), screened.repeated, screened.missing) == (
        c["readings"],
        c["rejected_duplicate_timestamp"] + c["rejected_time_backwards"],
        c["rejected_non_finite"],
    )
    assert screened.repeated >= (10 if duplicate_policy == "drop" else 2)  # (2: the readings back in time)
    if nan_policy == "ffill":  # refused: the first two readings (nothing to fill from) and the missing time
        assert 3 <= screened.missing < 10 and screened.filled > 50
    else:
        assert screened.missing > 20 and screened.filled == 0
    row = engine.store.slots[s.key]
    assert kept.timestamps[-1] == engine.store.arrays["last_ts"][row]
    assert np.array_equal(kept.values[-1], engine.store.arrays["last_values"][row])
    assert np.isfinite(kept.values).all() and (np.diff(kept.timestamps) >= 0).all()


def test_training_leaves_out_readings_the_engine_refuses_as_repeated_times() -> None:
    """A file given twice (or exports that overlap) trained on every reading twice, while the engine refuses
    the second copy (duplicate_policy "drop"): the model learnt from readings it never scores. Training now
    drops them as the engine does, and counts them; with duplicate_policy "keep" it keeps them, as the engine
    does."""
    from anomaly.data import merge_keys
    from tests.helpers import make_series

    one = make_series("a", 120, 3, seed=1)
    twice = merge_keys([one, make_series("a", 120, 3, seed=1)])
    assert len(twice[0]) == 240
    cfg = ModelConfig(window=8, hidden_size=8), TrainConfig(epochs=1, device="cpu")
    alone = train([one], ["x", "y", "z"], *cfg).bundle.meta
    dropped = train(twice, ["x", "y", "z"], *cfg).bundle.meta
    assert (dropped["training"]["rows"], dropped["training"]["repeated_timestamps"]) == (120, 120)
    assert dropped["training_fingerprint"] == alone["training_fingerprint"]
    assert "repeated_timestamps" not in alone["training"]
    kept = train(twice, ["x", "y", "z"], *cfg, engine=EngineConfig(duplicate_policy="keep")).bundle.meta
    assert kept["training"]["rows"] == 240 and "repeated_timestamps" not in kept["training"]


def test_calibration_never_uses_rows_trained_on_nor_cold_scores_of_series_shorter_than_a_window() -> None:
    """Calibration took the last round(n * val_fraction) rows of every series, without the shortening that
    `split_series` applies: a series of 9 rows at window 8 trains on its first 8 and so calibrated on row 7,
    a trained row, and a series of 5 rows (never trained on, scored from a cold state only) added its last
    row's cold error. 50 such keys beside one long series made 50 of 90 calibration points cold ones."""
    from tests.helpers import make_series

    long = make_series("long", 200, 3, seed=1)
    nine = make_series("nine", 9, 3, seed=2)
    fives = [make_series(f"k{i}", 5, 3, seed=10 + i) for i in range(50)]
    cfg = ModelConfig(window=8, hidden_size=8), TrainConfig(epochs=1, device="cpu")
    alone = train([long], ["x", "y", "z"], *cfg).bundle.calibration
    assert alone["validation_points"] == 40
    mixed = train([long, nine, *fives], ["x", "y", "z"], *cfg).bundle
    assert mixed.calibration["validation_points"] == 40 + 1  # the long series' last 40, row 8 of `nine`
    assert mixed.meta["training"]["series_shorter_than_window"] == 50

    from anomaly.training import split_series, training_rows

    assert [training_rows(n, 0.2, 8) for n in (200, 9, 5, 10, 11)] == [160, 8, 5, 8, 9]
    assert [len(p) for p in split_series([long, nine], 0.2, 8)[0]] == [160, 8]


def test_a_huge_batch_size_is_lowered_at_once() -> None:
    """`train.batch_size = 100000000000` on a short training set counted the batch size down one at a time to reach
    `min_batches`: `train` never started. The size found is the one a sane batch_size finds, found at once."""
    import threading

    import numpy as np

    segs = [np.zeros((n, 8, 2), np.float32) for n in [8] * 40 + [3] * 5]  # 40 full segments, 5 shorter ones
    found: list[int] = []
    worker = threading.Thread(target=lambda: found.append(fit_batch_size(segs, 10**11, 8)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert found == [fit_batch_size(segs, 64, 8)] == [6]  # ceil(40 / 6) + ceil(5 / 6) = 7 + 1 = 8 batches
    assert fit_batch_size(segs, 10**11, 2) == 10**11  # enough batches already: the size is kept as given


@pytest.mark.parametrize(("features", "forecast"), [(1, False), (3, True), (7, True)])
@pytest.mark.parametrize(("hidden", "layers"), [(1, 1), (5, 2), (16, 3)])
def test_parameter_count_is_the_built_models(features: int, forecast: bool, hidden: int, layers: int) -> None:
    from anomaly.model import Architecture, LSTMAutoencoder, parameter_count

    arch = Architecture(features, 8, hidden, layers, 0.0, forecast)
    assert parameter_count(arch) == sum(p.numel() for p in LSTMAutoencoder(arch).parameters())


def test_a_model_whose_training_exceeds_memory_is_refused_before_it_is_built(monkeypatch) -> None:
    """`model.num_layers = 10000000` built the model one layer at a time (for hours, until memory ran out): only a
    weight matrix too large for memory (hidden_size) was one error. The parameters' training memory (weight,
    gradient, two Adam moments) is now compared with the memory available first, and nothing is built."""
    from anomaly import training
    from anomaly.errors import ConfigError
    from anomaly.model import Architecture

    arch = Architecture(3, 8, 64, 2, 0.0, True)  # 117,894 parameters: 1,886,304 bytes to train
    built: list[Architecture] = []
    monkeypatch.setattr(training, "available_memory", lambda device: 1_886_304)
    monkeypatch.setattr(training.LSTMAutoencoder, "__init__", lambda self, a: built.append(a) or None)
    with pytest.raises(ConfigError) as err:
        training.build_model(Architecture(3, 8, 64, 3, 0.0, True), torch.device("cpu"))
    assert str(err.value) == (
        "the model does not fit in memory on cpu (184,454 parameters need 2.8 MiB to train, 1.8 MiB available): "
        "model.hidden_size 64 with model.num_layers 3 is too large"
    )
    assert (err.value.key, err.value.related, built) == ("model.hidden_size", ("model.num_layers",), [])
    monkeypatch.undo()
    monkeypatch.setattr(training, "available_memory", lambda device: 1_886_304)
    assert sum(p.numel() for p in training.build_model(arch, torch.device("cpu")).parameters()) == 117_894


def _fake_memory(tmp_path, meminfo_kib: int | None, files: dict[str, str]) -> tuple[str, str]:
    """A /proc/meminfo (None: none) and a cgroup root holding `files` (path under the root → text) in tmp_path."""
    meminfo = tmp_path / "meminfo"
    if meminfo_kib is not None:
        meminfo.write_text(
            f"MemTotal:       99999999 kB\nMemFree:        1 kB\nMemAvailable:   {meminfo_kib} kB\n"
        )
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return str(meminfo), str(root)


GIB = 2**30


@pytest.mark.parametrize(
    ("meminfo_kib", "files", "expected"),
    [
        # No cgroup files (bare host, or not mounted): the host's MemAvailable.
        (64 * 2**20, {}, 64 * GIB),
        # cgroup v2 with a 3Gi limit (the retrain CronJob) on a 64 GiB host: the limit less the usage.
        (64 * 2**20, {"memory.max": f"{3 * GIB}\n", "memory.current": f"{GIB}\n"}, 2 * GIB),
        # v2 working set: the inactive page cache is reclaimed before the kernel kills, so it is not counted used.
        (
            64 * 2**20,
            {
                "memory.max": f"{3 * GIB}\n",
                "memory.current": f"{2 * GIB}\n",
                "memory.stat": f"anon 1\nfile 5\ninactive_file {GIB}\nactive_file 7\n",
            },
            2 * GIB,
        ),
        # v2 "max": no limit, the host decides.
        (64 * 2**20, {"memory.max": "max\n", "memory.current": f"{GIB}\n"}, 64 * GIB),
        # A cgroup limit above what the host has free: the host decides.
        (2**20, {"memory.max": f"{3 * GIB}\n", "memory.current": "0\n"}, GIB),
        # Usage over the limit (it happens, briefly): nothing available, not a negative number.
        (64 * 2**20, {"memory.max": f"{GIB}\n", "memory.current": f"{2 * GIB}\n"}, 0),
        # cgroup v1: memory/memory.limit_in_bytes less memory/memory.usage_in_bytes (less total_inactive_file).
        (
            64 * 2**20,
            {
                "memory/memory.limit_in_bytes": f"{3 * GIB}\n",
                "memory/memory.usage_in_bytes": f"{2 * GIB}\n",
                "memory/memory.stat": f"cache 3\ntotal_inactive_file {GIB // 2}\n",
            },
            GIB + GIB // 2,
        ),
        # v1 without a limit reads 9223372036854771712: the host decides.
        (
            64 * 2**20,
            {
                "memory/memory.limit_in_bytes": "9223372036854771712\n",
                "memory/memory.usage_in_bytes": f"{GIB}\n",
            },
            64 * GIB,
        ),
        # A limit without a usage file (unreadable): ignored, the host decides.
        (64 * 2**20, {"memory.max": f"{GIB}\n"}, 64 * GIB),
        # No /proc/meminfo but a cgroup limit: the cgroup decides.
        (None, {"memory.max": f"{3 * GIB}\n", "memory.current": f"{GIB}\n"}, 2 * GIB),
        # Neither: unknown.
        (None, {}, None),
    ],
    ids=[
        "host",
        "v2-limit",
        "v2-inactive-cache",
        "v2-max",
        "v2-above-host",
        "v2-over-limit",
        "v1-limit",
        "v1-unlimited",
        "v2-no-usage",
        "no-meminfo",
        "unknown",
    ],
)
def test_available_memory_is_the_smaller_of_host_and_cgroup(tmp_path, meminfo_kib, files, expected) -> None:
    """The memory check read /proc/meminfo only: in a container with a cgroup limit (the retrain CronJob's 3Gi)
    the host's free memory was compared, a too-large model passed and the pod was OOM-killed instead of refused
    with the one-line error. The smaller of the host's MemAvailable and the cgroup's limit less its working set
    (v2 or v1) is now compared."""
    from anomaly import training

    meminfo, root = _fake_memory(tmp_path, meminfo_kib, files)
    assert training.available_memory(torch.device("cpu"), meminfo=meminfo, cgroup_root=root) == expected


def test_a_model_over_the_cgroup_limit_is_refused_on_a_host_with_room(tmp_path, monkeypatch) -> None:
    """The one-line refusal now comes from a container's limit, not only the host's memory."""
    from anomaly import training
    from anomaly.errors import ConfigError
    from anomaly.model import Architecture

    meminfo, root = _fake_memory(
        tmp_path, 64 * 2**20, {"memory.max": "3000000\n", "memory.current": "1113696\n"}
    )
    monkeypatch.setattr(training, "MEMINFO", meminfo)
    monkeypatch.setattr(training, "CGROUP_ROOT", root)
    with pytest.raises(ConfigError) as err:
        training.build_model(Architecture(3, 8, 64, 3, 0.0, True), torch.device("cpu"))
    assert str(err.value) == (
        "the model does not fit in memory on cpu (184,454 parameters need 2.8 MiB to train, 1.8 MiB available): "
        "model.hidden_size 64 with model.num_layers 3 is too large"
    )


@pytest.mark.parametrize("forecast", [True, False])
def test_calibration_scores_a_long_series_in_chunks_with_the_state_carried(forecast: bool) -> None:
    """Training scored each series for calibration in one forward call, so the LSTM's gates and outputs for every
    reading were held at once: a 1.5-million-row file of 8 features peaked at 3.4 GB RSS in `anomaly train`, 2.2
    GB of it that one call. It now feeds the model at most `chunk` readings a call (whole windows without a
    forecast head) and carries the state between calls, as the engine does, to the same errors."""
    from anomaly.model import Architecture
    from anomaly.training import build_model, series_errors

    torch.manual_seed(0)
    model = build_model(Architecture(3, 8, hidden_size=8, forecast=forecast), torch.device("cpu")).eval()
    x = torch.randn(203, 3).numpy()
    lengths: list[int] = []
    model.register_forward_pre_hook(lambda _m, args: lengths.append(args[0].shape[1]))
    one = series_errors(model, x, chunk=10_000)
    assert lengths == [203 if forecast else 200]
    lengths.clear()
    chunked = series_errors(model, x, chunk=50)
    if forecast:
        assert lengths == [50, 50, 50, 50, 3]
        assert torch.equal(torch.from_numpy(chunked), torch.from_numpy(one))
    else:  # whole windows only: 6 windows a call, the last 3 readings never fill one
        assert lengths == [48, 48, 48, 48, 8]
        assert chunked.shape == one.shape == (200, 3)
        assert abs(chunked - one).max() <= 1e-5

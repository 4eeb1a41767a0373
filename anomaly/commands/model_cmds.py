"""generate, train and inspect: making synthetic data and models."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from anomaly.atomic import atomic_path
from anomaly.bundle import read_metadata, save_bundle
from anomaly.commands.common import (
    check_output,
    config_from,
    data_options,
    empty_refused,
    key_column_option,
    label_map_option,
    one_line_errors,
    pipeline_option,
    setup_logging,
    time_column_option,
    warn_line,
)
from anomaly.config import MAX_LAYERS
from anomaly.data import (
    counting_features,
    cut_out_labelled,
    load_series,
    merge_keys,
    plural,
    quoted,
)
from anomaly.errors import DataError
from anomaly.synthetic import SyntheticSpec, generate, generate_keys, max_anomalies
from anomaly.training import TrainResult, pick_device, train


@click.command("generate")
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False),
    required=True,
    help="CSV file to write ('-': standard output).",
)
@click.option(
    "--points", type=click.IntRange(min=10), default=20_000, show_default=True, help="Rows per series."
)
@click.option("--sensors", type=click.IntRange(min=1), default=6, show_default=True, help="Sensor columns.")
@click.option(
    "--anomalies",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Injected anomalies per series (0: normal data only).",
)
@click.option(
    "--keys",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Series in the file; more than 1 adds a key column `sensor_id`.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.001),
    default=60.0,
    show_default=True,
    help="Seconds between readings.",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Random seed.")
@one_line_errors
def generate_cmd(
    out: str, points: int, sensors: int, anomalies: int, keys: int, interval: float, seed: int
) -> None:
    """Write synthetic correlated sensor data with labelled anomalies (spike, level shift, drift, stuck,
    frequency change, broken correlation)."""
    spec = SyntheticSpec(
        n_sensors=sensors, n_points=points, anomalies=anomalies, interval_s=interval, seed=seed
    )
    if anomalies > (most := max_anomalies(spec)):  # else they overlap, and fewer are labelled than asked for
        raise click.BadParameter(
            f"{plural(anomalies, 'anomaly', 'anomalies')} cannot fit in {points} readings per series (--points): at most {most}, "
            f"each needing {5 * spec.machine_period} of the readings after the first 10 %",
            param_hint="'--anomalies'",
        )
    frame = generate(spec) if keys == 1 else generate_keys(spec, keys)
    wrote = f"wrote {len(frame)} rows ({int(frame['anomaly'].sum())} labelled anomalous) to"
    if out == "-":  # the CSV is the output; what was written goes to stderr, as a pipe's reader wants
        frame.to_csv(sys.stdout, index=False)
        click.echo(f"{wrote} standard output", err=True)
        return
    with atomic_path(out, "CSV file") as tmp:
        frame.to_csv(tmp, index=False)
    click.echo(f"{wrote} {out}")


def run_training(paths: list[str], cfg, out: str, progress: bool = True) -> TrainResult:
    """Load, optionally trim and clean, train, save: shared by `train` and `demo`."""
    check_output(out, paths)
    pick_device(cfg.train.device)  # `--device cuda` without CUDA fails now, not after the files are read
    left_out: dict[str, str] = {}
    series, features = load_series(paths, cfg.data, left_out=left_out, warn=warn_line)
    click.echo(
        f"features ({len(features)}): {', '.join(features)}"
        + (f"; not features: {', '.join(f'{c} ({why})' for c, why in left_out.items())}" if left_out else "")
    )
    if not cfg.data.drop_anomalies:  # labels unused: a labelled month beside an unlabelled one joins as well
        for s in series:
            s.labels = None
    series = merge_keys(series)  # a key found in several files is one series, as replay and the daemon see it
    counting = [] if cfg.data.features else counting_features(series, features)
    if counting:  # chosen with --features, it is the user's call
        rest = [f for f in features if f not in counting]
        raise DataError(
            f"column {counting[0]!r} counts up reading by reading in equal steps, like a clock or a row number: "
            "taken as a sensor, a clock keeps rising past every value the model was trained on; "
            f"pass --time-column {quoted(counting[0])} if it is the time"
            + (f", leave it out with --features {quoted(','.join(rest))}" if rest else "")
            + f"; if it is a sensor that ramps over the same range again, name it in --features "
            f"{quoted(','.join(features))}"
        )
    if cfg.data.train_rows:
        series = [s.head(cfg.data.train_rows) for s in series]
    whole, dropped, cuts = len(series), 0, 0
    if cfg.data.drop_anomalies:
        if all(s.labels is None for s in series):  # else it trained on the anomalies it was asked to drop
            raise DataError(
                f"--drop-anomalies needs the label column {cfg.data.label!r}, which the files lack (--label "
                "names it)"
            )
        series, dropped, cuts = cut_out_labelled(series)
    if not any(len(s) for s in series):
        raise DataError(
            f"no training rows left: every one of the {plural(dropped, 'row')} is labelled anomalous in "
            f"{cfg.data.label!r} and --drop-anomalies left them all out; train on normal data, or check the "
            "label column (--label, --label-map: which value means normal)"
            if cfg.data.drop_anomalies
            else "no training rows left"
        )
    longest = max(len(s) for s in series)
    if longest < cfg.model.window:  # not a matter of gaps, which the trainer's own message would blame
        piece = (
            f" (--drop-anomalies cut the series at {plural(cuts, 'removed stretch', 'removed stretches')})"
            if cuts
            else ""
        )
        raise DataError(
            f"not enough training data: the longest series has {plural(longest, 'row')}{piece}, fewer than one window "
            f"({cfg.model.window} rows, model.window)"
        )
    result = train(
        series,
        features,
        cfg.model,
        cfg.train,
        progress=progress,
        engine=cfg.engine,
        rows_note=(
            f" (the first {plural(cfg.data.train_rows, 'row')} of each series, --train-rows)"
            if cfg.data.train_rows
            else ""
        ),
    )
    if cfg.data.drop_anomalies:  # the series were cut at each removed stretch: count them as they came
        result.bundle.meta["training"]["series"] = whole
        result.bundle.meta["anomalies_dropped"] = {"rows": dropped, "cuts": cuts}
    save_bundle(result.bundle, out)
    return result


@click.command("train")
@click.argument("data", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False),
    default="model.pt",
    show_default=True,
    help="Bundle file to write.",
)
@pipeline_option
@time_column_option
@key_column_option
@click.option(
    "--features",
    default=None,
    callback=empty_refused("leave the option out for all numeric columns"),
    help="Comma-separated feature columns.  [default: all numeric]",
)
@click.option(
    "--label",
    default=None,
    help="Label column (never a feature; used by --drop-anomalies).  [default: anomaly]",
)
@label_map_option
@data_options
@click.option(
    "--drop-anomalies/--keep-anomalies",
    default=None,
    help="Drop rows labelled anomalous from training.  [default: keep]",
)
@click.option(
    "--train-rows",
    type=click.IntRange(min=1),
    default=None,
    help="Use only the first N rows of each series.  [default: all]",
)
@click.option("--window", type=click.IntRange(min=2), default=None, help="Window length.  [default: 32]")
@click.option(
    "--hidden-size", type=click.IntRange(min=1), default=None, help="LSTM hidden size.  [default: 64]"
)
@click.option("--layers", type=click.IntRange(1, MAX_LAYERS), default=None, help="LSTM layers.  [default: 1]")
@click.option(
    "--dropout",
    type=click.FloatRange(0, 1, max_open=True),
    default=None,
    help="Dropout between layers and on the latent code.  [default: 0.0]",
)
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Maximum epochs.  [default: 30]")
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=None, help="Segments per batch.  [default: 64]"
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Adam learning rate.  [default: 0.002]",
)
@click.option(
    "--patience", type=click.IntRange(min=1), default=None, help="Early-stopping patience.  [default: 5]"
)
@click.option("--seed", type=int, default=None, help="Random seed.  [default: 0]")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default=None,
    help="Training device.  [default: auto (CUDA when present)]",
)
@click.option("--amp/--no-amp", default=None, help="Mixed precision on CUDA.  [default: on]")
@click.option("--verbose", "-v", is_flag=True, help="Log every epoch.")
@one_line_errors
def train_cmd(
    data,
    out,
    pipeline,
    time_column,
    key_column,
    features,
    label,
    label_map,
    drop_anomalies,
    train_rows,
    window,
    hidden_size,
    layers,
    dropout,
    epochs,
    batch_size,
    lr,
    patience,
    seed,
    device,
    amp,
    verbose,
    data_overrides,
) -> None:
    """Train the LSTM autoencoder on CSV files and save a model bundle."""
    setup_logging(verbose)
    cfg = config_from(
        pipeline,
        {
            "data.time_column": time_column,
            "data.key_column": key_column,
            "data.features": features,
            "data.label": label,
            "data.label_map": label_map,
            **data_overrides,
            "data.drop_anomalies": drop_anomalies,
            "data.train_rows": train_rows,
            "model.window": window,
            "model.hidden_size": hidden_size,
            "model.num_layers": layers,
            "model.dropout": dropout,
            "train.epochs": epochs,
            "train.batch_size": batch_size,
            "train.learning_rate": lr,
            "train.patience": patience,
            "train.seed": seed,
            "train.device": device,
            "train.amp": amp,
        },
    )
    result = run_training(list(data), cfg, out)
    print_training(result, out)


def print_training(result: TrainResult, out: str) -> None:
    t = result.bundle.meta["training"]
    click.echo(
        f"trained on {plural(t['rows'], 'row')} of {t['series']:,} series, {plural(t['epochs_run'], 'epoch')} "
        f"(best {t['best_epoch']}, val loss {t['best_val_loss']:.5f}) on {result.device}"
        + (f" with {result.amp_dtype} autocast" if result.amp_dtype else "")
    )
    if t["best_epoch"] == 1 and t["epochs_run"] > 1:
        click.echo(
            f"note: the validation loss was lowest after the first of {t['epochs_run']} epochs: the model "
            "learned little beyond each feature's level and scale, so its score will track the z-score "
            "baseline (a labelled `anomaly replay` prints both; README, Detection quality)",
            err=True,
        )
    missing = result.bundle.meta.get("missing_values", {})
    if missing.get("rows_dropped") or missing.get("cells_filled"):
        click.echo(
            f"missing values (engine.nan_policy = {missing['policy']}): {plural(missing['rows_dropped'], 'row')} "
            f"dropped, {plural(missing['cells_filled'], 'cell')} forward-filled"
        )
        kept = result.bundle.meta["training"]["rows"]
        if missing["rows_dropped"] > kept:
            click.echo(
                f"warning: most training rows had a missing value ({missing['rows_dropped']} dropped, {kept} "
                'kept); check the file, or set engine.nan_policy = "ffill"',
                err=True,
            )
    sampling = result.bundle.meta.get("sampling", {})
    if sampling.get("interval_seconds") is not None:
        kept = (
            " between the readings kept"
            if missing.get("rows_dropped") or t.get("repeated_timestamps")
            else ""
        )
        click.echo(  # (the engine's clock, and so its gap rule, moves only with the readings it accepts)
            f"sampling interval {_num(sampling['interval_seconds'])} s{kept}; gaps over "
            f"{_num(sampling['max_gap_seconds'])} s reset a key ({_num(sampling['gap_splits'])} in the training data)"
        )
    cut = result.bundle.meta.get("anomalies_dropped")
    if cut is not None:
        click.echo(
            f"--drop-anomalies: {plural(cut['rows'], 'row')} labelled anomalous left out; the series are cut "
            f"at {plural(cut['cuts'], 'removed stretch', 'removed stretches')} (as at a gap), so no training "
            "window joins the readings on either side of one"
        )
    short = t.get("series_shorter_than_window", 0)
    if short:  # not a matter of gaps: "readings far apart" would send the user after the wrong cause
        click.echo(
            f"warning: {short:,} of {t['series']:,} series {'has' if short == 1 else 'have'} fewer readings than a window ({result.bundle.window})"
            + (" once those with a missing value were dropped" if missing.get("rows_dropped") else "")
            + f" and gave none to train on ({_names(t['keys_shorter_than_window'], short)})"
            + "".join(
                f"; {key!r} has no value in {'column' if len(cols) == 1 else 'columns'} {', '.join(map(repr, cols))}"
                for key, cols in t.get("empty_columns_of_keys", {}).items()
            )
            + "; in replay they have less than a window of history too (cold scores, or none)",
            err=True,
        )
    idle = t.get("series_without_window", 0) - short
    if idle:
        shorts = set(t.get("keys_shorter_than_window", []))
        names = _names([k for k in t["keys_without_window"] if k not in shorts], idle)
        click.echo(
            f"warning: {idle} of {t['series']} series gave no window to train on ({names}): no "
            f"{result.bundle.window} readings in a row without a gap over {_num(sampling.get('max_gap_seconds', 0))} s; "
            "in replay they have less than a window of history too (readings far apart need "
            "engine.max_gap_seconds above their step, or a model of their own)",
            err=True,
        )
    repeated = t.get("repeated_timestamps", 0)
    if repeated:
        click.echo(
            f"warning: {plural(repeated, 'reading')} {'repeats its' if repeated == 1 else 'repeat their'} key's "
            "previous timestamp (files that overlap in "
            "time, a file given twice, or local times without a UTC offset, whose hour repeats at a daylight-saving "
            'change): the engine refuses them live and in replay (engine.duplicate_policy = "drop"), so training '
            "left them out too, keeping the first reading at each time; check that the files do not overlap and "
            "that their times are UTC or carry an offset",
            err=True,
        )
    scored = result.bundle.targets
    context = context_features({"features": result.bundle.features, "targets": scored})
    if context:  # model.targets, or train.wander_screen, left some features unscored
        click.echo(f"scored features (targets): {', '.join(scored)}; context: {context}")
    screen = t.get("config", {}).get("train", {}).get("wander_screen", 0.0)
    wander = (
        dict(zip(result.bundle.features, result.bundle.calibration.get("feature_wander", []), strict=False))
        if screen > 0
        else {}
    )
    if wander and scored and all(wander.get(f, 0.0) > screen for f in scored):  # the screen kept them all
        click.echo(
            f"note: train.wander_screen = {screen:g} screened nothing: every scored feature wanders over the "
            f"training span ({', '.join(f'{f} {wander[f]:.2f}' for f in scored)}), so all stay scored: the "
            "screen never removes every scored feature",
            err=True,
        )
    for name, x in t.get("scale_outliers", {}).items():
        click.echo(
            f"warning: feature {name!r} has its scale ({x['scale']:.4g}) set by {plural(x['readings'], 'extreme reading')}"
            f" (the farthest {x['value']:.4g}): without {'it' if x['readings'] == 1 else 'them'} the scale is "
            f"{x['scale_without']:.4g}, so ordinary changes of {name!r} barely move a score; remove or label "
            "the reading(s) (--drop-anomalies) if they are errors",
            err=True,
        )
    flat = _flat_features(list(result.bundle.features), result.bundle.calibration)
    if (
        flat
    ):  # said by inspect alone: a sensor stuck or switched off for the whole training span went unnoticed
        click.echo(
            f"note: {plural(len(flat), 'feature')} constant in every row trained on ({', '.join(flat)}): "
            "its scale is 1 raw unit, so a later change of 5 reads as 5 standard deviations; train on a span "
            "where it moves, or leave a setting (not a sensor) out with --features",
            err=True,
        )
    click.echo(f"throughput: {result.windows_per_second:,.0f} windows/s")
    click.echo(f"model bundle: {out}")


def _names(keys: list[str], count: int) -> str:
    """Up to five keys, quoted, and `...` when `count` says there are more."""
    more = ["..."] if count > len(keys) else []
    return ", ".join([*map(repr, keys), *more])


@click.command("inspect")
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the full metadata as JSON.")
@one_line_errors
def inspect_cmd(bundle: str, as_json: bool) -> None:
    """Print a model bundle's metadata: version, features (and the scored ones when some are context only),
    architecture, training data, missing values, sampling interval and gap, training, calibration, scaler (each
    feature's mean, scale and training range), and scale outliers, lineage, promotion and export when
    recorded."""
    meta = _onnx_metadata(bundle) if bundle.endswith(".onnx") else read_metadata(bundle)[0]
    if as_json:
        click.echo(json.dumps(meta, indent=2, sort_keys=True))
        return
    for name, value in describe_bundle(meta):
        click.echo(f"{name + ':':<17}{value}")


def _onnx_metadata(path: str) -> dict[str, Any]:
    """The bundle metadata an ONNX export carries (`anomaly export --format onnx`), read as replay reads it."""
    from anomaly.bundle import load_bundle

    b = load_bundle(path)
    return {
        **b.meta,
        "features": b.features,
        "architecture": dict(sorted(b.arch.to_json().items())),  # as a bundle's JSON has it: targets a list
        "calibration": b.calibration,
        "scaler": b.scaler.to_json(),
    }


def _counted(value: Any, one: str, many: str | None = None) -> str:
    """`plural` for a count read from a bundle's metadata, which may be missing (an older bundle)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return plural(value, one, many)
    return f"{_num(value)} {many or one + 's'}"


def _num(value: Any, digits: int = 4) -> str:
    """A number as a person reads it: 4 significant digits, no 16-digit floats."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return f"{int(value):,}"
        return f"{value:.{digits}g}"
    return str(value)


def _flat_features(features: list[str], calibration: dict[str, Any]) -> list[str]:
    """The features that were constant in training (bundles since the score-unit floor record them)."""
    flat = calibration.get("feature_flat")
    return [f for f, x in zip(features, flat or [], strict=False) if x]


def _flat_note(meta: dict[str, Any]) -> str:
    names = _flat_features(meta["features"], meta["calibration"])
    return f"; constant in training (scale 1 raw unit): {', '.join(names)}" if names else ""


def _promotion(decision: dict[str, Any]) -> str:
    """`promoted at T`, and `(forced)` when --force overrode the policy, `(forced; champion missing)` when there
    was no champion to compare with: a reader of the bundle must see that no comparison vouched for it."""
    state = decision.get("champion_state")  # a champion that was missing or unreadable: nothing compared
    how = f" (forced; champion {state})" if state else " (forced)" if decision.get("forced") else ""
    replaced = (decision.get("champion") or {}).get("version")  # the model it was compared with and replaced
    over = f"; champion {replaced}" if replaced else ""
    return f"{decision.get('decision')}{how} at {decision.get('at')}{over}"


# Features whose scaler `anomaly inspect` prints on its one line (all are in --json).
SCALER_SHOWN = 6


def _span(low: Any, high: Any) -> str:
    """`low .. high` in as many significant digits as tell them apart (4 at least): a feature near 1e9 showed
    as '1e+09 .. 1e+09'."""
    for digits in range(4, 18):
        shown = _num(low, digits), _num(high, digits)
        if shown[0] != shown[1] or low == high:
            break
    return f"{shown[0]} .. {shown[1]}"


def _scaler_line(meta: dict[str, Any]) -> str:
    """Each feature's mean and scale, and the range it took in training (bundles since session 24 record it),
    for the first SCALER_SHOWN features: `s0 mean 0.01, scale 0.71 (trained on -1.2 .. 1.3); ...`."""
    features, scaler, t = meta["features"], meta.get("scaler") or {}, meta.get("training", {})
    low, high = t.get("feature_min"), t.get("feature_max")
    parts = []
    for i, name in enumerate(features[:SCALER_SHOWN]):
        seen = f" (trained on {_span(low[i], high[i])})" if low and high else ""
        parts.append(f"{name} mean {_num(scaler['mean'][i])}, scale {_num(scaler['scale'][i])}{seen}")
    more = len(features) - SCALER_SHOWN
    return "; ".join(parts) + (f"; {more:,} more in --json" if more > 0 else "")


def context_features(meta: dict[str, Any]) -> str:
    """The features a bundle reads but does not score (not among its targets), comma-separated; "" when every
    feature is scored."""
    targets = meta.get("targets") or meta["features"]
    return ", ".join(f for f in meta["features"] if f not in targets)


def describe_bundle(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, text) lines of `anomaly inspect`: every value formatted, no raw dicts."""
    t = meta.get("training", {})
    cal = meta["calibration"]
    arch = meta["architecture"]
    sampling = meta.get("sampling", {})
    missing = meta.get("missing_values", {})
    interval = sampling.get("interval_seconds")
    rows = [
        ("model version", str(meta.get("model_version"))),
        ("created at", f"{meta.get('created_at')} (anomaly {meta.get('package_version')})"),
        (f"features ({len(meta['features'])})", ", ".join(meta["features"])),
        (
            "architecture",
            ", ".join(f"{k.replace('_', ' ')} {_num(v)}" for k, v in arch.items()),
        ),
        (
            "training data",
            f"fingerprint {meta.get('training_fingerprint')}, {_counted(t.get('rows'), 'row')}, "
            f"{_num(t.get('series'))} series",
        ),
        (
            "sampling",
            "unknown (bundle older than the learnt interval; gap reset at 300 s)"
            if interval is None
            else f"every {_num(interval)} s; a gap over {_num(sampling.get('max_gap_seconds'))} s resets a key "
            f"({_num(sampling.get('gap_splits'))} in the training data)",
        ),
        (
            "training",
            f"{_counted(t.get('epochs_run'), 'epoch')} (best "
            f"{_num(t.get('best_epoch'))}), best val loss "
            f"{_num(t.get('best_val_loss'))}, {t.get('windows_per_second', 0):,.0f} windows/s on {t.get('device')}",
        ),
        (
            "calibration",
            f"score 1.0 = q{_num(cal['reference_quantile'])} point error {_num(cal['reference_error'])}; "
            f"default threshold {_num(cal['default_threshold'])}" + _flat_note(meta),
        ),
        ("scaler", _scaler_line(meta)),
    ]
    if missing:
        rows.insert(
            5,
            (
                "missing values",
                f"nan_policy {missing.get('policy')}: {_counted(missing.get('rows_dropped'), 'row')} dropped, "
                f"{_counted(missing.get('cells_filled'), 'cell')} filled",
            ),
        )
    extreme = t.get("scale_outliers")
    if extreme:  # a feature scaled by a few extreme training readings (session 24; said by train too)
        rows.append(
            (
                "scale outliers",
                "; ".join(
                    f"{name} scale {_num(x['scale'])} ({_num(x['scale_without'])} without "
                    f"{_counted(x['readings'], 'extreme reading')}, farthest "
                    f"{_num(x['value'])})"
                    for name, x in extreme.items()
                ),
            )
        )
    cut = meta.get("anomalies_dropped")
    if cut:  # `--drop-anomalies`: said by train and in --json, not in these lines before
        rows.insert(
            5,
            (
                "dropped",
                f"{_counted(cut.get('rows'), 'row')} labelled anomalous (--drop-anomalies), the series cut at "
                f"{_counted(cut.get('cuts'), 'removed stretch', 'removed stretches')}",
            ),
        )
    context = context_features(meta)
    if context:  # model.targets, or train.wander_screen, left some features unscored: say which, by name
        scored = meta["targets"]
        rows.insert(
            3, (f"targets ({len(scored)})", f"{', '.join(scored)}; context, read but not scored: {context}")
        )
    lineage = meta.get("lineage")
    if lineage:
        data = lineage.get("data") or {}
        origin = (  # a bundle not made by retrain (promoted as it was) has a parent and no data
            f"; {data.get('source')} data {data.get('first_reading')} .. {data.get('last_reading')}, "
            f"{_counted(data.get('readings'), 'reading')} of {_counted(data.get('keys'), 'key')}"
            if data
            else ""
        )
        rows.append(("lineage", f"parent {lineage.get('parent_version') or 'none'}{origin}"))
        decision = lineage.get("promotion")
        if decision:
            rows.append(("promotion", _promotion(decision)))
    if meta.get("export"):
        rows.append(("export", ", ".join(f"{k} {v}" for k, v in meta["export"].items())))
    quant = meta.get("quantization")
    if isinstance(quant, dict):  # int8 bundles: older ones say "dynamic", and load and score the same way now
        older = (
            "; exported as dynamic quantisation by an older version"
            if quant.get("scheme") == "dynamic"
            else ""
        )
        rows.append(("quantization", f"int8 weights (one scale per tensor), scored in float32{older}"))
    return rows


COMMANDS: list[click.Command] = [generate_cmd, train_cmd, inspect_cmd]

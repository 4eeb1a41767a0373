"""replay and demo: backtests through the streaming engine."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pandas as pd

from anomaly import evaluation
from anomaly.atomic import atomic_path, check_writable
from anomaly.bundle import load_bundle
from anomaly.commands.common import (
    config_from,
    data_options,
    empty_refused,
    key_column_option,
    label_map_option,
    one_line_errors,
    option_names,
    pipeline_option,
    refuse_replacing_inputs,
    setup_logging,
    time_column_option,
    warn_line,
)
from anomaly.commands.model_cmds import print_training, run_training
from anomaly.config import DataConfig, PipelineConfig, build_config
from anomaly.data import infer_features, load_series, plural
from anomaly.data.loading import counting_columns, header_below
from anomaly.data.reading import quoted
from anomaly.errors import AnomalyError, DataError, SchemaError
from anomaly.quality import format_quality
from anomaly.replay import OUTPUTS, ReplayResult, replay
from anomaly.synthetic import SyntheticSpec, generate
from anomaly.thresholds import THRESHOLDS

# The embedded default of `anomaly demo`; pipelines/demo.toml holds the same settings (a test keeps them equal).
DEMO: dict[str, dict[str, Any]] = {
    "data": {"time_column": "timestamp", "label": "anomaly"},
    "model": {"window": 32, "hidden_size": 64, "num_layers": 1, "dropout": 0.0},
    "train": {"epochs": 40, "batch_size": 16, "stride": 8, "learning_rate": 0.003, "patience": 6, "seed": 0},
    "engine": {"threshold": "dynamic", "smoothing": 0.2, "alert_open_after": 3, "alert_close_after": 30},
    "replay": {"predict": "alert"},
}


def _why_missing(frame, name: str, data: DataConfig) -> str:
    """A model feature the file does not give as numbers: absent, named as the time, key or label column (a
    numeric sensor that was called 'mostly text'), empty, or text."""
    if name not in frame.columns:
        return name
    role = next(
        (
            what
            for column, what in (
                (data.time_column, "the time column: --time-column, data.time_column"),
                (data.key_column, "the key column: --key-column, data.key_column"),
                (data.label, "the label column: --label, data.label"),
                *((c, "a label column: data.label_columns") for c in data.label_columns or ()),
            )
            if column == name
        ),
        None,
    )
    if role:
        return f"{name} (named as {role})"
    return f"{name} (no value in any row)" if frame[name].isna().all() else f"{name} (mostly text)"


def check_schema(cfg: PipelineConfig, features: list[str]) -> Callable[[pd.DataFrame, str], None] | None:
    """The files must give the model exactly its features. `--features` selects them by name (every other
    column is then ignored), checked here at once; without it, the files' numeric columns must be exactly the
    model's: the check of each file's frame is returned, for :func:`load_series` to run on the frame it reads
    (reading each file a second time for it took seconds per 100 MB and held a second copy of the file)."""
    chosen = list(cfg.data.features)  # from --features, a pipeline file or ANOMALY_DATA_FEATURES: name both
    if chosen:
        unknown = [f for f in chosen if f not in features]
        if unknown:
            raise SchemaError(
                f"--features (data.features) names {', '.join(unknown)}, which the model does not use; its features are "
                f"{', '.join(features)}",
                extra=unknown,
            )
        missing = [f for f in features if f not in chosen]
        if missing:
            raise SchemaError(
                f"--features (data.features) leaves out {', '.join(missing)}; the model needs all of {', '.join(features)}",
                missing=missing,
            )
        return None
    return functools.partial(check_columns, cfg=cfg, features=features)


def _some(names: list[str], shown: int = 10) -> str:
    """The first `shown` names, and how many more: a file of 200 other columns made a line of 1,400 characters."""
    more = f" and {len(names) - shown} more" if len(names) > shown + 1 else ""
    return ", ".join(map(str, names if not more else names[:shown])) + more


def check_columns(frame: pd.DataFrame, path: str, *, cfg: PipelineConfig, features: list[str]) -> None:
    """Refuse a file (read as `frame`) whose numeric columns are not exactly the model's `features`."""
    have = infer_features(frame, cfg.data, path)
    missing = [f for f in features if f not in have]
    extra = [f for f in have if f not in features]
    if missing or extra:
        named = [_why_missing(frame, f, cfg.data) for f in missing]
        parts = ([f"missing {_some(named)}"] if missing else []) + (
            [f"unexpected {_some(extra)}"] if extra else []
        )
        hint = "" if missing else " (use only the model's columns with --features)"
        time_column = cfg.data.time_column
        if extra and time_column and time_column not in frame.columns:  # the time under another name, numeric
            named = [c for c in extra if re.search(r"time|date|epoch|^ts$", str(c), re.IGNORECASE)]
            guess = named or [c for c in counting_columns(frame, cfg.data) if c in extra]
            if guess:
                hint += (
                    f"; the file has no time column {time_column!r}: if {guess[0]!r} is the time, pass "
                    f"--time-column {quoted(guess[0])}"
                )
        below = header_below(frame, time_column) if missing and frame.attrs.get("header", True) else None
        if below:  # notes or a title row above the header: its names were read as the columns
            hint += f"; the column names seem to be on line {below}: pass --skip-rows {below - 1}"
        cased = {f.casefold(): f for f in extra}
        renamed = [(f, cased[f.casefold()]) for f in missing if f.casefold() in cased]
        if renamed:  # `Current` exported as `current`: the names differ only in case, easy to miss
            hint += (
                "; the names differ only in case: "
                + ", ".join(f"the model's {want!r} is {got!r} in the file" for want, got in renamed)
                + " (rename the column"
                + ("s" if len(renamed) > 1 else "")
                + " in the file as the model names "
                + ("them" if len(renamed) > 1 else "it")
                + ")"
            )
        raise SchemaError(
            f"{path} does not match the model's features: {'; '.join(parts)}{hint}",
            missing=missing,
            extra=extra,
        )


def run_replay(
    paths: list[str],
    model: str,
    out: str,
    cfg: PipelineConfig,
    metrics_out: str | None = None,
    progress: bool = True,
    labels_file: str | None = None,
) -> ReplayResult:
    if metrics_out:
        check_writable(metrics_out, "metrics file")
        # a file the replay reads, or one of its own outputs (DIR/scores.csv), was replaced by the metrics
        refuse_replacing_inputs(
            metrics_out,
            "metrics file",
            "--metrics-out",
            [(p, "data file") for p in paths]
            + [(model, "model bundle"), (labels_file, "labels file")]
            + [(os.path.join(out, name), "replay output") for name in OUTPUTS],
            "the replay would replace it with the metrics",
        )
    bundle = load_bundle(model)
    check = check_schema(cfg, bundle.features)
    # the data's warnings (look-alike keys, a --dayfirst that had no effect) go into summary.json's warnings,
    # printed with them by print_result (once)
    loaded: list[str] = []
    series, _ = load_series(
        paths, cfg.data, bundle.features, labels_file=labels_file, check=check, warn=loaded.append
    )
    observer = None
    if metrics_out:
        from anomaly.metrics import PipelineMetrics, write_textfile

        observer = PipelineMetrics(live=False)  # no wall-clock latency: the readings are history
        observer.model_loaded(bundle)
    try:
        result = replay(bundle, series, cfg, out, observer=observer, progress=progress, warnings=loaded)
    except Exception:  # the run failed: its summary, which would have printed them, is not written
        for line in loaded:
            click.echo(f"warning: {line}", err=True)
        raise
    if metrics_out and observer is not None:
        write_textfile(observer, metrics_out)
    return result


def _reasons(counters: dict[str, int]) -> str:
    """' (12 duplicate_timestamp, 3 non_finite)': the engine's refusals by reason, most first; '' for none."""
    by = {k.removeprefix("rejected_"): n for k, n in counters.items() if k.startswith("rejected_") and n}
    ranked = sorted(by.items(), key=lambda kv: (-kv[1], kv[0]))
    return f" ({', '.join(f'{n:,} {why}' for why, n in ranked)})" if ranked else ""


def print_result(result: ReplayResult, metrics_out: str | None = None) -> None:
    """The run in a few lines. Warnings go to stderr; a run that scored nothing ends with one `error:` line
    and exit status 2 (its files are written all the same, so the user can look at them). `metrics_out`, the
    Prometheus text file written (`--metrics-out`; the demo's), gets a line of its own after the results."""
    s = result.summary
    t, c = s["totals"], s["coverage"]
    cold = ", all from a cold state" if c.get("cold_only") else ""
    click.echo(
        f"replayed {plural(c['readings'], 'reading')} of {s['series']:,} series: "
        f"{plural(t['windows_scored'], 'window')} scored ({plural(c['scored'], 'reading')}{cold}), "
        f"{plural(s['alerts_raised'], 'alert')} raised ({plural(s['alert_events'], 'open/close event')}), "
        f"{plural(c['rejected'], 'reading')} rejected{_reasons(s.get('engine_counters', {}))}"
    )
    nothing = bool(s["warnings"]) and s["warnings"][0].startswith("nothing was scored")
    for line in s["warnings"][1:] if nothing else s["warnings"]:
        click.echo(f"warning: {line}", err=True)
    if "metrics" in s and not nothing:
        e = s.get("evaluated", c)  # the readings counted (a summary without them: every reading)
        cut = e["unscored"] - e["rejected"]
        after = s.get("evaluate_after", 0)
        click.echo(
            f"\nevaluation (prediction = {s['predict']}; {plural(e['unscored'], 'reading')} unscored "
            f"{'holds' if e['unscored'] == 1 else 'hold'} the last decision: {e['rejected']:,} rejected, {cut:,} "
            "in windows never filled before a gap or a series end"
            + (
                f"; the first {plural(after, 'reading')} of each series {'is' if after == 1 else 'are'} not evaluated"
                if after
                else ""
            )
            + ")"
        )
        click.echo(evaluation.format_table(s["metrics"]))
    elif not nothing:
        click.echo(f"no evaluation: the files have no label column {s['label']!r} (--label names it)")
    if result.quality and not nothing:
        click.echo("")
        click.echo(
            format_quality(result.quality, "model vs no-model baselines (same engine, same settings):")
        )
    written = [
        name for name in OUTPUTS if (result.out_dir / name).is_file()
    ]  # replay.parquet = false: no Parquet
    click.echo(f"\nresults: {result.out_dir}/ ({', '.join(written)})")
    if metrics_out:  # written like the rest, and was named nowhere (the demo's in the results folder, too)
        click.echo(f"metrics: {metrics_out}")
    for path in result.reports:
        click.echo(f"report:  {path}")
    if nothing:
        raise AnomalyError(s["warnings"][0])


@click.command("replay")
@click.argument("data", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--model", "-m", type=click.Path(dir_okay=False), required=True, help="Model bundle.")
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False),
    default="runs/replay",
    show_default=True,
    help="Directory for scores, alerts, summary and reports.",
)
@pipeline_option
@time_column_option
@key_column_option
@click.option(
    "--features",
    default=None,
    callback=empty_refused("leave the option out for the model's"),
    help="Comma-separated feature columns.  [default: the model's]",
)
@click.option("--label", default=None, help="Label column used for evaluation.  [default: anomaly]")
@label_map_option
@click.option(
    "--labels",
    "labels_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Labels in a file of their own: one 0/1 per line, a CSV with the time and label columns, or a JSON "
    "of [start, end] windows per file name (NAB).  [default: the label column of the data]",
)
@data_options
@click.option(
    "--threshold",
    type=click.Choice(list(THRESHOLDS)),
    default=None,
    help="Threshold kind (README: Thresholds, level shifts and stuck sensors).  "
    "[default: engine.threshold of the pipeline, else dynamic]",
)
@click.option(
    "--static-threshold",
    type=float,
    default=None,
    help="Static threshold in score units (with --threshold static).  [default: the bundle's calibrated value]",
)
@click.option(
    "--predict",
    type=click.Choice(["alert", "point"]),
    default=None,
    help="Point prediction for evaluation: inside an open alert, or score above threshold.  [default: alert]",
)
@click.option(
    "--evaluate-after",
    type=click.IntRange(min=0),
    default=None,
    help="Leave the first N readings of each series out of the evaluation (the rows trained on with train "
    "--train-rows N); they are still replayed.  [default: 0]",
)
@click.option(
    "--metrics-out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the final Prometheus metrics here (text format).  [default: none]",
)
@click.option("--plots/--no-plots", default=None, help="Write one PNG report per series.  [default: plots]")
@click.option("--verbose", "-v", is_flag=True, help="Log progress.")
@one_line_errors
def replay_cmd(
    data,
    model,
    out,
    pipeline,
    time_column,
    key_column,
    features,
    label,
    label_map,
    labels_file,
    threshold,
    static_threshold,
    predict,
    evaluate_after,
    metrics_out,
    plots,
    verbose,
    data_overrides,
) -> None:
    """Replay CSV files through the streaming engine: scores, alerts, evaluation and plots."""
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
            "engine.threshold": threshold,
            "engine.static_threshold": static_threshold,
            "replay.predict": predict,
            "replay.evaluate_after": evaluate_after,
            "replay.plots": plots,
        },
    )
    if static_threshold is not None and cfg.engine.threshold != "static":  # else it silently did nothing
        raise click.UsageError(
            f"--static-threshold sets the static threshold, but engine.threshold is {cfg.engine.threshold}: add "
            "--threshold static"
        )
    print_result(run_replay(list(data), model, out, cfg, metrics_out, labels_file=labels_file), metrics_out)


@click.command("demo")
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False),
    default="runs/demo",
    show_default=True,
    help="Directory for data, model and results.",
)
@pipeline_option
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Seed for data and training.  [default: train.seed of the pipeline or ANOMALY_TRAIN_SEED, else 0]",
)
@click.option(
    "--epochs", type=click.IntRange(min=1), default=None, help="Maximum epochs.  [default: pipeline's]"
)
@one_line_errors
def demo_cmd(out: str, pipeline: str | None, seed: int | None, epochs: int | None) -> None:
    """Generate synthetic sensor data, train, replay the labelled test part and report metrics."""
    root = Path(out)
    overrides = {"train.epochs": epochs, "train.seed": seed}
    cfg = (
        config_from(pipeline, overrides)
        if pipeline
        else build_config(
            DEMO,
            os.environ,
            overrides,
            toml_source="the demo's embedded settings (pipelines/demo.toml)",
            option_names=option_names(overrides),
            warn=warn_line,
        )
    )
    seed = cfg.train.seed  # --seed, else the pipeline's or ANOMALY_TRAIN_SEED (the option always won, as 0)
    train_csv, test_csv = root / "data" / "train.csv", root / "data" / "test.csv"
    with atomic_path(train_csv, "CSV file") as tmp:
        generate(SyntheticSpec(n_points=20_000, anomalies=0, seed=seed)).to_csv(tmp, index=False)
    with atomic_path(test_csv, "CSV file") as tmp:
        test = SyntheticSpec(n_points=8_000, anomalies=12, seed=seed + 1, start=1_701_500_000.0)
        generate(test).to_csv(tmp, index=False)
    click.echo(f"generated {train_csv} (normal) and {test_csv} (12 labelled anomalies)")
    model = root / "model.pt"
    try:
        trained = run_training([str(train_csv)], cfg, str(model))
    except (SchemaError, DataError) as exc:  # the demo's own file: the [data] settings describe other files
        variables = sorted(k for k in os.environ if k.startswith("ANOMALY_DATA_"))
        blame = ([f"the [data] settings of the pipeline file {pipeline}"] if pipeline else []) + (
            [f"the variable{'s' if len(variables) > 1 else ''} {', '.join(variables)}"] if variables else []
        )
        if not blame:
            raise
        raise DataError(
            f"{exc}; that is the demo's own generated data, which {' or '.join(blame)} may not describe: run "
            "the demo without them (its pipeline is pipelines/demo.toml)"
        ) from None
    print_training(trained, str(model))
    metrics_out = str(root / "replay" / "metrics.prom")
    print_result(
        run_replay([str(test_csv)], str(model), str(root / "replay"), cfg, metrics_out=metrics_out),
        metrics_out,
    )


COMMANDS: list[click.Command] = [replay_cmd, demo_cmd]

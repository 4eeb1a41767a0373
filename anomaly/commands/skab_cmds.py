"""skab: the SKAB benchmark through the streaming engine, printed next to SKAB's published leaderboard."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from anomaly import atomic, skab
from anomaly.commands.common import (
    one_line_errors,
    pipeline_option,
    refuse_replacing_inputs,
    setup_logging,
    warn_line,
)
from anomaly.config import build_config, read_toml
from anomaly.data import plural
from anomaly.evaluation import format_table
from anomaly.quality import format_quality, format_ranking


@click.command("skab")
@click.argument("data", type=click.Path(file_okay=False))
@pipeline_option
@click.option(
    "--defaults",
    is_flag=True,
    help="Project defaults for everything but SKAB's column mapping (time, labels), instead of the settings "
    "of pipelines/skab.toml: what a new user without a pipeline file gets.",
)
@click.option(
    "--predict",
    type=click.Choice(["alert", "point"]),
    default=None,
    help="Predicted anomalous: points inside an open alert, or points above the threshold.  "
    "[default: replay.predict of the pipeline, alert in pipelines/skab.toml]",
)
@click.option(
    "--warm/--cold",
    default=True,
    show_default=True,
    help="Feed the training rows through the engine before the test rows (as a live deployment would).",
)
@click.option(
    "--train-rows",
    type=click.IntRange(min=2),
    default=None,
    help=f"Rows per file to train on.  [default: data.train_rows of the pipeline or ANOMALY_DATA_TRAIN_ROWS, else "
    f"{skab.TRAIN_ROWS} (SKAB's protocol)]",
)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Files trained in parallel processes (results do not depend on it).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Only the first N files (a quick check).  [default: all]",
)
@click.option(
    "--plots",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for one PNG per file.  [default: no plots]",
)
@click.option(
    "--json-out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the full JSON summary (settings, per-file metrics) to this file.  [default: none]",
)
@click.option("--verbose", "-v", is_flag=True, help="Print every file's metrics and log training.")
@one_line_errors
def skab_cmd(
    data: str,
    pipeline: str | None,
    defaults: bool,
    predict: str | None,
    warm: bool,
    train_rows: int | None,
    jobs: int,
    limit: int | None,
    plots: str | None,
    json_out: str | None,
    verbose: bool,
) -> None:
    """Run the SKAB benchmark on DATA (SKAB's data/ folder: valve1/, valve2/, other/).

    One model per labelled file is trained on its first 400 rows (threshold calibrated on those rows only);
    the remaining rows stream through the engine. TP/FP/FN/TN are pooled over all files and F1, FAR and MAR
    computed point-wise as SKAB does, without look-ahead (a point counts as flagged from the reading whose arrival
    decided it). Without --pipeline the settings of pipelines/skab.toml are used; --defaults uses the project's
    defaults instead; a pipeline file's settings lie over SKAB's column mapping (time and label columns). The model is shown next to the z-score and PCA baselines, with the oracle F1 (threshold
    chosen on the labels, for diagnosis only). The last line printed is a JSON summary of the pooled metrics.
    """
    setup_logging(verbose)
    if json_out:
        atomic.check_writable(json_out, "JSON file")
        refuse_replacing_inputs(
            json_out,
            "JSON file",
            "--json-out",
            [(pipeline, "pipeline file")]
            + [(str(f), "SKAB file") for f in sorted(Path(data).rglob("*.csv"))],
            "the benchmark would replace it with its summary",
        )
    if plots:  # refused at the end, it cost the whole run and the JSON file written after it
        atomic.check_writable_folder(plots, "plot folder")
    overrides = {"replay.predict": predict, "data.train_rows": train_rows}
    if pipeline and defaults:
        raise click.UsageError("give either --pipeline or --defaults")
    if pipeline:
        # SKAB's column mapping (time `datetime`, its label columns) under the file's own [data]: a pipeline of
        # engine or model settings alone read SKAB's files with the default time column `timestamp` and stopped
        # at the first file, its error hinting at a --time-column that skab does not take
        toml = read_toml(pipeline)
        if isinstance(toml.get("data", {}), dict):
            toml = {**toml, "data": {**skab.DATA, **toml.get("data", {})}}
        cfg = build_config(
            toml, os.environ, overrides, toml_source=f"pipeline file {pipeline}", warn=warn_line
        )
    else:
        # no pipeline file: project defaults (--defaults) or the settings of pipelines/skab.toml, then ANOMALY_*
        # environment variables and options, as with a file
        cfg = build_config(
            {"data": skab.DATA} if defaults else skab.DEFAULTS,
            os.environ,
            overrides,
            toml_source="SKAB's column mapping" if defaults else "the settings of pipelines/skab.toml",
            warn=warn_line,
        )
    train_rows = cfg.data.train_rows or skab.TRAIN_ROWS  # data.train_rows was ignored: 400 whatever it said
    n_files = len(skab.skab_files(data, cfg.data.encoding)[:limit])

    from tqdm import tqdm

    bar = tqdm(total=n_files, desc="skab", unit="file", disable=None)

    def on_file(r: skab.FileResult) -> None:
        bar.update(1)
        if verbose:
            m = r.metrics
            tqdm.write(
                f"{r.key:<12} F1 {m['f1']:.3f}  FAR {m['far'] * 100:6.2f} %  MAR {m['mar'] * 100:6.2f} %  "
                f"({plural(r.epochs, 'epoch')}, {r.seconds:.1f} s)"
            )

    result = skab.run_benchmark(
        data, cfg, train_rows=train_rows, warm=warm, jobs=jobs, limit=limit, on_file=on_file
    )
    bar.close()
    s = skab.summary(result)
    click.echo(
        f"SKAB: {plural(len(result.files), 'file')}, {s['counts']['point']['tp'] + s['counts']['point']['fn']} "
        f"anomalous of {sum(s['counts']['point'].values())} test points, predict={cfg.replay.predict}, "
        f"{'warm' if warm else 'cold'} state, {result.seconds:.0f} s"
    )
    click.echo(f"unscored tail points (they hold the last decision): {s['unscored_points']}")
    click.echo("")
    click.echo(format_table(result.pooled))
    click.echo("")
    click.echo(skab.comparison_table(result.pooled))
    if result.quality:
        click.echo("")
        click.echo(
            format_quality(result.quality, "model vs no-model baselines (same engine, same settings):")
        )
        if s["ranking"] is not None:
            click.echo(format_ranking(s["ranking"], "file"))
    if json_out:  # before the plots: a plot that cannot be written (disk full) does not cost the summary
        atomic.write_text(json_out, json.dumps(s, indent=2, default=float), "JSON file")
    if plots:
        paths = skab.write_plots(result.files, plots)
        click.echo(f"\nplots: {len(paths)} PNG files in {plots}")
    click.echo(
        json.dumps(
            {
                "benchmark": "SKAB",
                "files": s["files"],
                **s["skab"],
                "precision": round(result.pooled["precision"], 4),
                "recall": round(result.pooled["recall"], 4),
                "pa_f1": round(result.pooled["pa_f1"], 4),
                "event_recall": round(result.pooled["event_recall"], 4),
                "event_precision": round(result.pooled["event_precision"], 4),
            }
        )
    )


COMMANDS: list[click.Command] = [skab_cmd]

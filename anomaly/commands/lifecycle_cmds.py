"""export, retrain and promote: the model lifecycle after the first `anomaly train`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from anomaly import retrain
from anomaly.atomic import refuse_replacing_data
from anomaly.bundle import read_metadata
from anomaly.commands.common import (
    check_output,
    config_from,
    data_options,
    key_column_option,
    label_map_option,
    one_line_errors,
    option_names,
    pipeline_option,
    quiet_kafka,
    refuse_unless,
    setup_logging,
    time_column_option,
    warn_line,
)
from anomaly.data import plural
from anomaly.errors import AnomalyError, ConfigError, DataError
from anomaly.promotion import (
    Comparison,
    Identity,
    PromotionPolicy,
    compare,
    false_alert_counts,
    identity,
    is_export,
    promotion_lock,
    replaces_float32,
)
from anomaly.retrain import DEFAULT_MIN_WINDOWS, TimeRange


def _default_export_path(model: str, fmt: str) -> str:
    p = Path(model)
    return str(p.with_name(p.stem + ("-int8.pt" if fmt == "int8" else ".onnx")))


def _check_export_target(model: str, fmt: str, out: str) -> None:
    """Refuse a file no command could load back, the model's own file (its float weights would be lost), and a
    file of data (a mistyped -o; :func:`~anomaly.atomic.refuse_replacing_data`).
    Every command picks the runtime by the name: `.onnx` is read with onnxruntime, anything else as a bundle."""
    target = Path(out)
    if fmt == "onnx" and target.suffix != ".onnx":
        raise DataError(
            f"{out}: an ONNX export must be named *.onnx, or no command reads it as ONNX "
            f"(e.g. -o {target.with_suffix('.onnx')})"
        )
    if fmt == "int8" and target.suffix == ".onnx":
        example = target.with_suffix(".pt")
        if example.resolve() == Path(model).resolve():  # not the name of the model being exported
            example = example.with_name(example.stem + "-int8.pt")
        raise DataError(
            f"{out}: an int8 export is a model bundle, but a name ending .onnx is read as ONNX (e.g. -o {example})"
        )
    if target.exists() and target.resolve() == Path(model).resolve():
        raise DataError(f"{out} is the model being exported; write the export to another file (-o)")
    refuse_replacing_data(out, "export")


@click.command("export")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["int8", "onnx"]),
    required=True,
    help="int8: the LSTM and linear weights stored as int8, a file a third the size, scored in float32 (a bundle "
    "the engine loads like any other); onnx: the stateful step (x, h, c) -> (recon, h, c), validated against PyTorch with onnxruntime.",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False),
    default=None,
    help="File to write.  [default: MODEL-int8.pt or MODEL.onnx next to MODEL]",
)
@one_line_errors
def export_cmd(model: str, fmt: str, out: str | None) -> None:
    """Export a model bundle for CPU scoring as int8 or ONNX."""
    from anomaly.bundle import load_bundle
    from anomaly.export import ONNX_TOLERANCE, export

    if model.endswith(".onnx") and Path(model).exists():  # a missing file is "not found", as everywhere
        raise DataError(
            f"{model} is an ONNX export already; export from the bundle it came from (a .pt file)"
        )
    target = out or _default_export_path(model, fmt)
    _check_export_target(model, fmt, target)
    bundle = load_bundle(model)
    path, info = export(bundle, fmt, target)
    click.echo(f"wrote {path} ({fmt}, model version {info['model_version']})")
    if "max_abs_diff" in info:
        click.echo(
            f"validated with onnxruntime: max |ONNX - PyTorch| = {info['max_abs_diff']:.2e} "
            f"(tolerance {ONNX_TOLERANCE:g})"
        )


# --- retrain and promote ---------------------------------------------------------------------------------------


def _source_options(fn):  # type: ignore[no-untyped-def]
    """Where retrain/promote read data: CSV files (arguments), or a Kafka topic range."""
    opts = [
        click.argument("data", nargs=-1, type=click.Path(dir_okay=False)),
        pipeline_option,
        time_column_option,
        key_column_option,
        click.option(
            "--label",
            default=None,
            help="Label column of the files: F1/FAR/MAR in the comparison (promote, retrain --promote).  "
            "[default: anomaly]",
        ),
        label_map_option,
        data_options,  # how to read the files, as train and replay read them
        click.option(
            "--topic",
            "topics",
            multiple=True,
            help="Input topic to read (repeatable) when no CSV files are given.  [default: kafka.topics]",
        ),
        click.option(
            "--bootstrap-servers",
            "-b",
            default=None,
            help="Kafka host:port list.  [default: kafka.bootstrap_servers]",
        ),
        click.option(
            "--alerts-topic",
            default=None,
            help="Alerts topic (retrain leaves out readings in its alerts; promote reads none, and warns that "
            "the option has no effect).  [default: kafka.alerts_topic]",
        ),
        click.option(
            "--dead-letter-topic", default=None, help="Dead-letter topic.  [default: kafka.dead_letter_topic]"
        ),
        click.option(
            "--group-id",
            default=None,
            help="Consumer group of the daemons (`anomaly consume --group-id`): only its alerts and dead letters are "
            "read.  [default: kafka.group_id, anomaly]",
        ),
        click.option(
            "--since",
            default=None,
            help="Time range ending now (or at --to): 30m, 12h, 7d, 2w.  [default: none; CSV: all rows]",
        ),
        click.option(
            "--from",
            "start",
            default=None,
            help="Range start: epoch seconds or ISO-8601 (naive = UTC).  [default: none]",
        ),
        click.option(
            "--to",
            "end",
            default=None,
            help="Range end (exclusive); with CSV files alone, the rows before it.  [default: now; CSV: none]",
        ),
        click.option("--keys", default=None, help="Comma-separated keys to use.  [default: all]"),
        click.option("--verbose", "-v", is_flag=True, help="Log progress details.  [default: off]"),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _policy_options(fn):  # type: ignore[no-untyped-def]
    defaults = PromotionPolicy()
    opts = [
        click.option(
            "--f1-tolerance",
            type=click.FloatRange(0, 1),
            default=defaults.f1_tolerance,
            show_default=True,
            help="With labels: the challenger's F1 may be this much below the champion's.",
        ),
        click.option(
            "--max-alert-ratio",
            type=click.FloatRange(min=0),
            default=defaults.max_alert_rate_ratio,
            show_default=True,
            help="The challenger may open at most this many times the champion's alerts (plus --alert-allowance); "
            "on a slice labelled with both classes, its false alerts (overlapping no labelled anomaly).",
        ),
        click.option(
            "--alert-allowance",
            type=click.IntRange(min=0),
            default=defaults.alert_allowance,
            show_default=True,
            help="Alerts the challenger may open beyond --max-alert-ratio times the champion's, so that on a "
            "quiet stream (a champion with no alert) one alert does not reject it.",
        ),
        click.option(
            "--max-drift",
            type=click.FloatRange(min=0),
            default=defaults.max_drift_psi,
            show_default=True,
            help="The challenger's own drift PSI on the slice must be at most this.",
        ),
        click.option(
            "--predict",
            type=click.Choice(["alert", "point"]),
            default=None,
            help="With labels: a reading counts as predicted anomalous for F1/FAR/MAR inside an open alert, or "
            "when the engine flagged it, as replay --predict.  [default: replay.predict of the pipeline, alert]",
        ),
        click.option(
            "--force", is_flag=True, help="Promote even when the policy says no (recorded as forced)."
        ),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _config(
    pipeline,
    bootstrap_servers,
    alerts_topic,
    dead_letter_topic,
    time_column,
    key_column,
    features,
    data_overrides,
    group_id=None,
    connects=False,
):  # type: ignore[no-untyped-def]
    for option, column, role in (
        ("--time-column", time_column, "time column"),
        ("--key-column", key_column, "key column"),
        ("--label", data_overrides.get("data.label"), "label column"),
    ):
        # it was "data.features includes the time column 'sensor_1' (data.features from a command-line option,
        # ...)": the features are the model's, given by no option of the user's
        if column in features:
            raise DataError(
                f"{option} names {column!r}, one of the model's features ({', '.join(features)}): name the "
                f"file's {role}"
            )
    return config_from(
        pipeline,
        {
            **data_overrides,
            "kafka.bootstrap_servers": bootstrap_servers,
            "kafka.alerts_topic": alerts_topic,
            "kafka.dead_letter_topic": dead_letter_topic,
            "kafka.group_id": group_id,
            "data.time_column": time_column,
            "data.key_column": key_column,
            "data.features": ",".join(features),
        },
        connects,  # a topic is read: a security setting the protocol does not use is refused, not warned of
    )


def _check_csv_source(
    data, topics, bootstrap_servers, alerts_topic, dead_letter_topic, hint="", group_id=None
) -> None:  # type: ignore[no-untyped-def]
    """With CSV files, the options of a topic source are refused rather than ignored: `retrain --alerts-topic`
    with files would leave nothing out for alerts (readings inside them learnt as normal), `--topic` reads
    nothing."""
    given = [
        name
        for name, value in (
            ("--topic", topics),
            ("--bootstrap-servers", bootstrap_servers),
            ("--alerts-topic", alerts_topic),
            ("--dead-letter-topic", dead_letter_topic),
            ("--group-id", group_id),
        )
        if value
    ]
    if data and given:
        raise ConfigError(
            f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for reading a topic, but CSV files were "
            f"given: give either the files or a topic range{hint}"
        )


def _warn_unread_training_variables(env: Mapping[str, str]) -> None:
    """Without --from-pipeline the challenger takes the champion's [model] and [train] settings: the
    ANOMALY_MODEL_* / ANOMALY_TRAIN_* variables set (a ConfigMap's) were ignored without a word."""
    unread = sorted(n for n in env if n.startswith(("ANOMALY_MODEL_", "ANOMALY_TRAIN_")))
    if unread:
        warn_line(
            f"{', '.join(unread)} {'has' if len(unread) == 1 else 'have'} no effect: retrain trains with the "
            "champion's [model] and [train] settings; add --from-pipeline (with --pipeline) to train with the "
            "pipeline's and these variables (--epochs, --seed and --device override either)"
        )


def _check_device(device: str, option: str | None, from_pipeline: bool) -> None:
    """Before reading any data: a champion trained with --device cuda, retrained where there is no CUDA device
    (the daemon's CPU host), names the option that changes it."""
    import torch

    if device != "cuda" or torch.cuda.is_available():
        return
    if option:
        raise ConfigError("--device cuda, but this machine has no CUDA device: give --device cpu (or auto)")
    origin = (
        "the pipeline's train.device is" if from_pipeline else "the champion was trained with train.device"
    )
    raise ConfigError(f"{origin} cuda, but this machine has no CUDA device: give --device cpu (or auto)")


def _selected(keys: str | None) -> set[str] | None:
    return {k.strip() for k in keys.split(",") if k.strip()} if keys else None


def _read_kafka(cfg, topics, span, features, keys, progress, read_alerts=True):  # type: ignore[no-untyped-def]
    """Readings of the topics in `span`, without dead-lettered messages; also the alert events (for retrain:
    promote compares on every reading and reads none)."""
    from collections import Counter

    from anomaly.kafka.codec import Decoder
    from anomaly.kafka.daemon import message_format
    from anomaly.kafka.history import read_alert_events, read_dead_letter_positions, read_topic_range

    k = cfg.kafka
    # only this pipeline's (consumer group's): two pipelines may share the alerts and dead-letter topics (their
    # default names are the same for every group), and another model's alerts and refusals are not this one's
    others: Counter[str] = Counter()
    dead = read_dead_letter_positions(
        k, k.dead_letter_topic, int(span.start * 1000), group=k.group_id, others=others
    )
    hist = read_topic_range(
        k,
        list(topics or k.topics),
        Decoder(message_format(cfg, features)),
        span.start,
        span.end,
        keys=keys,
        exclude=dead,
        progress=progress,
        duplicate_policy=cfg.engine.duplicate_policy,
    )
    dead_others = sum(others.values())
    alerts = read_alert_events(k, k.alerts_topic, group=k.group_id, others=others) if read_alerts else []
    if others:
        counts = [
            plural(n, what)
            for n, what in ((dead_others, "dead letter"), (sum(others.values()) - dead_others, "alert event"))
            if n
        ]
        warn_line(
            f"left out {' and '.join(counts)} of other consumer groups ({', '.join(sorted(others))}); this "
            f"pipeline's group is {k.group_id!r} (kafka.group_id, --group-id: give the daemons' group)"
        )
    source = {
        "source": "kafka",
        "group": k.group_id,
        "topics": list(topics or k.topics),
        **({"alerts_topic": k.alerts_topic} if read_alerts else {}),
        "dead_letter_topic": k.dead_letter_topic,
        **span.to_json(),
    }
    return hist, alerts, source


def _read_csv(cfg, data, span, features, keys, alerts_file):  # type: ignore[no-untyped-def]
    """CSV series (optionally cut to an event-time range and keys) and alert events from a JSONL file."""
    import json

    from anomaly.data import load_series, merge_keys

    series, _ = load_series(list(data), cfg.data, features, warn=warn_line)
    _check_values(series, features, data)
    series = merge_keys(series)  # one series per key, as a topic read gives (a key may be in several files)
    series = sorted(series, key=lambda s: s.key)  # the order a topic read gives (training data order matters)
    if keys is not None:
        series = [s for s in series if s.key in keys]
    if span is not None:
        sliced = _time_slice(series, span.start, span.end)
        if series and not sliced:  # say where the files' readings are: --since counts back from now
            raise _no_readings(span, None, {"source": "csv"}, _time_bounds(series))
        series = sliced
    # as a topic read drops them (the engine would); counted among the selected keys and range only
    series, duplicates = _drop_repeated_times(series, cfg.engine.duplicate_policy)
    events = []
    if alerts_file:
        with open(alerts_file) as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    event = None
                if not isinstance(event, dict) or "key" not in event or "start" not in event:
                    raise DataError(
                        f"{alerts_file} line {n} is not an alert record (a JSON object with key and start per "
                        "line, as a replay's alerts.jsonl holds)"
                    )
                events.append(event)
    source = {
        "source": "csv",
        "files": [str(p) for p in data],
        "alerts_file": alerts_file,
        "dropped_readings": duplicates,
    }
    if span is not None:
        source.update(span.to_json())
    return series, events, source


def _no_readings(span, keys, source, bounds=None, features=None) -> DataError:  # type: ignore[no-untyped-def]
    """The error for a range, key selection or source without a reading, naming all three; with `bounds`, the
    first and last reading of the files (a range of `--since 7d`, counted back from now, on last month's export
    said only that the files held no reading in it)."""
    where = "" if span is None else f" from {span.to_json()['from'] or 'the start'} to {span.to_json()['to']}"
    what = "on " + ", ".join(source["topics"]) if source["source"] == "kafka" else "in the files"
    hint = ""
    if bounds is not None:
        hint = (
            f": their readings run from {retrain.iso(bounds[0])} to {retrain.iso(bounds[1])} (the range is in the "
            "readings' own time, and ends now unless --to ends it)"
        )
    messages = source.get("messages", 0)
    if messages:  # the range held messages, and none of them gave a reading: say what became of them
        features = list(features or [])
        shown = ", ".join(features[:5]) + (", ..." if len(features) > 5 else "")
        invalid = source.get("invalid_messages", 0)
        left = [
            f"{n:,} {why}"
            for n, why in (
                (
                    invalid,
                    f"that do not decode as readings of the model's {plural(len(features), 'feature')} "
                    f"({shown})",
                ),
                (source.get("dead_letter_messages", 0), "dead-lettered by the daemon"),
                (source.get("other_key_messages", 0), "of keys not selected"),
            )
            if n
        ]
        hint = f": {plural(messages, 'message')} in the range" + "".join(f", {part}" for part in left)
        if invalid:
            hint += "; a model trained on other features than the stream carries decodes none"
    return DataError(f"no readings{where}" + (f" for keys {keys}" if keys else "") + f" {what}{hint}")


def _time_bounds(series) -> tuple[float, float] | None:  # type: ignore[no-untyped-def]
    """The first and last finite timestamp of the series, None when none has one."""
    import numpy as np

    times = [s.timestamps[np.isfinite(s.timestamps)] for s in series]
    times = [t for t in times if len(t)]
    if not times:
        return None
    return min(float(t.min()) for t in times), max(float(t.max()) for t in times)


def _keys_check(selected, series) -> None:  # type: ignore[no-untyped-def]
    """A `warning:` naming the keys of --keys without a reading (a typo, or a key that was quiet): the others are
    used, which is seldom what was meant without a word."""
    if selected is None:
        return
    missing = sorted(selected - {s.key for s in series})
    if missing:
        click.echo(
            f"warning: no readings for {len(missing)} of the {len(selected)} keys of --keys "
            f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); using the others",
            err=True,
        )


def _drop_repeated_times(series, duplicate_policy: str):  # type: ignore[no-untyped-def]
    """Each key's readings at a timestamp it already had (two files of one key that overlap, or a repeated
    row), or at none (an empty time cell), left out, as the topic read leaves them out: the engine would drop
    them, so the challenger must not train on them. Under `engine.duplicate_policy` "keep" the engine scores a
    repeated timestamp, and so they are kept (as `train` keeps them). Returns the series and how many readings
    were left out."""
    import numpy as np

    out, dropped = [], 0
    for s in series:
        keep = np.ones(len(s), bool)
        step = np.diff(s.timestamps)  # merge_keys sorted them (NaN times at the end)
        keep[1:] = step >= 0 if duplicate_policy == "keep" else step > 0
        keep &= np.isfinite(s.timestamps)
        dropped += int((~keep).sum())
        out.append(s if keep.all() else s.take(keep))
    return out, dropped


def _repeated_times(dropped: int) -> str:
    """The training-set line's count of readings left out for a timestamp their key already had, or for none
    (overlapping files, a file given twice, an empty time cell): 12,000 rows that trained on 6,000 said nothing
    of the other half. '' when there were none."""
    if not dropped:
        return ""
    return f", {dropped:,} left out at a timestamp their key already had, or at none"


def _check_values(series, features, data) -> None:  # type: ignore[no-untyped-def]
    """A feature without a value in any row of the files: every reading would be refused (nan_policy) or
    filled from nothing, and a comparison on no scored reading would pass the policy."""
    import numpy as np

    empty = [
        f
        for i, f in enumerate(features)
        if not any(np.isfinite(s.values[:, i]).any() for s in series if len(s))
    ]
    if empty:
        raise DataError(
            f"{', '.join(map(str, data))}: no value in any row for {', '.join(empty)}, which the model needs"
        )


def _alerts_check(events, spans, series, alerts_file) -> None:  # type: ignore[no-untyped-def]
    """A `warning:` when an alerts file holds alerts but none falls on the data: another model's or another
    stream's replay leaves nothing out, which is seldom what was meant."""
    if not events or not alerts_file:
        return
    for s in series:
        for lo, hi in spans.get(s.key, ()):
            if len(s) and lo <= s.timestamps[-1] and hi >= s.timestamps[0]:
                return
    count = sum(len(v) for v in spans.values())
    click.echo(
        f"warning: {'the alert' if count == 1 else f'none of the {count:,} alerts'} in {alerts_file} "
        f"{'does not fall' if count == 1 else 'falls'} on the selected data (keys {', '.join(sorted(spans)[:5])}); nothing is left out for alerts",
        err=True,
    )


def _time_slice(series, lo: float, hi: float):  # type: ignore[no-untyped-def]
    out = []
    for s in series:
        m = (s.timestamps >= lo) & (s.timestamps < hi)
        if m.any():
            out.append(s.take(m))
    return out


def _labelled_metrics(metrics: dict[str, Any]) -> str:
    """F1 / FAR / MAR, each `n/a` where the slice's labels cannot measure it: F1 and MAR need a reading labelled
    anomalous, F1 and FAR one labelled normal (a rate of 0 of 0 readings is no number)."""
    c = (metrics.get("counts") or {}).get("point") or {}
    anomalous = c.get("tp", 0) + c.get("fn", 0) > 0 if c else True
    normal = c.get("fp", 0) + c.get("tn", 0) > 0 if c else True
    f1 = f"{metrics['f1']:.3f}" if anomalous and normal else "n/a"
    far = f"{metrics['far']:.2%}" if normal else "n/a"
    mar = f"{metrics['mar']:.2%}" if anomalous else "n/a"
    return f"{f1} / {far} / {mar}"


def _print_comparison(cmp: Comparison) -> None:
    a, b = cmp.champion, cmp.challenger
    rows = [
        ("version", a.version, b.version),
        ("readings streamed", f"{a.readings:,}", f"{b.readings:,}"),
        ("alerts opened", f"{a.alerts_opened}", f"{b.alerts_opened}"),
        ("alerts per 1,000 readings", f"{a.alert_rate:.3f}", f"{b.alert_rate:.3f}"),
        ("readings in an alert", f"{a.alert_share:.2%}", f"{b.alert_share:.2%}"),
        (
            "score p50 / p99",
            f"{a.score_p50:.3f} / {a.score_p99:.3f}",
            f"{b.score_p50:.3f} / {b.score_p99:.3f}",
        ),
        (
            "drift PSI vs own calibration",
            "n/a" if a.drift_psi is None else f"{a.drift_psi:.3f}",
            "n/a" if b.drift_psi is None else f"{b.drift_psi:.3f}",
        ),
    ]
    if a.metrics is not None and b.metrics is not None:
        rows.append(("F1 / FAR / MAR", _labelled_metrics(a.metrics), _labelled_metrics(b.metrics)))
    false = false_alert_counts(a, b)  # None without labels, or with labels of one class (not used)
    if false is not None:
        rows.append(("false alerts", f"{false[0]}", f"{false[1]}"))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows + [("", "champion", "")])
    click.echo(f"{'':<{w0}}  {'champion':<{w1}}  challenger")
    for name, x, y in rows:
        click.echo(f"{name:<{w0}}  {x:<{w1}}  {y}")
    for reason in cmp.reasons:
        click.echo(f"  - {reason}")


# Exit status of `promote` and `retrain --promote` when the challenger was not promoted (the policy rejected it):
# distinct from 0 (promoted, or would be with --dry-run), 1 (aborted, or a crash) and 2 (an error), so that a
# script can tell a rejection from a failure.
NOT_PROMOTED = 3


def _decide_and_promote(  # type: ignore[no-untyped-def]
    cmp: Comparison,
    challenger,
    champion_path: str,
    force: bool,
    dry_run: bool,
    forced: bool = False,
    loaded: Identity | bool = False,
) -> None:
    """Print the comparison and the decision, promote when it says so; exit with NOT_PROMOTED when it does not.
    ``forced``: a promotion --force allowed whatever the policy says (an int8 export over a float32 champion).
    ``loaded``: the champion file's identity when it was loaded (a file changed since is not replaced)."""
    from anomaly.promotion import promote

    cmp.forced = force and (forced or not cmp.promote)
    _print_comparison(cmp)
    if not (cmp.promote or force):
        click.echo(f"decision: rejected; {champion_path} unchanged")
        click.get_current_context().exit(NOT_PROMOTED)
    if dry_run:
        click.echo(f"decision: would promote (dry run); {champion_path} unchanged")
        return
    path = promote(challenger, champion_path, cmp, loaded=loaded)
    how = "forced" if cmp.forced else "policy passed"
    click.echo(
        f"decision: promoted ({how}); {path} now holds model {challenger.version} "
        f"(previous kept as {path.name}.previous); a running daemon reloads it within seconds"
    )


@click.command("retrain")
@click.option(
    "--champion",
    "-m",
    type=click.Path(dir_okay=False),
    required=True,
    help="The model in use: its features, settings and version (the challenger's parent).",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False),
    default="challenger.pt",
    show_default=True,
    help="Challenger bundle.",
)
@_source_options
@click.option(
    "--alerts",
    "alerts_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="CSV mode: alerts.jsonl of a replay; readings in its alert spans are left out.  [default: none]",
)
@click.option(
    "--exclude-margin",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds left out before and after every alert span as well.",
)
@click.option(
    "--min-windows",
    type=click.IntRange(min=1),
    default=DEFAULT_MIN_WINDOWS,
    show_default=True,
    help="Refuse to train on fewer full windows of normal data.",
)
@click.option(
    "--from-pipeline",
    is_flag=True,
    help="Train with the pipeline file's [model] and [train] settings instead of the champion's.",
)
@click.option(
    "--epochs", type=click.IntRange(min=1), default=None, help="Maximum epochs.  [default: the champion's]"
)
@click.option("--seed", type=int, default=None, help="Random seed.  [default: the champion's]")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default=None,
    help="Training device (auto: CUDA when present).  [default: the champion's]",
)
@click.option(
    "--promote",
    "do_promote",
    is_flag=True,
    help="Hold out the most recent part of the range, compare champion and challenger on it and replace "
    "the champion file if the policy says so.",
)
@click.option(
    "--holdout",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.2,
    show_default=True,
    help="With --promote: the most recent share of the time range kept out of training for the comparison.",
)
@_policy_options
@one_line_errors
def retrain_cmd(
    champion,
    out,
    data,
    pipeline,
    time_column,
    key_column,
    label,
    label_map,
    data_overrides,
    topics,
    bootstrap_servers,
    alerts_topic,
    dead_letter_topic,
    group_id,
    since,
    start,
    end,
    keys,
    verbose,
    alerts_file,
    exclude_margin,
    min_windows,
    from_pipeline,
    epochs,
    seed,
    device,
    do_promote,
    holdout,
    f1_tolerance,
    max_alert_ratio,
    alert_allowance,
    max_drift,
    predict,
    force,
) -> None:
    """Train a challenger on recent normal data: from the input topic over a time range (or CSV files), for
    all or selected keys, leaving out readings inside alert spans and dead-lettered messages.

    Kafka: `anomaly retrain -m model.pt -p pipelines/kafka.toml --since 7d` reads kafka.topics (or --topic),
    the alerts topic and the dead-letter topic of the pipeline. CSV: `anomaly retrain -m model.pt DATA.csv...
    [--alerts runs/replay/alerts.jsonl]`. Model and training settings are the champion's unless
    --from-pipeline. With --promote, a challenger the policy rejects is still written, and the exit status is
    3 (as `anomaly promote`'s)."""
    from anomaly.bundle import load_bundle, save_bundle
    from anomaly.config import build_config, load_config
    from anomaly.training import train

    refuse_unless(
        do_promote,
        "--promote",
        "holdout",
        "f1_tolerance",
        "max_alert_ratio",
        "alert_allowance",
        "max_drift",
        "predict",
        "force",
    )
    setup_logging(verbose)
    quiet_kafka(verbose)
    hint = " (with files, --alerts names a replay's alerts.jsonl)"
    _check_csv_source(data, topics, bootstrap_servers, alerts_topic, dead_letter_topic, hint, group_id)
    if Path(out).resolve() == Path(champion).resolve():  # it replaced the champion, unvetted and no .previous
        raise DataError(
            f"-o {out} is the champion's file: write the challenger to another file, then promote it (or add "
            "--promote)"
        )
    rollback = Path(champion).with_name(Path(champion).name + ".previous")
    if Path(out).resolve() == rollback.resolve():  # the one copy a rollback restores, silently replaced
        raise DataError(
            f"-o {out} is the champion's rollback copy (kept by the last promotion): write the challenger to "
            "another file"
        )
    # a data file or the alerts file named as -o was replaced by the challenger, as `train -o` no longer does
    check_output(out, list(data), alerts_file)
    if do_promote:
        # held to the end: a second `retrain --promote` or `promote` of this champion is refused at once
        click.get_current_context().with_resource(promotion_lock(champion))
    loaded = identity(champion)
    parent = load_bundle(champion)
    if parent.kind != "lstm_autoencoder" or is_export(parent):
        raise DataError(_not_float32(champion, parent, rollback))
    cfg = _config(
        pipeline,
        bootstrap_servers,
        alerts_topic,
        dead_letter_topic,
        time_column,
        key_column,
        parent.features,
        {**data_overrides, "data.label": label, "data.label_map": label_map, "replay.predict": predict},
        group_id,
        not data,
    )
    overrides = {"train.epochs": epochs, "train.seed": seed, "train.device": device}
    if from_pipeline:
        if not pipeline:  # else the built-in defaults would replace the champion's settings unnoticed
            raise ConfigError(
                "--from-pipeline trains with a pipeline file's settings: give it with --pipeline"
            )
        # the same file and variables as `cfg`, whose load has printed their warnings: a second time said each twice
        pcfg = load_config(pipeline, overrides, option_names=option_names(overrides), warn=lambda _line: None)
        model_cfg, train_cfg = pcfg.model, pcfg.train
    else:
        _warn_unread_training_variables(os.environ)
        tcfg = build_config(
            retrain.champion_sections(parent.meta), None, overrides, option_names=option_names(overrides)
        )
        model_cfg, train_cfg = tcfg.model, tcfg.train
    _check_device(train_cfg.device, device, from_pipeline)
    selected = _selected(keys)
    kafka_mode = not data
    span = TimeRange.parse(since, start, end) if kafka_mode else TimeRange.parse_for_files(since, start, end)
    if kafka_mode:
        assert span is not None
        if alerts_file:  # else it would be ignored, and readings inside its alerts learnt as normal
            raise ConfigError(
                "--alerts is for CSV files; from a topic, alert spans come from the alerts topic (--alerts-topic)"
            )
        hist, events, source = _read_kafka(cfg, topics, span, parent.features, selected, progress=True)
        series = hist.series
        source = {**source, **hist.to_json()}
    else:
        series, events, source = _read_csv(cfg, data, span, parent.features, selected, alerts_file)
    if not series:
        raise _no_readings(span, keys, source, features=parent.features)
    _keys_check(selected, series)
    spans = retrain.alert_spans(events)
    if not kafka_mode:  # all selected rows: alerts of the held-out part (--promote) fall on the data too
        _alerts_check(events, spans, series, alerts_file)
    evaluation_slice = []
    if do_promote:
        lo = min(float(s.timestamps[0]) for s in series if len(s))
        hi = max(float(s.timestamps[-1]) for s in series if len(s)) + 1e-6
        rng = TimeRange(lo, hi)  # the readings' own (event) time: a topic range is in Kafka time, and a
        if span is not None and not kafka_mode:  # file range may reach far beyond the rows (--from, to now)
            rng = TimeRange(max(lo, span.start), min(hi, span.end))
        train_part, test_part = rng.split(holdout)
        evaluation_slice = _time_slice(series, test_part.start, test_part.end)
        series = _time_slice(series, train_part.start, train_part.end)
        source["holdout"] = {**test_part.to_json(), "share": holdout}
    data_set = retrain.training_set(
        series, spans, model_cfg.window, margin_s=exclude_margin, min_windows=min_windows
    )
    click.echo(
        f"training set: {plural(data_set.readings, 'reading')} of {plural(len(data_set.keys), 'key')} "
        f"({data_set.excluded_alert_readings:,} left out in alert spans"
        + (
            f", {source.get('dead_letter_messages', 0):,} dead-lettered and {source.get('invalid_messages', 0):,} "
            "invalid messages skipped"
            if kafka_mode
            else ""
        )
        + _repeated_times(source.get("dropped_readings", 0))
        + ")"
    )
    result = train(
        data_set.series,
        parent.features,
        model_cfg,
        train_cfg,
        progress=True,
        engine=cfg.engine,
    )
    bundle = result.bundle
    if bundle.arch != parent.arch:
        click.echo(
            "note: the challenger's architecture differs from the champion's (--from-pipeline); a daemon that "
            "reloads it starts every key's state afresh (its open alerts close, reason evicted)"
        )
    bundle.meta["lineage"] = retrain.lineage(parent, data_set, source, bundle.meta)
    save_bundle(bundle, out)
    t = bundle.meta["training"]
    click.echo(
        f"challenger {bundle.version}: {plural(t['epochs_run'], 'epoch')} (best {t['best_epoch']}, val loss "
        f"{t['best_val_loss']:.5f}), parent {parent.version} -> {out}"
    )
    if do_promote:
        policy = PromotionPolicy(f1_tolerance, max_alert_ratio, alert_allowance, max_drift)
        cmp = compare(
            parent, bundle, evaluation_slice, cfg.engine, policy, source.get("holdout"), cfg.replay.predict
        )
        _decide_and_promote(cmp, bundle, champion, force, dry_run=False, loaded=loaded)


def _not_float32(champion: str, parent, rollback: Path) -> str:  # type: ignore[no-untyped-def]
    """Why retrain refuses an export as the champion, naming the float32 model it came from and the rollback
    copy when that copy holds it (an int8 export promoted over its float32 champion with --force)."""
    origin = (parent.meta.get("export") or {}).get("parent_version")
    if not origin:
        return f"retrain from the float32 model bundle, not from {parent.version} ({parent.kind})"
    kept = ""
    try:
        if rollback.is_file() and read_metadata(rollback)[0].get("model_version") == origin:
            kept = f"; {rollback} holds it"
    except AnomalyError:  # not a bundle: nothing to point at
        pass
    return (
        f"the champion {champion} is model {parent.version}, an export of model {origin}: retrain from the "
        f"float32 bundle of {origin}{kept}"
    )


def _load_champion(champion: str):  # type: ignore[no-untyped-def]
    """(bundle, "loaded", "") or, for a champion file that is not there or cannot be loaded as a bundle (a first
    deploy, a damaged file), (None, "missing" | "unreadable", why). Any other error (a folder, no permission to
    read) is raised: --force must not write over what it cannot see."""
    from anomaly.bundle import load_bundle
    from anomaly.errors import BundleError

    path = Path(champion)
    if not path.exists() and not path.is_symlink():
        return None, "missing", f"the champion {champion} does not exist"
    if path.exists() and not path.is_file():
        raise DataError(f"the champion {champion} is not a file")
    try:
        return load_bundle(champion), "loaded", ""
    except BundleError as exc:
        return None, "unreadable", f"the champion cannot be loaded ({exc})"


def _install_without_champion(chall, challenger, champion, state, why, force, dry_run, loaded) -> None:  # type: ignore[no-untyped-def]
    """`promote --force` onto a missing or unreadable champion: nothing to compare with, so the challenger is
    installed as it is (the one rename of a promotion, recorded as forced). Without --force: an error naming it."""
    from anomaly.promotion import UNREADABLE_SUFFIX, install

    if not force:
        raise DataError(
            f"{why}: there is nothing to compare {challenger} with; to install it as the champion without a "
            "comparison, add --force"
        )
    if str(chall.meta.get("export", {}).get("format")) == "onnx":
        raise DataError("an ONNX export cannot be promoted: promote the .pt bundle it was exported from")
    kept = (
        f"; the unreadable file is kept as {Path(champion).name}{UNREADABLE_SUFFIX}"
        if state == "unreadable"
        else ""
    )
    click.echo(f"{why}: installing {challenger} without a comparison (--force){kept}")
    if dry_run:
        click.echo(f"decision: would install (dry run); {champion} unchanged")
        return
    path = install(chall, champion, state, f"{why}; installed without a comparison (--force)", loaded=loaded)
    click.echo(
        f"decision: promoted (forced; no champion to compare); {path} now holds model {chall.version}; a running "
        "daemon reloads it within seconds"
    )


@click.command("promote")
@click.argument("challenger", type=click.Path(dir_okay=False))
@click.option(
    "--champion",
    "-m",
    type=click.Path(dir_okay=False),
    required=True,
    help="The bundle file the daemon watches; replaced atomically on promotion.",
)
@_source_options
@_policy_options
@click.option("--dry-run", is_flag=True, help="Compare and decide, but do not replace the champion.")
@one_line_errors
def promote_cmd(
    challenger,
    champion,
    data,
    pipeline,
    time_column,
    key_column,
    label,
    label_map,
    data_overrides,
    topics,
    bootstrap_servers,
    alerts_topic,
    dead_letter_topic,
    group_id,
    since,
    start,
    end,
    keys,
    verbose,
    f1_tolerance,
    max_alert_ratio,
    alert_allowance,
    max_drift,
    predict,
    force,
    dry_run,
) -> None:
    """Shadow-evaluate CHALLENGER against the champion on a recent slice (CSV files, labelled or not, or the
    input topic over --since/--from/--to) through the engine, and promote it when the policy says so:
    alert rate, score distribution and drift, and F1 when the slice has labels.

    A champion file that is missing or cannot be loaded is an error; with --force the challenger is installed
    without a comparison (no data needed; an unreadable old file is kept as CHAMPION.unreadable). An int8
    export over a float32 champion is refused unless --force (retrain needs the float32 weights).

    Exit status: 0 promoted (with --dry-run: would be promoted), 3 not promoted (the champion is unchanged),
    2 an error."""
    from anomaly.bundle import load_bundle

    setup_logging(verbose)
    quiet_kafka(verbose)
    _check_csv_source(data, topics, bootstrap_servers, alerts_topic, dead_letter_topic, group_id=group_id)
    if (
        alerts_topic
    ):  # accepted without a word: a command line copied from retrain's keeps working, and says so
        warn_line(
            "--alerts-topic has no effect in promote, which compares the models on every reading of the range "
            "and reads no alerts (retrain reads them to leave their readings out); leave it out"
        )
    if champion.endswith(".onnx") or challenger.endswith(".onnx"):
        raise DataError(
            "promotion writes a model bundle over the champion's file: promote the .pt bundles and export the "
            "new champion to ONNX afterwards (anomaly export --format onnx)"
        )
    if Path(challenger).resolve() == Path(champion).resolve():
        raise DataError(f"{challenger} is the champion's own file: give the challenger's bundle")
    if not dry_run:  # held to the end: a second promotion of this champion is refused at once
        click.get_current_context().with_resource(promotion_lock(champion))
    loaded = identity(champion)
    champ, state, why = _load_champion(champion)
    chall = load_bundle(challenger)
    if champ is None:
        _install_without_champion(chall, challenger, champion, state, why, force, dry_run, loaded)
        return
    if replaces_float32(champ, chall) and not force:  # before any data is read
        raise DataError(
            f"{challenger} is an int8 export (model {chall.version}) and {champion} holds the float32 model "
            f"{champ.version}: promoted, the float32 weights would be kept only in {Path(champion).name}"
            f".previous (until the next promotion replaces it), and `anomaly retrain -m {champion}` needs them; "
            "keep the champion float32 (an int8 export scores no faster: its gain is a smaller file), or add "
            "--force to promote it anyway"
        )
    cfg = _config(
        pipeline,
        bootstrap_servers,
        alerts_topic,
        dead_letter_topic,
        time_column,
        key_column,
        champ.features,
        {**data_overrides, "data.label": label, "data.label_map": label_map, "replay.predict": predict},
        group_id,
        not data,
    )
    selected = _selected(keys)
    if data:
        span = TimeRange.parse_for_files(since, start, end)
        series, _, source = _read_csv(cfg, data, span, champ.features, selected, None)
    else:
        span = TimeRange.parse(since, start, end)
        hist, _, source = _read_kafka(
            cfg, topics, span, champ.features, selected, progress=True, read_alerts=False
        )
        series = hist.series
        source = {**source, **hist.to_json()}
    if not series:
        raise _no_readings(span, keys, source, features=champ.features)
    _keys_check(selected, series)
    policy = PromotionPolicy(f1_tolerance, max_alert_ratio, alert_allowance, max_drift)
    cmp = compare(
        champ,
        chall,
        series,
        cfg.engine,
        policy,
        {k: v for k, v in source.items() if k != "offsets"},
        cfg.replay.predict,
    )
    _note_architecture(champ, chall)
    if replaces_float32(
        champ, chall
    ):  # only with --force (refused above): recorded, whatever the policy said
        cmp.reasons.append(
            f"precision: an int8 export over the float32 champion (--force; retrain needs the float32 model "
            f"{champ.version})"
        )
    _decide_and_promote(
        cmp, chall, champion, force, dry_run, forced=replaces_float32(champ, chall), loaded=loaded
    )


def _note_architecture(champ, chall) -> None:  # type: ignore[no-untyped-def]
    """A `note:` when the challenger's architecture differs from the champion's: a daemon that reloads it cannot
    keep per-key state (README: it is kept when the architecture and features are unchanged)."""
    a, b = champ.arch.to_json(), chall.arch.to_json()
    diff = [
        f"{name.replace('_', ' ')} {b.get(name)} vs {a.get(name)}" for name in a if a.get(name) != b.get(name)
    ]
    if diff:
        click.echo(
            f"note: the challenger's architecture differs from the champion's ({', '.join(diff)}); a daemon "
            "that reloads it starts every key's state afresh (its open alerts close, reason evicted)"
        )


COMMANDS: list[click.Command] = [export_cmd, retrain_cmd, promote_cmd]

"""config: the settings a command would run with, each with where it came from (reads no data, connects to
nothing: the quickest check of a pipeline file and its variables)."""

from __future__ import annotations

import json
import math
from typing import Any

import click

from anomaly.commands.common import one_line_errors, pipeline_option, warn_line
from anomaly.config import SECRET_FIELDS, load_config, redacted

DEFAULT_SOURCE = "default"
MASK = "***"  # what redacted() puts in place of a secret that is set

FOOTER = (
    "# a command's own options override these (e.g. `anomaly train --window 64`, `anomaly replay --threshold "
    "dynamic`)"
)


ALIGN_MAX = 56  # the source column's place, past which a longer line's source follows it


def effective_settings(pipeline: str | None) -> dict[str, dict[str, dict[str, Any]]]:
    """{section: {name: {"value": ..., "source": ...}}} for every setting of every section: the pipeline file's,
    the ANOMALY_<SECTION>_<FIELD> variables' and the defaults, layered as every command layers them (warnings
    printed as theirs), secrets masked. The source is build_config's own wording, or "default"."""
    sources: dict[str, str | None] = {}
    cfg = load_config(pipeline, None, warn=warn_line, sources_out=sources)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for section, values in redacted(cfg).items():
        out[section] = {
            name: {
                "value": list(value) if isinstance(value, tuple) else value,
                "source": sources.get(f"{section}.{name}") or DEFAULT_SOURCE,
            }
            for name, value in values.items()
        }
    return out


def render(value: Any, secret: bool = False) -> str:
    """A value as TOML writes it (strings quoted, lists as lists, true/false), None as `none` (TOML has no
    null) and a secret that is set as *** (unquoted: never a value)."""
    if secret and value == MASK:
        return MASK
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(render(v) for v in value) + "]"
    return str(value)


@click.command("config")
@pipeline_option
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='One JSON object, {section: {name: {"value": ..., "source": ...}}}, for tools.',
)
@one_line_errors
def config_cmd(pipeline: str | None, as_json: bool) -> None:
    """Print every setting of every section, `section.name = value  # source`: the effective settings of the
    pipeline file and the ANOMALY_<SECTION>_<FIELD> variables over the defaults, and where each came from.
    Secrets print as ***. Reads no data and connects to nothing; an invalid setting is the one-line error (exit
    status 2) every command gives. A command's own options override what it prints."""
    settings = effective_settings(pipeline)
    if as_json:
        click.echo(json.dumps(settings, indent=2, ensure_ascii=False))
        return
    lines = [
        (f"{section}.{name} = {render(entry['value'], name in SECRET_FIELDS)}", entry["source"])
        for section, values in settings.items()
        for name, entry in values.items()
    ]
    # sources in one column, but a long list (data.features) does not push every other line's far right
    width = min(max(len(line) for line, _ in lines), ALIGN_MAX)
    for line, source in lines:
        click.echo(f"{line.ljust(width)}  # {source}")
    threads = threads_setting()
    if threads is not None:  # a comment: the text stays TOML that loads back to the same settings
        click.echo(f"{f'# anomaly --threads {threads[0]}'.ljust(width)}  # {threads[1]}")
    click.echo(FOOTER)


def threads_setting() -> tuple[int, str] | None:
    """`anomaly --threads` (PyTorch's CPU threads) and where it came from: the option, ANOMALY_THREADS or the
    default. An option of `anomaly` itself, not a setting of a section (a pipeline file cannot set it), so it is
    a comment line of the text and not in --json, whose sections load back as settings. None outside `anomaly`
    (the command called on its own)."""
    from click.core import ParameterSource

    root = click.get_current_context().find_root()
    if "threads" not in root.params:
        return None
    given = root.get_parameter_source("threads")
    if given == ParameterSource.COMMANDLINE:
        source = "option --threads"
    elif given == ParameterSource.ENVIRONMENT:
        source = "environment variable ANOMALY_THREADS"
    else:
        source = DEFAULT_SOURCE
    return int(root.params["threads"]), source


COMMANDS: list[click.Command] = [config_cmd]

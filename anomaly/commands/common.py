"""What every command shares: the --pipeline option, config layering, logging and one-line errors."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from anomaly.config import PipelineConfig, load_config
from anomaly.errors import AnomalyError

pipeline_option = click.option(
    "--pipeline",
    "-p",
    type=click.Path(dir_okay=False),
    default=None,
    show_default=True,
    help="Pipeline TOML file; options and ANOMALY_<SECTION>_<FIELD> variables override it.",
)

time_column_option = click.option("--time-column", default=None, help="Time column.  [default: timestamp]")
key_column_option = click.option(
    "--key-column", default=None, help="Key column for many series in one file.  [default: none]"
)


_DATA_OPTIONS = (
    click.option(
        "--separator",
        default=None,
        help="Column separator.  [default: detected from the header: ',', ';', tab or '|']",
    ),
    click.option(
        "--decimal",
        type=click.Choice([".", ","]),
        default=None,
        help="Decimal mark of numbers, e.g. ',' for 1,5.  [default: .]",
    ),
    click.option(
        "--time-unit",
        type=click.Choice(["auto", "s", "ms", "us", "ns"]),
        default=None,
        help="Unit of numeric times.  [default: auto (epoch s, ms, us or ns by magnitude)]",
    ),
    click.option(
        "--time-format",
        default=None,
        help="strftime format of text times, e.g. '%d/%m/%Y %H:%M'.  [default: ISO-like]",
    ),
    click.option(
        "--dayfirst/--monthfirst",
        default=None,
        help="Dates like 02/01/2023 are day first / month first.  [default: refuse when ambiguous]",
    ),
    click.option(
        "--bad-cells",
        type=click.Choice(["error", "missing"]),
        default=None,
        help="Text in a numeric column: refuse naming the cell, or treat as missing.  [default: error]",
    ),
)
_DATA_NAMES = ("separator", "decimal", "time_unit", "time_format", "dayfirst", "bad_cells")


def data_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options that say how to read a CSV file. The command receives them as `data_overrides`, a
    {"data.<field>": value} dict for config_from."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kwargs["data_overrides"] = {f"data.{name}": kwargs.pop(name) for name in _DATA_NAMES}
        return fn(*args, **kwargs)

    for option in reversed(_DATA_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


def config_from(pipeline: str | None, overrides: dict[str, Any]) -> PipelineConfig:
    """Layer pipeline file < environment < the options the user actually gave (None means not given)."""
    return load_config(pipeline, {k: v for k, v in overrides.items() if v is not None and v != ()})


def one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn AnomalyError and OS errors into `error: ...` on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AnomalyError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except OSError as exc:  # e.g. disk full, a read-only file system, a file where a folder should be
            where = f": {exc.filename}" if exc.filename else ""
            click.echo(f"error: {exc.strerror or exc}{where}", err=True)
            sys.exit(2)

    return wrapper


def exit_now(message: str, code: int) -> NoReturn:
    """Print ``message`` on stderr, flush the logs and exit with ``code`` at once, without the interpreter's
    shutdown. For a process that leaves a thread blocked inside a client (a transaction the broker never
    completed): on Python < 3.14 a daemon thread that wakes during the interpreter's shutdown is ended by
    ``pthread_exit``, which can crash the process (SIGSEGV instead of the status we mean), and nothing is left
    to save that a normal exit would."""
    click.echo(message, err=True)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

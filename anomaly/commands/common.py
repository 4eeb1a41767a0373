"""What every command shares: the --pipeline option, config layering, logging and one-line errors."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

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


def config_from(pipeline: str | None, overrides: dict[str, Any]) -> PipelineConfig:
    """Layer pipeline file < environment < the options the user actually gave (None means not given)."""
    return load_config(pipeline, {k: v for k, v in overrides.items() if v is not None and v != ()})


def one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn AnomalyError (and a few OS errors) into `error: ...` on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AnomalyError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
            click.echo(f"error: {exc.strerror}: {exc.filename}", err=True)
            sys.exit(2)

    return wrapper


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

"""The `anomaly` command: one click group gathering the commands of anomaly.commands.*."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import click
from click.core import ParameterSource

from anomaly import __version__
from anomaly.commands import (
    bench_cmds,
    config_cmds,
    kafka_cmds,
    lifecycle_cmds,
    model_cmds,
    nasa_cmds,
    replay_cmds,
    skab_cmds,
)
from anomaly.commands.common import (
    TERMINATED,
    Terminated,
    broken_pipe_exit,
    sigterm_ends_cleanly,
    stdout_reader_gone,
)


class _NotRaised(click.ClickException):
    pass


# click 8.2 raises this for a group called without a command; 8.1 prints the help itself and exits 0.
_NO_ARGS_IS_HELP: type[click.ClickException] = getattr(click.exceptions, "NoArgsIsHelpError", _NotRaised)


class OneLineErrors(click.Group):
    """Click's own usage errors (unknown option, bad value) as one `error:` line on stderr, like every other
    error of `anomaly`: the value's source is named when it came from an environment variable, and an option
    of `anomaly` itself given after a command says where it belongs."""

    def main(  # type: ignore[override]
        self, args: Any = None, prog_name: str | None = None, standalone_mode: bool = True, **kwargs: Any
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, standalone_mode=False, **kwargs)
        try:
            with sigterm_ends_cleanly():
                code = super().main(args, prog_name, standalone_mode=False, **kwargs)
        except Terminated:  # SIGTERM: what Ctrl-C does (outputs complete or none), with the signal's status
            click.echo("error: terminated", err=True)
            sys.exit(TERMINATED)
        except click.exceptions.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        except _NO_ARGS_IS_HELP as exc:  # bare `anomaly` (click >= 8.2): the help, as written
            click.echo(exc.format_message(), err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"error: {self.describe(exc)}", err=True)
            sys.exit(exc.exit_code)
        sys.exit(code if isinstance(code, int) else 0)

    # `anomaly --help`, `anomaly --version` and `anomaly CMD --help` print from click's own option callbacks,
    # outside any command's one_line_errors; click turns a broken pipe there into status 1. Their reader gone
    # is the quiet status 141 of every other output cut short (`anomaly replay --help | head -1`).
    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        with _quiet_when_stdout_reader_gone():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        with _quiet_when_stdout_reader_gone():
            return super().invoke(ctx)

    def describe(self, exc: click.ClickException) -> str:
        message = " ".join(exc.format_message().split())
        ctx = getattr(exc, "ctx", None)
        if isinstance(exc, click.NoSuchOption) and ctx is not None and ctx.command is not self:
            if any(exc.option_name in p.opts for p in self.params):
                return (
                    f"{exc.option_name} is an option of anomaly itself, not of {ctx.info_name}: put it before "
                    f"the command (anomaly {exc.option_name} N {ctx.info_name} ...)"
                )
        param = getattr(exc, "param", None)
        if (
            isinstance(exc, click.BadParameter)
            and ctx is not None
            and param is not None
            and param.name is not None
            and ctx.get_parameter_source(param.name) == ParameterSource.ENVIRONMENT
        ):
            message += f" (from environment variable {param.envvar})"
        if isinstance(exc, click.UsageError) and ctx is not None:
            message += f" (see: {ctx.command_path} --help)"
        return message


@contextlib.contextmanager
def _quiet_when_stdout_reader_gone() -> Iterator[None]:
    try:
        yield
    except BrokenPipeError:
        if stdout_reader_gone():
            broken_pipe_exit()
        raise


@click.group(
    cls=OneLineErrors,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@click.version_option(__version__, prog_name="anomaly")
@click.option(
    "--threads",
    type=click.IntRange(min=1, max=2**31 - 1),  # torch's limit: 2**31 and above was its overflow traceback
    default=1,
    show_default=True,
    envvar="ANOMALY_THREADS",
    help="CPU threads for PyTorch. One is fastest for streaming-sized batches and on busy machines.",
)
def main(threads: int) -> None:
    """Streaming anomaly detection for sensor streams: train an LSTM autoencoder, replay CSV backtests and run
    the Kafka consumer daemon through one scoring engine."""
    import torch

    cap_onednn_cache()
    torch.set_num_threads(threads)


# oneDNN, behind PyTorch's CPU LSTM, keeps a compiled primitive (about 0.3 MB) for each input shape it has met,
# 1,024 of them by default. A daemon's model calls come in ever new shapes (keys x readings of each poll): its RSS
# rose with each new one, toward some 330 MB more at that cap (session 20 soak). The same primitives are built
# again on a miss, so scores are unchanged (the same bytes); the shapes in use stay cached.
ONEDNN_CACHE_CAPACITY = 64


def cap_onednn_cache() -> None:
    """Set oneDNN's primitive cache capacity unless the user chose one (either of its variable names). oneDNN
    reads it when it builds its first primitive, so this must run before the first model call."""
    if not {"ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY"} & set(os.environ):
        os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(ONEDNN_CACHE_CAPACITY)


for _module in (
    model_cmds,
    replay_cmds,
    kafka_cmds,
    skab_cmds,
    nasa_cmds,
    bench_cmds,
    lifecycle_cmds,
    config_cmds,
):
    for _command in _module.COMMANDS:
        main.add_command(_command)

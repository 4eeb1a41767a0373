"""What every command shares: the --pipeline option, config layering, logging and one-line errors."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn

import click
from click.core import ParameterSource

from anomaly.atomic import check_writable, refuse_replacing_data
from anomaly.config import PipelineConfig, load_config, read_toml
from anomaly.errors import AnomalyError, OutputError


def _pipeline_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """`-p "$PIPELINE"` with the variable unset ran on the defaults without a word: an empty path is refused."""
    if value == "":
        raise click.BadParameter(
            "an empty path names no pipeline file (leave the option out for the defaults)"
        )
    return value


def empty_refused(leave_out: str) -> Callable[[click.Context, click.Parameter, str | None], str | None]:
    """A callback refusing an empty value (`--features "$FEATURES"` with the variable unset), which the settings
    would read as the default (every numeric column, no time column) without a word; `leave_out` says what to
    do instead."""

    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is not None and not value.strip(" ,"):
            raise click.BadParameter(f"{value!r} names no column ({leave_out})")
        return value

    return check


pipeline_option = click.option(
    "--pipeline",
    "-p",
    type=click.Path(dir_okay=False),
    default=None,
    show_default=True,
    callback=_pipeline_path,
    help="Pipeline TOML file; options and ANOMALY_<SECTION>_<FIELD> variables override it.",
)


def time_column_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--time-column NAME, or --no-time-column for files without one; the command receives `time_column`
    ("" for none, as data.time_column writes it)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if kwargs.pop("no_time_column"):
            if kwargs.get("time_column") is not None:
                raise click.UsageError("--time-column and --no-time-column exclude each other")
            kwargs["time_column"] = ""
        return fn(*args, **kwargs)

    wrapper = click.option(
        "--no-time-column",
        is_flag=True,
        help="The files have no time column: readings are numbered 0, 1, 2, ... in file order (per key), "
        "one --time-unit apart (a second under auto).",
    )(wrapper)
    return click.option(
        "--time-column",
        default=None,
        callback=empty_refused("pass --no-time-column for files without one"),
        help="Time column.  [default: timestamp]",
    )(wrapper)


label_map_option = click.option(
    "--label-map",
    default=None,
    help="Text labels as 0/1, e.g. 'Normal=0,Attack=1'; any other value is refused.  [default: none: labels "
    "are numbers]",
)
key_column_option = click.option(
    "--key-column", default=None, help="Key column for many series in one file.  [default: none]"
)


_DATA_OPTIONS = (
    click.option(
        "--header/--no-header",
        default=None,
        help="The first line names the columns; --no-header: it is data, columns are named 1, 2, 3, ...  "
        "[default: header]",
    ),
    click.option(
        "--skip-rows",
        type=click.IntRange(min=0),
        default=None,
        help="Lines above the header to skip (notes, a spreadsheet's title row).  [default: 0]",
    ),
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
        "--encoding",
        default=None,
        help="Text encoding of the files, e.g. cp1252 (Excel's 'CSV' on Windows), latin-1, shift_jis.  "
        "[default: auto: UTF-16 by its byte-order mark, else UTF-8]",
    ),
    click.option(
        "--date-column",
        default=None,
        callback=empty_refused("leave the option out when the time column holds dates"),
        help="Column of dates beside a --time-column of times of day: each row's time is the two cells joined "
        "('2023-11-14 22:13:20').  [default: none]",
    ),
    click.option(
        "--time-unit",
        type=click.Choice(["auto", "s", "ms", "us", "ns", "min", "h"]),
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
_DATA_NAMES = (
    "header",
    "skip_rows",
    "separator",
    "decimal",
    "encoding",
    "date_column",
    "time_unit",
    "time_format",
    "dayfirst",
    "bad_cells",
)


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


def config_from(pipeline: str | None, overrides: dict[str, Any], connects: bool = False) -> PipelineConfig:
    """Layer pipeline file < environment < the options the user actually gave (None means not given);
    `connects` for a command that builds Kafka clients (see :func:`~anomaly.config.build_config`)."""
    given = {k: v for k, v in overrides.items() if v is not None and v != ()}
    return load_config(pipeline, given, option_names=option_names(given), warn=warn_line, connects=connects)


def warn_line(message: str) -> None:
    """A `warning:` line on stderr, the form every command gives its warnings (not a timestamped log line)."""
    click.echo(f"warning: {message}", err=True)


def option_names(overrides: dict[str, Any]) -> dict[str, str]:
    """{"section.field": "--option"} for the overrides whose value is the very object one option of the running
    command received, so that an error in it names the option the user typed (`--static-threshold`, not only
    engine.static_threshold). A value held by no option, or by several none of which is named as the setting,
    stays unnamed."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return {}
    given = [
        p
        for p in ctx.command.params
        if isinstance(p, click.Option)
        and p.name in ctx.params
        and ctx.get_parameter_source(p.name)
        not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    ]
    names = {}
    for key, value in overrides.items():
        hits = [p for p in given if ctx.params[p.name or ""] is value]
        if len(hits) > 1:  # `--separator , --decimal ,`: one string object; the option named as the field
            hits = [p for p in hits if p.name == key.partition(".")[2]]
        if len(hits) == 1:
            # the flag of a pair that was typed: `--monthfirst` (dayfirst False) was named --dayfirst
            opts = hits[0].secondary_opts if value is False and hits[0].secondary_opts else hits[0].opts
            names[key] = next((o for o in opts if o.startswith("--")), opts[0])
    return names


# Exit status when the reader of stdout went away (`anomaly train x.csv -o m.pt | head -1`): 128 + SIGPIPE, what a
# shell reports for `git log | head -1` or `cat big | head -1`, whose writers the signal ends.
BROKEN_PIPE = 141


def refuse_unless(asked: bool, needs: str, *names: str) -> None:
    """Refuse the options `names` (parameter names), when given on the command line or by a variable, unless
    `asked`: they only apply with `needs` (e.g. "--promote"), and without it would be ignored without a word."""
    if asked:
        return
    ctx = click.get_current_context()
    for param in ctx.command.params:
        if param.name in names and ctx.get_parameter_source(param.name) not in (
            ParameterSource.DEFAULT,
            None,
        ):
            option = max(param.opts, key=len)
            raise click.UsageError(f"{option} only applies with {needs}, without which it would be ignored")


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe (or socket) whose reader has closed it: poll reports an error on its write end.
    A broken pipe elsewhere (a socket to a broker, a file argument naming a FIFO) stays an error."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no descriptor (a test runner's buffer), no poll (Windows)
        return False


def broken_pipe_exit() -> NoReturn:
    """End quietly when stdout's reader has gone: no `error:` line (nothing failed that the user must act on),
    and stdout pointed at /dev/null so that the interpreter's final flush of what is still buffered does not
    print `Exception ignored ... BrokenPipeError` (as the Python documentation of SIGPIPE recommends)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (a test runner's buffer)
        pass
    sys.exit(BROKEN_PIPE)


def one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn AnomalyError and OS errors into `error: ...` on stderr and exit status 2; a closed stdout (the reader
    of a pipe exited) into a quiet exit with status 141."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            try:
                out = fn(*args, **kwargs)
            except click.exceptions.Exit:  # ctx.exit(3) after a printed decision
                sys.stdout.flush()
                raise
            sys.stdout.flush()  # a pipe's reader gone is found here, not in the interpreter's shutdown
            return out
        except BrokenPipeError as exc:
            if stdout_reader_gone():
                broken_pipe_exit()
            click.echo(f"error: {exc.strerror or exc}", err=True)  # another pipe or socket: a real error
            sys.exit(2)
        except AnomalyError as exc:
            click.echo(f"error: {_naming_bootstrap_source(exc)}", err=True)
            sys.exit(2)
        except OSError as exc:  # e.g. disk full, a read-only file system, a file where a folder should be
            where = f": {exc.filename}" if exc.filename else ""
            click.echo(f"error: {exc.strerror or exc}{where}", err=True)
            sys.exit(2)

    return wrapper


def _naming_bootstrap_source(exc: AnomalyError) -> AnomalyError:
    """A broker that cannot be reached (:class:`~anomaly.kafka.clients.UnreachableError`, known by its `checking`)
    said to "check kafka.bootstrap_servers" also when `-b` gave the address: the error names where the address
    came from, the option first (as `--features (data.features)`), else the variable or the pipeline file."""
    checking = getattr(exc, "checking", None)
    ctx = click.get_current_context(silent=True)
    if checking is None or ctx is None or "bootstrap_servers" not in ctx.params:  # (bench's own broker)
        return exc
    setting, source = "kafka.bootstrap_servers", None
    pipeline = ctx.params.get("pipeline")
    if ctx.params.get("bootstrap_servers"):
        return checking(f"--bootstrap-servers ({setting})")  # type: ignore[no-any-return]
    if os.environ.get("ANOMALY_KAFKA_BOOTSTRAP_SERVERS") is not None:
        source = "environment variable ANOMALY_KAFKA_BOOTSTRAP_SERVERS"
    elif pipeline:
        with contextlib.suppress(AnomalyError, OSError):  # read once already: this does not fail
            if "bootstrap_servers" in (read_toml(pipeline).get("kafka") or {}):
                source = f"pipeline file {pipeline}"
    where = f"from {source}" if source else "not set: the default; --bootstrap-servers sets it"
    return checking(f"{setting} ({where})")  # type: ignore[no-any-return]


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


# Exit status after SIGTERM (`kill`, `timeout`, a CI job cancelled): 128 + SIGTERM, what a shell reports for a
# process the signal ended.
TERMINATED = 143


class Terminated(BaseException):
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt, so that the same clean-up runs
    (temporary files removed, partial outputs never renamed into place). A BaseException, so that no
    ``except Exception`` takes it for a failure of the work in hand."""


@contextlib.contextmanager
def sigterm_ends_cleanly(repeat_within_s: float = 1.0) -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` in the main thread instead of ending the process
    where it stands (Python's default, which left `replay`'s temporary `.scores.csv.*.tmp` behind). Copies of
    the signal within `repeat_within_s` of the first are ignored while the clean-up runs (GNU `timeout` signals
    the process and then its process group, so each of its signals arrives twice); one later than that ends
    the process at once, as a second Ctrl-C would. The previous handler is restored on leaving (a command that
    installs its own, as `consume` does once connected, replaces this one). Outside the main thread (a test
    runner's worker) nothing is installed: only the main thread can handle signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    first: list[float] = []

    def terminated(signum: int, frame: Any) -> None:
        now = time.monotonic()
        if not first:
            first.append(now)
            raise Terminated()
        if now - first[0] < repeat_within_s:
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


# How often one kafka-python log line (same logger, level and text before its arguments) may repeat.
KAFKA_REPEAT_INTERVAL_S = 60.0


class RepeatedRecords(logging.Filter):
    """Let through the records of loggers under ``prefix`` (kafka-python's) at most once per ``interval_s`` for
    each logger, level and message template; the next one let through says how many were held back. kafka-python
    logs each reconnect attempt of each of its connections: with ``-v`` a broker outage of 20 s wrote 650 lines
    (a day's outage, about 2.5 million), where the daemon's own line for it repeats at most once a minute."""

    MAX_TEMPLATES = 1000  # a bound on the table: templates are kafka-python's own strings, a few dozen

    def __init__(
        self,
        prefix: str = "kafka",
        interval_s: float = KAFKA_REPEAT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.prefix = prefix
        self.interval_s = interval_s
        self.clock = clock
        self._seen: dict[
            tuple[str, int, str], tuple[float, int]
        ] = {}  # -> (time let through, held back since)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != self.prefix and not record.name.startswith(self.prefix + "."):
            return True
        template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
        key = (record.name, record.levelno, template)
        now = self.clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.interval_s:
            self._seen[key] = (seen[0], seen[1] + 1)
            return False
        if len(self._seen) >= self.MAX_TEMPLATES:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if seen is not None and seen[1]:
            record.msg = (
                f"{record.getMessage()} ({seen[1]} more like it in the last {now - seen[0]:.0f} s not shown)"
            )
            record.args = None
        return True


def limit_kafka_repeats(interval_s: float = KAFKA_REPEAT_INTERVAL_S) -> None:
    """Install :class:`RepeatedRecords` on the root logger's handlers (a logger's own filters do not see its
    children's records), once."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RepeatedRecords) for f in handler.filters):
            handler.addFilter(RepeatedRecords(interval_s=interval_s))


def quiet_kafka(verbose: bool) -> None:
    """kafka-python logs every reconnect attempt: keep the one-line error contract unless -v asks for detail, and
    with -v let each of its lines through at most once a minute (:func:`limit_kafka_repeats`)."""
    logging.getLogger("kafka").setLevel(logging.WARNING if verbose else logging.CRITICAL)
    limit_kafka_repeats()


def refuse_replacing_inputs(
    target: str, what: str, option: str, inputs: Iterable[tuple[str | None, str]], consequence: str
) -> None:
    """Refuse, before anything is read, an output file written when the run ends (`replay --metrics-out`,
    `consume --state-out`, `--json-out`) that is one of the files the run reads (`inputs`: (path, what it is),
    e.g. the model bundle, the pipeline file, a data file) or writes otherwise: the end of the run replaced it
    (`consequence`: "the replay would replace it with the metrics"), as `train -o` refuses a data file. A device
    or pipe (`/dev/stdout`) is written in place and replaces nothing."""
    if os.path.exists(target) and not os.path.isfile(target):
        return
    real = os.path.realpath(target)
    for path, role in inputs:
        if path and os.path.realpath(path) == real:
            raise OutputError(
                f"the {what} {target} is the {role} {path}: {consequence}; name another file with {option}",
                path=target,
            )


def check_output(out: str, paths: list[str], alerts: str | None = None) -> None:
    """Refuse, before any training, a bundle path that could not be written at the end (the run's work would
    be lost), that is one of the data files or retrain's `--alerts` file (it would be replaced by the bundle), or
    that holds other data (a mistyped name: see :func:`~anomaly.atomic.refuse_replacing_data`): `train -o` and
    `retrain -o`."""
    if out.endswith(("/", os.sep)):  # `-o models/` wrote a file named `models`
        raise OutputError(
            f"cannot write the model bundle {out}: a name ending in / is a folder, not a file; give the "
            f"bundle's file name, e.g. {os.path.join(out, 'model.pt')}",
            path=out,
        )
    check_writable(out, "model bundle")
    if not os.path.isfile(out):
        return
    named = [(path, "data file", "data") for path in paths] + (
        [(alerts, "alerts file", "alerts")] if alerts else []
    )
    for path, what, content in named:  # the alerts file was called a data file
        if os.path.isfile(path) and os.path.samefile(path, out):
            raise OutputError(
                f"the model bundle {out} is the {what} {path}: training would replace the {content} with the "
                "bundle; name another file with --out",
                path=out,
            )
    refuse_replacing_data(out, "model bundle")

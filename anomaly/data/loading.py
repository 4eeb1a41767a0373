"""From files to series: :func:`load_series` reads each file (:mod:`.reading`), takes its time, feature and
label columns (:mod:`.times`, :mod:`.cells`, :mod:`.columns`, or a labels file through :mod:`anomaly.labels`)
and cuts the rows into one :class:`Series` per key, refusing files whose keys or time column are missing."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from anomaly.config import DataConfig
from anomaly.data.cells import numeric_column
from anomaly.data.columns import _unnamed, check_features, infer_features, label_values, non_features
from anomaly.data.reading import (
    data_as_header,
    file_line,
    first_date,
    is_number,
    line_numbers,
    no_header_note,
    plain_name,
    quoted,
    read_frame,
    separator_note,
)
from anomaly.data.series import Series, look_alike_keys
from anomaly.data.times import in_seconds, join_date_column, time_of_day_column, to_epoch_seconds
from anomaly.errors import DataError, SchemaError


def _likely_key_columns(frame: pd.DataFrame, ts: np.ndarray, cfg: DataConfig) -> list[str]:
    """Columns under which every group has distinct timestamps: what a key column looks like."""
    out = []
    for c in frame.columns:
        if c in (cfg.time_column, cfg.label, *cfg.label_columns):
            continue
        col = frame[c]
        groups = col.nunique(dropna=False)
        if not 2 <= groups <= len(frame) // 2:
            continue
        pairs = pd.DataFrame({"k": col.to_numpy(), "t": ts})
        if not pairs.duplicated().any():
            out.append(str(c))
    out.sort(key=lambda c: (pd.api.types.is_numeric_dtype(frame[c]), c))  # text keys first
    return out


def _refuse_a_row_of_units(
    frame: pd.DataFrame, features: Sequence[str], cfg: DataConfig, source: str
) -> None:
    """A line under the header with text in every feature column, two or more (`,g,A,bar`: units, or names), as
    some loggers and spreadsheets export: the error named one cell as text in a numeric column (`--bad-cells
    missing`), or the time cell as a time that is not ISO-like (`--time-format`). Under --bad-cells missing a
    row of units without a time is still dropped as a reading without a time, as before."""
    if not len(frame) or not features:
        return
    row = frame.iloc[0]
    cells = [row[f] for f in features if f in frame.columns and not pd.isna(row[f])]
    if len(cells) < 2 or not all(
        isinstance(v, str) and not is_number(v.strip().replace(",", ".")) for v in cells
    ):
        return
    when = row[cfg.time_column] if cfg.time_column and cfg.time_column in frame.columns else None
    if cfg.bad_cells == "missing" and (when is None or pd.isna(when) or not str(when).strip()):
        return
    shown = ", ".join(repr(str(v).strip()) for v in cells[:4]) + (", ..." if len(cells) > 4 else "")
    raise SchemaError(
        f"{source}: line {file_line(frame, 0)} holds text in every feature column ({shown}), not readings: a row "
        "of units or descriptions under the header; delete that line"
    )


def _refuse_repeated_header(frame: pd.DataFrame, cfg: DataConfig, source: str) -> None:
    """A line inside the file that repeats the header: files joined with their header lines (`cat a.csv b.csv`).
    Its time cell stopped the run as a time that is not ISO-like (`pass --time-format`), and under
    --no-time-column its cells were text in numeric columns (`--bad-cells missing`): neither is the fix."""
    named = [c for c in frame.columns if not _unnamed(c)]
    if len(named) < 2 or any(pd.api.types.is_numeric_dtype(frame[c]) for c in named):
        return  # a column of numbers holds no copy of its name
    first = cfg.time_column if cfg.time_column in named else named[0]

    def names(rows: pd.DataFrame, c: str) -> np.ndarray:
        cells = rows[c].astype("string").str.strip().str.lstrip("\ufeff").str.strip()
        return cells.eq(str(c)).fillna(False).to_numpy(bool)

    rows = np.flatnonzero(names(frame, first))  # one column first: the others only on the rows it names
    if not len(rows):
        return
    same = np.ones(len(rows), bool)
    for c in named:
        same &= names(frame.iloc[rows], c)
    if same.any():
        raise SchemaError(
            f"{source}: line {file_line(frame, int(rows[same][0]))} repeats the header ({int(same.sum())} such "
            "line(s)): files joined with their header lines, as `cat a.csv b.csv` writes them; keep the first "
            "header only, or pass the files themselves (`anomaly train a.csv b.csv`)"
        )


def _refuse_stacked_series(frame: pd.DataFrame, ts: np.ndarray, cfg: DataConfig, source: str) -> None:
    """Several series written one after another without a key column (`cat` of one logger's file after
    another's): the times go back a few times in file order, and the blocks so formed cover the same hours. When
    their times differ (loggers started seconds apart) no time repeats, so the test of repeated times missed it,
    and the rows were taken in time order as one series read twice as often, each step from one sensor to the
    other. Late rows (a short block) or files joined out of order (blocks that do not overlap) pass."""
    rows = np.flatnonzero(np.isfinite(ts))
    t = ts[rows]
    back = np.flatnonzero(np.diff(t) < 0)
    if not len(back) or len(back) > 0.05 * len(t):  # rows merely out of order go back often, blocks rarely
        return
    block = np.zeros(len(t), np.int64)
    block[back + 1] = 1
    block = np.cumsum(block)
    _, first = np.unique(t, return_index=True)  # each distinct time once (a repeated hour stays in its block)
    in_order = block[first]  # the block of each distinct time, in time order
    switches = int(np.count_nonzero(np.diff(in_order)))
    if switches <= 0.1 * len(first):
        return
    at = file_line(frame, int(rows[back[0] + 1]))
    starts = np.zeros(len(t), bool)
    starts[0] = True
    starts[back + 1] = True
    likely = [  # a column whose value changes exactly where the time goes back: the series' name
        str(c)
        for c in frame.columns
        if c not in (cfg.time_column, cfg.label, *cfg.label_columns)
        and frame[c].iloc[rows].ne(frame[c].iloc[rows].shift()).to_numpy(bool).tolist() == starts.tolist()
    ]
    hint = (
        f"pass --key-column {quoted(likely[0])}, the column that changes where the times go back"
        if likely
        else "add a column that tells the series apart and pass --key-column, or give each series a file of its own"
    )
    raise SchemaError(
        f"{source}: its times go back {len(back)} time(s) in file order (first on line {at}) and the parts so "
        "formed cover the same period, so the file looks like several series written one after another; taken "
        f"in time order they would be read as one series, each reading from another part; {hint}"
    )


def header_below(frame: pd.DataFrame, time_column: str) -> int | None:
    """The file line of an early row that looks like the header (names only, no number, one of them the time
    column or a time or date column): lines of notes or a spreadsheet's title row above the header made pandas
    take the wrong line for the names."""
    for i in range(min(len(frame), 20)):
        cells = [v for v in frame.iloc[i].tolist() if not pd.isna(v)]
        names = [str(v).strip() for v in cells if isinstance(v, str) and not is_number(v)]
        if len(names) < 2 or len(names) < len(cells):
            continue
        if time_column in names or any(re.search(r"time|date", c, re.IGNORECASE) for c in names):
            return file_line(frame, i)
    return None


def key_columns(cfg: DataConfig) -> tuple[str, ...]:
    """The columns read as text, not numbers: the key column, whose values are names (0012 is not 12)."""
    return (cfg.key_column,) if cfg.key_column else ()


def counting_columns(frame: pd.DataFrame, cfg: DataConfig) -> list[str]:
    """Numeric columns that count up row by row (nine steps in ten the same positive amount, as telemanom's
    `step`): the time under another name, which --no-time-column would make a sensor that only ever grows."""
    out = []
    for c in frame.columns:
        col = frame[c]
        if c in (cfg.key_column, cfg.label, *cfg.label_columns) or _unnamed(c) or len(col) < 3:
            continue
        if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            continue
        steps = np.diff(col.to_numpy(np.float64))
        up = steps[steps > 0]
        if len(up) and float(np.mean(steps == np.median(up))) >= 0.9:
            out.append(str(c))
    return out


def _cut_precision(timed: np.ndarray) -> tuple[str, str, str] | None:
    """(unit, what was lost, cell format) when times in file order never go back and are all whole hours,
    minutes or seconds: rows sharing a time are then consecutive readings whose time lost its precision (a
    spreadsheet showing hh:mm saves 10:14:33 as 10:14), not interleaved series."""
    if len(timed) < 2 or bool((np.diff(timed) < 0).any()):
        return None
    for unit, name, lost, cells in (
        (3600.0, "hour", "minutes", "yyyy-mm-dd hh:mm:ss"),
        (60.0, "minute", "seconds", "yyyy-mm-dd hh:mm:ss"),
        (1.0, "second", "fractions of a second", "yyyy-mm-dd hh:mm:ss.000"),
    ):
        if bool(np.all(np.mod(timed, unit) == 0)):
            return name, lost, cells
    return None


def _fall_back(timed: np.ndarray) -> bool:
    """Whether every time that repeats another is explained by a daylight-saving fall-back of local times
    written without an offset: in file order the times go back by one hour less a step (02:59 then 02:00, for
    readings a minute apart) to a time between midnight and 04:00, where zones turn their clocks back, at most
    once a day, and each repeat lies in the hour so passed twice. Such a file is one series: it was refused as
    "several series interleaved" when that hour was over a tenth of its rows (an export of 8 hours at one
    reading a minute); now it reads as a longer one does, and the engine refuses the second pass of the hour
    (replay names it: `repeat earlier times within one hour ... daylight-saving change?`)."""
    steps = np.diff(timed)
    ahead = steps[steps > 0]
    back = np.flatnonzero(steps < 0)
    if not len(back) or not len(ahead) or len(back) > 1 + np.ptp(timed) / 86400.0:
        return False
    step = float(np.median(ahead))
    hour_back = np.abs(-steps[back] - (3600.0 - step)) <= step / 2
    at_night = np.mod(timed[back + 1], 86400.0) < 4 * 3600.0
    if not (hour_back & at_night).all():
        return False
    again = pd.Series(timed).duplicated().to_numpy(bool)
    inside = np.zeros(len(timed), bool)
    for k in back:
        inside |= (timed >= timed[k + 1]) & (timed <= timed[k])
    return bool(inside[again].all())


# epoch seconds below this are 1970 to 1973: a sensor's numbers, or a relative counter
SENSOR_LIKE_BELOW = 1e8
_LONG_ENOUGH = 20  # steps of a series' times in file order before their directions say something
_BACK_AND_FORTH = 0.1  # share of those steps that go each way, at least, when the column is a sensor


def _refuse_a_sensor_as_time(
    frame: pd.DataFrame, ts: np.ndarray, rows_of: Sequence[np.ndarray], cfg: DataConfig, source: str
) -> None:
    """A numeric time column whose numbers, read as epoch seconds under --time-unit auto, fall in 1970 to 1973 and
    go up and down in file order (each way at least one step in ten, and ten times or more, in series of 20 steps
    or more) is a sensor named as the time (`--time-column sensor_1`): its rows were taken in the order of that
    sensor's values, with an odd interval, without a word. Real times go one way (a newest-first export goes the
    other), with a few steps back where files were joined; unsorted epoch times (from 1973 on) and times whose
    unit is given (--time-unit s) are taken as times, in time order."""
    column = frame[cfg.time_column]
    if cfg.time_unit != "auto" or not pd.api.types.is_numeric_dtype(column):
        return
    timed = ts[np.isfinite(ts)]
    if not len(timed) or float(np.abs(timed).max()) >= SENSOR_LIKE_BELOW:
        return
    up = down = 0
    for idx in rows_of:  # each key's rows in file order: a key column's rows are one series each
        t = ts[idx]
        steps = np.diff(t[np.isfinite(t)])
        # a few rows out of order (a key's three readings: 2, 0, 1) tell nothing
        if len(steps) >= _LONG_ENOUGH:
            up += int(np.sum(steps > 0))
            down += int(np.sum(steps < 0))
    fewer = min(up, down)
    if fewer < 10 or fewer < _BACK_AND_FORTH * (up + down):
        return
    timelike = [c for c in frame.columns if c != cfg.time_column and re.search(r"time|date", str(c), re.I)]
    hint = (
        f"pass --time-column {quoted(timelike[0])}"
        if timelike
        else "name the time column with --time-column (--no-time-column if the file has none)"
    )
    raise SchemaError(
        f"{source}: time column {cfg.time_column!r} goes back in time at {down:,} and forward at {up:,} of its "
        f"{up + down:,} steps in file order{' within a key' if cfg.key_column else ''}, and its numbers (such as "
        f"{timed[0]:g}) would be seconds of 1970: it looks like a sensor, not the time; {hint}, or --time-unit s "
        "if these are times (rows are then taken in time order)"
    )


def _refuse_unused_time_options(frame: pd.DataFrame, cfg: DataConfig, source: str) -> None:
    """data.time_unit applies to numeric times (and to the numbering under --no-time-column), data.time_format to
    text times: one given for a time column of the other kind would be ignored without a word, so it is refused.
    A numeric column with a few text cells (read as text) is left to the parser, which names the bad cell."""
    if not cfg.time_column:
        if cfg.time_format is not None:
            raise DataError(
                f"{source}: --time-format (data.time_format) reads text times, but without a time column "
                "(--no-time-column) readings are numbered 0, 1, 2, ...: leave it out"
            )
        return
    column = frame[cfg.time_column].dropna()
    if not len(column):
        return
    numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
    if numeric and cfg.time_format is not None:
        raise DataError(
            f"{source}: --time-format {cfg.time_format!r} (data.time_format) reads text times, but time column "
            f"{cfg.time_column!r} holds numbers such as {column.iloc[0]} (epoch times): leave it out, and "
            "give their unit with --time-unit if it is not told apart by magnitude"
        )
    if not numeric and cfg.time_unit != "auto":
        if pd.to_numeric(column.astype("string"), errors="coerce").notna().mean() >= 0.5:
            return  # epoch numbers with a few text cells: to_epoch_seconds names the bad cell
        raise DataError(
            f"{source}: --time-unit {cfg.time_unit} (data.time_unit) is the unit of numeric times, but time "
            f"column {cfg.time_column!r} holds text such as {str(column.iloc[0])!r}, read as dates: leave it out "
            "(give --time-format if the dates are not ISO-like)"
        )


# A column of the times' UTC offset, as some loggers write beside local times ('utc_offset', 'TZ', 'Zeitzone' is
# not matched): a bare 'offset' may well be a sensor's calibration offset.
_OFFSET_NAME = re.compile(
    r"(?:utc|gmt|tz|time[ _-]?zone)[ _-]?offset|tz|time[ _-]?zone|utc|gmt", re.IGNORECASE
)
_OFFSET_TEXT = r"\s*(?:UTC|GMT)?\s*[+-]\d{1,2}(?::?\d{2})?\s*"
_ZONED = r".*(?:Z|[+-]\d{2}:?\d{2})\s*"


def _refuse_an_offset_column(frame: pd.DataFrame, cfg: DataConfig, source: str) -> None:
    """Local times without an offset beside a column of UTC offsets: the times were read as UTC (an hour or two
    off, with a repeated hour at each DST change) and an offset `+0100` became a sensor reading 100."""
    time = frame[cfg.time_column].dropna()
    if not len(time) or not isinstance(time.iloc[0], str) or re.fullmatch(_ZONED, time.iloc[0]):
        return
    for c in frame.columns:
        if c == cfg.time_column or not _OFFSET_NAME.fullmatch(str(c).strip()):
            continue
        cells = frame[c].dropna()
        if not len(cells):
            continue
        if isinstance(cells.iloc[0], str):
            fits = bool(cells.astype(str).str.fullmatch(_OFFSET_TEXT).all())
        else:
            numbers = pd.to_numeric(cells, errors="coerce")
            fits = bool(numbers.notna().all() and (numbers.abs() <= 1400).all())
        if fits:
            first = cells.iloc[0]
            example = f"{time.iloc[0].strip()}{_as_offset(first)}"
            shown = repr(first) if isinstance(first, str) else f"{first:g}"
            raise SchemaError(
                f"{source}: column {str(c)!r} holds UTC offsets such as {shown} beside times without one, which "
                f"are read as UTC: write the times in UTC or with their offset ({example}), or name the features "
                "with --features if the column is a sensor"
            )


def _as_offset(cell: object) -> str:
    """An offset cell ('+0100', 'UTC+1', 100, -5) as ISO-8601 writes it after a time ('+01:00')."""
    parts = re.search(r"([+-]?)(\d{1,2}):?(\d{2})?", cell) if isinstance(cell, str) else None
    if parts is not None:
        sign, hours, minutes = parts.group(1) or "+", int(parts.group(2)), int(parts.group(3) or 0)
    else:
        number = float(cell)  # type: ignore[arg-type]
        whole = abs(int(number))
        sign = "-" if number < 0 else "+"
        hours, minutes = divmod(whole, 100) if whole >= 100 else (whole, 0)
    return f"{sign}{hours:02d}:{minutes:02d}"


def frame_to_series(
    frame: pd.DataFrame,
    features: Sequence[str],
    cfg: DataConfig,
    source: str,
    labels_file: str | Path | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[Series]:
    if cfg.time_column and cfg.time_column not in frame.columns:
        timelike = [c for c in frame.columns if re.search(r"time|date", str(c), re.IGNORECASE)]
        headed = frame.attrs.get("header", True)
        below = header_below(frame, cfg.time_column) if headed and not timelike else None
        numbers = no_header_note(list(frame.columns)) if headed and not below else ""
        counting = counting_columns(frame, cfg) if headed and not timelike and not below else []
        hint = (
            f" (pass --time-column {quoted(timelike[0])})"
            if timelike
            else f" (the column names seem to be on line {below}: pass --skip-rows {below - 1})"
            if below
            else f" (column {counting[0]!r} counts up row by row: pass --time-column {quoted(counting[0])} if it "
            "is the time, with --time-unit for its unit; --no-time-column would make it a sensor)"
            if counting and not numbers
            else " (a file without a time column: pass --no-time-column to number its readings 0, 1, 2, ...)"
            if (len(frame.columns) > 1 and not numbers) or not headed
            else ""
        )
        raise SchemaError(
            f"{source}: time column {cfg.time_column!r} not found; columns are {', '.join(frame.columns)}"
            + hint
            + (numbers or separator_note(frame))
        )
    _refuse_repeated_header(frame, cfg, source)
    _refuse_a_row_of_units(frame, features, cfg, source)
    check_features(frame.columns, features, source)
    _refuse_unused_time_options(frame, cfg, source)
    if cfg.time_column:
        if not cfg.features:  # features named: the user's call
            _refuse_an_offset_column(frame, cfg, source)
        try:
            ts_all = to_epoch_seconds(frame[cfg.time_column], cfg, frame, warn)
        except DataError as exc:  # which file, when several are read (the column and line alone did not say)
            raise DataError(f"{source}: {exc}") from None
    else:  # no time column: readings numbered in file order (per key), one time unit apart
        order = (
            frame.groupby(cfg.key_column, sort=False, dropna=False).cumcount().to_numpy()
            if cfg.key_column and cfg.key_column in frame.columns
            else np.arange(len(frame))
        )
        ts_all = in_seconds(order, "s" if cfg.time_unit == "auto" else cfg.time_unit)
    if not np.isfinite(ts_all).any():
        raise SchemaError(f"{source}: time column {cfg.time_column!r} has no value in any row")
    # each feature's numbers (views of the frame's float64 columns where it has them), taken into one matrix in
    # the series' time order below: stacking them, converting the stack and sorting it held three copies
    columns: list[np.ndarray | None] = [numeric_column(frame, f, source, cfg) for f in features]
    labels_all = label_values(frame, cfg, source) if cfg.label in frame.columns else None
    if labels_file is not None:
        if labels_all is not None:
            raise SchemaError(
                f"{source} has a label column {cfg.label!r} and --labels {labels_file} gives labels too; keep one"
            )
        from anomaly.labels import read_labels  # (labels.py imports anomaly.data: import it late)

        labels_all = read_labels(labels_file, frame, ts_all, cfg, source, warn)
    if cfg.key_column:
        if cfg.key_column not in frame.columns:
            raise SchemaError(
                f"{source}: key column {cfg.key_column!r} not found; columns are {', '.join(frame.columns)}"
            )
        empty = frame[cfg.key_column].isna().to_numpy()
        if empty.any():  # such rows used to form a series of no readings: lost without a word
            raise SchemaError(
                f"{source}: key column {cfg.key_column!r} is empty on line {file_line(frame, int(np.argmax(empty)))} "
                f"({int(empty.sum())} such row(s)); every row needs a key"
            )
        codes, groups = pd.factorize(frame[cfg.key_column].astype(str).to_numpy())  # first-seen order
        # each key's rows in file order, in one sort: a scan of every row per key took 4 minutes to cut a
        # 1M-row file into 5,000 keys
        by_key = np.argsort(codes, kind="stable")
        rows_of = np.split(by_key, np.flatnonzero(np.diff(codes[by_key])) + 1) if len(by_key) else []
        if cfg.time_column:
            _refuse_a_sensor_as_time(frame, ts_all, rows_of, cfg, source)
    else:
        groups = [Path(plain_name(source)).stem if source else "series"]
        rows_of = [np.arange(len(frame))]
        if cfg.time_column:  # before the test of repeated times: a sensor's values repeat too
            _refuse_a_sensor_as_time(frame, ts_all, rows_of, cfg, source)
        timed = ts_all[np.isfinite(ts_all)]  # missing times are dropped, not repeats
        repeated = len(timed) - len(np.unique(timed))
        if repeated > 0.1 * len(timed) and not _fall_back(timed):
            again = pd.Series(ts_all).duplicated().to_numpy(bool) & np.isfinite(ts_all)
            if not (again & ~frame.duplicated().to_numpy(bool)).any():  # every repeat a copy of a whole row
                raise SchemaError(
                    f"{source}: {repeated:,} of {len(timed):,} rows repeat another row exactly, time and every value "
                    f"(first on line {file_line(frame, int(np.argmax(again)))}), as exports that overlap in time "
                    "do when joined into one file; keep one copy of each row, or pass the exports as files of "
                    "their own"
                )
            likely = _likely_key_columns(frame, ts_all, cfg)
            cut = None if likely else _cut_precision(timed)
            if cut:
                clock = time_of_day_column(frame, cfg.time_column)
                raise SchemaError(
                    f"{source}: {repeated:,} of {len(timed):,} rows repeat another row's timestamp, in file order, "
                    f"and every time is a whole {cut[0]}: the export seems to have cut off the {cut[1]} (a "
                    f"spreadsheet saves times as its cells show them); export the times with {cut[1]} (cells "
                    f"formatted {cut[2]}), or pass --key-column if the rows are several series"
                    + (
                        f" (the time of day may be in column {clock!r}: pass --date-column "
                        f"{quoted(cfg.time_column)} --time-column {quoted(clock)})"
                        if clock
                        else ""
                    )
                )
            hint = (
                f"; the likely key column is {likely[0]!r}: pass --key-column {quoted(likely[0])}"
                if likely
                else "; pass --key-column naming the column that tells the series apart"
            )
            raise SchemaError(
                f"{source}: {repeated:,} of {len(timed):,} rows repeat another row's timestamp, so the file "
                f"looks like several series interleaved{hint}"
            )
        if cfg.time_column:
            _refuse_stacked_series(frame, ts_all, cfg, source)
    lines_all = line_numbers(frame)
    orders = [idx[np.argsort(ts_all[idx], kind="stable")] for idx in rows_of]
    taken = np.concatenate(orders) if orders else np.zeros(0, np.int64)
    values = np.empty((len(taken), len(columns)), np.float64)
    for j, col in enumerate(columns):
        values[:, j] = np.asarray(col, np.float64)[taken]
        columns[j] = None  # a converted text column is let go as soon as it is taken
    out = []
    lo = 0
    for key, order in zip(groups, orders, strict=True):
        out.append(
            Series(
                str(key),
                ts_all[order],
                values[lo : lo + len(order)],  # each series its rows of one matrix: no copy per key
                None if labels_all is None else labels_all[order],
                source,
                lines_all[order],
            )
        )
        lo += len(order)
    return out


def load_series(
    paths: Sequence[str | Path],
    cfg: DataConfig,
    features: Sequence[str] | None = None,
    left_out: dict[str, str] | None = None,
    labels_file: str | Path | None = None,
    check: Callable[[pd.DataFrame, str], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> tuple[list[Series], list[str]]:
    """Read every file into series. Features come from `features`, the config, or the first file's numerics;
    in that last case `left_out` (when given) receives the first file's other columns that are not time, key
    or label, each with the reason it is not a feature, so a command can show it. `labels_file` gives the
    labels when the data files have none (see :mod:`anomaly.labels`; only a JSON of windows per file serves
    several data files). `check` (a replay's test of the columns against its model's) sees each file's frame
    first, as read, before anything is taken from it. `warn` hears each warning once (a setting that had no
    effect, such as --dayfirst on epoch or ISO-8601 times), however many files say it, and, with a key column,
    keys that differ only in case or spaces (:func:`look_alike_keys`).

    When several files hold series of the same key (no key column), the file stem keeps them apart, and two
    files with the same stem get their relative path as key.
    """
    if not paths:
        raise DataError("no data files given")
    if labels_file is not None and len(paths) > 1 and Path(labels_file).suffix.lower() != ".json":
        raise DataError(
            f"--labels {labels_file} labels one data file, and {len(paths)} are given; replay them one at a time "
            "(a JSON file of windows per file name, as NAB's, can label several)"
        )
    series: list[Series] = []
    feats = list(features) if features else None
    inferred = feats is None and not cfg.features
    seen: set[str] = set()
    warned: set[str] = set()

    def warn_once(message: str) -> None:
        if warn is not None and message not in warned:
            warned.add(message)
            warn(message)

    for path in paths:
        frame = read_frame(
            path, cfg.separator, cfg.decimal, cfg.header, cfg.skip_rows, key_columns(cfg), cfg.encoding
        )
        if cfg.header and data_as_header(frame.columns):  # a UCR file under --no-time-column trained on its
            # rows after the first, as a sensor named after the first value
            at = first_date(frame.columns)
            raise DataError(
                f"{path}: its first line holds {'numbers' if at is None else 'a time and numbers'} "
                f"({', '.join(map(str, frame.columns[:6]))}{', ...' if len(frame.columns) > 6 else ''}), not "
                "column names: for a file without a header, pass --no-header (its columns are then named 1, 2, "
                + (
                    "3, ...; and --no-time-column when no column is a time)"
                    if at is None
                    else f"3, ...: --time-column {at})"
                )
            )
        join_date_column(frame, cfg, str(path))  # before any test of the columns: the date is no feature
        if check is not None:
            check(frame, str(path))
        if feats is None:
            try:
                feats = infer_features(frame, cfg, str(path))
            except SchemaError:  # a title line above the header: its columns are no numbers, and it says why
                below = header_below(frame, cfg.time_column) if cfg.time_column not in frame.columns else None
                if not (cfg.header and cfg.time_column and below):
                    raise
                raise SchemaError(
                    f"{path}: time column {cfg.time_column!r} not found and no numeric feature columns among "
                    f"{', '.join(map(str, frame.columns[:6]))}{', ...' if len(frame.columns) > 6 else ''}: the "
                    f"column names seem to be on line {below}: pass --skip-rows {below - 1}"
                ) from None
            if left_out is not None and not cfg.features:  # chosen features: nothing was left out by us
                left_out.update(non_features(frame, feats, cfg))
        elif inferred:  # a later file's own sensors were dropped without a word (the first file's are taken)
            extra = [c for c in infer_features(frame, cfg, str(path)) if c not in feats]
            if extra:
                raise SchemaError(
                    f"{path} has numeric column(s) {', '.join(map(str, extra))} that {paths[0]} lacks; the files "
                    "must offer the same features: pass --features naming the columns to use",
                    extra=extra,
                )
        if features is None:  # training: no model yet, so "the model needs" would not say who asks for them
            lacking = [f for f in feats if f not in frame.columns]
            if lacking and inferred:
                raise SchemaError(
                    f"{path} lacks numeric column(s) {', '.join(lacking)} that {paths[0]} has; the files must "
                    "offer the same features: pass --features naming the columns to use",
                    missing=lacking,
                )
            if lacking:
                raise SchemaError(
                    f"{path} has no column(s) {', '.join(lacking)}, which --features (data.features) names; its "
                    f"columns are {', '.join(map(str, frame.columns))}",
                    missing=lacking,
                )
        part = frame_to_series(frame, feats, cfg, str(path), labels_file, warn_once)
        del frame  # let go before the next file is read: two files' frames were held at once
        for s in part:
            if not cfg.key_column:
                s.key = _unique_key(Path(path), seen)
            seen.add(s.key)
        series.extend(part)
    assert feats is not None
    alike = look_alike_keys(series) if cfg.key_column else None
    if alike:
        warn_once(alike)
    return series, feats


def _unique_key(path: Path, seen: set[str]) -> str:
    key = Path(plain_name(path)).stem  # pump.csv.gz is `pump`, as pump.csv is
    if key in seen:
        key = f"{path.parent.name}/{key}"
    n = 2
    base = key
    while key in seen:
        key = f"{base}#{n}"
        n += 1
    return key

"""The time column as epoch seconds: numeric epoch times and their units (s, ms, us, ns by magnitude, or
minutes and hours when named), text date-times (ISO-like or a strftime format) and day/month order."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd

from anomaly.config import DataConfig
from anomaly.data.reading import file_line, quoted
from anomaly.errors import DataError, SchemaError

TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "min": 60.0, "h": 3600.0}
_PER_SECOND = {"ms": 1e3, "us": 1e6, "ns": 1e9}  # units under a second are divided by these, never multiplied


def in_seconds(values: np.ndarray, unit: str) -> np.ndarray:
    """Numbers of `unit` as seconds (float64), each the double nearest to the exact time when the number is a
    whole count of its unit (and, for ns, of microseconds): 1700000000300 ms is 1700000000.3 s, as the text
    `...:20.300Z` and the number `1700000000.3` read, so times of one instant written in two ways are equal.
    Multiplying by 1e-3 instead (1e-3 is not exact in binary) gave 1700000000.3000002 for one value in six,
    which a labels file in epoch ms then failed to match and `scores.csv` printed as `...:20.299999Z`."""
    v = np.asarray(values).astype(np.float64)
    if unit == "ns":
        return _ns_in_seconds(v)
    if unit in _PER_SECOND:
        return v / _PER_SECOND[unit]
    return v * TIME_UNITS[unit]


def _ns_in_seconds(ns: np.ndarray) -> np.ndarray:
    """Nanoseconds (float64) as seconds, through whole microseconds where the float64 is that of a whole count
    of them: a float64 of today's nanoseconds is 256 ns coarse, one of microseconds exact (until the year
    2255). A time with a finer part within 256 ns of a microsecond moves to it, below a float64 second's own
    resolution (238 ns today)."""
    us = np.rint(ns / 1e3)
    return np.where((us * 1e3 == ns) & (np.abs(us) < 2.0**53), us / 1e6, ns / 1e9)


_DMY = re.compile(r"^\s*(\d{1,2})[/.-](\d{1,2})[/.-](\d{2,4})\b")
# A time of day alone ('22:13:20', '10:58 PM'): pandas dates it today, strptime 1900-01-01.
_TIME_OF_DAY = r"\s*\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:\s*[AaPp]\.?[Mm]\.?)?\s*"
_DATE = r"\s*(?:\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4})\s*"
_DATE_DIRECTIVE = re.compile(r"%[djmbByYGsUWV]")
# A date and a time of day in one cell ('2023-11-14 23:58', '14.11.2023 10:58 PM', '2023-11-14T23:58:00Z'): a
# part with a digit, a space or 'T', and a time of day last (with an optional zone). A date alone written with
# colons (EXIF's '2023:11:14') has no time of day after a space or a 'T'.
_DATE_TIME = re.compile(rf"\s*\S*\d.*?(?:T|\s){_TIME_OF_DAY}(?:Z|[+-]\d{{2}}(?::?\d{{2}})?)?\s*")
# A numeric date and an hour alone ('2023-11-14 23', '2023-11-14T23'): joined to a time of day, pandas read
# '2023-11-14 23 22:13:20' as 22:13:20 without a word, the hour dropped.
_DATE_HOUR = re.compile(rf"{_DATE}(?:T|\s)\s*\d{{1,2}}\s*")


# A spreadsheet's totals or summary row below the data ('Total', 'Average'): the one cell that is not read
LAST_ROW = "; it is the last row, and every other row reads: a totals or summary row? delete it"

EPOCH_MS_FROM = 1e11  # numeric epoch times at or above this are not seconds (1e11 s is the year 5138)
_UNIT_BOUNDS = (("ns", 1e17), ("us", 1e14), ("ms", EPOCH_MS_FROM))  # smallest typical value of each unit


def _numeric_unit(values: np.ndarray) -> str:
    """Epoch seconds, milliseconds, microseconds or nanoseconds, told apart by magnitude: 1e11 s is the year
    5138, while 1e11 ms is 1973, so typical values of each unit never overlap."""
    finite = np.abs(values[np.isfinite(values)])
    typical = float(np.median(finite)) if len(finite) else 0.0
    for unit, bound in _UNIT_BOUNDS:
        if typical >= bound:
            return unit
    return "s"


def epoch_seconds(values: np.ndarray) -> np.ndarray:
    """Numeric epoch times in seconds, each one's unit (s, ms, us or ns) told by its own magnitude as
    :func:`_numeric_unit` tells a column's: for a stream, where every message stands alone. Converted values
    equal the CSV path's bit for bit (the same float64 quotient, :func:`in_seconds`)."""
    v = np.asarray(values, np.float64)
    mag = np.abs(v)
    left = mag >= EPOCH_MS_FROM
    if not left.any():  # all seconds: the common case costs one comparison
        return v
    out = v.copy()
    for unit, bound in _UNIT_BOUNDS:
        hit = left & (mag >= bound)
        out[hit] = in_seconds(v[hit], unit)
        left &= ~hit
    return out


EXCEL_SERIALS = (2e4, 1e5)  # Excel serial dates 1954-10-03 to 2173-10-14 (days since 1899-12-30)
_DAYS_NAME = re.compile(r"date|day|datum", re.IGNORECASE)


def _refuse_excel_serials(values: np.ndarray, name: object) -> None:
    """Excel's serial dates (days since 1899-12-30 with the time of day as a fraction, 45010.5 = 2023-03-25
    12:00) read as epoch seconds would all fall on 1 January 1970, seconds apart: refused instead of guessed.

    Fractional serials are told by their steps (under a day, i.e. a second as epoch times). Serials a day or more
    apart (a daily file: 45010, 45011, ..., or 45010.5, 45011.5, ... at noon) read as seconds would be a reading
    a second from 1970-01-01 05:33 on, which a counter of elapsed seconds can be too, so they are refused only
    when the column's name says days (`date`, `day`, `Datum`) or the times skip every weekend as days (no
    Saturday or Sunday among two weeks or more of serials, and a step of 3 from a Friday to a Monday)."""
    finite = values[np.isfinite(values)]
    if len(finite) < 2 or finite.min() < EXCEL_SERIALS[0] or finite.max() > EXCEL_SERIALS[1]:
        return
    steps = np.diff(np.sort(finite))
    steps = steps[steps > 0]
    if not len(steps):
        return
    fraction = finite != np.round(finite)
    if not fraction.any() or np.median(steps) >= 1:  # steps of a day or more: a second apart as epoch times
        weekday = np.unique(np.floor(finite)).astype(np.int64) % 7  # serial 0 (1899-12-30) was a Saturday
        workdays = len(weekday) >= 10 and not np.isin(weekday, (0, 1)).any() and bool((steps == 3).any())
        if not (_DAYS_NAME.search(str(name)) or workdays):
            return
    example = float(finite[fraction][0] if fraction.any() else finite[0])
    day = (pd.Timestamp("1899-12-30") + pd.Timedelta(days=example)).strftime("%Y-%m-%d")
    raise DataError(
        f"time column {name!r} holds numbers like {example!r} that look like Excel serial dates (days since "
        f"1899-12-30: {example:g} is {day}), not epoch times; export the times as text (format the cells as "
        "yyyy-mm-dd hh:mm:ss), or pass --time-unit s if they are seconds"
    )


def time_of_day_column(frame: pd.DataFrame, exclude: object) -> str | None:
    """A column (other than `exclude`) whose first value is a time of day alone: the other half of a date and
    a time written in two columns."""
    for c in frame.columns:
        first = frame[c].dropna()
        if c != exclude and len(first) and isinstance(first.iloc[0], str):
            if re.fullmatch(_TIME_OF_DAY, first.iloc[0]):
                return str(c)
    return None


def _refuse_times_of_day(text: pd.Series, cfg: DataConfig, frame: pd.DataFrame | None) -> None:
    """Times of day without a date (a logger's `date` and `time` in two columns, `--time-column time`) were
    dated today by pandas, so a file that passed midnight was put in the wrong order without a word."""
    if cfg.time_format is not None and _DATE_DIRECTIVE.search(cfg.time_format):
        return
    if cfg.date_column:  # each cell a date and a time joined (join_date_column)
        if cfg.time_format is not None:
            raise DataError(
                f"--time-format {cfg.time_format!r} (data.time_format) reads each row's date and time joined "
                f"({str(text.dropna().iloc[0]) if text.notna().any() else '2023-11-14 22:13:20'!r}): give the "
                "date's part too, e.g. '%d.%m.%Y %H:%M:%S'"
            )
        return
    alone = text.str.fullmatch(_TIME_OF_DAY).fillna(False).to_numpy(dtype=bool)
    if cfg.time_format is not None:  # a format without a date: every cell is a time of day alone
        alone = text.notna().to_numpy(dtype=bool)
    if not alone.any():
        return
    i = int(np.flatnonzero(alone)[0])
    cell = str(text.iloc[i])
    date, example = None, f"e.g. 2023-11-14 {cell.strip()}"
    for c in frame.columns if frame is not None else ():
        value = frame[c].iloc[i] if frame is not None else None
        if c != text.name and isinstance(value, str) and re.fullmatch(_DATE, value):
            date, example = c, f"{value.strip()} {cell.strip()}"
            break
    raise DataError(
        f"time column {text.name!r} holds times of day without a date ({cell!r}, line {file_line(text, i)}); "
        + (
            f"pass --date-column {quoted(date)} to join each row's date in column {date!r} to it ({example})"
            if date is not None
            else f"name the column of dates with --date-column, or put the date and the time in one column "
            f"({example}) and name it with --time-column"
        )
    )


def join_date_column(frame: pd.DataFrame, cfg: DataConfig, source: str) -> None:
    """data.date_column: each row's date in a column of its own beside a time column of times of day (a
    logger's, WADI's `Date` and `Time`). The time column becomes the two cells joined with a space
    ('2023-11-14 22:13:20'), in place, read by :func:`to_epoch_seconds` as any one-column date-time (its
    --time-format covers both), and the date column is taken out of the frame (it is no feature). A row whose
    date or time is empty has no time, as a row with an empty time cell. A date column of numbers or of
    date-times is refused: its joined times would be guessed or read twice; so is a time column of numbers
    (seconds of the day, epoch times), whose joined cells are no time."""
    date, time = cfg.date_column, cfg.time_column
    if not date or not time:
        return
    if date not in frame.columns:
        raise SchemaError(
            f"{source}: date column {date!r} not found; columns are {', '.join(map(str, frame.columns))}"
        )
    if time not in frame.columns:  # refused by the reader of the time column, with its advice
        return
    dates = frame[date]
    given = dates.dropna()
    if len(given) and pd.api.types.is_numeric_dtype(dates):
        raise DataError(
            f"{source}: date column {date!r} holds numbers such as {given.iloc[0]}, not dates (such as 2023-11-14)"
        )
    dates = dates.astype("string").str.strip().replace("", pd.NA)
    clocked = dates[
        (dates.str.fullmatch(_DATE_TIME) | dates.str.fullmatch(_DATE_HOUR)).fillna(False).to_numpy(bool)
    ]
    if len(clocked):
        raise DataError(
            f"{source}: date column {date!r} holds date-times such as {clocked.iloc[0]!r}, not dates alone: name "
            "it with --time-column and leave out --date-column"
        )
    times = frame[time].astype("string").str.strip().replace("", pd.NA)
    numbers = pd.to_numeric(times, errors="coerce").notna().to_numpy(bool)
    if numbers.any():  # seconds of the day or epoch times: joined, '2023-11-14 79200' is no time
        raise DataError(
            f"{source}: time column {time!r} holds numbers such as {times[numbers].iloc[0]}, not times of day "
            f"(such as 22:13:20) to join to date column {date!r}: with --date-column the time column holds "
            "times of day; leave out --date-column if the numbers are epoch times"
        )
    frame[time] = dates + " " + times  # <NA> where either is empty
    del frame[date]


def to_epoch_seconds(
    column: pd.Series,
    cfg: DataConfig | None = None,
    frame: pd.DataFrame | None = None,
    warn: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Numbers are epoch times in data.time_unit (auto: s, ms, us or ns by magnitude); text is parsed as a
    date-time (naive means UTC) with data.time_format, or ISO-like text; day/month order must be given
    (--dayfirst or --time-format) when the dates alone cannot tell it. Times of day without a date are refused
    (`frame`, the file's other columns, names the one that may hold the date). data.dayfirst applies to
    day/month dates only: `warn` (when given) hears it had no effect on epoch numbers or on year-first (ISO-8601)
    dates."""
    cfg = cfg or DataConfig()
    name = column.name
    flag = f"--{'day' if cfg.dayfirst else 'month'}first (data.dayfirst = {str(cfg.dayfirst).lower()})"
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        values = column.to_numpy(dtype=np.float64)
        if cfg.dayfirst is not None and warn is not None and np.isfinite(values).any():
            first = column[np.isfinite(values)].iloc[0]
            warn(f"{flag} had no effect: time column {name!r} holds epoch numbers such as {first}, not dates")
        unit = _numeric_unit(values) if cfg.time_unit == "auto" else cfg.time_unit
        if cfg.time_unit == "auto":
            _refuse_excel_serials(values, name)
        return in_seconds(values, unit)
    text = column.astype("string")
    _refuse_times_of_day(text, cfg, frame)
    dayfirst = cfg.dayfirst
    if cfg.time_format is None:
        parts = text.str.extract(_DMY.pattern).dropna().astype(int)
        if len(parts):
            first_big, second_big = (parts[0] > 12).to_numpy(), (parts[1] > 12).to_numpy()
            day_first = text[parts.index[first_big][0]] if first_big.any() else None
            month_first = text[parts.index[second_big][0]] if second_big.any() else None
            if day_first is not None and month_first is not None:
                raise DataError(
                    f"time column {name!r} mixes day-first and month-first dates ({day_first!r} and "
                    f"{month_first!r}); fix the file or pass --time-format"
                )
            if dayfirst is None:
                if day_first is None and month_first is None:
                    raise DataError(
                        f"time column {name!r} has dates like {text[parts.index[0]]!r} that read as "
                        "day/month or month/day; pass --dayfirst or --monthfirst (or --time-format)"
                    )
                dayfirst = day_first is not None  # 13/01/2023 can only be day first, and no date disagrees
            elif dayfirst and month_first is not None:
                raise DataError(f"time column {name!r} has month-first dates such as {month_first!r}")
            elif not dayfirst and day_first is not None:
                raise DataError(f"time column {name!r} has day-first dates such as {day_first!r}")
        elif dayfirst is not None:
            # no day/month date: pandas read ISO 2023-02-01 under dayfirst=True as year-day-month (1 February
            # became 2 January, and 2023-02-13, which cannot be, stayed February: times out of order)
            dayfirst = None
            shown = text.dropna()
            if warn is not None and len(shown):
                warn(
                    f"{flag} had no effect: time column {name!r} holds dates such as {str(shown.iloc[0])!r}, not "
                    "day/month dates (ISO-8601 dates are year first)"
                )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            parsed = pd.to_datetime(
                text, utc=True, errors="coerce", format=cfg.time_format, dayfirst=bool(dayfirst)
            )
        except (ValueError, TypeError) as exc:
            raise DataError(f"cannot parse time column {name!r}: {str(exc).splitlines()[0]}") from None
        missed = parsed.isna() & text.notna()
        if cfg.time_format is None and missed.any():
            # pandas takes the format of the first value for all: ISO times that differ from it (fractional
            # seconds on some rows, 'T' or 'Z' on others) are read on their own
            parsed[missed] = pd.to_datetime(text[missed], utc=True, errors="coerce", format="ISO8601")
    bad = (parsed.isna() & text.notna()).to_numpy()  # an empty cell is a missing time, refused as a reading
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        fmt = f" with format {cfg.time_format!r}" if cfg.time_format else ""
        hint = "" if cfg.time_format else "; pass --time-format if the dates are not ISO-like"
        numbers = pd.to_numeric(text, errors="coerce").notna().to_numpy()
        if cfg.time_format is None and numbers[bad].mean() >= 0.5 and not numbers[bad].all():
            # epoch numbers with a few text cells: the column read as text, and the numbers (which are not
            # date-times) are not the culprit; name the first cell that is not a number
            i = int(np.flatnonzero(bad & ~numbers)[0])
            hint = "; the column's other times are epoch numbers: fix or remove that row"
        if bad.sum() == 1 and i == len(column) - 1 and len(column) > 2:  # every time but the last one's read
            hint = LAST_ROW
        zone = re.search(r"\d\s*([A-Z]{3,5})\s*$", str(column.iloc[i]))
        if zone:  # 'CEST', 'EST': pandas reads UTC and GMT alone, and no --time-format reads the others
            hint = (
                f"; time zone names such as {zone.group(1)!r} are not read (a name can stand for several offsets): "
                "write the times in UTC or with their UTC offset (+02:00)"
            )
        raise DataError(
            f"cannot parse time value {column.iloc[i]!r} (line {file_line(column, i)}) in column "
            f"{name!r}{fmt}{hint}"
        )
    return _date_times_in_seconds(parsed)


def _date_times_in_seconds(parsed: pd.Series) -> np.ndarray:
    """Epoch seconds of UTC date-times (NaT: NaN), each the double nearest to the exact time when it has no part
    finer than a microsecond: what the same instant written as epoch ms or us, or as `1700000000.3`, reads as
    (see :func:`in_seconds`), and what Python's `datetime.timestamp()` gives a daemon's ISO timestamp. Dividing
    nanoseconds as a float64 (`Timedelta` division) missed it for one time in four with milliseconds."""
    ticks = parsed.dt.tz_localize(None).to_numpy()
    unit = np.datetime_data(ticks.dtype)[0]
    count = ticks.view(np.int64)
    out = in_seconds(count, unit)
    out[np.isnat(ticks)] = np.nan
    return out

"""CSV loading, column mapping, standardization and windowing.

A :class:`Series` is one entity's readings in time order: timestamps in epoch seconds (float64), raw feature
values (float64, shape (n, F)) and optional labels. Files are read with pandas (compressed ones too); the
separator (',', ';', tab or '|') is detected from the header line. The README's "Your data" section is the
user-facing contract of this module.

The numeric contract (the same for replay, training and the daemon): a raw value is the float64 nearest to its
decimal text, i.e. what Python's ``float()`` and every correct JSON parser give (pandas before 3.1 needs
``float_precision="round_trip"`` for that). Raw values stay float64 until standardization,
``((raw - mean) / scale).astype(float32)``, the one place they become float32 (the model's dtype). A JSON
message carrying the CSV's decimals therefore scores bit for bit like the replay of that CSV, whatever the
magnitude.
"""

from __future__ import annotations

import csv
import dataclasses
import re
import shlex
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.io.common import get_handle

from anomaly.config import DataConfig
from anomaly.data.scaling import Scaler, window_chain
from anomaly.data.series import (
    FALLBACK_MAX_GAP_SECONDS,
    GAP_INTERVALS,
    Series,
    apply_nan_policy,
    default_max_gap,
    fingerprint,
    merge_keys,
    sampling_interval,
    split_at_gaps,
)
from anomaly.errors import DataError, SchemaError

__all__ = [
    "COMPONENTS",
    "EPOCH_MS_FROM",
    "FALLBACK_MAX_GAP_SECONDS",
    "GAP_INTERVALS",
    "LABEL_LIKE",
    "SEPARATORS",
    "Scaler",
    "Series",
    "TIME_UNITS",
    "apply_nan_policy",
    "check_features",
    "default_max_gap",
    "detect_separator",
    "epoch_seconds",
    "fingerprint",
    "frame_to_series",
    "infer_features",
    "label_values",
    "load_series",
    "merge_keys",
    "non_features",
    "numeric_column",
    "quoted",
    "read_frame",
    "sampling_interval",
    "split_at_gaps",
    "to_epoch_seconds",
    "window_chain",
]


SEPARATORS = (",", ";", "\t", "|")
# Cells pandas reads as missing values anyway (its defaults); anything else that is not a number is "bad".
LABEL_LIKE = ("label", "labels", "anomaly", "is_anomaly", "anomalous", "outlier", "target", "class", "attack")
# Names of the parts a synthetic series was generated from (Yahoo S5 A3/A4 publish them beside `value`): ground
# truth, never sensors, so two kinds of them together are not taken as features unless named with --features.
COMPONENTS = r"trend|noise|seasonality\d*"


def _first_line(path: Path, skip: int = 0) -> str:
    """The header line (after `skip` lines), read through the same decompression pandas infers from the suffix
    (.gz, .bz2, .xz, .zip, .zst, .tar...), so a compressed file's separator is detected from its text, not its
    bytes."""
    try:
        with get_handle(path, "r", compression="infer", encoding="utf-8", errors="replace") as handles:
            for _ in range(skip):
                handles.handle.readline()
            return handles.handle.readline()
    except (OSError, ValueError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read {path}: {reason}") from None


def detect_separator(header: str) -> str:
    """The separator of a header line: the candidate it holds most often (',' when it holds none)."""
    counts = {sep: header.count(sep) for sep in SEPARATORS}
    best = max(SEPARATORS, key=lambda sep: counts[sep])  # ties keep the order above: ',' first
    return best if counts[best] else ","


# pandas < 3.1 parses CSV floats with a fast converter that is not always correctly rounded unless asked for
# "round_trip"; from 3.1 on every mode is correctly rounded and the argument is deprecated.
_EXACT_FLOATS = (
    {}
    if tuple(int(p) for p in pd.__version__.split(".")[:2]) >= (3, 1)
    else {"float_precision": "round_trip"}
)


def read_frame(
    path: str | Path,
    separator: str | None = None,
    decimal: str = ".",
    header: bool = True,
    skip_rows: int = 0,
) -> pd.DataFrame:
    """The file as a frame of cells, after its first `skip_rows` lines (notes above the header). Without a
    header (`header=False`: the first line is data, as in SMD or the UCR archive) the columns are named 1, 2,
    3, ... (strings), the numbering such datasets' own labels use."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    if p.stat().st_size == 0:
        raise DataError(f"{p} is empty")
    # read once: it gives the separator and is checked before pandas reads it
    first = _first_line(p, skip_rows)
    sep = separator or detect_separator(first)
    if header:
        _check_header(p, first, sep)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # index_col=False: rows that end with a separator (a common export) must not make pandas take the
            # first column for the index and shift every column one to the left.
            frame = pd.read_csv(
                p,
                sep=sep,
                decimal=decimal,
                header=0 if header else None,
                skiprows=skip_rows,
                index_col=False,
                low_memory=False,
                compression="infer",
                **_EXACT_FLOATS,
            )
    except UnicodeDecodeError as exc:
        raise DataError(
            f"cannot read {p} as CSV: it is not UTF-8 text (byte {exc.object[exc.start]:#x}); save it as UTF-8"
        ) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = (
            " (more fields than the header names: if the header is not the file's first line, skip the lines "
            "above it with --skip-rows N)"
            if isinstance(exc, pd.errors.ParserError) and "Expected" in reason
            else ""
        )
        raise DataError(f"cannot read {p} as CSV: {reason}{hint}") from None
    if header:
        frame.columns = [_clean_name(c) for c in frame.columns]
    else:
        frame.columns = [str(i) for i in range(1, len(frame.columns) + 1)]
    if len(frame) <= 1 and len(first.split()) > 1 and all(_is_number(c) for c in first.split()):
        raise DataError(
            f"{p} holds one line of {len(first.split())} numbers separated by spaces: a series written on one "
            "line; put one value per line (tr -s ' ' '\\n' < FILE), then read it with --no-header"
        )
    if frame.empty:
        raise DataError(f"{p} has no data rows{_no_header_note(list(frame.columns))}")
    frame.attrs["separator"] = sep
    frame.attrs["path"] = str(p)  # for error messages that name a line (`_line`)
    frame.attrs["header"] = header
    frame.attrs["skip_rows"] = skip_rows
    return frame


def _no_header_note(names: Sequence[object]) -> str:
    """A hint for a header line made of numbers: the file has no header (SMD, the UCR archive)."""
    cells = [str(n).strip() for n in names]
    if cells and all(_is_number(c) for c in cells):
        return " (its first line holds numbers: for a file without a header, pass --no-header)"
    return ""


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def quoted(name: object) -> str:
    """A column name as it must be typed in a shell: `'KPI ID'`, `'timestamp_(min)'`, `value` as is."""
    return shlex.quote(str(name))


def _clean_name(name: object) -> str:
    """A header name without the spaces, zero-width characters or byte-order mark around it (invisible in an
    editor, so 'b\u200b' would be a feature nobody can name)."""
    return str(name).strip().strip("\u200b\u200c\u200d\u2060\ufeff").strip()


_PIVOT = 'Flux: pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")'
_INFLUX_COLUMNS = "pass --time-column _time and the fields as --features"


def _check_header(path: Path, header: str, sep: str) -> None:
    """Refuse headers pandas would read wrongly without a word: a name given twice (pandas renames the copy
    'a.1', or the copies collide once spaces are stripped) and InfluxDB's annotated CSV (its '#group' line
    would be read as the header)."""
    line = header.lstrip("\ufeff")
    if line.startswith(("#group", "#datatype", "#default")):
        raise DataError(
            f"{path} is an InfluxDB annotated CSV: delete its '#' annotation lines, pivot it to one column per "
            f"field if each row holds one _field and _value ({_PIVOT}), then {_INFLUX_COLUMNS}"
        )
    names = [_clean_name(c) for c in next(csv.reader([line], delimiter=sep), [])]
    if "_field" in names and "_value" in names:
        raise DataError(
            f"{path} is in InfluxDB's long form (columns _field and _value: one row per field value): export "
            f"it pivoted to one column per field ({_PIVOT}), then {_INFLUX_COLUMNS}"
        )
    seen: dict[str, int] = {}
    for i, name in enumerate(names, 1):
        if name and name in seen:
            raise DataError(
                f"{path}: column name {name!r} appears twice in the header (columns {seen[name]} and {i}); "
                "rename or remove one"
                + (
                    _no_header_note(names)
                    or " (if the header is not the file's first line, skip the lines above it with --skip-rows N)"
                )
            )
        seen[name] = i


def _decimal_hint(frame: pd.DataFrame, decimal: str) -> str:
    if decimal != ".":
        return ""
    for c in frame.columns:
        col = frame[c]
        if _is_text(col) and col.astype(str).str.fullmatch(r"\s*-?\d+,\d+\s*").mean() > 0.5:
            return (
                f" (column {c!r} holds numbers with decimal commas such as {col.iloc[0]!r}: pass --decimal ,)"
            )
    return ""


def _line(rows: pd.DataFrame | pd.Series, i: int) -> int:
    """The file line of the i-th row of a frame read by `read_frame` (or of one of its columns): the header is
    line 1, and the blank lines the reader skipped are counted, so the number is the one an editor shows."""
    row = int(rows.index[i])
    header, skip = rows.attrs.get("header", True), rows.attrs.get("skip_rows", 0)
    lines = _data_lines(rows.attrs.get("path"), header, skip)
    return lines[row] if lines is not None and row < len(lines) else row + 1 + int(header) + skip


def _data_lines(path: str | None, header: bool = True, skip: int = 0) -> list[int] | None:
    """1-based line numbers of the data rows of `path` (non-blank lines after the `skip` lines above the header
    and the header, if it has one); read again only when an error names a line. None when the file cannot be
    read again."""
    if path is None:
        return None
    from pandas.io.common import get_handle

    try:
        with get_handle(path, "r", compression="infer", encoding="utf-8") as handle:
            lines = [n for n, text in enumerate(handle.handle, 1) if n > skip and text.strip()]
    except (OSError, UnicodeDecodeError, EOFError):
        return None
    return lines[1:] if header else lines


def numeric_column(frame: pd.DataFrame, name: str, source: str, cfg: DataConfig) -> np.ndarray:
    """A feature column as float64. Empty cells (spaces only, too) and pandas' missing markers (NA, n/a, null,
    ...) are NaN, left to the missing-value policy. Any other text refuses the file naming column, line and
    value, unless data.bad_cells = "missing" turns such cells into missing values too."""
    col = frame[name]
    if pd.api.types.is_bool_dtype(col):
        return col.to_numpy(np.float64)
    if pd.api.types.is_numeric_dtype(col):
        return col.to_numpy(np.float64)
    values, present = _cell_numbers(col, cfg.decimal)
    bad = np.isnan(values) & present
    if bad.any() and cfg.bad_cells == "error":
        i = int(np.flatnonzero(bad)[0])
        hint = (
            " (numbers with decimal commas need --decimal ,)"
            if re.fullmatch(r"\s*-?\d+,\d+\s*", str(col.iloc[i])) and cfg.decimal == "."
            else " (with --decimal , numbers have no decimal point)"
            if re.fullmatch(r"\s*-?\d*\.\d+\s*", str(col.iloc[i])) and cfg.decimal == ","
            else ""
        )
        raise SchemaError(
            f"{source}: column {name!r} line {_line(frame, i)} holds {col.iloc[i]!r}, not a number "
            f"({int(bad.sum())} such cell(s)){hint}; fix the file, or pass --bad-cells missing to treat them "
            "as missing values (engine.nan_policy then applies)"
        )
    return values


# Numbers with thousands separators, by decimal mark: 1,234.5 (decimal '.') and 1.234,5 (decimal ',').
_GROUPED = {".": r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?", ",": r"[+-]?\d{1,3}(?:\.\d{3})+(?:,\d*)?"}


def _cell_numbers(col: pd.Series, decimal: str) -> tuple[np.ndarray, np.ndarray]:
    """The values of a column pandas did not read as numbers (float64, NaN where a cell is not a number) and
    which cells hold something (not missing, not only spaces). Text cells are read with `decimal` as the
    decimal mark; thousands separators (1,234.5, or 1.234,5 with decimal ',') are removed when the column
    proves them: every cell with the separator is grouped in threes and one of them also has the decimal mark
    or two separators (a lone 1,234 could be a decimal comma). Other cells are read as before (booleans: 0/1)."""
    is_text = col.map(lambda v: isinstance(v, str)).to_numpy(bool)
    values = pd.to_numeric(col.where(~is_text), errors="coerce").to_numpy(
        np.float64, na_value=np.nan, copy=True
    )
    present = col.notna().to_numpy(bool, copy=True)
    if not is_text.any():
        return values, present
    text = col[is_text].astype("string").str.strip()
    group = "," if decimal == "." else "."
    has_group = text.str.contains(group, regex=False).fillna(False).astype(bool)
    proven = text[has_group]
    if len(proven) and proven.str.fullmatch(_GROUPED[decimal]).all():
        if (proven.str.contains(decimal, regex=False) | (proven.str.count(re.escape(group)) > 1)).any():
            text = text.str.replace(group, "", regex=False)
            has_group = has_group & False
    if decimal == ",":  # a '.' left is not a number in a decimal-comma file (as pandas reads the file)
        text = text.mask(has_group, "not a number").str.replace(",", ".", regex=False)
    values[is_text] = pd.to_numeric(text, errors="coerce").to_numpy(np.float64, na_value=np.nan)
    present[is_text] &= (text != "").to_numpy(bool)
    return values, present


def _is_text(col: pd.Series) -> bool:
    return col.dtype == object or pd.api.types.is_string_dtype(col)


def _mostly_numeric(col: pd.Series, decimal: str = ".") -> bool:
    if pd.api.types.is_numeric_dtype(col):  # booleans too: a True/False sensor is a 0/1 feature
        return bool(col.notna().any())
    if not _is_text(col):
        return False
    values, present = _cell_numbers(col, decimal)
    return bool(present.any()) and float(np.isfinite(values[present]).mean()) >= 0.5


TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "min": 60.0, "h": 3600.0}
_DMY = re.compile(r"^\s*(\d{1,2})[/.-](\d{1,2})[/.-](\d{2,4})\b")


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
    equal the CSV path's bit for bit (the same float64 product)."""
    v = np.asarray(values, np.float64)
    mag = np.abs(v)
    left = mag >= EPOCH_MS_FROM
    if not left.any():  # all seconds: the common case costs one comparison
        return v
    out = v.copy()
    for unit, bound in _UNIT_BOUNDS:
        hit = left & (mag >= bound)
        out[hit] = v[hit] * TIME_UNITS[unit]
        left &= ~hit
    return out


def _refuse_excel_serials(values: np.ndarray, name: object) -> None:
    """Excel's serial dates (days since 1899-12-30 with the time of day as a fraction, 45010.5 = 2023-03-25
    12:00) read as epoch seconds would all fall on 1 January 1970, hours apart: refused instead of guessed."""
    finite = values[np.isfinite(values)]
    steps = np.diff(np.sort(finite))
    if (
        len(finite) > 1
        and finite.min() >= 2e4  # 1954-10-03
        and finite.max() <= 1e5  # 2173-10-14
        and (finite != np.round(finite)).any()
        and np.median(steps[steps > 0]) < 1  # steps under a day (a second as epoch times)
    ):
        raise DataError(
            f"time column {name!r} holds numbers like {float(finite[finite != np.round(finite)][0])!r} that look like Excel serial dates (days "
            "since 1899-12-30), not epoch times; export the times as text (format the cells as yyyy-mm-dd "
            "hh:mm:ss), or pass --time-unit s if they are seconds"
        )


def to_epoch_seconds(column: pd.Series, cfg: DataConfig | None = None) -> np.ndarray:
    """Numbers are epoch times in data.time_unit (auto: s, ms, us or ns by magnitude); text is parsed as a
    date-time (naive means UTC) with data.time_format, or ISO-like text; day/month order must be given
    (--dayfirst or --time-format) when the dates alone cannot tell it."""
    cfg = cfg or DataConfig()
    name = column.name
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        values = column.to_numpy(dtype=np.float64)
        unit = _numeric_unit(values) if cfg.time_unit == "auto" else cfg.time_unit
        if cfg.time_unit == "auto":
            _refuse_excel_serials(values, name)
        return values * TIME_UNITS[unit]
    text = column.astype("string")
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
        raise DataError(
            f"cannot parse time value {column.iloc[i]!r} (line {_line(column, i)}) in column "
            f"{name!r}{fmt}{hint}"
        )
    seconds = (parsed - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    return seconds.to_numpy(dtype=np.float64)


def infer_features(frame: pd.DataFrame, cfg: DataConfig, source: str = "data") -> list[str]:
    """The feature columns: the configured ones, or every mostly-numeric column that is not time, key or
    label. A mostly-numeric column with a few text cells is kept (numeric_column then reports the cells)
    instead of silently disappearing from the model."""
    if cfg.features:
        return list(cfg.features)
    skip = {cfg.time_column, *(cfg.label_columns or ()), cfg.label}
    if cfg.key_column:
        skip.add(cfg.key_column)
    feats = [
        c
        for c in frame.columns
        if c not in skip and not _unnamed(c) and _mostly_numeric(frame[c], cfg.decimal)
    ]
    for c in frame.columns:
        if c not in skip and c not in feats and _is_text(frame[c]):
            _refuse_units(frame[c], source)
    for c in feats:
        if str(c).strip().lower() in LABEL_LIKE and frame[c].dropna().isin([0, 1]).all():
            raise SchemaError(
                f"{source}: column {c!r} looks like labels (0/1), not a sensor; pass --label {quoted(c)} to use "
                f"it as the label (now {cfg.label!r}), or --features to choose the features"
            )
    parts = [c for c in feats if re.fullmatch(COMPONENTS, str(c), re.IGNORECASE)]
    kinds = {re.sub(r"\d+$", "", str(c).lower()) for c in parts}
    if len(kinds) > 1:  # a lone `noise` or `trend` column may well be a sensor
        measured = [c for c in feats if c not in parts]
        raise SchemaError(
            f"{source}: columns {', '.join(map(str, parts))} look like the ground-truth components of a "
            "synthetic series (as in Yahoo S5 A3/A4), not sensors; choose the features with --features"
            + (f" {','.join(quoted(c) for c in measured)}" if measured else "")
        )
    if not feats:
        raise SchemaError(
            f"{source}: no numeric feature columns found among {', '.join(map(str, frame.columns))}"
            + _separator_note(frame)
            + _decimal_hint(frame, cfg.decimal)
        )
    return feats


# A number followed by a unit: '12.3 ms', '45%', '1.2 kB', '20 °C', '3 m/s' (Grafana's formatted CSV export).
# A unit in letters comes after a space, as Grafana writes it, so identifiers such as '101A' or '3rd' are not
# taken for numbers with units.
_WITH_UNIT = r"[+-]?\d[\d.,]*(?:[eE][+-]?\d+)?(?:\s*(?:%|‰|°[CF]?)|\s+[^\W\d_]+(?:/[^\W\d_]+)?)"


def _refuse_units(col: pd.Series, source: str) -> None:
    """A column of numbers with units is a formatted export. The numbers are not read with their units dropped:
    Grafana scales each value's unit on its own (999 ms, then 1.02 s)."""
    present = col.dropna().astype(str).str.strip()
    if len(present) and present.str.fullmatch(_WITH_UNIT).mean() > 0.5:
        raise SchemaError(
            f"{source}: column {col.name!r} holds numbers with units such as {present.iloc[0]!r}; export the "
            "raw values (Grafana: Inspect > Data with 'Formatted data' off), or leave the column out with "
            "--features"
        )


def non_features(frame: pd.DataFrame, features: Sequence[str], cfg: DataConfig) -> dict[str, str]:
    """Columns that are neither features nor time, key or label, with the reason: no value in any row (a sensor
    that was off for the whole file looks like this), or text."""
    skip = {cfg.time_column, cfg.key_column, cfg.label, *cfg.label_columns, *features}
    out = {}
    for c in frame.columns:
        if c in skip or (_unnamed(c) and frame[c].isna().all()):  # empty and unnamed: a trailing separator
            continue
        if _unnamed(c):
            out[str(c)] = "no name in the header"
        else:
            out[str(c)] = "no value in any row" if frame[c].isna().all() else "text"
    return out


def _unnamed(column: object) -> bool:
    """A column whose header cell is empty (pandas names it 'Unnamed: N'): a row index written along, as
    pandas' to_csv does by default, never a sensor."""
    return re.fullmatch(r"Unnamed: \d+", str(column)) is not None


def _separator_note(frame: pd.DataFrame) -> str:
    if len(frame.columns) == 1:
        return f" (one column only: is the separator {frame.attrs.get('separator', ',')!r} right? see --separator)"
    return ""


def check_features(columns: Iterable[str], expected: Sequence[str], where: str) -> None:
    """Raise SchemaError naming missing features (extra columns are allowed only if not numeric features)."""
    have = list(columns)
    missing = [f for f in expected if f not in have]
    if missing:
        raise SchemaError(
            f"{where} is missing feature(s) {', '.join(missing)} that the model needs", missing=missing
        )


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


def _header_below(frame: pd.DataFrame, time_column: str) -> int | None:
    """The file line of an early row that looks like the header (names only, no number, one of them the time
    column or a time or date column): lines of notes or a spreadsheet's title row above the header made pandas
    take the wrong line for the names."""
    for i in range(min(len(frame), 20)):
        cells = [v for v in frame.iloc[i].tolist() if not pd.isna(v)]
        names = [str(v).strip() for v in cells if isinstance(v, str) and not _is_number(v)]
        if len(names) < 2 or len(names) < len(cells):
            continue
        if time_column in names or any(re.search(r"time|date", c, re.IGNORECASE) for c in names):
            return _line(frame, i)
    return None


def _label_text(value: object) -> str | None:
    """A label cell as text to look up in data.label_map: None when missing or blank; 1.0 as '1'."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return text or None


def label_values(frame: pd.DataFrame, cfg: DataConfig, source: str, column: str | None = None) -> np.ndarray:
    """A label column as 0/1 (int8, one per row). Numbers: above 0 is anomalous, an empty cell is 0. With
    data.label_map every present cell must be one of its texts (compared without surrounding spaces), so a
    typo in a text label is refused by line rather than guessed as normal or anomalous."""
    name = cfg.label if column is None else column
    col = frame[name]
    if cfg.label_map:
        mapping = {}
        for entry in cfg.label_map:
            text, _, flag = entry.rpartition("=")
            mapping[text.strip()] = int(flag)
        cells = [_label_text(v) for v in col.tolist()]
        for at, cell in enumerate(cells):
            if cell is not None and cell not in mapping:
                raise SchemaError(
                    f"{source}: label column {name!r} line {_line(frame, at)} holds {col.iloc[at]!r}, which "
                    f"--label-map does not name (it maps {', '.join(map(repr, mapping))})"
                )
        return np.array([0 if c is None else mapping[c] for c in cells], np.int8)
    values = numeric_column(frame, name, source, dataclasses.replace(cfg, bad_cells="missing"))
    bad = np.isnan(values) & col.notna().to_numpy()
    if bad.any():  # (the sensors' hint, --bad-cells missing, does not apply to labels)
        at = int(np.flatnonzero(bad)[0])
        texts = list(dict.fromkeys(str(v).strip() for v in col[bad].tolist()))
        hint = (
            f"; text labels are read with --label-map, e.g. --label-map {quoted(texts[0] + '=0,' + texts[1] + '=1')} "
            f"(this column holds {', '.join(map(repr, texts[:5]))}{', ...' if len(texts) > 5 else ''})"
            if len(texts) > 1
            else f"; text labels are read with --label-map, e.g. --label-map {quoted(texts[0] + '=1')}"
        )
        raise SchemaError(
            f"{source}: label column {name!r} line {_line(frame, at)} holds {col.iloc[at]!r}; labels are "
            f"0 or 1 (empty: 0){hint}"
        )
    return (np.nan_to_num(values) > 0).astype(np.int8)


def frame_to_series(
    frame: pd.DataFrame,
    features: Sequence[str],
    cfg: DataConfig,
    source: str,
    labels_file: str | Path | None = None,
) -> list[Series]:
    if cfg.time_column and cfg.time_column not in frame.columns:
        timelike = [c for c in frame.columns if re.search(r"time|date", str(c), re.IGNORECASE)]
        headed = frame.attrs.get("header", True)
        below = _header_below(frame, cfg.time_column) if headed and not timelike else None
        numbers = _no_header_note(list(frame.columns)) if headed and not below else ""
        hint = (
            f" (pass --time-column {quoted(timelike[0])})"
            if timelike
            else f" (the column names seem to be on line {below}: pass --skip-rows {below - 1})"
            if below
            else " (a file without a time column: pass --no-time-column to number its readings 0, 1, 2, ...)"
            if (len(frame.columns) > 1 and not numbers) or not headed
            else ""
        )
        raise SchemaError(
            f"{source}: time column {cfg.time_column!r} not found; columns are {', '.join(frame.columns)}"
            + hint
            + (numbers or _separator_note(frame))
        )
    check_features(frame.columns, features, source)
    if cfg.time_column:
        ts_all = to_epoch_seconds(frame[cfg.time_column], cfg)
    else:  # no time column: readings numbered in file order (per key), one time unit apart
        order = (
            frame.groupby(cfg.key_column, sort=False, dropna=False).cumcount().to_numpy()
            if cfg.key_column and cfg.key_column in frame.columns
            else np.arange(len(frame))
        )
        ts_all = order.astype(np.float64) * TIME_UNITS["s" if cfg.time_unit == "auto" else cfg.time_unit]
    if not np.isfinite(ts_all).any():
        raise SchemaError(f"{source}: time column {cfg.time_column!r} has no value in any row")
    values_all = np.stack([numeric_column(frame, f, source, cfg) for f in features], axis=1).astype(
        np.float64
    )
    labels_all = label_values(frame, cfg, source) if cfg.label in frame.columns else None
    if labels_file is not None:
        if labels_all is not None:
            raise SchemaError(
                f"{source} has a label column {cfg.label!r} and --labels {labels_file} gives labels too; keep one"
            )
        from anomaly.labels import read_labels  # (it reads files with this module)

        labels_all = read_labels(labels_file, frame, ts_all, cfg, source)
    if cfg.key_column:
        if cfg.key_column not in frame.columns:
            raise SchemaError(
                f"{source}: key column {cfg.key_column!r} not found; columns are {', '.join(frame.columns)}"
            )
        empty = frame[cfg.key_column].isna().to_numpy()
        if empty.any():  # such rows used to form a series of no readings: lost without a word
            raise SchemaError(
                f"{source}: key column {cfg.key_column!r} is empty on line {_line(frame, int(np.argmax(empty)))} "
                f"({int(empty.sum())} such row(s)); every row needs a key"
            )
        keys = frame[cfg.key_column].astype(str).to_numpy()
        groups = pd.unique(keys)
    else:
        keys = None
        groups = [Path(source).stem if source else "series"]
        timed = ts_all[np.isfinite(ts_all)]  # missing times are dropped, not repeats
        repeated = len(timed) - len(np.unique(timed))
        if repeated > 0.1 * len(timed):
            likely = _likely_key_columns(frame, ts_all, cfg)
            hint = (
                f"; the likely key column is {likely[0]!r}: pass --key-column {quoted(likely[0])}"
                if likely
                else "; pass --key-column naming the column that tells the series apart"
            )
            raise SchemaError(
                f"{source}: {repeated} of {len(timed)} rows repeat another row's timestamp, so the file "
                f"looks like several series interleaved{hint}"
            )
    out = []
    for key in groups:
        idx = np.flatnonzero(keys == key) if keys is not None else np.arange(len(frame))
        order = idx[np.argsort(ts_all[idx], kind="stable")]
        out.append(
            Series(
                str(key),
                ts_all[order],
                values_all[order],
                None if labels_all is None else labels_all[order],
                source,
            )
        )
    return out


def load_series(
    paths: Sequence[str | Path],
    cfg: DataConfig,
    features: Sequence[str] | None = None,
    left_out: dict[str, str] | None = None,
    labels_file: str | Path | None = None,
) -> tuple[list[Series], list[str]]:
    """Read every file into series. Features come from `features`, the config, or the first file's numerics;
    in that last case `left_out` (when given) receives the first file's other columns that are not time, key
    or label, each with the reason it is not a feature, so a command can show it. `labels_file` gives the
    labels when the data files have none (see :mod:`anomaly.labels`; only a JSON of windows per file serves
    several data files).

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
    seen: set[str] = set()
    for path in paths:
        frame = read_frame(path, cfg.separator, cfg.decimal, cfg.header, cfg.skip_rows)
        if feats is None:
            feats = infer_features(frame, cfg, str(path))
            if left_out is not None and not cfg.features:  # chosen features: nothing was left out by us
                left_out.update(non_features(frame, feats, cfg))
        part = frame_to_series(frame, feats, cfg, str(path), labels_file)
        for s in part:
            if not cfg.key_column:
                s.key = _unique_key(Path(path), seen)
            seen.add(s.key)
        series.extend(part)
    assert feats is not None
    return series, feats


def _unique_key(path: Path, seen: set[str]) -> str:
    key = path.stem
    if key in seen:
        key = f"{path.parent.name}/{path.stem}"
    n = 2
    base = key
    while key in seen:
        key = f"{base}#{n}"
        n += 1
    return key

"""Numeric cells: a column as float64 by the numeric contract of :mod:`anomaly.data`, with decimal commas,
thousands separators, empty and missing cells, and the one-line refusal of a text cell by column and line."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from anomaly.config import DataConfig
from anomaly.data.reading import file_line
from anomaly.errors import SchemaError


# Cells pandas reads as missing values anyway (its defaults); anything else that is not a number is "bad".
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
        if bad.sum() == 1 and i == len(col) - 1 and len(col) > 2:  # a totals row: 'Average' under a sensor
            hint = " (it is the last row: a totals or summary row? delete it)"
        raise SchemaError(
            f"{source}: column {name!r} line {file_line(frame, i)} holds {col.iloc[i]!r}, not a number "
            f"({int(bad.sum())} such cell(s)){hint}; fix the file, or pass --bad-cells missing to treat them "
            "as missing values (engine.nan_policy then applies)"
        )
    return values


_SPACE = "[ \u00a0\u202f]"  # a digit group separator: space, no-break space, narrow no-break space
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
    # digits grouped with spaces (`1 234,5`: French, Nordic and Swiss Excel, with a no-break or narrow no-break
    # space) and the minus sign U+2212 (`−1,5`) that such locales write: a space is never a decimal mark, so each
    # cell that is such a number is read on its own; they were text, and the column was left out of the features
    spaced = text.str.fullmatch(rf"[+\-\u2212]?\d{{1,3}}(?:{_SPACE}\d{{3}})+(?:{re.escape(decimal)}\d*)?")
    signed = text.str.fullmatch(rf"\u2212[\d{re.escape(decimal)}]+")
    local = (spaced.fillna(False) | signed.fillna(False)).astype(bool)
    if local.any():
        text = text.mask(
            local, text.str.replace(_SPACE, "", regex=True).str.replace("\u2212", "-", regex=False)
        )
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


def is_text(col: pd.Series) -> bool:
    return col.dtype == object or pd.api.types.is_string_dtype(col)


def mostly_numeric(col: pd.Series, decimal: str = ".") -> bool:
    if pd.api.types.is_numeric_dtype(col):  # booleans too: a True/False sensor is a 0/1 feature
        return bool(col.notna().any())
    if not is_text(col):
        return False
    values, present = _cell_numbers(col, decimal)
    return bool(present.any()) and float(np.isfinite(values[present]).mean()) >= 0.5

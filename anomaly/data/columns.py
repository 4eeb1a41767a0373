"""Which columns are what: the features a file offers (and the columns left out, with why), the checks that
refuse columns that only look like sensors (labels, units, synthetic components), and label columns as 0/1
(numbers, or texts through data.label_map)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from anomaly.config import DataConfig
from anomaly.data.cells import is_text, mostly_numeric, numeric_column
from anomaly.data.reading import file_line, quoted, separator_note
from anomaly.errors import SchemaError

LABEL_LIKE = (
    "label",
    "labels",
    "anomaly",
    "is_anomaly",
    "anomalous",
    "outlier",
    "target",
    "class",
    "attack",
    "fault",
    "is_fault",
    # SKAB's second label column: a feature once data.label_columns leaves it out (`ANOMALY_DATA_LABEL_COLUMNS=`,
    # `label_columns = []`: no label columns), it was scored as a sensor without a word
    "changepoint",
    "change_point",
)
# Names of the parts a synthetic series was generated from (Yahoo S5 A3/A4 publish them beside `value`): ground
# truth, never sensors, so two kinds of them together are not taken as features unless named with --features.
COMPONENTS = r"trend|noise|seasonality\d*"


def _decimal_hint(frame: pd.DataFrame, decimal: str) -> str:
    if decimal != ".":
        return ""
    for c in frame.columns:
        col = frame[c]
        if is_text(col) and col.astype(str).str.fullmatch(r"\s*-?\d+,\d+\s*").mean() > 0.5:
            return (
                f" (column {c!r} holds numbers with decimal commas such as {col.iloc[0]!r}: pass --decimal ,)"
            )
    return ""


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
        if c not in skip and not _unnamed(c) and mostly_numeric(frame[c], cfg.decimal)
    ]
    for c in frame.columns:
        if c not in skip and c not in feats and is_text(frame[c]):
            _refuse_units(frame[c], source)
    for c in feats:
        if str(c).strip().lower() in LABEL_LIKE and frame[c].dropna().isin([0, 1]).all():
            raise SchemaError(
                f"{source}: column {c!r} looks like labels (0/1), not a sensor; pass --label {quoted(c)} to use "
                f"it as the label (now {cfg.label!r}), list it in data.label_columns (now "
                f"{list(cfg.label_columns)}) to leave it out, or --features to choose the features"
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
            + separator_note(frame)
            + _decimal_hint(frame, cfg.decimal)
        )
    return feats


# A number followed by a unit: '12.3 ms', '45%', '1.2 kB', '20 °C', '3 m/s' (Grafana's formatted CSV export).
# A unit in letters comes after a space, as Grafana writes it, so identifiers such as '101A' or '3rd' are not
# taken for numbers with units.
_WITH_UNIT = r"[+-]?\d[\d.,]*(?:[eE][+-]?\d+)?(?:\s*(?:%|‰|°[CF]?)|\s+[^\W\d_]+(?:/[^\W\d_]+)?)"


# A number with its unit written close ('12.5kW', '3.2bar'): not refused, since identifiers look alike ('101A'),
# but named when the column is left out (one with a decimal part, at least), so readings are not listed as text.
_UNIT_CLOSE = r"[+-]?\d+(?:[.,]\d+)?[^\W\d_]{1,4}"


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
            out[str(c)] = (
                "no value in any row" if frame[c].isna().all() else _text_reason(frame[c], cfg.decimal)
            )
    return out


def _text_reason(col: pd.Series, decimal: str) -> str:
    """Why a text column is not a feature: text, or numbers written with the other decimal mark (a column with
    decimal points in a file read with --decimal , was listed as 'text' alone)."""
    other = "," if decimal == "." else "."
    if not is_text(col) or not mostly_numeric(col, other):
        present = col.dropna().astype(str).str.strip()
        close = present.str.fullmatch(_UNIT_CLOSE) if is_text(col) and len(present) else None
        if close is not None and close.mean() > 0.5 and present[close].str.contains(r"\d[.,]\d").any():
            return f"numbers with units such as {present.iloc[0]!r}, read as text: export the raw values"
        return "text"
    example = str(col.dropna().iloc[0]).strip()
    mark = "point" if other == "." else "comma"
    return f"numbers with a decimal {mark} such as {example!r}, read as text under --decimal {decimal}: the file mixes decimal marks"


def _unnamed(column: object) -> bool:
    """A column whose header cell is empty (pandas names it 'Unnamed: N'): a row index written along, as
    pandas' to_csv does by default, never a sensor."""
    return re.fullmatch(r"Unnamed: \d+", str(column)) is not None


def check_features(columns: Iterable[str], expected: Sequence[str], where: str) -> None:
    """Raise SchemaError naming missing features (extra columns are allowed only if not numeric features)."""
    have = list(columns)
    missing = [f for f in expected if f not in have]
    if missing:
        raise SchemaError(
            f"{where} is missing feature(s) {', '.join(missing)} that the model needs", missing=missing
        )


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
                    f"{source}: label column {name!r} line {file_line(frame, at)} holds {cell!r}, which "
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
            f"{source}: label column {name!r} line {file_line(frame, at)} holds {col.iloc[at]!r}; labels are "
            f"0 or 1 (empty: 0){hint}"
        )
    negative = values < 0
    if negative.any():  # 1 = normal, -1 = attack (WADI, scikit-learn's outlier flags) read as 1 = anomalous
        at = int(np.flatnonzero(negative)[0])
        texts = list(dict.fromkeys(t for t in map(_label_text, col.tolist()) if t is not None))
        neg = str(_label_text(col.iloc[at]))  # as --label-map compares it: -1.0 is '-1'
        rest = [t for t in texts if t != neg]
        example = ",".join([*(f"{t}=0" for t in rest[:1]), f"{neg}=1"])
        raise SchemaError(
            f"{source}: label column {name!r} line {file_line(frame, at)} holds {neg!r}; labels are "
            f"0 or 1 (empty: 0), and a negative label is not guessed: map the column's values with "
            f"--label-map, e.g. --label-map {quoted(example)} if {neg} marks an anomaly"
        )
    return (np.nan_to_num(values) > 0).astype(np.int8)

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

import dataclasses
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from anomaly.config import DataConfig
from anomaly.data.cells import is_text, mostly_numeric, numeric_column
from anomaly.data.reading import (
    SEPARATORS,
    detect_separator,
    file_line,
    is_number,
    no_header_note,
    quoted,
    read_frame,
    separator_note,
)
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
from anomaly.data.times import EPOCH_MS_FROM, TIME_UNITS, epoch_seconds, to_epoch_seconds
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


# Cells pandas reads as missing values anyway (its defaults); anything else that is not a number is "bad".
LABEL_LIKE = ("label", "labels", "anomaly", "is_anomaly", "anomalous", "outlier", "target", "class", "attack")
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
            + separator_note(frame)
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
        names = [str(v).strip() for v in cells if isinstance(v, str) and not is_number(v)]
        if len(names) < 2 or len(names) < len(cells):
            continue
        if time_column in names or any(re.search(r"time|date", c, re.IGNORECASE) for c in names):
            return file_line(frame, i)
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
                    f"{source}: label column {name!r} line {file_line(frame, at)} holds {col.iloc[at]!r}, which "
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
        numbers = no_header_note(list(frame.columns)) if headed and not below else ""
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
            + (numbers or separator_note(frame))
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
                f"{source}: key column {cfg.key_column!r} is empty on line {file_line(frame, int(np.argmax(empty)))} "
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

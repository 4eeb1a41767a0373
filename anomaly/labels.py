"""Labels kept in a file of their own (`--labels FILE`), as several public benchmarks publish them.

Three layouts, told apart by the file itself:

- one label per line, no header (SMD's ``test_label/machine-1-1.txt``): line i labels data row i, in file order;
- a CSV with a header (PSM's ``test_label.csv``: ``timestamp_(min),label``): rows are matched to the data by the
  time column (and the key column, when both files have it), or by row when it has no time column;
- a JSON object of anomaly windows per file (NAB's ``combined_windows.json``: ``{"dir/name.csv": [[start, end],
  ...]}``): a reading is anomalous when its time lies in one of its file's windows, ends included.

Every layout gives exactly one 0/1 label per data row or refuses the file in one line: a label file that does
not cover the data is never padded with zeros.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from anomaly.config import DataConfig
from anomaly.data.columns import label_values
from anomaly.data.loading import key_columns
from anomaly.data.reading import file_line, first_line, is_number, plain_name, quoted, read_frame
from anomaly.data.times import join_date_column, to_epoch_seconds
from anomaly.errors import DataError, SchemaError


def read_labels(
    path: str | Path,
    frame: pd.DataFrame,
    timestamps: np.ndarray,
    cfg: DataConfig,
    source: str,
    warn: Callable[[str], None] | None = None,
) -> np.ndarray:
    """0/1 labels (int8) for the rows of `frame` (file order), whose times in epoch seconds are `timestamps`.
    `warn` hears what the labels say that the data cannot use (keys of a keyed labels file absent from it)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"labels file not found: {p}")
    if p.suffix.lower() == ".json":
        _refuse_rows_without_a_time(p, frame, timestamps, cfg, source)
        return _window_labels(p, timestamps, cfg, source)
    first = first_line(p, encoding=cfg.encoding).strip()
    if is_number(first):  # one label per line, no header
        labels = read_frame(p, header=False, encoding=cfg.encoding)
        if len(labels.columns) != 1:
            raise SchemaError(f"{p}: a label file without a header holds one label per line")
        return _by_row(p, label_values(labels, cfg, str(p), column="1"), frame, source)
    labels = read_frame(p, cfg.separator, cfg.decimal, text_columns=key_columns(cfg), encoding=cfg.encoding)
    if cfg.label not in labels.columns:
        others = [c for c in labels.columns if c not in (cfg.time_column, cfg.key_column)]
        hint = f" (pass --label {quoted(others[0])})" if len(others) == 1 else ""
        raise SchemaError(
            f"{p}: label column {cfg.label!r} not found; columns are {', '.join(labels.columns)}{hint}"
        )
    values = label_values(labels, cfg, str(p))
    # matched by the data's date and time, joined alike (data.date_column)
    if cfg.time_column in labels.columns:
        join_date_column(labels, cfg, str(p))
    if cfg.time_column and cfg.time_column not in labels.columns:
        timelike = [
            c for c in labels.columns if c != cfg.label and re.search(r"time|date", str(c), re.IGNORECASE)
        ]
        if timelike:  # matched by row, its times unread: labels for other times or in another order, silently
            raise SchemaError(
                f"{p} has a column {timelike[0]!r} but not the data's time column {cfg.time_column!r}; labels "
                f"are matched by that column: rename {timelike[0]!r} to {cfg.time_column!r} in {p.name}"
            )
    if not cfg.time_column or cfg.time_column not in labels.columns:
        return _by_row(p, values, frame, source)
    _refuse_rows_without_a_time(p, frame, timestamps, cfg, source)
    return _by_time(p, labels, values, frame, timestamps, cfg, source, warn)


def _refuse_rows_without_a_time(
    path: Path, frame: pd.DataFrame, timestamps: np.ndarray, cfg: DataConfig, source: str
) -> None:
    """A labels file matched by time (a CSV with the time column, NAB's windows) has no label for a row without a
    time. Such a row got 0, a label nobody gave it, where a label column (or a file of one label per line) keeps
    the row's own: one rule, every row's label its own, never padded with zeros."""
    timeless = ~np.isfinite(timestamps)
    if timeless.any():
        at = int(np.flatnonzero(timeless)[0])
        more = int(timeless.sum()) - 1
        raise SchemaError(
            f"{source} line {file_line(frame, at)} has no {cfg.time_column}{f' (nor {more} other row(s))' if more else ''}"
            f", so {path} (labels matched by time) cannot label it: give it its time, delete the line, or keep the "
            "labels in a label column of the data (a row without a time keeps its own)"
        )


def _by_row(path: Path, values: np.ndarray, frame: pd.DataFrame, source: str) -> np.ndarray:
    if len(values) != len(frame):
        raise SchemaError(
            f"{path} has {len(values)} labels and {source} has {len(frame)} rows; a label file without a time "
            "column gives one label per data row, in order"
        )
    return values


def _by_time(
    path: Path,
    labels: pd.DataFrame,
    values: np.ndarray,
    frame: pd.DataFrame,
    timestamps: np.ndarray,
    cfg: DataConfig,
    source: str,
    warn: Callable[[str], None] | None = None,
) -> np.ndarray:
    keyed = bool(cfg.key_column) and cfg.key_column in labels.columns and cfg.key_column in frame.columns
    on = ["key", "t"] if keyed else ["t"]
    try:
        times = to_epoch_seconds(labels[cfg.time_column], cfg, labels)
    except DataError as exc:  # the labels file's times, not the data's
        raise DataError(f"{path}: {exc}") from None
    table = pd.DataFrame({"t": times, "label": values})
    rows = pd.DataFrame({"t": timestamps})
    if keyed:
        table["key"] = labels[cfg.key_column].astype(str).to_numpy()
        rows["key"] = frame[cfg.key_column].astype(str).to_numpy()
    repeated = table.duplicated(on)
    if repeated.any():
        at = int(np.flatnonzero(repeated.to_numpy())[0])
        # the data's series told apart by a key column the labels file lacks: say so, not only the repeat
        unkeyed = bool(cfg.key_column) and cfg.key_column in frame.columns and not keyed
        hint = (
            f"; {source} holds several series (key column {cfg.key_column!r}): add that column to {path.name} to "
            "label each series at its own times"
            if unkeyed
            else ""
        )
        raise SchemaError(
            f"{path}: line {file_line(labels, at)} labels a time that an earlier line labels too{hint}"
        )
    if (
        keyed and warn is not None
    ):  # labels of a key the data lacks label nothing: say so, never a silent drop
        absent = ~table["key"].isin(set(rows["key"]))
        if absent.any():
            names = sorted(set(table.loc[absent, "key"]))
            shown = ", ".join(repr(k) for k in names[:10]) + (
                f" and {len(names) - 10} more" if len(names) > 10 else ""
            )
            marked = int((table.loc[absent, "label"] > 0).sum())
            warn(
                f"{path} labels {len(names)} key(s) ({cfg.key_column}) that {source} does not hold: {shown} "
                f"({int(absent.sum())} label(s), {marked} anomalous); they label nothing and are not evaluated"
            )
    found = rows.merge(table, on=on, how="left", validate="many_to_one")["label"]
    missing = found.isna().to_numpy() & np.isfinite(timestamps)
    if missing.any():
        at = int(np.flatnonzero(missing)[0])
        more = int(missing.sum()) - 1
        shift = _zone_shift(timestamps, table["t"].to_numpy(np.float64))
        zone = (
            f"; the labels' times are {abs(shift) / 3600:g} h {'after' if shift > 0 else 'before'} the data's: a "
            "time without an offset is read as UTC, "
            "so write both in UTC or with their offsets (+02:00)"
            if shift
            else ""
        )
        raise SchemaError(
            f"{path} has no label for {source} line {file_line(frame, at)} ({cfg.time_column} "
            f"{frame[cfg.time_column].iloc[at]}){f' nor for {more} other row(s)' if more else ''}; labels are "
            f"matched to the data by {cfg.time_column!r}{' and ' + repr(cfg.key_column) if keyed else ''}{zone}"
        )
    return found.fillna(0).to_numpy(np.int8)


def _zone_shift(data: np.ndarray, labelled: np.ndarray) -> float:
    """The whole number of quarter hours (up to 14 h either way: a UTC offset) that moves every data time onto a
    labelled time, when the times as they are do not all match: a labels file written in local time without
    offsets beside data in UTC or with offsets (or the other way round). 0.0 when no one shift does. Checked on
    up to 1000 data times spread over the file, its first and last included (a shift a quarter hour off the
    true one misses at an end)."""
    finite = np.sort(data[np.isfinite(data)])
    known = np.unique(labelled[np.isfinite(labelled)])
    if not len(finite) or not len(known):
        return 0.0
    times = np.unique(finite[np.linspace(0, len(finite) - 1, min(len(finite), 1000)).astype(np.int64)])
    fits = []
    for quarters in range(-56, 57):
        moved = times + quarters * 900.0
        at = np.minimum(np.searchsorted(known, moved), len(known) - 1)
        if quarters and bool((known[at] == moved).all()):
            fits.append(quarters * 900.0)
    return fits[0] if len(fits) == 1 else 0.0


def _window_labels(path: Path, timestamps: np.ndarray, cfg: DataConfig, source: str) -> np.ndarray:
    """NAB's layout: readings inside one of the data file's [start, end] windows are anomalous."""
    try:
        windows = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path} as JSON: {exc}") from None
    if not isinstance(windows, dict) or not all(isinstance(w, list) for w in windows.values()):
        raise SchemaError(
            f'{path}: a JSON label file maps file names to [start, end] windows ({{"a.csv": [...]}})'
        )
    name = plain_name(source)  # nyc_taxi.csv.gz is labelled by nyc_taxi.csv's windows
    matches = [k for k in windows if k == name or k.replace("\\", "/").endswith("/" + name)]
    if len(matches) > 1:
        raise SchemaError(f"{path} has several entries for {name} ({', '.join(matches)}); keep one")
    if not matches:
        some = f" (it names files such as {next(iter(windows))})" if windows else ""
        raise SchemaError(
            f"{path} has no entry for {name}{some}; a reading is labelled by its own file's windows"
        )
    spans = windows[matches[0]]
    if not all(isinstance(w, list) and len(w) == 2 for w in spans):
        raise SchemaError(f"{path}: the windows of {matches[0]} are not [start, end] pairs")
    edges = pd.Series([t for w in spans for t in w], name=f"{path.name} windows", dtype=object)
    if len(edges) and all(isinstance(t, int | float) for t in edges):
        edges = edges.astype(np.float64)
    elif len(edges):
        edges = edges.astype(str)
    bounds = to_epoch_seconds(edges, dataclasses.replace(cfg, time_format=None)).reshape(-1, 2)
    inside = np.zeros(len(timestamps), bool)
    for start, end in bounds:
        inside |= (timestamps >= start) & (timestamps <= end)
    return inside.astype(np.int8)

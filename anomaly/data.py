"""CSV loading, column mapping, standardization and windowing.

A :class:`Series` is one entity's readings in time order: timestamps in epoch seconds (float64), raw feature
values (float32, shape (n, F)) and optional labels. Files are read with pandas; ';' or ',' is detected.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from anomaly.config import DataConfig
from anomaly.errors import DataError, SchemaError


@dataclass
class Series:
    key: str
    timestamps: np.ndarray  # float64 epoch seconds, shape (n,)
    values: np.ndarray  # float32 raw units, shape (n, F)
    labels: np.ndarray | None = None  # int8 0/1, shape (n,)
    source: str = ""

    def __len__(self) -> int:
        return len(self.timestamps)

    def head(self, n: int) -> Series:
        return Series(
            self.key,
            self.timestamps[:n],
            self.values[:n],
            None if self.labels is None else self.labels[:n],
            self.source,
        )

    def tail_from(self, n: int) -> Series:
        return Series(
            self.key,
            self.timestamps[n:],
            self.values[n:],
            None if self.labels is None else self.labels[n:],
            self.source,
        )


def detect_separator(path: Path) -> str:
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        header = fh.readline()
    return ";" if header.count(";") > header.count(",") else ","


def read_frame(path: str | Path, separator: str | None = None) -> pd.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    sep = separator or detect_separator(p)
    try:
        frame = pd.read_csv(p, sep=sep)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {p} as CSV: {str(exc).splitlines()[0]}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.empty:
        raise DataError(f"{p} has no data rows")
    return frame


def to_epoch_seconds(column: pd.Series) -> np.ndarray:
    """Numbers are taken as epoch seconds; anything else is parsed as a date-time (naive means UTC)."""
    if pd.api.types.is_numeric_dtype(column):
        return column.to_numpy(dtype=np.float64)
    parsed = pd.to_datetime(column, utc=True, errors="coerce")
    if parsed.isna().any():
        bad = column[parsed.isna()].iloc[0]
        raise DataError(f"cannot parse time value {bad!r} in column {column.name!r}")
    seconds = (parsed - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    return seconds.to_numpy(dtype=np.float64)


def infer_features(frame: pd.DataFrame, cfg: DataConfig) -> list[str]:
    if cfg.features:
        return list(cfg.features)
    skip = {cfg.time_column, *(cfg.label_columns or ()), cfg.label}
    if cfg.key_column:
        skip.add(cfg.key_column)
    feats = [
        c
        for c in frame.columns
        if c not in skip and pd.api.types.is_numeric_dtype(frame[c]) and frame[c].notna().any()
    ]
    if not feats:
        raise SchemaError("no numeric feature columns found")
    return feats


def check_features(columns: Iterable[str], expected: Sequence[str], where: str) -> None:
    """Raise SchemaError naming missing features (extra columns are allowed only if not numeric features)."""
    have = list(columns)
    missing = [f for f in expected if f not in have]
    if missing:
        raise SchemaError(
            f"{where} is missing feature(s) {', '.join(missing)} that the model needs", missing=missing
        )


def frame_to_series(
    frame: pd.DataFrame, features: Sequence[str], cfg: DataConfig, source: str
) -> list[Series]:
    if cfg.time_column not in frame.columns:
        raise SchemaError(
            f"{source}: time column {cfg.time_column!r} not found; columns are {', '.join(frame.columns)}"
        )
    check_features(frame.columns, features, source)
    ts_all = to_epoch_seconds(frame[cfg.time_column])
    values_all = frame[list(features)].to_numpy(dtype=np.float32)
    labels_all = frame[cfg.label].to_numpy(dtype=np.float64) if cfg.label in frame.columns else None
    if labels_all is not None:
        labels_all = (np.nan_to_num(labels_all) > 0).astype(np.int8)
    if cfg.key_column:
        if cfg.key_column not in frame.columns:
            raise SchemaError(f"{source}: key column {cfg.key_column!r} not found")
        keys = frame[cfg.key_column].astype(str).to_numpy()
        groups = pd.unique(keys)
    else:
        keys = None
        groups = [Path(source).stem if source else "series"]
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
    paths: Sequence[str | Path], cfg: DataConfig, features: Sequence[str] | None = None
) -> tuple[list[Series], list[str]]:
    """Read every file into series. Features come from `features`, the config, or the first file's numerics.

    When several files hold series of the same key (no key column), the file stem keeps them apart, and two
    files with the same stem get their relative path as key.
    """
    if not paths:
        raise DataError("no data files given")
    series: list[Series] = []
    feats = list(features) if features else None
    seen: set[str] = set()
    for path in paths:
        frame = read_frame(path, cfg.separator)
        if feats is None:
            feats = infer_features(frame, cfg)
        part = frame_to_series(frame, feats, cfg, str(path))
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


# The default gap rule: a key whose readings stop for longer than this many sampling intervals starts fresh
# (1-second data: 300 s). Training splits series at the same gaps, so train and replay agree.
GAP_INTERVALS = 300
FALLBACK_MAX_GAP_SECONDS = 300.0  # bundles trained before the interval was learnt


def sampling_interval(series: Sequence[Series]) -> float | None:
    """The median step between consecutive readings over all series (seconds); None when no series has two
    readings at distinct times."""
    steps = [np.diff(s.timestamps) for s in series if len(s) > 1]
    pooled = np.concatenate(steps) if steps else np.zeros(0)
    pooled = pooled[np.isfinite(pooled) & (pooled > 0)]
    return float(np.median(pooled)) if len(pooled) else None


def default_max_gap(interval: float | None) -> float:
    return FALLBACK_MAX_GAP_SECONDS if interval is None else GAP_INTERVALS * interval


def split_at_gaps(series: Sequence[Series], max_gap: float) -> list[Series]:
    """Cut every series where consecutive readings are more than `max_gap` seconds apart, as the engine resets
    a key there. Pieces keep the series key (they are never streamed, only trained on)."""
    out = []
    for s in series:
        cuts = (np.flatnonzero(np.diff(s.timestamps) > max_gap) + 1).tolist()
        for lo, hi in zip([0, *cuts], [*cuts, len(s)], strict=True):
            out.append(
                Series(
                    s.key,
                    s.timestamps[lo:hi],
                    s.values[lo:hi],
                    None if s.labels is None else s.labels[lo:hi],
                    s.source,
                )
            )
    return out


@dataclass(frozen=True)
class Scaler:
    """Standardization fitted on training data only; constant columns get scale 1."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray) -> Scaler:
        finite = values[np.isfinite(values).all(axis=1)]
        if len(finite) == 0:
            raise DataError("no finite rows to fit the scaler on")
        mean = finite.mean(axis=0).astype(np.float32)
        std = finite.std(axis=0).astype(np.float32)
        std[std < 1e-8] = 1.0
        return cls(mean, std)

    def transform(self, values: np.ndarray) -> np.ndarray:
        return ((values - self.mean) / self.scale).astype(np.float32)

    def to_json(self) -> dict:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> Scaler:
        return cls(np.asarray(d["mean"], np.float32), np.asarray(d["scale"], np.float32))


def window_chain(values: np.ndarray, window: int, offset: int = 0) -> np.ndarray:
    """Consecutive non-overlapping windows starting at `offset`: shape (n_windows, window, F)."""
    usable = (len(values) - offset) // window
    if usable <= 0:
        return np.zeros((0, window, values.shape[1]), np.float32)
    return values[offset : offset + usable * window].reshape(usable, window, values.shape[1])


def fingerprint(series: Sequence[Series]) -> str:
    """A short content hash of training data, stored in the bundle to tell what a model was trained on."""
    h = hashlib.sha256()
    for s in series:
        h.update(s.key.encode())
        h.update(np.ascontiguousarray(s.values).tobytes())
        h.update(np.ascontiguousarray(s.timestamps).tobytes())
    return h.hexdigest()[:16]

"""Backtest plots: one PNG per series showing what the engine saw, scored and alerted on.

Each figure has two panels sharing the time axis. The top one stacks the raw features, each standardized over
the plotted series (so shapes, not units, are compared) and offset vertically with its name, mean and standard
deviation on the y axis (at most MAX_FEATURES_DRAWN of them, chosen by :func:`drawn_features`). Readings the
engine rejected are shaded grey in both panels. The
bottom one shows the score, the threshold in force, the points flagged anomalous and the alert spans (from alert
start to end; an alert still open is drawn to the series end). Labelled anomalies, when a ``label`` column is
present, are shaded in both panels. Matplotlib runs on the Agg backend, so no display is needed.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from anomaly.atomic import atomic_path  # noqa: E402
from anomaly.evaluation import segments  # noqa: E402

RESULT_COLUMNS = (
    "key",
    "timestamp",
    "error",
    "score",
    "threshold",
    "anomalous",
    "alert_open",
    "label",
    "rejected",
)
REQUIRED_COLUMNS = RESULT_COLUMNS[:-2]
STACK_OFFSET = 4.0  # vertical distance between standardized features, in standard deviations
MAX_FEATURES_DRAWN = 12  # beyond this the stacked names (and their mean ± sd) overlap in the panel's height


def drawn_features(
    frame: pd.DataFrame, features: Sequence[str], alerts: Iterable[Mapping[str, Any]], key: str
) -> list[str]:
    """The features the top panel draws: all of them up to MAX_FEATURES_DRAWN; beyond that, those with the
    highest error share in the key's alerts (`top_features`), then those that stray furthest from their median
    (in robust standard deviations, from the MAD) at the points flagged anomalous, or over the whole series when
    none was flagged.
    Chosen ones keep the file's order."""
    if len(features) <= MAX_FEATURES_DRAWN:
        return list(features)
    share: dict[str, float] = {}
    for a in alerts:
        if str(a.get("key")) == key:
            for t in a.get("top_features") or []:
                name, value = str(t.get("feature")), float(t.get("share", 0.0))
                share[name] = max(share.get(name, 0.0), value)
    flagged = frame["anomalous"].fillna(False).to_numpy().astype(bool)
    rows = flagged if flagged.any() else np.ones(len(frame), bool)
    stray = {}
    for name in features:
        values = frame[name].to_numpy(np.float64)
        seen = values[np.isfinite(values)]
        if not len(seen):
            stray[name] = 0.0
            continue
        middle = float(np.median(seen))  # median and MAD: a long excursion does not widen its own yardstick
        spread = 1.4826 * float(np.median(np.abs(seen - middle))) or float(seen.std()) or 1.0
        z = np.abs(values[rows] - middle) / spread
        z = z[np.isfinite(z)]
        stray[name] = float(z.max()) if len(z) else 0.0
    ranked = sorted(features, key=lambda f: (-share.get(f, 0.0), -stray[f]))
    chosen = set(ranked[:MAX_FEATURES_DRAWN])
    return [f for f in features if f in chosen]


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """The raw feature columns: numeric, non-boolean columns that are not one of the per-point result columns."""
    return [
        c
        for c in frame.columns
        if c not in RESULT_COLUMNS
        and pd.api.types.is_numeric_dtype(frame[c])
        and not pd.api.types.is_bool_dtype(frame[c])
    ]


def safe_name(key: str) -> str:
    """A file name for a series key: anything but letters, digits, '.', '_' and '-' becomes '_'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._") or "series"


def _times(values: Any) -> pd.DatetimeIndex:
    """Epoch seconds (or anything pandas parses) as UTC date-times for the x axis, without a time zone:
    matplotlib converts zone-aware times one by one at every line drawn (2M readings took minutes to plot),
    naive ones as one array; the axis shows UTC either way."""
    series = pd.Series(values)
    if pd.api.types.is_numeric_dtype(series):
        return pd.DatetimeIndex(pd.to_datetime(series.to_numpy(np.float64), unit="s"))
    return pd.DatetimeIndex(pd.to_datetime(series, utc=True)).tz_localize(None)


def _shade(ax: Any, times: pd.DatetimeIndex, mask: np.ndarray, **style: Any) -> None:
    for start, stop in segments(mask):
        ax.axvspan(times[start], times[stop - 1], **style)
        style.pop("label", None)  # one legend entry per panel


def plot_series(
    frame: pd.DataFrame, alerts: Iterable[Mapping[str, Any]], path: str | Path, title: str | None = None
) -> Path:
    """Draw one series' results (rows of a single key, any order) and its alerts into a PNG at `path`.

    `alerts` are ``Alert.to_json()`` dicts; those of other keys are ignored, and an "open" and a "closed"
    record with the same id draw one span (the closed one's end wins).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"result frame lacks column(s) {', '.join(missing)}; expected {', '.join(RESULT_COLUMNS)}"
        )
    if pd.api.types.is_numeric_dtype(frame["timestamp"]):  # a reading without a time has no place on the axis
        frame = frame[np.isfinite(frame["timestamp"].to_numpy(np.float64))]  # (rejections.jsonl lists it)
    if frame.empty:
        raise ValueError("result frame has no rows to plot")
    frame = frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
    key = str(frame["key"].iloc[0])
    times = _times(frame["timestamp"])
    every = feature_columns(frame)
    alerts = list(alerts)
    features = drawn_features(frame, every, alerts, key)

    fig, (top, bottom) = plt.subplots(
        2, 1, sharex=True, figsize=(14, 8), height_ratios=(3, 2), layout="constrained"
    )
    label = frame["label"].fillna(0).to_numpy().astype(bool) if "label" in frame.columns else None

    names = []
    for i, name in enumerate(features):
        values = frame[name].to_numpy(np.float64)
        seen = values[np.isfinite(values)]  # a sensor all missing (every reading refused) draws nothing
        mean, std = (float(seen.mean()), float(seen.std())) if len(seen) else (0.0, 0.0)
        z = (values - mean) / (std if std > 1e-12 else 1.0)
        top.plot(times, z - i * STACK_OFFSET, linewidth=0.8)
        names.append(f"{name}\n{mean:.4g} ± {std:.3g}")  # the scale: mean ± one standard deviation
    top.set_yticks([-i * STACK_OFFSET for i in range(len(features))], names, fontsize="small")
    top.set_ylabel(f"standardized, {STACK_OFFSET:g} sd apart")
    heading = title or f"{key}: standardized signals"
    if len(features) < len(every):
        heading += (
            f"\n{len(features)} of {len(every)} features drawn: the highest error share in alerts, then the "
            "furthest from their median where flagged (all are in scores.csv)"
        )
    top.set_title(heading)

    bottom.plot(times, frame["score"].to_numpy(np.float64), color="tab:blue", linewidth=0.9, label="score")
    bottom.plot(
        times,
        frame["threshold"].to_numpy(np.float64),
        color="black",
        linestyle="--",
        linewidth=0.9,
        label="threshold",
    )
    flagged = frame["anomalous"].fillna(False).to_numpy().astype(bool)
    if flagged.any():
        bottom.scatter(
            times[flagged],
            frame["score"].to_numpy(np.float64)[flagged],
            s=6,
            color="tab:red",
            zorder=3,
            label="anomalous point",
        )
    bottom.set_yscale("symlog", linthresh=1.0)
    bottom.set_ylabel("score (1.0 = calibration quantile)")

    if "rejected" in frame.columns:
        refused = frame["rejected"].fillna("").astype(str).str.len().to_numpy() > 0
        for j, (first, stop) in enumerate(segments(refused)):
            # from the reading before the hole to the one after it, so a single refused reading shows
            lo, hi = times[max(first - 1, 0)], times[min(stop, len(times) - 1)]
            top.axvspan(lo, hi, color="0.5", alpha=0.3)
            bottom.axvspan(lo, hi, color="0.5", alpha=0.3, label="rejected reading" if j == 0 else None)
    if label is not None:
        _shade(top, times, label, color="tab:orange", alpha=0.15)
        _shade(bottom, times, label, color="tab:orange", alpha=0.15, label="labelled anomaly")
    for i, (start, end) in enumerate(alert_spans(alerts, key, times[-1].timestamp())):
        span = _times([start, end])
        bottom.axvspan(
            span[0],
            span[1],
            ymin=0.92,
            ymax=1.0,
            color="tab:red",
            alpha=0.7,
            label="alert" if i == 0 else None,
        )
        top.axvline(span[0], color="tab:red", linewidth=0.8, alpha=0.6)
    # outside the axes, so it never covers an alert (alerts often start near the left edge)
    bottom.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize="small", borderaxespad=0.0)
    bottom.set_xlabel("time (UTC)")

    out = Path(path)
    try:
        with atomic_path(out, "report") as tmp, warnings.catch_warnings():
            # a sensor or key named in a script the font lacks (压力, ...) is drawn as boxes; matplotlib's
            # UserWarning per missing glyph, with its file and line, reads like a failure on a replay's stderr
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
            fig.savefig(tmp, dpi=100, format=out.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return out


def alert_spans(
    alerts: Iterable[Mapping[str, Any]], key: str, series_end: float
) -> list[tuple[float, float]]:
    """(start, end) epoch seconds of each alert of `key`; an alert never closed ends at `series_end`. One alert is
    one start (not one id: ``key@start-ms`` names two alerts that start within one millisecond alike)."""
    spans: dict[float, tuple[float, float]] = {}
    for a in alerts:
        if str(a.get("key")) != key:
            continue
        start = float(a["start"])
        end = a.get("end")
        if end is not None or start not in spans:
            spans[start] = (start, float(end) if end is not None else series_end)
    return sorted(spans.values())


def write_reports(
    frame: pd.DataFrame, alerts: Sequence[Mapping[str, Any]], out_dir: str | Path
) -> list[Path]:
    """One PNG per key of `frame` in `out_dir`, named after the key; returns the paths written."""
    if "key" not in frame.columns:
        raise ValueError(f"result frame lacks column key; expected {', '.join(RESULT_COLUMNS)}")
    out = Path(out_dir)
    written = []
    used: set[str] = set()
    for key, rows in frame.groupby("key", sort=True):
        name = safe_name(str(key))
        while name in used:
            name += "_"
        used.add(name)
        written.append(plot_series(rows, alerts, out / f"{name}.png"))
    return written

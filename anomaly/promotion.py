"""Champion vs challenger: shadow evaluation on a recent held-out slice, a promotion policy, atomic promotion.

Both models score the same slice through the engine and the replay loop (so the numbers are what the daemon
would have produced). Compared: alerts opened per 1,000 readings, the share of readings inside an alert, score
quantiles, drift of each model's point errors against its own calibration (PSI, as the daemon exports it), and
— when the slice carries labels — SKAB's point-wise F1/FAR/MAR. :class:`PromotionPolicy` turns that into a
decision with reasons. Promotion writes the challenger, its lineage completed with the decision, over the
champion's file with one atomic rename: the daemon's hot reload sees either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from anomaly import evaluation
from anomaly.atomic import atomic_path, check_writable, unwritable
from anomaly.bundle import Bundle, save_bundle
from anomaly.config import EngineConfig
from anomaly.data import Series
from anomaly.drift import DEFAULT_MIN_POINTS, DriftMonitor
from anomaly.engine import Engine
from anomaly.errors import DataError
from anomaly.replay import merged_batches, point_frame
from anomaly.runner import run
from anomaly.sinks.files import WindowCollector


@dataclass
class ShadowResult:
    """One model on the evaluation slice."""

    version: str
    readings: int
    windows: int
    alerts_opened: int
    alert_rate: float  # alerts opened per 1,000 readings
    alert_share: float  # share of scored readings inside an open alert
    score_p50: float
    score_p99: float
    drift_psi: float | None  # point errors vs this model's calibration, over the whole slice
    metrics: dict[str, Any] | None = None  # F1, FAR, MAR, ... when the slice is labelled
    scored: int = 0  # point errors the drift PSI is made of (readings the model scored)
    # when the slice is labelled: alerts that overlap no labelled anomaly (replay's false alerts: predicted
    # segments matching no labelled event) plus every alert of a series without labels
    false_alerts: int | None = None
    # how a reading counts as predicted anomalous for F1/FAR/MAR, as `anomaly replay --predict` (the pipeline's
    # replay.predict): "alert", inside an open alert, or "point", flagged by the engine
    predict: str = "alert"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if self.metrics is not None:
            out["metrics"] = {
                k: self.metrics[k] for k in ("f1", "far", "mar", "precision", "recall") if k in self.metrics
            }
        return out


def _evaluate(s: Series, features: Sequence[str], got: dict[str, np.ndarray], predict: str) -> dict[str, Any]:
    f = point_frame(s, features, got, predict)
    return evaluation.evaluate(
        f["label"].to_numpy(),
        f["predicted"].to_numpy(),
        f["timestamp"].to_numpy(),
        f["decided_at"].to_numpy() if "decided_at" in f else None,
    )


def shadow_score(
    bundle: Bundle, series: Sequence[Series], engine_cfg: EngineConfig, predict: str = "alert"
) -> ShadowResult:
    """Score `series` with `bundle` through a fresh engine and the replay loop. F1/FAR/MAR count a reading as
    predicted anomalous per ``predict`` (replay's `--predict`); false alerts are alerts whichever it is."""
    if predict not in ("alert", "point"):
        raise ValueError(f"predict must be 'alert' or 'point', got {predict!r}")
    engine = Engine(bundle, engine_cfg)
    collector = WindowCollector()
    opened: dict[str, int] = {}

    def count(batch: Any, out: Any) -> None:
        for a in out.alerts:
            if a.status == "open":
                opened[a.key] = opened.get(a.key, 0) + 1

    totals = run(engine, merged_batches(series, 4096), [collector], on_batch=count, finish=True)
    scores, errors, inside, labelled, false_alerts = [], [], [], [], 0
    unlabelled_alerts = 0
    for s in series:
        got = collector.arrays(s.key)
        scores.append(got["scores"])
        errors.append(got["errors"])
        inside.append(got["alert_open"])
        if s.labels is None:
            unlabelled_alerts += opened.get(s.key, 0)
        else:
            by_alert = _evaluate(s, bundle.features, got, "alert")
            false_alerts += by_alert["counts"]["events"]["false_alerts"]
            labelled.append(by_alert if predict == "alert" else _evaluate(s, bundle.features, got, predict))
    sc = np.concatenate(scores) if scores else np.zeros(0)
    er = np.concatenate(errors) if errors else np.zeros(0)
    op = np.concatenate(inside) if inside else np.zeros(0, bool)
    er = er[np.isfinite(er)]
    drift = DriftMonitor.for_calibration(bundle.calibration, window=max(1, len(er)), min_points=1)
    psi = None
    if drift is not None and len(er) >= DEFAULT_MIN_POINTS:  # as the daemon: no PSI of a handful of points
        drift.update(er)
        psi = drift.value()
    readings = int(totals["readings"])
    metrics = evaluation.pool(labelled) if labelled else None
    n_opened = sum(opened.values())
    return ShadowResult(
        bundle.version,
        readings,
        int(totals["windows"]),
        n_opened,
        1000.0 * n_opened / max(readings, 1),
        float(op.mean()) if len(op) else 0.0,
        float(np.quantile(sc, 0.5)) if len(sc) else float("nan"),
        float(np.quantile(sc, 0.99)) if len(sc) else float("nan"),
        psi,
        metrics,
        len(er),
        None if metrics is None else false_alerts + unlabelled_alerts,
        predict,
    )


def _one_class(metrics: dict[str, Any]) -> str | None:
    """Why F1 says nothing about a slice whose labels are all 0 or all 1 (None when it has both)."""
    c = (metrics.get("counts") or {}).get("point")
    if not c:
        return None
    if c["tp"] + c["fn"] == 0:
        return "no reading of the slice is labelled anomalous"
    if c["fp"] + c["tn"] == 0:
        return "every reading of the slice is labelled anomalous"
    return None


def false_alert_counts(champion: ShadowResult, challenger: ShadowResult) -> tuple[int, int] | None:
    """(champion's, challenger's) false alerts when the alert rule counts them: when the slice's labels hold
    both classes, which tell a true alert from a false one (a challenger that finds more labelled anomalies opens
    more alerts, and counting those against it would keep a stale champion in place); else None."""
    a, b = champion.false_alerts, challenger.false_alerts
    if a is None or b is None or challenger.metrics is None or _one_class(challenger.metrics):
        return None
    return a, b


@dataclass(frozen=True)
class PromotionPolicy:
    """When a challenger replaces the champion.

    With labels: its F1 must be at least the champion's minus `f1_tolerance`. Always: it must not open more
    alerts than the champion's times `max_alert_rate_ratio` plus `alert_allowance` alerts, and its own drift on
    the slice must be at most `max_drift_psi` (a model that does not describe recent data should not go live).
    When the slice's labels hold both classes, the alert rule counts false alerts only (alerts overlapping no
    labelled anomaly, as replay counts them; every alert of a series without labels): the alerts a better
    challenger opens on labelled anomalies are what F1 rewards, not a reason to reject it.

    Both models stream the same slice, so alerts opened compare as counts (the same as per 1,000 readings). The
    allowance is what makes small counts sensible: a ratio alone of a champion that opened no alert on a quiet
    stream is 0, and any challenger that alerts once would be rejected forever; one alert more (the default) is
    within the noise of counts that small, while on a busy stream the ratio decides."""

    f1_tolerance: float = 0.0
    max_alert_rate_ratio: float = 1.0
    alert_allowance: int = 1
    max_drift_psi: float = 0.25

    def __post_init__(self) -> None:
        if not 0 <= self.f1_tolerance <= 1:
            raise ValueError(f"f1_tolerance must be in [0, 1], got {self.f1_tolerance}")
        if self.max_alert_rate_ratio < 0 or self.alert_allowance < 0 or self.max_drift_psi < 0:
            raise ValueError("max_alert_rate_ratio, alert_allowance and max_drift_psi must be >= 0")

    def decide(self, champion: ShadowResult, challenger: ShadowResult) -> tuple[bool, list[str]]:
        reasons = []
        ok = True
        one_class = None if challenger.metrics is None else _one_class(challenger.metrics)
        if one_class:
            reasons.append(f"F1: not measurable ({one_class}); labels not used")
        elif champion.metrics is not None and challenger.metrics is not None:
            f1c, f1h = challenger.metrics["f1"], champion.metrics["f1"]
            good = f1c >= f1h - self.f1_tolerance
            ok &= good
            reasons.append(
                f"F1 {f1c:.4f} vs champion {f1h:.4f} (prediction = {challenger.predict}; "
                f"{'ok' if good else 'worse'}; tolerance {self.f1_tolerance:g})"
            )
        false = false_alert_counts(champion, challenger)
        against, counted = (champion.alerts_opened, challenger.alerts_opened) if false is None else false
        limit = against * self.max_alert_rate_ratio + self.alert_allowance
        good = counted <= limit + 1e-9
        ok &= good
        verdict = (
            f"{'ok' if good else 'more'}; limit {limit:g} = {self.max_alert_rate_ratio:g} x the champion's "
            f"+ {self.alert_allowance}"
        )
        if false is None:
            reasons.append(
                f"alerts opened {counted} vs champion {against} ({challenger.alert_rate:.3f} vs "
                f"{champion.alert_rate:.3f} per 1,000 readings; {verdict})"
            )
        else:
            reasons.append(
                f"false alerts {counted} vs champion {against} (alerts overlapping no labelled anomaly, of "
                f"{challenger.alerts_opened} vs {champion.alerts_opened} opened; {verdict})"
            )
        if challenger.drift_psi is None and challenger.scored < DEFAULT_MIN_POINTS:
            ok = False  # a slice this small decides nothing; --force still promotes (a rollback)
            reasons.append(
                f"drift: not measurable on {challenger.scored} scored readings (needs {DEFAULT_MIN_POINTS}; "
                "widen the slice)"
            )
        elif challenger.drift_psi is None:
            reasons.append("drift: not measurable (no calibration quantiles)")
        else:
            good = challenger.drift_psi <= self.max_drift_psi
            ok &= good
            champion_psi = "n/a" if champion.drift_psi is None else f"{champion.drift_psi:.3f}"
            reasons.append(
                f"drift PSI {challenger.drift_psi:.3f} vs champion {champion_psi} "
                f"({'ok' if good else 'too high'}; limit {self.max_drift_psi:g})"
            )
        return ok, reasons


@dataclass
class Comparison:
    champion: ShadowResult
    challenger: ShadowResult
    promote: bool
    reasons: list[str]
    forced: bool = False
    slice: dict[str, Any] = field(default_factory=dict)

    def decision(self) -> dict[str, Any]:
        return {
            "decision": "promoted" if self.promote or self.forced else "rejected",
            "policy_passed": self.promote,
            "forced": self.forced,
            "reasons": self.reasons,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "champion": self.champion.to_json(),
            "challenger": self.challenger.to_json(),
            "slice": self.slice,
        }


def _feature_difference(champion: Bundle, challenger: Bundle, shown: int = 5) -> str:
    """What differs, in words: the features only one model has, or the same ones in another order (a message's
    values are read by position, so the order matters as much)."""
    a, b = champion.features, challenger.features

    def names(fs: list[str]) -> str:
        return ", ".join(fs[:shown]) + (f" and {len(fs) - shown} more" if len(fs) > shown else "")

    if sorted(a) == sorted(b):
        at = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
        return f"the same {len(a)} in another order: feature {at + 1} is {a[at]} vs {b[at]}"
    only_a = [f for f in a if f not in b]
    only_b = [f for f in b if f not in a]
    parts = [f"{len(a)} vs {len(b)}"]
    if only_a:
        parts.append(f"only the champion's: {names(only_a)}")
    if only_b:
        parts.append(f"only the challenger's: {names(only_b)}")
    return "; ".join(parts)


def is_export(bundle: Bundle) -> bool:
    """An int8 (or ONNX) export rather than the float32 bundle it came from: `anomaly retrain` cannot start
    from it, nor `anomaly export` again."""
    return bool(bundle.meta.get("quantization") or bundle.meta.get("export"))


def replaces_float32(champion: Bundle, challenger: Bundle) -> bool:
    """Promoting ``challenger`` would put an export (int8) where a float32 champion is: its float32 weights
    would then be kept only in the rollback copy, which the next promotion replaces, and `anomaly retrain -m`
    the champion's file is refused (it needs float32 weights)."""
    return is_export(challenger) and not is_export(champion)


def compare(
    champion: Bundle,
    challenger: Bundle,
    series: Sequence[Series],
    engine_cfg: EngineConfig,
    policy: PromotionPolicy,
    slice_info: dict[str, Any] | None = None,
    predict: str = "alert",
) -> Comparison:
    if not series or not sum(len(s) for s in series):
        raise DataError("the evaluation slice is empty: nothing to compare the models on")
    if champion.features != challenger.features:
        raise DataError(
            f"champion and challenger have different features ({_feature_difference(champion, challenger)}); "
            "they cannot score the same stream"
        )
    if str(challenger.meta.get("export", {}).get("format")) == "onnx":
        raise DataError("an ONNX export cannot be promoted: promote the .pt bundle it was exported from")
    a = shadow_score(champion, series, engine_cfg, predict)
    b = shadow_score(challenger, series, engine_cfg, predict)
    if not a.scored and not b.scored:
        raise DataError(
            f"no reading of the evaluation slice could be scored ({a.readings:,} streamed; missing values "
            "are refused under engine.nan_policy = 'reject'): nothing to compare the models on"
        )
    ok, reasons = policy.decide(a, b)
    return Comparison(a, b, ok, reasons, slice=dict(slice_info or {}))


def with_decision(challenger: Bundle, comparison: Comparison) -> Bundle:
    """The challenger with the decision recorded in its lineage (a copy; the model is shared). The parent is the
    model a challenger was retrained from, kept as retrain recorded it; a bundle not made by retrain has none (the
    champion it replaces is in the decision): it was given the replaced champion as its parent, so a rollback
    onto `model.pt.previous` named as its parent the very challenger retrained from it."""
    meta = copy.deepcopy(challenger.meta)
    lineage = meta.setdefault("lineage", {})
    lineage.setdefault("parent_version", None)
    lineage["promotion"] = comparison.decision()
    return Bundle(challenger.model, challenger.features, challenger.scaler, challenger.calibration, meta)


# Identity of a champion file when it was loaded (device, inode, size, modification time), None: no file.
Identity = tuple[int, int, int, int] | None


def identity(path: str | Path) -> Identity:
    """The file's identity, to tell later whether it was replaced or rewritten; None when it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _check_unchanged(target: Path, loaded: Identity | bool) -> None:
    """DataError when the champion file is no longer the one compared with (`loaded`; False: not checked)."""
    if loaded is not False and identity(target) != loaded:
        raise DataError(
            f"{target} changed while the challenger was compared with it (another promotion, or a copy over it): "
            "it was not replaced; run the promotion again to compare with the model it holds now"
        )


def lock_path(champion_path: str | Path) -> Path:
    """The lock file of a champion's promotions: hidden, beside it (`.model.pt.lock`)."""
    target = Path(champion_path)
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def promotion_lock(champion_path: str | Path) -> Iterator[None]:
    """Hold the champion's promotion lock (an exclusive ``flock`` on :func:`lock_path`) for the block, or raise
    DataError at once when another promotion holds it. Two promotions at once each copied the file they found to
    `.previous` and renamed their challenger over it: the second compared its challenger with a champion that was
    gone by then, and could copy the first one's challenger over the only copy of the old champion. The lock
    file stays (removing it would let a third process lock a file the second had just opened); a process that
    ends, however, releases its lock."""
    import fcntl

    target = Path(champion_path)
    check_writable(target, "model bundle")  # a read-only folder: refused before any data is read
    lock = lock_path(target)
    if not lock.parent.is_dir():  # a first install into a folder the promotion makes: nothing to lock yet
        yield  # (a second install that made it meanwhile is caught by the identity check before the rename)
        return
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise unwritable(target, exc, "model bundle") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(
                f"another promotion of {target} is running (it holds {lock}): let it finish, then run this one "
                "again to compare with the champion it leaves"
            ) from None
        yield
    finally:
        os.close(fd)


def promote(
    challenger: Bundle,
    champion_path: str | Path,
    comparison: Comparison,
    keep_previous: bool = True,
    loaded: Identity | bool = False,
) -> Path:
    """Replace the champion file with the challenger in one rename (save_bundle writes a temp file in the same
    folder, then os.replace). The old champion is kept as `<file>.previous` for a rollback; that copy is made
    the same way, so an interrupted promotion never leaves a half-copied `.previous` in place of the last one.
    `loaded`: the champion's :func:`identity` when it was loaded for the comparison; a file that has changed
    since is not replaced (DataError)."""
    target = Path(champion_path)
    _check_unchanged(target, loaded)
    if keep_previous and target.exists():
        previous = target.with_name(target.name + ".previous")
        with atomic_path(previous, "previous model bundle") as tmp:
            shutil.copy2(target, tmp)
    return save_bundle(with_decision(challenger, comparison), target)


UNREADABLE_SUFFIX = ".unreadable"


def install(
    challenger: Bundle,
    champion_path: str | Path,
    champion_state: str,
    reason: str,
    loaded: Identity | bool = False,
) -> Path:
    """Install the challenger where no champion can be compared with it (`promote --force` onto a champion file
    that is missing, `champion_state` "missing", or cannot be loaded, "unreadable"): a first deploy, or a
    rollback onto a damaged file. The same single rename as :func:`promote`, with the decision recorded as
    forced and without numbers. An unreadable old file is kept as `<file>.unreadable` (copied atomically, for
    a post-mortem); `<file>.previous` is left alone, since it is the last model that loaded (often the very
    challenger of the rollback) and the copy a later rollback needs. `loaded`: as for :func:`promote` (None: the
    file was missing, and one that has appeared since is not replaced)."""
    target = Path(champion_path)
    if champion_state not in ("missing", "unreadable"):
        raise ValueError(f"champion_state must be 'missing' or 'unreadable', got {champion_state!r}")
    _check_unchanged(target, loaded)
    if champion_state == "unreadable" and target.exists():
        with atomic_path(target.with_name(target.name + UNREADABLE_SUFFIX), "unreadable model bundle") as tmp:
            shutil.copy2(target, tmp)
    meta = copy.deepcopy(challenger.meta)
    lineage = meta.setdefault("lineage", {})
    lineage.setdefault("parent_version", None)
    lineage["promotion"] = {
        "decision": "promoted",
        "policy_passed": False,
        "forced": True,
        "champion_state": champion_state,
        "reasons": [reason],
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "champion": None,
        "challenger": None,
        "slice": {},
    }
    bundle = Bundle(challenger.model, challenger.features, challenger.scaler, challenger.calibration, meta)
    return save_bundle(bundle, target)

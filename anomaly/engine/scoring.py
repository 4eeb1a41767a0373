"""Batched scoring: one model call for the pieces of many keys (encoder state gathered from and scattered back
to the store), then per-point errors and scores, the stuck-sensor rule, the threshold in force, the alert
lifecycle, and the ScoredWindows (whole windows at once, or readings through the report buffers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from anomaly.bundle import Bundle
from anomaly.config import EngineConfig
from anomaly.engine.alerts import AlertLifecycle
from anomaly.engine.levels import LevelTracker
from anomaly.engine.part import Part
from anomaly.engine.report import ReportBuffers
from anomaly.engine.state import StateStore, put_rows, take_rows
from anomaly.engine.stuck import stuck_points
from anomaly.engine.types import EngineOutput, ScoredWindow
from anomaly.errors import BundleError
from anomaly.model import as_output, point_error, reading_errors
from anomaly.thresholds import BEYOND_DOUBT, ewma

if TYPE_CHECKING:
    from anomaly.engine.settings import Settings


def feature_references(
    bundle: Bundle, config: EngineConfig, n_features: int, targets: tuple[int, ...] | None
) -> np.ndarray | None:
    """Per-feature reference errors (F,) of engine.score = max_feature, each at least
    feature_reference_floor x their median over the scored features; None for engine.score = mean."""
    if config.score != "max_feature":
        return None
    ref = bundle.feature_reference_error
    if ref is None or len(ref) != n_features:
        raise BundleError(
            "engine.score = max_feature needs per-feature calibration "
            "(calibration.feature_reference_error); retrain the bundle with this version"
        )
    ref_f = np.asarray(ref, np.float64)
    scored = ref_f if targets is None else ref_f[list(targets)]
    floor = config.feature_reference_floor * float(np.median(scored))
    return np.maximum(ref_f, floor).astype(np.float32)


class BatchScorer(Part):
    """Scores pieces of the keys in `store` with the model of the settings `s` (with its `per_reading`, `targets`,
    `reference`, `feature_reference`, `threshold`, `stuck_limit`); `levels`, `alerts` and `reports` are the
    collaborators a piece goes through after the model."""

    def __init__(
        self,
        store: StateStore,
        config: EngineConfig,
        counters: dict[str, int],
        s: Settings,
        *,
        levels: LevelTracker,
        alerts: AlertLifecycle,
        reports: ReportBuffers,
    ) -> None:
        super().__init__(store, config, counters, s)
        self.levels = levels
        self.alerts = alerts
        self.reports = reports

    def score(
        self, rows: np.ndarray, x: np.ndarray, ts: np.ndarray, keys: list[str], out: EngineOutput
    ) -> None:
        """One batched model call for K pieces (one per key; x is (K, L, F): a whole window, or readings scored
        on arrival), then smoothing, thresholds and alerts."""
        a = self.store.arrays
        k = len(rows)
        if self.s.per_reading:
            fill = a["rep_fill"][rows]  # readings already in each key's report window
            start = fill == 0
            due = rows[start & a["rebase"][rows]]
            if len(due):  # a level shift closed during the last report window
                self.levels.rebaseline(due)
                a["rebase"][due] = False
            partial = self.levels.track_readings(rows, x, ts)
        else:
            partial = self.levels.track(rows, x, ts)
        stuck, stuck_f = stuck_points(a, rows, x, self.s.stuck_limit)
        x = x - take_rows(a["offset"], rows)[:, None, :]
        h = take_rows(a["h"], rows).transpose(1, 0, 2)
        c = take_rows(a["c"], rows).transpose(1, 0, 2)
        xt = torch.from_numpy(np.ascontiguousarray(x))
        ht, ct = torch.from_numpy(np.ascontiguousarray(h)), torch.from_numpy(np.ascontiguousarray(c))
        if k == 1:
            xt, ht, ct = xt.repeat(2, 1, 1), ht.repeat(1, 2, 1), ct.repeat(1, 2, 1)
        with torch.inference_mode():
            if self.s.per_reading:
                outputs, (h2, c2) = self.s.model(xt, (ht, ct), reconstruct=False)
            else:
                outputs, (h2, c2) = self.s.model(xt, (ht, ct))
            err_f = self._reading_errors(outputs, xt, k)
        put_rows(a["h"], rows, h2.numpy()[:, :k].transpose(1, 0, 2))
        put_rows(a["c"], rows, c2.numpy()[:, :k].transpose(1, 0, 2))
        out.batches.append(k)
        out.decided.append(ts)
        errors = self._point_error(err_f)
        # the window's squared error per feature: alert contributions of window-scored keys (readings scored
        # on arrival add theirs reading by reading)
        per_feature = None if self.s.per_reading else err_f.sum(axis=1)
        scores, last = ewma(self._raw_scores(err_f, errors), a["ewma"][rows], self.config.smoothing)
        a["ewma"][rows] = last
        if self.s.per_reading:
            # chosen once per report window, at its first reading, so that the threshold in force does not
            # depend on how the window's readings were grouped into calls (and computed only there)
            eps, warm = a["rep_eps"][rows], a["rep_warm"][rows]
            first = start.nonzero()[0]
            if len(first):
                at = rows[first]
                eps[first], warm[first] = self.s.threshold.epsilon(
                    {name: a[name][at] for name in self.s.threshold.fields()}, len(at)
                )
                a["rep_eps"][rows], a["rep_warm"][rows] = eps, warm
        else:
            eps, warm = self.s.threshold.epsilon(
                {name: a[name][rows] for name in self.s.threshold.fields()}, k
            )
        anomalous = ((scores > eps[:, None]) & warm[:, None]) | stuck
        open_pts = self.alerts.step(
            rows, keys, ts, scores, anomalous, eps, err_f, per_feature, out, partial, stuck_f
        )
        # a score BEYOND_DOUBT times the threshold in force is no level to learn, even before its alert opens
        beyond = (warm & (eps > 0))[:, None] & (scores >= BEYOND_DOUBT * eps[:, None])
        self.s.threshold.update_rows(a, rows, scores, anomalous, open_pts | beyond)
        if self.s.per_reading:
            self.reports.append(
                rows, keys, fill, ts, errors, scores, eps[:, None], anomalous, open_pts, err_f, out
            )
            return
        assert per_feature is not None
        totals = per_feature.sum(axis=1, keepdims=True)
        shares = np.divide(
            per_feature, totals, out=np.full_like(per_feature, 1.0 / self.s.n_features), where=totals > 0
        )
        thresholds = np.broadcast_to(eps[:, None], scores.shape)
        a["windows"][rows] += 1
        self.counters["windows"] += k
        version = self.s.bundle.version
        decided_at = np.repeat(ts[:, -1:], ts.shape[1], axis=1)  # a window is decided by its last reading
        for j, key in enumerate(keys):
            out.windows.append(
                ScoredWindow(
                    key,
                    ts[j],
                    errors[j],
                    scores[j],
                    thresholds[j],
                    anomalous[j],
                    open_pts[j],
                    shares[j],
                    version,
                    decided_at[j],
                )
            )

    def _reading_errors(self, outputs, xt: torch.Tensor, k: int) -> np.ndarray:
        """`model.reading_errors` of the first `k` rows, as numpy (K, L, F). A forecast of every feature: the
        same float32 difference and square (one IEEE operation each, as torch's pow(2) is), in numpy."""
        out = as_output(outputs)
        if out.forecast is None or self.s.targets is not None or out.forecast.dtype != torch.float32:
            return reading_errors(out, xt, self.s.targets)[:k].numpy()
        err = np.subtract(out.forecast.numpy()[:k], xt.numpy()[:k])
        return np.multiply(err, err, out=err)

    def _point_error(self, err_f: np.ndarray) -> np.ndarray:
        """`model.point_error` of per-feature squared errors (K, L, F). Without target features: the sum
        and division numpy's `mean` makes, without its Python wrapper (the same bits)."""
        if self.s.targets is not None:
            return point_error(err_f, self.s.targets)
        errors = np.add.reduce(err_f, axis=-1)
        return np.true_divide(errors, np.intp(err_f.shape[-1]), out=errors, casting="unsafe")

    def _raw_scores(self, err_f: np.ndarray, errors: np.ndarray) -> np.ndarray:
        """Unsmoothed point scores (K, W) from per-feature squared errors (K, W, F) and their mean (K, W).

        `mean`: mean error / the point-error reference. `max_feature`: max over features of err_f / ref_f, each
        feature in units of its own calibration quantile, so a fault that moves one sensor of many is not
        diluted by the quiet ones."""
        if self.s.feature_reference is None:
            return errors / self.s.reference
        return (err_f / self.s.feature_reference).max(axis=2)

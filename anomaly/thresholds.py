"""Thresholds and the alert lifecycle, vectorized across keys. Pure numpy.

Scores arrive one window at a time for many keys at once: arrays of shape (K, W). A threshold kind is a small
strategy object (River's thresholders are the model): it declares the per-key state it keeps (`fields`, rows
of the engine's state store, so snapshots carry it bit for bit), computes each key's epsilon before a window is
judged (`epsilon`), and learns from the judged window afterwards (`update`). Only past scores ever enter, so a
threshold never sees the window it judges. `THRESHOLDS` maps the configured name to the class.

- `static`: one fixed epsilon (the bundle's calibrated default or `engine.static_threshold`); no state.
- `dynamic`: a causal, streaming version of Telemanom's nonparametric dynamic thresholding (Hundman et al.,
  KDD 2018). Each key keeps the last N smoothed scores seen while no alert was open; epsilon = mean + z * std
  of that history with z maximising (relative drop of mean + relative drop of std when points above epsilon
  are removed) / (points above + contiguous sequences above ** 2). The search is `anomaly.epsilon`.
- `spot` / `dspot`: streaming peaks-over-threshold (Siffer et al., KDD 2017), see `SpotThreshold`.

The step loops below are short Python loops over the W points of a window, each a whole-array operation over
keys, so per-key state evolves exactly as if the points had come one by one, whatever the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from anomaly.epsilon import Z_GRID as Z_GRID
from anomaly.epsilon import ordered_history as ordered_history
from anomaly.epsilon import select_epsilon

if TYPE_CHECKING:
    from anomaly.config import EngineConfig


def push_history(
    hist: np.ndarray,
    pushed: np.ndarray,
    values: np.ndarray,
    mask: np.ndarray,
    rows: np.ndarray | None = None,
) -> None:
    """Append values[k, i] where mask[k, i] (in point order) to each key's ring buffer, in place.

    With `rows` (K,) distinct, `hist` and `pushed` are the whole store's columns and key k is row rows[k]: only
    the slots written and the counters move, instead of gathering and scattering every key's whole ring."""
    n = hist.shape[1]
    for i in range(values.shape[1]):
        sel = mask[:, i].nonzero()[0]
        if len(sel):
            at = sel if rows is None else rows[sel]
            hist[at, pushed[at] % n] = values[sel, i]
            pushed[at] += 1


def ewma(raw: np.ndarray, last: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """EWMA along axis 1 for (K, W) raw scores; `last` (K,) is NaN for keys with no previous value."""
    out = np.empty_like(raw)
    prev = last if raw.shape[1] else last.copy()  # replaced, never changed in place
    for i in range(raw.shape[1]):
        x = raw[:, i]
        prev = np.where(np.isnan(prev), x, alpha * x + (1.0 - alpha) * prev)
        out[:, i] = prev
    return out, prev


# Scores at least this many times the threshold in force are not learnt by the threshold (as points inside an
# open alert are not). The points of a spike before its alert opens were learnt: one finite reading far beyond
# any range (a sensor's 3.4e38 "no value" sentinel scores ~1e22) then held the dynamic threshold at ~1e22 until
# the history had turned over, deaf to real faults. Real data stay far below: a near-constant training feature
# that moves (26,872 training sd in SMAP/MSL, with the 0.01 reference floor) scores under 1e11. Lower bounds
# change what the thresholds learn from real anomalies: excluding at 1000 moved SMAP's z-score baseline, and
# capping the learnt score at 100 MSL's model.
BEYOND_DOUBT = 1e12


# --- generalized Pareto tail (SPOT) ------------------------------------------------------------------------------


def fit_gpd(peaks: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Method-of-moments GPD fit per key: (xi, sigma) (K,) from the excesses in ring buffers `peaks` (K, P), of
    which the first min(count, P) slots are filled (order does not matter). With mean m and sample variance v
    (ddof 1) of the excesses: xi = (1 - m^2 / v) / 2, sigma = m (m^2 / v + 1) / 2, so the fitted GPD has exactly
    that mean and variance. The tail is never taken as bounded: where that gives xi < 0 (short, light-tailed
    calibration samples often do, and the fitted upper end point then says no normal score can ever exceed it),
    the exponential tail (xi = 0, sigma = m, its maximum-likelihood fit) is used instead, as with fewer than two
    excesses or no spread. That errs towards fewer alerts on light tails."""
    p = peaks.shape[1]
    cnt = np.minimum(count, p)
    valid = np.arange(p)[None, :] < cnt[:, None]
    y = np.where(valid, peaks.astype(np.float64), 0.0)
    m = y.sum(axis=1) / np.maximum(cnt, 1)
    v = (np.where(valid, y - m[:, None], 0.0) ** 2).sum(axis=1) / np.maximum(cnt - 1, 1)
    ratio = np.divide(m * m, v, out=np.zeros_like(m), where=v > 0)
    ok = (cnt >= 2) & (v > 0) & (ratio <= 1.0)
    xi = np.where(ok, 0.5 * (1.0 - ratio), 0.0)
    sigma = np.where(ok, 0.5 * m * (ratio + 1.0), m)
    return xi, sigma


def gpd_quantile(
    t: np.ndarray, xi: np.ndarray, sigma: np.ndarray, q: float, n: np.ndarray, n_peaks: np.ndarray
) -> np.ndarray:
    """SPOT's z_q: the value exceeded with probability q, from P(X > t) = n_peaks / n and a GPD(xi, sigma) of the
    excesses over t: z_q = t + sigma / xi * ((q n / n_peaks) ** -xi - 1) (t - sigma log(q n / n_peaks) at xi = 0).
    Never below t: where q exceeds P(X > t) the tail model does not reach, and t itself is the answer."""
    r = q * np.maximum(n, 1) / np.maximum(n_peaks, 1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        safe_xi = np.where(np.abs(xi) < 1e-9, 1.0, xi)
        z = np.where(np.abs(xi) < 1e-9, t - sigma * np.log(r), t + sigma / safe_xi * (r ** (-xi) - 1.0))
    return np.where(n_peaks > 0, np.maximum(z, t), t)


# --- threshold kinds -----------------------------------------------------------------------------------------------

# A per-key state field: (shape per key, dtype, initial value "zero" or "nan").
Field = tuple[tuple[int, ...], str, str]


class Threshold:
    """A threshold kind. Subclasses set `name`, declare `fields()`, and implement `epsilon` and `update`.

    `state` arguments are dicts of the declared fields gathered for the K keys of a batch, shape (K, ...);
    `update` changes them in place and the engine writes them back."""

    name: ClassVar[str] = ""
    # the engine settings that size this kind's per-key fields (named when the state does not fit in memory)
    sized_by: ClassVar[tuple[str, ...]] = ()
    # every engine setting this kind reads: one given for another kind has no effect (a `warning:` line says so)
    reads: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: EngineConfig, default: float) -> None:
        self.cfg = cfg
        self.default = default  # the bundle's calibrated threshold (score units)

    def fields(self) -> dict[str, Field]:
        return {}

    def epsilon(self, state: dict[str, np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Per key: epsilon (K,) float32 and whether the key may alert yet (K,) bool."""
        raise NotImplementedError

    def update(
        self, state: dict[str, np.ndarray], scores: np.ndarray, anomalous: np.ndarray, open_pts: np.ndarray
    ) -> None:
        """Learn from a judged window: smoothed scores, their classification and the alert state (K, W).
        `open_pts` marks the points no threshold may learn from: inside an open alert, or scoring the engine's
        `BEYOND_DOUBT` times the threshold in force (anomalies beyond doubt, before their alert opens)."""

    def update_rows(
        self,
        arrays: dict[str, np.ndarray],
        rows: np.ndarray,
        scores: np.ndarray,
        anomalous: np.ndarray,
        open_pts: np.ndarray,
    ) -> None:
        """`update` for the keys at the distinct store rows `rows`, on the store's own columns (`arrays`). This
        default gathers the declared fields, updates them and writes them back; a kind whose state is mostly
        a ring of which a window changes a few slots writes just those slots (same result to the bit)."""
        names = self.fields()
        if not names:
            return
        state = {name: arrays[name][rows] for name in names}
        self.update(state, scores, anomalous, open_pts)
        for name in names:
            arrays[name][rows] = state[name]


class StaticThreshold(Threshold):
    """One fixed epsilon for every key: `engine.static_threshold`, else the bundle's calibrated default."""

    name = "static"
    reads = ("static_threshold",)

    def __init__(self, cfg: EngineConfig, default: float) -> None:
        super().__init__(cfg, default)
        self.value = float(cfg.static_threshold if cfg.static_threshold is not None else default)

    def epsilon(self, state: dict[str, np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        return np.full(k, self.value, np.float32), np.ones(k, bool)


class DynamicThreshold(Threshold):
    """Telemanom's dynamic threshold over the last `dynamic_history` scores seen while no alert was open.

    While a key warms up (its first `dynamic_warmup` learnt scores; it cannot flag anything), a score of
    BEYOND_DOUBT x `dynamic_min` and the scores after it, until one is back at `dynamic_min`, are not learnt
    (`dyn_doubt`), as SPOT skips them while it calibrates: no alert can shut such a spike's smoothed imprint out
    yet, and one huge reading would otherwise hold the threshold high until the history had turned over."""

    name = "dynamic"
    sized_by = ("dynamic_history",)
    reads = ("dynamic_history", "dynamic_warmup", "dynamic_min")

    def fields(self) -> dict[str, Field]:
        return {
            "hist": ((self.cfg.dynamic_history,), "float32", "zero"),
            "pushed": ((), "int64", "zero"),
            # while warming up: in the imprint of a score BEYOND_DOUBT x dynamic_min, not learnt
            "dyn_doubt": ((), "bool", "zero"),
        }

    def epsilon(self, state: dict[str, np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        pushed = state["pushed"]
        return select_epsilon(state["hist"], pushed, self.cfg.dynamic_min), pushed >= self.cfg.dynamic_warmup

    def update(
        self, state: dict[str, np.ndarray], scores: np.ndarray, anomalous: np.ndarray, open_pts: np.ndarray
    ) -> None:
        self._learn(state["hist"], state["pushed"], state["dyn_doubt"], scores, open_pts, None)

    def update_rows(
        self,
        arrays: dict[str, np.ndarray],
        rows: np.ndarray,
        scores: np.ndarray,
        anomalous: np.ndarray,
        open_pts: np.ndarray,
    ) -> None:
        # in place: a window changes at most W of a key's `dynamic_history` slots
        self._learn(arrays["hist"], arrays["pushed"], arrays["dyn_doubt"], scores, open_pts, rows)

    def _learn(
        self,
        hist: np.ndarray,
        pushed: np.ndarray,
        doubt: np.ndarray,
        scores: np.ndarray,
        open_pts: np.ndarray,
        rows: np.ndarray | None,
    ) -> None:
        at = slice(None) if rows is None else rows
        floor, warmup = self.cfg.dynamic_min, self.cfg.dynamic_warmup
        if not (floor > 0 and ((pushed[at] < warmup).any() or doubt[at].any())):
            push_history(hist, pushed, scores, ~open_pts, rows)  # every key warm: the guard cannot apply
            return
        d = doubt[at]
        for i in range(scores.shape[1]):
            x = scores[:, i]
            # a skipped point is not pushed, so a key in the imprint stays warming until it is back at the floor
            d = (pushed[at] < warmup) & ((x >= BEYOND_DOUBT * floor) | (d & (x > floor)))
            push_history(hist, pushed, scores[:, i : i + 1], (~open_pts[:, i] & ~d)[:, None], rows)
        doubt[at] = d


class SpotThreshold(Threshold):
    """SPOT (Siffer et al., KDD 2017): streaming peaks-over-threshold with a generalized Pareto tail, per key.

    Calibration: a key's first `spot_init` smoothed scores; t = their `spot_level` quantile, and their excesses
    over t seed the tail. Until then the key cannot alert. Afterwards epsilon = z_q, the score exceeded with
    probability `spot_q` under the fitted tail (never below `spot_min`), and every point judged normal updates
    the model: n counts it, and if it is above t its excess joins the ring of the last `spot_peaks` excesses
    (the GPD is refitted from that ring, by the method of moments, before each window). Points above epsilon
    are not learned, so an anomaly does not raise the bar for itself. Epsilon is fixed within a window. While a
    key calibrates (it cannot flag anything), a score of BEYOND_DOUBT x spot_min and the scores after it, until
    one is back at spot_min, are skipped (`spot_doubt`): one huge reading would otherwise calibrate t for good."""

    name = "spot"
    drift = False
    sized_by: ClassVar[tuple[str, ...]] = ("spot_init", "spot_peaks")
    reads: ClassVar[tuple[str, ...]] = ("spot_q", "spot_level", "spot_init", "spot_peaks", "spot_min")

    def fields(self) -> dict[str, Field]:
        c = self.cfg
        out: dict[str, Field] = {
            "spot_init": ((c.spot_init,), "float32", "zero"),  # calibration sample (first spot_init scores)
            "spot_n": ((), "int64", "zero"),  # scores learned (n), calibration included
            "spot_t": ((), "float32", "nan"),  # initial threshold t; NaN while calibrating
            "spot_peaks": ((c.spot_peaks,), "float32", "zero"),  # ring of the latest excesses over t
            "spot_npeaks": ((), "int64", "zero"),  # excesses seen (N_t)
            # while calibrating: in the imprint of a score BEYOND_DOUBT x spot_min, not calibrated on
            "spot_doubt": ((), "bool", "zero"),
        }
        if self.drift:
            out["spot_drift"] = ((c.spot_depth,), "float32", "zero")  # ring of the latest normal scores
            out["spot_ndrift"] = ((), "int64", "zero")
        return out

    def _baseline(self, state: dict[str, np.ndarray], k: int) -> np.ndarray:
        """DSPOT's local level M (K,): mean of the last `spot_depth` normal scores (0 for SPOT)."""
        if not self.drift:
            return np.zeros(k)
        ring, cnt = state["spot_drift"], state["spot_ndrift"]
        d = ring.shape[1]
        valid = np.arange(d)[None, :] < np.minimum(cnt, d)[:, None]
        return np.where(valid, ring.astype(np.float64), 0.0).sum(axis=1) / np.maximum(np.minimum(cnt, d), 1)

    def epsilon(self, state: dict[str, np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        t = state["spot_t"].astype(np.float64)
        ready = ~np.isnan(t)
        xi, sigma = fit_gpd(state["spot_peaks"], state["spot_npeaks"])
        z = gpd_quantile(
            np.where(ready, t, 0.0), xi, sigma, self.cfg.spot_q, state["spot_n"], state["spot_npeaks"]
        )
        eps = np.maximum(self._baseline(state, k) + z, self.cfg.spot_min)
        return np.where(ready, eps, self.cfg.spot_min).astype(np.float32), ready

    def update(
        self, state: dict[str, np.ndarray], scores: np.ndarray, anomalous: np.ndarray, open_pts: np.ndarray
    ) -> None:
        init, t, n = state["spot_init"], state["spot_t"], state["spot_n"]
        peaks, npeaks, doubt = state["spot_peaks"], state["spot_npeaks"], state["spot_doubt"]
        m, p = init.shape[1], peaks.shape[1]
        k = len(t)
        floor = self.cfg.spot_min  # the threshold in force while a key calibrates
        for i in range(scores.shape[1]):
            x = scores[:, i].astype(np.float64)
            normal = ~anomalous[:, i]
            # A key that cannot alert yet cannot shut a spike's smoothed imprint out of its calibration as an
            # open alert would: from a score BEYOND_DOUBT x the floor until the score is back at the floor, its
            # points are skipped (one 1e25 reading otherwise calibrated t at ~1e20, and the key never alerted).
            doubt[:] = np.isnan(t) & (floor > 0) & ((x >= BEYOND_DOUBT * floor) | (doubt & (x > floor)))
            if self.drift:
                ring, cnt = state["spot_drift"], state["spot_ndrift"]
                filling = cnt < ring.shape[1]  # DSPOT: the first spot_depth scores only set the level
                x = x - self._baseline(state, k)
            else:
                filling = np.zeros(k, bool)
            calibrating = np.isnan(t) & ~filling
            rows = np.flatnonzero(calibrating & ~doubt)
            init[rows, n[rows]] = x[rows]
            n[rows] += 1
            for r in np.flatnonzero(calibrating & (n >= m)):
                sample = init[r].astype(np.float64)
                t[r] = np.quantile(sample, self.cfg.spot_level)
                exc = (sample - t[r])[sample > t[r]][-p:]
                peaks[r, : len(exc)] = exc
                npeaks[r] = len(exc)
            learn = ~np.isnan(t) & ~calibrating & ~filling & normal
            n[learn] += 1
            up = np.flatnonzero(learn & (x > t))
            peaks[up, npeaks[up] % p] = (x - t)[up]
            npeaks[up] += 1
            if self.drift:
                # not warm yet: every point counts as normal (but for a spike's imprint)
                push = np.flatnonzero((filling | normal) & ~doubt)
                ring[push, cnt[push] % ring.shape[1]] = scores[push, i]
                cnt[push] += 1


class DSpotThreshold(SpotThreshold):
    """DSPOT: SPOT on the score minus its local level M (mean of the last `spot_depth` scores judged normal), for
    baselines that move; epsilon = M + z_q. The first `spot_depth` scores of a key only set M."""

    name = "dspot"
    drift = True
    sized_by = ("spot_init", "spot_peaks", "spot_depth")
    reads = (*SpotThreshold.reads, "spot_depth")


THRESHOLDS: dict[str, type[Threshold]] = {
    cls.name: cls for cls in (StaticThreshold, DynamicThreshold, SpotThreshold, DSpotThreshold)
}


# Per-key alert state (rows of the engine's state store) that step_alerts reads and updates.
ALERT_FIELDS = (
    "run_anom",
    "run_norm",
    "run_start",
    "last_anom_ts",
    "alert_open",
    "alert_start",
    "alert_peak",
    "alert_thr",
    "alert_contrib",
)
# Points since the open alert's start (its opening run included); a state field only while the engine limits
# how many readings an alert may stay open (engine.max_alert_readings, engine.partial_shift_readings).
ALERT_LENGTH = "alert_len"
# Seconds of gaps longer than engine.max_gap_seconds inside the open alert (or the run that opens it), which
# engine.max_alert_seconds does not count; a state field while that limit is on. The engine adds each gap at
# the key's reset (AlertLifecycle.after_gap); a run that starts with no alert open starts it at 0.
ALERT_GAP = "alert_gap"


@dataclass(frozen=True)
class Transition:
    """An alert of batch row `row` opened or closed at event time `at`, with its state at that moment.
    `reason` says why a closed alert closed: "normal" (close_after normal points) or "level_shift"."""

    row: int
    status: str  # open | closed
    start: float
    end: float | None
    at: float
    peak: float
    threshold: float
    contributions: np.ndarray
    reason: str = ""
    gap: float | None = (
        None  # seconds of gaps since `start` (ALERT_GAP at `at`); None where it is not counted
    )


def step_alerts(
    state: dict[str, np.ndarray],
    ts: np.ndarray,
    scores: np.ndarray,
    anomalous: np.ndarray,
    eps: np.ndarray,
    per_feature: np.ndarray,
    open_after: int,
    close_after: int,
    max_open_seconds: float = 0.0,
    max_open_readings: int = 0,
    partial_readings: int = 0,
    partial_ok: np.ndarray | None = None,
) -> tuple[np.ndarray, list[Transition]]:
    """Alert lifecycle for K keys through one window of W points, in point order.

    An alert opens after `open_after` consecutive anomalous points (its start is the first of them), closes after
    `close_after` consecutive normal points (its end is the last anomalous one) and never re-fires while open.
    With `max_open_seconds` > 0 an alert open that long (event time since its start, less the gaps in
    `state[ALERT_GAP]` when the state has it) closes with reason "level_shift", and so does one open for
    `max_open_readings` points (> 0; counted from its start, so the rule does not depend on the clock's units);
    the key cannot open another alert before the next window (the caller re-baselines it there), and its
    points up to then are not anomalous (`anomalous` is cleared in place: the flags a window-scored key reports
    are the verdicts its lifecycle acted on, as a key scored on arrival has them while it waits). With
    `partial_readings` > 0 an alert open that many points closes the same way at the points where `partial_ok`
    (K, W) holds (the caller's condition: a minority of the key's features has moved). `state` holds (K, ...)
    arrays named ALERT_FIELDS, plus ALERT_LENGTH when `max_open_readings` or `partial_readings` is > 0 (and
    ALERT_GAP, optional, with `max_open_seconds` > 0), and is updated in place. `per_feature` (K, F) is the window's squared error per
    feature, accumulated while an alert is open to name its top features.
    Returns whether an alert was open at each point (K, W) and the transitions in order."""
    run_anom, run_norm = state["run_anom"], state["run_norm"]
    run_start, last_anom = state["run_start"], state["last_anom_ts"]
    is_open, start = state["alert_open"], state["alert_start"]
    peak, thr, contrib = state["alert_peak"], state["alert_thr"], state["alert_contrib"]
    counted = max_open_readings > 0 or partial_readings > 0
    length = state[ALERT_LENGTH] if counted else np.zeros(len(is_open), np.int32)
    gaps = state.get(ALERT_GAP) if max_open_seconds > 0 else None
    contrib[is_open] += per_feature[is_open]
    open_pts = np.zeros(anomalous.shape, bool)
    muted = np.zeros(len(is_open), bool)
    out: list[Transition] = []

    def transition(j: Any, status: str, end: float | None, at: float, reason: str = "") -> Transition:
        return Transition(
            int(j),
            status,
            float(start[j]),
            end,
            at,
            float(peak[j]),
            float(thr[j]),
            contrib[j].copy(),
            reason,
            None if gaps is None else float(gaps[j]),
        )

    for i in range(anomalous.shape[1]):
        anomalous[:, i] &= ~muted  # the point verdict too, as a key scored on arrival has it (see below)
        an, t, s = anomalous[:, i], ts[:, i], scores[:, i]
        new_run = an & (run_anom == 0)
        run_start[:] = np.where(new_run, t, run_start)
        if gaps is not None:  # gaps before a run that may open an alert are not the alert's
            gaps[:] = np.where(new_run & ~is_open, 0.0, gaps)
        run_anom[:] = np.where(an, run_anom + 1, 0)
        run_norm[:] = np.where(an, 0, run_norm + 1)
        last_anom[:] = np.where(an, t, last_anom)
        length[:] = np.where(is_open, length + 1, length)
        for j in np.flatnonzero(~is_open & (run_anom >= open_after)):
            is_open[j], start[j], peak[j], thr[j] = True, run_start[j], s[j], eps[j]
            contrib[j], length[j] = per_feature[j], run_anom[j]  # points since the alert's start
            out.append(transition(j, "open", None, float(t[j])))
        peak[:] = np.where(is_open & an, np.maximum(peak, s), peak)
        for j in np.flatnonzero(is_open & (run_norm >= close_after)):
            is_open[j] = False
            out.append(transition(j, "closed", float(last_anom[j]), float(t[j]), "normal"))
        if max_open_seconds > 0 or counted:
            if max_open_seconds > 0:  # observed time: the gaps' seconds do not count
                too_long = (t - start if gaps is None else t - start - gaps) >= max_open_seconds
            else:
                too_long = np.zeros(len(t), bool)
            if max_open_readings > 0:
                too_long |= length >= max_open_readings
            if partial_readings > 0 and partial_ok is not None:
                too_long |= (length >= partial_readings) & partial_ok[:, i]
            for j in np.flatnonzero(is_open & too_long):
                is_open[j], muted[j], run_anom[j] = False, True, 0
                out.append(transition(j, "closed", float(last_anom[j]), float(t[j]), "level_shift"))
        open_pts[:, i] = is_open
    return open_pts, out

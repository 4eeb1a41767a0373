"""Every Prometheus metric of the pipeline, and the HTTP endpoint that serves them.

:class:`PipelineMetrics` owns one :class:`CollectorRegistry` (injected, or a fresh one), so tests and several
pipelines in one process never share series. The runner calls :meth:`PipelineMetrics.observe` once per batch;
the Kafka daemon adds what only it knows (messages, lag, checkpoints, commits, model reloads).

Cardinality: no metric is labelled by the sensor key except ``anomaly_alert_active{key}``, whose series exist
only while an alert is open and are capped (``alert_label_cap``); alerts beyond the cap are counted in
``anomaly_alerts_active`` only and in ``anomaly_alert_labels_dropped_total``.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from anomaly.atomic import write_bytes
from anomaly.drift import DEFAULT_MIN_POINTS, DEFAULT_WINDOW, DriftMonitor
from anomaly.engine.types import REJECT_REASONS, EngineOutput, Rejection
from anomaly.kafka.codec import DECODE_REASONS

log = logging.getLogger(__name__)

# Score units: 1.0 is the calibration quantile; the default threshold is around 1.5.
SCORE_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 25.0)
# Mean squared reconstruction error in standardized units.
ERROR_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 50.0)
# Event time of a reading to the wall time of the decision that covers it (seconds).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# Event time of a reading to the event time of the reading whose arrival decided it (a window's wait, seconds).
DECISION_DELAY_BUCKETS = (0.0, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
CHECKPOINT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DEFAULT_ALERT_LABEL_CAP = 100
# Why a partition's restore refused its changelog record (anomaly_restore_refused_total{reason}). A checkpoint of
# an input topic created again since, a missing chunk or a corrupted record is not among them: the daemon stops
# on those (status 2), it does not go on without the state.
RESTORE_REFUSALS = (
    "other_group",  # the latest record of the partition by another consumer group (a changelog shared by config)
    "incompatible_model",  # written by a model with other features or architecture: the keys start fresh
    # the engine could not restore the snapshot (StateError: corrupted, another state format, or other
    # state-shaping [engine] settings), discarded by --reset-state, without which the daemon stops instead: the
    # keys start fresh
    "bad_state",
)


def _created_at_epoch(value: Any) -> float | None:
    """``bundle.meta["created_at"]`` (ISO 8601, or epoch seconds) as epoch seconds; None when absent/unparsable."""
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value:
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()
    return None


class PipelineMetrics:
    """The pipeline's metrics on one registry. Not thread-safe beyond what prometheus_client guarantees: call
    the mutating methods from the processing loop (the HTTP server only reads)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        alert_label_cap: int = DEFAULT_ALERT_LABEL_CAP,
        drift_window: int = DEFAULT_WINDOW,
        live: bool = True,
    ) -> None:
        """``live=False`` (a backtest, ``replay --metrics-out``): readings are history, so the wall-clock latency
        (``anomaly_latency_seconds``) is not observed; it measured the years since the data's event times."""
        if alert_label_cap < 0:
            raise ValueError(f"alert_label_cap must be >= 0, got {alert_label_cap}")
        self.registry = registry if registry is not None else CollectorRegistry()
        self.alert_label_cap = alert_label_cap
        self.live = live
        r = self.registry
        self.messages_consumed = Counter(
            "anomaly_messages_consumed", "Source messages consumed (Kafka records).", registry=r
        )
        self.messages_invalid = Counter(
            "anomaly_messages_invalid",
            "Source messages refused before the engine (undecodable, missing fields, oversized), by reason.",
            ["reason"],
            registry=r,
        )
        self.readings_scored = Counter(
            "anomaly_readings_scored", "Readings accepted into engine state and scored.", registry=r
        )
        self.readings_rejected = Counter(
            "anomaly_readings_rejected",
            "Readings refused (by the source or the engine), by reason.",
            ["reason"],
            registry=r,
        )
        self.windows_scored = Counter(
            "anomaly_windows_scored",
            "Windows scored: whole windows, or report windows of model.window readings scored on arrival (the "
            "default); a short one at a gap, an eviction or the end of a replay.",
            registry=r,
        )
        self.alerts_opened = Counter("anomaly_alerts_opened", "Alerts opened by the engine.", registry=r)
        self.alerts_closed = Counter("anomaly_alerts_closed", "Alerts closed by the engine.", registry=r)
        self.alerts_active = Gauge("anomaly_alerts_active", "Alerts open now, over all keys.", registry=r)
        self.alert_active = Gauge(
            "anomaly_alert_active",
            "1 while an alert is open for this key (series removed "
            "when it closes; at most alert_label_cap series).",
            ["key"],
            registry=r,
        )
        self.alert_labels_dropped = Counter(
            "anomaly_alert_labels_dropped",
            "Opened alerts not given an anomaly_alert_active series because the label cap was reached.",
            registry=r,
        )
        self.window_score = Histogram(
            "anomaly_window_score_ratio",
            "Peak smoothed score of each scored window (1.0 = calibration quantile of the reference error).",
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.window_error = Histogram(
            "anomaly_window_error_mse",
            "Mean point error of each scored window (squared forecast or reconstruction error, standardized units).",
            buckets=ERROR_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "anomaly_latency_seconds",
            "End-to-end latency per reading: wall time of the decision that covers a reading "
            "minus the reading's event time, observed when the decision is made (scored on arrival: the "
            "batch that delivered it; a window-scored model's early readings wait for its last).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decision_delay = Histogram(
            "anomaly_decision_delay_seconds",
            "Per reading, in event time: the reading whose arrival decided it minus the reading itself "
            "(0 when each reading is scored on arrival; up to the window span otherwise).",
            buckets=DECISION_DELAY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "anomaly_batch_size_windows",
            "Pieces per batched model call, one per key: a whole window, or the key's readings up to the end of its "
            "report window (scored on arrival, the default).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "anomaly_consumer_lag_messages",
            "Messages behind the log end, per assigned partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.keys_held = Gauge("anomaly_keys_held", "Keys whose state the engine holds.", registry=r)
        self.keys_evicted = Counter(
            "anomaly_keys_evicted", "Keys evicted (idle TTL or max_keys).", registry=r
        )
        self.gap_resets = Counter(
            "anomaly_gap_resets", "Key states reset because of a gap in event time.", registry=r
        )
        self.checkpoint_duration = Histogram(
            "anomaly_checkpoint_duration_seconds",
            "Time to flush sinks, snapshot state and commit offsets, until the commit ended (the periodic "
            "transactional commit ends in a helper thread while the loop scores on). An idle stream's checkpoint "
            "timer ticks with nothing to write or commit are not observed (anomaly_checkpoint_last_timestamp_seconds "
            "still moves).",
            buckets=CHECKPOINT_BUCKETS,
            registry=r,
        )
        self.checkpoint_loop_seconds = Histogram(
            "anomaly_checkpoint_loop_seconds",
            "Part of a checkpoint on the loop thread, the stall it puts on scoring: waiting for the previous "
            "commit if still in flight, the dead letters' flush, the state written; with a commit that ends in a "
            "helper thread not that commit, else all of it.",
            buckets=CHECKPOINT_BUCKETS,
            registry=r,
        )
        self.checkpoint_state_seconds = Histogram(
            "anomaly_checkpoint_state_seconds",
            "Part of a checkpoint that wrote state spent in this process: snapshot (loop thread) + compression "
            "(loop thread, or the helper thread that ends a transaction); no broker.",
            buckets=CHECKPOINT_BUCKETS,
            registry=r,
        )
        self.checkpoint_commit_seconds = Histogram(
            "anomaly_checkpoint_commit_seconds",
            "Part of a checkpoint waiting for the broker to commit: the transaction's flush, offsets and end (or the "
            "consumer's offset commit). The rest of a checkpoint is the state part, the wait for the previous commit "
            "and the flushes of a non-transactional daemon.",
            buckets=CHECKPOINT_BUCKETS,
            registry=r,
        )
        self.checkpoint_state_cpu = Counter(
            "anomaly_checkpoint_state_cpu_seconds",
            "CPU time of the threads in the state part of checkpoints (their wall time less waiting for a core "
            "or the GIL): the work itself, whatever else runs on the machine.",
            registry=r,
        )
        self.checkpoint_state_bytes = Counter(
            "anomaly_checkpoint_state_bytes",
            "Compressed state written to the changelog by checkpoints.",
            registry=r,
        )
        self.checkpoint_last = Gauge(
            "anomaly_checkpoint_last_timestamp_seconds",
            "Epoch seconds of the last completed checkpoint, or of the daemon's start before its first one "
            "(age = time() - this).",
            registry=r,
        )
        self.commit_failures = Counter("anomaly_commit_failures", "Offset commits that failed.", registry=r)
        self.ready = Gauge(
            "anomaly_ready",
            "1 while /readyz answers 200 (partitions assigned and restored, the broker answering), else 0: "
            "start-up, rebalances, broker outages. A daemon whose broker is away is scraped (up is 1) and its "
            "idle checkpoint timer keeps the checkpoint age at 0, so this is the series that shows the outage.",
            registry=r,
        )
        self.fenced = Counter(
            "anomaly_fenced",
            "Times this daemon was fenced (another member took its partitions): state dropped, group rejoined.",
            registry=r,
        )
        self.restore_refused = Counter(
            "anomaly_restore_refused",
            "Changelog records a partition's restore refused, by reason: another consumer group's record "
            "(other_group), or state this daemon cannot take (incompatible_model, bad_state: the partition's keys "
            "start fresh from the committed offset, their state lost).",
            ["reason"],
            registry=r,
        )
        self.dead_letters_refused = Counter(
            "anomaly_dead_letters_refused",
            "Dead letters the broker refused (logged; consumption carries on).",
            registry=r,
        )
        self.model_info = Info("anomaly_model", "The model bundle in use.", registry=r)
        self.pipeline_info = Info(
            "anomaly_pipeline",
            "The consumer group and input topics this daemon reads: which pipeline its alerts belong to (the "
            "alert rules take the group from it).",
            registry=r,
        )
        self.model_trained = Gauge(
            "anomaly_model_trained_timestamp_seconds",
            "Epoch seconds at which the model in use was trained.",
            registry=r,
        )
        self.model_reloads = Counter(
            "anomaly_model_reloads",
            "Model bundles hot-reloaded, by whether engine state was kept (kept) or reset (reset).",
            ["state"],
            registry=r,
        )
        self.model_reload_failures = Counter(
            "anomaly_model_reload_failures",
            "New model files that could not be loaded (corrupt, not a bundle, ...); the model in use stays.",
            registry=r,
        )
        self.model_file_rejected = Gauge(
            "anomaly_model_file_rejected",
            "1 while the model file in place is one the daemon could not load (missing at a SIGHUP, corrupt, not a "
            "bundle): the model in use is an older one, and a restart would fail on the file; 0 once a file loads.",
            registry=r,
        )
        self.model_drift = Gauge(
            "anomaly_model_drift_psi",
            "Population stability index of the last point errors (all keys, sliding window) against the "
            "model's calibration distribution; one series, for the model version in use.",
            ["version"],
            registry=r,
        )
        self.drift_window = drift_window
        self._drift: DriftMonitor | None = None
        self._drift_version: str | None = None  # the version label of the live drift series, if any
        # Every known label value starts at 0: a series born at its first increment hides that increment (and a
        # one-off burst entirely) from rate()/increase(), which need a previous sample (prometheus_client's and
        # Prometheus' own advice for labelled counters).
        for reason in DECODE_REASONS:
            self.messages_invalid.labels(reason)
        for reason in REJECT_REASONS:
            self.readings_rejected.labels(reason)
        for state in ("kept", "reset"):
            self.model_reloads.labels(state)
        for reason in RESTORE_REFUSALS:
            self.restore_refused.labels(reason)
        self._labelled: set[str] = set()  # keys that own an anomaly_alert_active series
        self._seen: dict[str, int] = {}  # last engine counter values, to turn totals into increments
        self._lag_series: set[tuple[str, str]] = set()

    # -- the runner's Observer hook ----------------------------------------------------------------------------

    def observe(self, out: EngineOutput, batch: Any, engine: Any, now: float) -> None:
        """Record one processed batch. ``now`` is wall-clock epoch seconds; ``engine`` provides ``counters``,
        ``active_alerts`` and ``len()``. Score and error histograms get one sample per window (peak score, mean
        error); the latency histograms one per reading the batch decided."""
        if out.readings:
            self.readings_scored.inc(out.readings)
        if out.windows:
            self.windows_scored.inc(len(out.windows))
        self._observe_windows(out.windows)
        if out.decided and self.live:  # the readings this batch decided: on arrival, or with its windows
            decided_ts = np.concatenate([d.reshape(-1) for d in out.decided])
            observe_many(self.latency, np.maximum(0.0, now - decided_ts))
        covered = [w for w in out.windows if len(w.timestamps)]
        if covered:
            ts = np.concatenate([w.timestamps for w in covered])
            decided = np.concatenate([w.decided_at for w in covered])  # type: ignore[misc]
            observe_many(self.decision_delay, np.maximum(0.0, decided - ts))
        if self._drift is not None and out.windows:
            self._drift.update(np.concatenate([w.errors for w in out.windows]))
            value = self._drift.value()
            if value is not None and self._drift_version is not None:
                self.model_drift.labels(self._drift_version).set(value)
        for size in out.batches:
            self.batch_size.observe(size)
        self._count_rejections(out.rejections)
        alerting = getattr(engine, "alerting_keys", None)
        opened: dict[str, None] = {}  # keys whose alert opened in this batch and is still open, in order
        for alert in out.alerts:
            if alert.status == "open":
                self.alerts_opened.inc()
                opened[alert.key] = None
                if alerting is None:  # an engine that cannot list its alerts: a free slot, first come
                    self._label_open(alert.key)
            elif alert.status == "closed":
                self.alerts_closed.inc()
                opened.pop(alert.key, None)
                self._label_close(alert.key)
        active = int(getattr(engine, "active_alerts", 0))
        self.alerts_active.set(active)
        still_open = getattr(engine, "alert_open", None)
        # a revoked partition's labelled keys, dropped without a close event (an unchanged count can hide it)
        if still_open is not None:
            for key in [k for k in self._labelled if not still_open(k)]:
                self._label_close(key)
        fresh = [k for k in opened if k not in self._labelled] if alerting is not None else []
        if fresh and len(self._labelled) + len(fresh) == active <= self.alert_label_cap:
            for key in fresh:  # every open alert fits: the new ones take free slots, no need to list them all
                self._label(key)
            fresh = []
        if len(self._labelled) != min(active, self.alert_label_cap):
            self._sync_labels(engine, active)
        dropped = sum(1 for k in fresh if k not in self._labelled)  # no free slot was left for them
        if dropped:
            self.alert_labels_dropped.inc(dropped)
        self.keys_held.set(len(engine))
        counters: Mapping[str, int] = getattr(engine, "counters", {})
        self._advance(self.keys_evicted, "evicted", counters)
        self._advance(self.gap_resets, "gap_resets", counters)

    def _count_rejections(self, rejections: Iterable[Rejection]) -> None:
        for rej in rejections:
            self.readings_rejected.labels(rej.reason).inc(rej.count)

    def _advance(self, counter: Counter, name: str, counters: Mapping[str, int]) -> None:
        """Increase ``counter`` by the growth of the engine's cumulative ``counters[name]``; a value lower than
        the last one seen means a new engine (restore, reload), whose whole value is new."""
        value = int(counters.get(name, 0))
        last = self._seen.get(name, 0)
        delta = value - last if value >= last else value
        if delta:
            counter.inc(delta)
        self._seen[name] = value

    def _label_open(self, key: str) -> None:
        if key in self._labelled:
            return
        if len(self._labelled) >= self.alert_label_cap:
            self.alert_labels_dropped.inc()
            return
        self._label(key)

    def _label(self, key: str) -> None:
        self.alert_active.labels(key).set(1)
        self._labelled.add(key)

    def _label_close(self, key: str) -> None:
        if key in self._labelled:
            self.alert_active.remove(key)
            self._labelled.discard(key)

    def _sync_labels(self, engine: Any, active: int) -> None:
        """Make the per-key series those of the engine's open alerts (up to the cap) when the count says they
        differ: a slot freed while more alerts are open than the cap, alerts restored from a checkpoint (a
        restart, a rebalance) opened in another process, and a revoked partition's or evicted key's alert left
        without a close event (a labelled one is found by ``engine.alert_open`` even when no count changed).

        Which alerts get a series beyond the cap is stable: a labelled alert keeps its series until it closes
        (a newer alert never takes it), and a free slot goes to the oldest open alert without one, in the
        engine's order (``alerting_keys``: by the alert's start, then key). So the labelled alerts are the
        ``alert_label_cap`` oldest ones, and a restarted daemon, which restores the same open alerts, labels the
        same keys: a key whose alert never changed does not resolve and fire again in Prometheus."""
        alerting = getattr(engine, "alerting_keys", None)
        if alerting is None:  # an engine that cannot list them: at least no stale series once none is open
            if active == 0:
                self._clear_labels()
            return
        keys: list[str] = alerting()
        open_now = set(keys)
        for key in [k for k in self._labelled if k not in open_now]:
            self._label_close(key)
        for key in keys:
            if len(self._labelled) >= self.alert_label_cap:
                break
            if key not in self._labelled:
                self._label(key)

    def _clear_labels(self) -> None:
        for key in list(self._labelled):
            self._label_close(key)

    # -- what only the daemon knows ----------------------------------------------------------------------------

    def message_consumed(self, n: int = 1) -> None:
        self.messages_consumed.inc(n)

    def message_invalid(self, reason: str, n: int = 1) -> None:
        self.messages_invalid.labels(reason).inc(n)

    def set_partition_lag(self, lags: Mapping[tuple[str, int], int]) -> None:
        """Set the lag of every assigned partition; series of partitions absent from ``lags`` (revoked) go."""
        current = {(topic, str(partition)) for topic, partition in lags}
        for gone in self._lag_series - current:
            self.lag.remove(*gone)
        for (topic, partition), lag in lags.items():
            self.lag.labels(topic, str(partition)).set(max(0, int(lag)))
        self._lag_series = current

    def _observe_windows(self, windows: list[Any]) -> None:
        """Score and error histograms: one sample per window (peak score, mean error), observed in bulk."""
        if windows:
            peaks, means = _window_peaks_and_means(windows)
            observe_many(self.window_score, peaks)
            observe_many(self.window_error, means)

    def checkpoint_done(
        self,
        seconds: float,
        at_epoch: float,
        state_seconds: float = 0.0,
        state_bytes: int = 0,
        commit_seconds: float = 0.0,
        state_cpu_seconds: float = 0.0,
    ) -> None:
        """A completed checkpoint: its total time, the part of it under this process's control (state
        snapshot + compression, no broker round trip; wall and CPU time of the threads doing it) with the compressed
        bytes it wrote, and the part spent waiting for the broker's commit."""
        self.checkpoint_duration.observe(seconds)
        self.checkpoint_commit_seconds.observe(commit_seconds)
        self.checkpoint_last.set(at_epoch)
        if state_bytes:  # a checkpoint with nothing processed since the last one writes no state
            self.checkpoint_state_seconds.observe(state_seconds)
            self.checkpoint_state_cpu.inc(state_cpu_seconds)
            self.checkpoint_state_bytes.inc(state_bytes)

    def checkpoint_loop_done(self, seconds: float) -> None:
        """The loop thread's part of a checkpoint (not idle), observed when it returns to scoring."""
        self.checkpoint_loop_seconds.observe(seconds)

    def daemon_started(self, at_epoch: float) -> None:
        """A daemon starts: until its first checkpoint the checkpoint age counts from here. At 0 the age was
        time() itself (56 years) for every scrape before the first checkpoint, a spike on the dashboard's
        "Checkpoint age" panel and in CheckpointStale's value at every restart."""
        self.checkpoint_last.set(at_epoch)

    def checkpoint_idle(self, at_epoch: float) -> None:
        """A checkpoint with nothing to write or commit (the timer of an idle stream): the stream is checkpointed
        up to date, but its time is not a checkpoint's time."""
        self.checkpoint_last.set(at_epoch)

    def set_ready(self, ready: bool) -> None:
        """What /readyz answers, for Prometheus (the MetricsServer calls it with every change)."""
        self.ready.set(1 if ready else 0)

    def commit_failed(self) -> None:
        self.commit_failures.inc()

    def fenced_rejoined(self) -> None:
        self.fenced.inc()

    def restore_refusal(self, reason: str) -> None:
        """A partition's restore refused its changelog record for ``reason`` (one of :data:`RESTORE_REFUSALS`)."""
        if reason not in RESTORE_REFUSALS:
            raise ValueError(
                f"restore refusal reason must be one of {', '.join(RESTORE_REFUSALS)}, got {reason!r}"
            )
        self.restore_refused.labels(reason).inc()

    def dead_letter_refused(self) -> None:
        self.dead_letters_refused.inc()

    def pipeline_started(self, group: str, topics: Iterable[str]) -> None:
        """Publish which pipeline this daemon is: ``anomaly_pipeline_info{group,topics}``. Every daemon is
        scraped as job="anomaly", so without it the alerts of two pipelines (two consumer groups, other input
        topics) on one Prometheus were one: AnomalyDetected took the max over both for a key name they share,
        and AnomalyRateHigh summed and inhibited them together."""
        self.pipeline_info.info({"group": str(group), "topics": ",".join(topics)})

    def model_loaded(self, bundle: Any) -> None:
        """Publish the bundle's identity: ``anomaly_model_info{version,trained_at,features}`` and the trained-at
        timestamp (left at its last value if the bundle carries none) that ModelStale alerts on."""
        meta = getattr(bundle, "meta", {}) or {}
        created = meta.get("created_at", "")
        self.model_info.info(
            {
                "version": str(getattr(bundle, "version", meta.get("model_version", "unknown"))),
                "trained_at": str(created),
                "features": str(len(getattr(bundle, "features", ()))),
            }
        )
        epoch = _created_at_epoch(created)
        if epoch is not None:
            self.model_trained.set(epoch)
        self.model_file_rejected.set(0)
        self._track_drift(bundle)

    def _track_drift(self, bundle: Any) -> None:
        """A new model starts a new drift window against its own calibration; the old version's series goes. The
        same version loaded again (a SIGHUP, the file touched or put back) keeps its window and series: each such
        reload emptied them, and ModelDrift's 30 minutes started again from 200 points later."""
        version = str(getattr(bundle, "version", "unknown"))
        if self._drift is not None and version == self._drift_version:
            return
        if self._drift_version is not None:
            try:
                self.model_drift.remove(self._drift_version)
            except KeyError:
                pass
        calibration = getattr(bundle, "calibration", None) or {}
        self._drift = DriftMonitor.for_calibration(
            calibration, window=self.drift_window, min_points=min(DEFAULT_MIN_POINTS, self.drift_window)
        )
        self._drift_version = version

    def model_reloaded(self, kept_state: bool) -> None:
        self.model_reloads.labels("kept" if kept_state else "reset").inc()
        if not kept_state:  # the engine's open alerts went with its state
            self._clear_labels()
            self.alerts_active.set(0)

    def model_reload_failed(self) -> None:
        """A model file that could not be loaded: counted, and ``anomaly_model_file_rejected`` is 1 until a file
        loads (ModelReloadFailed fires on it: a count over 15 minutes resolved while the bad file stayed)."""
        self.model_reload_failures.inc()
        self.model_file_rejected.set(1)

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)


def _window_peaks_and_means(windows: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Peak score and mean error of every window with readings: one stacked reduction when all windows have the
    same length (the common case: a report window per key), else window by window; the same values either way
    (a row reduction is the reduction of that row alone)."""
    full = [w for w in windows if len(w.scores) and len(w.errors)]
    if len(full) == len(windows) and len({len(w.scores) for w in full} | {len(w.errors) for w in full}) == 1:
        scores = np.stack([w.scores for w in full])
        errors = np.stack([w.errors for w in full])
        return scores.max(axis=1).astype(np.float64), errors.mean(axis=1).astype(np.float64)
    peaks = [float(np.max(w.scores)) for w in windows if len(w.scores)]
    means = [float(np.mean(w.errors)) for w in windows if len(w.errors)]
    return np.asarray(peaks, np.float64), np.asarray(means, np.float64)


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """``histogram.observe(v)`` for every v, with one increment per bucket touched instead of one Python call
    per value (a daemon decides ~10⁵ readings a second). prometheus_client keeps each bucket's own count (not
    cumulative) in ``_buckets`` and the sum in ``_sum``; a test checks the result equals a loop of observe()."""
    v = np.asarray(values, np.float64).reshape(-1)
    if not len(v):
        return
    bounds = np.asarray(histogram._upper_bounds, np.float64)
    counts = np.bincount(np.searchsorted(bounds, v, side="left"), minlength=len(bounds))
    histogram._sum.inc(float(v.sum()))
    for i in np.flatnonzero(counts):
        histogram._buckets[int(i)].inc(int(counts[i]))


def write_textfile(metrics: PipelineMetrics, path: str | Path) -> Path:
    """Write the final metrics of a run (e.g. `anomaly replay`) in the text format, atomically (node-exporter
    textfile collector compatible)."""
    return write_bytes(path, generate_latest(metrics.registry), "metrics file")


# Seconds a metrics connection may wait for its request or for the client to take the answer (StreamRequestHandler
# timeout): scrapers and health checks send their request at once and read the small answer at once.
REQUEST_TIMEOUT_S = 30.0


class MetricsServer:
    """HTTP endpoint in a daemon thread: ``/metrics``, ``/healthz`` (200 while serving) and ``/readyz`` (200
    only after ``set_ready(True)``, else 503 — e.g. while restoring state after a rebalance)."""

    def __init__(
        self,
        metrics: PipelineMetrics,
        host: str = "127.0.0.1",
        port: int = 9108,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self.metrics = metrics
        self.host = host
        self._requested_port = port
        self.request_timeout_s = request_timeout_s
        self._ready = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._bound_port: int | None = None

    @property
    def port(self) -> int:
        """The port bound by the last ``start()`` (so ``port=0`` reveals the one picked), else the requested one."""
        return self._bound_port if self._bound_port is not None else self._requested_port

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def set_ready(self, ready: bool) -> None:
        if ready:
            self._ready.set()
        else:
            self._ready.clear()
        self.metrics.set_ready(ready)

    def start(self) -> None:
        if self._server is not None:
            return
        server = _Server((self.host, self._requested_port), _handler(self))
        server.daemon_threads = True
        self._server = server
        self._bound_port = int(server.server_address[1])
        self._thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None


TEXT = "text/plain; charset=utf-8"


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away or stalled (reset, closed mid-answer, past the request timeout: a scraper's
        timeout, a load balancer's check that resets its connection) is its own business: nothing to log. The
        default printed a 20-line traceback to stderr for each, so every reset health check added one to the
        daemon's log. Anything else is a fault of the endpoint: one error line, with its traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return
        log.error("metrics endpoint failed answering %s: %r", client_address, exc, exc_info=True)


def _handler(owner: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # A connection idle or stalled this long is closed: without it each held a thread for as long as its
        # peer kept it open, for ever for a peer gone without closing it (a half-open connection).
        timeout = owner.request_timeout_s

        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            self._send(*self._answer())

        def do_HEAD(self) -> None:  # noqa: N802 (health checks that ask with HEAD)
            self._send(*self._answer(), with_body=False)

        def _answer(self) -> tuple[int, bytes, str]:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                return 200, owner.metrics.render(), CONTENT_TYPE_LATEST
            if path == "/healthz":
                return 200, b"ok\n", TEXT
            if path == "/readyz":
                ok = owner.ready
                return (200 if ok else 503), (b"ready\n" if ok else b"not ready\n"), TEXT
            return 404, b"not found; try /metrics, /healthz or /readyz\n", TEXT

        def _send(self, code: int, body: bytes, content_type: str, with_body: bool = True) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # scraped every few seconds: keep stderr quiet

    return Handler

"""PipelineMetrics on a fresh registry: exact sample values after feeding real EngineOutput objects."""

from __future__ import annotations

import socket
import struct
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from anomaly.engine.types import Alert, EngineOutput, Rejection, ScoredWindow
from anomaly.metrics import RESTORE_REFUSALS, MetricsServer, PipelineMetrics, write_textfile
from anomaly.runner import Batch


@dataclass
class FakeEngine:
    """The part of the engine the metrics read: counters, active_alerts and len()."""

    keys: int = 0
    active_alerts: int = 0
    counters: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.keys


def window(key: str, last_ts: float, scores: list[float], errors: list[float]) -> ScoredWindow:
    n = len(scores)
    return ScoredWindow(
        key=key,
        timestamps=np.arange(last_ts - n + 1, last_ts + 1, dtype=np.float64),
        errors=np.asarray(errors, np.float32),
        scores=np.asarray(scores, np.float32),
        thresholds=np.full(n, 1.5, np.float32),
        anomalous=np.asarray(scores, np.float32) > 1.5,
        alert_open=np.zeros(n, bool),
        contributions=np.asarray([0.5, 0.5], np.float32),
    )


def alert(key: str, status: str) -> Alert:
    return Alert(
        id=f"{key}-100",
        key=key,
        status=status,
        start=100.0,
        end=None if status == "open" else 110.0,
        at=110.0,
        peak_score=3.0,
        threshold=1.5,
        model_version="v1",
    )


def value(m: PipelineMetrics, name: str, labels: dict[str, str] | None = None) -> float | None:
    return m.registry.get_sample_value(name, labels or {})


@pytest.fixture
def metrics() -> PipelineMetrics:
    return PipelineMetrics(CollectorRegistry(), alert_label_cap=2)


def test_a_fresh_registry_per_instance() -> None:
    a, b = PipelineMetrics(), PipelineMetrics()
    a.message_consumed(3)
    assert a.registry is not b.registry
    assert value(a, "anomaly_messages_consumed_total") == 3.0
    assert value(b, "anomaly_messages_consumed_total") == 0.0


def test_observe_counts_readings_windows_histograms_and_rejections(metrics: PipelineMetrics) -> None:
    windows = [
        window("a", 1000.0, [0.5, 2.0, 1.0], [0.1, 0.2, 0.3]),
        window("b", 998.0, [0.2, 0.4, 0.3], [0.01, 0.02, 0.03]),
    ]
    out = EngineOutput(
        windows=windows,
        rejections=[
            Rejection("a", "non_finite", 2, False),
            Rejection("", "malformed", 1, True),
            Rejection("b", "non_finite", 3, False),
        ],
        readings=7,
        batches=[2, 5],
        decided=[np.stack([w.timestamps for w in windows])],  # the windows' readings, decided in this batch
    )
    engine = FakeEngine(keys=4, counters={"evicted": 3, "gap_resets": 1})
    metrics.observe(out, Batch(events=[], messages=9), engine, now=1000.5)

    assert value(metrics, "anomaly_readings_scored_total") == 7.0
    assert value(metrics, "anomaly_windows_scored_total") == 2.0
    assert value(metrics, "anomaly_readings_rejected_total", {"reason": "non_finite"}) == 5.0
    assert value(metrics, "anomaly_readings_rejected_total", {"reason": "malformed"}) == 1.0
    # One score sample per window: its peak (2.0 and 0.4).
    assert value(metrics, "anomaly_window_score_ratio_count") == 2.0
    assert value(metrics, "anomaly_window_score_ratio_sum") == pytest.approx(2.4)
    assert value(metrics, "anomaly_window_score_ratio_bucket", {"le": "0.5"}) == 1.0
    assert value(metrics, "anomaly_window_score_ratio_bucket", {"le": "1.5"}) == 1.0
    assert value(metrics, "anomaly_window_score_ratio_bucket", {"le": "2.0"}) == 2.0
    # One error sample per window: its mean (0.2 and 0.02).
    assert value(metrics, "anomaly_window_error_mse_count") == 2.0
    assert value(metrics, "anomaly_window_error_mse_sum") == pytest.approx(0.22, rel=1e-5)
    # Latency per reading = now - its timestamp: 2.5, 1.5, 0.5 s (a) and 4.5, 3.5, 2.5 s (b).
    assert value(metrics, "anomaly_latency_seconds_count") == 6.0
    assert value(metrics, "anomaly_latency_seconds_sum") == pytest.approx(15.0)
    assert value(metrics, "anomaly_latency_seconds_bucket", {"le": "0.5"}) == 1.0
    assert value(metrics, "anomaly_latency_seconds_bucket", {"le": "2.5"}) == 4.0
    assert value(metrics, "anomaly_latency_seconds_bucket", {"le": "5.0"}) == 6.0
    # Decision delay per reading = its window's last timestamp - its own: 2, 1, 0 s in each window.
    assert value(metrics, "anomaly_decision_delay_seconds_sum") == pytest.approx(6.0)
    assert value(metrics, "anomaly_decision_delay_seconds_bucket", {"le": "0.0"}) == 2.0
    assert value(metrics, "anomaly_decision_delay_seconds_bucket", {"le": "1.0"}) == 4.0
    assert value(metrics, "anomaly_batch_size_windows_count") == 2.0
    assert value(metrics, "anomaly_batch_size_windows_sum") == 7.0
    assert value(metrics, "anomaly_keys_held") == 4.0
    assert value(metrics, "anomaly_keys_evicted_total") == 3.0
    assert value(metrics, "anomaly_gap_resets_total") == 1.0


def test_latency_is_observed_when_a_reading_is_decided_not_when_it_is_reported(
    metrics: PipelineMetrics,
) -> None:
    """The default model scores each reading on arrival: its latency is the wall clock of the batch that
    delivered it minus its time, once, even though it is reported later in a 32-reading window (it used to be
    observed at the report, up to 31 readings late). A window-scored model decides a window's readings with
    its last one, so their latency is observed then."""
    from anomaly.bench import demo_bundle
    from anomaly.config import EngineConfig
    from anomaly.engine import Engine, Event

    values = np.random.default_rng(0).normal(size=(50, 6))
    for forecast, counts in ((True, (40, 10)), (False, (32, 0))):
        metrics = PipelineMetrics(CollectorRegistry())
        engine = Engine(demo_bundle(forecast=forecast), EngineConfig())
        expected_sum = 0.0
        for lo, hi, now, n in ((0, 40, 100.0, counts[0]), (40, 50, 200.0, counts[1])):
            out = engine.process(
                [Event("k", np.asarray([float(t)]), values[t : t + 1]) for t in range(lo, hi)]
            )
            metrics.observe(out, Batch(events=[]), engine, now=now)
            decided = np.arange(lo, lo + n) if forecast else np.arange(0, n)
            expected_sum += float((now - decided).sum())
        assert value(metrics, "anomaly_latency_seconds_count") == sum(counts)
        assert value(metrics, "anomaly_latency_seconds_sum") == pytest.approx(expected_sum)
        flushed = engine.flush()  # the readings waiting to be reported were decided already: nothing new
        metrics.observe(flushed, Batch(events=[]), engine, now=300.0)
        assert value(metrics, "anomaly_latency_seconds_count") == sum(counts)


def test_labelled_counters_are_served_at_zero_for_every_known_label_value() -> None:
    """rate() and increase() need a sample before the first increment: a series born at its first dead letter
    hid that burst from the dashboard's "Invalid messages" panel and from InvalidMessagesHigh (a real
    Prometheus scraping a daemon fed 64 bad messages showed an increase of 56)."""
    from anomaly.engine.types import REJECT_REASONS
    from anomaly.kafka.codec import DECODE_REASONS

    fresh = PipelineMetrics(CollectorRegistry())
    for reason in DECODE_REASONS:
        assert value(fresh, "anomaly_messages_invalid_total", {"reason": reason}) == 0.0, reason
    for reason in REJECT_REASONS:
        assert value(fresh, "anomaly_readings_rejected_total", {"reason": reason}) == 0.0, reason
    for state in ("kept", "reset"):
        assert value(fresh, "anomaly_model_reloads_total", {"state": state}) == 0.0
    for reason in RESTORE_REFUSALS:
        assert value(fresh, "anomaly_restore_refused_total", {"reason": reason}) == 0.0, reason


def test_restore_refusals_count_by_reason_and_refuse_an_unknown_one(metrics: PipelineMetrics) -> None:
    metrics.restore_refusal("incompatible_model")
    metrics.restore_refusal("incompatible_model")
    metrics.restore_refusal("other_group")
    counts = {r: value(metrics, "anomaly_restore_refused_total", {"reason": r}) for r in RESTORE_REFUSALS}
    assert counts == {"other_group": 1.0, "incompatible_model": 2.0, "bad_state": 0.0}
    with pytest.raises(ValueError) as err:
        metrics.restore_refusal("other_input")
    assert str(err.value) == (
        "restore refusal reason must be one of other_group, incompatible_model, bad_state, got 'other_input'"
    )


def test_engine_counters_become_increments_and_survive_a_new_engine(metrics: PipelineMetrics) -> None:
    metrics.observe(EngineOutput(), Batch([]), FakeEngine(counters={"evicted": 3}), now=0.0)
    metrics.observe(EngineOutput(), Batch([]), FakeEngine(counters={"evicted": 5}), now=0.0)
    assert value(metrics, "anomaly_keys_evicted_total") == 5.0
    # A restored / reloaded engine starts its counters again: its whole value is new.
    metrics.observe(EngineOutput(), Batch([]), FakeEngine(counters={"evicted": 1}), now=0.0)
    assert value(metrics, "anomaly_keys_evicted_total") == 6.0


def test_alert_lifecycle_and_per_key_gauge(metrics: PipelineMetrics) -> None:
    metrics.observe(
        EngineOutput(alerts=[alert("pump-1", "open")]), Batch([]), FakeEngine(active_alerts=1), 0.0
    )
    assert value(metrics, "anomaly_alerts_opened_total") == 1.0
    assert value(metrics, "anomaly_alerts_active") == 1.0
    assert value(metrics, "anomaly_alert_active", {"key": "pump-1"}) == 1.0

    metrics.observe(
        EngineOutput(alerts=[alert("pump-1", "closed")]), Batch([]), FakeEngine(active_alerts=0), 0.0
    )
    assert value(metrics, "anomaly_alerts_closed_total") == 1.0
    assert value(metrics, "anomaly_alerts_active") == 0.0
    assert value(metrics, "anomaly_alert_active", {"key": "pump-1"}) is None  # series removed, not set to 0
    assert b"anomaly_alert_active{" not in metrics.render()


def test_alert_label_cap(metrics: PipelineMetrics) -> None:
    opened = EngineOutput(alerts=[alert(k, "open") for k in ("a", "b", "c", "d")])
    metrics.observe(opened, Batch([]), FakeEngine(active_alerts=4), 0.0)
    assert value(metrics, "anomaly_alerts_active") == 4.0
    assert value(metrics, "anomaly_alert_active", {"key": "a"}) == 1.0
    assert value(metrics, "anomaly_alert_active", {"key": "b"}) == 1.0
    assert value(metrics, "anomaly_alert_active", {"key": "c"}) is None
    assert value(metrics, "anomaly_alert_labels_dropped_total") == 2.0
    # Closing a labelled key frees a slot for the next alert; closing an unlabelled one changes no series.
    closed = EngineOutput(alerts=[alert("a", "closed"), alert("c", "closed"), alert("e", "open")])
    metrics.observe(closed, Batch([]), FakeEngine(active_alerts=3), 0.0)
    assert value(metrics, "anomaly_alert_active", {"key": "a"}) is None
    assert value(metrics, "anomaly_alert_active", {"key": "e"}) == 1.0
    assert value(metrics, "anomaly_alert_labels_dropped_total") == 2.0
    assert value(metrics, "anomaly_alerts_opened_total") == 5.0
    assert value(metrics, "anomaly_alerts_closed_total") == 2.0


def test_stale_alert_series_go_when_the_engine_holds_no_alert(metrics: PipelineMetrics) -> None:
    metrics.observe(EngineOutput(alerts=[alert("a", "open")]), Batch([]), FakeEngine(active_alerts=1), 0.0)
    # e.g. the key was evicted while alerting: no "closed" event, but the engine has no open alert any more.
    metrics.observe(EngineOutput(), Batch([]), FakeEngine(active_alerts=0), 0.0)
    assert value(metrics, "anomaly_alert_active", {"key": "a"}) is None


def test_partition_lag_series_are_removed_on_revoke(metrics: PipelineMetrics) -> None:
    metrics.set_partition_lag({("sensors", 0): 10, ("sensors", 1): 4})
    assert value(metrics, "anomaly_consumer_lag_messages", {"topic": "sensors", "partition": "0"}) == 10.0
    assert value(metrics, "anomaly_consumer_lag_messages", {"topic": "sensors", "partition": "1"}) == 4.0
    metrics.set_partition_lag({("sensors", 1): 2, ("sensors", 2): 7})
    assert value(metrics, "anomaly_consumer_lag_messages", {"topic": "sensors", "partition": "0"}) is None
    assert value(metrics, "anomaly_consumer_lag_messages", {"topic": "sensors", "partition": "1"}) == 2.0
    assert value(metrics, "anomaly_consumer_lag_messages", {"topic": "sensors", "partition": "2"}) == 7.0
    metrics.set_partition_lag({})
    assert b"anomaly_consumer_lag_messages{" not in metrics.render()


def test_daemon_counters_checkpoint_and_model(metrics: PipelineMetrics) -> None:
    metrics.message_consumed()
    metrics.message_consumed(4)
    metrics.message_invalid("malformed")
    metrics.message_invalid("malformed", 2)
    metrics.commit_failed()
    metrics.dead_letter_refused()
    metrics.checkpoint_done(
        0.2,
        at_epoch=1_700_000_123.0,
        state_seconds=0.05,
        state_bytes=1000,
        commit_seconds=0.125,
        state_cpu_seconds=0.03125,
    )
    metrics.checkpoint_done(0.4, at_epoch=1_700_000_128.0, state_seconds=0.25, state_bytes=24)

    class FakeBundle:
        version = "abcd1234-2024-05-01T12:00:00+00:00"
        features = ["a", "b", "c"]
        meta = {"created_at": "2024-05-01T12:00:00+00:00"}

    metrics.model_loaded(FakeBundle())
    metrics.model_reloaded(kept_state=True)
    metrics.model_reloaded(kept_state=False)
    metrics.model_reload_failed()

    assert value(metrics, "anomaly_messages_consumed_total") == 5.0
    assert value(metrics, "anomaly_messages_invalid_total", {"reason": "malformed"}) == 3.0
    assert value(metrics, "anomaly_commit_failures_total") == 1.0
    assert value(metrics, "anomaly_dead_letters_refused_total") == 1.0
    assert value(metrics, "anomaly_checkpoint_duration_seconds_count") == 2.0
    assert value(metrics, "anomaly_checkpoint_duration_seconds_sum") == pytest.approx(0.6)
    assert value(metrics, "anomaly_checkpoint_last_timestamp_seconds") == 1_700_000_128.0
    assert value(metrics, "anomaly_checkpoint_commit_seconds_count") == 2.0
    assert value(metrics, "anomaly_checkpoint_commit_seconds_sum") == pytest.approx(0.125)
    metrics.checkpoint_done(0.001, at_epoch=1_700_000_129.0)  # idle: no state written, not a state sample
    assert value(metrics, "anomaly_checkpoint_state_seconds_count") == 2.0
    assert value(metrics, "anomaly_checkpoint_state_seconds_sum") == pytest.approx(0.3)
    assert value(metrics, "anomaly_checkpoint_state_bytes_total") == 1024.0
    assert value(metrics, "anomaly_checkpoint_state_cpu_seconds_total") == 0.03125
    info = {"version": FakeBundle.version, "trained_at": "2024-05-01T12:00:00+00:00", "features": "3"}
    assert value(metrics, "anomaly_model_info", info) == 1.0
    assert value(metrics, "anomaly_model_trained_timestamp_seconds") == 1_714_564_800.0
    assert value(metrics, "anomaly_model_reloads_total", {"state": "kept"}) == 1.0
    assert value(metrics, "anomaly_model_reloads_total", {"state": "reset"}) == 1.0
    assert value(metrics, "anomaly_model_reload_failures_total") == 1.0


def test_no_metric_is_labelled_by_key_except_alert_active(metrics: PipelineMetrics) -> None:
    for family in text_string_to_metric_families(metrics.render().decode()):
        assert family.name.startswith("anomaly_"), family.name
        for sample in family.samples:
            if sample.name != "anomaly_alert_active":
                assert "key" not in sample.labels, sample


def test_counter_names_end_in_total(metrics: PipelineMetrics) -> None:
    kinds = {f.name: f.type for f in text_string_to_metric_families(metrics.render().decode())}
    counters = sorted(name for name, kind in kinds.items() if kind == "counter")
    assert counters == sorted(
        [
            "anomaly_messages_consumed",
            "anomaly_messages_invalid",
            "anomaly_readings_scored",
            "anomaly_readings_rejected",
            "anomaly_windows_scored",
            "anomaly_alerts_opened",
            "anomaly_alerts_closed",
            "anomaly_alert_labels_dropped",
            "anomaly_keys_evicted",
            "anomaly_gap_resets",
            "anomaly_commit_failures",
            "anomaly_fenced",
            "anomaly_dead_letters_refused",
            "anomaly_restore_refused",
            "anomaly_checkpoint_state_bytes",
            "anomaly_checkpoint_state_cpu_seconds",
            "anomaly_model_reloads",
            "anomaly_model_reload_failures",
        ]
    )  # the parser strips `_total`; the exposition carries it
    text = metrics.render().decode()
    assert all(f"# TYPE {name}_total counter" in text for name in counters)


def test_write_textfile(tmp_path, metrics: PipelineMetrics) -> None:
    metrics.message_consumed(2)
    path = write_textfile(metrics, tmp_path / "out" / "metrics.prom")
    text = path.read_text()
    assert "anomaly_messages_consumed_total 2.0\n" in text
    assert {f.name for f in text_string_to_metric_families(text)} == {
        f.name for f in text_string_to_metric_families(metrics.render().decode())
    }


def _get(url: str | urllib.request.Request) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _head(url: str) -> tuple[int, bytes]:
    return _get(urllib.request.Request(url, method="HEAD"))


def _ready_gauge(base: str) -> float:
    """anomaly_ready as /metrics serves it: what Prometheus sees of /readyz (it had nothing, so a daemon whose
    broker was away for hours fired no alert: up stayed 1 and the idle checkpoint timer kept the age at 0)."""
    (family,) = [
        f
        for f in text_string_to_metric_families(_get(base + "/metrics")[1].decode())
        if f.name == "anomaly_ready"
    ]
    (sample,) = family.samples
    return sample.value


def test_metrics_server_endpoints(metrics: PipelineMetrics) -> None:
    server = MetricsServer(metrics, port=0)
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert server.port != 0
        metrics.message_consumed(7)
        status, body = _get(base + "/metrics")
        assert status == 200
        assert b"anomaly_messages_consumed_total 7.0" in body
        assert _get(base + "/healthz") == (200, b"ok\n")
        assert _get(base + "/readyz") == (503, b"not ready\n")
        assert _ready_gauge(base) == 0.0
        server.set_ready(True)
        assert _get(base + "/readyz") == (200, b"ready\n")
        assert _ready_gauge(base) == 1.0
        server.set_ready(False)
        assert _get(base + "/readyz")[0] == 503
        assert _ready_gauge(base) == 0.0
        assert _get(base + "/nope")[0] == 404
        # HEAD (health checks of HAProxy and some load balancers) answers as GET does, without a body; it was 501
        assert _head(base + "/readyz") == (503, b"")
        server.set_ready(True)
        assert _head(base + "/readyz") == (200, b"")
        assert _head(base + "/healthz") == (200, b"")
        assert _head(base + "/nope") == (404, b"")
        assert _head(base + "/metrics")[0] == 200
    finally:
        server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(base + "/healthz", timeout=2)


def test_a_client_that_resets_its_connection_writes_no_traceback_to_the_daemons_log(
    metrics: PipelineMetrics, capfd: pytest.CaptureFixture[str]
) -> None:
    """A scraper or health check that resets its connection (a scrape timeout, a load balancer's check) made the
    endpoint print a 20-line `Exception occurred during processing of request` traceback to stderr, the
    daemon's log, once per connection (a soak: 10 resets, 220 lines)."""
    server = MetricsServer(metrics, port=0)
    server.start()
    try:
        for request in (b"GET /metr", b"GET /metrics HTTP/1.0\r\n\r\n"):
            for _ in range(3):
                sock = socket.create_connection(("127.0.0.1", server.port))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.sendall(request)
                sock.close()  # with SO_LINGER 0: a reset, not a close
        time.sleep(0.5)
        assert _get(f"http://127.0.0.1:{server.port}/healthz") == (200, b"ok\n")
    finally:
        server.stop()
    assert capfd.readouterr().err == ""


def test_an_idle_metrics_connection_is_closed_after_the_request_timeout(metrics: PipelineMetrics) -> None:
    """A connection that sends nothing held a server thread for as long as its peer kept it open, for ever for a
    peer gone without closing it (half-open): threads without bound over a long run."""
    server = MetricsServer(metrics, port=0, request_timeout_s=0.2)
    server.start()
    try:
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
        for sock in idle:
            sock.settimeout(5)
            assert sock.recv(1) == b""  # the server closed it
            sock.close()
        assert _get(f"http://127.0.0.1:{server.port}/healthz") == (200, b"ok\n")
    finally:
        server.stop()


def test_observe_many_equals_a_loop_of_observe() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    from anomaly.metrics import LATENCY_BUCKETS, observe_many

    values = np.concatenate([np.random.default_rng(0).exponential(2.0, 500), [0.005, 0.0, 300.0, 1e6]])
    one, many = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("x_seconds", "x", buckets=LATENCY_BUCKETS, registry=one)
    h2 = Histogram("x_seconds", "x", buckets=LATENCY_BUCKETS, registry=many)
    for v in values:
        h1.observe(float(v))
    observe_many(h2, values)

    def samples(reg):
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for m in reg.collect()
            for s in m.samples
            if not s.name.endswith("_created")
        }

    got, want = samples(many), samples(one)
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k] == (pytest.approx(v) if k[0].endswith("_sum") else v)


def test_window_histograms_in_bulk_equal_one_window_at_a_time() -> None:
    """Peak score and mean error per window, stacked (equal lengths) or window by window (mixed lengths and an
    empty window): the same values as np.max / np.mean of each window alone."""
    from anomaly.engine.types import ScoredWindow
    from anomaly.metrics import _window_peaks_and_means

    rng = np.random.default_rng(1)

    def window(n: int) -> ScoredWindow:
        f32 = np.float32
        ones, no = np.ones(n, f32), np.zeros(n, bool)
        scores, errors = rng.exponential(1, n).astype(f32), rng.exponential(1, n).astype(f32)
        return ScoredWindow("k", np.arange(n, dtype=float), errors, scores, ones, no, no, np.ones(3, f32) / 3)

    for sizes in ([32] * 300, [32, 5, 0, 100, 1]):
        ws = [window(n) for n in sizes]
        peaks, means = _window_peaks_and_means(ws)
        assert peaks.tolist() == [float(np.max(w.scores)) for w in ws if len(w.scores)]
        assert means.tolist() == [float(np.mean(w.errors)) for w in ws if len(w.errors)]


def test_the_readme_metrics_table_names_every_metric_with_its_type() -> None:
    """What a user reads in README "Monitoring" is what /metrics serves: the same names, the same types
    (anomaly_dead_letters_refused_total was served but not in the table)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    table = readme[readme.index("\n## Monitoring") : readme.index("\n### Alerts")]
    documented = {}
    for names, kind in re.findall(r"^\| (`anomaly_[^|]+) \| (\w+)", table, re.M):
        for name in re.findall(r"`(anomaly_\w+)`", names):
            documented[name.removesuffix("_total")] = (
                "gauge" if kind == "info" else kind
            )  # an Info is a gauge
    metrics = PipelineMetrics(registry=CollectorRegistry())
    served = {
        f.name: f.type
        for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        if not f.name.endswith("_created")  # prometheus_client's creation times of counters and histograms
    }
    assert documented == served


def test_alerts_restored_from_a_checkpoint_get_their_per_key_series(bundle) -> None:
    """A restarted daemon (or the new owner of a partition) restores open alerts from the changelog without an
    "open" event: anomaly_alert_active{key} must follow the engine's open alerts, else AnomalyDetected resolved at
    every restart while the alert stayed open (and the revoking daemon kept a series for a key it gave away)."""
    from anomaly.config import EngineConfig
    from anomaly.engine import Engine, Event
    from tests.helpers import make_series

    cfg = EngineConfig(threshold="static", static_threshold=1000.0, smoothing=1.0, alert_open_after=3)
    values = bundle.scaler.mean + np.zeros((64, len(bundle.features))) + 60 * bundle.scaler.scale
    first = Engine(bundle, cfg)
    for key in ("pump-1", "pump-2"):
        s = make_series(key, 64, len(bundle.features), seed=5)
        assert [a.status for a in first.process([Event(key, s.timestamps, values)]).alerts] == ["open"]
    assert sorted(first.alerting_keys()) == ["pump-1", "pump-2"]

    restored = Engine(bundle, cfg)  # the next process
    restored.restore(first.snapshot())
    metrics = PipelineMetrics(CollectorRegistry())
    metrics.observe(EngineOutput(), Batch([]), restored, now=0.0)
    assert value(metrics, "anomaly_alerts_active") == 2.0
    assert value(metrics, "anomaly_alert_active", {"key": "pump-1"}) == 1.0
    assert value(metrics, "anomaly_alert_active", {"key": "pump-2"}) == 1.0

    restored.drop(["pump-1"])  # its partition revoked: the new owner reports it now
    metrics.observe(EngineOutput(), Batch([]), restored, now=0.0)
    assert value(metrics, "anomaly_alert_active", {"key": "pump-1"}) is None
    assert value(metrics, "anomaly_alert_active", {"key": "pump-2"}) == 1.0


def test_beyond_the_label_cap_a_restart_labels_the_same_oldest_alerts(bundle) -> None:
    """More open alerts than alert_label_cap: which keys get anomaly_alert_active is the cap's oldest alerts (by
    start, then key), in the running daemon and after a restart alike. The per-key series went to the first keys
    with a free slot while running, and after a restore to the first in the engine's LRU order, so a restart
    labelled other keys: Prometheus saw alerts resolve and fire again (pages) for keys whose alert never changed."""
    from anomaly.config import EngineConfig
    from anomaly.engine import Engine, Event
    from tests.helpers import make_series

    cfg = EngineConfig(threshold="static", static_threshold=1000.0, smoothing=1.0, alert_open_after=3)
    values = bundle.scaler.mean + np.zeros((64, len(bundle.features))) + 60 * bundle.scaler.scale
    first = Engine(bundle, cfg)
    metrics = PipelineMetrics(CollectorRegistry(), alert_label_cap=2)
    # pump-c opens first (the oldest alert), then pump-a, then pump-b; pump-c's later readings make it the most
    # recently used key (the engine's LRU order is a, b, c).
    for key, start in (("pump-c", 0.0), ("pump-a", 100.0), ("pump-b", 200.0)):
        s = make_series(key, 64, len(bundle.features), seed=5, start=start)
        out = first.process([Event(key, s.timestamps, values)])
        assert [a.status for a in out.alerts] == ["open"]
        metrics.observe(out, Batch([]), first, now=0.0)
    s = make_series("pump-c", 64, len(bundle.features), seed=5, start=64.0)
    metrics.observe(first.process([Event("pump-c", s.timestamps, values)]), Batch([]), first, now=0.0)

    def labelled(m: PipelineMetrics) -> list[str]:
        return sorted(
            k for k in ("pump-a", "pump-b", "pump-c") if value(m, "anomaly_alert_active", {"key": k})
        )

    assert labelled(metrics) == ["pump-a", "pump-c"]
    assert value(metrics, "anomaly_alert_labels_dropped_total") == 1.0

    restored = Engine(bundle, cfg)  # the next process, restoring the same open alerts
    restored.restore(first.snapshot())
    again = PipelineMetrics(CollectorRegistry(), alert_label_cap=2)
    again.observe(EngineOutput(), Batch([]), restored, now=0.0)
    assert labelled(again) == ["pump-a", "pump-c"]
    assert value(again, "anomaly_alerts_active") == 3.0
    assert restored.alerting_keys() == first.alerting_keys() == ["pump-c", "pump-a", "pump-b"]  # oldest first

    # pump-a's partition revoked: its key dropped without a close event, and the open count (2) still fills the
    # cap, so no count tells: its series goes all the same, and the oldest alert without one takes the slot
    restored.drop(["pump-a"])
    again.observe(EngineOutput(), Batch([]), restored, now=0.0)
    assert labelled(again) == ["pump-b", "pump-c"]
    # a newer alert gets no series while the cap is full, and takes none from an alert that has one
    s = make_series("pump-d", 64, len(bundle.features), seed=5, start=300.0)
    out = restored.process([Event("pump-d", s.timestamps, values)])
    assert [a.status for a in out.alerts] == ["open"]
    again.observe(out, Batch([]), restored, now=0.0)
    assert labelled(again) == ["pump-b", "pump-c"]
    assert value(again, "anomaly_alert_active", {"key": "pump-d"}) is None
    assert value(again, "anomaly_alert_labels_dropped_total") == 1.0


def test_the_help_of_window_metrics_says_what_they_count() -> None:
    """/metrics HELP as README "Monitoring" says: the default model is a forecaster scored on arrival, so these
    count report windows (short ones at gaps too) and forecast errors; the HELP said "Full windows",
    "reconstruction error" and "Windows per batched model call"."""
    families = {
        f.name: f.documentation
        for f in text_string_to_metric_families(generate_latest(PipelineMetrics().registry).decode())
    }
    assert [
        families[n]
        for n in ("anomaly_windows_scored", "anomaly_window_error_mse", "anomaly_batch_size_windows")
    ] == [
        "Windows scored: whole windows, or report windows of model.window readings scored on arrival (the default); "
        "a short one at a gap, an eviction or the end of a replay.",
        "Mean point error of each scored window (squared forecast or reconstruction error, standardized units).",
        "Pieces per batched model call, one per key: a whole window, or the key's readings up to the end of its "
        "report window (scored on arrival, the default).",
    ]

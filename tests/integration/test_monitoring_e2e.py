"""Monitoring end to end with real Prometheus and Alertmanager, using the rules, Alertmanager routing and Grafana
dashboard shipped in deploy/.

Alert ``for:`` durations are shortened to 1 s in a test copy of the rules (tests/integration/promstack.py,
``rewrite_for``); Alertmanager's group_wait/group_interval to 1 s and its webhook URLs to the test's receiver
(``rewrite_alertmanager``). Nothing else about the shipped configuration changes.
"""

from __future__ import annotations

import math
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import promstack
import pytest

from anomaly.config import EngineConfig
from anomaly.data import Series
from anomaly.engine import Engine
from anomaly.engine.types import Alert, EngineOutput, Rejection, ScoredWindow
from anomaly.metrics import MetricsServer, PipelineMetrics
from anomaly.replay import merged_batches
from anomaly.runner import Batch, run
from anomaly.synthetic import SyntheticSpec, generate

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (shutil.which("prometheus") and shutil.which("prometheus-alertmanager")),
        reason="needs the Debian packages prometheus and prometheus-alertmanager",
    ),
]

KEYS = [f"pump-{i}" for i in range(5)]
ANOMALOUS = "pump-3"


@dataclass
class Stack:
    prometheus: promstack.Prometheus
    alertmanager: promstack.Alertmanager
    webhook: promstack.WebhookReceiver
    started: float


@pytest.fixture
def webhook() -> Iterator[promstack.WebhookReceiver]:
    receiver = promstack.WebhookReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def alertmanager(tmp_path: Path, webhook: promstack.WebhookReceiver) -> Iterator[promstack.Alertmanager]:
    am = promstack.start_alertmanager(tmp_path / "alertmanager", webhook.url)
    yield am
    am.stop()


def start_stack(
    tmp_path: Path, target: str, alertmanager: promstack.Alertmanager, webhook: promstack.WebhookReceiver
) -> Stack:
    prom = promstack.start_prometheus(tmp_path / "prometheus", [target], alertmanager.address)
    return Stack(prom, alertmanager, webhook, time.time())


# -- what every monitoring e2e asserts ---------------------------------------------------------------------------


def firing_names(prom: promstack.Prometheus) -> set[str]:
    return {a["labels"]["alertname"] for a in prom.alerts("firing")}


def assert_anomaly_detected(stack: Stack, key: str, timeout: float, group: str | None = None) -> None:
    """AnomalyDetected for ``key`` fires in Prometheus and reaches the webhook through the anomaly route; with
    ``group``, the daemon's consumer group (its anomaly_pipeline_info) labels the alert and its page's group."""
    pipeline = {} if group is None else {"group": group}
    prom_alert = promstack.wait_until(
        lambda: [
            a for a in stack.prometheus.alerts("firing") if a["labels"]["alertname"] == "AnomalyDetected"
        ],
        timeout,
        what="AnomalyDetected to fire in Prometheus",
    )
    assert [a["labels"] for a in prom_alert] == [
        {
            "alertname": "AnomalyDetected",
            "job": "anomaly",
            "key": key,
            "severity": "warning",
            "category": "anomaly",
            **pipeline,
        }
    ]
    assert prom_alert[0]["annotations"]["summary"] == f"Anomaly detected on sensor {key}"

    received = promstack.wait_until(
        lambda: stack.webhook.alerts("AnomalyDetected", "firing"),
        30,
        what="AnomalyDetected to reach the webhook",
    )
    note, alert = received[0]
    assert note.path == "/anomaly"
    assert note.payload["receiver"] == "anomaly-webhook"
    assert note.payload["groupLabels"] == {"alertname": "AnomalyDetected", "job": "anomaly", **pipeline}
    assert alert["labels"]["key"] == key
    assert alert["annotations"]["runbook_url"] == (
        "https://github.com/example/anomaly/blob/main/deploy/README.md#anomalydetected"
    )


def assert_anomaly_resolved(stack: Stack, key: str, timeout: float) -> None:
    promstack.wait_until(
        lambda: "AnomalyDetected" not in firing_names(stack.prometheus) or None,
        timeout,
        what="AnomalyDetected to resolve in Prometheus",
    )
    resolved = promstack.wait_until(
        lambda: stack.webhook.alerts("AnomalyDetected", "resolved"),
        30,
        what="the resolved notification to reach the webhook",
    )
    note, alert = resolved[0]
    assert (note.path, alert["labels"]["key"]) == ("/anomaly", key)


def assert_dashboard_has_data(prom: promstack.Prometheus, start: float, timeout: float = 20.0) -> None:
    """Every PromQL expression of the Grafana dashboard returns at least one finite sample since ``start``.
    Expressions are retried for up to ``timeout`` seconds: a rate() needs two scrapes of a series that may have
    appeared a moment ago."""
    exprs = promstack.dashboard_exprs()
    assert len(exprs) >= 25
    missing = list(exprs)
    deadline = time.monotonic() + timeout
    while missing and time.monotonic() < deadline:
        still = []
        for title, expr in missing:
            series = prom.query_range(expr, start, time.time(), step=1.0)
            if not any(math.isfinite(float(v)) for s in series for _, v in s["values"]):
                still.append((title, expr))
        missing = still
        if missing:
            time.sleep(1.0)
    assert missing == []


# -- the daemon played by PipelineMetrics + MetricsServer --------------------------------------------------------


@dataclass
class FakeEngine:
    active_alerts: int = 0
    counters: dict[str, int] = field(default_factory=lambda: {"evicted": 0, "gap_resets": 0})

    def __len__(self) -> int:
        return len(KEYS)


def scored_window(key: str, last_ts: float, score: float, width: int = 8) -> ScoredWindow:
    scores = np.full(width, score, np.float32)
    return ScoredWindow(
        key=key,
        timestamps=last_ts - np.arange(width)[::-1].astype(np.float64),
        errors=scores * 0.05,
        scores=scores,
        thresholds=np.full(width, 1.5, np.float32),
        anomalous=scores > 1.5,
        alert_open=scores > 1.5,
        contributions=np.full(3, 1 / 3, np.float32),
    )


def alert(key: str, status: str, at: float) -> Alert:
    return Alert(
        id=f"{key}-{at:.0f}",
        key=key,
        status=status,
        start=at,
        end=None if status == "open" else at,
        at=at,
        peak_score=4.0,
        threshold=1.5,
        model_version="test",
    )


class Player(threading.Thread):
    """Feeds PipelineMetrics the way the daemon's loop does, every 0.2 s: five keys' windows, lag, checkpoints.
    ``anomaly(True)`` opens an alert for ANOMALOUS (and scores it high) until ``anomaly(False)`` closes it."""

    def __init__(self, metrics: PipelineMetrics) -> None:
        super().__init__(daemon=True)
        self.metrics = metrics
        self.engine = FakeEngine()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.anomalous = False
        self.first = True

    def anomaly(self, on: bool) -> None:
        with self.lock:
            now = time.time()
            self.anomalous = on
            self.engine.active_alerts = int(on)
            out = EngineOutput(alerts=[alert(ANOMALOUS, "open" if on else "closed", now)])
            self.metrics.observe(out, Batch(events=[]), self.engine, now)

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            with self.lock:
                now = time.time()
                windows = [
                    scored_window(k, now - 0.05, 4.0 if self.anomalous and k == ANOMALOUS else 0.6)
                    for k in KEYS
                ]
                rejections = [Rejection("", "malformed", 1, True)] if self.first else []
                if self.first:
                    self.metrics.message_invalid("invalid_json")
                self.first = False
                self.metrics.message_consumed(len(KEYS) * 8 + len(rejections))
                out = EngineOutput(
                    windows=windows,
                    rejections=rejections,
                    readings=len(KEYS) * 8,
                    batches=[len(windows)],
                    # the readings this batch decided: what anomaly_latency_seconds observes (the daemon's
                    # engine reports them; without them the "End-to-end latency" panel had no data here)
                    decided=[np.stack([w.timestamps for w in windows])],
                )
                self.metrics.observe(out, Batch(events=[], messages=len(KEYS) * 8), self.engine, now)
                self.metrics.set_partition_lag({("sensors", 0): 3, ("sensors", 1): 5})
                self.metrics.checkpoint_done(0.012, now)


def test_alerts_and_dashboard_from_served_metrics(
    tmp_path: Path, alertmanager: promstack.Alertmanager, webhook: promstack.WebhookReceiver
) -> None:
    metrics = PipelineMetrics()
    metrics.model_loaded(
        SimpleNamespace(
            version="test",
            features=["a", "b", "c"],
            meta={"created_at": datetime.now(UTC).isoformat(timespec="seconds")},
            calibration={"point_error_quantiles": {"0.5": 0.02, "0.9": 0.04, "0.99": 0.08}},
        )
    )
    server = MetricsServer(metrics, port=0)
    server.start()
    server.set_ready(True)
    player = Player(metrics)
    player.start()
    stack = start_stack(tmp_path, f"127.0.0.1:{server.port}", alertmanager, webhook)
    try:
        promstack.wait_until(
            lambda: stack.prometheus.query('up{job="anomaly"} == 1'),
            30,
            what="Prometheus to scrape the metrics server",
        )
        time.sleep(3)  # a few scrapes of normal operation first
        assert firing_names(stack.prometheus) == set()

        player.anomaly(True)
        assert_anomaly_detected(stack, ANOMALOUS, timeout=30)
        assert firing_names(stack.prometheus) == {"AnomalyDetected"}  # no pipeline-health alert meanwhile
        assert_dashboard_has_data(stack.prometheus, stack.started)

        player.anomaly(False)
        assert_anomaly_resolved(stack, ANOMALOUS, timeout=30)

        # A broker outage: the daemon is still scraped and checkpoints on its idle timer, only /readyz says 503.
        server.set_ready(False)
        not_ready = promstack.wait_until(
            lambda: webhook.alerts("DaemonNotReady", "firing"), 30, what="DaemonNotReady to reach the webhook"
        )
        note, alert_ = not_ready[0]
        assert (note.path, note.payload["receiver"]) == ("/pipeline", "pipeline-webhook")
        assert alert_["labels"]["instance"] == f"127.0.0.1:{server.port}"
        assert firing_names(stack.prometheus) == {"DaemonNotReady"}  # nothing else saw the outage
        server.set_ready(True)
        promstack.wait_until(
            lambda: webhook.alerts("DaemonNotReady", "resolved"), 30, what="DaemonNotReady to resolve"
        )

        # The daemon going away is noticed too: DaemonDown through the pipeline route.
        player.stopped.set()
        server.stop()
        down = promstack.wait_until(
            lambda: webhook.alerts("DaemonDown", "firing"), 30, what="DaemonDown to reach the webhook"
        )
        note, alert_ = down[0]
        assert (note.path, note.payload["receiver"]) == ("/pipeline", "pipeline-webhook")
        assert alert_["labels"]["instance"] == f"127.0.0.1:{server.port}"
    finally:
        player.stopped.set()
        server.stop()
        stack.prometheus.stop()


class RestoredEngine:
    """An engine whose open alerts came back from the changelog: no close or open event, only the list."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        self.counters: dict[str, int] = {}

    @property
    def active_alerts(self) -> int:
        return len(self.keys)

    def alerting_keys(self) -> list[str]:
        return list(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


def serve_restored(port: int, key: str) -> MetricsServer:
    """A daemon (re)started with ``key``'s alert restored: its first batch gives the key its series."""
    metrics = PipelineMetrics()
    metrics.observe(EngineOutput(), Batch(events=[]), RestoredEngine([key]), time.time())
    server = MetricsServer(metrics, port=port)
    server.start()
    server.set_ready(True)
    return server


def test_a_daemon_restart_does_not_page_an_open_alert_again(
    tmp_path: Path, alertmanager: promstack.Alertmanager, webhook: promstack.WebhookReceiver
) -> None:
    """The daemon restarts while a key's alert is open: no scrape for a few seconds, then the alert restored. The
    operator got one page and gets no resolved notification and no second page (before keep_firing_for, the
    missing series resolved AnomalyDetected and the restored one fired it again: every open alert paged twice
    on each restart or rebalance)."""
    port = promstack.free_port()
    server = serve_restored(port, ANOMALOUS)
    stack = start_stack(tmp_path, f"127.0.0.1:{port}", alertmanager, webhook)
    try:
        assert_anomaly_detected(stack, ANOMALOUS, timeout=30)
        first = {a["startsAt"] for _, a in webhook.alerts("AnomalyDetected", "firing")}
        server.stop()
        promstack.wait_until(
            lambda: stack.prometheus.query('up{job="anomaly"} == 0'), 30, what="a failed scrape"
        )
        time.sleep(2)
        server = serve_restored(port, ANOMALOUS)
        promstack.wait_until(
            lambda: stack.prometheus.query(f'anomaly_alert_active{{key="{ANOMALOUS}"}} == 1'),
            30,
            what="the restored alert's series to be scraped",
        )
        time.sleep(5)  # Alertmanager's waits are 1 s: a resolve or a new page would have arrived by now
        assert webhook.alerts("AnomalyDetected", "resolved") == []
        assert {a["startsAt"] for _, a in webhook.alerts("AnomalyDetected", "firing")} == first
        assert len(first) == 1
    finally:
        server.stop()
        stack.prometheus.stop()


def anomaly_notes(webhook: promstack.WebhookReceiver, alertname: str) -> list[promstack.Notification]:
    """The notifications received so far with a firing ``alertname`` alert in them."""
    with webhook._lock:
        seen = list(webhook.notifications)
    return [
        n
        for n in seen
        if any(a["labels"]["alertname"] == alertname and a["status"] == "firing" for a in n.payload["alerts"])
    ]


def test_many_keys_alerting_at_once_are_one_notification_and_the_rate_page_inhibits_the_rest(
    tmp_path: Path, alertmanager: promstack.Alertmanager, webhook: promstack.WebhookReceiver
) -> None:
    """A plant-wide event opens alerts on many keys at once. The operator gets one AnomalyDetected notification
    listing every key (Alertmanager grouped the anomaly route by alertname and key: one page per key, 10 here and
    up to 100 per daemon), then AnomalyRateHigh, which inhibits the job's per-key alerts: keys that open during
    the storm send nothing more (before, each paged on its own)."""
    port = promstack.free_port()
    metrics = PipelineMetrics()
    metrics.checkpoint_done(0.01, time.time())  # a healthy daemon: no CheckpointStale meanwhile
    engine = RestoredEngine([])
    server = MetricsServer(metrics, port=port)
    server.start()
    server.set_ready(True)

    def observe(opened: list[str], closed: tuple[str, ...] = ()) -> None:
        now = time.time()
        engine.keys.extend(k for k in opened if k not in closed)
        out = EngineOutput(
            alerts=[alert(k, "open", now) for k in opened] + [alert(k, "closed", now) for k in closed]
        )
        metrics.observe(out, Batch(events=[]), engine, now)

    stack = start_stack(tmp_path, f"127.0.0.1:{port}", alertmanager, webhook)
    try:
        promstack.wait_until(
            lambda: stack.prometheus.query('up{job="anomaly"} == 1'), 30, what="Prometheus to scrape"
        )
        # 8 scrapes of anomaly_alerts_opened_total at 0: increase() counts from them, not past 20. Counted, not
        # slept for (8 s): a busy machine's Prometheus misses scrapes, and fewer samples extrapolate further.
        promstack.wait_until(
            lambda: stack.prometheus.query(
                'count_over_time(anomaly_alerts_opened_total{job="anomaly"}[5m]) >= 8'
            ),
            60,
            what="8 scrapes of anomaly_alerts_opened_total at 0",
        )
        first = [f"pump-{i:03d}" for i in range(10)]
        observe(first)
        promstack.wait_until(
            lambda: anomaly_notes(webhook, "AnomalyDetected"), 30, what="AnomalyDetected to reach the webhook"
        )
        time.sleep(5)  # Alertmanager's waits are 1 s: a notification per key would have arrived by now
        (note,) = anomaly_notes(webhook, "AnomalyDetected")
        assert (note.path, note.payload["receiver"]) == ("/anomaly", "anomaly-webhook")
        assert note.payload["groupLabels"] == {"alertname": "AnomalyDetected", "job": "anomaly"}
        assert sorted(a["labels"]["key"] for a in note.payload["alerts"]) == first  # every key, in one
        assert {a["annotations"]["summary"] for a in note.payload["alerts"]} == {
            f"Anomaly detected on sensor {k}" for k in first
        }
        assert firing_names(stack.prometheus) == {"AnomalyDetected"}

        # The storm goes on: 15 more alerts open (and close at once), 25 in the hour: AnomalyRateHigh pages.
        flash = tuple(f"pump-{i:03d}" for i in range(10, 25))
        observe(list(flash), closed=flash)
        promstack.wait_until(
            lambda: anomaly_notes(webhook, "AnomalyRateHigh"), 30, what="AnomalyRateHigh to reach the webhook"
        )
        (rate,) = anomaly_notes(webhook, "AnomalyRateHigh")
        assert rate.payload["groupLabels"] == {"alertname": "AnomalyRateHigh", "job": "anomaly"}

        # More keys alert while it fires: Prometheus fires them, Alertmanager holds them back (inhibited).
        later = [f"pump-{i:03d}" for i in range(25, 45)]
        observe(later)
        promstack.wait_until(
            lambda: (
                len(
                    [
                        a
                        for a in stack.prometheus.alerts("firing")
                        if a["labels"]["alertname"] == "AnomalyDetected"
                    ]
                )
                == 30
            ),
            30,
            what="the later keys' AnomalyDetected to fire in Prometheus",
        )

        def inhibited() -> set[str]:
            return {
                a["labels"]["key"]
                for a in stack.alertmanager.alerts()
                if a["labels"]["alertname"] == "AnomalyDetected" and a["status"]["inhibitedBy"]
            }

        promstack.wait_until(
            lambda: inhibited() == set(first + later), 30, what="Alertmanager to inhibit every per-key alert"
        )
        time.sleep(5)
        assert anomaly_notes(webhook, "AnomalyDetected") == [note]  # still the one notification
        with webhook._lock:  # and nothing else: no per-key page, no update of the inhibited group
            assert webhook.notifications == [note, rate]
    finally:
        server.stop()
        stack.prometheus.stop()


# -- the real daemon: `anomaly consume` on a Tansu broker --------------------------------------------------------


def anomaly_stream(
    features: list[str], n: int = 400, shift: slice = slice(200, 260)
) -> tuple[list[Series], list[Series]]:
    """Two keys of synthetic plant data (the tiny model's plant) ending now, 1 s apart; "unit-A" gets a level
    shift of 6 standard deviations on one sensor over ``shift``. Returned cut where the shift ends: (up to the
    end of the anomaly, the normal rest)."""
    a = generate(SyntheticSpec(n_sensors=3, n_points=n, seed=31))
    b = generate(SyntheticSpec(n_sensors=3, n_points=n, seed=61))
    va = a[features].to_numpy(np.float32).copy()
    vb = b[features].to_numpy(np.float32).copy()
    va[shift, 1] += 6 * va[: shift.start, 1].std()
    ts = np.floor(time.time()) - n + np.arange(n, dtype=np.float64)
    cut = shift.stop

    def part(sl: slice) -> list[Series]:
        return [Series("unit-A", ts[sl], va[sl]), Series("unit-B", ts[sl], vb[sl])]

    return part(slice(0, cut)), part(slice(cut, None))


def replay_alerts(bundle, parts: list[list[Series]]) -> list[tuple[list[tuple[str, str]], int]]:
    """(alert (key, status) events, alerts open afterwards) of each part, through the replay loop."""
    engine = Engine(bundle, EngineConfig(threshold="static"))
    result = []
    for series in parts:
        outs: list[EngineOutput] = []
        run(engine, merged_batches(series, 97), [], on_batch=lambda b, o, outs=outs: outs.append(o))
        result.append(([(a.key, a.status) for o in outs for a in o.alerts], engine.active_alerts))
    return result


def test_daemon_alert_reaches_webhook_and_resolves(
    tmp_path: Path,
    kafka_env,
    tiny_model,
    alertmanager: promstack.Alertmanager,
    webhook: promstack.WebhookReceiver,
) -> None:
    from conftest import http_status, terminate, wait_for

    _, bundle = tiny_model
    anomalous, normal = anomaly_stream(bundle.features)
    # What the daemon must do, by the replay loop: one alert for unit-A, open after the shift, closed after.
    assert replay_alerts(bundle, [anomalous, normal]) == [
        ([("unit-A", "open")], 1),
        ([("unit-A", "closed")], 0),
    ]

    names = kafka_env.names(partitions=2)
    # Small polls keep every loop turn far below the 3 s max.poll.interval of the shared fixture, even on a
    # loaded CI machine.
    proc, port = kafka_env.start(names, "--checkpoint-interval", "0.5", "--max-poll-records", "50")
    wait_for(lambda: http_status(port, "/readyz") == 200, 60, "daemon ready")
    stack = start_stack(tmp_path, f"127.0.0.1:{port}", alertmanager, webhook)
    try:
        promstack.wait_until(
            lambda: stack.prometheus.query('up{job="anomaly"} == 1'),
            30,
            what="Prometheus to scrape the daemon",
        )
        kafka_env.produce(names.input, anomalous, bundle.features, raw=[(b"unit-C", b"{not json")])
        assert_anomaly_detected(stack, "unit-A", timeout=60, group=names.group)
        assert firing_names(stack.prometheus) == {"AnomalyDetected"}
        assert_dashboard_has_data(stack.prometheus, stack.started)

        kafka_env.produce(names.input, normal, bundle.features)
        assert_anomaly_resolved(stack, "unit-A", timeout=60)
        assert http_status(port, "/healthz") == 200
        assert terminate(proc) == 0
    finally:
        stack.prometheus.stop()


def test_two_pipelines_pipeline_alerts_are_one_notification_each_listing_their_daemons(
    alertmanager: promstack.Alertmanager, webhook: promstack.WebhookReceiver
) -> None:
    """The shipped routing, fed alerts as the rules label them: ConsumerLagHigh of pipeline plant-a's two daemons
    and plant-b's one, and DaemonDown of two targets that never said their group. Grouped per instance (before
    session 23), plant-a's broker outage was one notification per daemon; now one per pipeline, while the alerts
    without a group stay one per daemon (grouped by group alone they would be one, whatever their pipelines)."""
    import json as jsonlib
    import urllib.request

    def alert(name: str, instance: str, **labels: str) -> dict[str, object]:
        base = {"alertname": name, "job": "anomaly", "instance": instance, "category": "pipeline"}
        return {"labels": {**base, **labels}}

    alerts = [
        alert("ConsumerLagHigh", "a1:9108", group="plant-a"),
        alert("ConsumerLagHigh", "a2:9108", group="plant-a"),
        alert("ConsumerLagHigh", "b1:9108", group="plant-b"),
        alert("DaemonDown", "x1:9108"),
        alert("DaemonDown", "x2:9108"),
    ]
    request = urllib.request.Request(
        f"{alertmanager.url}/api/v2/alerts",
        data=jsonlib.dumps(alerts).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=5).close()

    def notified() -> dict[str, list[list[str]]] | None:
        got: dict[str, list[list[str]]] = {"ConsumerLagHigh": [], "DaemonDown": []}
        for n in list(webhook.notifications):
            if n.payload["status"] == "firing":
                (name,) = {a["labels"]["alertname"] for a in n.payload["alerts"]}
                got[name].append(sorted(a["labels"]["instance"] for a in n.payload["alerts"]))
        return got if sum(map(len, got.values())) >= 4 else None

    got = promstack.wait_until(notified, 30, what="four notifications")
    assert {name: sorted(lists) for name, lists in got.items()} == {
        "ConsumerLagHigh": [["a1:9108", "a2:9108"], ["b1:9108"]],
        "DaemonDown": [["x1:9108"], ["x2:9108"]],
    }
    assert {n.path for n in webhook.notifications} == {"/pipeline"}

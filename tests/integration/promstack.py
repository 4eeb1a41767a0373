"""Real Prometheus and Alertmanager for integration tests, on free loopback ports with temp-dir storage.

Both run the configuration shipped in ``deploy/`` with the smallest set of documented, test-only rewrites:

* **Rules**: ``deploy/prometheus/rules/*.yml`` are copied with every ``for:`` field replaced by a short
  duration (:func:`rewrite_for`; default ``1s``; ModelDrift keeps its own) and every ``keep_firing_for:`` by
  :data:`KEEP_FIRING_FOR` (10 s: longer than a restart the tests play, short enough for them to see a
  resolve). Expressions, labels and annotations are unchanged. This is the only way the tests shorten alert
  durations; the real durations are covered by the promtool unit tests in ``deploy/prometheus/tests``.
* **Prometheus config**: generated (:func:`prometheus_config`): 1 s scrape and evaluation intervals, one
  ``job="anomaly"`` scrape job (the job name the rules select) and the test's Alertmanager.
* **Alertmanager**: ``deploy/alertmanager/alertmanager.yml`` with every webhook URL pointed at the test's
  receiver (the URL path is kept, so routing stays observable) and every ``group_wait`` / ``group_interval``
  shortened to 1 s (:func:`rewrite_alertmanager`). Routes, grouping and receivers are unchanged.

The binaries come from the Debian packages ``prometheus`` and ``prometheus-alertmanager``.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES_DIR = DEPLOY / "prometheus" / "rules"
ALERTMANAGER_YML = DEPLOY / "alertmanager" / "alertmanager.yml"
DASHBOARD_JSON = DEPLOY / "grafana" / "dashboards" / "anomaly.json"
PROMETHEUS_BIN = shutil.which("prometheus") or "/usr/bin/prometheus"
ALERTMANAGER_BIN = (
    shutil.which("prometheus-alertmanager")
    or shutil.which("alertmanager")
    or "/usr/bin/prometheus-alertmanager"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.25, what: str = "condition"
) -> Any:
    """Poll until ``predicate()`` is truthy and return its value; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (OSError, urllib.error.URLError, ValueError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def http_json(url: str, data: bytes | None = None, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, data=data, timeout=timeout) as resp:
        return json.loads(resp.read())


# -- documented config rewrites ----------------------------------------------------------------------------------


# Alerts that judge a long stretch of data keep their production ``for:``: ModelDrift's PSI is a property of
# 30 minutes of scores, and the tests' streams of a few hundred points (with an injected anomaly) would trip it.
KEEP_FOR = ("ModelDrift",)
KEEP_FIRING_FOR = "10s"


def rewrite_for(src: Path, dst: Path, duration: str = "1s") -> Path:
    """Copy a rules file, replacing every rule's ``for:`` (when present) by ``duration``, except the alerts of
    :data:`KEEP_FOR`, and every ``keep_firing_for:`` by :data:`KEEP_FIRING_FOR`; nothing else changes."""
    doc = yaml.safe_load(src.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule and rule.get("alert") not in KEEP_FOR:
                rule["for"] = duration
            if "keep_firing_for" in rule:
                rule["keep_firing_for"] = KEEP_FIRING_FOR
    dst.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dst


def prometheus_config(
    targets: Iterable[str], rule_files: Iterable[Path], alertmanager: str | None, interval: str = "1s"
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [{"job_name": "anomaly", "static_configs": [{"targets": list(targets)}]}],
    }
    if alertmanager:
        cfg["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    return cfg


def rewrite_alertmanager(src: Path, webhook_base: str, wait: str = "1s") -> dict[str, Any]:
    """The shipped Alertmanager config with webhooks sent to ``webhook_base`` + original path, short grouping."""
    doc = yaml.safe_load(src.read_text())

    def shorten(route: dict[str, Any]) -> None:
        for name in ("group_wait", "group_interval"):
            if name in route or route is doc["route"]:
                route[name] = wait
        for child in route.get("routes", []):
            shorten(child)

    shorten(doc["route"])
    for receiver in doc.get("receivers", []):
        for hook in receiver.get("webhook_configs", []):
            path = urllib.parse.urlsplit(hook["url"]).path
            hook["url"] = webhook_base.rstrip("/") + path
    return doc


# -- processes ---------------------------------------------------------------------------------------------------


@dataclass
class Service:
    """A started binary with its HTTP base URL and log file; ``stop()`` terminates it (kill after 10 s)."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")


def _launch(name: str, argv: list[str], workdir: Path, ready_url: str, timeout: float) -> Service:
    log = workdir / f"{name}.log"
    fh = log.open("wb")
    proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=workdir)
    fh.close()
    service = Service(name, proc, ready_url.rsplit("/-/", 1)[0], log)

    def ready() -> bool:
        service._check_alive()
        with urllib.request.urlopen(ready_url, timeout=2) as resp:
            return resp.status == 200

    try:
        wait_until(ready, timeout, what=f"{name} to become ready")
    except BaseException:
        service.stop()
        raise
    return service


@dataclass
class Prometheus(Service):
    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        body = http_json(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}")
        return body["data"]["result"]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": str(step)}
        body = http_json(f"{self.url}/api/v1/query_range?{urllib.parse.urlencode(params)}")
        if body.get("status") != "success":
            raise ValueError(f"query {expr!r} failed: {body}")
        return body["data"]["result"]

    def alerts(self, state: str | None = "firing") -> list[dict[str, Any]]:
        """Alerts of the rules, as the /api/v1/alerts API lists them (optionally only one state)."""
        found = http_json(f"{self.url}/api/v1/alerts")["data"]["alerts"]
        return [a for a in found if state is None or a["state"] == state]

    def rule_groups(self) -> list[dict[str, Any]]:
        return http_json(f"{self.url}/api/v1/rules")["data"]["groups"]


def start_prometheus(
    workdir: Path,
    targets: Iterable[str],
    alertmanager: str | None = None,
    for_duration: str = "1s",
    interval: str = "1s",
    timeout: float = 30.0,
) -> Prometheus:
    """Start Prometheus scraping ``targets`` as job "anomaly" with the deploy rules (``for:`` rewritten)."""
    workdir.mkdir(parents=True, exist_ok=True)
    rules = [rewrite_for(src, workdir / src.name, for_duration) for src in sorted(RULES_DIR.glob("*.yml"))]
    config = workdir / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(prometheus_config(targets, rules, alertmanager, interval), sort_keys=False)
    )
    port = free_port()
    argv = [
        PROMETHEUS_BIN,
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    s = _launch("prometheus", argv, workdir, f"http://127.0.0.1:{port}/-/ready", timeout)
    return Prometheus(s.name, s.process, s.url, s.log)


@dataclass
class Alertmanager(Service):
    def alerts(self) -> list[dict[str, Any]]:
        return http_json(f"{self.url}/api/v2/alerts")

    @property
    def address(self) -> str:
        return self.url.removeprefix("http://")


def start_alertmanager(workdir: Path, webhook_base: str, timeout: float = 30.0) -> Alertmanager:
    """Start Alertmanager with deploy/alertmanager/alertmanager.yml rewritten (see module docstring)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "alertmanager.yml"
    config.write_text(yaml.safe_dump(rewrite_alertmanager(ALERTMANAGER_YML, webhook_base), sort_keys=False))
    port = free_port()
    argv = [
        ALERTMANAGER_BIN,
        f"--config.file={config}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ]
    s = _launch("alertmanager", argv, workdir, f"http://127.0.0.1:{port}/-/ready", timeout)
    return Alertmanager(s.name, s.process, s.url, s.log)


# -- webhook receiver --------------------------------------------------------------------------------------------


@dataclass
class Notification:
    path: str
    payload: dict[str, Any]


@dataclass
class WebhookReceiver:
    """Collects Alertmanager webhook notifications posted to any path of ``url``."""

    notifications: list[Notification] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> WebhookReceiver:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with owner._lock:
                    owner.notifications.append(Notification(self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("WebhookReceiver.start() first")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def alerts(self, alertname: str, status: str) -> list[tuple[Notification, dict[str, Any]]]:
        """(notification, alert) pairs received so far for ``alertname`` with ``status`` (firing|resolved)."""
        with self._lock:
            seen = list(self.notifications)
        return [
            (n, a)
            for n in seen
            for a in n.payload.get("alerts", [])
            if a["labels"].get("alertname") == alertname and a["status"] == status
        ]


# -- dashboard ---------------------------------------------------------------------------------------------------


def dashboard_exprs(path: Path = DASHBOARD_JSON, rate_interval: str = "1m") -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, with Grafana's ``$__rate_interval`` replaced by
    ``rate_interval`` and the ``$instance`` variable by ``.*`` (its "All" value), as Grafana substitutes them at
    query time; Prometheus knows neither. Then the PromQL of each variable that has some (query_result), with
    ``$group`` as ``.*``."""
    doc = json.loads(path.read_text())
    out = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    out.append(
                        (
                            panel["title"],
                            target["expr"]
                            .replace("$__rate_interval", rate_interval)
                            .replace("$instance", ".*"),
                        )
                    )
            walk(panel.get("panels", []))

    walk(doc["panels"])
    # the variables whose query is PromQL (query_result: $instance, narrowed by $group, here any group)
    for var in doc["templating"]["list"]:
        query = var.get("query", {}).get("query", "") if isinstance(var.get("query"), dict) else ""
        if query.startswith("query_result(") and query.endswith(")"):
            out.append((f"${var['name']} variable", query[len("query_result(") : -1].replace("$group", ".*")))
    return out

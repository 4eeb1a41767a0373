"""deploy/: files parse, reference files that exist, and pass promtool/amtool checks and the rule unit tests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from anomaly.config import build_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules" / "anomaly.rules.yml"
RUNBOOKS = "https://github.com/example/anomaly/blob/main/deploy/README.md"
ALERTS = {
    "AnomalyDetected",
    "AnomalyRateHigh",
    "ConsumerLagHigh",
    "PipelineStalled",
    "DaemonDown",
    "DaemonNotReady",
    "DaemonFenced",
    "InvalidMessagesHigh",
    "ReadingsRejectedHigh",
    "RestoreRefused",
    "CheckpointStale",
    "ModelStale",
    "ModelDrift",
    "ModelReloadFailed",
}

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="needs promtool (Debian: prometheus)"
)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def k8s(kind: str) -> list[dict[str, Any]]:
    docs = [
        d for p in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d
    ]
    return [d for d in docs if d["kind"] == kind]


def rules() -> list[dict[str, Any]]:
    return [r for g in load_yaml(RULES)["groups"] for r in g["rules"]]


def test_every_yaml_and_json_file_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yml")) + sorted(DEPLOY.rglob("*.yaml"))
    assert len(files) >= 12
    for path in files:
        assert list(yaml.safe_load_all(path.read_text())), path
    for path in DEPLOY.rglob("*.json"):
        json.loads(path.read_text())


def test_rules_define_the_alerts_with_annotations_and_runbooks() -> None:
    readme = (DEPLOY / "README.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9-]", "", h.strip().lower().replace(" ", "-"))
        for h in re.findall(r"^#+ (.+)$", readme, re.M)
    }
    assert {r["alert"] for r in rules()} == ALERTS
    for rule in rules():
        ann = rule["annotations"]
        assert set(ann) == {"summary", "description", "runbook_url"}, rule["alert"]
        assert ann["runbook_url"] == f"{RUNBOOKS}#{rule['alert'].lower()}"  # absolute: receivers link it
        assert rule["alert"].lower() in anchors
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}


DETECTED = (
    "max by (job, group, key) ( anomaly_alert_active * on (job, instance) group_left (group) anomaly_pipeline_info "
    "or on (job, instance) anomaly_alert_active ) == 1"
)
RATE_HIGH = (
    "sum by (job, group) ( increase(anomaly_alerts_opened_total[1h]) * on (job, instance) group_left (group) "
    "topk by (job, instance) (1, max_over_time(anomaly_pipeline_info[1h])) "
    "or on (job, instance) increase(anomaly_alerts_opened_total[1h]) ) > 20"
)


def test_anomaly_detected_follows_the_engine_alert_gauge() -> None:
    (rule,) = [r for r in rules() if r["alert"] == "AnomalyDetected"]
    assert rule["expr"] == DETECTED


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in (DEPLOY / "prometheus" / "tests").glob("*.yml"):
        for test in load_yaml(path)["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    assert firing == ALERTS
    assert quiet == ALERTS


def test_prometheus_rule_for_the_operator_equals_the_rules_file() -> None:
    (rule,) = k8s("PrometheusRule")
    assert rule["spec"] == load_yaml(RULES)


@needs_promtool
def test_promtool_check_rules() -> None:
    out = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in out.stdout


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    tests = sorted(str(p) for p in (DEPLOY / "prometheus" / "tests").glob("*.yml"))
    out = subprocess.run(["promtool", "test", "rules", *tests], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == len(tests)


@needs_promtool
def test_promtool_check_config_with_the_rules_loaded(tmp_path: Path) -> None:
    """prometheus.yml names /etc/prometheus/rules/*.yml (the compose mount); point it at the real files."""
    cfg = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    assert cfg["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    cfg["rule_files"] = [str(RULES)]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run(
        ["promtool", "check", "config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in out.stdout
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in cfg["scrape_configs"]}
    assert jobs["anomaly"] == ["anomaly:9108"]  # the compose service and its metrics port


@pytest.mark.skipif(shutil.which("amtool") is None, reason="needs amtool (Debian: prometheus-alertmanager)")
def test_amtool_check_config() -> None:
    path = DEPLOY / "alertmanager" / "alertmanager.yml"
    out = subprocess.run(["amtool", "check-config", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_alertmanager_groups_anomalies_per_pipeline_and_the_rate_alert_inhibits_them() -> None:
    """One notification per alert name and pipeline (job and consumer group) lists every key (grouped by key, a
    plant-wide event paged once per key); AnomalyRateHigh inhibits the same pipeline's AnomalyDetected; an alert
    open for days repeats once a day (it repeated every hour). The labels grouped and inhibited on are the ones
    the rules keep. Grouped by job alone (session 18), two pipelines' detections (every daemon is scraped as
    job="anomaly") were one notification, and a storm in one inhibited the other's."""
    cfg = load_yaml(DEPLOY / "alertmanager" / "alertmanager.yml")
    (route,) = [r for r in cfg["route"]["routes"] if r["matchers"] == ['category="anomaly"']]
    assert (route["group_by"], route["group_wait"], route["group_interval"], route["repeat_interval"]) == (
        ["alertname", "job", "group"],
        "30s",
        "5m",
        "24h",
    )
    assert cfg["inhibit_rules"] == [
        {
            "source_matchers": ['alertname="AnomalyRateHigh"'],
            "target_matchers": ['alertname="AnomalyDetected"'],
            "equal": ["job", "group"],
        }
    ]
    exprs = {r["alert"]: r["expr"] for r in rules()}
    assert exprs["AnomalyDetected"] == DETECTED
    assert exprs["AnomalyRateHigh"] == RATE_HIGH
    receivers = {r["name"]: r for r in cfg["receivers"]}
    assert receivers[route["receiver"]]["webhook_configs"][0]["url"].startswith("http")
    categories = {
        r["labels"]["category"] for r in rules() if r["alert"] in {"AnomalyDetected", "AnomalyRateHigh"}
    }
    assert categories == {"anomaly"}


def test_the_group_the_rules_keep_is_the_consumer_group_the_daemon_serves(bundle_path) -> None:
    """The label the detections are grouped and inhibited by comes from a series the daemon really serves:
    anomaly_pipeline_info{group} is its kafka.group_id (with its input topics), from its start on."""
    from prometheus_client import CollectorRegistry

    from anomaly.kafka.daemon import Daemon
    from anomaly.metrics import PipelineMetrics

    metrics = PipelineMetrics(registry=CollectorRegistry())
    cfg = build_config({"kafka": {"group_id": "vibration", "topics": ["vib-a", "vib-b"]}})
    Daemon(cfg, str(bundle_path), metrics=metrics)  # not connected
    labels = {"group": "vibration", "topics": "vib-a,vib-b"}
    assert metrics.registry.get_sample_value("anomaly_pipeline_info", labels) == 1.0
    assert "group_left (group) anomaly_pipeline_info" in DETECTED


def test_compose_references_files_that_exist() -> None:
    compose = load_yaml(DEPLOY / "docker-compose.yml")
    services = compose["services"]
    assert {"kafka", "anomaly", "producer", "prometheus", "alertmanager", "grafana"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    kraft = services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    assert kraft == "broker,controller"  # KRaft single node, no ZooKeeper
    mounts = 0
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file(), name
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
                mounts += 1
            else:
                assert source in compose["volumes"], f"{name}: {source}"
    assert mounts == 6
    producer = " ".join(services["producer"]["command"])
    assert "anomaly produce" in producer
    assert services["anomaly"]["command"][0] == "consume"


def test_dockerfile_copies_files_that_exist_and_installs_the_package() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), source
            assert any(rule == f"!{source}" or rule == f"!{source}/**" for rule in ignore), source
    assert "pip install" in text and re.search(r"pip install [^\n]*\s'?\.(\[[a-z,]+\])?'?\s", text + " ")
    assert "-c deploy/constraints.txt" in text  # the pinned versions the project is tested with
    # the image also runs the one-shot trainer and producer: only the daemon's service checks /healthz
    assert "HEALTHCHECK" not in text
    services = load_yaml(DEPLOY / "docker-compose.yml")["services"]
    checked = {name for name, svc in services.items() if "/healthz" in str(svc.get("healthcheck", ""))}
    assert checked == {"anomaly"}


def test_the_image_installs_what_an_onnx_model_needs() -> None:
    """`anomaly consume -m model.onnx` (an `anomaly export --format onnx` file, README "Export") imports onnx and
    onnxruntime, the optional `export` extra. The image installed the package without extras, so in the shipped
    image (and so in compose and k8s) every ONNX model was refused at start: `error: reading the ONNX model ...
    needs the optional packages onnx and onnxruntime: pip install ... in the anomaly checkout`. What the image
    installs is read from the Dockerfile's pip line and pyproject.toml; what the ONNX path imports from
    anomaly/export.py."""
    import ast
    from importlib.metadata import packages_distributions

    text = (DEPLOY / "Dockerfile").read_text()
    (spec,) = re.findall(r"pip install [^\n]*?\s'?\.(\[[a-z,]+\])?'?\s", text)
    extras = spec.strip("[]").split(",") if spec else []
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    installed = {re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].lower() for req in wanted}

    tree = ast.parse((ROOT / "anomaly" / "export.py").read_text())
    (require,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_require_onnx"]
    modules = {a.name.split(".")[0] for n in ast.walk(require) if isinstance(n, ast.Import) for a in n.names}
    assert modules == {"onnx", "onnxruntime"}
    dists = packages_distributions()
    needed = {d.lower() for m in modules for d in dists[m]}
    assert needed == {"onnx", "onnxruntime"}
    assert needed <= installed, f"the image does not install {sorted(needed - installed)}"


def test_grafana_provisioning_and_dashboard_agree() -> None:
    ds = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    uids = {d["uid"] for d in ds}
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "anomaly.yml")["providers"][0]
    grafana = load_yaml(DEPLOY / "docker-compose.yml")["services"]["grafana"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "anomaly.json").read_text())
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    titles = {p["title"] for p in panels}
    assert {
        "Throughput",
        "Consumer lag",
        "End-to-end latency",
        "Window score distribution",
        "Active alerts",
        "Alert timeline",
        "Checkpoint age",
        "Invalid messages and rejected readings",
        "Model drift (PSI)",
    } <= titles
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    assert {d["type"] for d in ds} == {"prometheus"} and uids  # what the datasource variable offers
    assert list(variables) == ["datasource", "group", "instance"]  # $instance is chained to $group, after it
    for panel in panels:
        if panel.get("type") != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            expr = target["expr"]
            selectors = re.findall(r"\b(?:anomaly_[a-z_]+|up)(\{[^}]*\})?", expr)
            assert all('instance=~"$instance"' in sel for sel in selectors), (panel["title"], expr)


def test_k8s_replicas_do_not_exceed_partitions() -> None:
    (deployment,) = k8s("Deployment")
    (configmap,) = k8s("ConfigMap")
    cfg = build_config(tomllib.loads(configmap["data"]["pipeline.toml"]))
    (topic,) = [t for t in k8s("KafkaTopic") if (t["metadata"]["name"],) == cfg.kafka.topics]
    assert 1 <= deployment["spec"]["replicas"] <= topic["spec"]["partitions"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "consume"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": cfg.metrics.port}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    (monitor,) = k8s("PodMonitor")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert labels[monitor["spec"]["jobLabel"]] == "anomaly"  # job="anomaly", as the rules select
    (service,) = k8s("Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    # Strimzi's bootstrap service is <cluster>-kafka-bootstrap; the topic names its cluster
    cluster = topic["metadata"]["labels"]["strimzi.io/cluster"]
    assert cfg.kafka.bootstrap_servers.split(",")[0].startswith(f"{cluster}-kafka-bootstrap.")
    # kube-prometheus-stack selects PodMonitors and PrometheusRules by its Helm release label
    (rule,) = k8s("PrometheusRule")
    assert monitor["metadata"]["labels"]["release"] == rule["metadata"]["labels"]["release"] != ""


def test_the_shipped_stacks_create_every_topic_the_daemon_refuses_to_start_without() -> None:
    """The daemon creates only its changelog topics; with kafka.auto_create_topics off it stops at start naming any
    missing input, alerts or dead-letter topic. deploy/k8s had a KafkaTopic for the input topic only: `kubectl
    apply -f deploy/k8s/` on a fresh Strimzi cluster left every pod stopping with `alerts topic 'anomaly-alerts'
    ... not found`. Compose's kafka-init and the k8s KafkaTopics create all of them, on the cluster the ConfigMap
    points at."""
    from anomaly.kafka.clients import daemon_topics

    (configmap,) = k8s("ConfigMap")
    cfg = build_config(tomllib.loads(configmap["data"]["pipeline.toml"]))
    assert not cfg.kafka.auto_create_topics
    topics = k8s("KafkaTopic")
    assert {t["metadata"]["name"] for t in topics} == set(daemon_topics(cfg.kafka))
    cluster = cfg.kafka.bootstrap_servers.split("-kafka-bootstrap.")[0]
    assert {t["metadata"]["labels"]["strimzi.io/cluster"] for t in topics} == {cluster}
    assert all(t["spec"]["replicas"] <= cfg.kafka.replication_factor for t in topics)

    services = load_yaml(DEPLOY / "docker-compose.yml")["services"]
    script = services["kafka-init"]["command"][0].replace("$$", "$")
    created = set(re.findall(r"--topic (\S+)", script))
    created |= {t for loop in re.findall(r"for topic in ([^;]+);", script) for t in loop.split()}
    created.discard("$topic")
    compose_cfg = build_config(tomllib.loads((ROOT / "pipelines" / "demo.toml").read_text()))
    assert services["anomaly"]["command"][services["anomaly"]["command"].index("-p") + 1] == (
        "/app/pipelines/demo.toml"
    )
    assert not compose_cfg.kafka.auto_create_topics
    assert created == set(daemon_topics(compose_cfg.kafka))


def test_the_alerts_opened_panel_counts_what_anomaly_rate_high_tests() -> None:
    """The panel's description compares it with AnomalyRateHigh's 20 alerts an hour; it counted alerts per
    $__rate_interval (seconds to minutes, with the zoom), a number 20 never applied to."""
    (rule,) = [r for r in rules() if r["alert"] == "AnomalyRateHigh"]
    window = re.search(r"increase\(anomaly_alerts_opened_total\[(\w+)\]\)", rule["expr"]).group(1)
    limit = float(re.search(r">\s*([\d.]+)", rule["expr"]).group(1))
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "anomaly.json").read_text())
    (panel,) = [p for p in dash["panels"] if "AnomalyRateHigh" in p.get("description", "")]
    (opened,) = [t["expr"] for t in panel["targets"] if "anomaly_alerts_opened_total" in t["expr"]]
    assert f"[{window}]" in opened, opened
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1]["value"] == limit


def test_every_dashboard_series_in_seconds_has_the_unit_s() -> None:
    """A quantile of an anomaly_*_seconds histogram or an age (time() - an epoch) is shown in seconds; the
    checkpoint duration panel had no unit, so Grafana showed 0.0485 where it meant 48.5 ms."""
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "anomaly.json").read_text())
    for panel in dash["panels"]:
        fc = panel.get("fieldConfig", {})
        for target in panel.get("targets", []):
            expr = target["expr"]
            if not (re.search(r"histogram_quantile\(.*_seconds_bucket", expr) or expr.startswith("time() -")):
                continue
            unit = fc.get("defaults", {}).get("unit")
            for override in fc.get("overrides", []):
                if override["matcher"] == {"id": "byFrameRefID", "options": target["refId"]}:
                    unit = {p["id"]: p["value"] for p in override["properties"]}.get("unit", unit)
            assert unit == "s", (panel["title"], expr)


def test_the_shipped_daemon_pipelines_alert_as_the_backtests_measured() -> None:
    """pipelines/kafka.toml and the k8s ConfigMap set no alerting or gap setting of their own: a daemon deployed
    from them alerts as the README's detection tables were measured (they set a static threshold and
    alert_close_after 10, and kafka.toml a fixed 300 s max_gap_seconds)."""
    from anomaly.config import EngineConfig, load_config

    (configmap,) = k8s("ConfigMap")
    shipped = [
        build_config(tomllib.loads(configmap["data"]["pipeline.toml"])),
        load_config(ROOT / "pipelines" / "kafka.toml", env={}),
    ]
    defaults = EngineConfig()
    for cfg in shipped:
        for name in ("threshold", "alert_open_after", "alert_close_after", "max_gap_seconds", "smoothing"):
            assert getattr(cfg.engine, name) == getattr(defaults, name), name


def test_promtool_tests_use_reasons_the_daemon_serves() -> None:
    """A rule test's series with a reason label the daemon never serves tests nothing real (InvalidMessagesHigh's
    used reason="malformed", a rejected-reading reason, for invalid messages)."""
    from anomaly.engine.types import REJECT_REASONS
    from anomaly.kafka.codec import DECODE_REASONS

    served = {
        "anomaly_messages_invalid_total": set(DECODE_REASONS),
        "anomaly_readings_rejected_total": set(REJECT_REASONS),
    }
    seen = 0
    for path in sorted((ROOT / "deploy" / "prometheus" / "tests").glob("*.yml")):
        for name, reason in re.findall(r"\b(anomaly_[a-z_]+)\{[^}]*\breason=\"([^\"]+)\"", path.read_text()):
            if name in served:
                assert reason in served[name], (path.name, name, reason)
                seen += 1
    assert seen >= 2


# Served but on no panel and in no rule, on purpose: the parts of a checkpoint's duration (tuning, README
# "Performance"; the dashboard shows the whole and its age), and the event-time wait of window-scored models (0 with
# the default scoring on arrival; the latency panel includes it).
NOT_ON_THE_DASHBOARD = {
    "anomaly_checkpoint_loop_seconds",
    "anomaly_checkpoint_state_seconds",
    "anomaly_checkpoint_commit_seconds",
    "anomaly_checkpoint_state_cpu_seconds",
    "anomaly_checkpoint_state_bytes",
    "anomaly_decision_delay_seconds",
}


def test_every_served_metric_is_on_the_dashboard_or_in_a_rule() -> None:
    """What the daemon serves and an operator acts on is shown somewhere: dead letters the broker refused (lost from
    the dead-letter topic) and model reloads were on no panel and in no rule, and no series at all said that a
    daemon was not ready (a broker outage fired nothing: up stayed 1, the checkpoint age 0)."""
    from prometheus_client import CollectorRegistry

    from anomaly.metrics import PipelineMetrics

    served = {f.name for f in PipelineMetrics(registry=CollectorRegistry()).registry.collect()}
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "anomaly.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [r["expr"] for r in rules()]
    used = {
        re.sub(r"_(total|bucket|sum|count|info)$", "", name)
        for expr in exprs
        for name in re.findall(r"\banomaly_[a-z_]+", expr)
    }
    assert {n for n in served if n not in used} == NOT_ON_THE_DASHBOARD
    assert "anomaly_ready" in served
    assert used - served == set()  # and no expression names a metric the daemon does not serve


def test_daemon_not_ready_is_the_only_alert_on_readiness() -> None:
    (rule,) = [r for r in rules() if "anomaly_ready" in r["expr"]]
    assert (rule["alert"], _per_pipeline_condition(rule["expr"]), rule["for"]) == (
        "DaemonNotReady",
        'anomaly_ready{job="anomaly"} == 0',
        "5m",
    )


GROUP_JOIN = "* on (job, instance) group_left (group) anomaly_pipeline_info or on (job, instance)"


def _per_pipeline_condition(expr: str) -> str:
    """The condition E of a per-instance alert written `(E) * on (job, instance) group_left (group)
    anomaly_pipeline_info or on (job, instance) (E)`: E with the group of the target where it serves
    anomaly_pipeline_info, or E alone for a target that does not (the `or` keeps one series per target)."""
    match = re.fullmatch(r"\( (.+) \) " + re.escape(GROUP_JOIN) + r" \( (.+) \)", expr)
    assert match and match[1] == match[2], expr
    return match[1]


def test_every_pipeline_health_alert_names_the_group_of_its_daemon() -> None:
    """Several pipelines (consumer groups) share one Prometheus, every daemon scraped as job="anomaly": the
    pipeline-health alerts paged by instance alone, and the page did not say which pipeline. Each takes `group`
    from anomaly_pipeline_info now, the same condition on both sides of the `or` (the promtool tests in
    groups.test.yml check the labels), and names it in its summary. DaemonDown (no scrape, no info now) takes
    the group the target had last; ConsumerLagHigh is per group, topic and partition."""
    pipeline = [r for r in rules() if r["labels"]["category"] == "pipeline"]
    assert len(pipeline) == 12
    for rule in pipeline:
        if rule["alert"] not in {"DaemonDown", "ConsumerLagHigh"}:
            assert _per_pipeline_condition(rule["expr"]), rule["alert"]
        assert "{{ with $labels.group }} (group {{ . }}){{ end }}" in rule["annotations"]["summary"], rule[
            "alert"
        ]
    (down,) = [r for r in pipeline if r["alert"] == "DaemonDown"]
    assert "max_over_time(timestamp(anomaly_pipeline_info)[1d:1m])" in down["expr"]


def test_pipeline_stalled_counts_what_a_healthy_slow_stream_scores(bundle) -> None:
    """Scored on arrival (the default), a key's every reading is scored at once while a report window comes every
    model.window readings: a sensor reading once a minute went 32 minutes without a window, and PipelineStalled
    (then on anomaly_windows_scored_total) fired, critical, on a healthy pipeline. It counts scored readings now."""
    from anomaly.config import EngineConfig
    from anomaly.engine import Engine
    from anomaly.metrics import PipelineMetrics
    from anomaly.replay import merged_batches
    from anomaly.runner import run
    from tests.helpers import make_series

    metrics = PipelineMetrics()
    n = bundle.arch.window - 1
    run(
        Engine(bundle, EngineConfig()),
        merged_batches([make_series("k", n, len(bundle.features))], 1),
        [],
        observer=metrics,
    )
    value = metrics.registry.get_sample_value
    assert (value("anomaly_readings_scored_total"), value("anomaly_windows_scored_total")) == (n, 0)
    assert (
        value("anomaly_latency_seconds_count"),
        value("anomaly_readings_rejected_total", {"reason": "malformed"}),
    ) == (n, 0)
    (rule,) = [r for r in rules() if r["alert"] == "PipelineStalled"]
    assert re.findall(r"increase\((\w+)\[", _per_pipeline_condition(rule["expr"])) == [
        "anomaly_readings_scored_total"
    ]


def test_the_compose_producer_can_run_again(tmp_path: Path, bundle) -> None:
    """`docker compose run --rm producer` sends the demo stream again, as the README says, and the daemon scores
    it. The stream's timestamps are the same every run; under the same keys every reading of a second run was
    older than its key's last one, refused (time_backwards, duplicate_timestamp) and sent to dead letters: 12000
    of 12000 with the real daemon on Tansu. The script runs here twice, `anomaly produce` replaced by a copy, and
    both runs' files go through one engine in order."""
    import os
    import stat
    import sys

    from anomaly.config import DataConfig, EngineConfig
    from anomaly.data import load_series
    from anomaly.engine import Engine
    from anomaly.replay import merged_batches
    from anomaly.runner import run

    script = load_yaml(DEPLOY / "docker-compose.yml")["services"]["producer"]["command"][0]
    script = script.replace("$$", "$").replace("/data/", f"{tmp_path}/")  # compose's escaping, the volume
    fake = tmp_path / "bin" / "anomaly"
    fake.parent.mkdir()
    real = Path(sys.executable).with_name("anomaly")
    fake.write_text(
        f'#!/bin/sh\nif [ "$1" = produce ]; then n=$(ls {tmp_path}/sent-* 2>/dev/null | wc -l)\n'
        f'cp "$2" {tmp_path}/sent-$n.csv; else exec {real} "$@"; fi\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    for _ in range(2):
        subprocess.run(["sh", "-c", script], env=env, check=True, capture_output=True, timeout=120)
    engine = Engine(bundle, EngineConfig())
    cfg = DataConfig(key_column="sensor_id", features=tuple(bundle.features))
    refused = []
    for i in range(2):
        series, _ = load_series([tmp_path / f"sent-{i}.csv"], cfg, bundle.features)
        assert len(series) == 4
        outs = []
        run(engine, merged_batches(series, 500), [], on_batch=lambda b, o, outs=outs: outs.append(o))
        refused.append(sum(r.count for o in outs for r in o.rejections))
    assert refused == [0, 0]


def test_dashboard_descriptions_state_the_conditions_of_the_alerts_they_name() -> None:
    """A panel's description that names an alert gives its threshold, its duration and no condition the rule does
    not have: "Checkpoint age" said CheckpointStale fired "while consuming", a condition removed from the rule in
    session 12 (a stuck loop consumes nothing, so it never fired)."""
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "anomaly.json").read_text())
    by_name = {r["alert"]: r for r in rules()}
    checked = 0
    for panel in dash["panels"]:
        description = panel.get("description", "")
        for name in re.findall(r"\b([A-Z][a-z]+(?:[A-Z][a-z]+)+)\b", description):
            rule = by_name.get(name)
            if rule is None:
                continue
            if "while consuming" in description:
                assert "anomaly_messages_consumed_total" in rule["expr"], (panel["title"], name)
            for said, percent in re.findall(rf"{name} fires above ([\d.]+)( ?%)?", description):
                limit = float(re.findall(r">\s*([\d.]+)", rule["expr"])[-1])
                assert float(said) / (100 if percent else 1) == limit, (panel["title"], name, said)
                checked += 1
    assert checked >= 2


def _promtool_panel_test(path: Path, input_series: list[dict], exprs: list[dict]) -> None:
    """Evaluate dashboard PromQL with `promtool test rules` (no rule files, one-minute steps): Grafana is not
    installable here, so its panels are tested through their queries."""
    test = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": input_series, "promql_expr_test": exprs}],
    }
    path.write_text(yaml.safe_dump(test))
    out = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_instance_variable_follows_the_group_variable() -> None:
    """Several pipelines share one Prometheus: $instance listed every daemon, with a custom All of `.*`, so every
    panel added the pipelines together. $group (anomaly_pipeline_info) narrows $instance now; neither has a custom
    All value (a `.*` for $instance would ignore $group: All sends the regex of the listed daemons instead). Both
    refresh on a time range change. What the instance query lists is tested through promtool below."""
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "anomaly.json").read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    group, instance = variables["group"], variables["instance"]
    assert (
        group["query"]["query"]
        == group["definition"]
        == 'label_values(anomaly_pipeline_info{job="anomaly"}, group)'
    )
    assert instance["query"]["query"] == instance["definition"]
    assert (
        instance["query"]["query"].startswith("query_result(")
        and 'group=~"$group"' in instance["query"]["query"]
    )
    assert instance["regex"] == '/instance="([^"]+)"/'
    for var in (group, instance):
        assert (var["type"], var["includeAll"], var["multi"], var["refresh"], "allValue" in var) == (
            "query",
            True,
            True,
            2,
            False,
        )


@needs_promtool
def test_the_instance_variable_lists_the_daemons_of_the_chosen_group(tmp_path: Path) -> None:
    """The $instance query (query_result, an instant query) with $group as Grafana sends it: one group, or All
    (the regex of every group listed). a and c serve group vibration, b thermal; c is down since 4 minutes (no
    anomaly_pipeline_info now: it had it within the day, so it stays under its group and in "Daemons up"); d
    serves no pipeline info (a daemon from before session 20): listed under every group, as its group is unknown.
    "Daemons up and ready" then counts the daemons up of the group chosen."""
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "anomaly.json").read_text())
    (instance,) = [v for v in dash["templating"]["list"] if v["name"] == "instance"]
    query = re.fullmatch(r"query_result\((.*)\)", instance["query"]["query"])[1]
    (up_panel,) = [p for p in dash["panels"] if p["title"] == "Daemons up and ready"]
    up_expr = up_panel["targets"][0]["expr"]

    def info(name: str, group: str, values: str) -> dict:
        series = f'anomaly_pipeline_info{{job="anomaly",instance="{name}",group="{group}",topics="t"}}'
        return {"series": series, "values": values}

    def listed(names: str) -> list[dict]:
        return [{"labels": f'{{instance="{n}:9108"}}', "value": 1} for n in names]

    _promtool_panel_test(
        tmp_path / "instance_variable.test.yml",
        [
            info("a:9108", "vibration", "1x10"),
            info("b:9108", "thermal", "1x10"),
            info("c:9108", "vibration", "1x5 stale"),
            {"series": 'up{job="anomaly",instance="a:9108"}', "values": "1x10"},
            {"series": 'up{job="anomaly",instance="b:9108"}', "values": "1x10"},
            {"series": 'up{job="anomaly",instance="c:9108"}', "values": "1x5 0x5"},
            {"series": 'up{job="anomaly",instance="d:9108"}', "values": "1x10"},
            {"series": 'up{job="prometheus",instance="localhost:9090"}', "values": "1x10"},
        ],
        [
            {"expr": query.replace("$group", "vibration"), "eval_time": "10m", "exp_samples": listed("acd")},
            {"expr": query.replace("$group", "thermal"), "eval_time": "10m", "exp_samples": listed("bd")},
            {
                "expr": query.replace("$group", "(thermal|vibration)"),
                "eval_time": "10m",
                "exp_samples": listed("abcd"),
            },
            {
                "expr": up_expr.replace("$instance", "(a:9108|c:9108|d:9108)"),
                "eval_time": "10m",
                "exp_samples": [{"labels": "{}", "value": 2}],
            },
            {
                "expr": up_expr.replace("$instance", "(a:9108|b:9108|c:9108|d:9108)"),
                "eval_time": "10m",
                "exp_samples": [{"labels": "{}", "value": 3}],
            },
        ],
    )


@needs_promtool
def test_the_model_age_panel_shows_the_oldest_model_in_use(tmp_path: Path) -> None:
    """Daemons can run different models (a rollout, or one that kept its old model: ModelReloadFailed). "Model age"
    showed time() - max(trained): the newest model's age, so a daemon ModelStale fired on looked fresh. It shows
    the oldest now, leaving out 0 (no training time) as ModelStale does. Evaluated by promtool at 10 minutes."""
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "anomaly.json").read_text())
    (panel,) = [p for p in dash["panels"] if p["title"] == "Model age"]
    (target,) = panel["targets"]
    series = 'anomaly_model_trained_timestamp_seconds{job="anomaly",instance="%s"}'
    _promtool_panel_test(
        tmp_path / "model_age.test.yml",
        [
            {"series": series % "old:9108", "values": "60x10"},  # trained at 1 min
            {"series": series % "new:9108", "values": "300x10"},  # trained at 5 min
            {"series": series % "unset:9108", "values": "0x10"},
        ],
        [
            {
                "expr": target["expr"].replace("$instance", ".*"),
                "eval_time": "10m",
                "exp_samples": [{"labels": "{}", "value": 540}],
            }
        ],
    )
    assert panel["fieldConfig"]["defaults"]["unit"] == "s"


@needs_promtool
def test_the_refusal_and_fence_panels_count_what_a_new_pod_did_before_its_first_scrape(
    tmp_path: Path,
) -> None:
    """A restore refuses state seconds after a daemon starts, before its first scrape (a rolling update to a model
    with other features: every new pod refuses incompatible_model), and a new pod is a new series that starts at its
    count. The panels showed increase() alone, which needs a sample before the refusal: 0, as RestoreRefused
    fired nothing. They count a series new within the interval from its first sample, as the alerts do; an old
    daemon's old count (bad_state 3 here) is not shown again. Evaluated by promtool, $__rate_interval as 4m."""
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "anomaly.json").read_text())

    def expr(title: str, ref: str) -> str:
        (panel,) = [p for p in dash["panels"] if p["title"] == title]
        (target,) = [t for t in panel["targets"] if t["refId"] == ref]
        return str(target["expr"]).replace("$instance", ".*").replace("$__rate_interval", "4m")

    refused = 'anomaly_restore_refused_total{job="anomaly",instance="%s",reason="%s"}'
    fenced = 'anomaly_fenced_total{job="anomaly",instance="%s"}'
    reasons = ("incompatible_model", "bad_state", "other_group")
    series = [
        {"series": refused % ("old:9108", r), "values": ("3" if r == "bad_state" else "0") + "x30"}
        for r in reasons
    ]
    series += [
        {
            "series": refused % ("new:9108", r),
            "values": "_x10 " + ("2" if r == "incompatible_model" else "0") + "x20",
        }
        for r in reasons
    ]
    series += [
        {"series": fenced % "old:9108", "values": "1x30"},
        {"series": fenced % "new:9108", "values": "_x10 1x20"},
    ]
    restores = expr("Restores that refused changelog state", "A")
    fences = expr("Checkpoint duration, commit failures and fences", "C")
    _promtool_panel_test(
        tmp_path / "refusal_panels.test.yml",
        series,
        [
            {
                "expr": restores,
                "eval_time": "12m",
                "exp_samples": [
                    {"labels": '{reason="incompatible_model"}', "value": 2},
                    {"labels": '{reason="bad_state"}', "value": 0},
                    {"labels": '{reason="other_group"}', "value": 0},
                ],
            },
            {
                "expr": restores,
                "eval_time": "20m",
                "exp_samples": [{"labels": f'{{reason="{r}"}}', "value": 0} for r in reasons],
            },
            {"expr": fences, "eval_time": "12m", "exp_samples": [{"labels": "{}", "value": 1}]},
            {"expr": fences, "eval_time": "20m", "exp_samples": [{"labels": "{}", "value": 0}]},
        ],
    )


@needs_promtool
def test_the_alert_panels_keep_two_pipelines_with_one_key_apart(tmp_path: Path) -> None:
    """Two pipelines (consumer groups) on one Prometheus, both with key "pump": "Active alerts" and "Alert timeline"
    took `max by (key)` over both, so they showed one row "pump" with no pipeline, open while either was. They
    show per group and key, as AnomalyDetected alerts (its join on anomaly_pipeline_info); a daemon without that
    series (from before session 20) shows without a group, as it alerts. Evaluated by promtool."""
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "anomaly.json").read_text())
    panels = {p["title"]: p for p in dash["panels"]}
    (table,) = panels["Active alerts"]["targets"]
    (timeline,) = panels["Alert timeline"]["targets"]
    active = 'anomaly_alert_active{job="anomaly",instance="%s",key="pump"}'
    info = 'anomaly_pipeline_info{job="anomaly",instance="%s",group="%s",topics="sensors"}'
    _promtool_panel_test(
        tmp_path / "alert_panels.test.yml",
        [
            {"series": info % ("a:9108", "line-a"), "values": "1x5"},
            {"series": info % ("b:9108", "line-b"), "values": "1x5"},
            {"series": active % "a:9108", "values": "0x5"},
            {"series": active % "b:9108", "values": "1x5"},
            {"series": active % "old:9108", "values": "1x5"},  # no anomaly_pipeline_info
        ],
        [
            {
                "expr": table["expr"].replace("$instance", ".*"),
                "eval_time": "3m",
                "exp_samples": [
                    {"labels": '{group="line-b",key="pump"}', "value": 1},
                    {"labels": '{key="pump"}', "value": 1},
                ],
            },
            {
                "expr": timeline["expr"].replace("$instance", ".*"),
                "eval_time": "3m",
                "exp_samples": [
                    {"labels": '{group="line-a",key="pump"}', "value": 0},
                    {"labels": '{group="line-b",key="pump"}', "value": 1},
                    {"labels": '{key="pump"}', "value": 1},
                ],
            },
        ],
    )
    assert timeline["legendFormat"] == "{{group}} {{key}}"


@needs_promtool
def test_the_lag_panel_shows_each_pipeline_of_a_topic_apart(tmp_path: Path) -> None:
    """Two pipelines (consumer groups) read one topic: "Consumer lag" took `sum by (topic, partition)`, so it
    showed their lags added (20,100 for a partition one group had read to the end), and a partition that two
    members of one group both reported during a rebalance twice its lag. It shows the most per group, topic and
    partition, as ConsumerLagHigh alerts; a daemon without anomaly_pipeline_info shows without a group."""
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "anomaly.json").read_text())
    (target,) = [p for p in dash["panels"] if p["title"] == "Consumer lag"][0]["targets"]
    lag = 'anomaly_consumer_lag_messages{job="anomaly",instance="%s",topic="sensors",partition="0"}'
    info = 'anomaly_pipeline_info{job="anomaly",instance="%s",group="%s",topics="sensors"}'
    _promtool_panel_test(
        tmp_path / "lag_panel.test.yml",
        [
            {"series": info % ("a:9108", "line-a"), "values": "1x5"},
            {"series": info % ("b:9108", "line-b"), "values": "1x5"},
            {"series": info % ("b2:9108", "line-b"), "values": "1x5"},  # line-b's partition moving to b2
            {"series": lag % "a:9108", "values": "100x5"},
            {"series": lag % "b:9108", "values": "20000x5"},
            {"series": lag % "b2:9108", "values": "20000x5"},
            {"series": lag % "old:9108", "values": "7x5"},  # no anomaly_pipeline_info
        ],
        [
            {
                "expr": target["expr"].replace("$instance", ".*"),
                "eval_time": "3m",
                "exp_samples": [
                    {"labels": '{group="line-a",partition="0",topic="sensors"}', "value": 100},
                    {"labels": '{group="line-b",partition="0",topic="sensors"}', "value": 20000},
                    {"labels": '{partition="0",topic="sensors"}', "value": 7},
                ],
            },
        ],
    )
    assert target["legendFormat"] == "{{group}} {{topic}}/{{partition}}"


def test_every_anomaly_command_line_in_deploy_parses_and_reads_the_stream_with_the_pipeline() -> None:
    """The commands compose runs (trainer, producer, daemon), the k8s Deployment's args and the runbooks' command
    lines use subcommands and options the CLI has; a runbook command that reads the stream (--since) names the
    daemon's pipeline with -p: ModelDrift's retrain and promote had none, so they asked a broker at 127.0.0.1:9092
    with the default topics, not the daemon's."""
    import shlex

    import click

    from anomaly.cli import main

    lines: list[tuple[str, str]] = []
    for name, svc in load_yaml(DEPLOY / "docker-compose.yml")["services"].items():
        command = svc.get("command")
        if "build" not in svc or not command:
            continue
        if svc.get("entrypoint"):
            lines += [(name, s.strip()) for s in command[0].splitlines() if s.strip().startswith("anomaly ")]
        else:
            lines.append((name, "anomaly " + shlex.join(command)))
    (deployment,) = k8s("Deployment")
    lines.append(
        ("k8s", "anomaly " + shlex.join(deployment["spec"]["template"]["spec"]["containers"][0]["args"]))
    )
    readme = (DEPLOY / "README.md").read_text()
    runbook = [("README", " ".join(c.split())) for c in re.findall(r"`(anomaly [a-z]+ [^`]+)`", readme)]
    lines += runbook
    parsed = set()
    for source, line in lines:
        name, *args = shlex.split(line)[1:]
        ctx = click.Context(main, info_name="anomaly")
        command = main.get_command(ctx, name)
        assert command is not None, (source, line)
        try:
            sub = command.make_context(name, args, parent=ctx)
        except click.UsageError as exc:
            raise AssertionError(f"{source}: {line}: {exc.format_message()}") from None
        parsed.add(name)
        if source == "README" and "since" in sub.params and sub.params["since"]:
            assert sub.params["pipeline"] is not None, line
    assert {"generate", "train", "produce", "consume", "retrain", "promote"} <= parsed
    assert sum("--since" in line for _, line in runbook) >= 2


def test_the_retrain_job_promotes_into_the_volume_the_daemons_read(tmp_path: Path) -> None:
    """The daemon pods mount the models volume read-only, so `anomaly promote` / `retrain` had nowhere to write in
    the cluster and the runbooks said nothing of how to run them there. deploy/k8s has a suspended CronJob: the
    daemon's image, pipeline ConfigMap and Kafka secret, the same claim mounted writable, a command line the CLI
    accepts that promotes over the file the Deployment loads. Its script ends the job succeeded when the policy
    keeps the champion (exit 3), failed on an error (exit 2): run here with `anomaly` replaced by a stub."""
    import os
    import shlex
    import stat

    import click

    from anomaly.cli import main
    from anomaly.config import _SECTION_TYPES, env_overrides

    (deployment,) = k8s("Deployment")
    (cron,) = k8s("CronJob")
    # apply runs nothing; two promotions never race
    assert (cron["spec"]["suspend"], cron["spec"]["concurrencyPolicy"]) == (
        True,
        "Forbid",
    )
    daemon_pod = deployment["spec"]["template"]["spec"]
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (daemon,) = daemon_pod["containers"]
    (job,) = pod["containers"]
    assert job["image"] == daemon["image"]
    assert pod["securityContext"]["runAsUser"] == daemon_pod["securityContext"]["runAsUser"]
    assert job["env"] == daemon["env"]
    for var in job["env"]:
        ((section, fields),) = env_overrides({var["name"]: "x"}).items()
        assert set(fields) <= set(_SECTION_TYPES[section].__dataclass_fields__), var["name"]

    def volumes(spec: dict[str, Any], container: dict[str, Any]) -> dict[str, tuple[str, bool]]:
        """mount path -> (what is mounted, read-only)"""
        source = {
            v["name"]: json.dumps({k: v[k] for k in v if k != "name"}, sort_keys=True)
            for v in spec["volumes"]
        }
        return {
            m["mountPath"]: (source[m["name"]].replace(', "readOnly": true', ""), m.get("readOnly", False))
            for m in container["volumeMounts"]
        }

    daemon_mounts, job_mounts = volumes(daemon_pod, daemon), volumes(pod, job)
    assert {p: s for p, (s, _) in job_mounts.items()} == {p: s for p, (s, _) in daemon_mounts.items()}

    def mount_of(path: str, mounts: dict[str, tuple[str, bool]]) -> tuple[str, bool]:
        (where,) = [m for m in mounts if Path(path).is_relative_to(m)]
        return mounts[where]

    daemon_args = daemon["args"]
    champion = daemon_args[daemon_args.index("-m") + 1]
    pipeline = daemon_args[daemon_args.index("-p") + 1]
    assert mount_of(champion, daemon_mounts)[1] is True  # the daemons only read it
    assert job["command"] == ["sh", "-c"]
    (script,) = job["args"]
    (line,) = [ln.strip() for ln in script.splitlines() if ln.strip().startswith("anomaly ")]
    line = line.removesuffix("&").strip()  # run in the background, for the SIGTERM trap
    name, *args = shlex.split(line)[1:]
    ctx = click.Context(main, info_name="anomaly")
    sub = main.get_command(ctx, name).make_context(name, args, parent=ctx)
    assert (name, sub.params["champion"], sub.params["pipeline"]) == ("retrain", champion, pipeline)
    assert sub.params["do_promote"] and sub.params["since"]
    assert Path(sub.params["out"]).is_absolute()  # the image's working directory (/app) is root's
    for written in (champion, sub.params["out"]):
        assert mount_of(written, job_mounts)[1] is False, written

    stub = tmp_path / "bin" / "anomaly"
    stub.parent.mkdir()
    stub.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\nexit "$STUB_STATUS"\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    path = f"{stub.parent}:{os.environ['PATH']}"
    ends = {}
    for status in (0, 3, 2):
        env = {**os.environ, "PATH": path, "STUB_STATUS": str(status)}
        ends[status] = subprocess.run(["sh", "-c", script], env=env, timeout=30).returncode
    assert ends == {0: 0, 3: 0, 2: 2}
    assert (tmp_path / "args").read_text().split() == shlex.split(line)[1:]


def test_the_retrain_jobs_script_passes_sigterm_on_to_anomaly(tmp_path: Path) -> None:
    """The CronJob's `sh -c` is the container's PID 1, which ignores a signal it has no handler for: the kubelet's
    SIGTERM (job deleted, node drained) never reached `anomaly retrain`, which was SIGKILLed after the grace period,
    leaving its temporary file in /models and no `error: terminated` in the log. The script now traps SIGTERM and
    passes it on, then exits with anomaly's own status. Run here with `anomaly` replaced by a stub that records the
    signal (outside a PID namespace an untrapped sh dies of the SIGTERM itself, and the stub is never told).
    The trap is set before anomaly starts: set after the `&`, a SIGTERM that came before the script got to it
    (sent here once the stub has started) killed the script untrapped (-15, not 143) on a loaded CI machine
    (session 23), which no run here reproduced: the order itself is checked."""
    import contextlib
    import os
    import signal
    import stat
    import time

    (cron,) = k8s("CronJob")
    (script,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    lines = script.splitlines()
    trap = next(i for i, line in enumerate(lines) if line.startswith("trap "))
    assert trap < next(i for i, line in enumerate(lines) if line.startswith("anomaly retrain "))
    stub = tmp_path / "bin" / "anomaly"
    stub.parent.mkdir()
    stub.write_text(
        "#!/bin/sh\n"
        f"trap 'echo TERM > {tmp_path}/got; exit 143' TERM\n"
        f"echo $$ > {tmp_path}/started\n"
        "while :; do sleep 0.05; done\n"
    )
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}"}
    job = subprocess.Popen(["sh", "-c", script], env=env)
    try:
        for _ in range(600):  # the stub has started (not a timing assertion: it waits for a file)
            if (tmp_path / "started").exists():
                break
            time.sleep(0.05)
        assert (tmp_path / "started").exists()
        job.send_signal(signal.SIGTERM)
        assert job.wait(timeout=30) == 143
    finally:
        if job.poll() is None:
            job.kill()
        if not (tmp_path / "got").exists() and (tmp_path / "started").exists():  # an orphan stub: end it
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int((tmp_path / "started").read_text()), signal.SIGKILL)
    assert (tmp_path / "got").read_text() == "TERM\n"


def test_the_daemon_pods_memory_fits_what_was_measured() -> None:
    """deployment.yaml asked for 1Gi and allowed 2Gi, an estimate: measured (deploy/measure_memory.py, the table in
    deploy/README.md), a daemon holding the ConfigMap's 100,000 keys uses up to 1.2 GiB, and one that restores
    150,000 keys at a rebalance peaks at 2.0 GiB (the 2Gi limit: OOMKilled) and stays at up to 1.8 GiB. The request
    covers every measured RSS, the limit every measured peak with a quarter to spare, and the table is the one
    measured at the ConfigMap's max_keys."""
    readme = (DEPLOY / "README.md").read_text()
    table = readme[readme.index("| daemon (engine.max_keys ") :].split("\n\n")[0].splitlines()
    (configmap,) = k8s("ConfigMap")
    cfg = build_config(tomllib.loads(configmap["data"]["pipeline.toml"]))
    assert f"engine.max_keys {cfg.engine.max_keys:,})" in table[0]
    rows = [[c.strip() for c in row.strip("|").split("|")] for row in table[2:]]
    assert len(rows) >= 4
    mib = [
        [float(n.replace(",", "")) for n in re.findall(r"[\d,]+", cell)]
        for *_, rss, peak in rows
        for cell in (rss, peak)
    ]
    rss, peaks = max(max(v) for v in mib[0::2]), max(max(v) for v in mib[1::2])

    def quantity(q: str) -> float:
        (number, unit) = re.fullmatch(r"([\d.]+)(Mi|Gi)", q).groups()
        return float(number) * (1024 if unit == "Gi" else 1)

    (deployment,) = k8s("Deployment")
    resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert quantity(resources["requests"]["memory"]) >= rss
    assert quantity(resources["limits"]["memory"]) >= 1.25 * peaks


def test_the_retrain_jobs_memory_fits_what_was_measured() -> None:
    """The retrain CronJob had no memory request or limit, and its memory was never measured: `anomaly retrain`
    holds the whole --since range in memory. Measured (deploy/measure_retrain_memory.py, the table in
    deploy/README.md), its request covers every measured RSS and its limit every measured peak with a quarter to
    spare, and the table was measured with the CronJob's own command."""
    import shlex

    readme = (DEPLOY / "README.md").read_text()
    table = readme[readme.index("| retrain (") :].split("\n\n")[0].splitlines()
    (cron,) = k8s("CronJob")
    (job,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    (line,) = [ln.strip() for ln in job["args"][0].splitlines() if ln.strip().startswith("anomaly ")]
    since = shlex.split(line)[shlex.split(line).index("--since") + 1]
    assert f"`--since {since}`" in table[0] and "--promote" in line
    rows = [[c.strip() for c in row.strip("|").split("|")] for row in table[2:]]
    assert len(rows) >= 3
    rss = max(float(n.replace(",", "")) for row in rows for n in re.findall(r"[\d,]+", row[-2]))
    peak = max(float(row[-1].replace(",", "")) for row in rows)

    def quantity(q: str) -> float:
        (number, unit) = re.fullmatch(r"([\d.]+)(Mi|Gi)", q).groups()
        return float(number) * (1024 if unit == "Gi" else 1)

    resources = job["resources"]
    assert quantity(resources["requests"]["memory"]) >= rss
    assert quantity(resources["limits"]["memory"]) >= 1.25 * peak

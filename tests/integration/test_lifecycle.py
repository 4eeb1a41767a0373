"""Model lifecycle against a real broker: retrain from a topic range (= retrain from the same readings in CSV),
and promotion under a running daemon (hot reload, state kept, alerts carrying the new version)."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import cut_with_open_alerts, http_status, metric, terminate, wait_for
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from anomaly.bundle import load_bundle, read_metadata, save_bundle
from anomaly.cli import main
from anomaly.config import DataConfig, EngineConfig, ModelConfig, TrainConfig
from anomaly.data import load_series
from anomaly.engine import Engine
from anomaly.kafka.codec import MessageFormat, window_json
from anomaly.kafka.produce import messages
from anomaly.replay import merged_batches
from anomaly.runner import run
from anomaly.synthetic import SyntheticSpec, generate_keys
from anomaly.training import train

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000


def topics(bootstrap: str, *names: str, partitions: int = 2) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(n, partitions if i == 0 else 1, 1) for i, n in enumerate(names)])
    admin.close()


def alert_event(key: str, status: str, start: float, end: float | None) -> bytes:
    body = {"id": f"{key}@{int(start * 1000)}", "key": key, "status": status, "start": start, "end": end}
    return json.dumps(body).encode()


def test_retrain_from_a_topic_range_equals_retrain_from_the_same_readings_in_csv(
    kafka_env, tiny_model, tmp_path
):
    model_path, bundle = tiny_model
    frame = generate_keys(SyntheticSpec(n_sensors=3, n_points=600, seed=21), 4)
    source_csv = tmp_path / "plant.csv"
    frame.to_csv(source_csv, index=False)
    series, _ = load_series([source_csv], DataConfig(key_column="sensor_id"), bundle.features)
    by_key = {s.key: s for s in series}
    keys = sorted(by_key)[:3]  # the fourth key is not selected
    tag = str(time.monotonic_ns())
    inp, alerts, dead = f"in-{tag}", f"alerts-{tag}", f"dead-{tag}"
    topics(kafka_env.broker.bootstrap, inp, alerts, dead)

    # Kafka time: readings 0-99 of every key arrive 3 h ago, 100-499 2 h ago, 500+ 5 min ago; the range
    # [2.5 h ago, 1 h ago) selects the middle part.
    now_ms = int(time.time() * 1000)
    producer = kafka_env.producer
    position: dict[tuple[str, int], tuple[int, int]] = {}
    futures = []
    for key, value, last_ts in messages(series, MessageFormat(tuple(bundle.features))):
        k = key.decode()
        i = int(np.searchsorted(by_key[k].timestamps, last_ts))
        at = now_ms - 3 * HOUR_MS if i < 100 else now_ms - 2 * HOUR_MS + i if i < 500 else now_ms - 300_000
        futures.append(((k, i), producer.send(inp, key=key, value=value, timestamp_ms=at)))
    producer.send(inp, key=b"unit-000", value=b"{broken", timestamp_ms=now_ms - 2 * HOUR_MS)  # invalid
    producer.flush()
    for where, f in futures:
        md = f.get()
        position[where] = (md.partition, md.offset)
    ts = {k: by_key[k].timestamps for k in keys}
    # alerts: unit-001 readings 200-239 (closed; delivered twice), unit-002 from reading 450 on (still open)
    for body in (
        alert_event(keys[1], "open", ts[keys[1]][200], None),
        alert_event(keys[1], "closed", ts[keys[1]][200], ts[keys[1]][239]),
        alert_event(keys[1], "closed", ts[keys[1]][200], ts[keys[1]][239]),
        alert_event(keys[2], "open", ts[keys[2]][450], None),
    ):
        producer.send(alerts, key=b"k", value=body)
    # the daemon refused unit-000's reading 300 (e.g. time_backwards): it is on the dead-letter topic
    p, o = position[(keys[0], 300)]
    headers = [("reason", b"time_backwards"), ("source_topic", inp.encode())]
    headers += [("source_partition", str(p).encode()), ("source_offset", str(o).encode())]
    producer.send(dead, key=keys[0].encode(), value=b"{}", headers=headers)
    producer.flush()

    window = (f"{(now_ms - 2.5 * HOUR_MS) / 1000:.3f}", f"{(now_ms - HOUR_MS) / 1000:.3f}")
    out_kafka = tmp_path / "from-kafka.pt"
    args = ["-m", str(model_path), "--keys", ",".join(keys), "--epochs", "2"]
    result = CliRunner().invoke(
        main,
        ["retrain", *args, "-b", kafka_env.broker.bootstrap, "--topic", inp, "--alerts-topic", alerts]
        + ["--dead-letter-topic", dead, "--from", window[0], "--to", window[1], "-o", str(out_kafka)],
    )
    assert result.exit_code == 0, result.output
    expected = 3 * 400 - 40 - 50 - 1
    assert result.stdout.startswith(
        f"training set: {expected:,} readings of 3 keys (90 left out in alert spans, 1 dead-lettered and "
        "1 invalid messages skipped)\n"
    )

    # The same readings as CSV text (rows of the source file) plus the alerts as a replay's alerts.jsonl.
    text = pd.read_csv(source_csv, dtype=str)
    index = text.groupby("sensor_id").cumcount()
    rows = text["sensor_id"].isin(keys) & (index >= 100) & (index < 500)
    rows &= ~((text["sensor_id"] == keys[0]) & (index == 300))
    text[rows].to_csv(tmp_path / "middle.csv", index=False)
    (tmp_path / "alerts.jsonl").write_text("\n".join(r.value.decode() for r in kafka_env.read(alerts)) + "\n")
    out_csv = tmp_path / "from-csv.pt"
    result = CliRunner().invoke(
        main,
        ["retrain", *args, str(tmp_path / "middle.csv"), "--key-column", "sensor_id"]
        + ["--alerts", str(tmp_path / "alerts.jsonl"), "-o", str(out_csv)],
    )
    assert result.exit_code == 0, result.output

    from_kafka, from_csv = read_metadata(out_kafka)[0], read_metadata(out_csv)[0]
    assert from_kafka["training_fingerprint"] == from_csv["training_fingerprint"]
    assert from_kafka["weights_sha256"] == from_csv["weights_sha256"]  # CPU training is deterministic
    data = from_kafka["lineage"]["data"]
    assert from_kafka["lineage"]["parent_version"] == bundle.version
    assert (data["source"], data["topics"], data["key_names"]) == ("kafka", [inp], keys)
    assert (data["readings"], data["excluded_alert_readings"]) == (expected, 90)
    assert (data["dead_letter_messages"], data["invalid_messages"], data["other_key_messages"]) == (1, 1, 400)
    assert data["first_reading"] < data["last_reading"]


def test_retrain_from_a_topic_fills_missing_values_under_ffill_as_from_csv(kafka_env, tiny_model, tmp_path):
    """A reading with a missing value (JSON null) was dropped by the topic read whatever engine.nan_policy said,
    while training fills it under "ffill": the two sources trained on different readings."""
    model_path, bundle = tiny_model
    frame = generate_keys(SyntheticSpec(n_sensors=3, n_points=600, seed=23), 1)
    frame.iloc[100:400:7, 2] = np.nan  # 43 missing values of one feature
    source_csv = tmp_path / "gappy.csv"
    frame.to_csv(source_csv, index=False)
    (s,), _ = load_series([source_csv], DataConfig(key_column="sensor_id"), bundle.features)
    tag = str(time.monotonic_ns())
    inp, alerts, dead = f"in-{tag}", f"alerts-{tag}", f"dead-{tag}"
    topics(kafka_env.broker.bootstrap, inp, alerts, dead, partitions=1)
    for t, row in zip(s.timestamps.tolist(), s.values.tolist(), strict=True):
        body = {"key": s.key, "ts": t, "values": [None if np.isnan(v) else v for v in row]}
        kafka_env.producer.send(inp, key=s.key.encode(), value=json.dumps(body).encode())
    kafka_env.producer.flush()
    pipeline = tmp_path / "ffill.toml"
    pipeline.write_text('[engine]\nnan_policy = "ffill"\n')
    args = ["-m", str(model_path), "-p", str(pipeline), "--epochs", "1", "--min-windows", "10"]
    out_kafka, out_csv = tmp_path / "from-kafka.pt", tmp_path / "from-csv.pt"
    result = CliRunner().invoke(
        main,
        ["retrain", *args, "-b", kafka_env.broker.bootstrap, "--topic", inp, "--alerts-topic", alerts]
        + ["--dead-letter-topic", dead, "--since", "1h", "-o", str(out_kafka)],
    )
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        main, ["retrain", *args, str(source_csv), "--key-column", "sensor_id", "-o", str(out_csv)]
    )
    assert result.exit_code == 0, result.output
    from_kafka, from_csv = read_metadata(out_kafka)[0], read_metadata(out_csv)[0]
    filled = {"policy": "ffill", "rows_dropped": 0, "cells_filled": 43}
    assert from_kafka["missing_values"] == from_csv["missing_values"] == filled
    assert from_kafka["training_fingerprint"] == from_csv["training_fingerprint"]
    assert from_kafka["lineage"]["data"]["readings"] == from_csv["lineage"]["data"]["readings"] == 600


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        return resp.read().decode()


def _reloads(port: int) -> dict[str, float]:
    return {
        ln.split('"')[1]: float(ln.split()[-1])
        for ln in _metrics(port).splitlines()
        if ln.startswith("anomaly_model_reloads_total{")
    }


def test_promotion_under_a_running_daemon_hot_reloads_keeps_state_and_versions_alerts(
    kafka_env, tiny_model, stream, tmp_path
):
    _, series = stream
    _, champion = tiny_model
    # A challenger with the same architecture (so state is kept), trained on other normal data.
    frame = generate_keys(SyntheticSpec(n_sensors=3, n_points=1200, seed=99), 2)
    frame.to_csv(tmp_path / "other.csv", index=False)
    other, feats = load_series(
        [tmp_path / "other.csv"], DataConfig(key_column="sensor_id"), champion.features
    )
    challenger = train(
        other, feats, ModelConfig(window=8, hidden_size=16), TrainConfig(epochs=2, seed=1)
    ).bundle
    challenger_path = save_bundle(challenger, tmp_path / "challenger.pt")
    challenger = load_bundle(challenger_path)
    assert challenger.arch == champion.arch and challenger.version != champion.version

    cut = 200
    first = [s.head(cut) for s in series]
    second = [s.tail_from(cut) for s in series]
    engine = Engine(
        champion, EngineConfig(threshold="static")
    )  # what the daemon must do: part 1, reload, part 2
    outs: list = []
    run(engine, merged_batches(first, 97), [], on_batch=lambda b, o: outs.append(o))
    assert engine.reload(challenger) is True
    after: list = []
    run(engine, merged_batches(second, 97), [], on_batch=lambda b, o: after.append(o))
    new_alerts = {(a.id, a.status, a.model_version) for o in after for a in o.alerts}
    assert new_alerts and {v for _, _, v in new_alerts} == {challenger.version}

    model = tmp_path / "model.pt"
    shutil.copy(tiny_model[0], model)
    kafka_env.model = model
    names = kafka_env.names(partitions=2)
    proc, port = kafka_env.start(names, "--checkpoint-interval", "0.5")
    wait_for(lambda: http_status(port, "/readyz") == 200, 60, "daemon ready")
    ends = kafka_env.produce(names.input, first, champion.features)
    kafka_env.wait_committed(names.group, names.input, ends)

    # The comparison slice is the last hour of the input topic, as an operator would run it.
    kafka_args = ["-b", kafka_env.broker.bootstrap, "--topic", names.input, "--since", "1h"]
    kafka_args += ["--alerts-topic", names.alerts, "--dead-letter-topic", names.dead]
    result = CliRunner().invoke(
        main, ["promote", str(challenger_path), "-m", str(model), *kafka_args, "--force"]
    )
    assert result.exit_code == 0, result.output
    assert f"readings streamed             {sum(len(s) for s in first):,} " in result.stdout
    assert f"{model} now holds model {challenger.version}" in result.stdout
    wait_for(lambda: _reloads(port) == {"kept": 1.0, "reset": 0.0}, 20, "hot reload of the promoted bundle")
    assert f'version="{challenger.version}"' in _metrics(port)

    ends = kafka_env.produce(names.input, second, champion.features)
    kafka_env.wait_committed(names.group, names.input, ends)
    expected = {
        (w.key, float(w.timestamps[0])): window_json(w, champion.features)
        for o in outs + after
        for w in o.windows
    }
    assert kafka_env.windows(names.scores) == expected
    got = {
        (a["id"], a["status"], a["model_version"])
        for a in map(json.loads, (r.value for r in kafka_env.read(names.alerts)))
    }
    assert new_alerts <= got
    assert got == {(a.id, a.status, a.model_version) for o in outs + after for a in o.alerts}
    assert {i for i, _ in kafka_env.alert_ids(names.alerts)} == {a.id for o in outs + after for a in o.alerts}
    assert terminate(proc) == 0


def _alerts_open_and_a_wider_model(stream, tiny_model, tmp_path):  # type: ignore[no-untyped-def]
    """The stream's first readings, cut where the champion has alerts open (their ids), a model of another
    architecture trained on normal data, and a copy of the champion at `tmp_path/model.pt` for a daemon to run."""
    _, series = stream
    model_path, champion = tiny_model
    first, open_ids = cut_with_open_alerts(champion, series)
    assert open_ids
    frame = generate_keys(SyntheticSpec(n_sensors=3, n_points=600, seed=5), 1)
    frame.to_csv(tmp_path / "normal.csv", index=False)
    normal, feats = load_series(
        [tmp_path / "normal.csv"], DataConfig(key_column="sensor_id"), champion.features
    )
    wider = train(normal, feats, ModelConfig(window=12, hidden_size=16), TrainConfig(epochs=1, seed=1)).bundle
    assert wider.arch != champion.arch
    model = tmp_path / "model.pt"
    shutil.copy(model_path, model)
    return champion, first, open_ids, wider, model


def _daemon_with_alerts_open(kafka_env, model, first, champion, open_ids, interval="0.5"):  # type: ignore[no-untyped-def]
    """A daemon on `model` that has consumed `first` and opened the alerts `open_ids` (and closed none of them)."""
    names = kafka_env.names(partitions=2)
    proc, port = kafka_env.start(names, "--checkpoint-interval", interval, model=model)
    wait_for(lambda: http_status(port, "/readyz") == 200, 60, "daemon ready")
    ends = kafka_env.produce(names.input, first, champion.features)
    kafka_env.wait_committed(names.group, names.input, ends)
    assert {(i, s) for i, s in kafka_env.alert_ids(names.alerts) if i in open_ids} == {
        (i, "open") for i in open_ids
    }
    return names, proc, port


def test_a_hot_reload_that_resets_state_closes_the_open_alerts_it_drops(
    kafka_env, tiny_model, stream, tmp_path
):
    """A reload of a model with another architecture starts every key afresh. Before, an alert open at that
    moment was dropped with the state and never closed: it stayed open forever on the alerts topic (and
    `retrain` left the key's readings out from its start on). Now it is closed, reason `evicted`, by the
    model that opened it, as an evicted key's is. The closes are committed at once, on an idle stream too: they
    waited in the open transaction, unseen by read_committed readers, for the next periodic checkpoint (20 s
    after the last one here)."""
    champion, first, open_ids, wider, model = _alerts_open_and_a_wider_model(stream, tiny_model, tmp_path)
    names, proc, port = _daemon_with_alerts_open(kafka_env, model, first, champion, open_ids, interval="20")

    save_bundle(wider, model)  # an atomic replace, as `promote` does
    wait_for(lambda: _reloads(port) == {"kept": 0.0, "reset": 1.0}, 20, "hot reload of the wider model")

    def closed() -> dict[str, dict]:  # as an Apache Kafka read_committed reader gets them
        return {
            a["id"]: a
            for a in (
                json.loads(v)
                for *_, v, outcome, _ in kafka_env.transactions(names.alerts)
                if outcome == "committed"
            )
            if a["status"] == "closed" and a["id"] in open_ids
        }

    wait_for(lambda: set(closed()) == open_ids, 8, "the dropped alerts closed and committed")
    assert {(a["reason"], a["model_version"]) for a in closed().values()} == {("evicted", champion.version)}
    assert terminate(proc) == 0


def test_a_restart_with_a_model_that_cannot_restore_the_state_closes_its_open_alerts(
    kafka_env, tiny_model, stream, tmp_path
):
    """A model of another architecture promoted while the daemon was down: the checkpoint written under the old
    one is not restored (its keys start fresh). Before, the alerts open in it were dropped with it and stayed
    open forever on the alerts topic; now the restore closes them (reason `evicted`, the old model's version)
    in the transaction of its claims."""
    champion, first, open_ids, wider, model = _alerts_open_and_a_wider_model(stream, tiny_model, tmp_path)
    names, proc, port = _daemon_with_alerts_open(kafka_env, model, first, champion, open_ids)
    assert terminate(proc) == 0

    save_bundle(wider, model)  # promoted while the daemon was down
    proc, port = kafka_env.start(names, "--checkpoint-interval", "0.5", model=model)
    wait_for(lambda: http_status(port, "/readyz") == 200, 60, "daemon ready with the wider model")
    closed = {
        a["id"]: a
        for a in map(json.loads, (r.value for r in kafka_env.read(names.alerts)))
        if a["status"] == "closed" and a["id"] in open_ids
    }
    assert set(closed) == open_ids
    assert {(a["reason"], a["model_version"]) for a in closed.values()} == {("evicted", champion.version)}
    assert "not restored: written by an incompatible model" in kafka_env.logs[-1].read_text()
    # counted as the alerts topic has them (they were on the topic only): opened in the last life, closed in this
    assert metric(port, "anomaly_alerts_closed_total") == len(open_ids)
    assert terminate(proc) == 0

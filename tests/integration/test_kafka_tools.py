"""The changelog store, `anomaly produce` and hot reload against a real Tansu broker."""

from __future__ import annotations

import shutil
import signal
import urllib.request

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import http_status, terminate, wait_for
from kafka import KafkaConsumer, KafkaProducer

from anomaly.bundle import save_bundle
from anomaly.cli import main
from anomaly.config import EngineConfig
from anomaly.engine import Engine, Event
from anomaly.kafka.changelog import ChangelogStore, Owner, compress_state
from anomaly.kafka.codec import Decoder, MessageFormat

pytestmark = pytest.mark.integration


def test_changelog_round_trips_chunked_snapshots_and_tombstones_old_chunks(kafka_env, tiny_model):
    _, bundle = tiny_model
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    topic = f"cl-{np.random.default_rng().integers(1e9)}"
    KafkaAdminClient(bootstrap_servers=kafka_env.broker.bootstrap).create_topics(
        [NewTopic(topic, 1, 1, topic_configs={"cleanup.policy": "compact"})]
    )
    engine = Engine(bundle, EngineConfig(threshold="static"))
    rng = np.random.default_rng(1)
    engine.process([Event(f"k{i}", np.arange(20.0), rng.normal(size=(20, 3))) for i in range(5)])
    producer = KafkaProducer(bootstrap_servers=kafka_env.broker.bootstrap, acks="all")
    reader = KafkaConsumer(bootstrap_servers=kafka_env.broker.bootstrap, enable_auto_commit=False)
    owner = Owner("g", "m")

    def send(t: str, k: bytes, v: bytes | None) -> None:
        producer.send(t, key=k, value=v)

    small, big = engine.snapshot(["k0"]), engine.snapshot()
    # a chunk size between the two compressed sizes, so the test holds whatever the state layout grows to
    chunk_bytes = len(compress_state(small)) + 16
    assert len(compress_state(big)) > chunk_bytes
    store = ChangelogStore(send, reader, lambda _: topic, owner, chunk_bytes=chunk_bytes)
    store.write("in:0", 99, big, 5)
    store.write("in:1", 7, small, 1)
    producer.flush()
    first_chunks = list(store._live_chunks["in:0"])
    assert len(first_chunks) >= 2 and "in:1" not in store._live_chunks  # big is chunked, small is inline
    store.write("in:0", 150, big, 5)  # a new generation: the old chunks get tombstoned
    producer.flush()
    got = ChangelogStore(send, reader, lambda _: topic, owner, chunk_bytes=chunk_bytes).read(
        ["in:0", "in:1", "in:2"]
    )
    assert {pid: (cp.offset, cp.snapshot, cp.keys) for pid, cp in got.items()} == {
        "in:0": (150, big, 5),
        "in:1": (7, small, 1),
    }
    tombstoned = {r.key.decode() for r in kafka_env.read(topic) if r.value is None}
    assert tombstoned == set(first_chunks)
    producer.close()
    reader.close()


def test_produce_command_sends_blocks_in_timestamp_order(kafka_env, stream, tiny_model):
    path, series = stream
    _, bundle = tiny_model
    topic = kafka_env.names(partitions=3).input
    result = CliRunner().invoke(
        main,
        [
            "produce",
            str(path),
            "--topic",
            topic,
            "-b",
            kafka_env.broker.bootstrap,
            "--key-column",
            "sensor_id",
            "--features",
            ",".join(bundle.features),
            "--block",
            "32",
        ],
    )
    assert result.exit_code == 0, result.output
    n_msgs = sum(-(-len(s) // 32) for s in series)
    assert (
        f"sent {n_msgs:,} messages ({sum(len(s) for s in series):,} readings of {len(series)} keys)"
        in result.stdout
    )
    decoder = Decoder(MessageFormat(tuple(bundle.features)))
    events = [decoder.decode(r) for r in kafka_env.read(topic)]
    assert len(events) == n_msgs
    for s in series:
        mine = sorted((e for e in events if e.key == s.key), key=lambda e: e.timestamps[0])
        assert np.concatenate([e.timestamps for e in mine]).tolist() == s.timestamps.tolist()
        assert np.concatenate([e.values for e in mine]).tolist() == s.values.astype(np.float64).tolist()


def _reloads(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        lines = resp.read().decode().splitlines()
    return {
        ln.split('"')[1]: float(ln.split()[-1])
        for ln in lines
        if ln.startswith("anomaly_model_reloads_total{")
    }


def test_sighup_and_a_new_bundle_file_reload_the_model_keeping_state(kafka_env, tiny_model):
    model = kafka_env.workdir / "model.pt"
    shutil.copy(tiny_model[0], model)
    kafka_env.model = model
    names = kafka_env.names(partitions=1)
    proc, port = kafka_env.start(names)
    wait_for(lambda: http_status(port, "/readyz") == 200, 60, "daemon ready")
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: _reloads(port).get("kept") == 1.0, 20, "reload on SIGHUP")
    save_bundle(tiny_model[1], model)  # same architecture, new file: picked up by its mtime
    wait_for(lambda: _reloads(port).get("kept") == 2.0, 20, "reload on a new bundle file")
    assert _reloads(port) == {"kept": 2.0, "reset": 0.0}
    assert terminate(proc) == 0


def test_produce_to_a_missing_topic_creates_it_with_auto_create_topics(kafka_env, stream):
    """The missing-topic error told the user to set kafka.auto_create_topics, which produce then ignored."""
    from kafka import KafkaAdminClient

    path, series = stream
    topic = f"new-{np.random.default_rng().integers(1e9)}"
    args = [
        "produce",
        str(path),
        "--topic",
        topic,
        "-b",
        kafka_env.broker.bootstrap,
        "--key-column",
        "sensor_id",
    ]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 2 and refused.stderr == (
        f"error: topic '{topic}' (--topic) not found on {kafka_env.broker.bootstrap}; create it first, pass "
        "--partitions N or set kafka.auto_create_topics = true\n"
    )
    env = {"ANOMALY_KAFKA_AUTO_CREATE_TOPICS": "true", "ANOMALY_KAFKA_TOPIC_PARTITIONS": "2"}
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    admin = KafkaAdminClient(bootstrap_servers=kafka_env.broker.bootstrap)
    (described,) = admin.describe_topics([topic])
    admin.close()
    assert len(described["partitions"]) == 2
    assert len(kafka_env.read(topic)) == sum(len(s) for s in series)


def test_produce_with_the_model_sends_its_features_in_its_order(kafka_env, stream, tiny_model, tmp_path):
    """Values go as a list that the daemon reads by position: a file whose columns were in another order than
    the model's was sent as is, and scored with every sensor in another's place."""
    import pandas as pd

    path, series = stream
    model, bundle = tiny_model
    shuffled = tmp_path / "shuffled.csv"
    frame = pd.read_csv(path)
    frame[["timestamp", "sensor_id", *reversed(bundle.features)]].to_csv(shuffled, index=False)
    topic = kafka_env.names(partitions=1).input
    args = [
        "produce",
        str(shuffled),
        "-t",
        topic,
        "-b",
        kafka_env.broker.bootstrap,
        "--key-column",
        "sensor_id",
    ]
    result = CliRunner().invoke(main, [*args, "--model", str(model)])
    assert result.exit_code == 0, result.output
    decoder = Decoder(MessageFormat(tuple(bundle.features)))
    events = [decoder.decode(r) for r in kafka_env.read(topic)]
    for s in series:
        mine = sorted((e for e in events if e.key == s.key), key=lambda e: e.timestamps[0])
        assert np.concatenate([e.values for e in mine]).tolist() == s.values.tolist()


def test_produce_of_a_block_larger_than_the_request_limit_is_one_error_line(kafka_env, stream):
    """A block above the producer's max_request_size raised MessageSizeTooLargeError from send(): a traceback
    (exit 1) instead of one line. Smaller blocks then go through, every one acknowledged."""
    path, series = stream
    topic = f"blocks-{np.random.default_rng().integers(1e9)}"
    args = [
        "produce",
        str(path),
        "--topic",
        topic,
        "-b",
        kafka_env.broker.bootstrap,
        "--key-column",
        "sensor_id",
    ]
    args += ["--partitions", "1"]
    env = {"ANOMALY_KAFKA_MAX_REQUEST_BYTES": "20000"}
    refused = CliRunner().invoke(main, [*args, "--block", "400"], env=env)  # one key's 400 readings: ~28 KB
    assert refused.exit_code == 2
    (line,) = refused.stderr.splitlines()
    assert line.startswith("error: message 1 (") and line.endswith(
        "send smaller blocks (--block) or raise kafka.max_request_bytes"
    ), line
    assert kafka_env.read(topic) == []
    result = CliRunner().invoke(main, [*args, "--block", "100"], env=env)
    assert result.exit_code == 0, result.output
    assert len(kafka_env.read(topic)) == sum(-(-len(s) // 100) for s in series) == 24


def test_produce_sends_the_date_and_the_time_of_two_columns_joined(kafka_env, tmp_path):
    """`produce --date-column Date --time-column Time`: each message's one time is the row's date and time of day
    read as one date-time, across a midnight (the message format is unchanged)."""
    start = 1700006280  # 2023-11-14 23:58:00 UTC
    rows = [(start + 20 * i, float(i % 7)) for i in range(12)]
    path = tmp_path / "d.csv"
    path.write_text(
        "Date,Time,a\n"
        + "".join(
            f"{pd_stamp(t, '%Y-%m-%d')},{pd_stamp(t, '%H:%M:%S')},{v}\n" for t, v in reversed(rows)
        )  # newest first: sent in time order
    )
    topic = kafka_env.names(partitions=1).input
    args = ["produce", str(path), "-t", topic, "-b", kafka_env.broker.bootstrap]
    result = CliRunner().invoke(main, [*args, "--date-column", "Date", "--time-column", "Time"])
    assert result.exit_code == 0, result.output
    decoder = Decoder(MessageFormat(("a",)))
    events = [decoder.decode(r) for r in kafka_env.read(topic)]
    assert [float(e.timestamps[0]) for e in events] == [float(t) for t, _ in rows]
    assert [float(e.values[0][0]) for e in events] == [v for _, v in rows]


def pd_stamp(t: int, fmt: str) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime(fmt)

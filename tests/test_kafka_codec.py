"""Message decoding, dead letters and the producer's encoding, without a broker."""

from __future__ import annotations

import json
from typing import NamedTuple

import numpy as np
import pytest

from anomaly.config import ConfigError, KafkaConfig
from anomaly.data import Series
from anomaly.engine.types import Alert, Rejection
from anomaly.kafka.clients import connection_settings
from anomaly.kafka.codec import (
    DecodeError,
    Decoder,
    MessageFormat,
    alert_message,
    dead_letter,
    parse_time,
    source_rejection,
)
from anomaly.kafka.produce import messages

FMT = MessageFormat(("temp", "pressure", "flow"), max_message_bytes=200)


class Record(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def rec(body: object, key: bytes | None = b"pump-1", raw: bytes | None = None) -> Record:
    return Record("sensors", 2, 41, key, raw if raw is not None else json.dumps(body).encode())


def test_single_reading_as_list_object_and_iso_time_decode_the_same():
    d = Decoder(FMT)
    a = d.decode(rec({"key": "pump-1", "ts": 1700000000.5, "values": [1.0, 2.0, 3.0]}))
    b = d.decode(rec({"ts": "2023-11-14T22:13:20.500Z", "values": {"flow": 3, "temp": 1, "pressure": 2}}))
    c = d.decode(rec({"ts": "2023-11-14T22:13:20.500", "values": [1, 2, 3]}))  # naive ISO means UTC
    for e in (a, b, c):
        assert e.key == "pump-1"
        assert e.timestamps.tolist() == [1700000000.5]
        assert e.values.tolist() == [[1.0, 2.0, 3.0]]
    assert a.ref.offset == 41


def test_block_and_custom_field_names():
    fmt = MessageFormat(("a", "b"), key_field="id", time_field="t", values_field="v", readings_field="rows")
    e = Decoder(fmt).decode(rec({"id": 7, "rows": [{"t": 10, "v": [1, None]}, {"t": 11, "v": [3, 4]}]}))
    assert e.key == "7"
    assert e.timestamps.tolist() == [10.0, 11.0]
    assert np.array_equal(e.values, np.array([[1.0, np.nan], [3.0, 4.0]]), equal_nan=True)


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (rec(None, raw=b"{nope"), "invalid_json"),
        (rec(None, raw=b"[1, 2]"), "invalid_json"),
        (rec(None, raw=b"\xff\xfe"), "invalid_json"),
        (rec(None, raw=b" " * 201), "oversized"),
        (rec({"ts": 1, "values": [1, 2, 3]}, key=None), "missing_field"),
        (rec({"values": [1, 2, 3]}), "missing_field"),
        (rec({"ts": 1}), "missing_field"),
        (rec({"ts": "soon", "values": [1, 2, 3]}), "bad_timestamp"),
        (rec({"ts": True, "values": [1, 2, 3]}), "bad_timestamp"),
        (rec({"ts": 1, "values": [1, 2]}), "feature_count"),
        (rec({"ts": 1, "values": {"temp": 1, "pressure": 2, "speed": 3}}), "feature_count"),
        (rec({"ts": 1, "values": ["x", 2, 3]}), "bad_values"),
        (rec({"ts": 1, "values": 5}), "bad_values"),
        (rec({"readings": []}), "bad_values"),
    ],
)
def test_malformed_messages_raise_decode_error_with_reason(record, reason):
    with pytest.raises(DecodeError) as info:
        Decoder(FMT).decode(record)
    assert info.value.reason == reason


def test_dead_letter_keeps_original_bytes_and_says_why_and_where():
    record = rec(None, raw=b"{nope")
    with pytest.raises(DecodeError) as info:
        Decoder(FMT).decode(record)
    rejection = source_rejection(record, info.value)
    assert (rejection.reason, rejection.key, rejection.whole) == ("malformed", "pump-1", True)
    key, value, headers = dead_letter(rejection)
    h = dict(headers)
    assert (key, value) == (b"pump-1", b"{nope")
    assert (h["reason"], h["source_topic"], h["source_partition"], h["source_offset"]) == (
        b"invalid_json",
        b"sensors",
        b"2",
        b"41",
    )
    engine_refusal = Rejection("pump-1", "time_backwards", 2, False, record, "2 readings before 1700000000")
    _, value, headers = dead_letter(engine_refusal)
    h = dict(headers)
    assert (value, h["reason"], h["count"], h["detail"]) == (
        b"{nope",
        b"time_backwards",
        b"2",
        b"2 readings before 1700000000",
    )


def test_produced_messages_decode_to_the_exact_series_values():
    rng = np.random.default_rng(0)
    series = [
        Series(f"k{i}", 1.7e9 + np.arange(10) * 60.0 + i, rng.normal(size=(10, 3)).astype(np.float32))
        for i in range(3)
    ]
    d = Decoder(MessageFormat(("a", "b", "c")))
    for block in (1, 4):
        got: dict[str, list] = {}
        for key, value, _ in messages(series, MessageFormat(("a", "b", "c")), block):
            e = d.decode(Record("t", 0, 0, key, value))
            got.setdefault(e.key, []).append(e)
        for s in series:
            assert np.concatenate([e.timestamps for e in got[s.key]]).tobytes() == s.timestamps.tobytes()
            assert (
                np.concatenate([e.values for e in got[s.key]]).tobytes()
                == s.values.astype(np.float64).tobytes()
            )
        assert [len(e.timestamps) for e in got["k0"]] == ([1] * 10 if block == 1 else [4, 4, 2])


def test_alert_message_is_keyed_by_entity():
    alert = Alert("pump-1@1700000000", "pump-1", "open", 1.7e9, None, 1.7e9, 2.5, 1.5, "v1")
    key, value = alert_message(alert)
    assert (key, json.loads(value)) == (b"pump-1", alert.to_json())


def test_parse_time_rejects_non_finite():
    assert parse_time("1700000000") == 1.7e9
    with pytest.raises(DecodeError):
        parse_time(float("nan"))


def test_security_settings_pass_through_and_are_validated():
    cfg = KafkaConfig(
        bootstrap_servers="a:1, b:2",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="u",
        sasl_password="pw",
        ssl_cafile="/ca.pem",
    )
    s = connection_settings(cfg)
    assert s["bootstrap_servers"] == ["a:1", "b:2"]
    assert (s["sasl_mechanism"], s["sasl_plain_username"], s["sasl_plain_password"], s["ssl_cafile"]) == (
        "SCRAM-SHA-256",
        "u",
        "pw",
        "/ca.pem",
    )
    with pytest.raises(
        ConfigError, match="sasl_mechanism must be one of: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"
    ):
        connection_settings(KafkaConfig(security_protocol="SASL_PLAINTEXT", sasl_mechanism="GSSAPI"))
    with pytest.raises(ConfigError, match="needs kafka.sasl_username and kafka.sasl_password"):
        connection_settings(KafkaConfig(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN"))
    with pytest.raises(ConfigError, match="security_protocol must be one of"):
        connection_settings(KafkaConfig(security_protocol="TLS"))


def test_the_shipped_daemon_pipeline_loads():
    from pathlib import Path

    from anomaly.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "pipelines" / "kafka.toml", env={})
    assert (
        cfg.kafka.topics,
        cfg.kafka.changelog_topic,
        cfg.kafka.checkpoint_interval_s,
        cfg.metrics.port,
    ) == (("sensors",), "changelog__{group}--{topic}", 5.0, 9108)

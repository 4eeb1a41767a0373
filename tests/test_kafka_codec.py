"""Message decoding, dead letters and the producer's encoding, without a broker."""

from __future__ import annotations

import gc
import json
import re
import time

import numpy as np
import orjson
import pytest

from anomaly.config import ConfigError, DataConfig, KafkaConfig, build_config
from anomaly.data import Series, load_series
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
from anomaly.kafka.produce import message_count, messages
from tests.helpers import Record

FMT = MessageFormat(("temp", "pressure", "flow"), max_message_bytes=200)


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
        (rec({"ts": 1, "values": ["1.5", 2, 3]}), "bad_values"),  # a number in a string is not a number
        (rec({"ts": 1, "values": [True, 2, 3]}), "bad_values"),
        (rec({"ts": 1, "values": {"temp": False, "pressure": 2, "flow": 3}}), "bad_values"),
        (rec({"readings": [{"ts": 1, "values": [1, "2", 3]}, {"ts": 2, "values": [1, 2, 3]}]}), "bad_values"),
        (
            rec({"readings": [{"ts": 1, "values": [1, 2, 3]}, {"ts": 2, "values": [1, 2, True]}]}),
            "bad_values",
        ),
        (rec({"ts": 1, "values": 5}), "bad_values"),
        (rec({"readings": []}), "bad_values"),
    ],
)
def test_malformed_messages_raise_decode_error_with_reason(record, reason):
    with pytest.raises(DecodeError) as info:
        Decoder(FMT).decode(record)
    assert info.value.reason == reason


def test_dead_letters_refused_after_the_key_was_read_carry_the_body_key():
    """bad_values and future_timestamp dead letters carried entity_key '' (the message key) although the body
    named the entity; one and many records at a time (the daemon's decode_poll) say the same."""
    d = Decoder(FMT, clock=lambda: 1_700_000_000.0)
    bodies = [
        ({"key": "pump-9", "ts": 1700000000, "values": ["1.5", 2, 3]}, b"bad_values"),
        ({"key": "pump-9", "ts": 1800000000, "values": [1, 2, 3]}, b"future_timestamp"),
        ({"key": "pump-9", "readings": [{"ts": 1700000000, "values": [1, 2, True]}]}, b"bad_values"),
        ({"key": "pump-9", "ts": 1700000000, "values": [1, 2]}, b"feature_count"),
    ]
    for body, reason in bodies:
        for message_key in (None, b"", b"other"):
            record = rec(body, key=message_key)
            with pytest.raises(DecodeError) as info:
                d.decode(record)
            _, _, headers = dead_letter(source_rejection(record, info.value))
            assert (dict(headers)["entity_key"], dict(headers)["reason"]) == (b"pump-9", reason)
    records = [rec(body, key=None) for body, _ in bodies] * 10  # enough for the bulk path
    _, errors = d.decode_poll(records)
    assert len(errors) == len(records)
    assert {source_rejection(r, err).key for r, err in errors} == {"pump-9"}
    # a body whose key cannot be read keeps the message key (or '' without one)
    record = rec({"key": ["x"], "ts": 1700000000, "values": [1, 2, 3]}, key=b"pump-1")
    with pytest.raises(DecodeError) as info:
        d.decode(record)
    assert source_rejection(record, info.value).key == "pump-1"


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


def test_produced_missing_and_infinite_values_go_as_null_which_the_daemon_reads_as_nan():
    """A CSV's empty or `inf` cell used to go out as Python's `NaN`/`Infinity` text, which is not JSON: the
    daemon refused the whole message as `invalid_json` where replay applies `nan_policy` to that cell."""
    values = np.array([[1.0, np.nan, 3.0], [4.0, 5.0, np.inf], [-np.inf, 8.0, 9.0], [10.0, 11.0, 12.0]])
    stamps = 1.7e9 + np.arange(4) * 60.0
    stamps_gap = stamps.copy()
    stamps_gap[3] = np.nan  # an empty time cell
    series = [Series("k0", stamps, values), Series("k1", stamps_gap, values)]
    fmt = MessageFormat(("a", "b", "c"))
    d = Decoder(fmt)
    for block in (1, 4):
        events, refused = [], []
        sent = list(messages(series, fmt, block))
        assert len(sent) == message_count(series, block) == (8 if block == 1 else 3)
        for key, value, _ in sent:
            assert orjson.loads(value) is not None  # strict JSON, as the daemon parses it
            try:
                events.append(d.decode(Record("t", 0, 0, key, value)))
            except DecodeError as err:
                refused.append((key, err.reason))
        k0 = [e for e in events if e.key == "k0"]
        assert np.concatenate([e.timestamps for e in k0]).tobytes() == stamps.tobytes()
        assert (
            np.concatenate([e.values for e in k0]).tobytes()
            == np.where(np.isfinite(values), values, np.nan).tobytes()
        )
        # the reading without a time is refused, the others are read, in blocks too: it goes in a message of
        # its own. Before, it went in k1's block, which the daemon refused whole (replay refuses it alone).
        k1 = [e for e in events if e.key == "k1"]
        assert refused == [(b"k1", "missing_field")]
        assert np.concatenate([e.timestamps for e in k1]).tobytes() == stamps[:3].tobytes()


def test_alert_message_is_keyed_by_entity():
    alert = Alert("pump-1@1700000000", "pump-1", "open", 1.7e9, None, 1.7e9, 2.5, 1.5, "v1")
    key, value = alert_message(alert)
    assert (key, json.loads(value)) == (b"pump-1", alert.to_json())


def test_parse_time_rejects_non_finite():
    assert parse_time("1700000000") == 1.7e9
    with pytest.raises(DecodeError):
        parse_time(float("nan"))


def test_security_settings_pass_through_and_are_validated(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    cfg = KafkaConfig(
        bootstrap_servers="a:1, b:2",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="u",
        sasl_password="pw",
        ssl_cafile=str(ca),
    )
    s = connection_settings(cfg)
    assert s["bootstrap_servers"] == ["a:1", "b:2"]
    assert (s["sasl_mechanism"], s["sasl_plain_username"], s["sasl_plain_password"], s["ssl_cafile"]) == (
        "SCRAM-SHA-256",
        "u",
        "pw",
        str(ca),
    )
    with pytest.raises(
        ConfigError, match="sasl_mechanism must be one of: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"
    ):
        connection_settings(KafkaConfig(security_protocol="SASL_PLAINTEXT"))  # no mechanism
    with pytest.raises(ConfigError, match="needs kafka.sasl_username and kafka.sasl_password"):
        connection_settings(KafkaConfig(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN"))
    with pytest.raises(ConfigError, match="security_protocol must be one of"):
        connection_settings(KafkaConfig(security_protocol="TLS"))


@pytest.mark.parametrize(
    "protocol, setting, fits",
    [
        ("PLAINTEXT", {"sasl_mechanism": "PLAIN"}, "SASL_PLAINTEXT or SASL_SSL"),
        ("SSL", {"sasl_username": "u", "sasl_password": "pw"}, "SASL_PLAINTEXT or SASL_SSL"),
        ("PLAINTEXT", {"ssl_cafile": "ca.pem"}, "SSL or SASL_SSL"),
        ("SASL_PLAINTEXT", {"ssl_certfile": "c.pem"}, "SSL or SASL_SSL"),
    ],
)
def test_settings_the_security_protocol_does_not_use_are_refused_not_ignored(protocol, setting, fits):
    """SASL credentials under PLAINTEXT (the protocol left at its default) were dropped without a word, and the
    broker, which expected them, looked unreachable."""
    sasl = (
        {"sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": "pw"} if "SASL" in protocol else {}
    )
    name = next(iter(setting))
    with pytest.raises(ConfigError) as info:
        connection_settings(KafkaConfig(security_protocol=protocol, **sasl, **setting))
    assert str(info.value) == (
        f"kafka.{name} is set, but security_protocol {protocol} does not use it: set kafka.security_protocol "
        f"to {fits}, or leave kafka.{name} out"
    )


@pytest.mark.parametrize("name", ["ssl_cafile", "ssl_certfile", "ssl_keyfile"])
def test_a_pem_file_that_cannot_be_read_is_named_before_connecting(tmp_path, name):
    """A misspelt ssl_cafile was only logged by kafka-python; the daemon then said the broker could not be
    reached (check the security settings), not which file."""
    missing = tmp_path / "none.pem"
    for path, reason in ((missing, "No such file or directory"), (tmp_path, "Is a directory")):
        with pytest.raises(ConfigError) as info:
            connection_settings(KafkaConfig(security_protocol="SSL", **{name: str(path)}))
        assert str(info.value) == f"kafka.{name}: cannot read {path}: {reason}"


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


def poll_records() -> list[Record]:
    """A poll as a broker may deliver it: mostly plain single readings, with blocks, ISO times, nulls, integers,
    huge and tiny magnitudes, booleans and strings in values, and malformed records in between."""
    rng = np.random.default_rng(3)
    out = []
    for i in range(300):
        ts = 1.7e9 + i * 0.25
        values = (rng.normal(size=3) * 10.0 ** rng.integers(-8, 9, size=3)).tolist()
        body: dict = {"key": f"pump-{i % 7}", "ts": ts, "values": values}
        kind = i % 37
        if kind == 5:
            body = {
                "key": f"pump-{i % 7}",
                "readings": [{"ts": ts, "values": values}, {"ts": ts + 0.1, "values": values}],
            }
        elif kind == 9:
            body["values"] = ["1.5", 2, 3]
        elif kind == 11:
            body["values"] = [True, 2.0, 3.0]
        elif kind == 13:
            body["values"] = [None, 2.0, 3.0]
        elif kind == 17:
            body["ts"] = "2023-11-14T22:13:20Z"
        elif kind == 19:
            body["values"] = [1, 2, 3]
        elif kind == 23:
            body["values"] = [1.0, 2.0]
        elif kind == 29:
            del body["key"]
        elif kind == 31:
            out.append(Record("sensors", 0, i, b"k", b"{broken"))
            continue
        elif kind == 33:
            body["pad"] = "x" * 300
        out.append(Record("sensors", 0, i, f"pump-{i % 7}".encode(), json.dumps(body).encode()))
    return out


def assert_poll_decodes_as_record_by_record(d: Decoder, records: list[Record]) -> list[tuple[int, str, str]]:
    """decode_poll gives the same readings, errors and details in the same order as decode one record at a
    time; returns the refusals (offset, reason, detail)."""
    expected, refused = [], []
    for r in records:
        try:
            expected.append(d.decode(r))
        except DecodeError as err:
            refused.append((r.offset, err.reason, err.detail))
    readings, errors = d.decode_poll(records)
    got = readings.events()
    assert [(e.key, e.ref.offset) for e in got] == [(e.key, e.ref.offset) for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert g.timestamps.tobytes() == e.timestamps.tobytes()
        assert g.values.tobytes() == e.values.tobytes()  # NaN for null included
    assert [(r.offset, e.reason, e.detail) for r, e in errors] == refused
    return refused


def test_columnar_decode_of_a_poll_equals_decoding_record_by_record():
    d = Decoder(MessageFormat(FMT.features, max_message_bytes=300))
    records = poll_records()
    refused = assert_poll_decodes_as_record_by_record(d, records)
    assert {reason for _, reason, _ in refused} == {
        "bad_values",
        "feature_count",
        "invalid_json",
        "oversized",
    }
    clean = [r for r in records if r.offset % 37 not in (5, 9, 11, 13, 17, 23, 29, 31, 33)]
    bulk = d._bulk(clean, d._parse(clean))  # all of it in columns at once, none decoded one by one
    assert bulk is not None and bulk.events().__len__() == len(clean)


def block_poll_records() -> list[Record]:
    """A poll of blocks (runs long enough for the bulk path), every way a reading in a block can be odd."""
    rng = np.random.default_rng(4)
    out = []
    for i in range(240):
        n = 1 + i % 5
        rows = [
            {
                "ts": 1.7e9 + i + j * 0.1,
                "values": (rng.normal(size=3) * 10.0 ** rng.integers(-8, 9, 3)).tolist(),
            }
            for j in range(n)
        ]
        body: dict = {"key": f"pump-{i % 7}", "readings": rows}
        kind = i % 41
        if kind == 3:
            rows[-1]["ts"] = "2023-11-14T22:13:20Z"
        elif kind == 6:
            rows[0]["values"] = [None, 1.0, 2.0]
        elif kind == 8:
            rows[-1]["values"] = ["1.5", 1.0, 2.0]
        elif kind == 10:
            rows[0]["values"] = [False, 1.0, 2.0]
        elif kind == 12:
            rows[-1]["values"] = [1.0, 2.0]
        elif kind == 14:
            body["readings"] = []
        elif kind == 16:
            body["readings"] = [*rows, 7]
        elif kind == 18:
            del rows[0]["ts"]
        elif kind == 20:
            body["key"] = 17
        elif kind == 22:
            del body["key"]
        elif kind == 24:
            rows[0]["values"] = [1, 2, 3]
            rows[-1]["ts"] = int(rows[-1]["ts"])
        elif kind == 26:
            rows[0]["values"] = [[1.0], 2.0, 3.0]
        elif kind == 28:
            body["readings"] = {"ts": 1.0, "values": [1.0, 2.0, 3.0]}
        elif kind == 30:
            rows[-1]["values"] = {"a": 1.0, "b": 2.0, "c": 3.0}
        out.append(Record("sensors", 0, i, f"pump-{i % 7}".encode(), json.dumps(body).encode()))
    return out


def test_columnar_decode_of_blocks_equals_decoding_record_by_record():
    d = Decoder(MessageFormat(FMT.features))
    records = block_poll_records()
    refused = assert_poll_decodes_as_record_by_record(d, records)
    assert {reason for _, reason, _ in refused} == {"bad_values", "feature_count", "missing_field"}
    clean = [r for r in records if r.offset % 41 not in range(3, 31)]
    bulk = d._blocks(clean, d._parse(clean))  # all of it in columns at once, none decoded one by one
    assert bulk is not None and [e.key for e in bulk.events()] == [d.decode(r).key for r in clean]


def test_a_poll_is_decoded_with_the_collector_paused_and_left_as_found(monkeypatch):
    """The cyclic GC waits while a poll is parsed (its bodies stay alive until converted) and runs again after;
    a collector someone else switched off stays off."""
    d = Decoder(MessageFormat(FMT.features))
    records = block_poll_records()
    seen = []
    parse = d._parse
    monkeypatch.setattr(d, "_parse", lambda recs: seen.append(gc.isenabled()) or parse(recs))
    expected = Decoder(MessageFormat(FMT.features)).decode_poll(records)[0].values
    assert gc.isenabled()
    assert d.decode_poll(records)[0].values.tobytes() == expected.tobytes()
    assert seen == [False] and gc.isenabled()
    gc.disable()
    try:
        d.decode_poll(records)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_json_numbers_become_the_float64_python_reads():
    """Arbitrary decimals and magnitudes: the decoded value is float(text), in bulk and one by one."""
    rng = np.random.default_rng(5)
    texts = [f"{x:.{k}f}" for x, k in zip(rng.normal(0, 1e6, 600), rng.integers(0, 12, 600), strict=True)]
    texts += ["1e-300", "123456789012345678901234567890", "-0.0", "0.1", "1234567.8901234567"]
    texts += ["9007199254740993", "2.5e15", "7"] + ["0"] * (-len(texts) % 3)
    rows = [texts[i : i + 3] for i in range(0, len(texts), 3)]
    records = [
        Record("t", 0, i, b"k", f'{{"key":"k","ts":{i},"values":[{",".join(r)}]}}'.encode())
        for i, r in enumerate(rows)
    ]
    want = np.array([[float(t) for t in r] for r in rows])
    readings, errors = Decoder(FMT).decode_poll(records)
    assert errors == [] and readings.values.tobytes() == want.tobytes()
    one_by_one = np.concatenate([Decoder(FMT).decode(r).values for r in records])
    assert one_by_one.tobytes() == want.tobytes()


@pytest.mark.parametrize("factor", [1, 10**3, 10**6, 10**9], ids=["s", "ms", "us", "ns"])
def test_epoch_milli_micro_and_nanoseconds_decode_as_the_csv_path_reads_them(factor):
    import pandas as pd

    from anomaly.data import to_epoch_seconds

    stamps = [1_700_000_000 * factor + i * factor // 4 if factor > 1 else 1.7e9 + i / 4 for i in range(3)]
    expected = to_epoch_seconds(pd.Series(stamps)).tolist()
    assert expected == pytest.approx([1_700_000_000.0, 1_700_000_000.25, 1_700_000_000.5], abs=1e-6)
    d = Decoder(FMT)
    records = [rec({"key": "k", "ts": t, "values": [1.0, 2.0, 3.0]}) for t in stamps]
    readings, errors = d.decode_poll(records)  # columnar path
    assert errors == [] and readings.timestamps.tolist() == expected
    assert [d.decode(r).timestamps[0] for r in records] == expected  # one by one
    block = rec({"key": "k", "readings": [{"ts": t, "values": [1.0, 2.0, 3.0]} for t in stamps]})
    assert d.decode(block).timestamps.tolist() == expected
    assert [parse_time(str(t)) for t in stamps] == expected  # numbers sent as text


def test_readings_stamped_too_far_ahead_of_the_clock_are_refused_in_bulk_and_one_by_one():
    """One broken clock must not move event time: a reading more than max_future_seconds ahead of the wall clock
    is refused (``future_timestamp``), whichever path decodes it; up to the limit it is taken, 0 turns it off."""
    now = 1.7e9
    fmt = MessageFormat(FMT.features, max_future_seconds=3600.0)
    d = Decoder(fmt, clock=lambda: now)
    far = {
        1e30: "ns",  # read as nanoseconds: year ~3e13
        "9999-12-31T00:00:00": "iso",
        now + 3600.5: "just past the limit",
    }
    records = []
    for i in range(120):
        body: dict = {"key": f"pump-{i % 5}", "ts": now - 120 + i, "values": [1.0, 2.0, 3.0]}
        if i == 60:
            body["ts"] = now + 3600.0  # exactly at the limit: taken
        if i in (17, 18, 90):
            body["ts"] = list(far)[[17, 18, 90].index(i)]
        if i == 100:  # a block with one reading too far ahead is refused whole
            body = {
                "key": "pump-0",
                "readings": [{"ts": now, "values": [1, 2, 3]}, {"ts": 5e12, "values": [1, 2, 3]}],
            }
        records.append(Record("sensors", 0, i, b"k", json.dumps(body).encode()))
    refused = assert_poll_decodes_as_record_by_record(d, records)
    assert [(off, reason) for off, reason, _ in refused] == [
        (i, "future_timestamp") for i in (17, 18, 90, 100)
    ]
    assert refused[-1][2] == (
        f"timestamp 5000000000.0 is {5e9 - now:.4g} s ahead of this machine's clock (kafka.max_future_seconds = 3600)"
    )
    readings, errors = d.decode_poll(records)
    assert len(readings.timestamps) == 116 and float(readings.timestamps.max()) == now + 3600.0
    off = Decoder(MessageFormat(FMT.features, max_future_seconds=0.0), clock=lambda: now)
    assert off.decode_poll(records)[1] == [] and off.decode(records[17]).timestamps[0] > 1e20


def test_the_future_limit_follows_the_wall_clock_by_default():
    d = Decoder(MessageFormat(FMT.features))  # the default limit (a day) and the real clock
    soon = rec({"ts": time.time() + 3600, "values": [1, 2, 3]})
    assert d.decode(soon).timestamps[0] > time.time()
    with pytest.raises(DecodeError) as info:
        d.decode(rec({"ts": time.time() + 2 * 86_400, "values": [1, 2, 3]}))
    assert info.value.reason == "future_timestamp"


def test_the_daemon_decodes_with_the_configured_future_limit():
    from anomaly.config import PipelineConfig
    from anomaly.kafka.daemon import message_format

    cfg = PipelineConfig(kafka=KafkaConfig(max_future_seconds=60.0))
    assert message_format(cfg, ["a"]).max_future_seconds == 60.0
    assert (
        message_format(PipelineConfig(), ["a"]).max_future_seconds
        == KafkaConfig().max_future_seconds
        == 86_400.0
    )
    with pytest.raises(
        ConfigError, match=r"kafka.max_future_seconds must be a finite number of seconds >= 0 \(0: no limit\)"
    ):
        KafkaConfig(max_future_seconds=-1.0)


def test_an_empty_key_is_refused_like_a_missing_one_in_bulk_and_one_by_one():
    """An empty key ("key": "", or an empty message key and no key field) pooled every such sensor into one
    entity ""; it is a dead letter `missing_field`, as an empty key cell is refused in replay. Its neighbours
    in the same poll, in columns or blocks, are decoded as before."""
    d = Decoder(MessageFormat(FMT.features))
    one = {"ts": 1.7e9, "values": [1.0, 2.0, 3.0]}
    block = {"readings": [{"ts": 1.7e9 + i, "values": [1.0, 2.0, 3.0]} for i in range(3)]}
    for shape in (one, block):
        good = [
            Record("sensors", 0, i, b"k", json.dumps({"key": f"p{i}", **shape}).encode()) for i in range(40)
        ]
        empty_body = Record("sensors", 0, 40, b"k", json.dumps({"key": "", **shape}).encode())
        empty_message_key = Record("sensors", 0, 41, b"", json.dumps(shape).encode())
        records = good[:20] + [empty_body, empty_message_key] + good[20:]
        refused = assert_poll_decodes_as_record_by_record(d, records)
        assert refused == [
            (40, "missing_field", "'key' is empty"),
            (41, "missing_field", "no 'key' field and no message key (the message key is empty)"),
        ]
        readings, _ = d.decode_poll(records)
        assert sorted(e.key for e in readings.events()) == sorted(f"p{i}" for i in range(40))


def test_a_number_key_beyond_64_bits_is_refused_not_merged_with_its_neighbours():
    """orjson reads an integer key outside 64 bits (a SIM's 20-digit ICCID sent as a JSON number) as the nearest
    float64, the same for neighbouring integers: two sensors were scored as one entity named
    '8.901410321111851e+19'. Such a key is a dead letter `missing_field` naming the fix; integer keys within 64 bits
    and small number keys read as before."""
    d = Decoder(MessageFormat(FMT.features))
    one = {"ts": 1.7e9, "values": [1.0, 2.0, 3.0]}
    block = {"readings": [{"ts": 1.7e9 + i, "values": [1.0, 2.0, 3.0]} for i in range(3)]}
    for shape in (one, block):
        body = json.dumps(shape)[1:]
        raw = [
            b'{"key": 89014103211118510720, ' + body.encode(),
            b'{"key": 89014103211118510721, ' + body.encode(),
            b'{"key": 18446744073709551615, ' + body.encode(),  # the largest 64-bit integer: exact
            b'{"key": 7, ' + body.encode(),
            b'{"key": 1e16, ' + body.encode(),
        ]
        good = [
            Record("sensors", 0, i, b"k", json.dumps({"key": f"p{i}", **shape}).encode()) for i in range(40)
        ]
        odd = [Record("sensors", 0, 40 + i, None, r) for i, r in enumerate(raw)]
        refused = assert_poll_decodes_as_record_by_record(d, good[:20] + odd + good[20:])
        detail = "'key' is a number too large to keep exactly ({}: digits lost as a float64); send the key as a string"
        assert refused == [
            (40, "missing_field", detail.format("8.901410321111851e+19")),
            (41, "missing_field", detail.format("8.901410321111851e+19")),
            (44, "missing_field", detail.format("1e+16")),
        ]
        assert [d.decode(r).key for r in odd[2:4]] == ["18446744073709551615", "7"]


def test_a_key_longer_than_max_key_bytes_is_refused_as_oversized_in_bulk_and_one_by_one():
    """A 600 KB key was taken: its first alert (the key three times, 1.8 MB) was refused by the producer and
    the daemon exited, again at every restart (a poison message). Keys above max_key_bytes (UTF-8 bytes; the
    daemon's is kafka.max_request_bytes / 4) are dead letters `oversized`; their neighbours decode as before."""
    d = Decoder(MessageFormat(FMT.features, max_key_bytes=100))
    one = {"ts": 1.7e9, "values": [1.0, 2.0, 3.0]}
    block = {"readings": [{"ts": 1.7e9 + i, "values": [1.0, 2.0, 3.0]} for i in range(3)]}
    for shape in (one, block):
        good = [
            Record("sensors", 0, i, b"k", json.dumps({"key": f"p{i}", **shape}).encode()) for i in range(40)
        ]
        fits = [  # 100 bytes: ASCII, and 50 two-byte characters
            Record("sensors", 0, 40, b"k", json.dumps({"key": "x" * 100, **shape}).encode()),
            Record("sensors", 0, 41, b"k", json.dumps({"key": "é" * 50, **shape}).encode()),
            Record("sensors", 0, 42, "é".encode() * 50, json.dumps(shape).encode()),
        ]
        too_long = [
            Record("sensors", 0, 43, b"k", json.dumps({"key": "x" * 101, **shape}).encode()),
            Record("sensors", 0, 44, b"k", json.dumps({"key": "é" * 51, **shape}).encode()),
            Record("sensors", 0, 45, b"m" * 101, json.dumps(shape).encode()),
        ]
        records = good[:20] + fits + too_long + good[20:]
        refused = assert_poll_decodes_as_record_by_record(d, records)
        assert refused == [
            (43, "oversized", "key of 101 bytes > 100 (kafka.max_request_bytes / 4)"),
            (44, "oversized", "key of 102 bytes > 100 (kafka.max_request_bytes / 4)"),
            (45, "oversized", "key of 101 bytes > 100 (kafka.max_request_bytes / 4)"),
        ]
        readings, _ = d.decode_poll(records)
        assert sorted(e.key for e in readings.events()) == sorted(
            [f"p{i}" for i in range(40)] + ["x" * 100, "é" * 50, "é" * 50]
        )


def test_a_key_that_json_escaping_makes_longer_than_max_key_bytes_is_refused_as_oversized():
    """The limit was on the key's UTF-8 bytes, but an alert and a window carry the key as a JSON string, where a
    control character takes 6 bytes (\\u0001) and a quote 2: a 200,000-character key of \\x01 (200 KB, under
    the daemon's 256 KiB) made every window record of its key 1.4 MB and its alerts 2.6 MB, refused by the
    producer (max_request_bytes 1 MiB): the daemon exited, again at every restart (a poison message)."""
    d = Decoder(MessageFormat(FMT.features, max_key_bytes=100))
    shape = {"ts": 1.7e9, "values": [1.0, 2.0, 3.0]}
    good = [Record("sensors", 0, i, b"k", json.dumps({"key": f"p{i}", **shape}).encode()) for i in range(40)]
    odd = [
        Record("sensors", 0, 40, b"k", json.dumps({"key": '"' * 50, **shape}).encode()),  # 100 as JSON: fits
        Record("sensors", 0, 41, b"k", json.dumps({"key": '"' * 51, **shape}).encode()),
        Record("sensors", 0, 42, b"k", json.dumps({"key": "\x01" * 20, **shape}).encode()),
        Record("sensors", 0, 43, b"\x01" * 20, json.dumps(shape).encode()),  # the message key
    ]
    refused = assert_poll_decodes_as_record_by_record(d, good[:20] + odd + good[20:])
    assert refused == [
        (41, "oversized", "key of 51 bytes, 102 as a JSON string > 100 (kafka.max_request_bytes / 4)"),
        (42, "oversized", "key of 20 bytes, 120 as a JSON string > 100 (kafka.max_request_bytes / 4)"),
        (43, "oversized", "key of 20 bytes, 120 as a JSON string > 100 (kafka.max_request_bytes / 4)"),
    ]
    # the largest key taken keeps an alert (the key three times) within 3/4 of the producer's request limit
    limit = 4 * 262_144
    for char in ("x", '"', "\x01", "é"):
        n = len(char.encode())
        n = max(n, len(orjson.dumps(char)) - 2)
        key = Decoder(MessageFormat(FMT.features, max_key_bytes=limit // 4))._short(char * (limit // 4 // n))
        alert = Alert(f"{key}@1700000000000", key, "open", 1.7e9, None, 1.7e9, 2.5, 1.5, "v1")
        k, v = alert_message(alert)
        assert len(k) + len(v) <= limit * 3 // 4 + 300


def test_the_daemons_key_limit_is_a_quarter_of_the_producers_request_limit():
    from anomaly.kafka.daemon import message_format

    cfg = build_config({"kafka": {"max_request_bytes": 200_000}})
    assert message_format(cfg, ["a"]).max_key_bytes == 50_000
    assert message_format(build_config({}), ["a"]).max_key_bytes == 262_144


class _FailingProducer:
    """kafka-python's contract: send() returns a future whose errback gets a delivery failure later (the broker
    refused the record: message.max.bytes, an ACL, the delivery timeout), or raises at once (a record larger
    than max_request_size)."""

    def __init__(self, refuse_offsets: set[int], too_large_at: int | None = None) -> None:
        self.refuse, self.too_large_at, self.sent, self.errbacks = refuse_offsets, too_large_at, [], []

    def send(self, topic, key=None, value=None):
        import kafka.errors

        if len(self.sent) == self.too_large_at:
            raise kafka.errors.MessageSizeTooLargeError("The message is 2000000 bytes")
        self.sent.append(value)
        producer = self

        class Future:
            def add_errback(self, fn):
                producer.errbacks.append((len(producer.sent) - 1, fn))

        return Future()

    def flush(self, timeout=None):
        import kafka.errors

        for i, fn in self.errbacks:
            if i in self.refuse:
                fn(kafka.errors.MessageSizeTooLargeError("refused by the broker"))
        self.errbacks = []


def test_produce_raises_when_a_message_is_not_delivered_instead_of_counting_it_sent():
    """produce() never read the send futures: messages the broker refused were lost while `anomaly produce`
    printed them as sent; a send that raised (a block above max_request_size) was a traceback."""
    from anomaly.kafka import KafkaError
    from anomaly.kafka.produce import produce

    series = [Series("k", 1.7e9 + np.arange(10) * 60.0, np.ones((10, 3)))]
    fmt = MessageFormat(("a", "b", "c"))
    assert produce(_FailingProducer(set()), "t", messages(series, fmt)) == 10
    with pytest.raises(KafkaError, match=r"^2 of 10 messages to t were not delivered: \[Error 10\]"):
        produce(_FailingProducer({3, 7}), "t", messages(series, fmt))
    with pytest.raises(KafkaError, match=r"^1 of 10 messages to t was not delivered: \[Error 10\]"):
        produce(_FailingProducer({3}), "t", messages(series, fmt))  # said 'were'
    producer = _FailingProducer(set(), too_large_at=4)
    with pytest.raises(
        KafkaError, match=r"^message 5 \(\d+ bytes\) could not be sent to t, 4 were: .*--block"
    ):
        produce(producer, "t", messages(series, fmt))
    assert len(producer.sent) == 4


def test_iso_times_with_milliseconds_decode_as_the_csv_path_reads_them() -> None:
    """The daemon reads `...:20.300Z` with Python's datetime (the float64 nearest the time); a replay of the same
    times from a CSV divided float64 nanoseconds and was one bit off for one time in four, so a backtest did not
    see the daemon's timestamps."""
    import pandas as pd

    from anomaly.data import to_epoch_seconds

    stamps = [f"2023-11-14T22:13:{20 + i // 1000:02d}.{i % 1000:03d}Z" for i in range(0, 4000, 7)]
    assert to_epoch_seconds(pd.Series(stamps)).tolist() == [parse_time(t) for t in stamps]


def test_iso_times_with_nanoseconds_decode_as_the_csv_path_reads_them() -> None:
    """Go producers write RFC3339Nano (`...:20.123456789Z`): Python's datetime dropped the digits past the
    microsecond (`.123456`, where a replay of the same text reads `.1234567`; `.9999999` stayed in the second
    before), so the daemon's timestamps were not the replay's, and two readings within one microsecond became
    duplicates."""
    import pandas as pd

    from anomaly.data import to_epoch_seconds

    stamps = [
        "2023-11-14T22:13:20.123456789Z",
        "2023-11-14T22:13:20.1234567Z",
        "2023-11-14T22:13:20.9999999Z",
        "2023-11-14T22:13:20.000000001Z",
        "2023-11-14T22:13:20.1234567891Z",
        "2023-11-14T23:13:20.123456789+01:00",
        "2023-11-14T22:13:20.123456789",
        "1969-12-31T23:59:59.123456789Z",
        "2023-11-14T22:13:20.123456Z",
        "2023-11-14T22:13:20,123456789Z",
    ]
    assert [parse_time(t) for t in stamps] == [float(to_epoch_seconds(pd.Series([t]))[0]) for t in stamps]
    assert parse_time(stamps[0]) == 1700000000.1234567
    assert parse_time("2023-11-14T22:13:20.0000001Z") != parse_time("2023-11-14T22:13:20.0000009Z")


@pytest.mark.parametrize("block", [False, True])
def test_a_poll_keyed_by_the_message_key_alone_is_decoded_in_bulk(monkeypatch, block) -> None:
    """Producers that key by the Kafka message key and leave the key field out (the usual plant producer) were
    decoded one record at a time (8x slower: 9 µs a record against 1.1): the bulk path took only string key
    fields. The keys, readings and refusals equal :meth:`Decoder.decode`'s."""
    dec = Decoder(MessageFormat(("a", "b", "c")))

    def body(i: int, key: bool) -> bytes:
        reading = {"ts": 1_700_000_000 + i, "values": [1.5, 2.5, float(i)]}
        out = {"readings": [reading, {**reading, "ts": reading["ts"] + 0.5}]} if block else reading
        return orjson.dumps({"key": f"named-{i % 3}", **out} if key else out)

    plain = [Record("t", 0, i, f"pump-{i % 5}".encode(), body(i, i % 4 == 0)) for i in range(64)]
    calls = []
    original = Decoder._from_body
    monkeypatch.setattr(Decoder, "_from_body", lambda self, b, r: calls.append(r) or original(self, b, r))
    readings, errors = dec.decode_poll(plain)
    assert calls == [] and errors == []
    events = [dec.decode(r) for r in plain]
    assert readings.timestamps.tolist() == np.concatenate([e.timestamps for e in events]).tolist()
    assert readings.values.tolist() == np.concatenate([e.values for e in events]).tolist()
    keys = [readings.names[i] for i in readings.kid]
    assert keys == [e.key for e in events]

    odd = [*plain[:40], Record("t", 0, 90, None, body(90, False)), Record("t", 0, 91, b"", body(91, False))]
    odd += [Record("t", 0, 92, b"\xff", body(92, False)), *plain[40:]]
    readings, errors = dec.decode_poll(odd)
    assert [(r.offset, e.reason) for r, e in errors] == [
        (90, "missing_field"),
        (91, "missing_field"),
        (92, "missing_field"),
    ]
    assert [readings.names[i] for i in readings.kid] == keys


@pytest.mark.parametrize("where", ["ts", "values", "block_ts", "block_values"])
def test_one_long_string_does_not_make_the_poll_ask_for_gigabytes(where) -> None:
    """`np.array` of a poll's timestamps or values holding one string made a text array as wide as that string
    for every element: one message with a 400 KB string among 200 took 320 MB (ts) or 960 MB (values), and in a
    poll of 2,000 with a 1 MB string, gigabytes: a MemoryError or the OOM killer, again at every restart. A
    block of 500 readings with one such string alike."""
    import tracemalloc

    dec = Decoder(MessageFormat(("a", "b", "c")))
    long = "9" * 400_000
    reading = {"ts": 1_700_000_000, "values": [1.0, 2.0, 3.0]}
    odd = {"ts": {**reading, "ts": long}, "values": {**reading, "values": [1.0, long, 3.0]}}[
        where.split("_")[-1]
    ]
    if where.startswith("block"):
        rows = [{**reading, "ts": 1_700_000_000 + i} for i in range(500)]
        records = [Record("t", 0, 0, b"k", orjson.dumps({"key": "k", "readings": [*rows, odd]}))]
    else:
        good = [orjson.dumps({"key": "k", **reading, "ts": 1_700_000_000 + i}) for i in range(199)]
        records = [
            Record("t", 0, i, b"k", v) for i, v in enumerate([*good, orjson.dumps({"key": "k", **odd})])
        ]
    tracemalloc.start()
    try:
        readings, errors = dec.decode_poll(records)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [e.reason for _, e in errors] == ["bad_timestamp" if where.endswith("ts") else "bad_values"]
    assert len(readings.timestamps) == (0 if where.startswith("block") else 199)
    assert peak < 40e6, f"{peak / 1e6:.0f} MB"


def test_a_poll_of_iso_times_is_decoded_in_bulk_as_decode_reads_them(monkeypatch) -> None:
    """ISO-8601 times (and numbers sent as text) sent every record through the one-by-one path, about 11 µs a
    record against 1: the bulk path now reads them with :func:`parse_time`, to the same float64."""
    dec = Decoder(MessageFormat(("a", "b", "c")))
    stamps = [f"2023-11-14T22:{13 + i // 60:02d}:{i % 60:02d}.{i:03d}+01:00" for i in range(40)]
    stamps += ["1700000000.25", 1700000001, "1700000002000", "2023-11-14T22:13:20.123456789Z"]
    records = [
        Record("t", 0, i, b"k", orjson.dumps({"ts": t, "values": [1.0, 2.0, float(i)]}))
        for i, t in enumerate(stamps)
    ]
    calls = []
    original = Decoder._from_body
    monkeypatch.setattr(Decoder, "_from_body", lambda self, b, r: calls.append(r) or original(self, b, r))
    readings, errors = dec.decode_poll(records)
    assert calls == [] and errors == []
    assert readings.timestamps.tolist() == [parse_time(t) for t in stamps]


@pytest.mark.parametrize(
    ("kafka", "message"),
    [
        ({"values_field": "readings"}, "kafka.readings_field and kafka.values_field are both 'readings'"),
        ({"time_field": "key"}, "kafka.time_field and kafka.key_field are both 'key'"),
        ({"key_field": ""}, "kafka.key_field must not be empty"),
    ],
)
def test_message_field_settings_that_collide_are_refused(kafka, message) -> None:
    """A plant whose producers name the values list `readings` set kafka.values_field = "readings": the decoder
    then took every message for a block (the readings field's default name) and refused it as `bad_values`
    ("reading 0 of the block is not an object"), and `produce` wrote messages its own daemon refused."""
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        build_config({"kafka": kafka})
    build_config({"kafka": {"values_field": "readings", "readings_field": "block"}})


@pytest.mark.parametrize("features", [("a", "b", "c"), ("only",)])
def test_a_poll_of_values_by_feature_name_is_decoded_in_bulk_as_decode_reads_it(
    monkeypatch, features
) -> None:
    """Values as an object `{feature: value}` (README's second form) went record by record, about 8 µs a record
    against 1.2; now in bulk, in the model's order whatever the object's, and an object with a feature missing,
    extra or misspelt is still refused as `feature_count`, as :meth:`Decoder.decode` refuses it."""
    dec = Decoder(MessageFormat(features))

    def named(i: int) -> dict[str, float]:
        return dict(reversed([(f, float(i * 10 + j)) for j, f in enumerate(features)]))

    records = [
        Record("t", 0, i, b"k", orjson.dumps({"ts": 1_700_000_000 + i, "values": named(i)}))
        for i in range(40)
    ]
    calls = []
    original = Decoder._from_body
    monkeypatch.setattr(Decoder, "_from_body", lambda self, b, r: calls.append(r) or original(self, b, r))
    readings, errors = dec.decode_poll(records)
    assert calls == [] and errors == []
    assert readings.values.tolist() == [[float(i * 10 + j) for j in range(len(features))] for i in range(40)]

    wrong = [{**named(0), "extra": 1.0}, {"A": 1.0, **{f: 1.0 for f in features[1:]}}, {}]
    odd = [
        *records[:20],
        *(Record("t", 0, 50 + j, b"k", orjson.dumps({"ts": 1, "values": w})) for j, w in enumerate(wrong)),
    ]
    odd += records[20:]
    readings, errors = dec.decode_poll(odd)
    assert [(r.offset, e.reason) for r, e in errors] == [
        (50, "feature_count"),
        (51, "feature_count"),
        (52, "feature_count"),
    ]
    assert len(readings.timestamps) == 40


BLOCK_MISREAD = [
    # a reading beside the block: it was dropped without a word
    (
        {
            "key": "a",
            "ts": 1_700_000_000,
            "values": [1, 2, 3],
            "readings": [{"ts": 1_700_000_001, "values": [1, 2, 3]}],
        },
        "a message is one reading ('ts', 'values') or a block ('readings'), not both",
    ),
    # several sensors batched in one block: all were scored as the message's key
    (
        {
            "key": "a",
            "readings": [
                {"key": "a", "ts": 1_700_000_000, "values": [1, 2, 3]},
                {"key": "b", "ts": 1_700_000_000, "values": [4, 5, 6]},
            ],
        },
        "reading 1 of the block names 'key' 'b', the message's is 'a': a block holds one key's readings",
    ),
    (
        {"readings": [{"key": "b", "ts": 1_700_000_000, "values": [4, 5, 6]}]},  # the message key is "a"
        "reading 0 of the block names 'key' 'b', the message's is 'a': a block holds one key's readings",
    ),
]


@pytest.mark.parametrize(("body", "detail"), BLOCK_MISREAD)
def test_a_block_that_would_be_misread_is_refused_on_both_paths(body, detail) -> None:
    dec = Decoder(MessageFormat(("a", "b", "c")))
    bad = Record("t", 0, 99, b"a", orjson.dumps(body))
    with pytest.raises(DecodeError) as err:
        dec.decode(bad)
    assert (err.value.reason, err.value.detail) == ("bad_values", detail)
    good = [
        Record(
            "t",
            0,
            i,
            b"a",
            orjson.dumps({"readings": [{"key": "a", "ts": 1_700_000_000 + i, "values": [1, 2, 3]}]}),
        )
        for i in range(40)
    ]
    readings, errors = dec.decode_poll([*good[:20], bad, *good[20:]])
    assert [(r.offset, e.reason, e.detail) for r, e in errors] == [(99, "bad_values", detail)]
    assert len(readings.timestamps) == 40  # a reading repeating the message's key is taken


def test_rfc3339_lower_case_t_and_z_read_as_the_csv_path_reads_them(tmp_path):
    """RFC 3339 allows a lower-case `t` and `z`; the CSV path (replay, train) reads them, the daemon refused every
    such reading as `bad_timestamp`. Both now give the same float64, in bulk and one by one."""
    texts = [f"2023-11-14t22:{13 + i // 60:02d}:{i % 60:02d}.123456789z" for i in range(40)]
    (tmp_path / "t.csv").write_text(
        "ts,key,temp,pressure,flow\n" + "".join(f"{t},pump-1,1,2,3\n" for t in texts)
    )
    (series,), _ = load_series([tmp_path / "t.csv"], DataConfig(time_column="ts", key_column="key"))
    records = [rec({"key": "pump-1", "ts": t, "values": [1, 2, 3]}) for t in texts]
    d = Decoder(MessageFormat(FMT.features))
    assert assert_poll_decodes_as_record_by_record(d, records) == []
    readings, _ = d.decode_poll(records)
    assert readings.timestamps.tobytes() == series.timestamps.tobytes()
    assert parse_time("2023-11-14t22:13:20z") == parse_time("2023-11-14T22:13:20Z") == 1700000000.0
    with pytest.raises(DecodeError, match="cannot parse timestamp 'tz'"):
        parse_time("tz")

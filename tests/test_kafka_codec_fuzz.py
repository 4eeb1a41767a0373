"""Every message the decoder can be handed has a defined outcome: a seeded fuzz of both decode paths.

Messages of every supported form (one reading with values as a list or by name, blocks of 1 to 300 readings;
timestamps as seconds, ms, us, ns, numeric strings and ISO-8601) are generated valid, with edge values, and
then corrupted one way each (truncated, invalid UTF-8, wrong types in every field, missing and extra fields,
wrong counts, duplicate keys, deep nesting, oversized, stamped in the future). Each case carries what an
independent oracle expects: the readings exactly (float64 of the JSON text, timestamps by the magnitude rule)
or one dead-letter reason. Both :meth:`Decoder.decode` (record by record) and :meth:`Decoder.decode_poll`
(columns, over polls that mix the cases in runs long enough for the bulk paths) must give exactly that: no
other exception, nothing good lost beside a bad neighbour, every message accounted for.

No hypothesis (not a dependency): a seeded ``random.Random``, so a failure names the seed and case that
reproduce it. CI runs seeds 0 and 1; ``ANOMALY_FUZZ_SEEDS=0,1,...,13`` runs more (all of 0-13 pass).
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest

from anomaly.kafka.codec import (
    DECODE_REASONS,
    DecodeError,
    Decoder,
    MessageFormat,
    dead_letter,
    source_rejection,
)
from tests.helpers import Record

NOW = 1.7e9
AHEAD = 86_400.0
UNIT_BOUNDS = ((1e17, 1e9), (1e14, 1e6), (1e11, 1e3))  # (smallest value, units per second) of ns, us, ms

# (format, cases per seed): a plain one, and one with renamed fields, 37 unicode features and no future limit
FORMATS = {
    "plain": MessageFormat(("temp", "pressure", "flow"), max_message_bytes=65_536, max_future_seconds=AHEAD),
    "wide": MessageFormat(
        tuple(f"f{i}-température-流量" if i % 3 else f"ä{i}" for i in range(37)),
        key_field="id",
        time_field="t",
        values_field="v",
        readings_field="rows",
        max_message_bytes=65_536,
        max_future_seconds=0.0,
    ),
}
SEEDS = tuple(int(s) for s in os.environ.get("ANOMALY_FUZZ_SEEDS", "0,1").split(","))
CASES = {"plain": 1500, "wide": 500}  # per seed: 4,000 messages with the 2 seeds


class Raw(str):
    """JSON text written as is (a number's exact decimal text, or something invalid on purpose)."""


class Pairs(list):
    """A JSON object written from (name, value) pairs in order: a name may repeat (the last one counts)."""


def dump(x: Any, ascii_only: bool = True) -> str:
    if isinstance(x, Raw):
        return str(x)
    if isinstance(x, Pairs | dict):
        items = x if isinstance(x, Pairs) else x.items()
        return (
            "{"
            + ",".join(f"{json.dumps(k, ensure_ascii=ascii_only)}:{dump(v, ascii_only)}" for k, v in items)
            + "}"
        )
    if isinstance(x, list):
        return "[" + ",".join(dump(v, ascii_only) for v in x) + "]"
    return json.dumps(x, ensure_ascii=ascii_only)


@dataclass
class Case:
    """A record and its one defined outcome: the readings (key, float64 seconds, float64 values) or a reason."""

    record: Record
    what: str  # how it was made, for failure messages
    reason: str | None = None
    key: str = ""
    timestamps: np.ndarray | None = None
    values: np.ndarray | None = None
    common: bool = False  # made in the form the bulk paths take (before any corruption)
    block: bool = False


def seconds_of(number: float) -> float:
    """Epoch seconds of a numeric timestamp by the documented magnitude rule (README "Message formats")."""
    s = float(number)
    for bound, per_second in UNIT_BOUNDS:
        if abs(s) >= bound:
            if (
                per_second == 1e9
            ):  # nanoseconds: a float64 of a whole count of microseconds is read as that count
                us = round(s / 1000)
                if float(us * 1000) == s and abs(us) < 2**53:
                    return us / 10**6  # (exact integers: Python's true division is correctly rounded)
            return float(np.float64(s) / per_second)
    return s


class Generator:
    """Valid messages of one format and their corruptions, from one seed."""

    def __init__(self, fmt: MessageFormat, seed: int) -> None:
        self.fmt = fmt
        self.rng = random.Random(seed)
        self.offset = 0
        self.latest = NOW + fmt.max_future_seconds if fmt.max_future_seconds > 0 else math.inf
        self.block = False  # the last message made was a block
        self.common = False  # the form the bulk paths take: a string key, number times, lists of numbers

    # --- leaves ----------------------------------------------------------------------------------------------

    def value(self) -> tuple[Any, float]:
        r = self.rng
        pick = r.randrange(1 if self.common else 0, 12)
        if pick == 0:
            return None, math.nan
        if pick == 1:
            i = r.choice(
                [0, 1, -1, 7, 2**53 + 1, -(2**63), 2**63 - 1, 2**64 - 1, r.randrange(-(10**12), 10**12)]
            )
            return i, float(i)
        if pick == 2:
            text = r.choice(
                [
                    "1e-300", "5e-324", "-5e-324", "1.7976931348623157e308", "-1.7976931348623157e308", "-0.0",
                    "0.1", "1E5", "1e-400", "123456789012345678901234567890", "-98765432109876543210987654321",
                    "9007199254740993", "2.5e15", "1234567.8901234567", "0.30000000000000004",
                ]
            )  # fmt: skip
            return Raw(text), float(text)
        if pick == 3:
            text = f"{r.gauss(0, 1e6):.{r.randrange(0, 14)}f}"
            return Raw(text), float(text)
        x = r.gauss(0, 1) * 10.0 ** r.randrange(-30, 30)
        return x, x

    def number_time(self) -> float | int:
        r = self.rng
        pick = r.randrange(10)
        sec = NOW - r.uniform(0, 1e7)
        if pick == 0:
            return r.choice(
                [0, 0.0, -1, -1.5, -1e10, 1, 99_999_999_999, -99_999_999_999.5, -1e12, -2e15, -3e18]
            )
        if pick == 1:
            return int(sec)
        if pick == 2:
            return int(sec * 1000)  # Date.now()
        if pick == 3:
            return int(sec * 1_000_000)
        if pick == 4:
            return int(sec * 1_000_000_000)  # int64 nanoseconds, beyond 2**53
        if pick == 5:
            return sec * 1e9
        if pick == 6:  # ahead of the clock: taken up to the limit, refused past it (in any unit)
            ahead = r.choice([0.0, 1.0, AHEAD, AHEAD + 1e-3, AHEAD + 1, 1e7, 1e9, 9e10])
            return (NOW + ahead) * r.choice([1, 1000, 1_000_000])
        if pick == 7:
            return r.choice([2**63 - 1, 2**64 - 1, 1e30, 1.7976931348623157e308, -1.7976931348623157e308])
        return sec

    def time(self) -> tuple[Any, float]:
        """A valid timestamp's JSON value and its epoch seconds (which may be past the future limit)."""
        r = self.rng
        pick = r.randrange(2 if self.common else 0, 8)
        if pick == 0:
            return self.iso()
        if pick == 1:  # a number in a string: read as the number (parse_time)
            n = self.number_time()
            text = r.choice([str(n), f" {n} ", repr(float(n))])
            return text, seconds_of(float(text))
        n = self.number_time()
        return n, seconds_of(n)

    def iso(self) -> tuple[str, float]:
        r = self.rng
        sec = r.choice(
            [int(NOW) - r.randrange(10**7), r.randrange(-62_135_596_800 + 2 * 86_400, 253_402_000_000)]
        )
        micro = r.choice([0, r.randrange(10**6)])
        utc = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=sec, microseconds=micro)
        style = r.randrange(4)
        if style == 0:
            text = utc.replace(tzinfo=None).isoformat()  # naive means UTC
        elif style == 1:
            text = utc.isoformat().replace("+00:00", "Z")
        else:
            tz = timezone(timedelta(minutes=r.randrange(-14 * 60 + 1, 14 * 60)))
            text = utc.astimezone(tz).isoformat(sep=r.choice("T "))
        return text, (sec * 10**6 + micro) / 10**6

    def key(self) -> Any:
        """A body key: a string, or a number (taken as its text; a float of 2**53 or more is refused, see
        test_kafka_codec's test_a_number_key_beyond_64_bits_is_refused_not_merged_with_its_neighbours)."""
        if self.rng.randrange(8) == 0 and not self.common:
            return self.rng.choice([7, -3, 2**64 - 1, 1.5, 1e15])
        return self.rng.choice(
            ["pump-1", "pump-2", "泵-7", "ключ", "a" * 300, "k\u0000ey", "🙂", "true", "false"]
        )

    def values(self) -> tuple[Any, np.ndarray]:
        pairs = [self.value() for _ in self.fmt.features]
        want = np.array([v for _, v in pairs], np.float64)
        if self.rng.random() < 0.3 and not self.common:  # by name, in any order
            named = list(zip(self.fmt.features, [j for j, _ in pairs], strict=True))
            self.rng.shuffle(named)
            return Pairs(named), want
        return [j for j, _ in pairs], want

    # --- messages --------------------------------------------------------------------------------------------

    def record(self, body: Any, kafka_key: bytes | None, text: bytes | None = None) -> Record:
        self.offset += 1
        raw = text if text is not None else dump(body, self.rng.random() < 0.5).encode()
        return Record("sensors", self.offset % 4, self.offset, kafka_key, raw)

    def valid(self) -> tuple[Pairs, bytes | None, str, list[float], list[np.ndarray], bool]:
        """(body, Kafka key, expected key, stamps, rows, is_block) of a well-formed message."""
        r, f = self.rng, self.fmt
        body = Pairs()
        kafka_key = r.choice([b"pump-1", "泵-9".encode(), None, b"", b"\xff\xfe"])
        if r.random() < 0.8 or self.common or kafka_key in (None, b"", b"\xff\xfe"):
            k = self.key()
            body.append((f.key_field, k))
            want_key = k if isinstance(k, str) else str(k)
        else:
            want_key = kafka_key.decode()
        block = r.random() < 0.4
        stamps, rows = [], []
        if block:
            n = r.choice([1, 1, 2, 3, 5, 8, 32, r.randrange(1, 3000 // len(f.features))])
            readings = []
            for _ in range(n):
                t, want_t = self.time() if r.random() < 0.3 or self.common else self.plain_time()
                v, want_v = self.values()
                readings.append(Pairs([(f.time_field, t), (f.values_field, v)]))
                stamps.append(want_t)
                rows.append(want_v)
            body.append((f.readings_field, readings))
        else:
            t, want_t = self.time()
            v, want_v = self.values()
            body += [(f.time_field, t), (f.values_field, v)]
            stamps.append(want_t)
            rows.append(want_v)
        if r.random() < 0.2:  # extra fields are ignored
            body.append(
                (r.choice(["pad", "meta", "unit", "ts2"]), r.choice([1, "x", None, {"a": [1, {"b": True}]}]))
            )
        r.shuffle(body)
        return body, kafka_key, want_key, stamps, rows, block

    def plain_time(self) -> tuple[float, float]:
        t = NOW - self.rng.uniform(0, 1e7)
        return t, t

    def good(self) -> Case:
        body, kafka_key, want_key, stamps, rows, block = self.valid()
        rec = self.record(body, kafka_key)
        self.block = block
        if max(stamps) > self.latest:
            return Case(rec, "valid but ahead of the clock", "future_timestamp")
        return Case(rec, "valid", None, want_key, np.array(stamps, np.float64), np.stack(rows))

    def bad(self) -> Case:
        """A valid message with one corruption, and the reason it must be refused with (None: a corruption
        that leaves it valid, such as an extra field, so it must decode to the readings of the original)."""
        body, kafka_key, want_key, stamps, rows, block = self.valid()
        while max(stamps) > self.latest:  # one defect at a time: a future stamp is its own case
            body, kafka_key, want_key, stamps, rows, block = self.valid()
        self.block = block
        name, corrupt = self.rng.choice(CORRUPTIONS)
        out = corrupt(self, body, kafka_key, block)
        if out is None:  # does not apply to this form
            return self.good()
        rec, reason = out
        if reason is None:
            return Case(rec, name, None, want_key, np.array(stamps, np.float64), np.stack(rows))
        return Case(rec, name, reason)


# --- corruptions: each returns (record, reason) or None where it does not apply --------------------------------

Corruption = Callable[[Generator, Pairs, "bytes | None", bool], "tuple[Record, str | None] | None"]


def _field(body: Pairs, name: str) -> int | None:
    return next((i for i, (k, _) in enumerate(body) if k == name), None)


def _reading(g: Generator, body: Pairs, block: bool) -> Pairs:
    """The part holding ts and values: the body, or one reading of the block."""
    if not block:
        return body
    readings = body[_field(body, g.fmt.readings_field)][1]
    return g.rng.choice(readings)


def truncated(g, body, kafka_key, block):
    text = dump(body).encode()
    return g.record(None, kafka_key, text[: g.rng.randrange(len(text))]), "invalid_json"


def invalid_utf8(g, body, kafka_key, block):
    text = dump(body).encode()
    at = text.index(b'"') + 1  # inside the first field name
    bad = g.rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf", b"\x80"])
    return g.record(None, kafka_key, text[:at] + bad + text[at:]), "invalid_json"


def not_json(g, body, kafka_key, block):
    text = g.rng.choice(
        [b"", b" ", b"{", b"{nope}", b"NaN", b'{"ts": NaN}', b"\x00", b'{"a":1}{"a":2}', b"[1,2,]"]
    )
    return g.record(None, kafka_key, text), "invalid_json"


def not_an_object(g, body, kafka_key, block):
    text = g.rng.choice([b"[1, 2, 3]", b"1.5", b'"text"', b"null", b"true", b"[]", dump([body]).encode()])
    return g.record(None, kafka_key, text), "invalid_json"


def tombstone(g, body, kafka_key, block):
    return g.record(None, kafka_key or b"k", b""), "invalid_json"


def tombstone_none(g, body, kafka_key, block):
    g.offset += 1
    return Record("sensors", 0, g.offset, kafka_key, None), "invalid_json"


def deeply_nested(g, body, kafka_key, block):
    depth = g.rng.choice([2000, 10_000])
    body.append(("deep", Raw("[" * depth + "]" * depth)))
    return g.record(body, kafka_key), "invalid_json"


def nested_extra(g, body, kafka_key, block):  # within orjson's depth limit: an ignored extra field
    body.append(("deep", Raw("[" * 200 + "]" * 200)))
    return g.record(body, kafka_key), None


def oversized(g, body, kafka_key, block):
    body.append(("pad", "x" * (g.fmt.max_message_bytes + g.rng.choice([1, 10, 100_000]))))
    return g.record(body, kafka_key), "oversized"


def no_key(g, body, kafka_key, block):
    i = _field(body, g.fmt.key_field)
    if i is None:
        return None
    if g.rng.random() < 0.5:
        del body[i]
    else:
        body[i] = (g.fmt.key_field, None)
    return g.record(body, g.rng.choice([None, b"", b"\xff\xfe", b"\xed\xa0\x80"])), "missing_field"


def bad_key(g, body, kafka_key, block):
    i = _field(body, g.fmt.key_field)
    if i is None:
        return None
    body[i] = (g.fmt.key_field, g.rng.choice([True, False, [], ["pump-1"], {"id": 1}, {}, ""]))
    return g.record(body, kafka_key), "missing_field"


def _without(g, body, kafka_key, block, name):
    """The reading's field `name` removed or set to null: missing_field."""
    part = _reading(g, body, block)
    i = _field(part, name)
    if g.rng.random() < 0.5:
        del part[i]
    else:
        part[i] = (name, None)
    return g.record(body, kafka_key), "missing_field"


def no_time(g, body, kafka_key, block):
    return _without(g, body, kafka_key, block, g.fmt.time_field)


def bad_time(g, body, kafka_key, block):
    part = _reading(g, body, block)
    bad = g.rng.choice(
        [True, False, [1.7e9], {"s": 1}, "", "soon", "nan", "inf", "-Infinity", "1e400", "2023-13-01", "0x10",
         "2023-11-14T25:00:00", "1.7e9.5", "\u0000", "1,700,000,000"]
    )  # fmt: skip
    part[_field(part, g.fmt.time_field)] = (g.fmt.time_field, bad)
    return g.record(body, kafka_key), "bad_timestamp"


def infinite_number(g, body, kafka_key, block):  # JSON has no infinity: orjson refuses the whole text
    part = _reading(g, body, block)
    name = g.rng.choice([g.fmt.time_field, g.fmt.values_field])
    i = _field(part, name)
    if name == g.fmt.time_field:
        part[i] = (name, Raw(g.rng.choice(["1e400", "-1e999", "Infinity", "NaN"])))
    else:
        v = part[i][1]
        if not isinstance(v, list):
            return None
        part[i] = (name, [Raw("1e400"), *v[1:]])
    return g.record(body, kafka_key), "invalid_json"


def future(g, body, kafka_key, block):
    if g.latest == math.inf:
        return None
    part = _reading(g, body, block)
    ahead = g.rng.choice([AHEAD + 0.01, 1e6, 1e9])
    t = g.rng.choice(
        [NOW + ahead, int((NOW + ahead) * 1000), (NOW + ahead) * 1e9, "9999-12-31T00:00:00", str(NOW + ahead)]
    )
    part[_field(part, g.fmt.time_field)] = (g.fmt.time_field, t)
    return g.record(body, kafka_key), "future_timestamp"


def no_values(g, body, kafka_key, block):
    return _without(g, body, kafka_key, block, g.fmt.values_field)


def values_not_a_list(g, body, kafka_key, block):
    part = _reading(g, body, block)
    bad = g.rng.choice([5, 1.5, "1,2,3", True, False, "", 0])
    part[_field(part, g.fmt.values_field)] = (g.fmt.values_field, bad)
    return g.record(body, kafka_key), "bad_values"


def wrong_count(g, body, kafka_key, block):
    part = _reading(g, body, block)
    f = g.fmt.features
    n = g.rng.choice([0, 1, len(f) - 1, len(f) + 1, 3 * len(f)])
    if n == len(f):
        n += 1
    part[_field(part, g.fmt.values_field)] = (g.fmt.values_field, [1.0] * n)
    return g.record(body, kafka_key), "feature_count"


def wrong_names(g, body, kafka_key, block):
    part = _reading(g, body, block)
    f = list(g.fmt.features)
    pick = g.rng.randrange(4)
    if pick == 0:
        named = {name: 1.0 for name in f[:-1]}  # one missing
    elif pick == 1:
        named = {**{name: 1.0 for name in f}, "extra": 2.0}
    elif pick == 2:
        named = {**{name: 1.0 for name in f[1:]}, f[0].upper() + "?": 1.0}  # one misspelt
    else:
        named = {}
    part[_field(part, g.fmt.values_field)] = (g.fmt.values_field, named)
    return g.record(body, kafka_key), "feature_count"


def bad_value(g, body, kafka_key, block):
    part = _reading(g, body, block)
    i = _field(part, g.fmt.values_field)
    v = part[i][1]
    bad = g.rng.choice(["1.5", "x", "", "NaN", True, False, [1.0], [], {"v": 1}, {}])
    if isinstance(v, Pairs):
        j = g.rng.randrange(len(v))
        v[j] = (v[j][0], bad)
    else:
        v[g.rng.randrange(len(v))] = bad
    return g.record(body, kafka_key), "bad_values"


def bad_block(g, body, kafka_key, block):
    if not block:
        return None
    i = _field(body, g.fmt.readings_field)
    readings = body[i][1]
    pick = g.rng.randrange(4)
    if pick == 0:
        body[i] = (g.fmt.readings_field, g.rng.choice([[], {}, 5, "rows", True, False, readings[0]]))
    elif pick == 1:
        readings.insert(
            g.rng.randrange(len(readings) + 1), g.rng.choice([7, "r", None, [1.7e9, [1, 2, 3]], True])
        )
    elif pick == 2:  # nested one level too deep
        body[i] = (g.fmt.readings_field, [readings])
    else:
        return None
    return g.record(body, kafka_key), "bad_values"


def duplicate_fields(g, body, kafka_key, block):
    """A name given twice: the last one counts (orjson, like json.loads), in both paths."""
    part = _reading(g, body, block)
    name = g.rng.choice([g.fmt.time_field, g.fmt.values_field])
    i = _field(part, name)
    first = (name, g.rng.choice(["soon", None, [1], "1.5", True]))
    part.insert(i, first)  # a bad one before the good one: the message stays valid
    return g.record(body, kafka_key), None


CORRUPTIONS: list[tuple[str, Corruption]] = [
    (fn.__name__, fn)
    for fn in (
        truncated, invalid_utf8, not_json, not_an_object, tombstone, tombstone_none, deeply_nested, nested_extra,
        oversized, no_key, bad_key, no_time, bad_time, infinite_number, future, no_values, values_not_a_list,
        wrong_count, wrong_names, bad_value, bad_block, duplicate_fields,
    )
]  # fmt: skip


def cases(fmt: MessageFormat, seed: int, n: int) -> list[Case]:
    g = Generator(fmt, seed)
    out = []
    for _ in range(n):
        g.common = g.rng.random() < 0.6
        case = g.good() if g.rng.random() < 0.7 else g.bad()
        case.common, case.block = g.common, g.block
        out.append(case)
    for case in out:  # the size is checked first: a large block (or any defect) past it is refused as that
        raw = case.record.value
        if raw is not None and len(raw) > fmt.max_message_bytes:
            case.reason = "oversized"
    return out


# --- properties ------------------------------------------------------------------------------------------------


def check_one(d: Decoder, case: Case) -> tuple[str, Any]:
    """decode() of one record: the expected readings or DecodeError with the expected reason, nothing else."""
    try:
        event = d.decode(case.record)
    except DecodeError as err:
        assert err.reason in DECODE_REASONS, (case.what, err.reason)
        assert case.reason == err.reason, (case.what, case.record, err.reason, err.detail)
        _, value, headers = dead_letter(source_rejection(case.record, err))
        assert (dict(headers)["reason"], value) == (err.reason.encode(), case.record.value)
        return "refused", (err.reason, err.detail)
    assert case.reason is None, (case.what, case.record, "decoded; expected", case.reason)
    assert event.key == case.key, (case.what, case.record)
    assert event.timestamps.dtype == np.float64 and event.values.dtype == np.float64
    assert event.timestamps.tobytes() == case.timestamps.tobytes(), (case.what, case.record, event.timestamps)
    assert event.values.tobytes() == case.values.tobytes(), (case.what, case.record, event.values)
    assert event.ref is case.record
    return "event", event


def polls(rng: random.Random, items: list[Case]) -> list[list[Case]]:
    """The cases cut into polls of every size, some sorted so that long runs of one kind reach the bulk paths."""
    out, i = [], 0
    while i < len(items):
        n = rng.choice([1, 2, 31, 33, 100, 400, 800])
        poll = items[i : i + n]
        if (
            rng.random() < 0.7
        ):  # runs of one form (bulk: common singles, common blocks), a few bad ones among them
            poll = sorted(poll, key=lambda c: (c.reason is not None, not c.common, c.block))
            good = sum(c.reason is None for c in poll)
            for _ in range(min(len(poll) - good, rng.randrange(4))):
                poll.insert(rng.randrange(good + 1), poll.pop(rng.randrange(good, len(poll))))
        out.append(poll)
        i += n
    return out


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(FORMATS))
def test_every_message_decodes_exactly_or_is_refused_with_its_reason_on_both_paths(name, seed):
    fmt = FORMATS[name]
    items = cases(fmt, seed, CASES[name])
    d = Decoder(fmt, clock=lambda: NOW)
    reference = {id(c.record): check_one(d, c) for c in items}
    assert {c.reason for c in items} >= (
        {None, *DECODE_REASONS} - ({"future_timestamp"} if name == "wide" else set())
    )
    for poll in polls(random.Random(seed), items):
        records = [c.record for c in poll]
        readings, errors = d.decode_poll(records)
        events = readings.events() if len(readings) else []  # events() of no messages: one empty event
        assert len(events) + len(errors) == len(records)
        want_events = [reference[id(r)][1] for r in records if reference[id(r)][0] == "event"]
        want_errors = [(r, reference[id(r)][1]) for r in records if reference[id(r)][0] == "refused"]
        assert [e.ref for e in events] == [e.ref for e in want_events]  # every good one, in record order
        for got, want in zip(events, want_events, strict=True):
            assert got.key == want.key
            assert got.timestamps.tobytes() == want.timestamps.tobytes(), (want.ref, got.timestamps)
            assert got.values.tobytes() == want.values.tobytes(), (want.ref, got.values)
        assert [(r, e.reason, e.detail) for r, e in errors] == [(r, *w) for r, w in want_errors]


# --- any shape at all: no oracle for the value, but no other exception and the two paths agree -----------------


def any_json(rng: random.Random, fmt: MessageFormat, depth: int = 0) -> Any:
    """A JSON value of any type, weighted towards the shapes the decoder looks for."""
    f = len(fmt.features)
    pick = rng.randrange(16 if depth < 3 else 5)
    if pick == 0:
        return None
    if pick == 1:
        return rng.choice([True, False])
    if pick == 2:
        return rng.choice(
            [0, -1, 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), Raw("-9223372036854775809")]
        )
    if pick == 3:
        return rng.choice([0.0, -0.0, 1.7e9, 1.7e12, 1.7e15, 1.7e18, 1e300, 5e-324, -1e11, 1.7e9 + 1e6])
    if pick == 4:
        return rng.choice(
            ["", "1.5", "1700000000", "2023-11-14T22:13:20Z", "nan", "true", "🙂", "\u0000", "x" * 50]
        )
    if pick in (5, 6, 7):  # a list of about F numbers, some odd
        n = rng.choice([f, f, f, f - 1, f + 1, 0, 1])
        return [
            rng.choice([1.5, 2, None, 2**64 - 1, -(2**63), 1e-300])
            if rng.random() < 0.9
            else any_json(rng, fmt, depth + 1)
            for _ in range(n)
        ]
    if pick in (8, 9):
        names = list(fmt.features) + rng.choice([[], ["extra"]])
        rng.shuffle(names)
        return {
            k: rng.choice([1.0, None, 3]) if rng.random() < 0.9 else any_json(rng, fmt, depth + 1)
            for k in names[: rng.choice([len(names), len(names) - 1])]
        }
    if pick in (10, 11, 12):  # a reading
        return {
            fmt.time_field: any_json(rng, fmt, depth + 1) if rng.random() < 0.3 else 1.7e9 + rng.random(),
            fmt.values_field: any_json(rng, fmt, depth + 1),
        }
    if pick == 13:
        return [any_json(rng, fmt, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["a", fmt.key_field, fmt.time_field]): any_json(rng, fmt, depth + 1)}


def any_message(rng: random.Random, fmt: MessageFormat) -> bytes:
    body: dict[str, Any] = {}
    if rng.random() < 0.7:
        body[fmt.key_field] = (
            rng.choice(["pump-1", "pump-2", 7]) if rng.random() < 0.8 else any_json(rng, fmt)
        )
    if rng.random() < 0.4:
        good = [
            {fmt.time_field: 1.7e9 + i, fmt.values_field: [1.0] * len(fmt.features)}
            for i in range(rng.randrange(1, 40))
        ]
        if rng.random() < 0.7:
            good[rng.randrange(len(good))] = any_json(rng, fmt)
        body[fmt.readings_field] = good if rng.random() < 0.9 else any_json(rng, fmt)
    else:
        for name in (fmt.time_field, fmt.values_field):
            if rng.random() < 0.9:
                body[name] = (
                    any_json(rng, fmt)
                    if rng.random() < 0.4
                    else (1.7e9 if name == fmt.time_field else [2.5] * len(fmt.features))
                )
    text = dump(body).encode()
    if rng.random() < 0.15:  # bytes flipped, dropped or inserted
        b = bytearray(text)
        for _ in range(rng.randrange(1, 4)):
            if not b:  # a short body ("{}") whose every byte was dropped: the empty message is a case too
                break
            at = rng.randrange(len(b))
            op = rng.randrange(3)
            if op == 0:
                b[at] = rng.randrange(256)
            elif op == 1:
                del b[at]
            else:
                b.insert(at, rng.randrange(256))
        text = bytes(b)
    return text


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(FORMATS))
def test_messages_of_any_shape_are_decoded_or_refused_the_same_way_on_both_paths(name, seed):
    fmt = FORMATS[name]
    rng = random.Random(1000 + seed)
    d = Decoder(fmt, clock=lambda: NOW)
    records = [
        Record("sensors", 0, i, rng.choice([b"k", None, b"\xff"]), any_message(rng, fmt))
        for i in range(CASES[name])
    ]
    expected: list[tuple[Record, Any]] = []
    for r in records:
        try:
            e = d.decode(r)
        except DecodeError as err:
            assert err.reason in DECODE_REASONS
            expected.append((r, (err.reason, err.detail)))
            continue
        n = len(e.timestamps)
        assert isinstance(e.key, str) and n >= 1, r
        assert e.timestamps.dtype == np.float64 and np.isfinite(e.timestamps).all(), r
        assert e.values.dtype == np.float64 and e.values.shape == (n, len(fmt.features)), r
        assert float(e.timestamps.max()) <= (
            NOW + fmt.max_future_seconds if fmt.max_future_seconds else math.inf
        )
        expected.append((r, e))
    i = 0
    while i < len(records):
        n = rng.choice([1, 5, 32, 40, 100, 400])
        poll = records[i : i + n]
        if rng.random() < 0.5:
            poll = sorted(poll, key=lambda r: b'"readings"' in (r.value or b""))
        want = {id(r): w for r, w in expected[i : i + n]}
        readings, errors = d.decode_poll(poll)
        events = readings.events() if len(readings) else []
        assert len(events) + len(errors) == len(poll)
        ok = [want[id(r)] for r in poll if not isinstance(want[id(r)], tuple)]
        assert [e.ref for e in events] == [e.ref for e in ok]
        for got, w in zip(events, ok, strict=True):
            assert (got.key, got.timestamps.tobytes(), got.values.tobytes()) == (
                w.key,
                w.timestamps.tobytes(),
                w.values.tobytes(),
            )
        assert [(r, e.reason, e.detail) for r, e in errors] == [
            (r, *want[id(r)]) for r in poll if isinstance(want[id(r)], tuple)
        ]
        i += n

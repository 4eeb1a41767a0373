"""Pipeline settings as frozen dataclasses, parsed once from TOML, environment and command-line options.

Precedence (lowest to highest): dataclass defaults < pipeline TOML < ``ANOMALY_<SECTION>_<FIELD>`` environment
variables < command-line options. Library code takes these objects as arguments and never reads files or the
environment itself; only the CLI calls :func:`load_config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from anomaly.errors import ConfigError
from anomaly.thresholds import THRESHOLDS

log = logging.getLogger(__name__)


def _need(cond: bool, key: str, message: str, related: tuple[str, ...] = ()) -> None:
    """Refuse `key` unless `cond`; `related` names the other settings the check compared it with, so that an error
    can say where each of them came from."""
    if not cond:
        raise ConfigError(f"{key} {message}", key=key, related=related)


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _in_range(obj: object, section: str, rules: Sequence[tuple[str, Callable[[Any], bool], str]]) -> None:
    """Each setting of `rules` (name, test, rule), in order: the first whose value fails its test is refused in
    one line naming it, its rule and the value given."""
    for name, ok, rule in rules:
        value = getattr(obj, name)
        _need(ok(value), f"{section}.{name}", f"{rule}, got {value!r}")


def _ints(low: int, below: int | None = None) -> Callable[[Any], bool]:
    return lambda v: v >= low and (below is None or v < below)


def _reals(
    low: float, high: float = math.inf, *, above: bool = False, up_to: bool = False
) -> Callable[[Any], bool]:
    """Finite numbers from `low` (excluded when `above`) below `high` (included when `up_to`)."""
    return lambda v: _finite(v) and (v > low if above else v >= low) and (v <= high if up_to else v < high)


# 2**31: each key holds this many scores (2**63 - 1 was numpy's "array is too big" traceback), or counts them in an
# int32
TRAIN_RANGES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("epochs", _ints(1), "must be positive"),
    ("batch_size", _ints(1), "must be positive"),
    ("segment_windows", _ints(1), "must be positive"),
    ("stride", _ints(0), "must be 0 (= window) or positive"),
    ("learning_rate", _reals(0, above=True), "must be > 0"),
    ("weight_decay", _reals(0), "must be >= 0"),
    ("clip_norm", _reals(0, above=True), "must be > 0"),
    ("val_fraction", _reals(0, 1, above=True), "must be in (0, 1)"),
    ("patience", _ints(1), "must be at least 1"),
    # numpy refuses a negative seed, torch one of 2**64 or more: both were a traceback once training began
    ("seed", _ints(0, 2**64), "must be between 0 and 2**64 - 1"),
    ("min_batches", _ints(1), "must be at least 1"),
    ("forecast_weight", _reals(0), "must be >= 0"),
    ("input_noise", _reals(0), "must be >= 0"),
    ("wander_screen", _reals(0, 1), "must be in [0, 1) (0: no screen)"),
    ("threshold_quantile", _reals(0, 1, above=True), "must be in (0, 1)"),
    ("threshold_factor", _reals(0, above=True), "must be > 0"),
    ("reference_floor", _reals(0), "must be >= 0 (0: no floor)"),
)
ENGINE_RANGES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    (
        "static_threshold",
        lambda v: v is None or _reals(0, above=True)(v),
        "must be a positive number of score units (1.0 = calibration quantile)",
    ),
    ("smoothing", _reals(0, 1, above=True, up_to=True), "must be in (0, 1]"),
    ("dynamic_history", _ints(16, 2**31), "must be at least 16 and below 2**31"),
    ("dynamic_warmup", _ints(0), "must be >= 0"),
    ("dynamic_min", _reals(0), "must be >= 0"),
    ("spot_q", _reals(0, 1, above=True), "must be in (0, 1)"),
    ("spot_level", _reals(0, 1, above=True), "must be in (0, 1)"),
    ("spot_init", _ints(16, 2**31), "must be at least 16 and below 2**31"),
    ("spot_peaks", _ints(8, 2**31), "must be at least 8 and below 2**31"),
    ("spot_depth", _ints(1, 2**31), "must be at least 1 and below 2**31"),
    ("spot_min", _reals(0), "must be >= 0"),
    ("max_alert_seconds", _reals(0), "must be a finite number of seconds >= 0 (0, not inf: never)"),
    ("max_alert_readings", _ints(0, 2**31), "must be >= 0 readings (0: no readings limit) and below 2**31"),
    ("partial_shift_readings", _ints(0, 2**31), "must be >= 0 readings (0: off) and below 2**31"),
    ("feature_reference_floor", _reals(0, 1, up_to=True), "must be in [0, 1]"),
    # a run of 1 is any reading at all: with stuck_factor 1 every reading of a never-repeating sensor was stuck
    (
        "stuck_min_run",
        lambda v: v == 0 or v >= 2,
        "must be 0 (no stuck-sensor rule) or at least 2 identical readings in a row",
    ),
    ("stuck_factor", _reals(1), "must be >= 1"),
    ("stuck_min_distinct", _ints(1), "must be at least 1"),
    ("alert_open_after", _ints(1), "must be at least 1"),
    ("alert_close_after", _ints(1), "must be at least 1"),
    ("top_features", _ints(1), "must be at least 1"),
    (
        "max_gap_seconds",
        lambda v: v is None or (not math.isnan(v) and v > 0),
        "must be > 0 seconds (inf: never reset)",
    ),
    ("ttl_seconds", _reals(0), "must be a finite number of seconds >= 0 (0, not inf: no TTL)"),
    ("max_keys", _ints(1), "must be at least 1"),
)


def _check_choices(obj: Any, section: str) -> None:
    """Every ``Literal[...]`` field (or ``Literal | None``) must hold one of its choices."""
    for name, hint in typing.get_type_hints(type(obj)).items():
        choices = _literal_choices(hint)
        value = getattr(obj, name)
        if choices and value not in choices and not (value is None and _optional(hint)):
            raise ConfigError(
                f"{section}.{name} must be one of: {', '.join(map(str, choices))}; got {value!r}",
                key=f"{section}.{name}",
            )


def _optional(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


def _literal_choices(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    for arg in typing.get_args(hint):
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg)
    return ()


TimeUnit = Literal["auto", "s", "ms", "us", "ns", "min", "h"]


# data.separator's spellings for a tab: `--separator '\t'` (as a shell passes it), `tab`
SEPARATOR_NAMES = {"\\t": "\t", "tab": "\t", "TAB": "\t"}


@dataclass(frozen=True)
class DataConfig:
    """How CSV files map to series: which columns are time, key, features and labels."""

    time_column: str = "timestamp"  # "": the files have no time column; readings are numbered 0, 1, 2, ...
    # the date beside a time_column of times of day: joined "DATE TIME" per row
    date_column: str | None = None
    key_column: str | None = None
    features: tuple[str, ...] = ()  # empty: every numeric column that is not time, key or label
    label_columns: tuple[str, ...] = ("anomaly", "changepoint")
    label: str = "anomaly"  # the label column evaluation scores against
    label_map: tuple[str, ...] = ()  # text labels, "TEXT=0" or "TEXT=1" each (e.g. Normal=0, Attack=1)
    header: bool = True  # False: the first line is data; columns are named 1, 2, 3, ...
    skip_rows: int = 0  # lines above the header (notes, a spreadsheet's title row) to skip
    separator: str | None = None  # None: detect ';' or ',' (also inside .gz/.bz2/.xz/.zip/.zst files)
    decimal: str = "."  # decimal mark of numbers: "." or ","
    # the files' text encoding: "auto" (UTF-16 by its byte-order mark, else UTF-8) or a codec, e.g. "cp1252"
    encoding: str = "auto"
    time_unit: TimeUnit = (
        "auto"  # numeric times: s | ms | us | ns | min | h; auto: epoch s/ms/us/ns by magnitude
    )
    time_format: str | None = None  # strftime format of text times, e.g. "%d/%m/%Y %H:%M"; None: ISO-like
    dayfirst: bool | None = None  # 02/01/2023: True 2 January, False 1 February, None refuse when ambiguous
    bad_cells: Literal["error", "missing"] = "error"  # text in a numeric column: refuse, or treat as missing
    drop_anomalies: bool = False  # drop rows labelled anomalous from training data
    train_rows: int | None = None  # use only the first N rows of each series for training (SKAB protocol)

    @staticmethod
    def _text_codec(name: object) -> bool:
        """Whether `name` is a codec that decodes bytes to text (`cp1252`; not `base64`, a bytes-to-bytes one)."""
        if not isinstance(name, str) or not name.strip():
            return False
        try:  # (an empty b"" is decoded without looking the codec up)
            b"\n".decode(name, errors="ignore")
        except LookupError:
            return False
        return True

    def __post_init__(self) -> None:
        _check_choices(self, "data")
        if self.separator in SEPARATOR_NAMES:  # a tab is hard to type in a shell or an environment variable
            object.__setattr__(self, "separator", SEPARATOR_NAMES[self.separator])
        _need(
            self.key_column is None or bool(self.key_column.strip()),
            "data.key_column",
            "must not be empty (leave it out for one series)",
        )
        _need(bool(self.label), "data.label", "must not be empty")
        if self.date_column is not None:
            _need(bool(self.date_column.strip()), "data.date_column", "must not be empty (leave it out)")
            _need(
                bool(self.time_column),
                "data.date_column",
                "is joined to the time column's times of day, and there is none (--no-time-column): leave one out",
                ("data.time_column",),
            )
            _need(
                self.date_column != self.time_column,
                "data.date_column",
                f"names the time column {self.time_column!r} too: the date and the times of day are two columns",
                ("data.time_column",),
            )
        _need(
            self.separator is None or len(self.separator) == 1,
            "data.separator",
            f"must be one character, got {self.separator!r}",
        )
        _need(self.decimal in (".", ","), "data.decimal", f"must be '.' or ',', got {self.decimal!r}")
        _need(
            self.encoding == "auto" or self._text_codec(self.encoding),
            "data.encoding",
            f"must be auto or a text encoding Python knows, e.g. cp1252, latin-1, shift_jis, utf-16; got "
            f"{self.encoding!r}",
        )
        _need(
            self.separator is None or self.separator != self.decimal,
            "data.separator",
            "must differ from data.decimal",
            ("data.decimal",),
        )
        _need(
            self.time_format is None or "%" in self.time_format,
            "data.time_format",
            f"must be a strftime format such as %d/%m/%Y %H:%M, got {self.time_format!r}",
        )
        _need(  # accepted before, and ignored: the format's %d and %m give the order of day and month
            self.dayfirst is None or self.time_format is None,
            "data.dayfirst",
            f"{'true' if self.dayfirst else 'false'} does nothing with data.time_format {self.time_format!r}, "
            "whose %d and %m give the order of day and month: leave one out",
            ("data.time_format",),
        )
        _need(self.train_rows is None or self.train_rows >= 1, "data.train_rows", "must be at least 1")
        _need(self.skip_rows >= 0, "data.skip_rows", f"must be >= 0, got {self.skip_rows!r}")
        for entry in self.label_map:
            _need(
                re.fullmatch(r".+=\s*[01]\s*", entry) is not None,
                "data.label_map",
                f"entries are TEXT=0 or TEXT=1 (e.g. Normal=0,Attack=1), got {entry!r}",
            )
        dup = sorted({f for f in self.features if self.features.count(f) > 1})
        _need(not dup, "data.features", f"lists {', '.join(dup)} more than once")
        for role, col, name in (
            ("time column", self.time_column or None, "data.time_column"),
            ("date column", self.date_column, "data.date_column"),
            ("key column", self.key_column, "data.key_column"),
        ):
            _need(col not in self.features, "data.features", f"includes the {role} {col!r}", (name,))
        labels = [c for c in dict.fromkeys((self.label, *self.label_columns)) if c in self.features]
        _need(
            not labels,
            "data.features",
            f"includes the label column {labels[0] if labels else ''!r} (data.label and data.label_columns are "
            "never features)",
            ("data.label",) if labels and labels[0] == self.label else ("data.label_columns",),
        )


# A sane bound on model.num_layers: LSTMs of more than a few layers do not train better, and torch builds (and
# steps through) one layer at a time.
MAX_LAYERS = 1000


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the LSTM autoencoder."""

    window: int = 32
    hidden_size: int = 64
    num_layers: int = 1
    dropout: float = 0.0
    forecast: bool = True  # one-step forecast head; the engine then scores each reading on arrival
    # the features whose error is scored ("targets"); the others are context inputs the model reads but is not
    # judged on (commands, setpoints, operating mode). Empty: every feature.
    targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _need(self.window >= 2, "model.window", "must be at least 2")
        dup = sorted({t for t in self.targets if self.targets.count(t) > 1})
        _need(not dup, "model.targets", f"lists {', '.join(dup)} more than once")
        _need(all(self.targets), "model.targets", "must not contain an empty name")
        _need(self.hidden_size >= 1, "model.hidden_size", "must be positive")
        _need(self.num_layers >= 1, "model.num_layers", "must be positive")
        _need(  # 10,000,000 built the model one layer at a time for hours; 10,000 layers took 25 s to build
            self.num_layers <= MAX_LAYERS,
            "model.num_layers",
            f"must be at most {MAX_LAYERS}, got {self.num_layers}",
        )
        _need(_finite(self.dropout) and 0.0 <= self.dropout < 1.0, "model.dropout", "must be in [0, 1)")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings for `anomaly train`."""

    epochs: int = 30
    batch_size: int = 64
    segment_windows: int = 8  # consecutive windows per TBPTT segment
    stride: int = 0  # offset between window chains; 0 means = window (one chain per series)
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    val_fraction: float = 0.2
    patience: int = 5
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # autocast on CUDA (bf16 when supported, else fp16)
    threshold_quantile: float = 0.99
    threshold_factor: float = 1.5
    # the calibrated score unit (reference error, squared standardized units) of a target that was constant in
    # training is this, not its validation error of ~0 (0: no floor; a varying target keeps its measured unit)
    reference_floor: float = 0.01
    min_batches: int = 8  # optimizer steps per epoch at least: short training sets get smaller batches
    forecast_weight: float = 1.0  # weight of the one-step forecast loss next to the reconstruction loss
    input_noise: float = 0.0  # std of Gaussian noise added to training inputs (denoising), standardized units
    # a feature whose level wanders over the training span (share of its variance in the means of 8 equal
    # blocks above this) is read as context, not scored: training has not seen the range it will take (0: off)
    wander_screen: float = 0.0

    def __post_init__(self) -> None:
        _check_choices(self, "train")
        _in_range(self, "train", TRAIN_RANGES)


@dataclass(frozen=True)
class EngineConfig:
    """Scoring, thresholds, alert lifecycle and data-hygiene policy of the streaming engine."""

    threshold: str = "dynamic"  # a threshold kind, a key of anomaly.thresholds.THRESHOLDS
    # mean: mean error over features / reference | max_feature: max over features of err_f / ref_f
    score: Literal["mean", "max_feature"] = "mean"
    # max_feature: no feature's reference error counts as less than this fraction of the median over features, so
    # a feature nearly constant in training (a tiny reference) cannot dominate every score
    feature_reference_floor: float = 0.1
    static_threshold: float | None = None  # score units (> 0); None: the bundle's calibrated default
    smoothing: float = 0.2  # EWMA alpha applied to point scores before thresholding (1.0 = none)
    dynamic_history: int = 512  # smoothed scores remembered per key for the dynamic threshold
    dynamic_warmup: int = 128  # points a key must see before the dynamic threshold may alert
    dynamic_min: float = 1.0  # the dynamic threshold never goes below this score
    spot_q: float = 0.03  # SPOT/DSPOT risk: probability that a normal score exceeds the threshold
    spot_level: float = 0.98  # quantile of a key's calibration scores above which excesses form the tail
    spot_init: int = 256  # scores a key calibrates on before SPOT/DSPOT may alert
    spot_peaks: int = 128  # latest excesses kept per key to fit the tail
    spot_depth: int = 32  # DSPOT: normal scores averaged into the moving baseline
    spot_min: float = 1.0  # the SPOT/DSPOT threshold never goes below this score
    # an alert open this long (event time) closes as a level shift and the key re-baselines (0: never)
    max_alert_seconds: float = 86_400.0
    # ... or open for this many of the key's readings, whichever comes first (0: no readings limit): a limit that
    # does not depend on the clock's units. Off by default: on SMAP (held out) 512 cut F1 0.564 -> 0.366
    max_alert_readings: int = 0
    # ... or open for this many readings while the features whose level moved are a minority of the scored ones
    # (at least one, fewer than half): a partial level shift, those features re-baseline (0: off). Never fires
    # for a key with one or two scored features. 512 = dynamic_history, selected on SKAB valve1 (README)
    partial_shift_readings: int = 512
    stuck_min_run: int = 8  # identical readings in a row that make a sensor stuck (0: no stuck-sensor rule)
    stuck_factor: float = 2.0  # ... or this many times the feature's longest run in training, if more
    # only features with at least this many distinct training values are watched (a flag may hold for ever)
    stuck_min_distinct: int = 16
    alert_open_after: int = 3  # consecutive anomalous points that open an alert
    alert_close_after: int = 30  # consecutive normal points that close it
    top_features: int = 3
    # a larger gap between readings resets the key's state; None: the bundle's (300 sampling intervals)
    max_gap_seconds: float | None = None
    duplicate_policy: Literal["drop", "keep"] = "drop"
    nan_policy: Literal["reject", "ffill"] = "reject"
    ttl_seconds: float = 86_400.0  # idle keys are evicted after this many seconds of event time (0: never)
    max_keys: int = 100_000

    def __post_init__(self) -> None:
        _check_choices(self, "engine")
        _need(
            self.threshold in THRESHOLDS,
            "engine.threshold",
            f"must be one of: {', '.join(THRESHOLDS)}; got {self.threshold!r}",
        )
        _in_range(self, "engine", ENGINE_RANGES)


@dataclass(frozen=True)
class KafkaConfig:
    """Where the daemon reads and writes; security settings pass through to kafka-python."""

    bootstrap_servers: str = "127.0.0.1:9092"
    topics: tuple[str, ...] = ("sensors",)
    group_id: str = "anomaly"
    alerts_topic: str = "anomaly-alerts"
    scores_topic: str | None = None
    dead_letter_topic: str = "anomaly-dead-letters"
    # State topic name; {group} and {topic} are replaced by the consumer group and each input topic, so every
    # group (and input topic) has its own changelog, as in Kafka Streams and Quix Streams.
    changelog_topic: str = "changelog__{group}--{topic}"
    # Compression of the checkpoints written (restores read both): zlib only to roll back to a daemon from before
    # zstd (it cannot read zstd records) after one checkpoint of every partition.
    changelog_codec: Literal["zstd", "zlib"] = "zstd"
    key_field: str = "key"
    time_field: str = "ts"
    values_field: str = "values"
    readings_field: str = "readings"
    max_message_bytes: int = 1_048_576
    # A reading stamped further than this ahead of the daemon's wall clock is refused (dead letter
    # `future_timestamp`): the engine measures idleness against the newest event time of each partition, so one
    # reading from a broken clock would otherwise make every other key of its partition look idle (evicted after
    # engine.ttl_seconds) and its own key drop every later, correct reading as going back in time. The default equals engine.ttl_seconds' default
    # and lets any time-zone offset through. 0 turns it off.
    max_future_seconds: float = 86_400.0
    checkpoint_interval_s: float = 5.0
    max_poll_records: int = 2000
    # One engine call may take several polls of records the consumer has already fetched (the rest of the fetch
    # response), while their values add up to less than max_batch_bytes, spending at most max_batch_ms adding
    # them: larger calls cost the engine less per reading (a poll of 2,000 single readings holds 8 readings of
    # each of 250 keys). 0 turns it off; a poll of 32-reading blocks (~2.6 MB) is taken as it is.
    max_batch_bytes: int = 2_097_152
    max_batch_ms: float = 50.0
    # How long the broker may hold a fetch that has no new data. kafka-python's 500 ms default is added to the
    # latency by brokers that do not answer as soon as data arrives (Tansu); an idle daemon then sends ~20
    # fetches/s, which costs nothing.
    fetch_max_wait_ms: int = 50
    # While the periodic checkpoint stands the loop still (tens of ms), take what the consumer fetched meanwhile
    # for the next batch, so it sends its next fetches instead of leaving the backlog at the broker. Off: no
    # latency gain measured with the broker on the same two cores (README "Performance", lat9).
    fetch_in_checkpoint: bool = False
    max_poll_interval_ms: int = 300_000
    session_timeout_ms: int = 10_000
    # How old the group consumer's topic metadata may get before it is asked again (kafka-python's
    # metadata_max_age_ms). Partitions added to an input topic are seen, and the group rebalanced onto them, only at
    # that refresh: kafka-python's default of 5 minutes left them unread that long. A metadata request every 30 s
    # costs nothing next to the daemon's topic check (one a second).
    metadata_max_age_ms: int = 30_000
    auto_offset_reset: Literal["earliest", "latest"] = (
        "earliest"  # where a group without committed offsets starts
    )
    auto_create_topics: bool = False  # create missing input and output topics at start-up
    topic_partitions: int = 1  # partitions of topics created by auto_create_topics
    replication_factor: int = 1  # replicas of every topic the daemon creates (changelog included)
    transactional: bool = True  # outputs, checkpoints and offsets in one Kafka transaction (fences zombies)
    # Transactional only: the periodic checkpoint compresses its state and ends its transaction (flush, offsets,
    # commit) in a helper thread while the loop scores on; outputs scored meanwhile wait for that commit. Off: it
    # measured worse with the broker on the daemon's two cores (README "Performance"), where the broker's commit
    # work and the helper compete with the loop for the cores instead of the loop waiting for them.
    commit_in_background: bool = False
    transactional_id: str = "anomaly-{group}-{host}-{pid}"  # {group}, {host}, {pid} replaced
    transaction_timeout_ms: int = 60_000
    # Longest a producer call waits on the broker: a send's metadata, init_transactions, and (bounded by the daemon,
    # kafka-python has no timeout for them) adding offsets to, committing and aborting a transaction. Past it the
    # daemon exits with one error line (status 2); a restart restores the last committed checkpoint.
    max_block_ms: int = 60_000
    max_request_bytes: int = 1_048_576  # producer max.request.size: keep <= the broker's message.max.bytes
    dead_letter_max_bytes: int = 900_000  # larger payloads are cut (original size and sha256 in headers)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    # the mechanisms the daemon passes credentials for (username + password); others are refused when loaded
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __post_init__(self) -> None:
        _check_choices(self, "kafka")
        _need(bool(self.bootstrap_servers.strip()), "kafka.bootstrap_servers", "must not be empty")
        ports = [s.strip() for s in self.bootstrap_servers.split(",") if s.strip().isdigit()]
        _need(  # "9092" in a variable or an option was taken as a host named 9092: "cannot reach Kafka at 9092"
            not ports,
            "kafka.bootstrap_servers",
            f'must be "host:port" entries (e.g. "localhost:9092"); {ports[0] if ports else ""!r} is a port '
            "without a host",
        )
        _need(bool(self.topics) and all(self.topics), "kafka.topics", "must name at least one topic")
        _need(bool(self.group_id.strip()), "kafka.group_id", "must not be empty")  # " " was a group named " "
        size = len(self.group_id.encode())
        _need(  # the `group` header is cut to 1 KiB: two ids alike in their first 1,024 bytes read each other's alerts
            size <= GROUP_ID_MAX_BYTES,
            "kafka.group_id",
            f"is {size:,} bytes in UTF-8; at most {GROUP_ID_MAX_BYTES:,} (it is the `group` header of every alert, "
            "score and dead letter, which retrain and promote match)",
        )
        for name in ("alerts_topic", "dead_letter_topic", "changelog_topic"):
            _need(bool(getattr(self, name)), f"kafka.{name}", "must not be empty")
        for name in ("topics", "alerts_topic", "scores_topic", "dead_letter_topic"):
            value = getattr(self, name)
            for topic in value if isinstance(value, tuple) else (value,) if value else ():
                _need(  # `topics = ["a,b"]` was one topic named "a,b": "not found", or refused when created
                    set(topic) <= KAFKA_TOPIC_CHARS and len(topic) <= 249 and topic not in (".", ".."),
                    f"kafka.{name}",
                    f"{topic!r} is not a Kafka topic name: letters, digits, '.', '_' and '-', at most 249"
                    + (' (a list is written ["a", "b"])' if "," in topic else ""),
                )
        for name, why in (
            ("alerts_topic", "its alert events, each refused as a dead letter"),
            ("scores_topic", "its scores, each refused as a dead letter"),
            ("dead_letter_topic", "each dead letter, refused and written again, for ever"),
        ):
            _need(  # accepted before: the daemon read back what it wrote
                getattr(self, name) not in self.topics,
                f"kafka.{name}",
                f"{getattr(self, name)!r} is also an input topic (kafka.topics): the daemon would read what it "
                f"writes ({why}); give it a topic of its own",
                ("kafka.topics",),
            )
        _need(self.max_message_bytes >= 1, "kafka.max_message_bytes", "must be positive")
        _need(
            _finite(self.max_future_seconds) and self.max_future_seconds >= 0,
            "kafka.max_future_seconds",
            "must be a finite number of seconds >= 0 (0: no limit)",
        )
        _need(
            _finite(self.checkpoint_interval_s) and self.checkpoint_interval_s > 0,
            "kafka.checkpoint_interval_s",
            "must be > 0",
        )
        for name in ("max_poll_records", "fetch_max_wait_ms"):
            _need(getattr(self, name) >= 1, f"kafka.{name}", "must be positive")
        _need(  # kafka-python refuses it: the daemon exited with "Kafka error ... (consumer): KafkaConfigurationError"
            self.fetch_max_wait_ms < CONSUMER_REQUEST_TIMEOUT_MS,
            "kafka.fetch_max_wait_ms",
            f"must be below the consumer's request timeout ({CONSUMER_REQUEST_TIMEOUT_MS} ms), got "
            f"{self.fetch_max_wait_ms}",
        )
        for name in (
            "max_poll_interval_ms",
            "session_timeout_ms",
            "metadata_max_age_ms",
        ):  # under a second: no timeout
            _need(getattr(self, name) >= 1000, f"kafka.{name}", "must be at least 1000")
        for name in ("topic_partitions", "replication_factor"):
            _need(getattr(self, name) >= 1, f"kafka.{name}", "must be at least 1")
        _need(self.max_batch_bytes >= 0, "kafka.max_batch_bytes", "must be >= 0")
        _need(
            _finite(self.max_batch_ms) and self.max_batch_ms >= 0,
            "kafka.max_batch_ms",
            "must be >= 0 milliseconds",
        )
        _need(self.transaction_timeout_ms >= 1000, "kafka.transaction_timeout_ms", "must be at least 1000")
        _need(self.max_block_ms >= 1000, "kafka.max_block_ms", "must be at least 1000")
        _need(self.max_request_bytes >= 4096, "kafka.max_request_bytes", "must be at least 4096")
        _need(self.dead_letter_max_bytes >= 1024, "kafka.dead_letter_max_bytes", "must be at least 1024")
        named: dict[str, str] = {}  # a field name -> the setting that took it
        for name in ("key_field", "time_field", "values_field", "readings_field"):
            value = getattr(self, name)
            _need(bool(value.strip()), f"kafka.{name}", "must not be empty")  # no message has a field " "
            other = named.setdefault(value, name)
            _need(  # values_field = "readings" made every message a block of readings that are not objects
                other == name,
                f"kafka.{name}",
                f"and kafka.{other} are both {value!r}: each field of a message needs its own name",
                (f"kafka.{other}",),
            )
        _template(self.changelog_topic, "kafka.changelog_topic", ("group", "topic"))
        _template(self.transactional_id, "kafka.transactional_id", ("group", "host", "pid"))
        others = {t: "an input topic (kafka.topics)" for t in self.topics}
        for name in ("alerts_topic", "scores_topic", "dead_letter_topic"):
            others.setdefault(getattr(self, name), f"kafka.{name}")
        for topic in self.topics:
            state = changelog_topic(self, topic)
            _need(  # `changelog_topic = "{topic}"` was refused by the compaction check, which said to compact it
                state not in others,
                "kafka.changelog_topic",
                f"makes the changelog of {topic!r} {state!r}, which is {others.get(state)}: checkpoints would be "
                "written into it; give the changelog a name of its own (default changelog__{group}--{topic})",
                ("kafka.topics", *[s for s in (others.get(state, ""),) if s.startswith("kafka.")]),
            )


def _template(value: str, key: str, fields: tuple[str, ...]) -> None:
    import string

    try:
        used = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
    except ValueError as exc:  # an unmatched brace was "got {?}", naming nothing the user wrote
        raise ConfigError(
            f"{key} {value!r} is not a valid template ({exc}): placeholders are "
            f"{', '.join('{' + f + '}' for f in fields)}, and a literal brace is written {{{{ or }}}}",
            key=key,
        ) from None
    bad = [f for f in used if f not in fields]
    _need(
        not bad,
        key,
        f"may only use the placeholders {', '.join('{' + f + '}' for f in fields)}; got {{{bad[0] if bad else ''}}}",
    )


# What a dead letter's headers (reason, error, source topic/partition/offset, entity_key cut to 1 KiB, original
# size and SHA-256) and record framing add to its key and payload: kafka.dead_letter_max_bytes must leave this much
# under kafka.max_request_bytes.
DEAD_LETTER_HEADERS_BYTES = 4096


def dead_letters_lost(k: KafkaConfig) -> str | None:
    """Why dead letters would be lost with these settings (None: they fit): cut to ``dead_letter_max_bytes``, a
    letter and its headers must stay within what the producer sends (``max_request_bytes``), else the producer
    refuses it (counted in anomaly_dead_letters_refused_total) and it is lost. Said at `anomaly consume`'s start;
    lowering max_request_bytes alone (to a broker's message.max.bytes) did that without a word."""
    room = k.max_request_bytes - DEAD_LETTER_HEADERS_BYTES
    if k.dead_letter_max_bytes <= room:
        return None
    return (
        f"kafka.dead_letter_max_bytes {k.dead_letter_max_bytes} leaves no room under kafka.max_request_bytes "
        f"{k.max_request_bytes} for a dead letter's headers (up to {DEAD_LETTER_HEADERS_BYTES} bytes): a dead letter "
        f"of more than about {max(room, 0)} bytes is refused by the producer and lost; set kafka.dead_letter_max_bytes "
        f"to at most {room} or raise kafka.max_request_bytes to at least "
        f"{k.dead_letter_max_bytes + DEAD_LETTER_HEADERS_BYTES}"
    )


def changelog_shared(k: KafkaConfig) -> str | None:
    """Why another consumer group may write into this group's changelog (None: it has one of its own): a
    ``changelog_topic`` without ``{group}`` names the same topics for every group given it (two pipelines run from
    copies of one pipeline file, say), under the same record keys, so on a compacting broker the groups'
    checkpoints replace each other. Said at `anomaly consume`'s start; before, nothing said it until a restore
    found another group's records (``other_group``), by when compaction may have removed this group's own."""
    if "{group}" in k.changelog_topic.replace("{{", ""):
        return None
    return (
        f"kafka.changelog_topic {k.changelog_topic!r} has no {{group}}: every consumer group given it checkpoints "
        "into the same topic under the same record keys, and on a compacting broker one group's checkpoints "
        "replace another's (a restore ignores the other group's, counted as other_group in "
        "anomaly_restore_refused_total, and its own may be gone); keep {group} in it (default "
        "changelog__{group}--{topic})"
    )


# The longest kafka.group_id, in UTF-8 bytes: the `group` header of the daemon's records holds at most this
# (anomaly.kafka.sinks.KEY_BYTES, the room left for a dead letter's headers).
GROUP_ID_MAX_BYTES = 1024

# The group consumer's request_timeout_ms (kafka-python's default, passed explicitly); kafka.fetch_max_wait_ms must
# stay below it.
CONSUMER_REQUEST_TIMEOUT_MS = 30_000

KAFKA_TOPIC_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def changelog_topic(k: KafkaConfig, topic: str) -> str:
    """The changelog topic holding the state of input ``topic`` for this group: the template filled in, as it is
    when Kafka takes it as a topic name. Otherwise (a character Kafka does not allow, or more than 249) those
    characters become ``_``, the name is cut to 240 and ``-`` and 8 hex digits of the SHA-256 of the name as filled
    in are added: before (session 23) the replaced and cut name alone was the topic, so groups ``a b`` and ``a_b``
    (or two long ids alike in their first 230 characters) checkpointed into the same changelog under the same
    record keys, and on a compacting broker one group's checkpoints replaced the other's."""
    name = k.changelog_topic.format(group=k.group_id, topic=topic)
    if set(name) <= KAFKA_TOPIC_CHARS and len(name) <= 249:
        return name
    return f"{_legal_topic(name)[:240]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def legacy_changelog_topic(k: KafkaConfig, topic: str) -> str:
    """The name :func:`changelog_topic` gave before session 23: characters replaced and cut, no hash (the same as
    today's for a name that needs no change)."""
    return _legal_topic(k.changelog_topic.format(group=k.group_id, topic=topic))[:249]


def legacy_changelog_template(k: KafkaConfig) -> str | None:
    """A ``kafka.changelog_topic`` that names, for this group, the changelogs :func:`legacy_changelog_topic` names
    (None when no template does: a name cut at 249 characters, where the cut depends on the input topic)."""
    mark = "TOPICh23left0mark"  # only legal characters: kept as it is by _legal_topic
    template = _legal_topic(k.changelog_topic.format(group=k.group_id, topic=mark)).replace(mark, "{topic}")
    same = all(template.format(topic=t) == legacy_changelog_topic(k, t) for t in k.topics)
    return template if same else None


def _legal_topic(name: str) -> str:
    return "".join(c if c in KAFKA_TOPIC_CHARS else "_" for c in name)


@dataclass(frozen=True)
class MetricsConfig:
    """The HTTP endpoint serving /metrics, /healthz and /readyz."""

    host: str = "127.0.0.1"
    port: int = 9108  # 0: any free port

    def __post_init__(self) -> None:
        _need(bool(self.host.strip()), "metrics.host", "must not be empty")  # " " was accepted
        _need(0 <= self.port <= 65535, "metrics.port", f"must be in 0..65535, got {self.port}")


@dataclass(frozen=True)
class ReplayConfig:
    """How `anomaly replay` turns engine output into point predictions and files."""

    # alert: points inside an open alert are predicted anomalous | point: score > threshold
    predict: Literal["alert", "point"] = "alert"
    batch_readings: int = 4096  # readings per engine call (results do not depend on it)
    plots: bool = True
    # at most this many PNG reports (one a second or so, ~100 KB each): the keys with the most alerts first
    max_reports: int = 100
    parquet: bool = True
    # leave the first N readings of each series out of the evaluation (the part trained on with train_rows N);
    # they are replayed all the same, so the model is warm when the evaluated part begins
    evaluate_after: int = 0

    def __post_init__(self) -> None:
        _check_choices(self, "replay")
        _need(self.batch_readings >= 1, "replay.batch_readings", "must be positive")
        _need(self.max_reports >= 0, "replay.max_reports", f"must be >= 0, got {self.max_reports!r}")
        _need(self.evaluate_after >= 0, "replay.evaluate_after", f"must be >= 0, got {self.evaluate_after!r}")


@dataclass(frozen=True)
class PipelineConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)

    def __post_init__(self) -> None:
        unknown = [t for t in self.model.targets if self.data.features and t not in self.data.features]
        _need(
            not unknown,
            "model.targets",
            f"names {', '.join(unknown)}, not in data.features ({', '.join(self.data.features)})",
            ("data.features",),
        )
        _need(
            self.train.stride <= self.model.window,
            "train.stride",
            f"must be between 0 and model.window ({self.model.window})",
            ("model.window",),
        )


SECTIONS: dict[str, type] = {f.name: f.type for f in dataclasses.fields(PipelineConfig)}  # type: ignore[misc]
_SECTION_TYPES = typing.get_type_hints(PipelineConfig)
SECRET_FIELDS = frozenset({"sasl_password"})


# ANOMALY_* variables that are not settings of a section (read by the CLI itself).
GLOBAL_ENV_VARS = frozenset({"ANOMALY_THREADS"})


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert a TOML or string value to the annotated field type, or raise ConfigError naming the key."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"{where} must be one of: {', '.join(map(str, args))}; got {value!r}", key=where
            )
        return value
    if origin is tuple:
        # '["a", "b"]' as the pipeline file writes a list, else 'a, b'
        if isinstance(value, str) and value.strip().startswith("["):
            try:
                value = json.loads(value)
            except ValueError:
                raise ConfigError(
                    f'{where} must be a list: a,b or ["a", "b"]; got {value!r}', key=where
                ) from None
        elif isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}", key=where)
        return tuple(_coerce(v, args[0], where) for v in value)
    try:
        if hint is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
            if isinstance(value, bool):
                return value
            raise ValueError
        if isinstance(value, bool) and hint in (int, float):
            raise ValueError
        if hint is int:
            number = value
            if isinstance(value, str) and not value.strip().lstrip("+-").replace("_", "").isdigit():
                # `window = 32.0` in a file is 32: so is ANOMALY_MODEL_WINDOW=32.0 (it was refused)
                number = float(value)
            if isinstance(number, float) and not number.is_integer():
                raise ValueError
            return int(number)
        if hint is float:
            return float(value)
        if hint is str:
            # a number may name a column (`--no-header` names them 1, 2, 3); true/false names nothing: `time_column
            # = false` looked for a column 'False'; nor does a null (`["a", null]` in a variable named a column 'None')
            if isinstance(value, dict | list | bool) or value is None:
                raise ValueError
            return str(value)
    except (TypeError, ValueError, OverflowError):
        name = {bool: "true or false", int: "an integer", float: "a number", str: "text"}.get(hint, str(hint))
        got = repr(value)
        if where.startswith("kafka.") and where.partition(".")[2] in SECRET_FIELDS:
            # `sasl_password = ["..."]` printed the password in the error line (secrets are never printed)
            got = f"a {type(value).__name__} (not shown: a secret)"
        raise ConfigError(f"{where} must be {name}, got {got}", key=where) from None
    return value


def _nearest_setting(name: str, section: str, valid: list[str]) -> str | None:
    """The setting an unknown ``section.name`` most likely meant, as ``section.field``: the same name in another
    section first (``[model] epochs`` is ``train.epochs``; before, only the model's settings were listed), then a
    close spelling in its own section, then one in another section."""
    others = {
        f"{other}.{f}": f
        for other, t in _SECTION_TYPES.items()
        if other != section
        for f in typing.get_type_hints(t)
    }
    exact = [dotted for dotted, f in others.items() if f == name]
    if exact:
        return exact[0]
    close = difflib.get_close_matches(name, valid, n=1)
    if close:
        return f"{section}.{close[0]}"
    close = difflib.get_close_matches(name, list(others.values()), n=1)
    return next((dotted for dotted, f in others.items() if close and f == close[0]), None)


def _changes(section_obj: Any, values: Mapping[str, Any], section: str) -> dict[str, Any]:
    """`values` of one layer for one section, each converted to its field's type (unknown names refused)."""
    hints = typing.get_type_hints(type(section_obj))
    valid = sorted(hints)
    changes = {}
    for name, value in values.items():
        if name not in hints:
            near = _nearest_setting(name, section, valid)
            hint = f"did you mean {near}? " if near else ""
            raise ConfigError(
                f"unknown setting {section}.{name}; {hint}valid settings: {', '.join(valid)}",
                key=f"{section}.{name}",
            )
        if (section, name) == ("kafka", "bootstrap_servers"):
            value = _server_list(value)
        if (section, name) == ("data", "key_column") and isinstance(value, str) and not value.strip():
            # refused by DataConfig as an empty column name (`key_column = ""`, `--key-column "$KEY"` with KEY
            # unset), as a library user's is; read as unset like other optional settings, it cut a file of many
            # keys into one series without a word
            changes[name] = ""
            continue
        changes[name] = _coerce(value, hints[name], f"{section}.{name}")
    return changes


def _server_list(value: Any) -> Any:
    """kafka.bootstrap_servers written as a list (`["h1:9092", "h2:9092"]` in TOML, or that text in a variable),
    as kafka-python takes it: the comma-separated text the setting holds, `h1:9092,h2:9092`. It was refused as
    'must be text'."""
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return ",".join(v.strip() for v in value if v.strip())
    if isinstance(value, list | tuple | int | float):  # `[9092]`, `9092`: "must be text" did not say what
        if isinstance(value, list | tuple):
            what = f"entry {next(v for v in value if not isinstance(v, str))!r} of {value!r}"
        else:
            what = repr(value)
        raise ConfigError(
            'kafka.bootstrap_servers must be "host:port" text, or a list of it (e.g. "localhost:9092" or '
            f'["h1:9092", "h2:9092"]); {what} is not text',
            key="kafka.bootstrap_servers",
        )
    return value


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    utf16 = False
    try:
        raw = p.read_bytes()
        # UTF-16 with its byte-order mark (what Windows PowerShell 5's `>` and `Out-File` write, Notepad's
        # "Unicode") is read as such, as CSV files are: it was "not UTF-8 text" (UTF-32's marks stay refused)
        utf16 = raw[:2] in (b"\xff\xfe", b"\xfe\xff") and raw[:4] not in (
            b"\xff\xfe\x00\x00",
            b"\x00\x00\xfe\xff",
        )
        # utf-8-sig: a byte-order mark (Windows editors, PowerShell's `Out-File -Encoding utf8`) was "not valid
        # TOML: Invalid statement (at line 1, column 1)", a line that looked right; CSV files accept one too
        text = raw.decode("utf-16" if utf16 else "utf-8-sig")
        if "\x00" in text:
            # UTF-16 without a byte-order mark is valid UTF-8 (each ASCII character followed or preceded by a NUL):
            # it was "not valid TOML: Invalid initial character for a key part (at line 1, column 2)"
            raise ConfigError(
                f"pipeline file {p} holds NUL characters, as UTF-16 text without a byte-order mark (or a file that "
                "is not text) does: save it as UTF-8"
            )
        return tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"pipeline file not found: {p}") from None
    except IsADirectoryError:
        raise ConfigError(f"pipeline file {p} is a directory") from None
    except UnicodeDecodeError:
        raise ConfigError(f"pipeline file {p} is not {'UTF-16' if utf16 else 'UTF-8'} text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"pipeline file {p} is not valid TOML: {exc}") from None


def env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Collect ``ANOMALY_<SECTION>_<FIELD>`` variables into {section: {field: raw}}.

    Any other ``ANOMALY_*`` variable (a misspelt section such as ``ANOMALY_ENGIN_THRESHOLD``) is an error, the
    same as a misspelt field: a setting that silently does nothing is worse than a refusal."""
    out: dict[str, dict[str, str]] = {}
    for name, raw in env.items():
        if not name.startswith("ANOMALY_") or name in GLOBAL_ENV_VARS:
            continue
        rest = name[len("ANOMALY_") :].lower()
        for section in SECTIONS:
            if rest.startswith(section + "_"):
                if not rest[len(section) + 1 :]:  # it was "unknown setting engine.;", a setting with no name
                    fields = sorted(typing.get_type_hints(_SECTION_TYPES[section]))
                    raise ConfigError(
                        f"environment variable {name} names no setting: expected ANOMALY_{section.upper()}_<FIELD> "
                        f"with FIELD one of: {', '.join(fields)}",
                        key=name,
                    )
                field = rest[len(section) + 1 :]
                _refuse_true_false_for_text(name, raw, section, field)
                out.setdefault(section, {})[field] = raw
                break
        else:
            head = rest.split("_", 1)[0]
            close = difflib.get_close_matches(head, list(SECTIONS), n=1)
            hint = f"did you mean ANOMALY_{close[0].upper()}_...? " if close else ""
            raise ConfigError(
                f"environment variable {name} names no section; {hint}"
                f"expected ANOMALY_<SECTION>_<FIELD> with SECTION one of: {', '.join(SECTIONS)}"
                f" (or {', '.join(sorted(GLOBAL_ENV_VARS))})",
                key=name,
            )
    return out


def _refuse_true_false_for_text(name: str, raw: str, section: str, field: str) -> None:
    """`true`/`false` in a variable of a text setting: refused as in a pipeline file, where `time_column = false`
    is; ANOMALY_DATA_TIME_COLUMN=false looked for a column named 'false' (meaning --no-time-column, the empty
    value). A column so named is still reached by the option or a quoted string in the file."""
    hint = typing.get_type_hints(_SECTION_TYPES[section]).get(field)
    text = hint is str or (
        typing.get_origin(hint) in (typing.Union, types.UnionType) and str in typing.get_args(hint)
    )
    if not text or field in SECRET_FIELDS or raw.strip().lower() not in ("true", "false"):
        return  # (a password may be `true`, and is never printed)
    empty = {
        "data.time_column": f" {name}= (empty) is no time column, as --no-time-column;",
    }.get(f"{section}.{field}", "")
    raise ConfigError(
        f"environment variable {name}={raw}: {section}.{field} is text, not true or false;{empty} a value named "
        f'{raw!r} is written {field} = "{raw}" in a pipeline file',
        key=name,
    )


def _check_toml_shape(toml: Mapping[str, Any]) -> None:
    for key, value in toml.items():
        if key in SECTIONS and isinstance(value, list):  # [[engine]]: an array of tables, not a table
            raise ConfigError(f"[[{key}]] is an array of tables: write the section once, as [{key}]", key=key)
        if not isinstance(value, Mapping):
            owners = [s for s, t in _SECTION_TYPES.items() if key in typing.get_type_hints(t)]
            where = f"; put it under [{owners[0]}]" if owners else ""
            raise ConfigError(f"top-level key {key!r} is not inside a [section]{where}", key=key)
        if key not in SECTIONS:
            close = difflib.get_close_matches(key, list(SECTIONS), n=1)
            hint = f"did you mean [{close[0]}]? " if close else ""
            raise ConfigError(f"unknown section [{key}]; {hint}valid sections: {', '.join(SECTIONS)}")


def build_config(
    toml: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    toml_source: str | None = None,
    option_names: Mapping[str, str] | None = None,
    warn: Callable[[str], None] | None = None,
    sources_out: dict[str, str | None] | None = None,
) -> PipelineConfig:
    """Layer TOML, environment and ``{"section.field": value}`` overrides (None values are ignored).

    Every settings object validates itself when built, so an error here names the setting and where its value
    came from: ``toml_source`` (e.g. ``pipeline file p.toml``) for the TOML layer, the environment variable, and
    for an override ``option_names[key]`` (e.g. ``--window``), else "a command-line option". A check between
    settings (``train.stride`` against ``model.window``) names the source of each one that was set. A setting of
    the file or the environment that another setting leaves unused is passed to ``warn`` (default: a log
    warning; the CLI prints it as a ``warning:`` line, as its other warnings). ``sources_out``, when given, is
    filled with ``{"section.field": source}`` for every setting a layer set, the source as the errors name it
    (``anomaly config`` prints them; a setting left out of it has its default)."""
    cfg = PipelineConfig()
    layers: list[tuple[str, Mapping[str, Mapping[str, Any]]]] = []
    if toml:
        try:
            _check_toml_shape(toml)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (in {toml_source})" if toml_source else str(exc), key=exc.key) from None
        layers.append(("toml", {k: v for k, v in toml.items() if k in SECTIONS}))
    if env:
        layers.append(("environment", env_overrides(env)))
    if overrides:
        nested: dict[str, dict[str, Any]] = {}
        for dotted, value in overrides.items():
            if value is None:
                continue
            section, _, name = dotted.partition(".")
            nested.setdefault(section, {})[name] = value
        layers.append(("option", nested))

    def source(origin: str, key: str) -> str | None:
        if origin == "environment":
            return "environment variable ANOMALY_" + key.replace(".", "_").upper()
        if origin == "option":
            name = (option_names or {}).get(key)
            return f"option {name}" if name else "a command-line option"
        return toml_source

    sources: dict[str, str | None] = {}  # "section.field" -> where its value came from, for the settings set
    origins: dict[str, str] = {}  # "section.field" -> the layer that set it last: toml, environment, option
    final: dict[str, dict[str, Any]] = {}  # section -> field -> value, the last layer's where several set it
    for origin, layer in layers:
        for section, values in layer.items():
            given = {f"{section}.{name}": source(origin, f"{section}.{name}") for name in values}
            try:
                final.setdefault(section, {}).update(_changes(getattr(cfg, section), values, section))
            except ConfigError as exc:
                raise _naming_sources(exc, {**sources, **given}) from None
            sources.update(given)
            origins.update(dict.fromkeys(given, origin))
    # The settings are checked once all layers are in, not after each one: a check of an intermediate state
    # refused `[train] stride = 40` above `[model] window = 64` in one file (the order of its sections mattered),
    # and a file's stride with `--window 64` or ANOMALY_MODEL_WINDOW=64, naming the default window 32.
    try:
        cfg = dataclasses.replace(
            cfg, **{section: dataclasses.replace(getattr(cfg, section), **v) for section, v in final.items()}
        )
    except ConfigError as exc:
        raise _naming_sources(exc, sources) from None
    if sources_out is not None:
        sources_out.update(sources)
    for line in _unused(cfg, {k: sources[k] for k, origin in origins.items() if origin != "option"}):
        if warn is None:
            log.warning("%s", line)
        else:
            warn(line)
    return cfg


def _unused(cfg: PipelineConfig, sources: Mapping[str, str | None]) -> list[str]:
    """One warning line for each setting given in a pipeline file or a variable that another setting leaves unused
    (it was kept without a word): a threshold kind's settings under another kind (each kind declares the settings it
    `reads`), `max_feature`'s floor under the mean score, background commits without transactions, SASL credentials
    and SSL files the security protocol does not use. Not an error: a
    layer of variables may set it for pipelines of either kind. Options are left to the commands, which refuse them
    (`--static-threshold` without `--threshold static`)."""
    kind = cfg.engine.threshold
    unused: dict[str, str | None] = {}
    for name in dict.fromkeys(n for cls in THRESHOLDS.values() for n in cls.reads):
        # each threshold kind's settings (dynamic_min, spot_q, ...): only static_threshold was warned about
        readers = [k for k, cls in THRESHOLDS.items() if name in cls.reads]
        given = getattr(cfg.engine, name) is not None  # (static_threshold = "" in a variable: unset)
        unused[f"engine.{name}"] = (
            f"engine.threshold is {kind}, not {' or '.join(readers)}"
            if kind not in readers and given
            else None
        )
    unused |= {
        "engine.feature_reference_floor": f"engine.score is {cfg.engine.score}, not max_feature"
        if cfg.engine.score != "max_feature"
        else None,
        "kafka.commit_in_background": "kafka.transactional is false (it commits a checkpoint's transaction)"
        if not cfg.kafka.transactional and cfg.kafka.commit_in_background
        else None,
    }
    # credentials and certificates the security protocol does not use (a password under PLAINTEXT): the Kafka
    # commands refuse them when they build their clients, every other command (and `anomaly config`) said nothing
    protocol = cfg.kafka.security_protocol
    for name, used_by, fits in (
        ("sasl_mechanism", "SASL", "SASL_PLAINTEXT or SASL_SSL"),
        ("sasl_username", "SASL", "SASL_PLAINTEXT or SASL_SSL"),
        ("sasl_password", "SASL", "SASL_PLAINTEXT or SASL_SSL"),
        ("ssl_cafile", "SSL", "SSL or SASL_SSL"),
        ("ssl_certfile", "SSL", "SSL or SASL_SSL"),
        ("ssl_keyfile", "SSL", "SSL or SASL_SSL"),
    ):
        unused[f"kafka.{name}"] = (
            f"kafka.security_protocol is {protocol}, not {fits}"
            if getattr(cfg.kafka, name) and used_by not in protocol
            else None
        )
    return [
        f"{key} (from {sources[key]}) has no effect: {why}"
        for key, why in unused.items()
        if why and sources.get(key)  # (not a layer built in code, such as a champion's settings)
    ]


def _naming_sources(exc: ConfigError, sources: Mapping[str, str | None]) -> ConfigError:
    """``exc`` with where its settings came from appended: ``(from environment variable ANOMALY_MODEL_WINDOW)`` for
    one, ``(train.stride from pipeline file p.toml, model.window from option --window)`` for a check between
    settings. A setting left at its default, or from an unnamed source, is not listed."""
    keys = [k for k in dict.fromkeys((exc.key, *exc.related)) if k and sources.get(k)]
    if not keys:
        return exc
    if len(keys) == 1:
        where = f"from {sources[keys[0]]}"
    else:
        where = ", ".join(f"{k} from {sources[k]}" for k in keys)
    return ConfigError(f"{exc} ({where})", key=exc.key, related=exc.related)


def load_config(
    pipeline: str | Path | None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    option_names: Mapping[str, str] | None = None,
    warn: Callable[[str], None] | None = None,
    sources_out: dict[str, str | None] | None = None,
) -> PipelineConfig:
    """The CLI's one entry point: pipeline file, then ANOMALY_* variables, then options (``sources_out``: as
    :func:`build_config`'s)."""
    return build_config(
        read_toml(pipeline) if pipeline else None,
        os.environ if env is None else env,
        overrides,
        toml_source=f"pipeline file {pipeline}" if pipeline else None,
        option_names=option_names,
        warn=warn,
        sources_out=sources_out,
    )


def validate(cfg: PipelineConfig) -> None:
    """Re-run every check (each settings object also checks itself when it is built)."""
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        type(section).__post_init__(section)
    PipelineConfig.__post_init__(cfg)


def redacted(cfg: PipelineConfig) -> dict[str, Any]:
    """The configuration as a dict with secrets masked, safe to log or print."""
    out = dataclasses.asdict(cfg)
    for name in SECRET_FIELDS:
        if out["kafka"].get(name):
            out["kafka"][name] = "***"
    return out

"""Pipeline settings as frozen dataclasses, parsed once from TOML, environment and command-line options.

Precedence (lowest to highest): dataclass defaults < pipeline TOML < ``ANOMALY_<SECTION>_<FIELD>`` environment
variables < command-line options. Library code takes these objects as arguments and never reads files or the
environment itself; only the CLI calls :func:`load_config`.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anomaly.errors import ConfigError


@dataclass(frozen=True)
class DataConfig:
    """How CSV files map to series: which columns are time, key, features and labels."""

    time_column: str = "timestamp"
    key_column: str | None = None
    features: tuple[str, ...] = ()  # empty: every numeric column that is not time, key or label
    label_columns: tuple[str, ...] = ("anomaly", "changepoint")
    label: str = "anomaly"  # the label column evaluation scores against
    separator: str | None = None  # None: detect ';' or ','
    drop_anomalies: bool = False  # drop rows labelled anomalous from training data
    train_rows: int | None = None  # use only the first N rows of each series for training (SKAB protocol)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the LSTM autoencoder."""

    window: int = 32
    hidden_size: int = 64
    num_layers: int = 1
    dropout: float = 0.0


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
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # autocast on CUDA (bf16 when supported, else fp16)
    threshold_quantile: float = 0.99
    threshold_factor: float = 1.5


@dataclass(frozen=True)
class EngineConfig:
    """Scoring, thresholds, alert lifecycle and data-hygiene policy of the streaming engine."""

    threshold: str = "static"  # static | dynamic
    score: str = (
        "mean"  # mean: mean error over features / reference | max_feature: max over features of err_f / ref_f
    )
    static_threshold: float | None = None  # score units; None: the bundle's calibrated default
    smoothing: float = 0.2  # EWMA alpha applied to point scores before thresholding (1.0 = none)
    dynamic_history: int = 512  # smoothed scores remembered per key for the dynamic threshold
    dynamic_warmup: int = 128  # points a key must see before the dynamic threshold may alert
    dynamic_min: float = 1.0  # the dynamic threshold never goes below this score
    alert_open_after: int = 3  # consecutive anomalous points that open an alert
    alert_close_after: int = 10  # consecutive normal points that close it
    top_features: int = 3
    max_gap_seconds: float = 300.0  # a larger gap resets the key's state
    duplicate_policy: str = "drop"  # drop | keep
    nan_policy: str = "reject"  # reject | ffill
    ttl_seconds: float = 86_400.0  # idle keys are evicted after this many seconds of event time
    max_keys: int = 100_000


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
    key_field: str = "key"
    time_field: str = "ts"
    values_field: str = "values"
    readings_field: str = "readings"
    max_message_bytes: int = 1_048_576
    checkpoint_interval_s: float = 5.0
    max_poll_records: int = 2000
    max_poll_interval_ms: int = 300_000
    session_timeout_ms: int = 10_000
    auto_offset_reset: str = "earliest"  # earliest | latest: where a group without committed offsets starts
    auto_create_topics: bool = False  # create missing input and output topics at start-up
    topic_partitions: int = 1  # partitions of topics created by auto_create_topics
    replication_factor: int = 1  # replicas of every topic the daemon creates (changelog included)
    transactional: bool = True  # outputs, checkpoints and offsets in one Kafka transaction (fences zombies)
    transactional_id: str = "anomaly-{group}-{host}-{pid}"  # {group}, {host}, {pid} replaced
    transaction_timeout_ms: int = 60_000
    max_request_bytes: int = 1_048_576  # producer max.request.size: keep <= the broker's message.max.bytes
    dead_letter_max_bytes: int = 900_000  # larger payloads are cut (original size and sha256 in headers)
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None


@dataclass(frozen=True)
class MetricsConfig:
    """The HTTP endpoint serving /metrics, /healthz and /readyz."""

    host: str = "127.0.0.1"
    port: int = 9108


@dataclass(frozen=True)
class ReplayConfig:
    """How `anomaly replay` turns engine output into point predictions and files."""

    predict: str = (
        "alert"  # alert: points inside an open alert are predicted anomalous | point: score > threshold
    )
    batch_readings: int = 4096  # readings per engine call (results do not depend on it)
    plots: bool = True
    parquet: bool = True


@dataclass(frozen=True)
class PipelineConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)


SECTIONS: dict[str, type] = {f.name: f.type for f in dataclasses.fields(PipelineConfig)}  # type: ignore[misc]
_SECTION_TYPES = typing.get_type_hints(PipelineConfig)
SECRET_FIELDS = frozenset({"sasl_password"})


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert a TOML or string value to the annotated field type, or raise ConfigError naming the key."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(value, inner, where)
    if origin is tuple:
        if isinstance(value, str):
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
                raise ValueError
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}", key=where) from None
    return value


def _apply(section_obj: Any, values: Mapping[str, Any], section: str) -> Any:
    hints = typing.get_type_hints(type(section_obj))
    valid = sorted(hints)
    changes = {}
    for name, value in values.items():
        if name not in hints:
            raise ConfigError(
                f"unknown setting {section}.{name}; valid settings: {', '.join(valid)}",
                key=f"{section}.{name}",
            )
        changes[name] = _coerce(value, hints[name], f"{section}.{name}")
    return dataclasses.replace(section_obj, **changes)


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"pipeline file not found: {p}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"pipeline file {p} is not valid TOML: {exc}") from None


def env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Collect ``ANOMALY_<SECTION>_<FIELD>`` variables into {section: {field: raw}}."""
    out: dict[str, dict[str, str]] = {}
    for name, raw in env.items():
        if not name.startswith("ANOMALY_"):
            continue
        rest = name[len("ANOMALY_") :].lower()
        for section in SECTIONS:
            if rest.startswith(section + "_"):
                out.setdefault(section, {})[rest[len(section) + 1 :]] = raw
                break
    return out


def build_config(
    toml: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> PipelineConfig:
    """Layer TOML, environment and ``{"section.field": value}`` overrides (None values are ignored)."""
    cfg = PipelineConfig()
    layers: list[Mapping[str, Mapping[str, Any]]] = []
    if toml:
        for section in toml:
            if section not in SECTIONS and section != "pipeline":
                raise ConfigError(f"unknown section [{section}]; valid sections: {', '.join(SECTIONS)}")
        layers.append({k: v for k, v in toml.items() if k in SECTIONS})
    if env:
        layers.append(env_overrides(env))
    if overrides:
        nested: dict[str, dict[str, Any]] = {}
        for dotted, value in overrides.items():
            if value is None:
                continue
            section, _, name = dotted.partition(".")
            nested.setdefault(section, {})[name] = value
        layers.append(nested)
    for layer in layers:
        for section, values in layer.items():
            if not isinstance(values, Mapping):
                raise ConfigError(f"[{section}] must be a table")
            cfg = dataclasses.replace(cfg, **{section: _apply(getattr(cfg, section), values, section)})
    validate(cfg)
    return cfg


def load_config(
    pipeline: str | Path | None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> PipelineConfig:
    """The CLI's one entry point: pipeline file, then ANOMALY_* variables, then options."""
    return build_config(
        read_toml(pipeline) if pipeline else None, os.environ if env is None else env, overrides
    )


def validate(cfg: PipelineConfig) -> None:
    def need(cond: bool, message: str) -> None:
        if not cond:
            raise ConfigError(message)

    need(cfg.model.window >= 2, "model.window must be at least 2")
    need(cfg.model.hidden_size >= 1, "model.hidden_size must be positive")
    need(cfg.model.num_layers >= 1, "model.num_layers must be positive")
    need(0.0 <= cfg.model.dropout < 1.0, "model.dropout must be in [0, 1)")
    need(cfg.train.epochs >= 1, "train.epochs must be positive")
    need(0.0 < cfg.train.val_fraction < 1.0, "train.val_fraction must be in (0, 1)")
    need(cfg.train.device in ("auto", "cpu", "cuda"), "train.device must be one of: auto, cpu, cuda")
    need(0 <= cfg.train.stride <= cfg.model.window, "train.stride must be between 0 and model.window")
    need(cfg.engine.threshold in ("static", "dynamic"), "engine.threshold must be one of: static, dynamic")
    need(cfg.engine.score in ("mean", "max_feature"), "engine.score must be one of: mean, max_feature")
    need(0.0 < cfg.engine.smoothing <= 1.0, "engine.smoothing must be in (0, 1]")
    need(
        cfg.engine.duplicate_policy in ("drop", "keep"), "engine.duplicate_policy must be one of: drop, keep"
    )
    need(cfg.engine.nan_policy in ("reject", "ffill"), "engine.nan_policy must be one of: reject, ffill")
    need(cfg.engine.alert_open_after >= 1, "engine.alert_open_after must be at least 1")
    need(cfg.engine.alert_close_after >= 1, "engine.alert_close_after must be at least 1")
    need(cfg.engine.max_keys >= 1, "engine.max_keys must be at least 1")
    need(cfg.replay.predict in ("alert", "point"), "replay.predict must be one of: alert, point")
    need(cfg.replay.batch_readings >= 1, "replay.batch_readings must be positive")
    need(cfg.engine.dynamic_history >= 16, "engine.dynamic_history must be at least 16")
    validate_kafka(cfg.kafka)


KAFKA_TOPIC_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _template(value: str, name: str, fields: tuple[str, ...]) -> None:
    import string

    used = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
    bad = [f for f in used if f not in fields]
    if bad:
        raise ConfigError(
            f"kafka.{name} may only use the placeholders {', '.join('{' + f + '}' for f in fields)}; "
            f"got {{{bad[0]}}}",
            key=f"kafka.{name}",
        )


def validate_kafka(k: KafkaConfig) -> None:
    def need(cond: bool, message: str, key: str) -> None:
        if not cond:
            raise ConfigError(message, key=f"kafka.{key}")

    need(
        k.auto_offset_reset in ("earliest", "latest"),
        "kafka.auto_offset_reset must be one of: earliest, latest",
        "auto_offset_reset",
    )
    need(k.topic_partitions >= 1, "kafka.topic_partitions must be at least 1", "topic_partitions")
    need(k.replication_factor >= 1, "kafka.replication_factor must be at least 1", "replication_factor")
    need(
        k.transaction_timeout_ms >= 1000,
        "kafka.transaction_timeout_ms must be at least 1000",
        "transaction_timeout_ms",
    )
    need(
        k.dead_letter_max_bytes >= 1024,
        "kafka.dead_letter_max_bytes must be at least 1024",
        "dead_letter_max_bytes",
    )
    need(k.max_request_bytes >= 4096, "kafka.max_request_bytes must be at least 4096", "max_request_bytes")
    need(bool(k.topics), "kafka.topics must name at least one topic", "topics")
    _template(k.changelog_topic, "changelog_topic", ("group", "topic"))
    _template(k.transactional_id, "transactional_id", ("group", "host", "pid"))


def changelog_topic(k: KafkaConfig, topic: str) -> str:
    """The changelog topic holding the state of input ``topic`` for this group (the template filled in;
    characters Kafka does not allow in topic names become ``_``)."""
    name = k.changelog_topic.format(group=k.group_id, topic=topic)
    return "".join(c if c in KAFKA_TOPIC_CHARS else "_" for c in name)[:249]


def redacted(cfg: PipelineConfig) -> dict[str, Any]:
    """The configuration as a dict with secrets masked, safe to log or print."""
    out = dataclasses.asdict(cfg)
    for name in SECRET_FIELDS:
        if out["kafka"].get(name):
            out["kafka"][name] = "***"
    return out

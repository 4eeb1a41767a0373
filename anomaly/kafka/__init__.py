"""The Kafka consumer daemon: decode messages into engine events, drive them through the one runner loop,
produce alerts/scores/dead letters, and checkpoint per-partition engine state to a compacted changelog topic
before committing offsets (exactly-once state, at-least-once output).

Modules: ``codec`` (bytes <-> events, alerts, windows, dead letters), ``clients`` (kafka-python settings,
SSL/SASL passthrough, start-up checks), ``changelog`` (state checkpoints), ``sinks``, ``source`` (poll ->
``Batch``, rebalances), ``checkpoint`` (flush -> snapshot -> commit) and ``daemon`` (lifecycle).
"""

from __future__ import annotations

from anomaly.errors import AnomalyError


class KafkaError(AnomalyError):
    """The broker cannot be reached, a topic is missing, or a Kafka setting is unusable."""


__all__ = ["KafkaError"]

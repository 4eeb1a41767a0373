"""Runner sinks that produce to Kafka: alerts, per-window scores and dead letters, over one shared producer.

``flush()`` returns only when every record sent so far is acknowledged by the broker (acks=all), and raises
:class:`DeliveryError` if any was refused for good; the checkpointer flushes before it commits offsets, so a
committed message always has its alerts on the broker.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import kafka.errors as kerr
from kafka import KafkaProducer

from anomaly.engine.types import EngineOutput
from anomaly.kafka import KafkaError
from anomaly.kafka.codec import alert_message, dead_letter, window_message
from anomaly.runner import Batch

log = logging.getLogger(__name__)


class DeliveryError(KafkaError):
    """The broker refused records for good (after the producer's retries): their offsets must not be committed."""


class Delivery:
    """The shared producer plus what failed on it; every sink sends through :meth:`send`."""

    def __init__(self, producer: KafkaProducer, flush_timeout_s: float = 60.0) -> None:
        self.producer = producer
        self.flush_timeout_s = flush_timeout_s
        self.failures = 0
        self.last_error: str = ""

    def _on_error(self, exc: BaseException) -> None:
        self.failures += 1
        self.last_error = type(exc).__name__

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Any:
        future = self.producer.send(topic, key=key, value=value, headers=headers)
        future.add_errback(self._on_error)
        return future

    def flush(self) -> None:
        """Block until everything sent is acknowledged; DeliveryError if anything was lost, KafkaError on timeout."""
        try:
            self.producer.flush(timeout=self.flush_timeout_s)
        except kerr.KafkaTimeoutError:
            raise KafkaError(
                f"producer flush timed out after {self.flush_timeout_s:.0f}s (broker away?)"
            ) from None
        if self.failures:
            n, self.failures = self.failures, 0
            raise DeliveryError(f"{n} record(s) were not delivered ({self.last_error})")


class AlertSink:
    """Alert lifecycle events as JSON (``Alert.to_json()``), keyed by entity."""

    def __init__(self, delivery: Delivery, topic: str) -> None:
        self.delivery = delivery
        self.topic = topic

    def write(self, out: EngineOutput, batch: Batch) -> None:
        for alert in out.alerts:
            key, value = alert_message(alert)
            self.delivery.send(self.topic, key, value)

    def flush(self) -> None:
        self.delivery.flush()

    def close(self) -> None:
        """The producer is shared: the daemon closes it after the final checkpoint."""


class ScoreSink(AlertSink):
    """One JSON record per scored window (see :func:`anomaly.kafka.codec.window_json`)."""

    def __init__(self, delivery: Delivery, topic: str, features: Sequence[str]) -> None:
        super().__init__(delivery, topic)
        self.features = list(features)

    def write(self, out: EngineOutput, batch: Batch) -> None:
        for window in out.windows:
            key, value = window_message(window, self.features)
            self.delivery.send(self.topic, key, value)


class DeadLetterSink(AlertSink):
    """Every refusal (source or engine) with a Kafka record behind it: original bytes, reason and position."""

    def write(self, out: EngineOutput, batch: Batch) -> None:
        for rejection in out.rejections:
            key, value, headers = dead_letter(rejection)
            self.delivery.send(self.topic, key, value, headers)

"""Sinks adapt engine output to the outside world. Files and memory here; Kafka sinks live in anomaly.kafka."""

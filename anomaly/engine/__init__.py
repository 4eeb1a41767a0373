"""The streaming scoring engine: per-key state, window assembly, batched scoring, thresholds, alerts."""

from __future__ import annotations

from anomaly.engine.engine import Engine
from anomaly.engine.state import StateError
from anomaly.engine.types import Alert, EngineOutput, Event, Rejection, ScoredWindow

__all__ = ["Alert", "Engine", "EngineOutput", "Event", "Rejection", "ScoredWindow", "StateError"]

"""The base of the engine's steps: what every step shares."""

from __future__ import annotations

from typing import TYPE_CHECKING

from anomaly.config import EngineConfig
from anomaly.engine.state import StateStore

if TYPE_CHECKING:  # settings.py imports the steps' helpers
    from anomaly.engine.settings import Settings


class Part:
    """A step of the engine over the state store, config and counters it shares with the other steps, and
    the settings of the model in use (all rebuilt by `Engine` when the model or the store changes)."""

    def __init__(
        self, store: StateStore, config: EngineConfig, counters: dict[str, int], s: Settings
    ) -> None:
        self.store = store
        self.config = config
        self.counters = counters  # the engine's counters, updated in place
        self.s = s

"""Every scored point carries the event time of the reading whose arrival decided it."""

from __future__ import annotations

import numpy as np

from anomaly.config import EngineConfig
from anomaly.engine import Engine, Event


def windows_in_blocks(bundle, s) -> list:
    engine = Engine(bundle, EngineConfig())
    windows = []
    for lo in range(0, len(s), 5):  # readings arrive in blocks that do not align with windows
        windows += engine.process([Event(s.key, s.timestamps[lo : lo + 5], s.values[lo : lo + 5])]).windows
    return windows


def test_a_window_is_decided_by_its_last_reading(window_bundle, test_series):
    """A reconstruction-only model scores whole windows."""
    s = test_series
    windows = windows_in_blocks(window_bundle, s)
    w = window_bundle.window
    assert len(windows) == len(s) // w
    for k, win in enumerate(windows):
        assert win.decided_at[0] == s.timestamps[(k + 1) * w - 1] == win.timestamps[-1]
        assert np.all(win.decided_at == win.timestamps[-1])
        assert np.all(win.decided_at >= win.timestamps)


def test_a_forecast_model_decides_each_reading_on_arrival(bundle, test_series):
    s = test_series
    windows = windows_in_blocks(bundle, s)
    assert len(windows) == len(s) // bundle.window  # reported per window, decided per reading
    for win in windows:
        assert np.array_equal(win.decided_at, win.timestamps)

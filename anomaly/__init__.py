"""anomaly: streaming anomaly detection for multivariate sensor streams.

A stateful LSTM autoencoder, trained offline, scores readings that arrive one message at a time (Kafka) or
from CSV replays, through one engine that carries each key's encoder state from window to window.
"""

from __future__ import annotations

__version__ = "0.1.0"

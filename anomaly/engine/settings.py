"""What the engine derives from a bundle and its config, once per model (`Engine` builds it at start and at
each reload): the parts of the engine read these instead of each taking them one by one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from anomaly.bundle import Bundle
from anomaly.config import EngineConfig
from anomaly.engine.scoring import feature_references
from anomaly.engine.stuck import stuck_limits
from anomaly.thresholds import THRESHOLDS, Threshold

# The largest standardized value the engine passes on (training standard deviations from the training mean).
# Real data stay far below it (a feature nearly constant in training, scale 1e-8, moving by 1e3 is 1e11); its
# square, 1e24, leaves float32's range (3.4e38) room for any reference error and feature count.
Z_LIMIT = 1e12


@dataclass(frozen=True, eq=False)
class Settings:
    bundle: Bundle
    model: torch.nn.Module
    window: int  # readings per reported ScoredWindow
    per_reading: bool  # a forecast model: each reading is scored on arrival
    unit: int  # readings per queued unit: 1 scored on arrival, else the window
    n_features: int
    # the features whose error scores a reading (model.targets); None: all. Context features are read by the
    # model but have error 0, no stuck rule and no share in alerts.
    targets: tuple[int, ...] | None
    mean: np.ndarray  # the scaler's, float64
    scale: np.ndarray
    reference: float  # the bundle's reference error: score 1.0
    feature_reference: np.ndarray | None  # engine.score = "max_feature": per-feature references
    max_gap: float  # a longer gap resets a key: engine.max_gap_seconds, else the gap training cut at
    static_threshold: float
    threshold: Threshold
    stuck_limit: np.ndarray | None  # per feature: identical readings in a row that count as stuck

    def standardize(self, raw: np.ndarray) -> np.ndarray:
        """Raw readings (float64) in the model's units, float32, each within ±:data:`Z_LIMIT`: a finite reading
        far beyond any sensor's range (a 1e25, or a sensor's 3.4e38 "no value" sentinel) is still a huge anomaly,
        but its squared error no longer overflows to inf (which the EWMA held, so the key scored inf for good)
        nor its float32 cast to an inf that reaches the model."""
        z = (raw - self.mean) / self.scale
        np.clip(z, -Z_LIMIT, Z_LIMIT, out=z)
        return z.astype(np.float32)

    @classmethod
    def of(cls, bundle: Bundle, config: EngineConfig) -> Settings:
        per_reading = bool(getattr(bundle.arch, "forecast", False))
        n_features = len(bundle.features)
        targets: tuple[int, ...] | None = getattr(bundle.arch, "targets", None)
        gap = config.max_gap_seconds
        return cls(
            bundle=bundle,
            model=bundle.model.eval(),
            window=bundle.window,
            per_reading=per_reading,
            unit=1 if per_reading else bundle.window,
            n_features=n_features,
            targets=targets,
            mean=bundle.scaler.mean.astype(np.float64),
            scale=bundle.scaler.scale.astype(np.float64),
            reference=bundle.reference_error,
            feature_reference=feature_references(bundle, config, n_features, targets),
            max_gap=gap if gap is not None else bundle.max_gap_seconds,
            static_threshold=float(
                config.static_threshold if config.static_threshold is not None else bundle.default_threshold
            ),
            threshold=THRESHOLDS[config.threshold](config, float(bundle.default_threshold)),
            stuck_limit=stuck_limits(bundle, config, n_features, targets),
        )

"""Detection-quality summaries: what the backtests write about the model and its baselines."""

from __future__ import annotations

import json

import numpy as np

from anomaly import evaluation
from anomaly.quality import Quality, ScorerPoints, assess


def test_without_a_labelled_anomaly_the_summary_is_strict_json():
    """Labels without an anomaly leave no oracle threshold: it is written as null (it was Infinity, which
    strict JSON readers refuse)."""
    counts = evaluation.count([0, 0, 0], [0, 1, 0], [0.0, 1.0, 2.0])
    points = evaluation.causal(np.array([0.1, 0.5, 0.2]), np.arange(3), np.nan)
    q = assess("model", [ScorerPoints(counts, points, np.zeros(3, bool))])
    assert (q.oracle_f1, q.oracle_threshold) == (0.0, float("inf"))
    out = q.to_json()
    assert out["oracle_threshold"] is None
    json.dumps(out, allow_nan=False)
    assert Quality("model", q.metrics, 0.5, 0.25).to_json()["oracle_threshold"] == 0.25

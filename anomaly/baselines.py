"""No-model baselines, scored by the same engine as the model: same windows, calibration, EWMA and thresholds.

Each baseline is a tiny scorer with the model's interface, ``forward(x, state) -> (reconstruction, state)``,
so :class:`~anomaly.engine.Engine` runs it unchanged and the only difference to the model is the
reconstruction. The state is carried through untouched (it is a (1, B, 1) placeholder). A baseline reads each
reading on its own, so it scores pieces of any length: it takes the model's architecture flags (e.g. how the
engine schedules scoring) and is scored on the same schedule as the model it is compared with.

- ``zscore``: reconstructs every standardized reading as 0, so the point error is the mean squared z-score of the
  inputs under the training scaler; the engine's EWMA makes it the smoothed mean z².
- ``pca``: reconstructs from the leading principal components of the standardized training rows (the part the
  model trains on, validation rows held out); the fewest components explaining ``PCA_VARIANCE`` of the variance,
  at most F - 1 so a residual is left. With one feature it has no component and equals ``zscore``.

:func:`fit_baselines` runs at training time and stores the baselines' parameters and calibration (fitted on the
same rows, with the same quantile, as the model's) in the bundle under ``calibration["baselines"]``;
:func:`baseline_bundle` turns a model bundle into a baseline bundle, so any backtest of a model can show the
baselines next to it without the training data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from anomaly.model import Architecture, CarriesState, State

if TYPE_CHECKING:
    from anomaly.bundle import Bundle
    from anomaly.config import TrainConfig
    from anomaly.data import Series

PCA_VARIANCE = 0.9  # label-free choice: components kept explain this share of the training variance
BASELINES = ("zscore", "pca")
# calibration entries measured on the training data, not on the model's errors (anomaly.training)
TRAINING_DATA_STATS = ("feature_distinct", "feature_wander", "feature_max_run")


class Scorer(CarriesState, nn.Module):
    """A stateless reconstruction baseline with the model's interface; (h, c) pass through unchanged."""

    kind = "baseline"

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.arch = arch

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, x: torch.Tensor, state: State | None = None, reconstruct: bool | None = None
    ) -> tuple[torch.Tensor, State]:
        """x (B, T, F) for any T (each reading is reconstructed on its own); `reconstruct` is accepted for
        the model's call signature and ignored."""
        if state is None:
            state = self.initial_state(x.shape[0], x.device, x.dtype)
        return self.reconstruct(x), state


class ZScoreScorer(Scorer):
    """Reconstruction 0: the error of a standardized reading is its squared z-score per feature."""

    kind = "zscore"

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


class PCAScorer(Scorer):
    """Projection on the kept principal components: x ≈ center + (x - center) V Vᵀ, V (F, F) with the unused
    columns zero."""

    kind = "pca"

    def __init__(self, arch: Architecture) -> None:
        super().__init__(arch)
        f = arch.n_features
        self.center: torch.Tensor
        self.components: torch.Tensor
        self.register_buffer("center", torch.zeros(f))
        self.register_buffer("components", torch.zeros(f, f))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        v = self.components.to(x.dtype)
        c = self.center.to(x.dtype)
        return (x - c) @ v @ v.T + c


KINDS: dict[str, type[Scorer]] = {"zscore": ZScoreScorer, "pca": PCAScorer}


def baseline_arch(like: Architecture) -> Architecture:
    """The model's architecture with a (1, B, 1) placeholder state: same features, window and scoring flags."""
    return dataclasses.replace(like, hidden_size=1, num_layers=1, dropout=0.0)


def fit_pca(rows: np.ndarray, variance: float = PCA_VARIANCE) -> tuple[np.ndarray, np.ndarray, int]:
    """(center (F,), components (F, F) with k leading eigenvectors then zero columns, k) of standardized rows."""
    x = np.asarray(rows, np.float64)
    f = x.shape[1]
    center = x.mean(axis=0)
    cov = np.cov(x - center, rowvar=False).reshape(f, f) if len(x) > 1 else np.zeros((f, f))
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = np.clip(eigval[order], 0.0, None), eigvec[:, order]
    total = eigval.sum()
    k = 0
    if total > 0 and f > 1:
        k = int(np.searchsorted(np.cumsum(eigval) / total, variance) + 1)
        k = min(k, f - 1)
    components = np.zeros((f, f))
    components[:, :k] = eigvec[:, :k]
    return center.astype(np.float32), components.astype(np.float32), k


def make_scorer(kind: str, arch: Architecture, params: dict[str, Any] | None = None) -> Scorer:
    """Baseline `kind` shaped like `arch` (a model's or a saved baseline's architecture)."""
    if kind not in KINDS:
        raise ValueError(f"unknown baseline {kind!r}; choose one of {', '.join(KINDS)}")
    scorer = KINDS[kind](baseline_arch(arch))
    if isinstance(scorer, PCAScorer) and params is not None:
        scorer.center.copy_(torch.as_tensor(np.asarray(params["center"], np.float32)))
        scorer.components.copy_(torch.as_tensor(np.asarray(params["components"], np.float32)))
    return scorer.eval()


def fit_baselines(
    scaled: Sequence[Series], train_parts: Sequence[np.ndarray], like: Architecture, cfg: TrainConfig
) -> dict[str, dict[str, Any]]:
    """Parameters and calibration of every baseline. `scaled` are the standardized training series (as the
    model's calibration sees them), `train_parts` their rows the model trains on (validation held out),
    `like` the model's architecture (features, window, targets: a baseline scores the same target features
    as the model, so the comparison stays fair)."""
    from anomaly.training import calibrate

    arch = Architecture(like.n_features, like.window, targets=like.targets)
    center, components, k = fit_pca(np.concatenate(list(train_parts)))
    params: dict[str, dict[str, Any]] = {
        "zscore": {},
        "pca": {"center": center.tolist(), "components": components.tolist(), "n_components": k},
    }
    out = {}
    for kind, p in params.items():
        scorer = make_scorer(kind, arch, p)
        out[kind] = {**p, "calibration": calibrate(scorer, scaled, cfg)}  # type: ignore[arg-type]
    return out


def baseline_bundle(bundle: Bundle, kind: str) -> Bundle:
    """The baseline `kind` of a model bundle: same features, scaler and window, its own calibration."""
    from anomaly.bundle import Bundle
    from anomaly.errors import BundleError

    stored = bundle.calibration.get("baselines", {})
    if kind not in stored:
        raise BundleError(
            f"bundle {bundle.version} carries no {kind!r} baseline; retrain it with this version"
        )
    params = stored[kind]
    scorer = make_scorer(kind, bundle.arch, params)
    meta = {**bundle.meta, "kind": kind, "model_version": f"{bundle.version}+{kind}"}
    # what training measured on the data itself (not on the model) holds for the baseline too: the engine's
    # rules that read it (stuck sensors) then apply to both sides of the comparison alike
    data = {k: bundle.calibration[k] for k in TRAINING_DATA_STATS if k in bundle.calibration}
    return Bundle(scorer, list(bundle.features), bundle.scaler, {**data, **params["calibration"]}, meta)

"""Model bundle: one file with the weights and JSON metadata, loaded without unpickling code.

The file is a ``torch.save`` of ``{"format": str, "meta": str (JSON), "weights": {name: tensor}}`` and is read
with ``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers. The metadata carries a
SHA-256 of the weights, so a file damaged in a way that still parses is caught too.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from anomaly.atomic import atomic_path
from anomaly.baselines import KINDS as BASELINE_KINDS
from anomaly.baselines import Scorer, make_scorer
from anomaly.data import FALLBACK_MAX_GAP_SECONDS, Scaler
from anomaly.errors import BundleError, OutputError, SchemaError
from anomaly.model import Architecture, LSTMAutoencoder

FORMAT = "anomaly-bundle/1"
MODEL_KIND = "lstm_autoencoder"  # meta["kind"] of a trained model; baselines.KINDS name the no-model scorers


@dataclass
class Bundle:
    model: LSTMAutoencoder | Scorer
    features: list[str]
    scaler: Scaler
    calibration: dict[
        str, Any
    ]  # point-error quantiles, per-feature error means, reference, default threshold
    meta: dict[str, Any] = field(
        default_factory=dict
    )  # version, created_at, fingerprint, training metrics...

    @property
    def arch(self) -> Architecture:
        return self.model.arch

    @property
    def window(self) -> int:
        return self.model.arch.window

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind", MODEL_KIND))

    @property
    def version(self) -> str:
        return str(self.meta.get("model_version", "unknown"))

    @property
    def reference_error(self) -> float:
        """Point error that maps to score 1.0 (the calibration quantile of validation errors)."""
        return float(self.calibration["reference_error"])

    @property
    def feature_reference_error(self) -> list[float] | None:
        """Per-feature error that maps to score 1.0 under `engine.score = "max_feature"`; None in bundles
        calibrated before it existed."""
        ref = self.calibration.get("feature_reference_error")
        return None if ref is None else [float(v) for v in ref]

    @property
    def targets(self) -> list[str]:
        """The features whose error scores a reading (model.targets); every feature in bundles made before
        targets existed."""
        idx = getattr(self.arch, "targets", None)
        return list(self.features) if idx is None else [self.features[i] for i in idx]

    @property
    def sampling_interval(self) -> float | None:
        """Median step between training readings, seconds; None in bundles trained before it was learnt."""
        value = self.meta.get("sampling", {}).get("interval_seconds")
        return None if value is None else float(value)

    @property
    def max_gap_seconds(self) -> float:
        """The gap at which training cut its series, and so the engine's default gap reset."""
        value = self.meta.get("sampling", {}).get("max_gap_seconds")
        return FALLBACK_MAX_GAP_SECONDS if value is None else float(value)

    @property
    def default_threshold(self) -> float:
        return float(self.calibration["default_threshold"])

    def check_columns(self, columns: Sequence[str], where: str = "data") -> None:
        """Fail naming the missing and extra numeric features, so a user sees what to fix."""
        have = list(columns)
        missing = [f for f in self.features if f not in have]
        extra = [c for c in have if c not in self.features]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if extra:
                parts.append(f"unexpected {', '.join(extra)}")
            raise SchemaError(
                f"{where} does not match the model's features: {'; '.join(parts)}",
                missing=missing,
                extra=extra,
            )

    def metadata(self) -> dict[str, Any]:
        return {
            **self.meta,
            "kind": self.kind,
            "features": self.features,
            "architecture": self.arch.to_json(),
            # how the engine scores this model: each reading on arrival (forecast head) or by whole windows
            "scoring": "per_reading" if self.arch.forecast else "window",
            "targets": self.targets,  # the scored features; the rest are context inputs
            "scaler": self.scaler.to_json(),
            "calibration": self.calibration,
        }


def _weights_digest(weights: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(weights):
        h.update(name.encode())
        h.update(weights[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_bundle(bundle: Bundle, path: str | Path) -> Path:
    """Write atomically, as every output (:func:`anomaly.atomic.atomic_path`: temporary file + rename, a device or
    named pipe written in place), so a crash never leaves a half-written bundle in place."""
    p = Path(path)
    if bundle.meta.get("quantization"):  # int8 weights: stored as plain int8 tensors + scales
        from anomaly.export import int8_weights

        weights = int8_weights(bundle.model)
    else:
        weights = {k: v.detach().cpu().clone() for k, v in bundle.model.state_dict().items()}
    bad = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad or not math.isfinite(bundle.reference_error) or not math.isfinite(bundle.default_threshold):
        raise BundleError(
            f"refusing to save {p}: the model has non-finite {'weights' if bad else 'calibration'}",
            path=str(p),
        )
    meta = bundle.metadata()
    meta["weights_sha256"] = _weights_digest(weights)
    payload = {"format": FORMAT, "meta": json.dumps(meta, sort_keys=True), "weights": weights}
    try:
        with atomic_path(path, "model bundle") as tmp:
            torch.save(payload, tmp)
    except OutputError as exc:  # a BundleError, as every other failure to read or write a bundle
        raise BundleError(str(exc), path=str(p)) from None
    return p


def short_reason(reason: str, limit: int = 120) -> str:
    """A library's message cut for one error line: at the last full sentence within `limit` characters, else at
    `limit` with an ellipsis (never mid-word without saying so, as "... If yo)" was)."""
    if len(reason) <= limit:
        return reason
    cut = reason[:limit]
    stop = cut.rfind(". ")
    return cut[: stop + 1] if stop >= limit // 3 else cut.rstrip() + "..."


def _zip_but_not_torch(path: Path) -> bool:
    """True for a readable zip archive without torch.save's `<name>/data.pkl`; False for a torch archive and for
    a damaged one (which torch then reports as truncated or corrupted)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return not any(n.count("/") == 1 and n.endswith("/data.pkl") for n in names)


def read_metadata(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    p = Path(path)
    if not p.is_file():
        raise BundleError(f"model bundle not found: {p}", path=str(p))
    with p.open("rb") as fh:
        magic = fh.read(4)
    if not magic:  # a copy to a full disk, a `> model.pt`: say so rather than "not a PyTorch archive"
        raise BundleError(f"{p} is an empty file, not an anomaly model bundle", path=str(p))
    if magic != b"PK\x03\x04":  # torch.save writes a zip archive
        raise BundleError(f"{p} is not an anomaly model bundle (not a PyTorch archive)", path=str(p))
    if _zip_but_not_torch(p):  # a zip archive of something else, e.g. a bundle zipped for transfer
        raise BundleError(
            f"{p} is not an anomaly model bundle (a zip archive that torch.save did not write)", path=str(p)
        )
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(
            f"cannot read model bundle {p}: file is truncated or corrupted ({short_reason(reason)})",
            path=str(p),
        ) from None
    if not isinstance(payload, dict) or "format" not in payload:
        raise BundleError(f"{p} is not an anomaly model bundle (expected format {FORMAT})", path=str(p))
    if payload["format"] != FORMAT:
        raise BundleError(
            f"{p} is bundle format {payload['format']!r}; this version reads {FORMAT}", path=str(p)
        )
    try:
        meta = json.loads(payload["meta"])
        weights = payload["weights"]
    except (KeyError, TypeError, json.JSONDecodeError):
        raise BundleError(f"{p}: bundle metadata is corrupted", path=str(p)) from None
    if not isinstance(meta, dict):
        raise BundleError(f"{p}: bundle metadata is corrupted (not a JSON object)", path=str(p))
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    ):
        raise BundleError(f"{p}: bundle weights are corrupted (not named tensors)", path=str(p))
    if _weights_digest(weights) != meta.get("weights_sha256"):
        raise BundleError(f"{p}: weights do not match their checksum; the file is corrupted", path=str(p))
    check_metadata(meta, p)
    return meta, weights


def check_metadata(meta: Any, path: str | Path) -> None:
    """Refuse metadata that would score wrongly or fail mid-stream: the checksum covers the weights only, so a
    hand-edited or damaged metadata block (a scale of 0 makes every standardized reading infinite, a scaler or
    architecture for another number of features breaks the first batch) is caught here, when the file is read,
    by every command (inspect, replay, the daemon's start and hot reload) and for ONNX exports alike."""

    def bad(reason: str) -> BundleError:
        return BundleError(f"{path}: bundle does not describe a valid model ({reason})", path=str(path))

    if not isinstance(meta, dict):
        raise bad("the metadata is not a JSON object")
    features, arch, scaler, cal = (meta.get(k) for k in ("features", "architecture", "scaler", "calibration"))
    if not isinstance(features, list) or not features or not all(isinstance(f, str) for f in features):
        raise bad("features is not a list of names")
    n = len(features)
    if not isinstance(arch, dict) or arch.get("n_features") != n:
        got = arch.get("n_features") if isinstance(arch, dict) else arch
        raise bad(f"the architecture is for {got} features, the bundle names {n}")
    if not isinstance(scaler, dict):
        raise bad("no scaler")
    for part in ("mean", "scale"):
        values = scaler.get(part)
        if not isinstance(values, list) or len(values) != n:
            raise bad(
                f"scaler {part} has {len(values) if isinstance(values, list) else 'no'} values for {n} features"
            )
        if not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
        ):
            raise bad(f"scaler {part} has a value that is not a finite number")
    zero = [f for f, v in zip(features, scaler["scale"], strict=True) if v <= 0]
    if zero:
        raise bad(f"scaler scale is not positive for {', '.join(zero)}")
    if not isinstance(cal, dict):
        raise bad("no calibration")
    for key in ("reference_error", "default_threshold"):
        value = cal.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise bad(f"calibration {key} is {value!r}, not a finite number")


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """A bundle file, an int8 bundle (`anomaly export --format int8`) or an ONNX export (`.onnx`, needs
    onnxruntime): all three score through the engine alike."""
    if str(path).endswith(".onnx"):
        from anomaly.export import load_onnx_bundle

        return load_onnx_bundle(path)
    meta, weights = read_metadata(path)
    try:
        arch = Architecture(**meta["architecture"])
        kind = str(meta.get("kind", MODEL_KIND))
        model: LSTMAutoencoder | Scorer
        if kind in BASELINE_KINDS:
            model = make_scorer(kind, arch)
            model.load_state_dict(weights)
        elif kind == MODEL_KIND and meta.get("quantization"):
            from anomaly.export import int8_model

            model = int8_model(arch, weights)
        elif kind == MODEL_KIND:
            model = LSTMAutoencoder(arch)
            model.load_state_dict(weights)
        else:
            raise BundleError(f"{path}: unknown model kind {kind!r}", path=str(path))
        scaler = Scaler.from_json(meta["scaler"])
        features = list(meta["features"])
        calibration = dict(meta["calibration"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise BundleError(
            f"{path}: bundle does not describe a valid model ({str(exc).splitlines()[0][:120]})",
            path=str(path),
        ) from None
    model.to(device).eval()
    derived = ("architecture", "scaler", "features", "calibration", "scoring", "targets")
    rest = {k: v for k, v in meta.items() if k not in derived}
    return Bundle(model, features, scaler, calibration, rest)

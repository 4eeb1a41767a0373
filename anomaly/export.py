"""Export a bundle for CPU scoring: int8 weights (a smaller file, scored in float32) and ONNX of the scoring step.

**int8.** A storage format: every LSTM and linear weight matrix is stored as int8 values with one scale per
tensor (symmetric, zero point 0; the numbers ``quantize_dynamic``'s weight observer gives), biases in float32.
The result is an ordinary bundle: the same file format, read with ``torch.load(weights_only=True)``, the int8
weights as plain tensors (``<param>`` int8, ``<param>.scale`` float64, ``<param>.zero_point`` int64). Loading
dequantises them into an ordinary float32 model (:class:`Int8Autoencoder`), so scoring is float32 arithmetic on
the int8-rounded weights: a key's numbers do not depend on the other keys of its engine call or on how its
readings are grouped, and replay predicts the daemon bit for bit, as with float32. (Until session 17 the
model ran through PyTorch's dynamic quantisation, whose activation scale came from each call's whole input;
those bundles, ``meta["quantization"]["scheme"] == "dynamic"``, hold the same tensors and now load this way.)

**ONNX.** The exported graph is one engine step: ``(x, h, c) -> (recon, h_out, c_out)`` with x ``(B, window,
F)`` standardized readings, h and c ``(layers, B, hidden)``, B dynamic. The bundle's metadata (features,
scaler, calibration, ...) travels in the model's ``metadata_props["anomaly_bundle"]``, so one ``.onnx`` file is
enough for `anomaly replay`/`consume` (through onnxruntime, the optional ``export`` extra) or any other
runtime. Every export is validated against PyTorch on a chain of windows with carried state.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from anomaly.atomic import write_bytes
from anomaly.bundle import Bundle, check_metadata, save_bundle, short_reason
from anomaly.data import Scaler
from anomaly.errors import AnomalyError, BundleError, OutputError, extra_hint
from anomaly.model import Architecture, LSTMAutoencoder, ModelOutput, State

# weight-only int8: int8 weights in the file, float32 arithmetic when scoring. Bundles written before session 17
# say {"scheme": "dynamic", ...}: the same tensors, loaded and scored the same way now (see `int8_model`).
INT8 = {"scheme": "weight_only", "dtype": "qint8", "compute": "float32", "modules": ["LSTM", "Linear"]}
ONNX_OPSET = 17
ONNX_META_KEY = "anomaly_bundle"
ONNX_TOLERANCE = 1e-5


class ExportError(AnomalyError):
    """An export that cannot be made or does not reproduce the PyTorch model."""


# --- int8 ------------------------------------------------------------------------------------------------------


def quantize_tensor(w: torch.Tensor) -> tuple[torch.Tensor, float]:
    """`w` as int8 values and one scale, per-tensor symmetric (zero point 0): the scheme and numbers of
    ``quantize_dynamic``'s default weight observer (scale = max|w| / 127.5, at least float32's eps), so a bundle
    written now holds the same int8 tensors as one written by the dynamic scheme."""
    w = w.detach().cpu().float()
    amax = w.abs().max() if w.numel() else torch.tensor(0.0)
    scale = torch.clamp(amax / 127.5, min=torch.finfo(torch.float32).eps)
    # as torch.quantize_per_tensor (deprecated) rounds: times the float32 inverse scale, half to even
    q = torch.clamp(torch.round(w * (1.0 / scale)), -128, 127).to(torch.int8)
    return q, float(scale)


def dequantize(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The float32 state dict an int8 bundle's tensors stand for: each int8 tensor ``q`` with its ``.scale`` and
    ``.zero_point`` becomes ``(q - zero_point) * scale`` in float32; every other tensor is kept."""
    out: dict[str, torch.Tensor] = {}
    for key, t in weights.items():
        if key.endswith((".scale", ".zero_point")) and key.rsplit(".", 1)[0] in weights:
            continue
        if t.dtype == torch.int8:
            try:
                scale, zero = weights[key + ".scale"], weights[key + ".zero_point"]
            except KeyError as exc:
                raise BundleError(f"int8 bundle lacks weight {exc.args[0]}") from None
            out[key] = (t.float() - float(zero)) * torch.tensor(float(scale), dtype=torch.float32)
        else:
            out[key] = t
    return out


class Int8Autoencoder(LSTMAutoencoder):
    """An LSTMAutoencoder whose weights are int8 values times a per-tensor scale, scored in ordinary float32.

    ``stored`` keeps the int8 tensors and scales it was built from, which is what an int8 bundle file holds, so
    saving writes back exactly what was loaded. Because the arithmetic is float32, a key's numbers do not depend
    on which keys share its engine call or on how its readings are grouped (unlike dynamic quantisation, which
    chose each call's activation scale from the whole input)."""

    def __init__(self, arch: Architecture, stored: dict[str, torch.Tensor]) -> None:
        super().__init__(arch)
        self.stored = {k: v.detach().cpu().clone() for k, v in stored.items()}
        floats = dequantize(self.stored)
        expected = set(self.state_dict())
        missing = sorted(expected - set(floats))
        if missing:
            raise BundleError(f"int8 bundle lacks weight {missing[0]}")
        unknown = sorted(set(floats) - expected)
        if unknown:
            raise BundleError(f"int8 bundle has unknown weights: {', '.join(unknown[:5])}")
        self.load_state_dict(floats)
        self.eval()


def int8_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """What `save_bundle` writes for an int8 bundle: the int8 tensors, their scales and zero points, and the
    float biases."""
    if not isinstance(model, Int8Autoencoder):
        raise BundleError(
            f"an int8 bundle's model must come from export or load, not a {type(model).__name__}"
        )
    return dict(model.stored)


def int8_model(arch: Architecture, weights: dict[str, torch.Tensor]) -> Int8Autoencoder:
    """The model of an int8 bundle file. Bundles written before session 17 (``meta["quantization"]["scheme"]``
    "dynamic") hold the same tensors and load the same way: they are scored in float32 too."""
    return Int8Autoencoder(arch, weights)


def to_int8(bundle: Bundle) -> Bundle:
    """The bundle with int8 weights (every LSTM and linear weight matrix, per-tensor symmetric; biases stay
    float32), computed in float32; a new version, the parent recorded."""
    if bundle.meta.get("quantization"):
        raise ExportError(f"model {bundle.version} is already quantised")
    if not isinstance(bundle.model, LSTMAutoencoder):
        raise ExportError(f"only an LSTM autoencoder bundle can be quantised, not a {bundle.kind} baseline")
    stored: dict[str, torch.Tensor] = {}
    for key, t in bundle.model.state_dict().items():
        if t.dim() == 2:  # the weight matrices of every LSTM and linear layer; vectors are biases
            q, scale = quantize_tensor(t)
            stored[key] = q
            stored[key + ".scale"] = torch.tensor(scale, dtype=torch.float64)
            stored[key + ".zero_point"] = torch.tensor(0, dtype=torch.int64)
        else:
            stored[key] = t.detach().cpu().clone()
    meta = copy.deepcopy(bundle.meta)
    meta["quantization"] = copy.deepcopy(INT8)
    meta["export"] = {"format": "int8", "parent_version": bundle.version}
    meta["model_version"] = f"{bundle.version}-int8"
    model = Int8Autoencoder(bundle.arch, stored)
    return Bundle(model, bundle.features, bundle.scaler, dict(bundle.calibration), meta)


# --- ONNX ------------------------------------------------------------------------------------------------------


class _Step(nn.Module):
    """The engine's call with (h, c) as separate tensors: what ONNX exports."""

    def __init__(self, model: LSTMAutoencoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        out, (h2, c2) = self.model(x, (h, c), reconstruct=not self.model.arch.forecast)
        return _prediction(out), h2, c2


def _prediction(out: Any) -> torch.Tensor:
    """What scores a reading: the forecast of a forecast model (any number of readings), else the window
    reconstruction. The ONNX step's first output ("recon") carries it."""
    return out.forecast if out.forecast is not None else out.reconstruction


def _require_onnx(what: str = "ONNX export") -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise ExportError(
            f"{what} needs the optional packages onnx and onnxruntime: {extra_hint('export')}"
        ) from None
    return onnx, onnxruntime


def _session(ort: Any, model_bytes: bytes, threads: int | None = None) -> Any:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or max(1, torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def export_onnx(bundle: Bundle, path: str | Path, *, validate_windows: int = 8) -> tuple[Path, float]:
    """Write the stateful step as ONNX with the bundle's metadata; returns (path, max |ONNX - PyTorch|).

    Validation runs `validate_windows` consecutive windows of a batch of 3 random series through both, carrying
    (h, c) from each call to the next, and fails (nothing written) above :data:`ONNX_TOLERANCE`."""
    onnx, ort = _require_onnx()
    if bundle.meta.get("quantization"):
        raise ExportError("export ONNX from the float32 bundle, not from an int8 one")
    if not isinstance(bundle.model, LSTMAutoencoder):
        raise ExportError(f"only an LSTM autoencoder bundle can be exported, not a {bundle.kind} baseline")
    model = copy.deepcopy(bundle.model).cpu().eval()
    a = model.arch
    x = torch.zeros(2, a.window, a.n_features)
    h, c = model.initial_state(2)
    seq = {0: "batch", 1: "time"} if a.forecast else {0: "batch"}  # a forecast model takes any length

    buf: Any = io.BytesIO()  # torch.onnx.export accepts a file-like object
    state_batch = {1: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Step(model).eval(),
            (x, h, c),
            buf,
            input_names=["x", "h", "c"],
            output_names=["recon", "h_out", "c_out"],
            dynamic_axes={
                "x": seq,
                "h": state_batch,
                "c": state_batch,
                "recon": seq,
                "h_out": state_batch,
                "c_out": state_batch,
            },
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    proto = onnx.load_from_string(buf.getvalue())
    meta = copy.deepcopy(bundle.metadata())
    meta.pop("weights_sha256", None)  # the float parent's checksum: it describes nothing in this file
    meta["export"] = {"format": "onnx", "opset": ONNX_OPSET, "parent_version": bundle.version}
    meta["model_version"] = f"{bundle.version}-onnx"
    entry = proto.metadata_props.add()
    entry.key, entry.value = ONNX_META_KEY, json.dumps(meta, sort_keys=True)
    data = proto.SerializeToString()
    diff = validate_onnx(model, _session(ort, data, 1), validate_windows)
    if not diff <= ONNX_TOLERANCE:
        raise ExportError(
            f"ONNX export differs from PyTorch by {diff:.3g} (tolerance {ONNX_TOLERANCE:g}); not written"
        )
    p = Path(path)
    try:
        write_bytes(p, data, "ONNX model")
    except OutputError as exc:  # as save_bundle: name the file asked for, not the temporary one
        raise ExportError(str(exc)) from None
    return p, diff


def validate_onnx(model: LSTMAutoencoder, session: Any, windows: int = 8, batch: int = 3) -> float:
    """Max absolute difference of recon, h and c between ONNX and PyTorch over a chain of windows."""
    a = model.arch
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, windows * a.window, a.n_features, generator=gen) * 1.5
    ht, ct = model.initial_state(batch)
    hn, cn = ht.numpy(), ct.numpy()
    worst = 0.0
    with torch.inference_mode():
        for k in range(windows):
            xk = x[:, k * a.window : (k + 1) * a.window]
            out, (ht, ct) = model(xk, (ht, ct), reconstruct=not a.forecast)
            recon = _prediction(out)
            r, hn, cn = session.run(None, {"x": xk.numpy(), "h": hn, "c": cn})
            for got, want in ((r, recon), (hn, ht), (cn, ct)):
                worst = max(worst, float(np.abs(got - want.numpy()).max()))
    return worst


class OnnxStep:
    """An ONNX step behind the model interface the engine uses: ``model(x, (h, c)) -> (recon, (h, c))`` on
    CPU tensors, plus ``arch``, ``window``, ``initial_state`` and ``eval``."""

    def __init__(self, session: Any, arch: Architecture) -> None:
        self.session = session
        self.arch = arch

    @property
    def window(self) -> int:
        return self.arch.window

    def eval(self) -> OnnxStep:
        return self

    def to(self, *_: Any, **__: Any) -> OnnxStep:
        return self

    def initial_state(self, batch: int, device: Any = None, dtype: Any = torch.float32) -> State:
        shape = (self.arch.num_layers, batch, self.arch.hidden_size)
        return torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)

    def __call__(
        self, x: torch.Tensor, state: State | None = None, reconstruct: bool | None = None
    ) -> tuple[ModelOutput, State]:
        if state is None:
            state = self.initial_state(x.shape[0])
        h, c = state
        r, h2, c2 = self.session.run(
            None,
            {
                "x": np.ascontiguousarray(x.numpy(), np.float32),
                "h": np.ascontiguousarray(h.numpy(), np.float32),
                "c": np.ascontiguousarray(c.numpy(), np.float32),
            },
        )
        pred = torch.from_numpy(r)
        out = ModelOutput(None, pred) if self.arch.forecast else ModelOutput(pred, None)
        return out, (torch.from_numpy(h2), torch.from_numpy(c2))


def load_onnx_bundle(path: str | Path) -> Bundle:
    """A bundle whose model runs through onnxruntime; its metadata comes from the file itself."""
    onnx, ort = _require_onnx(f"reading the ONNX model {path}")
    p = Path(path)
    if not p.is_file():
        raise BundleError(f"model bundle not found: {p}", path=str(p))
    data = p.read_bytes()
    if not data:  # an empty protobuf parses as an empty model: say what it is
        raise BundleError(f"{p} is an empty file, not an ONNX model", path=str(p))
    try:
        proto = onnx.load_from_string(data)
        meta = json.loads(next(e.value for e in proto.metadata_props if e.key == ONNX_META_KEY))
    except StopIteration:
        raise BundleError(f"{p} is an ONNX model without anomaly bundle metadata", path=str(p)) from None
    except Exception as exc:  # protobuf raises many types for damaged files
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BundleError(f"cannot read ONNX model {p} ({short_reason(reason)})", path=str(p)) from None
    check_metadata(meta, p)  # as a bundle's: a damaged block fails here, in one line, not mid-stream
    try:
        arch = Architecture(**meta["architecture"])
    except (TypeError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:120]
        raise BundleError(f"{p}: bundle does not describe a valid model ({reason})", path=str(p)) from None
    try:
        session = _session(ort, data)
    except Exception as exc:  # onnxruntime raises its own types for a graph it cannot run
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BundleError(f"cannot read ONNX model {p} ({short_reason(reason)})", path=str(p)) from None
    scaler = Scaler.from_json(meta["scaler"])
    derived = (
        "architecture",
        "scaler",
        "features",
        "calibration",
        "weights_sha256",
    )  # exports before session 16
    rest = {k: v for k, v in meta.items() if k not in derived}  # carried the parent's checksum
    model: Any = OnnxStep(session, arch)
    return Bundle(model, list(meta["features"]), scaler, dict(meta["calibration"]), rest)


# --- the command's entry point ---------------------------------------------------------------------------------


def export(bundle: Bundle, fmt: str, out: str | Path) -> tuple[Path, dict[str, Any]]:
    """Write `bundle` as `fmt` (int8 | onnx) to `out`; returns the path and a summary for the user."""
    if fmt == "int8":
        q = to_int8(bundle)
        path = save_bundle(q, out)
        return path, {"format": "int8", "model_version": q.version}
    if fmt == "onnx":
        path, diff = export_onnx(bundle, out)
        return path, {"format": "onnx", "model_version": f"{bundle.version}-onnx", "max_abs_diff": diff}
    raise ValueError(f"export format must be one of: int8, onnx (got {fmt!r})")

"""Export a bundle for CPU scoring: dynamic int8 quantisation, and ONNX of the stateful scoring step.

**int8.** Every ``nn.LSTM`` and ``nn.Linear`` of the model is quantised dynamically (weights int8 per tensor,
symmetric; activations quantised on the fly), the scheme of ``torch.ao.quantization.quantize_dynamic``. The
result is an ordinary bundle: the same file format, read with ``torch.load(weights_only=True)``, so quantised
weights are stored as plain tensors (``<param>`` int8, ``<param>.scale`` float64, ``<param>.zero_point``
int64) and the packed modules are rebuilt from exactly those numbers on load. The engine, replay and the
daemon load it like any bundle (``meta["quantization"]`` says what it is).

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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from anomaly.atomic import write_bytes
from anomaly.bundle import Bundle, check_metadata, save_bundle, short_reason
from anomaly.data import Scaler
from anomaly.errors import AnomalyError, BundleError, OutputError
from anomaly.model import Architecture, LSTMAutoencoder, ModelOutput, State

INT8 = {"scheme": "dynamic", "dtype": "qint8", "modules": ["LSTM", "Linear"]}
ONNX_OPSET = 17
ONNX_META_KEY = "anomaly_bundle"
ONNX_TOLERANCE = 1e-5


class ExportError(AnomalyError):
    """An export that cannot be made or does not reproduce the PyTorch model."""


# --- int8 ------------------------------------------------------------------------------------------------------


def _quantize_dynamic(model: nn.Module) -> nn.Module:
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model).cpu().eval(), {nn.LSTM, nn.Linear}, dtype=torch.qint8
        )


def _quantized_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    from torch.ao.nn.quantized import dynamic as nnqd

    for name, module in model.named_modules():
        if isinstance(module, nnqd.LSTM | nnqd.Linear):
            yield name, module


def _weights_of(module: Any) -> dict[str, torch.Tensor]:
    """A dynamic module's weights and biases by parameter name (quantised tensors for the weights)."""
    from torch.ao.nn.quantized import dynamic as nnqd

    if isinstance(module, nnqd.Linear):
        out = {"weight": module.weight()}
        if module.bias() is not None:
            out["bias"] = module.bias()
        return out
    wb = module._weight_bias()
    return {**wb["weight"], **wb["bias"]}


def int8_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Plain-tensor weights of a quantised model: what `save_bundle` writes for an int8 bundle."""
    out: dict[str, torch.Tensor] = {}
    quantized_prefixes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, module in _quantized_modules(model):
            quantized_prefixes.append(name + ".")
            for pname, t in _weights_of(module).items():
                key = f"{name}.{pname}"
                if t.is_quantized:
                    out[key] = t.int_repr().clone()
                    out[key + ".scale"] = torch.tensor(float(t.q_scale()), dtype=torch.float64)
                    out[key + ".zero_point"] = torch.tensor(int(t.q_zero_point()), dtype=torch.int64)
                else:
                    out[key] = t.detach().clone()
    for key, t in model.state_dict().items():  # anything left in float (none in the current model)
        if isinstance(t, torch.Tensor) and not any(key.startswith(p) for p in quantized_prefixes):
            out[key] = t.detach().cpu().clone()
    return out


def int8_model(arch: Architecture, weights: dict[str, torch.Tensor]) -> LSTMAutoencoder:
    """Rebuild a quantised model from :func:`int8_weights` bit for bit (no re-quantisation)."""
    model: Any = _quantize_dynamic(LSTMAutoencoder(arch))
    used: set[str] = set()

    def tensor(key: str) -> torch.Tensor:
        if key not in weights:
            raise BundleError(f"int8 bundle lacks weight {key}")
        used.add(key)
        t = weights[key]
        if t.dtype == torch.int8:
            scale = float(weights[key + ".scale"])
            zero = int(weights[key + ".zero_point"])
            used.update({key + ".scale", key + ".zero_point"})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return torch._make_per_tensor_quantized_tensor(t, scale, zero)
        return t

    from torch.ao.nn.quantized import dynamic as nnqd

    for name, module_ in _quantized_modules(model):
        module: Any = module_
        names = _weights_of(module)
        got = {p: tensor(f"{name}.{p}") for p in names}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if isinstance(module, nnqd.Linear):
                module.set_weight_bias(got["weight"], got.get("bias"))
            else:
                module.set_weight_bias(got)
    rest = {k: v for k, v in weights.items() if k not in used}
    if rest:
        missing, unexpected = model.load_state_dict(rest, strict=False)
        if unexpected:
            raise BundleError(f"int8 bundle has unknown weights: {', '.join(sorted(unexpected)[:5])}")
    return model.eval()


def to_int8(bundle: Bundle) -> Bundle:
    """The bundle with a dynamically quantised model; a new version, the parent recorded."""
    if bundle.meta.get("quantization"):
        raise ExportError(f"model {bundle.version} is already quantised")
    if not isinstance(bundle.model, LSTMAutoencoder):
        raise ExportError(f"only an LSTM autoencoder bundle can be quantised, not a {bundle.kind} baseline")
    meta = copy.deepcopy(bundle.meta)
    meta["quantization"] = dict(INT8)
    meta["export"] = {"format": "int8", "parent_version": bundle.version}
    meta["model_version"] = f"{bundle.version}-int8"
    model: Any = _quantize_dynamic(bundle.model)  # still an LSTMAutoencoder, with dynamic int8 submodules
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


def _require_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise ExportError(
            "ONNX export needs the optional packages onnx and onnxruntime: pip install 'anomaly[export]'"
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
    onnx, ort = _require_onnx()
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

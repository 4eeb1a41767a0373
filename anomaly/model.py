"""LSTMAutoencoder: a stateful encoder whose (h, c) carries from one reading of a series to the next, with a
window reconstruction head and a one-step forecast head.

Shapes: x is (B, T, F); state is a pair (h, c), each (num_layers, B, hidden). The encoder runs over all T steps
in one LSTM call starting from `state`.

- Forecast head (``Architecture.forecast``): a linear map of the encoder's top-layer output after reading t-1
  predicts reading t, so ``outputs.forecast[:, t]`` is known before x[:, t] arrives (for t = 0 it comes from the
  carried state). Its error scores a reading the moment it arrives, with any T (no window needed).
- Reconstruction head: at the end of every window (T a multiple of `window`) the top-layer output is the
  window's code; an LSTM decoder fed the code repeated `window` times reconstructs the window in reverse order
  and a linear head maps back to F features. Used as a training objective (it makes the state summarise the
  window) and, for bundles without a forecast head, as the score.

Because both heads only read the encoder's outputs, scoring a series piece by piece with the carried state
equals scoring it in one call.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

State = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Architecture:
    n_features: int
    window: int
    hidden_size: int = 64
    num_layers: int = 1
    dropout: float = 0.0
    forecast: bool = False  # one-step forecast head; False in bundles made before it existed
    # indices of the features whose error scores a reading (the "targets"); the others are context inputs
    # (commands, setpoints, operating mode) the model reads but is not judged on. None: every feature.
    targets: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.targets is None:
            return
        t = tuple(int(i) for i in self.targets)  # JSON gives a list
        if not t or len(set(t)) != len(t) or not all(0 <= i < self.n_features for i in t):
            raise ValueError(f"targets must be distinct feature indices in [0, {self.n_features}), got {t}")
        every = sorted(t) == list(range(self.n_features))
        object.__setattr__(self, "targets", None if every else tuple(sorted(t)))

    def to_json(self) -> dict:
        out = asdict(self)
        if self.targets is None:  # bundles that score every feature keep the metadata they always had
            out.pop("targets")
        else:
            out["targets"] = list(self.targets)
        return out


def parameter_count(arch: Architecture) -> int:
    """The number of weights of :class:`LSTMAutoencoder` for ``arch``, without building it: each LSTM layer has
    4 * hidden * (input + hidden + 2) (two weight matrices and two biases; the first encoder layer's input is the
    features, every other layer's the hidden state), each linear head hidden * features + features."""
    h, f, layers = arch.hidden_size, arch.n_features, arch.num_layers
    deep = 4 * h * (2 * h + 2)  # a layer reading the hidden state of the one below (or the latent)
    lstm = 4 * h * (f + h + 2) + (layers - 1) * deep + layers * deep  # encoder, then decoder
    return lstm + (2 if arch.forecast else 1) * (h * f + f)


class ModelOutput(NamedTuple):
    """`reconstruction` (B, T, F) when T is a multiple of the window, else None; `forecast` (B, T, F):
    row t is the prediction of x[:, t] made from readings before t (None without a forecast head)."""

    reconstruction: torch.Tensor | None
    forecast: torch.Tensor | None


class CarriesState:
    """What every scorer the engine runs shares: its window and a zero `(h, c)` of the architecture's shape."""

    arch: Architecture

    @property
    def window(self) -> int:
        return self.arch.window

    def initial_state(self, batch: int, device: torch.device | None = None, dtype=torch.float32) -> State:
        shape = (self.arch.num_layers, batch, self.arch.hidden_size)
        z = torch.zeros(shape, device=device, dtype=dtype)
        return z, z.clone()


class LSTMAutoencoder(CarriesState, nn.Module):
    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.arch = arch
        inter_dropout = arch.dropout if arch.num_layers > 1 else 0.0
        self.encoder = nn.LSTM(
            arch.n_features, arch.hidden_size, arch.num_layers, batch_first=True, dropout=inter_dropout
        )
        self.decoder = nn.LSTM(
            arch.hidden_size, arch.hidden_size, arch.num_layers, batch_first=True, dropout=inter_dropout
        )
        self.latent_dropout = nn.Dropout(arch.dropout)
        self.head = nn.Linear(arch.hidden_size, arch.n_features)
        self.forecaster = nn.Linear(arch.hidden_size, arch.n_features) if arch.forecast else None

    def encode(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Run the encoder over x (B, T, F); return its top-layer outputs (B, T, hidden) and the new state."""
        return self.encoder(x, state)

    def codes(self, out: torch.Tensor) -> torch.Tensor:
        """Latent codes (B, T // window, hidden): the encoder output at the end of every window."""
        t = out.shape[1]
        if t % self.window:
            raise ValueError(f"sequence length {t} is not a multiple of window {self.window}")
        return out[:, self.window - 1 :: self.window, :]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Reconstruct each window from its code: codes (B, n, hidden) -> (B, n * window, F)."""
        b, n, h = codes.shape
        z = self.latent_dropout(codes.reshape(b * n, 1, h)).expand(b * n, self.window, h)
        dec, _ = self.decoder(z)
        rec = self.head(dec).flip(1)  # decoded in reverse order
        return rec.reshape(b, n * self.window, self.arch.n_features)

    def predict(self, out: torch.Tensor, state: State | None) -> torch.Tensor:
        """One-step forecasts (B, T, F): row t from the top-layer output after reading t-1; row 0 from the
        carried state (zeros when there is none)."""
        assert self.forecaster is not None
        b = out.shape[0]
        first = (
            state[0][-1].unsqueeze(1) if state is not None else out.new_zeros((b, 1, self.arch.hidden_size))
        )
        before = torch.cat([first.to(out.dtype), out[:, :-1]], dim=1)
        return self.forecaster(before)

    def forward(
        self, x: torch.Tensor, state: State | None = None, reconstruct: bool | None = None
    ) -> tuple[ModelOutput, State]:
        """`reconstruct`: None reconstructs when T is a multiple of the window (else an error without a
        forecast head, which has nothing else to give); False skips the decoder."""
        out, new_state = self.encode(x, state)
        whole = x.shape[1] % self.window == 0
        if reconstruct is None:
            reconstruct = whole or self.forecaster is None
        recon = self.decode(self.codes(out)) if reconstruct else None
        forecast = self.predict(out, state) if self.forecaster is not None else None
        return ModelOutput(recon, forecast), new_state


def as_output(outputs: ModelOutput | torch.Tensor) -> ModelOutput:
    """Models that return a bare reconstruction (the engine's no-model baselines, exported steps) as a
    ModelOutput."""
    return outputs if isinstance(outputs, ModelOutput) else ModelOutput(outputs, None)


def reading_errors(out: ModelOutput, x: torch.Tensor, targets: tuple[int, ...] | None = None) -> torch.Tensor:
    """The squared error per reading and feature (B, T, F) that scores a reading: the one-step forecast error
    when the model has a forecast head (known when the reading arrives), else the reconstruction error.
    With `targets` (feature indices), the other features' errors are 0: they are context, not judged."""
    pred = out.forecast if out.forecast is not None else out.reconstruction
    if pred is None:
        raise ValueError("the model output has neither a forecast nor a reconstruction")
    err = (pred.float() - x.float()).pow(2)
    if targets is not None:
        scored = set(targets)
        err[..., [i for i in range(err.shape[-1]) if i not in scored]] = 0.0
    return err


def point_error(err_f: np.ndarray, targets: tuple[int, ...] | None = None) -> np.ndarray:
    """The point error (..., ) of per-feature squared errors (..., F): their mean over the target features
    (every feature when `targets` is None)."""
    if targets is None:
        return err_f.mean(axis=-1)
    return err_f[..., list(targets)].mean(axis=-1)


def point_errors(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Squared error per point and feature, (B, T, F), in standardized units."""
    return (recon.float() - x.float()).pow(2)

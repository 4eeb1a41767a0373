"""LSTMAutoencoder: a stateful encoder whose (h, c) carries from one window of a series to the next.

Shapes: x is (B, T, F) with T a multiple of `window`; state is a pair (h, c), each (num_layers, B, hidden).
The encoder runs over all T steps in one LSTM call starting from `state`; at the end of every window its
top-layer hidden vector is the latent code of that window. The decoder gets the latent repeated `window`
times, reconstructs the window in reverse order, and a linear head maps back to F features. Because window k's
code depends only on the encoder state at its end, scoring a series window by window with the carried state
equals scoring the concatenated windows in one call.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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

    def to_json(self) -> dict:
        return asdict(self)


class LSTMAutoencoder(nn.Module):
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

    @property
    def window(self) -> int:
        return self.arch.window

    def initial_state(self, batch: int, device: torch.device | None = None, dtype=torch.float32) -> State:
        shape = (self.arch.num_layers, batch, self.arch.hidden_size)
        z = torch.zeros(shape, device=device, dtype=dtype)
        return z, z.clone()

    def encode(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Run the encoder over x (B, T, F); return latent codes (B, T // window, hidden) and the new state."""
        b, t, _ = x.shape
        if t % self.window:
            raise ValueError(f"sequence length {t} is not a multiple of window {self.window}")
        out, new_state = self.encoder(x, state)
        codes = out[:, self.window - 1 :: self.window, :]
        return codes, new_state

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Reconstruct each window from its code: codes (B, n, hidden) -> (B, n * window, F)."""
        b, n, h = codes.shape
        z = self.latent_dropout(codes.reshape(b * n, 1, h)).expand(b * n, self.window, h)
        dec, _ = self.decoder(z)
        rec = self.head(dec).flip(1)  # decoded in reverse order
        return rec.reshape(b, n * self.window, self.arch.n_features)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        codes, new_state = self.encode(x, state)
        return self.decode(codes), new_state


def point_errors(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Squared error per point and feature, (B, T, F), in standardized units."""
    return (recon.float() - x.float()).pow(2)

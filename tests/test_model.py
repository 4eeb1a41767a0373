from __future__ import annotations

import torch

from anomaly.model import Architecture, LSTMAutoencoder


def model(layers: int = 2) -> LSTMAutoencoder:
    torch.manual_seed(0)
    return LSTMAutoencoder(
        Architecture(n_features=5, window=8, hidden_size=12, num_layers=layers, dropout=0.2)
    ).eval()


def test_shapes() -> None:
    m = model()
    x = torch.randn(3, 24, 5)
    recon, (h, c) = m(x)
    assert recon.shape == (3, 24, 5)
    assert h.shape == c.shape == (2, 3, 12)


def test_window_by_window_with_carried_state_equals_one_call() -> None:
    m = model()
    x = torch.randn(4, 10 * 8, 5)
    with torch.no_grad():
        whole, whole_state = m(x)
        state = None
        parts = []
        for k in range(10):
            r, state = m(x[:, k * 8 : (k + 1) * 8], state)
            parts.append(r)
    assert torch.allclose(torch.cat(parts, dim=1), whole, atol=1e-5)
    assert torch.allclose(state[0], whole_state[0], atol=1e-5)
    assert torch.allclose(state[1], whole_state[1], atol=1e-5)


def test_state_changes_the_reconstruction() -> None:
    m = model()
    x = torch.randn(2, 8, 5)
    with torch.no_grad():
        cold, state = m(x)
        warm, _ = m(x, state)
    assert not torch.allclose(cold, warm)


def test_rows_of_a_batch_are_independent_of_their_neighbours() -> None:
    """The engine relies on this: a key's numbers must not depend on which keys share its batch (B >= 2)."""
    m = model(1)
    x = torch.randn(64, 8, 5)
    with torch.no_grad():
        full, _ = m(x)
        for lo, hi in [(0, 2), (5, 12), (20, 63)]:
            part, _ = m(x[lo:hi])
            assert torch.equal(part, full[lo:hi])


def test_length_must_be_a_multiple_of_the_window() -> None:
    m = model()
    try:
        m(torch.randn(1, 9, 5))
    except ValueError as exc:
        assert "multiple of window 8" in str(exc)
    else:
        raise AssertionError("expected ValueError")

from __future__ import annotations

import pytest
import torch

from anomaly.model import Architecture, LSTMAutoencoder, reading_errors


def model(layers: int = 2, forecast: bool = True) -> LSTMAutoencoder:
    torch.manual_seed(0)
    return LSTMAutoencoder(
        Architecture(
            n_features=5, window=8, hidden_size=12, num_layers=layers, dropout=0.2, forecast=forecast
        )
    ).eval()


def test_shapes() -> None:
    m = model()
    x = torch.randn(3, 24, 5)
    out, (h, c) = m(x)
    assert out.reconstruction is not None and out.forecast is not None
    assert out.reconstruction.shape == out.forecast.shape == (3, 24, 5)
    assert h.shape == c.shape == (2, 3, 12)


@pytest.mark.parametrize("forecast", [True, False])
def test_window_by_window_with_carried_state_equals_one_call(forecast: bool) -> None:
    m = model(forecast=forecast)
    x = torch.randn(4, 10 * 8, 5)
    with torch.no_grad():
        whole, whole_state = m(x)
        state = None
        parts = []
        for k in range(10):
            r, state = m(x[:, k * 8 : (k + 1) * 8], state)
            parts.append(r)
    assert torch.allclose(
        torch.cat([p.reconstruction for p in parts], dim=1), whole.reconstruction, atol=1e-5
    )
    if forecast:
        assert torch.allclose(torch.cat([p.forecast for p in parts], dim=1), whole.forecast, atol=1e-5)
    assert torch.allclose(state[0], whole_state[0], atol=1e-5)
    assert torch.allclose(state[1], whole_state[1], atol=1e-5)


def test_reading_by_reading_forecasts_equal_one_call() -> None:
    """The engine scores a forecast bundle one reading at a time: each reading's forecast comes from the
    carried state alone, so it equals the forecast of the same reading inside one long call."""
    m = model()
    x = torch.randn(2, 40, 5)
    with torch.no_grad():
        whole, whole_state = m(x, reconstruct=False)
        state = None
        steps = []
        for t in range(40):
            out, state = m(x[:, t : t + 1], state)
            assert out.reconstruction is None  # one reading is not a window
            steps.append(out.forecast)
    assert torch.allclose(torch.cat(steps, dim=1), whole.forecast, atol=1e-6)
    assert torch.allclose(state[0], whole_state[0], atol=1e-6)


def test_forecast_of_a_reading_does_not_see_it() -> None:
    m = model()
    x = torch.randn(2, 16, 5)
    spiked = x.clone()
    spiked[:, 9] += 50.0
    with torch.no_grad():
        a, _ = m(x)
        b, _ = m(spiked)
    assert torch.equal(a.forecast[:, :10], b.forecast[:, :10])  # up to and including the spiked reading
    assert not torch.equal(a.forecast[:, 10:], b.forecast[:, 10:])
    err = reading_errors(b, spiked)
    assert err[:, 9].mean() > 100 * err[:, 8].mean()  # the spike is scored at its own reading


def test_state_changes_the_outputs() -> None:
    m = model()
    x = torch.randn(2, 8, 5)
    with torch.no_grad():
        cold, state = m(x)
        warm, _ = m(x, state)
    assert not torch.allclose(cold.reconstruction, warm.reconstruction)
    assert not torch.allclose(cold.forecast, warm.forecast)


@pytest.mark.parametrize("forecast", [True, False])
def test_rows_of_a_batch_are_independent_of_their_neighbours(forecast: bool) -> None:
    """The engine relies on this: a key's numbers must not depend on which keys share its batch (B >= 2)."""
    m = model(1, forecast)
    x = torch.randn(64, 8, 5)
    with torch.no_grad():
        full, _ = m(x)
        for lo, hi in [(0, 2), (5, 12), (20, 63)]:
            part, _ = m(x[lo:hi])
            assert torch.equal(part.reconstruction, full.reconstruction[lo:hi])
            if forecast:
                assert torch.equal(part.forecast, full.forecast[lo:hi])


def test_reconstruction_needs_whole_windows() -> None:
    m = model(forecast=False)
    with pytest.raises(ValueError, match="multiple of window 8"):
        m(torch.randn(1, 9, 5))
    out, _ = model()(torch.randn(1, 9, 5))  # a forecast model scores any length, without reconstruction
    assert out.reconstruction is None and out.forecast is not None

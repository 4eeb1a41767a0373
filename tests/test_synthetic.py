"""The synthetic generator behind `anomaly generate` and `anomaly demo`."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from anomaly.cli import main
from anomaly.synthetic import SyntheticSpec, generate, max_anomalies


def _onsets(labels: np.ndarray) -> int:
    return int(labels[0] + ((labels[1:] == 1) & (labels[:-1] == 0)).sum())


@pytest.mark.parametrize("points", [134, 400, 1200, 5000])
def test_as_many_anomalies_as_fit_are_each_labelled_apart(points) -> None:
    most = max_anomalies(SyntheticSpec(n_points=points))
    assert (
        most == (points - points // 10) // 120
    )  # a slot per anomaly of at least 5 machine periods (24 each)
    for seed in range(10):
        frame = generate(SyntheticSpec(n_points=points, n_sensors=2, anomalies=most, seed=seed))
        assert _onsets(frame["anomaly"].to_numpy()) == most  # none ran into the next


def test_more_anomalies_than_fit_are_refused_not_merged(tmp_path) -> None:
    # before: `--points 100 --anomalies 5` wrote 9 of 10 rows anomalous, as one overlapping stretch, exit 0
    with pytest.raises(ValueError, match="5 anomalies do not fit in 100 readings: at most 0"):
        generate(SyntheticSpec(n_points=100, anomalies=5))
    out = tmp_path / "g.csv"
    got = CliRunner().invoke(
        main, ["generate", "-o", str(out), "--points", "400", "--anomalies", "4"], prog_name="anomaly"
    )
    assert got.exit_code == 2
    assert got.output.splitlines() == [
        "error: Invalid value for '--anomalies': 4 anomalies cannot fit in 400 readings per series (--points): "
        "at most 3, each needing 120 of the readings after the first 10 % (see: anomaly generate --help)"
    ]
    assert not out.exists()

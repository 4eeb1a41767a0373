"""Peak RSS that training's calibration adds while it scores one long series (`anomaly.training.series_errors`):
one forward call over the whole series (before session 22) against the default chunks of
`SCORE_CHUNK_READINGS` readings with the state carried. Each variant runs in a fresh process; the model is the
default architecture (hidden 64, window 32, forecast head) with 8 features, untrained.

    .venv/bin/python deploy/measure_calibration_memory.py [N_READINGS]   # default 1,500,000
"""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import resource, sys, numpy as np, torch
from anomaly.model import Architecture
from anomaly.training import SCORE_CHUNK_READINGS, build_model, series_errors
torch.set_num_threads(1); torch.manual_seed(0)
model = build_model(Architecture(8, 32, forecast=True), torch.device("cpu")).eval()
n, chunk = int(sys.argv[1]), int(sys.argv[2]) or SCORE_CHUNK_READINGS
x = np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
e = series_errors(model, x, chunk=chunk)
r1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((r1 - r0) / 1024, float(e.astype(np.float64).sum()))
"""


def main() -> None:
    n = sys.argv[1] if len(sys.argv) > 1 else "1500000"
    res = {}
    for name, chunk in (("one call", str(10**12)), ("chunks", "0")):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, n, chunk], capture_output=True, text=True, check=True
        )
        mib, total = (float(v) for v in out.stdout.split())
        res[name] = (mib, total)
    (a, sa), (b, sb) = res["one call"], res["chunks"]
    print(
        f"{int(n):,} readings: peak RSS added, one call {a:,.0f} MiB, chunks {b:,.0f} MiB, "
        f"ratio {a / max(b, 1.0):.1f}x; errors sum equal: {sa == sb}"
    )


if __name__ == "__main__":
    main()

"""`anomaly bench --formats`: engine scoring throughput of float32 vs int8 vs ONNX, side by side in one run.

The three models are the same demo-architecture bundle (float32), its int8 export and its ONNX export, scored
through the same engine on the same stream. Each (keys, format) rate is the median of `repeats` runs, taken
round-robin over the formats so load changes on a shared machine hit all of them alike.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomaly.bench import POLL, demo_bundle, engine_rate
from anomaly.bundle import Bundle
from anomaly.export import export_onnx, load_onnx_bundle, to_int8


def format_bundles(bundle: Bundle, workdir: Path) -> dict[str, Bundle]:
    path, _ = export_onnx(bundle, workdir / "bench.onnx")
    return {"float32": bundle, "int8": to_int8(bundle), "onnx": load_onnx_bundle(path)}


def run_format_bench(
    keys: tuple[int, ...] = (1, 100, 1000), repeats: int = 3, say: Callable[[str], Any] = print
) -> dict[str, Any]:
    bundle = demo_bundle()
    w = bundle.window
    say(
        f"scoring formats: demo architecture (window {w}, hidden 64, 6 features), torch/onnxruntime threads "
        f"{torch.get_num_threads()}, {POLL} single-reading events per engine call, median of {repeats}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        bundles = format_bundles(bundle, Path(tmp))
        say(
            f"{'keys':>7} "
            + " ".join(f"{name + ' readings/s':>20}" for name in bundles)
            + "   int8/f32  onnx/f32"
        )
        rows = []
        for k in keys:
            n = max(20_000, k * w * 3)
            rates: dict[str, list[float]] = {name: [] for name in bundles}
            for _ in range(repeats):
                for name, b in bundles.items():
                    rates[name].append(engine_rate(b, k, n))
            med = {name: float(np.median(r)) for name, r in rates.items()}
            row = {
                "keys": k,
                **med,
                "int8_ratio": med["int8"] / med["float32"],
                "onnx_ratio": med["onnx"] / med["float32"],
            }
            rows.append(row)
            say(
                f"{k:>7} "
                + " ".join(f"{med[name]:>20,.0f}" for name in bundles)
                + f"   {row['int8_ratio']:>7.2f}x {row['onnx_ratio']:>8.2f}x"
            )
    return {"formats": rows}


def _score_file(
    bundle: Bundle, cfg: Any, key: str, head: Any, test: Any, features: list[str]
) -> dict[str, Any]:
    """SKAB's run_file scoring part for a given bundle (:func:`anomaly.skab.score_test_rows`: warm engine, test
    rows, the file's last partial report window), evaluated point-wise without look-ahead as `anomaly skab` does."""
    from anomaly import evaluation, skab

    _, frame = skab.score_test_rows(bundle, cfg, key, head, test, features)
    return evaluation.evaluate(
        frame["label"].to_numpy(),
        frame["predicted"].to_numpy(),
        frame["timestamp"].to_numpy(),
        frame["decided_at"].to_numpy(),
    )


def run_skab_formats(root: str | Path, cfg: Any = None, say: Callable[[str], Any] = print) -> dict[str, Any]:
    """SKAB under its protocol (see :mod:`anomaly.skab`), each file's model trained ONCE and scored as float32,
    int8 and ONNX, so the F1 differences are the export's alone (no training noise)."""
    from anomaly import evaluation, skab
    from anomaly.config import build_config
    from anomaly.data import load_series
    from anomaly.training import train

    cfg = cfg or build_config(skab.DEFAULTS, None, {})
    files = skab.skab_files(root)
    metrics: dict[str, list[dict[str, Any]]] = {"float32": [], "int8": [], "onnx": []}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for path in files:
                series, features = load_series([path], cfg.data)
                s = series[0]
                s.key = skab.file_key(Path(path), root)
                head, test = s.head(skab.TRAIN_ROWS), s.tail_from(skab.TRAIN_ROWS)
                bundle = train([head], features, cfg.model, cfg.train).bundle
                for name, b in format_bundles(bundle, Path(tmp)).items():
                    metrics[name].append(_score_file(b, cfg, s.key, head, test, features))
    finally:
        torch.set_num_threads(threads)
    pooled = {name: evaluation.pool(m) for name, m in metrics.items()}
    say(f"SKAB ({len(files)} files, one model per file scored in each format):")
    say(f"{'format':<8} {'F1':>7} {'FAR, %':>8} {'MAR, %':>8} {'F1 - float32':>13}")
    for name, p in pooled.items():
        say(
            f"{name:<8} {p['f1']:>7.4f} {p['far'] * 100:>8.2f} {p['mar'] * 100:>8.2f} "
            f"{p['f1'] - pooled['float32']['f1']:>+13.4f}"
        )
    return {
        name: {
            "f1": p["f1"],
            "far": p["far"],
            "mar": p["mar"],
            "f1_change": p["f1"] - pooled["float32"]["f1"],
        }
        for name, p in pooled.items()
    }

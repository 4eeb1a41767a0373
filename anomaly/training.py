"""Offline training with truncated back-propagation through time, and calibration of the scoring scale.

Each series is cut, in time order, into a training part and a validation part (the last `val_fraction`).
A part becomes chains of consecutive non-overlapping windows (one chain per `stride` offset); chains are cut
into segments of `segment_windows` windows. A batch feeds window k of every segment with the detached final
encoder state of window k-1, exactly as the streaming engine will carry it.
"""

from __future__ import annotations

import copy
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
from torch import nn

from anomaly import __version__
from anomaly.baselines import fit_baselines
from anomaly.bundle import Bundle
from anomaly.config import EngineConfig, ModelConfig, TrainConfig
from anomaly.data import (
    Scaler,
    Series,
    default_max_gap,
    fingerprint,
    quoted,
    sampling_interval,
    screen_readings,
    split_at_gaps,
    window_chain,
)
from anomaly.errors import ConfigError, DataError
from anomaly.model import (
    Architecture,
    LSTMAutoencoder,
    as_output,
    parameter_count,
    point_error,
    reading_errors,
)

log = logging.getLogger(__name__)
QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)


@dataclass
class TrainResult:
    bundle: Bundle
    history: list[dict[str, float]] = field(default_factory=list)
    windows_per_second: float = 0.0
    device: str = "cpu"
    amp_dtype: str | None = None
    seconds: float = 0.0


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise DataError(
                "train.device is cuda but no CUDA device is available: use cpu or auto (anomaly train --device cpu, or ANOMALY_TRAIN_DEVICE=cpu)"
            )
        return torch.device("cuda")
    return torch.device("cpu")


def training_rows(n: int, val_fraction: float, window: int) -> int:
    """How many of a series' `n` rows (its first) are its training part; the rest are its validation part, the
    last `val_fraction`, shortened so that the training part holds a window: a series shorter than
    1.25 windows (at 0.2) validates on what is left after one window, and one shorter than a window is all
    training part (no window to train on, and none to validate)."""
    n_val = int(round(n * val_fraction))
    if n - n_val < window:
        n_val = max(0, n - window)
    return n - n_val


def split_series(
    series: Sequence[Series], val_fraction: float, window: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Time-ordered split of every series' rows (already standardized by the caller) at
    :func:`training_rows`; a validation part shorter than a window gives no validation window."""
    train, val = [], []
    for s in series:
        n_train = training_rows(len(s), val_fraction, window)
        train.append(s.values[:n_train])
        if len(s) - n_train >= window:
            val.append(s.values[n_train:])
    return train, val


def segments(parts: Sequence[np.ndarray], window: int, stride: int, seg_windows: int) -> list[np.ndarray]:
    """Cut chains of windows into segments (each (S, window, F)); the tail of a chain is a shorter segment."""
    out = []
    for values in parts:
        for offset in range(0, window, stride):
            chain = window_chain(values, window, offset)
            for i in range(0, len(chain), seg_windows):
                seg = chain[i : i + seg_windows]
                if len(seg):
                    out.append(seg)
    return out


def fit_batch_size(segs: Sequence[np.ndarray], batch_size: int, min_batches: int) -> int:
    """The batch size, lowered on short training sets so an epoch makes at least `min_batches` optimizer steps
    (segments are batched by length, so count the batches per length group)."""
    sizes: dict[int, int] = {}
    for s in segs:
        sizes[len(s)] = sizes.get(len(s), 0) + 1
    bs = batch_size
    if sizes and sum(math.ceil(n / bs) for n in sizes.values()) < min_batches:
        # above the largest group every size makes one batch per group: start the search there, not at
        # `batch_size` (`batch_size = 100000000000` counted down one at a time, and `train` never started)
        bs = min(bs, max(sizes.values()))
    while bs > 1 and sum(math.ceil(n / bs) for n in sizes.values()) < min_batches:
        bs -= 1
    return bs


def batches(segs: Sequence[np.ndarray], batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Group segments of equal length into batches (B, S, window, F); shuffled when rng is given."""
    by_len: dict[int, list[np.ndarray]] = {}
    for s in segs:
        by_len.setdefault(len(s), []).append(s)
    out = []
    for group in by_len.values():
        order = rng.permutation(len(group)) if rng is not None else np.arange(len(group))
        for i in range(0, len(group), batch_size):
            out.append(np.stack([group[j] for j in order[i : i + batch_size]]))
    if rng is not None:
        out = [out[i] for i in rng.permutation(len(out))]
    return out


def _run_batch(
    model: LSTMAutoencoder,
    batch: torch.Tensor,
    autocast: Callable[[], Any],
    forecast_weight: float = 1.0,
    noise: float = 0.0,
) -> torch.Tensor:
    """Loss over a batch of segments, carrying detached state window to window: mean squared reconstruction
    error plus `forecast_weight` x mean squared one-step forecast error (the segment's first reading, which
    has no past, is left out), both over the model's target features only (context features are read, not
    judged). With `noise` > 0 the model reads x + N(0, noise^2) and is scored against the clean x
    (denoising)."""
    state = None
    total = batch.new_zeros(())
    n_windows = batch.shape[1]
    cols = list(model.arch.targets) if model.arch.targets is not None else slice(None)
    for k in range(n_windows):
        x = batch[:, k]
        seen = x + noise * torch.randn_like(x) if noise > 0 else x
        with autocast():
            out, state = model(seen, state, reconstruct=True)
        assert out.reconstruction is not None
        total = total + (out.reconstruction.float() - x)[..., cols].pow(2).mean()
        if out.forecast is not None and forecast_weight > 0:
            err = (out.forecast.float() - x)[..., cols].pow(2)
            total = total + forecast_weight * (err[:, 1:].mean() if k == 0 else err.mean())
        state = (state[0].detach(), state[1].detach())
    return total / n_windows


# Bytes per weight that training holds: the float32 weight, its gradient and Adam's two moments.
TRAIN_BYTES_PER_PARAMETER = 16


# Where the host's and the container's memory are read (parameters of :func:`available_memory`, so that a test
# can point them at a directory of fake files).
MEMINFO = "/proc/meminfo"
CGROUP_ROOT = "/sys/fs/cgroup"


def _read_int(path: str) -> int | None:
    """The integer in the file at `path`; None when it is missing, unreadable, or "max" (cgroup v2: no limit)."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _stat_value(path: str, name: str) -> int:
    """The value of `name` in a cgroup memory.stat file at `path` (0 when missing)."""
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == name:
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def cgroup_memory_available(root: str | None = None) -> int | None:
    """Bytes the container's cgroup may still use: its limit less its working set (usage less the inactive page
    cache, which the kernel reclaims before it kills; how the kubelet counts it). cgroup v2 reads
    `memory.max` ("max": no limit) and `memory.current` at `root`; v1 reads `memory/memory.limit_in_bytes` and
    `memory/memory.usage_in_bytes` under it (v1's "no limit" is a number larger than any host, so it loses to
    the host's figure). None when there is no limit or the files cannot be read. `root` None: CGROUP_ROOT."""
    root = CGROUP_ROOT if root is None else root
    for limit_file, usage_file, stat_file, inactive in (
        ("memory.max", "memory.current", "memory.stat", "inactive_file"),
        (
            "memory/memory.limit_in_bytes",
            "memory/memory.usage_in_bytes",
            "memory/memory.stat",
            "total_inactive_file",
        ),
    ):
        limit = _read_int(f"{root}/{limit_file}")
        usage = _read_int(f"{root}/{usage_file}")
        if limit is None or usage is None:
            continue
        working = max(usage - _stat_value(f"{root}/{stat_file}", inactive), 0)
        return max(limit - working, 0)
    return None


def available_memory(
    device: torch.device, meminfo: str | None = None, cgroup_root: str | None = None
) -> int | None:
    """Bytes free for a model on ``device``: the GPU's free memory, else the smaller of the host's MemAvailable
    and what the container's cgroup (v2 or v1) still allows (:func:`cgroup_memory_available`; a CronJob with a
    3Gi limit on a 64 GiB node was OOM-killed instead of refused). None when neither is known (not Linux).
    `meminfo`, `cgroup_root` None: MEMINFO, CGROUP_ROOT."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    host = None
    try:
        with open(MEMINFO if meminfo is None else meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    host = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    cgroup = cgroup_memory_available(cgroup_root)
    known = [n for n in (host, cgroup) if n is not None]
    return min(known) if known else None


def _size(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def build_model(arch: Architecture, device: torch.device) -> LSTMAutoencoder:
    """The model to train, or ConfigError naming the settings when its weights do not fit in memory
    (`hidden_size = 100000000`, a few zeros too many, ended `anomaly train` with a traceback). A model whose
    training needs more than the memory available is refused before it is built: `num_layers = 10000000` built
    one layer at a time, for hours, until the host ran out of memory."""
    need = parameter_count(arch) * TRAIN_BYTES_PER_PARAMETER
    free = available_memory(device)
    if free is not None and need > free:
        raise ConfigError(
            f"the model does not fit in memory on {device.type} ({parameter_count(arch):,} parameters need "
            f"{_size(need)} to train, {_size(free)} available): model.hidden_size "
            f"{arch.hidden_size} with model.num_layers {arch.num_layers} is too large",
            key="model.hidden_size",
            related=("model.num_layers",),
        )
    try:
        return LSTMAutoencoder(arch).to(device)
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError | torch.OutOfMemoryError) and "allocate" not in str(exc):
            raise
        asked = re.search(r"allocate (\d+) bytes", str(exc))
        size = f" ({int(asked.group(1)) / 2**30:,.0f} GiB for one weight matrix)" if asked else ""
        raise ConfigError(
            f"the model does not fit in memory on {device.type}{size}: model.hidden_size {arch.hidden_size} "
            f"with model.num_layers {arch.num_layers} is too large",
            key="model.hidden_size",
        ) from None


def train(
    series: Sequence[Series],
    features: Sequence[str],
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    progress: bool = False,
    engine: EngineConfig | None = None,
    rows_note: str = "",
) -> TrainResult:
    """Train on `series`, which first lose the readings the engine (`engine`, the settings it will score with;
    None: the defaults) would refuse (`nan_policy`, `duplicate_policy`: :func:`anomaly.data.screen_readings`).
    They are then cut at gaps longer than its `max_gap_seconds` (None: GAP_INTERVALS sampling intervals, the
    interval being learnt here), exactly where the engine will reset a key; the interval and the gap are stored
    in the bundle, and the engine's default gap is read from there. `rows_note` says which rows of the files
    `series` are (`--train-rows`), for the message that names a column with no value in any of them."""
    if not series:
        raise DataError("no training series")
    engine = engine if engine is not None else EngineConfig()
    max_gap_seconds, nan_policy = engine.max_gap_seconds, engine.nan_policy
    given = series
    screened = screen_readings(series, nan_policy, engine.duplicate_policy)
    series, missing_dropped, missing_filled = screened.series, screened.missing, screened.filled
    if not any(len(s) for s in series):
        empty = [f for f, n in zip(features, missing_cells(given), strict=True) if n == sum(map(len, given))]
        rest = [f for f in features if f not in empty]
        raise DataError(
            f"no training rows left: every row has a missing value (NaN, empty or text like n/a) and "
            f"engine.nan_policy = {nan_policy!r} drops it"
            + (
                f"; column(s) {', '.join(map(repr, empty))} have no value in any row trained on{rows_note}"
                + (f": leave them out with --features {quoted(','.join(rest))}" if rest else "")
                if empty
                else ""
            )
        )
    if missing_dropped and max(len(s) for s in series) < model_cfg.window:  # not a matter of gaps
        raise DataError(
            short_after_missing(given, features, series, missing_dropped, nan_policy, model_cfg.window)
        )
    interval = sampling_interval(series)
    max_gap = max_gap_seconds if max_gap_seconds is not None else default_max_gap(interval)
    whole = series
    # a key whose every reading had a missing value is left with no rows: nothing to train or calibrate on
    kept = [s for s in whole if len(s)]
    series = split_at_gaps(kept, max_gap)
    if not any(len(s) >= model_cfg.window for s in series):
        raise DataError(
            f"not enough training data: no stretch of {model_cfg.window} rows without a gap longer than "
            f"{max_gap:g} s (median sampling interval {interval if interval is None else f'{interval:g} s'})"
        )
    windowed = {s.key for s in series if len(s) >= model_cfg.window}
    idle = list(dict.fromkeys(s.key for s in whole if s.key not in windowed))
    rows_of: dict[str, int] = {}
    for s in whole:
        rows_of[s.key] = rows_of.get(s.key, 0) + len(s)
    short = [k for k in idle if rows_of[k] < model_cfg.window]  # too few readings at all, gaps or not
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = pick_device(cfg.device)
    window = model_cfg.window
    stride = cfg.stride or window

    raw = np.concatenate([s.values for s in series])
    wander = wander_share([s.values for s in series])
    scaler = Scaler.fit(raw)
    scaler = Scaler(scaler.mean, np.maximum(scaler.scale, quantum(raw)).astype(np.float32))
    scaled = [Series(s.key, s.timestamps, scaler.transform(s.values), s.labels, s.source) for s in series]
    train_parts, val_parts = split_series(scaled, cfg.val_fraction, window)
    train_segs = segments(train_parts, window, stride, cfg.segment_windows)
    val_segs = segments(val_parts, window, stride, cfg.segment_windows)
    if not train_segs:
        raise DataError(f"not enough training data: need at least one window of {window} rows per series")
    if not val_segs:
        why = no_validation_window(series, cfg.val_fraction, window, len(series) > len(kept))
        if missing_dropped:  # "add data" to a file of enough rows, most of them dropped for one empty column
            why += "; " + dropped_for_missing(given, features, missing_dropped, nan_policy)
        raise DataError(why)

    arch = Architecture(
        len(features),
        window,
        model_cfg.hidden_size,
        model_cfg.num_layers,
        model_cfg.dropout,
        model_cfg.forecast,
        screened_targets(target_indices(features, model_cfg.targets), wander, cfg.wander_screen),
    )
    model = build_model(arch, device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=max(1, cfg.patience // 2))
    amp_dtype = None
    if device.type == "cuda" and cfg.amp:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        torch.backends.cudnn.benchmark = True
    scaler_amp = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    def to_device(arr: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(arr)
        if device.type == "cuda":
            return t.pin_memory().to(device, non_blocking=True)
        return t

    batch_size = fit_batch_size(train_segs, cfg.batch_size, cfg.min_batches)
    val_batches = [to_device(b) for b in batches(val_segs, batch_size, None)]
    n_train_windows = sum(len(s) for s in train_segs)
    history: list[dict[str, float]] = []
    best = (math.inf, copy.deepcopy(model.state_dict()), 0)
    stale = 0
    started = time.perf_counter()
    train_seconds = 0.0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.epochs, desc="train", unit="epoch", disable=None)  # no bar off a terminal
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        losses = []
        for arr in batches(train_segs, batch_size, rng):
            batch = to_device(arr)
            opt.zero_grad(set_to_none=True)
            loss = _run_batch(model, batch, autocast, cfg.forecast_weight, cfg.input_noise)
            scaler_amp.scale(loss).backward()
            scaler_amp.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            scaler_amp.step(opt)
            scaler_amp.update()
            losses.append(float(loss.detach()))
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds += time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            val_loss = float(
                np.mean([float(_run_batch(model, b, autocast, cfg.forecast_weight)) for b in val_batches])
            )
        sched.step(val_loss)
        row = {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "val_loss": val_loss,
            "lr": opt.param_groups[0]["lr"],
        }
        history.append(row)
        log.info("epoch %d loss %.5f val_loss %.5f lr %.2e", epoch, row["loss"], val_loss, row["lr"])
        if bar is not None:
            bar.set_postfix(loss=f"{row['loss']:.4f}", val=f"{val_loss:.4f}")
            bar.update(1)
        if val_loss < best[0] - 1e-6:
            best = (val_loss, copy.deepcopy(model.state_dict()), epoch)
            stale = 0
        else:
            stale += 1
            if stale >= cfg.patience:
                log.info("early stop at epoch %d (best %d)", epoch, best[2])
                break
    if bar is not None:
        bar.close()
    model.load_state_dict(best[1])
    model.eval().cpu()
    wps = n_train_windows * len(history) / max(train_seconds, 1e-9)
    calibration = calibrate(model, scaled, cfg)
    check_finite(model, calibration)
    calibration["feature_distinct"] = distinct_values([s.values for s in series]).tolist()
    calibration["feature_wander"] = wander.tolist()
    calibration["feature_max_run"] = max_runs([s.values for s in series]).tolist()
    calibration["baselines"] = fit_baselines(scaled, train_parts, arch, cfg)
    amp_name = None if amp_dtype is None else str(amp_dtype).replace("torch.", "")
    meta: dict[str, Any] = {
        "package_version": __version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "training_fingerprint": fingerprint(whole),
        "missing_values": {
            "policy": nan_policy,
            "rows_dropped": missing_dropped,
            "cells_filled": missing_filled,
        },
        "sampling": {
            "interval_seconds": interval,
            "max_gap_seconds": max_gap,
            "gap_splits": len(series) - len(kept),
        },
        "training": {
            "epochs_run": len(history),
            "best_epoch": best[2],
            "best_val_loss": best[0],
            "final_loss": history[-1]["loss"],
            "train_windows": n_train_windows,
            # the range each feature took in the rows trained on (after the missing-value policy), for inspect
            "feature_min": np.nanmin(raw, axis=0).astype(np.float64).tolist(),
            "feature_max": np.nanmax(raw, axis=0).astype(np.float64).tolist(),
            "windows_per_second": wps,
            "device": device.type,
            "amp": amp_name,
            "series": len(whole),
            "rows": int(sum(len(s) for s in whole)),
            # series with no stretch of a window between gaps: never trained on, and cold-scored in replay
            "series_without_window": len(idle),
            "keys_without_window": idle[:5],
            "series_shorter_than_window": len(short),  # of series_without_window: fewer rows than a window
            "keys_shorter_than_window": short[:5],
            "config": {"model": vars(model_cfg), "train": vars(cfg)},
        },
    }
    extreme = outlier_scales(raw, scaler.scale)
    if extreme:  # a feature whose scale a few extreme readings set: its ordinary changes never move a score
        meta["training"]["scale_outliers"] = {features[f]: v for f, v in extreme.items()}
    if screened.repeated:  # left out, as the engine refuses them (duplicate_policy "drop")
        meta["training"]["repeated_timestamps"] = screened.repeated
    meta["model_version"] = f"{meta['training_fingerprint'][:8]}-{meta['created_at']}"
    bundle = Bundle(model, list(features), scaler, calibration, meta)
    return TrainResult(bundle, history, wps, device.type, amp_name, time.perf_counter() - started)


def no_validation_window(series: Sequence[Series], val_fraction: float, window: int, cut: bool) -> str:
    """Why no series gave a validation window, and what helps: a larger `val_fraction` only while the longest
    series can hold a window to train on and one to validate (`split_series`), else only more rows do."""
    longest = max(len(s) for s in series)
    where = " between gaps" if cut else ""
    hint = (
        "raise train.val_fraction, lower model.window, or add data"
        if longest >= 2 * window
        else f"a series needs {2 * window} rows, a window to train on and one to validate: lower model.window "
        "or add data"
    )
    return (
        f"not enough data for a validation window of {window} rows (model.window): the validation part of each "
        f"series is its last {val_fraction * 100:g} % (train.val_fraction), {int(round(longest * val_fraction))} of the "
        f"longest series' {longest} rows{where}; {hint}"
    )


def missing_cells(series: Sequence[Series]) -> np.ndarray:
    """Per feature (F,): the non-finite cells over all rows of `series`."""
    return (~np.isfinite(np.concatenate([s.values for s in series]))).sum(axis=0)


def short_after_missing(
    given: Sequence[Series],
    features: Sequence[str],
    kept: Sequence[Series],
    dropped: int,
    policy: str,
    window: int,
) -> str:
    """The error when the missing-value policy, not the file's length or its gaps, left less than a window: it
    names the policy, the rows it dropped and the column with the most missing values."""
    cause, hints = _missing_cause(given, features, dropped, policy)
    return (
        f"not enough training data: {cause}, leaving the longest series {max(len(s) for s in kept)} rows, fewer "
        f"than one window ({window} rows, model.window){hints}"
    )


def dropped_for_missing(given: Sequence[Series], features: Sequence[str], dropped: int, policy: str) -> str:
    """What the missing-value policy dropped before training, and what helps, for an error whose first cause
    it may be (no validation window left)."""
    cause, hints = _missing_cause(given, features, dropped, policy)
    return f"before that, {cause}{hints}"


def _missing_cause(
    given: Sequence[Series], features: Sequence[str], dropped: int, policy: str
) -> tuple[str, str]:
    missing = missing_cells(given)
    worst = int(np.argmax(missing))
    total = sum(len(s) for s in given)
    rest = [f for i, f in enumerate(features) if i != worst]
    hints = ['set engine.nan_policy = "ffill"'] if policy == "reject" and missing[worst] else []
    if rest and missing[worst]:
        hints.append(f"leave {features[worst]!r} out with --features {quoted(','.join(rest))}")
    which = (
        f"column {features[worst]!r} misses {int(missing[worst])}"
        if missing[worst]
        else "their times are missing"
    )
    cause = f"engine.nan_policy = {policy!r} dropped {dropped} of {total} rows for a missing value ({which})"
    return cause, (f"; {', or '.join(hints)}" if hints else "")


def target_indices(features: Sequence[str], targets: Sequence[str]) -> tuple[int, ...] | None:
    """Indices of the `targets` (model.targets) among `features`; None (every feature) when none are named."""
    if not targets:
        return None
    unknown = [t for t in targets if t not in features]
    if unknown:
        raise DataError(
            f"model.targets names {', '.join(map(repr, unknown))}, not among the features "
            f"({', '.join(list(features)[:8])}{', ...' if len(features) > 8 else ''})"
        )
    return tuple(sorted(list(features).index(t) for t in targets))


WANDER_BLOCKS = 8


def wander_share(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Per feature (F,): the share of its training variance that lies in the means of 8 equal blocks of each
    series (averaged over series, weighted by length). Near 0 for a feature that moves fast relative to the
    training span (noise, or cycles much shorter than the span); near 1 for one whose level wanders on the
    scale of the span itself (a slow warm-up or trend), so that training has not seen the range it will
    take live."""
    f = parts[0].shape[1] if parts else 0
    total, weight = np.zeros(f), 0
    for v in parts:
        n = len(v) // WANDER_BLOCKS * WANDER_BLOCKS
        if n < 2 * WANDER_BLOCKS:
            continue
        x = np.asarray(v[:n], np.float64)
        var = x.var(axis=0)
        between = x.reshape(WANDER_BLOCKS, -1, f).mean(axis=1).var(axis=0)
        total += n * np.divide(between, var, out=np.zeros(f), where=var > 0)
        weight += n
    return total / weight if weight else np.zeros(f)


def screened_targets(
    targets: tuple[int, ...] | None, wander: np.ndarray, screen: float
) -> tuple[int, ...] | None:
    """train.wander_screen: scored features whose wander share exceeds `screen` become context inputs (read by
    the model, not scored), unless that would leave no feature scored. 0 = no screen."""
    scored = tuple(range(len(wander))) if targets is None else targets
    keep = tuple(i for i in scored if not (screen > 0 and wander[i] > screen))
    if not keep or keep == scored:
        return targets
    log.info(
        "train.wander_screen: %d feature(s) wander over the training span; read as context, not scored",
        len(scored) - len(keep),
    )
    return keep


def check_finite(model: LSTMAutoencoder, calibration: dict[str, Any]) -> None:
    """A bundle with non-finite weights or calibration can never alert (every comparison with NaN is false):
    refuse to produce one."""
    bad = [name for name, t in model.state_dict().items() if not torch.isfinite(t).all()]
    numbers = np.asarray(
        [
            calibration["reference_error"],
            calibration["default_threshold"],
            *calibration["feature_reference_error"],
        ],
        np.float64,
    )
    if bad or not np.isfinite(numbers).all():
        what = f"weights {', '.join(bad[:3])}" if bad else "calibration"
        raise DataError(
            f"training produced non-finite {what}; the data or the settings (learning rate, clip norm) made "
            "it diverge, and no bundle was saved"
        )


# Readings per forward call when training scores a series as a stream (calibration): one call over a whole
# series held the LSTM's gates and outputs for every reading at once, about 1.5 KB a reading (2.2 GB more at the
# peak for a 1.5-million-row series of 8 features); chunks with the state carried between them score the same.
SCORE_CHUNK_READINGS = 65_536


@torch.no_grad()
def series_errors(
    model: LSTMAutoencoder, values: np.ndarray, chunk: int = SCORE_CHUNK_READINGS
) -> np.ndarray:
    """Per-point, per-feature squared error (n_usable, F) of one standardized series scored as a stream, as
    the engine scores it (:func:`anomaly.model.reading_errors`): every reading with a forecast head, only
    whole windows without one. The series is fed `chunk` readings at a time (whole windows without a forecast
    head), the state carried from one call to the next as the engine carries it, so memory does not grow with
    the series' length."""
    forecast = getattr(model.arch, "forecast", False)
    if not forecast:  # reconstruction only (also the no-model baselines, which return a bare reconstruction)
        usable = len(window_chain(values, model.window)) * model.window
        if usable == 0:
            return np.zeros((0, values.shape[1]), np.float32)
        values = values[:usable]
        step = max(1, chunk // model.window) * model.window
    else:
        step = max(1, chunk)
    errors, state = [], None
    for start in range(0, len(values), step):
        x = torch.from_numpy(np.ascontiguousarray(values[start : start + step], np.float32)).unsqueeze(0)
        out, state = model(x, state, reconstruct=False) if forecast else model(x, state)
        errors.append(reading_errors(as_output(out), x, model.arch.targets)[0].numpy())
    if not errors:
        return np.zeros((0, values.shape[1]), np.float32)
    return errors[0] if len(errors) == 1 else np.concatenate(errors)


def calibrate(model: LSTMAutoencoder, scaled: Sequence[Series], cfg: TrainConfig) -> dict[str, Any]:
    """Reconstruction-error distribution on the validation part of every series (its rows after
    :func:`training_rows`, never a row trained on), scored as a stream from the series start (so the carried
    state is warm, as it is live). A series shorter than a window has no validation part: its errors, all from
    a cold state, are left out. Score 1.0 = the `threshold_quantile` of point
    errors; the default threshold is `threshold_factor` in those units. The same quantile of each feature's
    own errors (`feature_reference_error`, one per feature) is the unit of the engine's `max_feature` score.
    A target that was constant in training (no variation the scaler could measure: it got scale 1) has
    validation errors of ~0, so its unit would be ~0 and any later change would score millions: its feature unit
    is floored at `reference_floor` (squared standardized units), and the point unit at the mean over targets
    of the feature floors (the point error is their mean). A target that varies keeps its measured unit, however
    small (a PCA residual, a smooth well-predicted signal): no floor may make such a key less sensitive."""
    per_point, per_feature = [], []
    for s in scaled:
        start = training_rows(len(s), cfg.val_fraction, model.window)
        if start == len(s):  # no validation part: all trained on, or shorter than a window (cold scores)
            continue
        err = series_errors(model, s.values)
        tail = err[start:]
        if len(tail):
            per_feature.append(tail)
            per_point.append(point_error(tail, model.arch.targets))
    points = np.concatenate(per_point) if per_point else np.zeros(1, np.float32)
    feats = np.concatenate(per_feature) if per_feature else np.zeros((1, model.arch.n_features), np.float32)
    flat = flat_features(scaled, model.arch.n_features)
    feature_floor = np.where(flat, max(cfg.reference_floor, 1e-8), 1e-8)
    targets = list(model.arch.targets) if model.arch.targets is not None else slice(None)
    floor = float(feature_floor[targets].mean())
    reference = max(float(np.quantile(points, cfg.threshold_quantile)), floor)
    feature_reference = np.maximum(
        np.quantile(feats, cfg.threshold_quantile, axis=0).astype(np.float64), feature_floor
    )
    return {
        "point_error_quantiles": {str(q): float(np.quantile(points, q)) for q in QUANTILES},
        "point_error_mean": float(points.mean()),
        "point_error_max": float(points.max()),
        "feature_error_mean": feats.mean(axis=0).tolist(),
        "feature_error_quantiles": {str(q): np.quantile(feats, q, axis=0).tolist() for q in QUANTILES},
        "feature_reference_error": feature_reference.tolist(),
        "reference_quantile": cfg.threshold_quantile,
        "reference_floor": floor,
        "feature_flat": flat.astype(int).tolist(),
        "reference_error": reference,
        "default_threshold": float(cfg.threshold_factor),
        "validation_points": int(len(points)),
    }


def flat_features(scaled: Sequence[Series], n_features: int) -> np.ndarray:
    """Per feature (F,) bool: constant over all standardized training rows (std below the scaler's 1e-8 test
    for constants; those got scale 1, so their standardized values are their raw deviations)."""
    rows = [s.values for s in scaled if len(s)]
    if not rows:
        return np.zeros(n_features, bool)
    values = np.concatenate(rows).astype(np.float64)
    with np.errstate(all="ignore"):
        std = np.nanstd(values, axis=0)
    return ~(std >= 1e-8)  # an all-NaN column (std NaN) counts as flat


# A feature's scale counts as set by a few extreme readings (:func:`outlier_scales`) when leaving out its most
# extreme 0.1 % (at least one reading) divides its standard deviation by more than this.
OUTLIER_SCALE_RATIO = 10.0


def outlier_scales(values: np.ndarray, scale: np.ndarray) -> dict[int, dict[str, float]]:
    """The features whose `scale` (the scaler's, fitted on `values`, (n, F)) a few extreme readings set: the
    standard deviation without their most extreme 0.1 % of readings (at least one; farthest from the median) is
    more than OUTLIER_SCALE_RATIO times smaller. One reading of 1e9 among readings of about 1 gives a scale of
    about 2e7, so every ordinary change of that feature standardizes to ~0 and never moves a score. Per such
    feature index: `value` (the most extreme reading), `readings` (how many lie farther than OUTLIER_SCALE_RATIO
    times `scale_without` from the median), `scale` and
    `scale_without` (the standard deviation without them). A feature constant but for those readings is not
    counted (it has no ordinary variation to drown), nor one whose quantization step (:func:`quantum`) sets a
    scale as large anyway."""
    out: dict[int, dict[str, float]] = {}
    for f in range(values.shape[1]):
        col = values[:, f]
        col = col[np.isfinite(col)].astype(np.float64)
        k = max(1, len(col) // 1000)
        if len(col) < 2 * k + 2:
            continue
        dev = np.abs(col - np.median(col))
        order = np.argsort(dev, kind="stable")
        rest = col[order[:-k]].std()
        # constant but for those readings (a flag, a sensor that moved once): no ordinary variation to drown
        if rest >= 1e-8 and scale[f] > OUTLIER_SCALE_RATIO * max(rest, float(quantum(col[:, None])[0])):
            out[f] = {
                "value": float(col[order[-1]]),
                "readings": int((dev > OUTLIER_SCALE_RATIO * rest).sum()),
                "scale": float(scale[f]),
                "scale_without": float(rest),
            }
    return out


def quantum(values: np.ndarray) -> np.ndarray:
    """Per feature (F,): the median gap between adjacent distinct finite values, 0 for a constant feature.

    A sensor that reports in steps of q cannot resolve a change smaller than q, so its scale is floored at q:
    one quantization step never counts as more than one standard deviation, and a nearly constant quantized
    feature (a few steps in training) cannot turn an ordinary step into a score of hundreds of sigma. For a
    continuous sensor the gaps are tiny and the floor does not bind."""
    out = np.zeros(values.shape[1], np.float64)
    for f in range(values.shape[1]):
        col = values[:, f]
        u = np.unique(col[np.isfinite(col)])
        if len(u) > 1:
            out[f] = float(np.median(np.diff(u.astype(np.float64))))
    return out


def max_runs(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Per feature (F,): the longest run of consecutive identical readings in the training series (1 = no
    repeats). The engine's stuck-sensor rule compares live runs with this, so a sensor that legitimately
    repeats values (quantized, slow) is held to its own training behaviour."""
    best = np.ones(parts[0].shape[1], np.int64) if parts else np.ones(0, np.int64)
    for v in parts:
        if len(v) < 2:
            continue
        same = v[1:] == v[:-1]  # (n-1, F)
        run = np.ones(v.shape[1], np.int64)
        for row in same:
            run = np.where(row, run + 1, 1)
            best = np.maximum(best, run)
    return best


def distinct_values(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Per feature (F,): how many distinct finite values the training series hold. The stuck-sensor rule
    watches only features with many (engine.stuck_min_distinct): a command flag or a mode with a handful of
    levels holds one level for long stretches by design, so a long hold is no sign of a frozen sensor."""
    if not parts:
        return np.zeros(0, np.int64)
    v = np.concatenate(parts)
    return np.asarray([len(np.unique(c[np.isfinite(c)])) for c in v.T], np.int64)

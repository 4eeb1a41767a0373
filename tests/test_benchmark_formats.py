"""README "Public benchmark formats": each row's command lines, run as written on small synthetic files in the
benchmark's published layout (exact header, separator, time and label columns, file names), with an injected
anomaly. Training is cut to 2 epochs through the environment; the commands themselves are the README's."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from anomaly.cli import main
from tests.test_readme import readme_section

N = 400  # rows per file; the README's --train-rows 300 leaves 100 to replay past training
SPIKE = slice(340, 350)


def wave(n: int = N, seed: int = 0, columns: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.sin(2 * np.pi * np.arange(n) / 24)[:, None] + 0.1 * rng.standard_normal((n, columns))
    base[SPIKE] += 4.0
    return base


def flags(n: int = N) -> np.ndarray:
    out = np.zeros(n, int)
    out[SPIKE] = 1
    return out


def yahoo_a1(root: Path) -> int:
    pd.DataFrame({"timestamp": np.arange(1, N + 1), "value": wave()[:, 0], "is_anomaly": flags()}).to_csv(
        root / "real_1.csv", index=False
    )
    return int(flags().sum())


def yahoo_a3(root: Path) -> int:
    v, t = wave()[:, 0], np.arange(N)
    pd.DataFrame(
        {
            "timestamps": 1416722400 + 3600 * t,
            "value": v,
            "anomaly": flags(),
            "changepoint": 0,
            "trend": 0.0,
            "noise": v - np.sin(2 * np.pi * t / 24),
            "seasonality1": np.sin(2 * np.pi * t / 24),
            "seasonality2": 0.0,
            "seasonality3": 0.0,
        }
    ).to_csv(root / "A3Benchmark-TS1.csv", index=False)
    return int(flags().sum())


def nab(root: Path) -> int:
    # NAB's probationary period is min(15 %, 750) rows: the README's 750 needs a longer file (spike after it)
    lead = 2 * N
    times = pd.date_range("2014-07-01", periods=lead + N, freq="5min")
    value = np.concatenate([wave(seed=1)[:, 0], wave(seed=2)[:, 0], wave()[:, 0]])
    value[SPIKE] -= 4.0  # only the last part's spike is an anomaly
    value[N + SPIKE.start : N + SPIKE.stop] -= 4.0
    pd.DataFrame({"timestamp": times.strftime("%Y-%m-%d %H:%M:%S"), "value": value}).to_csv(
        root / "nyc_taxi.csv", index=False
    )
    spike = slice(lead + SPIKE.start, lead + SPIKE.stop)
    window = [f"{times[spike.start]}.000000", f"{times[spike.stop - 1]}.000000"]
    windows = {"realKnownCause/nyc_taxi.csv": [window], "realKnownCause/other.csv": []}
    (root / "combined_windows.json").write_text(json.dumps(windows, indent=4))
    return spike.stop - spike.start


def smd(root: Path) -> int:
    for part in ("train", "test", "test_label"):
        (root / part).mkdir()
    x = np.abs(wave(columns=38))
    x[:, :4] = 0.0  # SMD has constant columns, so its first line repeats names like '0'
    np.savetxt(
        root / "train" / "machine-1-1.txt", np.abs(wave(seed=1, columns=38)), delimiter=",", fmt="%.6f"
    )
    np.savetxt(root / "test" / "machine-1-1.txt", x, delimiter=",", fmt="%.6f")
    np.savetxt(root / "test_label" / "machine-1-1.txt", flags(), fmt="%d")
    return int(flags().sum())


def psm(root: Path) -> int:
    for name, start, seed in (("train.csv", 0.0, 1), ("test.csv", float(N), 0)):
        frame = pd.DataFrame(wave(seed=seed, columns=25), columns=[f"feature_{i}" for i in range(25)])
        frame.insert(0, "timestamp_(min)", start + np.arange(N))
        frame.to_csv(root / name, index=False)
    pd.DataFrame({"timestamp_(min)": N + np.arange(N, dtype=float), "label": flags()}).to_csv(
        root / "test_label.csv", index=False
    )
    return int(flags().sum())


def swat(root: Path) -> int:
    def stamp(t: pd.Timestamp) -> str:
        return f" {t.day}/{t.month}/{t.year} {(t.hour - 1) % 12 + 1}:{t.minute:02d}:{t.second:02d} {t.strftime('%p')}"

    for name, start, seed in (
        ("SWaT_Dataset_Normal_v1.csv", "2015-12-22 16:00:00", 1),
        ("SWaT_Dataset_Attack_v0.csv", "2015-12-28 11:55:00", 0),
    ):
        times = pd.date_range(start, periods=N, freq="1s")
        x = wave(seed=seed, columns=3)
        label = np.where(flags() == 1, "Attack", "Normal").astype(object)
        label[SPIKE.stop - 2 : SPIKE.stop] = "A ttack"
        frame = pd.DataFrame(
            {" Timestamp": [stamp(t) for t in times], "FIT101": x[:, 0], "LIT101": x[:, 1], " MV101": x[:, 2]}
        )
        frame["Normal/Attack"] = label if seed == 0 else "Normal"
        frame.to_csv(root / name, index=False)
    return int(flags().sum())


def aiops_kpi(root: Path) -> int:
    for name, start, seed in (
        ("phase2_train.csv", 1476460800, 1),
        ("phase2_test.csv", 1476460800 + 60 * N, 0),
    ):
        parts = [
            pd.DataFrame(
                {
                    "timestamp": start + 60 * np.arange(N),
                    "value": 10 * k + wave(seed=seed + k)[:, 0],
                    "label": flags() if seed == 0 else 0,
                    "KPI ID": kpi,
                }
            )
            for k, kpi in enumerate(["02e99bd4f6cfb33f", "9c639a46-34c8-39bc-aaf0-9144b37adfc8"])
        ]
        pd.concat(parts).sort_values("timestamp", kind="stable").to_csv(root / name, index=False)
    return 2 * int(flags().sum())


def tsb_ad(root: Path) -> int:
    """TSB-AD-U: `Data,Label`, no time column; the name's `tr_1007` is the README's --train-rows."""
    rows = 1007 + N
    data = np.concatenate([np.tile(wave(seed=1)[:, 0], 3)[: rows - N], wave()[:, 0]])
    label = np.concatenate([np.zeros(rows - N, int), flags()])
    pd.DataFrame({"Data": data, "Label": label}).to_csv(
        root / "001_NAB_id_1_Facility_tr_1007_1st_2014.csv", index=False
    )
    return int(label.sum())


LAYOUTS: dict[str, Callable[[Path], int]] = {
    "TSB-AD (U and M)": tsb_ad,
    "Yahoo S5 A1, A2": yahoo_a1,
    "Yahoo S5 A3, A4": yahoo_a3,
    "NAB": nab,
    "SMD": smd,
    "PSM": psm,
    "SWaT": swat,
    "AIOps KPI (2018)": aiops_kpi,
}


def table_commands() -> dict[str, list[str]]:
    """{benchmark: its `anomaly ...` command lines} from the README table."""
    text = readme_section("### Your data")
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(" | ")]
        if line.startswith("| ") and len(cells) == 3:
            commands = re.findall(r"`(anomaly [^`]+)`", cells[2])
            if commands:
                out[cells[0].lstrip("| ")] = commands
    return out


COMMANDS = table_commands()


def test_every_benchmark_row_is_run_here() -> None:
    assert sorted(set(COMMANDS) - {"SKAB"}) == sorted(LAYOUTS)


@pytest.mark.parametrize("benchmark", sorted(LAYOUTS))
def test_the_readme_commands_train_and_replay_the_published_layout(benchmark, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    anomalous = LAYOUTS[benchmark](tmp_path)
    env = {"ANOMALY_TRAIN_EPOCHS": "2", "ANOMALY_REPLAY_PLOTS": "false"}
    train, replay = COMMANDS[benchmark]
    for command in (train, replay):
        result = CliRunner().invoke(main, shlex.split(command)[1:], env=env)
        assert result.exit_code == 0, f"{command}\n{result.output}"
    out = shlex.split(replay)[shlex.split(replay).index("-o") + 1]
    summary = json.loads((tmp_path / out / "summary.json").read_text())
    scores = pd.read_csv(tmp_path / out / "scores.csv")
    assert "metrics" in summary and int(scores["label"].sum()) == anomalous
    features = json.loads(CliRunner().invoke(main, ["inspect", shlex.split(train)[-1], "--json"]).output)[
        "features"
    ]
    assert not {"trend", "noise", "is_anomaly", "label", "Normal/Attack", "KPI ID"} & set(features)


def test_the_ucr_recipe_reads_the_split_from_the_file_name(tmp_path, monkeypatch) -> None:
    """The README's UCR commands, with the name's numbers scaled down (300 train rows, anomaly at 341-350)."""
    monkeypatch.chdir(tmp_path)
    name = "001_UCR_Anomaly_DISTORTED1sddb40_300_341_350.txt"
    (tmp_path / name).write_text("".join(f"  {v:.7e}\n" for v in wave()[:, 0]))
    rows, begin, end = (int(p) for p in Path(name).stem.split("_")[-3:])
    labelled = [1 if begin <= i <= end else 0 for i in range(1, N + 1)]  # what the README's awk line writes
    (tmp_path / "ucr-labels.txt").write_text("".join(f"{v}\n" for v in labelled))
    env = {"ANOMALY_TRAIN_EPOCHS": "2", "ANOMALY_REPLAY_PLOTS": "false"}
    block = readme_section("### Your data").split("```sh\n")[1].split("```")[0]
    assert "awk 'NR >= 52000 && NR <= 52620 {print 1; next} {print 0}' $f > ucr-labels.txt" in block
    for command in re.findall(r"^anomaly .*$", block, re.M):
        args = shlex.split(command.replace("$f", name).replace("35000", str(rows)))[1:]
        result = CliRunner().invoke(main, args, env=env)
        assert result.exit_code == 0, f"{command}\n{result.output}"
    summary = json.loads((tmp_path / "runs" / "ucr" / "summary.json").read_text())
    scores = pd.read_csv(tmp_path / "runs" / "ucr" / "scores.csv")
    assert scores["label"].tolist() == labelled and summary["evaluate_after"] == rows
    assert sum(summary["metrics"]["counts"]["point"].values()) == N - rows  # the held-out part only

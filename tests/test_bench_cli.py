"""`anomaly bench` refuses, before measuring anything, options that would fail minutes in or measure nothing."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from anomaly.cli import main


@pytest.mark.parametrize(
    "args, message",
    [
        # before: tracebacks (ValueError, ZeroDivisionError) after the engine table had started
        (["--keys", "abc"], "Invalid value for '--keys': 'abc' is not a comma-separated list of key counts"),
        (["--keys", "1,0"], "Invalid value for '--keys': '1,0': each key count must be at least 1"),
        # before: a flatness ratio of two overlapping spans, printed as if measured
        (
            ["--flat-readings", "5000"],
            "Invalid value for '--flat-readings': 5,000 is shorter than the check's first and last spans of "
            "10,000 readings each: give at least 20,000, or 0 to skip it",
        ),
        # before: silently ignored after minutes of engine measurements
        (
            ["--latency-cores", "split"],
            "--latency-cores only applies with --kafka, without which it would be ignored",
        ),
        (
            ["--kafka-rounds", "3"],
            "--kafka-rounds only applies with --kafka, without which it would be ignored",
        ),
        (["--skab", "."], "--skab only applies with --formats, without which it would be ignored"),
        (
            ["--churn-rounds", "3"],
            "--churn-rounds only applies with --churn-keys N, without which it would be ignored",
        ),
        (["--churn-aa"], "--churn-aa only applies with --churn-keys N, without which it would be ignored"),
        # before: the engine and formats tables ran first, then "SKAB data folder not found"
        (
            ["--formats", "--skab", "no/such/dir"],
            "Invalid value for '--skab': Directory 'no/such/dir' does not exist.",
        ),
    ],
)
def test_bench_refuses_before_measuring(args, message) -> None:
    got = CliRunner().invoke(main, ["bench", *args], prog_name="anomaly")
    assert got.exit_code == 2
    assert got.output.splitlines() == [
        f"error: {message} (see: anomaly bench --help)"
    ]  # nothing was measured


def test_bench_options_given_with_what_they_need_pass_the_check(monkeypatch) -> None:
    import anomaly.bench

    seen = {}

    def fake_engine_bench(counts, flat, memory, say):  # the check passed: stop before measuring for real
        seen["counts"] = counts
        return {}

    monkeypatch.setattr(anomaly.bench, "run_engine_bench", fake_engine_bench)
    got = CliRunner().invoke(main, ["bench", "--keys", "5, 7", "--flat-readings", "20000"])
    assert got.exit_code == 0, got.output
    assert seen["counts"] == (5, 7)

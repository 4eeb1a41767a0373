"""Writing under failure: a file is either left as it was or replaced by the complete new one, no temporary file
stays behind, and the CLI says which path could not be written in one line."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from anomaly import atomic
from anomaly.cli import main
from anomaly.commands.replay_cmds import run_replay
from anomaly.config import build_config
from anomaly.errors import OutputError
from anomaly.metrics import PipelineMetrics, write_textfile


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, failure) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    with pytest.raises(OutputError if isinstance(failure, OSError) else KeyboardInterrupt) as caught:
        with atomic.atomic_path(target, "CSV file") as tmp:
            tmp.write_text("half of the n")
            raise failure
    assert target.read_text() == "old\n"
    assert _listing(tmp_path) == ["out.csv"]
    if isinstance(failure, OSError):
        assert str(caught.value) == f"cannot write the CSV file {target}: No space left on device"


def test_a_symlink_stays_a_link_to_the_new_content(tmp_path) -> None:
    (tmp_path / "v1.pt").write_bytes(b"one")
    (tmp_path / "model.pt").symlink_to("v1.pt")
    atomic.write_bytes(tmp_path / "model.pt", b"two")
    assert (tmp_path / "model.pt").is_symlink() and (tmp_path / "v1.pt").read_bytes() == b"two"
    assert _listing(tmp_path) == ["model.pt", "v1.pt"]


def test_a_directory_in_the_way_is_refused_naming_it(tmp_path) -> None:
    (tmp_path / "summary.json").mkdir()
    with pytest.raises(OutputError, match=r"cannot write the file .*summary\.json: Is a directory"):
        atomic.write_text(tmp_path / "summary.json", "{}")
    assert _listing(tmp_path) == ["summary.json"]


def test_generate_on_a_full_disk_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch) -> None:
    target = tmp_path / "data.csv"
    target.write_text("old\n")

    def full(self, path, **kwargs):
        Path(path).write_text("timestamp,sensor_0\n1,")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    got = CliRunner().invoke(main, ["generate", "-o", str(target), "--points", "100"])
    assert got.exit_code == 2, got.output
    assert got.output.strip() == f"error: cannot write the CSV file {target}: No space left on device"
    assert target.read_text() == "old\n"
    assert _listing(tmp_path) == ["data.csv"]


def test_generate_under_a_file_where_a_folder_should_be_is_one_line(tmp_path) -> None:
    (tmp_path / "data").write_text("")
    got = CliRunner().invoke(main, ["generate", "-o", str(tmp_path / "data" / "x.csv"), "--points", "100"])
    assert got.exit_code == 2 and not isinstance(got.exception, OSError), got.output
    target, folder = tmp_path / "data" / "x.csv", tmp_path / "data"
    assert (
        got.output.strip() == f"error: cannot write the CSV file {target}: {folder} is a file, not a folder"
    )


def test_an_interrupted_replay_leaves_no_truncated_file(bundle_path, test_csv, tmp_path, monkeypatch) -> None:
    """Ctrl-C while scores.csv is written: before, a truncated scores.csv (and empty alerts/rejections files
    from a run that never finished) were left for a reader to take as results."""
    out = tmp_path / "out"

    def interrupted(self, path, **kwargs):
        Path(path).write_text("key,timestamp\nsensor,1")
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_replay([str(test_csv)], str(bundle_path), str(out), build_config(), progress=False)
    assert "scores.csv" not in _listing(out)
    assert not [name for name in _listing(out) if name.endswith(".tmp")]


def test_replay_clears_the_temporary_files_of_a_killed_run(bundle_path, test_csv, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / ".scores.csv.k1ll3d.tmp").write_text("key,timestamp\n")  # what SIGKILL leaves
    (out / ".report-sensor.png.k1ll3d.tmp").write_bytes(b"\x89PNG")
    (out / "notes.txt").write_text("mine")
    cfg = build_config(overrides={"replay.plots": False, "replay.parquet": False})
    run_replay([str(test_csv)], str(bundle_path), str(out), cfg, progress=False)
    assert _listing(out) == ["alerts.jsonl", "notes.txt", "rejections.jsonl", "scores.csv", "summary.json"]


def test_metrics_textfile_under_a_file_where_a_folder_should_be(tmp_path) -> None:
    (tmp_path / "metrics").write_text("")
    with pytest.raises(OutputError, match="cannot write the metrics file"):
        write_textfile(PipelineMetrics(), tmp_path / "metrics" / "run.prom")


def test_an_interrupted_promotion_keeps_the_last_previous_bundle(bundle, bundle_path, tmp_path, monkeypatch):
    """`promote` copies the champion to FILE.previous before the rename; a copy cut short used to leave a
    truncated FILE.previous in place of the last good one."""
    from anomaly import promotion
    from anomaly.promotion import Comparison, ShadowResult

    champion = tmp_path / "model.pt"
    champion.write_bytes(bundle_path.read_bytes())
    previous = tmp_path / "model.pt.previous"
    previous.write_bytes(bundle_path.read_bytes())

    def cut(src, dst):
        Path(dst).write_bytes(Path(src).read_bytes()[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(promotion.shutil, "copy2", cut)
    r = ShadowResult("a", 100, 10, 1, 1.0, 0.0, 0.5, 1.0, 0.1, None, 300)
    with pytest.raises(OutputError, match="cannot write the previous model bundle"):
        promotion.promote(bundle, champion, Comparison(r, r, True, []))
    assert previous.read_bytes() == champion.read_bytes() == bundle_path.read_bytes()
    assert _listing(tmp_path) == ["model.pt", "model.pt.previous"]
    assert os.path.getsize(champion) == os.path.getsize(bundle_path)


def test_a_second_replay_into_the_same_folder_is_refused(bundle_path, test_csv, tmp_path) -> None:
    """Two replays with one --out each deleted and replaced the other's files: the folder ended with a mix of two
    runs. While one writes, the other is refused at once and the first one's files are left alone."""
    from anomaly.replay import only_writer

    out = tmp_path / "out"
    out.mkdir()
    (out / "scores.csv").write_text("of the run in progress\n")
    with only_writer(out):
        with pytest.raises(OutputError, match=f"another replay is writing to {out}"):
            run_replay([str(test_csv)], str(bundle_path), str(out), build_config(), progress=False)
    assert _listing(out) == ["scores.csv"] and (out / "scores.csv").read_text() == "of the run in progress\n"


def test_a_bundle_written_to_a_named_pipe_goes_through_it(bundle, tmp_path) -> None:
    """save_bundle renamed its temporary file over whatever the path was: `-o` a pipe or a device replaced the
    node itself with a regular file (as root, `export -o /dev/full` turned /dev/full into a file)."""
    import threading

    from anomaly.bundle import save_bundle

    pipe = tmp_path / "bundle.fifo"
    os.mkfifo(pipe)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(pipe.read_bytes()), daemon=True)
    reader.start()
    try:
        save_bundle(bundle, pipe)
    finally:
        if reader.is_alive():  # unblock the reader if nothing was written through the pipe
            with open(pipe, "wb"):
                pass
        reader.join(timeout=10)
    assert pipe.is_fifo()
    assert got and got[0][:4] == b"PK\x03\x04"
    assert _listing(tmp_path) == ["bundle.fifo"]


def test_bench_refuses_an_unwritable_json_out_before_it_runs(tmp_path, monkeypatch) -> None:
    """--json-out was first opened after every benchmark had run (up to hours with --kafka): a typo in the path
    lost all the results, with a traceback."""
    import anomaly.bench

    def must_not_run(*args, **kwargs):
        raise AssertionError("the benchmark ran")

    monkeypatch.setattr(anomaly.bench, "run_engine_bench", must_not_run)
    (tmp_path / "results").write_text("")
    target = tmp_path / "results" / "bench.json"
    got = CliRunner().invoke(main, ["bench", "--json-out", str(target)])
    assert got.exit_code == 2, got.output
    assert got.output.startswith(f"error: cannot write the JSON file {target}: ")


def test_the_start_up_probe_leaves_nothing_behind(tmp_path) -> None:
    atomic.check_writable(tmp_path / "new" / "deeper" / "x.json")
    (tmp_path / "kept.json").write_text("old")
    atomic.check_writable(tmp_path / "kept.json")
    assert _listing(tmp_path) == ["kept.json"] and (tmp_path / "kept.json").read_text() == "old"


def test_a_replaced_file_keeps_its_permissions(bundle, tmp_path) -> None:
    """A state snapshot or bundle kept private (0600) became world-readable (0644) when it was rewritten."""
    from anomaly.bundle import save_bundle

    snapshot, model = tmp_path / "state.bin", tmp_path / "model.pt"
    for path in (snapshot, model):
        path.write_bytes(b"old")
        path.chmod(0o600)
    atomic.write_bytes(snapshot, b"new")
    save_bundle(bundle, model)
    assert (snapshot.stat().st_mode & 0o777, model.stat().st_mode & 0o777) == (0o600, 0o600)
    atomic.write_bytes(tmp_path / "fresh.json", b"{}")
    assert (tmp_path / "fresh.json").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_bundle_written_through_a_symlink_keeps_the_link(bundle, tmp_path) -> None:
    """save_bundle writes through the shared atomic writer, so `-o model.pt` where model.pt links to a versioned
    file replaces that file and keeps the link, as every other output does (it replaced the link itself)."""
    from anomaly.bundle import load_bundle, save_bundle

    (tmp_path / "v1.pt").write_bytes(b"old")
    (tmp_path / "model.pt").symlink_to("v1.pt")
    save_bundle(bundle, tmp_path / "model.pt")
    assert (tmp_path / "model.pt").is_symlink()
    assert load_bundle(tmp_path / "v1.pt").version == bundle.version
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "v1.pt"]


def test_the_new_content_reaches_the_disk_before_the_rename_and_the_rename_after_it(
    tmp_path, monkeypatch
) -> None:
    """Without the first fsync a power loss after the rename can leave an empty target; without the folder's,
    the old one may come back although the call returned."""
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    steps: list[tuple[str, object]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        steps.append(("fsync", "folder" if path == tmp_path else path.read_bytes()))
        real_fsync(fd)

    def replace(src, dst) -> None:
        steps.append(("replace", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic.write_bytes(target, b"new bundle")
    assert steps == [("fsync", b"new bundle"), ("replace", "model.pt"), ("fsync", "folder")]
    assert target.read_bytes() == b"new bundle"


def test_a_folder_that_cannot_be_synced_does_not_fail_the_write(tmp_path, monkeypatch) -> None:
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if Path(os.readlink(f"/proc/self/fd/{fd}")).is_dir():
            raise OSError(errno.EINVAL, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic.write_text(tmp_path / "summary.json", "{}")
    assert (tmp_path / "summary.json").read_text() == "{}"
    assert _listing(tmp_path) == ["summary.json"]


def test_a_name_ending_in_a_slash_is_refused_not_written_as_a_file(bundle_path, tmp_path) -> None:
    """`anomaly export model.pt --format int8 -o out/` (or `generate -o out/`) wrote a file named `out`: `Path`
    drops the slash. A name ending in / names a folder; the end-of-run outputs are refused when a run starts."""
    target = f"{tmp_path}/out/"
    result = CliRunner().invoke(main, ["export", str(bundle_path), "--format", "int8", "-o", target])
    assert (result.exit_code, result.stderr) == (
        2,
        f"error: cannot write the model bundle {target}: a name ending in / is a folder, not a file\n",
    )
    with pytest.raises(OutputError, match=r"a name ending in / is a folder, not a file$"):
        atomic.check_writable(target, "JSON results")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_replay_metrics_out_naming_a_file_it_reads_is_refused(bundle_path, test_csv, tmp_path) -> None:
    """`replay data.csv --metrics-out data.csv` (or the model, or DIR/scores.csv) replaced that file with the
    metrics text at the end of the run: the data, the model or the scores were lost. Refused before anything is
    read, every file left as it was."""
    data = tmp_path / "data.csv"
    data.write_bytes(test_csv.read_bytes())
    model = tmp_path / "model.pt"
    model.write_bytes(bundle_path.read_bytes())
    out = tmp_path / "r"
    before = {p: p.read_bytes() for p in (data, model)}
    for target, what in ((data, "data file"), (model, "model bundle"), (out / "scores.csv", "replay output")):
        args = [
            "replay",
            str(data),
            "-m",
            str(model),
            "-o",
            str(out),
            "--no-plots",
            "--metrics-out",
            str(target),
        ]
        result = CliRunner().invoke(main, args)
        assert (result.exit_code, result.stderr) == (
            2,
            f"error: the metrics file {target} is the {what} {target}: the replay would replace it with the "
            "metrics; name another file with --metrics-out\n",
        )
    assert {p: p.read_bytes() for p in (data, model)} == before and not out.exists()


def test_consume_state_out_naming_the_model_or_the_pipeline_is_refused(bundle_path, tmp_path) -> None:
    """`consume -m model.pt --state-out model.pt` replaced the model with the state snapshot when the daemon
    stopped (the next start refused the file: not a model bundle), and `--state-out` naming the pipeline file
    replaced that: refused before the daemon connects to anything, both files left as they were."""
    model = tmp_path / "model.pt"
    model.write_bytes(bundle_path.read_bytes())
    pipeline = tmp_path / "p.toml"
    pipeline.write_text("[engine]\nthreshold = 'static'\n")
    before = {p: p.read_bytes() for p in (model, pipeline)}
    for target, what in ((model, "model bundle"), (pipeline, "pipeline file")):
        args = ["consume", "-m", str(model), "-p", str(pipeline), "-b", "127.0.0.1:1", "--metrics-port", "0"]
        result = CliRunner().invoke(main, [*args, "--bootstrap-timeout", "0.1", "--state-out", str(target)])
        assert (result.exit_code, result.stderr) == (
            2,
            f"error: the state snapshot {target} is the {what} {target}: the daemon would replace it with the "
            "state snapshot when it stops; name another file with --state-out\n",
        )
    assert {p: p.read_bytes() for p in (model, pipeline)} == before


def test_benchmark_json_out_naming_a_file_it_reads_is_refused(tmp_path, monkeypatch) -> None:
    """skab, nasa and bench `--json-out` naming the pipeline file or one of the data files replaced it with the
    summary at the end of the run: refused before anything is read or measured."""
    import anomaly.bench

    def measured(*args, **kwargs):
        raise AssertionError("measured")

    monkeypatch.setattr(anomaly.bench, "run_engine_bench", measured)
    skab_dir = tmp_path / "skab"
    (skab_dir / "valve1").mkdir(parents=True)
    skab_file = skab_dir / "valve1" / "0.csv"
    skab_file.write_text("datetime;Accelerometer1RMS;anomaly;changepoint\n")
    nasa_file = tmp_path / "nasa" / "smap" / "test.csv.gz"
    nasa_file.parent.mkdir(parents=True)
    nasa_file.write_bytes(b"\x1f\x8b")
    pipeline = tmp_path / "p.toml"
    pipeline.write_text("[engine]\nthreshold = 'static'\n")
    before = {p: p.read_bytes() for p in (skab_file, nasa_file, pipeline)}
    cases = [
        (["skab", str(skab_dir), "-p", str(pipeline)], pipeline, "pipeline file", "summary"),
        (["skab", str(skab_dir)], skab_file, "SKAB file", "summary"),
        (["nasa", str(tmp_path / "nasa"), "-p", str(pipeline)], pipeline, "pipeline file", "summary"),
        (["nasa", str(tmp_path / "nasa")], nasa_file, "data file", "summary"),
        (["bench", "--formats", "--skab", str(skab_dir)], skab_file, "SKAB file", "results"),
    ]
    for args, target, what, content in cases:
        result = CliRunner().invoke(main, [*args, "--json-out", str(target)])
        assert (result.exit_code, result.stderr) == (
            2,
            f"error: the JSON file {target} is the {what} {target}: the benchmark would replace it with its "
            f"{content}; name another file with --json-out\n",
        ), args
    assert {p: p.read_bytes() for p in (skab_file, nasa_file, pipeline)} == before


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_a_folder_that_takes_no_new_file_is_said_so():
    """`train -o /proc/m.pt` said only 'No such file or directory' of a folder that exists."""
    with pytest.raises(OutputError) as err:
        atomic.check_writable("/proc/m.pt", "model bundle")
    assert str(err.value) == (
        "cannot write the model bundle /proc/m.pt: the folder /proc takes no new file (No such file or directory)"
    )

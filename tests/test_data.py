"""Reading real-world CSV files (issue 9): each test feeds exactly one awkward input and checks the outcome."""

from __future__ import annotations

import bz2
import gzip
import lzma
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomaly.config import DataConfig
from anomaly.data import load_series, look_alike_keys, sampling_interval, split_at_gaps
from anomaly.data.times import join_date_column
from anomaly.errors import DataError, SchemaError

SEMICOLON = (
    "datetime;a;b\n2023-01-01 00:00:00;1.5;2.0\n2023-01-01 00:00:01;1.25;2.5\n2023-01-01 00:00:02;1.0;3.0\n"
)


def write(tmp_path: Path, text: str, name: str = "x.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load(path: Path, **cfg):
    return load_series([path], DataConfig(**cfg))


@pytest.mark.parametrize(
    ("suffix", "opener"),
    [
        (".csv.gz", gzip.open),
        (".csv.bz2", bz2.open),
        (".csv.xz", lzma.open),
        (".csv.zip", None),
    ],
)
def test_compressed_files_read_like_plain_ones(tmp_path, suffix, opener) -> None:
    """Item 7: the separator used to be detected from the compressed bytes. The series is named after the
    plain file."""
    plain = write(tmp_path, SEMICOLON)
    packed = tmp_path / f"x{suffix}"
    if opener is None:
        with zipfile.ZipFile(packed, "w") as zf:
            zf.writestr("x.csv", SEMICOLON)
    else:
        with opener(packed, "wt") as fh:
            fh.write(SEMICOLON)
    (a,), fa = load(plain, time_column="datetime")
    (b,), fb = load(packed, time_column="datetime")
    assert fa == fb == ["a", "b"]
    assert np.array_equal(a.values, b.values) and np.array_equal(a.timestamps, b.timestamps)
    assert a.key == b.key == "x"  # (the .gz one was series `x.csv`, its report report-x.csv.png)


@pytest.mark.parametrize(
    ("stamps", "unit", "step"),
    [
        ([1_700_000_000, 1_700_000_600, 1_700_001_200], "auto", 600.0),  # epoch seconds
        ([1_700_000_000_000, 1_700_000_600_000, 1_700_001_200_000], "auto", 600.0),  # epoch ms
        ([1_700_000_000_000_000, 1_700_000_600_000_000, 1_700_001_200_000_000], "auto", 600.0),  # epoch us
        ([0, 250, 500], "ms", 0.25),  # a relative millisecond counter can only be told: --time-unit ms
    ],
)
def test_numeric_times_in_any_epoch_unit(tmp_path, stamps, unit, step) -> None:
    """Item 1: epoch milliseconds used to be read as seconds, making every step look like a long gap."""
    rows = "".join(f"{t},{i}.0\n" for i, t in enumerate(stamps))
    (s,), _ = load(write(tmp_path, "timestamp,a\n" + rows), time_unit=unit)
    assert np.diff(s.timestamps).tolist() == [step, step]
    assert sampling_interval([s]) == step


def test_series_are_cut_at_gaps_as_the_engine_resets() -> None:
    from anomaly.data import Series

    s = Series("k", np.array([0.0, 1.0, 2.0, 500.0, 501.0]), np.zeros((5, 1), np.float32))
    assert [p.timestamps.tolist() for p in split_at_gaps([s], 300.0)] == [[0.0, 1.0, 2.0], [500.0, 501.0]]


def test_a_text_cell_in_a_sensor_column_names_column_line_and_value(tmp_path) -> None:
    """Item 4: one `broken` cell used to drop the whole sensor from training, silently."""
    path = write(tmp_path, "timestamp,sensor_0,sensor_1\n1,1.0,2.0\n2,1.5,broken\n3,2.0,2.5\n4,2.5,n/a\n")
    with pytest.raises(SchemaError) as info:
        load(path)
    assert str(info.value) == (
        f"{path}: column 'sensor_1' line 3 holds 'broken', not a number (1 such cell(s)); fix the file, or "
        "pass --bad-cells missing to treat them as missing values (engine.nan_policy then applies)"
    )
    (s,), feats = load(path, bad_cells="missing")
    assert feats == ["sensor_0", "sensor_1"]
    assert np.isnan(s.values[1, 1]) and np.isnan(s.values[3, 1]) and s.values[2, 1] == 2.5


def test_interleaved_series_without_a_key_column_are_refused_naming_the_key(tmp_path) -> None:
    """Item 5: several series in one file without --key-column used to train on the interleaved mix."""
    rows = "".join(
        f"{t},{unit},{t * 0.1 + k}\n" for t in range(20) for k, unit in enumerate(["p1", "p2", "p3"])
    )
    path = write(tmp_path, "timestamp,unit,a\n" + rows)
    with pytest.raises(SchemaError) as info:
        load(path)
    assert str(info.value) == (
        f"{path}: 40 of 60 rows repeat another row's timestamp, so the file looks like several series "
        "interleaved; the likely key column is 'unit': pass --key-column unit"
    )
    series, _ = load(path, key_column="unit")
    assert [(s.key, len(s)) for s in series] == [("p1", 20), ("p2", 20), ("p3", 20)]


def test_rows_are_cut_into_keys_in_one_pass_not_one_scan_per_key(tmp_path, monkeypatch) -> None:
    """A historian export of 5,000 devices (1M rows) took 4 minutes to read: every key scanned every row
    (`keys == key`), rows x keys comparisons. Each key still gets its rows in time order, in first-seen order."""
    keys = [f"d{k:03d}" for k in range(200)]
    rows = [(t, k) for t in (2, 0, 1) for k in keys]  # interleaved, and times out of order in the file
    path = write(
        tmp_path, "timestamp,device,a\n" + "".join(f"{t},{k},{t + i}\n" for i, (t, k) in enumerate(rows))
    )
    scanned = []
    flatnonzero = np.flatnonzero
    monkeypatch.setattr(np, "flatnonzero", lambda a: scanned.append(np.size(a)) or flatnonzero(a))
    series, _ = load(path, key_column="device")
    assert sum(scanned) <= len(rows)  # (was 200 keys x 600 rows = 120,000)
    assert [s.key for s in series] == keys
    assert series[7].timestamps.tolist() == [0.0, 1.0, 2.0]
    assert series[7].values[:, 0].tolist() == [207.0, 408.0, 9.0]
    assert series[7].lines.tolist() == [209, 409, 9]


def test_a_sensor_named_as_the_time_column_is_refused(tmp_path) -> None:
    """`--time-column sensor_1` trained on the rows in the order of that sensor's values, an interval of 0.0017 s
    learnt from them, without a word. Times out of order in the file are still taken in time order: epoch
    seconds, small times whose unit is given, a newest-first export, a key's few rows."""
    rng = np.random.default_rng(0)
    sensor = np.round(20 + np.cumsum(rng.normal(size=60)), 3)
    epochs = 1_700_000_000 + np.arange(60)
    rows = "".join(f"{t},{s},{i}\n" for i, (t, s) in enumerate(zip(epochs, sensor, strict=True)))
    path = write(tmp_path, "timestamp,sensor_1,a\n" + rows)
    with pytest.raises(SchemaError) as err:
        load(path, time_column="sensor_1")
    up, down = int(np.sum(np.diff(sensor) > 0)), int(np.sum(np.diff(sensor) < 0))
    assert str(err.value) == (
        f"{path}: time column 'sensor_1' goes back in time at {down} and forward at {up} of its 59 steps in file "
        f"order, and its numbers (such as {sensor[0]:g}) would be seconds of 1970: it looks like a sensor, not the "
        "time; pass --time-column timestamp, or --time-unit s if these are times (rows are then taken in time order)"
    )
    shuffled = rng.permutation(60)
    for times, unit in ((epochs[shuffled], "auto"), (shuffled, "s"), (np.arange(60)[::-1], "auto")):
        text = "".join(f"{t},{i}\n" for i, t in enumerate(times))
        (s,), _ = load(write(tmp_path, "timestamp,a\n" + text, "t.csv"), time_unit=unit)
        assert s.values[:, 0].tolist() == np.argsort(times).astype(float).tolist()  # in time order
    keyed = "".join(f"{k},{t},{t}\n" for t in (2, 0, 1) for k in range(20))  # 20 keys, each 2, 0, 1
    assert len(load(write(tmp_path, "k,timestamp,a\n" + keyed, "k.csv"), key_column="k")[0]) == 20


def test_times_cut_to_the_minute_are_named_as_such_not_as_interleaved_series(tmp_path) -> None:
    """A spreadsheet showing hh:mm saves 1-second readings as 10:14, 10:14, ...: the error said the file looked
    like several series interleaved and asked for a --key-column it does not have."""
    seconds = [f"2020-03-09 10:{14 + i // 60:02d}:{i % 60:02d}" for i in range(150)]
    rows = "".join(f"{t[:16]};{i * 0.5}\n" for i, t in enumerate(seconds))
    path = write(tmp_path, "datetime;a\n" + rows)
    with pytest.raises(SchemaError) as info:
        load(path, time_column="datetime")
    assert str(info.value) == (
        f"{path}: 147 of 150 rows repeat another row's timestamp, in file order, and every time is a whole "
        "minute: the export seems to have cut off the seconds (a spreadsheet saves times as its cells show them); "
        "export the times with seconds (cells formatted yyyy-mm-dd hh:mm:ss), or pass --key-column if the rows "
        "are several series"
    )
    whole = write(
        tmp_path, "datetime;a\n" + "".join(f"{t};{i * 0.5}\n" for i, t in enumerate(seconds)), "s.csv"
    )
    (s,), _ = load(whole, time_column="datetime")
    assert len(s) == 150 and np.diff(s.timestamps).tolist() == [1.0] * 149


def test_series_written_one_after_another_without_a_key_are_refused(tmp_path) -> None:
    """Two loggers' 10-minute files joined with `cat`, one started 5 minutes after the other: no time repeats, so
    the file was read as one series of 5-minute readings, each step from one sensor to the other, without a
    word (sampling interval 300 s)."""
    start = np.datetime64("2026-11-01T00:00", "s").astype(np.int64)
    first = [(start + 600 * i, 1.0 + i % 3) for i in range(60)]
    second = [(start + 300 + 600 * i, 50.0 + i % 3) for i in range(60)]
    rows = "".join(f"{t},{v}\n" for t, v in first + second)
    path = write(tmp_path, "timestamp,a\n" + rows)
    with pytest.raises(SchemaError) as info:
        load(path)
    assert str(info.value) == (
        f"{path}: its times go back 1 time(s) in file order (first on line 62) and the parts so formed cover the "
        "same period, so the file looks like several series written one after another; taken in time order they "
        "would be read as one series, each reading from another part; add a column that tells the series apart "
        "and pass --key-column, or give each series a file of its own"
    )
    keyed = "".join(f"{k},{t},{v}\n" for k, part in (("p1", first), ("p2", second)) for t, v in part)
    with pytest.raises(
        SchemaError, match=r"each reading from another part; pass --key-column k, the column that "
    ):
        load(write(tmp_path, "k,timestamp,a\n" + keyed, "k.csv"))
    p1, p2 = load(write(tmp_path, "k,timestamp,a\n" + keyed, "k.csv"), key_column="k")[0]
    assert (len(p1), len(p2)) == (60, 60) and np.diff(p1.timestamps).tolist() == [600.0] * 59
    # parts joined out of order (December's export before November's) and a few late rows are one series
    later = [(t + 86400 * 30, v) for t, v in first]
    late = first[:50] + first[52:] + first[50:52]
    for i, part in enumerate((later + first, late)):
        rows = "".join(f"{t},{v}\n" for t, v in part)
        (s,), _ = load(write(tmp_path, "timestamp,a\n" + rows, f"ok{i}.csv"))
        assert s.timestamps.tolist() == sorted(t for t, _ in part)


def test_a_header_repeated_inside_the_file_is_named_as_files_joined_with_their_headers(tmp_path) -> None:
    """`cat a.csv b.csv` keeps b's header line: the error blamed the time format (`pass --time-format`), and
    under --no-time-column a text cell (`--bad-cells missing`, which would have kept the line as a reading)."""
    part = "".join(f"2026-11-01 00:{i:02d}:00;{i},5;{i}\n" for i in range(5))
    path = write(tmp_path, "\ufeffdatetime;a;b\r\n" + part + "\ufeffdatetime;a;b\r\n" + part)
    with pytest.raises(SchemaError) as info:
        load(path, time_column="datetime", decimal=",")
    assert str(info.value) == (
        f"{path}: line 7 repeats the header (1 such line(s)): files joined with their header lines, as `cat a.csv "
        "b.csv` writes them; keep the first header only, or pass the files themselves (`anomaly train a.csv b.csv`)"
    )
    plain = write(tmp_path, "a,b\n1,2\n3,4\na,b\n5,6\n", "n.csv")
    with pytest.raises(SchemaError, match=r"line 4 repeats the header \(1 such"):
        load(plain, time_column=None)
    named = write(tmp_path, "k,timestamp,a\nk,timestamp,x\nk,1,2\n", "k.csv")  # one cell differs: a value
    with pytest.raises(DataError, match="cannot parse time value 'timestamp'"):
        load(named, key_column="k")


def test_a_row_of_units_under_the_header_is_named(tmp_path) -> None:
    """`timestamp,a,b` then `,g,bar` (or `[UTC],g,bar`): the error named one cell as text in a numeric column
    (`--bad-cells missing`), or the time as not ISO-like (`--time-format`); the fix is to delete the line."""
    data = "".join(f"2026-11-01 00:0{i}:00,{i}.5,{i}\n" for i in range(5))
    for units in (",g,bar", "[UTC],g,bar"):
        path = write(tmp_path, f"timestamp,a,b\n{units}\n" + data)
        with pytest.raises(SchemaError) as info:
            load(path)
        assert str(info.value) == (
            f"{path}: line 2 holds text in every feature column ('g', 'bar'), not readings: a row of units or "
            "descriptions under the header; delete that line"
        )
    (s,), _ = load(write(tmp_path, "timestamp,a,b\n,g,bar\n" + data, "m.csv"), bad_cells="missing")
    assert np.isnan(s.timestamps[-1]) and s.values[:5, 1].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]  # as before:
    # a reading without a time, which training drops and replay refuses
    with pytest.raises(SchemaError, match=r"column 'a' line 2 holds 'broken', not a number"):  # one cell
        load(write(tmp_path, "timestamp,a,b\n2026-11-01,broken,1\n" + data, "b.csv"))


def test_rows_of_separators_only_are_no_readings(tmp_path) -> None:
    """Excel writes its empty rows as `;;;`: each was a reading without a time, refused by replay (`non_finite`)
    and evaluated with label 0, where a blank line is no row at all."""
    data = "".join(f"2026-11-01 00:0{i}:00;{i},5;{i};0\r\n" for i in range(4))
    path = write(tmp_path, "timestamp;a;b;anomaly\r\n" + data + ";;;\r\n;;;\r\n")
    (s,), _ = load(path, decimal=",")
    assert (
        s.lines.tolist() == [2, 3, 4, 5] and np.isfinite(s.timestamps).all() and s.labels.tolist() == [0] * 4
    )
    rows = "2026-11-01 00:00:00;1,5;1\n2026-11-01 00:01:00;2,5;2\n;;\n2026-11-01 00:02:00;x;3\n"
    middle = write(tmp_path, "timestamp;a;b\n" + rows, "m.csv")
    with pytest.raises(SchemaError, match=r"column 'a' line 5 holds 'x'"):  # the lines named stay the file's
        load(middle, decimal=",")


def test_exports_that_overlap_joined_in_one_file_are_named_as_copies(tmp_path) -> None:
    """Two exports of one logger (`last 24 h`, taken every 12 h) joined: the second half of one is the first half
    of the next, row for row; the error said several series were interleaved and asked for a --key-column."""
    rows = [f"2026-11-01 00:{i:02d}:00,{i}.5,{i % 7}\n" for i in range(40)]
    path = write(tmp_path, "timestamp,a,b\n" + "".join(rows[:30] + rows[20:]))
    with pytest.raises(SchemaError) as info:
        load(path)
    assert str(info.value) == (
        f"{path}: 10 of 50 rows repeat another row exactly, time and every value (first on line 32), as exports "
        "that overlap in time do when joined into one file; keep one copy of each row, or pass the exports as "
        "files of their own"
    )
    changed = rows[:30] + [r.replace(".5,", ".25,") for r in rows[20:30]] + rows[30:]  # one value differs
    with pytest.raises(SchemaError, match="so the file looks like several series interleaved"):
        load(write(tmp_path, "timestamp,a,b\n" + "".join(changed), "c.csv"))


def dates(tmp_path, *stamps: str) -> Path:
    return write(tmp_path, "timestamp,a\n" + "".join(f"{t},{i}\n" for i, t in enumerate(stamps)))


def test_ambiguous_day_month_dates_are_refused_until_the_order_is_given(tmp_path) -> None:
    """Item 6: 02/01/2023 used to be read as 2 February without a word."""
    path = dates(tmp_path, "02/01/2023 10:00", "03/01/2023 10:00")
    with pytest.raises(DataError, match="read as day/month or month/day; pass --dayfirst or --monthfirst"):
        load(path)
    (s,), _ = load(path, dayfirst=True)
    assert s.timestamps[0] == np.datetime64("2023-01-02T10:00", "s").astype(np.int64)
    (s,), _ = load(path, dayfirst=False)
    assert s.timestamps[0] == np.datetime64("2023-02-01T10:00", "s").astype(np.int64)
    (s,), _ = load(path, time_format="%d/%m/%Y %H:%M")
    assert s.timestamps[0] == np.datetime64("2023-01-02T10:00", "s").astype(np.int64)


@pytest.mark.parametrize("dayfirst", [True, False])
def test_dayfirst_leaves_iso_dates_alone_and_says_it_had_no_effect(tmp_path, dayfirst: bool) -> None:
    """`--dayfirst` with ISO-8601 times read them as year-day-month: 2023-02-01 became 2 January, while
    2023-02-13 (no 13th month) stayed 13 February, so the times went out of order without a word. ISO dates have
    one order: the option is left out for them, and with epoch numbers, with one warning each load."""
    path = dates(tmp_path, "2023-02-01 10:00", "2023-02-03 10:00", "2023-02-13T10:00:00Z")
    (s,), _ = load(path, dayfirst=dayfirst)
    day = 86_400
    start = np.datetime64("2023-02-01T10:00", "s").astype(np.int64)
    assert s.timestamps.tolist() == [start, start + 2 * day, start + 12 * day]
    heard: list[str] = []
    both, _ = load_series(
        [path, path], DataConfig(dayfirst=dayfirst), warn=heard.append
    )  # two files, one word
    assert [x.timestamps.tolist() for x in both] == [s.timestamps.tolist()] * 2
    flag = f"--{'day' if dayfirst else 'month'}first (data.dayfirst = {str(dayfirst).lower()})"
    assert heard == [
        f"{flag} had no effect: time column 'timestamp' holds dates such as '2023-02-01 10:00', not day/month "
        "dates (ISO-8601 dates are year first)"
    ]
    heard.clear()
    epochs = write(tmp_path, "timestamp,a\n1700000000,1\n1700000060,2\n", "e.csv")
    (s,), _ = load_series([epochs], DataConfig(dayfirst=dayfirst), warn=heard.append)
    assert s.timestamps.tolist() == [1700000000.0, 1700000060.0]
    assert heard == [
        f"{flag} had no effect: time column 'timestamp' holds epoch numbers such as 1700000000, not dates"
    ]
    heard.clear()
    load_series([dates(tmp_path, "02/01/2023 10:00")], DataConfig(dayfirst=dayfirst), warn=heard.append)
    assert heard == []  # a day/month date: the option is what read it


def test_unambiguous_day_first_dates_parse_and_mixed_orders_are_refused(tmp_path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no pandas UserWarning may leak
        (s,), _ = load(dates(tmp_path, "12/01/2023 10:00", "13/01/2023 10:00"))
        assert np.diff(s.timestamps).tolist() == [86_400.0]
        with pytest.raises(DataError, match="mixes day-first and month-first dates"):
            load(dates(tmp_path, "13/01/2023 10:00", "01/14/2023 10:00"))
        with pytest.raises(DataError, match="has month-first dates such as '01/13/2023 10:00'"):
            load(dates(tmp_path, "01/13/2023 10:00", "01/14/2023 10:00"), dayfirst=True)
        with pytest.raises(DataError, match=r"cannot parse time value 'soon' \(line 3\)"):
            load(dates(tmp_path, "2023-01-01 10:00", "soon"))


def test_decimal_commas_are_read_with_decimal_comma_and_hinted_without(tmp_path) -> None:
    """Confusing today: `;` files with decimal commas gave "no numeric feature columns"."""
    path = write(tmp_path, "timestamp;a;b\n1;1,5;2,25\n2;1,75;2,5\n")
    with pytest.raises(
        SchemaError, match=r"holds numbers with decimal commas such as '1,5': pass --decimal ,"
    ):
        load(path)
    (s,), feats = load(path, decimal=",")
    assert feats == ["a", "b"] and s.values.tolist() == [[1.5, 2.25], [1.75, 2.5]]


def test_a_column_that_looks_like_labels_must_be_named(tmp_path) -> None:
    """Confusing today: a label column called `label` was taken for a feature (or reported as unexpected)."""
    path = write(tmp_path, "timestamp,a,label\n1,1.0,0\n2,2.0,1\n3,3.0,0\n")
    with pytest.raises(SchemaError, match="column 'label' looks like labels .* pass --label label"):
        load(path)
    (s,), feats = load(path, label="label")
    assert feats == ["a"] and s.labels.tolist() == [0, 1, 0]


def test_a_separator_at_the_end_of_every_row_keeps_the_columns_in_place(tmp_path) -> None:
    """Exports often end each data row with a separator. pandas then took the first column for the index and
    shifted every column one to the left (times became the index, a sensor became the time column): a
    traceback, or silently wrong readings."""
    rows = "2023-01-01 00:00:00,1.5,2.0,\n2023-01-01 00:00:01,1.25,2.5,\n2023-01-01 00:00:02,1.0,3.0,\n"
    for header in ("timestamp,a,b\n", "timestamp,a,b,\n"):
        (s,), feats = load(write(tmp_path, header + rows))
        assert feats == ["a", "b"]
        assert s.values.tolist() == [[1.5, 2.0], [1.25, 2.5], [1.0, 3.0]]
        assert s.timestamps.tolist() == [1672531200.0, 1672531201.0, 1672531202.0]


def test_a_text_cell_is_named_by_its_line_when_rows_end_with_a_separator(tmp_path) -> None:
    path = write(tmp_path, "timestamp,a\n1,1.0,\n2,oops,\n3,3.0,\n")
    with pytest.raises(SchemaError, match="column 'a' line 3 holds 'oops'"):
        load(path)


def test_columns_that_are_not_features_are_reported_with_the_reason(tmp_path) -> None:
    """An empty sensor column (say, offline for the whole export) is not a feature; the caller learns which
    columns were left out and why. An unnamed empty column (a separator at the end of the header) is not
    reported: it is no column of the user's."""
    path = write(tmp_path, "timestamp,a,b,site,anomaly,\n1,1.0,,x,0,\n2,2.0,,x,0,\n3,3.0,,y,1,\n")
    left_out: dict[str, str] = {}
    (s,), feats = load_series([path], DataConfig(), left_out=left_out)
    assert feats == ["a"] and s.values.tolist() == [[1.0], [2.0], [3.0]]
    assert left_out == {"b": "no value in any row", "site": "text"}
    left_out.clear()
    load_series([path], DataConfig(features=("a",)), left_out=left_out)
    assert left_out == {}  # the user chose: nothing to report (it said 'b (text)' of a numeric column)


def test_a_row_without_a_key_is_refused_naming_its_line(tmp_path) -> None:
    """A row whose key cell was empty became a series of no readings: the row was lost without a word."""
    path = write(tmp_path, "timestamp,unit,a\n1,u1,1.0\n1,u2,2.0\n2,,3.0\n2,u2,4.0\n3,,5.0\n")
    with pytest.raises(
        SchemaError, match=r"x.csv: key column 'unit' is empty on line 4 \(2 such row\(s\)\); "
    ):
        load(path, key_column="unit")


def test_empty_and_non_utf8_files_say_what_is_wrong(tmp_path) -> None:
    with pytest.raises(DataError, match=r"x.csv is empty$"):
        load(write(tmp_path, ""))
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("timestamp,temp °C\n1,20.5\n".encode("latin-1"))
    with pytest.raises(
        DataError,
        match=r"it is not UTF-8 text \(byte 0xb0 on line 1: .timestamp,temp °C. in Windows-1252\); if it is Windows-1252 \(Excel's .CSV. on Windows\), read it with --encoding cp1252 "
        r"\(data.encoding\), or save it as UTF-8 \(Excel: .CSV UTF-8.\), or convert it, e.g. iconv ",
    ):
        load(latin1)


def test_an_empty_time_cell_is_a_missing_time_like_a_numeric_one(tmp_path) -> None:
    """An empty cell in a text time column refused the whole file as 'cannot parse time value nan ...; pass
    --time-format'; in a numeric time column it is a missing time, whose reading the engine refuses alone."""
    text = write(
        tmp_path, "timestamp,a\n2023-01-01 00:00:00,1.0\n,2.0\n2023-01-01 00:00:02,3.0\n", "text.csv"
    )
    numeric = write(tmp_path, "timestamp,a\n1672531200,1.0\n,2.0\n1672531202,3.0\n", "numeric.csv")
    for path in (text, numeric):
        (s,), _ = load(path)
        assert np.array_equal(s.timestamps, [1672531200.0, 1672531202.0, np.nan], equal_nan=True)
        assert s.values.tolist() == [[1.0], [3.0], [2.0]]
    with pytest.raises(DataError, match=r"cannot parse time value 'soon' \(line 3\)"):
        load(write(tmp_path, "timestamp,a\n2023-01-01 00:00:00,1.0\nsoon,2.0\n"))


def test_a_text_cell_among_epoch_times_is_the_one_named(tmp_path) -> None:
    """One text cell makes pandas read a column of epoch seconds as text; the error named the first number
    ('1700000000' (line 2)), which is a valid time, instead of the cell to fix."""
    path = dates(tmp_path, "1700000000", "1700000060", "oops", "1700000180")
    with pytest.raises(DataError, match=r"cannot parse time value 'oops' \(line 4\)"):
        load(path)


def test_parts_of_a_key_from_several_files_join_in_time_order(tmp_path) -> None:
    from anomaly.data import merge_keys

    late = write(tmp_path, "t,k,a,anomaly\n3,u,3.0,1\n4,u,4.0,0\n", "late.csv")
    early = write(tmp_path, "t,k,a,anomaly\n1,u,1.0,0\n2,u,2.0,0\n1,v,9.0,0\n", "early.csv")
    series, _ = load_series([late, early], DataConfig(time_column="t", key_column="k"))
    u, v = merge_keys(series)
    assert (u.key, u.timestamps.tolist(), u.values.tolist(), u.labels.tolist()) == (
        "u",
        [1.0, 2.0, 3.0, 4.0],
        [[1.0], [2.0], [3.0], [4.0]],
        [0, 0, 1, 0],
    )
    assert (v.key, v.values.tolist(), v.source) == ("v", [[9.0]], str(early))
    unlabelled = write(tmp_path, "t,k,a\n5,u,5.0\n", "unlabelled.csv")
    series, _ = load_series([early, unlabelled], DataConfig(time_column="t", key_column="k"))
    with pytest.raises(SchemaError, match=f"key 'u' has labels in {early} but not in {unlabelled}"):
        merge_keys(series)


def test_a_label_that_is_not_a_number_is_refused_naming_the_label_column(tmp_path) -> None:
    """The error said 'column anomaly ... not a number ... or pass --bad-cells missing', which labels ignore."""
    path = write(tmp_path, "timestamp,a,anomaly\n1,1.0,0\n2,2.0,yes\n3,3.0,\n")
    for bad_cells in ("error", "missing"):
        with pytest.raises(
            SchemaError, match=r"x.csv: label column 'anomaly' line 3 holds 'yes'; labels are 0 or 1"
        ):
            load(path, bad_cells=bad_cells)
    (s,), _ = load(write(tmp_path, "timestamp,a,anomaly\n1,1.0,0\n2,2.0,1\n3,3.0,\n", "ok.csv"))
    assert s.labels.tolist() == [0, 1, 0]


def test_iso_times_in_more_than_one_iso_form_all_parse(tmp_path) -> None:
    """pandas takes the first value's format for the column: a logger's '...:00' next to '...:00.500', or 'T'
    and 'Z' on some rows only, refused the whole file ('cannot parse time value ...; pass --time-format')."""
    path = write(
        tmp_path,
        "timestamp,a\n2023-01-01 00:00:00,1\n2023-01-01 00:00:00.500,2\n2023-01-01T00:00:01Z,3\n"
        "2023-01-01 01:00:02+01:00,4\n",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (s,), _ = load(path)
    assert (s.timestamps - 1672531200.0).tolist() == [0.0, 0.5, 1.0, 2.0]
    with pytest.raises(DataError, match=r"cannot parse time value 'soon' \(line 3\)"):
        load(write(tmp_path, "timestamp,a\n2023-01-01 00:00:00,1.0\nsoon,2.0\n", "soon.csv"))


@pytest.mark.parametrize("compress", [False, True])
def test_errors_name_the_line_an_editor_shows_after_blank_lines(tmp_path, compress) -> None:
    """The reader skips blank (and blank-looking) lines; the line an error names still counts them."""
    text = "timestamp,a\n1,1.0\n\n   \n2,oops\n3,3.0\n"
    path = write(tmp_path, text)
    if compress:
        path = tmp_path / "x.csv.gz"
        path.write_bytes(gzip.compress(text.encode()))
    with pytest.raises(SchemaError, match="column 'a' line 5 holds 'oops'"):
        load(path)
    times = write(
        tmp_path, "timestamp,a\n2024-01-01 00:00:00,1\n\n2024-01-01 00:00:01,2\n\nsoon,3\n", "t.csv"
    )
    with pytest.raises(DataError, match=r"cannot parse time value 'soon' \(line 6\)"):
        load(times)
    keys = write(tmp_path, "timestamp,unit,a\n1,u1,1\n\n2,,2\n", "k.csv")
    with pytest.raises(SchemaError, match=r"key column 'unit' is empty on line 4 "):
        load(keys, key_column="unit")


TIMES = [f"2023-03-25 00:00:0{i}" for i in range(4)]


def rows(cells: list[str], sep: str = ",") -> str:
    return "".join(f"{t}{sep}{c}\n" for t, c in zip(TIMES, cells, strict=True))


def test_thousands_separators_are_read_where_the_column_proves_them(tmp_path) -> None:
    """Excel's '1,234.5' (and '1.234,5' with --decimal ,) made the column text: it left the features with
    only 'a (text)' printed, and every value was lost to the model."""
    (s,), feats = load(
        write(
            tmp_path, "timestamp,a,b\n" + rows(['"1,234.5",1', '"999.25",2', '"1,000",3', '"-2,000,000",4'])
        )
    )
    assert feats == ["a", "b"]
    assert s.values[:, 0].tolist() == [1234.5, 999.25, 1000.0, -2000000.0]
    text = "timestamp;a\n" + rows(["1.234,5", "999,25", "1.000", "-2.000.000"], ";")
    (s,), _ = load(write(tmp_path, text, "comma.csv"), decimal=",")
    assert s.values[:, 0].tolist() == [1234.5, 999.25, 1000.0, -2000000.0]


def test_digits_grouped_with_spaces_and_the_unicode_minus_are_read(tmp_path) -> None:
    """French, Nordic and Swiss Excel write `1 234,5` (a no-break or narrow no-break space between the groups)
    and `\u22121,5`: the column was text, left out of the features as 'a (text)', and a file of such columns
    had 'no numeric feature columns' without a reason."""
    cells = ["1\u00a0234,5;1", "999,25;2", "\u22122\u202f000\u202f000;3", "\u22120,5;4"]
    (s,), feats = load(write(tmp_path, "timestamp;a;b\n" + rows(cells, ";")), decimal=",")
    assert feats == ["a", "b"]
    assert s.values[:, 0].tolist() == [1234.5, 999.25, -2000000.0, -0.5]
    (s,), _ = load(
        write(tmp_path, "timestamp,a\n" + rows(["12 345.5", "1 000", "7", "-3 000.25"]), "dot.csv")
    )
    assert s.values[:, 0].tolist() == [12345.5, 1000.0, 7.0, -3000.25]
    with pytest.raises(SchemaError, match=r"line 3 holds '1 23,5', not a number"):  # not groups of three
        load(
            write(tmp_path, "timestamp;a\n" + rows(["1,5", "1 23,5", "2", "3"], ";"), "bad.csv"), decimal=","
        )


def test_a_lone_comma_number_is_not_taken_for_a_thousands_separator(tmp_path) -> None:
    """'1,234' alone may be a decimal comma: the old refusal with its --decimal hint stays."""
    path = write(tmp_path, "timestamp,a,b\n" + rows(['"1,234",1', '"5,678",2', "7,3", "8,4"]))
    with pytest.raises(SchemaError, match=r"holds '1,234', not a number.*--decimal ,"):
        load(path, features=("a", "b"))


def test_a_cell_of_spaces_is_a_missing_value(tmp_path) -> None:
    """A blank cell with a space in it (' ') stopped the run as 'not a number'; an empty cell is missing."""
    (s,), _ = load(write(tmp_path, "timestamp,a,b\n" + rows(["1.5,1", " ,2", "2.5,3", "  ,4"])))
    assert np.isnan(s.values[[1, 3], 0]).all() and s.values[[0, 2], 0].tolist() == [1.5, 2.5]


def test_a_column_name_given_twice_is_refused(tmp_path) -> None:
    """pandas renamed the copy 'a.1' (a feature nobody named); 'a ' and 'a' collided after stripping and
    ended in a traceback."""
    with pytest.raises(DataError, match=r"column name 'a' appears twice in the header \(columns 2 and 3\)"):
        load(write(tmp_path, "timestamp,a,a,b\n" + rows(["1,2,3"] * 4)))
    with pytest.raises(DataError, match=r"column name 'a' appears twice"):
        load(write(tmp_path, "timestamp,a , a,b\n" + rows(["1,2,3"] * 4), "spaces.csv"))


def test_invisible_characters_around_a_header_name_are_dropped(tmp_path) -> None:
    """A zero-width space after 'b' made a feature 'b\u200b' that prints as 'b' but matches no 'b'."""
    (_,), feats = load(write(tmp_path, "timestamp,\u00a0a\u00a0,b\u200b\n" + rows(["1,2"] * 4)))
    assert feats == ["a", "b"]


def test_an_unnamed_column_is_not_a_feature(tmp_path) -> None:
    """pandas' to_csv writes its row index under an empty name: it became the feature 'Unnamed: 0'."""
    left_out: dict[str, str] = {}
    path = write(tmp_path, ",timestamp,a\n" + "".join(f"{i},{t},{i * 1.5}\n" for i, t in enumerate(TIMES)))
    (s,), feats = load_series([path], DataConfig(), left_out=left_out)
    assert feats == ["a"] and left_out == {"Unnamed: 0": "no name in the header"}


def test_excel_serial_dates_are_refused_not_read_as_1970(tmp_path) -> None:
    """45010.5 (2023-03-25 12:00 in Excel) was read as epoch seconds: 1970-01-01 12:30, one reading every
    0.07 s."""
    text = "timestamp,a\n" + "".join(f"{45010 + i / 1440:.8f},{i}\n" for i in range(4))
    with pytest.raises(DataError, match=r"look like Excel serial dates.*--time-unit s"):
        load(write(tmp_path, text))
    (s,), _ = load(write(tmp_path, text, "s.csv"), time_unit="s")
    assert s.timestamps[0] == 45010.0


def test_whole_excel_serial_dates_are_refused_when_named_or_stepped_as_days(tmp_path) -> None:
    """A daily file of Excel serials (45010, 45011, ...) was read as epoch seconds a second apart; only
    fractional serials were refused. Whole ones are refused when the column is named for days or the times skip
    every weekend; a column of whole numbers named `time` stepping by one is taken as seconds (a counter)."""
    daily = "".join(f"{45010 + i},{i}\n" for i in range(30))
    with pytest.raises(DataError) as named:
        load(write(tmp_path, "Date,a\n" + daily), time_column="Date")
    assert str(named.value) == (
        f"{tmp_path / 'x.csv'}: time column 'Date' holds numbers like 45010.0 that look like Excel serial dates (days since 1899-12-30: "
        "45010 is 2023-03-25), not epoch times; export the times as text (format the cells as yyyy-mm-dd "
        "hh:mm:ss), or pass --time-unit s if they are seconds"
    )
    workdays = [d for d in range(45012, 45012 + 28) if d % 7 not in (0, 1)]  # Mondays to Fridays, four weeks
    text = "timestamp,a\n" + "".join(f"{d},{i}\n" for i, d in enumerate(workdays))
    with pytest.raises(
        DataError, match=r"w.csv: time column 'timestamp' holds numbers like 45012.0 that look"
    ):
        load(write(tmp_path, text, "w.csv"))
    counter = write(tmp_path, "time,a\n" + daily, "t.csv")  # seconds 45010, 45011, ...: taken as such
    (s,), _ = load(counter, time_column="time")
    assert s.timestamps.tolist() == [45010.0 + i for i in range(30)]
    (s,), _ = load(write(tmp_path, "Date,a\n" + daily, "s.csv"), time_column="Date", time_unit="s")
    assert s.timestamps[0] == 45010.0


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("#group,false,false\n#datatype,string,long\n,result,table\n", "InfluxDB annotated CSV"),
        (",result,table,_time,_value,_field\n", "InfluxDB's long form"),
    ],
)
def test_influxdb_exports_are_refused_with_what_to_do(tmp_path, header, message) -> None:
    """The '#group' line was taken for the header: 'time column not found; columns are #group, false,
    false.1'."""
    with pytest.raises(DataError, match=rf"{message}.*pivot.*--time-column _time"):
        load(write(tmp_path, header + ",,0,2023-01-01T00:00:00Z,1.5,a\n"))


def test_numbers_with_units_are_refused(tmp_path) -> None:
    """Grafana's formatted export ('12.3 ms', '45%'): 'no numeric feature columns found among Time, latency,
    cpu', or the column silently left out as text."""
    text = '"Time","latency","cpu","ok"\n' + "".join(
        f'"{t}","{i}.5 ms","{i}%",1\n' for i, t in enumerate(TIMES)
    )
    with pytest.raises(SchemaError, match=r"column 'latency' holds numbers with units such as '0.5 ms'"):
        load(write(tmp_path, text), time_column="Time")


def test_identifiers_that_start_with_a_digit_are_not_taken_for_units(tmp_path) -> None:
    """A text column of ids such as '101A' or '3rd' (no space before the letters) stays a text column that is
    not a feature; only numbers with a unit after a space (or %, °C) are refused as a formatted export."""
    text = "timestamp,unit,a\n" + "".join(f"{t},{i}0{'AB'[i % 2]},{i}.5\n" for i, t in enumerate(TIMES))
    series, feats = load(write(tmp_path, text))
    assert feats == ["a"] and len(series) == 1


def test_a_missing_time_column_names_the_likely_one(tmp_path) -> None:
    with pytest.raises(SchemaError, match=r"columns are Time, a \(pass --time-column Time\)"):
        load(write(tmp_path, "Time,a\n" + rows(["1"] * 4)))


def test_a_column_that_counts_the_readings_is_named_as_the_likely_time(tmp_path) -> None:
    """NASA SMAP/MSL (telemanom) CSVs count readings in `step`: the error pointed to --no-time-column, which
    trains on `step` as a sensor that only grows. A pandas row index (no header name) is never that hint."""
    text = "chan_id,step,telemetry,cmd_01\n" + "".join(
        f"{c},{i},{0.1 * i:.1f},0\n" for c in ("A-1", "A-2") for i in range(6)
    )
    path = write(tmp_path, text)
    with pytest.raises(
        SchemaError,
        match=r"not found; columns are chan_id, step, telemetry, cmd_01 \(column 'step' counts up row by row: "
        r"pass --time-column step if it is the time, with --time-unit for its unit; --no-time-column would "
        r"make it a sensor\)$",
    ):
        load(path)
    series, feats = load(path, time_column="step", key_column="chan_id")
    assert feats == ["telemetry", "cmd_01"]
    assert [s.timestamps.tolist() for s in series] == [list(range(6))] * 2
    index = write(tmp_path, ",a,b\n0,1.5,2\n1,1.25,3\n2,1.0,2\n3,1.5,1\n", "index.csv")
    with pytest.raises(SchemaError, match=r"not found; columns are Unnamed: 0, a, b \(a file without a time"):
        load(index)


def test_a_time_column_without_values_says_so(tmp_path) -> None:
    """All times empty read as '3 of 4 rows repeat another row's timestamp ... several series'."""
    with pytest.raises(SchemaError, match=r"time column 'timestamp' has no value in any row"):
        load(write(tmp_path, "timestamp,a\n,1\n,2\n,3\n,4\n"))


# --- public benchmark layouts (README: Public benchmark formats) ---------------------------------------------


SMD_ROWS = "0,0,0.5,0.25\n0,0,0.75,0.5\n0,0,0.25,0.125\n"  # SMD: no header, no time column, many zeros


def test_a_file_without_a_header_says_so_and_reads_with_no_header(tmp_path) -> None:
    """SMD's first data row was taken for the header: 'column name '0' appears twice', with no way out."""
    path = write(tmp_path, SMD_ROWS, "machine-1-1.txt")
    with pytest.raises(
        DataError,
        match=r"appears twice .* \(its first line holds numbers: for a file without a header, pass --no-header\)",
    ):
        load(path)
    with pytest.raises(SchemaError, match="not found; columns are 1, 2, 3, 4 .* pass --no-time-column"):
        load(path, header=False)
    (s,), feats = load(path, header=False, time_column="")
    assert feats == ["1", "2", "3", "4"]  # numbered from 1, as SMD's interpretation labels number them
    assert s.timestamps.tolist() == [0.0, 1.0, 2.0]
    assert s.values.tolist() == [[0, 0, 0.5, 0.25], [0, 0, 0.75, 0.5], [0, 0, 0.25, 0.125]]


def test_a_first_line_of_numbers_is_refused_without_a_time_column_too(tmp_path) -> None:
    """A UCR file under --no-time-column without --no-header trained on a sensor named '3.4558419e-02', its
    first reading lost: the first line of numbers was refused only when the time column was missing."""
    ucr = write(tmp_path, "3.4558419e-02\n2.8083115e-01\n-1.5e-01\n4.0e-01\n", "ucr.txt")
    several = write(tmp_path, "0.5,-1,2\n0.25,3,1\n0.75,2,2\n", "rows.csv")
    for path, first in ((ucr, "3.4558419e-02"), (several, "0.5, -1, 2")):
        for time_column in ("", "timestamp"):
            with pytest.raises(
                DataError,
                match=rf"its first line holds numbers \({first}\), not column names: .* pass --no-header",
            ):
                load(path, time_column=time_column)
    (s,), feats = load(ucr, header=False, time_column="")
    assert feats == ["1"] and s.values[:, 0].tolist() == [3.4558419e-02, 2.8083115e-01, -1.5e-01, 4.0e-01]
    numbered = write(tmp_path, "0,1,2\n0.5,1,2\n0.25,3,1\n", "numbered.csv")  # column numbers may be a header
    (n,), feats = load(numbered, time_column="")
    assert feats == ["0", "1", "2"] and n.values.tolist() == [[0.5, 1, 2], [0.25, 3, 1]]


def test_a_first_line_of_a_time_and_numbers_is_refused_naming_the_time_column(tmp_path) -> None:
    """A headerless file with a time column was told 'a file without a time column: pass --no-time-column',
    which trained on sensors named after its first row's values, that row lost (and its times dropped)."""
    rows = "2023-01-01T00:00:00Z,0.5,-1\n2023-01-01T00:01:00Z,0.25,3\n2023-01-01T00:02:00Z,0.75,2\n"
    path = write(tmp_path, rows, "headless.csv")
    for time_column in ("", "timestamp"):
        with pytest.raises(
            DataError,
            match=r"holds a time and numbers \(2023-01-01T00:00:00Z, 0.5, -1\), not column "
            r"names: .* pass --no-header \(its columns are then named 1, 2, 3, \.\.\.: --time-column 1\)",
        ):
            load(path, time_column=time_column)
    (s,), feats = load(path, header=False, time_column="1")
    assert feats == ["2", "3"] and s.timestamps.tolist() == [1672531200.0, 1672531260.0, 1672531320.0]
    dated = write(tmp_path, "2023-01-01,2023-01-02\n1.5,2.5\n", "dated.csv")  # dates alone may be names
    (d,), feats = load(dated, time_column="")
    assert feats == ["2023-01-01", "2023-01-02"]


def test_without_a_time_column_readings_are_numbered_per_key_in_the_time_unit(tmp_path) -> None:
    path = write(tmp_path, "k,a\nx,1.0\ny,2.0\nx,3.0\ny,4.0\nx,5.0\n")
    series, _ = load(path, time_column="", key_column="k", time_unit="min")
    assert {s.key: s.timestamps.tolist() for s in series} == {"x": [0.0, 60.0, 120.0], "y": [0.0, 60.0]}
    assert {s.key: s.values[:, 0].tolist() for s in series} == {"x": [1.0, 3.0, 5.0], "y": [2.0, 4.0]}


def test_a_headerless_cell_error_names_the_editor_line(tmp_path) -> None:
    path = write(tmp_path, "1.0\n2.0\noops\n4.0\n", "u.txt")
    with pytest.raises(SchemaError, match=r"column '1' line 3 holds 'oops'"):
        load(path, header=False, time_column="")


def test_a_series_written_on_one_line_is_refused_with_the_fix(tmp_path) -> None:
    """A few UCR archive files hold the whole series on one line: 'has no data rows', or, with --no-header,
    'no numeric feature columns found among 1'."""
    path = write(tmp_path, "  1.0000000e+00  2.5000000e+00  3.0000000e+00\n", "204_UCR_Anomaly_x_1_2_3.txt")
    for header in (True, False):
        with pytest.raises(DataError, match=r"one line of 3 numbers .* one value per line \(tr -s"):
            load(path, header=header, time_column="")


def test_numeric_times_in_minutes_and_hours(tmp_path) -> None:
    """PSM's `timestamp_(min)` counts minutes; read as seconds, false alerts per day came out 60 times too low."""
    path = write(tmp_path, "timestamp_(min),a\n132480.0,1\n132481.0,2\n132482.0,3\n")
    (s,), _ = load(path, time_column="timestamp_(min)", time_unit="min")
    assert s.timestamps.tolist() == [132480 * 60.0, 132481 * 60.0, 132482 * 60.0]
    (h,), _ = load(path, time_column="timestamp_(min)", time_unit="h")
    assert sampling_interval([h]) == 3600.0


def test_hints_quote_names_a_shell_would_break(tmp_path) -> None:
    """'pass --time-column timestamp_(min)' pasted into bash is a syntax error; 'KPI ID' is two words."""
    psm = write(tmp_path, "timestamp_(min),feature_0\n1.0,0.5\n2.0,0.25\n", "psm.csv")
    with pytest.raises(SchemaError, match=r"\(pass --time-column 'timestamp_\(min\)'\)"):
        load(psm)
    kpi = "timestamp,value,KPI ID\n" + "".join(f"{60 * (i // 2)},{i}.5,{'ab'[i % 2]}-1\n" for i in range(8))
    with pytest.raises(SchemaError, match=r"pass --key-column 'KPI ID'$"):
        load(write(tmp_path, kpi, "kpi.csv"))


def test_ground_truth_components_are_never_features(tmp_path) -> None:
    """Yahoo S5 A3/A4 publish the generator's trend, noise and seasonalities beside the value: they became five
    features (the model was handed the answer) without a word beyond the features line."""
    path = write(
        tmp_path,
        "timestamps,value,anomaly,changepoint,trend,noise,seasonality1,seasonality2,seasonality3\n"
        "1416722400,1.5,0,0,0.0,0.5,1.0,0,0\n1416726000,2.0,1,0,0.5,0.25,1.25,0,0\n",
        "A3Benchmark-TS1.csv",
    )
    with pytest.raises(
        SchemaError,
        match="columns trend, noise, seasonality1, seasonality2, seasonality3 look like the ground-truth "
        r"components of a synthetic series .* --features value$",
    ):
        load(path, time_column="timestamps")
    (s,), feats = load(path, time_column="timestamps", features=("value",))
    assert feats == ["value"] and s.labels.tolist() == [0, 1]
    sensors = write(tmp_path, "timestamp,noise,flow\n1,40.5,2.0\n2,41.0,2.5\n", "plant.csv")
    assert load(sensors)[1] == ["noise", "flow"]  # a noise-level sensor alone is a sensor


SWAT = (
    " Timestamp,FIT101, MV101,Normal/Attack\n"
    " 28/12/2015 11:59:59 AM,2.5,1,Normal\n"
    " 28/12/2015 12:00:00 PM,2.25,1,Attack\n"
    " 28/12/2015 1:00:00 PM,2.0,2,A ttack\n"
)


def test_text_labels_are_read_through_an_explicit_map(tmp_path) -> None:
    """SWaT's `Normal/Attack` column ('Normal', 'Attack' and the typo 'A ttack') could not be a label at all."""
    path = write(tmp_path, SWAT, "swat.csv")
    cfg = {"time_column": "Timestamp", "label": "Normal/Attack"}
    with pytest.raises(
        SchemaError,
        match=r"line 2 holds 'Normal'; labels are 0 or 1 \(empty: 0\); text labels are read with --label-map, "
        r"e.g. --label-map Normal=0,Attack=1 \(this column holds 'Normal', 'Attack', 'A ttack'\)",
    ):
        load(path, **cfg)
    with pytest.raises(SchemaError, match=r"line 4 holds 'A ttack', which --label-map does not name"):
        load(path, **cfg, label_map=("Normal=0", "Attack=1"))
    (s,), feats = load(path, **cfg, label_map=("Normal=0", "Attack=1", "A ttack=1"))
    assert feats == ["FIT101", "MV101"] and s.labels.tolist() == [0, 1, 1]
    assert np.diff(s.timestamps).tolist() == [1.0, 3600.0]  # day first, 12:00 PM is noon, 1:00 PM is 13:00


def test_a_label_map_reads_numeric_labels_too(tmp_path) -> None:
    """WADI's attack labels are 1 (normal) and -1 (attack)."""
    path = write(tmp_path, "timestamp,a,attack\n1,1.0,1\n2,2.0,-1\n3,3.0,1\n")
    (s,), _ = load(path, label="attack", label_map=("1=0", "-1=1"))
    assert s.labels.tolist() == [0, 1, 0]
    # a value the map does not name is quoted as the file writes it, not as numpy's repr (np.int64(-1))
    with pytest.raises(
        SchemaError, match=r"line 3 holds '-1', which --label-map does not name \(it maps '1'\)$"
    ):
        load(path, label="attack", label_map=("1=0",))


def test_a_negative_label_is_refused_not_read_as_normal(tmp_path) -> None:
    """WADI's 1 (normal) / -1 (attack), or scikit-learn's outlier flags, without --label-map: 'above 0 is
    anomalous' read every normal reading as an anomaly and every attack as normal, with no word."""
    path = write(tmp_path, "timestamp,a,attack\n1,1.0,1.0\n2,2.0,-1.0\n3,3.0,1.0\n")
    with pytest.raises(
        SchemaError,
        match=r"^.*x.csv: label column 'attack' line 3 holds '-1'; labels are 0 or 1 \(empty: 0\), and a "
        r"negative label is not guessed: map the column's values with --label-map, e.g. --label-map "
        r"1=0,-1=1 if -1 marks an anomaly$",
    ):
        load(path, label="attack")
    (s,), _ = load(path, label="attack", label_map=("1=0", "-1=1"))  # the map the hint gives
    assert s.labels.tolist() == [0, 1, 0]
    zero = write(tmp_path, "timestamp,a,anomaly\n1,1.0,0\n2,2.0,-1\n3,3.0,\n", "zero.csv")
    with pytest.raises(SchemaError, match=r"line 3 holds '-1'.* --label-map 0=0,-1=1 if -1 marks"):
        load(zero)
    (s,), _ = load(write(tmp_path, "timestamp,a,anomaly\n1,1.0,0\n2,2.0,2\n3,3.0,\n", "two.csv"))
    assert s.labels.tolist() == [0, 1, 0]  # above 0 is anomalous, empty is 0: unchanged


def test_a_sensor_only_in_a_later_file_is_refused_not_dropped(tmp_path) -> None:
    """Training on jan.csv and feb.csv, feb with a sensor installed since: the features were the first file's
    and feb's new sensor was dropped without a word (in the other order the same files were refused)."""
    jan = write(tmp_path, "timestamp,a,b\n1,1.0,2.0\n2,1.5,2.5\n", "jan.csv")
    feb = write(tmp_path, "timestamp,a,b,c\n3,1.0,2.0,7.0\n4,1.5,2.5,7.5\n", "feb.csv")
    with pytest.raises(SchemaError) as info:
        load_series([jan, feb], DataConfig())
    assert str(info.value) == (
        f"{feb} has numeric column(s) c that {jan} lacks; the files must offer the same features: pass "
        "--features naming the columns to use"
    )
    assert info.value.extra == ["c"]
    with pytest.raises(
        SchemaError
    ) as info:  # said 'is missing feature(s) c that the model needs': no model yet
        load_series([feb, jan], DataConfig())
    assert str(info.value) == (
        f"{jan} lacks numeric column(s) c that {feb} has; the files must offer the same features: pass "
        "--features naming the columns to use"
    )
    assert info.value.missing == ["c"]
    with pytest.raises(SchemaError) as info:
        load_series([jan, feb], DataConfig(features=("a", "d")))
    assert str(info.value) == (
        f"{jan} has no column(s) d, which --features (data.features) names; its columns are timestamp, a, b"
    )
    with pytest.raises(SchemaError, match="jan.csv is missing feature"):  # replay: the model's features
        load_series([jan], DataConfig(), features=["a", "d"])
    series, feats = load_series([jan, feb], DataConfig(features=("a", "b")))
    assert feats == ["a", "b"] and [len(s) for s in series] == [2, 2]
    series, feats = load_series([jan, feb], DataConfig(), features=["a", "b"])  # replay: the model's features
    assert feats == ["a", "b"]


def test_excels_separator_line_above_the_header_is_read_as_the_separator(tmp_path) -> None:
    """'sep=;' on the first line tells Excel the separator: it was taken for the header (two columns, 'sep=' and
    an unnamed one, every later field of a row dropped without a word) and the file refused as having no numeric
    feature columns."""
    rows = "timestamp;a;b\r\n1;1,5;2\r\n2;oops;3\r\n3;1,0;2\r\n"
    path = write(tmp_path, "\ufeffsep=;\r\n" + rows)
    with pytest.raises(SchemaError, match=r"column 'a' line 4 holds 'oops'"):  # the line an editor shows
        load(path, decimal=",")
    (s,), feats = load(write(tmp_path, "sep=;\r\n" + rows.replace("oops", "1,25"), "ok.csv"), decimal=",")
    assert feats == ["a", "b"] and s.values.tolist() == [[1.5, 2.0], [1.25, 3.0], [1.0, 2.0]]


@pytest.mark.parametrize("skip", [4, 5, 10**11])
def test_skip_rows_past_the_end_of_the_file_says_so_at_once(tmp_path, skip) -> None:
    """`--skip-rows` at or past the file's length was pandas' "No columns to parse from file", naming no setting,
    and a huge one (10**11, a few zeros too many) read past the end one line at a time for hours."""
    import threading

    path = write(tmp_path, "timestamp,a\n1,1.5\n2,2.5\n3,3.5\n")  # 4 lines
    raised: list[Exception] = []

    def run() -> None:
        try:
            load(path, skip_rows=skip)
        except DataError as exc:
            raised.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert [str(e) for e in raised] == [
        f"{path}: data.skip_rows (--skip-rows) {skip} skips every line of the file: no header or data is left"
    ]
    assert load(path, skip_rows=1, header=False, time_column="1")[1] == ["2"]  # 3 lines left: read as before


def test_lines_above_the_header_are_skipped_with_skip_rows(tmp_path) -> None:
    """WADI's CSVs open with lines of notes, a SWaT spreadsheet saved as CSV with its row of stage names (P1,
    P2, ...): the notes broke the parser ('Expected 1 fields in line 4') and the stage row became the header."""
    rows = "timestamp,a,b\n1,1.5,2.0\n2,oops,2.5\n3,1.0,3.0\n"
    notes = write(tmp_path, "Notes: plant data\nsecond line\n\n" + rows, "wadi.csv")
    with pytest.raises(DataError, match=r"Expected .* skip the lines above it with --skip-rows N\)$"):
        load(notes)
    with pytest.raises(SchemaError, match=r"column 'a' line 6 holds 'oops'"):  # the line an editor shows
        load(notes, skip_rows=3)
    (s,), feats = load(
        write(tmp_path, "Notes\n\nmore\n" + rows.replace("oops", "1.25"), "ok.csv"), skip_rows=3
    )
    assert feats == ["a", "b"] and s.timestamps.tolist() == [1, 2, 3]
    stages = write(tmp_path, ",P1,,P1\n" + rows.replace("oops", "1.25"), "swat.csv")
    with pytest.raises(
        DataError, match=r"'P1' appears twice .* skip the lines above it with --skip-rows N\)$"
    ):
        load(stages)
    titled = write(tmp_path, "plant,P1,,\n" + rows.replace("oops", "1.25"), "titled.csv")
    with pytest.raises(SchemaError, match=r"column names seem to be on line 2: pass --skip-rows 1\)$"):
        load(titled)
    assert load(titled, skip_rows=1)[1] == ["a", "b"]
    status = write(tmp_path, "ts,status,a\n1,update running,1.5\n2,idle,2.5\n", "status.csv")
    with pytest.raises(SchemaError, match=r"not found; .* pass --no-time-column"):  # data rows are not names
        load(status)


def test_a_row_of_column_numbers_above_the_header_is_not_taken_for_data(tmp_path) -> None:
    """WADI's attack file (2019) has a line of column numbers above the names: the hint said --no-header,
    which would have read the names as data."""
    path = write(
        tmp_path,
        '0,1,2,3,4\nRow,Date,Time,1_AIT_001_PV,"Attack LABLE (1:No Attack, -1:Attack)"\n'
        "1,10/9/2017,6:00:00.000 PM,171.5,1\n2,10/9/2017,6:00:01.000 PM,171.25,-1\n"
        "3,10/9/2017,6:00:02.000 PM,171.0,1\n",
        "wadi-attack.csv",
    )
    with pytest.raises(SchemaError, match=r"seem to be on line 2: pass --skip-rows 1\)$"):
        load(path)
    label = "Attack LABLE (1:No Attack, -1:Attack)"
    (s,), feats = load(path, skip_rows=1, time_column="Row", label=label, label_map=("1=0", "-1=1"))
    assert feats == ["1_AIT_001_PV"] and s.labels.tolist() == [0, 1, 0] and s.timestamps.tolist() == [1, 2, 3]


def test_one_instant_written_in_any_form_reads_as_the_same_time(tmp_path) -> None:
    """10 Hz readings as epoch ms, us and ns, as ISO text with and without an offset, and as decimal seconds: every
    form gives the double nearest to the time (1700000000300 ms used to read as 1700000000.3000002, and ISO
    text with milliseconds missed the nearest double one time in four)."""
    ms = [1_700_000_000_000 + 100 * i for i in range(40)]
    iso = [f"2023-11-14T22:13:{20 + i // 10:02d}.{i % 10}00Z" for i in range(40)]
    forms = {
        "ms": ms,
        "us": [t * 1000 for t in ms],
        "ns": [t * 1_000_000 for t in ms],
        "seconds": [f"{t // 1000}.{t % 1000:03d}" for t in ms],
        "iso": iso,
        "offset": [t.replace("T22:", "T23:").replace("Z", "+01:00") for t in iso],
    }
    nearest = [float(f"{t // 1000}.{t % 1000:03d}") for t in ms]
    for name, stamps in forms.items():
        rows = "".join(f"{t},{i}.0\n" for i, t in enumerate(stamps))
        (s,), _ = load(write(tmp_path, "timestamp,a\n" + rows, f"{name}.csv"))
        assert s.timestamps.tolist() == nearest, name


def test_daily_excel_serials_with_a_time_of_day_follow_the_rule_of_whole_ones(tmp_path) -> None:
    """45010.5, 45011.5, ... (a reading a day, at noon) in a column named `Date` was read as epoch seconds,
    while the same days without the noon were refused: steps of a day made the fraction look like a counter's."""
    daily = "".join(f"{45010 + i}.5,{i}\n" for i in range(30))
    with pytest.raises(DataError) as named:
        load(write(tmp_path, "Date,a\n" + daily), time_column="Date")
    assert str(named.value) == (
        f"{tmp_path / 'x.csv'}: time column 'Date' holds numbers like 45010.5 that look like Excel serial dates (days since 1899-12-30: "
        "45010.5 is 2023-03-25), not epoch times; export the times as text (format the cells as yyyy-mm-dd "
        "hh:mm:ss), or pass --time-unit s if they are seconds"
    )
    (s,), _ = load(
        write(tmp_path, "time,a\n" + daily, "t.csv"), time_column="time"
    )  # a counter, as whole ones
    assert s.timestamps.tolist() == [45010.5 + i for i in range(30)]


def test_lines_are_counted_as_an_editor_shows_them_past_a_cell_with_a_line_break(tmp_path) -> None:
    """A quoted cell holding a line break (a notes column) is one row over two lines: the rows after it were
    named one line too early, in errors and in rejections.jsonl."""
    text = 'timestamp,a,note\n1,1.0,"valve\nchanged"\n\n2,2.0,ok\n3,broken,ok\n'
    with pytest.raises(SchemaError, match=r"column 'a' line 6 holds 'broken'"):
        load(write(tmp_path, text))
    (s,), _ = load(write(tmp_path, text.replace("broken", "3.0"), "ok.csv"))
    assert s.lines.tolist() == [2, 5, 6]


def test_the_sampling_interval_of_10_hz_readings_is_a_tenth_of_a_second(tmp_path) -> None:
    """Steps between float64 epoch times are 0.24 us coarse: the median step of 10 Hz readings was
    0.09999990463 s, printed by train as `sampling interval 0.0999999 s` and stored in the bundle."""
    rows = "".join(f"2023-11-14T22:13:{20 + i // 10:02d}.{i % 10}00Z,{i}.0\n" for i in range(100))
    (s,), _ = load(write(tmp_path, "timestamp,a\n" + rows))
    assert sampling_interval([s]) == 0.1


def test_loading_holds_one_matrix_of_values_not_three() -> None:
    """Cutting a frame into series stacked the feature columns, converted the stack (a second copy) and took
    each series' rows in time order (a third, while the first was still held): twice the matrix at its peak,
    on top of the frame (1.6 GB for a 360 MB file). One matrix now, filled column by column in time order, and
    the same numbers."""
    import tracemalloc

    import pandas as pd

    from anomaly.data import frame_to_series

    rng = np.random.default_rng(0)
    n, f = 20_000, 32
    frame = pd.DataFrame(rng.normal(size=(n, f)), columns=[f"s{j}" for j in range(f)])
    frame["stamp"] = rng.permutation(n).astype(np.float64)  # out of order: the series is sorted on loading
    cfg = DataConfig(time_column="stamp", time_unit="s")
    features = [f"s{j}" for j in range(f)]
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        (series,) = frame_to_series(frame, features, cfg, "mem.csv")
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    matrix = n * f * 8
    assert peak < 1.5 * matrix, (peak, matrix)
    order = np.argsort(frame["stamp"].to_numpy(), kind="stable")
    assert np.array_equal(series.values, frame[features].to_numpy(np.float64)[order])
    assert series.values.dtype == np.float64 and series.values.flags.c_contiguous
    assert np.array_equal(series.timestamps, frame["stamp"].to_numpy()[order])


def test_loading_lets_go_of_a_file_before_reading_the_next(tmp_path, monkeypatch) -> None:
    """load_series kept the last file's frame (the whole file as read) while it read the next one: two files in
    memory at once. Each frame is let go once its series are cut from it."""
    import gc
    import weakref

    from anomaly.data import loading

    frames: list[weakref.ref] = []  # type: ignore[type-arg]
    alive_at_read: list[bool] = []
    real = loading.read_frame

    def tracked(*args, **kwargs):  # type: ignore[no-untyped-def]
        gc.collect()
        alive_at_read.append(any(ref() is not None for ref in frames))
        frame = real(*args, **kwargs)
        frames.append(weakref.ref(frame))
        return frame

    monkeypatch.setattr(loading, "read_frame", tracked)
    paths = []
    for name in ("a", "b", "c"):
        path = tmp_path / f"{name}.csv"
        path.write_text("timestamp,x\n" + "".join(f"{t},{t % 7}\n" for t in range(50)))
        paths.append(path)
    series, _ = load_series(paths, DataConfig(time_unit="s"))
    assert [s.key for s in series] == ["a", "b", "c"]
    assert alive_at_read == [False, False, False]


def test_a_time_option_for_the_other_kind_of_time_column_is_refused(tmp_path) -> None:
    """--time-unit with text times, --time-format with epoch numbers (and --time-format without a time column)
    were ignored without a word: the user's option changed nothing."""
    text = write(tmp_path, "timestamp,a\n2023-01-01 00:00:00,1\n2023-01-01 00:00:01,2\n", "text.csv")
    numbers = write(tmp_path, "timestamp,a\n1700000000,1\n1700000001,2\n", "numbers.csv")
    with pytest.raises(DataError) as unit:
        load(text, time_unit="ms")
    assert str(unit.value) == (
        f"{text}: --time-unit ms (data.time_unit) is the unit of numeric times, but time column 'timestamp' holds "
        "text such as '2023-01-01 00:00:00', read as dates: leave it out (give --time-format if the dates are "
        "not ISO-like)"
    )
    with pytest.raises(DataError) as fmt:
        load(numbers, time_format="%d/%m/%Y %H:%M")
    assert str(fmt.value) == (
        f"{numbers}: --time-format '%d/%m/%Y %H:%M' (data.time_format) reads text times, but time column "
        "'timestamp' holds numbers such as 1700000000 (epoch times): leave it out, and give their unit with "
        "--time-unit if it is not told apart by magnitude"
    )
    with pytest.raises(DataError, match=r"without a time column \(--no-time-column\) readings are numbered"):
        load(write(tmp_path, "a\n1\n2\n", "bare.csv"), time_column="", time_format="%Y")
    # each option still applies to its own kind, and epoch numbers with one text cell name that cell
    assert load(numbers, time_unit="ms")[0][0].timestamps.tolist() == [1700000.0, 1700000.001]
    assert load(text, time_format="%Y-%m-%d %H:%M:%S")[0][0].timestamps.tolist() == [
        1672531200.0,
        1672531201.0,
    ]
    mixed = write(tmp_path, "timestamp,a\n1700000000,1\noops,2\n1700000002,3\n", "mixed.csv")
    with pytest.raises(DataError, match=r"cannot parse time value 'oops' \(line 3\)"):
        load(mixed, time_unit="s")


def test_a_column_written_with_the_other_decimal_mark_is_named_as_such_not_as_text(tmp_path) -> None:
    """`--decimal ,` with one column written with points left that column out as 'text' alone: the user saw
    a sensor missing from the model without the reason (the file mixes decimal marks)."""
    path = write(
        tmp_path,
        "timestamp;a;b;site\n2023-01-01 00:00:00;1,5;2.5;x\n2023-01-01 00:00:01;1,25;3.5;y\n",
        "m.csv",
    )
    left_out: dict[str, str] = {}
    _, feats = load_series([path], DataConfig(decimal=","), left_out=left_out)
    assert feats == ["a"]
    assert left_out == {
        "b": "numbers with a decimal point such as '2.5', read as text under --decimal ,: the file mixes "
        "decimal marks",
        "site": "text",
    }
    left_out = {}
    _, feats = load_series([path], DataConfig(), left_out=left_out)
    assert feats == ["b"]
    assert left_out == {
        "a": "numbers with a decimal comma such as '1,5', read as text under --decimal .: the file mixes "
        "decimal marks",
        "site": "text",
    }


def test_times_of_day_without_a_date_are_refused_not_dated_today(tmp_path) -> None:
    """A logger's `date` and `time` in two columns, `--time-column time`: pandas dated each `22:13:20` today, so
    a one-day file moved to the day it was read and one that passed midnight was silently put in the wrong
    order (its morning before its evening)."""
    rows = [("2023-11-14", "23:58:00", 1.0), ("2023-11-14", "23:59:00", 2.0), ("2023-11-15", "00:00:00", 3.0)]
    text = "date,time,a\n" + "".join(f"{d},{t},{v}\n" for d, t, v in rows)
    with pytest.raises(DataError) as err:
        load(write(tmp_path, text), time_column="time")
    assert str(err.value) == (
        f"{tmp_path / 'x.csv'}: time column 'time' holds times of day without a date ('23:58:00', line 2); pass "
        "--date-column date to join each row's date in column 'date' to it (2023-11-14 23:58:00)"
    )
    text = "timestamp,a\n" + "".join(f"{t} PM,{v}\n" for t, v in (("11:58", 1.0), ("11:59", 2.0)))
    with pytest.raises(DataError) as err:
        load(write(tmp_path, text, "pm.csv"))
    assert str(err.value) == (
        f"{tmp_path / 'pm.csv'}: time column 'timestamp' holds times of day without a date ('11:58 PM', line 2); "
        "name the column of dates with --date-column, or put the date and the time in one column (e.g. 2023-11-14 "
        "11:58 PM) and name it with --time-column"
    )
    # a date with the time of day is read as before
    series, _ = load(write(tmp_path, "timestamp,a\n2023-11-14 23:58,1\n2023-11-15 00:00,2\n", "dated.csv"))
    assert series[0].timestamps.tolist() == [1700006280.0, 1700006400.0]


def test_a_date_column_taken_as_the_time_names_the_column_with_the_time_of_day(tmp_path) -> None:
    """`--time-column date` on a file with `date` and `time` columns: the refusal said the export had cut the
    minutes off, and not that they are in the next column."""
    text = "date,time,a\n" + "".join(f"2023-11-14,10:{m:02d}:00,{m}\n" for m in range(30))
    with pytest.raises(SchemaError) as err:
        load(write(tmp_path, text), time_column="date")
    assert str(err.value).endswith(
        "or pass --key-column if the rows are several series (the time of day may be in column 'time': pass "
        "--date-column date --time-column time)"
    )


MIDNIGHT = [("2023-11-14", "23:58:00", 1.0), ("2023-11-14", "23:59:30", 2.0), ("2023-11-15", "00:00:00", 3.0)]
MIDNIGHT += [("2023-11-15", "00:01:15", 4.0)]


def _two_columns(rows, date=lambda d: d) -> str:
    return "Date,Time,a\n" + "".join(f"{date(d)},{t},{v}\n" for d, t, v in rows)


def _one_column(rows) -> str:
    return "timestamp,a\n" + "".join(f"{d} {t},{v}\n" for d, t, v in rows)


def test_a_date_column_joins_its_dates_to_the_times_of_day(tmp_path) -> None:
    """`--date-column Date --time-column Time` (a logger's, WADI's two columns): each row's time is its date and
    its time of day read as one date-time, so a file that passes midnight reads exactly as the same file with one
    column of date-times (it was refused), and the date is no feature."""
    combined, combined_feats = load(write(tmp_path, _one_column(MIDNIGHT), "one.csv"))
    joined, feats = load(write(tmp_path, _two_columns(MIDNIGHT)), time_column="Time", date_column="Date")
    assert feats == combined_feats == ["a"]
    assert joined[0].timestamps.tolist() == combined[0].timestamps.tolist()
    assert joined[0].timestamps.tolist() == [1700006280.0, 1700006370.0, 1700006400.0, 1700006475.0]
    assert joined[0].values.tolist() == combined[0].values.tolist() == [[1.0], [2.0], [3.0], [4.0]]
    # the date order and --time-format apply to the two cells joined, as to one column
    dotted = write(tmp_path, _two_columns(MIDNIGHT, lambda d: ".".join(reversed(d.split("-")))), "dmy.csv")
    for options in ({"dayfirst": True}, {"time_format": "%d.%m.%Y %H:%M:%S"}):
        series, _ = load(dotted, time_column="Time", date_column="Date", **options)
        assert series[0].timestamps.tolist() == combined[0].timestamps.tolist()


def test_an_empty_date_or_time_cell_is_a_missing_time_as_in_one_column(tmp_path) -> None:
    """A row without its date or its time of day has no time, as a row whose one time cell is empty."""
    rows = [*MIDNIGHT[:1], ("", "23:59:30", 2.0), ("2023-11-15", " ", 3.0), *MIDNIGHT[3:]]
    blank = [*MIDNIGHT[:1], ("", "", 2.0), ("", "", 3.0), *MIDNIGHT[3:]]
    text = "timestamp,a\n" + "".join(f"{d} {t}".strip() + f",{v}\n" for d, t, v in blank)
    for options in ({}, {"bad_cells": "missing"}):
        combined, _ = load(write(tmp_path, text, "one.csv"), **options)
        joined, _ = load(
            write(tmp_path, _two_columns(rows)), time_column="Time", date_column="Date", **options
        )
        assert np.array_equal(joined[0].timestamps, combined[0].timestamps, equal_nan=True)
        assert joined[0].values.tolist() == combined[0].values.tolist()


@pytest.mark.parametrize(
    ("text", "options", "message"),
    [
        (
            _two_columns(MIDNIGHT),
            {"date_column": "Day"},
            "date column 'Day' not found; columns are Date, Time, a",
        ),
        (
            "Date,Time,a\n20231114,23:58:00,1\n20231114,23:59:00,2\n",
            {},
            "date column 'Date' holds numbers such as 20231114, not dates (such as 2023-11-14)",
        ),
        (
            "Date,Time,a\n2023-11-14 23:58,23:58:00,1\n2023-11-14 23:59,23:59:00,2\n",
            {},
            "date column 'Date' holds date-times such as '2023-11-14 23:58', not dates alone: name it with "
            "--time-column and leave out --date-column",
        ),
        (
            _two_columns(MIDNIGHT),
            {"time_format": "%H:%M:%S"},
            "--time-format '%H:%M:%S' (data.time_format) reads each row's date and time joined ('2023-11-14 "
            "23:58:00'): give the date's part too, e.g. '%d.%m.%Y %H:%M:%S'",
        ),
    ],
)
def test_a_date_column_that_cannot_be_joined_is_refused(tmp_path, text, options, message) -> None:
    path = write(tmp_path, text)
    with pytest.raises((DataError, SchemaError)) as err:
        load(path, time_column="Time", **{"date_column": "Date", **options})
    assert str(err.value) == f"{path}: {message}"


@pytest.mark.parametrize(
    ("times", "shown"),
    [
        (["79200", "79260"], "79200"),
        (["1700000000", "1700000060"], "1700000000"),
        (["22:13:20", "79260"], "79260"),
    ],
)
def test_a_time_column_of_numbers_beside_a_date_column_is_refused_naming_both(tmp_path, times, shown) -> None:
    """`--date-column` with seconds of the day (79200) or epoch times in the time column joined
    '2023-11-14 79200' and failed with the generic 'cannot parse time value': now one line names both columns."""
    text = "Date,Time,a\n" + "".join(f"2023-11-14,{t},{i}\n" for i, t in enumerate(times))
    path = write(tmp_path, text)
    with pytest.raises(DataError) as err:
        load(path, time_column="Time", date_column="Date")
    assert str(err.value) == (
        f"{path}: time column 'Time' holds numbers such as {shown}, not times of day (such as 22:13:20) to join "
        "to date column 'Date': with --date-column the time column holds times of day; leave out --date-column "
        "if the numbers are epoch times"
    )


@pytest.mark.parametrize("date", ["2023-11-14", "14.11.2023", "11/14/2023", "20231114", "2023:11:14"])
def test_a_column_of_dates_alone_is_joined_whatever_its_shape(date) -> None:
    """The date-time check took any `d:dd` for a time of day, so EXIF's date `2023:11:14` was refused as a
    date-time; a date-time is a date part followed by a time of day, and each common date shape is a date."""
    frame = pd.DataFrame({"Date": [date, f" {date} "], "Time": ["23:58:00", "23:59"], "a": [1.0, 2.0]})
    join_date_column(frame, DataConfig(time_column="Time", date_column="Date"), "x.csv")
    assert list(frame.columns) == ["Time", "a"]
    assert frame["Time"].tolist() == [f"{date} 23:58:00", f"{date} 23:59"]


@pytest.mark.parametrize(
    "cell",
    [
        "2023-11-14 23:58",
        "2023-11-14T23:58:00Z",
        "14.11.2023 10:58 PM",
        "2023-11-14 23:58:00+01:00",
        "2023-11-14 23",  # an hour alone: joined, '2023-11-14 23 23:59:00' was read as 23:59, the hour dropped
        "14.11.2023T7",
    ],
)
def test_a_column_of_date_times_is_refused_as_the_date_column(cell) -> None:
    frame = pd.DataFrame({"Date": ["2023-11-14", cell], "Time": ["23:58:00", "23:59:00"]})
    with pytest.raises(DataError) as err:
        join_date_column(frame, DataConfig(time_column="Time", date_column="Date"), "x.csv")
    assert str(err.value) == (
        f"x.csv: date column 'Date' holds date-times such as {cell!r}, not dates alone: name it with "
        "--time-column and leave out --date-column"
    )


def test_an_exif_date_column_is_read_with_its_format(tmp_path) -> None:
    """`2023:11:14` (EXIF's date) with --time-format reads as the same times as ISO dates."""
    combined, _ = load(write(tmp_path, _one_column(MIDNIGHT), "one.csv"))
    exif = write(tmp_path, _two_columns(MIDNIGHT, lambda d: d.replace("-", ":")))
    series, _ = load(exif, time_column="Time", date_column="Date", time_format="%Y:%m:%d %H:%M:%S")
    assert series[0].timestamps.tolist() == combined[0].timestamps.tolist()


def test_a_labels_file_is_matched_by_the_date_and_the_time_joined(tmp_path) -> None:
    """--labels with a date column: the labels file's date and time are joined as the data's are."""
    data = write(tmp_path, _two_columns(MIDNIGHT))
    text = "Date,Time,anomaly\n" + "".join(f"{d},{t},{int(v == 3.0)}\n" for d, t, v in reversed(MIDNIGHT))
    labels = write(tmp_path, text, "l.csv")
    cfg = DataConfig(time_column="Time", date_column="Date")
    series, _ = load_series([data], cfg, labels_file=labels)
    assert series[0].labels.tolist() == [0, 0, 1, 0]


def test_keys_that_differ_only_in_case_or_spaces_are_named(tmp_path) -> None:
    """`s1` and `S1 ` in the key column are two series (keys are read as written, as the daemon keys them), so a
    device whose name was typed two ways was cut in two without a word; now the look-alike keys are named."""
    text = "timestamp,device,a\n" + "".join(
        f"2023-01-01 00:00:{i:02d},{k},{i}\n" for i in range(6) for k in (("s1", "S1 ", "s2")[i % 3],)
    )
    series, _ = load(write(tmp_path, text), key_column="device")
    assert [s.key for s in series] == ["s1", "S1 ", "s2"]
    assert look_alike_keys(series) == (
        "keys 's1' and 'S1 ' differ only in case or spaces: each is a series of its own, as the daemon keys "
        "them (key values are read as written); if they name one device, write its key one way"
    )
    assert look_alike_keys([s for s in series if s.key != "S1 "]) is None


def test_a_title_line_above_a_decimal_comma_header_asks_for_skip_rows(tmp_path) -> None:
    """Excel's export with a title line (`Export of plant 3;;`): the columns under the title hold text, so the
    error said only 'no numeric feature columns' (with --decimal ,) or hinted --decimal , for a 'number' named
    'a'; the README promises the line the names are on."""
    text = "\ufeffExport of plant 3;;\r\ntimestamp;a;b\r\n2023-01-01 00:00:00;1,5;2\r\n2023-01-01 00:00:01;1,25;3\r\n"
    path = write(tmp_path, text)
    for decimal in (".", ","):
        with pytest.raises(SchemaError) as err:
            load(path, decimal=decimal)
        assert str(err.value) == (
            f"{path}: time column 'timestamp' not found and no numeric feature columns among Export of plant 3, "
            "Unnamed: 1, Unnamed: 2: the column names seem to be on line 2: pass --skip-rows 1"
        )
    series, _ = load(path, decimal=",", skip_rows=1)
    assert series[0].values.tolist() == [[1.5, 2.0], [1.25, 3.0]]


def test_local_times_beside_a_utc_offset_column_are_refused_not_shifted(tmp_path) -> None:
    """A logger's local time with its offset in a column of its own (`utc_offset`, `+0100`): the times were read
    as UTC, an hour off (two in summer, with an hour repeated at the change), and `+0100` became a sensor
    reading 100 (`+01:00`, text, was left out as text)."""
    for offset, shown in (("+0100", "100"), ("+01:00", "'+01:00'")):
        text = "timestamp,utc_offset,a\n" + "".join(f"2023-01-01 00:0{i}:00,{offset},{i}\n" for i in range(4))
        with pytest.raises(SchemaError) as err:
            load(write(tmp_path, text))
        assert str(err.value) == (
            f"{tmp_path / 'x.csv'}: column 'utc_offset' holds UTC offsets such as {shown} beside times without "
            "one, which are read as UTC: write the times in UTC or with their offset (2023-01-01 00:00:00+01:00), "
            "or name the features with --features if the column is a sensor"
        )
    # times that carry their offset: the column only repeats it, and is left out as text
    text = "timestamp,utc_offset,a\n" + "".join(f"2023-01-01 00:0{i}:00+01:00,+01:00,{i}\n" for i in range(4))
    series, _ = load(write(tmp_path, text, "zoned.csv"))
    assert series[0].timestamps[0] == 1672527600.0


def test_numbers_with_a_unit_written_close_are_listed_as_such_not_as_text(tmp_path) -> None:
    """`12.5kW` (no space: not refused as a formatted export, so that identifiers such as `101A` are not taken
    for numbers) was left out of the features as `text`, which hid that it is a sensor's readings."""
    from anomaly.data import infer_features, non_features, read_frame

    path = write(
        tmp_path,
        "timestamp,power,room,a\n" + "".join(f"2023-01-01 00:00:0{i},{i}.5kW,10{i}A,{i}\n" for i in range(4)),
    )
    frame = read_frame(path)
    cfg = DataConfig()
    assert non_features(frame, infer_features(frame, cfg), cfg) == {
        "power": "numbers with units such as '0.5kW', read as text: export the raw values",
        "room": "text",
    }


def test_no_label_columns_leave_skab_changepoint_refused_not_scored(tmp_path) -> None:
    """`ANOMALY_DATA_LABEL_COLUMNS=` (or `label_columns = []`) is no label columns, as an empty list setting is the
    empty list: SKAB's `changepoint` (0/1) then became a scored sensor without a word."""
    from anomaly.config import build_config

    path = write(tmp_path, "datetime;a;anomaly;changepoint\n1;1.5;0;0\n2;2.5;0;1\n3;3.5;1;0\n")
    for cfg in (
        build_config(env={"ANOMALY_DATA_LABEL_COLUMNS": "", "ANOMALY_DATA_TIME_COLUMN": "datetime"}).data,
        build_config({"data": {"label_columns": [], "time_column": "datetime"}}).data,
    ):
        assert cfg.label_columns == ()
        with pytest.raises(SchemaError) as info:
            load_series([path], cfg)
        assert str(info.value) == (
            f"{path}: column 'changepoint' looks like labels (0/1), not a sensor; pass --label changepoint to use "
            "it as the label (now 'anomaly'), list it in data.label_columns (now []) to leave it out, or "
            "--features to choose the features"
        )
    (s,), feats = load(path, time_column="datetime")  # the default label columns: a label, not a feature
    assert feats == ["a"] and s.labels.tolist() == [0, 0, 1]

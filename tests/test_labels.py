"""Labels in a file of their own (`--labels`): SMD's line per row, PSM's CSV by time, NAB's windows (JSON)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from anomaly.config import DataConfig
from anomaly.data import load_series
from anomaly.errors import DataError, SchemaError


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def labels_of(data: Path, labels: Path, **cfg) -> list[int]:
    (s,), _ = load_series([data], DataConfig(**cfg), labels_file=labels)
    assert s.labels is not None
    return s.labels.tolist()


def test_one_label_per_line_labels_the_rows_in_file_order(tmp_path) -> None:
    """SMD: test/machine-1-1.txt (no header, no time) beside test_label/machine-1-1.txt (0/1 per line)."""
    data = write(tmp_path, "machine-1-1.txt", "0.5,0.25\n0.75,0.5\n0.25,0.125\n")
    labels = write(tmp_path, "machine-1-1-label.txt", "0\n1\n0\n")
    assert labels_of(data, labels, header=False, time_column="") == [0, 1, 0]
    short = write(tmp_path, "short.txt", "0\n1\n")
    with pytest.raises(SchemaError, match="short.txt has 2 labels and .*machine-1-1.txt has 3 rows"):
        labels_of(data, short, header=False, time_column="")


def test_one_label_per_line_follows_file_order_when_times_are_not_sorted(tmp_path) -> None:
    data = write(tmp_path, "d.csv", "timestamp,a\n3,3.0\n1,1.0\n2,2.0\n")
    labels = write(tmp_path, "l.txt", "1\n0\n0\n")
    (s,), _ = load_series([data], DataConfig(), labels_file=labels)
    assert s.timestamps.tolist() == [1, 2, 3] and s.labels.tolist() == [0, 0, 1]


def test_a_label_csv_is_matched_by_time(tmp_path) -> None:
    """PSM: test.csv and test_label.csv (`timestamp_(min),label`), here with the label rows in another order."""
    data = write(tmp_path, "test.csv", "timestamp_(min),feature_0\n10.0,0.5\n11.0,0.25\n12.0,0.75\n")
    labels = write(tmp_path, "test_label.csv", "timestamp_(min),label\n12.0,1\n10.0,0\n11.0,1\n9.0,1\n")
    cfg = {"time_column": "timestamp_(min)", "time_unit": "min"}
    with pytest.raises(SchemaError, match=r"label column 'anomaly' not found; .* \(pass --label label\)"):
        labels_of(data, labels, **cfg)
    assert labels_of(data, labels, label="label", **cfg) == [0, 1, 1]
    gap = write(tmp_path, "gap.csv", "timestamp_(min),label\n10.0,0\n12.0,1\n")
    with pytest.raises(
        SchemaError,
        match=r"gap.csv has no label for .*test.csv line 3 \(timestamp_\(min\) 11.0\); labels are matched",
    ):
        labels_of(data, gap, label="label", **cfg)


def test_a_label_csv_with_the_key_column_is_matched_by_key_and_time(tmp_path) -> None:
    data = write(tmp_path, "kpi.csv", "timestamp,value,KPI ID\n60,1.0,a\n60,2.0,b\n120,3.0,a\n120,4.0,b\n")
    labels = write(tmp_path, "l.csv", "timestamp,label,KPI ID\n60,0,a\n60,1,b\n120,1,a\n120,0,b\n")
    series, _ = load_series([data], DataConfig(key_column="KPI ID", label="label"), labels_file=labels)
    assert {s.key: s.labels.tolist() for s in series} == {"a": [0, 1], "b": [1, 0]}


def test_labels_of_a_key_the_data_lacks_are_named_in_a_warning(tmp_path) -> None:
    """A keyed labels file covering more devices than the data (an export filtered afterwards, a misspelt key):
    the labels of the absent keys were dropped without a word, their anomalies never evaluated."""
    data = write(tmp_path, "kpi.csv", "timestamp,value,KPI ID\n60,1.0,a\n120,3.0,a\n")
    labels = write(
        tmp_path, "l.csv", "timestamp,label,KPI ID\n60,0,a\n120,1,a\n60,1,ghost\n120,1,ghost\n60,0,z\n"
    )
    heard: list[str] = []
    series, _ = load_series(
        [data], DataConfig(key_column="KPI ID", label="label"), labels_file=labels, warn=heard.append
    )
    assert {s.key: s.labels.tolist() for s in series} == {"a": [0, 1]}
    assert heard == [
        f"{labels} labels 2 key(s) (KPI ID) that {data} does not hold: 'ghost', 'z' (3 label(s), 2 anomalous); "
        "they label nothing and are not evaluated"
    ]


def test_a_label_csv_without_the_data_key_column_says_to_add_it(tmp_path) -> None:
    data = write(tmp_path, "kpi.csv", "timestamp,value,KPI ID\n60,1.0,a\n60,2.0,b\n")
    labels = write(tmp_path, "l.csv", "timestamp,label\n60,0\n60,1\n")
    with pytest.raises(
        SchemaError,
        match=r"l.csv: line 3 labels a time that an earlier line labels too; .*kpi.csv holds several series "
        r"\(key column 'KPI ID'\): add that column to l.csv to label each series at its own times$",
    ):
        load_series([data], DataConfig(key_column="KPI ID", label="label"), labels_file=labels)


def test_keys_are_read_as_written_in_the_data_and_the_label_file(tmp_path) -> None:
    """Device IDs 0012 and 12 were read as the number 12: one series named '12' (not the '0012' a Kafka message
    key carries) holding both devices' readings, every second one refused as a repeated timestamp. The region
    NA was read as a missing key ('key column is empty')."""
    rows = "60,1.0,0012\n60,2.0,12\n60,5.0,NA\n120,3.0,0012\n120,4.0,12\n120,6.0,NA\n"
    data = write(tmp_path, "d.csv", "timestamp,value, device\n" + rows)
    labels = write(tmp_path, "l.csv", "timestamp,label,device\n60,0,0012\n60,1,12\n120,1,0012\n120,0,12\n")
    with pytest.raises(SchemaError, match=r"has no label for .*d.csv line 4 \(timestamp 60\)"):  # NA's rows
        load_series([data], DataConfig(key_column="device", label="label"), labels_file=labels)
    labels.write_text(labels.read_text() + "60,0,NA\n120,0,NA\n")
    series, _ = load_series([data], DataConfig(key_column="device", label="label"), labels_file=labels)
    assert {s.key: (s.values[:, 0].tolist(), s.labels.tolist()) for s in series} == {
        "0012": ([1.0, 3.0], [0, 1]),
        "12": ([2.0, 4.0], [1, 0]),
        "NA": ([5.0, 6.0], [0, 0]),
    }
    empty = write(tmp_path, "e.csv", "timestamp,value,device\n60,1.0,0012\n120,2.0, \n")
    with pytest.raises(SchemaError, match=r"key column 'device' is empty on line 3 \(1 such row\(s\)\)"):
        load_series([empty], DataConfig(key_column="device"))


def test_a_row_without_a_time_is_refused_by_labels_matched_by_time_and_keeps_its_own_label_otherwise(
    tmp_path,
) -> None:
    """A row without a time kept its label from a label column, but got 0 through a labels file matched by time
    (keyed or not, NAB windows too): a label nobody gave, where every data row must get its own."""
    data = write(tmp_path, "d.csv", "timestamp,device,a\n60,x,1.0\n120,x,2.0\n,x,3.0\n180,x,4.0\n")
    keyed = write(tmp_path, "l.csv", "timestamp,device,anomaly\n60,x,0\n120,x,1\n180,x,0\n")
    plain = write(tmp_path, "p.csv", "timestamp,anomaly\n60,0\n120,1\n180,0\n")
    windows = write(tmp_path, "w.json", json.dumps({"d.csv": [[100, 130]]}))
    refused = (
        r"d.csv line 4 has no timestamp, so .*{} \(labels matched by time\) cannot label it: give it its time"
    )
    for labels, cfg in ((keyed, {"key_column": "device"}), (plain, {}), (windows, {})):
        with pytest.raises(SchemaError, match=refused.format(labels.name)):
            labels_of(data, labels, **cfg)
    # its own label: from the data's label column, or from a file of one label per line
    inline = write(
        tmp_path, "e.csv", "timestamp,device,a,anomaly\n60,x,1.0,0\n120,x,2.0,1\n,x,3.0,1\n180,x,4.0,0\n"
    )
    (s,), _ = load_series([inline], DataConfig(key_column="device"))
    assert s.labels.tolist() == [0, 1, 0, 1]  # sorted last in its series, with its own label
    (s,), _ = load_series(
        [data], DataConfig(key_column="device"), labels_file=write(tmp_path, "r.txt", "0\n1\n1\n0\n")
    )
    assert s.labels.tolist() == [0, 1, 0, 1]


def test_nab_windows_label_the_readings_inside_them(tmp_path) -> None:
    """NAB: labels/combined_windows.json names each data file by its path under data/."""
    data = write(
        tmp_path,
        "nyc_taxi.csv",
        "timestamp,value\n" + "".join(f"2014-11-01 0{h}:00:00,{h}.5\n" for h in range(6)),
    )
    windows = {
        "realKnownCause/other.csv": [["2014-11-01 00:00:00.000000", "2014-11-02 00:00:00.000000"]],
        "realKnownCause/nyc_taxi.csv": [
            ["2014-11-01 01:00:00.000000", "2014-11-01 02:00:00.000000"],
            ["2014-11-01 05:00:00.000000", "2014-11-01 07:00:00.000000"],
        ],
    }
    labels = write(tmp_path, "combined_windows.json", json.dumps(windows, indent=4))
    assert labels_of(data, labels) == [0, 1, 1, 0, 0, 1]
    packed = tmp_path / "gz" / "nyc_taxi.csv.gz"  # a compressed copy is read like the plain file, windows too
    packed.parent.mkdir()
    packed.write_bytes(gzip.compress(data.read_bytes()))
    assert labels_of(packed, labels) == [0, 1, 1, 0, 0, 1]
    other = write(tmp_path, "art_flatline.csv", "timestamp,value\n2014-11-01 00:00:00,1\n")
    with pytest.raises(SchemaError, match="has no entry for art_flatline.csv .*realKnownCause/other.csv"):
        labels_of(other, labels)


def test_labels_given_twice_or_for_several_files_are_refused(tmp_path) -> None:
    labelled = write(tmp_path, "a.csv", "timestamp,a,anomaly\n1,1.0,0\n2,2.0,1\n")
    lines = write(tmp_path, "l.txt", "0\n1\n")
    with pytest.raises(
        SchemaError, match="has a label column 'anomaly' and --labels .*l.txt gives labels too"
    ):
        labels_of(labelled, lines)
    plain = write(tmp_path, "b.csv", "timestamp,a\n1,1.0\n2,2.0\n")
    with pytest.raises(DataError, match="labels one data file, and 2 are given"):
        load_series([plain, plain], DataConfig(), labels_file=lines)
    with pytest.raises(DataError, match="labels file not found"):
        labels_of(plain, tmp_path / "missing.txt")


def test_text_labels_in_a_label_file_use_the_label_map(tmp_path) -> None:
    data = write(tmp_path, "d.csv", "timestamp,a\n1,1.0\n2,2.0\n")
    labels = write(tmp_path, "l.csv", "timestamp,state\n1,Normal\n2,Attack\n")
    assert labels_of(data, labels, label="state", label_map=("Normal=0", "Attack=1")) == [0, 1]


def test_a_label_csv_in_epoch_ms_labels_data_with_iso_times(tmp_path) -> None:
    """10 Hz data with ISO times and labels written as epoch milliseconds (or the other way round): the same
    instants, matched; 1700000000300 ms used to read as 1700000000.3000002 and miss the data's 20.300Z."""
    ms = [1_700_000_000_000 + 100 * i for i in range(30)]
    iso = [f"2023-11-14T22:13:{20 + i // 10:02d}.{i % 10}00Z" for i in range(30)]
    want = [int(10 <= i < 13) for i in range(30)]
    data = write(tmp_path, "d.csv", "timestamp,a\n" + "".join(f"{t},{i}.5\n" for i, t in enumerate(iso)))
    labels = write(
        tmp_path,
        "l.csv",
        "timestamp,anomaly\n" + "".join(f"{t},{y}\n" for t, y in zip(ms, want, strict=True)),
    )
    assert labels_of(data, labels) == want
    data_ms = write(tmp_path, "d_ms.csv", "timestamp,a\n" + "".join(f"{t},{i}.5\n" for i, t in enumerate(ms)))
    labels_iso = write(
        tmp_path,
        "l_iso.csv",
        "timestamp,anomaly\n" + "".join(f"{t},{y}\n" for t, y in zip(iso, want, strict=True)),
    )
    assert labels_of(data_ms, labels_iso) == want


def test_labels_in_local_time_without_offsets_are_named_as_hours_off(tmp_path) -> None:
    """Data with offsets (a DST change in them) and labels in naive local time: every row was 'has no label'
    with no word of why; the labels are read as UTC, two hours off the data."""
    times = [f"2023-07-01T{10 + i // 60:02d}:{i % 60:02d}:00+02:00" for i in range(120)]
    data = write(tmp_path, "d.csv", "timestamp,a\n" + "".join(f"{t},{i}.5\n" for i, t in enumerate(times)))
    local = "".join(f"{t[:10]} {t[11:19]},{int(i == 5)}\n" for i, t in enumerate(times))
    labels = write(tmp_path, "l.csv", "timestamp,anomaly\n" + local)
    with pytest.raises(SchemaError) as off:
        labels_of(data, labels)
    assert str(off.value) == (
        f"{labels} has no label for {data} line 2 (timestamp 2023-07-01T10:00:00+02:00) nor for 119 other row(s); "
        "labels are matched to the data by 'timestamp'; the labels' times are 2 h after the data's: a time without "
        "an offset is read as UTC, so write both in UTC or with their offsets (+02:00)"
    )
    utc = "".join(f"2023-07-01T{8 + i // 60:02d}:{i % 60:02d}:00Z,{int(i == 5)}\n" for i in range(120))
    assert labels_of(data, write(tmp_path, "u.csv", "timestamp,anomaly\n" + utc)) == [
        int(i == 5) for i in range(120)
    ]


def test_a_label_csv_with_its_times_under_another_name_is_refused_not_matched_by_row(tmp_path) -> None:
    """Data times in `timestamp`, the labels' in `time`: the labels were taken row by row, their times unread,
    so a labels file in another order labelled the wrong readings without a word."""
    data = write(tmp_path, "d.csv", "timestamp,a\n10,0.5\n11,0.25\n12,0.75\n")
    labels = write(tmp_path, "l.csv", "time,anomaly\n12,1\n10,0\n11,0\n")
    with pytest.raises(SchemaError) as named:
        labels_of(data, labels)
    assert str(named.value) == (
        f"{labels} has a column 'time' but not the data's time column 'timestamp'; labels are matched by that "
        "column: rename 'time' to 'timestamp' in l.csv"
    )
    renamed = write(tmp_path, "r.csv", "timestamp,anomaly\n12,1\n10,0\n11,0\n")
    assert labels_of(data, renamed) == [0, 0, 1]


def test_a_time_the_labels_file_cannot_parse_is_refused_naming_that_file(tmp_path) -> None:
    """`cannot parse time value ...` named a line but no file: the data's line 3, or the labels file's?"""
    data = write(tmp_path, "d.csv", "timestamp,a\n2023-01-01 00:00:00,1\n2023-01-01 00:01:00,2\n")
    labels = write(tmp_path, "l.csv", "timestamp,anomaly\n2023-01-01 00:00:00,0\nsoon,1\n")
    with pytest.raises(DataError) as err:
        labels_of(data, labels)
    assert str(err.value) == (
        f"{labels}: cannot parse time value 'soon' (line 3) in column 'timestamp'; pass --time-format if the dates "
        "are not ISO-like"
    )

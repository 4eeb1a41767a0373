"""Files as other tools export them (session 23's walk): Excel's "Unicode text" (UTF-16, tab-separated), a
Windows-1252 "CSV", a totals row under the data, a fault column beside the sensors."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pytest

from anomaly.commands.replay_cmds import run_replay
from anomaly.config import DataConfig, build_config
from anomaly.data import load_series
from anomaly.errors import DataError, SchemaError

ROWS = [("2023-11-14 10:00:00", "20.5", "0.25"), ("2023-11-14 10:01:00", "21.5", "1.25")]
ROWS += [("2023-11-14 10:02:00", "22.5", "2.25"), ("2023-11-14 10:03:00", "23.5", "3.25")]


def text(sep: str = ",", rows=ROWS, header: str = "timestamp,temp,flow") -> str:
    return "".join(sep.join(cells) + "\n" for cells in [header.split(","), *rows])


def load(path: Path, **cfg):
    return load_series([path], DataConfig(**cfg))


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be"])
def test_a_utf16_file_reads_as_its_utf8_copy(tmp_path, codec) -> None:
    """Excel's "Unicode text" is UTF-16 with a byte-order mark, tab-separated, CRLF: it was refused as "not
    UTF-8 text (byte 0xff)". Read as the same file in UTF-8 (the -le/-be codecs write no mark: one is put)."""
    plain = tmp_path / "plain.csv"
    plain.write_text(text(","))
    mark = "" if codec == "utf-16" else "\ufeff"
    utf16 = tmp_path / "unicode.txt"
    utf16.write_bytes((mark + text("\t")).replace("\n", "\r\n").encode(codec))
    (want,), feats = load(plain)
    (got,), got_feats = load(utf16)
    assert got_feats == feats == ["temp", "flow"]
    assert got.timestamps.tolist() == want.timestamps.tolist()
    assert (
        got.values.tolist()
        == want.values.tolist()
        == [[20.5, 0.25], [21.5, 1.25], [22.5, 2.25], [23.5, 3.25]]
    )


def test_a_utf16_file_names_lines_and_keys_as_written(tmp_path) -> None:
    """Lines in errors are counted in the decoded text (a blank line counts, a character whose UTF-16 code holds
    a newline's byte, 上 = U+4E0A, does not), and a key column keeps its leading zeros; compressed too."""
    rows = [("2023-11-14 10:00:00", "007", "1.0"), ("2023-11-14 10:01:00", "007", "oops")]
    body = "\ufeff" + text("\t", rows, "timestamp,device,上").replace("\n", "\n\n", 1)
    path = tmp_path / "u.txt"
    path.write_bytes(body.encode("utf-16-le"))
    with pytest.raises(SchemaError, match=r"column '上' line 4 holds 'oops'"):
        load(path, key_column="device")
    packed = tmp_path / "u.csv.gz"
    packed.write_bytes(gzip.compress(body.replace("oops", "2.0").encode("utf-16-le")))
    (s,), feats = load(packed, key_column="device")
    assert (s.key, feats, s.values.tolist()) == ("007", ["上"], [[1.0], [2.0]])


def test_a_utf16_file_replays_as_its_utf8_copy(bundle_path, test_csv, tmp_path) -> None:
    """What reaches scores.csv: the same times, readings and scores as the UTF-8 file gives."""
    utf16 = tmp_path / "test.txt"
    utf16.write_bytes(test_csv.read_text().replace(",", "\t").encode("utf-16"))
    out = {}
    for name, path in (("plain", test_csv), ("utf16", utf16)):
        run_replay([str(path)], str(bundle_path), str(tmp_path / name), build_config(), progress=False)
        out[name] = pd.read_csv(tmp_path / name / "scores.csv").drop(columns="key")
    pd.testing.assert_frame_equal(out["utf16"], out["plain"])


def test_a_windows_1252_file_is_refused_naming_its_line_and_the_conversion(tmp_path) -> None:
    """Excel's "CSV" on Windows writes `°C` as the byte 0xb0. The encoding is not guessed (any bytes read as
    Windows-1252); the error showed the byte alone: now the line, as Windows-1252 shows it, and a command; and
    first data.encoding (--encoding cp1252), which reads it (tests/test_data_encoding.py)."""
    path = tmp_path / "export.csv"
    path.write_bytes("timestamp;a\r\n2023-11-14 10:00:00;1,5\r\nnote;Temp °C\r\n".encode("cp1252"))
    with pytest.raises(DataError) as err:
        load(path, decimal=",")
    assert str(err.value) == (
        f"cannot read {path} as CSV: it is not UTF-8 text (byte 0xb0 on line 3: 'note;Temp °C' in Windows-1252); "
        "if it is Windows-1252 (Excel's 'CSV' on Windows), read it with --encoding cp1252 (data.encoding), or save "
        f"it as UTF-8 (Excel: 'CSV UTF-8'), or convert it, e.g. iconv -f WINDOWS-1252 -t UTF-8 {path} > "
        f"{tmp_path / 'export-utf8.csv'}"
    )


def test_a_totals_row_under_the_data_is_named_as_such(tmp_path) -> None:
    """A spreadsheet's totals row: 'Total' in the time column was met with "pass --time-format if the dates
    are not ISO-like", which no format fixes; 'Average' under a sensor was named as a text cell alone."""
    path = tmp_path / "x.csv"
    path.write_text(text() + "Total,88,6.75\n")
    with pytest.raises(
        DataError, match=r"value 'Total' \(line 6\) .*; it is the last row, and every other row "
    ):
        load(path)
    path.write_text(text() + ",Average,1.75\n")
    with pytest.raises(
        SchemaError, match=r"line 6 holds 'Average', .* \(it is the last row: a totals or summary"
    ):
        load(path)
    path.write_text(text(rows=[*ROWS[:2], ("2023-11-14 10:xx:00", "1", "2"), *ROWS[2:]]))  # not the last row
    with pytest.raises(
        DataError, match=r"'2023-11-14 10:xx:00' \(line 4\) .*; pass --time-format if the dates"
    ):
        load(path)


def test_a_fault_column_is_not_taken_for_a_sensor(tmp_path) -> None:
    """A 0/1 column named `fault` (a labelled test rig's) became a feature: the model learnt the answer."""
    path = tmp_path / "x.csv"
    path.write_text("timestamp,temp,Fault\n1,20.5,0\n2,21.5,1\n3,22.5,0\n")
    with pytest.raises(SchemaError, match=r"column 'Fault' looks like labels \(0/1\), .* --label Fault"):
        load(path)
    (s,), feats = load(path, label="Fault")
    assert feats == ["temp"] and s.labels.tolist() == [0, 1, 0]


def _local_minutes(start: str, hours: int) -> list[str]:
    """Berlin wall-clock times, a minute apart, without an offset: 02:00 to 02:59 twice on 2023-10-29."""
    first = pd.Timestamp(start, tz="Europe/Berlin")
    times = pd.date_range(first, periods=hours * 60, freq="min").tz_convert("Europe/Berlin")
    return [t.strftime("%Y-%m-%d %H:%M:%S") for t in times]


def test_local_times_across_a_fall_back_read_as_one_series_however_short(tmp_path) -> None:
    """8 hours a minute apart over the fall-back: the repeated hour is 60 of 480 rows, over a tenth, and the
    file was refused as "several series interleaved; pass --key-column". It now reads as a day's file does
    (every row, in time order; the engine refuses the hour's second pass and replay names it)."""
    stamps = _local_minutes("2023-10-29 00:00", 8)
    assert stamps.count("2023-10-29 02:30:00") == 2
    path = tmp_path / "x.csv"
    path.write_text("timestamp,a\n" + "".join(f"{t},{i}\n" for i, t in enumerate(stamps)))
    (s,), _ = load(path)
    assert (
        len(s.timestamps) == 480 and s.timestamps[0] == pd.Timestamp("2023-10-29 00:00", tz="UTC").timestamp()
    )
    assert (pd.Series(s.timestamps).value_counts() == 2).sum() == 60
    # two loggers' exports of the same 50 minutes, joined: still refused
    rows = [f"2023-11-14 10:{m:02d}:00" for m in range(50)]
    path.write_text("timestamp,a\n" + "".join(f"{t},{i}\n" for i, t in enumerate(rows + rows)))
    with pytest.raises(
        SchemaError, match="50 of 100 rows repeat another row's timestamp, so the file looks like"
    ):
        load(path)


def test_a_time_zone_name_is_refused_saying_to_write_an_offset(tmp_path) -> None:
    """`02:30:00 CEST` was met with "pass --time-format if the dates are not ISO-like", which none reads."""
    path = tmp_path / "x.csv"
    path.write_text(
        "timestamp,a\n2023-10-29 02:30:00 CEST,1\n2023-10-29 02:30:00 CET,2\n2023-10-29 03:00:00 CET,3\n"
    )
    with pytest.raises(
        DataError, match=r"'2023-10-29 02:30:00 CEST' \(line 2\) .*; time zone names such as 'CEST' "
    ):
        load(path)


def test_utf16_without_a_byte_order_mark_is_refused_saying_so(tmp_path) -> None:
    """Its NUL bytes are UTF-8 too: it was read as columns named 't i m e s t a m p' and refused as no numbers."""
    path = tmp_path / "x.txt"
    path.write_bytes("timestamp\ta\n1700000000\t1.5\n1700000060\t2.5\n".encode("utf-16-le"))
    with pytest.raises(
        DataError, match=r"x.txt as CSV: its first line holds NUL characters, as UTF-16 text without"
    ):
        load(path)


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_without_a_byte_order_mark_names_the_encoding_that_reads_it(tmp_path, codec) -> None:
    """A NUL in every second byte is the byte order of UTF-16 without its mark: the refusal said only "save it as
    UTF-8", where --encoding utf-16-le (or -be) reads it as it is."""
    path = tmp_path / "x.csv.gz"
    path.write_bytes(gzip.compress("timestamp\ta °C\n1700000000\t1.5\n1700000060\t2.5\n".encode(codec)))
    with pytest.raises(DataError) as info:
        load(path)
    assert str(info.value) == (
        f"cannot read {path} as CSV: its first line holds NUL characters, as UTF-16 text without a byte-order mark "
        f"does; read it with --encoding {codec} (data.encoding), or save it as UTF-8 (or as UTF-16 with its "
        "byte-order mark, which Excel's 'Unicode text' has)"
    )
    (s,), feats = load(path, encoding=codec)
    assert feats == ["a °C"] and s.values.tolist() == [[1.5], [2.5]]
    mixed = tmp_path / "y.csv"  # NULs at both offsets: no byte order to name
    mixed.write_bytes(b"timestamp,a\x00\x00b\n1,2\n")
    with pytest.raises(DataError) as info:
        load(mixed)
    assert "--encoding" not in str(info.value) and "holds NUL characters" in str(info.value)

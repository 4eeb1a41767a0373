"""Reading a CSV file into a frame of cells: decompression, the separator, the header (skipped lines above
it, names given twice, InfluxDB's layouts) and the refusals of files pandas cannot read. Also the file line
of a row, which every error that names a cell reports, and the hints such errors share (no header, wrong
separator)."""

from __future__ import annotations

import codecs
import csv
import re
import shlex
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.io.common import get_handle

from anomaly.errors import DataError

SEPARATORS = (",", ";", "\t", "|")


def file_encoding(path: str | Path) -> str:
    """'utf-16' for a file that begins with a UTF-16 byte-order mark (Excel's "Unicode text", tab-separated),
    'utf-8' for any other (a UTF-8 byte-order mark is read as usual). Read through the file's decompression."""
    try:
        with get_handle(path, "rb", compression="infer", is_text=False) as handle:
            head = handle.handle.read(4)
    except (OSError, ValueError, EOFError):
        return "utf-8"  # the reader that follows says what is wrong
    utf32 = head in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")  # UTF-32's marks: refused as not UTF-8
    return "utf-16" if head[:2] in (b"\xff\xfe", b"\xfe\xff") and not utf32 else "utf-8"


def utf16_byte_order(path: str | Path, size: int = 4096) -> str | None:
    """'utf-16-le' or 'utf-16-be' for a file whose first bytes are UTF-16 text without a byte-order mark: a NUL in
    every second byte (the high byte of ASCII text), at odd offsets (little-endian) or even ones (big-endian), and
    none at the others; None for any other file (NULs in no such order are not guessed at)."""
    try:
        with get_handle(path, "rb", compression="infer", is_text=False) as handle:
            head = handle.handle.read(size)
    except (OSError, ValueError, EOFError):
        return None
    head = head[: len(head) // 2 * 2]
    even, odd = head[0::2], head[1::2]
    if not head or (even.count(0) and odd.count(0)):
        return None
    if odd.count(0) * 2 >= len(odd):  # most characters ASCII (or Latin-1): their high bytes are NUL
        return "utf-16-le"
    if even.count(0) * 2 >= len(even):
        return "utf-16-be"
    return None


def chosen_encoding(path: str | Path, encoding: str | None = "auto") -> str:
    """The codec a data file is read in: data.encoding's, or under "auto" (and None) :func:`file_encoding`'s."""
    return file_encoding(path) if encoding in (None, "auto") else encoding


def first_line(path: Path, skip: int = 0, encoding: str | None = None) -> str:
    """The header line (after `skip` lines), read through the same decompression pandas infers from the suffix
    (.gz, .bz2, .xz, .zip, .zst, .tar...), so a compressed file's separator is detected from its text, not its
    bytes; in `encoding` (None or "auto": :func:`file_encoding`'s)."""
    encoding = chosen_encoding(path, encoding)
    try:
        with get_handle(path, "r", compression="infer", encoding=encoding, errors="replace") as handles:
            # to the end of the file at most: `--skip-rows 100000000000` read past it for hours
            for _ in range(skip):
                if not handles.handle.readline():
                    return ""
            return handles.handle.readline()
    except UnicodeError:  # data.encoding utf-16 on a file without its byte-order mark
        raise DataError(_not_in(path, encoding)) from None
    except (OSError, ValueError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read {path}: {reason}") from None


def plain_name(path: str | Path) -> str:
    """The file name without the compression suffix pandas reads through (`pump.csv.gz` -> `pump.csv`): a
    compressed file names its series (and its entry in a labels file) as the plain file does."""
    name = Path(path).name
    for suffix in sorted(COMPRESSIONS, key=len, reverse=True):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


COMPRESSIONS = (".tar", ".tar.gz", ".tar.bz2", ".tar.xz", ".gz", ".bz2", ".zip", ".xz", ".zst")


def detect_separator(header: str) -> str:
    """The separator of a header line: the candidate it holds most often (',' when it holds none)."""
    counts = {sep: header.count(sep) for sep in SEPARATORS}
    best = max(SEPARATORS, key=lambda sep: counts[sep])  # ties keep the order above: ',' first
    return best if counts[best] else ","


# pandas < 3.1 parses CSV floats with a fast converter that is not always correctly rounded unless asked for
# "round_trip"; from 3.1 on every mode is correctly rounded and the argument is deprecated.
_EXACT_FLOATS = (
    {}
    if tuple(int(p) for p in pd.__version__.split(".")[:2]) >= (3, 1)
    else {"float_precision": "round_trip"}
)


def read_frame(
    path: str | Path,
    separator: str | None = None,
    decimal: str = ".",
    header: bool = True,
    skip_rows: int = 0,
    text_columns: Sequence[str] = (),
    encoding: str = "auto",
) -> pd.DataFrame:
    """The file as a frame of cells, after its first `skip_rows` lines (notes above the header). Without a
    header (`header=False`: the first line is data, as in SMD or the UCR archive) the columns are named 1, 2,
    3, ... (strings), the numbering such datasets' own labels use. `text_columns` (the key column) are read as
    written, so device 0012 stays '0012' (as a Kafka message key would be) instead of becoming the number 12.
    `encoding` is data.encoding: "auto" (UTF-16 by its byte-order mark, else UTF-8) or a codec name."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    if p.stat().st_size == 0:
        raise DataError(f"{p} is empty")
    # a UTF-16 file (Excel's "Unicode text") is read as such: it was refused as "not UTF-8 text (byte 0xff)"
    given, encoding = encoding, chosen_encoding(p, encoding)
    # read once: it gives the separator and is checked before pandas reads it
    first = first_line(p, skip_rows, encoding)
    if skip_rows and not first:  # pandas said "No columns to parse from file", naming no setting
        raise DataError(
            f"{p}: data.skip_rows (--skip-rows) {skip_rows} skips every line of the file: no header or data is left"
        )
    # every other byte 0: its names were read as 't i m e s t a m p' and refused as no numbers
    if "\x00" in first:
        order = utf16_byte_order(p)
        read_as = f"read it with --encoding {order} (data.encoding), or " if order else ""
        raise DataError(
            f"cannot read {p} as CSV: its first line holds NUL characters, as UTF-16 text without a byte-order "
            f"mark does; {read_as}save it as UTF-8 (or as UTF-16 with its byte-order mark, which Excel's 'Unicode "
            "text' has)"
        )
    directive = re.fullmatch(r"\ufeff?sep=(.)\s*", first)
    if directive:  # Excel's separator line ('sep=;') above the header: a hint for Excel, not the header
        skip_rows += 1
        first = first_line(p, skip_rows, encoding)
        separator = separator or directive.group(1)
    sep = separator or detect_separator(first)
    if header:
        _check_header(p, first, sep)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # index_col=False: rows that end with a separator (a common export) must not make pandas take the
            # first column for the index and shift every column one to the left.
            frame = pd.read_csv(
                p,
                sep=sep,
                decimal=decimal,
                header=0 if header else None,
                skiprows=skip_rows,
                index_col=False,
                low_memory=False,
                compression="infer",
                encoding=encoding,
                **_EXACT_FLOATS,
            )
    except UnicodeDecodeError as exc:
        if given in (None, "auto"):
            raise DataError(_not_utf8(p, exc.object[exc.start])) from None
        raise DataError(_not_in(p, encoding)) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = (
            " (more fields than the header names: if the header is not the file's first line, skip the lines "
            "above it with --skip-rows N)"
            if isinstance(exc, pd.errors.ParserError) and "Expected" in reason
            else ""
        )
        raise DataError(f"cannot read {p} as CSV: {reason}{hint}") from None
    if header:
        frame.columns = [_clean_name(c) for c in frame.columns]
    else:
        frame.columns = [str(i) for i in range(1, len(frame.columns) + 1)]
    for name in text_columns:
        if name in frame.columns:
            at = list(frame.columns).index(name)
            frame[name] = _as_written(p, sep, header, skip_rows, at, len(frame), encoding)
    if len(frame) <= 1 and len(first.split()) > 1 and all(is_number(c) for c in first.split()):
        raise DataError(
            f"{p} holds one line of {len(first.split())} numbers separated by spaces: a series written on one "
            "line; put one value per line (tr -s ' ' '\\n' < FILE), then read it with --no-header"
        )
    blank = frame.isna().all(axis=1).to_numpy(bool)
    if blank.any():  # a row of separators only (`;;;`, Excel's empty rows at the end): no reading, as a blank
        # line is none; it was a reading without a time, refused by replay and evaluated with label 0
        frame = frame.loc[~blank]  # the index keeps each row's number, so the lines named stay right
    if frame.empty:
        raise DataError(f"{p} has no data rows{no_header_note(list(frame.columns))}")
    frame.attrs["separator"] = sep
    frame.attrs["path"] = str(p)  # for error messages that name a line (`file_line`)
    frame.attrs["header"] = header
    frame.attrs["skip_rows"] = skip_rows
    frame.attrs["encoding"] = encoding
    return frame


def _first_undecodable(path: Path, encoding: str) -> tuple[int, bytes, UnicodeError] | None:
    """The first line of the file that is no text in `encoding`: (its number, its bytes, the error), lines
    counted in the decoded text as an editor shows them; None when every line decodes or the file cannot be
    read again."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    line = 1
    try:
        with get_handle(path, "rb", compression="infer", is_text=False) as handle:
            for raw in handle.handle:  # pieces ending in a newline byte: whole lines in an ASCII-like codec
                try:
                    line += decoder.decode(raw).count("\n")
                except UnicodeError as exc:  # also "UTF-16 stream does not start with BOM"
                    return line, raw, exc
    except (OSError, EOFError, ValueError):
        pass
    return None


def _shown(raw: bytes, encoding: str) -> str:
    text = raw.decode(encoding, errors="replace").rstrip("\r\n")
    return text[:60] + ("..." if len(text) > 60 else "")


def _not_in(path: Path, encoding: str) -> str:
    """The refusal of a file with bytes that are no text in data.encoding's codec: its first such line (as the
    codec reads the rest of it)."""
    where = ""
    found = _first_undecodable(path, encoding)
    if found is not None:
        line, raw, exc = found
        if isinstance(exc, UnicodeDecodeError):
            where = f" on line {line} (byte {exc.object[exc.start]:#x}: {_shown(raw, encoding)!r})"
        else:
            where = f" on line {line} ({exc})"
    return (
        f"cannot read {path} as CSV: it is not {encoding} text{where}; set the file's encoding with --encoding "
        "(data.encoding), e.g. cp1252 for Excel's 'CSV' on Windows, or auto for UTF-8"
    )


def _not_utf8(path: Path, byte: int) -> str:
    """The refusal of a file that is not UTF-8: its first such line, shown as Windows-1252 (what Excel's "CSV"
    writes on Windows: `°C`, `µS`), and how to convert it. The encoding is not guessed: any bytes read as
    Windows-1252 or Latin-1, so a wrong guess would change names and text without a word."""
    where = ""
    found = _first_undecodable(path, "utf-8")
    if found is not None and isinstance(found[2], UnicodeDecodeError):
        line, raw, exc = found[0], found[1], found[2]
        byte = exc.object[exc.start]
        where = f" on line {line}: {_shown(raw, 'cp1252')!r} in Windows-1252"
    convert = (
        f", or convert it, e.g. iconv -f WINDOWS-1252 -t UTF-8 {quoted(path)} > {quoted(path.with_name(path.stem + '-utf8.csv'))}"
        if plain_name(path) == path.name  # a compressed file's bytes are no text to convert
        else ""
    )
    return (
        f"cannot read {path} as CSV: it is not UTF-8 text (byte {byte:#x}{where}); if it is Windows-1252 (Excel's "
        f"'CSV' on Windows), read it with --encoding cp1252 (data.encoding), or save it as UTF-8 (Excel: "
        f"'CSV UTF-8'){convert}"
    )


def _as_written(
    path: Path, sep: str, header: bool, skip_rows: int, position: int, rows: int, encoding: str = "utf-8"
) -> pd.Series:
    """One column's cells as the file writes them (read again on their own): names such as device 0012 or the
    region NA, which pandas would read as the number 12 or a missing value. Only an empty cell is missing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cells = pd.read_csv(
            path,
            sep=sep,
            header=0 if header else None,
            skiprows=skip_rows,
            index_col=False,
            usecols=[position],
            dtype=str,
            keep_default_na=False,
            compression="infer",
            encoding=encoding,
        ).iloc[:, 0]
    if len(cells) != rows:  # the two reads disagree (never seen): refuse rather than guess
        raise DataError(
            f"cannot read {path} as CSV: column {position + 1} has {len(cells)} cells for {rows} rows"
        )
    return cells.where(cells.str.strip() != "", np.nan)


def no_header_note(names: Sequence[object]) -> str:
    """A hint for a header line made of numbers: the file has no header (SMD, the UCR archive)."""
    cells = [str(n).strip() for n in names]
    if cells and all(is_number(c) for c in cells):
        return " (its first line holds numbers: for a file without a header, pass --no-header)"
    return ""


_DATE = re.compile(r"\d{4}-\d{1,2}-\d{1,2}([ T]\S.*)?|\d{1,2}[/.]\d{1,2}[/.]\d{2,4}( \S.*)?")


def data_as_header(names: Sequence[object]) -> bool:
    """Whether a header line is a line of data (a file without a header, read with one): every name a number
    or a date, and one at least a date or a number with a fraction, a sign or an exponent (`3.4558419e-02`),
    which no one names a column. Names of whole numbers only (`0,1,2`: pandas' column numbers written back) may
    be a header and pass."""
    cells = [str(n).strip() for n in names]
    if not cells or not all(is_number(c) or _DATE.fullmatch(c) for c in cells):
        return False
    return not all(c.isdigit() for c in cells) and any(is_number(c) for c in cells)


def first_date(names: Sequence[object]) -> int | None:
    """The 1-based position of the first name that is a date (the time column of a line of data), if any."""
    return next((i for i, n in enumerate(names, 1) if _DATE.fullmatch(str(n).strip())), None)


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def quoted(name: object) -> str:
    """A column name as it must be typed in a shell: `'KPI ID'`, `'timestamp_(min)'`, `value` as is."""
    return shlex.quote(str(name))


def plural(n: int, one: str, many: str | None = None) -> str:
    """A count with its noun: `1 reading`, `2 readings` (`many` where adding an s is wrong)."""
    return f"{n:,} {one if n == 1 else many or one + 's'}"


def _clean_name(name: object) -> str:
    """A header name without the spaces, zero-width characters or byte-order mark around it (invisible in an
    editor, so 'b\u200b' would be a feature nobody can name)."""
    return str(name).strip().strip("\u200b\u200c\u200d\u2060\ufeff").strip()


_PIVOT = 'Flux: pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")'
_INFLUX_COLUMNS = "pass --time-column _time and the fields as --features"


def _check_header(path: Path, header: str, sep: str) -> None:
    """Refuse headers pandas would read wrongly without a word: a name given twice (pandas renames the copy
    'a.1', or the copies collide once spaces are stripped) and InfluxDB's annotated CSV (its '#group' line
    would be read as the header)."""
    line = header.lstrip("\ufeff")
    if line.startswith(("#group", "#datatype", "#default")):
        raise DataError(
            f"{path} is an InfluxDB annotated CSV: delete its '#' annotation lines, pivot it to one column per "
            f"field if each row holds one _field and _value ({_PIVOT}), then {_INFLUX_COLUMNS}"
        )
    names = [_clean_name(c) for c in next(csv.reader([line], delimiter=sep), [])]
    if "_field" in names and "_value" in names:
        raise DataError(
            f"{path} is in InfluxDB's long form (columns _field and _value: one row per field value): export "
            f"it pivoted to one column per field ({_PIVOT}), then {_INFLUX_COLUMNS}"
        )
    seen: dict[str, int] = {}
    for i, name in enumerate(names, 1):
        if name and name in seen:
            raise DataError(
                f"{path}: column name {name!r} appears twice in the header (columns {seen[name]} and {i}); "
                "rename or remove one"
                + (
                    no_header_note(names)
                    or " (if the header is not the file's first line, skip the lines above it with --skip-rows N)"
                )
            )
        seen[name] = i


def file_line(rows: pd.DataFrame | pd.Series, i: int) -> int:
    """The file line of the i-th row of a frame read by `read_frame` (or of one of its columns): the header is
    line 1, and the blank lines the reader skipped are counted, so the number is the one an editor shows."""
    row = int(rows.index[i])
    header, skip = rows.attrs.get("header", True), rows.attrs.get("skip_rows", 0)
    lines = _data_lines(
        rows.attrs.get("path"), header, skip, rows.attrs.get("separator"), rows.attrs.get("encoding", "utf-8")
    )
    return lines[row] if lines is not None and row < len(lines) else row + 1 + int(header) + skip


def line_numbers(frame: pd.DataFrame) -> np.ndarray:
    """The file line of every row of a frame read by `read_frame` (what :func:`file_line` gives one row), for
    pointing at a reading later (a refused one in `rejections.jsonl`). The file is counted again, fast, and read
    line by line only when it has lines the reader skipped (blank ones)."""
    rows = frame.index.to_numpy(np.int64)
    header, skip = frame.attrs.get("header", True), frame.attrs.get("skip_rows", 0)
    plain = rows + 1 + int(header) + skip
    path = frame.attrs.get("path")
    if path is None or not len(rows):
        return plain
    encoding = frame.attrs.get("encoding", "utf-8")
    # a UTF-16 character may hold a newline's byte (U+4E0A, U+010A): its lines are counted as text below. In
    # UTF-8, Windows-1252, Latin-1, Shift-JIS... the byte 0x0a is a newline only, so counting bytes is exact
    if _newline_byte(encoding) and _count_lines(path) == int(rows.max()) + 1 + int(header) + skip:
        return plain
    lines = _data_lines(path, header, skip, frame.attrs.get("separator"), encoding)
    if lines is None or len(lines) <= rows.max():
        return plain
    return np.asarray(lines, np.int64)[rows]


def _newline_byte(encoding: str) -> bool:
    """Whether a codec writes a newline as the byte 0x0a (UTF-8 and codecs that extend ASCII, not UTF-16)."""
    try:
        return "\n".encode(encoding) == b"\n"
    except (LookupError, UnicodeError):
        return False


def _count_lines(path: str) -> int | None:
    """The lines of a file (one without a newline at its end too), counted in its bytes; None when it cannot
    be read again."""
    count, last = 0, b"\n"
    try:
        with get_handle(path, "rb", compression="infer", is_text=False) as handle:
            while chunk := handle.handle.read(1 << 20):
                count += chunk.count(b"\n")
                last = chunk[-1:]
    except (OSError, EOFError):
        return None
    return count + (last != b"\n")


def _data_lines(
    path: str | None, header: bool = True, skip: int = 0, sep: str | None = None, encoding: str = "utf-8"
) -> list[int] | None:
    """1-based line numbers of the data rows of `path` (the first line of each record after the `skip` lines
    above the header and the header, if it has one, skipping blank ones as the reader does); read again only
    when an error names a line. Records are read as CSV (`sep`), so a quoted cell with a line break in it (a
    notes column) counts its lines, as an editor shows them. None when the file cannot be read again."""
    if path is None:
        return None
    from pandas.io.common import get_handle

    lines: list[int] = []
    try:
        with get_handle(path, "r", compression="infer", encoding=encoding) as handle:
            text = handle.handle
            for _ in range(skip):
                text.readline()
            reader = csv.reader(text, delimiter=sep or ",")
            end = skip
            for record in reader:
                if len(record) > 1 or (record and record[0].strip()):  # a blank line: no row
                    lines.append(end + 1)
                end = skip + reader.line_num
    except (
        OSError,
        UnicodeDecodeError,
        EOFError,
        csv.Error,
        TypeError,
    ):  # (TypeError: a separator of 2+ characters)
        return None
    return lines[1:] if header else lines


def separator_note(frame: pd.DataFrame) -> str:
    if len(frame.columns) == 1:
        return f" (one column only: is the separator {frame.attrs.get('separator', ',')!r} right? see --separator)"
    return ""

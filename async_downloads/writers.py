"""Writers of download files: rows as CSV, JSON Lines or XLSX, and zips of several files.

They write bytes to the file objects they are given and know nothing of records,
storage or the cache (``files`` writes them through a spooled temporary file). The
first row of every row iterable is its header.

- CSV: ``csv.writer`` in the given encoding ("utf-8-sig" adds the byte order mark Excel
  needs to read UTF-8), values as ``str()`` makes them, as in earlier releases.
- JSON Lines: one object per row, keyed by the header; always UTF-8, without a BOM.
- XLSX: XlsxWriter in ``constant_memory`` mode, typed cells, a bold and frozen header,
  a new sheet (header repeated) every ``XLSX_MAX_ROWS`` rows. Needs the ``xlsx`` extra.
- Zip: members streamed into the archive one after another (zipstream-ng, deflated).

Spreadsheet formula injection: XLSX never writes a formula from data. With
``escape_formulas``, a CSV string cell that starts with ``= + - @``, a tab or a carriage
return gets a ``'`` in front (OWASP's advice), and such an XLSX cell gets Excel's own
quote prefix (shown as is, never taken for a formula, even when edited). Numbers are
never changed.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import decimal
import io
import itertools
import json
import math
import numbers
import os
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, Final, NamedTuple, Protocol

from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone
from django.utils.duration import duration_iso_string
from zipstream import ZipStream

CSV: Final = "csv"
JSONL: Final = "jsonl"
XLSX: Final = "xlsx"
FORMATS: Final = (CSV, JSONL, XLSX)
ALIASES: Final = {"ndjson": JSONL}
EXTENSIONS: Final = {".csv": CSV, ".jsonl": JSONL, ".ndjson": JSONL, ".xlsx": XLSX}
XLSX_INSTALL: Final = 'pip install "django-async-downloads[xlsx]"'

# What a spreadsheet takes for the start of a formula (OWASP, "CSV Injection").
FORMULA_STARTS: Final = frozenset("=+-@\t\r")
# Values that are written as what they are, never as text that could be a formula.
_NOT_TEXT: Final = (numbers.Number, datetime.date, datetime.time, uuid.UUID)

# Excel's limits per sheet; the rows include the header. Read at each row, so that
# a test can lower it.
XLSX_MAX_ROWS = 1_048_576
XLSX_MAX_COLUMNS: Final = 16_384
# Excel keeps 15 significant digits: larger integers are written as text, whole.
XLSX_EXACT_INTEGERS: Final = 10**15
XLSX_OPTIONS: Final = {
    "constant_memory": True,  # one row in memory at a time, the rest in a temporary file
    "in_memory": False,  # (in_memory would turn constant_memory off)
    "strings_to_formulas": False,
    "strings_to_numbers": False,
    "strings_to_urls": False,
    "remove_timezone": True,  # for aware times (datetimes are converted first, see _XlsxWriter)
}
DATE_FORMAT: Final = "yyyy-mm-dd"
DATETIME_FORMAT: Final = "yyyy-mm-dd hh:mm:ss"
TIME_FORMAT: Final = "hh:mm:ss"
DURATION_FORMAT: Final = "[h]:mm:ss"
# Column widths (in characters) that show a whole value of these formats.
_WIDTHS: Final = {DATE_FORMAT: 11, DATETIME_FORMAT: 19, TIME_FORMAT: 9, DURATION_FORMAT: 10}

CHUNK_ROWS: Final = 1000  # rows written at a time into a zip member
CHUNK_BYTES: Final = 256 * 1024  # bytes read at a time from a file member


class Member(NamedTuple):
    """One file of a zip download.

    ``content`` is an iterable of rows (written in ``format``, or as the extension of
    ``name`` says, else CSV), a file object, ``bytes``, or a ``str`` (written as UTF-8).
    A plain ``(name, content)`` or ``(name, content, format)`` tuple does as well.
    """

    name: str
    content: Any
    format: str | None = None


# --- Formats ---------------------------------------------------------------------------------


def resolve_format(format: str | None, filename: str = "") -> str:
    """The format to write: ``format`` if given, else the one ``filename``'s extension names, else CSV."""
    if format is None:
        return EXTENSIONS.get(os.path.splitext(filename)[1].lower(), CSV)
    name = str(format).lower().lstrip(".")
    name = ALIASES.get(name, name)
    if name not in FORMATS:
        raise ValueError(f"Unknown download format {format!r}; use one of {', '.join(FORMATS)}, or ndjson.")
    return name


def require(format: str) -> None:
    """Raise ImproperlyConfigured if ``format`` needs a package that is not installed."""
    if format == XLSX:
        _xlsxwriter()


def _xlsxwriter() -> Any:
    try:
        import xlsxwriter
    except ImportError as error:
        raise ImproperlyConfigured(f"XLSX downloads need XlsxWriter: {XLSX_INSTALL}") from error
    return xlsxwriter


def escape_formula(value: str) -> str:
    """``value`` with a ``'`` in front if a spreadsheet would take it for a formula."""
    return "'" + value if value[:1] in FORMULA_STARTS else value


def _escaped(value: Any) -> Any:
    if type(value) is str:
        return "'" + value if value[:1] in FORMULA_STARTS else value
    if value is None or isinstance(value, _NOT_TEXT):
        return value
    return escape_formula(str(value))


# --- Writing rows ----------------------------------------------------------------------------


class _Writer(Protocol):
    def write(self, rows: Iterable[Iterable[Any]]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...

    def abandon(self) -> None: ...


def write_rows(
    out: IO[bytes],
    rows: Iterable[Iterable[Any]],
    format: str = CSV,
    *,
    encoding: str = "utf-8",
    escape_formulas: bool = False,
    tmpdir: str | None = None,
) -> None:
    """Write ``rows`` (the first is the header) to the binary file ``out`` in ``format``.

    ``encoding`` is the CSV's (JSON Lines are UTF-8, XLSX binary); ``tmpdir`` is
    where XlsxWriter keeps its temporary files (the system's default if None).
    """
    writer = _writer(out, format, encoding, escape_formulas, tmpdir)
    try:
        writer.write(rows)
    except BaseException:
        writer.abandon()
        raise
    writer.close()


def row_chunks(
    rows: Iterable[Iterable[Any]], format: str = CSV, *, encoding: str = "utf-8", escape_formulas: bool = False
) -> Iterator[bytes]:
    """``rows`` written in ``format`` (CSV or JSON Lines), as chunks of bytes, CHUNK_ROWS rows at a time."""
    if format == XLSX:
        raise ValueError("XLSX needs a file to write to (its zip is assembled at the end): use write_rows.")
    buffer = io.BytesIO()
    writer = _writer(buffer, format, encoding, escape_formulas, None)
    rows = iter(rows)
    while batch := list(itertools.islice(rows, CHUNK_ROWS)):
        writer.write(batch)
        writer.flush()
        yield _taken(buffer)
    writer.close()
    if tail := _taken(buffer):
        yield tail


def _taken(buffer: io.BytesIO) -> bytes:
    data = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return data


def _writer(out: IO[bytes], format: str, encoding: str, escape_formulas: bool, tmpdir: str | None) -> _Writer:
    if format == CSV:
        return _CsvWriter(out, encoding, escape_formulas)
    if format == JSONL:
        return _JsonLinesWriter(out)
    if format == XLSX:
        return _XlsxWriter(out, escape_formulas, tmpdir)
    raise ValueError(f"Unknown download format {format!r}; use one of {', '.join(FORMATS)}.")


class _TextWriter:
    """Text into a binary file that stays open: detached, not closed, at the end."""

    def __init__(self, out: IO[bytes], encoding: str) -> None:
        self.text = io.TextIOWrapper(out, encoding=encoding, newline="")

    def flush(self) -> None:
        self.text.flush()

    def close(self) -> None:
        self.text.flush()
        self.text.detach()

    def abandon(self) -> None:
        with contextlib.suppress(Exception):
            self.text.detach()


class _CsvWriter(_TextWriter):
    def __init__(self, out: IO[bytes], encoding: str, escape_formulas: bool) -> None:
        super().__init__(out, encoding)
        self.csv = csv.writer(self.text, lineterminator="\n")
        self.quoted = csv.writer(self.text, lineterminator="\n", quoting=csv.QUOTE_ALL)
        self.escape = escape_formulas

    def write(self, rows: Iterable[Iterable[Any]]) -> None:
        if not self.escape:
            self.csv.writerows(rows)
            return
        for row in rows:
            cells = [_escaped(value) for value in row]
            if any(type(cell) is str and "\r" in cell for cell in cells):
                # Python before 3.13 leaves a field with a carriage return unquoted, and a
                # spreadsheet starts a new line there (with a formula, maybe): quote them all.
                self.quoted.writerow(cells)
            else:
                self.csv.writerow(cells)


class _JsonLinesWriter(_TextWriter):
    """One JSON object per row, keyed by the header.

    Dates, times and datetimes are ISO 8601 strings (an aware datetime keeps its
    offset), durations ISO 8601 durations, decimals and UUIDs strings (a JSON
    number is read as a binary float by most parsers: "0.10" stays 0.10, to the last
    digit), NaN and infinities null, anything else not JSON ``str()``.
    """

    def __init__(self, out: IO[bytes]) -> None:
        super().__init__(out, "utf-8")
        self.keys: list[str] | None = None
        self.line = 0

    def write(self, rows: Iterable[Iterable[Any]]) -> None:
        rows = iter(rows)
        if self.keys is None:
            header = next(rows, None)
            if header is None:
                return
            self.keys = _json_keys(header)
        keys, width, write = self.keys, len(self.keys), self.text.write
        for row in rows:
            self.line += 1
            values = row if type(row) is list or type(row) is tuple else list(row)
            if len(values) != width:
                raise ValueError(f"Row {self.line} has {len(values)} values; the header has {width}: {keys!r}.")
            write(_json_line(dict(zip(keys, values, strict=False))))


def _json_keys(header: Iterable[Any]) -> list[str]:
    keys = ["" if key is None else str(key) for key in header]
    if len(set(keys)) != len(keys):
        duplicates = sorted({key for key in keys if keys.count(key) > 1})
        raise ValueError(f"JSON Lines need distinct header names; repeated: {duplicates!r}.")
    return keys


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return duration_iso_string(value)
    return str(value)


_JSON: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_json_default)


def _json_line(row: dict[str, Any]) -> str:
    try:
        return _JSON.encode(row) + "\n"
    except ValueError:  # NaN or an infinity, which JSON cannot hold
        return _JSON.encode({key: _finite(value) for key, value in row.items()}) + "\n"


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


class _XlsxWriter:
    """Typed cells: numbers, decimals (with their places), dates, datetimes, times, durations, booleans.

    Aware datetimes are converted to the current time zone and written without it
    (Excel has none); naive ones as they are. None, NaN and infinities are empty
    cells. Integers of more than 15 digits, UUIDs and anything else are text, never
    a formula.
    """

    def __init__(self, out: IO[bytes], escape_formulas: bool, tmpdir: str | None) -> None:
        xlsxwriter = _xlsxwriter()
        # XlsxWriter's temporary files (a sheet's rows, then the parts of the zip) go into
        # a folder of this workbook's, removed at the end even if the rows fail midway.
        self.tmp = tempfile.TemporaryDirectory(prefix="async-downloads-xlsx-", dir=tmpdir)
        self.book = xlsxwriter.Workbook(out, {**XLSX_OPTIONS, "tmpdir": self.tmp.name})
        add = self.book.add_format
        self.formats = {name: add({"num_format": name}) for name in _WIDTHS}
        self.header_format = add({"bold": True})
        self.quoted = add({"quote_prefix": True}) if escape_formulas else None
        self.quoted_header = add({"bold": True, "quote_prefix": True}) if escape_formulas else None
        self.decimal_formats: dict[int, Any] = {}
        self.cell_writers: dict[type, Callable[[Any, int, int, Any], None]] = {
            str: self.write_str, int: self.write_int, float: self.write_float, bool: self.write_bool,
            decimal.Decimal: self.write_decimal, datetime.datetime: self.write_datetime,
            datetime.date: self.write_date, datetime.time: self.write_time, datetime.timedelta: self.write_duration,
            type(None): self.write_none,
        }
        self.header: list[str] | None = None
        self.sheet: Any = None
        self.row = 0
        self.widths: list[float] = []
        self.widened: set[int] = set()

    def write(self, rows: Iterable[Iterable[Any]]) -> None:
        rows = iter(rows)
        if self.header is None:
            header = next(rows, None)
            if header is None:
                return
            self.header = ["" if name is None else str(name) for name in header]
            if len(self.header) > XLSX_MAX_COLUMNS:
                raise ValueError(f"The header has {len(self.header)} columns; an XLSX sheet holds {XLSX_MAX_COLUMNS}.")
            self.new_sheet()
        writers, other = self.cell_writers, self.write_other
        for values in rows:
            if self.row >= XLSX_MAX_ROWS:
                self.new_sheet()
            sheet, row, col = self.sheet, self.row, -1
            for col, value in enumerate(values):
                writers.get(type(value), other)(sheet, row, col, value)
            if col >= XLSX_MAX_COLUMNS:
                raise ValueError(f"Row {row} has {col + 1} values; an XLSX sheet holds {XLSX_MAX_COLUMNS} columns.")
            self.row = row + 1

    def new_sheet(self) -> None:
        """A sheet that starts with the header, bold, frozen above the rows."""
        assert self.header is not None
        sheet = self.book.add_worksheet()
        for col, name in enumerate(self.header):
            quoted = self.quoted_header is not None and name[:1] in FORMULA_STARTS
            sheet.write_string(0, col, name, self.quoted_header if quoted else self.header_format)
        self.widths = [min(max(len(name) + 2.0, 8.43), 60.0) for name in self.header]
        for col, width in enumerate(self.widths):
            if width > 8.43:
                sheet.set_column(col, col, width)
        sheet.freeze_panes(1, 0)
        self.sheet, self.row, self.widened = sheet, 1, set()

    # One method per type of value (looked up by exact type; subclasses go through write_other).

    def write_str(self, sheet: Any, row: int, col: int, value: str) -> None:
        if self.quoted is not None and value[:1] in FORMULA_STARTS:
            sheet.write_string(row, col, value, self.quoted)
        else:
            sheet.write_string(row, col, value)

    def write_int(self, sheet: Any, row: int, col: int, value: int) -> None:
        if -XLSX_EXACT_INTEGERS < value < XLSX_EXACT_INTEGERS:
            sheet.write_number(row, col, value)
        else:
            sheet.write_string(row, col, str(value))

    def write_float(self, sheet: Any, row: int, col: int, value: float) -> None:
        if math.isfinite(value):  # NaN and infinities are left empty, as JSON Lines make them null
            sheet.write_number(row, col, value)

    def write_bool(self, sheet: Any, row: int, col: int, value: bool) -> None:
        sheet.write_boolean(row, col, value)

    def write_decimal(self, sheet: Any, row: int, col: int, value: decimal.Decimal) -> None:
        number = float(value)
        if math.isfinite(number):  # NaN, infinities and decimals past a float's range are left empty
            sheet.write_number(row, col, number, self.decimal_format(value))

    def decimal_format(self, value: decimal.Decimal) -> Any:
        """A number format that shows the decimal's places ("0.00" for Decimal("1.50"))."""
        exponent = value.as_tuple().exponent
        if not isinstance(exponent, int) or exponent >= 0:
            return None
        places = min(-exponent, 30)
        if places not in self.decimal_formats:
            self.decimal_formats[places] = self.book.add_format({"num_format": "0." + "0" * places})
        return self.decimal_formats[places]

    def write_datetime(self, sheet: Any, row: int, col: int, value: datetime.datetime) -> None:
        if value.tzinfo is not None and value.utcoffset() is not None:
            value = timezone.localtime(value).replace(tzinfo=None)
        self.write_dated(sheet, row, col, value, DATETIME_FORMAT)

    def write_date(self, sheet: Any, row: int, col: int, value: datetime.date) -> None:
        self.write_dated(sheet, row, col, value, DATE_FORMAT)

    def write_time(self, sheet: Any, row: int, col: int, value: datetime.time) -> None:
        self.write_dated(sheet, row, col, value, TIME_FORMAT)

    def write_duration(self, sheet: Any, row: int, col: int, value: datetime.timedelta) -> None:
        self.write_dated(sheet, row, col, value, DURATION_FORMAT)

    def write_dated(self, sheet: Any, row: int, col: int, value: Any, name: str) -> None:
        sheet.write_datetime(row, col, value, self.formats[name])
        if col not in self.widened:
            # Wide enough to show the value rather than "#####".
            self.widened.add(col)
            if (self.widths[col] if col < len(self.widths) else 8.43) < _WIDTHS[name]:
                sheet.set_column(col, col, _WIDTHS[name])

    def write_none(self, sheet: Any, row: int, col: int, value: None) -> None:
        pass

    def write_other(self, sheet: Any, row: int, col: int, value: Any) -> None:
        for kind in (bool, int, float, decimal.Decimal, datetime.datetime, datetime.date, datetime.time,
                     datetime.timedelta):
            if isinstance(value, kind):
                self.cell_writers[kind](sheet, row, col, value)
                return
        if isinstance(value, numbers.Real):
            self.write_float(sheet, row, col, float(value))
        else:
            self.write_str(sheet, row, col, str(value))

    def flush(self) -> None:
        raise ValueError("XLSX cannot be written in chunks.")

    def close(self) -> None:
        try:
            self.book.close()
        finally:
            self.tmp.cleanup()

    def abandon(self) -> None:
        for sheet in self.book.worksheets():
            # XlsxWriter's open temporary file of a sheet's rows (constant_memory mode);
            # its folder is removed below.
            handle = getattr(sheet, "row_data_fh", None)
            if handle is not None:
                with contextlib.suppress(Exception):
                    handle.close()
        self.tmp.cleanup()


# --- Zips ------------------------------------------------------------------------------------


def write_zip(
    out: IO[bytes],
    members: Iterable[Member | tuple[Any, ...]],
    *,
    spool: Callable[[], IO[bytes]],
    encoding: str = "utf-8",
    escape_formulas: bool = False,
    tmpdir: str | None = None,
) -> None:
    """Write a deflated zip of ``members`` to ``out``, each member streamed in as it comes.

    ``members`` may be a generator: each member is written before the next is asked
    for. An XLSX member is written into ``spool()`` first (XLSX is a zip itself, so it
    is stored, not deflated again).
    """
    stream = ZipStream(compress_type=zipfile.ZIP_DEFLATED)
    for member in members:
        _add(stream, as_member(member), spool, encoding, escape_formulas, tmpdir)
        for chunk in stream.all_files():
            out.write(chunk)
    for chunk in stream.footer():
        out.write(chunk)


def as_member(spec: Any) -> Member:
    """A ``Member`` from a Member or a ``(name, content)`` or ``(name, content, format)`` tuple."""
    if isinstance(spec, Member):
        return spec
    if isinstance(spec, (tuple, list)) and len(spec) in (2, 3):
        return Member(*spec)
    raise TypeError(f"A zip member is a (name, content) or (name, content, format) tuple, not {spec!r}.")


def _add(
    stream: ZipStream, member: Member, spool: Callable[[], IO[bytes]], encoding: str, escape: bool,
    tmpdir: str | None,
) -> None:
    name, content = member.name, member.content
    if hasattr(content, "read"):
        stream.add(_file_chunks(content), name, size=_size(content))
    elif isinstance(content, (bytes, bytearray, memoryview, str)):
        stream.add(content.encode() if isinstance(content, str) else bytes(content), name)
    else:
        format = resolve_format(member.format, name)
        if format == XLSX:
            require(XLSX)
            file = spool()
            try:
                write_rows(file, content, XLSX, escape_formulas=escape, tmpdir=tmpdir)
            except BaseException:
                file.close()
                raise
            stream.add(_file_chunks(file, close=True), name, size=_size(file), compress_type=zipfile.ZIP_STORED)
        else:
            stream.add(row_chunks(content, format, encoding=encoding, escape_formulas=escape), name)


def _size(file: Any) -> int | None:
    """Rewind ``file`` if it can seek; return its size if it is binary (else zipstream-ng uses Zip64)."""
    seekable = getattr(file, "seekable", None)
    if seekable is None or not seekable():
        return None
    size = None if isinstance(file, io.TextIOBase) else int(file.seek(0, os.SEEK_END))
    file.seek(0)
    return size


def _file_chunks(file: Any, close: bool = False) -> Iterator[bytes]:
    try:
        while chunk := file.read(CHUNK_BYTES):
            yield chunk.encode() if isinstance(chunk, str) else chunk
    finally:
        if close:
            file.close()

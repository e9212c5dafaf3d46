"""The writers on their own: rows as CSV, JSON Lines and XLSX, zips, and formula injection.

XLSX files are read back with openpyxl, zips with zipfile: the bytes are checked, not
the calls that made them.
"""

import csv
import datetime
import enum
import fractions
import io
import json
import os
import sys
import uuid
import zipfile
from decimal import Decimal

import openpyxl
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy

from async_downloads import writers
from tests.testapp.format_tasks import HOSTILE, TYPED_HEADER, typed_rows

NUMBERS = [-5, -1.5, Decimal("-2.50"), 0, True]


def written(rows, format="csv", **options):
    out = io.BytesIO()
    writers.write_rows(out, rows, format, **options)
    return out.getvalue()


def read_csv(data):
    return list(csv.reader(io.StringIO(data.decode(), newline="")))


def workbook(data):
    return openpyxl.load_workbook(io.BytesIO(data))


def value(cell):
    """The cell's value; a carriage return is "_x000D_" in the file (OOXML's escape), which openpyxl leaves."""
    return cell.value.replace("_x000D_", "\r") if isinstance(cell.value, str) else cell.value


def values(sheet):
    return [[value(cell) for cell in row] for row in sheet.iter_rows()]


@pytest.fixture
def no_xlsxwriter(monkeypatch):
    """XlsxWriter as if it were not installed: importing it raises ImportError."""
    monkeypatch.setitem(sys.modules, "xlsxwriter", None)


class TestFormats:
    @pytest.mark.parametrize(
        "format, filename, expected",
        [
            (None, "orders.csv", "csv"),
            (None, "orders.jsonl", "jsonl"),
            (None, "orders.ndjson", "jsonl"),
            (None, "Orders.XLSX", "xlsx"),
            (None, "orders.txt", "csv"),
            (None, "orders", "csv"),
            (None, "orders.zip", "csv"),
            ("xlsx", "orders.csv", "xlsx"),  # an explicit format wins over the extension
            ("JSONL", "orders.xlsx", "jsonl"),
            ("ndjson", "", "jsonl"),
            (".csv", "orders.xlsx", "csv"),
        ],
    )
    def test_explicit_format_then_extension_then_csv(self, format, filename, expected):
        assert writers.resolve_format(format, filename) == expected

    def test_an_unknown_format_says_which_are_known(self):
        with pytest.raises(ValueError, match=r"Unknown download format 'xls'; use one of csv, jsonl, xlsx"):
            writers.resolve_format("xls", "orders.xls")

    def test_xlsx_without_xlsxwriter_names_the_extra(self, no_xlsxwriter):
        with pytest.raises(ImproperlyConfigured, match=r'pip install "django-async-downloads\[xlsx\]"'):
            writers.require("xlsx")
        writers.require("csv")
        writers.require("jsonl")

    def test_xlsx_without_xlsxwriter_writes_nothing(self, no_xlsxwriter):
        out = io.BytesIO()
        with pytest.raises(ImproperlyConfigured):
            writers.write_rows(out, [["a"]], "xlsx")
        assert out.getvalue() == b""


class TestCsv:
    def test_as_in_earlier_releases(self):
        rows = [["id", "name", "price", "when"], [1, 'Bolt, "M8"', Decimal("0.25"), datetime.date(2026, 1, 2)],
                [2, None, -5, True]]
        assert written(rows) == b'id,name,price,when\n1,"Bolt, ""M8""",0.25,2026-01-02\n2,,-5,True\n'

    def test_utf_8_sig_puts_a_bom_first_and_only_there(self):
        assert written([["é"], ["ü"]], encoding="utf-8-sig") == b"\xef\xbb\xbf" + "é\nü\n".encode()

    def test_hostile_cells_are_left_alone_by_default(self):
        plain = io.StringIO()
        csv.writer(plain, lineterminator="\n").writerow(HOSTILE)
        assert written([HOSTILE]) == plain.getvalue().encode()

    def test_escaping_puts_a_quote_before_each_formula(self):
        assert read_csv(written([HOSTILE], escape_formulas=True)) == [["'" + value for value in HOSTILE]]

    def test_escaping_leaves_numbers_dates_and_plain_text_alone(self):
        row = [*NUMBERS, datetime.date(2026, 1, 2), uuid.UUID(int=1), "Plain", "a=b", "", None]
        assert written([row], escape_formulas=True) == written([row])

    def test_escaping_looks_at_what_other_values_print_as(self):
        row = [gettext_lazy("=1+1"), datetime.timedelta(days=-1)]
        assert read_csv(written([row], escape_formulas=True)) == [["'=1+1", "'-1 day, 0:00:00"]]

    def test_escaping_quotes_a_row_with_a_carriage_return_in_a_cell(self):
        # Unquoted (as Python before 3.13 writes it), the \r would start a line with "=1+1".
        assert written([[1, "a\r=1+1", None]], escape_formulas=True) == b'"1","a\r=1+1",""\n'
        assert written([[1, "\r=1+1"]], escape_formulas=True) == b'"1","\'\r=1+1"\n'


class TestJsonLines:
    def test_an_object_per_row_keyed_by_the_header(self):
        data = written(typed_rows(3), "jsonl")
        lines = data.decode().splitlines()
        assert data.endswith(b"\n") and len(lines) == 3
        assert json.loads(lines[1]) == {
            "id": 1, "name": "Customer 1 ünïcødé", "delta": -1, "price": "0.25",
            "created": "2026-03-01T09:30:01+00:00", "day": "2026-01-02", "paid": False,
            "ref": "00000000-0000-0000-0000-000000000001", "note": "+1", "code": "00001",
        }
        assert list(json.loads(lines[0])) == TYPED_HEADER

    def test_utf_8_without_a_bom_whatever_the_csv_encoding(self):
        data = written([["name"], ["é"]], "jsonl", encoding="utf-8-sig")
        assert data == '{"name":"é"}\n'.encode()

    def test_decimals_are_strings_to_the_last_digit(self):
        rows = [["amount"], [Decimal("0.10")], [Decimal("12345678901234567890.123456789")]]
        assert written(rows, "jsonl") == b'{"amount":"0.10"}\n{"amount":"12345678901234567890.123456789"}\n'

    def test_dates_times_and_durations_are_iso_8601(self):
        rows = [["naive", "time", "duration", "date"],
                [datetime.datetime(2026, 1, 2, 3, 4, 5, 600), datetime.time(13, 14),
                 datetime.timedelta(days=1, hours=2), datetime.date(2026, 12, 31)]]
        assert json.loads(written(rows, "jsonl")) == {
            "naive": "2026-01-02T03:04:05.000600", "time": "13:14:00", "duration": "P1DT02H00M00S",
            "date": "2026-12-31",
        }

    def test_nan_and_infinities_are_null(self):
        rows = [["a", "b", "c"], [float("nan"), float("inf"), 1.5]]
        assert written(rows, "jsonl") == b'{"a":null,"b":null,"c":1.5}\n'

    def test_lists_and_other_values(self):
        rows = [["list", "lazy", "set"], [[1, "x"], gettext_lazy("Paid"), {1}]]
        assert json.loads(written(rows, "jsonl")) == {"list": [1, "x"], "lazy": "Paid", "set": "{1}"}

    def test_a_row_of_another_width_is_an_error(self):
        with pytest.raises(ValueError, match=r"Row 2 has 1 values; the header has 2"):
            written([["a", "b"], [1, 2], [3]], "jsonl")

    def test_repeated_header_names_are_an_error(self):
        with pytest.raises(ValueError, match=r"distinct header names; repeated: \['a'\]"):
            written([["a", "b", "a"]], "jsonl")

    def test_no_rows_is_an_empty_file(self):
        assert written([], "jsonl") == b""
        assert written([["only", "a", "header"]], "jsonl") == b""

    def test_hostile_strings_are_data_here(self):
        assert json.loads(written([["x"], [HOSTILE[0]]], "jsonl", escape_formulas=True)) == {"x": HOSTILE[0]}


class TestXlsx:
    def test_typed_cells(self):
        book = workbook(written(typed_rows(7), "xlsx"))
        sheet = book.active
        rows = values(sheet)
        assert rows[0] == TYPED_HEADER
        assert len(rows) == 8
        for n, (expected, row) in enumerate(zip(list(typed_rows(7))[1:], sheet.iter_rows(min_row=2), strict=True)):
            ident, name, delta, price, created, day, paid, ref, note, code = row
            assert (ident.value, ident.data_type) == (n, "n")
            assert (name.value, name.data_type) == (expected[1], "s")
            assert (delta.value, delta.data_type) == (-n, "n")
            assert (price.value, price.data_type, price.number_format) == (float(expected[3]), "n", "0.00")
            assert created.is_date and created.value == expected[4].replace(tzinfo=None)  # UTC is current
            assert created.number_format == "yyyy-mm-dd hh:mm:ss"
            assert day.is_date and day.value.date() == expected[5] and day.number_format == "yyyy-mm-dd"
            assert (paid.value, paid.data_type) == (n % 2 == 0, "b")
            assert (ref.value, ref.data_type) == (str(expected[7]), "s")
            assert value(note) == expected[8] and (note.value is None or note.data_type == "s")
            assert (code.value, code.data_type) == (f"{n:05d}", "s")

    def test_header_bold_and_frozen(self):
        sheet = workbook(written(typed_rows(2), "xlsx")).active
        assert all(cell.font.b for cell in sheet[1])
        assert not any(cell.font.b for cell in sheet[2])
        assert sheet.freeze_panes == "A2"

    def test_date_columns_are_wide_enough_to_show_their_dates(self):
        sheet = workbook(written(typed_rows(2), "xlsx")).active
        assert sheet.column_dimensions["E"].width >= 19  # created
        assert sheet.column_dimensions["F"].width >= 11  # day

    def test_aware_datetimes_in_the_current_time_zone_naive_ones_as_they_are(self):
        noon_utc = datetime.datetime(2026, 7, 1, 12, 0, tzinfo=datetime.UTC)
        rows = [["aware", "naive"], [noon_utc, datetime.datetime(2026, 7, 1, 12, 0)]]
        with timezone.override("Europe/Paris"):
            data = written(rows, "xlsx")
        paris, naive = values(workbook(data).active)[1]
        assert (paris, naive) == (datetime.datetime(2026, 7, 1, 14, 0), datetime.datetime(2026, 7, 1, 12, 0))

    def test_times_durations_and_other_values(self):
        rows = [["time", "duration", "lazy", "fraction", "huge", "nan", "too big"],
                [datetime.time(8, 15), datetime.timedelta(hours=30), gettext_lazy("Paid"), Decimal("1E+3"), 10**15,
                 float("nan"), Decimal("1E+400")]]
        sheet = workbook(written(rows, "xlsx")).active
        time, duration, lazy, fraction, huge, nan, too_big = sheet[2]
        assert too_big.value is None
        assert time.value == datetime.time(8, 15) and time.number_format == "hh:mm:ss"
        assert duration.value == datetime.timedelta(hours=30) and duration.number_format == "[h]:mm:ss"
        assert (lazy.value, lazy.data_type) == ("Paid", "s")
        assert (fraction.value, fraction.data_type, fraction.number_format) == (1000, "n", "General")
        assert (huge.value, huge.data_type) == (str(10**15), "s")  # more digits than Excel keeps: text, whole
        assert nan.value is None  # as JSON Lines make it null

    def test_subclasses_are_written_as_their_base_type(self):
        class Stamp(datetime.datetime):
            pass

        class Level(enum.IntEnum):
            HIGH = 3

        rows = [["stamp", "level", "fraction", "text"],
                [Stamp(2026, 1, 2, 3, 4, 5), Level.HIGH, fractions.Fraction(1, 4), SafeString("=safe")]]
        stamp, level, fraction, text = workbook(written(rows, "xlsx")).active[2]
        assert (stamp.value, stamp.number_format) == (datetime.datetime(2026, 1, 2, 3, 4, 5), "yyyy-mm-dd hh:mm:ss")
        assert (level.value, level.data_type, fraction.value, fraction.data_type) == (3, "n", 0.25, "n")
        assert (text.value, text.data_type) == ("=safe", "s")

    def test_no_formula_is_ever_written_from_data(self):
        data = written([["x", *HOSTILE], ["=1+1", *HOSTILE]], "xlsx")
        sheet = workbook(data).active
        assert all(cell.data_type == "s" for row in sheet.iter_rows() for cell in row)
        assert values(sheet)[1] == ["=1+1", *HOSTILE]
        assert b"<f>" not in zipfile.ZipFile(io.BytesIO(data)).read("xl/worksheets/sheet1.xml")

    def test_escaping_gives_formulas_excels_quote_prefix_and_keeps_the_text(self):
        rows = [["=header", "plain"], [*HOSTILE, "plain", *NUMBERS]]
        sheet = workbook(written(rows, "xlsx", escape_formulas=True)).active
        header, row = sheet[1], sheet[2]
        assert [(c.value, c.quotePrefix, c.font.b) for c in header[:2]] == [
            ("=header", True, True), ("plain", False, True)]
        assert [(value(c), c.quotePrefix) for c in row[: len(HOSTILE)]] == [(text, True) for text in HOSTILE]
        assert [(c.value, c.quotePrefix) for c in row[len(HOSTILE):]] == [
            ("plain", False), (-5, False), (-1.5, False), (-2.5, False), (0, False), (True, False)]

    def test_more_rows_than_a_sheet_holds_go_on_in_new_sheets_with_the_header(self, monkeypatch):
        monkeypatch.setattr(writers, "XLSX_MAX_ROWS", 5)  # the header and 4 rows a sheet
        rows = [["n", "square"], *([n, n * n] for n in range(11))]
        book = workbook(written(rows, "xlsx"))
        assert book.sheetnames == ["Sheet1", "Sheet2", "Sheet3"]
        assert [values(sheet) for sheet in book] == [
            [["n", "square"], *([n, n * n] for n in range(i, min(i + 4, 11)))] for i in (0, 4, 8)
        ]
        for sheet in book:
            assert sheet.freeze_panes == "A2" and all(cell.font.b for cell in sheet[1])

    def test_exactly_a_sheet_full_needs_no_second_sheet(self, monkeypatch):
        monkeypatch.setattr(writers, "XLSX_MAX_ROWS", 5)
        assert workbook(written([["n"], *([n] for n in range(4))], "xlsx")).sheetnames == ["Sheet1"]

    def test_too_many_columns_is_an_error(self):
        with pytest.raises(ValueError, match="an XLSX sheet holds 16384"):
            written([["c"] * 16_385], "xlsx")
        with pytest.raises(ValueError, match="an XLSX sheet holds 16384 columns"):
            written([["c"], list(range(16_385))], "xlsx")

    def test_no_rows_is_a_workbook_with_an_empty_sheet(self):
        assert values(workbook(written([], "xlsx")).active) == []

    def test_xlsxwriter_keeps_a_sheets_rows_in_the_file_we_close_on_failure(self, tmp_path):
        """The upstream attribute that ``_XlsxWriter.abandon`` closes (XlsxWriter's constant_memory mode)."""
        import xlsxwriter

        book = xlsxwriter.Workbook(io.BytesIO(), {"constant_memory": True, "tmpdir": str(tmp_path)})
        sheet = book.add_worksheet()
        assert not sheet.row_data_fh.closed and os.path.dirname(sheet.row_data_filename) == str(tmp_path)
        sheet.write_number(0, 0, 1)
        book.close()
        assert sheet.row_data_fh.closed

    def test_an_empty_workbook_leaves_no_temporary_file(self, tmp_path):
        # XlsxWriter leaves the rows file of a sheet with no cells behind: the workbook's own folder goes.
        assert values(workbook(written([], "xlsx", tmpdir=str(tmp_path))).active) == []
        assert list(tmp_path.iterdir()) == []

    def test_temporary_files_are_removed_when_done_and_when_rows_fail(self, tmp_path):
        def failing():
            yield ["n"]
            yield from ([n] for n in range(100))
            raise ConnectionError("database went away")

        written(typed_rows(50), "xlsx", tmpdir=str(tmp_path))
        assert list(tmp_path.iterdir()) == []
        with pytest.raises(ConnectionError):
            written(failing(), "xlsx", tmpdir=str(tmp_path))
        assert list(tmp_path.iterdir()) == []


class TestZip:
    def members(self):
        yield "orders.csv", typed_rows(3)
        yield writers.Member("orders.jsonl", typed_rows(3))
        yield "orders.xlsx", typed_rows(3)
        yield "orders.data", typed_rows(3), "jsonl"
        yield "notes.bin", io.BytesIO(b"\x00\x01binary")
        yield "readme.txt", "Héllo\n"
        yield "raw.bin", b"\xff" * 10

    def written_zip(self, members, **options):
        out = io.BytesIO()
        writers.write_zip(out, members, spool=io.BytesIO, **options)
        return zipfile.ZipFile(io.BytesIO(out.getvalue()))

    def test_each_member_in_its_format(self):
        archive = self.written_zip(self.members())
        assert archive.testzip() is None
        assert archive.namelist() == [
            "orders.csv", "orders.jsonl", "orders.xlsx", "orders.data", "notes.bin", "readme.txt", "raw.bin"]
        assert archive.read("orders.csv") == written(typed_rows(3))
        assert archive.read("orders.jsonl") == archive.read("orders.data") == written(typed_rows(3), "jsonl")
        expected = values(workbook(written(typed_rows(3), "xlsx")).active)
        assert values(workbook(archive.read("orders.xlsx")).active) == expected
        assert archive.read("notes.bin") == b"\x00\x01binary"
        assert archive.read("readme.txt") == "Héllo\n".encode()
        assert archive.read("raw.bin") == b"\xff" * 10

    def test_deflated_except_xlsx_which_is_a_zip_already(self):
        archive = self.written_zip(self.members())
        assert {info.filename: info.compress_type for info in archive.infolist()} == {
            name: zipfile.ZIP_STORED if name.endswith(".xlsx") else zipfile.ZIP_DEFLATED for name in archive.namelist()
        }

    def test_members_are_asked_for_one_at_a_time(self):
        seen = []

        def rows(name):
            seen.append(f"rows of {name}")
            yield ["x"]

        def members():
            for name in ("a.csv", "b.jsonl", "c.xlsx"):
                seen.append(f"asked for {name}")
                yield name, rows(name)

        self.written_zip(members())
        assert seen == ["asked for a.csv", "rows of a.csv", "asked for b.jsonl", "rows of b.jsonl",
                        "asked for c.xlsx", "rows of c.xlsx"]

    def test_large_members_are_written_in_chunks(self):
        archive = self.written_zip([("big.csv", ([n, "x" * 20] for n in range(5 * writers.CHUNK_ROWS + 3)))])
        assert archive.read("big.csv") == written([n, "x" * 20] for n in range(5 * writers.CHUNK_ROWS + 3))

    def test_csv_members_take_the_encoding_and_the_escaping(self):
        archive = self.written_zip([("a.csv", [["é", "=1"]])], encoding="utf-8-sig", escape_formulas=True)
        assert archive.read("a.csv") == "\ufeffé,'=1\n".encode()

    def test_a_file_read_from_its_start(self, tmp_path):
        buffer = io.BytesIO(b"0123456789")
        buffer.seek(5)
        text = tmp_path / "t.txt"
        text.write_text("ünï\n", encoding="utf-8")
        with open(text, encoding="utf-8") as handle:
            archive = self.written_zip([("b.bin", buffer), ("t.txt", handle)])
        assert (archive.read("b.bin"), archive.read("t.txt")) == (b"0123456789", "ünï\n".encode())

    def test_a_stream_that_cannot_seek(self):
        class Pipe(io.RawIOBase):
            def __init__(self, data):
                self.data = io.BytesIO(data)

            def readable(self):
                return True

            def readinto(self, buffer):
                chunk = self.data.read(len(buffer))
                buffer[: len(chunk)] = chunk
                return len(chunk)

        archive = self.written_zip([("pipe.bin", io.BufferedReader(Pipe(b"x" * 300_000)))])
        assert archive.read("pipe.bin") == b"x" * 300_000

    def test_an_xlsx_member_that_fails_midway_closes_its_spooled_file(self):
        spools = []

        def spool():
            spools.append(io.BytesIO())
            return spools[-1]

        def rows():
            yield ["n"]
            raise ConnectionError("database went away")

        with pytest.raises(ConnectionError):
            writers.write_zip(io.BytesIO(), [("a.xlsx", rows())], spool=spool)
        assert [file.closed for file in spools] == [True]

    def test_no_members_is_an_empty_zip(self):
        assert self.written_zip([]).namelist() == []

    def test_a_member_that_is_not_a_pair(self):
        with pytest.raises(TypeError, match=r"A zip member is a \(name, content\)"):
            self.written_zip(["orders.csv"])

    def test_an_xlsx_member_without_xlsxwriter(self, no_xlsxwriter):
        with pytest.raises(ImproperlyConfigured, match="django-async-downloads"):
            self.written_zip([("a.csv", [["x"]]), ("b.xlsx", [["x"]])])

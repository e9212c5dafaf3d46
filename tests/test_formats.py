"""Downloads in every format through the cache API and the shortcuts, here and in a real Celery worker.

The stored bytes are opened and checked: XLSX with openpyxl, zips with zipfile, JSON
Lines line by line.
"""

import csv
import datetime
import io
import json
import sys
import tempfile
import time
import zipfile
from decimal import Decimal
from pathlib import Path

import openpyxl
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.test.utils import CaptureQueriesContext

from async_downloads import cache, jobs
from async_downloads.shortcuts import init_generic_export, queryset_export, queryset_to_csv
from tests.testapp.format_tasks import HOSTILE, TYPED_HEADER, export_items_as, typed_export, typed_rows, zip_export
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db

SAVE_FAILED = "The file could not be saved. Please try again later."
BOM = b"\xef\xbb\xbf"


@pytest.fixture
def start(alice, media):
    """``start(filename)`` begins a download of alice's and returns its key."""
    return lambda filename="report.csv": cache.init_download(alice, filename)[1]


@pytest.fixture
def no_xlsxwriter(monkeypatch):
    monkeypatch.setitem(sys.modules, "xlsxwriter", None)


def stored(root, key):
    record = cache.get_download(key)
    assert record["state"] == "complete", record
    return (Path(root) / record["filepath"]).read_bytes()


def cell_value(cell):
    # A carriage return is "_x000D_" in the file (OOXML's escape); openpyxl leaves it so.
    return cell.value.replace("_x000D_", "\r") if isinstance(cell.value, str) else cell.value


def check_xlsx(data, count, escaped=False):
    """Every row and type of ``typed_rows(count)`` in the first sheet, under a bold, frozen header."""
    sheet = openpyxl.load_workbook(io.BytesIO(data)).active
    assert sheet.freeze_panes == "A2"
    assert [(c.value, c.font.b) for c in sheet[1]] == [(name, True) for name in TYPED_HEADER]
    rows = list(sheet.iter_rows(min_row=2))
    expected = list(typed_rows(count))[1:]
    assert len(rows) == count
    for row, want in zip(rows, expected, strict=True):
        ident, name, delta, price, created, day, paid, ref, note, code = row
        assert (ident.value, ident.data_type, delta.value, delta.data_type) == (want[0], "n", want[2], "n")
        assert (name.value, name.data_type) == (want[1], "s")
        assert (price.value, price.data_type, price.number_format) == (float(want[3]), "n", "0.00")
        assert created.is_date and created.value == want[4].replace(tzinfo=None)
        assert day.is_date and day.value.date() == want[5]
        assert (paid.value, paid.data_type) == (want[6], "b")
        assert (ref.value, code.value, code.data_type) == (str(want[7]), want[9], "s")
        assert cell_value(note) == want[8]
        if want[8] is not None:
            assert (note.data_type, note.quotePrefix) == ("s", escaped)


def check_jsonl(data, count):
    lines = data.decode("utf-8").split("\n")
    assert lines.pop() == ""  # each line ends with a newline
    assert len(lines) == count
    for line, want in zip(lines, list(typed_rows(count))[1:], strict=True):
        obj = json.loads(line)
        assert list(obj) == TYPED_HEADER
        assert obj["id"] == want[0] and obj["delta"] == want[2] and obj["price"] == str(want[3])
        assert obj["created"] == want[4].isoformat() and obj["day"] == want[5].isoformat()
        assert obj["paid"] is want[6] and obj["ref"] == str(want[7]) and obj["note"] == want[8]


def expected_csv(count, encoding="utf-8"):
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(typed_rows(count))
    return buffer.getvalue().encode(encoding)


class TestFormatChoice:
    @pytest.mark.parametrize(
        "filename, format, kind",
        [
            ("report.csv", None, "csv"),
            ("report.jsonl", None, "jsonl"),
            ("report.ndjson", None, "jsonl"),
            ("report.xlsx", None, "xlsx"),
            ("report.txt", None, "csv"),
            ("report.csv", "xlsx", "xlsx"),  # format= wins over the extension
            ("report.xlsx", "jsonl", "jsonl"),
        ],
    )
    def test_format_then_extension_then_csv(self, start, media, filename, format, kind):
        key = start(filename)
        cache.save_download(key, typed_rows(4), format=format)
        data = stored(media, key)
        if kind == "csv":
            assert data == expected_csv(4)
        elif kind == "jsonl":
            check_jsonl(data, 4)
        else:
            check_xlsx(data, 4)

    def test_an_unknown_format_fails_the_download_and_is_logged(self, start, media, caplog):
        key = start()
        cache.save_download(key, typed_rows(2), format="xls")
        assert (cache.get_download(key)["state"], cache.get_download(key)["errors"]) == ("error", SAVE_FAILED)
        assert "Unknown download format 'xls'" in caplog.text
        assert not (media / "downloads" / key).exists()

    def test_a_file_is_stored_as_it_is_whatever_the_name(self, start, media):
        key = start("mine.xlsx")
        cache.save_download(key, file=io.BytesIO(b"made elsewhere"))
        assert stored(media, key) == b"made elsewhere"


class TestCsvEncoding:
    def test_utf_8_without_a_bom_by_default(self, start, media):
        key = start()
        cache.save_download(key, typed_rows(3))
        assert stored(media, key) == expected_csv(3)
        assert not stored(media, key).startswith(BOM)

    def test_utf_8_sig_adds_the_bom_excel_needs(self, start, media):
        key = start()
        cache.save_download(key, typed_rows(3), encoding="utf-8-sig")
        assert stored(media, key) == BOM + expected_csv(3)

    def test_the_setting_gives_every_csv_its_bom(self, settings, start, media):
        settings.ASYNC_DOWNLOADS_CSV_ENCODING = "utf-8-sig"
        key = start()
        cache.save_download(key, typed_rows(3))
        assert stored(media, key) == BOM + expected_csv(3)
        other = start("other.jsonl")
        cache.save_download(other, typed_rows(3))
        assert not stored(media, other).startswith(BOM)  # JSON Lines are plain UTF-8


class TestTempDir:
    def test_spooled_files_and_xlsxwriters_go_to_the_setting(self, settings, start, media, tmp_path):
        tmp_path = tmp_path / "tmp"
        tmp_path.mkdir()
        settings.ASYNC_DOWNLOADS_TEMP_DIR = str(tmp_path)
        settings.ASYNC_DOWNLOADS_IN_MEMORY_MAX_SIZE_BYTES = 1000
        seen = []

        def rows():
            yield from typed_rows(300)
            seen.extend(sorted(path.name for path in tmp_path.iterdir()))

        key = start("big.xlsx")
        cache.save_download(key, rows())
        assert cache.get_download(key)["state"] == "complete"
        assert len(seen) == 1 and seen[0].startswith("async-downloads-xlsx-")  # XlsxWriter's rows, in there
        assert list(tmp_path.iterdir()) == []

    def test_a_large_csv_spools_there(self, settings, start, media, tmp_path, monkeypatch):
        settings.ASYNC_DOWNLOADS_TEMP_DIR = str(tmp_path)
        made = []
        real = tempfile.SpooledTemporaryFile
        monkeypatch.setattr(tempfile, "SpooledTemporaryFile", lambda *a, **kw: made.append(kw) or real(*a, **kw))
        key = start()
        cache.save_download(key, typed_rows(3))
        assert made == [{"max_size": 5_000_000, "dir": str(tmp_path)}]


class TestFormulaEscaping:
    ROWS = [["name", "n"], *([value, -5] for value in HOSTILE), ["Plain", -1.5]]

    def test_off_by_default(self, start, media):
        key = start()
        cache.save_download(key, self.ROWS, escape_formulas=None)
        plain = io.StringIO()
        csv.writer(plain, lineterminator="\n").writerows(self.ROWS)
        assert stored(media, key) == plain.getvalue().encode()

    def test_the_setting_escapes_csv_text_and_leaves_numbers(self, settings, start, media):
        settings.ASYNC_DOWNLOADS_ESCAPE_FORMULAS = True
        key = start()
        cache.save_download(key, self.ROWS)
        rows = list(csv.reader(io.StringIO(stored(media, key).decode(), newline="")))
        assert rows == [["name", "n"], *(["'" + value, "-5"] for value in HOSTILE), ["Plain", "-1.5"]]

    def test_the_argument_wins_over_the_setting(self, settings, start, media):
        settings.ASYNC_DOWNLOADS_ESCAPE_FORMULAS = True
        key = start()
        cache.save_download(key, [["=1+1"]], escape_formulas=False)
        assert stored(media, key) == b"=1+1\n"

    def test_xlsx_with_the_setting(self, settings, start, media):
        settings.ASYNC_DOWNLOADS_ESCAPE_FORMULAS = True
        key = start("hostile.xlsx")
        cache.save_download(key, self.ROWS)
        sheet = openpyxl.load_workbook(io.BytesIO(stored(media, key))).active
        cells = list(sheet.iter_rows(min_row=2))
        assert [(cell_value(a), a.data_type, a.quotePrefix, b.value) for a, b in cells] == [
            *((value, "s", True, -5) for value in HOSTILE), ("Plain", "s", False, -1.5)]


class TestZip:
    def test_members_in_every_format(self, start, media):
        key = start("bundle.zip")
        cache.save_download(key, members=[
            ("a.csv", typed_rows(3)), ("b.jsonl", typed_rows(3)), ("c.xlsx", typed_rows(3)),
            ("d.txt", io.BytesIO(b"file")),
        ])
        archive = zipfile.ZipFile(io.BytesIO(stored(media, key)))
        assert archive.namelist() == ["a.csv", "b.jsonl", "c.xlsx", "d.txt"]
        assert archive.read("a.csv") == expected_csv(3)
        check_jsonl(archive.read("b.jsonl"), 3)
        check_xlsx(archive.read("c.xlsx"), 3)
        assert archive.read("d.txt") == b"file"

    def test_member_names_are_made_safe_and_distinct(self, start, media):
        key = start("bundle.zip")
        names = ["../../etc/passwd", "/abs.csv", "a\\b.csv", "dir/./x.csv", "x.csv", "X.csv", "nul\x00l.csv", ""]
        cache.save_download(key, members=[(name, [["x"]]) for name in names])
        assert zipfile.ZipFile(io.BytesIO(stored(media, key))).namelist() == [
            "etc/passwd", "abs.csv", "a/b.csv", "dir/x.csv", "x.csv", "X (2).csv", "null.csv", "download"]

    def test_the_zip_settings_apply_to_csv_members(self, settings, start, media):
        settings.ASYNC_DOWNLOADS_ESCAPE_FORMULAS = True
        key = start("bundle.zip")
        cache.save_download(key, members=[("a.csv", [["=1"]])], encoding="utf-8-sig")
        assert zipfile.ZipFile(io.BytesIO(stored(media, key))).read("a.csv") == BOM + b"'=1\n"

    def test_a_member_that_fails_midway_keeps_no_file(self, start, media, caplog):
        def broken():
            yield ["n"]
            yield [1]
            raise ConnectionError("database went away (host=db.internal)")

        key = start("bundle.zip")
        cache.save_download(key, members=[("a.csv", [["ok"]]), ("b.csv", broken())])
        record = cache.get_download(key)
        assert (record["state"], record["errors"]) == ("error", SAVE_FAILED)
        assert "db.internal" in caplog.text and "db.internal" not in record["errors"]
        assert not (media / "downloads" / key).exists()

    def test_members_and_rows_together_are_an_error(self, start, media, caplog):
        key = start("bundle.zip")
        cache.save_download(key, [["x"]], members=[("a.csv", [["x"]])])
        assert cache.get_download(key)["state"] == "error"
        assert "members (a zip) or rows or a file, not both" in caplog.text

    def test_a_cancel_noticed_by_a_member_keeps_no_file(self, alice, start, media):
        key = start("bundle.zip")

        def rows():
            yield ["n"]
            for n in range(100):
                if n == 50:
                    cache.cancel_download(key, user=alice)
                cache.update_percentage(key, 100, n)
                yield [n]

        cache.save_download(key, members=[("a.csv", rows())])
        assert cache.get_download(key)["state"] == "cancelled"
        assert not (media / "downloads" / key).exists()


class TestWithoutXlsxWriter:
    """Asking for XLSX without the extra fails at once, naming the pip command."""

    def test_save_download_fails_the_download_before_reading_a_row(self, start, media, no_xlsxwriter):
        read = []

        def rows():
            read.append("header")
            yield ["x"]

        key = start("report.xlsx")
        with pytest.raises(ImproperlyConfigured, match=r'pip install "django-async-downloads\[xlsx\]"'):
            cache.save_download(key, rows())
        assert read == []
        record = cache.get_download(key)
        assert (record["state"], record["errors"], record["url"]) == ("error", SAVE_FAILED, "")
        assert not (media / "downloads" / key).exists()

    def test_queryset_export_fails_before_querying(self, start, media, no_xlsxwriter):
        key = start("items.xlsx")
        with CaptureQueriesContext(connection) as queries, pytest.raises(ImproperlyConfigured):
            queryset_export(key, ["id"], Item.objects.all(), lambda item: [item.pk])
        assert len(queries) == 0
        assert cache.get_download(key)["state"] == "error"

    def test_init_generic_export_creates_nothing(self, alice, no_xlsxwriter):
        with pytest.raises(ImproperlyConfigured, match="django-async-downloads"):
            init_generic_export(export_items_as, alice, "Items", "xlsx")
        assert cache.get_downloads(alice) == []

    def test_csv_and_json_lines_need_nothing(self, start, media, no_xlsxwriter):
        for name in ("a.csv", "a.jsonl"):
            key = start(name)
            cache.save_download(key, typed_rows(2))
            assert cache.get_download(key)["state"] == "complete"

    def test_an_xlsx_member_of_a_zip(self, start, media, no_xlsxwriter):
        key = start("bundle.zip")
        with pytest.raises(ImproperlyConfigured):
            cache.save_download(key, members=[("a.csv", [["x"]]), ("b.xlsx", [["x"]])])
        assert cache.get_download(key)["state"] == "error"
        assert not (media / "downloads" / key).exists()


class TestShortcuts:
    def make_items(self):
        Item.objects.bulk_create(Item(name=f"=Item {n}", quantity=-n, price=Decimal(n) / 4) for n in range(25))
        return list(Item.objects.order_by("pk"))

    def test_queryset_export_in_the_format_of_the_file_name(self, start, media):
        items = self.make_items()
        key = start("items.xlsx")
        with CaptureQueriesContext(connection) as queries:
            queryset_export(key, ["id", "name", "quantity", "price"], Item.objects.order_by("pk"),
                            lambda item: [item.pk, item.name, item.quantity, item.price])
        assert len(queries) == 2 and "COUNT(" in queries[0]["sql"].upper()
        sheet = openpyxl.load_workbook(io.BytesIO(stored(media, key))).active
        assert [[c.value for c in row] for row in sheet.iter_rows(min_row=2)] == [
            [item.pk, item.name, item.quantity, float(item.price)] for item in items]

    def test_queryset_export_with_a_format(self, start, media):
        items = self.make_items()
        key = start("items.csv")
        queryset_export(key, ["id", "price"], Item.objects.order_by("pk"), lambda item: [item.pk, item.price],
                        "jsonl")
        lines = stored(media, key).decode().splitlines()
        assert [json.loads(line) for line in lines] == [{"id": i.pk, "price": str(i.price)} for i in items]

    def test_queryset_to_csv_stays_csv_whatever_the_name(self, start, media):
        self.make_items()
        key = start("items.xlsx")
        queryset_to_csv(key, ["id"], Item.objects.order_by("pk")[:2], lambda item: [item.pk])
        assert stored(media, key).count(b"\n") == 3

    def test_queryset_export_escapes_on_request(self, start, media):
        self.make_items()
        key = start("items.csv")
        queryset_export(key, ["name", "quantity"], Item.objects.order_by("pk")[:3],
                        lambda item: [item.name, item.quantity], escape_formulas=True)
        assert stored(media, key) == b"name,quantity\n'=Item 0,0\n'=Item 1,-1\n'=Item 2,-2\n"

    def test_queryset_export_reports_progress(self, start, media):
        self.make_items()
        key = start("items.jsonl")
        seen = []
        real = cache.set_percentage

        def spy(download_key, percentage, **kwargs):
            seen.append(percentage)
            real(download_key, percentage, **kwargs)

        cache.set_percentage = spy
        try:
            queryset_export(key, ["id"], Item.objects.order_by("pk"), lambda item: [item.pk])
        finally:
            cache.set_percentage = real
        assert seen == sorted(seen) and len(seen) >= 5

    @pytest.mark.parametrize(
        "format, extension", [("csv", "csv"), ("jsonl", "jsonl"), ("ndjson", "jsonl"), ("xlsx", "xlsx")]
    )
    def test_init_generic_export_names_the_file_after_its_format(self, alice, monkeypatch, format, extension):
        started = []
        monkeypatch.setattr(jobs, "start", lambda task, key, args, kwargs: started.append((task, key, args, kwargs)))
        _, key = init_generic_export(export_items_as, alice, "Items", format, "paid", limit=3)
        record = cache.get_download(key)
        assert record["filename"].startswith("Items_") and record["filename"].endswith(f".{extension}")
        assert started == [(export_items_as, key, ("paid",), {"limit": 3})]

    def test_init_generic_export_refuses_an_unknown_format(self, alice):
        with pytest.raises(ValueError, match="Unknown download format 'xls'"):
            init_generic_export(export_items_as, alice, "Items", "xls")
        assert cache.get_downloads(alice) == []


# --- In a real worker ------------------------------------------------------------------------


@pytest.fixture
def storage_root(settings):
    return Path(settings.STORAGES["default"]["OPTIONS"]["location"])


def finished(key, timeout=60):
    deadline = time.monotonic() + timeout
    while (record := cache.get_download(key)) is None or record["state"] not in {"complete", "error"}:
        assert time.monotonic() < deadline, f"gave up waiting; last record: {record}"
        time.sleep(0.05)
    return record


class TestInAWorker:
    """Each format written by a Celery worker process, then opened here."""

    def test_csv(self, celery_worker, alice, storage_root):
        _, key = cache.init_download(alice, "typed.csv")
        typed_export.delay(key, rows=30).get(timeout=60)
        assert finished(key)["state"] == "complete"
        assert stored(storage_root, key) == expected_csv(30)

    def test_csv_with_a_bom_and_escaped_formulas(self, celery_worker, alice, storage_root):
        _, key = cache.init_download(alice, "typed.csv")
        typed_export.delay(key, rows=12, escape_formulas=True).get(timeout=60)
        data = stored(storage_root, key)
        assert not data.startswith(BOM)
        rows = list(csv.reader(io.StringIO(data.decode(), newline="")))
        assert [row[8] for row in rows[1:]] == ["" if n % 3 == 0 else "'" + HOSTILE[n % 6] for n in range(12)]
        assert [row[2] for row in rows[1:]] == [str(-n) for n in range(12)]

    def test_json_lines(self, celery_worker, alice, storage_root):
        _, key = cache.init_download(alice, "typed.ndjson")
        typed_export.delay(key, rows=30).get(timeout=60)
        check_jsonl(stored(storage_root, key), 30)

    def test_xlsx(self, celery_worker, alice, storage_root):
        _, key = cache.init_download(alice, "typed.xlsx")
        typed_export.delay(key, rows=30, escape_formulas=True).get(timeout=60)
        check_xlsx(stored(storage_root, key), 30, escaped=True)

    def test_xlsx_in_the_current_time_zone(self, celery_worker, alice, storage_root):
        _, key = cache.init_download(alice, "typed.xlsx")
        typed_export.delay(key, rows=2, time_zone="America/New_York").get(timeout=60)
        sheet = openpyxl.load_workbook(io.BytesIO(stored(storage_root, key))).active
        assert sheet["E2"].value == datetime.datetime(2026, 3, 1, 3, 30)  # 08:30 UTC, EST (UTC-5)

    def test_xlsx_more_rows_than_a_sheet(self, celery_worker, alice, storage_root):
        _, key = cache.init_download(alice, "typed.xlsx")
        typed_export.delay(key, rows=25, sheet_rows=11).get(timeout=60)
        book = openpyxl.load_workbook(io.BytesIO(stored(storage_root, key)))
        assert book.sheetnames == ["Sheet1", "Sheet2", "Sheet3"]
        ids = [[row[0] for row in sheet.iter_rows(min_row=2, values_only=True)] for sheet in book]
        assert ids == [list(range(0, 10)), list(range(10, 20)), list(range(20, 25))]
        for sheet in book:
            assert [c.value for c in sheet[1]] == TYPED_HEADER and sheet.freeze_panes == "A2"
            assert all(c.font.b for c in sheet[1])

    def test_zip(self, celery_worker, alice, storage_root):
        _, key = cache.init_download(alice, "bundle.zip")
        zip_export.delay(key, rows=10).get(timeout=60)
        archive = zipfile.ZipFile(io.BytesIO(stored(storage_root, key)))
        assert archive.testzip() is None
        assert archive.namelist() == ["rows.csv", "rows.jsonl", "sheets/rows.xlsx", "rows.txt", "format_tasks.py",
                                      "README.txt"]
        assert archive.read("rows.csv") == expected_csv(10)
        check_jsonl(archive.read("rows.jsonl"), 10)
        check_jsonl(archive.read("rows.txt"), 10)
        check_xlsx(archive.read("sheets/rows.xlsx"), 10)
        source = Path(__file__).parent / "testapp" / "format_tasks.py"
        assert archive.read("format_tasks.py") == source.read_bytes()
        assert archive.read("README.txt") == b"Rows in three formats.\n"

    @pytest.mark.django_db(transaction=True)
    def test_queryset_export_from_the_shortcut(self, celery_worker, alice, storage_root):
        Item.objects.bulk_create(Item(name=f"Item {n}", quantity=n, price=Decimal(n) / 4) for n in range(40))
        _, key = init_generic_export(export_items_as, alice, "Items", "xlsx")
        record = finished(key)
        assert record["state"] == "complete" and record["filename"].endswith(".xlsx")
        sheet = openpyxl.load_workbook(io.BytesIO(stored(storage_root, key))).active
        items = list(Item.objects.order_by("pk"))
        assert [list(row) for row in sheet.iter_rows(min_row=2, values_only=True)] == [
            [i.pk, i.name, i.quantity, float(i.price)] for i in items]

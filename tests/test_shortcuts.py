"""``queryset_to_csv`` streams a queryset; ``init_generic_csv_download`` starts a task for it."""

import re
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from async_downloads import cache, events
from async_downloads.shortcuts import init_generic_csv_download, queryset_to_csv
from tests.testapp.models import Item
from tests.testapp.tasks import export_items, item_row
from tests.waits import wait_for_state

HEADER = ["id", "name", "quantity", "price"]
FILENAME = re.compile(r"\AItems_Export_\d{4}-\d\d-\d\d_\d\d-\d\d\.csv\Z")


def make_items(count):
    Item.objects.bulk_create(Item(name=f"Item {n}", quantity=n, price=Decimal(n) / 4) for n in range(count))
    return list(Item.objects.order_by("pk"))


def expected_csv(items):
    lines = ["id,name,quantity,price"] + [f"{i.pk},{i.name},{i.quantity},{i.price}" for i in items]
    return "".join(line + "\n" for line in lines).encode()


@pytest.fixture
def percentages():
    """Every percentage a download showed after it was created, in order, as its events tell."""
    seen = []

    def receiver(record, kind, **kwargs):
        if kind != events.CREATED:
            seen.append(record["percentage"])

    events.download_changed_signal.connect(receiver)
    yield seen
    events.download_changed_signal.disconnect(receiver)


@pytest.mark.django_db
class TestQuerysetToCsv:
    def test_header_and_rows(self, alice, media):
        Item.objects.create(name='Bolt, "M8"', quantity=3, price=Decimal("0.25"))
        Item.objects.create(name="Écrou", quantity=0, price=Decimal("1.00"))
        _, key = cache.init_download(alice, "items.csv")
        queryset_to_csv(key, HEADER, Item.objects.order_by("pk"), item_row)
        record = cache.get_download(key)
        first, second = Item.objects.order_by("pk")
        assert (media / record["filepath"]).read_bytes() == (
            f'id,name,quantity,price\n{first.pk},"Bolt, ""M8""",3,0.25\n{second.pk},Écrou,0,1.00\n'
        ).encode()
        assert record["state"] == "complete"

    def test_encoding(self, alice, media):
        Item.objects.create(name="Écrou", quantity=1, price=1)
        _, key = cache.init_download(alice, "items.csv")
        queryset_to_csv(key, ["name"], Item.objects.all(), lambda item: [item.name], encoding="latin-1")
        assert (media / cache.get_download(key)["filepath"]).read_bytes() == "name\nÉcrou\n".encode("latin-1")

    @pytest.mark.parametrize("rows", [10, 300])
    def test_count_and_one_streamed_select_whatever_the_size(self, alice, media, rows):
        """Two queries: a COUNT for the progress, one SELECT read through ``.iterator()``."""
        items = make_items(rows)
        queryset = Item.objects.order_by("pk")
        _, key = cache.init_download(alice, "items.csv")
        with CaptureQueriesContext(connection) as queries:
            queryset_to_csv(key, HEADER, queryset, item_row)
        assert len(queries) == 2
        assert "COUNT(" in queries[0]["sql"].upper()
        assert queryset._result_cache is None  # never loaded into memory, unlike len(queryset)
        assert (media / cache.get_download(key)["filepath"]).read_bytes() == expected_csv(items)

    def test_empty_queryset_is_just_the_header(self, alice, media):
        _, key = cache.init_download(alice, "items.csv")
        queryset_to_csv(key, HEADER, Item.objects.none(), item_row)
        assert (media / cache.get_download(key)["filepath"]).read_bytes() == b"id,name,quantity,price\n"

    def test_progress_moves_through_intermediate_values(self, alice, media, percentages):
        make_items(20)
        _, key = cache.init_download(alice, "items.csv")
        queryset_to_csv(key, HEADER, Item.objects.all(), item_row)
        assert percentages == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99, 100]

    @pytest.mark.parametrize("rows", [1, 3, 7, 11, 95, 1001])
    def test_progress_is_what_update_percentage_on_every_row_would_show(self, alice, media, percentages, rows):
        """queryset_to_csv only calls update_percentage where the value moves; none is skipped."""
        make_items(rows)
        _, key = cache.init_download(alice, "items.csv")
        queryset_to_csv(key, HEADER, Item.objects.all(), item_row)
        every_row = [min(min((cur + 1) * 10 // rows, 10) * 10, 99) for cur in range(rows)]
        assert percentages == sorted(set(every_row)) + [100]

    @pytest.mark.parametrize("not_a_queryset", [[], (1, 2), None])
    def test_not_a_queryset_is_a_value_error(self, alice, not_a_queryset):
        _, key = cache.init_download(alice, "items.csv")
        with pytest.raises(ValueError, match=f"needs a QuerySet .*not {type(not_a_queryset).__name__}"):
            queryset_to_csv(key, HEADER, not_a_queryset, item_row)

    def test_a_failing_row_function_is_an_error(self, alice, media):
        make_items(5)
        _, key = cache.init_download(alice, "items.csv")
        queryset_to_csv(key, HEADER, Item.objects.all(), lambda item: [1 / 0])
        assert cache.get_download(key)["state"] == "error"


class StartedTask:
    """Stands in for a Celery task: records what ``.delay`` was given."""

    def __init__(self):
        self.calls = []

    def delay(self, *args, **kwargs):
        self.calls.append((args, kwargs))


@pytest.mark.django_db
class TestInitGenericCsvDownload:
    def test_starts_the_task_with_the_download_key_and_arguments(self, alice):
        task = StartedTask()
        collection_key, key = init_generic_csv_download(task, alice, "Items Export", 5, flag=True)
        assert collection_key == f"async_downloads/{alice.pk}"
        assert task.calls == [((key, 5), {"flag": True})]

    @pytest.mark.parametrize("use_tz, time_zone", [(True, "UTC"), (True, "Asia/Tokyo"), (False, "America/New_York")])
    def test_file_named_after_the_name_and_the_local_time(self, settings, alice, use_tz, time_zone):
        settings.USE_TZ, settings.TIME_ZONE = use_tz, time_zone
        before = timezone.localtime() if use_tz else timezone.now()
        _, key = init_generic_csv_download(StartedTask(), alice, "Items Export")
        after = timezone.localtime() if use_tz else timezone.now()
        record = cache.get_download(key)
        assert record["filename"] in {f"Items_Export_{t:%Y-%m-%d_%H-%M}.csv" for t in (before, after)}
        assert record["name"] in {f"Items Export {t:%Y-%m-%d}" for t in (before, after)}
        assert record["state"] == "pending"


@pytest.mark.django_db(transaction=True)
def test_end_to_end_through_a_real_celery_worker(celery_worker, settings, alice):
    """The web process starts the export; a worker process writes the file; the bytes are right."""
    items = make_items(30)
    _, key = init_generic_csv_download(export_items, alice, "Items Export", min_quantity=12)

    record = wait_for_state(key, {"complete", "error"})
    assert record["state"] == "complete" and record["percentage"] == 100
    assert FILENAME.match(record["filename"])
    location = Path(settings.STORAGES["default"]["OPTIONS"]["location"])
    assert (location / record["filepath"]).read_bytes() == expected_csv(items[12:])
    cache.clear_download(key)

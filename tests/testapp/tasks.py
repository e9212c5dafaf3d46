from celery import shared_task

from async_downloads.shortcuts import queryset_to_csv
from tests.testapp.models import Item


def item_row(item):
    return [item.pk, item.name, item.quantity, item.price]


@shared_task
def export_items(download_key, min_quantity=0):
    queryset = Item.objects.filter(quantity__gte=min_quantity).order_by("pk")
    queryset_to_csv(download_key, ["id", "name", "quantity", "price"], queryset, item_row)


@shared_task
def slow_items_export(download_key, pause=0.05):
    """``export_items``, ``pause`` seconds a row: slow enough for its rate to be measured."""
    import time

    def slow_row(item):
        time.sleep(pause)
        return item_row(item)

    queryset_to_csv(download_key, ["id", "name", "quantity", "price"], Item.objects.order_by("pk"), slow_row)


@shared_task
def ping():
    return "pong"


@shared_task
def report_progress(download_key, steps=(25, 50, 75), pause=0.2):
    """Report each percentage in ``steps``, then save a one-row file."""
    import time

    from async_downloads.cache import save_download, set_percentage

    for percentage in steps:
        time.sleep(pause)
        set_percentage(download_key, percentage)
    save_download(download_key, [["done"]])


@shared_task
def slow_export(download_key, rows=40, pause=0.05):
    """A CSV export slow enough to watch its progress bar move."""
    import time

    from async_downloads.cache import save_download, update_percentage

    def generate():
        yield ["n", "square"]
        for n in range(rows):
            time.sleep(pause)
            update_percentage(download_key, rows, n)
            yield [n, n * n]

    save_download(download_key, generate())


@shared_task
def failing_export(download_key, rows=5):
    """An export whose data source breaks after ``rows`` rows."""
    from async_downloads.cache import save_download

    def generate():
        yield from ([n] for n in range(rows))
        raise ConnectionError("database connection lost (host=db.internal)")

    save_download(download_key, generate())


@shared_task
def report_error(download_key, message):
    from async_downloads.cache import set_error

    set_error(download_key, message)


@shared_task
def raising_export(download_key, message="boom"):
    """An export whose own code raises (not inside save_download)."""
    from async_downloads.cache import set_percentage

    set_percentage(download_key, 10)
    raise RuntimeError(f"{message} (host=db.internal)")


@shared_task
def wait_for_cancel(download_key, timeout=30):
    """A task that reports no progress and checks ``is_cancelled`` instead."""
    import time

    from async_downloads.cache import is_cancelled, set_percentage

    set_percentage(download_key, 5)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_cancelled(download_key):
            return "cancelled"
        time.sleep(0.05)
    return "timed out"


@shared_task
def queued_elsewhere(download_key):
    """Routed to a queue that no worker reads until a test adds it (tests/settings.py)."""
    from async_downloads.cache import save_download

    save_download(download_key, [["ran"]])


@shared_task
def silent(download_key, seconds=5.0):
    """A task that reports nothing for ``seconds`` (a long query, say), then saves one row."""
    import time

    from async_downloads.cache import save_download

    time.sleep(seconds)
    save_download(download_key, [["done"]])

"""The cache API across processes: a real Celery worker runs the tasks, this process watches.

The worker shares this run's Redis, queue, test database and default storage
(``celery_worker`` in conftest), so nothing here overrides settings.
"""

import time
from pathlib import Path

import pytest

from async_downloads import cache
from tests.testapp.tasks import failing_export, report_error, slow_export

pytestmark = pytest.mark.django_db


@pytest.fixture
def storage_root(settings):
    return Path(settings.STORAGES["default"]["OPTIONS"]["location"])


def watch(key, until, timeout=60):
    """Poll the record until ``until(record)``; return the percentages seen on the way."""
    seen = []
    deadline = time.monotonic() + timeout
    while not until(record := cache.get_download(key)):
        assert time.monotonic() < deadline, f"gave up waiting; last record: {record}"
        if record and (not seen or seen[-1] != record["percentage"]):
            seen.append(record["percentage"])
        time.sleep(0.02)
    return seen


def finished(record):
    return record is not None and record["state"] in {"complete", "error"}


def test_progress_and_file_from_a_worker(celery_worker, alice, storage_root):
    _, key = cache.init_download(alice, "squares.csv")
    slow_export.delay(key, rows=40, pause=0.04)
    seen = watch(key, finished)
    assert any(0 < p < 100 for p in seen), seen
    assert seen == sorted(seen)
    record = cache.get_download(key)
    assert (record["state"], record["percentage"]) == ("complete", 100)
    expected = "n,square\n" + "".join(f"{n},{n * n}\n" for n in range(40))
    assert (storage_root / record["filepath"]).read_text() == expected
    cache.clear_download(key)
    assert not (storage_root / "downloads" / key).exists()


def test_a_failure_in_the_worker_is_an_error_for_the_user(celery_worker, alice, storage_root):
    _, key = cache.init_download(alice, "broken.csv")
    failing_export.delay(key).get(timeout=60)
    record = cache.get_download(key)
    assert record["state"] == "error"
    assert record["errors"] == "The file could not be saved. Please try again later."
    assert "db.internal" not in record["errors"]
    assert not (storage_root / "downloads" / key).exists()


def test_set_error_in_the_worker(celery_worker, alice):
    _, key = cache.init_download(alice, "report.csv")
    report_error.delay(key, "No orders match this filter.").get(timeout=60)
    record = cache.get_download(key)
    assert (record["state"], record["errors"], record["url"]) == ("error", "No orders match this filter.", "")


def test_cleared_while_the_worker_reports_progress_stays_cleared(celery_worker, alice, storage_root):
    _, key = cache.init_download(alice, "squares.csv")
    result = slow_export.delay(key, rows=60, pause=0.05)
    watch(key, lambda record: record["percentage"] >= 20)
    assert cache.clear_download(key, user=alice)
    result.get(timeout=60)  # the task went on reporting progress, then saved
    assert cache.get_download(key) is None
    assert cache.get_downloads(alice) == []
    assert not (storage_root / "downloads" / key).exists()

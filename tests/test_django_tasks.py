"""Downloads whose task is one of Django's Tasks framework (django.tasks, or the django_tasks backport)."""

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from async_downloads import cache
from async_downloads.shortcuts import init_generic_csv_download, start_download
from tests.processes import child_env, stop
from tests.testapp.framework_tasks import raising, squares, until_cancelled
from tests.waits import wait_for_state, wait_until

pytestmark = pytest.mark.django_db

TASK_FAILED = "The export failed. Please try again."
IMMEDIATE = "immediate"


def finished_result(task, key, timeout=30):
    """The task's result once the worker has finished with it (before the test's tables are flushed)."""
    result = task.get_result(cache.get_download(key)["task_id"])
    deadline = time.monotonic() + timeout
    while not result.is_finished:
        assert time.monotonic() < deadline, f"the task did not finish: {result.status}"
        time.sleep(0.05)
        result.refresh()
    return result


def stored_bytes(media, record):
    return (media / record["filepath"]).read_bytes()


class TestStartDownload:
    def test_runs_the_task_with_the_key_and_arguments_and_remembers_it(self, alice, media):
        _, key = start_download(alice, "rows.csv", squares.using(backend=IMMEDIATE), args=[3],
                                kwargs={"pause": 0}, name="Row count")
        record = cache.get_download(key)
        assert (record["state"], record["filename"], record["name"]) == ("complete", "rows.csv", "Row count")
        assert stored_bytes(media, record) == b"n,square\n0,0\n1,1\n2,4\n"
        assert record["task"] == {
            "name": "tests.testapp.framework_tasks.squares", "args": [3], "kwargs": {"pause": 0},
            "framework": "django", "backend": IMMEDIATE, "queue": "default", "priority": 0,
        }
        assert record["task_id"]

    def test_init_generic_csv_download_takes_a_django_task_too(self, alice, media):
        _, key = init_generic_csv_download(squares.using(backend=IMMEDIATE), alice, "Numbers", 2, pause=0)
        record = cache.get_download(key)
        assert record["state"] == "complete" and record["filename"].startswith("Numbers_")
        assert stored_bytes(media, record) == b"n,square\n0,0\n1,1\n"

    def test_a_celery_task_is_started_with_delay_as_before(self, alice):
        from tests.testapp.tasks import queued_elsewhere

        _, key = start_download(alice, "waiting.csv", queued_elsewhere)
        record = cache.get_download(key)
        assert record["task"] == {"name": "tests.testapp.tasks.queued_elsewhere", "args": [], "kwargs": {}}
        assert record["task_id"] and record["state"] == "pending"

    def test_arguments_json_cannot_carry_are_refused_before_anything_is_created(self, alice):
        with pytest.raises(TypeError, match=r"keyword argument 'since' of .*squares is .*not JSON"):
            start_download(alice, "rows.csv", squares, kwargs={"since": object()})
        assert cache.get_downloads(alice) == []

    @pytest.mark.parametrize("not_a_task", [print, "tests.testapp.framework_tasks.squares", None])
    def test_something_that_is_not_a_task_is_refused(self, alice, not_a_task):
        with pytest.raises(TypeError, match="is not a task"):
            start_download(alice, "rows.csv", not_a_task)
        assert cache.get_downloads(alice) == []


class TestFailureAndRetry:
    def test_a_raising_task_marks_its_download_failed_with_a_safe_message(self, alice, caplog):
        with caplog.at_level(logging.ERROR, logger="async_downloads"):
            _, key = start_download(alice, "broken.csv", raising.using(backend=IMMEDIATE))
        record = cache.get_download(key)
        assert (record["state"], record["errors"], record["url"]) == ("error", TASK_FAILED, "")
        assert key in caplog.text and "RuntimeError" in caplog.text

    def test_a_raising_task_started_without_the_helpers_is_left_alone(self, alice):
        _, key = cache.init_download(alice, "broken.csv")
        raising.using(backend=IMMEDIATE).enqueue(key)
        assert cache.get_download(key)["state"] == "running"

    def test_retry_enqueues_the_same_task_with_the_same_arguments_on_the_same_backend(self, alice):
        _, key = start_download(alice, "broken.csv", raising.using(backend=IMMEDIATE), kwargs={"message": "again"})
        old = cache.get_download(key)
        new_key = cache.retry_download(key, alice)
        new = cache.get_download(new_key)
        assert cache.get_download(key) is None
        assert (new["state"], new["errors"]) == ("error", TASK_FAILED)  # it ran again, and failed again
        assert new["task"] == old["task"] and new["task_id"] != old["task_id"]

    def test_a_record_naming_something_that_is_not_a_task_starts_nothing(self, alice, monkeypatch):
        _, key = start_download(alice, "broken.csv", raising.using(backend=IMMEDIATE))
        calls = []
        monkeypatch.setattr("os.system", calls.append)
        cache.store.update(key, lambda record: record["task"].update(name="os.system", args=["true"]))
        new_key = cache.retry_download(key, alice)
        assert calls == []
        assert (cache.get_download(new_key)["state"], cache.get_download(new_key)["errors"]) == ("error", TASK_FAILED)


def test_the_cleanup_is_a_django_task(alice, media):
    from async_downloads.django_tasks import cleanup_expired_downloads

    _, live = cache.init_download(alice, "live.csv")
    cache.save_download(live, [["kept"]])
    orphan = media / "downloads" / "0b1e4a0e-7d7c-4e5e-9f0a-2f2b0d9c1a11"
    orphan.mkdir(parents=True)
    (orphan / "old.csv").write_text("gone")

    result = cleanup_expired_downloads.using(backend=IMMEDIATE).enqueue()

    assert str(result.status) == "SUCCESSFUL"
    assert result.return_value == [orphan.name]
    assert not orphan.exists()
    assert (media / cache.get_download(live)["filepath"]).exists()


@pytest.fixture(scope="module")
def db_worker(django_db_setup, django_db_blocker):
    """A real ``manage.py db_worker`` process (django-tasks-db) on this run's test database."""
    process = subprocess.Popen(
        [sys.executable, "-m", "django", "db_worker", "--interval", "0.05", "--no-startup-delay"],
        env=child_env(), stdout=subprocess.DEVNULL,
    )
    yield process
    stop(process)


@pytest.mark.django_db(transaction=True)
class TestDatabaseWorkerProcess:
    def test_a_worker_process_runs_the_export(self, db_worker, alice, settings):
        _, key = start_download(alice, "rows.csv", squares, args=[20], kwargs={"pause": 0.02})
        record = wait_for_state(key, {"complete", "error"})
        assert record["state"] == "complete", record
        assert finished_result(squares, key).return_value == 20
        location = Path(settings.STORAGES["default"]["OPTIONS"]["location"])
        expected = b"".join(b"%d,%d\n" % (n, n * n) for n in range(20))
        assert (location / record["filepath"]).read_bytes() == b"n,square\n" + expected

    def test_a_task_raising_in_the_worker_marks_its_download_failed(self, db_worker, alice):
        _, key = start_download(alice, "broken.csv", raising)
        record = wait_for_state(key, {"error", "complete"})
        assert (record["state"], record["errors"]) == ("error", TASK_FAILED)
        assert str(finished_result(raising, key).status) == "FAILED"

    def test_a_cancelled_export_stops_at_its_next_progress_report(self, db_worker, alice, settings):
        # Uncancelled, it would run for 80 s.
        _, key = start_download(alice, "rows.csv", squares, args=[4000], kwargs={"pause": 0.02})
        wait_for_state(key, {"running"})
        assert cache.cancel_download(key, alice)
        finished_result(squares, key)
        record = cache.get_download(key)
        assert (record["state"], record["url"]) == ("cancelled", "")
        location = Path(settings.STORAGES["default"]["OPTIONS"]["location"])
        assert not (location / record["filepath"]).exists()

    def test_a_task_checking_is_cancelled_returns(self, db_worker, alice):
        _, key = start_download(alice, "waiting.csv", until_cancelled)
        # Its own first report (5 %), not only the worker's start: from then on it checks is_cancelled.
        wait_until(lambda: (cache.get_download(key) or {}).get("percentage") == 5, what="the task's first report")
        cache.cancel_download(key, alice)
        assert finished_result(until_cancelled, key).return_value == "cancelled"

"""A task started through the shortcut that raises turns its download into an error."""

import logging

import pytest
from celery.signals import task_failure

from async_downloads import cache
from async_downloads.shortcuts import init_generic_csv_download
from tests.testapp.tasks import queued_elsewhere, raising_export
from tests.waits import wait_for_state

pytestmark = pytest.mark.django_db

TASK_FAILED = "The export failed. Please try again."



def test_a_raising_task_in_a_worker_marks_its_download_failed(celery_worker, alice):
    _, key = init_generic_csv_download(raising_export, alice, "Broken")
    record = wait_for_state(key, {"error", "complete"})
    assert (record["state"], record["errors"], record["url"]) == ("error", TASK_FAILED, "")
    assert "db.internal" not in record["errors"]


def test_a_raising_task_started_without_the_shortcut_is_left_alone(celery_worker, alice):
    _, key = cache.init_download(alice, "broken.csv")
    with pytest.raises(RuntimeError):
        raising_export.delay(key).get(timeout=60)
    assert cache.get_download(key)["state"] == "running"


def fail(task, task_id, args, exception=None):
    """Send Celery's task_failure as a worker does after ``task`` raised."""
    exception = exception or RuntimeError("secret detail")
    task_failure.send(sender=task, task_id=task_id, exception=exception, args=args, kwargs={},
                      traceback=None, einfo=None)


def started(user):
    """A download whose task waits in a queue no worker reads, so that only the test changes it."""
    _, key = init_generic_csv_download(queued_elsewhere, user, "Waiting")
    return key, cache.get_download(key)["task_id"]


class TestTheSignal:
    def test_the_download_of_the_failed_task_becomes_an_error_and_the_details_are_logged(self, alice, caplog):
        key, task_id = started(alice)
        with caplog.at_level(logging.ERROR, logger="async_downloads"):
            fail(queued_elsewhere, task_id, [key])
        record = cache.get_download(key)
        assert (record["state"], record["errors"]) == ("error", TASK_FAILED)
        assert "secret detail" in caplog.text and key in caplog.text

    def test_another_task_id_is_not_this_downloads_task(self, alice):
        key, _ = started(alice)
        fail(queued_elsewhere, "another-task-id", [key])
        assert cache.get_download(key)["state"] == "pending"

    def test_before_the_id_is_stored_the_task_name_must_match(self, alice):
        from async_downloads import store

        key, _ = started(alice)
        store.update(key, lambda record: record.pop("task_id"))
        fail(raising_export, "some-id", [key])
        assert cache.get_download(key)["state"] == "pending"
        fail(queued_elsewhere, "some-id", [key])
        assert cache.get_download(key)["state"] == "error"

    def test_a_cancelled_download_stays_cancelled(self, alice):
        key, task_id = started(alice)
        cache.cancel_download(key)
        fail(queued_elsewhere, task_id, [key], exception=cache.DownloadCancelled(key))
        fail(queued_elsewhere, task_id, [key])
        assert cache.get_download(key)["state"] == "cancelled"

    def test_a_finished_download_keeps_its_state(self, alice, media):
        key, task_id = started(alice)
        cache.save_download(key, [["x"]])
        fail(queued_elsewhere, task_id, [key])
        assert cache.get_download(key)["state"] == "complete"

    @pytest.mark.parametrize("args", [[], None, ["not-a-key"], [42], ["00000000-0000-4000-8000-000000000000"]])
    def test_tasks_without_a_download_key_are_ignored(self, args):
        fail(queued_elsewhere, "some-id", args)

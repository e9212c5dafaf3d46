"""Cancelling a download: the cache API, what its task sees, the view and the row."""

from pathlib import Path

import pytest
from celery.exceptions import TaskRevokedError
from django.urls import reverse

from async_downloads import cache, events, partials
from async_downloads.shortcuts import init_generic_csv_download
from tests import stores
from tests.testapp.tasks import queued_elsewhere, report_progress, slow_export, wait_for_cancel
from tests.waits import wait_until

pytestmark = [pytest.mark.django_db(databases=stores.DATABASES), pytest.mark.usefixtures("record_store")]


@pytest.fixture
def kinds():
    """The kinds of every change published, in order, with the key they were about."""
    seen = []

    def receiver(record, kind, **kwargs):
        seen.append((kind, record["key"]))

    events.download_changed_signal.connect(receiver)
    yield seen
    events.download_changed_signal.disconnect(receiver)


class TestCancelDownload:
    def test_a_running_download_becomes_cancelled(self, alice, kinds):
        _, key = cache.init_download(alice, "orders.csv")
        cache.set_percentage(key, 40)
        assert cache.cancel_download(key) is True
        record = cache.get_download(key)
        assert (record["state"], record["complete"], record["url"]) == ("cancelled", True, "")
        assert kinds[-1] == (events.CANCELLED, key)
        assert cache.is_cancelled(key)

    def test_a_pending_download_too(self, alice):
        _, key = cache.init_download(alice, "orders.csv")
        assert cache.cancel_download(key, user=alice)
        assert cache.get_download(key)["state"] == "cancelled"

    def test_only_the_owner_when_a_user_is_given(self, alice, bob):
        _, key = cache.init_download(bob, "bob.csv")
        assert cache.cancel_download(key, user=alice) is False
        assert cache.get_download(key)["state"] == "pending"

    @pytest.mark.parametrize("finish", [lambda key: cache.save_download(key, [["x"]]),
                                        lambda key: cache.set_error(key, "No."),
                                        cache.cancel_download])
    def test_a_finished_download_is_not_cancelled(self, alice, media, finish, kinds):
        _, key = cache.init_download(alice, "orders.csv")
        finish(key)
        state = cache.get_download(key)["state"]
        published = len(kinds)
        assert cache.cancel_download(key) is False
        assert cache.get_download(key)["state"] == state
        assert len(kinds) == published

    @pytest.mark.parametrize("key", ["unknown", "00000000-0000-4000-8000-000000000000", "../etc", None])
    def test_unknown_or_malformed_keys(self, key):
        assert cache.cancel_download(key) is False
        assert cache.is_cancelled(key or "x") is False

    def test_a_partial_file_is_deleted(self, alice, media):
        _, key = cache.init_download(alice, "orders.csv")
        cache.set_percentage(key, 50)
        partial = media / "downloads" / key / "orders.csv"
        partial.parent.mkdir(parents=True)
        partial.write_text("half")
        assert cache.cancel_download(key)
        assert not (media / "downloads" / key).exists()

    def test_the_status_region_announces_it(self, alice):
        _, key = cache.init_download(alice, "orders.csv")
        cache.cancel_download(key)
        html = partials.render_message(alice.pk, cache.get_download(key), events.CANCELLED)
        assert "orders.csv was cancelled." in html


class TestWhatTheTaskSees:
    def test_set_percentage_raises(self, alice):
        _, key = cache.init_download(alice, "orders.csv")
        cache.set_percentage(key, 10)
        cache.cancel_download(key)
        with pytest.raises(cache.DownloadCancelled):
            cache.set_percentage(key, 20)
        assert cache.get_download(key)["state"] == "cancelled"

    def test_update_percentage_raises_at_its_next_write(self, alice):
        _, key = cache.init_download(alice, "orders.csv")
        cache.update_percentage(key, 100, 0)
        cache.cancel_download(key)
        with pytest.raises(cache.DownloadCancelled):
            for cur in range(100):
                cache.update_percentage(key, 100, cur)

    def test_it_is_an_exception_a_task_can_let_propagate(self):
        assert issubclass(cache.DownloadCancelled, Exception)

    def test_a_cleared_download_does_not_raise(self, alice):
        _, key = cache.init_download(alice, "orders.csv")
        cache.clear_download(key)
        cache.set_percentage(key, 20)
        cache.update_percentage(key, 10, 5)
        assert cache.get_download(key) is None and not cache.is_cancelled(key)

    def test_save_download_keeps_no_file(self, alice, media):
        _, key = cache.init_download(alice, "orders.csv")
        cache.cancel_download(key)
        cache.save_download(key, [["x"]])
        assert cache.get_download(key)["state"] == "cancelled"
        assert not (media / "downloads" / key).exists()

    def test_a_cancel_noticed_while_rows_are_written_ends_the_save(self, alice, media):
        _, key = cache.init_download(alice, "orders.csv")

        def rows():
            for n in range(100):
                if n == 30:
                    cache.cancel_download(key)
                cache.update_percentage(key, 100, n)
                yield [n]

        cache.save_download(key, rows())
        assert cache.get_download(key)["state"] == "cancelled"
        assert not (media / "downloads" / key).exists()


def storage_root(settings):
    return Path(settings.STORAGES["default"]["OPTIONS"]["location"])


class TestWithAWorker:
    @pytest.mark.django_db(transaction=True)
    def test_a_running_export_stops_and_keeps_no_file(self, celery_worker, settings, alice, kinds):
        _, key = cache.init_download(alice, "squares.csv")
        result = slow_export.delay(key, rows=200, pause=0.02)
        wait_until(lambda: cache.get_download(key)["percentage"] >= 10)
        assert cache.cancel_download(key, user=alice)
        # update_percentage raised inside save_download, which ended the save and returned.
        assert result.get(timeout=60) is None
        assert cache.get_download(key)["state"] == "cancelled"
        assert not (storage_root(settings) / "downloads" / key).exists()

    def test_set_percentage_raises_in_the_task(self, celery_worker, alice):
        # Started without the shortcut, so no revoke races the exception to the result.
        _, key = cache.init_download(alice, "steps.csv")
        result = report_progress.delay(key, steps=list(range(10, 100, 10)), pause=0.2)
        wait_until(lambda: cache.get_download(key)["percentage"] >= 10)
        assert cache.cancel_download(key, user=alice)
        with pytest.raises(cache.DownloadCancelled):
            result.get(timeout=60)
        assert cache.get_download(key)["state"] == "cancelled"

    def test_a_revoked_running_task_of_the_shortcut_leaves_the_download_cancelled(self, celery_worker, alice):
        steps = list(range(10, 100, 10))
        _, key = init_generic_csv_download(report_progress, alice, "Steps", steps=steps, pause=0.2)
        record = wait_until(lambda: (r := cache.get_download(key))["percentage"] >= 10 and r)
        assert cache.cancel_download(key, user=alice)
        # Celery reports a revoked running task as revoked, or the task's own DownloadCancelled.
        with pytest.raises((cache.DownloadCancelled, TaskRevokedError)):
            report_progress.AsyncResult(record["task_id"]).get(timeout=60)
        assert cache.get_download(key)["state"] == "cancelled"  # not turned into an error by the failure

    def test_a_task_that_reports_no_progress_checks_is_cancelled(self, celery_worker, alice):
        _, key = cache.init_download(alice, "quiet.csv")
        result = wait_for_cancel.delay(key, timeout=30)
        # Its own first report (5 %), not only the worker's start: from then on it checks is_cancelled.
        wait_until(lambda: cache.get_download(key)["percentage"] == 5)
        cache.cancel_download(key)
        assert result.get(timeout=60) == "cancelled"

    def test_a_task_that_has_not_started_is_revoked(self, celery_worker, settings, alice):
        from tests.celery_app import app

        _, key = init_generic_csv_download(queued_elsewhere, alice, "Waiting")
        task_id = cache.get_download(key)["task_id"]
        assert cache.cancel_download(key, user=alice)
        # Now let the worker read the queue the task waits in: it drops the task.
        # limit=1: done at the first worker's answer (without it, the call waits out its timeout).
        app.control.add_consumer(settings.ELSEWHERE_QUEUE, reply=True, timeout=10, limit=1)
        try:
            assert wait_until(lambda: queued_elsewhere.AsyncResult(task_id).state == "REVOKED", timeout=30)
        finally:
            app.control.cancel_consumer(settings.ELSEWHERE_QUEUE, reply=True, timeout=10, limit=1)
        assert cache.get_download(key)["state"] == "cancelled"
        assert not (storage_root(settings) / "downloads" / key).exists()


class TestView:
    def test_cancels_and_answers_with_the_row(self, client_for, alice):
        _, key = cache.init_download(alice, "orders.csv")
        client = client_for(alice, csrf=True)
        client.get("/login/")
        response = client.post(
            reverse("async_downloads:cancel", args=[key]), HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value
        )
        assert response.status_code == 200
        html = response.content.decode()
        assert html.startswith(f'<li id="download-{key}"') and "Cancelled" in html
        assert "/async_downloads/cancel/" not in html
        assert cache.get_download(key)["state"] == "cancelled"

    def test_without_csrf_token_is_403(self, client_for, alice):
        _, key = cache.init_download(alice, "orders.csv")
        assert client_for(alice, csrf=True).post(reverse("async_downloads:cancel", args=[key])).status_code == 403
        assert cache.get_download(key)["state"] == "pending"

    def test_get_is_405(self, client_for, alice):
        _, key = cache.init_download(alice, "orders.csv")
        assert client_for(alice).get(reverse("async_downloads:cancel", args=[key])).status_code == 405

    def test_another_users_download_is_404_and_keeps_running(self, client_for, alice, bob):
        _, key = cache.init_download(bob, "bob.csv")
        cache.set_percentage(key, 30)
        assert client_for(alice).post(reverse("async_downloads:cancel", args=[key])).status_code == 404
        assert cache.get_download(key)["state"] == "running"

    @pytest.mark.parametrize("key", ["unknown", "00000000-0000-4000-8000-000000000000", "..%2F..%2Fetc"])
    def test_unknown_or_malformed_key_is_404(self, client_for, alice, key):
        assert client_for(alice).post(f"/async_downloads/cancel/{key}/").status_code == 404

    def test_a_finished_download_is_404(self, client_for, alice, media):
        _, key = cache.init_download(alice, "orders.csv")
        cache.save_download(key, [["x"]])
        assert client_for(alice).post(reverse("async_downloads:cancel", args=[key])).status_code == 404
        assert cache.get_download(key)["state"] == "complete"

    def test_anonymous_is_redirected(self, client, alice):
        _, key = cache.init_download(alice, "orders.csv")
        assert client.post(reverse("async_downloads:cancel", args=[key])).status_code == 302
        assert cache.get_download(key)["state"] == "pending"


class TestRow:
    @pytest.mark.parametrize("running", [False, True])
    def test_pending_and_running_rows_have_a_cancel_button_and_keep_clear(self, alice, running):
        _, key = cache.init_download(alice, "orders.csv")
        if running:
            cache.set_percentage(key, 20)
        html = partials.render_row(cache.get_download(key))
        assert f'hx-post="/async_downloads/cancel/{key}/"' in html
        assert 'aria-label="Cancel orders.csv"' in html
        assert f'hx-post="/async_downloads/clear/{key}/"' in html

    def test_a_cancelled_row_says_so_and_has_no_cancel_button(self, alice):
        _, key = cache.init_download(alice, "orders.csv")
        cache.cancel_download(key)
        html = partials.render_row(cache.get_download(key))
        assert "Cancelled" in html and "/cancel/" not in html and "progressbar" not in html

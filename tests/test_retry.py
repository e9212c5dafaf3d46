"""Retrying a failed or cancelled download started through the shortcut."""

import datetime
from pathlib import Path

import pytest
from django.urls import reverse

from async_downloads import cache, partials
from async_downloads.shortcuts import init_generic_csv_download
from tests import stores
from tests.testapp.tasks import queued_elsewhere, raising_export, report_progress, slow_export
from tests.waits import wait_for_state

pytestmark = [pytest.mark.django_db(databases=stores.DATABASES), pytest.mark.usefixtures("record_store")]



def started(user):
    """A download started by the shortcut whose task waits in a queue no worker reads."""
    _, key = init_generic_csv_download(queued_elsewhere, user, "Steps")
    return key


def cancelled_export(user):
    key = started(user)
    cache.cancel_download(key)
    return key


class TestRetryDownload:
    def test_the_record_keeps_the_task_and_its_arguments(self, alice):
        _, key = init_generic_csv_download(report_progress, alice, "Steps", steps=[50], pause=0)
        record = cache.get_download(key)
        assert record["task"] == {"name": "tests.testapp.tasks.report_progress", "args": [],
                                  "kwargs": {"steps": [50], "pause": 0}}
        assert record["task_id"]

    def test_a_cancelled_download_starts_again_under_a_new_key_and_the_old_row_goes(self, celery_worker, alice):
        _, key = init_generic_csv_download(slow_export, alice, "Squares", rows=20, pause=0.05)
        assert cache.cancel_download(key)
        old = cache.get_download(key)
        new_key = cache.retry_download(key, alice)
        assert new_key and new_key != key
        assert cache.get_download(key) is None
        assert [d["key"] for d in cache.get_downloads(alice)] == [new_key]
        new = wait_for_state(new_key, {"complete", "error"})
        assert new["state"] == "complete"
        assert (new["filename"], new["name"], new["task"]) == (old["filename"], old["name"], old["task"])
        assert new["task_id"] != old["task_id"]

    @pytest.mark.django_db(transaction=True)
    def test_a_failed_download_runs_the_same_task_with_the_same_arguments(self, celery_worker, settings, alice):
        _, key = init_generic_csv_download(slow_export, alice, "Squares", 3, pause=0.3)
        cache.set_error(key, "Something went wrong.")  # as if the task had failed
        new_key = cache.retry_download(key, alice)
        record = wait_for_state(new_key, {"complete", "error"})
        location = Path(settings.STORAGES["default"]["OPTIONS"]["location"])
        assert (location / record["filepath"]).read_text() == "n,square\n0,0\n1,1\n2,4\n"

    def test_a_task_that_raises_can_be_retried(self, celery_worker, alice):
        _, key = init_generic_csv_download(raising_export, alice, "Broken", message="again")
        wait_for_state(key, {"error"})
        new_key = cache.retry_download(key, alice)
        record = wait_for_state(new_key, {"error"})
        assert record["errors"] == "The export failed. Please try again."
        assert record["task"]["kwargs"] == {"message": "again"}

    def test_twice_starts_one_task(self, alice):
        key = cancelled_export(alice)
        assert cache.retry_download(key, alice)
        assert cache.retry_download(key, alice) is None
        assert len(cache.get_downloads(alice)) == 1

    def test_not_another_users(self, alice, bob):
        key = cancelled_export(bob)
        assert cache.retry_download(key, alice) is None
        assert cache.get_download(key)["state"] == "cancelled"

    def test_not_without_task_information(self, alice):
        _, key = cache.init_download(alice, "orders.csv")
        cache.set_error(key, "No.")
        assert cache.retry_download(key, alice) is None
        assert cache.get_download(key)["state"] == "error"

    @pytest.mark.parametrize("state", ["pending", "running", "complete"])
    def test_not_a_download_that_did_not_fail(self, alice, media, state):
        key = started(alice)
        if state == "running":
            cache.set_percentage(key, 10)
        elif state == "complete":
            cache.save_download(key, [["x"]])
        assert cache.retry_download(key, alice) is None
        assert cache.get_download(key)["state"] == state

    @pytest.mark.parametrize("key", ["unknown", "00000000-0000-4000-8000-000000000000", None])
    def test_unknown_keys(self, alice, key):
        assert cache.retry_download(key, alice) is None


class TestArgumentsMustBeJson:
    @pytest.mark.parametrize(
        "args, kwargs, named",
        [
            ((object(),), {}, "positional argument 1"),
            ((1, {2, 3}), {}, "positional argument 2"),
            ((), {"since": datetime.date(2024, 1, 1)}, "keyword argument 'since'"),
            ((), {"rows": [1, b"x"]}, "keyword argument 'rows'"),
        ],
    )
    def test_a_clear_type_error_before_anything_starts(self, alice, args, kwargs, named):
        message = f"The {named} of tests.testapp.tasks.report_progress is .* not JSON-serialisable"
        with pytest.raises(TypeError, match=message):
            init_generic_csv_download(report_progress, alice, "Steps", *args, **kwargs)
        assert cache.get_downloads(alice) == []

    def test_the_message_shows_the_value(self, alice):
        with pytest.raises(TypeError, match=r"is datetime\.date\(2024, 1, 1\)"):
            init_generic_csv_download(report_progress, alice, "Steps", since=datetime.date(2024, 1, 1))


class TestView:
    def test_retries_and_answers_with_the_new_row(self, client_for, alice):
        key = cancelled_export(alice)
        client = client_for(alice, csrf=True)
        client.get("/login/")
        response = client.post(
            reverse("async_downloads:retry", args=[key]), HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value
        )
        assert response.status_code == 200
        (new,) = cache.get_downloads(alice)
        assert response.content.decode().startswith(f'<li id="download-{new["key"]}"')
        assert response["HX-Trigger"] == '{"async-downloads:started": {}}'

    def test_without_csrf_token_is_403(self, client_for, alice):
        key = cancelled_export(alice)
        assert client_for(alice, csrf=True).post(reverse("async_downloads:retry", args=[key])).status_code == 403
        assert cache.get_download(key)["state"] == "cancelled"

    def test_get_is_405(self, client_for, alice):
        key = cancelled_export(alice)
        assert client_for(alice).get(reverse("async_downloads:retry", args=[key])).status_code == 405

    def test_another_users_download_is_404(self, client_for, alice, bob):
        key = cancelled_export(bob)
        assert client_for(alice).post(reverse("async_downloads:retry", args=[key])).status_code == 404
        assert [d["key"] for d in cache.get_downloads(bob)] == [key]

    def test_not_retryable_is_404(self, client_for, alice):
        _, key = cache.init_download(alice, "orders.csv")
        cache.set_error(key, "No.")
        assert client_for(alice).post(reverse("async_downloads:retry", args=[key])).status_code == 404

    @pytest.mark.parametrize("key", ["unknown", "00000000-0000-4000-8000-000000000000", "..%2F..%2Fetc"])
    def test_unknown_or_malformed_key_is_404(self, client_for, alice, key):
        assert client_for(alice).post(f"/async_downloads/retry/{key}/").status_code == 404

    def test_anonymous_is_redirected(self, client, alice):
        key = cancelled_export(alice)
        assert client.post(reverse("async_downloads:retry", args=[key])).status_code == 302


class TestRow:
    def test_failed_and_cancelled_rows_with_a_task_have_a_retry_button(self, alice):
        key = cancelled_export(alice)
        failed = started(alice)
        cache.set_error(failed, "No.")
        for download in (key, failed):
            html = partials.render_row(cache.get_download(download))
            assert f'hx-post="/async_downloads/retry/{download}/"' in html
            assert "Retry Steps" in html
            assert f'hx-post="/async_downloads/clear/{download}/"' in html

    def test_rows_without_a_task_or_not_failed_have_none(self, alice, media):
        _, plain = cache.init_download(alice, "orders.csv")
        cache.set_error(plain, "No.")
        done = started(alice)
        cache.save_download(done, [["x"]])
        for download in (plain, done):
            assert "/retry/" not in partials.render_row(cache.get_download(download))



@pytest.mark.stores("cache")  # a database row holds JSON only: such arguments cannot be stored there
def test_a_retry_whose_task_cannot_be_sent_is_a_failed_row_that_can_be_retried(alice):
    from async_downloads import store

    key = cancelled_export(alice)
    # Stored by an older version, say: Celery's JSON serializer refuses it.
    store.update(key, lambda record: record["task"].update(args=[object()]))
    new_key = cache.retry_download(key, alice)
    assert cache.get_download(key) is None
    record = cache.get_download(new_key)
    assert (record["state"], record["errors"]) == ("error", "The export failed. Please try again.")
    assert cache.is_retryable(record)

"""Limits: a cap on a user's downloads in progress, and starting the same export twice."""

import threading

import pytest
from django.urls import reverse

from async_downloads import cache
from async_downloads.shortcuts import start_download
from tests import stores
from tests.threads import together

pytestmark = [pytest.mark.django_db(databases=stores.DATABASES), pytest.mark.usefixtures("record_store")]
# Threads have connections of their own: they see only committed rows.
threaded = pytest.mark.django_db(transaction=True, databases=stores.DATABASES)


class CountedTask:
    """Stands in for a Celery task (it has a name, so records keep it): counts its starts."""

    name = "tests.limits.counted"

    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()

    def delay(self, *args, **kwargs):
        with self.lock:
            self.calls.append((args, kwargs))


@pytest.fixture
def task():
    return CountedTask()


@pytest.fixture
def cap(settings):
    settings.ASYNC_DOWNLOADS_MAX_IN_PROGRESS = 2
    return 2


def start(user, task, *args, **kwargs):
    return start_download(user, "export.csv", task, args, kwargs)


class TestMaxInProgress:
    def test_no_cap_by_default(self, alice, task):
        for _ in range(5):
            start(alice, task)
        assert len(cache.get_downloads(alice)) == 5

    def test_over_the_cap_raises_and_creates_and_starts_nothing(self, alice, task, cap):
        start(alice, task, 1)
        start(alice, task, 2)
        with pytest.raises(cache.TooManyDownloads) as raised:
            start(alice, task, 3)
        assert raised.value.limit == 2
        assert len(cache.get_downloads(alice)) == 2
        assert len(task.calls) == 2

    def test_the_message_says_the_limit(self, alice, task, cap):
        start(alice, task, 1)
        start(alice, task, 2)
        with pytest.raises(cache.TooManyDownloads, match="already have 2 downloads in progress"):
            cache.init_download(alice, "more.csv")

    @pytest.mark.parametrize("finish", ["cancel", "fail", "complete"])
    def test_a_finished_download_frees_a_slot(self, alice, task, cap, media, finish):
        _, key = start(alice, task, 1)
        start(alice, task, 2)
        if finish == "cancel":
            cache.cancel_download(key)
        elif finish == "fail":
            cache.set_error(key, "Broken.")
        else:
            cache.save_download(key, [["a"]])
        start(alice, task, 3)
        assert len(cache.get_downloads(alice)) == 3

    def test_other_users_are_not_affected(self, alice, bob, task, cap):
        start(alice, task, 1)
        start(alice, task, 2)
        start(bob, task, 1)
        assert len(cache.get_downloads(bob)) == 1

    @threaded
    def test_holds_under_concurrent_starts(self, settings, alice, task):
        settings.ASYNC_DOWNLOADS_MAX_IN_PROGRESS = 3

        def run(number):
            try:
                cache.init_download(alice.pk, f"export-{number}.csv")
            except cache.TooManyDownloads:
                return "refused"
            return "created"

        outcomes = together(*[lambda number=number: run(number) for number in range(8)])
        assert sorted(outcomes) == ["created"] * 3 + ["refused"] * 5
        assert len(cache.get_downloads(alice)) == 3

    def test_a_retry_over_the_cap_is_refused_and_stays_retryable(self, alice, task, cap):
        _, failed = start(alice, task, 1)
        cache.set_error(failed, "Broken.")
        start(alice, task, 2)
        start(alice, task, 3)
        with pytest.raises(cache.TooManyDownloads):
            cache.retry_download(failed, alice)
        assert cache.is_retryable(cache.get_download(failed))
        assert len(task.calls) == 3


class TestRetryView:
    def test_over_the_cap_is_429_with_the_message(self, settings, client_for, alice, task):
        settings.ASYNC_DOWNLOADS_MAX_IN_PROGRESS = 1
        _, failed = start(alice, task, 1)
        cache.set_error(failed, "Broken.")
        start(alice, task, 2)
        response = client_for(alice).post(reverse("async_downloads:retry", args=[failed]))
        assert response.status_code == 429
        assert "already have 1 download in progress" in response.content.decode()
        assert cache.is_retryable(cache.get_download(failed))

    def test_from_the_centre_the_row_stays_and_the_list_says_why(self, settings, client_for, alice, task):
        """htmx swaps nothing on a 4xx: the centre's button gets a 200 whose list shows the notice."""
        settings.ASYNC_DOWNLOADS_MAX_IN_PROGRESS = 1
        _, failed = start(alice, task, 1)
        cache.set_error(failed, "Broken.")
        start(alice, task, 2)
        response = client_for(alice).post(
            reverse("async_downloads:retry", args=[failed]), headers={"HX-Request": "true"}
        )
        assert response.status_code == 200 and response.headers["HX-Reswap"] == "none"
        html = response.content.decode()
        assert '<li class="async-downloads__notice" role="alert">You already have 1 download in progress.' in html
        assert 'id="async-downloads-list"' in html and 'hx-swap-oob="true"' in html
        assert f'id="download-{failed}"' in html  # still listed, still retryable
        assert cache.is_retryable(cache.get_download(failed))

    def test_uncaught_in_a_view_it_is_a_403_not_a_500(self):
        from django.core.exceptions import PermissionDenied

        assert issubclass(cache.TooManyDownloads, PermissionDenied)


class TestDedupe:
    @pytest.fixture(autouse=True)
    def dedupe(self, settings):
        settings.ASYNC_DOWNLOADS_DEDUPE = True

    def test_the_same_call_returns_the_running_download_and_starts_one_task(self, alice, task):
        first = start(alice, task, 5, flag=True)
        assert start(alice, task, 5, flag=True) == first
        assert len(task.calls) == 1
        assert len(cache.get_downloads(alice)) == 1

    def test_other_arguments_start_a_second(self, alice, task):
        first = start(alice, task, 5)
        second = start(alice, task, 6)
        assert first != second
        assert len(task.calls) == 2

    def test_once_the_first_finished_the_same_call_starts_again(self, alice, task):
        _, key = start(alice, task, 5)
        cache.cancel_download(key)
        assert start(alice, task, 5)[1] != key
        assert len(task.calls) == 2

    def test_not_for_another_user(self, alice, bob, task):
        start(alice, task, 5)
        start(bob, task, 5)
        assert len(task.calls) == 2

    def test_off_by_default(self, settings, alice, task):
        settings.ASYNC_DOWNLOADS_DEDUPE = False
        assert start(alice, task, 5) != start(alice, task, 5)

    @threaded
    def test_concurrent_identical_starts_give_one_task(self, alice, task):
        keys = together(*[lambda: start(alice.pk, task, 5)] * 8)
        assert len(set(keys)) == 1
        assert len(task.calls) == 1

    def test_a_duplicate_is_returned_even_at_the_cap(self, settings, alice, task):
        settings.ASYNC_DOWNLOADS_MAX_IN_PROGRESS = 1
        first = start(alice, task, 5)
        assert start(alice, task, 5) == first

"""A running download whose task went silent for ASYNC_DOWNLOADS_STALL_TIMEOUT seconds is an error."""

import re
import subprocess
import sys
import time

import pytest
from django.conf import settings as django_settings
from django.urls import reverse

from async_downloads import cache, events, partials, store, watch
from tests.processes import child_env, start_uvicorn, stop
from tests.sse_client import StreamReader, session_cookies
from tests.testapp.tasks import ping, slow_export
from tests.waits import wait_for_state, wait_until

pytestmark = pytest.mark.django_db

STALLED = "The export stopped responding."


@pytest.fixture
def failures():
    """The keys of the downloads published as failed, in order."""
    seen = []

    def receiver(record, kind, **kwargs):
        if kind == events.FAILED:
            seen.append(record["key"])

    events.download_changed_signal.connect(receiver)
    yield seen
    events.download_changed_signal.disconnect(receiver)


@pytest.fixture
def short_timeout(settings):
    settings.ASYNC_DOWNLOADS_STALL_TIMEOUT = 0.4
    return 0.4


def running(user, filename="orders.csv", percentage=30):
    _, key = cache.init_download(user, filename)
    cache.set_percentage(key, percentage)
    return key


def silent_for(key, seconds):
    """Make the download look as if its task has reported nothing for ``seconds``."""
    store.get_cache().set(key, {**store.read(key), "updated": time.time() - seconds}, 60)


class TestFailStalled:
    def test_a_silent_running_download_becomes_an_error_once(self, alice, short_timeout, failures):
        key = running(alice)
        assert cache.fail_stalled(alice) == []
        time.sleep(short_timeout + 0.1)
        assert cache.fail_stalled(alice) == [key]
        record = cache.get_download(key)
        assert (record["state"], record["errors"], record["url"]) == ("error", STALLED, "")
        assert cache.fail_stalled(alice) == []
        assert failures == [key]

    def test_reading_never_fails_it(self, alice, short_timeout, failures):
        key = running(alice)
        time.sleep(short_timeout + 0.1)
        assert cache.get_download(key)["state"] == "running"
        assert [d["state"] for d in cache.get_downloads(alice)] == ["running"]
        assert cache.get_user_download(alice, key)["state"] == "running"
        partials.render_refresh(alice.pk)
        partials.render_message(alice.pk)
        assert cache.get_download(key)["state"] == "running"
        assert failures == []

    def test_only_running_downloads_of_that_user_stall(self, alice, bob, short_timeout):
        key = running(alice)
        _, pending = cache.init_download(alice, "queued.csv")
        bobs = running(bob)
        time.sleep(short_timeout + 0.1)
        # A pending download waits for a worker, which may take long: only running ones stall.
        assert cache.fail_stalled(alice) == [key]
        states = {d["key"]: (d["state"], d["errors"]) for d in cache.get_downloads(alice)}
        assert states == {key: ("error", STALLED), pending: ("pending", "")}
        assert cache.get_download(bobs)["state"] == "running"

    def test_the_user_may_be_given_as_a_primary_key(self, alice, short_timeout):
        key = running(alice)
        time.sleep(short_timeout + 0.1)
        assert cache.fail_stalled(alice.pk) == [key]

    def test_a_report_that_comes_in_first_keeps_it_running(self, alice, short_timeout, failures, monkeypatch):
        key = running(alice, percentage=10)
        time.sleep(short_timeout + 0.1)
        read_downloads = store.read_downloads

        def report_after_the_list_was_read(pk):
            found = read_downloads(pk)
            cache.set_percentage(key, 20)  # the task reports between the read and the change
            return found

        monkeypatch.setattr(store, "read_downloads", report_after_the_list_was_read)
        assert cache.fail_stalled(alice) == []
        assert cache.get_download(key)["state"] == "running"
        assert failures == []

    def test_progress_keeps_it_running(self, alice, short_timeout):
        key = running(alice, percentage=10)
        for percentage in range(11, 20):
            time.sleep(short_timeout / 4)
            cache.set_percentage(key, percentage)
            assert cache.fail_stalled(alice) == []

    def test_unchanged_progress_is_written_again_as_a_heartbeat(self, alice, short_timeout, failures):
        key = running(alice, percentage=50)
        updates = []
        events.download_changed_signal.connect(receiver := lambda record, kind, **kw: updates.append(kind))
        try:
            for _ in range(8):
                time.sleep(short_timeout / 4)
                cache.update_percentage(key, 100, 50)
                assert cache.fail_stalled(alice) == []
        finally:
            events.download_changed_signal.disconnect(receiver)
        assert updates == []  # a heartbeat changes nothing the user sees
        assert failures == []

    def test_an_unchanged_value_is_not_rewritten_before_the_heartbeat_is_due(self, alice):
        key = running(alice, percentage=50)
        updated = cache.get_download(key)["updated"]
        cache.set_percentage(key, 50)
        assert cache.get_download(key)["updated"] == updated

    def test_the_centre_view_fails_it(self, alice, short_timeout, client_for):
        key = running(alice)
        version = partials.version(cache.get_downloads(alice))
        time.sleep(short_timeout + 0.1)
        response = client_for(alice).get(f"{reverse('async_downloads:centre')}?idle={version}", HTTP_HX_REQUEST="true")
        assert response.status_code == 200
        assert STALLED in response.content.decode() and key in response.content.decode()
        assert cache.get_download(key)["state"] == "error"

    def test_the_legacy_update_view_fails_it(self, alice, short_timeout, client_for):
        key = running(alice)
        time.sleep(short_timeout + 0.1)
        data = client_for(alice).get(reverse("async_downloads:ajax_update")).json()
        assert [(d["download_key"], d["errors"]) for d in data["downloads"]] == [(key, STALLED)]
        assert data["in_progress"] is False

    def test_the_default_is_ten_minutes(self):
        from async_downloads.conf import settings

        assert settings.STALL_TIMEOUT == 600


class TestOpenPages:
    def test_a_pushed_centre_does_not_poll(self, settings, alice):
        running(alice)
        for ws_mode in (False, True):
            settings.ASYNC_DOWNLOADS_WS_MODE = ws_mode
            html = partials.render_refresh(alice.pk)
            connection = re.search(r'<div id="async-downloads-connection"[^>]*>', html).group(0)
            assert ("sse-connect=" in connection) != ws_mode and ("ws-connect=" in connection) == ws_mode
            assert "hx-get" not in html and "hx-trigger" not in html

    def test_the_sweep_runs_every_quarter_timeout_and_at_least_every_minute(self, settings):
        settings.ASYNC_DOWNLOADS_STALL_TIMEOUT = 40
        assert watch.sweep_interval() == 10
        settings.ASYNC_DOWNLOADS_STALL_TIMEOUT = 600
        assert watch.sweep_interval() == 60

    def test_a_watched_users_stalled_download_fails_without_any_request(self, alice, bob, short_timeout, failures):
        watching = watch.Watching()
        key, bobs = running(alice), running(bob)
        watching.add(alice.pk)
        watching.add(alice.pk)  # two tabs
        watching.discard(alice.pk)
        try:
            record = wait_until(lambda: (r := cache.get_download(key))["state"] == "error" and r, timeout=5)
        finally:
            watching.discard(alice.pk)
        assert record["errors"] == STALLED
        assert failures == [key]
        assert cache.get_download(bobs)["state"] == "running", "nobody watches bob: nothing sweeps his"
        wait_until(lambda: watching.thread is None, timeout=5, what="the sweep to stop with nobody watched")

    @pytest.mark.django_db(transaction=True)
    def test_opening_the_stream_fails_stalled_downloads(self, web_server, alice):
        key = running(alice)
        silent_for(key, 3600)  # the server's timeout is the default, 600 s
        with StreamReader(f"{web_server}{partials.events_url(alice.pk)}", session_cookies(alice)):
            assert cache.get_download(key)["state"] == "error"


@pytest.fixture
def doomed_worker(django_db_setup):
    """A worker of its own, on a queue of its own, beating every 0.75 s (a 3 s stall timeout)."""
    queue = f"{django_settings.CELERY_TASK_DEFAULT_QUEUE}-doomed"
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker", "--pool", "solo", "-Q", queue,
         "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        env=child_env(ASYNC_DOWNLOADS_TEST_STALL_TIMEOUT="3"),
    )
    try:
        ping.apply_async(queue=queue).get(timeout=60)
        yield process, queue
    finally:
        stop(process)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_export_turns_into_stopped_responding_on_the_open_page(
    doomed_worker, settings, alice, failures
):
    settings.ASYNC_DOWNLOADS_STALL_TIMEOUT = 3
    process, queue = doomed_worker
    server, url = start_uvicorn(ASYNC_DOWNLOADS_TEST_STALL_TIMEOUT="3")
    try:
        _, key = cache.init_download(alice, "squares.csv")
        with StreamReader(f"{url}{partials.events_url(alice.pk)}", session_cookies(alice)) as stream:
            # 4 s per 10 % step, longer than the timeout: only the heartbeats keep it running.
            slow_export.apply_async((key,), {"rows": 1000, "pause": 0.04}, queue=queue)
            wait_for_state(key, {"running"})
            time.sleep(5)
            assert cache.get_download(key)["state"] == "running"
            assert cache.get_download(key)["percentage"] <= 10

            process.kill()  # SIGKILL: no chance to report anything
            process.wait()
            killed = time.monotonic()
            # Nothing but the web process that holds the page's stream looks at the download.
            message = stream.next(timeout=3 + 5)
            while STALLED not in message["data"]:
                message = stream.next(timeout=3 + 5 - (time.monotonic() - killed))
        record = cache.get_download(key)
        assert (record["state"], record["errors"]) == ("error", STALLED)
        assert f'id="download-{key}"' in message["data"]
    finally:
        stop(server)

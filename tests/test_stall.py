"""A running download whose task went silent for ASYNC_DOWNLOADS_STALL_TIMEOUT seconds is an error."""

import re
import subprocess
import sys
import time

import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.urls import reverse

from async_downloads import cache, events, partials
from tests.processes import child_env, stop
from tests.testapp.tasks import ping, slow_export
from tests.waits import wait_for_state

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


class TestDetectedOnRead:
    def test_a_silent_running_download_becomes_an_error_once(self, alice, short_timeout, failures):
        key = running(alice)
        assert cache.get_download(key)["state"] == "running"
        time.sleep(short_timeout + 0.1)
        record = cache.get_download(key)
        assert (record["state"], record["errors"], record["url"]) == ("error", STALLED, "")
        assert cache.get_download(key)["state"] == "error"
        assert failures == [key]

    def test_the_list_shows_it_too(self, alice, short_timeout):
        key = running(alice)
        _, pending = cache.init_download(alice, "queued.csv")
        time.sleep(short_timeout + 0.1)
        states = {d["key"]: (d["state"], d["errors"]) for d in cache.get_downloads(alice)}
        # A pending download waits for a worker, which may take long: only running ones stall.
        assert states == {key: ("error", STALLED), pending: ("pending", "")}

    def test_progress_keeps_it_running(self, alice, short_timeout):
        key = running(alice, percentage=10)
        for percentage in range(11, 20):
            time.sleep(short_timeout / 4)
            cache.set_percentage(key, percentage)
            assert cache.get_download(key)["state"] == "running"

    def test_unchanged_progress_is_written_again_as_a_heartbeat(self, alice, short_timeout, failures):
        key = running(alice, percentage=50)
        updates = []
        events.download_changed_signal.connect(receiver := lambda record, kind, **kw: updates.append(kind))
        try:
            for _ in range(8):
                time.sleep(short_timeout / 4)
                cache.update_percentage(key, 100, 50)
                assert cache.get_download(key)["state"] == "running"
        finally:
            events.download_changed_signal.disconnect(receiver)
        assert updates == []  # a heartbeat changes nothing the user sees
        assert failures == []

    def test_an_unchanged_value_is_not_rewritten_before_the_heartbeat_is_due(self, alice):
        key = running(alice, percentage=50)
        updated = cache.get_download(key)["updated"]
        cache.set_percentage(key, 50)
        assert cache.get_download(key)["updated"] == updated

    def test_the_centre_view_shows_it(self, alice, short_timeout):
        key = running(alice)
        version = partials.version(cache.get_downloads(alice))
        time.sleep(short_timeout + 0.1)
        client = Client()
        client.force_login(alice)
        response = client.get(f"{reverse('async_downloads:centre')}?idle={version}", HTTP_HX_REQUEST="true")
        assert response.status_code == 200
        assert STALLED in response.content.decode() and key in response.content.decode()

    def test_the_default_is_ten_minutes(self):
        from async_downloads.conf import settings

        assert settings.STALL_TIMEOUT == 600


class TestThePageAsks:
    def test_a_pushed_centre_polls_every_half_timeout_while_something_runs(self, settings, alice):
        settings.ASYNC_DOWNLOADS_STALL_TIMEOUT = 600
        running(alice)
        html = partials.render_refresh(alice.pk)
        connection = re.search(r'<div id="async-downloads-connection".*?</div>\s*</div>', html, re.S).group(0)
        assert "sse-connect=" in connection
        check = re.search(r'<div class="async-downloads__stall-check"[^>]*>', connection).group(0)
        assert re.search(r'hx-get="/async_downloads/\?idle=[0-9a-f]{12}"', check)
        assert 'hx-trigger="every 300s"' in check and 'hx-swap="none"' in check

    def test_in_ws_mode_too(self, settings, alice):
        settings.ASYNC_DOWNLOADS_WS_MODE = True
        running(alice)
        assert "async-downloads__stall-check" in partials.render_refresh(alice.pk)

    def test_an_idle_centre_does_not(self, alice, media):
        _, key = cache.init_download(alice, "orders.csv")
        cache.save_download(key, [["x"]])
        assert "stall-check" not in partials.render_refresh(alice.pk)


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
def test_a_worker_killed_mid_export_turns_into_stopped_responding(doomed_worker, settings, alice, failures):
    settings.ASYNC_DOWNLOADS_STALL_TIMEOUT = 3
    process, queue = doomed_worker
    _, key = cache.init_download(alice, "squares.csv")
    # 4 s per 10 % step, longer than the timeout: only the heartbeats keep it running.
    slow_export.apply_async((key,), {"rows": 1000, "pause": 0.04}, queue=queue)
    wait_for_state(key, {"running"})
    for _ in range(50):
        time.sleep(0.1)
        assert cache.get_download(key)["state"] == "running"
    assert cache.get_download(key)["percentage"] <= 10

    process.kill()  # SIGKILL: no chance to report anything
    process.wait()
    killed = time.monotonic()
    while (record := cache.get_download(key))["state"] == "running":
        assert time.monotonic() - killed < 3 + 5, f"still running long after the kill: {record}"
        time.sleep(0.1)
    assert (record["state"], record["errors"]) == ("error", STALLED)
    assert failures == [key]

"""Stalled downloads: a running download whose worker went away is an error, found by ``fail_stalled`` only.

In process. The same with real workers killed by SIGKILL: tests/test_liveness.py.
"""

import logging
import re
import time

import pytest
from django.urls import reverse

from async_downloads import cache, events, heartbeat, partials, store, watch
from tests.sse_client import StreamReader, session_cookies
from tests.waits import wait_until

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

    def test_the_sweep_runs_often_enough_for_each_timeout_and_at_least_every_minute(self, settings):
        settings.ASYNC_DOWNLOADS_WORKER_TIMEOUT = 45
        settings.ASYNC_DOWNLOADS_PENDING_WAIT = 30
        assert watch.sweep_interval() == 15  # the defaults: a dead worker is noticed within a minute
        settings.ASYNC_DOWNLOADS_STALL_TIMEOUT = 40
        assert watch.sweep_interval() == 10
        settings.ASYNC_DOWNLOADS_STALL_TIMEOUT = 600
        settings.ASYNC_DOWNLOADS_WORKER_TIMEOUT = 600
        settings.ASYNC_DOWNLOADS_PENDING_WAIT = 600
        assert watch.sweep_interval() == 60

    def test_a_watched_users_stalled_download_fails_without_any_request(self, alice, bob, short_timeout, failures):
        watching = watch.Watching()
        key, bobs = running(alice), running(bob)
        watching.add(alice.pk)
        watching.add(alice.pk)  # two tabs
        watching.discard(alice.pk)
        try:
            wait_until(lambda: failures, timeout=5, what="the sweep to publish the failure")
        finally:
            watching.discard(alice.pk)
        record = cache.get_download(key)
        assert (record["state"], record["errors"]) == ("error", STALLED)
        assert failures == [key]
        assert cache.get_download(bobs)["state"] == "running", "nobody watches bob: nothing sweeps his"
        wait_until(lambda: watching.thread is None, timeout=5, what="the sweep to stop with nobody watched")

    def test_a_held_user_is_swept_until_none_of_their_downloads_is_active(self, alice, bob, short_timeout, failures):
        """GRIP mode: the proxy holds the page's stream, so the user is swept until their downloads end."""
        watching = watch.Watching()
        key, bobs = running(alice), running(bob)
        watching.hold(alice.pk)
        wait_until(lambda: failures, timeout=5, what="the sweep to publish the failure")
        assert (cache.get_download(key)["state"], failures) == ("error", [key])
        wait_until(lambda: watching.thread is None, timeout=5, what="the sweep to stop once alice has nothing active")
        assert not watching.held and not watching.users(), "no page of alice is known to be open here"
        assert cache.get_download(bobs)["state"] == "running", "nobody watches bob: nothing sweeps his"

    def test_one_sweep_fails_each_users_stalled_downloads_and_names_who_is_still_active(
            self, alice, bob, django_user_model, short_timeout, failures):
        carol = django_user_model.objects.create_user("carol", password="carol-pw")
        stalled, fresh = running(alice), running(bob)
        silent_for(stalled, 3600)
        _, done = cache.init_download(carol, "done.csv")
        cache.set_error(done, "The export failed.")
        failures.clear()
        assert cache.sweep([alice.pk, bob.pk, carol.pk]) == {bob.pk}
        assert failures == [stalled] and cache.get_download(fresh)["state"] == "running"

    def test_a_user_held_again_while_the_sweep_looks_stays_held(self, alice, monkeypatch):
        watching = watch.Watching()
        watching.hold(alice.pk)

        def sweep(pks):
            watching.hold(alice.pk)  # a new download of alice's, say, created meanwhile
            return set()

        monkeypatch.setattr(cache, "sweep", sweep)
        watching.sweep()
        assert list(watching.held) == [alice.pk]
        monkeypatch.setattr(cache, "sweep", lambda pks: set())
        watching.sweep()
        assert not watching.held

    def test_the_sweep_reads_a_batch_of_users_at_a_time_and_a_failed_batch_stays_held(self, monkeypatch):
        watching = watch.Watching()
        watching.held.update((pk, 0.0) for pk in range(250))
        batches = []

        def sweep(pks):
            batches.append(list(pks))
            if 0 in pks:
                raise ConnectionError("the cache server went away")
            return {pk for pk in pks if pk % 2}

        monkeypatch.setattr(cache, "sweep", sweep)
        watching.sweep()
        assert [len(batch) for batch in batches] == [100, 100, 50]
        assert set(watching.held) == set(range(100)) | {pk for pk in range(100, 250) if pk % 2}

    def test_a_held_user_whose_download_runs_on_stays_swept_until_it_ends(self, alice, failures):
        watching = watch.Watching()
        _, failed = cache.init_download(alice, "failed.csv")
        cache.set_error(failed, "The export failed.")
        key = running(alice)  # the default stall timeout: a live download
        watching.hold(alice.pk)
        watching.sweep()
        assert list(watching.held) == [alice.pk] and cache.get_download(key)["state"] == "running"
        cache.set_error(key, "The export failed.")
        watching.sweep()
        assert not watching.held

    @pytest.mark.django_db(transaction=True)
    def test_opening_the_stream_fails_stalled_downloads(self, web_server, alice):
        key = running(alice)
        silent_for(key, 3600)  # the server's timeout is the default, 600 s
        with StreamReader(f"{web_server}{partials.events_url(alice.pk)}", session_cookies(alice)):
            assert cache.get_download(key)["state"] == "error"


def beating(user, seconds_ago=0.0, filename="orders.csv"):
    """A download whose task a worker started (it beats), with its last beat ``seconds_ago``."""
    _, key = cache.init_download(user, filename)
    assert cache.task_started(key)
    store.get_cache().set(key, {**store.read(key), "beat": time.time() - seconds_ago}, 60)
    return key


class TestHeartbeats:
    @pytest.fixture(autouse=True)
    def _timeouts(self, settings):
        settings.ASYNC_DOWNLOADS_STALL_TIMEOUT = 0.4
        settings.ASYNC_DOWNLOADS_WORKER_TIMEOUT = 2

    def test_a_started_task_makes_its_download_running_and_publishes_it(self, alice):
        _, key = cache.init_download(alice, "orders.csv")
        sent = []
        events.download_changed_signal.connect(receiver := lambda record, kind, **kw: sent.append(kind))
        try:
            assert cache.task_started(key, "task-1") is True
        finally:
            events.download_changed_signal.disconnect(receiver)
        record = cache.get_download(key)
        assert (record["state"], record["percentage"]) == ("running", 0)
        assert time.time() - record["beat"] < 2
        assert sent == [events.UPDATED]
        assert 'aria-valuenow="0"' in partials.render_row(record)

    def test_a_task_of_another_id_or_a_finished_download_is_not_taken(self, alice):
        _, key = cache.init_download(alice, "orders.csv")
        store.update(key, lambda record: record.update(task_id="task-1"))
        assert cache.task_started(key, "task-2") is False
        assert cache.get_download(key)["state"] == "pending"
        cache.set_error(key, "No.")
        assert cache.task_started(key, "task-1") is False
        assert cache.task_started("not a key") is False

    def test_a_silent_task_whose_worker_beats_is_never_stalled(self, alice, failures):
        key = beating(alice)
        silent_for(key, 3600)  # no report for an hour, far past the stall timeout…
        store.get_cache().set(key, {**store.read(key), "beat": time.time()}, 60)  # …but its worker beats
        assert cache.fail_stalled(alice) == []
        assert failures == []

    def test_a_download_whose_worker_stopped_beating_fails(self, alice, failures):
        fresh, dead = beating(alice, seconds_ago=1), beating(alice, seconds_ago=3)
        assert cache.fail_stalled(alice) == [dead]
        assert cache.get_download(fresh)["state"] == "running"
        assert (cache.get_download(dead)["state"], cache.get_download(dead)["errors"]) == ("error", STALLED)
        assert failures == [dead]

    def test_the_beat_thread_keeps_the_download_alive_until_the_task_returns(self, alice, settings, failures):
        settings.ASYNC_DOWNLOADS_HEARTBEAT_INTERVAL = 0.2
        settings.ASYNC_DOWNLOADS_WORKER_TIMEOUT = 0.8
        beats = heartbeat.Heartbeats()
        key = beating(alice)
        beats.start(key)
        try:
            for _ in range(10):
                time.sleep(0.2)
                assert cache.fail_stalled(alice) == []
        finally:
            beats.stop(key)
        wait_until(lambda: beats.thread is None, timeout=5, what="the beat thread to stop")
        cache.task_returned(key)
        record = cache.get_download(key)
        assert "beat" not in record and record["state"] == "running"
        time.sleep(0.5)  # now only the stall timeout (0.4 s without reports) applies
        assert cache.fail_stalled(alice) == [key]

    def test_a_record_lost_while_its_task_runs_is_logged_as_a_warning(self, alice, caplog, settings):
        settings.ASYNC_DOWNLOADS_HEARTBEAT_INTERVAL = 0.1
        beats = heartbeat.Heartbeats()
        key = beating(alice)
        beats.start(key)
        monkeypatch_heartbeats = heartbeat.heartbeats
        heartbeat.heartbeats = beats
        try:
            store.get_cache().delete(key)  # as a restart of the cache server without its data would
            wait_until(lambda: key in beats.lost, timeout=5, what="the beat to notice")
            cache.save_download(key, [["a"]])
        finally:
            heartbeat.heartbeats = monkeypatch_heartbeats
            beats.stop(key)
        lost = [r for r in caplog.records if r.levelname == "WARNING" and "was lost while its task ran" in r.message]
        assert len(lost) == 2, caplog.text  # once by the beat, once by save_download

    def test_a_record_lost_while_the_file_is_written_is_logged_and_no_file_kept(self, alice, caplog, media):
        _, key = cache.init_download(alice, "orders.csv")

        def rows():
            yield ["n"]
            store.get_cache().delete(key)  # the cache server loses it mid-export
            yield [1]

        cache.save_download(key, rows())
        assert cache.get_download(key) is None
        assert not (media / "downloads" / key).exists()
        assert [r.levelname for r in caplog.records if "was lost while its task ran" in r.message] == ["WARNING"]

    def test_a_cleared_download_is_not_called_lost(self, alice, caplog):
        caplog.set_level(logging.INFO, logger="async_downloads")
        key = beating(alice)
        heartbeat.heartbeats.start(key)
        try:
            assert cache.clear_download(key, alice)
            cache.save_download(key, [["a"]])
        finally:
            heartbeat.heartbeats.stop(key)
        assert "lost" not in caplog.text and "was cleared by its user" in caplog.text


class TestWaitingForAWorker:
    def test_a_download_pending_longer_than_the_wait_says_so_once(self, alice, settings):
        settings.ASYNC_DOWNLOADS_PENDING_WAIT = 0.3
        _, key = cache.init_download(alice, "orders.csv")
        assert cache.fail_stalled(alice) == []
        assert not cache.get_download(key).get("waiting")
        assert "Waiting for a worker" not in partials.render_row(cache.get_download(key))
        time.sleep(0.4)
        sent = []
        events.download_changed_signal.connect(receiver := lambda record, kind, **kw: sent.append(kind))
        try:
            cache.fail_stalled(alice)
            cache.fail_stalled(alice)
        finally:
            events.download_changed_signal.disconnect(receiver)
        record = cache.get_download(key)
        assert (record["state"], record["waiting"]) == ("pending", True)
        assert sent == [events.UPDATED]
        assert "Waiting for a worker…" in partials.render_row(record)

        assert cache.task_started(key)
        record = cache.get_download(key)
        assert (record["state"], record["waiting"]) == ("running", False)
        assert "Waiting for a worker" not in partials.render_row(record)

    def test_the_default_wait_is_half_a_minute(self):
        from async_downloads.conf import settings

        assert (settings.PENDING_WAIT, settings.WORKER_TIMEOUT, settings.HEARTBEAT_INTERVAL) == (30, 45, 10)


@pytest.fixture
def epoch_kept(monkeypatch):
    """An epoch key of the test's own: the run's web servers must not take the test for a Redis that lost its data."""
    monkeypatch.setattr(store, "EPOCH_KEY", f"{store.EPOCH_KEY}-test-{time.monotonic_ns()}")
    monkeypatch.setattr(store, "_epoch", [])


def test_the_cache_server_losing_its_data_is_noticed_once(alice, epoch_kept):
    store.data_lost()
    assert store.data_lost() is False
    store.get_cache().delete(store.EPOCH_KEY)  # as a restart without persistence, or a flush
    assert store.data_lost() is True
    assert store.data_lost() is False


def test_open_pages_are_resent_with_a_notice_after_the_cache_server_lost_its_data(alice, bob, monkeypatch, epoch_kept):
    from async_downloads import sse

    sent = []
    # Straight to this process's streams: not through Redis pub/sub, which may not be subscribed yet.
    monkeypatch.setattr(sse, "send_here", lambda pk, html: sent.append((pk, html)))
    monkeypatch.setattr(watch, "watching", watch.Watching())
    watch.watching.pages.update({alice.pk: 1, bob.pk: 2})
    store.data_lost()
    assert watch.resync_open_pages() == 2
    assert sorted(pk for pk, _ in sent) == sorted([alice.pk, bob.pk])
    assert all("were lost" not in html for _, html in sent)
    sent.clear()
    store.get_cache().delete(store.EPOCH_KEY)
    watch.resync_open_pages()
    assert len(sent) == 2
    assert all("Some downloads were lost while the server restarted." in html for _, html in sent)
    assert all('role="alert"' in html for _, html in sent)

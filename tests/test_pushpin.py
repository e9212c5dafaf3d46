"""GRIP mode behind a real Pushpin, with gunicorn's sync workers and a Celery worker (real processes).

One Pushpin, one gunicorn (2 sync workers) and one Celery worker per module; the restart
tests bring them back on the same ports. The pytest process publishes in GRIP mode too
(``grip`` fixture), so that what a test changes reaches Pushpin without a web process.
"""

import json
import secrets
import threading
import time

import httpx
import pytest
from django.conf import settings

from async_downloads import cache, sse
from async_downloads.channels import channel_for
from devtools.processes import free_port, start_gunicorn
from devtools.pushpin import Pushpin
from tests.browser import export_and_watch, log_in
from tests.processes import child_env, start_worker, stop
from tests.sse_client import StreamReader, session_cookies
from tests.testapp.middleware import DELAY_HEADER
from tests.testapp.tasks import ping, report_progress

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

KEY = secrets.token_hex(24)
QUEUE = settings.CELERY_TASK_DEFAULT_QUEUE + "-grip"  # tests/grip_settings.py's default queue
EVENTS = "/async_downloads/events/held/"  # what the centre connects to in GRIP mode
STALLED = "The export stopped responding."


class Site:
    """Pushpin in front of gunicorn, in GRIP mode; a Celery worker with the same settings."""

    def __init__(self):
        self.web_port = free_port()
        self.proxy = Pushpin([f"127.0.0.1:{self.web_port}"], sig_key=KEY)
        self.proxies = [{"control_uri": self.proxy.control_uri, "key": KEY}]
        self.env = child_env(DJANGO_SETTINGS_MODULE="tests.grip_settings",
                             ASYNC_DOWNLOADS_TEST_GRIP=json.dumps(self.proxies))
        self.web = self.worker = None

    def start(self):
        self.start_web()
        self.proxy.start()
        self.worker = start_worker(self.env, "-Q", QUEUE)
        ping.apply_async(queue=QUEUE).get(timeout=60)
        return self

    def start_web(self, **env):
        self.web, self.web_url = start_gunicorn("tests.wsgi:application", {**self.env, **env}, port=self.web_port,
                                                workers=2)

    def stop(self):
        stop(self.worker)
        stop(self.web)
        self.proxy.close()


@pytest.fixture(scope="module")
def site(django_db_setup, django_db_blocker):
    running = Site()
    try:
        yield running.start()
    finally:
        running.stop()


@pytest.fixture
def grip(settings, site):
    settings.GRIP_PROXIES = site.proxies
    return site


def stream(site, user, **options):
    return StreamReader(site.proxy.url + EVENTS, cookies=session_cookies(user), **options)


def percentages(events, key):
    """The percentages of ``key``'s rows among ``events``, in order."""
    found = []
    for event in events:
        if key in event["data"] and 'aria-valuenow="' in event["data"]:
            found.append(int(event["data"].split('aria-valuenow="', 1)[1].split('"', 1)[0]))
    return found


def complete(events, key):
    return any(f'id="download-{key}" class="async-download async-download--complete' in e["data"] for e in events)


def wait_for(reader, key, percentage=None, timeout=15):
    """The events up to the row of ``key`` at ``percentage`` (None: complete)."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen += reader.drain(wait=0.2)
        if (percentage in percentages(seen, key)) if percentage is not None else complete(seen, key):
            return seen
    raise AssertionError(f"{percentage or 'complete'} of {key} did not arrive; seen {percentages(seen, key)}")


def test_a_workers_progress_reaches_the_user_through_pushpin_while_sync_workers_stay_free(grip, alice, bob):
    readers = [stream(grip, alice) for _ in range(5)]  # more streams than gunicorn has workers
    other = stream(grip, bob)
    for reader in [*readers, other]:
        reader.__enter__()
    try:
        time.sleep(1.5)  # past the look at the channel a second in: the streams are still held
        start = time.monotonic()
        page = httpx.get(grip.proxy.url + "/login/", timeout=10)
        assert page.status_code == 200 and time.monotonic() - start < 2, "a sync worker is held"
        _, key = cache.init_download(alice, "report.csv")
        report_progress.apply_async((key,), {"steps": [25, 50, 75], "pause": 0.1}, queue=QUEUE)
        for reader in readers:
            seen = wait_for(reader, key)
            assert [p for p in percentages(seen, key) if p] == [25, 50, 75]
            assert reader.connections == 1
        assert cache.get_download(key)["complete"]
        assert not [e for e in other.drain(wait=1) if key in e["data"] or channel_for(alice.pk) in e["data"]]
    finally:
        for reader in [*readers, other]:
            reader.__exit__()



def test_events_arrive_while_publishes_keep_coming(grip, alice, bob):
    """A steady stream of publishes (here 50+ a second on another user's channel) must not hold
    deliveries back: Pushpin's publish rate limiter would, until publishing paused (message_rate)."""
    _, mine = cache.init_download(alice, "report.csv")
    _, busy = cache.init_download(bob, "busy.csv")
    done = threading.Event()

    def keep_publishing():
        value = 0
        while not done.is_set():
            value = value % 98 + 1
            cache.set_percentage(busy, value)
            time.sleep(0.01)

    with stream(grip, alice) as reader, stream(grip, bob) as other:
        publisher = threading.Thread(target=keep_publishing)
        publisher.start()
        try:
            time.sleep(1.0)
            cache.set_percentage(mine, 40)
            sent = time.monotonic()
            wait_for(reader, mine, 40, timeout=3)
            arrived = time.monotonic() - sent
            assert publisher.is_alive() and not done.is_set()
            assert arrived < 1.5, f"delivered {arrived:.1f} s after publishing, while other publishes kept coming"
            assert [p for p in percentages(other.drain(wait=0.5), busy) if p], "the busy stream got nothing"
        finally:
            done.set()
            publisher.join()

def test_what_is_published_while_pushpin_subscribes_a_stream_reaches_it(grip, alice):
    """Django reads the events, Pushpin subscribes the stream once it has the answer: a publish
    in between reaches no stream, and the look at the channel a second later sends the centre."""
    _, key = cache.init_download(alice, "report.csv")
    cache.set_percentage(key, 10)
    for _ in range(2):  # both sync workers warm: the timing below is the answer's, not a first request's
        with stream(grip, alice):
            pass
    reader = stream(grip, alice, headers={DELAY_HEADER: "0.7"})  # the answer reaches Pushpin 0.7 s late
    reader.last_event_id = f"{channel_for(alice.pk)}:{sse_current_id(alice)}"
    opening = threading.Thread(target=reader.__enter__)
    opening.start()
    time.sleep(0.3)  # Django has read the events and sleeps; Pushpin has no subscriber yet
    cache.set_percentage(key, 20)
    opening.join()
    try:
        seen = wait_for(reader, key, 20, timeout=5)
        twenty = [e for e in seen if 'aria-valuenow="20"' in e["data"]]
        assert all('id="async-downloads-list"' in e["data"] for e in twenty), "a row came: it was not in the window"
        assert reader.connections == 1
    finally:
        reader.__exit__()


def sse_current_id(user):
    return sse.EventStorage().get_current_id(channel_for(user.pk))


def test_a_direct_request_gets_421_at_once_also_with_a_forged_signature(grip, alice):
    cookies = session_cookies(alice)
    httpx.get(grip.web_url + "/login/", timeout=30)  # a worker started by a restart test has its first request
    for headers in ({}, {"Grip-Sig": "forged"}):
        start = time.monotonic()
        response = httpx.get(grip.web_url + EVENTS, cookies=cookies, headers=headers, timeout=10)
        assert response.status_code == 421
        assert time.monotonic() - start < 2


def test_restarting_gunicorn_under_open_streams_drops_none_and_loses_nothing(grip, alice):
    _, key = cache.init_download(alice, "report.csv")
    with stream(grip, alice, reconnect=True) as reader:
        time.sleep(1.5)  # past the look at the channel (which would send the centre with 10 again)
        cache.set_percentage(key, 10)
        wait_for(reader, key, 10)
        stop(grip.web)
        cache.set_percentage(key, 20)  # published while no web process runs
        grip.start_web()
        cache.set_percentage(key, 30)
        seen = wait_for(reader, key, 30)
        assert percentages(seen, key) == [20, 30]
        assert reader.connections == 1


def test_a_download_that_stalls_while_pushpin_holds_its_page_fails_there_without_a_request(grip, alice, bob):
    """No web process holds the stream: the one that answered it sweeps the user while a download is active."""
    stop(grip.web)
    grip.start_web(ASYNC_DOWNLOADS_TEST_SET_STALL_TIMEOUT="3")  # swept every 0.75 s
    try:
        for _ in range(4):  # both sync workers load the stream's modules before the test's request
            assert httpx.get(grip.web_url + EVENTS, timeout=10).status_code == 421
        _, key = cache.init_download(alice, "report.csv")
        _, bobs = cache.init_download(bob, "report.csv")
        cache.set_percentage(key, 10)
        cache.set_percentage(bobs, 10)
        reported = time.monotonic()
        with stream(grip, alice) as reader:
            assert cache.get_download(key)["state"] == "running", "the stream request came too late to tell"
            seen = []
            while not any(STALLED in e["data"] for e in seen) and time.monotonic() < reported + 20:
                seen += reader.drain(wait=0.2)
            failed_after = time.monotonic() - reported
        assert any(STALLED in e["data"] for e in seen), f"no failure reached the page: {seen}"
        assert 3 <= failed_after < 10, failed_after
        assert cache.get_download(key)["state"] == "error"
        assert cache.get_download(bobs)["state"] == "running", "no page of bob's was held: nothing swept his"
    finally:
        stop(grip.web)
        grip.start_web()


def test_restarting_pushpin_clients_reconnect_with_their_last_id_and_miss_nothing(grip, alice):
    _, key = cache.init_download(alice, "report.csv")
    with stream(grip, alice, reconnect=True) as reader:
        cache.set_percentage(key, 10)
        wait_for(reader, key, 10)
        grip.proxy.stop()
        cache.set_percentage(key, 20)  # fails to publish; stored, and replayed on reconnect
        grip.proxy.start()
        seen = wait_for(reader, key, 20, timeout=20)
        assert reader.connections == 2
        cache.set_percentage(key, 30)
        seen += wait_for(reader, key, 30)
        assert 20 in percentages(seen, key)


def _in_order(values):
    """``values`` with a value repeated right after itself shown once (a repeat is no step back)."""
    return [value for i, value in enumerate(values) if i == 0 or values[i - 1] != value]


def test_two_pushpins_in_front_of_two_web_processes(grip, settings, alice):
    second = Site()
    second.proxies = grip.proxies + second.proxies
    settings.GRIP_PROXIES = second.proxies
    second.env["ASYNC_DOWNLOADS_TEST_GRIP"] = json.dumps(second.proxies)
    second.start_web()
    second.proxy.start()
    try:
        _, key = cache.init_download(alice, "report.csv")
        with stream(grip, alice) as one, stream(second, alice) as two:
            for percentage in (10, 20, 30):
                cache.set_percentage(key, percentage)
            # The look at each channel, a second after its stream, may send the centre again: at 30.
            assert _in_order(percentages(wait_for(one, key, 30), key)) == [10, 20, 30]
            assert _in_order(percentages(wait_for(two, key, 30), key)) == [10, 20, 30]
    finally:
        stop(second.web)
        second.proxy.close()


@pytest.mark.browser
def test_chromium_through_pushpin_on_wsgi_shows_progress_and_the_link(grip, browser, alice, tmp_path):
    page = browser.new_page(accept_downloads=True)
    log_in(page, grip.proxy.url, "alice", "alice-pw")
    assert page.locator("[sse-connect]").count() == 1  # GRIP mode: idle centres keep their stream
    seen = export_and_watch(page, grip.proxy.url, tmp_path)
    assert len(seen) >= 3 and seen == sorted(seen), seen
    with page.expect_download() as info:
        page.click(".async-download__link")
    path = tmp_path / "file.csv"
    info.value.save_as(path)
    assert path.read_bytes() == ("n,square\n" + "".join(f"{n},{n * n}\n" for n in range(40))).encode()

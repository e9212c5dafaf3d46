"""Tabs of one browser tell each other that a download started (async_downloads/static/async_downloads/tabs.js).

The servers here poll idle centres only once a minute, so a tab that shows another tab's
new export within two seconds heard of it from that tab, over its BroadcastChannel.
"""

import time

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from async_downloads import cache
from tests.browser import VALUE_NOW, log_in
from tests.processes import start_uvicorn, stop

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

IDLE_POLL = 60  # seconds: far longer than any wait below
QUICK = 2  # seconds within which an idle tab must show another tab's new export

# Counts, in every page: the EventSources open now, all opened so far, and the messages
# this page itself sent on a BroadcastChannel.
COUNTERS = """
(() => {
  const sources = [];
  const Native = window.EventSource;
  if (Native) {
    window.EventSource = function (url, init) {
      const source = new Native(url, init);
      sources.push(source);
      return source;
    };
    window.EventSource.prototype = Native.prototype;
    Object.assign(window.EventSource, {CONNECTING: 0, OPEN: 1, CLOSED: 2});
  }
  window.__openStreams = () => sources.filter((s) => s.readyState !== 2).length;
  window.__streams = () => sources.length;
  window.__sent = 0;
  if (window.BroadcastChannel) {
    const post = BroadcastChannel.prototype.postMessage;
    BroadcastChannel.prototype.postMessage = function (message) {
      window.__sent += 1;
      return post.call(this, message);
    };
  }
})();
"""

ROW = "#async-downloads-list .async-download"


def _server(**env):
    return start_uvicorn(ASYNC_DOWNLOADS_TEST_IDLE_POLL_INTERVAL=str(IDLE_POLL), **env)


@pytest.fixture(scope="module")
def slow_poll_server(django_db_setup, django_db_blocker):
    """A uvicorn on the test settings (SSE) whose idle centres poll once a minute."""
    process, url = _server()
    yield url
    stop(process)


@pytest.fixture(scope="module")
def polling_server(django_db_setup, django_db_blocker):
    """The same with the polling transport: no stream at all."""
    process, url = _server(ASYNC_DOWNLOADS_TEST_TRANSPORT="poll")
    yield url
    stop(process)


class Tabs:
    """Pages of one browser context (one browser's tabs), signed in as alice."""

    def __init__(self, browser, url, init_script=COUNTERS):
        self.url = url
        self.context = browser.new_context()
        self.context.add_init_script(init_script)
        self.errors = []
        self.streams = {}  # page -> event stream requests seen by Playwright

    def open(self, path="/"):
        page = self.context.new_page()
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("response", lambda r: self.errors.append(f"{r.status} {r.url}")
                if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)
        requests = self.streams[page] = []
        page.on("request", lambda r: requests.append(r.url) if "/async_downloads/events/" in r.url else None)
        if len(self.streams) == 1:
            log_in(page, self.url, "alice", "alice-pw")
            if path != "/":
                page.goto(self.url + path)
        else:
            page.goto(self.url + path)
        return page

    def close(self):
        self.context.close()


@pytest.fixture
def tabs(browser, alice):
    made = []

    def make(url, **options):
        made.append(Tabs(browser, url, **options))
        return made[-1]

    yield make
    for each in made:
        each.close()


def open_streams(page):
    return page.evaluate("window.__openStreams()")


def assert_idle(page):
    trigger = page.get_attribute("#async-downloads-connection", "hx-trigger")
    assert f"every {IDLE_POLL}s" in trigger and "async-downloads:started from:body" in trigger
    assert page.locator("[sse-connect]").count() == 0
    assert open_streams(page) == 0


def start(page, selector, path):
    """Click ``selector``, which starts an export by a POST to a URL with ``path`` in it; when the server answered."""
    with page.expect_response(lambda r: r.request.method == "POST" and path in r.url):
        page.click(selector)
    return time.monotonic()


def wait_for_row(page, since, what, selector=ROW):
    """The new row shows in ``page`` within QUICK seconds of ``since``."""
    try:
        page.wait_for_selector(selector, state="attached", timeout=QUICK * 1000 + 3000)
    except PlaywrightTimeout:
        pytest.fail(f"{what} did not show the new export within {QUICK + 3} s (its idle poll: {IDLE_POLL} s)")
    elapsed = time.monotonic() - since
    assert elapsed < QUICK, f"{what} showed the new export {elapsed:.1f} s after the server started it"


def wait_for_progress(page):
    """The tab is live: its progress bar moves (or the export ends), then the link shows."""
    page.wait_for_function(f"Number(({VALUE_NOW})) > 0", timeout=15_000)
    before = int(page.evaluate(VALUE_NOW))
    page.wait_for_function(f"Number(({VALUE_NOW})) > {before} || !({VALUE_NOW})", timeout=15_000)
    page.wait_for_selector(".async-download__link", state="attached", timeout=30_000)


def test_an_idle_tab_shows_an_export_started_with_htmx_in_another_tab(tabs, celery_worker, slow_poll_server):
    browser_tabs = tabs(slow_poll_server)
    a = browser_tabs.open()
    b = browser_tabs.open()
    for page in (a, b):
        assert_idle(page)
        assert page.locator(ROW).count() == 0

    # 204 with HX-Trigger: async-downloads:started, no page load
    started = start(b, "text=Export with htmx", "/export/htmx/")
    wait_for_row(b, started, "the tab that started it")
    wait_for_row(a, started, "the other tab")
    assert a.locator("[sse-connect]").count() == 1  # then it connected as it does today

    wait_for_progress(a)
    b.wait_for_selector(".async-download__link", state="attached", timeout=10_000)
    for page in (a, b):
        page.wait_for_selector("[sse-connect]", state="detached", timeout=5_000)
        assert open_streams(page) == 0  # idle again: no stream held
        assert page.evaluate("window.__streams()") == 1 == len(browser_tabs.streams[page])
    assert a.evaluate("window.__sent") == 0  # it relayed, and sent nothing on
    assert b.evaluate("window.__sent") in (1, 2)  # the event, and maybe its going busy after a second
    assert browser_tabs.errors == []


def test_idle_tabs_show_an_export_whose_page_load_came_back_busy(tabs, celery_worker, slow_poll_server):
    browser_tabs = tabs(slow_poll_server)
    a = browser_tabs.open()
    c = browser_tabs.open("/other/")
    b = browser_tabs.open()
    for page in (a, b, c):
        assert_idle(page)

    # A form post, then the redirected page loads with the busy centre.
    started = start(b, "text=Export squares", "/export/")
    b.wait_for_url(f"{slow_poll_server}/")
    for page in (a, c):
        wait_for_row(page, started, "an idle tab")

    wait_for_progress(c)
    for page in (a, b, c):
        page.wait_for_selector(".async-download__link", state="attached", timeout=10_000)
        page.wait_for_selector("[sse-connect]", state="detached", timeout=5_000)
        assert open_streams(page) == 0
        assert len(browser_tabs.streams[page]) == 1
    assert b.evaluate("window.__sent") == 1  # its page load, once
    assert a.evaluate("window.__sent") == c.evaluate("window.__sent") == 0
    assert browser_tabs.errors == []


def test_a_retry_in_one_tab_reaches_the_idle_others(tabs, celery_worker, slow_poll_server, alice):
    from async_downloads.shortcuts import init_generic_csv_download
    from tests.testapp.tasks import slow_export

    _, key = init_generic_csv_download(slow_export, alice, "Squares", rows=100)
    assert cache.cancel_download(key)
    browser_tabs = tabs(slow_poll_server)
    a = browser_tabs.open()
    b = browser_tabs.open()
    for page in (a, b):
        assert_idle(page)
        assert page.locator(".async-download--cancelled").count() == 1

    b.click(".async-downloads__toggle")
    # The new row, with HX-Trigger: async-downloads:started.
    started = start(b, ".async-download__retry", "/retry/")
    wait_for_row(a, started, "the other tab", f"{ROW}:not(.async-download--cancelled)")
    a.wait_for_selector(".async-download--cancelled", state="detached", timeout=5_000)  # the old row went
    for page in (a, b):
        page.wait_for_selector(".async-download__link", state="attached", timeout=20_000)
    assert browser_tabs.errors == []


def test_tabs_on_the_polling_transport_hear_of_it_too(tabs, celery_worker, polling_server):
    browser_tabs = tabs(polling_server)
    a = browser_tabs.open()
    b = browser_tabs.open()
    for page in (a, b):
        assert_idle(page)

    started = start(b, "text=Export with htmx", "/export/htmx/")
    wait_for_row(a, started, "the other tab")
    assert "idle=" not in a.get_attribute("#async-downloads-connection", "hx-get")  # polling now
    wait_for_progress(a)
    for page in (a, b):
        page.wait_for_selector(".async-download__link", state="attached", timeout=10_000)
        assert page.evaluate("window.__streams()") == 0 == len(browser_tabs.streams[page])
    assert a.evaluate("window.__sent") == 0
    assert browser_tabs.errors == []


def test_without_broadcast_channel_nothing_breaks(tabs, celery_worker, web_server):
    """Tabs keep the idle poll (3 s on the suite's own server), and a tab's own start connects at once."""
    browser_tabs = tabs(web_server, init_script="delete window.BroadcastChannel;" + COUNTERS)
    a = browser_tabs.open()
    b = browser_tabs.open()
    assert a.evaluate("typeof BroadcastChannel") == "undefined"
    answered = start(b, "text=Export with htmx", "/export/htmx/")
    b.wait_for_selector("[sse-connect]", state="attached", timeout=5_000)
    assert time.monotonic() - answered < 1  # the started event, not its 3 s idle poll
    a.wait_for_selector(ROW, state="attached", timeout=3_000 + 3_000)  # its idle poll
    for page in (a, b):
        page.wait_for_selector(".async-download__link", state="attached", timeout=20_000)
    assert browser_tabs.errors == []

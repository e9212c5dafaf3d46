"""Pages still running the jQuery polling script of 0.5, in a real headless Chromium.

The page (tests/testapp/templates/testapp/legacy.html) includes the centre without
{% async_downloads_head %} and loads jQuery (vendored from npm under
tests/testapp/static/legacy_0_5/) and a stand-in for the old script, which polls
``ajax_update`` and posts to ``ajax_clear_download``: no htmx, no event stream.
"""

import time
from urllib.parse import urlsplit

import pytest

from async_downloads import cache
from tests.browser import log_in

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

UPDATE_PATH = "/async_downloads/ajax_update/"
CLEAR_PATH = "/async_downloads/ajax_clear_download/"
CENTRE = "#async-downloads"
IN_PROGRESS = "document.querySelector('#async-downloads').classList.contains('in-progress')"


def value_now(key):
    return f"document.querySelector('#download-{key} [role=progressbar]')?.getAttribute('aria-valuenow') ?? null"


SPINNER = "getComputedStyle(document.querySelector('#async-downloads-indicator'), '::before').content"


def spinner_shown(page):
    return page.evaluate(SPINNER) != "none"


# Counts, in the page, the requests the script opens: exact, unlike events reaching the test later.
COUNT_XHR = """
window.ajaxOpened = [];
const open = XMLHttpRequest.prototype.open;
XMLHttpRequest.prototype.open = function (method, url) {
  window.ajaxOpened.push(method + " " + new URL(url, location.href).pathname);
  return open.apply(this, arguments);
};
"""


def legacy_page(browser, base_url, user, query=""):
    """Signed in as ``user``; returns the page and the answers (method, path, status) it gets."""
    page = browser.new_page()
    log_in(page, base_url, user.username, f"{user.username}-pw")
    answers = []
    page.on("response", lambda r: answers.append((r.request.method, urlsplit(r.url).path, r.status)))
    page.add_init_script(COUNT_XHR)
    page.goto(f"{base_url}/legacy/{query}")
    return page, answers


def polls(page):
    return page.evaluate("window.ajaxOpened").count(f"GET {UPDATE_PATH}")


def eventually(page, condition, timeout=5):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        page.wait_for_timeout(50)  # Playwright delivers events while it waits


def finished(user, filename):
    _, key = cache.init_download(user, filename)
    cache.save_download(key, [["n"], [1]])
    return key


@pytest.mark.parametrize("query", ["", "?tag=1"], ids=["include", "download_centre tag"])
def test_old_script_fills_updates_stops_and_clears(browser, web_server, alice, query, tmp_path):
    done = finished(alice, "done.csv")
    _, running = cache.init_download(alice, "running.csv", name="Running export")
    cache.set_percentage(running, 10)

    page, answers = legacy_page(browser, web_server, alice, query)
    assert page.evaluate("typeof window.htmx") == "undefined"  # the old page: no htmx
    assert page.locator(f"{CENTRE} .dropdown-menu #async-downloads-list").count() == 1

    # The list fills from the legacy JSON, and polls go on while something runs.
    page.wait_for_selector(f"{CENTRE} .dropdown-menu #download-{running}", state="attached", timeout=10_000)
    page.wait_for_function(IN_PROGRESS, timeout=10_000)
    assert page.locator(f"#download-{done} .async-download__link").count() == 1
    assert page.locator(".async-downloads__legacy-hook").count() == 0  # the script replaced the menu's content
    assert spinner_shown(page)

    page.click(".async-downloads__toggle")
    assert page.locator(f"#download-{running}").is_visible()  # not hidden by Bootstrap's .dropdown-menu rule
    assert page.locator(f"#download-{done} .download-clear").is_visible()
    assert not page.locator(f"#download-{running} .async-download__cancel").is_visible()  # it needs htmx
    page.screenshot(path=tmp_path / "legacy-running.png")

    cache.set_percentage(running, 60)
    page.wait_for_function(f"({value_now(running)}) === '60'", timeout=5_000)
    assert page.evaluate(IN_PROGRESS)
    assert polls(page) >= 2

    # Finished: the link shows, the class goes, and polling stops.
    cache.save_download(running, [["n"], [1]])
    page.wait_for_selector(f"#download-{running} .async-download__link", state="attached", timeout=5_000)
    page.wait_for_function(f"!({IN_PROGRESS})", timeout=5_000)
    assert not spinner_shown(page)  # the busy indicator rendered with the page is not left spinning
    assert not page.locator(".async-downloads__count").is_visible()
    stopped = polls(page)
    page.wait_for_timeout(2_500)
    assert polls(page) == stopped, "the script kept polling with nothing in progress"

    # Clear: the old script posts the row's data-filepath with the CSRF cookie's token, then polls once.
    page.click(f"#download-{done} .download-clear")
    page.wait_for_selector(f"#download-{done}", state="detached", timeout=5_000)
    assert cache.get_download(done) is None
    assert page.locator(f"#download-{running}").count() == 1
    assert polls(page) == stopped + 1
    eventually(page, lambda: ("POST", CLEAR_PATH, 200) in answers)
    assert [a for a in answers if a[1].startswith(("/legacy/", "/async_downloads/", "/static/")) and a[2] >= 400] == []
    page.screenshot(path=tmp_path / "legacy.png")


def test_old_script_on_a_page_loaded_while_nothing_runs(browser, web_server, alice):
    done = finished(alice, "done.csv")
    page, _ = legacy_page(browser, web_server, alice)
    page.wait_for_selector(f"#download-{done}", state="attached", timeout=10_000)
    page.wait_for_timeout(1_500)
    assert polls(page) == 1  # one look, no polling
    assert not page.evaluate(IN_PROGRESS)
    assert not spinner_shown(page)


def test_old_script_clears_the_last_row(browser, web_server, alice):
    done = finished(alice, "done.csv")
    page, _ = legacy_page(browser, web_server, alice)
    page.click(".async-downloads__toggle")
    page.click(f"#download-{done} .download-clear")
    page.wait_for_selector(".async-downloads__empty", timeout=5_000)
    assert cache.get_downloads(alice) == []


def test_page_with_the_new_head_ignores_the_legacy_hooks(browser, web_server, alice):
    """The htmx page has the same markup: its indicator and list stay live and styled as before."""
    _, running = cache.init_download(alice, "running.csv")
    cache.set_percentage(running, 10)
    page = browser.new_page()
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    log_in(page, web_server, "alice", "alice-pw")
    page.wait_for_selector("[sse-connect]", state="attached")
    assert page.evaluate("typeof window.htmx") == "object"
    assert spinner_shown(page)
    assert page.locator(".async-downloads__count").inner_text() == "1"

    page.click(".async-downloads__toggle")
    assert page.locator(f"#download-{running} .async-download__cancel").is_visible()
    time.sleep(0.5)  # the stream is open
    cache.set_percentage(running, 70)
    page.wait_for_function(f"({value_now(running)}) === '70'", timeout=10_000)
    cache.save_download(running, [["n"], [1]])
    page.wait_for_selector(f"#download-{running} .async-download__link", state="visible", timeout=10_000)
    page.wait_for_selector("[sse-connect]", state="detached", timeout=5_000)
    assert page.locator(".async-downloads__legacy-hook").count() == 1  # htmx swaps the list by id only
    assert not page.evaluate(IN_PROGRESS)
    # htmx settles the swapped indicator's new class 20 ms after the swap (htmx.config.defaultSettleDelay).
    page.wait_for_function(f"{SPINNER} === 'none'", timeout=2_000)
    assert not any(UPDATE_PATH in url for url in requests)

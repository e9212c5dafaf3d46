"""End to end in a real headless Chromium: export, watch progress, download."""

import time

import pytest

from async_downloads import cache
from tests.browser import VALUE_NOW, export_and_watch, log_in

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


def test_export_progress_and_download(browser, celery_worker, web_server, alice, tmp_path):
    page = browser.new_page(accept_downloads=True)
    responses = []
    page.on("response", lambda r: responses.append(f"{r.status} {r.url}"))
    log_in(page, web_server, "alice", "alice-pw")
    assert page.locator("[sse-connect]").count() == 0  # nothing running: no stream

    seen = export_and_watch(page, web_server, tmp_path, lambda: f"responses: {responses}")
    assert len(seen) >= 3, seen
    assert seen == sorted(seen), seen
    assert page.locator("[sse-connect]").count() == 0  # the finished centre closed its stream
    page.screenshot(path=tmp_path / "complete.png")

    with page.expect_download() as info:
        page.click(".async-download__link")
    download = info.value
    path = tmp_path / "file.csv"
    download.save_as(path)
    expected = "n,square\n" + "".join(f"{n},{n * n}\n" for n in range(40))
    assert path.read_bytes() == expected.encode()
    assert download.suggested_filename.startswith("Squares_") and download.suggested_filename.endswith(".csv")

    (record,) = cache.get_downloads(alice)
    assert record["state"] == "complete"


def start_export(user, rows, pause=0.05):
    from async_downloads.shortcuts import init_generic_csv_download
    from tests.testapp.tasks import slow_export

    return init_generic_csv_download(slow_export, user, "Squares", rows=rows, pause=pause)[1]


def events_requests(page):
    requests = []
    page.on("request", lambda r: requests.append(r.url) if "/async_downloads/events/" in r.url else None)
    return requests


def test_idle_tabs_hold_no_stream_so_eight_tabs_all_load(browser, celery_worker, web_server, alice):
    key = start_export(alice, rows=2, pause=0)
    deadline = time.monotonic() + 20
    while cache.get_download(key)["state"] != "complete":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    context = browser.new_context()
    log_in(context.new_page(), web_server, "alice", "alice-pw")
    pages = [context.new_page() for _ in range(8)]
    for page in pages:
        page.goto(f"{web_server}/", timeout=10_000)
        assert page.locator(".async-download__link").count() == 1
    assert sum(page.locator("[sse-connect]").count() for page in pages) == 0
    context.close()


def test_an_idle_tab_connects_when_a_download_starts_elsewhere(browser, celery_worker, web_server, alice):
    page = browser.new_page()
    requests = events_requests(page)
    log_in(page, web_server, "alice", "alice-pw")
    assert page.locator("[sse-connect]").count() == 0
    started = time.monotonic()
    start_export(alice, rows=120)  # about 6 s of work, started outside this tab
    page.wait_for_selector("[sse-connect]", state="attached", timeout=10_000)
    assert time.monotonic() - started < 3 + 2  # the idle poll interval of the test settings, plus slack
    page.wait_for_selector(".async-download__link", state="attached", timeout=20_000)
    page.wait_for_selector("[sse-connect]", state="detached", timeout=5_000)
    assert len(requests) == 1


def test_an_idle_tab_shows_an_export_that_ran_between_two_polls(browser, celery_worker, web_server, alice):
    page = browser.new_page()
    log_in(page, web_server, "alice", "alice-pw")
    key = start_export(alice, rows=2, pause=0)
    page.wait_for_selector(f"#download-{key} .async-download__link", state="attached", timeout=10_000)
    assert page.locator("[sse-connect]").count() == 0


def test_boosted_navigation_keeps_the_open_stream(browser, celery_worker, web_server, alice):
    start_export(alice, rows=160)  # about 8 s
    page = browser.new_page()
    requests = events_requests(page)
    log_in(page, web_server, "alice", "alice-pw")
    page.goto(f"{web_server}/?boost=1")
    page.wait_for_function(f"Number(({VALUE_NOW})) > 0", timeout=10_000)
    page.wait_for_timeout(500)  # let Playwright deliver the request events
    opened = len(requests)  # one per full page load so far (logging in loaded one too)
    assert opened >= 1

    page.click("text=Other page")
    page.wait_for_selector("h1:text('Other page')")
    before = int(page.evaluate(VALUE_NOW) or 0)
    page.wait_for_function(f"Number(({VALUE_NOW})) > {before}", timeout=10_000)  # still live
    page.wait_for_timeout(500)
    assert len(requests) == opened  # the stream was not reopened


def test_an_export_started_with_htmx_connects_the_centre_at_once(browser, celery_worker, web_server, alice):
    page = browser.new_page()
    requests = events_requests(page)
    log_in(page, web_server, "alice", "alice-pw")
    clicked = time.monotonic()
    page.click("text=Export with htmx")  # hx-post with the CSRF header from <body hx-headers>
    page.wait_for_selector("[sse-connect]", state="attached", timeout=5_000)
    assert time.monotonic() - clicked < 2  # the started event, not the 3 s idle poll
    page.wait_for_selector(".async-download__link", state="attached", timeout=20_000)
    assert len(requests) == 1

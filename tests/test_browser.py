"""End to end in a real headless Chromium: export, watch progress, download."""

import time

import pytest
from playwright.sync_api import sync_playwright

from async_downloads import cache
from tests.browser import launch, log_in

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


VALUE_NOW = "document.querySelector('[role=progressbar]')?.getAttribute('aria-valuenow') ?? null"


@pytest.fixture
def browser(monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the test's own
    # ORM calls are still synchronous and safe.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


def test_export_progress_and_download(browser, celery_worker, web_server, alice, tmp_path):
    page = browser.new_page(accept_downloads=True)
    responses = []
    page.on("response", lambda r: responses.append(f"{r.status} {r.url}"))
    log_in(page, web_server, "alice", "alice-pw")
    assert page.locator("[sse-connect]").count() == 0  # nothing running: no stream

    page.click("text=Export squares")
    page.wait_for_url(f"{web_server}/")
    page.click(".async-downloads__toggle")
    seen = []
    deadline = time.monotonic() + 30
    while not page.locator(".async-download__link").count():
        if time.monotonic() > deadline:
            page.screenshot(path=tmp_path / "no-link.png")
            pytest.fail(f"No link after 30 s; progress seen: {seen}; responses: {responses}")
        value = page.evaluate(VALUE_NOW)
        if value is not None and (not seen or seen[-1] != int(value)):
            seen.append(int(value))
        time.sleep(0.02)
    assert len(seen) >= 3, seen
    assert seen == sorted(seen), seen
    assert page.locator("#async-downloads-status").inner_text().endswith("is ready to download.")
    assert page.locator("[sse-connect]").count() == 0  # the finished centre closed its stream
    assert page.locator(".async-downloads__menu").get_attribute("open") is not None  # still open
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

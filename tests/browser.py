"""Real headless Chromium (Debian's package) driven by Playwright."""

import os
import time

import pytest

from devtools import browser


def chromium_path():
    path = browser.chromium_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is not installed (just system-deps installs it).")
        pytest.skip("Chromium is not installed: run `just system-deps`.")
    return path


def launch(playwright):
    return browser.launch(playwright, chromium_path())


def log_in(page, base_url, username, password):
    page.goto(f"{base_url}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button")
    page.wait_for_url(f"{base_url}/")


VALUE_NOW = "document.querySelector('[role=progressbar]')?.getAttribute('aria-valuenow') ?? null"


def export_and_watch(page, base_url, tmp_path, context=""):
    """Click "Export squares", open the centre and record aria-valuenow until the link shows.

    Returns the distinct progress values seen, in order.
    """
    page.click("text=Export squares")
    page.wait_for_url(f"{base_url}/")
    page.click(".async-downloads__toggle")
    seen = []
    deadline = time.monotonic() + 30
    while not page.locator(".async-download__link").count():
        if time.monotonic() > deadline:
            page.screenshot(path=tmp_path / "no-link.png")
            pytest.fail(f"No link after 30 s; progress seen: {seen}; {context()}")
        value = page.evaluate(VALUE_NOW)
        if value is not None and (not seen or seen[-1] != int(value)):
            seen.append(int(value))
        time.sleep(0.02)
    assert page.locator("#async-downloads-status").inner_text().endswith("is ready to download.")
    assert page.locator(".async-downloads__menu").get_attribute("open") is not None  # still open
    return seen

#!/usr/bin/env python
"""Screenshots of the download centre, for the default templates and each showcase set.

``just screenshots`` (or ``python sample_site/screenshots.py [SET...]`` from the repository
root, after migrate and seed_demo) runs, for each set, the demo's real processes (``run_demo.py``:
uvicorn and a Celery worker, with ``SHOWCASE`` set) on a free port,
and drives headless Chromium through four states:

    idle        nothing running
    exporting   the panel open, the slow report in progress
    complete    the report finished, with its download link
    failed      the export that fails halfway, with its error message

and writes ``docs/screenshots/<set>-<state>.png``.

Everything runs against a private ``redis-server`` and a media folder of its own, so
a ``just demo`` running on the same machine is left alone.
"""

import argparse
import contextlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Import the project from the repository root, not from inside sample_site/ (whose
# celery.py would shadow the celery package).
sys.path[0] = str(ROOT)

from devtools.browser import chromium_path, launch  # noqa: E402
from sample_site.demo_processes import SETS, private_redis, site  # noqa: E402
from sample_site.shop.demo import DEMO_USERS  # noqa: E402

OUT_DIR = ROOT / "docs" / "screenshots"
VIEWPORT = {"width": 1100, "height": 700}
USERNAME, PASSWORD, _ = DEMO_USERS[0]
SLOW_REPORT = "Start report"  # Daily revenue: about 30 s of smooth progress
FAILING_EXPORT = "Try it"  # Stock levels: fails halfway
ERROR_TEXT = "could not be exported"
TIMEOUT = 90

# The value a progress element exposes: <progress value> or role=progressbar's aria-valuenow.
PROGRESS_VALUE = """() => {
  const el = document.querySelector('#async-downloads-list progress, #async-downloads-list [role=progressbar]');
  if (!el) return null;
  if (el.tagName === 'PROGRESS') return el.hasAttribute('value') ? Number(el.value) : null;
  const now = el.getAttribute('aria-valuenow');
  return now === null ? null : Number(now);
}"""
ROWS = "#async-downloads-list li[id^='download-']"
LINK = "#async-downloads-list a[href*='/async_downloads/download/']"
CLEAR = "#async-downloads-list button[hx-post*='/async_downloads/clear/']"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="*", metavar="SET", help=f"a template set: {', '.join(SETS)} (default: all)")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="where the PNGs go (default: %(default)s)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.sets if name not in SETS]
    if unknown:
        parser.error(f"unknown set {unknown[0]!r}; use one of: {', '.join(SETS)}.")
    args.out.mkdir(parents=True, exist_ok=True)
    with private_redis() as redis_url, browser() as chromium:
        for name in args.sets or SETS:
            print(f"{name}:", flush=True)
            with site(name, redis_url) as demo:
                for path in photograph(chromium, demo.url, name, args.out):
                    print(f"  {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}", flush=True)
    return 0


@contextlib.contextmanager
def browser():
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        sys.exit("Chromium is not installed: run `just system-deps` (Debian: apt-get install chromium).")
    with sync_playwright() as playwright:
        chromium = launch(playwright, executable)
        try:
            yield chromium
        finally:
            chromium.close()


def photograph(chromium, url, showcase, out):
    page = chromium.new_page(viewport=VIEWPORT)
    page.set_default_timeout(TIMEOUT * 1000)
    try:
        log_in(page, url)
        yield shoot(page, out, showcase, "idle")

        start_export(page, SLOW_REPORT)
        open_centre(page)
        wait_until(page, f"({PROGRESS_VALUE})() >= 40", "progress to reach 40%")
        yield shoot(page, out, showcase, "exporting")

        page.wait_for_selector(LINK)
        yield shoot(page, out, showcase, "complete")

        clear_all(page)
        start_export(page, FAILING_EXPORT)
        open_centre(page)
        page.wait_for_selector(f"#async-downloads-list :text('{ERROR_TEXT}')")
        yield shoot(page, out, showcase, "failed")
        clear_all(page)
    finally:
        page.close()


def log_in(page, url):
    page.goto(f"{url}/login/")
    page.fill("input[name=username]", USERNAME)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/")


def start_export(page, label):
    page.get_by_role("button", name=label).click()
    page.wait_for_load_state()
    page.wait_for_selector(ROWS, state="attached")


def open_centre(page):
    """Open the centre's <details>, in the sets that have one (the toasts are always shown)."""
    details = page.locator("#async-downloads-centre details")
    if details.count() and details.get_attribute("open") is None:
        details.locator("summary").click()


def clear_all(page):
    """Clear every download with its clear button, as a user would."""
    open_centre(page)
    while (left := page.locator(CLEAR).count()) > 0:
        page.locator(CLEAR).first.click()
        page.wait_for_function(f"n => document.querySelectorAll({CLEAR!r}).length < n", arg=left)


def wait_until(page, expression, what):
    try:
        page.wait_for_function(expression, timeout=TIMEOUT * 1000)
    except Exception as error:
        raise RuntimeError(f"Timed out waiting for {what}.") from error


def shoot(page, out, showcase, state):
    page.mouse.move(0, VIEWPORT["height"] - 1)  # no hover effects in the picture
    page.wait_for_timeout(600)  # let bars and swaps settle
    path = out / f"{showcase}-{state}.png"
    page.screenshot(path=path)
    return path


if __name__ == "__main__":
    sys.exit(main())

"""The demo, for real: the sample site's processes driven by headless Chromium, its seeding, its
supervisor (``sample_site/run_demo.py``) when a process dies, and `just demo` from a fresh clone on a
terminal, stopped with Ctrl-C while an export runs.

Nothing here touches a Redis that may hold somebody's data: each test starts a private
``redis-server`` on a free port. The sample site runs on a temporary SQLite database and
media folder, seeded with a small dataset so that the whole file stays quick.
"""

import contextlib
import csv
import datetime
import html
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from tests.browser import launch, log_in
from tests.sse_client import StreamReader

ROOT = Path(__file__).resolve().parent.parent


def _load(relative_path, name):
    """A module of the sample site, loaded from its file.

    Importing it as ``sample_site.…`` would run ``sample_site/__init__.py``, which creates the
    site's Celery app and makes it the current app of this (the test suite's) process.
    """
    spec = importlib.util.spec_from_file_location(name, ROOT / relative_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo_processes = _load("sample_site/demo_processes.py", "_sample_site_demo_processes")
USERNAME, PASSWORD, _ = _load("sample_site/shop/demo.py", "_sample_site_demo").DEMO_USERS[0]

ORDERS, CUSTOMERS, PRODUCTS = 3000, 200, 50
# What each set's test filters by: a status, and for one set a customer name as well.
FILTERS = {
    "default": {"status": "shipped"},
    "bootstrap5": {"status": "delivered", "customer": "smith"},
    "toast": {"status": "paid"},
    "semantic": {"status": "cancelled"},
}
ORDER_HEADER = ["order", "created", "customer", "email", "sku", "product", "quantity", "unit price", "total", "status"]
STATUS_LABELS = {"pending": "Pending", "paid": "Paid", "shipped": "Shipped", "delivered": "Delivered",
                 "cancelled": "Cancelled", "refunded": "Refunded"}
TIMEOUT = 60  # seconds, for any one step in the browser

LIST = "#async-downloads-list"
ROWS = f"{LIST} li[id^='download-']"
LINK = "a[href*='/async_downloads/download/']"  # in a row
# In a row: the progress element once it shows a value (the download runs).
RUNNING = "progress[value], [role=progressbar][aria-valuenow]"
SLOW_REPORT, FAILING_EXPORT = "Start report", "Try it"  # buttons of the sample site's other exports
# The one set whose test also waits (about 5 s) for an export to fail and retries it; the others
# retry a cancelled export, through the same Retry button.
FAILING_RETRY_SET = "bootstrap5"
ZIP_EXPORT, ZIP_SET = "Export zip", "default"  # the zip of per-customer CSVs, saved with file=

# Every change of the download list on a page, as the browser saw it: rows, progress value, link.
RECORD_TIMELINE = """
window.__timeline = [];
(() => {
  const snapshot = () => {
    const list = document.getElementById('async-downloads-list');
    if (!list) return;
    const rows = list.querySelectorAll("li[id^='download-']").length;
    const link = list.querySelector("a[href*='/async_downloads/download/']") !== null;
    const bar = list.querySelector('progress, [role=progressbar]');
    let value = null;
    if (bar && bar.tagName === 'PROGRESS') value = bar.hasAttribute('value') ? Number(bar.value) : null;
    else if (bar && bar.hasAttribute('aria-valuenow')) value = Number(bar.getAttribute('aria-valuenow'));
    const entry = {rows, link, progress: bar !== null, value};
    const last = window.__timeline[window.__timeline.length - 1];
    if (!last || JSON.stringify(last) !== JSON.stringify(entry)) window.__timeline.push(entry);
  };
  new MutationObserver(snapshot).observe(document, {subtree: true, childList: true, attributes: true});
  document.addEventListener('DOMContentLoaded', snapshot);
})();
"""

COUNT_ORDERS = """
import json
from sample_site.shop.models import Order
counts = {}
for name, params in json.loads(FILTERS).items():
    orders = Order.objects.filter(status=params["status"])
    if params.get("customer"):
        orders = orders.filter(customer__name__icontains=params["customer"])
    counts[name] = orders.count()
print(json.dumps(counts))
"""


def need_redis_server():
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed (apt-get install redis-server): these tests run one of their own."
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def need_pushpin():
    if shutil.which("pushpin") is None:
        message = "Pushpin is not installed (apt-get install pushpin, or just system-deps)."
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


# --- the demo's processes, driven by Chromium ---------------------------------------------


@pytest.fixture(scope="module")
def redis_url():
    need_redis_server()
    with demo_processes.private_redis() as url:
        yield url


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory, redis_url):
    """A temporary database, migrated and seeded small; the orders each set's filter should export."""
    folder = tmp_path_factory.mktemp("sample-site")
    database, var_dir = folder / "db.sqlite3", folder / "var"
    env = demo_processes.sample_env(redis_url, database=database)
    demo_processes.manage("migrate", "--verbosity", "0", env=env)
    demo_processes.manage("seed_demo", "--orders", ORDERS, "--customers", CUSTOMERS, "--products", PRODUCTS, env=env)
    # The ORM of the sample site, in a process of its own (this one is configured for the tests).
    output = demo_processes.manage("shell", "-c", f"FILTERS = {json.dumps(FILTERS)!r}\n{COUNT_ORDERS}", env=env)
    expected = json.loads(output.strip().splitlines()[-1])  # after Django's note on automatic imports
    assert all(expected.values()), f"Each filter should match some orders: {expected}"
    return {"database": database, "var_dir": var_dir, "expected": expected}


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("showcase", demo_processes.SETS)
def test_login_filter_export_progress_download_cancel_retry(showcase, redis_url, sample_data, chromium, tmp_path):
    params = FILTERS[showcase]
    expected = sample_data["expected"][showcase]
    with demo_processes.site(showcase, redis_url, database=sample_data["database"],
                             var_dir=sample_data["var_dir"]) as site:
        context = chromium.new_context(accept_downloads=True, viewport={"width": 1200, "height": 800})
        context.set_default_timeout(TIMEOUT * 1000)
        context.add_init_script(RECORD_TIMELINE)
        page = context.new_page()
        try:
            csv_path, shown = export_filtered_orders(page, site.url, params, tmp_path)
            cancel_and_retry(page, failing=showcase == FAILING_RETRY_SET)
            zip_path = export_zip(page, tmp_path) if showcase == ZIP_SET else None
        except Exception:
            with contextlib.suppress(Exception):
                page.screenshot(path=tmp_path / "failure.png")
            print(f"--- the site's output ({showcase}; screenshot: {tmp_path / 'failure.png'}) ---\n{site.output()}")
            raise
        finally:
            context.close()

    assert shown == expected, f"The page shows {shown} orders for {params}, the ORM counts {expected}"
    with open(csv_path, newline="", encoding="utf-8") as file:
        header, *rows = list(csv.reader(file))
    assert header == ORDER_HEADER
    assert len(rows) == expected, f"{len(rows)} data rows in the CSV, {expected} orders match {params}"
    assert {row[-1] for row in rows} == {STATUS_LABELS[params["status"]]}
    if params.get("customer"):
        assert all(params["customer"] in row[2].lower() for row in rows)
    assert len({row[0] for row in rows}) == len(rows)  # no order twice
    if zip_path:
        with zipfile.ZipFile(zip_path) as archive:
            names = archive.namelist()
            first = archive.read(names[0]).decode()
        assert len(names) == 50 and all(re.fullmatch(r"\d\d-[a-z0-9-]+\.csv", name) for name in names)
        assert first.splitlines()[0].split(",") == ORDER_HEADER and len(first.splitlines()) > 1


def export_filtered_orders(page, url, params, folder):
    """Log in, filter, export, follow the download in the centre and save the file.

    Returns the file's path and the number of orders the page said match the filter.
    """
    log_in(page, url, USERNAME, PASSWORD)

    page.select_option("select[name=status]", params["status"])
    if params.get("customer"):
        page.fill("input[name=customer]", params["customer"])
    page.get_by_role("button", name="Filter", exact=True).click()
    page.wait_for_url(re.compile(rf"\?(.*&)?status={params['status']}"))
    shown = int(page.locator(".export-bar strong").inner_text().replace(",", ""))

    page.get_by_role("button", name=re.compile(r"^Export [\d,]+ orders as CSV$")).click()
    # Back on the filtered page; its query now holds the filter only (no empty fields).
    page.wait_for_url(f"{url}/?{urlencode(params)}")
    name = f"Orders ({params['status']}"
    row = page.locator(ROWS).filter(has_text=name)
    row.wait_for(state="attached")

    open_centre(page)
    row.locator(LINK).wait_for(state="visible")
    assert page.locator(ROWS).count() == 1
    timeline = page.evaluate("window.__timeline")
    check_timeline(timeline)

    with page.expect_download() as info:
        row.locator(LINK).click()
    download = info.value
    assert download.failure() is None
    assert download.suggested_filename.endswith(".csv")
    path = folder / download.suggested_filename
    download.save_as(path)
    return path, shown


def export_zip(page, folder):
    """Start the zip export (started by start_download), and save the file once its link shows."""
    with page.expect_navigation():
        page.get_by_role("button", name=ZIP_EXPORT, exact=True).click()
    open_centre(page)
    row = page.locator(ROWS).filter(has_text="Top 50 customers")
    row.locator(LINK).wait_for(state="visible")
    with page.expect_download() as info:
        row.locator(LINK).click()
    path = folder / info.value.suggested_filename
    info.value.save_as(path)
    return path


def cancel_and_retry(page, failing):
    """Cancel the slow report while it runs, retry it, and cancel the new run as well.

    With ``failing``, also retry the stock levels export once it failed (about 5 s after it
    started) and cancel that run. Every row changes in place, and the worker is idle at the end.
    """
    for label in (FAILING_EXPORT, SLOW_REPORT) if failing else (SLOW_REPORT,):
        with page.expect_navigation():
            page.get_by_role("button", name=label, exact=True).click()
    open_centre(page)
    report = page.locator(ROWS).filter(has_text="Daily revenue")
    cancel(report)
    cancel(retry(report, "Daily revenue"))
    if failing:
        failed = page.locator(ROWS).filter(has_text="Stock levels")
        failed.get_by_text("could not be exported").wait_for()
        assert not failed.get_by_role("button", name=re.compile(r"^Cancel ")).count()
        cancel(retry(failed, "Stock levels"))


def cancel(row):
    """Wait until ``row`` runs, click its Cancel button, and see it cancelled, with a Retry button."""
    row.locator(RUNNING).wait_for(state="attached")
    cancelled = row.page.locator(f"[id='{row.get_attribute('id')}']")
    row.get_by_role("button", name=re.compile(r"^Cancel ")).click()
    cancelled.get_by_text("Cancelled", exact=True).wait_for()
    # Waits, not counts: a progress message sent just before the cancel may still swap in once.
    cancelled.locator(RUNNING).wait_for(state="detached")
    cancelled.get_by_role("button", name=re.compile(r"^Cancel ")).wait_for(state="detached")
    cancelled.get_by_role("button", name=re.compile(r"^Retry ")).wait_for()


def retry(row, name):
    """Click the Retry button of ``row`` (named ``name``…); the row of the new run, once it runs."""
    old_id = row.get_attribute("id")
    row.get_by_role("button", name=re.compile(rf"^Retry {re.escape(name)}")).click()
    new = row.page.locator(f"{ROWS}:not([id='{old_id}'])").filter(has_text=name)
    new.locator(RUNNING).wait_for(state="attached")
    row.page.locator(f"[id='{old_id}']").wait_for(state="detached")  # the new run replaced it
    return new


def open_centre(page):
    """Open the centre's <details>, in the sets that have one (the toasts are always shown)."""
    # A click must not begin on the indicator: a pushed update may replace it before the release.
    indicator = "getComputedStyle(document.getElementById('async-downloads-indicator')).pointerEvents"
    assert page.evaluate(indicator) == "none"
    details = page.locator("#async-downloads-centre details")
    if details.count() and details.get_attribute("open") is None:
        details.locator("summary").click()
        page.locator("#async-downloads-centre details[open]").wait_for(timeout=5000)


def check_timeline(timeline):
    """The row came before its link, its progress rose and never went back, and it ended complete."""
    assert timeline, "The download list never appeared."
    first_row = next(i for i, entry in enumerate(timeline) if entry["rows"])
    first_link = next(i for i, entry in enumerate(timeline) if entry["link"])
    assert first_row <= first_link, timeline
    values = [entry["value"] for entry in timeline if entry["value"] is not None]
    assert values == sorted(values), f"Progress went back: {timeline}"
    assert all(0 <= value <= 100 for value in values), timeline
    if first_row < first_link:
        # The page was rendered before the export finished: the stream replays every step
        # from then on, so the bar must have moved.
        assert len(set(values)) >= 2, f"No progress seen: {timeline}"
    assert timeline[-1]["link"] and not timeline[-1]["progress"], timeline


@pytest.mark.browser
@pytest.mark.slow
def test_the_orders_as_xlsx_and_json_lines_and_a_zip_of_xlsx(redis_url, sample_data, chromium, tmp_path):
    """The format buttons next to the CSV one: the same filtered orders, typed, in each format."""
    import openpyxl

    params = FILTERS["toast"]
    expected = sample_data["expected"]["toast"]
    # A Redis db of its own: the default set's other tests must find none of its downloads.
    with demo_processes.site("default", redis_url, redis_db=9, database=sample_data["database"],
                             var_dir=sample_data["var_dir"]) as site:
        context = chromium.new_context(accept_downloads=True, viewport={"width": 1200, "height": 800})
        context.set_default_timeout(TIMEOUT * 1000)
        page = context.new_page()
        try:
            log_in(page, site.url, USERNAME, PASSWORD)
            page.goto(f"{site.url}/?{urlencode(params)}")
            saved = {}
            for label, extension in (("as XLSX", "xlsx"), ("as JSON Lines", "jsonl"), ("Export zip of XLSX", "zip")):
                with page.expect_navigation():
                    page.get_by_role("button", name=label, exact=True).click()
                open_centre(page)
                # One more row with a link than before; the newest row comes first.
                finished = page.locator(ROWS).filter(has=page.locator(LINK))
                finished.nth(len(saved)).wait_for(state="visible")
                with page.expect_download() as info:
                    finished.first.locator(LINK).click()
                assert info.value.suggested_filename.endswith(f".{extension}"), info.value.suggested_filename
                saved[extension] = tmp_path / info.value.suggested_filename
                info.value.save_as(saved[extension])
        except Exception:
            print(f"--- the site's output ---\n{site.output()}")
            raise
        finally:
            context.close()

    sheet = openpyxl.load_workbook(saved["xlsx"]).active
    header, *rows = list(sheet.iter_rows(values_only=True))
    assert list(header) == ORDER_HEADER and len(rows) == expected
    for row in rows:  # typed cells: numbers, a date, a decimal total (read back as int when whole)
        assert isinstance(row[0], int) and isinstance(row[1], datetime.datetime), row
        assert isinstance(row[8], (int, float)) and row[9] == STATUS_LABELS[params["status"]], row
    lines = saved["jsonl"].read_text(encoding="utf-8").splitlines()
    assert len(lines) == expected
    first = json.loads(lines[0])
    assert list(first) == ORDER_HEADER and isinstance(first["order"], int) and isinstance(first["total"], str)
    with zipfile.ZipFile(saved["zip"]) as archive:
        names = archive.namelist()
        workbook = openpyxl.load_workbook(io.BytesIO(archive.read(names[0])))
    assert len(names) == 50 and all(re.fullmatch(r"\d\d-[a-z0-9-]+\.xlsx", name) for name in names)
    assert [cell.value for cell in workbook.active[1]] == ORDER_HEADER


@pytest.mark.browser
@pytest.mark.slow
def test_the_language_switch_turns_the_centre_and_what_the_worker_pushes_german(redis_url, sample_data, chromium,
                                                                                tmp_path):
    """The top bar's switch (Django's set_language); then an export finishes and a report runs in the
    worker: the rows the worker pushes speak German, as the page does."""
    # A Redis db of its own: the other tests of the default set expect none of this one's downloads.
    with demo_processes.site("default", redis_url, redis_db=8, database=sample_data["database"],
                             var_dir=sample_data["var_dir"]) as site:
        context = chromium.new_context(viewport={"width": 1200, "height": 800})
        context.set_default_timeout(TIMEOUT * 1000)
        page = context.new_page()
        try:
            log_in(page, site.url, USERNAME, PASSWORD)
            with page.expect_navigation():
                page.get_by_role("button", name="Deutsch", exact=True).click()
            assert page.locator("html").get_attribute("lang") == "de"
            assert page.get_by_role("button", name="Deutsch", exact=True).get_attribute("aria-current") == "true"

            with page.expect_navigation():  # "Export 3.000 orders": the count in German figures
                page.get_by_role("button", name=re.compile(r"^Export \S+ orders as CSV$")).click()
            open_centre(page)
            orders = page.locator(ROWS).filter(has_text="Orders")
            orders.get_by_role("link", name="Herunterladen", exact=True).wait_for()
            page.locator("#async-downloads-status", has_text="ist bereit zum Herunterladen.").wait_for(
                state="attached")

            with page.expect_navigation():
                page.get_by_role("button", name=SLOW_REPORT, exact=True).click()
            open_centre(page)
            report = page.locator(ROWS).filter(has_text="Daily revenue")
            bar = report.locator("[role=progressbar]")
            # A percentage that moved after the page loaded came from the worker.
            shown = bar.get_attribute("aria-valuenow") if bar.count() else None
            report.locator(f"[role=progressbar][aria-valuenow]:not([aria-valuenow='{shown}'])").wait_for(
                state="attached")
            assert bar.get_attribute("aria-label").startswith("Fortschritt von Daily revenue")
            report.get_by_role("button", name=re.compile(r"^Daily revenue.* abbrechen$")).click()
            cancelled = page.locator(ROWS).filter(has_text="Daily revenue")
            cancelled.get_by_text("Abgebrochen", exact=True).wait_for()
            cancelled.get_by_role("button", name=re.compile(r"^Daily revenue.* erneut versuchen$")).wait_for()
        except Exception:
            with contextlib.suppress(Exception):
                page.screenshot(path=tmp_path / "failure.png")
            print(f"--- the site's output (screenshot: {tmp_path / 'failure.png'}) ---\n{site.output()}")
            raise
        finally:
            context.close()


# --- seeding ----------------------------------------------------------------------------------

SEED_LINE = re.compile(r"Seeding orders \[[#-]{20}\] +(\d+)% ([\d,]+)/([\d,]+)")


@pytest.mark.slow
def test_seeding_shows_its_progress_on_a_terminal_and_in_a_few_lines_otherwise(tmp_path):
    """``SAMPLE_SITE_ORDERS`` orders, with a bar redrawn in place on a terminal, a line per quarter elsewhere."""
    empty, piped, on_terminal = (tmp_path / f"{name}.sqlite3" for name in ("empty", "piped", "terminal"))
    demo_processes.manage("migrate", "--verbosity", "0",
                          env=demo_processes.sample_env("redis://unused", database=empty))
    shutil.copy(empty, piped)
    shutil.copy(empty, on_terminal)

    env = {**demo_processes.sample_env("redis://unused", database=piped), "SAMPLE_SITE_ORDERS": "12000"}
    lines = demo_processes.manage("seed_demo", env=env).splitlines()
    progress = [SEED_LINE.fullmatch(line) for line in lines if line.startswith("Seeding orders")]
    assert all(progress) and 3 <= len(progress) <= 5, lines
    assert [match[3] for match in progress] == ["12,000"] * len(progress)
    assert progress[-1][1] == "100" and progress[-1][2] == "12,000", lines
    assert re.fullmatch(r"Demo data: 12,000 orders seeded in [\d.]+ s\.", lines[-1]), lines

    env = {**demo_processes.sample_env("redis://unused", database=on_terminal), "SAMPLE_SITE_ORDERS": "12000"}
    terminal = Terminal([sys.executable, str(ROOT / "sample_site" / "manage.py"), "seed_demo"],
                        cwd=ROOT, env=env, log_path=tmp_path / "terminal.log")
    assert terminal.process.wait(120) == 0, terminal.text()
    text = terminal.text()
    # Each step redraws the line: a carriage return, no new line.
    redraws = re.findall(r"\r(Seeding orders [^\r\n]*)", text)
    assert len(redraws) == 4 and all(SEED_LINE.fullmatch(line) for line in redraws), repr(text)
    assert redraws[-1].endswith("100% 12,000/12,000") and "\n" not in text.split("100% 12,000/12,000")[0], repr(text)


# --- `just demo` from a fresh clone, and the demo's supervisor ----------------------------------


class Terminal:
    """A command on a pseudo-terminal of its own, as a user's shell would run it: the terminal is its
    controlling one, and Ctrl-C (``interrupt()``) reaches the terminal's foreground process group."""

    def __init__(self, args, *, cwd, env, log_path):
        import pty
        import threading

        master, slave = pty.openpty()
        self.master, self.log_path = master, log_path
        self.output = bytearray()
        self.lock = threading.Lock()
        self.process = subprocess.Popen(
            args, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave,
            start_new_session=True, preexec_fn=_take_controlling_terminal,
        )
        os.close(slave)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        with open(self.log_path, "wb") as log:
            while True:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: every process of the terminal has closed it
                    break
                if not chunk:
                    break
                with self.lock:
                    self.output += chunk
                log.write(chunk)
                log.flush()

    def text(self):
        """What the terminal showed so far (its \r\n made \n again)."""
        with self.lock:
            return self.output.decode(errors="replace").replace("\r\n", "\n")

    def wait_for(self, text, timeout):
        deadline = time.monotonic() + timeout
        while text not in self.text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{text!r} not shown (exit status {self.process.poll()}):\n{self.text()[-5000:]}")
            time.sleep(0.2)
        return self.text()

    def interrupt(self):
        """Ctrl-C, typed."""
        os.write(self.master, b"\x03")

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.reader.join(5)
        os.close(self.master)


def _take_controlling_terminal():
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _processes():
    """``{pid: (ppid, pgid, sid, start time)}`` of every process that runs (zombies have ended), from /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                stat = file.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, pgrp, session…
        if fields[0] == "Z":
            continue
        found[int(entry)] = (int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]))
    return found


def _tree(root_pid, processes):
    """``{pid: start time}`` of ``root_pid`` and its descendants."""
    children = {}
    for pid, (ppid, *_) in processes.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = {}, [root_pid]
    while todo:
        pid = todo.pop()
        if pid in processes:
            tree[pid] = processes[pid][3]
            todo.extend(children.get(pid, ()))
    return tree


def _still_running(seen, leaders):
    """Processes of the demo's tree that still run, and any process in a group or session of ``leaders``."""
    left = []
    for pid, (_, pgid, sid, started) in _processes().items():
        if seen.get(pid) == started or pgid in leaders or sid in leaders:
            left.append(pid)
    return left


def _command(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "(gone)"


def _describe(pids):
    return "\n".join(f"{pid}: {_command(pid)}" for pid in pids)


def _child_running(parent, word):
    """The pid of the child process of ``parent`` whose command line has ``word`` (the main process, then)."""
    for pid, (ppid, *_) in _processes().items():
        if ppid == parent and word in _command(pid):
            return pid
    return None


def _kill_left(seen, leaders):
    for pid in _still_running(seen, leaders):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_until_gone(seen, leaders, timeout, output):
    deadline = time.monotonic() + timeout
    while (left := _still_running(seen, leaders)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"Still running {timeout} s after the demo was stopped:\n{_describe(left)}\n{output()[-3000:]}"


def _clean_env(**extra):
    """This environment without what ties it to this checkout (its venv, settings, test run)."""
    env = {
        key: value for key, value in os.environ.items()
        if key not in {"VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "PYTHONPATH", "DJANGO_SETTINGS_MODULE",
                       "PYTHONHOME", "REDIS_URL", "SHOWCASE", "PORT"}
        and not key.startswith(("ASYNC_DOWNLOADS_", "SAMPLE_SITE_", "COVERAGE_"))
    }
    env["PATH"] = os.pathsep.join(
        part for part in env.get("PATH", "").split(os.pathsep) if part and not part.startswith(str(ROOT))
    )
    env.update(extra)
    return env


def _opener():
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    return urllib.request.build_opener(NoRedirect)


def _status(url, timeout=5):
    """The status of GET ``url`` (redirects not followed), or the error that kept it from answering."""
    try:
        with _opener().open(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:  # a redirect (not followed)
        return error.code
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
        return error


# Run by ``manage.py shell -c`` with the demo's environment: start the slow report (about 30 s)
# for the first demo user through the app's API, and wait until the worker runs it.
START_SLOW_REPORT = """
import time
from django.contrib.auth import get_user_model
from async_downloads.cache import get_download
from async_downloads.shortcuts import start_download
from sample_site.shop import tasks

user = get_user_model().objects.get(username=USERNAME)
_, key = start_download(user, "daily-revenue.csv", tasks.daily_revenue_report, name="Daily revenue")
deadline = time.monotonic() + 60
while (record := get_download(key))["state"] == "pending" or not record["percentage"]:
    if time.monotonic() > deadline:
        break
    time.sleep(0.2)
print("@@", key, record["state"], record["percentage"])
"""
# The same, for the orders export, waiting (up to ``TIMEOUT`` s) until it has finished.
EXPORT_ORDERS = """
import time
from django.contrib.auth import get_user_model
from async_downloads.cache import FINISHED, get_download
from async_downloads.shortcuts import start_download
from sample_site.shop import tasks

user = get_user_model().objects.get(username=USERNAME)
_, key = start_download(user, "orders.csv", tasks.export_orders, ({"status": "paid"},), name="Orders")
deadline = time.monotonic() + TIMEOUT
while (record := get_download(key))["state"] not in FINISHED and time.monotonic() < deadline:
    time.sleep(0.2)
print("@@", key, record["state"], record["errors"] or "-")
"""
DOWNLOAD_STATE = """
from async_downloads.cache import get_download

record = get_download(KEY)
print("@@", record["state"], record["errors"] or "-")
"""


def _shell(script, python, manage_py, env, **names):
    """Run ``script`` (``names`` defined first) in ``manage.py shell``; the words of its ``@@`` line."""
    code = "".join(f"{name} = {value!r}\n" for name, value in names.items()) + script
    result = subprocess.run([str(python), str(manage_py), "shell", "-c", code], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("@@ "))
    return line.split()[1:]


BANNER = "Press Ctrl-C to stop."


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_just_demo_from_a_fresh_clone_seeds_serves_and_stops_cleanly_on_ctrl_c(tmp_path):
    """The README's demo command in a fresh clone of the committed HEAD (uncommitted changes don't count),
    on a terminal: seeding shows progress; once the site answers, the address, the users and the Redis
    in use are printed, last; Ctrl-C while an export runs ends it as cancelled (or complete), never as
    failed, the demo exits with status 0, and nothing of it is left running."""
    need_redis_server()
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=60)
    port = demo_processes.free_port()
    with demo_processes.private_redis() as redis_url:
        env = _clean_env(PORT=str(port), REDIS_URL=redis_url, SAMPLE_SITE_ORDERS="20000")
        readme_command = "python3 -m venv .venv && .venv/bin/pip install -q rust-just uv && .venv/bin/just demo"
        assert readme_command in (clone / "README.md").read_text()
        terminal = Terminal(["bash", "-c", readme_command], cwd=clone, env=env, log_path=tmp_path / "terminal.log")
        demo = terminal.process
        seen = {}  # every process of the demo's tree, pid: start time
        leaders = {demo.pid}
        try:
            shown = terminal.wait_for(BANNER, timeout=400)
            # The address is printed once the site answers: it answers at once.
            url = f"http://127.0.0.1:{port}/"
            assert _status(url) in (200, 302), shown
            running = _tree(demo.pid, _processes())
            seen.update(running)
            # The demo's processes run in sessions of their own: whatever runs in the groups and
            # sessions they lead counts, even if orphaned.
            leaders |= set(running)
            names = _describe(seen)
            assert "uvicorn" in names and "celery" in names, names

            assert re.search(r"\rSeeding orders \[#{20}\] 100% 20,000/20,000\n", shown), repr(shown)
            assert re.search(r"\rSeeding orders \[[#-]{20}\] +50% 10,000/20,000\r", shown), repr(shown)
            banner = shown[shown.rindex(f"ready: {url}"):]
            assert "alice / wonderland" in banner and "bob / builder" in banner, banner
            # The db number the site uses (SAMPLE_SITE_REDIS_DB, 5 by default), not the URL's /0.
            assert f"Redis: {redis_url.removesuffix('/0')}/5\n" in banner, banner
            assert "sample_site/var/demo.log" in banner, banner
            assert (clone / "sample_site" / "var" / "demo.log").exists()

            python, manage_py = clone / ".venv" / "bin" / "python", clone / "sample_site" / "manage.py"
            shell_env = _clean_env(REDIS_URL=redis_url)
            key, state, percentage = _shell(START_SLOW_REPORT, python, manage_py, shell_env, USERNAME=USERNAME)
            assert state == "running" and int(percentage) > 0, (state, percentage)
            assert _status(f"{url}login/") == 200
            time.sleep(1)
            after_banner = terminal.text()[len(shown):]
            assert after_banner == "", f"Printed after the banner: {after_banner!r}"
            assert shown.endswith(f"{BANNER}\n"), repr(shown[-500:])

            seen.update(_tree(demo.pid, _processes()))
            started = time.monotonic()
            terminal.interrupt()
            assert demo.wait(30) == 0, terminal.text()[-3000:]
            stopped_in = time.monotonic() - started
            _wait_until_gone(seen, leaders, 10, terminal.text)
            with pytest.raises(ProcessLookupError):
                os.killpg(demo.pid, 0)
            state, errors = _shell(DOWNLOAD_STATE, python, manage_py, shell_env, KEY=key)
            assert state in ("cancelled", "complete"), (state, errors)
            stopping = terminal.text()[len(shown):]
            assert "Cancelled 1 export still running: Daily revenue" in stopping, stopping
            assert "Traceback" not in stopping and "error" not in stopping.lower(), stopping
            assert stopped_in < 20, stopping
        finally:
            _kill_left(seen, leaders)
            terminal.close()
            shutil.rmtree(clone, ignore_errors=True)  # a venv and a database


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_demo_restarts_a_killed_worker_and_stops_when_the_web_server_dies(redis_url, sample_data, tmp_path):
    port = demo_processes.free_port()
    env = demo_processes.sample_env(redis_url, redis_db=7, database=sample_data["database"],
                                    media=tmp_path / "media", var_dir=tmp_path / "var")
    console = tmp_path / "console.log"
    with open(console, "w") as out:
        supervisor = subprocess.Popen(
            [sys.executable, str(ROOT / "sample_site" / "run_demo.py"), "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )

    def output():
        return console.read_text(errors="replace")

    def wait_for(text, timeout=120):
        deadline = time.monotonic() + timeout
        while text not in output():
            assert supervisor.poll() is None and time.monotonic() < deadline, f"{text!r} not shown:\n{output()}"
            time.sleep(0.2)

    seen, leaders = {}, {supervisor.pid}
    try:
        wait_for(BANNER)
        seen.update(running := _tree(supervisor.pid, _processes()))
        leaders |= set(running)
        worker, web = _child_running(supervisor.pid, "celery"), _child_running(supervisor.pid, "uvicorn")
        assert worker and web, _describe(running)
        pool = [pid for pid, (_, pgid, *_) in _processes().items() if pgid == worker and pid != worker]
        assert pool, "The worker's pool processes"

        os.kill(worker, signal.SIGKILL)
        wait_for("The Celery worker stopped (killed by SIGKILL); restarting it", timeout=30)
        # The old worker's pool processes went with it; a new worker does the exports.
        deadline = time.monotonic() + 10
        while any(pid in _processes() for pid in pool) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(pid in _processes() for pid in pool), _describe(pool)
        new_worker = _child_running(supervisor.pid, "celery")
        assert new_worker not in (None, worker)
        seen.update(running := _tree(supervisor.pid, _processes()))
        leaders |= set(running)
        manage_py = ROOT / "sample_site" / "manage.py"
        key, state, errors = _shell(EXPORT_ORDERS, sys.executable, manage_py, env,
                                    USERNAME=USERNAME, TIMEOUT=90)
        assert state == "complete", (state, errors, output())

        os.kill(web, signal.SIGKILL)
        assert supervisor.wait(30) == 1, output()
        assert "The web server (uvicorn) stopped (killed by SIGKILL); stopping the demo." in output()
        _wait_until_gone(seen, leaders, 10, output)
        assert output().rstrip().endswith("Stopped."), output()
    finally:
        _kill_left(seen, leaders)
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()


# --- `just demo-pushpin`: gunicorn behind a real Pushpin, in GRIP mode ----------------------------

PRIVATE_PORT = re.compile(r"gunicorn \(sync workers\) is on a private port, 127\.0\.0\.1:(\d+)")
CSRF_TOKEN = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
COMPLETE_ROW = re.compile(r'id="download-([^"]+)" class="async-download async-download--complete')
DOWNLOAD_LINK = re.compile(r'href="(/async_downloads/download/[^"]+)"')


def _csrf_token(response):
    assert response.status_code == 200, response.status_code
    return CSRF_TOKEN.search(response.text)[1]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_demo_behind_pushpin_streams_an_export_through_it_and_stops_cleanly(redis_url, sample_data, tmp_path):
    """``run_demo.py --pushpin`` (``just demo-pushpin``): gunicorn's sync workers on a private port behind a
    real Pushpin on ``--port``, in GRIP mode. Signed in through Pushpin, an export started there reaches the
    stream read through Pushpin up to its link, and the file downloads; a stream request straight to gunicorn
    gets 421; SIGINT stops everything, with status 0, and nothing of it is left running."""
    need_pushpin()
    port = demo_processes.free_port()
    url = f"http://127.0.0.1:{port}"
    # A Redis db of its own: the other tests expect none of this one's downloads.
    env = demo_processes.sample_env(redis_url, redis_db=10, database=sample_data["database"],
                                    media=tmp_path / "media", var_dir=tmp_path / "var")
    console, log = tmp_path / "console.log", tmp_path / "demo.log"
    with open(console, "w") as out:
        supervisor = subprocess.Popen(
            [sys.executable, str(ROOT / "sample_site" / "run_demo.py"), "--pushpin", "--port", str(port),
             "--log", str(log)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )

    def output():
        return "\n".join(path.read_text(errors="replace") for path in (console, log) if path.exists())

    seen, leaders = {}, {supervisor.pid}
    try:
        deadline = time.monotonic() + 60
        while BANNER not in console.read_text(errors="replace"):
            assert supervisor.poll() is None and time.monotonic() < deadline, f"{BANNER!r} not shown:\n{output()}"
            time.sleep(0.2)
        banner = console.read_text()
        assert f"The demo is ready: {url}/\n  Streams go through Pushpin" in banner, banner
        private_port = int(PRIVATE_PORT.search(banner)[1])
        assert private_port != port
        seen.update(running := _tree(supervisor.pid, _processes()))
        leaders |= set(running)
        names = _describe(running)
        assert "gunicorn" in names and "pushpin" in names and "celery" in names and "uvicorn" not in names, names

        with httpx.Client(base_url=url, timeout=10) as client:
            token = _csrf_token(client.get("/login/"))
            signed_in = client.post("/login/", data={"username": USERNAME, "password": PASSWORD,
                                                     "csrfmiddlewaretoken": token})
            assert signed_in.status_code == 302 and signed_in.headers["location"] == "/", signed_in.status_code
            page = client.get("/")
            # GRIP mode: an idle centre keeps its stream open, on the sync view.
            stream_url = html.unescape(re.search(r'sse-connect="([^"]+)"', page.text)[1])
            assert stream_url.startswith("/async_downloads/events/held/"), stream_url
            cookies = {"sessionid": client.cookies["sessionid"]}
            with StreamReader(url + stream_url, cookies=cookies) as reader:
                started = client.post("/export/orders/", data={**FILTERS["toast"], "format": "csv",
                                                               "csrfmiddlewaretoken": _csrf_token(page)})
                assert started.status_code == 302, started.status_code
                events, complete = [], None
                deadline = time.monotonic() + 30
                while complete is None:
                    assert time.monotonic() < deadline, f"No complete row in the stream:\n{events}\n{output()}"
                    events += reader.drain(wait=0.5)
                    complete = next((e["data"] for e in events if COMPLETE_ROW.search(e["data"])), None)
                assert reader.connections == 1
            key = COMPLETE_ROW.search(complete)[1]
            progress = [e for e in events if f'id="download-{key}"' in e["data"] and "aria-valuenow" in e["data"]]
            assert progress, "The stream showed no progress before the link"
            file = client.get(DOWNLOAD_LINK.search(complete)[1])
            assert file.status_code == 200, file.status_code
            header, *rows = list(csv.reader(io.StringIO(file.content.decode("utf-8-sig"))))
            assert header == ORDER_HEADER and len(rows) == sample_data["expected"]["toast"]
            # Only Pushpin's requests carry its signature: a stream asked of gunicorn itself is refused.
            direct = client.get(f"http://127.0.0.1:{private_port}{stream_url}")
            assert direct.status_code == 421, direct.status_code

        seen.update(_tree(supervisor.pid, _processes()))
        supervisor.send_signal(signal.SIGINT)
        assert supervisor.wait(30) == 0, output()
        _wait_until_gone(seen, leaders, 10, output)
        stopping = console.read_text()[len(banner):]
        assert stopping.rstrip().endswith("Stopped.") and "Traceback" not in stopping, stopping
    finally:
        _kill_left(seen, leaders)
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()

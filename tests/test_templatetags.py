"""The snippet users put in their base template."""

import re

import pytest
from django.contrib.auth.models import AnonymousUser
from django.template import Context, Template
from django.test import RequestFactory

from async_downloads import cache

pytestmark = pytest.mark.django_db


def render(source, user, **context):
    request = RequestFactory().get("/")
    request.user = user
    return Template("{% load async_downloads %}" + source).render(Context({"request": request, **context}))


def test_head_emits_css_htmx_2_the_sse_extension_and_the_tabs_script_from_static_files(alice):
    html = render("{% async_downloads_head %}", alice)
    assert html == (
        '<link rel="stylesheet" href="/static/async_downloads/async_downloads.css">'
        '<script src="/static/django_htmx/htmx-2.min.js" defer></script>'
        '<script src="/static/django_htmx/ext/hx-sse-2.min.js" defer></script>'
        '<script src="/static/async_downloads/tabs.js" defer></script>'
    )


def test_head_uses_the_csp_nonce(alice):
    html = render("{% async_downloads_head %}", alice, csp_nonce="n0nce")
    assert html.count('nonce="n0nce"') == 3
    assert '<script src="/static/async_downloads/tabs.js" defer nonce="n0nce"></script>' in html


def test_polling_transport_needs_no_extension(settings, alice):
    settings.ASYNC_DOWNLOADS_TRANSPORT = "poll"
    html = render("{% async_downloads_head %}", alice)
    assert html == (
        '<link rel="stylesheet" href="/static/async_downloads/async_downloads.css">'
        '<script src="/static/django_htmx/htmx-2.min.js" defer></script>'
        '<script src="/static/async_downloads/tabs.js" defer></script>'
    )


def test_ws_mode_needs_no_tabs_script(settings, alice):
    settings.ASYNC_DOWNLOADS_WS_MODE = True  # the socket stays open in every tab
    html = render("{% async_downloads_head %}", alice, csp_nonce="n0nce")
    assert html == (
        '<link rel="stylesheet" href="/static/async_downloads/async_downloads.css">'
        '<script src="/static/django_htmx/htmx-2.min.js" defer nonce="n0nce"></script>'
        '<script src="/static/django_htmx/ext/hx-ws-2.min.js" defer nonce="n0nce"></script>'
    )


def test_the_tabs_script_is_a_static_file_of_the_app():
    from django.contrib.staticfiles import finders

    assert finders.find("async_downloads/tabs.js")  # served like the stylesheet, nothing from a CDN


def test_anonymous_users_get_no_centre_and_no_stream():
    assert render("{% download_centre %}", AnonymousUser()).strip() == ""
    assert render('{% include "async_downloads/download_centre.html" %}', AnonymousUser()).strip() == ""


def test_centre_connects_the_stream_only_while_something_runs(settings, alice):
    settings.ASYNC_DOWNLOADS_IDLE_POLL_INTERVAL = 30
    _, key = cache.init_download(alice, "orders.csv")
    busy = render("{% download_centre %}", alice)
    assert re.search(r'sse-connect="/async_downloads/events/\?lastEventId=[^"]+"', busy)
    assert busy.count("sse-connect") == 1
    assert 'hx-preserve="true"' in busy  # boosted navigation keeps the open stream
    assert 'sse-swap="downloads"' in busy

    cache.save_download(key, [["x"]])
    idle = render("{% download_centre %}", alice)
    assert "sse-connect" not in idle
    assert re.search(r'hx-get="/async_downloads/\?idle=[0-9a-f]{12}"', idle)
    assert "every 30s" in idle


def test_include_of_earlier_releases_renders_the_same_centre(alice):
    cache.init_download(alice, "orders.csv")
    included = render('{% include "async_downloads/download_centre.html" %}', alice)
    tagged = render("{% download_centre %}", alice)
    strip = lambda html: re.sub(r"\s+", " ", html).strip()  # noqa: E731
    assert strip(included) == strip(tagged)


def test_centre_has_an_empty_polite_live_region(alice):
    html = render("{% download_centre %}", alice)
    region = re.search(r'<div id="async-downloads-status"[^>]*>(.*?)</div>', html)
    assert 'aria-live="polite"' in region.group(0) and 'role="status"' in region.group(0)
    assert region.group(1) == ""


def test_pushed_and_rendered_html_never_holds_a_csrf_token(alice):
    cache.init_download(alice, "orders.csv")
    html = render("{% csrf_token %}|{% download_centre %}", alice, csrf_token="SECRET-TOKEN")
    assert html.count("SECRET-TOKEN") == 1  # only the page's own {% csrf_token %}


def test_download_age_reads_naturally():
    from datetime import timedelta

    from django.utils import timezone

    from async_downloads.templatetags.async_downloads import download_age

    now = timezone.now()
    assert download_age(now - timedelta(seconds=20)) == "just now"
    assert download_age(now - timedelta(minutes=5, seconds=3)) == "5\xa0minutes ago"


@pytest.mark.parametrize("state, task, offered", [
    ("error", {"name": "t", "args": [], "kwargs": {}}, True),
    ("cancelled", {"name": "t", "args": [], "kwargs": {}}, True),
    ("error", None, False),
    ("running", {"name": "t", "args": [], "kwargs": {}}, False),
    ("complete", {"name": "t", "args": [], "kwargs": {}}, False),
])
def test_retryable_offers_retry_for_a_failed_or_cancelled_download_of_a_helper(alice, state, task, offered):
    record = {"state": state, **({"task": task} if task else {})}
    assert render("{% if download|retryable %}retry{% endif %}", alice, download=record) == ("retry" if offered else "")


NOW = 1_800_000_000.0


@pytest.fixture
def rows_at(monkeypatch):
    """``download_rows`` of a record, rendered at the epoch time ``now``."""
    import types

    from async_downloads.templatetags import async_downloads as tags

    def render_rows(record, now=NOW):
        monkeypatch.setattr(tags, "time", types.SimpleNamespace(time=lambda: now))
        return tags.download_rows(record)

    return render_rows


def rows_record(done, total, done_at_start=None, started=None, reported=NOW, state="running"):
    record = {"state": state, "rows_done": done, "rows_total": total, "rows_reported_at": reported}
    if done_at_start is not None:
        record |= {"rows_done_at_start": done_at_start, "rows_started_at": started}
    return record


def test_download_rows_tells_how_far_and_how_long_is_left(rows_at):
    # 12,000 rows in the 40 s since the first report: 300 rows a second, 287,600 rows to go.
    record = rows_record(12_400, 300_000, done_at_start=400, started=NOW - 40)
    assert rows_at(record) == "12,400 of 300,000 rows · about 16 min left"


def test_download_rows_counts_the_time_left_down_from_the_last_report(rows_at):
    # 100 rows a second, 4,000 rows to go: 40 s at the report, 25 s when the page renders 15 s later.
    record = rows_record(6_000, 10_000, done_at_start=1_000, started=NOW - 50)
    assert rows_at(record) == "6,000 of 10,000 rows · about 40 s left"
    assert rows_at(record, now=NOW + 15) == "6,000 of 10,000 rows · about 25 s left"
    assert rows_at(record, now=NOW - 5) == "6,000 of 10,000 rows · about 40 s left"  # another host's clock


def test_download_rows_makes_no_guess_past_its_estimate(rows_at):
    record = rows_record(6_000, 10_000, done_at_start=1_000, started=NOW - 50)
    assert rows_at(record, now=NOW + 41) == "6,000 of 10,000 rows"


@pytest.mark.parametrize("record", [
    rows_record(1, 300_000),  # one report only: no rate yet
    rows_record(1, 300_000, done_at_start=1, started=NOW),
    rows_record(5_000, 300_000, done_at_start=1, started=NOW),  # no time between the reports
    rows_record(5_000, 300_000, done_at_start=5_000, started=NOW - 10),  # no rows between them
])
def test_download_rows_shows_no_time_left_until_a_rate_can_be_measured(rows_at, record):
    assert rows_at(record).endswith(" of 300,000 rows")


def test_download_rows_of_the_last_row_shows_no_time_left(rows_at):
    """The rows are done; saving the file takes what it takes."""
    assert rows_at(rows_record(300_000, 300_000, done_at_start=1, started=NOW - 60)) == "300,000 of 300,000 rows"


def test_download_rows_of_a_single_row(rows_at):
    assert rows_at(rows_record(0, 1)) == "0 of 1 row"


@pytest.mark.parametrize("seconds, text", [
    (0.4, "less than a second left"),
    (1, "about 1 s left"),
    (2.5, "about 3 s left"),
    (9.4, "about 9 s left"),
    (12, "about 10 s left"),
    (42, "about 40 s left"),
    (56, "about 55 s left"),
    (58, "about 1 min left"),
    (150, "about 3 min left"),
    (89 * 60, "about 89 min left"),
    (95 * 60, "about 2 h left"),
    (2 * 3600 + 1700, "about 2 h left"),
    (4_000 * 3600, "about 4,000 h left"),
])
def test_download_rows_rounds_the_time_left(rows_at, seconds, text):
    # One row a second since the first report: the rows still to do are the seconds left.
    record = rows_record(10, 10 + seconds, done_at_start=0, started=NOW - 10)
    if isinstance(seconds, float):  # a fraction of a row: a rate of ten rows a second instead
        record = rows_record(100, 100 + int(seconds * 10), done_at_start=0, started=NOW - 10)
    assert rows_at(record).endswith(" · " + text)


@pytest.mark.parametrize("record", [
    {"state": "running", "percentage": 40},  # set_percentage only
    rows_record(5, 10, done_at_start=1, started=NOW - 4, state="pending"),
    rows_record(10, 10, state="complete"),
    rows_record(5, 0),
    rows_record("5", 10),
    {"percentage": 40},  # a record of an earlier release
])
def test_download_rows_is_empty_unless_a_running_task_reports_rows(rows_at, record):
    assert rows_at(record) == ""


def test_download_rows_groups_thousands_as_the_active_language_does(rows_at):
    from django.utils import translation

    record = rows_record(12_400, 300_000, done_at_start=400, started=NOW - 40)
    with translation.override("de"):
        text = rows_at(record)
    assert "12.400" in text and "300.000" in text
    with translation.override("fr"):
        text = rows_at(record)
    assert "12\xa0400" in text and "300\xa0000" in text


def test_download_rows_needs_no_humanize(settings, rows_at):
    assert "django.contrib.humanize" not in settings.INSTALLED_APPS
    assert rows_at(rows_record(1_234_567, 2_000_000)) == "1,234,567 of 2,000,000 rows"

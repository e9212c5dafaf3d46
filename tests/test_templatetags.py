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

"""Hostile values given to the cache API (issue 6): progress that is not a number,
file names that try to leave their folder, names that carry HTML.

What tests/test_cache.py, test_files.py, test_partials.py and test_showcase.py
already check is not repeated here: set_percentage's own table, the safe form of
each name, the stored path under the default prefix, a name in the default row.
"""

import decimal
import fractions
import math
import posixpath
from urllib.parse import quote, unquote

import pytest
from django.template.loader import render_to_string
from django.test import Client
from django.urls import reverse
from django.utils.html import escape

from async_downloads import cache, events, partials
from async_downloads.shortcuts import init_generic_csv_download
from tests.test_abuse import content
from tests.test_showcase import SHOWCASES, installed_ahead_of_async_downloads
from tests.testapp.tasks import queued_elsewhere

pytestmark = pytest.mark.django_db

RAISES = "raises"


# ---------------------------------------------------------------- progress


@pytest.fixture
def running(alice):
    """A download of alice's at 30 %."""
    _, key = cache.init_download(alice, "a.csv")
    cache.set_percentage(key, 30)
    return key


# update_percentage(key, total, cur) with one hostile argument (the other ones are
# total=10, cur=4, resolution=10, which shows 50): the percentage shown after it, or
# RAISES, in which case the download must be as it was. Never NaN, never over 99.
UPDATE_PERCENTAGE = [
    ("total", math.nan, RAISES),
    ("total", math.inf, RAISES),
    ("total", -math.inf, RAISES),
    ("total", "12", RAISES),
    ("total", -5, 30),  # no rows: nothing to report
    ("total", 1e9, 0),
    ("total", None, RAISES),
    ("total", decimal.Decimal("NaN"), RAISES),
    ("cur", math.nan, RAISES),
    ("cur", math.inf, RAISES),
    ("cur", "12", RAISES),
    ("cur", -5, 0),
    ("cur", 1e9, 99),
    ("cur", None, RAISES),
    ("resolution", math.nan, RAISES),
    ("resolution", math.inf, RAISES),
    ("resolution", None, RAISES),
    ("resolution", -5, 0),
    ("resolution", 1e9, 50),
    ("total", True, RAISES),
    ("cur", True, RAISES),
    ("resolution", "12", RAISES),
    ("cur", decimal.Decimal("4.5"), 50),
]


@pytest.mark.parametrize("argument, value, shown", UPDATE_PERCENTAGE, ids=repr)
def test_update_percentage_with_a_hostile_argument(running, argument, value, shown):
    arguments = {"total": 10, "cur": 4, "resolution": 10, argument: value}
    before = cache.get_download(running)
    if shown == RAISES:
        with pytest.raises(ValueError):
            cache.update_percentage(running, **arguments)
        assert cache.get_download(running) == before
    else:
        cache.update_percentage(running, **arguments)
        assert cache.get_download(running)["percentage"] == shown


@pytest.mark.parametrize("value", [10**400, decimal.Decimal("1e400"), fractions.Fraction(10**400, 3)], ids=type)
def test_set_percentage_clamps_a_number_too_large_for_a_float(running, value):
    cache.set_percentage(running, value)
    assert cache.get_download(running)["percentage"] == 100


# ---------------------------------------------------------------- file names

HTML_IMG = "<img src=x onerror=alert(1)>"
HTML_BREAKOUT = '"><script>alert(1)</script>'
HOSTILE_FILENAMES = [
    "../../../../etc/passwd",
    "..\\..\\boot.ini",
    "/etc/passwd",
    "C:\\Windows\\win.ini",
    "a\x00b.csv",
    "report\r\nX-Injected: 1.csv",
    "x" * 1000,
    "é" * 1000 + ".csv",
    "",
    ".",
    "..",
    "....",
    ". . .",
    HTML_IMG,
    HTML_BREAKOUT + ".csv",
]
PREFIX = "exports/2025"


def disposition_filename(header):
    """The file name a browser takes from a Content-Disposition header (the forms Django writes)."""
    kind, _, parameter = header.partition("; ")
    assert kind == "attachment"
    if parameter.startswith("filename*=utf-8''"):
        return unquote(parameter.removeprefix("filename*=utf-8''"))
    assert parameter.startswith('filename="') and parameter.endswith('"')
    return parameter[len('filename="'):-1].replace('\\"', '"').replace("\\\\", "\\")


@pytest.fixture
def saved(settings, alice, media):
    """``saved(filename)``: a finished download of alice's under ``PREFIX``; returns its record."""
    settings.ASYNC_DOWNLOADS_PATH_PREFIX = PREFIX

    def make(filename):
        _, key = cache.init_download(alice, filename)
        cache.save_download(key, [["secret"]])
        record = cache.get_download(key)
        assert record["state"] == "complete"
        return record

    return make


@pytest.mark.parametrize("filename", HOSTILE_FILENAMES, ids=lambda name: repr(name[:40]))
def test_a_hostile_filename_stays_in_its_folder_and_is_sent_under_a_safe_name(client, alice, media, saved, filename):
    record = saved(filename)
    folder = (media / PREFIX / record["key"]).resolve()
    assert record["filepath"] == posixpath.join(PREFIX, record["key"], record["filename"])
    assert [path.resolve() for path in media.rglob("*") if path.is_file()] == [folder / record["filename"]]

    client.force_login(alice)
    response = client.get(reverse("async_downloads:download", args=[record["key"]]))
    assert response.status_code == 200
    assert content(response) == "secret\n"
    header = response["Content-Disposition"]
    assert not any(c in header for c in "\r\n\x00")
    sent = disposition_filename(header)
    assert sent == record["filename"]
    assert sent not in {"", ".", ".."} and not any(c in sent for c in '/\\<>"')


@pytest.mark.parametrize("filename", HOSTILE_FILENAMES, ids=lambda name: repr(name[:40]))
@pytest.mark.parametrize("mode, header", [("x-accel-redirect", "X-Accel-Redirect"), ("x-sendfile", "X-Sendfile")])
def test_a_front_server_is_sent_to_the_file_in_its_folder(
    settings, client, alice, media, saved, filename, mode, header
):
    settings.ASYNC_DOWNLOADS_SENDFILE = mode
    settings.ASYNC_DOWNLOADS_SENDFILE_URL = "/protected/"
    record = saved(filename)
    client.force_login(alice)
    response = client.get(reverse("async_downloads:download", args=[record["key"]]))
    root = "/protected" if mode == "x-accel-redirect" else str(media)
    target = f"{root}/{PREFIX}/{record['key']}/{record['filename']}"
    assert response[header] == quote(target)
    assert posixpath.normpath(unquote(response[header])) == target
    assert disposition_filename(response["Content-Disposition"]) == record["filename"]


# ---------------------------------------------------------------- names carrying HTML

NAME = HTML_IMG + HTML_BREAKOUT
ESCAPED = escape(NAME)
STATES = ("pending", "running", "complete", "error", "cancelled")


@pytest.fixture(params=("app", *SHOWCASES))
def template_set(request, db):
    if request.param == "app":
        yield request.param
        return
    with installed_ahead_of_async_downloads(request.param):
        yield request.param


@pytest.fixture
def hostile(alice, media):
    """One download of alice's in each state, named ``NAME`` (the failed one with ``NAME`` as
    its error too); the failed and cancelled ones are retryable, so their rows offer Retry."""
    keys = {}
    for state in STATES:
        if state in ("error", "cancelled"):
            _, key = init_generic_csv_download(queued_elsewhere, alice, NAME)
        else:
            _, key = cache.init_download(alice, NAME, name=NAME)
        keys[state] = key
    cache.set_percentage(keys["running"], 40)
    cache.save_download(keys["complete"], [["x"]])
    cache.set_error(keys["error"], NAME)
    cache.cancel_download(keys["cancelled"])
    states = {state: cache.get_download(key)["state"] for state, key in keys.items()}
    assert states == {state: state for state in STATES}
    return {state: cache.get_download(key) for state, key in keys.items()}


def legacy_html(user):
    client = Client()
    client.force_login(user)
    return client.get(reverse("async_downloads:ajax_update")).json()["html"]


# Every partial that shows a download's name, and how to render it from the records.
PARTIALS = {
    **{f"row-{state}": lambda records, user, state=state: partials.render_row(records[state]) for state in STATES},
    "downloads-list": lambda records, user: render_to_string(
        "async_downloads/downloads.html", {"downloads": list(records.values()), "oob": True}),
    "message-created": lambda records, user: partials.render_message(user.pk, records["pending"], events.CREATED),
    "message-progress": lambda records, user: partials.render_message(user.pk, records["running"], events.UPDATED),
    "message-completed": lambda records, user: partials.render_message(user.pk, records["complete"], events.COMPLETED),
    "message-failed": lambda records, user: partials.render_message(user.pk, records["error"], events.FAILED),
    "message-cancelled": lambda records, user: partials.render_message(user.pk, records["cancelled"], events.CANCELLED),
    "refresh": lambda records, user: partials.render_refresh(user.pk),
    "centre": lambda records, user: render_to_string(partials.CENTRE, {"centre": partials.centre_context(user.pk)}),
    "ajax_update-html": lambda records, user: legacy_html(user),
}
# What the status region of a message announces, about which download.
ANNOUNCED = {
    "message-completed": ("complete", "{} is ready to download."),
    "message-failed": ("error", "{} failed."),
    "message-cancelled": ("cancelled", "{} was cancelled."),
}


@pytest.mark.parametrize("partial", list(PARTIALS))
def test_a_name_with_html_is_shown_as_text(template_set, alice, hostile, partial):
    html = PARTIALS[partial](hostile, alice)
    assert "<img" not in html.lower() and "<script" not in html.lower()
    assert ESCAPED in html
    if partial in ANNOUNCED:
        state, announcement = ANNOUNCED[partial]
        status = html[html.index('id="async-downloads-status"'):]
        assert status.split(">", 1)[1].startswith(escape(announcement.format(hostile[state]["name"])))

"""The partial templates: the centre, the list, one row, and the messages pushed to pages.

Everything here renders without a request (a Celery worker has none), so the
context is built explicitly and never holds a CSRF token.
"""

import hashlib
from urllib.parse import urlencode

from django.template.loader import render_to_string
from django.urls import reverse

from . import cache
from .conf import settings

CENTRE = "async_downloads/download_centre.html"
REFRESH = "async_downloads/refresh.html"
MESSAGE = "async_downloads/message.html"
ROW = "async_downloads/download.html"
INDICATOR = "async_downloads/indicator.html"
STATUS = "async_downloads/status.html"
TRANSPORTS = ("sse", "poll", "ws")


def transport():
    if settings.WS_MODE:
        return "ws"
    name = str(settings.TRANSPORT).lower()
    if name not in TRANSPORTS:
        raise ValueError(f"ASYNC_DOWNLOADS_TRANSPORT is {name!r}; use one of {TRANSPORTS!r}.")
    return name


def centre_context(pk, downloads=None, preserve=False):
    if downloads is None:
        downloads = cache.get_downloads_for_pk(pk)
    in_progress = sum(1 for d in downloads if d["state"] not in cache.FINISHED)
    context = {
        "downloads": downloads,
        "in_progress": in_progress,
        "transport": transport(),
        "css_class": settings.CSS_CLASS,
        "download_template": settings.DOWNLOAD_TEMPLATE,
        "centre_url": reverse("async_downloads:centre"),
        "poll_interval": settings.POLL_INTERVAL,
        "idle_poll_interval": settings.IDLE_POLL_INTERVAL,
        # A pushed page hears nothing from a dead worker: now and then it asks, which
        # makes the centre view turn stalled downloads into errors (and push that).
        "stall_check_interval": max(1, int(settings.STALL_TIMEOUT // 2)),
        "version": version(downloads),
        "preserve": preserve,
        "events_url": "",
        "ws_url": settings.WS_URL,
    }
    if in_progress and context["transport"] == "sse":
        context["events_url"] = events_url(pk)
    return context


def version(downloads):
    """A short digest of which downloads exist and their states: an idle page sends it
    back with its poll, and gets an update only when it changed."""
    state = "|".join(f"{d['key']}:{d['state']}" for d in downloads)
    return hashlib.blake2b(state.encode(), digest_size=6).hexdigest()


def events_url(pk):
    from . import sse

    last_id = sse.current_event_id(pk)
    query = f"?{urlencode({'lastEventId': last_id})}" if last_id else ""
    return reverse("async_downloads:events") + query


def render_refresh(pk, downloads=None):
    """What a poll of the centre gets: the connection element, the list and the indicator."""
    return render_to_string(REFRESH, {"centre": centre_context(pk, downloads)})


def render_row(record, oob=False):
    return render_to_string(ROW, {"download": record, "oob": oob, "css_class": settings.CSS_CLASS})


def render_message(pk, record=None, kind=None):
    """The HTML pushed to a user's pages after ``kind`` happened to ``record``.

    Progress replaces one row. Anything else replaces the list and the
    indicator, and, when nothing is left in progress, the connection element
    too: its idle version has no stream, so swapping it in closes the stream.
    Every message replaces elements by id, so a replayed or repeated message
    does no harm.
    """
    from .events import UPDATED

    if kind == UPDATED:
        return render_row(record, oob=True)
    context = {"centre": centre_context(pk), "announce": record if kind else None}
    return render_to_string(MESSAGE, context)

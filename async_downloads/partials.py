"""The partial templates: the centre, the list, one row, and the messages pushed to pages.

Everything here renders without a request (a Celery worker has none), so the
context is built explicitly and never holds a CSRF token. Rendering only reads:
it never changes a record and never publishes.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final
from urllib.parse import urlencode

from django.template.loader import render_to_string
from django.urls import reverse

from . import records, store
from .channels import current_event_id
from .conf import TRANSPORTS, settings, transport
from .records import Record

__all__ = [
    "CENTRE", "INDICATOR", "MESSAGE", "REFRESH", "ROW", "STATUS", "TRANSPORTS",
    "centre_context", "events_url", "render_message", "render_refresh", "render_row", "transport", "version",
]

CENTRE: Final = "async_downloads/download_centre.html"
REFRESH: Final = "async_downloads/refresh.html"
MESSAGE: Final = "async_downloads/message.html"
ROW: Final = "async_downloads/download.html"
INDICATOR: Final = "async_downloads/indicator.html"
STATUS: Final = "async_downloads/status.html"


def centre_context(pk: Any, downloads: list[Record] | None = None, preserve: bool = False) -> dict[str, Any]:
    """What the centre's templates need for user ``pk`` (their downloads are read if not given)."""
    if downloads is None:
        downloads = store.read_downloads(pk)
    in_progress = records.in_progress(downloads)
    context = {
        "downloads": downloads,
        "in_progress": in_progress,
        "transport": transport(),
        "css_class": settings.CSS_CLASS,
        "download_template": settings.DOWNLOAD_TEMPLATE,
        "centre_url": reverse("async_downloads:centre"),
        "poll_interval": settings.POLL_INTERVAL,
        "idle_poll_interval": settings.IDLE_POLL_INTERVAL,
        "version": version(downloads),
        "preserve": preserve,
        "events_url": "",
        "ws_url": settings.WS_URL,
    }
    if in_progress and context["transport"] == "sse":
        context["events_url"] = events_url(pk)
    return context


def version(downloads: list[Record]) -> str:
    """A short digest of which downloads exist and their states: an idle page sends it
    back with its poll, and gets an update only when it changed."""
    state = "|".join(f"{d['key']}:{d['state']}" for d in downloads)
    return hashlib.blake2b(state.encode(), digest_size=6).hexdigest()


def events_url(pk: Any) -> str:
    last_id = current_event_id(pk)
    query = f"?{urlencode({'lastEventId': last_id})}" if last_id else ""
    return reverse("async_downloads:events") + query


def render_refresh(pk: Any, downloads: list[Record] | None = None) -> str:
    """What a poll of the centre gets: the connection element, the list and the indicator."""
    return render_to_string(REFRESH, {"centre": centre_context(pk, downloads)})


def render_row(record: Record, oob: bool = False) -> str:
    return render_to_string(ROW, {"download": record, "oob": oob, "css_class": settings.CSS_CLASS})


def render_message(pk: Any, record: Record | None = None, kind: str | None = None, notice: str = "") -> str:
    """The HTML pushed to a user's pages after ``kind`` happened to ``record``.

    Progress replaces one row. Anything else replaces the list and the
    indicator, and, when nothing is left in progress, the connection element
    too: its idle version has no stream, so swapping it in closes the stream.
    Every message replaces elements by id, so a replayed or repeated message
    does no harm. ``notice``, if given, is shown above the list and announced.
    """
    if kind == records.UPDATED and record is not None:
        return render_row(record, oob=True)
    context = {"centre": centre_context(pk), "announce": record if kind else None, "notice": notice}
    return render_to_string(MESSAGE, context)

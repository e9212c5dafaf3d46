"""The partial templates: the centre, the list, one row, and the messages pushed to pages.

Everything here renders without a request (a Celery worker has none), so the
context is built explicitly and never holds a CSRF token. Rendering only reads:
it never changes a record and never publishes.

Languages: what a view renders is in the request's active language. What is
pushed to a user's pages (``render_message``, from a worker as often as not) is
in the language of their download (``Record["language"]``, the one active when it
started). The app's own messages in a record (``records.MESSAGES``) are shown in
the language rendered, whichever language they were stored in.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

from django.conf import global_settings
from django.conf import settings as django_settings
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import translation
from django.utils.functional import Promise

from . import grip, records, store
from .channels import current_event_id
from .conf import TRANSPORTS, settings, transport
from .records import Record

__all__ = [
    "CENTRE", "INDICATOR", "MESSAGE", "REFRESH", "ROW", "STATUS", "TRANSPORTS",
    "centre_context", "events_url", "language_of", "localized", "localized_text", "render_message", "render_notice",
    "render_refresh", "render_row", "transport", "version",
]

CENTRE: Final = "async_downloads/download_centre.html"
REFRESH: Final = "async_downloads/refresh.html"
MESSAGE: Final = "async_downloads/message.html"
ROW: Final = "async_downloads/download.html"
INDICATOR: Final = "async_downloads/indicator.html"
STATUS: Final = "async_downloads/status.html"
#: The languages this app ships translations for (its ``locale`` folder).
LOCALE_DIR: Final = Path(__file__).resolve().parent / "locale"


def centre_context(pk: Any, downloads: list[Record] | None = None, preserve: bool = False) -> dict[str, Any]:
    """What the centre's templates need for user ``pk`` (their downloads are read if not given)."""
    if downloads is None:
        downloads = store.read_downloads(pk)
    in_progress = records.in_progress(downloads)
    context = {
        "downloads": [localized(record) for record in downloads],
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
    # An open stream while something runs; always, where idle connections are cheap (see ``idle_streams``).
    context["stream"] = context["transport"] == "sse" and bool(in_progress or idle_streams())
    if context["stream"]:
        context["events_url"] = events_url(pk)
    return context


def idle_streams() -> bool:
    """Whether idle centres keep their stream open too: ``ASYNC_DOWNLOADS_IDLE_STREAMS``, or
    where it is None (the default), in GRIP mode, where the proxy holds connections cheaply."""
    explicit = settings.IDLE_STREAMS
    return grip.enabled() if explicit is None else bool(explicit)


def version(downloads: list[Record]) -> str:
    """A short digest of which downloads exist and their states: an idle page sends it
    back with its poll, and gets an update only when it changed."""
    state = "|".join(f"{d['key']}:{d['state']}" for d in downloads)
    return hashlib.blake2b(state.encode(), digest_size=6).hexdigest()


def events_url(pk: Any) -> str:
    last_id = current_event_id(pk)
    query = f"?{urlencode({'lastEventId': last_id})}" if last_id else ""
    return reverse("async_downloads:held_events" if grip.enabled() else "async_downloads:events") + query


def render_refresh(pk: Any, downloads: list[Record] | None = None) -> str:
    """What a poll of the centre gets: the connection element, the list and the indicator."""
    return render_to_string(REFRESH, {"centre": centre_context(pk, downloads)})


def render_row(record: Record, oob: bool = False) -> str:
    """One row, in the active language."""
    return render_to_string(ROW, {"download": localized(record), "oob": oob, "css_class": settings.CSS_CLASS})


def render_message(pk: Any, record: Record | None = None, kind: str | None = None, notice: str = "") -> str:
    """The HTML pushed to a user's pages after ``kind`` happened to ``record``.

    Progress replaces one row. Anything else replaces the list and the
    indicator, and, when nothing is left in progress, the connection element
    too: its idle version has no stream, so swapping it in closes the stream.
    Every message replaces elements by id, so a replayed or repeated message
    does no harm. ``notice``, if given, is shown above the list and announced.

    It is rendered in the language of ``record`` or, without one, of the user's
    newest download that has one (see ``language_of``), not the active language:
    in a worker, that is only the site's default.
    """
    if kind == records.UPDATED and record is not None:
        with _language(language_of(record)):
            return render_row(record, oob=True)
    downloads = store.read_downloads(pk)
    with _language(language_of(record, downloads)):
        context = {
            "centre": centre_context(pk, downloads),
            "announce": localized(record) if kind and record is not None else None,
            "notice": localized_text(notice),
        }
        return render_to_string(MESSAGE, context)


def render_notice(pk: Any, notice: str) -> str:
    """The list with ``notice`` above it (shown and announced), as a page's answer to an action
    that was refused: out-of-band elements only, in the active language (the request's)."""
    context = {"centre": centre_context(pk), "announce": None, "notice": localized_text(notice)}
    return render_to_string(MESSAGE, context)


# --- Languages -------------------------------------------------------------------------------


def language_of(record: Record | None, downloads: list[Record] | None = None) -> str | None:
    """The language to render for the user in: ``record``'s, else that of the newest of
    ``downloads`` (newest first) that has one; None for records made before languages were kept."""
    for candidate in [record, *(downloads or [])]:
        if candidate is not None and candidate.get("language"):
            return candidate["language"]
    return None


def _language(language: str | None) -> contextlib.AbstractContextManager[None]:
    # Without a language, the active one (translation.override(None) would show the msgids).
    return translation.override(language) if language else contextlib.nullcontext()


def localized(record: Record) -> Record:
    """``record``, with its error in the active language if it is one of the app's messages."""
    errors = record.get("errors")
    if not errors:
        return record
    shown = localized_text(errors, record.get("language"))
    return record if shown == errors else {**record, "errors": shown}


def localized_text(text: str | Promise, stored_in: str | None = None) -> str:
    """``text`` in the active language if it is one of ``records.MESSAGES``, in the words of any
    language it may have been stored in; any other text as it is.

    The cache API keeps a message as text, in the language active where it was set
    (a worker's default, a view's request): each reader sees it in their own.
    """
    text = str(text)
    if not text:
        return text
    for language in _stored_languages(stored_in):
        message = _messages_in(language).get(text)
        if message is not None:
            return str(message)
    return text


def _stored_languages(stored_in: str | None) -> Iterator[str | None]:
    yield None  # the msgids, as English speakers and untranslated sites see them
    yield from (stored_in, django_settings.LANGUAGE_CODE, translation.get_language())
    yield from _shipped_languages()
    if django_settings.LANGUAGES is not global_settings.LANGUAGES:  # a site's own list, not Django's hundred
        yield from (code for code, _ in django_settings.LANGUAGES)


@functools.cache
def _shipped_languages() -> tuple[str, ...]:
    return tuple(sorted(path.name for path in LOCALE_DIR.iterdir() if path.is_dir())) if LOCALE_DIR.is_dir() else ()


@functools.lru_cache(maxsize=64)
def _messages_in(language: str | None) -> dict[str, Promise]:
    """The app's messages by their text in ``language`` (None: untranslated)."""
    with translation.override(language):
        return {str(message): message for message in records.MESSAGES}

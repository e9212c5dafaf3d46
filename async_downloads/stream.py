"""The event stream view (``async_downloads:events``) and the Redis listener behind it.

The stream itself is django-eventstream's; this view checks the request first,
fails the user's stalled downloads, and gives back what an open stream would
otherwise hold (the request's thread and database connection).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any, Final

from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.db import connections
from django.http import (
    HttpRequest,
    HttpResponseBadRequest,
    HttpResponseBase,
    HttpResponseForbidden,
    HttpResponseNotAllowed,
)
from django.utils.translation import gettext as _
from django_eventstream.views import events as eventstream_events

from . import cache, compat, store
from .watch import resync_open_pages, while_open

logger = logging.getLogger(__name__)

# Attempts to reach Redis again: soon at first, then every second (a failed attempt costs little).
RETRY_DELAYS: Final = (0.2, 0.5, 1)


async def events(request: HttpRequest) -> HttpResponseBase:
    """The user's event stream."""
    user = await request.auser()
    if not user.is_authenticated:
        return HttpResponseForbidden(_("Sign in to receive download events."))
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET"])
    problem = compat.unreadable_request(request)
    if problem:
        return HttpResponseBadRequest(problem)
    request.user = user  # django-eventstream reads it; no second lookup
    await _in_a_context_of_its_own(cache.fail_stalled, user)
    ensure_listener()
    compat.resume_after_read()
    try:
        # django-eventstream is untyped: its StreamingHttpResponse, or an HttpResponse for a bad request.
        response: Any = await sync_to_async(eventstream_events)(request, async_downloads=True)
    except compat.InvalidEsMeta:
        return HttpResponseBadRequest("Invalid es-meta.")
    # The stream may stay open for hours: give back what the request holds.
    await sync_to_async(_close_connections)()
    if getattr(response, "is_async", False):
        compat.release_request_thread()
        response.streaming_content = while_open(user.pk, response.streaming_content)
    answer: HttpResponseBase = response
    return answer


def _close_connections() -> None:
    """Close the request's database connections (the stream needs none)."""
    connections.close_all()


async def _in_a_context_of_its_own(function: Any, *args: Any) -> Any:
    """``function(*args)`` in a thread, with cache clients of its own, closed when it returns.

    Django keeps a cache client per async context: made in the request's, it would
    live (with its Redis connections) as long as the stream.
    """

    def call() -> Any:
        try:
            return function(*args)
        finally:
            compat.close_cache_connections()

    return await asyncio.create_task(sync_to_async(call)(), context=contextvars.Context())


_supervisors: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}


def ensure_listener() -> None:
    """Run django-eventstream's Redis listener under a supervisor that restarts it.

    django-eventstream starts its listener once per process and never again
    once Redis has gone away; this one reconnects with backoff and then makes
    every open stream re-read what it missed from the event storage.
    """
    if not hasattr(django_settings, "EVENTSTREAM_REDIS"):
        return
    loop = asyncio.get_running_loop()
    manager = compat.take_over_listener()
    with manager.lock:
        if loop in _supervisors and not _supervisors[loop].done():
            return
        _supervisors[loop] = loop.create_task(_supervise(manager))


async def _supervise(manager: Any) -> None:
    attempt = 0
    while True:
        listener = compat.new_listener(manager)
        try:
            await compat.subscribe(listener)
            if attempt:
                logger.info("Event listener reconnected to Redis.")
                compat.wake_all_streams(manager)
                await sync_to_async(resync_open_pages)()
            else:
                await sync_to_async(store.data_lost)()  # notes what the cache server holds now
            attempt = 0
            await compat.listen(listener)
        except asyncio.CancelledError:
            raise
        except Exception:
            if attempt == 0:
                logger.warning("Event listener lost Redis; reconnecting.", exc_info=True)
        finally:
            await compat.close_listener(listener)
        delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
        attempt += 1
        await asyncio.sleep(delay)

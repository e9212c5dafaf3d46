"""The event stream views (``async_downloads:events``; in GRIP mode ``held_events``) and the Redis listener.

The stream itself is django-eventstream's; this view checks the request first,
fails the user's stalled downloads, and gives back what an open stream would
otherwise hold (the request's thread and database connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import weakref
from collections.abc import AsyncIterator
from typing import Any, Final

from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import connections
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseBase,
    HttpResponseForbidden,
    HttpResponseNotAllowed,
)
from django.utils.translation import gettext as _
from django_eventstream import eventstream
from django_eventstream.eventrequest import EventRequest
from django_eventstream.views import events as eventstream_events

from . import cache, compat, grip, sse, store
from . import events as publishing
from .channels import channel_for
from .conf import settings
from .watch import resync_open_pages, watching, while_open

logger = logging.getLogger(__name__)

# Attempts to reach Redis again: soon at first, then every second (a failed attempt costs little).
RETRY_DELAYS: Final = (0.2, 0.5, 1)


async def events(request: HttpRequest) -> HttpResponseBase:
    """The user's event stream."""
    if grip.enabled():  # the same URL serves in GRIP mode too (pages rendered before, next links)
        proxied: HttpResponseBase = await sync_to_async(held)(request)
        return proxied
    async with _openings():
        return await _open(request)


# One per event loop (a semaphore belongs to one); a loop that is gone takes its own with it.
_semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def _openings() -> AsyncIterator[None]:
    """A turn among ``ASYNC_DOWNLOADS_STREAM_OPENINGS`` stream requests set up at once in this process.

    Browsers come back all at once after a restart. Set up all at once, their
    requests' short-lived objects are interleaved in memory with the streams'
    long-lived ones, and the process keeps the whole peak: about 200 KB per stream
    for 2,000 streams opened at once here, against 49 KB with 32 set up at a time,
    in about the same time to open them all (bench/report.md, section ``live``).
    """
    limit = settings.STREAM_OPENINGS
    if not limit:
        yield
        return
    loop = asyncio.get_running_loop()
    semaphore = _semaphores.get(loop)
    if semaphore is None:
        semaphore = _semaphores[loop] = asyncio.Semaphore(int(limit))
    async with semaphore:
        yield


async def _open(request: HttpRequest) -> HttpResponseBase:
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


def held(request: HttpRequest) -> HttpResponseBase:
    """The event stream in GRIP mode (``async_downloads:held_events``): the proxy's instructions, at once.

    A sync view: under WSGI it runs in the worker's thread, with no event loop to
    start. Only a request whose ``Grip-Sig`` verifies with a proxy's key is served.
    The proxy's own requests for a next link (of streams held by earlier answers)
    carry no session: there the user is the one its signed ``es-meta`` names, and
    never someone else than the session's.
    """
    if not grip.enabled():
        raise Http404("GRIP mode is off.")
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET"])
    if not getattr(getattr(request, "grip", None), "signed", False):
        return HttpResponse(
            _("This event stream is served through the site's GRIP proxy; connect through it."),
            status=421, content_type="text/plain; charset=utf-8",
        )
    user: Any = request.user
    token = request.GET.get("es-meta")
    if token:
        named = grip.es_meta_user(token)
        if named is None:
            return HttpResponseBadRequest("Invalid es-meta.")
        if user.is_authenticated and str(user.pk) != named:
            return HttpResponseForbidden(_("Sign in to receive download events."))
        if not user.is_authenticated:
            user = _active_user(named)
            if user is None:
                return HttpResponseForbidden(_("Sign in to receive download events."))
        # The channels are the user's, as for any request.
        query = request.GET.copy()
        del query["es-meta"]
        request.GET = query  # type: ignore[assignment]  # a copy without es-meta, read only from here
    elif not user.is_authenticated:
        return HttpResponseForbidden(_("Sign in to receive download events."))
    problem = compat.unreadable_request(request)
    if problem:
        return HttpResponseBadRequest(problem)
    request.user = user
    failed = cache.fail_stalled(user)
    watching.hold(user.pk)  # the proxy holds the stream: its downloads are swept while any is active
    # What was failed just now went out before the proxy subscribed: the page gets it in the answer.
    return _held(request, user, whole_centre=bool(failed))


def _active_user(pk: str) -> Any:
    model = get_user_model()
    try:
        user = model._default_manager.get(pk=pk)
    except (model.DoesNotExist, ValueError, ValidationError):
        return None
    return user if getattr(user, "is_active", True) else None


def _held(request: HttpRequest, user: Any, whole_centre: bool = False) -> HttpResponseBase:
    """The proxy's instructions: the events since the request's id (the whole centre where
    they are too many or gone, or with ``whole_centre``), then hold the stream on the user's channel."""
    try:
        event_request = EventRequest(request, view_kwargs={"async_downloads": True})
        reply = eventstream.get_events(event_request)
    except (EventRequest.Error, eventstream.EventPermissionError):
        response: HttpResponseBase = eventstream_events(request, async_downloads=True)  # upstream's answer
        return response
    channel = channel_for(user.pk)
    found = reply.channel_items.get(channel, [])
    last_id = reply.channel_last_ids.get(channel)
    if whole_centre or channel in reply.channel_more or channel in reply.channel_reset:
        found = [sse.centre_event(user.pk, channel)]
    if found:
        last_id = found[-1].id
    publishing.catch_up(user.pk, channel, last_id)
    return grip.hold(request, channel, found)


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

"""Server-Sent Events through django-eventstream: channels, access, storage and delivery.

Each user has one channel, derived from their primary key, the
``ASYNC_DOWNLOADS_WS_CHANNEL_NAME`` prefix and the site's ``SECRET_KEY``, so
that sites sharing one Redis never read each other's events. The channel is
taken from ``request.user`` only.
"""

import asyncio
import functools
import json
import logging
import re

from asgiref.sync import SyncToAsync, sync_to_async
from django.db import connections
from django.http import HttpResponseBadRequest, HttpResponseForbidden, HttpResponseNotAllowed
from django.utils.crypto import salted_hmac
from django_eventstream.channelmanager import DefaultChannelManager
from django_eventstream.storage import RedisStorage

from .conf import settings

logger = logging.getLogger(__name__)

EVENT = "downloads"
RETRY_DELAYS = (0.2, 0.5, 1, 2, 3)
# An idle channel's event counter outlives its events, so that ids keep growing.
COUNTER_TTL = 7 * 24 * 60 * 60
# The ids django-eventstream gives events: "<channel>:<number>", comma-separated.
EVENT_ID = re.compile(r"\A[^,:]+:\d{1,18}(?:,[^,:]+:\d{1,18})*\Z")


def channel_prefix():
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(settings.WS_CHANNEL_NAME)) + "-"


def channel_for(pk):
    digest = salted_hmac("async_downloads.channel", str(pk), algorithm="sha256").hexdigest()[:20]
    return f"{channel_prefix()}{pk}-{digest}"


def send(pk, html):
    from django_eventstream import send_event

    # One line of HTML is one `data:` line: less to store, publish, parse and
    # encode for every open stream than the template's indented lines.
    send_event(channel_for(pk), EVENT, " ".join(html.split()), json_encode=False)


def current_event_id(pk):
    """``lastEventId`` for a page rendered now: replay starts after the newest stored event."""
    from django_eventstream.utils import get_storage, make_id

    storage = get_storage()
    if storage is None:
        return ""
    channel = channel_for(pk)
    try:
        return make_id({channel: storage.get_current_id(channel)})
    except Exception:
        logger.warning("Could not read the current event id of %s.", channel, exc_info=True)
        return ""


class ChannelManager(DefaultChannelManager):
    """Download channels are readable by their own user only; other channels as by default."""

    def get_channels_for_request(self, request, view_kwargs):
        if view_kwargs.get("async_downloads"):
            return {channel_for(request.user.pk)} if request.user.is_authenticated else set()
        return super().get_channels_for_request(request, view_kwargs)

    def can_read_channel(self, user, channel):
        if not channel.startswith(channel_prefix()):
            return super().can_read_channel(user, channel)
        return user is not None and user.is_authenticated and channel == channel_for(user.pk)


_storage_clients = {}


class EventStorage(RedisStorage):
    """django-eventstream's RedisStorage, keeping events for a short time.

    Stored events serve clients that reconnect; ``ASYNC_DOWNLOADS_EVENT_TTL``
    seconds (default 15 minutes) is enough for that and keeps Redis small.
    Key names are RedisStorage's, so its ``get_events`` reads them.
    """

    @property
    def redis(self):
        # One client (and connection pool) per process, not one per thread:
        # RedisStorage instances are made per thread.
        key = repr(sorted(self.connection_details.items()))
        client = _storage_clients.get(key)
        if client is None:
            client = _storage_clients.setdefault(key, self._connect())
        return client

    def append_event(self, channel, event_type, data):
        from django_eventstream.event import Event

        counter = f"event_counter:{channel}"
        event_id = self.redis.incr(counter)
        ttl = settings.EVENT_TTL
        with self.redis.pipeline() as pipe:
            pipe.set(f"event:{channel}:{event_id}", json.dumps({"type": event_type, "data": data}), ex=ttl)
            pipe.expire(counter, max(ttl, COUNTER_TTL))
            pipe.execute()
        return Event(channel, event_type, data, id=event_id)


async def events(request):
    """The user's event stream (``async_downloads:events``)."""
    user = await request.auser()
    if not user.is_authenticated:
        return HttpResponseForbidden("Sign in to receive download events.")
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET"])
    problem = _unreadable(request)
    if problem:
        return HttpResponseBadRequest(problem)
    request.user = user  # django-eventstream reads it; no second lookup
    ensure_listener()
    _resume_after_what_was_read()
    import jwt
    from django_eventstream.views import events as eventstream_events

    try:
        response = await sync_to_async(eventstream_events)(request, async_downloads=True)
    except jwt.InvalidTokenError:
        return HttpResponseBadRequest("Invalid es-meta.")
    # The stream may stay open for hours: give back what the request holds.
    await sync_to_async(connections.close_all)()
    if getattr(response, "is_async", False):
        _release_request_thread()
    return response


def _unreadable(request):
    """Why django-eventstream would fail on this request, or None.

    It answers a malformed event id with a 500 or a stream that breaks
    after its headers, and ``recover`` without a GRIP proxy with a 500.
    """
    ids = [request.headers.get("Last-Event-ID", ""), *request.GET.getlist("lastEventId")]
    if any(value and not EVENT_ID.match(value) for value in ids):
        return "Malformed Last-Event-ID or lastEventId."
    if "recover" in request.GET and not hasattr(request, "grip"):
        return "recover is for requests through a GRIP proxy."
    return None


def _resume_after_what_was_read():
    """Make django-eventstream's reads move the request past the events they returned.

    Its stream reads the storage from the request's ids, sends what it found, and
    reads again when live events came in meanwhile; it moves the request's ids on
    only when a read was cut short by its limit, so that second read sent every
    event of the first one again (a page whose export was already running saw its
    progress start over). Applied once per process; idempotent.
    """
    from django_eventstream import eventstream

    if getattr(eventstream.get_events, "resumes_after_read", False):
        return
    read = eventstream.get_events

    @functools.wraps(read)
    def get_events(request, *args, **kwargs):
        response = read(request, *args, **kwargs)
        for channel, items in response.channel_items.items():
            if items:
                request.channel_last_ids[channel] = str(items[-1].id)
            elif channel in response.channel_last_ids:
                request.channel_last_ids[channel] = response.channel_last_ids[channel]
        return response

    get_events.resumes_after_read = True
    eventstream.get_events = get_events


def _release_request_thread():
    """Stop the thread that asgiref keeps for this request while its stream is open.

    Django runs each ASGI request's synchronous code in a thread of its own,
    which lives until the response ends: for thousands of idle streams,
    thousands of idle threads. From here on, this request's synchronous calls
    (the response middleware, the stream's Redis reads; no database) run in
    asgiref's shared thread instead.
    """
    try:
        context = SyncToAsync.thread_sensitive_context.get(None)
        executor = SyncToAsync.context_to_thread_executor.pop(context, None) if context else None
        SyncToAsync.thread_sensitive_context.set(None)
    except (AttributeError, TypeError):  # a future asgiref without these internals
        return
    if executor is not None:
        executor.shutdown(wait=False)


_supervisors = {}


def ensure_listener():
    """Run django-eventstream's Redis listener under a supervisor that restarts it.

    django-eventstream starts its listener once per process and never again
    once Redis has gone away; this one reconnects with backoff and then makes
    every open stream re-read what it missed from the event storage.
    """
    from django.conf import settings as django_settings
    from django_eventstream.views import get_listener_manager

    if not hasattr(django_settings, "EVENTSTREAM_REDIS"):
        return
    loop = asyncio.get_running_loop()
    manager = get_listener_manager()
    with manager.lock:
        manager.redis_listener_started = True
        if loop in _supervisors and not _supervisors[loop].done():
            return
        _supervisors[loop] = loop.create_task(_supervise(manager))


async def _supervise(manager):
    from django_eventstream.views import RedisListener

    attempt = 0
    while True:
        listener = RedisListener()
        manager.redis_listener = listener
        try:
            await listener.pubsub.subscribe("events_channel")
            if attempt:
                logger.info("Event listener reconnected to Redis.")
                _resync_streams(manager)
            attempt = 0
            await listener.listen()
        except asyncio.CancelledError:
            raise
        except Exception:
            if attempt == 0:
                logger.warning("Event listener lost Redis; reconnecting.", exc_info=True)
        finally:
            await _close(listener)
        delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
        attempt += 1
        await asyncio.sleep(delay)


async def _close(listener):
    try:
        await listener.pubsub.aclose()
        await listener.redis_client.aclose()
    except Exception:
        pass


def _resync_streams(manager):
    """Wake every open stream as if it had overflowed: it re-reads the storage from its last id."""
    with manager.lock:
        listeners = {listener for group in manager.listeners_by_channel.values() for listener in group}
        for listener in listeners:
            listener.overflow = True
            listener.wake_threadsafe()

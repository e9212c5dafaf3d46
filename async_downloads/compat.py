"""Every adaptation of the app to internals of django-eventstream, asgiref and Django.

Each function names the upstream behaviour it works around. They rely on
attributes that are not public API, verified on the versions that
``pyproject.toml`` allows (django-eventstream 5.3, asgiref 3.8 to 3.13,
Django 5.2 to 6.1). ``problems()`` lists what is missing on the installed
versions: the system check ``async_downloads.W004`` reports it at start-up, and
tests/test_compat.py fails when an upgrade changes one of them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Final

import jwt
from asgiref.sync import SyncToAsync
from django.conf import settings as django_settings
from django.core.cache import BaseCache, caches
from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from django.http import HttpRequest
from django_eventstream import eventstream
from django_eventstream.event import Event
from django_eventstream.storage import RedisStorage
from django_eventstream.views import ListenerManager, RedisListener, get_listener_manager

#: What django-eventstream raises for a forged or expired ``es-meta``; it answers it with a 500.
InvalidEsMeta: Final = jwt.InvalidTokenError

# The ids django-eventstream gives events: "<channel>:<number>", comma-separated.
EVENT_ID: Final = re.compile(r"\A[^,:]+:\d{1,18}(?:,[^,:]+:\d{1,18})*\Z")
# The pub/sub channel that RedisListener subscribes to and send_event publishes on.
PUBSUB_CHANNEL: Final = "events_channel"


def problems() -> list[str]:
    """What the adaptations below need and the installed packages lack (empty when all is well)."""
    needs: list[tuple[str, Callable[[], bool]]] = [
        ("django_eventstream.eventstream.get_events", lambda: callable(getattr(eventstream, "get_events", None))),
        ("ListenerManager.lock, listeners_by_channel, redis_listener, redis_listener_started",
         lambda: all(hasattr(get_listener_manager(), name)
                     for name in ("lock", "listeners_by_channel", "redis_listener", "redis_listener_started"))),
        ("RedisListener.listen", lambda: callable(getattr(RedisListener, "listen", None))),
        ("RedisStorage.connection_details and _connect",
         lambda: callable(getattr(RedisStorage, "_connect", None))
         and callable(getattr(RedisStorage, "_get_redis_connection_details", None))),
        ("asgiref SyncToAsync.thread_sensitive_context and context_to_thread_executor",
         lambda: hasattr(SyncToAsync, "thread_sensitive_context")
         and callable(getattr(getattr(SyncToAsync, "context_to_thread_executor", None), "pop", None))),
        ("Django RedisCacheClient.get_client, _get_connection_pool, _client and _serializer",
         lambda: all(hasattr(RedisCacheClient, name) for name in ("get_client", "_get_connection_pool"))
         and all(hasattr(RedisCacheClient(["redis://"]), name) for name in ("_client", "_serializer"))),
    ]
    return [name for name, present in needs if not present()]


# --- django-eventstream: reading the storage ------------------------------------------------


def resume_after_read() -> None:
    """Make django-eventstream's reads move the request past the events they returned.

    Upstream behaviour: its stream reads the storage from the request's ids,
    sends what it found, and reads again when live events came in meanwhile;
    it moves the request's ids on only when a read was cut short by its limit,
    so that second read sent every event of the first one again (a page whose
    export was already running saw its progress start over). The stream looks
    ``eventstream.get_events`` up at each connection, so wrapping it takes
    effect for new streams. Idempotent.
    """
    if getattr(eventstream.get_events, "resumes_after_read", False):
        return
    read = eventstream.get_events

    def get_events(request: Any, *args: Any, **kwargs: Any) -> Any:
        response = read(request, *args, **kwargs)
        for channel, items in response.channel_items.items():
            if items:
                request.channel_last_ids[channel] = str(items[-1].id)
            elif channel in response.channel_last_ids:
                request.channel_last_ids[channel] = response.channel_last_ids[channel]
        return response

    # Attributes of the function: the mark that makes this idempotent, and the original.
    get_events.__dict__.update(resumes_after_read=True, __wrapped__=read)
    eventstream.get_events = get_events


def unreadable_request(request: HttpRequest) -> str | None:
    """Why django-eventstream would fail on this request, or None.

    Upstream behaviour: it answers a malformed event id with a 500 or with a
    stream that breaks after its headers, and ``recover`` without a GRIP proxy
    with a 500.
    """
    ids = [request.headers.get("Last-Event-ID", ""), *request.GET.getlist("lastEventId")]
    if any(value and not EVENT_ID.match(value) for value in ids):
        return "Malformed Last-Event-ID or lastEventId."
    if "recover" in request.GET and not hasattr(request, "grip"):
        return "recover is for requests through a GRIP proxy."
    return None


class SharedClientRedisStorage(RedisStorage):  # type: ignore[misc]  # django-eventstream is untyped
    """django-eventstream's RedisStorage with one Redis client per process, and events with a TTL.

    Upstream behaviour: an instance is made per thread, each with a client (and
    connection pool) of its own, and events live a fixed 2 minutes. The key
    names written by ``store_event`` are the ones its ``get_events`` reads.
    """

    _clients: dict[str, Any] = {}

    @property
    def redis(self) -> Any:
        key = repr(sorted(self.connection_details.items()))
        client = self._clients.get(key)
        if client is None:
            client = self._clients.setdefault(key, self._connect())
        return client

    def store_event(self, channel: str, event_type: str, data: Any, ttl: int, counter_ttl: int) -> Event:
        # One round trip: the counter's next value names the event's key.
        event_id = int(self.redis.eval(
            STORE_EVENT, 1, f"event_counter:{channel}", f"event:{channel}:",
            json.dumps({"type": event_type, "data": data}), ttl, counter_ttl,
        ))
        return Event(channel, event_type, data, id=event_id)


#: KEYS[1] the channel's event counter; ARGV: the event keys' prefix, the event, its TTL, the counter's TTL.
STORE_EVENT: Final = """
local id = redis.call('INCR', KEYS[1])
redis.call('SET', ARGV[1] .. id, ARGV[2], 'EX', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return id
"""


# --- django-eventstream: the Redis listener -------------------------------------------------


def take_over_listener() -> ListenerManager:
    """Keep django-eventstream from starting its own Redis listener; return its listener manager.

    Upstream behaviour: it starts one listener per process on the first stream's
    event loop and never again once Redis has gone away (the task dies), so
    live delivery stops until the process restarts. The app runs the listener
    itself (``async_downloads.stream``) and restarts it.
    """
    manager = get_listener_manager()
    with manager.lock:
        manager.redis_listener_started = True
    return manager


def new_listener(manager: ListenerManager) -> RedisListener:
    """A fresh RedisListener, installed as the manager's listener."""
    listener = RedisListener()
    manager.redis_listener = listener
    return listener


async def subscribe(listener: RedisListener) -> None:
    """Subscribe to ``PUBSUB_CHANNEL``: raises at once while Redis is away."""
    await listener.pubsub.subscribe(PUBSUB_CHANNEL)


async def listen(listener: RedisListener) -> None:
    """Hand each published event to the streams of this process, until Redis fails."""
    await listener.listen()


async def close_listener(listener: RedisListener) -> None:
    try:
        await listener.pubsub.aclose()
        await listener.redis_client.aclose()
    except Exception:
        pass


def deliver_here(channel: str, event: Event) -> None:
    """Hand ``event`` to the open streams of ``channel`` in this process, without Redis pub/sub.

    Upstream behaviour: its Redis listener passes each published message to
    ``ListenerManager.add_to_queues``, which queues it for the streams of this
    process and wakes them (thread-safe). A message published while the listener
    is not subscribed (redis-py reconnecting after a restart) reaches nobody.
    """
    get_listener_manager().add_to_queues(channel, event)


def wake_all_streams(manager: ListenerManager) -> int:
    """Make every open stream of this process re-read the storage from its last id.

    Upstream behaviour: a stream re-reads the storage only when its queue
    overflowed; setting ``overflow`` and waking it does that after events were
    missed (the listener was away). Returns how many streams were woken.
    """
    with manager.lock:
        listeners = {listener for group in manager.listeners_by_channel.values() for listener in group}
        for listener in listeners:
            listener.overflow = True
            listener.wake_threadsafe()
    return len(listeners)


# --- asgiref: the thread of a request --------------------------------------------------------


def release_request_thread() -> bool:
    """Stop the thread that asgiref keeps for this request while its response streams.

    Upstream behaviour: Django runs each ASGI request's synchronous code in a
    thread of its own (asgiref's thread-sensitive context), which lives until
    the response ends: for thousands of idle streams, thousands of idle
    threads. From here on, this request's synchronous calls run in asgiref's
    shared thread instead. Returns False where asgiref lacks these internals.
    """
    try:
        context = SyncToAsync.thread_sensitive_context.get(None)
        executor = SyncToAsync.context_to_thread_executor.pop(context, None) if context else None
        # asgiref annotates the variable without None, yet reads it with .get(None): None is "no context".
        SyncToAsync.thread_sensitive_context.set(None)  # type: ignore[arg-type]
    except (AttributeError, TypeError):
        return False
    if executor is not None:
        executor.shutdown(wait=False)
    return True


# --- Django: cache connections ---------------------------------------------------------------


def shared_cache(alias: str) -> BaseCache:
    """The cache ``alias`` for the record store: for Django's Redis backend, one per process
    that makes one Redis client per connection pool and keeps it.

    Upstream behaviour: ``caches[alias]`` is a backend per thread and per async
    context, and Django's ``RedisCacheClient.get_client`` builds a new
    ``redis.Redis`` for every operation (about 0.1 ms of CPU, as much as the
    command itself); each context's backend also has pools of its own, so every
    request under ASGI opens a Redis connection. Every operation still goes
    through the backend's own methods (keys, serializer, timeouts, pools as
    configured). Other backends, and a ``RedisCacheClient`` subclass with its own
    ``get_client`` (sharding, say), are returned as ``caches[alias]``.
    """
    backend = caches[alias]
    if not isinstance(backend, RedisCache):
        return backend
    marker = repr(django_settings.CACHES[alias])
    found = _shared_caches.get(alias)
    if found is not None and found[0] == marker:
        return found[1]
    shared = caches.create_connection(alias)
    client: Any = getattr(shared, "_cache")  # noqa: B009  # RedisCache's client, private
    if type(client).get_client is not RedisCacheClient.get_client:
        return backend
    redis_clients: dict[int, Any] = {}

    def get_client(key: Any = None, *, write: bool = False) -> Any:
        pool = client._get_connection_pool(write)
        found = redis_clients.get(id(pool))
        if found is None:
            found = redis_clients.setdefault(id(pool), client._client(connection_pool=pool))
        return found

    client.get_client = get_client
    _shared_caches[alias] = (marker, shared)
    return shared


_shared_caches: dict[str, tuple[str, BaseCache]] = {}

#: KEYS[1] the lock; ARGV[1] its holder's value as stored.
DELETE_IF: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def delete_if(backend: BaseCache, key: str, value: Any) -> bool | None:
    """Delete ``key`` if it holds ``value``, in one round trip; None where the backend cannot
    (anything but a ``shared_cache`` of Django's Redis backend).

    Upstream behaviour: Django's cache API has no compare-and-delete, so a lock
    is released with a ``get`` and a ``delete``: two round trips, and a window
    in which a lock that expired and was taken by another process is deleted.
    """
    if not isinstance(backend, RedisCache) or not isinstance(getattr(backend, "_cache", None), RedisCacheClient):
        return None
    client: Any = getattr(backend, "_cache")  # noqa: B009  # RedisCache's client, private
    redis_key = backend.make_and_validate_key(key)
    stored = client._serializer.dumps(value)
    return bool(client.get_client(redis_key, write=True).eval(DELETE_IF, 1, redis_key, stored))


def close_cache_connections() -> None:
    """Close this context's cache clients and their Redis connection pools.

    Upstream behaviour: Django keeps a cache client per async context and its
    ``close()`` leaves Redis connections open (``RedisCache._cache._pools``).
    """
    for backend in caches.all(initialized_only=True):
        backend.close()
        client = getattr(backend, "_cache", None)  # django.core.cache.backends.redis.RedisCache
        for pool in getattr(client, "_pools", {}).values():
            pool.disconnect()

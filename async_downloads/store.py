"""Download records in the Django cache, changed under a per-key lock.

A record is a dict stored under its download key; a collection is the list of
a user's download keys (newest first) stored under the collection key, as in
earlier releases, so code that reads the cache directly keeps working.
Every read-modify-write happens while holding ``<key>:lock``, taken with the
cache's atomic ``add``; that is what keeps concurrent web and worker processes
from losing downloads or bringing a cleared one back.

While the cache server is unreachable (Redis restarting, say), every call
waits for it, up to ``ASYNC_DOWNLOADS_OUTAGE_WAIT`` seconds, instead of failing at once.
"""

import logging
import math
import time
import uuid
from contextlib import contextmanager

from django.core.cache import caches

from .conf import settings

logger = logging.getLogger(__name__)

OUTAGE_RETRY_DELAYS = (0.1, 0.2, 0.5, 1)


class LockTimeout(RuntimeError):
    """The lock of a record could not be taken within ``ASYNC_DOWNLOADS_LOCK_TIMEOUT``."""


def get_cache():
    return PatientCache(caches[settings.CACHE_NAME])


class PatientCache:
    """The cache calls of the store, each waiting out an outage of the cache server.

    Without this, a task whose progress report meets a restarting Redis dies,
    and its download, which nothing can mark as failed while Redis is away,
    shows "running" until the stall timeout. Each call is retried on its own:
    reads, ``set`` and ``delete`` can be repeated safely; an ``add`` that was
    done before its connection broke is recognised by the value it stored.
    """

    def __init__(self, cache):
        self.cache = cache

    def get(self, *args, **kwargs):
        return _patiently(lambda: self.cache.get(*args, **kwargs))

    def get_many(self, *args, **kwargs):
        return _patiently(lambda: self.cache.get_many(*args, **kwargs))

    def set(self, *args, **kwargs):
        return _patiently(lambda: self.cache.set(*args, **kwargs))

    def delete(self, *args, **kwargs):
        return _patiently(lambda: self.cache.delete(*args, **kwargs))

    def add(self, key, value, *args, **kwargs):
        try:
            return self.cache.add(key, value, *args, **kwargs)
        except _outage_errors():
            return _wait_out(lambda: self.cache.add(key, value, *args, **kwargs) or self.cache.get(key) == value)

    def __getattr__(self, name):
        return getattr(self.cache, name)


def _outage_errors():
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError:
        return (ConnectionError, TimeoutError)
    # Redis's ConnectionError includes BusyLoadingError: a restarted server still reading its data.
    return (ConnectionError, TimeoutError, RedisConnectionError, RedisTimeoutError)


def _patiently(call):
    try:
        return call()
    except _outage_errors():
        return _wait_out(call)


def _wait_out(call):
    wait = settings.OUTAGE_WAIT
    logger.warning("The cache server is unreachable; waiting up to %s s for it.", wait, exc_info=True)
    deadline = time.monotonic() + wait
    attempt = 0
    while True:
        time.sleep(OUTAGE_RETRY_DELAYS[min(attempt, len(OUTAGE_RETRY_DELAYS) - 1)])
        attempt += 1
        try:
            return call()
        except _outage_errors():
            if time.monotonic() > deadline:
                raise


@contextmanager
def locked(key):
    cache = get_cache()
    lock_key = f"{key}:lock"
    token = uuid.uuid4().hex
    timeout = settings.LOCK_TIMEOUT
    # Wait longer than a lock can live, so that the lock of a process that
    # died while holding it has expired before anyone gives up.
    deadline = time.monotonic() + 2 * timeout
    delay = 0.001
    while not cache.add(lock_key, token, timeout):
        if time.monotonic() > deadline:
            raise LockTimeout(f"Could not lock {key!r} within {2 * timeout} s.")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    try:
        yield cache
    finally:
        if cache.get(lock_key) == token:
            cache.delete(lock_key)


def seconds_left(expires):
    """Cache timeout for something that must live until the epoch time ``expires``."""
    return max(1, math.ceil(expires - time.time()))


def read(key):
    return get_cache().get(key)


def read_many(keys):
    found = get_cache().get_many(keys)
    return [found[key] for key in keys if key in found]


def write(cache, record):
    cache.set(record["key"], record, seconds_left(record["expires"]))


def create(record, collection_key):
    """Store a new record and put its key first in its collection."""
    with locked(collection_key) as cache:
        write(cache, record)
        keys = cache.get(collection_key) or []
        keys = [record["key"], *keys]
        _write_collection(cache, collection_key, keys, record["expires"])


def update(key, change, then=None):
    """Apply ``change(record)`` under the record's lock and store the result.

    ``change`` returns False to leave the record as it was. A missing record
    (cleared or expired) stays missing. ``then(record)`` runs after the write,
    still under the lock. Returns the stored record, or None.
    """
    with locked(key) as cache:
        record = cache.get(key)
        if record is None or change(record) is False:
            return None
        record["updated"] = time.time()
        write(cache, record)
        if then is not None:
            then(record)
        return record


def delete(key, collection_key):
    """Remove a record and its key from its collection; return the removed record."""
    with locked(key) as cache:
        record = cache.get(key)
        cache.delete(key)
    remove_from_collection(collection_key, {key})
    return record


def extend_collection(collection_key, expires):
    """Make sure the collection lives at least until ``expires``."""
    with locked(collection_key) as cache:
        keys = cache.get(collection_key)
        if keys:
            _write_collection(cache, collection_key, keys, expires)


def remove_from_collection(collection_key, gone):
    with locked(collection_key) as cache:
        keys = cache.get(collection_key) or []
        kept = [key for key in keys if key not in gone]
        if len(kept) == len(keys):
            return keys
        _write_collection(cache, collection_key, kept, None)
        return kept


def _write_collection(cache, collection_key, keys, expires):
    """Store ``keys`` so that the collection outlives every record in it."""
    records = cache.get_many(keys)
    latest = max([r.get("expires") or 0 for r in records.values()] + [expires or 0])
    live = [key for key in keys if key in records]
    if live:
        # Timeouts are whole seconds, rounded up: one more second keeps the
        # collection from expiring a fraction of a second before its newest record.
        cache.set(collection_key, live, seconds_left(latest) + 1)
    else:
        cache.delete(collection_key)

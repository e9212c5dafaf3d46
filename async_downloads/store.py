"""Download records: in the Django cache (the default), or in the database.

With ``ASYNC_DOWNLOADS_STORE = "database"`` every call below is answered by
``async_downloads.dbstore`` (the ``Download`` model) instead; what follows
describes the cache store, whose locks also order the publishing of events in
both modes.

Download records in the Django cache, changed under a per-key lock.

A record is a dict stored under its download key; a collection is the list of
a user's download keys (newest first) stored under the collection key, as in
earlier releases, so code that reads the cache directly keeps working.
Every read-modify-write happens while holding ``<key>:lock``, taken with the
cache's atomic ``add``; that is what keeps concurrent web and worker processes
from losing downloads or bringing a cleared one back.

While the cache server is unreachable (Redis restarting, say), every call
waits for it, up to ``ASYNC_DOWNLOADS_OUTAGE_WAIT`` seconds, instead of failing at once.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from django.core.cache import BaseCache
from django.db import transaction

from . import compat, dbstore, records
from .conf import settings, store_name
from .records import Record

logger = logging.getLogger(__name__)

OUTAGE_RETRY_DELAYS = (0.1, 0.2, 0.5, 1)
#: A key that lives as long as the cache server keeps its data: when it is gone, so is
#: everything else (a restart without persistence, a flush).
EPOCH_KEY = "async_downloads:epoch"
CLEARED_SUFFIX = ":cleared"


class LockTimeout(RuntimeError):
    """The lock of a record could not be taken within ``ASYNC_DOWNLOADS_LOCK_TIMEOUT``."""


T = TypeVar("T")


def get_cache() -> PatientCache:
    return PatientCache(compat.shared_cache(settings.CACHE_NAME))


class PatientCache:
    """The cache calls of the store, each waiting out an outage of the cache server.

    Without this, a task whose progress report meets a restarting Redis dies,
    and its download, which nothing can mark as failed while Redis is away,
    shows "running" until the stall timeout. Each call is retried on its own:
    reads, ``set`` and ``delete`` can be repeated safely; an ``add`` that was
    done before its connection broke is recognised by the value it stored.
    """

    def __init__(self, cache: BaseCache) -> None:
        self.cache = cache

    def get(self, key: str, default: Any = None) -> Any:
        return _patiently(lambda: self.cache.get(key, default))

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        return _patiently(lambda: self.cache.get_many(keys))

    def set(self, key: str, value: Any, timeout: float | None) -> None:
        _patiently(lambda: self.cache.set(key, value, timeout))

    def delete(self, key: str) -> bool:
        return _patiently(lambda: self.cache.delete(key))

    def delete_if(self, key: str, value: Any) -> bool:
        """Delete ``key`` if it holds ``value`` (in one round trip where the backend can)."""
        done = _patiently(lambda: compat.delete_if(self.cache, key, value))
        if done is not None:
            return done
        if self.get(key) == value:
            return self.delete(key)
        return False

    def add(self, key: str, value: Any, timeout: float | None) -> bool:
        try:
            return self.cache.add(key, value, timeout)
        except _outage_errors():
            return _wait_out(lambda: self.cache.add(key, value, timeout) or self.cache.get(key) == value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cache, name)


def _outage_errors() -> tuple[type[BaseException], ...]:
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError:
        return (ConnectionError, TimeoutError)
    # Redis's ConnectionError includes BusyLoadingError: a restarted server still reading its data.
    return (ConnectionError, TimeoutError, RedisConnectionError, RedisTimeoutError)


def _patiently(call: Callable[[], T]) -> T:
    try:
        return call()
    except _outage_errors():
        return _wait_out(call)


def _wait_out(call: Callable[[], T]) -> T:
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
def locked(key: str) -> Iterator[PatientCache]:
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
        cache.delete_if(lock_key, token)


def seconds_left(expires: float) -> int:
    """Cache timeout for something that must live until the epoch time ``expires``."""
    return max(1, math.ceil(expires - time.time()))


def collection_key(user_id: Any) -> str:
    """The cache key of the list of a user's download keys."""
    return str(settings.COLLECTION_KEY_FORMAT).format(user_id)


def in_database() -> bool:
    """Whether records live in the database (``ASYNC_DOWNLOADS_STORE = "database"``)."""
    return store_name() == "database"


def read(key: str) -> Record | None:
    if in_database():
        return dbstore.read(key)
    record: Record | None = get_cache().get(key)
    return record


def read_many(keys: list[str]) -> list[Record]:
    if in_database():
        return dbstore.read_many(keys)
    found = get_cache().get_many(keys)
    return [found[key] for key in keys if key in found]


def read_downloads(user_id: Any) -> list[Record]:
    """The records of a user's downloads, newest first; a plain read that changes nothing."""
    return read_downloads_of([user_id])[user_id]


def read_downloads_of(user_ids: list[Any]) -> dict[Any, list[Record]]:
    """``read_downloads`` of each of ``user_ids`` at once: two cache reads (one query) for all of them."""
    if in_database():
        return dbstore.read_downloads_of(user_ids)
    collections: dict[str, list[str]] = get_cache().get_many([collection_key(user_id) for user_id in user_ids])
    found = {record["key"]: record for record in read_many(
        [key for keys in collections.values() for key in keys]
    )}
    result = {}
    for user_id in user_ids:
        mine = [found[key] for key in collections.get(collection_key(user_id), ())
                if key in found and found[key].get("user_id") == user_id]
        result[user_id] = sorted(mine, key=lambda record: record["created"], reverse=True)
    return result


def write(cache: PatientCache, record: Record) -> None:
    cache.set(record["key"], record, seconds_left(record["expires"]))


def create(record: Record, collection_key: str) -> None:
    """Store a new record and put its key first in its collection."""
    if in_database():
        dbstore.create(record)
        return
    with locked(collection_key) as cache:
        write(cache, record)
        keys: list[str] = cache.get(collection_key) or []
        keys = [record["key"], *keys]
        _write_collection(cache, collection_key, keys, record["expires"])


def create_unless(record: Record, collection_key: str, refuse: Callable[[list[Record]], T | None]) -> T | None:
    """``create``, unless ``refuse`` finds a reason not to in the user's current records.

    ``refuse(records)`` is given the records of the collection (of the record's user)
    and returns None to let the record be created, or something else, which is returned
    with nothing stored. Both happen under the collection's lock, the one ``create``
    takes, so concurrent creates see each other: a cap on downloads holds across processes.
    """
    if in_database():
        return dbstore.create_unless(record, refuse)
    with locked(collection_key) as cache:
        keys: list[str] = cache.get(collection_key) or []
        found = cache.get_many(keys)
        current = [found[key] for key in keys if key in found and found[key].get("user_id") == record["user_id"]]
        refused = refuse(current)
        if refused is not None:
            return refused
        write(cache, record)
        _write_collection(cache, collection_key, [record["key"], *keys], record["expires"])
    return None


def update(
    key: str, change: Callable[[Record], object], then: Callable[[Record], None] | None = None
) -> Record | None:
    """Apply ``change(record)`` under the record's lock and store the result.

    ``change`` returns False to leave the record as it was. A missing record
    (cleared or expired) stays missing. ``then(record)`` runs after the write,
    still under the lock. Returns the stored record, or None.
    """
    if in_database():
        return dbstore.update(key, change, then)
    with locked(key) as cache:
        record: Record | None = cache.get(key)
        if record is None or change(record) is False:
            return None
        record["updated"] = time.time()
        write(cache, record)
        if then is not None:
            then(record)
        return record


def transition(
    key: str,
    state: str,
    *,
    when: Callable[[Record], bool] | None = None,
    then: Callable[[Record], None] | None = None,
    errors: str = "",
    **fields: Any,
) -> Record | None:
    """Move the record of ``key`` into ``state`` under its lock, if ``when(record)`` (if
    given) agrees and ``records.TRANSITIONS`` allows that move from its current state.

    ``fields`` are changed along with the state; ``then`` runs as for ``update``.
    Returns the stored record, or None if nothing moved.
    """

    def change(record: Record) -> bool:
        if (when is not None and not when(record)) or not records.can_move(record, state):
            return False
        records.move(record, state, errors=errors, **fields)
        return True

    return update(key, change, then=then)


def delete(key: str, collection_key: str) -> Record | None:
    """Remove a record and its key from its collection; return the removed record."""
    if in_database():
        return dbstore.delete(key)
    with locked(key) as cache:
        record: Record | None = cache.get(key)
        cache.delete(key)
        if record is not None:
            # Tells a task still running for it that its user cleared it (its record was not lost).
            cache.set(key + CLEARED_SUFFIX, True, seconds_left(record["expires"]))
    remove_from_collection(collection_key, {key})
    return record


def was_cleared(key: str) -> bool:
    """Whether the download of ``key`` was cleared by its user (rather than lost or expired)."""
    if in_database():
        return dbstore.was_cleared(key)
    return bool(get_cache().get(key + CLEARED_SUFFIX))


_epoch: list[str] = []


def data_lost() -> bool:
    """Whether the cache server lost its data since this process last asked (first call: False).

    The epoch key has no timeout: only a restart without persistence, a flush,
    or an eviction policy that evicts keys without one takes it away. The database
    store loses nothing: always False there.
    """
    if in_database():
        return False
    cache = get_cache()
    current = cache.get(EPOCH_KEY)
    if current is None:
        cache.add(EPOCH_KEY, uuid.uuid4().hex, None)
        current = cache.get(EPOCH_KEY)
    lost = bool(_epoch) and _epoch[0] != current
    _epoch[:] = [current]
    return lost


def extend_collection(collection_key: str, expires: float) -> None:
    """Make sure the collection lives at least until ``expires``."""
    if in_database():
        return  # rows have no collection: a user's list is a query
    with locked(collection_key) as cache:
        keys: list[str] | None = cache.get(collection_key)
        if keys:
            _write_collection(cache, collection_key, keys, expires)


def remove_from_collection(collection_key: str, gone: set[str]) -> list[str]:
    if in_database():
        dbstore.remove(gone)
        return []
    with locked(collection_key) as cache:
        keys: list[str] = cache.get(collection_key) or []
        kept = [key for key in keys if key not in gone]
        if len(kept) == len(keys):
            return keys
        _write_collection(cache, collection_key, kept, None)
        return kept


def _write_collection(cache: PatientCache, collection_key: str, keys: list[str], expires: float | None) -> None:
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


def live_keys(keys: list[str]) -> set[str]:
    """Which of ``keys`` have a record (not cleared, not expired)."""
    if in_database():
        return dbstore.live_keys(keys)
    return set(get_cache().get_many(keys))


def cleanup_collection(collection_key: str) -> None:
    """Drop the keys of expired downloads from a collection, keeping its timeout (in the
    database store, delete the rows of expired downloads: a list is a query there)."""
    if in_database():
        dbstore.purge_expired()
        return
    cache = get_cache()
    keys = cache.get(collection_key) or []
    gone = set(keys) - set(cache.get_many(keys))
    if gone:
        remove_from_collection(collection_key, gone)


def purge_expired() -> int:
    """Delete the records of expired downloads where they do not expire by themselves (the
    database store's rows); return how many. The cache expires its records on its own."""
    return dbstore.purge_expired() if in_database() else 0


def after_commit(call: Callable[[], object]) -> None:
    """Run ``call`` once the new records are visible to other processes: at once in the cache
    store; in the database store when the transaction that wrote them commits (at once outside
    one), so that a worker never starts on a row it cannot see yet."""
    if in_database():
        transaction.on_commit(call, using=dbstore.alias())
    else:
        call()


def copy_cache_to_database(user_ids: Iterable[Any]) -> tuple[int, int]:
    """Copy the cache store's records of these users into the database store (moving a site
    from one to the other, ``manage.py copy_downloads_to_database``); see ``dbstore.copy_in``.
    Reads the cache whatever ``ASYNC_DOWNLOADS_STORE`` says. Returns ``(created, replaced)``."""
    cache = get_cache()
    created = replaced = 0
    ids = list(user_ids)
    collections = cache.get_many([collection_key(pk) for pk in ids])
    for pk in ids:
        keys: list[str] = collections.get(collection_key(pk)) or []
        found = cache.get_many(keys)
        owned = [found[key] for key in keys if key in found and found[key].get("user_id") == pk]
        counts = dbstore.copy_in(owned)
        created, replaced = created + counts[0], replaced + counts[1]
    return created, replaced

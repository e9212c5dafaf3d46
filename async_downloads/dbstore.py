"""Download records in the database (``ASYNC_DOWNLOADS_STORE = "database"``).

The same calls as the cache store (``async_downloads.store`` routes to one or the other),
on the ``Download`` model, on the database alias ``ASYNC_DOWNLOADS_DATABASE``. The
database does what the cache store's locks do:

- a change is one transaction that locks the row before reading it, until the commit: with
  ``SELECT … FOR UPDATE`` where the database has it (PostgreSQL, MySQL), and on SQLite by
  writing first (a no-op ``UPDATE``), which takes the database's write lock. Reading first
  and writing after would let two PostgreSQL transactions lose an update, and two SQLite
  ones deadlock. ``then`` runs before the commit, so one download's
  changes are published in the order they were made;
- starting a download under a cap or a dedupe (``create_unless``) locks the user's row
  in ``DownloadOwner`` first, so concurrent starts of one user see each other;
- an expired row is never read; the cleanup deletes it (``purge_expired``).

While the database is unreachable (restarting, failing over), each call is tried again
for up to ``ASYNC_DOWNLOADS_OUTAGE_WAIT`` seconds, unless it runs inside a transaction
of the caller's, which only the caller can repeat.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from django.apps import apps
from django.db import DatabaseError, IntegrityError, InterfaceError, OperationalError, connections, transaction
from django.db.models import F, QuerySet

from . import records
from .conf import settings

if TYPE_CHECKING:
    from .models import Download
from .records import Record

logger = logging.getLogger(__name__)

OUTAGE_RETRY_DELAYS = (0.1, 0.2, 0.5, 1)
#: The key in a row's ``data`` naming the call that wrote it last: a call repeated after its
#: COMMIT's answer was lost finds its own write there, and does not apply its change twice.
WRITE_KEY = "_write"
T = TypeVar("T")


def alias() -> str:
    return str(settings.DATABASE)


def _model(name: str = "Download") -> Any:
    # Looked up when used: this module is imported (through the store) before apps are ready.
    return apps.get_model("async_downloads", name)


def rows() -> QuerySet[Download]:
    queryset: QuerySet[Download] = _model().objects.using(alias())
    return queryset


def _now() -> datetime:
    return datetime.now(UTC)


def _live() -> QuerySet[Download]:
    return rows().filter(expires__gt=_now())


def _patiently(call: Callable[[], T]) -> T:
    """Run ``call``, and again while the database is unreachable (see the module's doc)."""
    try:
        return call()
    except (OperationalError, InterfaceError) as error:
        if connections[alias()].in_atomic_block:
            raise
        first = error
    wait = float(settings.OUTAGE_WAIT)
    logger.warning("The database is unreachable; waiting up to %s s for it.", wait, exc_info=first)
    deadline = time.monotonic() + wait
    attempt = 0
    while True:
        time.sleep(OUTAGE_RETRY_DELAYS[min(attempt, len(OUTAGE_RETRY_DELAYS) - 1)])
        attempt += 1
        connections[alias()].close()  # a broken connection is not reused
        try:
            return call()
        except (OperationalError, InterfaceError):
            if time.monotonic() > deadline:
                raise


# --- Records and rows ------------------------------------------------------------------------


def _when(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _format(record: Record) -> str:
    return os.path.splitext(record.get("filepath") or record["filename"])[1].lstrip(".").lower()[:16]


def _columns(record: Record) -> dict[str, Any]:
    data = {name: value for name, value in record.items() if name != "timestamp"}
    finished = record["state"] in records.FINISHED
    return {
        "user_id": record["user_id"],
        "name": str(record["name"])[:255],
        "filename": record["filename"][:255],
        "format": _format(record),
        "state": record["state"],
        "percentage": max(0, min(100, int(record["percentage"]))),
        "errors": record["errors"],
        "created": _when(record["created"]),
        "updated": _when(record["updated"]),
        "expires": _when(record["expires"]),
        "finished": _when(record["updated"]) if finished else None,
        "task_id": str(record.get("task_id") or "")[:255],
        "data": data,
    }


def to_record(row: Download) -> Record:
    record: Record = {k: v for k, v in row.data.items() if k != WRITE_KEY}  # type: ignore[assignment]  # JSON
    record["timestamp"] = row.created
    record["user_id"] = row.user_id
    return record


# --- The store's calls -----------------------------------------------------------------------


def read(key: str) -> Record | None:
    def call() -> Record | None:
        row = _live().filter(pk=key).first()
        return None if row is None else to_record(row)

    return _patiently(call)


def read_many(keys: list[str]) -> list[Record]:
    def call() -> list[Record]:
        found = {str(row.pk): to_record(row) for row in _live().filter(pk__in=keys)}
        return [found[key] for key in keys if key in found]

    return _patiently(call)


def read_downloads(user_id: Any) -> list[Record]:
    """A user's downloads, newest first: one query on the (user, -created) index."""
    return _patiently(lambda: [to_record(row) for row in _live().filter(user_id=user_id).order_by("-created")])


def read_downloads_of(user_ids: list[Any]) -> dict[Any, list[Record]]:
    """``read_downloads`` of each of ``user_ids``, in one query."""

    def call() -> dict[Any, list[Record]]:
        result: dict[Any, list[Record]] = {user_id: [] for user_id in user_ids}
        by_text = {str(user_id): user_id for user_id in user_ids}
        for row in _live().filter(user_id__in=user_ids).order_by("-created"):
            record = to_record(row)
            result[by_text[str(record["user_id"])]].append(record)
        return result

    return _patiently(call)


def live_keys(keys: list[str]) -> set[str]:
    return _patiently(lambda: {str(pk) for pk in _live().filter(pk__in=keys).values_list("pk", flat=True)})


def _insert(record: Record) -> None:
    try:
        with transaction.atomic(using=alias()):
            _model()(pk=record["key"], **_columns(record)).save(using=alias(), force_insert=True)
    except IntegrityError:
        # Keys are new UUIDs: a row with this one is this call's own, committed by an attempt
        # whose answer was lost.
        if not rows().filter(pk=record["key"]).exists():
            raise


def create(record: Record) -> None:
    _patiently(lambda: _insert(record))


def create_unless(record: Record, refuse: Callable[[list[Record]], T | None]) -> T | None:
    """``create``, unless ``refuse`` (given the user's live records) returns something; under
    the user's ``DownloadOwner`` row lock, so concurrent starts of one user see each other."""

    def call() -> T | None:
        with transaction.atomic(using=alias()):
            _lock_owner(record["user_id"])
            current = [to_record(row) for row in _live().filter(user_id=record["user_id"]).order_by("-created")]
            if any(existing["key"] == record["key"] for existing in current):
                return None  # created by an attempt whose answer was lost
            refused = refuse(current)
            if refused is not None:
                return refused
            _model()(pk=record["key"], **_columns(record)).save(using=alias(), force_insert=True)
        return None

    return _patiently(call)


def _lock_owner(user_id: Any) -> None:
    owner = _model("DownloadOwner")
    owners = owner.objects.using(alias())
    # Written first (see the module's doc): the write is the lock.
    if not owners.filter(pk=user_id).update(starts=F("starts") + 1):
        owners.bulk_create([owner(pk=user_id)], ignore_conflicts=True)
        owners.filter(pk=user_id).update(starts=F("starts") + 1)


def update(
    key: str, change: Callable[[Record], object], then: Callable[[Record], None] | None = None
) -> Record | None:
    """As the cache store's: ``change(record)`` in one transaction that holds the row's lock."""
    token = uuid.uuid4().hex

    def call() -> Record | None:
        with transaction.atomic(using=alias()):
            live = _live().filter(pk=key)
            if connections[alias()].features.has_select_for_update:
                row = live.select_for_update().first()  # read with the row's lock (PostgreSQL, MySQL)
                if row is None:
                    return None
            else:
                # SQLite: the no-op write that locks the database first, then the read.
                if not live.update(percentage=F("percentage")):
                    return None
                row = live.get()
            record = to_record(row)
            if row.data.get(WRITE_KEY) == token:
                return record  # this call's change, committed by an attempt whose answer was lost
            if change(record) is False:
                return None
            record["updated"] = time.time()
            write(record, token)
            if then is not None:
                then(record)
            return record

    return _patiently(call)


def write(record: Record, token: str = "") -> None:
    """Store a changed record in its row (inside ``update``'s transaction), marked as ``token``'s."""
    columns = _columns(record)
    columns["data"][WRITE_KEY] = token
    rows().filter(pk=record["key"]).update(**columns)


def delete(key: str) -> Record | None:
    def call() -> Record | None:
        with transaction.atomic(using=alias()):
            row = rows().select_for_update().filter(pk=key).first()
            if row is None:
                return None
            row.delete(using=alias())
            return to_record(row) if row.expires > _now() else None

    return _patiently(call)


def was_cleared(key: str) -> bool:
    """A database keeps its rows: one that is gone was cleared (or expired and purged)."""
    return _patiently(lambda: not rows().filter(pk=key).exists())


def remove(keys: set[str]) -> None:
    _patiently(lambda: rows().filter(pk__in=list(keys)).delete())


def purge_expired() -> int:
    """Delete the rows of expired downloads; their files go with the cleanup's next pass."""
    deleted, _ = _patiently(lambda: rows().filter(expires__lte=_now()).delete())
    return deleted


def delete_user_downloads(user_id: Any) -> list[Record]:
    """Delete every row of a user (a deleted user's); return the records."""

    def call() -> list[Record]:
        with transaction.atomic(using=alias()):
            found = [to_record(row) for row in rows().filter(user_id=user_id)]
            rows().filter(user_id=user_id).delete()
            return found

    return _patiently(call)


def reachable() -> bool:
    try:
        rows().exists()
    except DatabaseError:
        return False
    return True


def copy_in(found: list[Record]) -> tuple[int, int]:
    """Store records read from the cache store: new ones as rows, and the rows of those that
    changed in the cache since (their ``updated`` is later) replaced. Returns
    ``(created, replaced)``; a row at least as new as its record is left as it is."""
    created = replaced = 0
    for record in found:
        with transaction.atomic(using=alias()):
            row = rows().select_for_update().filter(pk=record["key"]).first()
            if row is None:
                _model()(pk=record["key"], **_columns(record)).save(using=alias(), force_insert=True)
                created += 1
            elif float(row.data.get("updated", 0)) < record["updated"]:
                write(record)
                replaced += 1
    return created, replaced

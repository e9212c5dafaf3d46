"""The cache API: what views and tasks call to start, report and finish downloads.

Reads (``get_download``, ``get_downloads``…) only read. Every change goes
through ``store.transition`` (the allowed moves are ``records.TRANSITIONS``)
and is then published once, by ``events.download_changed``.
"""

from __future__ import annotations

import decimal
import logging
import math
import numbers
import time
from typing import Any, Final

from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.urls import NoReverseMatch, reverse
from django.utils import translation
from django.utils.translation import ngettext

from . import events, files, heartbeat, jobs, records, store, writers
from .conf import settings
from .records import (
    CANCELLED,
    COMPLETE,
    ERROR,
    FINISHED,
    KEY_PATTERN,
    PENDING,
    RETRYABLE,
    RUNNING,
    SAVE_FAILED,
    STALLED,
    TASK_FAILED,
    DownloadCancelled,
    is_download_key,
    is_retryable,
)
from .records import Record as Record  # re-exported: the type of what the API returns
from .users import user_pk

logger = logging.getLogger(__name__)

__all__ = [
    "CANCELLED", "COMPLETE", "ERROR", "FINISHED", "KEY_PATTERN", "PENDING", "RETRYABLE", "RUNNING",
    "SAVE_FAILED", "STALLED", "TASK_FAILED",
    "DownloadCancelled",
    "TooManyDownloads",
    "cancel_download",
    "cleanup_collection",
    "clear_user_downloads",
    "clear_download",
    "fail_stalled",
    "get_collection_key",
    "get_download",
    "get_downloads",
    "get_downloads_for_pk",
    "get_user_download",
    "heartbeat_interval",
    "init_download",
    "is_cancelled",
    "is_download_key",
    "is_retryable",
    "retry_download",
    "save_download",
    "set_error",
    "set_percentage",
    "task_failed",
    "task_returned",
    "task_started",
    "update_percentage",
]


def get_collection_key(user: Any) -> str:
    return store.collection_key(user_pk(user))


class TooManyDownloads(PermissionDenied):
    """The user has ``limit`` downloads in progress already (``ASYNC_DOWNLOADS_MAX_IN_PROGRESS``).

    Raised by ``init_download``, so by the shortcuts and ``retry_download``, before
    anything is created or started. ``str()`` of it is a message for the user, in the
    active language. Left uncaught in a view, Django answers 403 Forbidden.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return ngettext(
            "You already have %(limit)d download in progress. "
            "Wait for it to finish, or cancel it, before starting another.",
            "You already have %(limit)d downloads in progress. "
            "Wait for one to finish, or cancel one, before starting another.",
            self.limit,
        ) % {"limit": self.limit}


def init_download(user: Any, filename: str, name: str | None = None) -> tuple[str, str]:
    """Record a new pending download; return ``(collection_key, download_key)``.

    The active language (in a view, the request's) is kept with it: rows rendered for the
    user in a worker are rendered in that language. Raises ``TooManyDownloads`` if the
    user has ``ASYNC_DOWNLOADS_MAX_IN_PROGRESS`` downloads in progress already.
    """
    collection_key, download_key, _ = init_task_download(user, filename, name)
    return collection_key, download_key


def init_task_download(
    user: Any, filename: str, name: str | None = None, task: records.TaskInfo | None = None
) -> tuple[str, str, bool]:
    """``init_download`` for the call of a task described by ``task``; returns
    ``(collection_key, download_key, created)``.

    With ``ASYNC_DOWNLOADS_DEDUPE``, a download of the user's still in progress for the
    same task and arguments is returned instead of a new one (``created`` is False).
    The cap and the dedupe are checked under the collection's lock, so that concurrent
    starts see each other.
    """
    pk = user_pk(user)
    collection_key = store.collection_key(pk)
    download_key = records.new_key()
    filename = files.safe_filename(filename)
    record = records.new_record(
        pk, download_key, filename, files.download_path(download_key, filename), name or filename,
        settings.CSS_CLASS, settings.TIMEOUT, translation.get_language(),
    )
    if task:
        record["task"] = task
    if settings.MAX_IN_PROGRESS is None and not (task and settings.DEDUPE):
        store.create(record, collection_key)  # nothing to check: no need to read the user's list
    else:
        running = store.create_unless(record, collection_key, lambda current: _refuse(current, task))
        if running is not None:
            return collection_key, running, False
    events.download_changed(record, events.CREATED)
    return collection_key, download_key, True


def _refuse(current: list[Record], task: records.TaskInfo | None) -> str | None:
    """The key of a running download that ``task`` duplicates, or None to create; raises
    ``TooManyDownloads`` over the cap."""
    in_progress = [record for record in current if record["state"] not in FINISHED]
    if task and settings.DEDUPE:
        for record in in_progress:
            if _same_call(record.get("task"), task):
                return record["key"]
    limit = settings.MAX_IN_PROGRESS
    if limit is not None and len(in_progress) >= limit:
        raise TooManyDownloads(limit)
    return None


def _same_call(info: records.TaskInfo | None, task: records.TaskInfo) -> bool:
    if not info:
        return False
    return (info["name"], info["args"], info["kwargs"]) == (task["name"], task["args"], task["kwargs"])


# --- Reads -----------------------------------------------------------------------------------


def get_download(download_key: str) -> Record | None:
    """The record of a download, or None if it is unknown, cleared or expired."""
    return store.read(download_key) if is_download_key(download_key) else None


def get_user_download(user: Any, download_key: str) -> Record | None:
    """The record of ``download_key`` if it belongs to ``user``, else None."""
    record = get_download(download_key)
    if record is None or record["user_id"] != user_pk(user):
        return None
    return record


def get_downloads(user: Any) -> list[Record]:
    """The records of a user's downloads, newest first."""
    return store.read_downloads(user_pk(user))


def get_downloads_for_pk(pk: Any) -> list[Record]:
    return store.read_downloads(pk)


def is_cancelled(download_key: str) -> bool:
    """Whether the user cancelled the download (for tasks that report no progress).

    A cleared or expired download is not cancelled: its task may finish, and
    its file is then deleted at once.
    """
    record = get_download(download_key)
    return record is not None and record["state"] == CANCELLED


# --- Stalled downloads -----------------------------------------------------------------------


def fail_stalled(user: Any) -> list[str]:
    """Turn the user's stalled downloads into errors (their worker died); return their keys.

    A running download is stalled when the worker that runs its task has not
    beaten for ``ASYNC_DOWNLOADS_WORKER_TIMEOUT`` seconds (see
    ``async_downloads.heartbeat``), or, for a task run where nothing beats, when
    it has changed nothing for ``ASYNC_DOWNLOADS_STALL_TIMEOUT`` seconds. A
    pending download that has waited longer than ``ASYNC_DOWNLOADS_PENDING_WAIT``
    is marked as waiting for a worker (its row says so). The centre view, the
    event stream and the WebSocket consumer call this when a page connects, and
    the web process calls it for the users whose pages are open
    (``async_downloads.watch``). Reads never do this.
    """
    failed, _ = _fail_stalled_among(store.read_downloads(user_pk(user)))
    return failed


def sweep(pks: list[Any]) -> set[Any]:
    """``fail_stalled`` for each user of ``pks``, their records read at once (``async_downloads.watch``'s
    sweep); returns those of them who still have a download pending or running."""
    active = set()
    for pk, found in store.read_downloads_of(pks).items():
        try:
            if _fail_stalled_among(found)[1]:
                active.add(pk)
        except Exception:
            active.add(pk)  # looked at again next time
            logger.warning("Could not check the downloads of user %s for stalls.", pk, exc_info=True)
    return active


def _fail_stalled_among(found: list[Record]) -> tuple[list[str], bool]:
    """Fail the stalled ones of a user's records, mark the waiting ones; the keys failed, and
    whether any download is left pending or running."""
    failed, active = [], False
    for record in found:
        if _is_stalled(record) and _fail_stalled(record["key"]):
            failed.append(record["key"])
            continue
        if _newly_waiting(record):
            _mark_waiting(record["key"])
        active = active or record["state"] not in records.FINISHED
    return failed, active


def _is_stalled(record: Record) -> bool:
    return records.is_stalled(record, settings.STALL_TIMEOUT, settings.WORKER_TIMEOUT)


def _newly_waiting(record: Record) -> bool:
    return not record.get("waiting") and records.is_waiting(record, settings.PENDING_WAIT)


def _fail_stalled(download_key: str) -> Record | None:
    record = store.transition(download_key, ERROR, errors=str(STALLED), when=_is_stalled)
    if record is not None:
        logger.error(
            "Download %s: its worker went away (no heartbeat for %s s, or no report for %s s); marked as failed.",
            download_key, settings.WORKER_TIMEOUT, settings.STALL_TIMEOUT,
        )
        events.download_changed(record, events.FAILED)
    return record


def _mark_waiting(download_key: str) -> None:
    def change(record: Record) -> bool:
        if not _newly_waiting(record):
            return False
        record["waiting"] = True
        return True

    store.update(download_key, change, then=lambda record: events.download_changed(record, events.UPDATED))


# --- Workers ---------------------------------------------------------------------------------


def task_started(download_key: Any, task_id: str | None = None) -> bool:
    """A worker started a task for ``download_key``: the download is running from now on.

    Called in the worker process by ``async_downloads.receivers``; returns
    whether that process should beat for the download (``async_downloads.heartbeat``).
    A download whose record names another task id is left alone.
    """
    if not is_download_key(download_key):
        return False

    def ours(record: Record) -> bool:
        return not record.get("task_id") or task_id is None or record.get("task_id") == task_id

    record = store.transition(
        download_key, RUNNING, when=ours, then=_published_if_moved, beat=time.time(), waiting=False,
    )
    return record is not None


def _published_if_moved(record: Record) -> None:
    # Under the record's lock, as progress is. A task that starts again (a retry of
    # the worker's) leaves an already running row as it is.
    if record["percentage"] == 0:
        events.download_changed(record, events.UPDATED)


def task_returned(download_key: Any) -> None:
    """The task of ``download_key`` returned (or raised) in this worker: nothing beats for it now.

    A download its task left running (handed to another task, say) then stalls
    after ``ASYNC_DOWNLOADS_STALL_TIMEOUT`` without reports, as one run without
    heartbeats does.
    """
    if not is_download_key(download_key):
        return

    def forget_beat(record: Record) -> bool:
        return record.pop("beat", None) is not None and record["state"] not in FINISHED

    store.update(download_key, forget_beat)


# --- Progress --------------------------------------------------------------------------------


def set_percentage(download_key: str, percentage: Any, *, _rows: tuple[int, int] | None = None) -> None:
    """Set the progress of a download, clamped to 0..100 (100 comes with the file).

    Raises ``DownloadCancelled`` if the download was cancelled. An unchanged
    value is written again now and then (see ``heartbeat_interval``), so that
    a slow but live task is never taken for a stalled one. A download whose
    percentage is set here shows no row counts: those come from
    ``update_percentage`` (``_rows``, its ``(total, rows done)``, is its own).
    """
    value = _checked_percentage(percentage)
    moved = False

    def due(record: Record) -> bool:
        nonlocal moved
        if record["state"] == CANCELLED:
            raise DownloadCancelled(download_key)
        moved = record["percentage"] != value or record["state"] != RUNNING
        now = time.time()
        if not (moved or _first_rows(record, _rows) or now - record["updated"] >= heartbeat_interval()):
            return False
        # Written with the move that follows (which keeps these keys), or dropped with the record if it cannot move.
        _count_rows(record, _rows, now)
        return True

    def publish(record: Record) -> None:
        # Under the record's lock: a cancel or the completion cannot overtake this row.
        if moved:
            events.download_changed(record, events.UPDATED)

    store.transition(download_key, RUNNING, when=due, then=publish, percentage=value)


def _first_rows(record: Record, rows: tuple[int, int] | None) -> bool:
    """Whether this report of rows is the first of its run: written even at an unchanged percentage
    (a worker's start already showed 0), unpublished, so that the rate is measured from here."""
    return rows is not None and "rows_started_at" not in record


def _count_rows(record: Record, rows: tuple[int, int] | None, now: float) -> None:
    """Keep the rows done, and where the rate is measured from, in ``record`` (drop them without ``rows``)."""
    if rows is None:
        record.pop("rows_total", None)
        record.pop("rows_done", None)
        record.pop("rows_started_at", None)
        record.pop("rows_done_at_start", None)
        record.pop("rows_reported_at", None)
        return
    total, done = rows
    if record.get("rows_total") != total or done < record.get("rows_done", 0) or "rows_started_at" not in record:
        # The first report, or a new pass over other rows: the rate is measured afresh.
        record["rows_started_at"] = now
        record["rows_done_at_start"] = done
    record["rows_total"] = total
    record["rows_done"] = done
    record["rows_reported_at"] = now


def heartbeat_interval() -> float:
    """How often a running task's unchanged progress is written again: a quarter of the stall timeout."""
    return float(settings.STALL_TIMEOUT) / 4


def _checked_percentage(percentage: Any) -> int:
    return min(max(0, int(_checked_number("percentage", percentage))), 100)


def _checked_number(name: str, value: Any) -> Any:
    """``value`` if it is a finite real number (not a bool); a ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, decimal.Decimal)):
        raise ValueError(f"{name} must be a number, not {value!r}.")
    if isinstance(value, numbers.Integral):
        return value
    if isinstance(value, decimal.Decimal):
        finite = value.is_finite()
    else:
        try:
            finite = math.isfinite(value)
        except OverflowError:  # a Fraction too large for a float, say: finite all the same
            finite = True
    if not finite:
        raise ValueError(f"{name} must be a finite number, not {value!r}.")
    return value


# The last percentage each download showed, and when it is next due to be written
# again even if unchanged, per process: update_percentage is called once per row,
# so it must decide without asking the cache.
_shown: dict[str, tuple[int, float]] = {}
_SHOWN_LIMIT: Final = 4096


def update_percentage(download_key: str, total: Any, cur: Any, resolution: Any = 10) -> None:
    """Report that row ``cur`` (0-based) of ``total`` is done.

    The shown value moves in steps of ``100 / resolution`` percent (resolution
    is capped to 1..100) and is written only when it changes (or, unchanged, once per
    ``heartbeat_interval()``); it stops at 99 until the file is saved. Raises
    ``DownloadCancelled`` when it writes and finds the download cancelled.

    Each write also keeps the rows done and the total (``rows_done``, ``rows_total``)
    and what the rate is measured with (``rows_started_at`` and ``rows_done_at_start``,
    from the first report; ``rows_reported_at``), so that the row can show how far the
    task is and about how long it has left.
    """
    # Called once per row: plain comparisons rather than min()/max() on the common path.
    if type(total) is not int or type(cur) is not int or type(resolution) is not int:
        total, cur = _checked_number("total", total), _checked_number("cur", cur)
        resolution = int(_checked_number("resolution", resolution))
    if total <= 0:
        return
    if resolution < 1 or resolution > 100:
        resolution = 1 if resolution < 1 else 100
    step = (cur + 1) * resolution // total
    if step > resolution:
        step = resolution
    percentage = step * 100 // resolution
    if percentage > 99:
        percentage = 99
    shown = _shown.get(download_key)
    if shown is not None and shown[0] == percentage and time.monotonic() < shown[1]:
        return
    # Only here, where it writes: the rows done ride along, for the row's "12,400 of 300,000 rows · about 40 s left".
    rows_total = int(total)
    rows = (rows_total, min(max(int(cur) + 1, 0), rows_total)) if rows_total > 0 else None
    set_percentage(download_key, percentage, _rows=rows)
    if len(_shown) >= _SHOWN_LIMIT:
        _shown.clear()
    _shown[download_key] = (percentage, time.monotonic() + heartbeat_interval())


# --- Results ---------------------------------------------------------------------------------


def save_download(
    download_key: str,
    iterable: Any = None,
    file: Any = None,
    encoding: str | None = None,
    *,
    format: str | None = None,
    members: Any = None,
    escape_formulas: bool | None = None,
) -> None:
    """Store the result of a download: rows (``iterable``), a file object, or a zip of ``members``.

    Rows (the first is the header) are written in ``format`` ("csv", "jsonl" or
    "ndjson", "xlsx"); without it, in the format the download's file name ends with
    (.csv, .jsonl, .ndjson, .xlsx), else CSV. ``encoding`` is the CSV's
    (``ASYNC_DOWNLOADS_CSV_ENCODING``, "utf-8", by default; "utf-8-sig" adds the BOM
    Excel needs). ``members`` makes a zip: an iterable of ``(name, content)`` or
    ``(name, content, format)`` (``async_downloads.writers.Member``), each content
    rows, a file object, bytes or a str. ``escape_formulas`` (default
    ``ASYNC_DOWNLOADS_ESCAPE_FORMULAS``) neutralises CSV and XLSX text cells that a
    spreadsheet would take for a formula.

    A failure marks the download as an error for its user and is logged. A format
    that needs a package that is missing (XLSX without XlsxWriter) fails the
    download before anything is written and raises ImproperlyConfigured.
    """
    record = store.read(download_key)
    if record is None:
        _log_missing(download_key)
        return
    if record["state"] in FINISHED:
        return
    try:
        path = _write(record, iterable, file, encoding, format, members, escape_formulas)
    except DownloadCancelled:
        # Noticed by a progress report while the rows were written: keep no file.
        _discard_files(record["filepath"])
        return
    except Exception as error:
        logger.exception("Saving download %s (%r) failed.", download_key, record["name"])
        # The part written is gone before anyone is told of the error.
        _discard_files(record["filepath"])
        _finish(download_key, ERROR, errors=str(SAVE_FAILED))
        if isinstance(error, ImproperlyConfigured):
            raise
        return
    _complete(download_key, path)


def _log_missing(download_key: str, existed: bool = False) -> None:
    """Log why there is no record to save a file for (``existed``: there was one when saving began)."""
    if store.was_cleared(download_key):
        logger.info("save_download: download %s was cleared by its user; nothing is saved.", download_key)
    elif existed or heartbeat.heartbeats.runs_here(download_key):
        logger.warning(
            "save_download: the record of download %s was lost while its task ran (the cache server restarted "
            "without its data, was flushed, or evicted it); its user no longer sees it, and nothing is saved.",
            download_key,
        )
    else:
        logger.warning("save_download: download %s is unknown, expired or lost; nothing is saved.", download_key)


def _write(
    record: Record, iterable: Any, file: Any, encoding: str | None, format: str | None, members: Any,
    escape_formulas: bool | None,
) -> str:
    encoding = encoding or settings.CSV_ENCODING
    escape = bool(settings.ESCAPE_FORMULAS if escape_formulas is None else escape_formulas)
    if members is not None:
        if iterable is not None or file is not None:
            raise ValueError("save_download takes members (a zip) or rows or a file, not both.")
        return files.write_zip(record["filepath"], members, encoding, escape)
    if iterable is not None:
        row_format = writers.resolve_format(format, record["filename"])
        writers.require(row_format)
        return files.write_rows(record["filepath"], iterable, encoding, row_format, escape)
    if file is not None:
        return files.write_file(record["filepath"], file)
    raise ValueError("save_download needs an iterable of rows or a file (or members, for a zip).")


def _complete(download_key: str, path: str) -> None:
    record = store.transition(
        download_key, COMPLETE, filepath=path, url=_file_url(download_key), expires=time.time() + settings.TIMEOUT
    )
    if record is None:
        current = store.read(download_key)
        if current is None or current["state"] != COMPLETE or current["filepath"] != path:
            # Cancelled, cleared or lost while the file was being written: keep no file.
            _discard_files(path)
            if current is None:
                _log_missing(download_key, existed=True)
            return
        # Complete with this very file: the store's write landed although it was reported as failed.
        record = current
    store.extend_collection(store.collection_key(record["user_id"]), record["expires"])
    events.download_changed(record, events.COMPLETED)


def _file_url(download_key: str) -> str:
    try:
        return reverse("async_downloads:download", args=[download_key])
    except NoReverseMatch:
        return ""


def _discard_files(path: str) -> None:
    """Delete what a failed or cleared download left in storage; failing here is only logged."""
    try:
        files.delete_download_files(path)
    except Exception:
        logger.exception("Could not delete the files of %r.", path)


def _finish(download_key: str, state: str, errors: str = "") -> Record | None:
    record = store.transition(download_key, state, errors=errors)
    if record is not None:
        events.download_changed(record, records.KIND_OF_STATE[state])
    return record


def set_error(download_key: str, error: Any) -> None:
    """Mark a download as failed with ``error``, a message shown to its user."""
    logger.error("Download %s failed: %s", download_key, error)
    _finish(download_key, ERROR, errors=str(error))


def task_failed(download_key: Any, task_id: str | None, task_name: str | None) -> Record | None:
    """Mark a download as failed after its task raised, if that task was started for it
    by the shortcuts; returns the record, or None when it was not theirs or had finished."""
    if not is_download_key(download_key):
        return None
    record = store.transition(
        download_key, ERROR, errors=str(TASK_FAILED), when=lambda current: _started_by(current, task_id, task_name)
    )
    if record is not None:
        events.download_changed(record, events.FAILED)
    return record


def _started_by(record: Record, task_id: str | None, task_name: str | None) -> bool:
    if record.get("task_id"):
        return record.get("task_id") == task_id
    # The task may fail before the shortcut has stored its id.
    task = record.get("task")
    return bool(task) and task is not None and task.get("name") == task_name


# --- The user's actions ----------------------------------------------------------------------


def cleanup_collection(collection_key: str) -> None:
    """Drop the keys of expired downloads from a collection, keeping its timeout."""
    store.cleanup_collection(collection_key)


def _lookup(download_key: str, user: Any) -> Record | None:
    return get_download(download_key) if user is None else get_user_download(user, download_key)


def clear_download(download_key: str, user: Any = None) -> bool:
    """Delete a download's record and file. With ``user``, only if it is theirs.

    Returns True if something was cleared.
    """
    record = _lookup(download_key, user)
    if record is None:
        return False
    removed = store.delete(download_key, store.collection_key(record["user_id"]))
    _shown.pop(download_key, None)
    # A file left behind by a failing storage is removed by cleanup_expired_downloads.
    _discard_files((removed or record)["filepath"])
    events.download_changed(removed or record, events.CLEARED)
    return True


def clear_user_downloads(user: Any) -> int:
    """Clear every download of ``user`` (records and files, as ``clear_download``); return how many.

    Called when a user is deleted.
    """
    pk = user_pk(user)
    return sum(clear_download(record["key"]) for record in store.read_downloads(pk))


def cancel_download(download_key: str, user: Any = None) -> bool:
    """Stop a pending or running download (only the user's own when ``user`` is given).

    Its task is revoked if it has not started yet, and otherwise learns at its
    next progress report (``DownloadCancelled``) or ``is_cancelled`` check. No
    file is kept. Returns True if the download was cancelled.
    """
    if _lookup(download_key, user) is None:
        return False
    record = store.transition(download_key, CANCELLED)
    if record is None:
        return False
    _shown.pop(download_key, None)
    jobs.revoke(record)
    _discard_files(record["filepath"])
    events.download_changed(record, events.CANCELLED)
    return True


def retry_download(download_key: str, user: Any) -> str | None:
    """Start the task of a failed or cancelled download again, with the same arguments.

    Only for the user's own downloads started through the shortcuts. The retry
    is a new download (same file name and name) that replaces the old one in the
    list. Returns the new download key, or None if there was nothing to retry.
    Raises ``TooManyDownloads`` over the cap, leaving the old download retryable.
    """
    record = get_user_download(user, download_key)
    if record is None:
        return None
    claimed: list[records.TaskInfo] = []

    def claim(current: Record) -> bool:
        # Under the lock, so that a double click starts one task only.
        if not is_retryable(current):
            return False
        claimed.append(current.pop("task"))
        return True

    if store.update(download_key, claim) is None:
        return None
    try:
        _, new_key = init_download(record["user_id"], record["filename"], record["name"])
    except TooManyDownloads:
        # The old download stays retryable, once a slot is free.
        store.update(download_key, lambda current: current.update({"task": claimed[0]}))
        raise
    try:
        jobs.restart(claimed[0], new_key)
    except Exception:
        # The broker is down, say: the new row fails, and can be retried again.
        logger.exception("Could not start task %s again for download %s.", claimed[0]["name"], new_key)
        _finish(new_key, ERROR, errors=str(TASK_FAILED))
    clear_download(download_key)
    return new_key

"""The cache API: what views and tasks call to start, report and finish downloads."""

import decimal
import logging
import math
import numbers
import re
import time
import uuid

from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from . import events, files, jobs, store
from .conf import settings
from .users import user_pk

logger = logging.getLogger(__name__)

PENDING, RUNNING, COMPLETE, ERROR, CANCELLED = "pending", "running", "complete", "error", "cancelled"
FINISHED = frozenset({COMPLETE, ERROR, CANCELLED})
RETRYABLE = frozenset({ERROR, CANCELLED})
SAVE_FAILED = _("The file could not be saved. Please try again later.")
TASK_FAILED = _("The export failed. Please try again.")
STALLED = _("The export stopped responding.")
KEY_PATTERN = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")

__all__ = [
    "DownloadCancelled",
    "cancel_download",
    "cleanup_collection",
    "clear_download",
    "get_collection_key",
    "get_download",
    "get_downloads",
    "get_user_download",
    "init_download",
    "is_cancelled",
    "is_download_key",
    "retry_download",
    "save_download",
    "set_error",
    "set_percentage",
    "update_percentage",
]


class DownloadCancelled(Exception):
    """The user cancelled the download.

    ``set_percentage`` and ``update_percentage`` raise it in the download's task:
    let it propagate to end the task (no file is kept either way).
    """


def get_collection_key(user):
    return settings.COLLECTION_KEY_FORMAT.format(user_pk(user))


def is_download_key(value):
    return isinstance(value, str) and KEY_PATTERN.match(value) is not None


def init_download(user, filename, name=None):
    """Record a new pending download; return ``(collection_key, download_key)``."""
    pk = user_pk(user)
    collection_key = settings.COLLECTION_KEY_FORMAT.format(pk)
    download_key = str(uuid.uuid4())
    filename = files.safe_filename(filename)
    record = _new_record(pk, download_key, filename, name or filename)
    store.create(record, collection_key)
    events.download_changed(record, events.CREATED)
    return collection_key, download_key


def _new_record(pk, download_key, filename, name):
    now = time.time()
    return {
        # The keys of earlier releases, which the legacy JSON endpoint returns.
        "timestamp": timezone.now(),
        "filepath": files.download_path(download_key, filename),
        "name": str(name),
        "complete": False,
        "errors": "",
        "percentage": 0,
        "css_class": settings.CSS_CLASS,
        "url": "",
        # Added in 1.0.
        "key": download_key,
        "user_id": pk,
        "filename": filename,
        "state": PENDING,
        "created": now,
        "updated": now,
        "expires": now + settings.TIMEOUT,
    }


def get_download(download_key):
    """The record of a download, or None if it is unknown, cleared or expired."""
    if not is_download_key(download_key):
        return None
    record = store.read(download_key)
    return _fail_if_stalled(record) if _stalled(record) else record


def get_user_download(user, download_key):
    """The record of ``download_key`` if it belongs to ``user``, else None."""
    record = get_download(download_key)
    if record is None or record["user_id"] != user_pk(user):
        return None
    return record


def get_downloads(user):
    """The records of a user's downloads, newest first."""
    return get_downloads_for_pk(user_pk(user))


def get_downloads_for_pk(pk):
    keys = store.get_cache().get(settings.COLLECTION_KEY_FORMAT.format(pk)) or []
    records = [r for r in store.read_many(keys) if r.get("user_id") == pk]
    records = [_fail_if_stalled(r) if _stalled(r) else r for r in records]
    return sorted([r for r in records if r is not None], key=lambda r: r["created"], reverse=True)


def _stalled(record):
    """A running download whose task has changed nothing for ``STALL_TIMEOUT`` seconds."""
    return (
        record is not None
        and record["state"] == RUNNING
        and time.time() - record["updated"] > settings.STALL_TIMEOUT
    )


def _fail_if_stalled(record):
    """Turn a stalled download into an error (its worker died); return its current record."""

    def change(current):
        if not _stalled(current):
            return False
        _mark(current, ERROR, str(STALLED))

    failed = store.update(record["key"], change)
    if failed is None:
        return store.read(record["key"])  # changed meanwhile: a report came in, or it was cleared
    logger.error(
        "Download %s: its task reported nothing for %s s; marked as failed.", record["key"], settings.STALL_TIMEOUT
    )
    events.download_changed(failed, events.FAILED)
    return failed


def save_download(download_key, iterable=None, file=None, encoding="utf-8"):
    """Store the result of a download: rows as CSV (``iterable``) or a file object."""
    record = store.read(download_key)
    if record is None:
        logger.warning("save_download: download %s is unknown, cleared or expired.", download_key)
        return
    if record["state"] in FINISHED:
        return
    try:
        path = _write(record, iterable, file, encoding)
    except DownloadCancelled:
        # Noticed by a progress report while the rows were written: keep no file.
        _discard_files(record["filepath"])
        return
    except Exception:
        logger.exception("Saving download %s (%r) failed.", download_key, record["name"])
        _finish(download_key, ERROR, errors=str(SAVE_FAILED))
        _discard_files(record["filepath"])
        return
    _complete(download_key, path)


def _discard_files(path):
    """Delete what a failed or cleared download left in storage; failing here is only logged."""
    try:
        files.delete_download_files(path)
    except Exception:
        logger.exception("Could not delete the files of %r.", path)


def _write(record, iterable, file, encoding):
    if iterable is not None:
        return files.write_rows(record["filepath"], iterable, encoding)
    if file is not None:
        return files.write_file(record["filepath"], file)
    raise ValueError("save_download needs an iterable of rows or a file.")


def _complete(download_key, path):
    def change(record):
        if record["state"] in FINISHED:
            return False
        record.update(filepath=path, url=_file_url(download_key))
        _mark(record, COMPLETE)
        record["expires"] = time.time() + settings.TIMEOUT

    record = store.update(download_key, change)
    if record is None:
        # Cleared (or cancelled) while the file was being written: keep no file.
        _discard_files(path)
        return
    store.extend_collection(settings.COLLECTION_KEY_FORMAT.format(record["user_id"]), record["expires"])
    events.download_changed(record, events.COMPLETED)


def _file_url(download_key):
    from django.urls import NoReverseMatch, reverse

    try:
        return reverse("async_downloads:download", args=[download_key])
    except NoReverseMatch:
        return ""


def _mark(record, state, errors=""):
    record.update(state=state, complete=state in FINISHED, errors=errors)
    if state in FINISHED:
        record["percentage"] = 100


def _finish(download_key, state, errors=""):
    def change(record):
        if record["state"] in FINISHED:
            return False
        _mark(record, state, errors)

    record = store.update(download_key, change)
    if record is not None:
        events.download_changed(record, events.FAILED if state == ERROR else events.UPDATED)
    return record


def set_error(download_key, error):
    """Mark a download as failed with ``error``, a message shown to its user."""
    logger.error("Download %s failed: %s", download_key, error)
    _finish(download_key, ERROR, errors=str(error))


def set_percentage(download_key, percentage):
    """Set the progress of a download, clamped to 0..100 (100 comes with the file).

    Raises ``DownloadCancelled`` if the download was cancelled. An unchanged
    value is written again now and then (see ``heartbeat_interval``), so that
    a slow but live task is never taken for a stalled one.
    """
    value = _checked_percentage(percentage)
    moved = []

    def change(record):
        if record["state"] == CANCELLED:
            raise DownloadCancelled(download_key)
        if record["state"] in FINISHED:
            return False
        if record["percentage"] == value and record["state"] == RUNNING:
            return time.time() - record["updated"] >= heartbeat_interval()
        record.update(percentage=value, state=RUNNING)
        moved.append(value)

    def publish(record):
        # Under the record's lock: a cancel or the completion cannot overtake this row.
        if moved:
            events.download_changed(record, events.UPDATED)

    store.update(download_key, change, then=publish)


def heartbeat_interval():
    """How often a running task's unchanged progress is written again: a quarter of the stall timeout."""
    return settings.STALL_TIMEOUT / 4


def is_cancelled(download_key):
    """Whether the user cancelled the download (for tasks that report no progress).

    A cleared or expired download is not cancelled: its task may finish, and
    its file is then deleted at once.
    """
    record = store.read(download_key) if is_download_key(download_key) else None
    return record is not None and record["state"] == CANCELLED


def _checked_percentage(percentage):
    return min(max(0, int(_checked_number("percentage", percentage))), 100)


def _checked_number(name, value):
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
_shown = {}
_SHOWN_LIMIT = 4096


def update_percentage(download_key, total, cur, resolution=10):
    """Report that row ``cur`` (0-based) of ``total`` is done.

    The shown value moves in steps of ``100 / resolution`` percent (resolution
    is capped to 1..100) and is written only when it changes (or, unchanged, once per
    ``heartbeat_interval()``); it stops at 99 until the file is saved. Raises
    ``DownloadCancelled`` when it writes and finds the download cancelled.
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
    set_percentage(download_key, percentage)
    if len(_shown) >= _SHOWN_LIMIT:
        _shown.clear()
    _shown[download_key] = (percentage, time.monotonic() + heartbeat_interval())


def cleanup_collection(collection_key):
    """Drop the keys of expired downloads from a collection, keeping its timeout."""
    keys = store.get_cache().get(collection_key) or []
    live = set(store.get_cache().get_many(keys))
    gone = set(keys) - live
    if gone:
        store.remove_from_collection(collection_key, gone)


def clear_download(download_key, user=None):
    """Delete a download's record and file. With ``user``, only if it is theirs.

    Returns True if something was cleared.
    """
    record = get_download(download_key) if user is None else get_user_download(user, download_key)
    if record is None:
        return False
    collection_key = settings.COLLECTION_KEY_FORMAT.format(record["user_id"])
    removed = store.delete(download_key, collection_key)
    _shown.pop(download_key, None)
    # A file left behind by a failing storage is removed by cleanup_expired_downloads.
    _discard_files((removed or record)["filepath"])
    events.download_changed(removed or record, events.CLEARED)
    return True


def cancel_download(download_key, user=None):
    """Stop a pending or running download (only the user's own when ``user`` is given).

    Its task is revoked if it has not started yet, and otherwise learns at its
    next progress report (``DownloadCancelled``) or ``is_cancelled`` check. No
    file is kept. Returns True if the download was cancelled.
    """
    if (get_download(download_key) if user is None else get_user_download(user, download_key)) is None:
        return False

    def change(record):
        if record["state"] in FINISHED:
            return False
        _mark(record, CANCELLED)

    record = store.update(download_key, change)
    if record is None:
        return False
    _shown.pop(download_key, None)
    jobs.revoke(record)
    _discard_files(record["filepath"])
    events.download_changed(record, events.CANCELLED)
    return True


def is_retryable(record):
    """Whether ``retry_download`` can start the task of this record again."""
    return record["state"] in RETRYABLE and bool(record.get("task"))


def retry_download(download_key, user):
    """Start the task of a failed or cancelled download again, with the same arguments.

    Only for the user's own downloads started through the shortcuts. The retry
    is a new download (same file name and name) that replaces the old one in the
    list. Returns the new download key, or None if there was nothing to retry.
    """
    record = get_user_download(user, download_key)
    if record is None:
        return None
    task = {}

    def claim(current):
        # Under the lock, so that a double click starts one task only.
        if not is_retryable(current):
            return False
        task.update(current.pop("task"))

    if store.update(download_key, claim) is None:
        return None
    _, new_key = init_download(record["user_id"], record["filename"], record["name"])
    try:
        jobs.restart(task, new_key)
    except Exception:
        # The broker is down, say: the new row fails, and can be retried again.
        logger.exception("Could not start task %s again for download %s.", task["name"], new_key)
        _finish(new_key, ERROR, errors=str(TASK_FAILED))
    clear_download(download_key)
    return new_key


def task_failed(download_key, task_id, task_name):
    """Mark a download as failed after its task raised, if that task was started for it
    by the shortcuts; returns the record, or None when it was not theirs or had finished."""
    if not is_download_key(download_key):
        return None

    def change(record):
        if record["state"] in FINISHED or not _started_by(record, task_id, task_name):
            return False
        _mark(record, ERROR, str(TASK_FAILED))

    record = store.update(download_key, change)
    if record is not None:
        events.download_changed(record, events.FAILED)
    return record


def _started_by(record, task_id, task_name):
    if record.get("task_id"):
        return record["task_id"] == task_id
    # The task may fail before the shortcut has stored its id.
    return bool(record.get("task")) and record["task"]["name"] == task_name

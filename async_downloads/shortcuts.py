"""Helpers that start a download's task and keep what is needed to cancel, retry and fail it.

``start_download`` starts any task (Celery, or Django's Tasks framework) for a
new download; ``init_generic_export`` and ``queryset_export`` cover the most
common case, an export of a queryset (CSV, JSON Lines or XLSX), and
``init_generic_csv_download`` and ``queryset_to_csv`` its CSV form.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, TypeVar

from django.db.models import QuerySet
from django.utils import timezone

from . import jobs, store, writers
from .cache import init_task_download, save_download, update_percentage

__all__ = ["init_generic_csv_download", "init_generic_export", "queryset_export", "queryset_to_csv", "start_download"]

ITERATOR_CHUNK_SIZE = 2000
PROGRESS_RESOLUTION = 10
HEARTBEAT_ROWS = 1000

_Row = TypeVar("_Row")


def queryset_export(
    download_key: str,
    header: Iterable[Any],
    queryset: QuerySet[Any, _Row],
    row_function: Callable[[_Row], Iterable[Any]],
    format: str | None = None,
    *,
    encoding: str | None = None,
    escape_formulas: bool | None = None,
) -> None:
    """Save ``queryset``, one ``row_function(obj)`` per object after ``header``, in ``format``.

    ``format`` is "csv", "jsonl" or "xlsx"; without it, the download's file name
    decides (.csv, .jsonl, .ndjson, .xlsx), else CSV (see ``cache.save_download``, which
    also says what ``encoding`` and ``escape_formulas`` do). Rows are streamed from
    the database with ``.iterator()`` and written through a spooled temporary file,
    so memory stays bounded whatever the row count; progress is reported as the rows
    go, at a cost of one comparison per row. A format whose package is missing (XLSX
    without XlsxWriter) raises ImproperlyConfigured before the database is queried.
    """
    _check_queryset(queryset, "queryset_export")
    rows = _rows_with_progress(download_key, header, queryset, row_function)
    save_download(download_key, rows, encoding=encoding, format=format, escape_formulas=escape_formulas)


def queryset_to_csv(
    download_key: str,
    header: Iterable[Any],
    queryset: QuerySet[Any, _Row],
    row_function: Callable[[_Row], Iterable[Any]],
    encoding: str | None = None,
) -> None:
    """Save ``queryset`` as CSV, one ``row_function(obj)`` per object, after ``header``.

    ``queryset_export`` with ``format="csv"``, whatever the file name.
    """
    _check_queryset(queryset, "queryset_to_csv")
    queryset_export(download_key, header, queryset, row_function, writers.CSV, encoding=encoding)


def _check_queryset(queryset: Any, function: str) -> None:
    if not isinstance(queryset, QuerySet):
        raise ValueError(f"{function} needs a QuerySet as its third argument, not {type(queryset).__name__}.")


def _rows_with_progress(
    download_key: str,
    header: Iterable[Any],
    queryset: QuerySet[Any, _Row],
    row_function: Callable[[_Row], Iterable[Any]],
) -> Iterator[Iterable[Any]]:
    """``header``, then a row per object; the COUNT for the progress is made when the first row is asked for."""
    total = queryset.count()
    yield header
    report_at = 0
    for index, obj in enumerate(queryset.iterator(chunk_size=ITERATOR_CHUNK_SIZE)):
        if index >= report_at:
            update_percentage(download_key, total, index, PROGRESS_RESOLUTION)
            # Also every HEARTBEAT_ROWS rows, so that a slow step is not taken for a stall.
            report_at = min(_next_report(index, total), index + HEARTBEAT_ROWS)
        yield row_function(obj)


def _next_report(index: int, total: int) -> int:
    """The first row index after ``index`` at which the shown percentage moves a step.

    Only those rows call update_percentage, so the per-row cost of progress is
    one comparison.
    """
    next_step = (index + 1) * PROGRESS_RESOLUTION // total + 1
    return -(-next_step * total // PROGRESS_RESOLUTION) - 1


def start_download(
    user: Any,
    filename: str,
    task: Any,
    args: Iterable[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> tuple[str, str]:
    """Create a download for ``user`` and start ``task(download_key, *args, **kwargs)`` for it.

    ``task`` is a Celery task (started with ``delay``) or a task of Django's
    Tasks framework (started with ``enqueue``, on the backend and queue it was
    defined or ``using()``-ed with). Returns ``(collection_key, download_key)``.

    The task's name, arguments and id are kept in the record, so the download
    can be cancelled and retried, and is marked as failed if the task raises;
    the arguments must therefore be JSON-serialisable (a TypeError says which
    one is not, before anything is created).

    In the database store, inside a transaction, the task starts when that transaction
    commits (and not at all if it rolls back), since a worker could not see the download
    before. With ``ASYNC_DOWNLOADS_MAX_IN_PROGRESS`` reached, ``cache.TooManyDownloads`` is
    raised and nothing is created or started. With ``ASYNC_DOWNLOADS_DEDUPE``, a
    download of the user's still in progress for the same task and arguments is
    returned instead of starting a second task.
    """
    args, kwargs = tuple(args), dict(kwargs or {})
    jobs.check_task(task)
    jobs.check_arguments(task, args, kwargs)
    info = jobs.describe(task, args, kwargs)
    collection_key, download_key, created = init_task_download(user, filename, name, info)
    if created:
        # In the database store inside a transaction (ATOMIC_REQUESTS, say): once it commits.
        store.after_commit(lambda: jobs.start(task, download_key, args, kwargs))
    return collection_key, download_key


def init_generic_csv_download(task: Any, user: Any, name: str, *task_args: Any, **task_kwargs: Any) -> tuple[str, str]:
    """Start ``task(download_key, *task_args, **task_kwargs)`` for a new CSV download.

    The file is named after ``name`` and the current time; the task is started
    as by ``start_download`` (Celery or Django Tasks). Returns
    ``(collection_key, download_key)``.
    """
    return init_generic_export(task, user, name, writers.CSV, *task_args, **task_kwargs)


def init_generic_export(
    task: Any, user: Any, name: str, format: str, *task_args: Any, **task_kwargs: Any
) -> tuple[str, str]:
    """``init_generic_csv_download`` for a file in ``format`` ("csv", "jsonl" or "xlsx").

    The file name ends with the format's extension, so a task that calls
    ``queryset_export`` (or ``save_download`` with rows) without a format writes
    that one. An unknown format raises ValueError, and one whose package is missing
    (XLSX without XlsxWriter) ImproperlyConfigured, before anything is created.
    """
    format = writers.resolve_format(format)
    writers.require(format)
    now = _local_now()
    filename = f"{name.replace(' ', '_')}_{now:%Y-%m-%d_%H-%M}.{format}"
    return start_download(user, filename, task, task_args, task_kwargs, name=f"{name} {now:%Y-%m-%d}")


def _local_now() -> datetime:
    now = timezone.now()
    # With USE_TZ = False, now() is already local (and localtime() would raise).
    return timezone.localtime(now) if timezone.is_aware(now) else now

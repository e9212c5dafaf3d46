"""What a download record is: its fields, its states, and the moves allowed between them.

Pure data and functions on it: nothing here reads or writes the cache.
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import datetime
from typing import Any, Final, TypedDict, cast

from django.utils import timezone
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _

PENDING: Final = "pending"
RUNNING: Final = "running"
COMPLETE: Final = "complete"
ERROR: Final = "error"
CANCELLED: Final = "cancelled"
STATES: Final = (PENDING, RUNNING, COMPLETE, ERROR, CANCELLED)
FINISHED: Final = frozenset({COMPLETE, ERROR, CANCELLED})
RETRYABLE: Final = frozenset({ERROR, CANCELLED})

#: The moves a record may make; a finished download never changes state again.
#: RUNNING → RUNNING is progress.
TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    PENDING: frozenset({RUNNING, COMPLETE, ERROR, CANCELLED}),
    RUNNING: frozenset({RUNNING, COMPLETE, ERROR, CANCELLED}),
    COMPLETE: frozenset(),
    ERROR: frozenset(),
    CANCELLED: frozenset(),
}

# What happened to a download, as the publish step and ``download_changed_signal`` name it.
CREATED: Final = "created"
UPDATED: Final = "updated"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
CLEARED: Final = "cleared"
CANCELLED_KIND: Final = "cancelled"
KINDS: Final = (CREATED, UPDATED, COMPLETED, FAILED, CLEARED, CANCELLED_KIND)

#: The change kind that a move into each state is published as.
KIND_OF_STATE: Final = {RUNNING: UPDATED, COMPLETE: COMPLETED, ERROR: FAILED, CANCELLED: CANCELLED_KIND}

SAVE_FAILED: Final[Promise] = _("The file could not be saved. Please try again later.")
TASK_FAILED: Final[Promise] = _("The export failed. Please try again.")
STALLED: Final[Promise] = _("The export stopped responding.")
LOST: Final[Promise] = _("Some downloads were lost while the server restarted. Please start them again.")
#: The messages of this app that a record or a notice may hold (in the words of any language).
MESSAGES: Final = (SAVE_FAILED, TASK_FAILED, STALLED, LOST)

KEY_PATTERN: Final = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")


class TaskInfo(TypedDict, total=False):
    """How the task of a download was started, so that it can be started again."""

    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    framework: str  # "django" for Django's Tasks framework; absent for Celery
    backend: str
    queue: str
    priority: int


class _RecordBase(TypedDict):
    # The keys of earlier releases, which the legacy JSON endpoint returns.
    timestamp: datetime
    filepath: str
    name: str
    complete: bool
    errors: str
    percentage: int
    css_class: str | None
    url: str
    # Added in 1.0.
    key: str
    user_id: Any
    filename: str
    state: str
    created: float
    updated: float
    expires: float


class Record(_RecordBase, total=False):
    """A download as the cache stores it (a plain dict, so old readers keep working)."""

    task: TaskInfo
    task_id: str
    #: When a worker last showed that it still runs the task (epoch seconds); absent
    #: before a worker took the task and after the task returned.
    beat: float
    #: The download has waited for a worker longer than ``ASYNC_DOWNLOADS_PENDING_WAIT``.
    waiting: bool
    #: The language active when the download started (its user's): what is rendered
    #: for the user outside a request, in a worker say, is rendered in it.
    language: str
    #: Rows reported by ``update_percentage``: how many are done of how many, and what the
    #: rate is measured with (the first report's time and rows done, and the last report's
    #: time, epoch seconds). Absent while a task sets percentages only.
    rows_done: int
    rows_total: int
    rows_started_at: float
    rows_done_at_start: int
    rows_reported_at: float
    #: When the e-mail notice of the finished download was claimed for sending (epoch
    #: seconds; ``async_downloads.notify``): set once, so that one process sends it.
    notified: float


class DownloadCancelled(Exception):
    """The user cancelled the download.

    ``set_percentage`` and ``update_percentage`` raise it in the download's task:
    let it propagate to end the task (no file is kept either way).
    """


#: Its import path, as Django's Tasks framework reports the exception of a failed task.
CANCELLED_PATH: Final = f"{DownloadCancelled.__module__}.{DownloadCancelled.__qualname__}"


def is_download_key(value: object) -> bool:
    return isinstance(value, str) and KEY_PATTERN.match(value) is not None


def new_key() -> str:
    return str(uuid.uuid4())


def new_record(
    user_id: Any, key: str, filename: str, filepath: str, name: str, css_class: str | None, timeout: float,
    language: str | None = None,
) -> Record:
    now = time.time()
    record: Record = {
        "timestamp": timezone.now(),
        "filepath": filepath,
        "name": str(name),
        "complete": False,
        "errors": "",
        "percentage": 0,
        "css_class": css_class,
        "url": "",
        "key": key,
        "user_id": user_id,
        "filename": filename,
        "state": PENDING,
        "created": now,
        "updated": now,
        "expires": now + timeout,
    }
    if language:
        record["language"] = language
    return record


def can_move(record: Record, state: str) -> bool:
    return state in TRANSITIONS[record["state"]]


def move(record: Record, state: str, errors: str = "", **fields: Any) -> None:
    """Put ``record`` into ``state`` (finished states show 100 %), with ``fields`` changed too."""
    if not can_move(record, state):
        raise ValueError(f"A {record['state']} download cannot become {state}.")
    record.update(cast(Record, fields))  # fields are keys of Record, by name
    record["state"] = state
    record["complete"] = state in FINISHED
    record["errors"] = errors
    if state in FINISHED:
        record["percentage"] = 100


def is_stalled(record: Record, timeout: float, worker_timeout: float, now: float | None = None) -> bool:
    """A running download whose worker went away.

    While a worker beats for it, the download is stalled once no beat came for
    ``worker_timeout`` seconds, however long its task stays silent; without
    beats (a task run outside a worker that sends them), once the task has
    changed nothing for ``timeout`` seconds.
    """
    if record["state"] != RUNNING:
        return False
    now = now or time.time()
    beat = record.get("beat")
    if beat:
        return now - beat > worker_timeout
    return now - record["updated"] > timeout


def is_waiting(record: Record, pending_wait: float, now: float | None = None) -> bool:
    """A pending download that has waited for a worker longer than ``pending_wait`` seconds."""
    return record["state"] == PENDING and (now or time.time()) - record["created"] > pending_wait


def is_retryable(record: Record) -> bool:
    """Whether ``retry_download`` can start the task of this record again."""
    return record["state"] in RETRYABLE and bool(record.get("task"))


def in_progress(records: list[Record]) -> int:
    return sum(1 for record in records if record["state"] not in FINISHED)

"""Receivers of the task frameworks' failure signals: a task started by the shortcuts raised.

Connected in ``AppConfig.ready()``. The download of such a task becomes an error
(``cache.task_failed``), unless the task ended because its download was cancelled.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from celery.signals import task_failure

from . import cache, jobs
from .records import CANCELLED_PATH, DownloadCancelled

logger = logging.getLogger(__name__)


def on_task_failure(
    sender: Any = None, task_id: str | None = None, exception: BaseException | None = None,
    args: Any = None, einfo: Any = None, **extra: Any,
) -> None:
    """Celery's ``task_failure``: a task started by the shortcuts raised; its download is an error."""
    if not args or isinstance(exception, DownloadCancelled):
        return
    if cache.task_failed(args[0], task_id, getattr(sender, "name", None)) is not None:
        logger.error(
            "Task %s[%s] of download %s raised %r; the download is marked as failed.",
            getattr(sender, "name", sender), task_id, args[0], exception,
            exc_info=getattr(einfo, "exc_info", None),
        )


def on_task_finished(sender: Any = None, task_result: Any = None, **extra: Any) -> None:
    """Django Tasks' ``task_finished``: the same as ``on_task_failure``, for a task that failed."""
    if task_result is None or str(task_result.status) != "FAILED" or not task_result.args:
        return
    errors = list(getattr(task_result, "errors", None) or [])
    exception_path = errors[-1].exception_class_path if errors else ""
    if exception_path == CANCELLED_PATH:
        return
    download_key = task_result.args[0]
    if cache.task_failed(download_key, str(task_result.id), task_result.task.module_path) is not None:
        logger.error(
            "Task %s[%s] of download %s raised %s; the download is marked as failed.",
            task_result.task.module_path, task_result.id, download_key, exception_path or "an exception",
        )


def connect() -> None:
    task_failure.connect(on_task_failure, dispatch_uid="async_downloads.receivers.on_task_failure")
    for framework in jobs.tasks_frameworks():
        signals = importlib.import_module(f"{framework.__name__}.signals")
        signals.task_finished.connect(
            on_task_finished, dispatch_uid=f"async_downloads.receivers.on_task_finished.{framework.__name__}"
        )

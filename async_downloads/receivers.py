"""Receivers of the task frameworks' signals, connected in ``AppConfig.ready()``.

- A worker starts the task of a download (its first argument is a download key):
  the download is running from now on, and the worker process beats for it
  until the task returns (``async_downloads.heartbeat``).
- A task started by the shortcuts raised: its download becomes an error
  (``cache.task_failed``), unless the task ended because its download was cancelled.
- A user is deleted: their downloads are cleared, records and files (``cache.clear_user_downloads``).
- A download finished (``events.download_finished``): its owner may get an e-mail (``async_downloads.notify``).
- A download was created in GRIP mode (``events.download_changed_signal``): this process sweeps its
  owner's downloads for stalls until none is active (``watch.Watching.hold``), as the pages' streams are
  the proxy's and a page that started it may have made no stream request since.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from celery.signals import task_failure, task_postrun, task_prerun
from django.contrib.auth import get_user_model
from django.db.models.signals import post_delete

from . import cache, events, grip, jobs, notify
from .heartbeat import heartbeats
from .records import CANCELLED_PATH, CREATED, DownloadCancelled
from .watch import watching

logger = logging.getLogger(__name__)


def _download_key(args: Any, kwargs: Any) -> Any:
    if args:
        return args[0]
    return (kwargs or {}).get("download_key")


def on_task_prerun(
    sender: Any = None, task_id: str | None = None, args: Any = None, kwargs: Any = None, **extra: Any
) -> None:
    """Celery's ``task_prerun``, in the process that runs the task."""
    download_key = _download_key(args, kwargs)
    if cache.task_started(download_key, task_id):
        heartbeats.start(download_key)


def on_task_postrun(sender: Any = None, args: Any = None, kwargs: Any = None, **extra: Any) -> None:
    """Celery's ``task_postrun``: sent after the task returned or raised."""
    download_key = _download_key(args, kwargs)
    if heartbeats.runs_here(download_key):
        heartbeats.stop(download_key)
        cache.task_returned(download_key)


def on_task_started(sender: Any = None, task_result: Any = None, **extra: Any) -> None:
    """Django Tasks' ``task_started``, in the worker that runs the task."""
    if task_result is None:
        return
    download_key = _download_key(task_result.args, task_result.kwargs)
    if cache.task_started(download_key, str(task_result.id)):
        heartbeats.start(download_key)


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
    """Django Tasks' ``task_finished``: the task returned or raised; if it raised, as ``on_task_failure``."""
    if task_result is not None:
        on_task_postrun(args=task_result.args, kwargs=task_result.kwargs)
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


def on_user_deleted(sender: Any = None, instance: Any = None, **extra: Any) -> None:
    """``post_delete`` of the user model: nothing of a deleted user's stays behind."""
    if instance is not None and instance.pk is not None:
        cache.clear_user_downloads(instance.pk)


def on_download_changed(sender: Any = None, record: Any = None, kind: str = "", **extra: Any) -> None:
    """``events.download_changed_signal``: in GRIP mode, a new download's owner is swept here."""
    if kind == CREATED and grip.enabled():
        watching.hold(record["user_id"])


def connect() -> None:
    user_model = get_user_model()
    post_delete.connect(on_user_deleted, sender=user_model, dispatch_uid="async_downloads.receivers.on_user_deleted")
    task_prerun.connect(on_task_prerun, dispatch_uid="async_downloads.receivers.on_task_prerun")
    task_postrun.connect(on_task_postrun, dispatch_uid="async_downloads.receivers.on_task_postrun")
    task_failure.connect(on_task_failure, dispatch_uid="async_downloads.receivers.on_task_failure")
    events.download_finished.connect(notify.on_download_finished, dispatch_uid="async_downloads.notify")
    events.download_changed_signal.connect(on_download_changed, dispatch_uid="async_downloads.receivers.created")
    for framework in jobs.tasks_frameworks():
        signals = importlib.import_module(f"{framework.__name__}.signals")
        uid = f"async_downloads.receivers.{{}}.{framework.__name__}"
        signals.task_started.connect(on_task_started, dispatch_uid=uid.format("on_task_started"))
        signals.task_finished.connect(on_task_finished, dispatch_uid=uid.format("on_task_finished"))

"""The Celery tasks of downloads started through the shortcuts: start, retry, revoke, failures.

A download started by ``init_generic_csv_download`` remembers its task's name,
arguments and id in its record: that is what lets ``retry_download`` start the
same task again, ``cancel_download`` revoke it, and ``task_failure`` find the
download of a task that raised.
"""

import json
import logging

from . import store

logger = logging.getLogger(__name__)


def check_arguments(task, args, kwargs):
    """Raise a TypeError naming the first argument that JSON cannot carry."""
    named = [(f"positional argument {index + 1}", value) for index, value in enumerate(args)]
    named += [(f"keyword argument {name!r}", value) for name, value in kwargs.items()]
    for label, value in named:
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"The {label} of {_task_name(task)} is {value!r}, which is not JSON-serialisable. "
                "Pass plain values (str, int, float, bool, None, and lists and dicts of those), "
                "such as a primary key instead of a model instance."
            ) from None


def _task_name(task):
    return getattr(task, "name", None) or repr(task)


def start(task, download_key, args, kwargs):
    """``task.delay(download_key, *args, **kwargs)``, remembered in the download's record."""
    return _run(download_key, getattr(task, "name", None), args, kwargs,
                lambda: task.delay(download_key, *args, **kwargs))


def restart(task_info, download_key):
    """Start the task described by ``task_info`` (from a record) again, for ``download_key``."""
    name, args, kwargs = task_info["name"], task_info["args"], task_info["kwargs"]
    return _run(download_key, name, args, kwargs, lambda: _send(name, [download_key, *args], kwargs))


def _send(name, args, kwargs):
    from celery import current_app

    task = current_app.tasks.get(name)
    if task is not None:  # keeps the task's own options (queue, routing)
        return task.apply_async(args, kwargs)
    return current_app.send_task(name, args=args, kwargs=kwargs)


def _run(download_key, name, args, kwargs, call):
    if name:
        task_info = {"name": name, "args": list(args), "kwargs": dict(kwargs)}
        store.update(download_key, lambda record: record.update(task=task_info))
    result = call()
    task_id = getattr(result, "id", None)
    if task_id:
        store.update(download_key, lambda record: record.update(task_id=task_id))
    return result


def revoke(task_id):
    """Keep a task that has not started from running; a running one is left to notice the cancel."""
    if not task_id:
        return
    try:
        from celery import current_app

        current_app.control.revoke(task_id)
    except Exception:
        logger.warning("Could not revoke task %s.", task_id, exc_info=True)


def on_task_failure(sender=None, task_id=None, exception=None, args=None, einfo=None, **extra):
    """Celery's ``task_failure``: a task started by the shortcuts raised; its download is an error."""
    from . import cache

    if not args or isinstance(exception, cache.DownloadCancelled):
        return
    if cache.task_failed(args[0], task_id, getattr(sender, "name", None)) is not None:
        logger.error(
            "Task %s[%s] of download %s raised %r; the download is marked as failed.",
            getattr(sender, "name", sender), task_id, args[0], exception,
            exc_info=getattr(einfo, "exc_info", None),
        )


def connect_signals():
    try:
        from celery.signals import task_failure
    except ImportError:  # pragma: no cover - celery is a dependency, but a site may run without it
        return
    task_failure.connect(on_task_failure, dispatch_uid="async_downloads.jobs.on_task_failure")

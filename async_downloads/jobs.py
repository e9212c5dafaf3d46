"""The tasks of downloads started through the shortcuts: start, retry, revoke, failures.

A download started by ``start_download`` or ``init_generic_csv_download``
remembers its task (name, arguments, id) in its record: that is what lets
``retry_download`` start the same task again, ``cancel_download`` revoke it,
and a failure signal find the download of a task that raised.

Two kinds of task are understood: Celery tasks (anything with ``delay``) and
tasks of Django's Tasks framework (``django.tasks`` on Django 6, or the
``django_tasks`` backport), which are enqueued with ``enqueue``.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any, Final

from celery import current_app
from django.utils.module_loading import import_string

from . import store
from .records import Record, TaskInfo

logger = logging.getLogger(__name__)

CELERY: Final = "celery"
DJANGO: Final = "django"
TASKS_FRAMEWORKS: Final = ("django.tasks", "django_tasks")


def tasks_frameworks() -> list[ModuleType]:
    """The installed modules of Django's Tasks framework (Django's own first, then the backport)."""
    found = []
    for name in TASKS_FRAMEWORKS:
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            continue
    return found


def is_django_task(task: object) -> bool:
    for framework in tasks_frameworks():
        if isinstance(task, importlib.import_module(f"{framework.__name__}.base").Task):
            return True
    return False


def task_name(task: Any) -> str:
    """What identifies ``task`` in a record: Celery's task name, or a Django task's import path."""
    if is_django_task(task):
        return str(task.module_path)
    return getattr(task, "name", None) or repr(task)


def check_task(task: object) -> None:
    """Raise a TypeError unless ``task`` is a Celery task or a Django Tasks task."""
    if is_django_task(task) or callable(getattr(task, "delay", None)):
        return
    raise TypeError(
        f"{task!r} is not a task: pass a Celery task (decorated with @shared_task or @app.task) "
        "or a task of Django's Tasks framework (decorated with @task)."
    )


def check_arguments(task: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Raise a TypeError naming the first argument that JSON cannot carry."""
    named = [(f"positional argument {index + 1}", value) for index, value in enumerate(args)]
    named += [(f"keyword argument {name!r}", value) for name, value in kwargs.items()]
    for label, value in named:
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"The {label} of {task_name(task)} is {value!r}, which is not JSON-serialisable. "
                "Pass plain values (str, int, float, bool, None, and lists and dicts of those), "
                "such as a primary key instead of a model instance."
            ) from None


def describe(task: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> TaskInfo | None:
    """The record's description of a task call: enough to make the same call again.

    None for an object that only has ``delay``: without a Celery task name it
    cannot be started again.
    """
    name = task.module_path if is_django_task(task) else getattr(task, "name", None)
    if not name:
        return None
    info: TaskInfo = {"name": name, "args": list(args), "kwargs": dict(kwargs)}
    if is_django_task(task):
        info.update({"framework": DJANGO, "backend": task.backend, "queue": task.queue_name, "priority": task.priority})
    return info


def start(task: Any, download_key: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Start ``task`` with ``(download_key, *args, **kwargs)``, remembered in the download's record."""
    info = describe(task, args, kwargs)
    if is_django_task(task):
        return _run(download_key, info, lambda: task.enqueue(download_key, *args, **kwargs))
    return _run(download_key, info, lambda: task.delay(download_key, *args, **kwargs))


def restart(info: TaskInfo, download_key: str) -> Any:
    """Start the task described by ``info`` (from a record) again, for ``download_key``."""
    args, kwargs = info["args"], info["kwargs"]
    if info.get("framework") == DJANGO:
        task = import_string(info["name"])
        if not is_django_task(task):
            raise TypeError(f"{info['name']} is no longer a task of Django's Tasks framework.")
        task = task.using(backend=info["backend"], queue_name=info["queue"], priority=info["priority"])
        return _run(download_key, info, lambda: task.enqueue(download_key, *args, **kwargs))
    return _run(download_key, info, lambda: _send(info["name"], (download_key, *args), kwargs))


def _send(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    task = current_app.tasks.get(name)
    if task is not None:  # keeps the task's own options (queue, routing)
        return task.apply_async(args, kwargs)
    return current_app.send_task(name, args=args, kwargs=kwargs)


def _run(download_key: str, info: TaskInfo | None, call: Callable[[], Any]) -> Any:
    if info:
        store.update(download_key, lambda record: record.update({"task": info}))
    result = call()
    task_id = getattr(result, "id", None)
    if task_id:
        # An immediate backend has run the task already, and a finished record keeps its id.
        store.update(download_key, lambda record: record.update({"task_id": str(task_id)}))
    return result


def revoke(record: Record) -> None:
    """Keep the task of ``record`` from running if it has not started yet.

    Only Celery can revoke; a task of Django's Tasks framework, like a running
    Celery task, learns of the cancel at its next progress report.
    """
    task_id = record.get("task_id")
    if not task_id or (record.get("task") or {}).get("framework") == DJANGO:
        return
    try:
        current_app.control.revoke(task_id)
    except Exception:
        logger.warning("Could not revoke task %s.", task_id, exc_info=True)

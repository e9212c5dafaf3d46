"""The cleanup as a task of Django's Tasks framework, for sites that run no Celery.

``django.tasks`` on Django 6, or the ``django-tasks`` backport on Django 5.2.
The task runs on the ``default`` task backend unless ``.using(backend=…)`` says
otherwise; Django's framework has no scheduler, so enqueue it periodically
(cron, a worker's own scheduling) or run the ``cleanup_expired_downloads``
management command instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import cleanup, jobs

_frameworks = jobs.tasks_frameworks()
if not _frameworks:
    raise ImportError(
        "async_downloads.django_tasks needs Django's Tasks framework: Django 6 or newer, "
        "or the django-tasks package on Django 5.2."
    )
#: ``django.tasks.task`` or ``django_tasks.task``: it makes a ``Task`` of whichever framework is installed.
task: Callable[..., Any] = _frameworks[0].task


@task
def cleanup_expired_downloads() -> list[str]:
    """Delete the files of downloads whose records have expired; returns their download keys."""
    return cleanup.cleanup_expired_downloads()

"""The test tasks as tasks of Django's Tasks framework (django.tasks on Django 6, the backport before).

Each runs the body of the Celery task of the same purpose in tests/testapp/tasks.py.
"""

from async_downloads import jobs
from tests.testapp import tasks as celery_tasks

task = jobs.tasks_frameworks()[0].task


@task
def squares(download_key, rows=40, pause=0.05):
    """A CSV of ``rows`` numbers and their squares, with progress; returns ``rows``."""
    celery_tasks.slow_export.run(download_key, rows, pause)
    return rows


@task
def raising(download_key, message="boom"):
    celery_tasks.raising_export.run(download_key, message)


@task
def until_cancelled(download_key, timeout=30):
    """Reports no progress after its first step; checks ``is_cancelled`` instead."""
    return celery_tasks.wait_for_cancel.run(download_key, timeout)


@task
def silent(download_key, seconds=5.0):
    """Reports nothing for ``seconds``, then saves one row."""
    celery_tasks.silent.run(download_key, seconds)

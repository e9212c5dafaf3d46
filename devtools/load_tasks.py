"""The load scenario's Celery app and export task (devtools/load.py), under any site's settings.

    celery -A devtools.load_tasks worker -Q <queue()> --pool solo

The app reads ``CELERY_*`` from the Django settings (the tests' or the bench's);
the export task goes to a queue of its own, ``queue()``, so that no other worker of the
same site takes it. Every change of a download that this process publishes is noted
with the time its publish step began (``download_changed_signal``, sent just before the
message is rendered and sent); the task hands its notes to the driver through Redis.
"""

import json
import os
import time

from celery import Celery, shared_task
from celery.signals import worker_ready

from async_downloads.events import download_changed_signal

EXPORT = "devtools.load_tasks.export"

app = Celery("async_downloads_load")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["async_downloads"])


def queue():
    from django.conf import settings

    return f"{settings.CELERY_TASK_DEFAULT_QUEUE}-exports"


def _route(name, args, kwargs, options, task=None, **extra):
    return {"queue": queue()} if name == EXPORT else None


app.conf.task_routes = (_route,)

#: [time.time() when the publish step began, kind, key, state, percentage, user pk, name]
published = []


def note(sender=None, record=None, kind=None, **extra):
    published.append([time.time(), kind, record["key"], record["state"], record["percentage"],
                      record["user_id"], record["name"]])


download_changed_signal.connect(note, dispatch_uid="devtools.load_tasks.note")


def take_notes(key=None):
    """The notes (of download ``key``, or all), removed from the list."""
    taken = [entry for entry in published if key is None or entry[2] == key]
    published[:] = [entry for entry in published if key is not None and entry[2] != key]
    return taken


_clients = {}


def broker():
    """A Redis client on the broker's server and db (shared with the driver)."""
    import redis
    from django.conf import settings

    url = settings.CELERY_BROKER_URL
    if url not in _clients:
        _clients[url] = redis.Redis.from_url(url)
    return _clients[url]


@worker_ready.connect
def announce(sender=None, **extra):
    if os.environ.get("ADLOAD_READY_KEY"):
        broker().rpush(os.environ["ADLOAD_READY_KEY"], sender.hostname)


@shared_task(name=EXPORT)
def export(download_key, rows=20, pause=0.02, report=None):
    """A CSV of ``rows`` rows, one every ``pause`` seconds, with progress through ``update_percentage``."""
    from async_downloads.cache import save_download, update_percentage

    def generate():
        yield ["n", "square"]
        for n in range(rows):
            time.sleep(pause)
            update_percentage(download_key, rows, n)
            yield [n, n * n]

    save_download(download_key, generate())
    if report:
        broker().rpush(report, json.dumps(take_notes(download_key)))

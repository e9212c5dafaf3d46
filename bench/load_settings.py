"""Settings of the load scenario's processes in the benchmark (``bench/load.py``).

Redis is the one at ``REDIS_URL``, in db 12, with cache keys, stored events, event
channels and Celery's queue and keys under ``adbench-load``; nothing here ever
flushes it, and bench/load.py deletes its own keys at the end. SQLite and the
files live in ``ADBENCH_LOAD_DIR``, a temporary folder of the run. Sessions are
stored in the database, as with Django's defaults. The rest is bench/base_settings.py.
"""

import os

from devtools.redis_server import connection_kwargs
from bench.base_settings import *  # noqa: F403
from bench.base_settings import redis_cache, redis_url

REDIS_DB = 12
PREFIX = "adbench-load"
REDIS_URL = redis_url(REDIS_DB)
CACHES = redis_cache(REDIS_URL, PREFIX)
EVENTSTREAM_REDIS = EVENTSTREAM_STORAGE_CONNECTION = connection_kwargs(REDIS_URL)
ASYNC_DOWNLOADS_WS_CHANNEL_NAME = PREFIX
ASYNC_DOWNLOADS_EVENT_TTL = 120

WORK_DIR = os.environ["ADBENCH_LOAD_DIR"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.path.join(WORK_DIR, "load.sqlite3")}}
STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": os.path.join(WORK_DIR, "media")},
    },
}

CELERY_BROKER_URL = REDIS_URL
CELERY_BROKER_TRANSPORT_OPTIONS = {"global_keyprefix": f"{PREFIX}:celery:"}
CELERY_TASK_DEFAULT_QUEUE = PREFIX
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

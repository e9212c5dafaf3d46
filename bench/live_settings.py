"""Settings of ``bench/live.py`` (live delivery: latency, memory per stream, CPU vs polling).

Redis is the one at ``REDIS_URL`` (default 127.0.0.1:6379), in db 10, with cache
keys, event-storage keys, Celery's queue and the pub/sub channel names all under
``adbench-live``; nothing here ever flushes it, and bench/live.py deletes its own
keys at the end. SQLite lives in bench/.data/live.sqlite3 (rebuilt by each run).
Sessions are signed cookies, so that 2,000 logins cost no database rows. The rest
is bench/base_settings.py.
"""

import os

from devtools.redis_server import connection_kwargs
from bench.base_settings import *  # noqa: F403
from bench.base_settings import DATA_DIR, redis_cache, redis_url

REDIS_DB = 10
PREFIX = "adbench-live"
REDIS_URL = redis_url(REDIS_DB)
CACHES = redis_cache(REDIS_URL, PREFIX)
EVENTSTREAM_REDIS = EVENTSTREAM_STORAGE_CONNECTION = connection_kwargs(REDIS_URL)
ASYNC_DOWNLOADS_WS_CHANNEL_NAME = PREFIX

SECRET_KEY = "bench-live-only"
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(DATA_DIR, "live.sqlite3"),
    }
}

STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": os.path.join(DATA_DIR, "live-media")},
    },
}

ASYNC_DOWNLOADS_COLLECTION_KEY_FORMAT = "async_downloads/{}"
ASYNC_DOWNLOADS_EVENT_TTL = 120

# The probe runs in a real Celery worker; its queue and keys are in db 10 as well.
CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_DEFAULT_QUEUE = PREFIX
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "null": {"class": "logging.NullHandler"},
        "stderr": {"class": "logging.StreamHandler", "level": "ERROR"},
    },
    "loggers": {
        # Warnings of the library (a failed publish) are counted by bench/live.py's processes.
        "async_downloads": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        "django": {"handlers": ["null"], "propagate": False},
        "django_eventstream": {"handlers": ["null"], "propagate": False},
    },
}

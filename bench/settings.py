"""Settings of the benchmarks (``bench/run.py``): SQLite under bench/.data, the real Redis cache.

Redis is the one at ``REDIS_URL`` (``just bench`` sets it), in a db of its own
(12) and with keys under ``adbench``; nothing here ever flushes it. The rest is
bench/base_settings.py.
"""

import os
import tempfile

from devtools.redis_server import connection_kwargs
from bench.base_settings import *  # noqa: F403
from bench.base_settings import DATA_DIR, INSTALLED_APPS, redis_cache, redis_url

REDIS_DB = 12
REDIS_URL = redis_url(REDIS_DB)
CACHES = redis_cache(REDIS_URL, "adbench")
EVENTSTREAM_REDIS = EVENTSTREAM_STORAGE_CONNECTION = connection_kwargs(REDIS_URL)
ASYNC_DOWNLOADS_WS_CHANNEL_NAME = "adbench"

# bench/run.py shares one media folder with its worker processes, and removes it at the end.
MEDIA_ROOT = os.environ.get("ADBENCH_MEDIA_DIR") or tempfile.mkdtemp(prefix="adbench-media-")

INSTALLED_APPS = [*INSTALLED_APPS, "bench.benchapp"]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(DATA_DIR, "bench.sqlite3"),
    }
}

STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": MEDIA_ROOT},
    },
}

# Progress is published as in a real site; stored events expire after a minute.
ASYNC_DOWNLOADS_EVENT_TTL = 60

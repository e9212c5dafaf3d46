"""Settings of the benchmarks (``bench/run.py``): SQLite under bench/.data, the real Redis cache.

Redis is the one at ``REDIS_URL`` (``just bench`` sets it), in a db of its own
(12) and with keys under ``adbench``; nothing here ever flushes it.
Do not import django_eventstream here: it reads the settings on import.
"""

import os
import tempfile

import redis

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(BENCH_DIR, ".data")
REDIS_DB = 12


def _redis_url():
    url = os.environ.get("REDIS_URL")
    if not url:
        from async_downloads.testing import redis_server

        url = redis_server.ensure()
    return url.rsplit("/", 1)[0] + f"/{REDIS_DB}"


REDIS_URL = _redis_url()
_redis = {
    key: value
    for key, value in redis.connection.parse_url(REDIS_URL).items()
    if key in ("host", "port", "db", "password", "username") and value is not None
}

# bench/run.py shares one media folder with its worker processes, and removes it at the end.
MEDIA_ROOT = os.environ.get("ADBENCH_MEDIA_DIR") or tempfile.mkdtemp(prefix="adbench-media-")

SECRET_KEY = "bench-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"  # Django sets the process TZ from this: keep the report's times in UTC.
ROOT_URLCONF = "bench.urls"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django_htmx",
    "django_eventstream",
    "async_downloads",
    "bench.benchapp",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": []},
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(DATA_DIR, "bench.sqlite3"),
    }
}

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "adbench",
    }
}

STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": MEDIA_ROOT},
    },
}

# Progress is published as in a real site (SSE through django-eventstream on Redis),
# on channels named adbench-…, whose stored events expire after a minute.
EVENTSTREAM_REDIS = _redis
EVENTSTREAM_STORAGE_CLASS = "async_downloads.sse.EventStorage"
EVENTSTREAM_STORAGE_CONNECTION = _redis
EVENTSTREAM_CHANNELMANAGER_CLASS = "async_downloads.sse.ChannelManager"
ASYNC_DOWNLOADS_WS_CHANNEL_NAME = "adbench"
ASYNC_DOWNLOADS_EVENT_TTL = 60

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"async_downloads": {"handlers": ["stderr"], "level": "WARNING", "propagate": False}},
}

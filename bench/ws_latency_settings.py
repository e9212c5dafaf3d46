"""Settings of ``bench/ws_latency.py``: one site served over SSE and WebSockets at once.

Redis is the one at ``REDIS_URL``, in a db of its own (11), with every key,
event channel and channel-layer key under ``adbench-ws``; nothing here ever
flushes it. ``ADBENCH_WS=1`` puts a process in WS mode (its publish step then
sends through the channel layer instead of django-eventstream).
"""

import os

import redis

REDIS_DB = 11
PREFIX = "adbench-ws"
REDIS_URL = os.environ["REDIS_URL"].rsplit("/", 1)[0] + f"/{REDIS_DB}"
_redis = {
    key: value
    for key, value in redis.connection.parse_url(REDIS_URL).items()
    if key in ("host", "port", "db", "password", "username") and value is not None
}

SECRET_KEY = "bench-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "bench.urls"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django_htmx",
    "django_eventstream",
    "async_downloads",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(os.environ["ADBENCH_WS_DIR"], "bench.sqlite3"),
    }
}

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": PREFIX,
    }
}

STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": os.path.join(os.environ["ADBENCH_WS_DIR"], "media")},
    },
}

EVENTSTREAM_REDIS = _redis
EVENTSTREAM_STORAGE_CLASS = "async_downloads.sse.EventStorage"
EVENTSTREAM_STORAGE_CONNECTION = _redis
EVENTSTREAM_CHANNELMANAGER_CLASS = "async_downloads.sse.ChannelManager"
ASYNC_DOWNLOADS_WS_CHANNEL_NAME = PREFIX
ASYNC_DOWNLOADS_EVENT_TTL = 60

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": f"{PREFIX}-channels"},
    }
}
ASYNC_DOWNLOADS_WS_MODE = os.environ.get("ADBENCH_WS") == "1"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"async_downloads": {"handlers": ["stderr"], "level": "WARNING", "propagate": False}},
}

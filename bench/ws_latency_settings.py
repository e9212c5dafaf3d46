"""Settings of ``bench/ws_latency.py``: one site served over SSE and WebSockets at once.

Redis is the one at ``REDIS_URL``, in a db of its own (11), with every key,
event channel and channel-layer key under ``adbench-ws``; nothing here ever
flushes it. ``ADBENCH_WS=1`` puts a process in WS mode (its publish step then
sends through the channel layer instead of django-eventstream). The rest is
bench/base_settings.py.
"""

import os

from devtools.redis_server import connection_kwargs
from bench.base_settings import *  # noqa: F403
from bench.base_settings import redis_cache, redis_url

REDIS_DB = 11
PREFIX = "adbench-ws"
REDIS_URL = redis_url(REDIS_DB)
CACHES = redis_cache(REDIS_URL, PREFIX)
EVENTSTREAM_REDIS = EVENTSTREAM_STORAGE_CONNECTION = connection_kwargs(REDIS_URL)
ASYNC_DOWNLOADS_WS_CHANNEL_NAME = PREFIX

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(os.environ["ADBENCH_WS_DIR"], "bench.sqlite3"),
    }
}

STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": os.path.join(os.environ["ADBENCH_WS_DIR"], "media")},
    },
}

ASYNC_DOWNLOADS_EVENT_TTL = 60

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": f"{PREFIX}-channels"},
    }
}
ASYNC_DOWNLOADS_WS_MODE = os.environ.get("ADBENCH_WS") == "1"

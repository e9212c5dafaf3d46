"""What the benchmarks' settings modules share: a small site as in tests/settings.py.

Each benchmark has a Redis db and a name prefix of its own (bench/settings.py: db 12,
``adbench``; bench/live_settings.py: db 10, ``adbench-live``; bench/ws_latency_settings.py:
db 11, ``adbench-ws``; bench/load_settings.py: db 12, ``adbench-load``), imports this module
with ``*`` and sets its Redis settings with ``redis_url``, ``redis_cache`` and
``redis_server.connection_kwargs``; its event channels are named after the prefix as well (pub/sub
ignores the db number).
Nothing here ever flushes Redis. Do not import django_eventstream here: it reads the
settings on import.
"""

import os

from devtools import redis_server

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(BENCH_DIR, ".data")

SECRET_KEY = "bench-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"  # Django sets the process TZ from this: keep the reports' times in UTC.
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

# The middleware of a typical site (as in tests/settings.py): every stream and poll pays for it.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
            ]
        },
    }
]

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Cross-process delivery as a real site has it: django-eventstream on Redis pub/sub, with
# our storage (replay) and channel manager (a user reads only their own channel).
EVENTSTREAM_STORAGE_CLASS = "async_downloads.sse.EventStorage"
EVENTSTREAM_CHANNELMANAGER_CLASS = "async_downloads.sse.ChannelManager"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"async_downloads": {"handlers": ["stderr"], "level": "WARNING", "propagate": False}},
}


def redis_url(db):
    """``REDIS_URL`` (``just bench`` sets it; else a Redis that answers) with db ``db``."""
    url = os.environ.get("REDIS_URL") or redis_server.ensure()
    return url.rsplit("/", 1)[0] + f"/{db}"


def redis_cache(url, prefix):
    """The default cache on ``url``, with keys under ``prefix``."""
    return {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url, "KEY_PREFIX": prefix}}

"""Settings of ``bench/live.py`` (live delivery: latency, memory per stream, CPU vs polling).

Redis is the one at ``REDIS_URL`` (default 127.0.0.1:6379), in db 10, with cache
keys, event-storage keys, Celery's queue and the pub/sub channel names all under
``adbench-live``; nothing here ever flushes it, and bench/live.py deletes its own
keys at the end. SQLite lives in bench/.data/live.sqlite3 (rebuilt by each run).
Sessions are signed cookies, so that 2,000 logins cost no database rows.
Do not import django_eventstream here: it reads the settings on import.
"""

import os

import redis

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(BENCH_DIR, ".data")
REDIS_DB = 10
PREFIX = "adbench-live"


def _redis_url():
    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    return url.rsplit("/", 1)[0] + f"/{REDIS_DB}"


REDIS_URL = _redis_url()
_redis = {
    key: value
    for key, value in redis.connection.parse_url(REDIS_URL).items()
    if key in ("host", "port", "db", "password", "username") and value is not None
}

SECRET_KEY = "bench-live-only"
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

# The middleware of a typical site (as in tests/settings.py): every stream and poll pays for it.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"

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

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(DATA_DIR, "live.sqlite3"),
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
        "OPTIONS": {"location": os.path.join(DATA_DIR, "live-media")},
    },
}

# Cross-process delivery as a real site has it: django-eventstream on Redis pub/sub, with
# our storage (replay) and channel manager (a user reads only their own channel).
EVENTSTREAM_REDIS = _redis
EVENTSTREAM_STORAGE_CLASS = "async_downloads.sse.EventStorage"
EVENTSTREAM_STORAGE_CONNECTION = _redis
EVENTSTREAM_CHANNELMANAGER_CLASS = "async_downloads.sse.ChannelManager"
# Pub/sub ignores the db number: this prefix keeps the benchmark's channels apart.
ASYNC_DOWNLOADS_WS_CHANNEL_NAME = PREFIX
ASYNC_DOWNLOADS_COLLECTION_KEY_FORMAT = "async_downloads/{}"
ASYNC_DOWNLOADS_EVENT_TTL = 120

# The probe runs in a real Celery worker; its queue and keys are in db 10 as well.
CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_DEFAULT_QUEUE = PREFIX
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

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

"""Settings of the test suite: a real Redis, with keys and channels of this run only."""

import os
import tempfile
import uuid
from typing import Any

from devtools import redis_server

REDIS_URL = redis_server.ensure()
# Every process of one test run (pytest, workers, web servers) shares one prefix.
RUN_ID = os.environ.setdefault("ASYNC_DOWNLOADS_TEST_RUN", uuid.uuid4().hex[:12])
# A db of its own, for Celery's keys; the cache keys carry the run's prefix as well.
REDIS_DB_URL = REDIS_URL.rsplit("/", 1)[0] + "/13"
WORK_DIR = os.environ.setdefault(
    "ASYNC_DOWNLOADS_TEST_DIR", tempfile.mkdtemp(prefix=f"async-downloads-test-{RUN_ID}-")
)
# Each pytest-xdist process (gw0, gw1…) is a run of its own: prefix, queues, databases, files.
# The processes it starts inherit both variables, set to its own (or to what a test gives them).
_XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _XDIST_WORKER and not os.environ.get("ASYNC_DOWNLOADS_TEST_CHILD"):
    RUN_ID = os.environ["ASYNC_DOWNLOADS_TEST_RUN"] = f"{RUN_ID}-{_XDIST_WORKER}"
    WORK_DIR = os.environ["ASYNC_DOWNLOADS_TEST_DIR"] = os.path.join(WORK_DIR, _XDIST_WORKER)
    os.makedirs(WORK_DIR, exist_ok=True)

# Long enough for the HMAC keys of the JWTs signed with it (PyJWT warns below 32 bytes).
SECRET_KEY = "tests-only-not-secret-0c6f5b2e9a4d47e1b3a8f07d2c91e6b5"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"
USE_I18N = True
# LANGUAGE_CODE stays Django's default, en-us: a request without Accept-Language gets English.
LANGUAGES = [("en", "English"), ("de", "Deutsch"), ("fr", "Français")]
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "django_eventstream",
    "async_downloads",
    "tests.testapp",
    "django_tasks_db",
]

# Django's Tasks framework (tests/test_django_tasks.py): built in from Django 6, the backport before.
import django  # noqa: E402

_tasks = "django.tasks" if django.VERSION >= (6,) else "django_tasks"
TASKS = {
    # Run by `manage.py db_worker` processes on this run's test database.
    "default": {"BACKEND": "django_tasks_db.DatabaseBackend"},
    "immediate": {"BACKEND": f"{_tasks}.backends.immediate.ImmediateBackend"},
}

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # The request's language (Accept-Language); tests/test_locale.py sends de and fr.
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
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
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES: dict[str, dict[str, Any]] = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(WORK_DIR, "db.sqlite3"),
        # A file, not memory, so that worker and server processes see the test data.
        "TEST": {"NAME": os.path.join(WORK_DIR, "test-db.sqlite3")},
    }
}

# The database store on PostgreSQL (tests/stores.py): the server that answers on 127.0.0.1:5432,
# else a private one on a free port; without either, those tests are skipped, saying why.
from devtools import postgres_server  # noqa: E402

if os.environ.get("ASYNC_DOWNLOADS_TEST_CHILD"):
    # A process started by a test takes what the test run found (no second check: it costs a second).
    POSTGRES_URL = None if os.environ.get("POSTGRES_URL_MISSING") else os.environ.get("POSTGRES_URL")
else:
    POSTGRES_URL = postgres_server.ensure()
if POSTGRES_URL:
    DATABASES["postgres"] = {
        "ENGINE": "django.db.backends.postgresql",
        **postgres_server.parts(POSTGRES_URL),
        # A database of this run's own: runs sharing the server keep apart.
        "TEST": {"NAME": f"test_async_downloads_{RUN_ID}"},
    }

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_DB_URL,
        "KEY_PREFIX": f"adtest-{RUN_ID}",
    },
    "other": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_DB_URL,
        "KEY_PREFIX": f"adtest-{RUN_ID}-other",
    },
}

STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": os.path.join(WORK_DIR, "media")},
    },
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
STATIC_URL = "/static/"
MEDIA_URL = "/media/"
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"

CELERY_BROKER_URL = REDIS_DB_URL
CELERY_RESULT_BACKEND = REDIS_DB_URL
CELERY_TASK_DEFAULT_QUEUE = f"adtest-{RUN_ID}"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

_redis = redis_server.connection_kwargs(REDIS_DB_URL)
EVENTSTREAM_REDIS = _redis
EVENTSTREAM_STORAGE_CLASS = "async_downloads.sse.EventStorage"
EVENTSTREAM_STORAGE_CONNECTION = _redis
EVENTSTREAM_CHANNELMANAGER_CLASS = "async_downloads.sse.ChannelManager"
# Idle pages look for new downloads every 3 s here (30 s by default), to keep tests short.
ASYNC_DOWNLOADS_IDLE_POLL_INTERVAL = 3
# A web server started by the cross-tab tests (tests/test_tabs.py) polls rarely, or polls
# instead of streaming, so that only the tabs' own messages can explain a quick update.
if os.environ.get("ASYNC_DOWNLOADS_TEST_IDLE_POLL_INTERVAL"):
    ASYNC_DOWNLOADS_IDLE_POLL_INTERVAL = int(os.environ["ASYNC_DOWNLOADS_TEST_IDLE_POLL_INTERVAL"])
if os.environ.get("ASYNC_DOWNLOADS_TEST_TRANSPORT"):
    ASYNC_DOWNLOADS_TRANSPORT = os.environ["ASYNC_DOWNLOADS_TEST_TRANSPORT"]
# Processes started by a test with ASYNC_DOWNLOADS_TEST_SET_<NAME>=<seconds> get
# ASYNC_DOWNLOADS_<NAME> = <seconds> (short stall and worker timeouts, say).
for _name, _value in list(os.environ.items()):
    if _name.startswith("ASYNC_DOWNLOADS_TEST_SET_"):
        globals()["ASYNC_DOWNLOADS_" + _name.removeprefix("ASYNC_DOWNLOADS_TEST_SET_")] = float(_value)
# Processes started with ASYNC_DOWNLOADS_TEST_SMTP=<host>:<port> send mail to that SMTP server
# (tests/test_notify.py runs one).
if os.environ.get("ASYNC_DOWNLOADS_TEST_SMTP"):
    from tests.smtp import smtp_settings

    globals().update(smtp_settings(*os.environ["ASYNC_DOWNLOADS_TEST_SMTP"].rsplit(":", 1)))
# Pub/sub ignores the db number: the channel prefix keeps this run's events apart.
ASYNC_DOWNLOADS_WS_CHANNEL_NAME = f"adtest-{RUN_ID}"

# WS mode (tests/test_ws.py): channels-redis in this run's db, under this run's prefix.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_DB_URL], "prefix": f"adtest-{RUN_ID}-channels"},
    }
}
# Processes started with ASYNC_DOWNLOADS_TEST_WS=1 (a web server, a Celery worker) run in
# WS mode, on a Celery queue of their own so that the SSE worker never takes their tasks.
ASYNC_DOWNLOADS_WS_MODE = os.environ.get("ASYNC_DOWNLOADS_TEST_WS") == "1"
if ASYNC_DOWNLOADS_WS_MODE:
    CELERY_TASK_DEFAULT_QUEUE += "-ws"

# A queue that workers read only when a test asks them to (tests/test_cancel.py).
ELSEWHERE_QUEUE = f"adtest-{RUN_ID}-elsewhere"
CELERY_TASK_ROUTES = {"tests.testapp.tasks.queued_elsewhere": {"queue": ELSEWHERE_QUEUE}}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"null": {"class": "logging.NullHandler"}},
    "loggers": {"async_downloads": {"handlers": ["null"], "propagate": True}},
}
if os.environ.get("ASYNC_DOWNLOADS_TEST_LOG"):  # a process's own log on stderr, when debugging a test
    LOGGING["handlers"]["stderr"] = {"class": "logging.StreamHandler"}
    LOGGING["loggers"]["async_downloads"] = {"handlers": ["stderr"], "level": "DEBUG", "propagate": False}

if os.environ.get("ASYNC_DOWNLOADS_TEST_CHILD"):
    # Worker and server processes started by a test use the database that pytest made.
    for _database in DATABASES.values():
        _database["NAME"] = _database["TEST"]["NAME"]
# Processes started with ASYNC_DOWNLOADS_TEST_STORE=<alias> keep records in that database.
if os.environ.get("ASYNC_DOWNLOADS_TEST_STORE"):
    ASYNC_DOWNLOADS_STORE = "database"
    ASYNC_DOWNLOADS_DATABASE = os.environ["ASYNC_DOWNLOADS_TEST_STORE"]

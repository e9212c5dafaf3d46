"""What every benchmark's processes share: a small site as in tests/settings.py, on the real Redis.

bench/settings.py (the one settings module) imports this and adds the few differences of
each scenario, chosen by ``ADBENCH_SCENARIO``: ``csv`` (default), ``live``, ``ws``, ``load`` or ``grip``.
Redis is the one at ``REDIS_URL`` (``just bench`` sets it), db 12; each scenario keeps its cache
keys, stored events, event channels and Celery queues under ``adbench-<scenario>-<run>`` (pub/sub
ignores the db number; ``ADBENCH_RUN`` is set by bench/run.py, so that two runs never share a key),
and bench/run.py removes its run's keys at the end; nothing here ever flushes Redis. SQLite
and files live in ``ADBENCH_DIR`` (default bench/.data/<scenario>).
Do not import django_eventstream here: it reads the settings on import.
"""

import os

from devtools import redis_server

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
SCENARIO = os.environ.get("ADBENCH_SCENARIO", "csv")
PREFIX = f"adbench-{SCENARIO}-{os.environ.get('ADBENCH_RUN', '0')}"
WORK_DIR = os.environ.get("ADBENCH_DIR") or os.path.join(BENCH_DIR, ".data", SCENARIO)
os.makedirs(WORK_DIR, exist_ok=True)
REDIS_DB = 12
REDIS_URL = (os.environ.get("REDIS_URL") or redis_server.ensure()).rsplit("/", 1)[0] + f"/{REDIS_DB}"

# Long enough for the HMAC keys of the JWTs signed with it (GRIP mode; PyJWT warns below 32 bytes).
SECRET_KEY = "bench-only-not-secret-7d3a9c51e0b24f68a1c5e9f03b7d2a64"
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
    "bench.benchapp",
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

TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": ["django.template.context_processors.request",
                                       "django.contrib.auth.context_processors.auth"]},
}]

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.path.join(WORK_DIR, "db.sqlite3")}}
# The database store (bench/stores.py): ADBENCH_POSTGRES_URL adds a "postgres" alias (the bench's
# own database on that server); ADBENCH_STORE=database keeps the records on ADBENCH_STORE_DATABASE.
if os.environ.get("ADBENCH_POSTGRES_URL"):
    from devtools import postgres_server

    DATABASES["postgres"] = {"ENGINE": "django.db.backends.postgresql",
                             **postgres_server.parts(os.environ["ADBENCH_POSTGRES_URL"])}
if os.environ.get("ADBENCH_STORE") == "database":
    ASYNC_DOWNLOADS_STORE = "database"
    ASYNC_DOWNLOADS_DATABASE = os.environ.get("ADBENCH_STORE_DATABASE", "default")
STORAGES = {"default": {"BACKEND": "django.core.files.storage.FileSystemStorage",
                        "OPTIONS": {"location": os.path.join(WORK_DIR, "media")}}}
CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL,
                      "KEY_PREFIX": PREFIX}}

# Cross-process delivery as a real site has it: django-eventstream on Redis pub/sub, with
# our storage (replay) and channel manager (a user reads only their own channel).
EVENTSTREAM_REDIS = EVENTSTREAM_STORAGE_CONNECTION = redis_server.connection_kwargs(REDIS_URL)
EVENTSTREAM_STORAGE_CLASS = "async_downloads.sse.EventStorage"
EVENTSTREAM_CHANNELMANAGER_CLASS = "async_downloads.sse.ChannelManager"
ASYNC_DOWNLOADS_WS_CHANNEL_NAME = PREFIX
ASYNC_DOWNLOADS_EVENT_TTL = 120

# Celery (the live probe's worker, the load scenario's workers): queues and keys under the prefix.
CELERY_BROKER_URL = REDIS_URL
CELERY_BROKER_TRANSPORT_OPTIONS = {"global_keyprefix": f"{PREFIX}:celery:"}
CELERY_TASK_DEFAULT_QUEUE = PREFIX
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# WS mode's channel layer (the ws scenario), under the prefix as well.
CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                              "CONFIG": {"hosts": [REDIS_URL], "prefix": f"{PREFIX}-channels"}}}

# The library's warnings (a failed publish changes what is measured) reach stderr, where the
# bench collects them; Django's and django-eventstream's logs of closed connections do not.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"null": {"class": "logging.NullHandler"}, "stderr": {"class": "logging.StreamHandler"}},
    "loggers": {
        "async_downloads": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        "django": {"handlers": ["null"], "propagate": False},
        "django_eventstream": {"handlers": ["null"], "propagate": False},
    },
}

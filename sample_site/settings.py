"""Settings of the sample site: SQLite, and one Redis for the cache, Celery and the event stream.

Everything that differs between machines comes from the environment:
``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``; the site uses a db number
of its own on that server, ``SAMPLE_SITE_REDIS_DB``, default 5),
``DJANGO_SECRET_KEY`` and ``DJANGO_DEBUG``. ``SHOWCASE`` (``bootstrap5``, ``toast`` or
``semantic``) switches the download centre to a template set from ``templates_showcase/``.
``SAMPLE_SITE_DB``, ``SAMPLE_SITE_MEDIA_ROOT`` and ``SAMPLE_SITE_VAR_DIR`` (Celery beat's
schedule) move the site's files elsewhere, e.g. for a test run that leaves the demo's own alone.
``DEMO_PUSHPIN_CONTROL_URI`` and ``DEMO_PUSHPIN_KEY`` (set by ``run_demo.py --pushpin``, ``just
demo-pushpin``, for every process it starts) turn on GRIP mode: streams held by that Pushpin.
"""

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from django.core.exceptions import ImproperlyConfigured

from devtools.redis_server import DEFAULT_URL, connection_kwargs

BASE_DIR = Path(__file__).resolve().parent


def redis_db_url(url, db):
    """``url`` with its db number replaced by ``db``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


REDIS_URL = redis_db_url(os.environ.get("REDIS_URL") or DEFAULT_URL, os.environ.get("SAMPLE_SITE_REDIS_DB", "5"))

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "sample-site-insecure-key-do-not-use-in-production")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", *filter(None, os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(","))]

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
    "sample_site.shop",
]

SHOWCASES = ("bootstrap5", "toast", "semantic")
SHOWCASE = os.environ.get("SHOWCASE") or "default"
if SHOWCASE not in ("default", *SHOWCASES):
    raise ImproperlyConfigured(
        f"SHOWCASE is {SHOWCASE!r}; use one of {SHOWCASES!r}, or 'default' for the app's own templates."
    )
if SHOWCASE != "default":
    # App template folders are searched in INSTALLED_APPS order: the showcase's templates win.
    INSTALLED_APPS.insert(INSTALLED_APPS.index("async_downloads"), f"templates_showcase.{SHOWCASE}")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # The language switch in the top bar (Django's set_language view keeps the choice in a cookie).
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "sample_site.urls"
ASGI_APPLICATION = "sample_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SAMPLE_SITE_DB") or BASE_DIR / "db.sqlite3",
        # The web process and the Celery worker share the file.
        "OPTIONS": {"timeout": 20},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
# The languages async_downloads ships; an export started in German shows its progress in German.
LANGUAGES = [("en", "English"), ("de", "Deutsch"), ("fr", "Français")]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Finished downloads are stored here and served by async_downloads' owner-checked view,
# never as public media URLs. (`just screenshots` points SAMPLE_SITE_MEDIA_ROOT at a folder of its own.)
MEDIA_ROOT = os.environ.get("SAMPLE_SITE_MEDIA_ROOT") or BASE_DIR / "media"

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "shop:exports"
LOGOUT_REDIRECT_URL = "login"

# The cache holds the download records that web and worker processes share.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "sample",
    }
}

CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_DEFAULT_QUEUE = "sample-site"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# The worker runs beat too (see run_demo.py); this is where beat keeps its schedule (and the demo its log).
VAR_DIR = Path(os.environ.get("SAMPLE_SITE_VAR_DIR") or BASE_DIR / "var")
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE = {
    "cleanup-expired-downloads": {
        "task": "async_downloads.tasks.cleanup_expired_downloads",
        "schedule": 60 * 60,
    }
}

# Live progress: events from the worker reach the web process through Redis,
# and are stored for a while so that a reconnecting browser catches up.
EVENTSTREAM_REDIS = connection_kwargs(REDIS_URL)
EVENTSTREAM_STORAGE_CLASS = "async_downloads.sse.EventStorage"
EVENTSTREAM_STORAGE_CONNECTION = connection_kwargs(REDIS_URL)
EVENTSTREAM_CHANNELMANAGER_CLASS = "async_downloads.sse.ChannelManager"
# Pub/sub ignores the db number: this prefix keeps the site's channels apart from other sites'.
ASYNC_DOWNLOADS_WS_CHANNEL_NAME = "sample-downloads"
# Customers type their own names: exports opened in a spreadsheet must not run them as formulas.
ASYNC_DOWNLOADS_ESCAPE_FORMULAS = True
# `STORE=database just demo` keeps the downloads in the site's database (the admin lists them
# under /admin/); the default keeps them in Redis.
ASYNC_DOWNLOADS_STORE = os.environ.get("STORE") or "cache"

# GRIP mode (`just demo-pushpin`): the Pushpin in front of gunicorn holds the streams; every process
# publishes each change to its control port, signed with the key Pushpin signs its requests with.
if os.environ.get("DEMO_PUSHPIN_CONTROL_URI"):
    if not os.environ.get("DEMO_PUSHPIN_KEY"):
        raise ImproperlyConfigured("DEMO_PUSHPIN_CONTROL_URI is set, DEMO_PUSHPIN_KEY (Pushpin's sig_key) is not.")
    MIDDLEWARE.insert(0, "django_grip.GripMiddleware")
    GRIP_PROXIES = [{"control_uri": os.environ["DEMO_PUSHPIN_CONTROL_URI"], "key": os.environ["DEMO_PUSHPIN_KEY"]}]
    del EVENTSTREAM_REDIS  # events go to Pushpin, not through Redis pub/sub

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "async_downloads": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "sample_site": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}

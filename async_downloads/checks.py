"""System checks for configuration mistakes that would otherwise show up only at run time."""

import importlib.util

from django.conf import settings as django_settings
from django.core.checks import Error, Warning, register

from .conf import settings

PER_PROCESS_CACHES = {
    "django.core.cache.backends.locmem.LocMemCache",
    "django.core.cache.backends.dummy.DummyCache",
}


@register()
def check_cache(app_configs=None, **kwargs):
    alias = settings.CACHE_NAME
    caches = getattr(django_settings, "CACHES", {})
    if alias not in caches:
        return [
            Error(
                f"ASYNC_DOWNLOADS_CACHE_NAME is {alias!r}, but CACHES has no such alias.",
                hint=f"Use one of {sorted(caches)!r} or add {alias!r} to CACHES.",
                id="async_downloads.E001",
            )
        ]
    backend = caches[alias].get("BACKEND", "")
    if backend in PER_PROCESS_CACHES:
        return [
            Warning(
                f"The cache {alias!r} ({backend}) lives inside one process: Celery workers "
                "and web processes will not see each other's downloads.",
                hint="Use a shared cache such as django.core.cache.backends.redis.RedisCache.",
                id="async_downloads.W001",
            )
        ]
    return []


@register()
def check_collection_key_format(app_configs=None, **kwargs):
    if "{}" in str(settings.COLLECTION_KEY_FORMAT):
        return []
    return [
        Error(
            f"ASYNC_DOWNLOADS_COLLECTION_KEY_FORMAT is {settings.COLLECTION_KEY_FORMAT!r}; "
            "it needs a '{}' where the user's primary key goes.",
            hint='For example "async_downloads/{}".',
            id="async_downloads.E002",
        )
    ]


@register()
def check_ws_mode(app_configs=None, **kwargs):
    if not settings.WS_MODE or importlib.util.find_spec("channels") is not None:
        return []
    return [
        Error(
            "ASYNC_DOWNLOADS_WS_MODE is on, but Django Channels is not installed.",
            hint="pip install 'django-async-downloads[ws]'",
            id="async_downloads.E003",
        )
    ]

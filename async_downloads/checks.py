"""System checks for configuration mistakes that would otherwise show up only at run time."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Error, Warning, register
from django.utils.module_loading import import_string

from . import compat, grip
from .conf import TRANSPORTS, settings
from .sse import ChannelManager

PER_PROCESS_CACHES = {
    "django.core.cache.backends.locmem.LocMemCache",
    "django.core.cache.backends.dummy.DummyCache",
}


@register()
def check_cache(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
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
def check_collection_key_format(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    if _formats_one_pk(settings.COLLECTION_KEY_FORMAT):
        return []
    return [
        Error(
            f"ASYNC_DOWNLOADS_COLLECTION_KEY_FORMAT is {settings.COLLECTION_KEY_FORMAT!r}; "
            "it needs a '{}' where the user's primary key goes.",
            hint='For example "async_downloads/{}".',
            id="async_downloads.E002",
        )
    ]


def _formats_one_pk(key_format: object) -> bool:
    """``key_format.format(pk)`` works and gives each user a key of their own."""
    try:
        return str(key_format).format(1) != str(key_format).format(2)
    except (IndexError, KeyError, ValueError, AttributeError):
        return False


@register()
def check_ws_mode(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    if not settings.WS_MODE or importlib.util.find_spec("channels") is not None:
        return []
    return [
        Error(
            "ASYNC_DOWNLOADS_WS_MODE is on, but Django Channels is not installed.",
            hint="pip install 'django-async-downloads[ws]'",
            id="async_downloads.E003",
        )
    ]


SENDFILE_MODES = ("x-accel-redirect", "x-sendfile")


@register()
def check_sendfile(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    mode = settings.SENDFILE
    if not mode or str(mode).lower() in SENDFILE_MODES:
        return []
    return [
        Error(
            f"ASYNC_DOWNLOADS_SENDFILE is {mode!r}; it must be None or one of {SENDFILE_MODES!r}.",
            hint='Use "x-accel-redirect" for nginx or "x-sendfile" for Apache, or None to send files from Django.',
            id="async_downloads.E004",
        )
    ]


@register()
def check_event_bus(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    if settings.WS_MODE or str(settings.TRANSPORT).lower() != "sse":
        return []
    if hasattr(django_settings, "EVENTSTREAM_REDIS") or grip.enabled():
        return []
    return [
        Warning(
            "The SSE transport has no cross-process event bus: events sent by Celery "
            "workers will reach no browser.",
            hint="Set EVENTSTREAM_REDIS or GRIP_PROXIES (see the README), or ASYNC_DOWNLOADS_TRANSPORT = 'poll'.",
            id="async_downloads.W002",
        )
    ]


@register()
def check_channel_manager(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    if settings.WS_MODE or str(settings.TRANSPORT).lower() != "sse":
        return []
    path = getattr(django_settings, "EVENTSTREAM_CHANNELMANAGER_CLASS", "")
    try:
        ok = bool(path) and issubclass(import_string(path), ChannelManager)
    except (ImportError, TypeError):  # TypeError: the path names something that is not a class
        ok = False
    if ok:
        return []
    return [
        Warning(
            f"EVENTSTREAM_CHANNELMANAGER_CLASS is {path or None!r}: without the app's channel "
            "manager, any signed-in user could read any download channel.",
            hint='Set EVENTSTREAM_CHANNELMANAGER_CLASS = "async_downloads.sse.ChannelManager" (or a subclass).',
            id="async_downloads.W003",
        )
    ]


@register()
def check_transport(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    if str(settings.TRANSPORT).lower() in TRANSPORTS:
        return []
    return [
        Error(
            f"ASYNC_DOWNLOADS_TRANSPORT is {settings.TRANSPORT!r}; it must be one of {TRANSPORTS!r}.",
            hint='Use "sse" (the default) or "poll"; WebSocket mode is ASYNC_DOWNLOADS_WS_MODE = True.',
            id="async_downloads.E005",
        )
    ]


@register()
def check_compat(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    missing = compat.problems()
    if not missing:
        return []
    return [
        Warning(
            "The installed django-eventstream or asgiref lacks what async_downloads adapts to: "
            + "; ".join(missing) + ".",
            hint="Install the versions that pyproject.toml of django-async-downloads allows.",
            id="async_downloads.W004",
        )
    ]


@register()
def check_heartbeat(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    interval, timeout = settings.HEARTBEAT_INTERVAL, settings.WORKER_TIMEOUT
    if float(interval) * 2 <= float(timeout):
        return []
    return [
        Warning(
            f"ASYNC_DOWNLOADS_HEARTBEAT_INTERVAL ({interval!r} s) is more than half of "
            f"ASYNC_DOWNLOADS_WORKER_TIMEOUT ({timeout!r} s): one late heartbeat would fail a live download.",
            hint="Keep the worker timeout at least twice the heartbeat interval (defaults: 10 s and 45 s).",
            id="async_downloads.W005",
        )
    ]


GRIP_MIDDLEWARE = "django_grip.GripMiddleware"


@register()
def check_grip(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """GRIP mode: proxies configured, each with a real key, and django-grip's middleware first."""
    if settings.WS_MODE or str(settings.TRANSPORT).lower() != "sse" or not grip.enabled():
        return []
    found: list[CheckMessage] = []
    proxies = grip.proxies()
    if not proxies:
        found.append(Error(
            "ASYNC_DOWNLOADS_GRIP is on, but no GRIP proxy is configured: events reach nobody and "
            "stream requests are refused.",
            hint='Set GRIP_PROXIES = [{"control_uri": "http://127.0.0.1:5561", "key": "..."}] (see the README).',
            id="async_downloads.E006",
        ))
    for entry in proxies:
        key = grip.verify_key(entry)
        where = entry.get("control_uri") or entry.get("control_zmq_uri") or "a GRIP proxy"
        if not key:
            found.append(Error(
                f"The GRIP proxy {where} has no key: django-grip then takes any request with a Grip-Sig "
                "header for one from the proxy.",
                hint='Give every entry of GRIP_PROXIES a "key" (Pushpin\'s sig_key).',
                id="async_downloads.E007",
            ))
        elif isinstance(key, str) and key in grip.DEFAULT_KEYS:
            found.append(Error(
                f"The GRIP proxy {where} signs with Pushpin's default key {key!r}: anyone can forge its signature.",
                hint="Set sig_key in pushpin.conf to a long random secret, and the same key in GRIP_PROXIES.",
                id="async_downloads.E008",
            ))
    middleware = list(getattr(django_settings, "MIDDLEWARE", None) or [])
    if GRIP_MIDDLEWARE not in middleware:
        found.append(Error(
            f"GRIP mode needs {GRIP_MIDDLEWARE} in MIDDLEWARE: without it no request counts as "
            "coming from the proxy, and every stream request is refused.",
            hint=f'Put "{GRIP_MIDDLEWARE}" first in MIDDLEWARE.',
            id="async_downloads.E009",
        ))
    elif middleware[0] != GRIP_MIDDLEWARE:
        found.append(Warning(
            f"{GRIP_MIDDLEWARE} is not the first middleware: a middleware before it can answer a "
            "stream request (or change its response) without the GRIP instructions.",
            hint=f'Put "{GRIP_MIDDLEWARE}" first in MIDDLEWARE.',
            id="async_downloads.W006",
        ))
    return found

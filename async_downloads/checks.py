"""System checks for configuration mistakes that would otherwise show up only at run time."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from django.apps import AppConfig
from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Error, Warning, register
from django.utils.module_loading import import_string
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import compat, grip
from .conf import TRANSPORTS, settings, store_name
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
        if not entry.get("control_uri"):
            found.append(Warning(
                f"The GRIP proxy {where} has no control_uri: the app publishes to each proxy's HTTP control "
                "port only, so its streams get no events.",
                hint='Give the entry Pushpin\'s HTTP control port: "control_uri": "http://127.0.0.1:5561".',
                id="async_downloads.W010",
            ))
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


DJANGO_REDIS_CACHE = "django.core.cache.backends.redis.RedisCache"
DJANGO_REDIS_PACKAGE_CACHE = "django_redis.cache.RedisCache"
#: Seconds the deploy check waits for Redis to connect and to answer: `check --deploy` must not hang.
REDIS_PROBE_TIMEOUT = 1.0


@register(deploy=True)
def check_cache_redis(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """Cache store: the Redis behind it keeps records through a restart, and never evicts them.

    Silent whenever it cannot tell: CONFIG refused (managed Redis, ACLs), Redis
    unreachable, a cache that is not Redis, the database store.
    """
    try:
        if store_name() != "cache":
            return []
    except ValueError:
        return []
    alias = settings.CACHE_NAME
    config = (getattr(django_settings, "CACHES", None) or {}).get(alias)
    if not isinstance(config, dict) or config.get("BACKEND") not in (DJANGO_REDIS_CACHE, DJANGO_REDIS_PACKAGE_CACHE):
        return []
    servers = _redis_servers(config.get("LOCATION"))
    options = _redis_options(config)
    if not servers or options is None:
        return []
    found = _redis_config(servers[0], options)
    if found is None:
        return []
    where = f"The Redis of the cache {alias!r} ({_redacted(servers[0])}"
    where += ", the first server of its LOCATION; the others were not checked)" if len(servers) > 1 else ")"
    messages: list[CheckMessage] = []
    if found.get("save") == "" and found.get("appendonly") == "no":
        messages.append(Warning(
            f"{where} keeps nothing on disk (save is empty, appendonly is no): a restart of Redis "
            "loses every user's downloads.",
            hint='Use the database store (ASYNC_DOWNLOADS_STORE = "database"), or turn on persistence '
                 'in Redis: AOF (appendonly yes) or RDB snapshots (save "900 1").',
            id="async_downloads.W007",
        ))
    policy = found.get("maxmemory-policy")
    if policy is not None and policy != "noeviction":
        limit = found.get("maxmemory")
        when = "once it reaches maxmemory"
        if limit:
            when += " (not set yet)" if limit == "0" else f" ({limit} bytes)"
        if policy.startswith("volatile-"):
            what = "it evicts keys with a TTL first, and every download record has one"
        elif policy.startswith("allkeys-"):
            what = "it evicts any key, download records included"
        else:
            what = "it may evict download records"
        messages.append(Warning(
            f"{where} has maxmemory-policy {policy!r}: {when}, {what}, and those downloads vanish "
            "from their users' download centres.",
            hint='Set maxmemory-policy noeviction in Redis (it then refuses writes when full instead of '
                 'dropping records), or use the database store (ASYNC_DOWNLOADS_STORE = "database").',
            id="async_downloads.W008",
        ))
    return messages


def _redis_servers(location: object) -> list[str]:
    """The server URLs of a Redis cache's LOCATION (a string, comma- or semicolon-separated, or a list)."""
    if isinstance(location, str):
        location = location.replace(";", ",").split(",")
    if not isinstance(location, list | tuple):
        return []
    return [server.strip() for server in location if isinstance(server, str) and server.strip()]


def _redis_options(config: dict[str, Any]) -> dict[str, Any] | None:
    """Connection options for probing the cache's Redis, with short timeouts and no retries;
    None where the servers are not in LOCATION (django-redis's Sentinel client)."""
    options = config.get("OPTIONS") or {}
    if not isinstance(options, dict):
        return None
    if config.get("BACKEND") == DJANGO_REDIS_PACKAGE_CACHE:
        if "SENTINELS" in options or "sentinel" in str(options.get("CLIENT_CLASS", "")).lower():
            return None
        probe = dict(options.get("CONNECTION_POOL_KWARGS") or {})
        if options.get("PASSWORD"):
            probe["password"] = options["PASSWORD"]
    else:
        # Django's RedisCache hands its OPTIONS to the connection pool, except these two.
        probe = {key: value for key, value in options.items() if key not in ("pool_class", "parser_class")}
    probe.update(
        socket_connect_timeout=REDIS_PROBE_TIMEOUT,
        socket_timeout=REDIS_PROBE_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        retry_on_error=[],
        decode_responses=True,
    )
    return probe


def _redis_config(url: str, options: dict[str, Any]) -> dict[str, str] | None:
    """The persistence and eviction settings of the Redis at ``url``, or None if it cannot tell."""
    try:
        pool = redis.ConnectionPool.from_url(url, **options)
    except (ValueError, TypeError):
        return None
    try:
        client = redis.Redis(connection_pool=pool)
        found: dict[str, str] = {}
        # One parameter per CONFIG GET: Redis before 7 takes no more.
        for name in ("save", "appendonly", "maxmemory-policy", "maxmemory"):
            reply = client.config_get(name)
            value = reply.get(name) if isinstance(reply, dict) else None
            if isinstance(value, str):
                found[name] = value
        return found
    # ResponseError: CONFIG unknown or renamed, NOPERM; ConnectionError, TimeoutError: unreachable.
    except (redis.RedisError, OSError, ValueError, TypeError):
        return None
    finally:
        pool.disconnect()


def _redacted(url: str) -> str:
    """``url`` without its credentials and query (which may hold a password)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


@register()
def check_email_notice(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """The e-mail notice's links (``async_downloads.notify``): absolute, on an http(s) BASE_URL."""
    base_url = str(settings.BASE_URL or "")
    if base_url and not _is_absolute_http_url(base_url):
        return [Warning(
            f"ASYNC_DOWNLOADS_BASE_URL is {base_url!r}; it must be an absolute http or https URL.",
            hint='Set it to where your site is served, e.g. "https://example.com".',
            id="async_downloads.W009",
        )]
    if settings.EMAIL_AFTER is not None and not base_url:
        return [Warning(
            "ASYNC_DOWNLOADS_EMAIL_AFTER is set but ASYNC_DOWNLOADS_BASE_URL is empty: the links in the "
            "e-mails to owners of finished downloads are relative, and no mail program can open them.",
            hint='Set ASYNC_DOWNLOADS_BASE_URL to where your site is served, e.g. "https://example.com".',
            id="async_downloads.W009",
        )]
    return []


def _is_absolute_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed "[" of an IPv6 host, say
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


@register()
def check_store(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    try:
        name = store_name()
    except ValueError as error:
        return [Error(str(error), id="async_downloads.E010")]
    if name != "database":
        return []
    alias = settings.DATABASE
    databases = getattr(django_settings, "DATABASES", {})
    if alias not in databases:
        return [
            Error(
                f"ASYNC_DOWNLOADS_DATABASE is {alias!r}, but DATABASES has no such alias.",
                hint=f"Use one of {sorted(databases)!r} (the database store keeps its rows there).",
                id="async_downloads.E011",
            )
        ]
    return []

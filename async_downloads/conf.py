"""Settings of the app, read on every access so ``override_settings`` works."""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings
from django.core.cache import DEFAULT_CACHE_ALIAS

TRANSPORTS = ("sse", "poll", "ws")

DEFAULTS = {
    "TIMEOUT": 60 * 60 * 24,
    "DOWNLOAD_TEMPLATE": "async_downloads/downloads.html",
    "PATH_PREFIX": "downloads",
    "COLLECTION_KEY_FORMAT": "async_downloads/{}",
    "WS_CHANNEL_NAME": "downloads",
    "CACHE_NAME": DEFAULT_CACHE_ALIAS,
    "WS_MODE": False,
    "CSS_CLASS": None,
    "IN_MEMORY_MAX_SIZE_BYTES": 5 * 1000 * 1000,
    "STORAGE": "default",
    "SENDFILE": None,
    "SENDFILE_URL": "",
    "REDIRECT_TO_STORAGE_URL": None,
    "IDLE_POLL_INTERVAL": 30,
    "LOCK_TIMEOUT": 10,
    "EVENT_TTL": 15 * 60,
    "TRANSPORT": "sse",
    "POLL_INTERVAL": 2,
    "WS_URL": "/ws/async_downloads/",
    "STALL_TIMEOUT": 600,
    "HEARTBEAT_INTERVAL": 10,
    "WORKER_TIMEOUT": 45,
    "PENDING_WAIT": 30,
    "OUTAGE_WAIT": 30,
    # GRIP mode of the SSE transport (async_downloads.grip): None = on when GRIP_PROXIES or GRIP_URL is set.
    "GRIP": None,
    "GRIP_PUBLISH_TIMEOUT": 2,
    # Idle centres keep their stream open too: None = in GRIP mode only.
    "IDLE_STREAMS": None,
    # Stream requests one process sets up at once (async_downloads.stream); the others wait their turn.
    # None = no limit.
    "STREAM_OPENINGS": 32,
    # Writing files (async_downloads.writers).
    "CSV_ENCODING": "utf-8",
    "ESCAPE_FORMULAS": False,
    "TEMP_DIR": None,
    # Limits (async_downloads.cache.init_download): downloads a user may have in progress at once
    # (pending or running; None = no cap), and whether starting the same task with the same
    # arguments while one runs returns the running download instead of a second one.
    "MAX_IN_PROGRESS": None,
    "DEDUPE": False,
    # Where download records live (async_downloads.store): "cache" (the Django cache named by
    # CACHE_NAME, as in earlier releases) or "database" (the Download model, on the DATABASE alias).
    "STORE": "cache",
    "DATABASE": "default",
    # A notice for users who left (async_downloads.notify): e-mail the owner of a download that
    # finished after running at least this many seconds (None = never), with links on BASE_URL.
    "EMAIL_AFTER": None,
    "BASE_URL": "",
    "EMAIL_FROM": None,
}

STORES = ("cache", "database")


class Settings:
    """``conf.settings.TIMEOUT`` reads ``ASYNC_DOWNLOADS_TIMEOUT`` or its default."""

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"Unknown async_downloads setting {name!r}.")
        return getattr(django_settings, f"ASYNC_DOWNLOADS_{name}", DEFAULTS[name])

    @property
    def CACHE_NAME(self) -> str:
        # Earlier releases documented "" as "the default cache".
        return getattr(django_settings, "ASYNC_DOWNLOADS_CACHE_NAME", "") or DEFAULT_CACHE_ALIAS


settings = Settings()


def transport() -> str:
    """How pages hear of changes: "sse" (the default), "poll", or "ws" in WS mode."""
    if settings.WS_MODE:
        return "ws"
    name = str(settings.TRANSPORT).lower()
    if name not in TRANSPORTS:
        raise ValueError(f"ASYNC_DOWNLOADS_TRANSPORT is {name!r}; use one of {TRANSPORTS!r}.")
    return name


def store_name() -> str:
    """Where download records live: "cache" (the default) or "database"."""
    name = str(settings.STORE).lower()
    if name not in STORES:
        raise ValueError(f"ASYNC_DOWNLOADS_STORE is {name!r}; use one of {STORES!r}.")
    return name

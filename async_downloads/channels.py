"""Names of a user's live channels: the SSE channel and the WebSocket group.

Both are derived from the user's primary key, the ``ASYNC_DOWNLOADS_WS_CHANNEL_NAME``
prefix and a digest keyed with the site's ``SECRET_KEY``, so that nobody can guess
another user's channel and sites sharing one Redis never read each other's events.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Final

from django.utils.crypto import salted_hmac
from django_eventstream.utils import get_storage, make_id

from .conf import settings

logger = logging.getLogger(__name__)

#: The SSE event name of every message (htmx's ``sse-swap="downloads"``).
EVENT: Final = "downloads"
# channels accepts group names of ASCII alphanumerics, "-", "_" and ".", shorter than 100.
GROUP_NAME_MAX: Final = 99
DIGEST_LENGTH: Final = 20


def channel_prefix() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(settings.WS_CHANNEL_NAME)) + "-"


def channel_for(pk: Any) -> str:
    """The SSE channel of user ``pk``."""
    digest = salted_hmac("async_downloads.channel", str(pk), algorithm="sha256").hexdigest()[:DIGEST_LENGTH]
    return f"{channel_prefix()}{pk}-{digest}"


def group_prefix() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(settings.WS_CHANNEL_NAME)) + "."


def group_for(pk: Any) -> str:
    """The channel-layer group of user ``pk`` in WS mode (a valid group name for any pk)."""
    digest = salted_hmac("async_downloads.ws-group", str(pk), algorithm="sha256").hexdigest()[:DIGEST_LENGTH]
    readable = f"{group_prefix()}{re.sub(r'[^A-Za-z0-9_-]', '_', str(pk))}"
    return f"{readable[: GROUP_NAME_MAX - DIGEST_LENGTH - 1]}.{digest}"


def current_event_id(pk: Any) -> str:
    """``lastEventId`` for a page rendered now: replay starts after the newest stored event."""
    storage = get_storage()
    if storage is None:
        return ""
    channel = channel_for(pk)
    try:
        return str(make_id({channel: storage.get_current_id(channel)}))
    except Exception:
        logger.warning("Could not read the current event id of %s.", channel, exc_info=True)
        return ""

"""WebSocket mode through Django Channels: one channel-layer group per user.

The group is derived from the user's primary key, the
``ASYNC_DOWNLOADS_WS_CHANNEL_NAME`` prefix and a digest keyed with the site's
``SECRET_KEY`` (as the SSE channels are), so it is a valid group name for any
username and sites sharing one Redis never join each other's groups.
Channels is imported only when something is sent: this module imports
without it (system check ``async_downloads.E003`` says what to install).
"""

import re

from django.utils.crypto import salted_hmac

from .conf import settings

#: The ``type`` of the group messages, handled by ``DownloadsConsumer.downloads_message``.
MESSAGE_TYPE = "downloads.message"
# channels accepts group names of ASCII alphanumerics, "-", "_" and ".", shorter than 100.
GROUP_NAME_MAX = 99
DIGEST_LENGTH = 20


def group_prefix():
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(settings.WS_CHANNEL_NAME)) + "."


def group_for(pk):
    digest = salted_hmac("async_downloads.ws-group", str(pk), algorithm="sha256").hexdigest()[:DIGEST_LENGTH]
    readable = f"{group_prefix()}{re.sub(r'[^A-Za-z0-9_-]', '_', str(pk))}"
    return f"{readable[: GROUP_NAME_MAX - DIGEST_LENGTH - 1]}.{digest}"


def channel_layer():
    try:
        from channels.layers import get_channel_layer
    except ImportError as error:
        raise ImportError(
            "ASYNC_DOWNLOADS_WS_MODE needs Django Channels: pip install 'django-async-downloads[ws]'"
        ) from error
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("ASYNC_DOWNLOADS_WS_MODE needs CHANNEL_LAYERS (see the README's WS mode section).")
    return layer


def send(pk, html):
    """Push ``html`` to every open socket of user ``pk``, in any process."""
    from asgiref.sync import async_to_sync

    async_to_sync(channel_layer().group_send)(group_for(pk), {"type": MESSAGE_TYPE, "html": html})

"""The WS transport through Django Channels: one channel-layer group per user.

Channels is imported only when something is sent: this module imports without
it (system check ``async_downloads.E003`` says what to install).
"""

from __future__ import annotations

from typing import Any, Final

from asgiref.sync import async_to_sync

from .channels import group_for

__all__ = ["MESSAGE_TYPE", "channel_layer", "group_for", "send"]

#: The ``type`` of the group messages, handled by ``DownloadsConsumer.downloads_message``.
MESSAGE_TYPE: Final = "downloads.message"


def channel_layer() -> Any:
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


def send(pk: Any, html: str) -> None:
    """Push ``html`` to every open socket of user ``pk``, in any process."""
    async_to_sync(channel_layer().group_send)(group_for(pk), {"type": MESSAGE_TYPE, "html": html})

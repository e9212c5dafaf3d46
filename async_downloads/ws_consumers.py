"""The WebSocket consumer of WS mode (``pip install 'django-async-downloads[ws]'``).

A socket belongs to ``scope["user"]`` (set by channels' ``AuthMiddlewareStack``)
and to nobody else: anonymous sockets, a ``username`` in the URL that is not
the user's, and pages of other sites (their ``Origin`` is not in
``ALLOWED_HOSTS``) are refused before the handshake completes. An accepted
socket gets the user's whole centre at once, so a reconnecting page is
rebuilt from the cache, and then every message published for the user.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlparse

try:
    from channels.db import database_sync_to_async
    from channels.generic.websocket import AsyncWebsocketConsumer
    from channels.security.websocket import AllowedHostsOriginValidator
except ImportError as error:  # pragma: no cover - exercised in a subprocess without channels
    raise ImportError(
        "async_downloads.ws_consumers needs Django Channels: pip install 'django-async-downloads[ws]'"
    ) from error

from . import cache, compat, partials
from .channels import group_for
from .watch import watching

logger = logging.getLogger(__name__)

#: What a page may ask for over the socket, and the cache function that does it
#: (each takes ``user=`` and acts only on that user's own downloads).
ACTIONS = {"clear": "clear_download", "cancel": "cancel_download"}
# channels-redis forgets group members after its group_expiry (a day by default):
# a centre stays connected for as long as its tab is open, so it joins again now and then.
REJOIN_INTERVAL = 60 * 60

_P = ParamSpec("_P")
_T = TypeVar("_T")


class DownloadsConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]  # channels is untyped
    """The live download centre of the connected user."""

    group: str | None = None

    async def connect(self) -> None:
        self.user = self.scope.get("user")
        if not self._allowed():
            await self.close()
            return
        self.group = group_for(self.user.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        self._rejoin = asyncio.create_task(self._rejoin_periodically())
        await self.accept()
        watching.add(self.user.pk)
        await _run_sync(cache.fail_stalled, self.user.pk)
        await self.send(text_data=await _run_sync(partials.render_message, self.user.pk))

    def _allowed(self) -> bool:
        if self.user is None or not self.user.is_authenticated:
            return False
        username = self.scope.get("url_route", {}).get("kwargs", {}).get("username")
        if username is not None and username != self.user.get_username():
            return False
        if self.channel_layer is None:
            logger.error("WS mode needs CHANNEL_LAYERS; refusing the socket.")
            return False
        return _origin_allowed(self.scope)

    async def _rejoin_periodically(self) -> None:
        while True:
            await asyncio.sleep(REJOIN_INTERVAL)
            await self.channel_layer.group_add(self.group, self.channel_name)

    async def disconnect(self, code: int) -> None:
        if self.group is not None:
            watching.discard(self.user.pk)
            self._rejoin.cancel()
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def downloads_message(self, event: dict[str, Any]) -> None:
        """A message published for this user (``ws.MESSAGE_TYPE``): forward its HTML."""
        await self.send(text_data=event["html"])

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """``{"action": "clear", "download_key": …}`` as htmx's ``ws-send`` sends it; anything else is ignored."""
        action, download_key = _parse(text_data)
        function = getattr(cache, ACTIONS.get(action or "", ""), None)
        if function is None or not cache.is_download_key(download_key):
            logger.info("Ignored a WebSocket message from user %s: %r", self.user.pk, (text_data or "")[:200])
            return
        await _run_sync(function, download_key, user=self.user)


async def _run_sync(function: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """``function`` in a thread, with cache clients of its own that are closed when it returns.

    Django keeps one cache client (with its Redis connections) per async
    context and never closes Redis ones; a socket may stay open for hours, so
    each call gets a fresh context instead of holding a connection per socket.
    """

    def call() -> _T:
        try:
            return function(*args, **kwargs)
        finally:
            compat.close_cache_connections()

    # channels is untyped: database_sync_to_async(call)() is a coroutine of call's result.
    result: _T = await asyncio.create_task(database_sync_to_async(call)(), context=contextvars.Context())
    return result


def _parse(text_data: str | None) -> tuple[str | None, Any]:
    try:
        data = json.loads(text_data or "")
    except ValueError:
        return None, None
    if not isinstance(data, dict) or not isinstance(data.get("action"), str):
        return None, None
    return data["action"], data.get("download_key")


def _origin_allowed(scope: dict[str, Any]) -> bool:
    """A browser always sends ``Origin``: a page of another site may not use the user's session."""
    origin = dict(scope.get("headers", [])).get(b"origin")
    if origin is None:
        return True  # not a browser
    allowed: bool = AllowedHostsOriginValidator(None).valid_origin(urlparse(origin.decode("latin1")))
    return allowed

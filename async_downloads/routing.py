"""WebSocket routes of WS mode, for channels' ``URLRouter`` (see the README's WS mode section).

``ws/async_downloads/`` is the route the download centre connects to
(``ASYNC_DOWNLOADS_WS_URL``); ``ws/downloads/<username>/`` is the route of
earlier releases, kept for pages that still use it.
"""

from django.urls import path, re_path

from .ws_consumers import DownloadsConsumer

websocket_urlpatterns = [
    path("ws/async_downloads/", DownloadsConsumer.as_asgi()),
    re_path(r"ws/downloads/(?P<username>[\w.]+)/$", DownloadsConsumer.as_asgi()),
]

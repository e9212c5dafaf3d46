"""The SSE transport through django-eventstream: sending, channel access and event storage.

Each user has one channel (``channels.channel_for``), taken from ``request.user``
only; the stream view itself is ``async_downloads.stream.events``.
"""

from __future__ import annotations

import re
from typing import Any, Final

from django.contrib.auth import get_user_model
from django.http import HttpRequest
from django_eventstream import send_event
from django_eventstream.channelmanager import DefaultChannelManager
from django_eventstream.event import Event
from django_eventstream.utils import get_storage

from . import compat, grip, partials
from .channels import EVENT, channel_for, channel_prefix
from .conf import settings

__all__ = ["EVENT", "ChannelManager", "EventStorage", "channel_for", "send", "send_here"]

# An idle channel's event counter outlives its events, so that ids keep growing.
COUNTER_TTL: Final = 7 * 24 * 60 * 60
#: The markup's own whitespace: ASCII only, so that the no-break spaces of the text stay
#: ("5\xa0minutes ago", the French "\xa0:" and "12\xa0400").
WHITESPACE: Final = re.compile(r"\s+", re.ASCII)


def send(pk: Any, html: str) -> None:
    """Push ``html`` to every open stream of user ``pk``, in any web process (or GRIP proxy)."""
    # One line of HTML is one `data:` line: less to store, publish, parse and
    # encode for every open stream than the template's indented lines.
    if grip.enabled():
        channel, data = channel_for(pk), one_line(html)
        grip.publish(channel, _stored(channel, data))
        return
    send_event(channel_for(pk), EVENT, one_line(html), json_encode=False)


def _stored(channel: str, data: str) -> Event:
    storage = get_storage()
    return storage.append_event(channel, EVENT, data) if storage is not None else Event(channel, EVENT, data)


def centre_event(pk: Any, channel: str) -> Event:
    """User ``pk``'s whole centre as of now, as one event carrying ``channel``'s current id."""
    storage = get_storage()
    current = int(storage.get_current_id(channel)) if storage is not None else None
    return Event(channel, EVENT, one_line(partials.render_message(pk)), id=current)


def changed_since(channel: str, last_id: Any) -> bool:
    """Whether ``channel`` got events after id ``last_id`` (False without an event storage or id)."""
    storage = get_storage()
    if storage is None or last_id is None:
        return False
    return int(storage.get_current_id(channel)) != int(last_id)


def one_line(html: str) -> str:
    """``html`` on one line, its markup's whitespace collapsed (see ``WHITESPACE``)."""
    return WHITESPACE.sub(" ", html).strip(" ")


def send_here(pk: Any, html: str) -> None:
    """Store ``html`` as an event of user ``pk`` and hand it to this process's open streams only.

    For what only this process's pages need, such as their resync after the
    event bus was away: it must not depend on the Redis listener having
    subscribed again. The stored event replays to pages that reconnect. In GRIP
    mode no stream is open here: it is published to the proxies as ``send`` does.
    """
    if grip.enabled():
        send(pk, html)
        return
    channel = channel_for(pk)
    compat.deliver_here(channel, _stored(channel, one_line(html)))


class ChannelManager(DefaultChannelManager):  # type: ignore[misc]  # django-eventstream is untyped
    """Download channels are readable by their own user only; other channels as by default."""

    def get_channels_for_request(self, request: HttpRequest, view_kwargs: dict[str, Any]) -> set[str]:
        if view_kwargs.get("async_downloads"):
            return {channel_for(request.user.pk)} if request.user.is_authenticated else set()
        channels: set[str] = super().get_channels_for_request(request, view_kwargs)
        return channels

    def can_read_channel(self, user: Any, channel: str) -> bool:
        if not channel.startswith(channel_prefix()):
            readable: bool = super().can_read_channel(user, channel)
            return readable
        return user is not None and user.is_authenticated and channel == channel_for(user.pk)


class EventStorage(compat.SharedClientRedisStorage):
    """django-eventstream's RedisStorage, keeping events for a short time.

    Stored events serve clients that reconnect; ``ASYNC_DOWNLOADS_EVENT_TTL``
    seconds (default 15 minutes) is enough for that and keeps Redis small.
    """

    def get_events(self, channel: str, last_id: int, limit: int = 100) -> list[Event]:
        """The events after ``last_id``; where some of them are gone, the user's whole centre as of now.

        Events are gone when they outlived ``ASYNC_DOWNLOADS_EVENT_TTL``, or when Redis lost
        its data (restarted empty, flushed): the channel's counter then starts again, below
        the id the page holds, and upstream would replay nothing until it caught up. Either
        way, replaying what is left would leave the page wrong; one message with the whole
        list, carrying the current id, puts it right.
        """
        current = int(self.get_current_id(channel))
        events: list[Event] = super().get_events(channel, last_id, limit)
        wanted = min(current, last_id + limit) - last_id
        if last_id <= current and len(events) >= wanted:
            return events
        pk = _user_of(channel)
        if pk is None:
            return events
        return [centre_event(pk, channel)]

    def append_event(self, channel: str, event_type: str, data: Any) -> Event:
        ttl = int(settings.EVENT_TTL)
        return self.store_event(channel, event_type, data, ttl=ttl, counter_ttl=max(ttl, COUNTER_TTL))


def _user_of(channel: str) -> Any:
    """The primary key whose channel ``channel`` is, or None for any other channel."""
    prefix = channel_prefix()
    if not channel.startswith(prefix) or "-" not in channel[len(prefix):]:
        return None
    text = channel[len(prefix):].rsplit("-", 1)[0]
    try:
        pk = get_user_model()._meta.pk.to_python(text)
    except Exception:
        return None
    return pk if channel_for(pk) == channel else None

"""GRIP mode of the SSE transport: streams held by a GRIP proxy (Pushpin) instead of Django.

Django answers each stream request that comes through the proxy at once, with
GRIP instructions (``hold``), so sync WSGI workers can serve streams and web
processes can restart under open ones. Events are published to every configured
proxy's control port, synchronously with a short timeout, from whichever process
changed the download, each with its own event id.

Streams are held without a next link and without ``prev-id``: Pushpin would fetch
a next link about a second after each new channel's first stream, and it sends
those requests at most 10 a second (hard-coded), holding each stream's deliveries
until its turn, so streams opened by the thousand would wait minutes for their
events. The app keeps one download's events in order itself (they are published
under its locks, synchronously), and ``events.catch_up`` sends the centre again
where an event came while the proxy was subscribing.

GRIP mode is on when ``ASYNC_DOWNLOADS_GRIP`` is True, or, where it is None (the
default), when django-grip's ``GRIP_PROXIES`` or ``GRIP_URL`` is set.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any, Final
from urllib.parse import quote

import jwt
from django.conf import settings as django_settings
from django.http import HttpRequest, HttpResponse
from django_eventstream.event import Event
from django_eventstream.utils import add_default_headers, make_id, sse_encode_event
from gripcontrol import Channel, parse_grip_uri

from .conf import settings

logger = logging.getLogger(__name__)

#: The key Pushpin ships with: a proxy signing with it can be impersonated by anyone.
DEFAULT_KEYS: Final = frozenset({"changeme"})
#: django-eventstream's issuer of the signed ``es-meta`` it puts into its next links.
ES_META_ISSUER: Final = "es"
#: What the proxy sends on an idle stream, and how often (seconds).
KEEP_ALIVE: Final = ("event: keep-alive\ndata:\n\n", 20)
#: The opening of a held stream, as django-eventstream's: 2 KB of padding (for
#: browsers and proxies that buffer a response's first bytes), then ``stream-open``.
OPENING: Final = ":" + " " * 2048 + "\n\nevent: stream-open\ndata:\n\n"


class PublishError(RuntimeError):
    """At least one GRIP proxy did not take an event (the others did)."""


def enabled() -> bool:
    """Whether the SSE transport runs in GRIP mode."""
    explicit = settings.GRIP
    if explicit is not None:
        return bool(explicit)
    return bool(getattr(django_settings, "GRIP_PROXIES", None) or getattr(django_settings, "GRIP_URL", None))


def proxies() -> list[dict[str, Any]]:
    """The configured proxies, as django-grip reads them (``GRIP_PROXIES``, then ``GRIP_URL``).

    A fresh list each time: django-grip's own reader appends ``GRIP_URL`` to the
    setting's list on every call.
    """
    found = [dict(entry) for entry in getattr(django_settings, "GRIP_PROXIES", None) or []]
    url = getattr(django_settings, "GRIP_URL", None)
    if url:
        found.append(parse_grip_uri(url))
    verify_key = getattr(django_settings, "GRIP_VERIFY_KEY", None)
    if verify_key:
        for entry in found:
            entry.setdefault("verify_key", verify_key)
    return found


def verify_key(entry: dict[str, Any]) -> Any:
    """The key a proxy's ``Grip-Sig`` is verified with (None: it signs nothing verifiable)."""
    return entry.get("verify_key", entry.get("key"))


def grip_channel(channel: str) -> str:
    """The GRIP channel django-eventstream holds a stream of ``channel`` on."""
    return str(getattr(django_settings, "GRIP_PREFIX", "")) + "events-" + quote(channel)


def encode(channel: str, event: Event) -> str:
    """``event`` of ``channel`` as SSE, with the id a page sends back as ``Last-Event-ID``."""
    event_id = make_id({channel: event.id}) if event.id is not None else None
    text: str = sse_encode_event(event.type, event.data, event_id=event_id)
    return text


def hold(request: HttpRequest, channel: str, events: list[Event]) -> HttpResponse:
    """The answer to a stream request through the proxy: ``events`` now, then hold on ``channel``.

    No next link and no ``prev-id`` (see the module's docstring): the proxy never
    asks Django again about this stream, and delivers each publish as it comes.
    """
    instruct = request.grip.start_instruct()  # type: ignore[attr-defined]  # set by django_grip.GripMiddleware
    instruct.set_hold_stream()
    instruct.add_channel(Channel("events-" + quote(channel)))  # the middleware adds GRIP_PREFIX
    instruct.set_keep_alive(*KEEP_ALIVE)
    response = HttpResponse(OPENING + "".join(encode(channel, event) for event in events),
                            content_type="text/event-stream")
    add_default_headers(response, request=request)
    return response


def publish(channel: str, event: Event) -> None:
    """Publish stored ``event`` of ``channel`` to every configured proxy.

    Each proxy gets its own request with a timeout of
    ``ASYNC_DOWNLOADS_GRIP_PUBLISH_TIMEOUT`` seconds; one that fails does not keep
    the event from the others. Raises ``PublishError`` naming the proxies that
    failed, after trying them all.
    """
    item = {"channel": grip_channel(channel), "formats": {"http-stream": {"content": encode(channel, event)}}}
    body = json.dumps({"items": [item]}).encode()
    failed = []
    for entry in proxies():
        uri = entry.get("control_uri")
        if not uri:
            continue  # a ZeroMQ-only entry: not published to by the app
        try:
            _post(str(uri).rstrip("/") + "/publish/", body, _auth_header(entry))
        except (OSError, urllib.error.URLError, ValueError) as error:
            failed.append(f"{uri} ({error})")
    if failed:
        raise PublishError("Publishing to the GRIP proxy failed: " + "; ".join(failed))


def _auth_header(entry: dict[str, Any]) -> str | None:
    """pubcontrol's rule: a JWT with the ``control_iss`` claim signed with ``key``, else ``key`` as a bearer."""
    key = entry.get("key")
    if not key:
        return None
    if entry.get("control_iss"):
        token = jwt.encode({"iss": entry["control_iss"], "exp": int(time.time()) + 3600}, key, algorithm="HS256")
        return f"Bearer {token}"
    return f"Bearer {key}"


def _post(url: str, body: bytes, auth: str | None) -> None:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    if auth:
        request.add_header("Authorization", auth)
    with urllib.request.urlopen(request, timeout=float(settings.GRIP_PUBLISH_TIMEOUT)) as response:
        if not 200 <= response.status < 300:
            raise ValueError(f"status {response.status}")


def es_meta_user(token: str) -> str | None:
    """The user named by a signed ``es-meta`` of django-eventstream's next links, or None if it is not ours.

    The app's own answers give no next link; streams held by earlier answers
    (django-eventstream's) still have one, which the proxy follows. The
    signature (``SECRET_KEY``, HS256) and the issuer are checked; the expiry
    is not: the proxy asks for a next link long after it was given (a stream
    open for more than an hour), and the request that carries it is trusted for
    its ``Grip-Sig`` (``request.grip.signed``), which the caller checks.
    """
    try:
        claim = jwt.decode(
            token, django_settings.SECRET_KEY.encode(), algorithms=["HS256"], options={"verify_exp": False}
        )
    except jwt.InvalidTokenError:
        return None
    user = claim.get("user") if isinstance(claim, dict) and claim.get("iss") == ES_META_ISSUER else None
    return user if isinstance(user, str) and user != "anonymous" else None

"""GRIP mode of the SSE transport: streams held by a GRIP proxy (Pushpin) instead of Django.

Django answers each stream request that comes through the proxy at once, with
GRIP instructions (django-eventstream writes them), so sync WSGI workers can serve
streams and web processes can restart under open ones. Events are published to
every configured proxy's control port, synchronously with a short timeout, from
whichever process changed the download.

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
from django_eventstream.event import Event
from django_eventstream.utils import sse_encode_event
from gripcontrol import parse_grip_uri

from .conf import settings

logger = logging.getLogger(__name__)

#: The key Pushpin ships with: a proxy signing with it can be impersonated by anyone.
DEFAULT_KEYS: Final = frozenset({"changeme"})
#: django-eventstream's issuer of the signed ``es-meta`` it puts into its next links.
ES_META_ISSUER: Final = "es"


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


def publish(channel: str, event: Event) -> None:
    """Publish stored ``event`` of ``channel`` to every configured proxy.

    Each proxy gets its own request with a timeout of
    ``ASYNC_DOWNLOADS_GRIP_PUBLISH_TIMEOUT`` seconds; one that fails does not keep
    the event from the others. Raises ``PublishError`` naming the proxies that
    failed, after trying them all.
    """
    item: dict[str, Any] = {"channel": grip_channel(channel)}
    if event.id is not None:
        # Pushpin writes the stream's own event id ("%I") and notices gaps from prev-id.
        content = sse_encode_event(event.type, event.data, event_id="%I", escape=True)
        item.update({"id": str(event.id), "prev-id": str(int(event.id) - 1)})
        item["formats"] = {"http-stream": {"content": content, "content-filters": ["build-id"]}}
    else:
        item["formats"] = {"http-stream": {"content": sse_encode_event(event.type, event.data)}}
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

    The signature (``SECRET_KEY``, HS256) and the issuer are checked; the expiry
    is not: the proxy asks for a next link long after it was given (a stream
    open for more than an hour, a recovery after a gap), and the request that
    carries it is trusted for its ``Grip-Sig`` (``request.grip.signed``), which
    the caller checks. Each answer gives the proxy a fresh one.
    """
    try:
        claim = jwt.decode(
            token, django_settings.SECRET_KEY.encode(), algorithms=["HS256"], options={"verify_exp": False}
        )
    except jwt.InvalidTokenError:
        return None
    user = claim.get("user") if isinstance(claim, dict) and claim.get("iss") == ES_META_ISSUER else None
    return user if isinstance(user, str) and user != "anonymous" else None

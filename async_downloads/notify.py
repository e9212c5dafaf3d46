"""A notice for users who left: an e-mail to the owner of a download that took a while.

With ``ASYNC_DOWNLOADS_EMAIL_AFTER`` set (seconds), a download that ran at least that long
(from its start to its finish) and completed or failed is announced to its owner by e-mail,
with the link to the app's download view (which checks the owner) on
``ASYNC_DOWNLOADS_BASE_URL``, or the user-safe message of its error. A download the user
cancelled gets none. ``receivers.connect()`` connects ``on_download_finished`` to
``events.download_finished``.

Sent once: before sending, the notice is claimed in the record (``Record["notified"]``)
through ``store.update``, which runs under the record's lock (the cache store) or in one
row-locking transaction (the database store), so of several workers, retries or resyncs
that try, one sends. Nothing here raises into the task: a failed send is logged, and is
not tried again.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from django.contrib.auth import get_user_model
from django.core.mail import EmailMessage
from django.template.loader import render_to_string
from django.utils import translation

from . import partials, store
from .conf import settings
from .records import COMPLETE, ERROR, Record

logger = logging.getLogger(__name__)

SUBJECT_TEMPLATE = "async_downloads/email/finished_subject.txt"
BODY_TEMPLATE = "async_downloads/email/finished_body.txt"
#: The states announced by e-mail: not ``cancelled``, which the user chose.
NOTIFIED_STATES = frozenset({COMPLETE, ERROR})


def on_download_finished(sender: Any = None, record: Record | None = None, kind: str | None = None,
                         **extra: Any) -> None:
    """``events.download_finished``: e-mail the owner if the download is due a notice."""
    if record is not None:
        notify(record)


def notify(record: Record) -> bool:
    """E-mail the owner of the finished download ``record`` if it is due a notice and no other
    call has claimed it; return whether this call sent it. Never raises."""
    try:
        return _notify(record)
    except Exception:
        logger.exception("The e-mail notice of download %s failed.", record.get("key"))
        return False


def _notify(record: Record) -> bool:
    if not is_due(record):
        return False
    address = owner_address(record["user_id"])
    if not address:
        logger.info("Download %s finished; its owner has no e-mail address, so no notice is sent.", record["key"])
        return False
    if not claim(record["key"]):
        return False
    try:
        message(record, address).send()
    except Exception:
        logger.exception("Could not send the e-mail notice of download %s to its owner.", record["key"])
        return False
    return True


def is_due(record: Record) -> bool:
    """Whether ``record`` completed or failed after running at least ``ASYNC_DOWNLOADS_EMAIL_AFTER`` seconds."""
    after = settings.EMAIL_AFTER
    if after is None or record["state"] not in NOTIFIED_STATES:
        return False
    return record["updated"] - record["created"] >= float(after)


def owner_address(user_id: Any) -> str:
    """The e-mail address of the user ``user_id`` (the user model's e-mail field), or ""."""
    model = get_user_model()
    user = model._default_manager.filter(pk=user_id).first()
    if user is None:
        return ""
    return str(getattr(user, model.get_email_field_name(), "") or "")


def claim(download_key: str) -> bool:
    """Mark the notice of ``download_key`` as sent, unless some process did already; whether this call did."""

    def unclaimed(record: Record) -> bool:
        if record.get("notified"):
            return False
        record["notified"] = time.time()
        return True

    return store.update(download_key, unclaimed) is not None


def message(record: Record, address: str) -> EmailMessage:
    """The notice for ``record``, rendered in the download's language."""
    with _language(record.get("language")):
        context = {
            "download": record,
            "name": record["name"],
            "state": record["state"],
            "link": link(record) if record["state"] == COMPLETE else "",
            "error": partials.localized(record)["errors"] if record["state"] == ERROR else "",
        }
        # One line (a header), keeping the no-break spaces of a translation.
        subject = " ".join(render_to_string(SUBJECT_TEMPLATE, context).splitlines()).strip()
        body = render_to_string(BODY_TEMPLATE, context)
    return EmailMessage(subject, body, settings.EMAIL_FROM or None, [address])


def link(record: Record) -> str:
    """The owner-checked link of a complete download, on ``ASYNC_DOWNLOADS_BASE_URL`` ("" without one)."""
    url = record.get("url") or ""
    if not url:
        return ""
    return str(settings.BASE_URL or "").rstrip("/") + url


def _language(language: str | None) -> contextlib.AbstractContextManager[None]:
    # Without a language (a record of an earlier release), the active one.
    return translation.override(language) if language else contextlib.nullcontext()

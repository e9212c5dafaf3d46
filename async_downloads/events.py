"""The one publish step: every change of a download goes through ``download_changed``."""

import logging

from django.dispatch import Signal

logger = logging.getLogger(__name__)

CREATED, UPDATED, COMPLETED, FAILED, CLEARED, CANCELLED = (
    "created",
    "updated",
    "completed",
    "failed",
    "cleared",
    "cancelled",
)

#: Sent after a download's record changed, with ``record`` and ``kind``.
download_changed_signal = Signal()


def download_changed(record, kind):
    """Tell the user's pages about a change. Never raises: the record is the truth."""
    try:
        download_changed_signal.send(sender=None, record=record, kind=kind)
    except Exception:
        logger.exception("Publishing %s of download %s failed.", kind, record.get("key"))

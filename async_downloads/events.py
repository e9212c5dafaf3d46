"""The one publish step: every change of a download goes through ``download_changed``.

It renders what the user's pages need and hands it to the transport (SSE by
default, Channels in WS mode). A failure is logged and never reaches the
task; the user is then brought up to date with a full message as soon as the
transport works again, since the record in the cache stays the truth.
"""

import logging
import threading
import time
from contextlib import contextmanager

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

RESYNC_INTERVAL = 1.0


def download_changed(record, kind):
    """Tell the user's pages about a change. Never raises."""
    try:
        download_changed_signal.send(sender=None, record=record, kind=kind)
    except Exception:
        logger.exception("A download_changed receiver failed for %s.", record.get("key"))
    pk = record["user_id"]
    if pk in _resync.pending:
        return  # a full update is already on its way
    try:
        publish(pk, record, kind)
    except Exception:
        logger.warning("Publishing %s of download %s failed; will resend.", kind, record.get("key"), exc_info=True)
        _resync.add(pk)


def publish(pk, record=None, kind=None):
    """Render and send what ``kind`` happened to ``record`` means to the user's pages.

    Progress (``UPDATED``) is rendered from ``record``: ``set_percentage`` publishes it
    while it still holds the record's lock, so one download's rows go out in the order
    of its changes. Anything else re-renders the list from the cache under a per-user
    lock: a process that read an older list (two downloads finishing at once in two
    workers, a worker's progress racing a cancel) can never send it after a newer one.
    """
    from . import partials

    transport = partials.transport()
    if transport == "poll":
        return  # pages ask; nothing is pushed
    if kind == UPDATED:
        _transport_send(transport, pk, partials.render_message(pk, record, kind))
        return
    with _users_turn(pk):
        _transport_send(transport, pk, partials.render_message(pk, record, kind))


_turns = threading.local()


@contextmanager
def _users_turn(pk):
    """The per-user publish lock; taken once per thread (rendering a list may publish a stall)."""
    from . import store
    from .conf import settings

    held = _turns.__dict__.setdefault("pks", set())
    if pk in held:
        yield
        return
    with store.locked(settings.COLLECTION_KEY_FORMAT.format(pk) + ":publish"):
        held.add(pk)
        try:
            yield
        finally:
            held.discard(pk)


def _transport_send(name, pk, html):
    if name == "sse":
        from . import sse

        sse.send(pk, html)
    elif name == "ws":
        from . import ws

        ws.send(pk, html)


class _Resync:
    """Users whose pages missed an update; a daemon thread resends their whole centre."""

    def __init__(self):
        self.pending = set()
        self.lock = threading.Lock()
        self.thread = None

    def add(self, pk):
        with self.lock:
            self.pending.add(pk)
            if self.thread is None:
                self.thread = threading.Thread(target=self.run, name="async-downloads-resync", daemon=True)
                self.thread.start()

    def run(self):
        while True:
            time.sleep(RESYNC_INTERVAL)
            for pk in list(self.pending):
                try:
                    publish(pk)
                except Exception:
                    break  # still failing: wait and try again
                with self.lock:
                    self.pending.discard(pk)
            with self.lock:
                if not self.pending:
                    self.thread = None
                    return


_resync = _Resync()

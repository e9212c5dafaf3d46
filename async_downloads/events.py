"""The one publish step: every change of a download goes through ``download_changed``.

It renders what the user's pages need and hands it to the transport (SSE by
default, Channels in WS mode). A failure is logged and never reaches the
task; the user is then brought up to date with a full message as soon as the
transport works again, since the record in the cache stays the truth.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from typing import Any, Final

from django.dispatch import Signal

from . import grip, partials, sse, store, ws
from .conf import transport
from .records import CANCELLED_KIND as CANCELLED
from .records import CLEARED, COMPLETED, CREATED, FAILED, KINDS, UPDATED, Record

__all__ = [
    "CANCELLED", "CLEARED", "COMPLETED", "CREATED", "FAILED", "FINISH_KINDS", "KINDS", "UPDATED",
    "catch_up", "download_changed", "download_changed_signal", "download_finished", "publish",
]

logger = logging.getLogger(__name__)

#: Sent after a download's record changed, with ``record`` and ``kind``.
download_changed_signal = Signal()
#: Sent once per download, when it finishes, with ``record`` and ``kind`` (one of ``FINISH_KINDS``).
download_finished = Signal()
#: The kinds of change that finish a download: a finished download never changes state again.
FINISH_KINDS: Final = frozenset({COMPLETED, FAILED, CANCELLED})

RESYNC_INTERVAL: Final = 1.0
#: Seconds after a GRIP proxy was told to hold a stream until its channel is checked (``catch_up``).
CATCH_UP_DELAY: Final = 1.0
#: The transports that push, by name (the polling transport has none).
PUSHERS: Final = {"sse": sse, "ws": ws}


def download_changed(record: Record, kind: str) -> None:
    """Tell the user's pages about a change. Never raises."""
    try:
        download_changed_signal.send(sender=None, record=record, kind=kind)
    except Exception:
        logger.exception("A download_changed receiver failed for %s.", record.get("key"))
    _publish_or_resync(record, kind)
    if kind in FINISH_KINDS:
        _announce_finish(record, kind)


def _publish_or_resync(record: Record, kind: str) -> None:
    pk = record["user_id"]
    if pk in _resync.pending:
        return  # a full update is already on its way
    try:
        publish(pk, record, kind)
    except Exception:
        logger.warning("Publishing %s of download %s failed; will resend.", kind, record.get("key"), exc_info=True)
        _resync.add(pk)


def _announce_finish(record: Record, kind: str) -> None:
    """``download_finished``, to every receiver: one that raises is logged, and the others still run.

    Sent once: the cache API calls ``download_changed`` with a finishing kind only after the
    store moved the record into a finished state, a move that ``records.TRANSITIONS`` allows once.
    """
    for receiver, result in download_finished.send_robust(sender=None, record=record, kind=kind):
        if isinstance(result, Exception):
            logger.error(
                "A download_finished receiver (%r) failed for %s.", receiver, record.get("key"),
                exc_info=(type(result), result, result.__traceback__),
            )


def publish(
    pk: Any, record: Record | None = None, kind: str | None = None, notice: str = "", here_only: bool = False
) -> None:
    """Render and send what ``kind`` happened to ``record`` means to the user's pages.

    Progress (``UPDATED``) is rendered from ``record``: ``set_percentage`` publishes it
    while it still holds the record's lock, so one download's rows go out in the order
    of its changes. Anything else re-renders the list from the cache under a per-user
    lock: a process that read an older list (two downloads finishing at once in two
    workers, a worker's progress racing a cancel) can never send it after a newer one.
    ``notice`` is a message for the user shown with the list (``records.LOST``, say).
    ``here_only`` sends to the pages open in this process only, where the transport
    can (SSE: not through Redis pub/sub).
    """
    pusher = PUSHERS.get(transport())
    if pusher is None:
        return  # the polling transport: pages ask; nothing is pushed
    if kind == UPDATED:
        # GRIP mode: a list sent again by ``catch_up`` while this download moves on must not
        # reach the pages after this newer row (the proxy delivers in the order it is sent).
        in_order = _publish_lock(pk) if pusher is sse and grip.enabled() else contextlib.nullcontext()
        with in_order:
            pusher.send(pk, partials.render_message(pk, record, kind))
        return
    send = pusher.send_here if here_only and pusher is sse else pusher.send
    with _publish_lock(pk):
        send(pk, partials.render_message(pk, record, kind, notice=notice))


def _publish_lock(pk: Any) -> Any:
    """The lock under which user ``pk``'s lists (and, in GRIP mode, rows) are rendered and sent."""
    return store.locked(f"{store.collection_key(pk)}:publish")


class _Resync:
    """Users whose pages missed an update; a daemon thread resends their whole centre."""

    def __init__(self) -> None:
        self.pending: set[Any] = set()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def reset(self) -> None:
        """In a forked child: the parent's thread is not there; the parent resends to its users itself."""
        self.pending, self.lock, self.thread = set(), threading.Lock(), None

    def add(self, pk: Any) -> None:
        with self.lock:
            self.pending.add(pk)
            if self.thread is None:
                self.thread = threading.Thread(target=self.run, name="async-downloads-resync", daemon=True)
                self.thread.start()

    def run(self) -> None:
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


def catch_up(pk: Any, channel: str, last_id: Any) -> None:
    """Send user ``pk``'s centre again in a second, should ``channel`` have moved past ``last_id`` by then.

    A GRIP proxy subscribes a stream to its channel once it has Django's answer,
    which carries the events up to ``last_id``; an event published in between
    reaches no stream. One look at the channel's id a second later (a Redis read)
    finds it, and the whole centre goes out, under the user's publish lock, to
    every page of the user (an extra message to those that had it). Checks due
    when the process exits are made then.
    """
    _catch_ups.add(pk, channel, last_id)


class _CatchUps:
    """The channels to look at again, in the order they are due; one daemon thread looks."""

    def __init__(self) -> None:
        self.due: dict[Any, tuple[float, str, Any]] = {}
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.thread: threading.Thread | None = None

    def reset(self) -> None:
        """In a forked child: the parent's thread is not there, nor are its streams."""
        self.due, self.lock = {}, threading.Lock()
        self.wake, self.thread = threading.Condition(self.lock), None

    def add(self, pk: Any, channel: str, last_id: Any) -> None:
        if last_id is None:
            return  # no event storage: nothing to compare
        with self.lock:
            # One check per user: from the lowest id, a second after the latest stream (an earlier
            # check could come before the proxy subscribed that one). Moved to the end: still in due order.
            pending = self.due.pop(pk, None)
            if pending is not None and pending[1] == channel:
                last_id = min(int(pending[2]), int(last_id))
            self.due[pk] = (time.monotonic() + CATCH_UP_DELAY, channel, last_id)
            self.wake.notify()
            if self.thread is None:
                self.thread = threading.Thread(target=self.run, name="async-downloads-catch-up", daemon=True)
                self.thread.start()

    def run(self) -> None:
        while True:
            with self.lock:
                if not self.due:
                    self.thread = None
                    return
                # Each is due CATCH_UP_DELAY after it was added: the first added is the first due.
                pk, (when, channel, last_id) = next(iter(self.due.items()))
                wait = when - time.monotonic()
                if wait > 0:
                    self.wake.wait(wait)
                    continue
                del self.due[pk]
            self.check(pk, channel, last_id)

    def check(self, pk: Any, channel: str, last_id: Any) -> None:
        try:
            if pk not in _resync.pending and sse.changed_since(channel, last_id):
                publish(pk)
        except Exception:
            logger.warning("Sending the centre again to user %s failed; will resend.", pk, exc_info=True)
            _resync.add(pk)

    def flush(self) -> None:
        """Make every pending check now (the process is exiting)."""
        with self.lock:
            pending, self.due = self.due, {}
        for pk, (_, channel, last_id) in pending.items():
            self.check(pk, channel, last_id)


_catch_ups = _CatchUps()
atexit.register(_catch_ups.flush)
os.register_at_fork(after_in_child=_catch_ups.reset)
os.register_at_fork(after_in_child=_resync.reset)

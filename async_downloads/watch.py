"""The users whose pages are open in this process, and the sweep that fails their stalled downloads.

An open event stream or WebSocket hears nothing from a worker that died: its
download would show "running" for ever. While a user has a page connected to
this process, a daemon thread calls ``cache.fail_stalled`` for them (every
``sweep_interval()`` seconds, at most every minute), and the failure is pushed
to their pages like any other change. After an outage of the event bus,
``resync_open_pages`` brings every open page up to date.

In GRIP mode the proxy holds the pages' streams and this process never learns
when one closes: a user whose stream it answered is swept until none of their
downloads is pending or running (``Watching.hold``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, Final

from . import cache, events, records, store
from .conf import settings

logger = logging.getLogger(__name__)

MIN_INTERVAL: Final = 0.1
MAX_INTERVAL: Final = 60.0
# The sweep thread looks at the clock (and the setting) at least this often.
TICK: Final = 1.0
#: Users whose downloads one read of the sweep takes: few round trips, and little memory at a time.
SWEEP_BATCH: Final = 100


def sweep_interval() -> float:
    """A quarter of the stall timeout, a third of the worker timeout, half the pending wait: the least."""
    wanted = min(
        float(settings.STALL_TIMEOUT) / 4, float(settings.WORKER_TIMEOUT) / 3, float(settings.PENDING_WAIT) / 2
    )
    return min(max(wanted, MIN_INTERVAL), MAX_INTERVAL)


class Watching:
    """A count of open pages per user, and the thread that sweeps while any is open."""

    def __init__(self) -> None:
        self.pages: Counter[Any] = Counter()
        #: Users swept until none of their downloads is active (GRIP mode: their pages' streams are the
        #: proxy's), with when they were last held.
        self.held: dict[Any, float] = {}
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def add(self, pk: Any) -> None:
        with self.lock:
            self.pages[pk] += 1
            self._start()

    def hold(self, pk: Any) -> None:
        """Sweep user ``pk`` until none of their downloads is pending or running."""
        with self.lock:
            self.held[pk] = time.monotonic()
            self._start()

    def _start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self.run, name="async-downloads-sweep", daemon=True)
            self.thread.start()

    def discard(self, pk: Any) -> None:
        with self.lock:
            self.pages[pk] -= 1
            if self.pages[pk] <= 0:
                del self.pages[pk]

    def users(self) -> list[Any]:
        """The users with an open page here (for the resync after an outage)."""
        with self.lock:
            return list(self.pages)

    def reset(self) -> None:
        """Forget every user, in a forked child: its parent's pages are not its own."""
        self.pages.clear()
        self.held.clear()
        self.lock = threading.Lock()
        self.thread = None

    def run(self) -> None:
        last = time.monotonic()
        while True:
            time.sleep(min(TICK, sweep_interval()))
            with self.lock:
                if not self.pages and not self.held:
                    self.thread = None
                    return
            self.check_cache_server()
            if time.monotonic() - last >= sweep_interval():
                self.sweep()
                last = time.monotonic()

    def check_cache_server(self) -> None:
        """Every tick (one read): pages learn within seconds that the cache server lost its data.

        redis-py may ride out a short restart of the event bus without the listener
        noticing, so this does not wait for it.
        """
        try:
            if store.data_lost():
                resync_open_pages(lost=True)
        except Exception:
            logger.warning("Could not check whether the cache server lost its data.", exc_info=True)

    def sweep(self) -> None:
        """One look at every watched user's downloads, read ``SWEEP_BATCH`` users at a time; a held user
        with none active is let go (one whose look failed is looked at again next time)."""
        started = time.monotonic()
        with self.lock:
            users = [*self.pages, *(pk for pk in self.held if pk not in self.pages)]
        active: set[Any] = set()
        for start in range(0, len(users), SWEEP_BATCH):
            batch = users[start:start + SWEEP_BATCH]
            try:
                active |= cache.sweep(batch)
            except Exception:
                active.update(batch)  # looked at again next time
                logger.warning("Could not check the downloads of %s users for stalls.", len(batch), exc_info=True)
        with self.lock:  # a user held again since the look stays
            for pk in [pk for pk, since in self.held.items() if pk not in active and since < started]:
                del self.held[pk]


watching = Watching()
os.register_at_fork(after_in_child=watching.reset)


def resync_open_pages(lost: bool | None = None) -> int:
    """Send every user with an open page here their whole centre, as the cache has it now.

    Called once the event bus is back after an outage: messages sent meanwhile
    reached nobody, and if the cache server lost its data (a restart without
    persistence, a flush), the pages still show downloads that no longer exist;
    then the message also tells the user that downloads were lost (``lost``:
    whether it did, asked of the store if not given). Returns how many users were
    sent their centre.
    """
    if lost is None:
        lost = store.data_lost()
    notice = str(records.LOST) if lost else ""
    users = watching.users()
    for pk in users:
        try:
            events.publish(pk, notice=notice, here_only=True)
        except Exception:
            logger.warning("Could not resend the downloads of user %s.", pk, exc_info=True)
    return len(users)


async def while_open(pk: Any, content: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """``content`` (a streaming response's), with user ``pk`` watched while it streams."""
    watching.add(pk)
    try:
        async for chunk in content:
            yield chunk
    finally:
        watching.discard(pk)

"""The users whose pages are open in this process, and the sweep that fails their stalled downloads.

An open event stream or WebSocket hears nothing from a worker that died: its
download would show "running" for ever. While a user has a page connected to
this process, a daemon thread calls ``cache.fail_stalled`` for them every
quarter of ``ASYNC_DOWNLOADS_STALL_TIMEOUT`` (at most every minute), and the
failure is pushed to their pages like any other change.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, Final

from . import cache
from .conf import settings

logger = logging.getLogger(__name__)

MIN_INTERVAL: Final = 0.1
MAX_INTERVAL: Final = 60.0
# The sweep thread looks at the clock (and the setting) at least this often.
TICK: Final = 1.0


def sweep_interval() -> float:
    return min(max(float(settings.STALL_TIMEOUT) / 4, MIN_INTERVAL), MAX_INTERVAL)


class Watching:
    """A count of open pages per user, and the thread that sweeps while any is open."""

    def __init__(self) -> None:
        self.pages: Counter[Any] = Counter()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def add(self, pk: Any) -> None:
        with self.lock:
            self.pages[pk] += 1
            if self.thread is None:
                self.thread = threading.Thread(target=self.run, name="async-downloads-sweep", daemon=True)
                self.thread.start()

    def discard(self, pk: Any) -> None:
        with self.lock:
            self.pages[pk] -= 1
            if self.pages[pk] <= 0:
                del self.pages[pk]

    def users(self) -> list[Any]:
        with self.lock:
            return list(self.pages)

    def run(self) -> None:
        last = time.monotonic()
        while True:
            time.sleep(min(TICK, sweep_interval()))
            with self.lock:
                if not self.pages:
                    self.thread = None
                    return
            if time.monotonic() - last >= sweep_interval():
                self.sweep()
                last = time.monotonic()

    def sweep(self) -> None:
        for pk in self.users():
            try:
                cache.fail_stalled(pk)
            except Exception:
                logger.warning("Could not check the downloads of user %s for stalls.", pk, exc_info=True)


watching = Watching()


async def while_open(pk: Any, content: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """``content`` (a streaming response's), with user ``pk`` watched while it streams."""
    watching.add(pk)
    try:
        async for chunk in content:
            yield chunk
    finally:
        watching.discard(pk)

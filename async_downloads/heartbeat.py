"""Heartbeats: the worker process that runs a download's task shows that it is alive.

When a worker starts the task of a download (Celery's ``task_prerun``, the Tasks
framework's ``task_started``: see ``async_downloads.receivers``), the download is
added here; a daemon thread of that process then writes the time into the
download's record (``beat``) every ``ASYNC_DOWNLOADS_HEARTBEAT_INTERVAL``
seconds until the task returns. A worker that is killed stops beating, and
``cache.fail_stalled`` fails its download after ``ASYNC_DOWNLOADS_WORKER_TIMEOUT``
seconds, however long a live task stays silent.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Final

from . import records, store
from .conf import settings
from .records import Record

logger = logging.getLogger(__name__)

# The beat thread looks at the clock (and the setting) at least this often.
TICK: Final = 1.0


class Heartbeats:
    """The downloads whose task runs in this process, and the thread that beats for them."""

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.lost: set[str] = set()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def start(self, download_key: str) -> None:
        with self.lock:
            self.keys.add(download_key)
            self.lost.discard(download_key)
            if self.thread is None:
                self.thread = threading.Thread(target=self.run, name="async-downloads-heartbeat", daemon=True)
                self.thread.start()

    def stop(self, download_key: str) -> None:
        with self.lock:
            self.keys.discard(download_key)
            self.lost.discard(download_key)

    def runs_here(self, download_key: str) -> bool:
        with self.lock:
            return download_key in self.keys

    def run(self) -> None:
        last = time.monotonic()
        while True:
            time.sleep(min(TICK, float(settings.HEARTBEAT_INTERVAL)))
            with self.lock:
                if not self.keys:
                    self.thread = None
                    return
                keys = list(self.keys)
            if time.monotonic() - last >= float(settings.HEARTBEAT_INTERVAL):
                last = time.monotonic()
                for key in keys:
                    self.beat(key)

    def beat(self, download_key: str) -> None:
        try:
            if store.update(download_key, _beat) is None and store.read(download_key) is None:
                self._record_lost(download_key)
        except Exception:
            logger.warning("Could not write the heartbeat of download %s.", download_key, exc_info=True)

    def _record_lost(self, download_key: str) -> None:
        with self.lock:
            if download_key in self.lost or download_key not in self.keys:
                return
            self.lost.add(download_key)
        if not store.was_cleared(download_key):
            logger.warning(
                "Download %s: its record was lost while its task ran (the cache server restarted without "
                "its data, was flushed, or evicted it); its user no longer sees it and its file will not be kept.",
                download_key,
            )


def _beat(record: Record) -> bool:
    if record["state"] in records.FINISHED:
        return False
    record["beat"] = time.time()
    return True


heartbeats = Heartbeats()

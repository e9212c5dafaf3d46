"""Waiting for what other processes do to a download."""

import time

from async_downloads import cache


def wait_for_state(key, states, timeout=60):
    """The download's record once its state is one of ``states``."""
    deadline = time.monotonic() + timeout
    while (record := cache.get_download(key)) is None or record["state"] not in states:
        assert time.monotonic() < deadline, f"gave up waiting; last record: {record}"
        time.sleep(0.02)
    return record

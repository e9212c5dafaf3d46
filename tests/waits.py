"""Waiting for what other processes do."""

import time

from async_downloads import cache


def wait_until(condition, timeout=60, what="the condition"):
    """``condition()``'s first true value, asked every 20 ms for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)
    return value


def wait_for_state(key, states, timeout=60):
    """The download's record once its state is one of ``states``."""
    last = {}

    def reached():
        last["record"] = record = cache.get_download(key)
        return record if record is not None and record["state"] in states else None

    try:
        return wait_until(reached, timeout)
    except AssertionError:
        raise AssertionError(f"gave up waiting for {sorted(states)}; last record: {last['record']}") from None

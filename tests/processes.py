"""Start and stop the real processes (workers, servers) that tests use."""

import os
import signal
import subprocess


def child_env(**extra):
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        ASYNC_DOWNLOADS_TEST_CHILD="1",
        PYTHONPATH=os.getcwd(),
        **extra,
    )
    return env


def stop(process, timeout=10):
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()

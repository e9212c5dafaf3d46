"""Start and stop the real processes (workers, servers) that tests use."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from devtools import processes, redis_server
from devtools.processes import free_port, stop, wait_for_port

__all__ = ["PrivateRedis", "Publisher", "child_env", "free_port", "start_uvicorn", "start_worker", "stop",
           "wait_for_port"]


def child_env(**extra):
    env = dict(os.environ)
    env.update(DJANGO_SETTINGS_MODULE="tests.settings", ASYNC_DOWNLOADS_TEST_CHILD="1", PYTHONPATH=os.getcwd())
    env.update(extra)
    return env


def start_worker(env, *options, stderr=None):
    """A Celery worker process (solo pool) of tests.celery_app; ``options`` such as ``-Q queue``."""
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker", "--pool", "solo", *options,
         "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        env=env, stderr=stderr,
    )


def start_uvicorn(port=None, app="tests.asgi:application", graceful_timeout=2, **env):
    """A uvicorn server process on the test settings (ASGI, so the event stream really streams)."""
    return processes.start_uvicorn(app, child_env(**env), port=port, graceful_timeout=graceful_timeout)


class Publisher:
    """A process of its own (tests/publisher.py) that changes downloads when told to."""

    def __init__(self, env):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.publisher"], env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True,
        )

    def __call__(self, **command):
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self):
        self.process.stdin.close()
        stop(self.process)


class PrivateRedis:
    """A redis-server that keeps its data across a restart on the same port (unless not ``persistent``)."""

    def __init__(self, persistent=True):
        self.persistent = persistent
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="async-downloads-outage-")
        self.start()

    def start(self):
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
             "--save", "", "--appendonly", "yes" if self.persistent else "no", "--appendfsync", "always"],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not redis_server.answers(self.url):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self):
        stop(self.process)

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

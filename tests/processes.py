"""Start and stop the real processes (workers, servers) that tests use."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from async_downloads.testing import redis_server


def child_env(**extra):
    env = dict(os.environ)
    env.update(DJANGO_SETTINGS_MODULE="tests.settings", ASYNC_DOWNLOADS_TEST_CHILD="1", PYTHONPATH=os.getcwd())
    env.update(extra)
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


def free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port, process=None, timeout=30):
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"The server on port {port} exited with {process.returncode}.")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"Nothing listens on port {port} after {timeout} s.")


def start_worker(env, *options):
    """A Celery worker process (solo pool) of tests.celery_app; ``options`` such as ``-Q queue``."""
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker", "--pool", "solo", *options,
         "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        env=env,
    )


def start_uvicorn(port=None, app="tests.asgi:application", graceful_timeout=None, **env):
    """A uvicorn server process (ASGI, so the event stream really streams).

    With ``graceful_timeout``, a stopped server waits that many seconds for open
    responses (event streams never end by themselves), then closes them.
    """
    port = port or free_port()
    options = ["--timeout-graceful-shutdown", str(graceful_timeout)] if graceful_timeout is not None else []
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning", "--no-access-log", *options],
        env=child_env(**env),
    )
    wait_for_port(port, process)
    return process, f"http://127.0.0.1:{port}"


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
        self.process.stdout.close()


class PrivateRedis:
    """A redis-server that keeps its data across a restart on the same port."""

    def __init__(self):
        self.port = redis_server.free_port()
        self.dir = tempfile.mkdtemp(prefix="async-downloads-outage-")
        self.start()

    def start(self):
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
             "--save", "", "--appendonly", "yes", "--appendfsync", "always"],
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

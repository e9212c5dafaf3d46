"""A Redis server for tests and the demo: the one at ``REDIS_URL`` if it answers, else a private one.

``python -m devtools.redis_server COMMAND...`` runs COMMAND with
``REDIS_URL`` set to a Redis that answers, starting ``redis-server`` on a free
port for the duration when none does.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import redis

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def answers(url: str, timeout: float = 0.5) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout).ping())
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        return False


def connection_kwargs(url: str) -> dict[str, Any]:
    """``redis.Redis(**kwargs)`` arguments for ``url``, as django-eventstream's settings want them."""
    kwargs: dict[str, Any] = redis.connection.parse_url(url)  # type: ignore[no-untyped-call]  # untyped in redis
    return {key: kwargs[key] for key in ("host", "port", "db", "password", "username") if kwargs.get(key) is not None}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_private_server(port: int | None = None, wait: float = 10.0) -> tuple[str, subprocess.Popen[bytes]]:
    """Start ``redis-server`` on a free port; return ``(url, process)``."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "No Redis answers and redis-server is not installed. "
            "Install it (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis) "
            "or set REDIS_URL to a Redis you can use."
        )
    port = port or free_port()
    workdir = tempfile.mkdtemp(prefix="async-downloads-redis-")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # Its own session: a Ctrl-C in the terminal stops the programs using Redis
        # first; Redis itself is stopped at exit.
        start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + wait
    while not answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"redis-server did not start on port {port}.")
        time.sleep(0.05)
    return url, process


def ensure(env_var: str = "REDIS_URL") -> str:
    """URL of a Redis that answers; a private server is started (and stopped at exit) if needed.

    The URL is put into ``os.environ[env_var]`` so that child processes use the same server.
    """
    url = os.environ.get(env_var) or DEFAULT_URL
    if answers(url):
        os.environ[env_var] = url
        return url
    url, process = start_private_server()
    atexit.register(stop_process, process)
    os.environ[env_var] = url
    return url


def stop_process(process: subprocess.Popen[bytes], wait: float = 5) -> None:
    """Terminate a server started here, and kill it if it has not stopped within ``wait`` seconds."""
    process.terminate()
    try:
        process.wait(wait)
    except subprocess.TimeoutExpired:
        process.kill()


def main(argv: list[str]) -> int:
    """``python -m devtools.redis_server COMMAND...``: run COMMAND with REDIS_URL set."""
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    url = ensure()
    print(f"Redis: {url}", file=sys.stderr, flush=True)
    child = subprocess.Popen(argv)
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:
            # Ctrl-C reached the child too (same process group): wait for it to stop.
            continue


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

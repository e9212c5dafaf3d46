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


def free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port, process=None, timeout=30):
    import socket
    import time

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


def start_uvicorn(port=None, app="tests.asgi:application", **env):
    """A uvicorn server process (ASGI, so the event stream really streams)."""
    import sys

    port = port or free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning", "--no-access-log"],
        env=child_env(**env),
    )
    wait_for_port(port, process)
    return process, f"http://127.0.0.1:{port}"

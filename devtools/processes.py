"""Start and stop the real processes (web servers, workers) of the tests, benchmarks and demo."""

import signal
import socket
import subprocess
import sys
import time

from .redis_server import free_port

__all__ = ["free_port", "start_uvicorn", "stop", "wait_for_port"]


def stop(process, timeout=10):
    """SIGTERM a process started here, SIGKILL it after ``timeout`` seconds; close its pipes."""
    if process is None:
        return
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()


def wait_for_port(port, process=None, timeout=30):
    """Return once something accepts connections on ``port``; raise if ``process`` exits first."""
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


def uvicorn_command(app, port, factory=False, graceful_timeout=2):
    """uvicorn's command line; a stopped server gives open responses (event streams never
    end by themselves) ``graceful_timeout`` seconds, then closes them."""
    command = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning", "--no-access-log", "--timeout-graceful-shutdown", str(graceful_timeout)]
    return command + ["--factory"] if factory else command


def start_uvicorn(app, env, port=None, factory=False, wait=True, graceful_timeout=2, **popen):
    """A uvicorn process serving ``app`` with ``env``; returns ``(process, url)``."""
    port = port or free_port()
    process = subprocess.Popen(uvicorn_command(app, port, factory, graceful_timeout), env=env, **popen)
    if wait:
        try:
            wait_for_port(port, process)
        except BaseException:
            stop(process)
            raise
    return process, f"http://127.0.0.1:{port}"

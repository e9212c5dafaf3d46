"""Start and stop the real processes (web servers, workers) of the tests, benchmarks and demo."""

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time

from .redis_server import free_port

__all__ = ["JsonLines", "cpu_seconds", "free_port", "reply", "start_celery_worker", "start_gunicorn", "start_uvicorn",
           "stop", "wait_for_port"]


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
    return _serving(uvicorn_command(app, port, factory, graceful_timeout), port, env, wait, popen)


def _serving(command, port, env, wait, popen):
    """Start the server of ``command`` on ``port``; with ``wait``, return once it accepts connections."""
    process = subprocess.Popen(command, env=env, **popen)
    if wait:
        try:
            wait_for_port(port, process)
        except BaseException:
            stop(process)
            raise
    return process, f"http://127.0.0.1:{port}"


@functools.cache
def gunicorn_has_option(option):
    """Whether the installed gunicorn knows the command line ``option``."""
    usage = subprocess.run([sys.executable, "-m", "gunicorn", "--help"], capture_output=True, text=True).stdout
    return option in usage.split()


def gunicorn_command(wsgi_app, port, workers=2, timeout=30, graceful_timeout=2):
    """gunicorn's command line: ``workers`` sync workers (one silent for ``timeout`` seconds, stuck on a
    request, is killed and replaced); a stopped server gives open requests ``graceful_timeout`` seconds.
    No control socket (gunicorn 23+ opens one under ~/.gunicorn, shared by every gunicorn of the user)."""
    command = [sys.executable, "-m", "gunicorn", wsgi_app, "--bind", f"127.0.0.1:{port}",
               "--worker-class", "sync", "--workers", str(workers), "--timeout", str(timeout),
               "--graceful-timeout", str(graceful_timeout), "--log-level", "warning"]
    return command + ["--no-control-socket"] if gunicorn_has_option("--no-control-socket") else command


def start_gunicorn(wsgi_app, env, port=None, workers=2, timeout=30, wait=True, graceful_timeout=2, **popen):
    """A gunicorn process serving ``wsgi_app`` (``module:name``) with ``env``; returns ``(process, url)``."""
    port = port or free_port()
    return _serving(gunicorn_command(wsgi_app, port, workers, timeout, graceful_timeout), port, env, wait, popen)


def start_celery_worker(app, env, *options, **popen):
    """A Celery worker process (solo pool) of ``app``; ``options`` such as ``-Q queue`` or ``-n name``."""
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", app, "worker", "--pool", "solo", "--loglevel", "WARNING",
         "--without-gossip", "--without-mingle", "--without-heartbeat", *options],
        env=env, **popen,
    )


def cpu_seconds(pid):
    """CPU time (user + system, all threads) of a running process, in seconds; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


REPLY = "@json "


def reply(message):
    """In a process started by ``JsonLines``: answer with one JSON line."""
    sys.stdout.write(REPLY + json.dumps(message) + "\n")
    sys.stdout.flush()


class JsonLines:
    """A child process spoken to in JSON lines: commands on its stdin, answers (``reply``) on its stdout.

    Other output on its stdout (a library that prints) is passed over.
    """

    def __init__(self, args, env, **popen):
        self.process = subprocess.Popen(args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        **popen)
        self.pid = self.process.pid

    def send(self, message):
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def read(self):
        for line in self.process.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY):])
        raise RuntimeError(f"{self.process.args!r} ended with {self.process.wait()} before it answered.")

    def call(self, message):
        self.send(message)
        return self.read()

    def close(self, timeout=10):
        """Close its stdin (the sign to finish), give it ``timeout`` seconds, then stop it."""
        if self.process.poll() is None:
            try:
                self.process.stdin.close()
                self.process.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                pass
        stop(self.process)

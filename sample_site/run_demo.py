"""``just demo``: the sample site's processes, started, watched and stopped by one small supervisor.

    python sample_site/run_demo.py [--port 8000] [--log PATH] [--pushpin]

It migrates and seeds the database (with a progress bar), uses the Redis at ``REDIS_URL`` (or starts
a private ``redis-server`` for the session), then runs uvicorn and a Celery worker with beat, each in
a session of its own: a Ctrl-C in the terminal reaches this process only. Their output goes to a log
file (``sample_site/var/demo.log``); the terminal shows this process's lines only, and once the site
answers and the worker is ready, the address, the users and the Redis in use, last.

Ctrl-C (SIGINT), SIGTERM or SIGHUP stop the demo cleanly, with status 0: the worker's main process
gets SIGTERM (Celery's warm shutdown lets running tasks finish); exports still running after a short
grace are cancelled through the app's API, so that they stop at their next progress report as
cancelled, never failed; then whatever is left of each process group is killed and uvicorn stopped.
A second Ctrl-C skips the grace.

A worker that dies is restarted (with a line saying so; the exports it was running are marked as
failed, so that they can be retried). The web server dying stops the demo, with status 1.

With ``--pushpin`` (``just demo-pushpin``), the site runs in the app's GRIP mode: gunicorn's sync
workers serve ``sample_site.wsgi`` on a private free port, and a real Pushpin (``devtools.pushpin``,
with a random key) in front of it holds the event streams; the address given is Pushpin's, on
``--port``. Every process gets ``DEMO_PUSHPIN_CONTROL_URI`` and ``DEMO_PUSHPIN_KEY``, which the
settings turn into ``GRIP_PROXIES``. Pushpin or gunicorn dying stops the demo, with status 1.
"""

import argparse
import collections
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = str(Path(__file__).resolve().parent)
# The project is the package ``sample_site`` (from the repository root); run as a script, this
# file's folder would come first, and ``sample_site/celery.py`` would shadow the celery package.
sys.path[:] = [str(ROOT)] + [path for path in sys.path if path not in (HERE, str(ROOT))]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sample_site.settings")

import django  # noqa: E402
from django.conf import settings  # noqa: E402 (read once REDIS_URL is settled, in prepare())
from django.core.management import call_command  # noqa: E402

from devtools.processes import gunicorn_command  # noqa: E402
from devtools.pushpin import Pushpin  # noqa: E402
from devtools.redis_server import DEFAULT_URL, answers, free_port  # noqa: E402
from sample_site.shop.demo import DEMO_USERS, masked  # noqa: E402

# Seconds. After SIGTERM, the worker's running exports get GRACE to finish before they are
# cancelled; a cancelled task stops at its next progress report, within CANCEL_WAIT.
GRACE = 3.0
CANCEL_WAIT = 8.0
WEB_STOP = 5.0  # uvicorn closes open event streams after 2 s (--timeout-graceful-shutdown), gunicorn requests too
GUNICORN_WORKERS = 3  # sync workers: none is held by a stream, Pushpin holds them
READY_TIMEOUT = 180.0  # for the site to answer and the worker to be ready, on a slow first start
RESTARTS, RESTART_WINDOW = 3, 60.0  # a worker that dies this often within the window stops the demo
WORKER_READY = re.compile(r"\bcelery@\S+ ready\.")
LOST_EXPORT = "The Celery worker stopped while this export ran. Please try again."

# Run as ``python -S -c EXEC_WITH_PDEATHSIG PPID PROGRAM ARGS…`` (Linux): PROGRAM gets SIGTERM if
# this process dies, even by SIGKILL, so that no child outlives the demo.
EXEC_WITH_PDEATHSIG = """
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)  # the parent has already gone
os.execv(sys.argv[2], sys.argv[2:])
"""


def dying_with_this_process(command):
    """``command``, so that it gets SIGTERM when this process dies (Linux; elsewhere as it is)."""
    if sys.platform.startswith("linux"):
        return [sys.executable, "-S", "-c", EXEC_WITH_PDEATHSIG, str(os.getpid()), *command]
    return command


def start_private_redis(wait=10.0):
    """``(url, process)`` of a ``redis-server`` on a free port, in a session of its own, that
    stops with the demo (like ``devtools.redis_server.start_private_server``, and even if the
    demo is killed)."""
    binary = shutil.which("redis-server")
    if binary is None:
        say("No Redis answers and redis-server is not installed. Install it (Debian/Ubuntu: apt-get install "
            "redis-server; macOS: brew install redis) or set REDIS_URL to a Redis you can use.")
        raise Stop(1)
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="async-downloads-redis-")  # nothing is saved there
    process = subprocess.Popen(
        dying_with_this_process([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", workdir]),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    process.workdir = workdir
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + wait
    while not answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            say(f"redis-server did not start on port {port}.")
            raise Stop(1)
        time.sleep(0.05)
    return url, process


def say(*lines):
    """Print lines of the supervisor's own to the terminal (a closed terminal is no error)."""
    try:
        print(*lines, sep="\n", flush=True)
    except OSError:
        pass


def shown_path(path):
    """``path`` relative to the current directory when it is under it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def exports(count, adjective=""):
    """``1 running export``, ``2 running exports``."""
    return f"{count} {adjective + ' ' if adjective else ''}export{'' if count == 1 else 's'}"


def port_in_use(port):
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def how_it_ended(status):
    """``exit status 1``, ``killed by SIGKILL``: of a process's return code."""
    if status is not None and status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


def kill_session(sid):
    """SIGKILL whatever is left of the session ``sid`` led (Linux): Pushpin's programs, each in a group of
    its own, outlive a runner that was killed."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for entry in filter(str.isdigit, entries):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat[stat.rindex(")") + 2:].split()[3]) == sid:  # state, ppid, pgrp, session
                os.kill(int(entry), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            continue


class Stop(Exception):
    """The demo stops: ``status`` is its exit status."""

    def __init__(self, status):
        super().__init__(status)
        self.status = status


class Child:
    """A process of the demo in a session of its own, its output copied into the log, line by line."""

    def __init__(self, name, label, command, env, log):
        self.name, self.label, self.command, self.env, self.log = name, label, command, env, log
        self.tail = collections.deque(maxlen=15)
        self.ready = threading.Event()
        self.process = None
        self.group_killed = False

    def start(self):
        command = dying_with_this_process(self.command)
        self.tail.clear()
        self.ready.clear()
        self.group_killed = False
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        threading.Thread(target=self._copy_output, args=(self.process.stdout,), daemon=True).start()

    def _copy_output(self, pipe):
        # Ends when every process holding the pipe has gone (the group is killed at the latest).
        for raw in iter(pipe.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            self.tail.append(line)
            self.log.write(self.name, line)
            if self.name == "worker" and WORKER_READY.search(line):
                self.ready.set()
        pipe.close()

    @property
    def pid(self):
        return self.process.pid

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def how_it_ended(self):
        return how_it_ended(self.process.returncode)

    def terminate(self):
        """SIGTERM to the main process only (its children are its to stop)."""
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def kill_group(self):
        """SIGKILL to whatever is left of the process group it leads, orphans included (once)."""
        if self.process is None or self.group_killed:
            return
        self.group_killed = True
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()


class Log:
    """The children's output and the supervisor's lines, timestamped and named, in one file."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "w", encoding="utf-8", errors="replace")  # noqa: SIM115 (closed by close())
        self.lock = threading.Lock()

    def write(self, name, line):
        with self.lock:
            if not self.file.closed:
                self.file.write(f"{time.strftime('%H:%M:%S')} {name:<6} | {line}\n")
                self.file.flush()

    def close(self):
        with self.lock:
            self.file.close()


class LogHandler(logging.Handler):
    """The supervisor's own logging (the app's, when it cancels an export, say) into the log, not the terminal."""

    def __init__(self, log):
        super().__init__()
        self.log = log
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record):
        try:
            for line in self.format(record).splitlines():
                self.log.write("demo", line)
        except Exception:
            self.handleError(record)


def capitalized(text):
    return text[:1].upper() + text[1:]


class Demo:
    def __init__(self, port, log_path, pushpin=False):
        self.port = port
        self.url = f"http://127.0.0.1:{port}/"
        self.log_path = log_path
        self.pushpin = pushpin
        self.server = "gunicorn" if pushpin else "uvicorn"
        self.log = None
        self.web = self.worker = None
        self.proxy = None  # the Pushpin of --pushpin
        self.proxy_pid = None  # its runner's, the leader of its session
        self.redis_process = None
        self.signals = []
        self.restarts = []

    # --- signals --------------------------------------------------------------------------

    def on_signal(self, signum, frame):
        self.signals.append(signum)

    def stopping(self):
        return bool(self.signals)

    # --- the steps ------------------------------------------------------------------------

    def run(self):
        # Until the processes start, Ctrl-C and SIGTERM interrupt whatever runs (a seed is rolled back).
        # (SIGINT even where it was ignored, as for a command started with & by a script; SIGHUP not
        # under nohup.)
        handled = [signal.SIGINT, signal.SIGTERM]
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
            handled.append(signal.SIGHUP)
        for signum in handled:
            signal.signal(signum, signal.default_int_handler)
        try:
            self.prepare()
        except KeyboardInterrupt:
            say("", "Stopped before the demo started.")
            self.close_proxy()
            self.stop_redis()
            return 0
        except Stop as stop:
            self.close_proxy()
            self.stop_redis()
            return stop.status
        for signum in handled:
            signal.signal(signum, self.on_signal)
        status = 0
        try:
            self.start()
            self.supervise()
        except Stop as stop:
            status = stop.status
        finally:
            self.shutdown()
        return status

    def prepare(self):
        if port_in_use(self.port):
            recipe = "demo-pushpin" if self.pushpin else "demo"
            say(f"Port {self.port} is in use. Stop what runs there, or choose another: "
                f"PORT={self.port + 1} just {recipe}")
            raise Stop(1)
        if self.pushpin:
            self.prepare_proxy()
        self.redis_url = os.environ.get("REDIS_URL") or DEFAULT_URL
        self.private_redis = not answers(self.redis_url)
        if self.private_redis:
            say(f"No Redis answers at {masked(self.redis_url)}: starting a private redis-server for the demo.")
            self.redis_url, self.redis_process = start_private_redis()
        os.environ["REDIS_URL"] = self.redis_url

        django.setup()
        call_command("migrate", verbosity=0)
        call_command("seed_demo")
        self.site_redis = masked(settings.REDIS_URL)  # the db number the site really uses
        self.log_path = Path(self.log_path or Path(settings.VAR_DIR) / "demo.log")
        Path(settings.VAR_DIR).mkdir(parents=True, exist_ok=True)  # beat keeps its schedule there

        from django.contrib.auth import get_user_model
        from django.db import connections

        self.users = list(get_user_model().objects.filter(username__in=[name for name, _, _ in DEMO_USERS]))
        connections.close_all()

    def prepare_proxy(self):
        """The Pushpin on the public port, in front of gunicorn's private one (started in ``start()``);
        its control URI and key go to every process's settings (and this one's, which cancels exports)."""
        if shutil.which("pushpin") is None:
            say("Pushpin is not installed: install the pushpin package (Debian/Ubuntu: apt-get install pushpin; "
                "it brings condure and zurl), or run `just demo-pushpin` as root, which installs it.")
            raise Stop(1)
        key = secrets.token_hex(32)
        while True:
            self.web_port = free_port()
            try:
                self.proxy = Pushpin([f"127.0.0.1:{self.web_port}"], key, port=self.port)
            except (RuntimeError, ValueError) as error:
                say(f"Pushpin cannot run: {error}")
                raise Stop(1) from None
            if self.web_port not in (self.proxy.control_port, self.proxy.push_in_port, self.proxy.push_in_sub_port,
                                     self.proxy.command_port):
                break
            self.close_proxy()
        os.environ["DEMO_PUSHPIN_CONTROL_URI"] = self.proxy.control_uri
        os.environ["DEMO_PUSHPIN_KEY"] = key

    def web_command(self):
        python = sys.executable
        if self.pushpin:
            return [*gunicorn_command("sample_site.wsgi:application", self.web_port, workers=GUNICORN_WORKERS),
                    "--log-level", "info", "--access-logfile", "-"]  # (the last --log-level counts)
        return [python, "-m", "uvicorn", "sample_site.asgi:application", "--app-dir", str(ROOT),
                "--host", "127.0.0.1", "--port", str(self.port), "--timeout-graceful-shutdown", "2"]

    def start(self):
        self.log = Log(self.log_path)
        handler = LogHandler(self.log)
        logging.captureWarnings(True)  # warnings too: the terminal shows the supervisor's lines only
        for logger in (logging.getLogger(), *map(logging.getLogger, logging.root.manager.loggerDict)):
            if logger is logging.getLogger() or logger.handlers:
                logger.handlers = [handler]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
        }
        python = sys.executable
        self.web = Child("web", f"the web server ({self.server})", self.web_command(), env, self.log)
        self.worker = Child("worker", "the Celery worker", [
            python, "-m", "celery", "-A", "sample_site", "--quiet", "worker", "--loglevel", "INFO",
            "--concurrency", "3", "--without-gossip", "--without-mingle", "--beat",
        ], env, self.log)
        log = shown_path(self.log_path)
        if self.pushpin:
            self.note(f"Starting gunicorn, Pushpin in front of it and a Celery worker (with beat); the output of "
                      f"gunicorn and the worker goes to {log}, Pushpin's to {self.proxy.log_path}.")
        else:
            self.note(f"Starting uvicorn and a Celery worker (with beat); their output goes to {log}.")
        self.web.start()
        self.worker.start()
        if self.pushpin:
            self.start_proxy()
        self.wait_until_ready()
        if self.stopping():
            return
        users = " or ".join(f"{name} / {password}" for name, password, _ in DEMO_USERS)
        redis = self.site_redis + (" (a private redis-server, stopped with the demo)" if self.private_redis else "")
        behind = [
            "  Streams go through Pushpin (GRIP mode), which holds them; gunicorn (sync workers) is on a private "
            f"port, 127.0.0.1:{self.web_port}, for Pushpin only.",
        ] if self.pushpin else []
        pushpin_log = [f"  Pushpin's log: {self.proxy.log_path}"] if self.pushpin else []
        self.note(
            "",
            f"The demo is ready: {self.url}",
            *behind,
            f"  Sign in as {users} (user / password).",
            f"  Redis: {redis}",
            f"  Output of {self.server} and the Celery worker: {log}",
            *pushpin_log,
            "Press Ctrl-C to stop.",
        )

    def start_proxy(self):
        try:
            self.proxy.start()
            self.proxy_pid = self.proxy.process.pid
        except RuntimeError as error:
            self.note("Pushpin did not start; stopping the demo.", *(f"  {line}" for line in str(error).splitlines()))
            raise Stop(1) from None

    def proxy_alive(self):
        return self.proxy.process is not None and self.proxy.process.poll() is None

    def close_proxy(self):
        if self.proxy is not None:
            self.proxy.close()
            self.proxy = None
        if self.proxy_pid is not None:
            kill_session(self.proxy_pid)
            self.proxy_pid = None

    def note(self, *lines):
        """A line of the supervisor's own: on the terminal, and in the log."""
        say(*lines)
        if self.log is not None:
            for line in lines:
                self.log.write("demo", line)

    def wait_until_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT
        answered = False
        while not (answered and self.worker.ready.is_set()):
            if self.stopping():
                return
            self.check_children()
            if not answered:
                answered = self.site_answers()
            if time.monotonic() > deadline:
                waiting_for = self.worker if answered else self.web
                self.note(f"{waiting_for.label.capitalize()} did not get ready in {READY_TIMEOUT:.0f} s; "
                          "stopping the demo.", *self.last_lines(waiting_for))
                raise Stop(1)
            time.sleep(0.2)

    def site_answers(self):
        try:
            with urllib.request.urlopen(f"{self.url}login/", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def supervise(self):
        while not self.stopping():
            self.check_children()
            time.sleep(0.2)

    def check_children(self):
        if not self.web.alive():
            self.note(f"{capitalized(self.web.label)} stopped ({self.web.how_it_ended()}); stopping the demo.",
                      *self.last_lines(self.web))
            raise Stop(1)
        if self.proxy is not None and self.proxy.process is not None and not self.proxy_alive():
            how = how_it_ended(self.proxy.process.returncode)
            self.note(f"Pushpin stopped ({how}); stopping the demo.", "  Its last lines:",
                      *(f"    {line}" for line in self.proxy.log_tail(15).splitlines()))
            raise Stop(1)
        if not self.worker.alive():
            self.restart_worker()

    def restart_worker(self):
        how = self.worker.how_it_ended()
        self.worker.kill_group()  # its pool processes and beat, if they outlived it
        now = time.monotonic()
        self.restarts = [when for when in self.restarts if now - when < RESTART_WINDOW] + [now]
        if len(self.restarts) > RESTARTS:
            self.note(f"The Celery worker stopped ({how}), {len(self.restarts)} times within "
                      f"{RESTART_WINDOW:.0f} s; stopping the demo.", *self.last_lines(self.worker))
            raise Stop(1)
        lost = self.fail_lost_exports()
        lost_note = f" ({exports(lost)} it was running marked as failed, to be retried)" if lost else ""
        self.note(f"The Celery worker stopped ({how}); restarting it{lost_note}.")
        self.worker.start()

    def last_lines(self, child):
        """What to show of ``child``'s output: its last lines, unless a signal ended it (nothing to see)."""
        code = child.process.poll()
        log = shown_path(self.log_path)
        if (code is not None and code < 0) or not child.tail:
            return [f"  Its output: {log}"]
        return ["  Its last lines:", *(f"    {line}" for line in child.tail), f"  (all of it: {log})"]

    # --- the downloads of the demo's users --------------------------------------------------

    def unfinished(self):
        from async_downloads.cache import FINISHED, get_downloads

        try:
            return [record for user in self.users for record in get_downloads(user)
                    if record["state"] not in FINISHED]
        except Exception as error:  # Redis gone: nothing can be changed there anyway
            self.note(f"Could not read the downloads ({error}).")
            return []

    def cancel_unfinished(self):
        """Cancel every pending or running download of the demo's users; return their names."""
        from async_downloads.cache import cancel_download

        names = []
        for record in self.unfinished():
            try:
                if cancel_download(record["key"]):
                    names.append(record.get("name") or record["key"])
            except Exception as error:
                self.note(f"Could not cancel {record.get('name')!r} ({error}).")
        return names

    def fail_lost_exports(self):
        """The running downloads of a worker that died will never finish: fail them, so they can be retried."""
        from async_downloads.cache import RUNNING, set_error

        lost = [record for record in self.unfinished() if record["state"] == RUNNING]
        for record in lost:
            set_error(record["key"], LOST_EXPORT)
        return len(lost)

    # --- stopping ---------------------------------------------------------------------------

    def wait_for(self, child, seconds):
        """Wait until ``child`` has exited, for up to ``seconds``; another Ctrl-C ends the wait."""
        deadline = time.monotonic() + seconds
        signals = len(self.signals)
        while child.alive() and time.monotonic() < deadline and len(self.signals) == signals:
            time.sleep(0.1)

    def shutdown(self):
        try:
            if self.worker is not None and self.worker.process is not None:
                self.stop_worker()
            if self.web is not None and self.web.process is not None:
                self.web.terminate()
                self.wait_for(self.web, WEB_STOP)
                self.web.kill_group()
            # Downloads started while the demo stopped, whose tasks never ran.
            leftovers = self.cancel_unfinished() if self.worker is not None else []
            if leftovers:
                self.note(f"Cancelled {exports(len(leftovers), 'pending')}: {', '.join(leftovers)}.")
        finally:
            if self.worker is not None:
                self.worker.kill_group()
            if self.web is not None:
                self.web.kill_group()
            self.close_proxy()
            self.stop_redis()
            self.note("Stopped.")
            if self.log is not None:
                self.log.close()

    def stop_worker(self):
        from async_downloads.cache import RUNNING

        running = [record for record in self.unfinished() if record["state"] == RUNNING]
        if running:
            self.note(f"Stopping: waiting up to {GRACE:.0f} s for {exports(len(running), 'running')} to finish "
                      "(Ctrl-C again to cancel now)…")
        else:
            self.note("Stopping…")
        self.worker.terminate()  # Celery's warm shutdown: running tasks may finish
        self.wait_for(self.worker, GRACE)
        if self.worker.alive():
            cancelled = self.cancel_unfinished()
            if cancelled:
                self.note(f"Cancelled {exports(len(cancelled))} still running: {', '.join(cancelled)}.")
            self.wait_for(self.worker, CANCEL_WAIT)
            if self.worker.alive():
                self.note(f"The Celery worker had not stopped after {GRACE + CANCEL_WAIT:.0f} s; killing it.")
        self.worker.kill_group()

    def stop_redis(self):
        if self.redis_process is not None and self.redis_process.poll() is None:
            self.redis_process.terminate()
            try:
                self.redis_process.wait(5)
            except subprocess.TimeoutExpired:
                self.redis_process.kill()
                self.redis_process.wait()
        if self.redis_process is not None:
            shutil.rmtree(self.redis_process.workdir, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8000))
    parser.add_argument("--log", help="where the output of the web server and the worker goes "
                                      "(default: demo.log in SAMPLE_SITE_VAR_DIR, sample_site/var)")
    parser.add_argument("--pushpin", action="store_true",
                        help="gunicorn (WSGI, sync workers) on a private port behind a real Pushpin on --port, "
                             "in the app's GRIP mode, instead of uvicorn")
    args = parser.parse_args(argv)
    return Demo(args.port, args.log, pushpin=args.pushpin).run()


if __name__ == "__main__":
    sys.exit(main())

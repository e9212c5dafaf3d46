"""A real Pushpin (GRIP proxy) for tests, benchmarks and the demo, without systemd.

``with pushpin.running(backends=["127.0.0.1:8001"], sig_key=key) as proxy:`` starts
``pushpin --merge-output`` in the foreground with a config of its own in a temporary
folder: the client port, the handler's ports (ZeroMQ and the HTTP control port) and its
runtime files (ipc sockets, pid files, the log) are its own, so that several can run side
by side, and every listener is bound to 127.0.0.1. Pushpin runs its own ``zurl`` (its
HTTP client, which makes the requests to the backends) with sockets in that folder too:
Debian's ``internal.conf`` would look for a system zurl under ``/var/run/zurl``.

``proxy.url`` is the client side; ``proxy.control_uri`` is for GRIP publishing
(django-grip's ``GRIP_PROXIES = [{"control_uri": proxy.control_uri, "key": key}]``).
Pushpin signs each request it passes to a backend with a ``Grip-Sig`` JWT (HS256,
``iss`` = ``sig_iss``, one hour) made with ``sig_key``. Its control port checks no
credentials: it is reachable from this machine only.

Several backends are targets of one route, tried in their order: Pushpin 1.36 sends
every request to the first one that accepts connections, and to the next ones only
while it does not (failover, not balancing).

``start()`` returns once a request through each of its paths works (two routes of its
own, chosen by host name, see ``Pushpin.ready``); its log is ``proxy.log_path``, and the
error of a failed start ends with the log's last lines.
"""

from __future__ import annotations

import atexit
import base64
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from .redis_server import free_port

__all__ = ["Pushpin", "running"]

#: The runner and the programs it needs here; Debian's pushpin package depends on condure and zurl.
PROGRAMS = ("pushpin", "condure", "zurl")
#: What the runner starts (its ``services``).
SERVICES = ("condure", "zurl", "pushpin-proxy", "pushpin-handler")
IPC_PREFIX = "pushpin-"
#: The longest path of a unix socket (sun_path, less its final NUL).
MAX_SOCKET_PATH = 107
LONGEST_SOCKET = "condure-out-stream"
#: Host names of the routes that tell when it is ready (see ``Pushpin.ready``).
PROBE_TEST = "test.devtools-pushpin.invalid"
PROBE_REFUSED = "refused.devtools-pushpin.invalid"


def _missing_programs() -> list[str]:
    return [name for name in PROGRAMS if shutil.which(name) is None]


def _config_key(key: str | bytes) -> str:
    """``sig_key`` as Pushpin reads it: base64, so that no character means something to QSettings."""
    raw = key.encode() if isinstance(key, str) else key
    return "base64:" + base64.b64encode(raw).decode()


class Pushpin:
    """One Pushpin: its config, ports and temporary folder are made here, ``start()`` runs it.

    ``backends`` are ``"127.0.0.1:PORT"`` targets of the one route (``*``) of its routes
    file; ``sig_key`` (str or bytes, the caller's secret) and ``sig_iss`` sign the requests
    to them. Ports are chosen once: ``restart()`` brings it back on the same ones. ``port``
    is the client port (default: a free one); the others are always free ones.
    """

    def __init__(self, backends: Sequence[str], sig_key: str | bytes, sig_iss: str = "pushpin",
                 log_level: int = 2, workdir: str | None = None, port: int | None = None) -> None:
        missing = _missing_programs()
        if missing:
            raise RuntimeError(
                f"Pushpin needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed. "
                "Install the pushpin package (Debian/Ubuntu: apt-get install pushpin; it brings condure and "
                "zurl), or run `just system-deps`."
            )
        if not backends:
            raise ValueError("Pushpin needs at least one backend (\"127.0.0.1:PORT\").")
        for backend in backends:
            if not re.fullmatch(r"[^\s,#]+:\d+", backend):
                raise ValueError(f"A backend is \"HOST:PORT\", not {backend!r}.")
        if not sig_key or sig_key in ("changeme", b"changeme"):
            raise ValueError("Pushpin needs a sig_key of the caller's (not its public default, changeme).")
        if not re.fullmatch(r"[\w.:/@-]+", sig_iss):
            raise ValueError(f"sig_iss {sig_iss!r} has characters Pushpin's config would misread.")
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"The client port is 1 to 65535, not {port!r}.")
        self.backends = list(backends)
        self.sig_key = sig_key
        self.sig_iss = sig_iss
        self.log_level = log_level
        self.dir = workdir or tempfile.mkdtemp(prefix="async-downloads-pushpin-")
        self._own_dir = workdir is None
        self.rundir = os.path.join(self.dir, "run")
        if len(os.path.join(self.rundir, IPC_PREFIX + LONGEST_SOCKET)) > MAX_SOCKET_PATH:
            raise RuntimeError(f"The folder {self.dir!r} is too deep for Pushpin's unix sockets: set TMPDIR to a "
                               "shorter one.")
        self.config_path = os.path.join(self.dir, "pushpin.conf")
        self.routes_path = os.path.join(self.dir, "routes")
        self.log_path = os.path.join(self.dir, "pushpin.log")
        ports: set[int] = set()
        while len(ports) < (5 if port is None else 4):
            candidate = free_port()
            if candidate != port:
                ports.add(candidate)
        chosen = sorted(ports) if port is None else [port, *sorted(ports)]
        self.port, self.control_port, self.push_in_port, self.push_in_sub_port, self.command_port = chosen
        # A port bound and not listening, so that nobody else can listen on it while this object lives.
        self._refused = socket.socket()
        self._refused.bind(("127.0.0.1", 0))
        self.process: subprocess.Popen[bytes] | None = None
        self._stopped_at_exit = False
        self._closed = False
        self._write_config()

    # -- addresses

    @property
    def url(self) -> str:
        """The client side: ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def control_uri(self) -> str:
        """The HTTP control port, for GRIP publishing (``{control_uri}/publish/``)."""
        return f"http://127.0.0.1:{self.control_port}"

    @property
    def push_in_spec(self) -> str:
        """ZeroMQ PULL socket for publish commands."""
        return f"tcp://127.0.0.1:{self.push_in_port}"

    @property
    def push_in_sub_spec(self) -> str:
        """ZeroMQ SUB socket (bound) for published messages."""
        return f"tcp://127.0.0.1:{self.push_in_sub_port}"

    @property
    def command_spec(self) -> str:
        """ZeroMQ REP socket of the handler's commands (pubcontrol's ``ZmqPubControlClient`` asks it the others)."""
        return f"tcp://127.0.0.1:{self.command_port}"

    @property
    def stats_spec(self) -> str:
        """ZeroMQ PUB socket of the handler's stats."""
        return f"ipc://{self.rundir}/{IPC_PREFIX}stats"

    # -- config

    def _write_config(self) -> None:
        with open(self.routes_path, "w") as f:
            f.write("* " + " ".join(self.backends) + "\n")
            # For ready(), by host name (which wins over *): Pushpin's test handler (it answers with GRIP
            # instructions), and a target that refuses connections.
            f.write(f"{PROBE_TEST} test\n")
            f.write(f"{PROBE_REFUSED} 127.0.0.1:{self._refused.getsockname()[1]}\n")
        zurl_socket = "ipc://{rundir}/{ipc_prefix}zurl-"
        config = f"""\
[global]
include={{libdir}}/internal.conf
rundir={self.rundir}
ipc_prefix={IPC_PREFIX}
port_offset=0
stats_connection_ttl=120

[runner]
services={",".join(SERVICES)}
http_port=127.0.0.1:{self.port}
logdir={self.dir}
log_level={self.log_level}
client_buffer_size=8192
client_maxconn=50000
condure_bin=condure
zurl_bin=zurl

[proxy]
routesfile={self.routes_path}
zurl_out_specs={zurl_socket}in
zurl_out_stream_specs={zurl_socket}in-stream
zurl_in_specs={zurl_socket}out
debug=false
auto_cross_origin=false
accept_x_forwarded_protocol=false
set_x_forwarded_protocol=proto-only
accept_pushpin_route=false
sig_iss={self.sig_iss}
sig_key={_config_key(self.sig_key)}
upstream_key=
updates_check=off

[handler]
push_in_spec={self.push_in_spec}
push_in_sub_specs={self.push_in_sub_spec}
push_in_sub_connect=false
push_in_http_addr=127.0.0.1
push_in_http_port={self.control_port}
stats_spec={self.stats_spec}
command_spec={self.command_spec}
message_rate=0
message_hwm=25000
message_wait=5000
id_cache_ttl=60
connection_subscription_max=20
subscription_linger=60
stats_subscription_ttl=60
stats_report_interval=10
stats_format=tnetstring
"""
        with open(self.config_path, "w") as f:
            f.write(config)

    # -- processes

    def start(self, timeout: float = 30.0) -> Pushpin:
        """Run it; return once it is ``ready()``."""
        if self._closed:
            raise RuntimeError("This Pushpin is closed (its folder is gone): make a new one.")
        if self.process is not None and self.process.poll() is None:
            return self
        os.makedirs(self.rundir, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                ["pushpin", f"--config={self.config_path}", "--merge-output"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir,
                # Its own session: a Ctrl-C in the terminal reaches the programs using it first.
                start_new_session=True,
            )
        if not self._stopped_at_exit:
            atexit.register(self.stop)
            self._stopped_at_exit = True
        try:
            self._wait(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise self._error(f"Pushpin exited with {self.process.returncode} while starting.")
            if self.ready():
                return
            if time.monotonic() > deadline:
                raise self._error(f"Pushpin does not answer after {timeout} s.")
            time.sleep(0.05)

    def ready(self) -> bool:
        """Every program runs and each way through it works.

        That its programs have started is not enough: they connect to each other's ZeroMQ sockets
        (retrying every 100 ms), and a reply that comes before its socket is connected is lost (a
        request right after a start could go unanswered). So: the handler's control port answers;
        a request to a target that refuses connections comes back as a 502 (client port, condure,
        proxy, zurl, and back); and a stream from Pushpin's test handler opens (proxy, handler,
        condure).
        """
        if set(self.pids()) < {"pushpin", *SERVICES}:
            return False
        try:
            if _get(self.control_port, "/").status != 200:
                return False
            if _get(self.port, "/", host=PROBE_REFUSED).status != 502:
                return False
            connection = _connection(self.port, "/stream?channel=devtools-pushpin-ready", PROBE_TEST)
            try:
                stream = connection.getresponse()
                return stream.status == 200 and stream.readline() == b"[stream opened]\n"
            finally:
                connection.close()
        except (OSError, http.client.HTTPException):
            return False

    def _error(self, message: str) -> RuntimeError:
        return RuntimeError(f"{message} Config: {self.config_path}. Last lines of {self.log_path}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def pids(self) -> dict[str, int]:
        """Its running processes by name: ``pushpin`` (the runner), condure, zurl, pushpin-proxy, pushpin-handler."""
        if self.process is None or self.process.poll() is not None:
            return {}
        found = {"pushpin": self.process.pid}
        for pid in _children(self.process.pid):
            name = _name(pid)
            if name is not None:
                found[name] = pid
        return found

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the runner (it stops the others), SIGKILL all of them after ``timeout`` seconds."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in _children(process.pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                process.kill()
                process.wait()

    def restart(self, timeout: float = 30.0) -> Pushpin:
        """Stop it and start it again, on the same ports."""
        self.stop()
        return self.start(timeout)

    def close(self) -> None:
        """Stop it and remove its folder (if it made it)."""
        self.stop()
        self._closed = True
        self._refused.close()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Pushpin:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _connection(port: int, path: str, host: str | None = None) -> http.client.HTTPConnection:
    """A connection to 127.0.0.1:``port`` (one second at most for each step) that has sent a GET of ``path``."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        connection.request("GET", path, headers={"Host": host} if host else {})
    except BaseException:
        connection.close()
        raise
    return connection


def _get(port: int, path: str, host: str | None = None) -> http.client.HTTPResponse:
    """The response (read) to a GET of ``path`` on 127.0.0.1:``port``."""
    connection = _connection(port, path, host)
    try:
        response = connection.getresponse()
        response.read()
        return response
    finally:
        connection.close()


def _children(pid: int) -> list[int]:
    """The child processes of ``pid``."""
    children = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children += [int(child) for child in f.read().split()]
        except OSError:
            continue
    return children


def _name(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0", 1)[0].decode()
    except OSError:
        return None
    return os.path.basename(argv0) or None


@contextmanager
def running(backends: Sequence[str], sig_key: str | bytes, sig_iss: str = "pushpin", log_level: int = 2,
            timeout: float = 30.0) -> Iterator[Pushpin]:
    """A started Pushpin for the ``with`` block; stopped and its folder removed after it."""
    proxy = Pushpin(backends, sig_key, sig_iss, log_level)
    try:
        yield proxy.start(timeout)
    finally:
        proxy.close()

"""devtools.pushpin: a real Pushpin in front of gunicorn serving tests/pushpin_backend.py."""

import http.client
import json
import os
import secrets
import socket
import time
import uuid

import jwt
import pytest

from devtools import pushpin
from devtools.processes import start_gunicorn
from tests.processes import child_env, stop
from tests.pushpin_backend import STREAM_START

pytestmark = pytest.mark.slow

# Characters that mean something in an INI file, so that the key is seen to reach Pushpin whole.
SIG_KEY = secrets.token_urlsafe(24) + ',;="#\\'
SIG_ISS = "async-downloads-test"
TIMEOUT = 10


@pytest.fixture(scope="module")
def backend():
    """``127.0.0.1:PORT`` of a gunicorn (one sync worker) serving tests.pushpin_backend."""
    process, url = start_gunicorn("tests.pushpin_backend:application", child_env(), workers=1)
    yield url.removeprefix("http://")
    stop(process)


@pytest.fixture(scope="module")
def proxy(backend):
    with pushpin.running(backends=[backend], sig_key=SIG_KEY, sig_iss=SIG_ISS) as proxy:
        yield proxy


def get(url, path):
    """``(status, body)`` of a GET through the client port at ``url``."""
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def publish(proxy, channel, content, key=SIG_KEY):
    """POST ``content`` (an http-stream item) to ``channel`` at the control port; returns its status.

    With a ``key``, signed as django-grip signs it; Pushpin 1.36 reads no credentials there.
    """
    body = {"items": [{"channel": channel, "formats": {"http-stream": {"content": content}}}]}
    headers = {"Content-Type": "application/json"}
    if key is not None:
        token = jwt.encode({"iss": SIG_ISS, "exp": int(time.time()) + 600}, key, algorithm="HS256")
        headers["Authorization"] = f"Bearer {token}"
    connection = http.client.HTTPConnection(proxy.control_uri.removeprefix("http://"), timeout=TIMEOUT)
    try:
        connection.request("POST", "/publish/", body=json.dumps(body), headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def listening_sockets(pids):
    """``(tcp, unix)`` listening sockets of the processes ``pids``: ``(address, port)`` pairs and paths."""
    inodes = set()
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    tcp = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                    address, port = fields[1].split(":")
                    tcp.add((_ip(address, width), int(port, 16)))
    unix = set()
    with open("/proc/net/unix") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[6] in inodes and len(fields) > 7 and fields[5] == "01":  # listening
                unix.add(fields[7])
    return tcp, unix


def _ip(hex_address, width):
    raw = bytes.fromhex(hex_address)
    if width == 4:
        return ".".join(str(b) for b in reversed(raw))
    return raw.hex()


def test_a_publish_to_the_control_port_reaches_a_stream_held_through_the_client_port(proxy):
    channel = f"test-{uuid.uuid4().hex}"
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=TIMEOUT)
    try:
        connection.request("GET", f"/stream?channel={channel}")
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type") == "text/event-stream"
        assert response.getheader("Grip-Hold") is None  # GRIP instructions stay in Pushpin
        assert response.readline() + response.readline() == STREAM_START

        assert publish(proxy, channel, "data: hello\n\n") == 200
        assert response.readline() + response.readline() == b"data: hello\n\n"
    finally:
        connection.close()


def test_the_control_port_reads_no_credentials(proxy):
    """Which is why every port listens on 127.0.0.1 only."""
    assert publish(proxy, "nobody-listens", "data: x\n\n", key=None) == 200
    assert publish(proxy, "nobody-listens", "data: x\n\n", key=secrets.token_urlsafe(32)) == 200


def test_requests_to_the_backend_carry_a_grip_sig_made_with_the_key(proxy):
    status, body = get(proxy.url, "/headers")
    assert status == 200
    token = json.loads(body)["Grip-Sig"]

    claims = jwt.decode(token, SIG_KEY, algorithms=["HS256"], issuer=SIG_ISS)
    assert 3500 < claims["exp"] - time.time() <= 3600
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, secrets.token_urlsafe(32), algorithms=["HS256"])


def test_every_port_is_its_own_and_listens_on_127_0_0_1_only(proxy):
    pids = proxy.pids()
    assert set(pids) == {"pushpin", "condure", "zurl", "pushpin-proxy", "pushpin-handler"}

    tcp, unix = listening_sockets(pids.values())

    assert tcp == {("127.0.0.1", port) for port in (proxy.port, proxy.control_port, proxy.push_in_port,
                                                     proxy.push_in_sub_port, proxy.command_port)}
    assert unix and all(path.startswith(proxy.dir + os.sep) for path in unix)


def test_restart_comes_back_on_the_same_ports(proxy):
    before = proxy.pids()
    url, control_uri = proxy.url, proxy.control_uri

    proxy.restart()

    assert proxy.url == url and proxy.control_uri == control_uri
    assert set(proxy.pids().values()).isdisjoint(before.values())
    assert get(proxy.url, "/headers")[0] == 200
    assert publish(proxy, "nobody-listens", "data: x\n\n") == 200


def test_backends_are_tried_in_their_order(proxy, backend):
    """A second Pushpin beside the first; its first target refuses connections.

    (A socket bound but not listening: the port stays taken, and nobody answers on it.)
    """
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        refused = f"127.0.0.1:{taken.getsockname()[1]}"
        with pushpin.running(backends=[refused, backend], sig_key=SIG_KEY, sig_iss=SIG_ISS) as other:
            assert other.dir != proxy.dir and other.port != proxy.port
            assert get(other.url, "/headers")[0] == 200
            with open(other.routes_path) as f:
                assert f.readline() == f"* {refused} {backend}\n"


def test_a_missing_pushpin_is_named(monkeypatch):
    monkeypatch.setattr(pushpin.shutil, "which", lambda name: None if name == "pushpin" else f"/usr/bin/{name}")
    with pytest.raises(RuntimeError, match="needs pushpin, which is not installed.*apt-get install pushpin"):
        pushpin.Pushpin(["127.0.0.1:8001"], sig_key=SIG_KEY)


def test_the_default_key_is_refused():
    with pytest.raises(ValueError, match="changeme"):
        pushpin.Pushpin(["127.0.0.1:8001"], sig_key="changeme")

"""The download view under real servers: a uvicorn process (ASGI) and pytest-django's live server (WSGI).

Large files are streamed in bounded memory and can be resumed with ranges; the
file is closed when a client hangs up midway.
"""

import hashlib
import io
import os
import socket
import threading
import time
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx
import pytest
from django.core.files.storage import storages
from django.urls import reverse

from async_downloads import cache
from tests.processes import start_uvicorn, stop
from tests.sse_client import session_cookies
from tests.waits import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

MiB = 1024 * 1024
DATA = os.urandom(3 * MiB + 12345)
SIZE = len(DATA)


def path(key):
    return reverse("async_downloads:download", args=[key])


def saved(user, data=DATA, filename="data.bin"):
    """One of ``user``'s downloads, saved from bytes into the storage the servers share; its record."""
    _, key = cache.init_download(user, filename)
    cache.save_download(key, file=io.BytesIO(data))
    return cache.get_download(key)


def storage_path(record):
    return storages["default"].path(record["filepath"])


def open_descriptors(pid, file_path):
    """The descriptors of process ``pid`` that have ``file_path`` open."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == file_path:
                found.append(fd)
        except OSError:
            pass
    return found


def bytes_read(pid):
    """What process ``pid`` has read so far (files and sockets), in bytes."""
    with open(f"/proc/{pid}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker):
    """A uvicorn process of this module's own (its descriptors are looked at): ``(process, url)``."""
    process, base = start_uvicorn()
    yield process, base
    stop(process)


@pytest.fixture
def alices(alice):
    """An httpx client with alice's session."""
    with httpx.Client(cookies=session_cookies(alice), timeout=httpx.Timeout(10)) as client:
        yield client


class TestASGI:
    def test_the_whole_file(self, server, alice, alices):
        record = saved(alice)
        response = alices.get(server[1] + path(record["key"]))
        assert response.status_code == 200
        assert response.content == DATA
        assert response.headers["content-length"] == str(SIZE)
        assert response.headers["accept-ranges"] == "bytes"
        assert response.headers["etag"] == f'"{record["key"]}-{SIZE}"'
        assert response.headers["content-disposition"] == 'attachment; filename="data.bin"'
        assert "no-cache" in response.headers["cache-control"]
        # Closed once the server's iterator ends, a moment after the client has the last byte.
        wait_until(lambda: open_descriptors(server[0].pid, storage_path(record)) == [], timeout=10,
                   what="the file to be closed")

    @pytest.mark.parametrize(
        "header, start, stop",
        [
            ("bytes=0-65535", 0, 65536),  # the first bytes
            ("bytes=1000000-2000000", 1000000, 2000001),  # the middle
            ("bytes=-1000", SIZE - 1000, SIZE),  # a suffix
            (f"bytes={SIZE // 2}-", SIZE // 2, SIZE),  # open-ended
        ],
    )
    def test_a_range_is_206_with_exactly_those_bytes(self, server, alice, alices, header, start, stop):
        record = saved(alice)
        response = alices.get(server[1] + path(record["key"]), headers={"Range": header})
        assert response.status_code == 206
        assert response.headers["content-range"] == f"bytes {start}-{stop - 1}/{SIZE}"
        assert response.headers["content-length"] == str(stop - start)
        assert response.content == DATA[start:stop]

    def test_unsatisfiable_range_is_416(self, server, alice, alices):
        record = saved(alice)
        response = alices.get(server[1] + path(record["key"]), headers={"Range": f"bytes={SIZE}-"})
        assert response.status_code == 416
        assert response.headers["content-range"] == f"bytes */{SIZE}"
        assert response.content == b""

    @pytest.mark.parametrize("header", ["bytes=abc", "bytes=9-3", "bytes=0-9,20-29"])
    def test_malformed_or_multiple_ranges_get_the_whole_file(self, server, alice, alices, header):
        record = saved(alice)
        response = alices.get(server[1] + path(record["key"]), headers={"Range": header})
        assert response.status_code == 200
        assert response.content == DATA

    def test_if_range_of_another_version_gets_the_whole_file(self, server, alice, alices):
        record = saved(alice)
        response = alices.get(
            server[1] + path(record["key"]), headers={"Range": "bytes=100-", "If-Range": '"an-older-version"'}
        )
        assert response.status_code == 200
        assert response.content == DATA

    def test_head(self, server, alice, alices):
        record = saved(alice)
        response = alices.head(server[1] + path(record["key"]))
        assert response.status_code == 200
        assert response.headers["content-length"] == str(SIZE)
        assert response.headers["accept-ranges"] == "bytes"
        assert response.headers["etag"] == f'"{record["key"]}-{SIZE}"'
        assert response.content == b""

    def test_others_get_404(self, server, bob, alice):
        record = saved(alice)
        url = server[1] + path(record["key"])
        response = httpx.get(url, cookies=session_cookies(bob), headers={"Range": "bytes=0-"})
        assert response.status_code == 404

    def test_an_interrupted_download_resumes(self, server, alice):
        """Half the file, the connection dropped, then the rest with Range and If-Range."""
        record = saved(alice)
        url = server[1] + path(record["key"])
        cookies = session_cookies(alice)
        received = bytearray()
        with httpx.Client(cookies=cookies, timeout=10) as client, client.stream("GET", url) as response:
            assert response.status_code == 200
            etag = response.headers["etag"]
            for chunk in response.iter_raw(64 * 1024):
                received += chunk
                if len(received) >= SIZE // 2:
                    break
        assert len(received) < SIZE
        with httpx.Client(cookies=cookies, timeout=10) as client:
            rest = client.get(url, headers={"Range": f"bytes={len(received)}-", "If-Range": etag})
        assert rest.status_code == 206
        assert rest.headers["content-range"] == f"bytes {len(received)}-{SIZE - 1}/{SIZE}"
        assert bytes(received) + rest.content == DATA

    def test_the_file_is_closed_when_the_client_hangs_up_midway(self, server, alice):
        process, base = server
        data = os.urandom(32 * MiB)
        record = saved(alice, data)
        file_path = storage_path(record)
        read_before = bytes_read(process.pid)
        with slow_connection(base, path(record["key"]), session_cookies(alice)) as received:
            assert received.startswith(b"HTTP/1.1 200 ")
            assert open_descriptors(process.pid, file_path) != [], "the file is not open while it is sent"
        wait_until(lambda: open_descriptors(process.pid, file_path) == [], timeout=10, what="the file to be closed")
        # It read what the sockets' buffers took, not the rest of the file.
        read = bytes_read(process.pid) - read_before
        assert read < len(data) / 2, f"the server read {read} bytes"
        # And the server goes on serving.
        response = httpx.get(base + path(record["key"]), cookies=session_cookies(alice), headers={"Range": "bytes=-10"})
        assert response.content == data[-10:]


@contextmanager
def slow_connection(base, target, cookies, wanted=256 * 1024):
    """A GET of ``target`` from a client with a small receive buffer (the kernel's autotuning would
    take in tens of MB) that reads ``wanted`` bytes, then stops; the connection closes on leaving."""
    address = urlsplit(base)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(10)
    try:
        sock.connect((address.hostname, address.port))
        cookie = "; ".join(f"{name}={value}" for name, value in cookies.items())
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {address.netloc}\r\nCookie: {cookie}\r\n\r\n".encode())
        received = b""
        while len(received) < wanted:
            chunk = sock.recv(64 * 1024)
            assert chunk, "the server closed the connection"
            received += chunk
        yield received
    finally:
        sock.close()


def test_wsgi_live_server_whole_file_and_range(live_server, alice):
    """pytest-django's live server is a WSGI server with ``wsgi.file_wrapper``."""
    record = saved(alice)
    url = live_server.url + path(record["key"])
    cookies = session_cookies(alice)
    whole = httpx.get(url, cookies=cookies, timeout=10)
    assert whole.status_code == 200
    assert whole.headers["content-length"] == str(SIZE)
    assert whole.content == DATA
    part = httpx.get(url, cookies=cookies, headers={"Range": "bytes=-70000"}, timeout=10)
    assert part.status_code == 206
    assert part.content == DATA[-70000:]
    # The connection is not left with bytes past the range: a second request on it works.
    with httpx.Client(cookies=cookies, timeout=10) as client:
        assert client.get(url, headers={"Range": "bytes=5-9"}).content == DATA[5:10]
        assert client.get(url, headers={"Range": "bytes=10-19"}).content == DATA[10:20]


# ---------------------------------------------------------------- memory


def memory(pid):
    """(VmRSS, VmHWM) of process ``pid``, in bytes."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def reset_peak(pid):
    """Start VmHWM again from the current RSS (Linux 4.0+); False where that is not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def slow_reader(url, cookies, results, slow_bytes=16 * MiB):
    """Read the first ``slow_bytes`` slowly (64 KiB, then a pause), the rest at full speed."""
    digest, count, started = hashlib.sha256(), 0, time.monotonic()
    with httpx.Client(cookies=cookies, timeout=60) as client, client.stream("GET", url) as response:
        results.setdefault("statuses", []).append(response.status_code)
        for chunk in response.iter_raw(64 * 1024):
            digest.update(chunk)
            count += len(chunk)
            if count < slow_bytes:
                time.sleep(0.005)
    results.setdefault("digests", []).append(digest.hexdigest())
    results.setdefault("seconds", []).append(time.monotonic() - started)


@pytest.mark.slow
def test_memory_stays_bounded_while_clients_read_a_large_file_slowly(alice, tmp_path, django_db_setup):
    """200 MB read by three clients at once through a fresh uvicorn: its peak memory grows by less than 50 MB.

    Before, Django's ASGI handler made a list of the file's chunks before the first byte:
    the peak grew by the size of the file per client.
    """
    size = 200 * 1000 * 1000
    source = tmp_path / "large.bin"
    digest = hashlib.sha256()
    with open(source, "wb") as f:
        block = os.urandom(MiB)
        for i in range(size // MiB + 1):
            chunk = (i.to_bytes(8, "big") + block[8:])[: size - i * MiB]
            digest.update(chunk)
            f.write(chunk)
    _, key = cache.init_download(alice, "large.bin")
    with open(source, "rb") as f:
        cache.save_download(key, file=f)
    source.unlink()
    record = cache.get_download(key)
    assert os.path.getsize(storage_path(record)) == size
    small = saved(alice, b"x" * 1000, "small.csv")

    process, base = start_uvicorn()
    try:
        cookies = session_cookies(alice)
        # The first request pays for imports, connections and the like.
        assert httpx.get(base + path(small["key"]), cookies=cookies, timeout=10).status_code == 200
        time.sleep(0.2)
        reset = reset_peak(process.pid)
        rss_before, peak_before = memory(process.pid)
        results = {}
        readers = [threading.Thread(target=slow_reader, args=(base + path(key), cookies, results)) for _ in range(3)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(120)
        rss_after, peak_after = memory(process.pid)
    finally:
        stop(process)
        storages["default"].delete(record["filepath"])
    growth = peak_after - (rss_before if reset else peak_before)
    print(f"\nuvicorn: RSS before {rss_before / MiB:.0f} MiB, peak before {peak_before / MiB:.0f} MiB "
          f"(reset: {reset}), peak while 3 clients read 200 MB {peak_after / MiB:.0f} MiB, "
          f"growth {growth / MiB:.1f} MiB; seconds per client {results.get('seconds')}")
    assert results["statuses"] == [200, 200, 200]
    assert results["digests"] == [digest.hexdigest()] * 3
    assert growth < 50 * MiB, f"the peak grew by {growth / MiB:.0f} MiB"

"""``async_downloads:download`` serves a finished file to its owner and to nobody else."""

import asyncio
import io
import os
import threading
import time

import pytest
from asgiref.sync import async_to_sync
from django.core.files import File
from django.core.files.storage import FileSystemStorage
from django.core.handlers.asgi import ASGIHandler
from django.core.signals import request_finished
from django.db import close_old_connections
from django.test import AsyncClient, AsyncRequestFactory, Client, RequestFactory
from django.urls import reverse

from async_downloads import cache, responses

pytestmark = pytest.mark.django_db


def url(key):
    return reverse("async_downloads:download", args=[key])


def signed_in(user):
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def finished(alice, media):
    """``finished(filename, rows)``: one of alice's downloads, saved; returns its record."""

    def make(filename="report.csv", rows=(("id", "name"), (1, "Ann"))):
        _, key = cache.init_download(alice, filename)
        cache.save_download(key, rows)
        return cache.get_download(key)

    return make


class TestOwner:
    def test_gets_the_file_as_an_attachment(self, alice, finished):
        record = finished()
        response = signed_in(alice).get(url(record["key"]))
        assert response.status_code == 200
        assert response["Content-Disposition"] == 'attachment; filename="report.csv"'
        assert response["Content-Type"] == "text/csv"
        assert b"".join(response.streaming_content) == b"id,name\n1,Ann\n"
        assert "no-cache" in response["Cache-Control"]

    def test_unicode_filename(self, alice, finished):
        record = finished("Relevé été 2025.csv")
        response = signed_in(alice).get(url(record["key"]))
        response.close()
        assert response.status_code == 200
        assert response["Content-Disposition"] == (
            "attachment; filename*=utf-8''Relev%C3%A9%20%C3%A9t%C3%A9%202025.csv"
        )

    def test_filename_is_the_safe_one(self, alice, finished):
        record = finished('../../evil"name.csv')
        response = signed_in(alice).get(url(record["key"]))
        response.close()
        assert response["Content-Disposition"] == 'attachment; filename="_.._evil_name.csv"'

    def test_the_records_url_is_this_view(self, finished):
        record = finished()
        assert record["url"] == url(record["key"])


class TestOthers:
    def test_another_user_gets_404(self, bob, finished):
        record = finished()
        assert signed_in(bob).get(url(record["key"])).status_code == 404

    @pytest.mark.parametrize(
        "key", ["00000000-0000-4000-8000-000000000000", "not-a-key", "..", "async_downloads%2F1", "%2e%2e%2fetc"]
    )
    def test_unknown_or_malformed_key_gets_404(self, alice, key):
        assert signed_in(alice).get(f"/async_downloads/download/{key}/").status_code == 404

    def test_pending_download_gets_404(self, alice):
        _, key = cache.init_download(alice, "a.csv")
        cache.set_percentage(key, 50)
        assert signed_in(alice).get(url(key)).status_code == 404

    def test_failed_download_gets_404(self, alice, media):
        _, key = cache.init_download(alice, "a.csv")
        cache.set_error(key, "Failed.")
        assert signed_in(alice).get(url(key)).status_code == 404

    def test_cleared_download_gets_404(self, alice, finished):
        record = finished()
        cache.clear_download(record["key"])
        assert signed_in(alice).get(url(record["key"])).status_code == 404

    def test_file_gone_from_storage_gets_404(self, alice, finished, media):
        record = finished()
        (media / record["filepath"]).unlink()
        assert signed_in(alice).get(url(record["key"])).status_code == 404

    def test_anonymous_is_sent_to_login(self, client, finished):
        record = finished()
        response = client.get(url(record["key"]))
        assert response.status_code == 302
        assert response["Location"] == f"/login/?next={url(record['key'])}"

    def test_post_is_405(self, alice, finished):
        record = finished()
        assert signed_in(alice).post(url(record["key"])).status_code == 405


class TestServers:
    def test_x_accel_redirect_for_nginx(self, settings, alice, finished):
        settings.ASYNC_DOWNLOADS_SENDFILE = "x-accel-redirect"
        settings.ASYNC_DOWNLOADS_SENDFILE_URL = "/protected/"
        record = finished()
        response = signed_in(alice).get(url(record["key"]))
        assert response.status_code == 200
        assert response["X-Accel-Redirect"] == f"/protected/downloads/{record['key']}/report.csv"
        assert response["Content-Disposition"] == 'attachment; filename="report.csv"'
        assert response.content == b""

    def test_x_sendfile_for_apache(self, settings, alice, finished, media):
        settings.ASYNC_DOWNLOADS_SENDFILE = "x-sendfile"
        record = finished()
        response = signed_in(alice).get(url(record["key"]))
        assert response.status_code == 200
        assert response["X-Sendfile"] == str(media / "downloads" / record["key"] / "report.csv")
        assert response["Content-Disposition"] == 'attachment; filename="report.csv"'
        assert response.content == b""

    @pytest.mark.parametrize("mode", ["x-accel-redirect", "x-sendfile"])
    def test_still_only_for_the_owner(self, settings, bob, finished, mode):
        settings.ASYNC_DOWNLOADS_SENDFILE = mode
        record = finished()
        response = signed_in(bob).get(url(record["key"]))
        assert response.status_code == 404
        assert "X-Accel-Redirect" not in response and "X-Sendfile" not in response

    def test_redirect_to_the_storage_url(self, settings, alice, bob, finished):
        settings.ASYNC_DOWNLOADS_REDIRECT_TO_STORAGE_URL = True
        record = finished("Relevé.csv")
        response = signed_in(alice).get(url(record["key"]))
        assert response.status_code == 302
        assert response["Location"] == f"/media/downloads/{record['key']}/Relev%C3%A9.csv"
        assert signed_in(bob).get(url(record["key"])).status_code == 404


def test_sendfile_paths_are_percent_encoded(settings, client, alice):
    settings.ASYNC_DOWNLOADS_SENDFILE = "x-accel-redirect"
    settings.ASYNC_DOWNLOADS_SENDFILE_URL = "/protected/"
    _, key = cache.init_download(alice, "Relevé 50% #1.csv")
    cache.save_download(key, [["x"]])
    client.force_login(alice)
    response = client.get(reverse("async_downloads:download", args=[key]))
    assert response["X-Accel-Redirect"] == f"/protected/downloads/{key}/Relev%C3%A9%2050%25%20%231.csv"


def test_head_is_allowed_for_download_managers(client, alice):
    _, key = cache.init_download(alice, "a.csv")
    cache.save_download(key, [["x"]])
    client.force_login(alice)
    response = client.head(reverse("async_downloads:download", args=[key]))
    response.close()
    assert response.status_code == 200


# ---------------------------------------------------------------- ranges, ETag, HEAD, streaming (issue: large files)

DATA = bytes(range(256)) * 4099 + b"tail"  # 1,049,348 bytes: more than four reads of CHUNK_SIZE
SIZE = len(DATA)


@pytest.fixture
def saved(alice, media):
    """``saved(data, filename)``: one of alice's downloads, saved from bytes; returns its record."""

    def make(data=DATA, filename="data.bin"):
        _, key = cache.init_download(alice, filename)
        cache.save_download(key, file=io.BytesIO(data))
        return cache.get_download(key)

    return make


def body(response):
    """The streamed chunks; the response is closed as a server closes it, without closing the
    test's database connection (as tests/test_abuse.py's ``content``)."""
    chunks = list(response.streaming_content)
    request_finished.disconnect(close_old_connections)
    try:
        response.close()
    finally:
        request_finished.connect(close_old_connections)
    return chunks


def open_descriptors(path):
    """The descriptors of this process that have ``path`` open."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                found.append(fd)
        except OSError:
            pass
    return found


class TestRangesUnderWSGI:
    """Django's test client is a WSGI handler: a synchronous stream, ranges as under ASGI."""

    def test_full_response_streams_synchronously_and_offers_ranges(self, alice, saved, media):
        record = saved()
        response = signed_in(alice).get(url(record["key"]))
        assert response.status_code == 200
        assert not response.is_async
        assert response["Accept-Ranges"] == "bytes"
        assert response["Content-Length"] == str(SIZE)
        assert response["ETag"] == f'"{record["key"]}-{SIZE}"'
        assert response["Content-Type"] == "application/octet-stream"
        assert response["Content-Disposition"] == 'attachment; filename="data.bin"'
        assert "no-cache" in response["Cache-Control"]
        chunks = body(response)
        assert b"".join(chunks) == DATA
        assert max(map(len, chunks)) <= responses.CHUNK_SIZE
        assert open_descriptors(media / record["filepath"]) == []

    @pytest.mark.parametrize(
        "header, start, stop",
        [
            ("bytes=0-99", 0, 100),  # the first bytes
            ("bytes=1000-299999", 1000, 300000),  # the middle, over two reads
            ("bytes=-500", SIZE - 500, SIZE),  # a suffix
            (f"bytes={SIZE - 10}-", SIZE - 10, SIZE),  # open-ended
            ("bytes=7-7", 7, 8),  # one byte
            (f"bytes={SIZE - 1}-{SIZE * 2}", SIZE - 1, SIZE),  # past the end: clipped
            (f"bytes=-{SIZE * 2}", 0, SIZE),  # a suffix longer than the file: all of it
            ("BYTES = 5-9", 5, 10),  # the unit is case-insensitive; spaces around the set
        ],
    )
    def test_single_range_is_206_with_exactly_those_bytes(self, alice, saved, header, start, stop):
        record = saved()
        response = signed_in(alice).get(url(record["key"]), HTTP_RANGE=header)
        assert response.status_code == 206
        assert response["Content-Range"] == f"bytes {start}-{stop - 1}/{SIZE}"
        assert response["Content-Length"] == str(stop - start)
        assert response["ETag"] == f'"{record["key"]}-{SIZE}"'
        assert response["Content-Disposition"] == 'attachment; filename="data.bin"'
        assert b"".join(body(response)) == DATA[start:stop]

    @pytest.mark.parametrize(
        "header", [f"bytes={SIZE}-", f"bytes={SIZE}-{SIZE + 10}", "bytes=-0", "bytes=" + "9" * 5000 + "-"]
    )
    def test_unsatisfiable_range_is_416(self, alice, saved, media, header):
        record = saved()
        response = signed_in(alice).get(url(record["key"]), HTTP_RANGE=header)
        assert response.status_code == 416
        assert response["Content-Range"] == f"bytes */{SIZE}"
        assert response.content == b""
        assert open_descriptors(media / record["filepath"]) == []

    @pytest.mark.parametrize(
        "header",
        ["bytes=abc", "bytes=5-1", "items=0-5", "0-5", "bytes=", "bytes=-", "bytes=1-2-3", "bytes=0-1,5-6",
         "bytes=0-1, -5", "bytes=+1-5", "bytes=٣-٤"],
    )
    def test_malformed_or_multiple_ranges_are_ignored(self, alice, saved, header):
        record = saved()
        response = signed_in(alice).get(url(record["key"]), HTTP_RANGE=header)
        assert response.status_code == 200
        assert "Content-Range" not in response
        assert response["Content-Length"] == str(SIZE)
        assert b"".join(body(response)) == DATA

    def test_if_range_with_the_etag_gets_the_range(self, alice, saved):
        record = saved()
        etag = f'"{record["key"]}-{SIZE}"'
        response = signed_in(alice).get(url(record["key"]), HTTP_RANGE="bytes=10-19", HTTP_IF_RANGE=etag)
        assert response.status_code == 206
        assert b"".join(body(response)) == DATA[10:20]

    @pytest.mark.parametrize(
        "if_range",
        ['"another-version"', 'W/"{key}-{size}"', '"{key}-{other}"', "Wed, 21 Oct 2015 07:28:00 GMT"],
    )
    def test_if_range_that_does_not_match_gets_the_whole_file(self, alice, saved, if_range):
        record = saved()
        if_range = if_range.format(key=record["key"], size=SIZE, other=SIZE - 1)
        response = signed_in(alice).get(url(record["key"]), HTTP_RANGE="bytes=10-19", HTTP_IF_RANGE=if_range)
        assert response.status_code == 200
        assert "Content-Range" not in response
        assert b"".join(body(response)) == DATA

    def test_head_has_the_headers_of_the_whole_file_and_no_body(self, alice, saved, media):
        record = saved()
        for headers in ({}, {"HTTP_RANGE": "bytes=0-9"}):
            response = signed_in(alice).head(url(record["key"]), **headers)
            assert response.status_code == 200
            assert response["Content-Length"] == str(SIZE)
            assert response["Accept-Ranges"] == "bytes"
            assert response["ETag"] == f'"{record["key"]}-{SIZE}"'
            assert response["Content-Disposition"] == 'attachment; filename="data.bin"'
            assert response.content == b""
        assert open_descriptors(media / record["filepath"]) == []

    def test_empty_file(self, alice, saved):
        record = saved(b"")
        client = signed_in(alice)
        response = client.get(url(record["key"]))
        assert (response.status_code, response["Content-Length"]) == (200, "0")
        assert body(response) == []
        response = client.get(url(record["key"]), HTTP_RANGE="bytes=0-")
        assert (response.status_code, response["Content-Range"]) == (416, "bytes */0")

    def test_others_get_404_whatever_the_range(self, bob, saved):
        record = saved()
        response = signed_in(bob).get(url(record["key"]), HTTP_RANGE="bytes=0-9")
        assert response.status_code == 404
        assert "Content-Range" not in response

    def test_a_server_with_wsgi_file_wrapper_gets_the_file_itself(self, alice, saved, media):
        """Only for the whole file: a range is read by the response's own iterator."""
        record = saved()
        response = signed_in(alice).get(url(record["key"]))
        assert response.file_to_stream is not None
        assert response.block_size == responses.CHUNK_SIZE
        body(response)
        response = signed_in(alice).get(url(record["key"]), HTTP_RANGE="bytes=5-")
        assert response.file_to_stream is None
        assert b"".join(body(response)) == DATA[5:]


class Unseekable(io.RawIOBase):
    """A stream that can only be read (a pipe, a socket): no size, no seeking."""

    def __init__(self, data):
        self.data = io.BytesIO(data)

    def readable(self):
        return True

    def readinto(self, buffer):
        return self.data.readinto(buffer)


@pytest.mark.parametrize("asgi", [False, True])
def test_a_file_of_unknown_size_is_sent_whole_without_ranges(asgi):
    factory = AsyncRequestFactory() if asgi else RequestFactory()
    request = factory.get("/", headers={"Range": "bytes=0-9"})
    response = responses.file_response(request, Unseekable(DATA), filename="a.bin", version="v")
    assert response.status_code == 200
    assert response["Accept-Ranges"] == "none"
    assert "Content-Length" not in response and "ETag" not in response and "Content-Range" not in response
    assert response.is_async is asgi
    if asgi:
        async def read():
            return [chunk async for chunk in response]

        chunks = async_to_sync(read)()
    else:
        chunks = list(response)
    assert b"".join(chunks) == DATA


class TestUnderASGI:
    """Django's AsyncClient builds ASGI requests: the file comes through an asynchronous iterator."""

    def get(self, user, path, **headers):
        async def fetch():
            client = AsyncClient()
            await client.aforce_login(user)
            response = await client.get(path, headers=headers)
            chunks = [chunk async for chunk in response.streaming_content] if response.streaming else None
            return response, chunks

        # The view runs in this thread (async_to_sync), in the test's transaction.
        return async_to_sync(fetch)()

    def test_streamed_with_an_asynchronous_iterator_in_bounded_chunks(self, alice, saved, media):
        record = saved()
        response, chunks = self.get(alice, url(record["key"]))
        assert response.status_code == 200
        assert response.is_async
        assert response["Content-Length"] == str(SIZE)
        assert response["Accept-Ranges"] == "bytes"
        assert b"".join(chunks) == DATA
        assert len(chunks) > 4 and max(map(len, chunks)) <= responses.CHUNK_SIZE
        assert open_descriptors(media / record["filepath"]) == []

    def test_range(self, alice, saved):
        record = saved()
        response, chunks = self.get(alice, url(record["key"]), Range="bytes=300000-600000")
        assert response.status_code == 206
        assert response.is_async
        assert response["Content-Range"] == f"bytes 300000-600000/{SIZE}"
        assert b"".join(chunks) == DATA[300000:600001]

    def test_head(self, alice, saved):
        record = saved()
        async def head():
            client = AsyncClient()
            await client.aforce_login(alice)
            return await client.head(url(record["key"]))

        response = async_to_sync(head)()
        assert response.status_code == 200
        assert response["Content-Length"] == str(SIZE)
        assert response.content == b""


def through_asgi_handler(user, path, hang_up_after=None, hang_up_when=None):
    """GET ``path`` through Django's ASGI handler itself; the client hangs up once it got
    ``hang_up_after`` messages (reading no more), or when ``hang_up_when`` (a threading.Event) is set.
    Returns the messages sent."""
    cookie = f"sessionid={signed_in(user).cookies['sessionid'].value}".encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"cookie", cookie)],
        "client": ("127.0.0.1", 1), "server": ("testserver", 80),
    }

    async def run():
        hang_up = asyncio.Event()
        requested = False
        sent = []

        async def receive():
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            if hang_up_when is not None:
                await asyncio.to_thread(hang_up_when.wait, 10)
            else:
                await hang_up.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)
            if len(sent) == hang_up_after:
                hang_up.set()
                await asyncio.sleep(30)  # a client that reads no more

        await asyncio.wait_for(ASGIHandler()(scope, receive, send), 20)
        return sent

    return async_to_sync(run)()


@pytest.mark.django_db(transaction=True)
def test_asgi_handler_closes_the_file_when_the_client_goes_away(alice, saved, media, monkeypatch):
    """Django's ASGI handler itself, with a client that stops reading and hangs up midway."""
    record = saved()
    path = media / record["filepath"]
    seen = []
    send_part = ASGIHandler.chunk_bytes

    def chunk_bytes(data):  # while the parts are sent, the file is open
        seen.append(open_descriptors(path))
        return send_part(data)

    monkeypatch.setattr(ASGIHandler, "chunk_bytes", staticmethod(chunk_bytes))
    sent = through_asgi_handler(alice, url(record["key"]), hang_up_after=3)  # the start and two parts
    assert sent[0]["status"] == 200
    assert len(sent) == 3 and all(message.get("more_body") for message in sent[1:])
    assert seen and all(seen)
    assert open_descriptors(path) == []


class SlowFile:
    """A file whose second read takes a while; it notes what is called when."""

    def __init__(self, file):
        self.file = file
        self.reads = 0
        self.reading = threading.Event()
        self.closed_during_a_read = False
        self.in_read = False

    def read(self, size=-1):
        self.reads += 1
        self.in_read = True
        try:
            if self.reads == 2:
                self.reading.set()
                time.sleep(0.3)
            return self.file.read(size)
        finally:
            self.in_read = False

    def close(self):
        self.closed_during_a_read = self.closed_during_a_read or self.in_read
        self.file.close()

    def __getattr__(self, name):
        return getattr(self.file, name)


class SlowStorage(FileSystemStorage):
    opened = []

    def _open(self, name, mode="rb"):
        slow = SlowFile(open(self.path(name), mode))  # noqa: SIM115 (the response closes it)
        self.opened.append(slow)
        return File(slow)


@pytest.mark.django_db(transaction=True)
def test_a_client_gone_during_a_read_stops_the_reads_and_closes_the_file_after_it(alice, saved, media, settings):
    record = saved()
    settings.STORAGES = {**settings.STORAGES, "default": {**settings.STORAGES["default"],
                                                          "BACKEND": f"{__name__}.SlowStorage"}}
    SlowStorage.opened.clear()
    sent = through_asgi_handler(alice, url(record["key"]), hang_up_when=_first_opened_reading)
    [slow] = SlowStorage.opened
    assert sent[0]["status"] == 200
    assert slow.reads == 2  # of five: none after the client went away
    assert slow.file.closed and not slow.closed_during_a_read
    assert open_descriptors(media / record["filepath"]) == []


class _FirstOpenedReading:
    """An event that is set once the first file SlowStorage opened is in its slow read."""

    def wait(self, timeout):
        deadline = time.monotonic() + timeout
        while not SlowStorage.opened and time.monotonic() < deadline:
            time.sleep(0.01)
        return SlowStorage.opened[0].reading.wait(max(0, deadline - time.monotonic()))


_first_opened_reading = _FirstOpenedReading()

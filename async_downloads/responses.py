"""File responses in bounded memory, under ASGI and WSGI, answering single byte ranges (RFC 9110).

Django's ASGI handler turns a response over a synchronous iterator (so a plain
``FileResponse``) into a list before it sends a byte: the whole file in memory.
Under ASGI the file is therefore read ``CHUNK_SIZE`` bytes at a time through
``sync_to_async`` (in the request's own thread, where the view opened it), and
under WSGI by a synchronous iterator (or the server's ``wsgi.file_wrapper``).
The file is closed at its end, when the client goes away midway, and when the
response is closed.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import re
import stat
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import IO, Any, NamedTuple

from asgiref.sync import sync_to_async
from django.core.files.base import File
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.utils.http import content_disposition_header

# What one read takes from the file (Django's ASGI handler sends it on in 64 KiB messages).
CHUNK_SIZE = 256 * 1024

# What FileResponse sends for compressed files, so that browsers keep them as they are.
ENCODED_TYPES = {
    "br": "application/x-brotli",
    "bzip2": "application/x-bzip",
    "compress": "application/x-compress",
    "gzip": "application/gzip",
    "xz": "application/x-xz",
}

_RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)")
# Positions beyond any file; longer numbers are not parsed (Python refuses ints of > 4300 digits).
_HUGE = 10**19


class ByteRange(NamedTuple):
    """Bytes ``start`` to ``stop`` (exclusive) of a file."""

    start: int
    stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start


class RangeNotSatisfiable(ValueError):
    """The range asks for no byte of the file (answered with 416)."""


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one byte range that a ``Range`` header asks of a file of ``size`` bytes.

    None (send the whole file) when there is no header, another unit, a
    malformed one, or several ranges, which RFC 9110 lets a server ignore.
    Raises ``RangeNotSatisfiable`` when the range starts past the end of the
    file or is an empty suffix.
    """
    if not header:
        return None
    unit, equals, range_set = header.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return None
    specs = [spec.strip() for spec in range_set.split(",") if spec.strip()]
    if len(specs) != 1:
        return None
    match = _RANGE_SPEC.fullmatch(specs[0])
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = _number(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(header)
        return ByteRange(max(0, size - suffix), size)
    start = _number(first)
    end = _number(last) if last else None
    if end is not None and end < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable(header)
    return ByteRange(start, size if end is None else min(end + 1, size))


def _number(digits: str) -> int:
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) < 19 else _HUGE


def if_range_matches(if_range: str | None, etag: str | None) -> bool:
    """Whether ``If-Range`` lets a range be sent: absent, or our strong ETag exactly.

    A weak ETag never matches, and a date neither (the response has no Last-Modified).
    """
    if if_range is None:
        return True
    return etag is not None and if_range.strip() == etag


def content_type(filename: str) -> str:
    """The Content-Type that ``FileResponse`` gives ``filename``."""
    guessed, encoding = mimetypes.guess_type(filename)
    return ENCODED_TYPES.get(encoding or "", guessed) or "application/octet-stream"


def file_size(file: IO[bytes]) -> int | None:
    """The size of an open file, None when it cannot be known."""
    try:
        status = os.fstat(file.fileno())
        if stat.S_ISREG(status.st_mode):
            return status.st_size
    except (AttributeError, OSError, ValueError):
        pass
    try:
        size = getattr(file, "size", None)
    except (AttributeError, OSError, TypeError, ValueError):
        return None
    return size if isinstance(size, int) else None


def _seekable(file: IO[bytes]) -> bool:
    try:
        return bool(file.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def is_asgi(request: HttpRequest) -> bool:
    return isinstance(request, ASGIRequest)


def file_response(request: HttpRequest, file: IO[bytes], *, filename: str, version: str) -> HttpResponseBase:
    """Send the open ``file`` as an attachment named ``filename``, whole or the range asked for.

    Every answer carries ``Accept-Ranges`` and, when the size is known,
    ``Content-Length`` and the strong ETag ``"<version>-<size>"``: a single
    range of a GET is answered with 206 (416 if it lies past the end), unless
    ``If-Range`` names another ETag. HEAD gets the headers of the whole file.
    Takes the file over: it is closed when the response ends.
    """
    size = file_size(file)
    rangeable = size is not None and _seekable(file)
    etag = f'"{version}-{size}"' if size is not None else None
    byte_range = None
    if (
        rangeable
        and size is not None
        and request.method == "GET"
        and if_range_matches(request.headers.get("If-Range"), etag)
    ):
        try:
            byte_range = parse_range(request.headers.get("Range"), size)
        except RangeNotSatisfiable:
            file.close()
            return _not_satisfiable(size, etag)
    response: HttpResponseBase
    if request.method == "HEAD":
        file.close()
        response = HttpResponse(content_type=content_type(filename))
    else:
        if byte_range is not None:
            file.seek(byte_range.start)
        response = FileStreamResponse(
            file,
            length=byte_range.length if byte_range is not None else None,
            asynchronous=is_asgi(request),
            content_type=content_type(filename),
        )
    response["Accept-Ranges"] = "bytes" if rangeable else "none"
    response["Content-Disposition"] = content_disposition_header(True, filename)
    if etag is not None:
        response["ETag"] = etag
    if byte_range is not None:
        response.status_code = 206
        response["Content-Range"] = f"bytes {byte_range.start}-{byte_range.stop - 1}/{size}"
        response["Content-Length"] = str(byte_range.length)
    elif size is not None:
        response["Content-Length"] = str(size)
    return response


def _not_satisfiable(size: int, etag: str | None) -> HttpResponse:
    response = HttpResponse(status=416, content_type="text/plain")
    response["Content-Range"] = f"bytes */{size}"
    response["Accept-Ranges"] = "bytes"
    if etag is not None:
        response["ETag"] = etag
    return response


class FileStreamResponse(StreamingHttpResponse):
    """``length`` bytes (or all) of ``file`` from where it stands, ``CHUNK_SIZE`` at a time.

    With ``asynchronous`` (under ASGI), an asynchronous iterator whose reads run
    in the request's thread; else a synchronous one, and the whole file goes
    through ``wsgi.file_wrapper`` where the WSGI server has one.
    """

    block_size = CHUNK_SIZE

    def __init__(self, file: IO[bytes], *, length: int | None, asynchronous: bool, **kwargs: Any) -> None:
        # Bound now: Django's WSGI handler replaces the File's close() with this response's.
        self._close_file = file.close
        self._reader: AsyncGenerator[bytes, None] | None = None
        self.file_to_stream: IO[bytes] | None = None
        if asynchronous:
            self._reader = _read_async(file.read, self._close_file, length)
            super().__init__(self._reader, **kwargs)
        else:
            super().__init__(_read(file.read, self._close_file, length), **kwargs)
            if length is None and isinstance(file, File):
                self.file_to_stream = file

    def close(self) -> None:
        self._close_file()
        super().close()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        # Django's ASGI handler closes this iterator when the client goes away (the
        # response itself is not closed then): close the reader, and so the file,
        # even when a middleware has wrapped it.
        parts = super().__aiter__()
        try:
            async for part in parts:
                yield part
        finally:
            await _aclose(parts)
            if self._reader is not None:
                await self._reader.aclose()


async def _aclose(iterator: object) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


def _read(read: Callable[[int], bytes], close: Callable[[], None], length: int | None) -> Iterator[bytes]:
    try:
        while length is None or length > 0:
            chunk = read(CHUNK_SIZE if length is None else min(CHUNK_SIZE, length))
            if not chunk:
                return
            if length is not None:
                length -= len(chunk)
            yield chunk
    finally:
        close()


async def _read_async(
    read: Callable[[int], bytes], close: Callable[[], None], length: int | None
) -> AsyncGenerator[bytes, None]:
    try:
        while length is None or length > 0:
            chunk = await sync_to_async(read)(CHUNK_SIZE if length is None else min(CHUNK_SIZE, length))
            if _cancelled():
                # The client went away during the read, but sync_to_async returned its bytes
                # instead of raising (today's asgiref raises at once): read no more.
                raise asyncio.CancelledError
            if not chunk:
                return
            if length is not None:
                length -= len(chunk)
            yield chunk
    finally:
        # In the thread of the reads, after the one still running when the client went away.
        await sync_to_async(close)()


def _cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0

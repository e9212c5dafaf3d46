"""Read a real event stream the way a browser's EventSource does."""

import queue
import threading
import time

import httpx
from django.test import Client


def session_cookies(user):
    client = Client()
    client.force_login(user)
    return {"sessionid": client.cookies["sessionid"].value}


class StreamReader:
    """Reads ``url`` in a thread and collects the parsed SSE events with their arrival times.

    With ``reconnect``, it behaves like a browser's EventSource when the stream
    breaks or ends: it waits ``retry`` seconds (or what the server's ``retry:``
    field says) and opens the same URL again with a ``Last-Event-ID`` header;
    an answer other than 200 ends it for good. ``connections`` counts the
    streams that opened.
    """

    def __init__(self, url, cookies=None, headers=None, reconnect=False, retry=0.5):
        self.url = url
        self.cookies = cookies or {}
        self.headers = headers or {}
        self.reconnect = reconnect
        self.retry = retry
        self.events = queue.Queue()
        self.status = None
        self.last_event_id = ""
        self.connections = 0
        self.opened = threading.Event()
        self.closed = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        if not self.opened.wait(15):
            raise AssertionError(f"The stream {self.url} did not open.")
        return self

    def __exit__(self, *exc):
        self._stop = True

    def _run(self):
        try:
            while self._connect() and self.reconnect and not self._stop:
                time.sleep(self.retry)
        finally:
            self.opened.set()
            self.closed.set()

    def _connect(self):
        """Read one connection to its end; False when the server refused the stream."""
        headers = dict(self.headers)
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        try:
            with (
                httpx.Client(cookies=self.cookies, timeout=httpx.Timeout(5, read=60)) as client,
                client.stream("GET", self.url, headers=headers) as response,
            ):
                self.status = response.status_code
                self.content_type = response.headers.get("content-type", "")
                if response.status_code != 200:
                    self.body = response.read().decode()
                    self.opened.set()
                    return False
                self.connections += 1
                self._parse(response)
        except httpx.HTTPError:
            pass
        return True

    def _parse(self, response):
        event = {"event": "message", "data": [], "id": None}
        event_id = self.last_event_id
        for line in response.iter_lines():
            if self._stop:
                return
            if line == "":
                self.last_event_id = event_id
                if event["data"] or event["event"] != "message":
                    event["data"] = "\n".join(event["data"])
                    event["at"] = time.monotonic()
                    if event["event"] == "stream-open":
                        self.opened.set()
                    self.events.put(event)
                event = {"event": "message", "data": [], "id": None}
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "data":
                    event["data"].append(value)
                elif field in ("event", "id"):
                    event[field] = value
                if field == "id":
                    event_id = value
                elif field == "retry" and value.isdigit():
                    self.retry = int(value) / 1000

    def next(self, event_type="downloads", timeout=10):
        """The next event of ``event_type`` (others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"No {event_type!r} event within {timeout} s.")
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            if event["event"] == event_type:
                return event

    def drain(self, event_type="downloads", wait=0.5):
        """All ``event_type`` events that arrive within ``wait`` seconds."""
        found = []
        deadline = time.monotonic() + wait
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                break
            if event["event"] == event_type:
                found.append(event)
        return found

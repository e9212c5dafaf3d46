"""Live delivery survives Redis going away for 30 s, without restarting any process."""

import json
import subprocess
import sys
import tempfile
import time

import pytest

from async_downloads import events
from async_downloads.testing import redis_server
from tests.processes import child_env, start_uvicorn, stop
from tests.sse_client import StreamReader, session_cookies

pytestmark = pytest.mark.django_db(transaction=True)


class Publisher:
    def __init__(self, env):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.publisher"], env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True,
        )

    def __call__(self, **command):
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self):
        self.process.stdin.close()
        stop(self.process)
        self.process.stdout.close()


class PrivateRedis:
    """A redis-server that keeps its data across a restart on the same port."""

    def __init__(self):
        self.port = redis_server.free_port()
        self.dir = tempfile.mkdtemp(prefix="async-downloads-outage-")
        self.start()

    def start(self):
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
             "--save", "", "--appendonly", "yes", "--appendfsync", "always"],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not redis_server.answers(self.url):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self):
        stop(self.process)


@pytest.mark.slow
def test_delivery_resumes_within_10_s_after_a_30_s_outage(alice):
    server = PrivateRedis()
    env = child_env(REDIS_URL=server.url, ASYNC_DOWNLOADS_TEST_RUN="outage")
    web, base = start_uvicorn(**{"REDIS_URL": server.url, "ASYNC_DOWNLOADS_TEST_RUN": "outage"})
    publisher = Publisher(env)
    try:
        key = publisher(op="init", user=alice.pk, filename="orders.csv")["ok"]
        url = base + publisher(op="events_url", user=alice.pk)["ok"]
        with StreamReader(url, session_cookies(alice)) as stream:
            publisher(op="set", key=key, percentage=10)
            assert 'aria-valuenow="10"' in stream.next()["data"]

            server.stop()
            time.sleep(30)
            server.start()
            back = time.monotonic()

            # Progress reported after Redis returns reaches the open stream, no restart.
            percentage = 20
            while True:
                assert publisher(op="set", key=key, percentage=percentage) == {"ok": None}
                found = [e for e in stream.drain(wait=0.5) if f'aria-valuenow="{percentage}"' in e["data"]]
                if found:
                    break
                assert time.monotonic() - back < 10, "no live delivery 10 s after Redis came back"
                percentage += 1
            # And the final state follows.
            publisher(op="save", key=key, rows=[["a"]])
            assert "orders.csv is ready to download." in stream.next(timeout=10)["data"]
    finally:
        publisher.close()
        stop(web)
        server.stop()


def test_a_failed_publish_is_logged_and_resent_when_the_transport_works(monkeypatch, caplog, alice):
    from async_downloads import cache, sse

    sent, failing = [], [True]

    def flaky_send(pk, html):
        if failing[0]:
            raise ConnectionError("Redis is down")
        sent.append((pk, html))

    monkeypatch.setattr(sse, "send", flaky_send)
    monkeypatch.setattr(events, "RESYNC_INTERVAL", 0.05)
    _, key = cache.init_download(alice, "orders.csv")  # does not raise
    cache.set_percentage(key, 50)
    assert cache.get_download(key)["percentage"] == 50
    assert "will resend" in caplog.text
    failing[0] = False
    deadline = time.monotonic() + 5
    while not sent and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sent and sent[0][0] == alice.pk
    assert 'aria-valuenow="50"' in sent[0][1]  # the whole centre, as it is now

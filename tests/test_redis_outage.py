"""Live delivery survives Redis going away for 30 s, without restarting any process."""

import time

import pytest

from async_downloads import events
from tests.processes import PrivateRedis, Publisher, child_env, start_uvicorn, stop
from tests.sse_client import StreamReader, session_cookies

pytestmark = pytest.mark.django_db(transaction=True)


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
            # (The whole centre, resent once the listener was back, may come first.)
            publisher(op="save", key=key, rows=[["a"]])
            deadline = time.monotonic() + 10
            while "orders.csv is ready to download." not in stream.next(timeout=10)["data"]:
                assert time.monotonic() < deadline, "the final state did not follow"
    finally:
        publisher.close()
        stop(web)
        server.close()


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

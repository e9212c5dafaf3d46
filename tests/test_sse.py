"""The event stream, read from a real uvicorn process."""

import asyncio
import os
import re

import httpx
import pytest

from async_downloads import cache, channels, compat, partials, sse
from async_downloads import stream as stream_view
from tests.sse_client import StreamReader, session_cookies

pytestmark = pytest.mark.django_db(transaction=True)


def events_url(base, user):
    return base + partials.events_url(user.pk)


def test_owner_receives_each_change_as_html(web_server, alice):
    _, key = cache.init_download(alice, "orders.csv")
    with StreamReader(events_url(web_server, alice), session_cookies(alice)) as stream:
        assert stream.content_type.startswith("text/event-stream")
        cache.set_percentage(key, 40)
        progress = stream.next()
        assert f'id="download-{key}"' in progress["data"]
        assert 'hx-swap-oob="true"' in progress["data"]
        assert 'aria-valuenow="40"' in progress["data"]

        cache.save_download(key, [["a"], ["b"]])
        done = stream.next()
        assert f"/async_downloads/download/{key}/" in done["data"]
        assert "orders.csv is ready to download." in done["data"]


def test_a_worker_export_pushes_how_far_it_is_and_the_time_left(web_server, celery_worker, alice):
    """A real Celery worker runs queryset_to_csv: its progress events carry the rows and, from the
    second report on, the time left, with no more events than the steps of the bar."""
    from async_downloads.shortcuts import init_generic_csv_download
    from tests.testapp.models import Item
    from tests.testapp.tasks import slow_items_export

    Item.objects.bulk_create(Item(name=f"Item {n}", quantity=n) for n in range(40))
    with StreamReader(events_url(web_server, alice), session_cookies(alice)) as stream:
        _, key = init_generic_csv_download(slow_items_export, alice, "Items", pause=0.05)  # 2 s of rows
        rows = []
        while "is ready to download" not in (data := stream.next(timeout=30)["data"]):
            if data.startswith(f'<li id="download-{key}"'):  # progress replaces the row
                rows.append(re.search(r'id="download-[^"]+-rows"[^>]*>([^<]*)<', data))
    texts = [found.group(1) if found else None for found in rows]
    assert texts[0] is None  # the worker's start: no rows reported yet
    assert all(re.fullmatch(r"\d+ of 40 rows( · (about \d+ s|less than a second) left)?", text) for text in texts[1:])
    assert [text for text in texts if text and "about" in text], texts
    assert texts[-1] == "40 of 40 rows"  # 99 %: the rows are done, the file is being saved
    assert len(texts) <= 1 + 10, texts  # the start, then one per step of 10 % at most


def test_alice_never_receives_bobs_events(web_server, alice, bob):
    _, alice_key = cache.init_download(alice, "alice.csv")
    _, bob_key = cache.init_download(bob, "bob.csv")
    with StreamReader(events_url(web_server, alice), session_cookies(alice)) as stream:
        cache.set_percentage(bob_key, 50)
        cache.save_download(bob_key, [["secret"]])
        cache.set_percentage(alice_key, 10)
        received = [stream.next()] + stream.drain(wait=1)
    text = "".join(event["data"] for event in received)
    assert alice_key in text
    assert bob_key not in text and "bob.csv" not in text


def test_the_channel_comes_from_the_session_not_the_request(web_server, alice, bob):
    """Asking for bob's channel by query string still streams alice's own."""
    _, bob_key = cache.init_download(bob, "bob.csv")
    _, alice_key = cache.init_download(alice, "alice.csv")
    url = f"{web_server}/async_downloads/events/?channel={sse.channel_for(bob.pk)}"
    with StreamReader(url, session_cookies(alice)) as stream:
        cache.set_percentage(bob_key, 70)
        cache.set_percentage(alice_key, 20)
        event = stream.next()
    assert alice_key in event["data"] and bob_key not in event["data"]


def test_anonymous_users_get_no_stream(web_server):
    response = httpx.get(f"{web_server}/async_downloads/events/", timeout=5)
    assert response.status_code == 403
    assert "text/event-stream" not in response.headers.get("content-type", "")


def test_a_reconnecting_client_gets_what_it_missed(web_server, alice):
    _, key = cache.init_download(alice, "orders.csv")
    url = events_url(web_server, alice)  # lastEventId of a page rendered now
    cache.set_percentage(key, 30)
    cache.set_percentage(key, 60)
    with StreamReader(url, session_cookies(alice)) as stream:
        first, second = stream.next(), stream.next()
    assert 'aria-valuenow="30"' in first["data"]
    assert 'aria-valuenow="60"' in second["data"]


def test_last_event_id_header_resumes_after_that_event(web_server, alice):
    _, key = cache.init_download(alice, "orders.csv")
    url = events_url(web_server, alice)
    cookies = session_cookies(alice)
    with StreamReader(url, cookies) as stream:
        cache.set_percentage(key, 10)
        seen = stream.next()
    cache.set_percentage(key, 20)
    headers = {"Last-Event-ID": seen["id"]}
    with StreamReader(f"{web_server}/async_downloads/events/", cookies, headers) as stream:
        missed = stream.next()
    assert 'aria-valuenow="20"' in missed["data"]


def test_finishing_the_last_download_swaps_in_the_idle_centre(web_server, alice):
    _, key = cache.init_download(alice, "orders.csv")
    with StreamReader(events_url(web_server, alice), session_cookies(alice)) as stream:
        cache.set_error(key, "The report service is down.")
        message = stream.next()["data"]
    centre = re.search(r'<div id="async-downloads-connection"[^>]*>', message).group(0)
    assert 'hx-swap-oob="true"' in centre
    assert "sse-connect" not in centre  # replacing the element closes the stream
    assert "?idle=" in centre
    assert "The report service is down." in message
    assert "orders.csv failed." in message


def test_a_change_while_others_run_updates_list_and_indicator_only(web_server, alice):
    _, first = cache.init_download(alice, "first.csv")
    _, second = cache.init_download(alice, "second.csv")
    with StreamReader(events_url(web_server, alice), session_cookies(alice)) as stream:
        cache.clear_download(first, user=alice)
        message = stream.next()["data"]
    assert '<ul id="async-downloads-list"' in message and 'hx-swap-oob="true"' in message
    assert first not in message and second in message
    assert "async-downloads-connection" not in message


def _threads_and_fds(pid):
    with open(f"/proc/{pid}/status") as file:
        status = dict(line.split(":", 1) for line in file)
    return int(status["Threads"]), len(os.listdir(f"/proc/{pid}/fd"))


def test_idle_streams_hold_no_thread_and_no_database_connection(alice):
    """Thousands of idle streams must cost a socket each, not a thread and a DB connection."""
    from tests.processes import start_uvicorn, stop

    process, base = start_uvicorn()
    try:
        cache.init_download(alice, "orders.csv")
        url = events_url(base, alice)
        cookies = session_cookies(alice)
        with StreamReader(url, cookies):  # warm up: listener, storage client, pools
            threads_before, fds_before = _threads_and_fds(process.pid)
            streams = [StreamReader(url, cookies).__enter__() for _ in range(20)]
            threads_after, fds_after = _threads_and_fds(process.pid)
            for stream in streams:
                stream.__exit__()
    finally:
        stop(process)
    assert threads_after - threads_before < 5
    assert fds_after - fds_before <= 20 + 3  # one socket per stream


def test_events_that_arrive_while_a_stream_catches_up_do_not_resend_what_it_caught_up_on(alice, monkeypatch):
    """The stream reads the storage after ``lastEventId``, then, as live events came in during that
    read, reads it again: from after what it has sent, so that no event is sent twice."""
    from asgiref.sync import async_to_sync
    from django.test import RequestFactory
    from django_eventstream.eventrequest import EventRequest
    from django_eventstream.views import Listener, stream

    start = channels.current_event_id(alice.pk)
    for n in range(3):
        sse.send(alice.pk, f"<p>caught up {n}</p>")
    listener = Listener()
    read = sse.EventStorage.get_events
    reads = []

    def read_while_an_event_arrives(storage, channel_, last_id, limit=50):
        found = read(storage, channel_, last_id, limit)
        reads.append(last_id)
        if len(reads) == 1:
            sse.send(alice.pk, "<p>live</p>")  # stored, and queued for the stream as the listener would
            live = read(storage, channel_, found[-1].id, limit)
            listener.channel_items[channel_] = live
        return found

    monkeypatch.setattr(sse.EventStorage, "get_events", read_while_an_event_arrives)
    request = RequestFactory().get("/async_downloads/events/", {"lastEventId": start})
    request.user = alice
    compat.resume_after_read()
    event_request = EventRequest(request, view_kwargs={"async_downloads": True})
    listener.channels = event_request.channels

    async def ids_sent():
        body = ""
        chunks = stream(event_request, listener)
        try:
            while "live" not in body:
                body += await asyncio.wait_for(chunks.__anext__(), 10)
        finally:
            await chunks.aclose()
        ids = re.findall(r"^id: (\S+)$", body, re.MULTILINE)
        return ids, body

    ids, body = async_to_sync(ids_sent)()
    assert [body.count(f"caught up {n}") for n in range(3)] + [body.count("live")] == [1, 1, 1, 1]
    assert len(ids) == len(set(ids)) == 4
    assert reads[1] == int(ids[2].rsplit(":", 1)[1]), "the second read did not start after the first"


@pytest.mark.parametrize("limit", [3, None])
def test_stream_requests_are_set_up_so_many_at_once(settings, limit):
    """Browsers come back all at once after a restart: each process sets up at most
    ``ASYNC_DOWNLOADS_STREAM_OPENINGS`` of their requests at a time, the others in turn."""
    settings.ASYNC_DOWNLOADS_STREAM_OPENINGS = limit
    inside, most, done = 0, 0, []

    async def opening(n):
        nonlocal inside, most
        async with stream_view._openings():
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.01)
            inside -= 1
        done.append(n)

    async def burst():
        await asyncio.gather(*(opening(n) for n in range(20)))

    asyncio.run(burst())
    assert sorted(done) == list(range(20))
    assert most == (limit or 20)

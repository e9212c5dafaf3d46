"""Abuse of the live endpoints (issue 6): the event stream, read from a real uvicorn
process, GRIP mode's stream view, and the WebSocket consumer, through channels'
WebsocketCommunicator.

As in tests/test_abuse.py: Bob owns the downloads, Alice (or nobody) attacks, and
each answer is the one the table names, carries nothing of Bob's, and leaves Bob's
downloads as they were.
"""

import uuid
from contextlib import contextmanager
from urllib.parse import quote, urlencode

import httpx
import pytest
from django.test import Client

from async_downloads import cache, events, sse
from async_downloads.shortcuts import init_generic_csv_download
from tests.sse_client import StreamReader, session_cookies
from tests.test_abuse import MALFORMED_KEYS, alices, bobs  # noqa: F401 (fixtures: the same Alice and Bob)
from tests.test_grip import control_port, grip_mode, grip_sig  # noqa: F401 (fixtures: GRIP mode, a control port)
from tests.test_ws import TIMEOUT, connected, run, signed_in, socket
from tests.testapp.tasks import queued_elsewhere

pytestmark = pytest.mark.django_db(transaction=True)

EVENTS = "/async_downloads/events/"


def assert_nothing_of(bobs, text):
    assert [trace for trace in bobs.traces() if trace in text] == []


# ---------------------------------------------------------------- the event stream


def channel_id(user, value):
    return f"{quote(sse.channel_for(user.pk))}:{value}"


# What Alice sends, as (query, headers), for each case that reaches the stream view
# signed in; the stream must answer with Alice's own events only, or refuse with 400.
STREAMED = {
    "other_user-channel": lambda alice, bobs: ({"channel": sse.channel_for(bobs.user.pk)}, {}),
    "other_user-last-event-id": lambda alice, bobs: ({"lastEventId": channel_id(bobs.user, 0)}, {}),
    "other_user-key": lambda alice, bobs: ({"download_key": bobs.keys["running"]}, {}),
    "unknown-channel": lambda alice, bobs: ({"lastEventId": f"{sse.channel_for(10**9)}:1"}, {}),
    "unknown-key": lambda alice, bobs: ({"download_key": str(uuid.uuid4())}, {}),
}
REFUSED = {
    **{f"malformed-{name}": (lambda value: lambda alice, bobs: ({"lastEventId": value}, {}))(value)  # noqa: B023
       for name, value in MALFORMED_KEYS.items()},
    "malformed-nul": lambda alice, bobs: ({"lastEventId": "\x00"}, {}),
    "malformed-not-a-number": lambda alice, bobs: ({"lastEventId": channel_id(alice, "abc")}, {}),
    "malformed-negative": lambda alice, bobs: ({"lastEventId": channel_id(alice, -5)}, {}),
    "malformed-huge-number": lambda alice, bobs: ({"lastEventId": channel_id(alice, "9" * 5000)}, {}),
    "malformed-header": lambda alice, bobs: ({}, {"Last-Event-ID": "../../etc/passwd"}),
    "malformed-es-meta": lambda alice, bobs: ({"es-meta": "not.a.token"}, {}),
    "malformed-recover": lambda alice, bobs: ({"recover": "true"}, {}),
    "storage_path": lambda alice, bobs: ({"lastEventId": bobs.record("complete")["filepath"]}, {}),
}


@contextmanager
def stream(url, user, headers=None, wake=None):
    """A StreamReader of ``user``'s; on leaving, one more event for download ``wake``
    lets the reader see it was stopped and hang up (else the server waits for it when stopping)."""
    with StreamReader(url, session_cookies(user), headers) as reader:
        yield reader
    events.download_changed(cache.get_download(wake), events.UPDATED)


def request_status(method, url, cookies=None, headers=None):
    """Status and body of a request that must not open a stream."""
    with (
        httpx.Client(cookies=cookies or {}, timeout=httpx.Timeout(5)) as client,
        client.stream(method, url, headers=headers or {}) as response,
    ):
        assert "text/event-stream" not in response.headers.get("content-type", "")
        return response.status_code, response.read().decode()


@pytest.fixture
def csrf(web_server, alice):
    """Alice's session cookies with a CSRF cookie, and the header that goes with it."""
    cookies = session_cookies(alice)
    token = httpx.get(f"{web_server}/login/", cookies=cookies, timeout=5).cookies["csrftoken"]
    return {**cookies, "csrftoken": token}, {"X-CSRFToken": token}


class TestEventStream:
    @pytest.mark.parametrize("case", list(STREAMED))
    def test_alice_gets_only_her_own_events(self, web_server, alice, alices, bobs, case):
        query, headers = STREAMED[case](alice, bobs)
        url = f"{web_server}{EVENTS}?{urlencode(query)}"
        with stream(url, alice, headers, wake=alices) as reader:
            assert reader.status == 200
            events.download_changed(bobs.record("running"), events.UPDATED)
            cache.set_percentage(alices, 30)
            received = [reader.next()] + reader.drain(wait=0.3)
        # Bob's stored events would have been replayed first.
        assert f'id="download-{alices}"' in received[0]["data"]
        assert_nothing_of(bobs, "".join(event["data"] for event in received))
        assert bobs.snapshot() == bobs.before

    @pytest.mark.parametrize("case", list(REFUSED))
    def test_a_malformed_request_is_400(self, web_server, alice, bobs, case):
        query, headers = REFUSED[case](alice, bobs)
        url = f"{web_server}{EVENTS}?{urlencode(query)}"
        status, body = request_status("GET", url, session_cookies(alice), headers)
        assert status == 400
        assert_nothing_of(bobs, body)

    def test_signed_out_is_403(self, web_server, bobs):
        query = urlencode({"channel": sse.channel_for(bobs.user.pk)})
        status, body = request_status("GET", f"{web_server}{EVENTS}?{query}")
        assert status == 403
        assert_nothing_of(bobs, body)

    def test_a_post_without_csrf_token_is_403(self, web_server, alice, bobs):
        assert request_status("POST", f"{web_server}{EVENTS}", session_cookies(alice))[0] == 403

    @pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "POST", "PUT", "DELETE"])
    def test_any_method_but_get_is_405(self, web_server, csrf, bobs, method):
        cookies, headers = csrf
        status, _ = request_status(method, f"{web_server}{EVENTS}", cookies, headers)
        assert status == 405

    def test_a_name_cannot_break_the_event_framing(self, web_server, alice):
        _, key = cache.init_download(alice, "a.csv")
        url = f"{web_server}{EVENTS}"
        with stream(url, alice, wake=key) as reader:
            hostile = "x\r\n\r\nevent: stream-error\ndata: <img src=x onerror=alert(1)>\n\n"
            cache.init_download(alice, "b.csv", name=hostile)
            cache.set_percentage(key, 10)
            first, second = reader.next(), reader.next()
            assert reader.drain("stream-error", wait=0.3) == []
        assert "event: stream-error data: &lt;img src=x onerror=alert(1)&gt;" in first["data"]
        assert "<img" not in first["data"] and "\n" not in first["data"]
        assert f'id="download-{key}"' in second["data"]


class TestHeldEventStream:
    """The same cases against GRIP mode's stream view (``events/held/``), through the proxy's
    signature, in process: it answers at once, so the answer is the whole of what Alice gets."""

    HELD = "/async_downloads/events/held/"

    def answer(self, client, query, headers):
        extra = {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items()}
        return client.get(f"{self.HELD}?{urlencode(query)}", HTTP_GRIP_SIG=grip_sig(), **extra)

    @pytest.mark.parametrize("case", list(STREAMED))
    def test_alice_gets_only_her_own_events(self, grip_mode, client_for, alice, alices, bobs, case):
        events.download_changed(bobs.record("running"), events.UPDATED)  # stored: it would be replayed
        query, headers = STREAMED[case](alice, bobs)
        response = self.answer(client_for(alice), query, headers)
        assert response.status_code == 200
        assert response["Grip-Channel"] == f"events-{quote(sse.channel_for(alice.pk))}"
        assert_nothing_of(bobs, response.content.decode())
        assert bobs.snapshot() == bobs.before

    # A next link of an earlier hold has recover=true: through the proxy, that is not malformed.
    @pytest.mark.parametrize("case", [case for case in REFUSED if case != "malformed-recover"])
    def test_a_malformed_request_is_400(self, grip_mode, client_for, alice, bobs, case):
        query, headers = REFUSED[case](alice, bobs)
        response = self.answer(client_for(alice), query, headers)
        assert response.status_code == 400
        assert "Grip-Hold" not in response
        assert_nothing_of(bobs, response.content.decode())

    def test_signed_out_is_403(self, grip_mode, bobs):
        response = self.answer(Client(), {"channel": sse.channel_for(bobs.user.pk)}, {})
        assert response.status_code == 403
        assert_nothing_of(bobs, response.content.decode())

    @pytest.mark.parametrize("method", ["head", "options", "post", "put", "delete"])
    def test_any_method_but_get_is_refused(self, grip_mode, client_for, alice, method):
        response = getattr(client_for(alice), method)(self.HELD, HTTP_GRIP_SIG=grip_sig())
        assert response.status_code in (403, 405)  # POST & co. without a CSRF token: 403 first
        assert "Grip-Hold" not in response


# ---------------------------------------------------------------- the WebSocket consumer


# The actions a page may send, each with the download of Bob's it would act on.
ACTIONS = {"clear": "complete", "cancel": "running"}
SOCKET_KEYS = {
    "other_user-key": lambda record: record["key"],
    "other_user-key-in-capitals": lambda record: record["key"].upper(),
    "unknown": lambda record: str(uuid.uuid4()),
    **{f"malformed-{name}": (lambda value: lambda record: value)(value)  # noqa: B023
       for name, value in MALFORMED_KEYS.items()},
    "malformed-nul": lambda record: "\x00",
    "storage_path": lambda record: record["filepath"],
}
# Actions a page may not ask for: the socket's wrong methods.
NOT_ACTIONS = ["retry", "download", "clear_download", "cancel_download", "get_downloads", "__class__", ""]


def send_then_clear_own(cookie, message, own_key):
    """Send ``message``, then clear one of Alice's own; return the centre sent on connect and
    the first message after: the answer to the clear, unless ``message`` was answered."""

    async def body():
        communicator = socket(cookie)
        centre = await connected(communicator)
        await communicator.send_json_to(message)
        await communicator.send_json_to({"action": "clear", "download_key": own_key})
        reply = await communicator.receive_from(timeout=TIMEOUT)
        await communicator.disconnect()
        return centre, reply

    return run(body)


@pytest.mark.usefixtures("ws_mode")
class TestSocket:
    @pytest.mark.parametrize("action", list(ACTIONS))
    @pytest.mark.parametrize("case", list(SOCKET_KEYS))
    def test_an_action_on_what_is_not_alices_is_ignored(self, alice, alices, bobs, action, case):
        key = SOCKET_KEYS[case](bobs.record(ACTIONS[action]))
        centre, reply = send_then_clear_own(signed_in(alice), {"action": action, "download_key": key}, alices)
        assert alices in centre and alices not in reply and "No downloads yet." in reply
        assert_nothing_of(bobs, centre + reply)
        assert bobs.snapshot() == bobs.before

    @pytest.mark.parametrize("action", NOT_ACTIONS)
    def test_an_action_that_is_not_offered_is_ignored(self, alice, media, action):
        _, decoy = cache.init_download(alice, "decoy.csv")
        _, failed = init_generic_csv_download(queued_elsewhere, alice, "Retryable")
        cache.set_error(failed, "Failed.")
        before = cache.get_download(failed)
        centre, reply = send_then_clear_own(signed_in(alice), {"action": action, "download_key": failed}, decoy)
        assert decoy not in reply and failed in reply
        assert cache.get_download(failed) == before
        assert [d["key"] for d in cache.get_downloads(alice)] == [failed]

    @pytest.mark.parametrize("case", ["signed_out", "other_site"])
    def test_a_socket_without_a_session_of_this_site_is_refused(self, settings, bob, bobs, case):
        """Its no-login and no-CSRF cases: the socket never opens, so nothing can be sent."""
        settings.ALLOWED_HOSTS = ["downloads.example.com"]
        cookie, origin = (None, None) if case == "signed_out" else (signed_in(bob), "https://evil.example.net")

        async def body():
            return await socket(cookie, origin=origin).connect(timeout=TIMEOUT)

        accepted, _ = run(body)
        assert not accepted
        assert bobs.snapshot() == bobs.before

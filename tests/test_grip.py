"""GRIP mode of the SSE transport, in process: the stream view's answers, the signed next links of
earlier answers, publishing to the proxies' control ports (real HTTP servers), the look at a channel
a second after its stream was held, the channel manager as a gate, the checks.

tests/test_pushpin.py runs the same mode behind a real Pushpin with gunicorn's sync workers.
"""

import http.server
import json
import threading
import time

import jwt
import pytest
from django.core.management import call_command
from django.test import Client, RequestFactory
from django.urls import reverse
from django_eventstream import views as eventstream_views
from django_grip import GripMiddleware

from async_downloads import cache, channels, checks, events, grip, sse, watch
from async_downloads.channels import channel_for
from tests.waits import wait_until

pytestmark = pytest.mark.django_db

KEY = "grip-test-key-9d2c7e41b0a84f6c93e5d17a2b60f8c4"
EVENTS = "/async_downloads/events/"
HELD = "/async_downloads/events/held/"  # the sync view the centre connects to in GRIP mode


def grip_sig(key=KEY, iss="pushpin", exp_in=3600):
    return jwt.encode({"iss": iss, "exp": int(time.time()) + exp_in}, key, algorithm="HS256")


class ControlPort:
    """A real HTTP server standing in for a proxy's control port: it keeps what it is sent."""

    def __init__(self, status=200, delay=0.0):
        self.received = []
        port = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(delay)
                port.received.append((self.path, dict(self.headers), json.loads(body)))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def control_port():
    port = ControlPort()
    yield port
    port.close()


@pytest.fixture
def grip_mode(settings, control_port):
    settings.MIDDLEWARE = ["django_grip.GripMiddleware", *settings.MIDDLEWARE]
    settings.GRIP_PROXIES = [{"control_uri": control_port.uri, "key": KEY}]
    return control_port


def through_proxy(client, path=EVENTS, sig=None, **headers):
    return client.get(path, HTTP_GRIP_SIG=sig or grip_sig(), **headers)


def sse_events(response):
    """The events of a held stream's answer, as (id, data) pairs."""
    found = []
    for block in response.content.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
        if fields.get("event") == "downloads":
            found.append((fields.get("id"), fields["data"]))
    return found


def published(port):
    """The SSE content of each item the control port was sent."""
    return [item["formats"]["http-stream"]["content"] for _, _, body in port.received for item in body["items"]]


def es_meta(user, exp_in=3600, key=None, iss="es"):
    from django.conf import settings

    claim = {"iss": iss, "exp": int(time.time()) + exp_in, "channels": [channel_for(user.pk)], "user": str(user.pk)}
    return jwt.encode(claim, key or settings.SECRET_KEY.encode(), algorithm="HS256")


class TestStreamRequests:
    """The sync view, and the async one (pages rendered before GRIP mode, next links) as the same."""

    @pytest.fixture(params=[HELD, EVENTS])
    def url(self, request):
        return request.param

    def test_through_the_proxy_the_answer_comes_at_once_with_the_users_channel(self, url, grip_mode, client_for, alice):
        response = through_proxy(client_for(alice), url)
        assert response.status_code == 200
        assert response["Grip-Hold"] == "stream"
        assert response["Grip-Channel"] == f"events-{channel_for(alice.pk)}"  # no prev-id: nothing to recover
        assert "Grip-Link" not in response  # Pushpin never asks again about this stream
        assert b"event: stream-open" in response.content

    def test_a_page_coming_back_gets_what_it_missed_with_ids_to_come_back_with(self, url, grip_mode, client_for, alice):
        channel = channel_for(alice.pk)
        storage = sse.EventStorage()
        seen = storage.append_event(channel, "downloads", "<p>seen</p>")
        missed = [storage.append_event(channel, "downloads", f"<p>missed {n}: 50%</p>") for n in (1, 2)]
        response = through_proxy(client_for(alice), url, HTTP_LAST_EVENT_ID=f"{channel}:{seen.id}")
        assert sse_events(response) == [(f"{channel}:{event.id}", event.data) for event in missed]
        assert "Grip-Link" not in response

    def test_a_page_too_far_behind_gets_its_whole_centre(self, url, grip_mode, client_for, alice):
        channel = channel_for(alice.pk)
        _, key = cache.init_download(alice, "report.csv")
        storage = sse.EventStorage()
        first = storage.append_event(channel, "downloads", "<p>old</p>")
        for n in range(120):  # more than django-eventstream reads at once
            storage.append_event(channel, "downloads", f"<p>{n}</p>")
        response = through_proxy(client_for(alice), url, HTTP_LAST_EVENT_ID=f"{channel}:{first.id - 1}")
        [(event_id, data)] = sse_events(response)
        assert event_id == f"{channel}:{storage.get_current_id(channel)}"
        assert 'id="async-downloads-list"' in data and key in data

    def test_a_direct_request_is_refused_at_once(self, url, grip_mode, client_for, alice):
        response = client_for(alice).get(url)
        assert response.status_code == 421
        assert "Grip-Hold" not in response
        assert "GRIP proxy" in response.content.decode()

    @pytest.mark.parametrize("sig", [grip_sig(key="forged-" + "k" * 40), grip_sig(exp_in=-10), "not-a-jwt", ""])
    def test_a_forged_expired_or_empty_signature_is_a_direct_request(self, url, grip_mode, client_for, alice, sig):
        response = client_for(alice).get(url, HTTP_GRIP_SIG=sig)
        assert response.status_code == 421

    def test_signed_out_without_es_meta(self, url, grip_mode):
        assert through_proxy(Client(), url).status_code == 403

    def test_only_get(self, url, grip_mode, client_for, alice):
        assert client_for(alice).post(url, HTTP_GRIP_SIG=grip_sig()).status_code == 405


class TestNextLinks:
    """Next links of streams held by django-eventstream's own answers (as before GRIP mode held them
    without one), which Pushpin still follows: no session, the user in the signed es-meta."""

    def test_the_next_link_serves_the_user_it_names(self, grip_mode, client_for, alice, bob):
        path = f"{EVENTS}?link=next&recover=true&es-meta={es_meta(alice)}"
        response = through_proxy(Client(), path)
        assert response.status_code == 200
        assert response["Grip-Hold"] == "stream"
        assert response["Grip-Channel"] == f"events-{channel_for(alice.pk)}"
        assert "Grip-Link" not in response  # from now on the stream is held as any other

    def test_a_recovery_replays_what_was_missed_even_after_es_meta_expired(self, grip_mode, client_for, alice, bob):
        channel = channel_for(alice.pk)
        storage = sse.EventStorage()
        seen = storage.append_event(channel, "downloads", "<p>seen</p>")
        storage.append_event(channel, "downloads", "<p>missed one</p>")
        storage.append_event(channel, "downloads", "<p>missed two</p>")
        storage.append_event(channel_for(bob.pk), "downloads", "<p>bob's</p>")
        path = f"{EVENTS}?link=next&recover=true&es-meta={es_meta(alice, exp_in=-7200)}"
        response = through_proxy(Client(), path, HTTP_GRIP_LAST=f"events-{channel}; last-id={seen.id}")
        assert response.status_code == 200
        assert [data for _, data in sse_events(response)] == ["<p>missed one</p>", "<p>missed two</p>"]

    def test_es_meta_of_another_user_than_the_session(self, grip_mode, client_for, alice, bob):
        response = through_proxy(client_for(alice), f"{EVENTS}?es-meta={es_meta(bob)}")
        assert response.status_code == 403

    @pytest.mark.parametrize("token", ["garbage", "x.y.z"])
    def test_malformed_es_meta(self, grip_mode, token):
        assert through_proxy(Client(), f"{EVENTS}?es-meta={token}").status_code == 400

    def test_es_meta_signed_with_another_key_or_issuer(self, grip_mode, alice):
        other_site = es_meta(alice, key=b"another-site-" + b"k" * 40)
        assert through_proxy(Client(), f"{EVENTS}?es-meta={other_site}").status_code == 400
        assert through_proxy(Client(), f"{EVENTS}?es-meta={es_meta(alice, iss='other')}").status_code == 400

    def test_es_meta_of_a_deactivated_or_deleted_user(self, grip_mode, alice, bob):
        alice.is_active = False
        alice.save()
        assert through_proxy(Client(), f"{EVENTS}?es-meta={es_meta(alice)}").status_code == 403
        token = es_meta(bob)
        bob.delete()
        assert through_proxy(Client(), f"{EVENTS}?es-meta={token}").status_code == 403

    def test_es_meta_without_the_proxys_signature(self, grip_mode, alice):
        assert Client().get(f"{EVENTS}?es-meta={es_meta(alice)}").status_code == 421

    def test_anonymous_es_meta(self, grip_mode):
        from django.conf import settings

        token = jwt.encode({"iss": "es", "exp": int(time.time()) + 60, "channels": ["x"], "user": "anonymous"},
                           settings.SECRET_KEY.encode(), algorithm="HS256")
        assert through_proxy(Client(), f"{EVENTS}?es-meta={token}").status_code == 400


class TestPublishing:
    def test_a_change_is_published_to_the_users_grip_channel(self, grip_mode, alice):
        _, key = cache.init_download(alice, "report.csv")
        cache.set_percentage(key, 40)
        paths = {path for path, _, _ in grip_mode.received}
        assert paths == {"/publish/"}
        items = [item for _, _, body in grip_mode.received for item in body["items"]]
        assert {item["channel"] for item in items} == {f"events-{channel_for(alice.pk)}"}
        last = items[-1]
        assert "prev-id" not in last and "id" not in last  # Pushpin holds nothing back for a missing one
        stream = last["formats"]["http-stream"]
        assert "content-filters" not in stream
        channel = channel_for(alice.pk)
        current = sse.EventStorage().get_current_id(channel)
        assert stream["content"].startswith(f"event: downloads\nid: {channel}:{current}\ndata: ")
        assert 'aria-valuenow="40"' in stream["content"]
        # The stored event is the one published: a page coming back gets it again.
        stored = sse.EventStorage().get_events(channel, current - 1)[0]
        assert f"data: {stored.data}\n" in stream["content"]

    def test_the_key_signs_a_jwt_when_the_proxy_has_an_issuer(self, settings, grip_mode, alice):
        settings.GRIP_PROXIES = [{"control_uri": grip_mode.uri, "key": KEY, "control_iss": "site"}]
        sse.send(alice.pk, "<p>hi</p>")
        auth = grip_mode.received[-1][1]["Authorization"]
        assert jwt.decode(auth.removeprefix("Bearer "), KEY, algorithms=["HS256"])["iss"] == "site"

    def test_every_proxy_gets_it_and_a_failing_one_is_named(self, settings, grip_mode, alice):
        broken = ControlPort(status=500)
        try:
            settings.GRIP_PROXIES = [{"control_uri": uri, "key": KEY} for uri in (broken.uri, grip_mode.uri)]
            with pytest.raises(grip.PublishError, match=broken.uri):
                sse.send(alice.pk, "<p>hi</p>")
            assert grip_mode.received and broken.received
        finally:
            broken.close()

    def test_a_proxy_that_does_not_answer_costs_the_timeout_only(self, settings, grip_mode, alice):
        slow = ControlPort(delay=3)
        try:
            settings.GRIP_PROXIES = [{"control_uri": slow.uri, "key": KEY}]
            settings.ASYNC_DOWNLOADS_GRIP_PUBLISH_TIMEOUT = 0.3
            start = time.monotonic()
            with pytest.raises(grip.PublishError):
                sse.send(alice.pk, "<p>hi</p>")
            assert time.monotonic() - start < 2
        finally:
            slow.close()

    def test_a_failed_publish_never_fails_the_task_and_is_resent(self, settings, grip_mode, alice, caplog):
        _, key = cache.init_download(alice, "report.csv")
        settings.GRIP_PROXIES = [{"control_uri": "http://127.0.0.1:9", "key": KEY}]  # nothing listens
        cache.set_percentage(key, 10)  # does not raise
        assert "will resend" in caplog.text
        before = len(grip_mode.received)
        settings.GRIP_PROXIES = [{"control_uri": grip_mode.uri, "key": KEY}]

        def resent():
            for _, _, body in grip_mode.received[before:]:
                content = body["items"][0]["formats"]["http-stream"]["content"]
                if key in content:
                    return content

        deadline = time.monotonic() + 10
        while not resent() and time.monotonic() < deadline:
            time.sleep(0.1)
        content = resent()
        assert content and 'id="async-downloads-list"' in content, content
        assert 'aria-valuenow="10"' in content, content


class TestCatchUp:
    """What is published while Pushpin subscribes a stream reaches it a second later."""

    @pytest.fixture(autouse=True)
    def soon(self, monkeypatch):
        monkeypatch.setattr(events, "CATCH_UP_DELAY", 0.3)

    def test_an_event_published_meanwhile_brings_the_whole_centre(self, grip_mode, client_for, alice):
        _, key = cache.init_download(alice, "report.csv")
        through_proxy(client_for(alice))
        before = len(grip_mode.received)
        cache.set_percentage(key, 30)  # as if Pushpin had no subscriber yet
        wait_until(lambda: any('id="async-downloads-list"' in c for c in published(grip_mode)[before:]), timeout=5)
        [centre] = [c for c in published(grip_mode)[before:] if 'id="async-downloads-list"' in c]
        assert 'aria-valuenow="30"' in centre and f"id: {channel_for(alice.pk)}:" in centre

    def test_streams_opened_one_after_another_are_looked_at_after_the_last(self, grip_mode, client_for, alice):
        _, key = cache.init_download(alice, "report.csv")
        through_proxy(client_for(alice))
        time.sleep(0.2)
        through_proxy(client_for(alice))  # a second tab: its own second counts
        [(when, _, _)] = events._catch_ups.due.values()
        assert when - time.monotonic() > events.CATCH_UP_DELAY - 0.1

    def test_a_quiet_channel_costs_one_look(self, grip_mode, client_for, alice):
        cache.init_download(alice, "report.csv")
        before = len(grip_mode.received)
        for _ in range(3):
            through_proxy(client_for(alice))
        time.sleep(1)
        assert grip_mode.received[before:] == []

    def test_checks_due_at_exit_are_made_then(self, grip_mode, client_for, alice, monkeypatch):
        monkeypatch.setattr(events, "CATCH_UP_DELAY", 60)
        _, key = cache.init_download(alice, "report.csv")
        through_proxy(client_for(alice))
        cache.set_percentage(key, 60)
        before = len(grip_mode.received)
        events._catch_ups.flush()
        assert any('aria-valuenow="60"' in c and 'id="async-downloads-list"' in c
                   for c in published(grip_mode)[before:])


class TestStallSweep:
    """The proxy holds the pages' streams: a user is swept here while any of their downloads is active."""

    def test_a_held_stream_has_its_user_swept(self, grip_mode, client_for, alice):
        cache.init_download(alice, "orders.csv")
        assert through_proxy(client_for(alice), HELD).status_code == 200
        assert list(watch.watching.held) == [alice.pk]

    def test_a_download_failed_as_the_stream_opens_is_in_the_answer(self, grip_mode, client_for, alice, settings):
        """Published before the proxy subscribed the stream, its failure would reach no page otherwise."""
        _, key = cache.init_download(alice, "orders.csv")
        cache.set_percentage(key, 30)
        settings.ASYNC_DOWNLOADS_STALL_TIMEOUT = 0.2
        time.sleep(0.3)
        (_, centre), = sse_events(through_proxy(client_for(alice), HELD))
        assert f'id="download-{key}"' in centre and "The export stopped responding." in centre

    def test_a_download_created_has_its_owner_swept(self, grip_mode, alice):
        cache.init_download(alice, "orders.csv")
        assert list(watch.watching.held) == [alice.pk]

    def test_not_without_grip(self, alice):
        cache.init_download(alice, "orders.csv")
        assert not watch.watching.held


class TestChannelManagerAsAGate:
    """django-eventstream's own view, should a site mount it, relies on the channel manager alone."""

    def request(self, user, channel):
        request = RequestFactory().get("/events/", {"channel": channel}, HTTP_GRIP_SIG=grip_sig())
        request.user = user
        return GripMiddleware(eventstream_views.events)(request)

    def test_directly(self, alice, bob):
        from django.contrib.auth.models import AnonymousUser

        manager = sse.ChannelManager()
        assert manager.can_read_channel(alice, channel_for(alice.pk))
        assert not manager.can_read_channel(bob, channel_for(alice.pk))
        assert not manager.can_read_channel(AnonymousUser(), channel_for(alice.pk))
        assert not manager.can_read_channel(None, channel_for(alice.pk))
        forged = channels.channel_prefix() + f"{alice.pk}-" + "0" * channels.DIGEST_LENGTH
        assert not manager.can_read_channel(alice, forged)

    def test_through_django_eventstreams_own_view(self, grip_mode, alice, bob):
        from django.contrib.auth.models import AnonymousUser

        own = self.request(alice, channel_for(alice.pk))
        assert own.status_code == 200 and own["Grip-Hold"] == "stream"
        for user in (bob, AnonymousUser()):
            refused = self.request(user, channel_for(alice.pk))
            assert "Grip-Hold" not in refused
            assert b"event: stream-error" in refused.content and b"forbidden" in refused.content


class TestChecks:
    def ids(self):
        return {message.id for message in checks.check_grip() + checks.check_event_bus()}

    def test_a_good_configuration(self, grip_mode):
        assert self.ids() == set()

    def test_grip_proxies_are_an_event_bus(self, grip_mode, settings):
        del settings.EVENTSTREAM_REDIS
        assert "async_downloads.W002" not in self.ids()

    def test_grip_on_without_proxies(self, settings):
        settings.ASYNC_DOWNLOADS_GRIP = True
        settings.MIDDLEWARE = ["django_grip.GripMiddleware", *settings.MIDDLEWARE]
        assert self.ids() == {"async_downloads.E006"}

    def test_a_proxy_without_a_key_or_with_the_default_one(self, grip_mode, settings):
        settings.GRIP_PROXIES = [{"control_uri": "http://127.0.0.1:5561"}]
        assert self.ids() == {"async_downloads.E007"}
        settings.GRIP_PROXIES = [{"control_uri": "http://127.0.0.1:5561", "key": "changeme"}]
        assert self.ids() == {"async_downloads.E008"}
        settings.GRIP_PROXIES = []
        settings.GRIP_URL = "http://127.0.0.1:5561?key=changeme"
        assert self.ids() == {"async_downloads.E008"}

    def test_a_proxy_reached_over_zeromq_only_gets_no_events(self, grip_mode, settings):
        settings.GRIP_PROXIES = [*settings.GRIP_PROXIES, {"control_zmq_uri": "tcp://127.0.0.1:5560", "key": KEY}]
        assert self.ids() == {"async_downloads.W010"}

    def test_the_middleware_missing_or_not_first(self, grip_mode, settings):
        settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if m != "django_grip.GripMiddleware"]
        assert self.ids() == {"async_downloads.E009"}
        settings.MIDDLEWARE = [*settings.MIDDLEWARE, "django_grip.GripMiddleware"]
        assert self.ids() == {"async_downloads.W006"}

    def test_reported_by_manage_py_check(self, grip_mode, settings, capsys):
        settings.GRIP_PROXIES = [{"control_uri": "http://127.0.0.1:5561", "key": "changeme"}]
        with pytest.raises(Exception, match="E008"):
            call_command("check")

    def test_off_when_grip_is_off(self, grip_mode, settings):
        settings.ASYNC_DOWNLOADS_GRIP = False
        settings.GRIP_PROXIES = [{"control_uri": "http://127.0.0.1:5561", "key": "changeme"}]
        assert checks.check_grip() == []


def test_the_centre_in_grip_mode_connects_to_the_sync_view(grip_mode, settings, client_for, alice):
    cache.init_download(alice, "report.csv")
    page = client_for(alice).get(reverse("home")).content.decode()
    assert f'sse-connect="{HELD}' in page
    settings.GRIP_PROXIES = []
    assert client_for(alice).get(HELD).status_code == 404  # GRIP mode off: not a stream URL


class TestIdleStreams:
    def page(self, client_for, alice):
        return client_for(alice).get(reverse("home")).content.decode()

    def test_in_grip_mode_an_idle_centre_keeps_its_stream(self, grip_mode, client_for, alice):
        page = self.page(client_for, alice)
        assert f'sse-connect="{HELD}' in page and "?idle=" not in page

    def test_finishing_the_last_download_leaves_the_stream_open(self, grip_mode, alice):
        from async_downloads import events, partials

        _, key = cache.init_download(alice, "report.csv")
        cache.cancel_download(key)
        message = partials.render_message(alice.pk, cache.get_download(key), events.CANCELLED)
        assert 'id="async-downloads-connection"' not in message

    def test_the_setting_turns_it_off_in_grip_mode(self, grip_mode, settings, client_for, alice):
        settings.ASYNC_DOWNLOADS_IDLE_STREAMS = False
        page = self.page(client_for, alice)
        assert "sse-connect" not in page and "?idle=" in page

    def test_and_on_without_grip(self, settings, client_for, alice):
        page = self.page(client_for, alice)
        assert "sse-connect" not in page and "?idle=" in page
        settings.ASYNC_DOWNLOADS_IDLE_STREAMS = True
        assert f'sse-connect="{EVENTS}' in self.page(client_for, alice)

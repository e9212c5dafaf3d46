"""WS mode: the Channels consumer on a real channels-redis layer, a real worker process, a real browser.

The socket tests go through ``tests.asgi_ws`` (the asgi.py of the README: origin
validation, ``AuthMiddlewareStack`` with a real session cookie, ``URLRouter``)
with channels' ``WebsocketCommunicator``.
"""

import asyncio
import json
import re
import subprocess
import sys
import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.template.loader import render_to_string

from async_downloads import cache, partials, ws
from async_downloads.templatetags.async_downloads import async_downloads_head
from tests.asgi_ws import application  # imported now: its origin validator reads ALLOWED_HOSTS once
from tests.processes import child_env, start_uvicorn, start_worker, stop
from tests.sse_client import session_cookies
from tests.testapp.tasks import ping, report_progress

pytestmark = pytest.mark.django_db(transaction=True)

WS_QUEUE = f"{django_settings.CELERY_TASK_DEFAULT_QUEUE}-ws"
ROUTE = "/ws/async_downloads/"
TIMEOUT = 15


@pytest.fixture(autouse=True)
def _in_ws_mode(ws_mode):
    pass


def run(coroutine_function):
    """Run an async test body (no pytest-asyncio here)."""
    return async_to_sync(coroutine_function)()


def signed_in(user):
    """The cookie header of a session of ``user`` (made before the async part: it uses the ORM)."""
    return (b"cookie", f"sessionid={session_cookies(user)['sessionid']}".encode())


@pytest.fixture
def alice_cookie(alice):
    return signed_in(alice)


@pytest.fixture
def bob_cookie(bob):
    return signed_in(bob)


def socket(cookie=None, path=ROUTE, origin=None):
    headers = []
    if cookie is not None:
        headers.append(cookie)
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return WebsocketCommunicator(application, path, headers=headers)


async def connected(communicator):
    accepted, _ = await communicator.connect(timeout=TIMEOUT)
    assert accepted
    return await communicator.receive_from(timeout=TIMEOUT)


def row(html, key):
    """The ``<li>`` of download ``key`` in a message."""
    match = re.search(rf'<li id="download-{key}".*?</li>', html, re.S)
    return match and match.group(0)


@pytest.fixture(scope="session")
def ws_worker(django_db_setup, django_db_blocker):
    """A real Celery worker process in WS mode, on a queue of its own."""
    process = start_worker(child_env(ASYNC_DOWNLOADS_TEST_WS="1"))
    try:
        ping.apply_async(queue=WS_QUEUE).get(timeout=60)
        yield process
    finally:
        stop(process)


class TestConnect:
    def test_the_current_centre_comes_first(self, alice, alice_cookie):
        _, key = cache.init_download(alice, "orders.csv")
        cache.set_percentage(key, 30)

        async def body():
            communicator = socket(alice_cookie)
            html = await connected(communicator)
            await communicator.disconnect()
            return html

        html = run(body)
        assert 'id="async-downloads-list" class="async-downloads__list" hx-swap-oob="true"' in html
        assert 'aria-valuenow="30"' in row(html, key)
        assert 'id="async-downloads-indicator"' in html and "1 download in progress" in html
        # The ws extension swaps every top-level element of a message by id: swapping the
        # connection element would open a new socket, which would get this message again.
        assert "async-downloads-connection" not in html

    def test_the_route_of_earlier_releases_with_ones_own_username(self, alice, alice_cookie):
        async def body():
            communicator = socket(alice_cookie, path="/ws/downloads/alice/")
            html = await connected(communicator)
            await communicator.disconnect()
            return html

        assert "No downloads yet." in run(body)

    @pytest.mark.parametrize("path", [ROUTE, "/ws/downloads/alice/"])
    def test_anonymous_is_refused(self, path):
        async def body():
            return await socket(None, path=path).connect(timeout=TIMEOUT)

        accepted, _ = run(body)
        assert not accepted

    def test_another_users_name_in_the_url_is_refused(self, alice, django_user_model, alice_cookie):
        django_user_model.objects.create_user("mallory", password="x")

        async def body():
            return await socket(alice_cookie, path="/ws/downloads/mallory/").connect(timeout=TIMEOUT)

        accepted, _ = run(body)
        assert not accepted

    def test_a_page_of_another_site_is_refused(self, settings, alice, alice_cookie):
        settings.ALLOWED_HOSTS = ["downloads.example.com"]

        async def body():
            foreign = await socket(alice_cookie, origin="https://evil.example.net").connect(timeout=TIMEOUT)
            own = socket(alice_cookie, origin="https://downloads.example.com")
            await connected(own)
            await own.disconnect()
            return foreign

        accepted, _ = run(body)
        assert not accepted

    def test_a_reconnecting_page_is_rebuilt_from_the_cache(self, alice, alice_cookie):
        _, key = cache.init_download(alice, "orders.csv")

        async def body():
            first = socket(alice_cookie)
            await connected(first)
            await first.disconnect()
            await sync_to_async(cache.save_download)(key, [["a"]])  # while the page is away
            second = socket(alice_cookie)
            html = await connected(second)
            await second.disconnect()
            return html

        html = run(body)
        assert f'href="/async_downloads/download/{key}/"' in row(html, key)
        assert "async-downloads__indicator--busy" not in html


    def test_connecting_fails_stalled_downloads_and_the_open_socket_is_swept(self, alice, alice_cookie, settings):
        from async_downloads import store, watch

        settings.ASYNC_DOWNLOADS_STALL_TIMEOUT = 0.4
        _, stalled = cache.init_download(alice, "stalled.csv")
        cache.set_percentage(stalled, 30)
        store.get_cache().set(stalled, {**store.read(stalled), "updated": time.time() - 3600}, 60)
        _, later = cache.init_download(alice, "later.csv")

        async def body():
            communicator = socket(alice_cookie)
            html = await connected(communicator)
            assert alice.pk in watch.watching.users()
            # Running from now on, and silent: the sweep of open sockets finds it.
            await sync_to_async(cache.set_percentage)(later, 10)
            pushed = await communicator.receive_from(timeout=TIMEOUT)
            while "later.csv failed." not in pushed:
                pushed = await communicator.receive_from(timeout=TIMEOUT)
            await communicator.disconnect()
            return html, pushed

        html, pushed = run(body)
        assert "The export stopped responding." in row(html, stalled)
        assert "The export stopped responding." in row(pushed, later)
        assert alice.pk not in watch.watching.users()

    def test_without_a_channel_layer_the_socket_is_refused(self, settings, alice_cookie):
        settings.CHANNEL_LAYERS = {}

        async def body():
            return await socket(alice_cookie).connect(timeout=TIMEOUT)

        accepted, _ = run(body)
        assert not accepted
        with pytest.raises(RuntimeError, match="needs CHANNEL_LAYERS"):
            ws.send(1, "<p></p>")

    def test_an_open_socket_keeps_its_group_membership_fresh(self, monkeypatch, redis_client, alice, alice_cookie):
        from async_downloads import ws_consumers

        monkeypatch.setattr(ws_consumers, "REJOIN_INTERVAL", 0.1)
        prefix = django_settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"]
        group_key = f"{prefix}:group:{ws.group_for(alice.pk)}"

        async def body():
            communicator = socket(alice_cookie)
            await connected(communicator)
            (_, joined), = await sync_to_async(redis_client.zrange)(group_key, 0, -1, withscores=True)
            await asyncio.sleep(0.5)
            (_, rejoined), = await sync_to_async(redis_client.zrange)(group_key, 0, -1, withscores=True)
            await communicator.disconnect()
            return joined, rejoined

        joined, rejoined = run(body)
        assert rejoined > joined
        assert redis_client.zcard(group_key) == 0  # left the group on disconnect


class TestDelivery:
    def test_updates_from_a_worker_process_reach_only_their_user(self, ws_worker, alice, bob, alice_cookie, bob_cookie):
        _, key = cache.init_download(alice, "report.csv")
        _, bob_key = cache.init_download(bob, "bob.csv")

        async def body():
            alice_socket, bob_socket = socket(alice_cookie), socket(bob_cookie)
            await connected(alice_socket)
            assert bob_key in await connected(bob_socket)
            report_progress.apply_async((key,), {"steps": [25, 50, 75], "pause": 0}, queue=WS_QUEUE)
            # Running once the worker starts the task, then each report, then the file.
            messages = [await alice_socket.receive_from(timeout=TIMEOUT) for _ in range(5)]
            assert await bob_socket.receive_nothing(timeout=0.5)
            await alice_socket.disconnect()
            await bob_socket.disconnect()
            return messages

        messages = run(body)
        for percentage, message in zip((0, 25, 50, 75), messages[:4], strict=True):
            assert message.startswith(f'<li id="download-{key}"')
            assert f'aria-valuenow="{percentage}"' in message
        assert "report.csv is ready to download." in messages[4]
        assert not any(bob_key in message for message in messages)

    def test_bob_gets_his_own_while_alice_is_connected(self, ws_worker, alice, bob, alice_cookie, bob_cookie):
        _, key = cache.init_download(alice, "report.csv")
        _, bob_key = cache.init_download(bob, "bob.csv")

        async def body():
            alice_socket, bob_socket = socket(alice_cookie), socket(bob_cookie)
            await connected(alice_socket)
            await connected(bob_socket)
            report_progress.apply_async((bob_key,), {"steps": [40], "pause": 0}, queue=WS_QUEUE)
            started = await bob_socket.receive_from(timeout=TIMEOUT)
            assert 'aria-valuenow="0"' in row(started, bob_key)
            first = await bob_socket.receive_from(timeout=TIMEOUT)
            assert await alice_socket.receive_nothing(timeout=1)
            await alice_socket.disconnect()
            await bob_socket.disconnect()
            return first

        assert 'aria-valuenow="40"' in row(run(body), bob_key)
        assert cache.get_download(key)["state"] == "pending"


class TestClear:
    def test_clear_through_the_socket(self, alice, alice_cookie):
        _, key = cache.init_download(alice, "orders.csv")

        async def body():
            communicator = socket(alice_cookie)
            await connected(communicator)
            # What htmx's ws-send sends: the element's values, plus its headers.
            await communicator.send_json_to({"action": "clear", "download_key": key, "HEADERS": {"HX-Request": "true"}})
            html = await communicator.receive_from(timeout=TIMEOUT)
            await communicator.disconnect()
            return html

        html = run(body)
        assert cache.get_download(key) is None
        assert "No downloads yet." in html and row(html, key) is None

    def test_only_ones_own_download_and_nonsense_is_ignored(self, alice, bob, alice_cookie):
        _, key = cache.init_download(alice, "orders.csv")
        _, bob_key = cache.init_download(bob, "bob.csv")
        nonsense = ["not json", "[1, 2]", '"clear"', "{}", '{"action": ["clear"]}', '{"action": "delete_all"}',
                    json.dumps({"action": "clear", "download_key": "../../etc/passwd"}),
                    json.dumps({"action": "clear", "download_key": None}),
                    json.dumps({"action": "clear", "download_key": bob_key})]

        async def body():
            communicator = socket(alice_cookie)
            await connected(communicator)
            for text in nonsense:
                await communicator.send_to(text_data=text)
            await communicator.send_to(bytes_data=b"\x00\xff")
            assert await communicator.receive_nothing(timeout=0.5)
            await communicator.send_json_to({"action": "clear", "download_key": key})  # still serving
            html = await communicator.receive_from(timeout=TIMEOUT)
            await communicator.disconnect()
            return html

        html = run(body)
        assert "No downloads yet." in html
        assert cache.get_download(bob_key)["state"] == "pending"


class TestGroups:
    @pytest.mark.parametrize("pk", [1, 10**30, "bob+test@example.com", "ünïcødé", "a/b c:d", "f" * 300])
    def test_group_names_are_valid_for_any_pk(self, pk):
        name = ws.group_for(pk)
        assert re.fullmatch(r"[A-Za-z0-9_.-]+", name) and len(name) < 100

    @pytest.mark.parametrize("prefix", ["downloads", "my site/downloads!", "é" * 200])
    def test_any_prefix_gives_valid_distinct_names(self, settings, prefix):
        settings.ASYNC_DOWNLOADS_WS_CHANNEL_NAME = prefix
        names = {ws.group_for(pk) for pk in (1, 2, "1", "a@b", "a+b")}
        assert len(names) == 4  # 1 and "1" are the same user
        assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", name) and len(name) < 100 for name in names)

    def test_sites_sharing_redis_get_different_groups(self, settings):
        name = ws.group_for(1)
        settings.SECRET_KEY = "another site"
        assert ws.group_for(1) != name


class TestTemplates:
    def test_the_centre_stays_connected(self, alice):
        centre = partials.centre_context(alice.pk, preserve=True)
        html = render_to_string("async_downloads/download_centre.html", {"centre": centre})
        assert 'hx-ext="ws" ws-connect="/ws/async_downloads/" hx-preserve="true"' in html
        assert "sse-connect" not in html and "hx-get" not in html

    def test_an_absolute_url(self, settings, alice):
        settings.ASYNC_DOWNLOADS_WS_URL = "wss://push.example.com/ws/async_downloads/"
        html = render_to_string("async_downloads/download_centre.html", {"centre": partials.centre_context(alice.pk)})
        assert 'ws-connect="wss://push.example.com/ws/async_downloads/"' in html

    def test_finished_messages_keep_the_socket(self, alice):
        _, key = cache.init_download(alice, "orders.csv")
        cache.save_download(key, [["a"]])
        html = partials.render_message(alice.pk, cache.get_download(key), "completed")
        assert "async-downloads-connection" not in html
        assert "orders.csv is ready to download." in html

    def test_the_head_tag_loads_the_ws_extension(self):
        html = async_downloads_head({})
        assert "django_htmx/ext/hx-ws-2" in html and "hx-sse" not in html


WITHOUT_CHANNELS = """
import sys
sys.modules["channels"] = None  # as if channels were not installed
import django
django.setup()
from django.core import checks
from async_downloads import events, ws, partials
import async_downloads.checks
print("E003" if any(m.id == "async_downloads.E003" for m in checks.run_checks()) else "no E003")
try:
    ws.send(1, "<p>")
except ImportError as error:
    print(error)
events.download_changed({"user_id": 1, "key": "k"}, events.CLEARED)  # logged, never raised
print("published")
try:
    import async_downloads.ws_consumers
except ImportError as error:
    print(error)
"""


def test_nothing_fails_at_import_without_channels():
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_CHANNELS], env=child_env(ASYNC_DOWNLOADS_TEST_WS="1"),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "E003"
    assert lines[1] == "ASYNC_DOWNLOADS_WS_MODE needs Django Channels: pip install 'django-async-downloads[ws]'"
    assert lines[2] == "published"
    assert lines[3] == "async_downloads.ws_consumers needs Django Channels: pip install 'django-async-downloads[ws]'"


# ---------------------------------------------------------------- a real browser, in WS mode


@pytest.fixture
def ws_server(django_db_setup):
    """A uvicorn process serving tests.asgi_ws in WS mode; ``restart()`` kills it and starts another."""

    class Server:
        def __init__(self):
            self.process, self.url = start_uvicorn(app="tests.asgi_ws:application", ASYNC_DOWNLOADS_TEST_WS="1")
            self.port = int(self.url.rsplit(":", 1)[1])

        def kill(self):
            self.process.kill()
            self.process.wait()

        def start(self):
            self.process, _ = start_uvicorn(
                port=self.port, app="tests.asgi_ws:application", ASYNC_DOWNLOADS_TEST_WS="1"
            )

    server = Server()
    yield server
    stop(server.process)


@pytest.mark.browser
def test_export_progress_over_websockets_in_chromium(browser, ws_worker, ws_server, alice, tmp_path):
    from tests.browser import export_and_watch, log_in

    page = browser.new_page()
    sockets = []
    page.on("websocket", lambda socket: sockets.append(socket.url))
    log_in(page, ws_server.url, "alice", "alice-pw")
    assert page.locator("[ws-connect]").count() == 1 and page.locator("[sse-connect]").count() == 0

    seen = export_and_watch(page, ws_server.url, tmp_path, lambda: f"sockets: {sockets}")
    assert len(seen) >= 3, seen
    assert seen == sorted(seen), seen
    assert page.locator("[ws-connect]").count() == 1  # the finished centre stays connected
    assert sockets == [f"ws://127.0.0.1:{ws_server.port}/ws/async_downloads/"] * 2  # one per page load
    (record,) = cache.get_downloads(alice)
    assert page.locator(".async-download__link").get_attribute("href") == f"/async_downloads/download/{record['key']}/"


@pytest.mark.browser
def test_a_page_reconnects_and_catches_up_after_the_server_died(browser, ws_worker, ws_server, alice):
    from tests.browser import VALUE_NOW, log_in
    from tests.testapp.tasks import slow_export

    page = browser.new_page()
    sockets = []
    page.on("websocket", lambda socket: sockets.append(socket))
    log_in(page, ws_server.url, "alice", "alice-pw")
    _, key = cache.init_download(alice, "Squares.csv")
    slow_export.apply_async((key,), {"rows": 40}, queue=WS_QUEUE)
    page.wait_for_function(f"Number(({VALUE_NOW})) > 0", timeout=10_000)

    ws_server.kill()  # the socket breaks (1006) while the export goes on
    deadline = time.monotonic() + 20
    while cache.get_download(key)["state"] != "complete":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert page.locator(".async-download__link").count() == 0  # nobody was there to tell the page
    ws_server.start()

    page.wait_for_selector(f"#download-{key} .async-download__link", state="attached", timeout=30_000)
    assert len(sockets) >= 2 and sockets[0].is_closed()

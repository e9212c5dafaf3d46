"""Each adaptation in async_downloads.compat, against the installed django-eventstream, asgiref and Django.

These fail when an upgrade changes the internal an adaptation relies on: that is
their job. pyproject.toml bounds the versions they were verified on.
"""

import asyncio
import inspect
import threading

import pytest
from asgiref.sync import SyncToAsync, ThreadSensitiveContext, sync_to_async
from django.core.cache import caches
from django.core.management import call_command
from django.test import RequestFactory
from django_eventstream import eventstream, send_event, views
from django_eventstream.eventrequest import EventRequest
from django_eventstream.storage import RedisStorage
from django_eventstream.utils import parse_last_event_id

from async_downloads import channels, compat, sse

pytestmark = pytest.mark.django_db


def test_every_internal_is_there():
    assert compat.problems() == []


def test_a_missing_internal_is_reported_by_the_system_check(monkeypatch, capsys):
    monkeypatch.delattr(views.RedisListener, "listen")
    assert compat.problems() == ["RedisListener.listen"]
    call_command("check")
    assert "async_downloads.W004" in capsys.readouterr().err


class TestResumeAfterRead:
    def test_the_stream_looks_get_events_up_at_each_connection(self):
        # What makes wrapping the module attribute take effect.
        assert "from .eventstream import get_events" in inspect.getsource(views.stream)

    def test_a_read_moves_the_request_past_what_it_returned(self, alice):
        start = channels.current_event_id(alice.pk)
        for n in range(3):
            sse.send(alice.pk, f"<p>{n}</p>")
        request = RequestFactory().get("/async_downloads/events/", {"lastEventId": start})
        request.user = alice
        event_request = EventRequest(request, view_kwargs={"async_downloads": True})
        channel = channels.channel_for(alice.pk)
        before = event_request.channel_last_ids[channel]

        unwrapped = getattr(eventstream.get_events, "__wrapped__", eventstream.get_events)
        unwrapped(event_request)
        assert event_request.channel_last_ids[channel] == before, "upstream now moves the ids itself"

        compat.resume_after_read()
        compat.resume_after_read()  # idempotent
        assert eventstream.get_events.__wrapped__ is unwrapped
        response = eventstream.get_events(event_request)
        assert [item.data for item in response.channel_items[channel]] == ["<p>0</p>", "<p>1</p>", "<p>2</p>"]
        assert event_request.channel_last_ids[channel] == str(response.channel_items[channel][-1].id)


class TestUnreadableRequest:
    def test_upstream_fails_on_a_malformed_id(self):
        with pytest.raises(ValueError):
            parse_last_event_id("no-colon-here")

    @pytest.mark.parametrize(
        "query, problem",
        [
            ({"lastEventId": "no-colon-here"}, "Malformed Last-Event-ID or lastEventId."),
            ({"lastEventId": "a:1,b"}, "Malformed Last-Event-ID or lastEventId."),
            ({"recover": "true"}, "recover is for requests through a GRIP proxy."),
            ({"lastEventId": "downloads-1-abc:12"}, None),
            ({}, None),
        ],
    )
    def test_what_upstream_would_fail_on_is_named(self, query, problem):
        assert compat.unreadable_request(RequestFactory().get("/", query)) == problem

    def test_a_malformed_header_too(self):
        request = RequestFactory().get("/", HTTP_LAST_EVENT_ID="x")
        assert compat.unreadable_request(request) == "Malformed Last-Event-ID or lastEventId."


class TestSharedClientRedisStorage:
    def test_one_client_per_process_whatever_the_thread(self):
        clients = []
        thread = threading.Thread(target=lambda: clients.append(sse.EventStorage().redis))
        thread.start()
        thread.join()
        assert clients == [sse.EventStorage().redis]

    def test_stored_events_are_read_by_upstream(self, alice):
        storage = sse.EventStorage()
        channel = channels.channel_for(alice.pk)
        first = storage.store_event(channel, "downloads", "<p>1</p>", ttl=60, counter_ttl=120)
        second = storage.store_event(channel, "downloads", "<p>2</p>", ttl=60, counter_ttl=120)
        upstream = RedisStorage()
        assert upstream.get_current_id(channel) == second.id == first.id + 1
        assert [(e.id, e.type, e.data) for e in upstream.get_events(channel, first.id - 1)] == [
            (first.id, "downloads", "<p>1</p>"),
            (second.id, "downloads", "<p>2</p>"),
        ]
        assert 60 - 2 <= storage.redis.ttl(f"event:{channel}:{second.id}") <= 60
        assert 120 - 2 <= storage.redis.ttl(f"event_counter:{channel}") <= 120


class TestListener:
    @pytest.fixture(autouse=True)
    def _no_upstream_listener(self):
        # As the app's stream does before any stream opens: otherwise the first add_listener of
        # the process starts django-eventstream's own listener on the test's event loop, a task
        # that ignores cancellation, and asyncio.run() waits for it for ever.
        compat.take_over_listener()

    def test_taking_over_keeps_upstream_from_starting_its_own(self):
        manager = compat.take_over_listener()
        assert manager is views.get_listener_manager()
        assert manager.redis_listener_started is True
        assert "if not self.redis_listener_started:" in inspect.getsource(views.ListenerManager.add_listener)

    def test_a_new_listener_delivers_published_events_to_the_streams_of_this_process(self, alice):
        manager = views.get_listener_manager()
        channel = channels.channel_for(alice.pk)

        async def deliver():
            compat.take_over_listener()
            listener = compat.new_listener(manager)
            assert manager.redis_listener is listener
            stream = views.Listener()
            stream.assign_loop()
            stream.channels = {channel}
            manager.add_listener(stream)
            task = asyncio.ensure_future(compat.listen(listener))
            try:
                await compat.subscribe(listener)
                await asyncio.sleep(0.2)  # listen() subscribes too
                await sync_to_async(send_event)(channel, "downloads", "<p>live</p>", json_encode=False)
                await asyncio.wait_for(stream.aevent.wait(), 10)
                return [item.data for item in stream.channel_items[channel]]
            finally:
                manager.remove_listener(stream)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await compat.close_listener(listener)

        assert asyncio.run(deliver()) == ["<p>live</p>"]

    def test_delivering_here_queues_for_this_processs_streams_only(self):
        from django_eventstream.event import Event

        manager = views.get_listener_manager()

        async def deliver():
            stream = views.Listener()
            stream.assign_loop()
            stream.channels = {"compat-here"}
            manager.add_listener(stream)
            try:
                event = Event("compat-here", "downloads", "<p/>", id=7)
                await asyncio.to_thread(compat.deliver_here, "compat-here", event)
                await asyncio.wait_for(stream.aevent.wait(), 5)
                return [(item.id, item.data) for item in stream.channel_items["compat-here"]]
            finally:
                manager.remove_listener(stream)

        assert asyncio.run(deliver()) == [(7, "<p/>")]

    def test_waking_all_streams_makes_them_reread_the_storage(self):
        manager = views.get_listener_manager()

        async def wake():
            streams = [views.Listener() for _ in range(2)]
            for n, stream in enumerate(streams):
                stream.assign_loop()
                stream.channels = {f"compat-test-{n}"}
                manager.add_listener(stream)
            try:
                assert compat.wake_all_streams(manager) >= 2
                await asyncio.wait_for(asyncio.gather(*(s.aevent.wait() for s in streams)), 5)
                return [s.overflow for s in streams]
            finally:
                for stream in streams:
                    manager.remove_listener(stream)

        assert asyncio.run(wake()) == [True, True]


def test_releasing_the_request_thread_ends_it():
    threads = []

    async def request():
        async with ThreadSensitiveContext():
            await sync_to_async(lambda: threads.append(threading.current_thread()))()
            context = SyncToAsync.thread_sensitive_context.get()
            assert context in SyncToAsync.context_to_thread_executor
            assert compat.release_request_thread() is True
            assert context not in SyncToAsync.context_to_thread_executor
            await sync_to_async(lambda: threads.append(threading.current_thread()))()

    asyncio.run(request())
    own, after = threads
    own.join(5)
    assert not own.is_alive(), "the request's own thread still runs"
    assert after is not own


def test_closing_cache_connections_closes_the_redis_pools():
    cache = caches["default"]
    cache.get("compat-test")
    pools = list(cache._cache._pools.values())
    connections = [c for pool in pools for c in pool._available_connections]
    assert connections and all(c._sock is not None for c in connections)
    compat.close_cache_connections()
    assert all(c._sock is None for c in connections)


class TestSharedCache:
    def test_one_backend_per_process_whatever_the_thread_with_one_redis_client(self):
        found = []
        thread = threading.Thread(target=lambda: found.append(compat.shared_cache("default")))
        thread.start()
        thread.join()
        shared = compat.shared_cache("default")
        assert found == [shared] and shared is not caches["default"]
        assert shared._cache.get_client(write=True) is shared._cache.get_client(write=True)

    def test_it_reads_and_writes_what_the_configured_backend_does(self):
        shared, own = compat.shared_cache("default"), caches["default"]
        shared.set("compat-shared", {"state": "running", "n": 3}, 30)
        assert own.get("compat-shared") == {"state": "running", "n": 3}
        own.set("compat-shared-count", 7, 30)
        assert shared.get("compat-shared-count") == 7
        assert 28 <= own._cache.get_client().ttl(own.make_and_validate_key("compat-shared")) <= 30

    def test_a_changed_setting_gives_a_new_backend(self, settings):
        before = compat.shared_cache("default")
        settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"], "TIMEOUT": 77}}
        after = compat.shared_cache("default")
        assert after is not before and after.default_timeout == 77

    def test_other_backends_are_returned_as_configured(self, settings):
        settings.CACHES = {**settings.CACHES, "local": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
        assert compat.shared_cache("local") is caches["local"]

    def test_upstream_builds_a_client_per_operation_through_get_client(self):
        # What keeping the client relies on: every operation asks get_client.
        from django.core.cache.backends.redis import RedisCacheClient

        source = inspect.getsource(RedisCacheClient)
        assert source.count("self.get_client(") >= 10
        assert "return self._client(connection_pool=pool)" in inspect.getsource(RedisCacheClient.get_client)


class TestDeleteIf:
    def test_deletes_only_what_holds_the_value(self):
        shared = compat.shared_cache("default")
        shared.set("compat-lock", "mine", 30)
        assert compat.delete_if(shared, "compat-lock", "theirs") is False
        assert shared.get("compat-lock") == "mine"
        assert compat.delete_if(shared, "compat-lock", "mine") is True
        assert shared.get("compat-lock") is None
        assert compat.delete_if(shared, "compat-lock", "mine") is False

    def test_backends_that_cannot_say_so(self, settings):
        settings.CACHES = {**settings.CACHES, "local": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
        assert compat.delete_if(caches["local"], "compat-lock", "mine") is None

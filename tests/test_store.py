"""The per-key lock under every read-modify-write (the races themselves: test_concurrency.py)."""

import time

import pytest
from django.core.cache import caches

from async_downloads import cache, store

pytestmark = pytest.mark.django_db


@pytest.fixture
def key(alice):
    return cache.init_download(alice, "a.csv")[1]


def test_the_lock_is_released(key):
    with store.locked(key):
        assert caches["default"].get(f"{key}:lock") is not None
    assert caches["default"].get(f"{key}:lock") is None


def test_the_lock_is_released_when_the_change_fails(key):
    def change(record):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.update(key, change)
    assert caches["default"].get(f"{key}:lock") is None


def test_a_lock_left_by_a_dead_process_is_taken_once_it_expires(settings, key):
    settings.ASYNC_DOWNLOADS_LOCK_TIMEOUT = 1
    caches["default"].add(f"{key}:lock", "a process that was killed", 1)
    started = time.monotonic()
    cache.set_percentage(key, 50)
    assert 0.5 < time.monotonic() - started < 2
    assert cache.get_download(key)["percentage"] == 50


def test_a_lock_that_is_never_released_times_out(settings, key):
    settings.ASYNC_DOWNLOADS_LOCK_TIMEOUT = 1
    caches["default"].set(f"{key}:lock", "stuck", 30)
    with pytest.raises(store.LockTimeout, match="Could not lock"):
        cache.set_percentage(key, 50)
    assert cache.get_download(key)["percentage"] == 0


def test_releasing_leaves_a_lock_taken_over_by_someone_else(key):
    """If our lock expired and another process took it, leaving must not free theirs."""
    with store.locked(key):
        caches["default"].set(f"{key}:lock", "another process", 30)
    assert caches["default"].get(f"{key}:lock") == "another process"


def test_update_of_a_missing_record_writes_nothing():
    key = "00000000-0000-4000-8000-000000000000"
    assert store.update(key, lambda record: None) is None
    assert caches["default"].get(key) is None


def test_a_change_that_returns_false_writes_nothing(key):
    before = store.read(key)
    assert store.update(key, lambda record: False) is None
    assert store.read(key) == before


@pytest.mark.parametrize("offset, seconds", [(-10, 1), (0, 1), (0.2, 1), (1.5, 2), (60, 60)])
def test_seconds_left_rounds_up_and_is_at_least_one(offset, seconds):
    assert store.seconds_left(time.time() + offset) == seconds


@pytest.fixture
def redis_cache(settings):
    """The store on a redis-server of its own, which a test can stop and start."""
    from tests.processes import PrivateRedis

    server = PrivateRedis()
    settings.CACHES = {
        **settings.CACHES,
        "private": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": server.url},
    }
    settings.ASYNC_DOWNLOADS_CACHE_NAME = "private"
    yield server
    server.close()


def test_a_call_waits_for_a_restarting_cache_server(redis_cache, caplog):
    import threading

    store.get_cache().set("record", {"state": "running"}, 60)
    redis_cache.stop()
    restart = threading.Timer(1, redis_cache.start)
    restart.start()
    try:
        assert store.read("record") == {"state": "running"}  # kept across the restart
    finally:
        restart.join()
    assert "The cache server is unreachable; waiting up to 30 s for it." in caplog.text


def test_a_call_gives_up_when_the_cache_server_stays_away(redis_cache, settings, caplog):
    import redis

    settings.ASYNC_DOWNLOADS_OUTAGE_WAIT = 0.5
    redis_cache.stop()
    with pytest.raises(redis.exceptions.ConnectionError):
        store.read("record")
    assert "waiting up to 0.5 s" in caplog.text

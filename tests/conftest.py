import os
import shutil

import pytest
import redis
from django.conf import settings

from async_downloads import dbstore, events, store, watch
from tests import stores
from tests.processes import child_env, start_worker, stop

#: The files that take longest, first: the processes of a parallel run (`just test`) then end on short ones.
LONGEST_FIRST = ("test_demo.py", "test_faults.py", "test_concurrency.py", "test_load.py", "test_redis_outage.py")


def pytest_collection_modifyitems(items):
    """After pytest-randomly's shuffle: the longest files first, each still shuffled within."""
    items.sort(key=lambda item: LONGEST_FIRST.index(item.path.name) if item.path.name in LONGEST_FIRST
               else len(LONGEST_FIRST))


def pytest_generate_tests(metafunc):
    """Tests that use ``record_store`` run once per store (tests/stores.py)."""
    if "record_store" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("stores")
        names = marker.args if marker else stores.STORES
        if not marker and {"celery_worker", "web_server"} & set(metafunc.fixturenames):
            names = ("cache",)  # the session's worker and web server keep their records in the cache
        metafunc.parametrize("record_store", names, indirect=True)


@pytest.fixture(scope="session")
def django_db_modify_db_settings_xdist_suffix():
    """No ``_gw0`` suffix: each pytest-xdist process has databases of its own already (its own
    run id, tests/settings.py), and the processes it starts find them by those names."""


@pytest.fixture(scope="session", autouse=True)
def _postgres_test_database_can_be_dropped(django_db_setup, django_db_blocker):
    """Before the PostgreSQL test database is dropped, end the sessions that threads of this
    process (a heartbeat, a resync) left open on it: PostgreSQL refuses to drop it otherwise."""
    yield
    if "postgres" not in settings.DATABASES:
        return
    from django.db import connections

    name = connections["postgres"].settings_dict["NAME"]
    with django_db_blocker.unblock(), connections["postgres"].cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [name],
        )


@pytest.fixture
def record_store(request, settings):
    """The store of this run of the test: "cache", "sqlite" or "postgres" (its name)."""
    name = request.param
    if name == "postgres" and "postgres" not in settings.DATABASES:
        pytest.skip(f"No PostgreSQL for the database store: {os.environ.get('POSTGRES_URL_MISSING')}")
    if name in stores.ALIASES:
        settings.ASYNC_DOWNLOADS_STORE = "database"
        settings.ASYNC_DOWNLOADS_DATABASE = stores.ALIASES[name]
        request.getfixturevalue("monkeypatch").setattr(store, "after_commit", _after_commit_in_a_test)
    return name


def _after_commit_in_a_test(call):
    """``store.after_commit`` where the test's own transaction stands for autocommit: a test that
    is not ``transaction=True`` never commits, so its starts would never run otherwise."""
    from django.db import connections, transaction

    alias = dbstore.alias()
    if all(getattr(block, "_from_testcase", False) for block in connections[alias].atomic_blocks):
        call()
    else:
        transaction.on_commit(call, using=alias)


def _prefixed_keys(client):
    return list(client.scan_iter(match=f"*adtest-{settings.RUN_ID}*", count=1000))


@pytest.fixture(scope="session")
def redis_client():
    return redis.Redis.from_url(settings.REDIS_DB_URL)


@pytest.fixture(autouse=True)
def _fresh_cache(redis_client):
    """Each test starts with none of this run's cache keys (user pks repeat across tests).

    The epoch key stays: without it, the web servers of the run would take this
    cleanup for a Redis that lost its data, and tell their open pages so.
    """
    yield
    # A test's resends and catch-ups are its own (user pks repeat across tests).
    with events._resync.lock:
        events._resync.pending.clear()
    with events._catch_ups.lock:
        events._catch_ups.due.clear()
    with watch.watching.lock:
        watch.watching.held.clear()  # its sweep thread ends at its next tick
    kept = (b"celery", b"kombu", b"async_downloads:epoch")
    keys = [k for k in _prefixed_keys(redis_client) if not any(part in k for part in kept)]
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def media(settings, tmp_path):
    """A storage folder of this test's own."""
    location = tmp_path / "media"
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(location)},
        },
    }
    return location


def pytest_sessionfinish(session, exitstatus):
    client = redis.Redis.from_url(settings.REDIS_DB_URL)
    keys = _prefixed_keys(client)
    if keys:
        client.delete(*keys)
    if os.environ.get("ASYNC_DOWNLOADS_TEST_DIR", "").startswith("/tmp/async-downloads-test-"):
        shutil.rmtree(os.environ["ASYNC_DOWNLOADS_TEST_DIR"], ignore_errors=True)


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="alice-pw")


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user("bob+test@example.com", password="bob-pw")


@pytest.fixture(scope="session")
def celery_worker(django_db_setup, django_db_blocker):
    """A real Celery worker process, sharing this run's Redis, queue and test database."""
    from tests.celery_app import app
    from tests.testapp.tasks import ping

    process = start_worker(child_env())
    try:
        ping.delay().get(timeout=60)
        yield process
    finally:
        stop(process)
        app.pool.force_close_all()


@pytest.fixture(scope="session")
def web_server(django_db_setup, django_db_blocker):
    """A uvicorn process serving tests.asgi on this run's test database."""
    from tests.processes import start_uvicorn

    process, url = start_uvicorn()
    yield url
    stop(process)


@pytest.fixture
def client_for():
    """A test client signed in as ``user`` (checking CSRF tokens when ``csrf``)."""
    from django.test import Client

    def make(user, csrf=False):
        client = Client(enforce_csrf_checks=csrf)
        client.force_login(user)
        return client

    return make


@pytest.fixture
def browser(monkeypatch):
    """A headless Chromium (Debian's), driven by Playwright."""
    from playwright.sync_api import sync_playwright

    from tests.browser import launch

    # Playwright's sync API runs an event loop in this thread; the test's own
    # ORM calls are still synchronous and safe.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


@pytest.fixture
def ws_mode(settings):
    """WS mode, on a channel layer of this test's own.

    A socket's last receive can outlive its test's event loop, holding a lock of the
    layer it was made with: a later test on the same layer would trip over it.
    """
    from channels.layers import channel_layers

    settings.ASYNC_DOWNLOADS_WS_MODE = True
    channel_layers.backends.clear()

"""Faults of the record stores, with real processes.

- Records in PostgreSQL (``ASYNC_DOWNLOADS_STORE = "database"``), Redis only the event bus:
  Redis restarted without its data, or flushed, while one export runs and two finished ones
  are listed. Nothing is lost: the export finishes, every file downloads, the open page
  shows the truth, the cleanup removes nothing.
- Records in the cache (the default): the same fault loses them, as documented. The page is
  told so, the list is empty, the running export keeps no file, and the cleanup removes the
  folders that no record names any more.
- PostgreSQL out of reach while a worker runs an export in the database store, for 3 s, or
  at the moment the export's completion commits: the export finishes with its file, and is
  never complete without it.
"""

import os
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis
from django.conf import settings as django_settings

from async_downloads import cache
from async_downloads.cleanup import cleanup_expired_downloads
from tests import stores
from tests.processes import PrivateRedis, Publisher, child_env, start_uvicorn, start_worker, stop
from tests.sse_client import StreamReader, session_cookies

pytestmark = pytest.mark.django_db(transaction=True, databases=stores.DATABASES)

FAULTS = ("restart", "flushall")
ROWS, PAUSE = 60, 0.05  # 3 s of work
READY = "squares.csv is ready to download."
LOST = "Some downloads were lost while the server restarted. Please start them again."
MESSAGES = (LOST, "The export failed. Please try again.", "The file could not be saved. Please try again later.",
            "The export stopped responding.")


def media():
    return Path(django_settings.STORAGES["default"]["OPTIONS"]["location"])


def squares(rows):
    return "n,square\n" + "".join(f"{n},{n * n}\n" for n in range(rows))


def percentages(event):
    return [int(value) for value in re.findall(r'aria-valuenow="(\d+)"', event["data"])]


def link(key):
    return f'href="/async_downloads/download/{key}/"'


# --- The processes ---------------------------------------------------------------------------


class Site:
    """A Celery worker, a uvicorn process and a publisher (tests/publisher.py), on a Redis of
    their own that keeps nothing across a restart; ``env`` says where the records are."""

    def __init__(self, tmp_path, **env):
        self.worker = self.web = self.publisher = None
        self.flushed = False
        self.redis = PrivateRedis(persistent=False)
        # This run's prefixes: the Redis is private, and the run's id names its PostgreSQL test database.
        self.env = {"REDIS_URL": self.redis.url, "ASYNC_DOWNLOADS_TEST_RUN": django_settings.RUN_ID, **env}
        self.worker_log = tmp_path / "worker.log"
        try:
            with open(self.worker_log, "w") as log:
                self.worker = start_worker(child_env(**self.env), stderr=log)
            self.publisher = Publisher(child_env(**self.env))
            self.web, self.base = start_uvicorn(graceful_timeout=1, **self.env)
            assert self.worker_answers(), "the worker did not start"
        except BaseException:
            self.close()
            raise

    @property
    def cache_location(self):
        """The cache's Redis as the processes of the site use it (tests/settings.py: db 13)."""
        return self.redis.url.rsplit("/", 1)[0] + "/13"

    def __call__(self, **command):
        answer = self.publisher(**command)
        assert "ok" in answer, f"{command} failed: {answer}"
        return answer["ok"]

    def worker_answers(self, timeout=60):
        """Whether the worker runs a task within ``timeout``. It runs one task at a time: when
        it answers, the tasks sent before have returned. (After a Redis restart, the worker and
        the publisher each reconnect to the broker in their own time.)"""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.publisher(op="task", name="tests.testapp.tasks.ping", wait=10).get("ok") == "pong":
                return True
            time.sleep(0.5)
        return False

    def finished(self, user, count=2):
        """``count`` complete downloads of ``user``: ``{key: content}``, oldest first."""
        contents = {}
        for n in range(count):
            key = self(op="init", user=user.pk, filename=f"done-{n}.csv")
            self(op="save", key=key, rows=[["download"], [f"done-{n}"]])
            contents[key] = f"download\ndone-{n}\n"
        return contents

    def start(self, user, rows=ROWS, pause=PAUSE):
        """A download of ``squares.csv`` whose task runs in the worker (``shortcuts.start_download``)."""
        return self(op="start", user=user.pk, filename="squares.csv", task="slow_export",
                    kwargs={"rows": rows, "pause": pause})

    def events_url(self, user):
        return self.base + self(op="events_url", user=user.pk)

    def fault(self, fault):
        """Redis comes back empty: restarted without persistence, or flushed under everyone's feet."""
        if fault == "restart":
            self.redis.stop()
            time.sleep(1)
            self.redis.start()
        else:
            redis.Redis.from_url(self.redis.url).flushall()
            self.flushed = True

    def heal(self):
        """Leave the site as a next test needs it. A flush also took the broker's queue bindings,
        which clients declare again only when they reconnect: a restart makes them."""
        if self.flushed:
            self.redis.stop()
            self.redis.start()
            self.flushed = False
        assert self.worker_answers(), "the worker did not come back to its broker"

    def logged(self, text, timeout=30):
        """Whether the worker logs ``text`` within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while text not in self.worker_log.read_text():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def close(self):
        for process in (self.worker, self.web):
            stop(process)
        if self.publisher is not None:
            self.publisher.close()
        self.redis.close()


class DatabaseLink:
    """The only way of a site's processes to PostgreSQL: a TCP proxy in front of it that can
    be broken for a while (open connections cut, new ones refused), or made to lose the
    server's answer to one COMMIT: that of the next transaction that sends ``marker``.
    The client then cannot tell whether its transaction committed, as when a connection
    breaks, or a server fails over, at that moment."""

    def __init__(self, host, port):
        self.target = (host, int(port))
        self.links = set()
        self.lock = threading.Lock()
        self.marker = None
        self.cut = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._serve()

    def _serve(self):
        threading.Thread(target=self._accept, args=(self.listener,), name="database-link", daemon=True).start()

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # broken or closed
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.links.add(_Link(self, client, upstream))

    def url(self, database):
        user, password = database["USER"], database["PASSWORD"]
        credentials = f"{user}:{password}" if password else user
        return f"postgresql://{credentials}@127.0.0.1:{self.port}/{database['NAME']}"

    def break_for(self, seconds):
        """PostgreSQL is out of reach for ``seconds``: every connection is cut, and new ones refused."""
        self.listener.close()
        with self.lock:
            links, self.links = self.links, set()
        for open_link in links:
            open_link.close()
        time.sleep(seconds)
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self._serve()

    def lose_commit_answer(self, marker):
        self.cut.clear()
        self.marker = marker

    def close(self):
        self.listener.close()
        with self.lock:
            links, self.links = self.links, set()
        for open_link in links:
            open_link.close()


class _Link:
    """One client connection through a ``DatabaseLink``."""

    def __init__(self, proxy, client, upstream):
        self.proxy, self.client, self.upstream = proxy, client, upstream
        self.sent_marker = self.cutting = False
        self.answered = threading.Event()
        threading.Thread(target=self._client_to_server, daemon=True).start()
        threading.Thread(target=self._server_to_client, daemon=True).start()

    def _client_to_server(self):
        tail = b""
        while data := _receive(self.client):
            window, tail = tail + data, (tail + data)[-64:]
            marker = self.proxy.marker
            if marker is not None and marker in window:
                self.sent_marker = True
            if self.sent_marker and b"COMMIT" in window and self.proxy.marker is not None:
                self.proxy.marker = None
                self.cutting = True
                _send(self.upstream, data)
                self.answered.wait(5)  # the server committed and said so; the client never hears it
                self.proxy.cut.set()
                break
            if not _send(self.upstream, data):
                break
        self.close()

    def _server_to_client(self):
        while data := _receive(self.upstream):
            if self.cutting:
                self.answered.set()
                break
            if not _send(self.client, data):
                break
        self.close()

    def close(self):
        for sock in (self.client, self.upstream):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def _receive(sock):
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _send(sock, data):
    try:
        sock.sendall(data)
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def database_site(django_db_setup, tmp_path_factory):
    """The processes keep their records in this run's PostgreSQL test database (alias
    "postgres"), which they reach through a ``DatabaseLink`` (``site.database``)."""
    if "postgres" not in django_settings.DATABASES:
        pytest.skip(f"No PostgreSQL for the database store: {os.environ.get('POSTGRES_URL_MISSING')}")
    postgres = django_settings.DATABASES["postgres"]
    database = DatabaseLink(postgres["HOST"], postgres["PORT"])
    try:
        site = Site(tmp_path_factory.mktemp("database-site"), POSTGRES_URL=database.url(postgres),
                    ASYNC_DOWNLOADS_TEST_STORE="postgres")
        site.database = database
        try:
            yield site
        finally:
            site.close()
    finally:
        database.close()


@pytest.fixture(scope="module")
def cache_site(django_db_setup, tmp_path_factory):
    """The processes keep their records in the cache, on their Redis."""
    site = Site(tmp_path_factory.mktemp("cache-site"))
    try:
        yield site
    finally:
        site.close()


@pytest.fixture
def on_postgres(settings):
    """This process reads and cleans up in the database store, where the database site writes
    (straight to PostgreSQL, not through the site's link)."""
    settings.ASYNC_DOWNLOADS_STORE = "database"
    settings.ASYNC_DOWNLOADS_DATABASE = "postgres"


@pytest.fixture
def on_cache_site(settings, cache_site):
    """This process reads and cleans up in the cache of the cache site (its Redis, the run's prefix)."""
    default = {**settings.CACHES["default"], "LOCATION": cache_site.cache_location}
    settings.CACHES = {**settings.CACHES, "default": default}


# --- Reading the stream ----------------------------------------------------------------------


def read_until(stream, text, timeout=40, refuse=MESSAGES):
    """The first event of ``stream`` with ``text`` in it; none before it may say any of ``refuse``."""
    deadline = time.monotonic() + timeout
    while True:
        event = stream.next(timeout=max(0.1, deadline - time.monotonic()))
        if text in event["data"]:
            return event
        said = [message for message in refuse if message in event["data"]]
        assert not said, f"the page was told {said} before {text!r}"


def shown_within(stream, text, wait):
    """The events that ``stream`` gets within ``wait`` seconds, or until one has ``text`` in it."""
    shown = []
    deadline = time.monotonic() + wait
    while (remaining := deadline - time.monotonic()) > 0:
        shown += stream.drain(wait=min(remaining, 0.2))
        if any(text in event["data"] for event in shown):
            break
    return shown


def wait_for_progress(stream, at_least=20):
    deadline = time.monotonic() + 30
    while not any(value >= at_least for value in percentages(stream.next(timeout=30))):
        assert time.monotonic() < deadline, f"the export did not reach {at_least} %"


def downloaded(site, user, key):
    with httpx.Client(base_url=site.base, cookies=session_cookies(user), timeout=10) as client:
        response = client.get(f"/async_downloads/download/{key}/")
    return response.status_code, response.content


# --- Records in PostgreSQL: nothing is lost --------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
def test_the_database_store_keeps_every_download_when_redis_comes_back_empty(database_site, on_postgres, alice, fault):
    site = database_site
    finished = site.finished(alice)
    try:
        with StreamReader(site.events_url(alice), session_cookies(alice), reconnect=True) as stream:
            key = site.start(alice)
            wait_for_progress(stream)

            site.fault(fault)

            event = read_until(stream, READY)
            # The message lists the user's downloads as the database has them: all three.
            for listed in (key, *finished):
                assert link(listed) in event["data"]
    finally:
        site.heal()

    record = cache.get_download(key)
    assert (record["state"], record["errors"], record["percentage"]) == ("complete", "", 100)
    assert [download["key"] for download in cache.get_downloads(alice)] == [key, *reversed(finished)]
    contents = {key: squares(ROWS).encode(), **{done: text.encode() for done, text in finished.items()}}
    for listed, content in contents.items():
        assert downloaded(site, alice, listed) == (200, content)

    removed = cleanup_expired_downloads()
    assert not set(removed) & set(contents)
    for listed, content in contents.items():
        assert (media() / cache.get_download(listed)["filepath"]).read_bytes() == content


@pytest.mark.slow
def test_a_page_that_reconnects_after_redis_came_back_empty_is_shown_what_it_missed(
    database_site, on_postgres, alice
):
    site = database_site
    earlier = site(op="init", user=alice.pk, filename="earlier.csv")
    for percentage in range(1, 31):  # an earlier export's progress: the channel's event ids pass 30
        site(op="set", key=earlier, percentage=percentage)
    site(op="save", key=earlier, rows=[["download"], ["earlier"]])
    url, cookies = site.events_url(alice), session_cookies(alice)
    with StreamReader(url, cookies) as stream:
        key = site.start(alice, rows=40)  # 2 s of work
        wait_for_progress(stream)
    last_id = stream.last_event_id  # the page's connection drops here, as a web process restarting would drop it
    try:
        site.fault("restart")
        deadline = time.monotonic() + 30
        while cache.get_download(key)["state"] != "complete":
            assert time.monotonic() < deadline, "the export did not finish"
            time.sleep(0.1)
    finally:
        site.heal()

    # The browser's EventSource reconnects with the id of the last event it got.
    # Its id is ahead of the emptied counter: it gets the whole centre as it is now.
    with StreamReader(url, cookies, headers={"Last-Event-ID": last_id}) as page:
        shown = shown_within(page, link(key), 5)
    ready = [event for event in shown if link(key) in event["data"]]
    assert ready and link(earlier) in ready[0]["data"], (
        f"the page reconnected with Last-Event-ID {last_id} and was shown {len(shown)} messages, "
        "none with the export complete"
    )


# --- Records in the cache: lost, and said so -------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
def test_the_cache_store_loses_its_downloads_when_redis_comes_back_empty_and_says_so(
    cache_site, on_cache_site, alice, fault
):
    site = cache_site
    finished = site.finished(alice)
    try:
        with StreamReader(site.events_url(alice), session_cookies(alice), reconnect=True) as stream:
            key = site.start(alice)
            wait_for_progress(stream)
            assert [download["key"] for download in cache.get_downloads(alice)] == [key, *reversed(finished)]

            site.fault(fault)

            event = read_until(stream, LOST, refuse=MESSAGES[1:])
            assert "No downloads yet." in event["data"]  # the list as Redis has it now
            for gone in (key, *finished):
                assert f'id="download-{gone}"' not in event["data"]

        # The task runs to its end, finds no record to complete, and keeps no file.
        assert site.logged(f"save_download: the record of download {key} was lost while its task ran")
    finally:
        site.heal()

    assert cache.get_downloads(alice) == []
    for gone in (key, *finished):
        assert cache.get_download(gone) is None
        assert downloaded(site, alice, gone)[0] == 404
    assert not (media() / "downloads" / key).exists()
    # The finished downloads' files outlive their records, until the cleanup.
    folders = [media() / "downloads" / done for done in finished]
    assert [sorted(path.name for path in folder.iterdir()) for folder in folders] == [["done-0.csv"], ["done-1.csv"]]

    removed = cleanup_expired_downloads()
    assert set(finished) <= set(removed)
    assert key not in removed  # nothing was left of it
    assert not any(folder.exists() for folder in folders)


# --- PostgreSQL out of reach -----------------------------------------------------------------


@pytest.mark.slow
def test_an_export_rides_out_postgres_out_of_reach_for_3_s_and_is_never_complete_without_its_file(
    database_site, on_postgres, alice
):
    site = database_site
    rows = 80  # 4 s of work
    key = site.start(alice, rows=rows)
    seen = []

    def look():
        record = cache.get_download(key)
        seen.append(record["state"])
        if record["state"] == "complete":
            assert (media() / record["filepath"]).read_text() == squares(rows), "complete without its file"
        return record

    deadline = time.monotonic() + 20
    while (record := look())["percentage"] < 20:
        assert record["state"] in ("pending", "running") and time.monotonic() < deadline, record
        time.sleep(0.05)

    logged_before = len(site.worker_log.read_text())
    outage = threading.Thread(target=site.database.break_for, args=(3,))
    outage.start()
    while outage.is_alive():  # this process reads PostgreSQL straight, while the site cannot
        look()
        time.sleep(0.05)

    deadline = time.monotonic() + 60
    while (record := look())["state"] in ("pending", "running"):
        assert time.monotonic() < deadline, record
        time.sleep(0.05)
    assert site.worker_answers(), "the worker is stuck"  # the export's task has returned
    record = look()
    assert (record["state"], record["errors"], record["percentage"]) == ("complete", "", 100), seen
    assert "The database is unreachable; waiting up to" in site.worker_log.read_text()[logged_before:]  # it was


@pytest.mark.slow
def test_a_completion_whose_commit_goes_unanswered_keeps_its_file(database_site, on_postgres, alice):
    site = database_site
    # The connection breaks just after the transaction that completes the download committed.
    site.database.lose_commit_answer(b"\"state\" = 'complete'")
    try:
        key = site.start(alice, rows=20, pause=0.01)
        assert site.database.cut.wait(30), "the completion never committed"
    finally:
        site.database.marker = None
    assert site.worker_answers(), "the worker is stuck"  # the export's task has returned

    record = cache.get_download(key)
    assert (record["state"], record["errors"]) == ("complete", "")
    assert (media() / record["filepath"]).exists(), "the download is complete, and its file was deleted"
    assert (media() / record["filepath"]).read_text() == squares(20)

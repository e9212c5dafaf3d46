"""Faults, with real processes: Redis restarted mid-export, the web process restarted under open
streams, a storage that fails while saving. (A worker killed mid-export: tests/test_stall.py.)"""

import re
import time
from pathlib import Path

import httpx
import pytest
from django.conf import settings as django_settings

from async_downloads import cache
from tests.processes import PrivateRedis, Publisher, child_env, start_uvicorn, start_worker, stop
from tests.sse_client import StreamReader, session_cookies
from tests.testapp.tasks import ping, slow_export

pytestmark = pytest.mark.django_db(transaction=True)

SAVE_FAILED = "The file could not be saved. Please try again later."


class Site:
    """A Celery worker, a uvicorn process and a publisher (tests/publisher.py), all on a Redis
    of their own that keeps its data across restarts."""

    def __init__(self, persistent=True, worker_log=None):
        self.worker = self.web = self.publisher = None
        self.redis = PrivateRedis(persistent)
        self.env = {"REDIS_URL": self.redis.url, "ASYNC_DOWNLOADS_TEST_RUN": f"faults-{django_settings.RUN_ID}"}
        try:
            self.worker = start_worker(child_env(**self.env), stderr=worker_log)
            self.web, self.base = start_uvicorn(graceful_timeout=1, **self.env)
            self.port = int(self.base.rsplit(":", 1)[1])
            self.publisher = Publisher(child_env(**self.env))
            assert self.task("ping", wait=60) == "pong"
        except BaseException:
            self.close()
            raise

    def task(self, name, *args, wait=None, **kwargs):
        answer = self.publisher(op="task", name=f"tests.testapp.tasks.{name}", args=args, kwargs=kwargs, wait=wait)
        assert "ok" in answer, f"the task {name} could not be run: {answer}"
        return answer["ok"]

    def worker_answers(self, timeout=60):
        """Whether the worker runs a task again within ``timeout`` (after a Redis restart, the
        worker and the publisher each reconnect to the broker in their own time)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self.publisher(op="task", name="tests.testapp.tasks.ping", args=[], kwargs={}, wait=10)
            if answer.get("ok") == "pong":
                return True
            time.sleep(0.5)
        return False

    def init(self, user, filename="squares.csv"):
        return self.publisher(op="init", user=user.pk, filename=filename)["ok"]

    def record(self, key):
        return self.publisher(op="get", key=key)["ok"]

    def events_url(self, user):
        return self.base + self.publisher(op="events_url", user=user.pk)["ok"]

    def wait_for(self, key, states, timeout=30):
        deadline = time.monotonic() + timeout
        while (record := self.record(key))["state"] not in states:
            assert time.monotonic() < deadline, f"{key} is still {record}"
            time.sleep(0.1)
        return record

    def restart_web(self, while_down=lambda: None):
        """Stop the web process as a deploy would (SIGTERM), call ``while_down``, start another on the same port."""
        stop(self.web)
        while_down()
        self.web, _ = start_uvicorn(port=self.port, graceful_timeout=1, **self.env)

    def close(self):
        for process in (self.worker, self.web):
            if process is not None:
                stop(process)
        if self.publisher is not None:
            self.publisher.close()
        self.redis.close()


@pytest.fixture(scope="module")
def site(django_db_setup):
    site = Site()
    try:
        yield site
    finally:
        site.close()


def percentages(events):
    return [int(value) for event in events for value in re.findall(r'aria-valuenow="(\d+)"', event["data"])]


def squares(rows):
    return "n,square\n" + "".join(f"{n},{n * n}\n" for n in range(rows))


def test_an_export_outlives_a_redis_restart_and_the_open_stream_shows_it_finish(site, alice):
    key = site.init(alice)
    cookies = session_cookies(alice)
    with StreamReader(site.events_url(alice), cookies) as stream:
        site.task("slow_export", key, rows=80, pause=0.05)  # 4 s of work
        while percentages([stream.next(timeout=30)]) != [20]:
            pass

        site.redis.stop()  # for 4 s, in the middle of the export
        time.sleep(4)
        site.redis.start()

        deadline = time.monotonic() + 40
        while "squares.csv is ready to download." not in (event := stream.next(timeout=40))["data"]:
            assert "failed" not in event["data"] and time.monotonic() < deadline
        assert f'href="/async_downloads/download/{key}/"' in event["data"]

    record = site.record(key)
    assert (record["state"], record["errors"]) == ("complete", "")
    with httpx.Client(base_url=site.base, cookies=cookies, timeout=10) as client:
        centre = client.get("/async_downloads/", headers={"HX-Request": "true"}).text
        assert f'href="/async_downloads/download/{key}/"' in centre
        assert client.get(f"/async_downloads/download/{key}/").text == squares(80)
    assert site.worker_answers()  # the worker is back on its broker


def test_open_streams_reconnect_to_a_restarted_web_process_and_catch_up(site, alice):
    key = site.init(alice)
    url, cookies = site.events_url(alice), session_cookies(alice)
    streams = [StreamReader(url, cookies, reconnect=True).__enter__() for _ in range(2)]
    try:
        site.publisher(op="set", key=key, percentage=10)
        assert [percentages([stream.next()]) for stream in streams] == [[10], [10]]

        def while_down():
            site.publisher(op="set", key=key, percentage=30)
            site.publisher(op="set", key=key, percentage=50)

        site.restart_web(while_down)
        for stream in streams:
            assert percentages([stream.next(timeout=20), stream.next(timeout=20)]) == [30, 50]  # from storage
        site.publisher(op="set", key=key, percentage=70)
        site.publisher(op="save", key=key, rows=[["done"]])
        for stream in streams:
            assert percentages([stream.next(timeout=10)]) == [70]  # live
            assert "squares.csv is ready to download." in stream.next(timeout=10)["data"]
            assert stream.connections == 2
    finally:
        for stream in streams:
            stream.__exit__()


@pytest.mark.browser
def test_a_page_shows_the_link_of_an_export_that_finished_while_its_web_process_restarted(browser, site, alice):
    from tests.browser import VALUE_NOW, log_in

    key = site.init(alice)  # pending: the page opens its stream
    page = browser.new_page()
    log_in(page, site.base, "alice", "alice-pw")
    site.task("slow_export", key, rows=100, pause=0.05)  # 5 s of work
    page.wait_for_function(f"Number(({VALUE_NOW})) > 0", timeout=15_000)
    link = f"#download-{key} .async-download__link"

    def while_down():
        site.wait_for(key, {"complete"})
        assert page.locator(link).count() == 0  # nobody could tell the page

    site.restart_web(while_down)
    page.wait_for_selector(link, state="attached", timeout=30_000)
    assert page.locator("#async-downloads-status").inner_text() == "squares.csv is ready to download."


@pytest.fixture
def full_disk_worker(django_db_setup):
    """A worker of its own, on a queue of its own, whose storage fails while writing every file."""
    queue = f"{django_settings.CELERY_TASK_DEFAULT_QUEUE}-full-disk"
    env = child_env(DJANGO_SETTINGS_MODULE="tests.fault_settings", ASYNC_DOWNLOADS_TEST_FULL_DISK="1")
    process = start_worker(env, "-Q", queue)
    try:
        ping.apply_async(queue=queue).get(timeout=60)
        yield queue
    finally:
        stop(process)


def test_a_storage_failing_in_a_worker_ends_in_a_clean_error(full_disk_worker, alice):
    _, key = cache.init_download(alice, "squares.csv")
    slow_export.apply_async((key,), {"rows": 20, "pause": 0.01}, queue=full_disk_worker)
    deadline = time.monotonic() + 30
    while (record := cache.get_download(key))["state"] in ("pending", "running"):
        assert time.monotonic() < deadline, record
        time.sleep(0.1)
    assert (record["state"], record["errors"], record["url"]) == ("error", SAVE_FAILED, "")
    media = Path(django_settings.STORAGES["default"]["OPTIONS"]["location"])
    assert not (media / "downloads" / key).exists()  # the part written before the failure is gone


@pytest.fixture(scope="module")
def forgetful_site(django_db_setup, tmp_path_factory):
    """The same processes on a Redis that keeps nothing across a restart (the default of many servers)."""
    log_path = tmp_path_factory.mktemp("forgetful") / "worker.log"
    with open(log_path, "w") as log:
        site = Site(persistent=False, worker_log=log)
        site.worker_log = log_path
        try:
            yield site
        finally:
            site.close()


def test_open_pages_learn_that_downloads_were_lost_when_redis_restarts_without_its_data(forgetful_site, alice):
    site = forgetful_site
    finished = [site.init(alice, f"done-{n}.csv") for n in range(2)]
    for key in finished:
        site.publisher(op="save", key=key, rows=[["a"]])
    key = site.init(alice)
    with StreamReader(site.events_url(alice), session_cookies(alice)) as stream:
        site.task("slow_export", key, rows=100, pause=0.05)  # 5 s of work
        while percentages([stream.next(timeout=30)]) != [20]:
            pass

        site.redis.stop()  # for 3 s; it comes back empty
        time.sleep(3)
        site.redis.start()
        back = time.monotonic()

        event = stream.next(timeout=15)
        while "were lost" not in event["data"]:
            event = stream.next(timeout=15)
        assert time.monotonic() - back < 10, f"told {time.monotonic() - back:.1f} s after Redis came back"
        assert "Some downloads were lost while the server restarted." in event["data"]
        assert "No downloads yet." in event["data"]  # the list as Redis has it now: none of the three rows
        for gone in (key, *finished):
            assert f'id="download-{gone}"' not in event["data"]

    assert site.worker_answers()
    deadline = time.monotonic() + 30
    while "was lost while its task ran" not in site.worker_log.read_text():
        logged = [line for line in site.worker_log.read_text().splitlines() if "ownload" in line]
        assert time.monotonic() < deadline, "\n".join(logged[-30:])
        time.sleep(0.2)
    assert "WARNING" in next(line for line in site.worker_log.read_text().splitlines() if "was lost" in line)

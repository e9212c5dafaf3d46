"""Liveness with real processes: heartbeats of Celery and db_worker processes, killed with SIGKILL.

A web process (uvicorn) holds the page's stream and is the only process that
looks at the downloads while they run; the workers beat for the tasks they run.
Short timeouts keep the tests short: a beat every 0.3 s, a worker given up after
1.5 s without one, the old stall rule after 2 s without a report, and 1 s before
a pending download says it waits for a worker.
"""

import os
import signal
import subprocess
import sys
import time

import pytest
from django.conf import settings as django_settings

from async_downloads import cache, partials
from tests.processes import child_env, start_uvicorn, stop
from tests.sse_client import StreamReader, session_cookies
from tests.testapp.tasks import ping, silent
from tests.waits import wait_for_state

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SHORT = {
    "ASYNC_DOWNLOADS_TEST_SET_HEARTBEAT_INTERVAL": "0.3",
    "ASYNC_DOWNLOADS_TEST_SET_WORKER_TIMEOUT": "1.5",
    "ASYNC_DOWNLOADS_TEST_SET_STALL_TIMEOUT": "2",
    "ASYNC_DOWNLOADS_TEST_SET_PENDING_WAIT": "1",
}
QUEUE = f"{django_settings.CELERY_TASK_DEFAULT_QUEUE}-liveness"
STALLED = "The export stopped responding."
WAITING = "Waiting for a worker…"


@pytest.fixture(scope="module")
def web(django_db_setup):
    process, url = start_uvicorn(**SHORT)
    yield url
    stop(process)


def start_prefork_worker():
    command = [sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker", "--pool", "prefork",
               "--concurrency", "1", "-Q", QUEUE, "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
               "--without-heartbeat"]
    process = subprocess.Popen(command, env=child_env(**SHORT))
    ping.apply_async(queue=QUEUE).get(timeout=60)
    return process


def children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as file:
                    stat = file.read()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                found.append(int(entry))
    return found


def stream_of(web, user):
    return StreamReader(f"{web}{partials.events_url(user.pk)}", session_cookies(user))


def next_containing(stream, text, timeout):
    deadline = time.monotonic() + timeout
    while text not in (event := stream.next(timeout=max(0.1, deadline - time.monotonic())))["data"]:
        pass
    return event


@pytest.mark.parametrize("victim", ["pool process", "main process"])
def test_a_worker_killed_while_its_task_is_silent_is_shown_as_failed(web, alice, victim):
    worker = start_prefork_worker()
    try:
        _, key = cache.init_download(alice, "quiet.csv")
        with stream_of(web, alice) as stream:
            silent.apply_async((key,), {"seconds": 60}, queue=QUEUE)
            wait_for_state(key, {"running"})
            time.sleep(3)  # longer than both timeouts: the beats keep it running
            assert cache.get_download(key)["state"] == "running"

            pids = children(worker.pid) if victim == "pool process" else [worker.pid]
            assert len(pids) == 1
            os.kill(pids[0], signal.SIGKILL)
            killed = time.monotonic()
            failed = next_containing(stream, STALLED, timeout=10)
            assert f'id="download-{key}"' in failed["data"]
            assert time.monotonic() - killed < 1.5 + 3
        assert cache.get_download(key)["state"] == "error"
    finally:
        for pid in children(worker.pid):
            os.kill(pid, signal.SIGKILL)
        stop(worker)


def test_a_pending_download_waits_for_a_worker_then_runs_from_its_start_however_silent(web, alice):
    _, key = cache.init_download(alice, "queued.csv")
    with stream_of(web, alice) as stream:
        # No worker reads this queue yet. Then 4 s without a report, past the 2 s stall timeout.
        silent.apply_async((key,), {"seconds": 4}, queue=QUEUE)
        waiting = next_containing(stream, WAITING, timeout=10)
        assert f'id="download-{key}"' in waiting["data"]
        assert cache.get_download(key)["state"] == "pending"
        worker = start_prefork_worker()
        try:
            # Running as soon as the worker starts the task, which never reports progress.
            taken = next_containing(stream, "async-download--running", timeout=15)
            assert WAITING not in taken["data"] and 'aria-valuenow="0"' in taken["data"]
            done = next_containing(stream, "queued.csv is ready to download.", timeout=15)
            assert STALLED not in done["data"]
        finally:
            stop(worker)
    assert cache.get_download(key)["state"] == "complete"


@pytest.fixture
def db_worker(django_db_setup):
    """A real ``manage.py db_worker`` process (django-tasks-db) with the short timeouts."""
    process = subprocess.Popen(
        [sys.executable, "-m", "django", "db_worker", "--interval", "0.05", "--no-startup-delay"],
        env=child_env(**SHORT), stdout=subprocess.DEVNULL,
    )
    yield process
    stop(process)


def test_a_killed_db_worker_is_noticed_too(web, alice, db_worker):
    from async_downloads.shortcuts import start_download
    from tests.testapp import framework_tasks

    with stream_of(web, alice) as stream:
        _, key = start_download(alice, "quiet.csv", framework_tasks.silent, kwargs={"seconds": 60})
        wait_for_state(key, {"running"})
        time.sleep(3)
        assert cache.get_download(key)["state"] == "running"
        db_worker.kill()
        db_worker.wait()
        next_containing(stream, STALLED, timeout=10)
    assert cache.get_download(key)["state"] == "error"

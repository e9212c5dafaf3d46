"""Real processes racing on one Redis: no download is lost, and a cleared one stays cleared.

Each child is a fresh Python process with this run's settings (``tests.processes.child_env``).
Children wait until all of them are ready, then start together.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.cache import caches

from async_downloads import cache, store
from tests import stores
from tests.processes import child_env, stop

# On the cache and on PostgreSQL; the children must see the rows the test wrote, hence
# transaction=True. SQLite takes one writer at a time (README, "Choosing a store"): its
# concurrency is that of its file lock, not the store's, and is not raced here.
pytestmark = [
    pytest.mark.django_db(transaction=True, databases=stores.DATABASES),
    pytest.mark.usefixtures("record_store"),
    pytest.mark.stores("cache", "postgres"),
]

CHILD = r"""
import json, sys, time

import django

django.setup()
from async_downloads import cache

job = json.loads(sys.argv[1])
if job.get("transport"):
    from django.conf import settings

    settings.ASYNC_DOWNLOADS_TRANSPORT = job["transport"]
print("ready", flush=True)
sys.stdin.readline()  # go

if job["role"] == "init":
    result = [cache.init_download(job["user"], f"{n}.csv")[1] for n in range(job["count"])]
elif job["role"] == "progress":
    # Report progress on every key, over and over, then try to save them all.
    end = time.monotonic() + job["seconds"]
    rounds = 0
    while time.monotonic() < end:
        rounds += 1
        for key in job["keys"]:
            cache.set_percentage(key, rounds % 99 + 1)
    for key in job["keys"]:
        cache.save_download(key, [["late"]])
    result = rounds
elif job["role"] == "clear":
    time.sleep(job["delay"])
    for key in job["keys"]:
        cache.clear_download(key)
        time.sleep(job["pause"])
    result = len(job["keys"])
print(json.dumps(result), flush=True)
"""


def run_together(jobs, timeout=180):
    """Run one child per job, started at the same moment; return their results in order."""
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(job)],
            env=child_env(**stores.env()),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for job in jobs
    ]
    try:
        for child in children:
            assert child.stdout.readline() == "ready\n", "a child failed to start (see its stderr)"
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        outputs = [child.communicate(timeout=timeout)[0] for child in children]
        assert [child.returncode for child in children] == [0] * len(children)
        return [json.loads(output) for output in outputs]
    finally:
        for child in children:
            stop(child)


def storage_root(settings):
    return Path(settings.STORAGES["default"]["OPTIONS"]["location"])


def test_eight_processes_starting_downloads_lose_none(alice):
    """The original's read-modify-write of the collection lost downloads here.

    The children use the polling transport: what is raced here is the collection, and
    publishing would render the user's whole list (up to 400 rows) for every start.
    """
    results = run_together([{"role": "init", "user": alice.pk, "count": 50, "transport": "poll"}] * 8)
    keys = [key for keys in results for key in keys]
    assert len(set(keys)) == 400
    if not store.in_database():
        collection = caches["default"].get(cache.get_collection_key(alice))
        assert sorted(collection) == sorted(keys)
    assert len(store.read_many(keys)) == 400
    assert len(cache.get_downloads(alice)) == 400


def test_a_download_cleared_while_its_task_reports_progress_stays_cleared(settings, alice):
    keys = [cache.init_download(alice, f"{n}.csv")[1] for n in range(8)]
    progress = {"role": "progress", "keys": keys, "seconds": 3.5}
    clear = {"role": "clear", "keys": keys, "delay": 0.8, "pause": 0.1}
    *rounds, cleared = run_together([progress] * 4 + [clear])

    assert cleared == len(keys)
    assert min(rounds) > 3, "the progress reporters hardly ran; the race was not tested"
    for key in keys:
        assert cache.get_download(key) is None, f"{key} came back after it was cleared"
        assert caches["default"].get(key) is None
        assert not (storage_root(settings) / "downloads" / key).exists()
    assert cache.get_downloads(alice) == []
    assert caches["default"].get(cache.get_collection_key(alice)) is None


@pytest.mark.stores("cache")  # a database store has no collection to rewrite: a list is a query
def test_downloads_started_while_others_are_cleared(alice):
    """Starting and clearing both rewrite the collection: neither may undo the other."""
    old = [cache.init_download(alice, f"old-{n}.csv")[1] for n in range(30)]
    # Polling, as above: publishing would render the whole list for every start and clear.
    init = {"role": "init", "user": alice.pk, "count": 25, "transport": "poll"}
    clear = {"role": "clear", "keys": old, "delay": 0, "pause": 0, "transport": "poll"}
    *started, _ = run_together([init] * 4 + [clear])

    new = [key for keys in started for key in keys]
    if not store.in_database():
        collection = caches["default"].get(cache.get_collection_key(alice))
        assert sorted(collection) == sorted(new)
    assert sorted(d["key"] for d in cache.get_downloads(alice)) == sorted(new)

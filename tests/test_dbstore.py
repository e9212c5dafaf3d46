"""What only the database store has: rows, queries, row locks, expiry, and outages of the database.

The cache API's behaviour on this store is tested by the parametrised suite (tests/stores.py);
here is what that suite cannot see.
"""

import datetime
import io
import uuid

import pytest
from django.core.management import CommandError, call_command
from django.db import OperationalError, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from async_downloads import cache, checks, dbstore, events, store
from async_downloads.models import Download
from async_downloads.shortcuts import start_download
from tests import stores
from tests.test_limits import CountedTask
from tests.threads import together

pytestmark = [
    pytest.mark.django_db(databases=stores.DATABASES),
    pytest.mark.usefixtures("record_store"),
    pytest.mark.stores("sqlite", "postgres"),
]
threaded = pytest.mark.django_db(transaction=True, databases=stores.DATABASES)


def test_a_row_holds_the_record_and_its_columns(alice, media):
    _, key = cache.init_download(alice, "Orders 2026.xlsx", name="Orders")
    cache.save_download(key, [["id"], [1]])
    row = dbstore.rows().get(pk=key)
    record = cache.get_download(key)
    assert (row.user_id, row.name, row.filename, row.format, row.state) == (
        alice.pk, "Orders", "Orders 2026.xlsx", "xlsx", "complete"
    )
    assert row.finished is not None and row.percentage == 100
    assert row.expires.timestamp() == pytest.approx(record["expires"], abs=0.001)
    assert record["timestamp"] == row.created and timezone.is_aware(record["timestamp"])
    assert record["user_id"] == alice.pk and record["key"] == key


def test_a_users_list_is_one_query(alice, bob):
    for number in range(50):
        cache.init_download(alice, f"{number}.csv")
    cache.init_download(bob, "theirs.csv")
    with CaptureQueriesContext(connections[dbstore.alias()]) as queries:
        listed = cache.get_downloads(alice)
    assert len(listed) == 50 and len(queries) == 1
    assert "ORDER BY" in queries[0]["sql"] and str(alice.pk) in queries[0]["sql"]


@pytest.mark.stores("sqlite")  # PostgreSQL's planner scans a table this small whole
def test_the_list_query_uses_the_users_index(alice):
    for number in range(5):
        cache.init_download(alice, f"{number}.csv")
    plan = dbstore.rows().filter(user_id=alice.pk, expires__gt=timezone.now()).order_by("-created").explain()
    assert "async_downl_user_created" in plan


def test_an_expired_row_is_never_read_and_the_cleanup_deletes_it(alice, media):
    _, live = cache.init_download(alice, "live.csv")
    _, old = cache.init_download(alice, "old.csv")
    cache.save_download(old, [["x"]])
    dbstore.rows().filter(pk=old).update(expires=timezone.now() - datetime.timedelta(seconds=1))
    assert cache.get_download(old) is None
    assert cache.get_user_download(alice, old) is None
    assert [record["key"] for record in cache.get_downloads(alice)] == [live]
    cache.set_percentage(old, 50)  # progress on it changes nothing
    assert dbstore.rows().get(pk=old).percentage == 100
    assert cache.clear_download(old, alice) is False
    call_command("cleanup_expired_downloads", stdout=io.StringIO())
    assert list(dbstore.rows().values_list("pk", flat=True)) == [uuid.UUID(live)]
    assert not (media / "downloads" / old).exists()


@pytest.mark.stores("cache", "sqlite", "postgres")
def test_a_deleted_users_downloads_go_with_their_files(django_user_model, media):
    carol = django_user_model.objects.create_user("carol")
    dave = django_user_model.objects.create_user("dave")
    _, key = cache.init_download(carol, "mine.csv")
    cache.save_download(key, [["secret"]])
    _, kept = cache.init_download(dave, "theirs.csv")
    carol_pk = carol.pk
    carol.delete()
    assert cache.get_downloads(carol_pk) == []
    assert cache.get_download(key) is None
    assert not (media / "downloads" / key).exists()
    assert [record["key"] for record in cache.get_downloads(dave)] == [kept]


@threaded
def test_concurrent_changes_of_one_row_lose_none(alice):
    """Each change is read and written under the row's lock: 8 threads x 25 increments."""
    _, key = cache.init_download(alice, "a.csv")
    store.update(key, lambda record: record.update(rows_done=0))
    def increment(record):
        record["rows_done"] += 1

    def run():
        for _ in range(25):
            store.update(key, increment)

    together(*[run] * 8)
    assert cache.get_download(key)["rows_done"] == 200


@threaded
@pytest.mark.stores("postgres")
def test_a_lost_connection_is_reopened_and_the_call_repeated(alice, caplog):
    """The database restarted, or a pooler dropped the session: the next call reconnects."""
    _, key = cache.init_download(alice, "a.csv")
    connection = connections[dbstore.alias()]
    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    other = connection.copy()
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    finally:
        other.close()
    cache.set_percentage(key, 40)  # meets the dead session, reconnects, and writes
    assert cache.get_download(key)["percentage"] == 40
    assert "The database is unreachable" in caplog.text


@threaded
def test_inside_a_transaction_of_the_caller_an_outage_is_the_callers_to_handle(alice):
    _, key = cache.init_download(alice, "a.csv")
    calls = []

    def failing():
        calls.append(1)
        raise OperationalError("server closed the connection unexpectedly")

    with transaction.atomic(using=dbstore.alias()), pytest.raises(OperationalError):
        dbstore._patiently(failing)
    assert calls == [1]  # not repeated: the caller's transaction is broken, only it can start again


def test_the_migrations_match_the_models():
    call_command("makemigrations", "async_downloads", "--check", "--dry-run", stdout=io.StringIO())


@pytest.mark.stores("cache")
class TestChecks:
    def test_an_unknown_store_is_an_error(self, settings):
        settings.ASYNC_DOWNLOADS_STORE = "files"
        assert [message.id for message in checks.check_store()] == ["async_downloads.E010"]

    def test_a_database_alias_that_does_not_exist_is_an_error(self, settings):
        settings.ASYNC_DOWNLOADS_STORE = "database"
        settings.ASYNC_DOWNLOADS_DATABASE = "records"
        messages = checks.check_store()
        assert [message.id for message in messages] == ["async_downloads.E011"]
        assert "'records'" in messages[0].msg

    @pytest.mark.parametrize("value", ["cache", "database", "DATABASE"])
    def test_the_stores_pass(self, settings, value):
        settings.ASYNC_DOWNLOADS_STORE = value
        assert checks.check_store() == []


def test_the_model_reads_as_its_name(alice):
    _, key = cache.init_download(alice, "a.csv", name="Orders")
    assert str(Download.objects.using(dbstore.alias()).get(pk=key)) == "Orders"


@threaded
def test_a_task_started_inside_a_transaction_starts_when_it_commits(alice):
    """Under ATOMIC_REQUESTS, say: a worker that started at once could not see the row yet."""
    task = CountedTask()
    with transaction.atomic(using=dbstore.alias()):
        _, key = start_download(alice, "a.csv", task)
        assert task.calls == []
    assert task.calls == [((key,), {})]

    with pytest.raises(RuntimeError), transaction.atomic(using=dbstore.alias()):
        _, gone = start_download(alice, "b.csv", task)
        raise RuntimeError("the view failed")
    assert len(task.calls) == 1 and cache.get_download(gone) is None


@pytest.mark.stores("cache")
def test_in_the_cache_store_the_task_starts_at_once(alice):
    task = CountedTask()
    with transaction.atomic():
        _, key = start_download(alice, "a.csv", task)
        assert task.calls == [((key,), {})]


class TestCopyFromTheCache:
    """``manage.py copy_downloads_to_database``: moving a site from the cache store."""

    def copy(self, *args):
        out = io.StringIO()
        call_command("copy_downloads_to_database", *args, stdout=out)
        return out.getvalue().strip()

    def test_the_cache_stores_downloads_are_listed_and_served_from_rows(self, settings, alice, bob, media, client):
        settings.ASYNC_DOWNLOADS_STORE = "cache"
        _, done = cache.init_download(alice, "done.csv")
        cache.save_download(done, [["id"], [7]])
        _, running = cache.init_download(alice, "running.csv")
        cache.set_percentage(running, 30)
        _, theirs = cache.init_download(bob, "theirs.csv")
        settings.ASYNC_DOWNLOADS_STORE = "database"
        assert cache.get_downloads(alice) == []

        assert self.copy() == "Copied 3 download(s) into the database; replaced 0 older row(s)."
        listed = cache.get_downloads(alice)
        assert [(r["key"], r["state"], r["percentage"]) for r in listed] == [
            (running, "running", 30), (done, "complete", 100)
        ]
        assert [r["key"] for r in cache.get_downloads(bob)] == [theirs]
        client.force_login(alice)
        response = client.get(cache.get_download(done)["url"])
        assert b"".join(response.streaming_content) == b"id\n7\n"
        assert client.get(reverse("async_downloads:download", args=[theirs])).status_code == 404  # bob's

        assert self.copy() == "Copied 0 download(s) into the database; replaced 0 older row(s)."

    def test_a_record_that_changed_in_the_cache_since_replaces_its_row(self, settings, alice):
        settings.ASYNC_DOWNLOADS_STORE = "cache"
        _, key = cache.init_download(alice, "a.csv")
        settings.ASYNC_DOWNLOADS_STORE = "database"
        self.copy()
        settings.ASYNC_DOWNLOADS_STORE = "cache"
        cache.set_percentage(key, 60)  # an old worker still reporting to the cache
        settings.ASYNC_DOWNLOADS_STORE = "database"
        assert self.copy("--user", str(alice.pk)) == "Copied 0 download(s) into the database; replaced 1 older row(s)."
        assert cache.get_download(key)["percentage"] == 60

    def test_an_unknown_user_is_a_clear_error(self):
        with pytest.raises(CommandError, match="No such user"):
            self.copy("--user", "987654")


@threaded
@pytest.mark.stores("cache", "sqlite", "postgres")
def test_a_cancel_racing_the_completion_ends_in_one_state(alice, media):
    """Twenty times: a cancel and the task's save at the same moment; one wins, and the file agrees."""
    finishes = []

    def receiver(record, kind, **kwargs):
        finishes.append((record["key"], kind))

    events.download_finished.connect(receiver)
    try:
        for round_ in range(20):
            _, key = cache.init_download(alice, f"{round_}.csv")
            cache.set_percentage(key, 50)
            together(
                lambda key=key: cache.cancel_download(key),
                lambda key=key, n=round_: cache.save_download(key, [["x"], [n]]),
            )
            record = cache.get_download(key)
            assert record["state"] in ("complete", "cancelled")
            has_file = (media / "downloads" / key / f"{round_}.csv").exists()
            assert has_file == (record["state"] == "complete"), (round_, record["state"])
            kinds = [kind for finished, kind in finishes if finished == key]
            assert kinds == [events.COMPLETED if record["state"] == "complete" else events.CANCELLED]
    finally:
        events.download_finished.disconnect(receiver)

"""The cache API of the original (``async_downloads.cache``), on a real Redis.

Records are read back through the Django cache and, where timeouts matter,
straight from Redis, so these tests check what another process would see.
"""

import datetime
import decimal
import fractions
import math
import re
import timeit
import uuid

import pytest
from django.conf import settings as django_settings
from django.core.cache import InvalidCacheBackendError, caches
from django.core.files.storage import FileSystemStorage

from async_downloads import cache, dbstore, events, store
from tests import stores

# One suite for every record store (tests/stores.py); what only the cache store has is marked so.
pytestmark = [pytest.mark.django_db(databases=stores.DATABASES), pytest.mark.usefixtures("record_store")]
cache_only = pytest.mark.stores("cache")

UUID4 = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")
LEGACY_KEYS = {"timestamp", "filepath", "name", "complete", "errors", "percentage", "css_class", "url"}


class UndeletableStorage(FileSystemStorage):
    """A storage whose deletes fail, like a remote storage during an outage."""

    def delete(self, name):
        raise OSError(f"cannot delete {name}")


def redis_key(key, alias="default"):
    """The key under which Django's RedisCache stores ``key``."""
    return f"{django_settings.CACHES[alias]['KEY_PREFIX']}:1:{key}"


def ms_left(redis_client, key):
    return redis_client.pttl(redis_key(key))


@pytest.fixture
def key(alice):
    """A new download of alice's."""
    return cache.init_download(alice, "a.csv")[1]


@pytest.fixture
def writes(key, monkeypatch, record_store):
    """The percentages written to the store after ``key`` was created (the writes still happen)."""
    written = []
    module = store if record_store == "cache" else dbstore
    real_write = module.write

    def counting_write(*args):
        written.append(next(arg for arg in args if isinstance(arg, dict))["percentage"])
        real_write(*args)

    monkeypatch.setattr(module, "write", counting_write)
    return written


class TestInitDownload:
    def test_returns_the_collection_key_and_a_download_key(self, alice):
        collection_key, key = cache.init_download(alice, "orders.csv")
        assert collection_key == f"async_downloads/{alice.pk}" == cache.get_collection_key(alice)
        assert UUID4.match(key)

    def test_record_has_the_legacy_keys_and_a_state(self, alice):
        _, key = cache.init_download(alice, "orders.csv", name="Orders")
        record = cache.get_download(key)
        assert record.keys() >= LEGACY_KEYS
        assert record["filepath"] == f"downloads/{key}/orders.csv"
        assert (record["name"], record["complete"], record["errors"]) == ("Orders", False, "")
        assert (record["percentage"], record["css_class"], record["url"]) == (0, None, "")
        assert isinstance(record["timestamp"], datetime.datetime)
        assert record["state"] == "pending"
        assert record["created"] == record["updated"] == pytest.approx(datetime.datetime.now().timestamp(), abs=5)
        assert (record["key"], record["user_id"], record["filename"]) == (key, alice.pk, "orders.csv")

    def test_name_defaults_to_the_filename(self, alice):
        _, key = cache.init_download(alice, "orders.csv")
        assert cache.get_download(key)["name"] == "orders.csv"

    def test_css_class_setting_is_copied_into_the_record(self, settings, alice):
        settings.ASYNC_DOWNLOADS_CSS_CLASS = "wide"
        _, key = cache.init_download(alice, "orders.csv")
        assert cache.get_download(key)["css_class"] == "wide"

    @cache_only
    def test_collection_key_format_setting(self, settings, alice):
        settings.ASYNC_DOWNLOADS_COLLECTION_KEY_FORMAT = "exports:{}"
        collection_key, key = cache.init_download(alice, "orders.csv")
        assert collection_key == f"exports:{alice.pk}"
        assert caches["default"].get(collection_key) == [key]

    @cache_only
    def test_collection_lists_keys_newest_first_as_before(self, alice):
        """Code that reads the collection from the cache directly keeps working."""
        collection_key, first = cache.init_download(alice, "1.csv")
        _, second = cache.init_download(alice, "2.csv")
        assert caches["default"].get(collection_key) == [second, first]


class TestReading:
    def test_get_downloads_newest_first(self, alice):
        keys = [cache.init_download(alice, f"{n}.csv")[1] for n in range(5)]
        assert [d["key"] for d in cache.get_downloads(alice)] == keys[::-1]

    def test_get_downloads_only_the_users_own(self, alice, bob):
        _, mine = cache.init_download(alice, "mine.csv")
        _, theirs = cache.init_download(bob, "theirs.csv")
        assert [d["key"] for d in cache.get_downloads(alice)] == [mine]
        assert [d["key"] for d in cache.get_downloads(bob)] == [theirs]

    def test_a_user_without_downloads_has_none(self, alice):
        assert cache.get_downloads(alice) == []

    def test_the_downloads_of_several_users_are_read_at_once(self, alice, bob, django_user_model):
        carol = django_user_model.objects.create_user("carol", password="carol-pw")
        mine = [cache.init_download(alice, f"{n}.csv")[1] for n in range(2)]
        _, theirs = cache.init_download(bob, "theirs.csv")
        found = store.read_downloads_of([alice.pk, bob.pk, carol.pk])
        assert {pk: [r["key"] for r in records] for pk, records in found.items()} == {
            alice.pk: mine[::-1], bob.pk: [theirs], carol.pk: []}
        assert found[alice.pk] == cache.get_downloads(alice)

    def test_get_user_download_checks_the_owner(self, alice, bob):
        _, key = cache.init_download(alice, "mine.csv")
        assert cache.get_user_download(alice, key)["key"] == key
        assert cache.get_user_download(bob, key) is None

    @pytest.mark.parametrize(
        "key", [None, "", "nope", "async_downloads/1", "../../etc/passwd", "0b7e1c52-4f3a-4d9e-8a61-2c5d9f0e7a13", 42]
    )
    def test_unknown_or_malformed_keys_read_as_none(self, key):
        assert cache.get_download(key) is None

    def test_a_malformed_key_never_reaches_the_cache(self, alice):
        collection_key, _ = cache.init_download(alice, "a.csv")
        assert cache.get_download(collection_key) is None


class TestSetPercentage:
    @pytest.mark.parametrize(
        "given, shown",
        [
            (-5, 0), (0, 0), (42.7, 42), (100, 100), (1e9, 100),
            (decimal.Decimal("12.5"), 12), (fractions.Fraction(1, 3), 0),
        ],
    )
    def test_clamped_to_0_to_100_and_made_whole(self, alice, given, shown):
        _, key = cache.init_download(alice, "a.csv")
        cache.set_percentage(key, given)
        record = cache.get_download(key)
        assert record["percentage"] == shown and type(record["percentage"]) is int
        assert record["state"] == "running"

    @pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "12", None, True, [50]])
    def test_not_a_finite_number_raises_and_changes_nothing(self, alice, value):
        _, key = cache.init_download(alice, "a.csv")
        cache.set_percentage(key, 30)
        before = cache.get_download(key)
        with pytest.raises(ValueError):
            cache.set_percentage(key, value)
        assert cache.get_download(key) == before

    def test_same_value_is_not_written_again(self, key, writes):
        for _ in range(5):
            cache.set_percentage(key, 30)
        assert writes == [30]

    def test_unknown_download_is_not_created(self):
        key = str(uuid.uuid4())
        cache.set_percentage(key, 50)
        assert cache.get_download(key) is None
        assert caches["default"].get(key) is None


class TestUpdatePercentage:
    def report(self, key, total, resolution=10):
        for cur in range(total):
            cache.update_percentage(key, total, cur, resolution)

    def test_moves_in_steps_and_writes_only_changes(self, key, writes):
        self.report(key, 100)
        assert writes == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99]

    def test_last_row_shows_99_and_saving_shows_100(self, alice, media):
        _, key = cache.init_download(alice, "a.csv")
        self.report(key, 20)
        assert cache.get_download(key)["percentage"] == 99
        cache.save_download(key, [["x"]])
        assert cache.get_download(key)["percentage"] == 100

    def test_fewer_rows_than_the_resolution_still_move(self, key, writes):
        """The original never reported progress when total < resolution."""
        self.report(key, 3)
        assert writes == [30, 60, 99]

    def test_one_row(self, key, writes):
        self.report(key, 1)
        assert writes == [99]

    def test_total_zero_is_no_error_and_no_write(self, key, writes):
        cache.update_percentage(key, 0, 0)
        assert writes == []
        assert cache.get_download(key)["state"] == "pending"

    @pytest.mark.parametrize("resolution, expected", [(0, [0, 99]), (-3, [0, 99]), (1, [0, 99]), (2, [0, 50, 99])])
    def test_low_resolution_is_capped_to_one(self, key, writes, resolution, expected):
        self.report(key, 10, resolution)
        assert writes == expected

    def test_high_resolution_is_capped_to_100(self, key, writes):
        self.report(key, 1000, resolution=1000)
        assert writes == list(range(100))

    @cache_only
    def test_no_cache_access_between_steps(self, settings, alice):
        """O(1) per row: deciding that nothing changed needs no cache at all."""
        _, key = cache.init_download(alice, "a.csv")
        total = 1_000_000
        cache.update_percentage(key, total, 500_000, resolution=100)  # shows 50
        settings.ASYNC_DOWNLOADS_CACHE_NAME = "no-such-cache"
        for cur in range(500_001, 509_999):  # still 50
            cache.update_percentage(key, total, cur, resolution=100)
        with pytest.raises(InvalidCacheBackendError):
            cache.update_percentage(key, total, 509_999, resolution=100)  # 51 needs the cache

    def test_no_store_access_between_steps(self, alice, monkeypatch):
        """The same, for every store: between two steps, nothing is read or written."""
        _, key = cache.init_download(alice, "a.csv")
        total = 1_000_000
        cache.update_percentage(key, total, 500_000, resolution=100)  # shows 50
        calls = []
        for name in ("read", "read_downloads", "update", "transition"):
            real = getattr(store, name)
            counted = lambda *args, _real=real, **kwargs: calls.append(1) or _real(*args, **kwargs)  # noqa: E731
            monkeypatch.setattr(store, name, counted)
        for cur in range(500_001, 509_999):  # still 50
            cache.update_percentage(key, total, cur, resolution=100)
        assert calls == []
        cache.update_percentage(key, total, 509_999, resolution=100)  # 51 is written
        assert calls and cache.get_download(key)["percentage"] == 51

    def test_cost_does_not_grow_with_the_resolution(self, alice):
        """The original looped over the resolution on every call."""
        _, key = cache.init_download(alice, "a.csv")
        cache.update_percentage(key, 10**9, 12345, resolution=1)

        def cost(resolution):
            call = lambda: cache.update_percentage(key, 10**9, 12345, resolution)  # noqa: E731
            return min(timeit.repeat(call, number=3000, repeat=5))

        assert cost(100) < 3 * cost(1)


ROW_KEYS = {"rows_done", "rows_total", "rows_started_at", "rows_done_at_start", "rows_reported_at"}


class Clock:
    """Stands in for the ``time`` module in ``async_downloads.cache``: both clocks move only when told."""

    def __init__(self):
        self.now = datetime.datetime.now().timestamp()

    def time(self):
        return self.now

    def monotonic(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(cache, "time", clock)
    return clock


@pytest.fixture
def published():
    """The percentages of the progress events published (``updated``), in order."""
    seen = []

    def receiver(record, kind, **kwargs):
        if kind == events.UPDATED:
            seen.append(record["percentage"])

    events.download_changed_signal.connect(receiver)
    yield seen
    events.download_changed_signal.disconnect(receiver)


class TestRowsReported:
    """update_percentage keeps the rows done and what the rate is measured with, on the writes it makes anyway."""

    def report(self, key, clock, total, rows, seconds_per_row=1.0):
        for cur in rows:
            cache.update_percentage(key, total, cur)
            clock.advance(seconds_per_row)

    def test_each_write_keeps_the_rows_done_and_the_total(self, key, clock):
        start = clock.now
        self.report(key, clock, 100, range(35))  # the last write was at row 29 (30 %)
        record = cache.get_download(key)
        assert (record["percentage"], record["rows_done"], record["rows_total"]) == (30, 30, 100)
        assert (record["rows_started_at"], record["rows_done_at_start"]) == (start, 1)
        assert record["rows_reported_at"] == start + 29
        assert type(record["rows_done"]) is int and type(record["rows_total"]) is int

    def test_no_extra_writes_or_events(self, key, clock, writes, published):
        self.report(key, clock, 100, range(100), seconds_per_row=0.01)
        assert writes == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99]
        assert published == writes

    def test_the_first_report_of_a_running_task_is_written_unpublished(self, key, clock, writes, published):
        """A worker's start already showed 0 %: the first row is written all the same, so that the rate is
        measured from it, but it changes nothing the row shows yet, so it is not sent."""
        cache.task_started(key)
        published.clear()
        start = clock.now
        self.report(key, clock, 100, range(100), seconds_per_row=0.01)
        assert writes == [0, 0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99]  # task_started's, then the first row's
        assert published == [10, 20, 30, 40, 50, 60, 70, 80, 90, 99]
        assert cache.get_download(key)["rows_started_at"] == start

    def test_the_early_return_path_is_unchanged(self, key, clock, monkeypatch):
        """Between steps nothing but a comparison and the monotonic clock: no cache, no wall clock."""
        cache.update_percentage(key, 10**9, 0)

        def forbidden():
            raise AssertionError("time.time() on the common path")

        monkeypatch.setattr(clock, "time", forbidden)
        for cur in range(1, 10_000):
            cache.update_percentage(key, 10**9, cur)

    @pytest.mark.parametrize(
        "total, cur", [(200.0, 49.0), (decimal.Decimal(200), decimal.Decimal("49.5")), (fractions.Fraction(200), 49)]
    )
    def test_numbers_of_another_type_are_kept_as_whole_rows(self, key, clock, total, cur):
        cache.update_percentage(key, total, cur)
        record = cache.get_download(key)
        assert (record["rows_done"], record["rows_total"]) == (50, 200)
        assert type(record["rows_done"]) is int and type(record["rows_total"]) is int

    @pytest.mark.parametrize("cur, done", [(-5, 0), (150, 100)])
    def test_rows_done_stay_within_the_total(self, key, clock, cur, done):
        cache.update_percentage(key, 100, cur)
        assert cache.get_download(key)["rows_done"] == done

    def test_a_heartbeat_write_moves_the_rows_and_sends_nothing(self, key, clock, published):
        cache.update_percentage(key, 10**9, 0)
        clock.advance(cache.heartbeat_interval() + 1)
        cache.update_percentage(key, 10**9, 4_999)  # still 0 %, written as the heartbeat is due
        record = cache.get_download(key)
        assert (record["percentage"], record["rows_done"], record["rows_reported_at"]) == (0, 5_000, clock.now)
        assert published == [0]

    def test_set_percentage_drops_the_rows(self, key, clock, published):
        """A task that reported rows and then sets percentages itself has moved on (writing the file, say):
        the rows would no longer describe the bar."""
        self.report(key, clock, 100, range(40))
        cache.set_percentage(key, 95)
        record = cache.get_download(key)
        assert record["percentage"] == 95
        assert not ROW_KEYS & record.keys()

    def test_set_percentage_alone_keeps_no_rows(self, key):
        cache.set_percentage(key, 40)
        assert not ROW_KEYS & cache.get_download(key).keys()

    def test_rows_after_set_percentage_are_measured_afresh(self, key, clock):
        self.report(key, clock, 100, range(40))
        cache.set_percentage(key, 45)
        clock.advance(60)
        again = clock.now
        self.report(key, clock, 100, range(40, 60))  # rows 40 to 48 still show 40 %: not written
        record = cache.get_download(key)
        assert (record["rows_done"], record["rows_started_at"], record["rows_done_at_start"]) == (60, again + 9, 50)

    def test_a_new_total_or_going_back_measures_afresh(self, key, clock):
        self.report(key, clock, 100, range(60))
        second_pass = clock.now
        self.report(key, clock, 1000, range(0, 300, 10))
        record = cache.get_download(key)
        assert (record["rows_total"], record["rows_started_at"], record["rows_done_at_start"]) == (1000, second_pass, 1)
        third_pass = clock.now
        self.report(key, clock, 1000, range(0, 200, 10))
        assert cache.get_download(key)["rows_started_at"] == third_pass

    def test_a_finished_download_gets_no_rows(self, alice, clock, media):
        _, key = cache.init_download(alice, "a.csv")
        cache.save_download(key, [["x"]])
        cache.update_percentage(key, 100, 50)
        assert not ROW_KEYS & cache.get_download(key).keys()


class TestSetError:
    def test_error_state_with_the_message(self, alice, caplog):
        _, key = cache.init_download(alice, "a.csv")
        cache.set_percentage(key, 40)
        cache.set_error(key, "The report has too many rows; narrow the filter.")
        record = cache.get_download(key)
        assert record["state"] == "error"
        assert record["errors"] == "The report has too many rows; narrow the filter."
        assert record["complete"] is True  # the legacy "finished" flag, so old scripts stop polling
        assert record["url"] == ""
        assert "too many rows" in caplog.text

    def test_save_after_an_error_does_nothing(self, alice, media):
        _, key = cache.init_download(alice, "a.csv")
        cache.set_error(key, "Failed.")
        cache.save_download(key, [["x"]])
        record = cache.get_download(key)
        assert (record["state"], record["errors"], record["url"]) == ("error", "Failed.", "")
        assert not (media / "downloads" / key).exists()

    def test_progress_after_an_error_does_nothing(self, alice):
        _, key = cache.init_download(alice, "a.csv")
        cache.set_error(key, "Failed.")
        cache.set_percentage(key, 50)
        cache.update_percentage(key, 2, 1)
        assert cache.get_download(key)["state"] == "error"

    def test_a_complete_download_stays_complete(self, alice, media):
        _, key = cache.init_download(alice, "a.csv")
        cache.save_download(key, [["x"]])
        cache.set_error(key, "Too late.")
        record = cache.get_download(key)
        assert (record["state"], record["errors"]) == ("complete", "")


class TestClearDownload:
    def test_removes_record_collection_entry_file_and_folder(self, alice, media, record_store):
        collection_key, kept = cache.init_download(alice, "kept.csv")
        _, key = cache.init_download(alice, "a.csv")
        cache.save_download(key, [["x"]])
        assert (media / "downloads" / key / "a.csv").exists()
        assert cache.clear_download(key) is True
        assert cache.get_download(key) is None
        assert [record["key"] for record in cache.get_downloads(alice)] == [kept]
        if record_store == "cache":
            assert caches["default"].get(collection_key) == [kept]
        assert not (media / "downloads" / key).exists()

    @cache_only
    def test_clearing_the_last_download_removes_the_collection(self, alice):
        collection_key, key = cache.init_download(alice, "a.csv")
        cache.clear_download(key)
        assert caches["default"].get(collection_key) is None

    def test_unknown_key_clears_nothing(self, alice):
        assert cache.clear_download(str(uuid.uuid4())) is False
        assert cache.clear_download("../../etc/passwd") is False

    def test_with_a_user_only_their_own(self, alice, bob, media):
        _, key = cache.init_download(bob, "theirs.csv")
        cache.save_download(key, [["secret"]])
        assert cache.clear_download(key, user=alice) is False
        assert cache.get_download(key)["state"] == "complete"
        assert (media / "downloads" / key / "theirs.csv").exists()
        assert cache.clear_download(key, user=bob) is True

    def test_progress_after_a_clear_does_not_bring_it_back(self, alice, media):
        collection_key, key = cache.init_download(alice, "a.csv")
        cache.update_percentage(key, 10, 2)
        cache.clear_download(key)
        cache.set_percentage(key, 50)
        cache.update_percentage(key, 10, 7)
        cache.set_error(key, "Failed.")
        cache.save_download(key, [["x"]])
        assert cache.get_download(key) is None
        assert caches["default"].get(key) is None
        assert caches["default"].get(collection_key) is None
        assert cache.get_downloads(alice) == []
        assert not (media / "downloads" / key).exists()

    def test_a_storage_that_cannot_delete_still_clears_the_record(self, settings, alice, media, caplog):
        """The file stays behind for cleanup_expired_downloads, which will find no record for it."""
        settings.STORAGES = {
            **settings.STORAGES,
            "undeletable": {"BACKEND": "tests.test_cache.UndeletableStorage", "OPTIONS": {"location": str(media)}},
        }
        settings.ASYNC_DOWNLOADS_STORAGE = "undeletable"
        _, key = cache.init_download(alice, "a.csv")
        cache.save_download(key, [["x"]])
        assert cache.clear_download(key) is True
        assert cache.get_download(key) is None
        assert "Could not delete the files" in caplog.text
        assert (media / "downloads" / key / "a.csv").exists()

    def test_cleared_while_the_file_is_written_keeps_no_file(self, alice, media):
        _, key = cache.init_download(alice, "a.csv")

        def rows():
            yield ["first"]
            cache.clear_download(key)  # the user clears it while the task is still writing
            yield ["second"]

        cache.save_download(key, rows())
        assert cache.get_download(key) is None
        assert not (media / "downloads" / key).exists()


@cache_only
class TestCleanupCollection:
    def test_drops_the_keys_of_expired_downloads(self, alice):
        collection_key, first = cache.init_download(alice, "1.csv")
        _, expired = cache.init_download(alice, "2.csv")
        _, last = cache.init_download(alice, "3.csv")
        caches["default"].delete(expired)  # as if it had expired
        cache.cleanup_collection(collection_key)
        assert caches["default"].get(collection_key) == [last, first]

    def test_keeps_the_collections_timeout(self, alice, redis_client):
        """The original re-set the collection with the cache's default timeout (5 minutes)."""
        collection_key, _ = cache.init_download(alice, "1.csv")
        _, expired = cache.init_download(alice, "2.csv")
        before = ms_left(redis_client, collection_key)
        caches["default"].delete(expired)
        cache.cleanup_collection(collection_key)
        after = ms_left(redis_client, collection_key)
        assert abs(before - after) < 2000
        assert after > (24 * 60 * 60 - 5) * 1000

    def test_nothing_expired_changes_nothing(self, alice, redis_client):
        collection_key, key = cache.init_download(alice, "1.csv")
        cache.cleanup_collection(collection_key)
        assert caches["default"].get(collection_key) == [key]

    def test_unknown_collection_is_fine(self):
        cache.cleanup_collection("async_downloads/999999")
        assert caches["default"].get("async_downloads/999999") is None


@cache_only
class TestCollectionOutlivesItsDownloads:
    """The original's TODO: a collection could expire while its downloads still existed."""

    def assert_outlives(self, redis_client, collection_key, keys):
        collection_left = ms_left(redis_client, collection_key)
        for key in keys:
            assert 0 < ms_left(redis_client, key) <= collection_left

    def test_after_init(self, settings, alice, redis_client):
        settings.ASYNC_DOWNLOADS_TIMEOUT = 30
        collection_key, first = cache.init_download(alice, "1.csv")
        _, second = cache.init_download(alice, "2.csv")
        self.assert_outlives(redis_client, collection_key, [first, second])

    def test_a_shorter_timeout_later_does_not_shorten_the_collection(self, settings, alice, redis_client):
        settings.ASYNC_DOWNLOADS_TIMEOUT = 60
        collection_key, long_lived = cache.init_download(alice, "1.csv")
        settings.ASYNC_DOWNLOADS_TIMEOUT = 5
        _, short_lived = cache.init_download(alice, "2.csv")
        self.assert_outlives(redis_client, collection_key, [long_lived, short_lived])
        assert ms_left(redis_client, collection_key) > 55_000

    def test_saving_extends_the_record_and_the_collection(self, settings, alice, media, redis_client):
        settings.ASYNC_DOWNLOADS_TIMEOUT = 10
        collection_key, key = cache.init_download(alice, "1.csv")
        _, other = cache.init_download(alice, "2.csv")
        settings.ASYNC_DOWNLOADS_TIMEOUT = 40
        cache.save_download(key, [["x"]])
        assert ms_left(redis_client, key) > 35_000  # a finished file stays a full timeout
        self.assert_outlives(redis_client, collection_key, [key, other])

    def test_progress_keeps_the_records_expiry(self, settings, alice, redis_client):
        settings.ASYNC_DOWNLOADS_TIMEOUT = 20
        collection_key, key = cache.init_download(alice, "1.csv")
        settings.ASYNC_DOWNLOADS_TIMEOUT = 60
        cache.set_percentage(key, 50)
        assert ms_left(redis_client, key) <= 20_000
        self.assert_outlives(redis_client, collection_key, [key])

    def test_clearing_keeps_the_rest_covered(self, settings, alice, redis_client):
        settings.ASYNC_DOWNLOADS_TIMEOUT = 30
        collection_key, first = cache.init_download(alice, "1.csv")
        _, second = cache.init_download(alice, "2.csv")
        cache.clear_download(second)
        self.assert_outlives(redis_client, collection_key, [first])

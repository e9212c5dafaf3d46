"""Cleanup of expired downloads: their files go, live ones and anything else stay.

A download "expires" here by deleting its record from the cache, which is
what Redis does when the record's timeout runs out, or, in the database store,
by moving its row's expiry into the past.
"""

import datetime
import io
import uuid

import pytest
from django.core.cache import caches
from django.core.files.storage import FileSystemStorage
from django.core.management import call_command
from django.utils import timezone

from async_downloads import cache, cleanup, dbstore, store
from async_downloads.tasks import cleanup_expired_downloads as cleanup_task
from tests import stores

pytestmark = [pytest.mark.django_db(databases=stores.DATABASES), pytest.mark.usefixtures("record_store")]


def expire(key):
    """As if ``key``'s timeout had passed: the cache drops the record, a row's expiry is past."""
    if store.in_database():
        dbstore.rows().filter(pk=key).update(expires=timezone.now() - datetime.timedelta(seconds=1))
    else:
        caches["default"].delete(key)


@pytest.fixture
def saved(alice):
    """``saved(filename)`` makes a finished download of alice's and returns its key."""

    def make(filename="report.csv"):
        _, key = cache.init_download(alice, filename)
        cache.save_download(key, [["x"]])
        return key

    return make


class TestCleanup:
    def test_removes_expired_downloads_and_keeps_live_ones(self, media, saved):
        live, expired = saved("live.csv"), saved("expired.csv")
        expire(expired)
        assert cleanup.cleanup_expired_downloads() == [expired]
        assert not (media / "downloads" / expired).exists()
        assert (media / "downloads" / live / "live.csv").read_bytes() == b"x\n"
        if store.in_database():  # the expired row goes too; the live one stays
            assert set(dbstore.rows().values_list("pk", flat=True)) == {uuid.UUID(live)}

    def test_a_running_download_is_live(self, alice, media, saved):
        _, running = cache.init_download(alice, "running.csv")
        cache.set_percentage(running, 50)
        (media / "downloads" / running).mkdir(parents=True)  # its task is writing there
        (media / "downloads" / running / "part").write_bytes(b"...")
        expired = saved()
        expire(expired)
        assert cleanup.cleanup_expired_downloads() == [expired]
        assert (media / "downloads" / running / "part").exists()

    def test_a_failed_download_whose_record_lives_is_kept(self, alice, media):
        _, key = cache.init_download(alice, "a.csv")
        (media / "downloads" / key).mkdir(parents=True)
        cache.set_error(key, "Failed.")
        assert cleanup.cleanup_expired_downloads() == []
        assert (media / "downloads" / key).exists()

    def test_nothing_to_do(self, media, saved):
        live = saved()
        assert cleanup.cleanup_expired_downloads() == []
        assert (media / "downloads" / live).exists()

    def test_missing_prefix_folder(self, media):
        assert cleanup.cleanup_expired_downloads() == []
        assert not (media / "downloads").exists()

    def test_empty_prefix_folder(self, media):
        (media / "downloads").mkdir(parents=True)
        assert cleanup.cleanup_expired_downloads() == []

    def test_empty_download_folders(self, media, saved):
        """The original crashed on them (it listed the folder and took the first file)."""
        live = saved()
        (media / "downloads" / live / "report.csv").unlink()
        expired = str(uuid.uuid4())
        (media / "downloads" / expired).mkdir()
        assert cleanup.cleanup_expired_downloads() == [expired]
        assert (media / "downloads" / live).is_dir()
        assert not (media / "downloads" / expired).exists()

    def test_nested_content_of_an_expired_download_goes_too(self, media, saved):
        expired = saved()
        (media / "downloads" / expired / "parts" / "deeper").mkdir(parents=True)
        (media / "downloads" / expired / "parts" / "deeper" / "1.bin").write_bytes(b"1")
        (media / "downloads" / expired / "extra.txt").write_bytes(b"2")
        expire(expired)
        assert cleanup.cleanup_expired_downloads() == [expired]
        assert not (media / "downloads" / expired).exists()

    def test_odd_folders_and_stray_files_are_left_alone(self, media, saved):
        expired = saved()
        expire(expired)
        top = media / "downloads"
        odd = ["reports", "not-a-key", str(uuid.uuid4()).upper(), str(uuid.uuid1())]
        for name in odd:
            (top / name).mkdir()
            (top / name / "keep.txt").write_bytes(b"keep")
        (top / "README.txt").write_bytes(b"stray")
        (top / str(uuid.uuid4())).write_bytes(b"a file named like a key")
        assert cleanup.cleanup_expired_downloads() == [expired]
        for name in odd:
            assert (top / name / "keep.txt").exists()
        assert (top / "README.txt").exists()
        assert len(list(top.iterdir())) == len(odd) + 2

    def test_empty_path_prefix_works_at_the_storage_root(self, settings, media, saved):
        settings.ASYNC_DOWNLOADS_PATH_PREFIX = ""
        live, expired = saved("live.csv"), saved("expired.csv")
        (media / "static").mkdir()
        (media / "favicon.ico").write_bytes(b"icon")
        expire(expired)
        assert cleanup.cleanup_expired_downloads() == [expired]
        assert (media / live / "live.csv").exists()
        assert not (media / expired).exists()
        assert (media / "static").is_dir() and (media / "favicon.ico").exists()

    def test_other_path_prefix(self, settings, media, saved):
        settings.ASYNC_DOWNLOADS_PATH_PREFIX = "exports/csv"
        expired = saved()
        expire(expired)
        assert cleanup.cleanup_expired_downloads() == [expired]
        assert (media / "exports" / "csv").is_dir()
        assert not (media / "exports" / "csv" / expired).exists()

    def test_a_prefix_that_is_a_file(self, media):
        media.mkdir(parents=True)
        (media / "downloads").write_bytes(b"not a folder")
        assert cleanup.cleanup_expired_downloads() == []


class StuckFileStorage(FileSystemStorage):
    """A storage that cannot delete files named ``stuck.csv`` (a permission problem, say)."""

    def delete(self, name):
        if name.endswith("stuck.csv"):
            raise PermissionError(f"cannot delete {name}")
        super().delete(name)


def test_a_folder_that_cannot_be_removed_does_not_stop_the_others(settings, media, saved, caplog):
    settings.STORAGES = {
        **settings.STORAGES,
        "stuck": {"BACKEND": "tests.test_cleanup.StuckFileStorage", "OPTIONS": {"location": str(media)}},
    }
    settings.ASYNC_DOWNLOADS_STORAGE = "stuck"
    stuck, expired = saved("stuck.csv"), saved("report.csv")
    expire(stuck)
    expire(expired)
    assert cleanup.cleanup_expired_downloads() == [expired]
    assert (media / "downloads" / stuck / "stuck.csv").exists()
    assert not (media / "downloads" / expired).exists()
    assert f"Could not remove 'downloads/{stuck}'" in caplog.text


class TestCeleryTask:
    def test_registered_under_the_originals_name(self):
        from tests.celery_app import app

        assert cleanup_task.name == "async_downloads.tasks.cleanup_expired_downloads"
        registered = app.tasks["async_downloads.tasks.cleanup_expired_downloads"]
        assert registered.run.__code__ is cleanup_task.run.__code__

    def test_called_directly(self, media, saved):
        live, expired = saved(), saved()
        expire(expired)
        assert cleanup_task() == [expired]
        assert cleanup_task.apply().get() == []
        assert (media / "downloads" / live).exists()
        assert not (media / "downloads" / expired).exists()

    def test_run_by_a_real_worker(self, celery_worker, saved, settings):
        """The worker uses the suite's default storage (no ``media`` fixture: it is another process)."""
        from pathlib import Path

        root = Path(settings.STORAGES["default"]["OPTIONS"]["location"]) / "downloads"
        live, expired = saved(), saved()
        expire(expired)
        removed = cleanup_task.delay().get(timeout=60)
        assert expired in removed and live not in removed
        assert (root / live / "report.csv").exists()
        assert not (root / expired).exists()
        cache.clear_download(live)


class TestManagementCommand:
    def test_removes_expired_downloads(self, media, saved):
        live, expired = saved(), saved()
        expire(expired)
        out = io.StringIO()
        call_command("cleanup_expired_downloads", stdout=out)
        assert out.getvalue() == "Removed 1 expired download(s).\n"
        assert (media / "downloads" / live).exists()
        assert not (media / "downloads" / expired).exists()

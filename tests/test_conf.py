"""Settings: the original's names and defaults, read when used, and the cache alias used everywhere."""

import pytest
from django.core.cache import caches

from async_downloads import cache, cleanup, files
from async_downloads.conf import settings as conf
from async_downloads.tasks import cleanup_expired_downloads

ORIGINAL_DEFAULTS = {
    "TIMEOUT": 60 * 60 * 24,
    "DOWNLOAD_TEMPLATE": "async_downloads/downloads.html",
    "PATH_PREFIX": "downloads",
    "COLLECTION_KEY_FORMAT": "async_downloads/{}",
    "WS_CHANNEL_NAME": "downloads",
    "CACHE_NAME": "default",
    "WS_MODE": False,
    "CSS_CLASS": None,
    "IN_MEMORY_MAX_SIZE_BYTES": 5 * 1e6,
}


@pytest.mark.parametrize("name, default", ORIGINAL_DEFAULTS.items())
def test_default_is_the_originals(settings, name, default):
    if hasattr(settings, f"ASYNC_DOWNLOADS_{name}"):
        delattr(settings, f"ASYNC_DOWNLOADS_{name}")
    assert getattr(conf, name) == default


@pytest.mark.parametrize(
    "name, value",
    [
        ("TIMEOUT", 60),
        ("DOWNLOAD_TEMPLATE", "mine/downloads.html"),
        ("PATH_PREFIX", "exports"),
        ("COLLECTION_KEY_FORMAT", "site-downloads:{}"),
        ("WS_CHANNEL_NAME", "my-downloads"),
        ("CACHE_NAME", "other"),
        ("WS_MODE", True),
        ("CSS_CLASS", "dropdown-menu-end"),
        ("IN_MEMORY_MAX_SIZE_BYTES", 1024),
    ],
)
def test_read_when_used_so_override_settings_works(settings, name, value):
    setattr(settings, f"ASYNC_DOWNLOADS_{name}", value)
    assert getattr(conf, name) == value


def test_empty_cache_name_means_the_default_cache(settings):
    """0.5.x documented an empty ASYNC_DOWNLOADS_CACHE_NAME as "use the default cache"."""
    settings.ASYNC_DOWNLOADS_CACHE_NAME = ""
    assert conf.CACHE_NAME == "default"


def test_unknown_setting_is_an_attribute_error():
    with pytest.raises(AttributeError, match="Unknown async_downloads setting 'TIMEOUTS'"):
        conf.TIMEOUTS  # noqa: B018


class TestCacheName:
    """ASYNC_DOWNLOADS_CACHE_NAME = "other": every read and write goes to that cache."""

    @pytest.fixture(autouse=True)
    def other_cache(self, settings, media):
        settings.ASYNC_DOWNLOADS_CACHE_NAME = "other"

    def test_init_and_read(self, alice):
        collection_key, key = cache.init_download(alice, "a.csv")
        assert caches["other"].get(key)["name"] == "a.csv"
        assert caches["other"].get(collection_key) == [key]
        assert caches["default"].get(key) is None
        assert caches["default"].get(collection_key) is None
        assert [d["key"] for d in cache.get_downloads(alice)] == [key]

    def test_progress_error_and_save(self, alice):
        _, key = cache.init_download(alice, "a.csv")
        cache.update_percentage(key, 10, 4)
        assert caches["other"].get(key)["percentage"] == 50
        cache.save_download(key, [["x"]])
        assert caches["other"].get(key)["state"] == "complete"
        _, failed = cache.init_download(alice, "b.csv")
        cache.set_error(failed, "Too many rows.")
        assert caches["other"].get(failed)["errors"] == "Too many rows."
        assert caches["default"].get(key) is None and caches["default"].get(failed) is None

    def test_cleanup_collection(self, alice):
        collection_key, key = cache.init_download(alice, "a.csv")
        _, expired = cache.init_download(alice, "b.csv")
        caches["other"].delete(expired)
        caches["default"].set(collection_key, ["decoy"])
        cache.cleanup_collection(collection_key)
        assert caches["other"].get(collection_key) == [key]
        assert caches["default"].get(collection_key) == ["decoy"]

    @pytest.mark.parametrize("cleanup_function", [cleanup.cleanup_expired_downloads, cleanup_expired_downloads])
    def test_cleanup_reads_records_from_that_cache(self, alice, media, cleanup_function):
        """The original's task read the default cache and so deleted live files."""
        _, live = cache.init_download(alice, "live.csv")
        _, expired = cache.init_download(alice, "expired.csv")
        for key in (live, expired):
            cache.save_download(key, [["x"]])
        caches["other"].delete(expired)
        caches["default"].set(expired, {"decoy": True})  # must not keep the expired one alive
        assert cleanup_function() == [expired]
        assert (media / files.path_prefix() / live / "live.csv").exists()
        assert not (media / files.path_prefix() / expired).exists()

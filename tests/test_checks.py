"""System checks: configuration mistakes are reported at start-up with a stable id and a hint."""

import importlib.util

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from async_downloads import checks
from async_downloads.sse import ChannelManager

REDIS = {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": "redis://127.0.0.1:6379/13"}


def ids(messages):
    return [message.id for message in messages]


def test_the_test_settings_pass_every_check():
    call_command("check")


class TestCache:
    def test_unknown_alias_is_e001(self, settings):
        settings.ASYNC_DOWNLOADS_CACHE_NAME = "missing"
        [error] = checks.check_cache()
        assert error.id == "async_downloads.E001"
        assert "'missing'" in error.msg
        assert "'default'" in error.hint and "'other'" in error.hint

    def test_configured_alias_is_fine(self, settings):
        settings.ASYNC_DOWNLOADS_CACHE_NAME = "other"
        assert checks.check_cache() == []

    @pytest.mark.parametrize(
        "backend", ["django.core.cache.backends.locmem.LocMemCache", "django.core.cache.backends.dummy.DummyCache"]
    )
    def test_per_process_cache_is_w001(self, settings, backend):
        settings.CACHES = {"default": REDIS, "local": {"BACKEND": backend}}
        settings.ASYNC_DOWNLOADS_CACHE_NAME = "local"
        [warning] = checks.check_cache()
        assert warning.id == "async_downloads.W001"
        assert backend in warning.msg
        assert "RedisCache" in warning.hint

    def test_only_the_configured_alias_matters(self, settings):
        settings.CACHES = {"default": REDIS, "local": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
        assert checks.check_cache() == []


class TestCollectionKeyFormat:
    @pytest.mark.parametrize("key_format", ["async_downloads", "downloads/{}/{}", "downloads/{user}", ""])
    def test_format_without_a_place_for_the_pk_is_e002(self, settings, key_format):
        settings.ASYNC_DOWNLOADS_COLLECTION_KEY_FORMAT = key_format
        [error] = checks.check_collection_key_format()
        assert error.id == "async_downloads.E002"
        assert repr(key_format) in error.msg

    @pytest.mark.parametrize("key_format", ["async_downloads/{}", "site:{0}:downloads"])
    def test_format_with_one_place_for_the_pk_is_fine(self, settings, key_format):
        settings.ASYNC_DOWNLOADS_COLLECTION_KEY_FORMAT = key_format
        assert checks.check_collection_key_format() == []


@pytest.fixture
def without_channels(monkeypatch):
    """As if Django Channels were not installed (it is, for the WS tests)."""
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "channels" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(checks.importlib.util, "find_spec", find_spec)


class TestWsMode:
    def test_ws_mode_without_channels_is_e003(self, settings, without_channels):
        settings.ASYNC_DOWNLOADS_WS_MODE = True
        [error] = checks.check_ws_mode()
        assert error.id == "async_downloads.E003"
        assert error.hint == "pip install 'django-async-downloads[ws]'"

    def test_channels_not_needed_without_ws_mode(self, settings, without_channels):
        settings.ASYNC_DOWNLOADS_WS_MODE = False
        assert checks.check_ws_mode() == []

    def test_ws_mode_with_channels_installed_is_fine(self, settings):
        settings.ASYNC_DOWNLOADS_WS_MODE = True
        assert checks.check_ws_mode() == []


class TestSendfile:
    @pytest.mark.parametrize("mode", [None, "", "x-accel-redirect", "X-Sendfile"])
    def test_known_modes_are_fine(self, settings, mode):
        settings.ASYNC_DOWNLOADS_SENDFILE = mode
        assert checks.check_sendfile() == []

    def test_unknown_mode_is_e004(self, settings):
        settings.ASYNC_DOWNLOADS_SENDFILE = "x-lighttpd-send-file"
        [error] = checks.check_sendfile()
        assert error.id == "async_downloads.E004"
        assert "'x-lighttpd-send-file'" in error.msg


class TestEventBus:
    """SSE from a Celery worker reaches browsers only through Redis (or a GRIP proxy)."""

    def test_sse_without_a_bus_is_w002(self, settings):
        del settings.EVENTSTREAM_REDIS
        [warning] = checks.check_event_bus()
        assert warning.id == "async_downloads.W002"
        assert "EVENTSTREAM_REDIS" in warning.hint

    @pytest.mark.parametrize("setting", ["EVENTSTREAM_REDIS", "GRIP_URL"])
    def test_a_bus_is_fine(self, settings, setting):
        del settings.EVENTSTREAM_REDIS
        setattr(settings, setting, {"host": "localhost"} if setting == "EVENTSTREAM_REDIS" else "http://pushpin:5561")
        assert checks.check_event_bus() == []

    @pytest.mark.parametrize("transport", [{"ASYNC_DOWNLOADS_TRANSPORT": "poll"}, {"ASYNC_DOWNLOADS_WS_MODE": True}])
    def test_not_needed_without_sse(self, settings, transport):
        del settings.EVENTSTREAM_REDIS
        for name, value in transport.items():
            setattr(settings, name, value)
        assert checks.check_event_bus() == []


class OwnChannelManager(ChannelManager):
    """A project's own subclass of the app's channel manager."""


class TestChannelManager:
    """Without the app's channel manager, django-eventstream lets anyone read any channel."""

    @pytest.mark.parametrize(
        "path",
        [
            None,
            "",
            "django_eventstream.channelmanager.DefaultChannelManager",
            "no.such.Manager",
            "nodots",
            "os.path",  # not a class at all
        ],
    )
    def test_anything_but_the_apps_manager_is_w003(self, settings, path):
        if path is None:
            del settings.EVENTSTREAM_CHANNELMANAGER_CLASS
        else:
            settings.EVENTSTREAM_CHANNELMANAGER_CLASS = path
        [warning] = checks.check_channel_manager()
        assert warning.id == "async_downloads.W003"
        assert repr(path or None) in warning.msg

    @pytest.mark.parametrize("path", ["async_downloads.sse.ChannelManager", "tests.test_checks.OwnChannelManager"])
    def test_the_apps_manager_or_a_subclass_is_fine(self, settings, path):
        settings.EVENTSTREAM_CHANNELMANAGER_CLASS = path
        assert checks.check_channel_manager() == []

    def test_not_needed_with_the_polling_transport(self, settings):
        settings.ASYNC_DOWNLOADS_TRANSPORT = "poll"
        del settings.EVENTSTREAM_CHANNELMANAGER_CLASS
        assert checks.check_channel_manager() == []


class TestThroughCallCommand:
    """The checks are registered by the app, so `manage.py check` reports them."""

    def test_errors_stop_the_check_command(self, settings):
        settings.ASYNC_DOWNLOADS_CACHE_NAME = "missing"
        settings.ASYNC_DOWNLOADS_COLLECTION_KEY_FORMAT = "no-placeholder"
        with pytest.raises(SystemCheckError) as raised:
            call_command("check")
        assert "async_downloads.E001" in str(raised.value)
        assert "async_downloads.E002" in str(raised.value)

    def test_ws_mode_without_channels(self, settings, without_channels):
        settings.ASYNC_DOWNLOADS_WS_MODE = True
        with pytest.raises(SystemCheckError, match="async_downloads.E003"):
            call_command("check")

    def test_warning_is_reported_without_failing(self, settings, capsys):
        settings.CACHES = {**settings.CACHES, "local": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
        settings.ASYNC_DOWNLOADS_CACHE_NAME = "local"
        call_command("check")
        assert "async_downloads.W001" in capsys.readouterr().err


def test_e005_unknown_transport(settings):
    from async_downloads.checks import check_transport

    settings.ASYNC_DOWNLOADS_TRANSPORT = "pigeon"
    (error,) = check_transport()
    assert error.id == "async_downloads.E005" and "'pigeon'" in error.msg
    settings.ASYNC_DOWNLOADS_TRANSPORT = "poll"
    assert check_transport() == []

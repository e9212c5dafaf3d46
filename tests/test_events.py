"""The one publish step."""

import pytest

from async_downloads import cache, events, sse

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent(monkeypatch):
    messages = []
    monkeypatch.setattr(sse, "send", lambda pk, html: messages.append((pk, html)))
    return messages


def test_each_change_is_published_once_to_its_owner(sent, alice):
    _, key = cache.init_download(alice, "a.csv")
    cache.set_percentage(key, 10)
    cache.set_percentage(key, 10)  # no change: nothing to publish
    cache.save_download(key, [["x"]])
    cache.clear_download(key)
    assert [pk for pk, _ in sent] == [alice.pk] * 4


def test_the_signal_carries_record_and_kind(alice):
    received = []

    def receiver(sender, record, kind, **kwargs):
        received.append((record["key"], kind))

    events.download_changed_signal.connect(receiver)
    try:
        _, key = cache.init_download(alice, "a.csv")
        cache.set_error(key, "No.")
    finally:
        events.download_changed_signal.disconnect(receiver)
    assert received == [(key, events.CREATED), (key, events.FAILED)]


def test_the_polling_transport_pushes_nothing(settings, sent, alice):
    settings.ASYNC_DOWNLOADS_TRANSPORT = "poll"
    _, key = cache.init_download(alice, "a.csv")
    cache.set_percentage(key, 50)
    assert sent == []

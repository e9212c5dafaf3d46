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


def test_a_progress_message_sends_the_state_the_cache_holds_when_it_is_sent(sent, alice):
    """A worker's progress that loses the race with a cancel does not paint the row as running again."""
    _, key = cache.init_download(alice, "a.csv")
    cache.set_percentage(key, 10)
    stale = cache.get_download(key)
    cache.cancel_download(key)
    events.publish(alice.pk, stale, events.UPDATED)
    pk, html = sent[-1]
    assert "async-download--cancelled" in html
    assert 'aria-valuenow="10"' not in html


def test_a_message_rendered_earlier_is_never_sent_after_a_later_one(sent, alice, monkeypatch):
    """Process A renders the list while a download runs; B completes it meanwhile. B's list goes last."""
    import threading
    import time

    from async_downloads import partials

    _, key = cache.init_download(alice, "a.csv")
    cache.set_percentage(key, 50)
    a_rendered, a_may_send, b_publishing = threading.Event(), threading.Event(), threading.Event()
    render_message = partials.render_message

    def paused_for_a(*args, **kwargs):
        html = render_message(*args, **kwargs)
        if threading.current_thread().name == "A":
            a_rendered.set()
            assert a_may_send.wait(10)
        return html

    monkeypatch.setattr(partials, "render_message", paused_for_a)

    def receiver(sender, record, kind, **kwargs):
        if kind == events.COMPLETED:
            b_publishing.set()

    events.download_changed_signal.connect(receiver)
    a = threading.Thread(target=events.publish, args=(alice.pk,), name="A")
    b = threading.Thread(target=cache.save_download, args=(key, [["x"]]), name="B")
    try:
        a.start()
        assert a_rendered.wait(10)
        b.start()
        assert b_publishing.wait(10)
        time.sleep(0.2)  # B is now at the publish step, behind A
        a_may_send.set()
        a.join(10)
        b.join(10)
    finally:
        events.download_changed_signal.disconnect(receiver)
    assert len(sent) >= 2
    last = sent[-1][1]
    assert f"/async_downloads/download/{key}/" in last, "the list A read before the file was saved went out last"

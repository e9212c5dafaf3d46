"""The one publish step."""

import threading
import time

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


def paused_in(thread_name, monkeypatch):
    """Make ``partials.render_message`` stop in the thread named ``thread_name`` once it has
    rendered: returns (rendered, may_send) events."""
    from async_downloads import partials

    rendered, may_send = threading.Event(), threading.Event()
    render_message = partials.render_message

    def paused(*args, **kwargs):
        html = render_message(*args, **kwargs)
        if threading.current_thread().name == thread_name:
            rendered.set()
            assert may_send.wait(10)
        return html

    monkeypatch.setattr(partials, "render_message", paused)
    return rendered, may_send


def test_a_cancel_never_goes_out_before_the_progress_it_overtook(sent, alice, monkeypatch):
    """A worker rendered its progress row; the user cancels meanwhile. The cancel's message goes last."""
    _, key = cache.init_download(alice, "a.csv")
    rendered, may_send = paused_in("worker", monkeypatch)
    worker = threading.Thread(target=cache.set_percentage, args=(key, 50), name="worker")
    web = threading.Thread(target=cache.cancel_download, args=(key,), name="web")
    worker.start()
    assert rendered.wait(10)
    web.start()
    time.sleep(0.2)  # the cancel is now waiting for the record
    may_send.set()
    worker.join(10)
    web.join(10)
    assert cache.get_download(key)["state"] == "cancelled"
    assert 'aria-valuenow="50"' in sent[-2][1]
    assert "async-download--cancelled" in sent[-1][1], "the progress row went out after the cancel"


def test_a_message_rendered_earlier_is_never_sent_after_a_later_one(sent, alice, monkeypatch):
    """Process A renders the list while a download runs; B completes it meanwhile. B's list goes last."""
    _, key = cache.init_download(alice, "a.csv")
    cache.set_percentage(key, 50)
    rendered, may_send = paused_in("A", monkeypatch)
    b_publishing = threading.Event()

    def receiver(sender, record, kind, **kwargs):
        if kind == events.COMPLETED:
            b_publishing.set()

    events.download_changed_signal.connect(receiver)
    a = threading.Thread(target=events.publish, args=(alice.pk,), name="A")
    b = threading.Thread(target=cache.save_download, args=(key, [["x"]]), name="B")
    try:
        a.start()
        assert rendered.wait(10)
        b.start()
        assert b_publishing.wait(10)
        time.sleep(0.2)  # B is now at the publish step, behind A
        may_send.set()
        a.join(10)
        b.join(10)
    finally:
        events.download_changed_signal.disconnect(receiver)
    assert len(sent) >= 2
    last = sent[-1][1]
    assert f"/async_downloads/download/{key}/" in last, "the list A read before the file was saved went out last"


def test_rendering_a_list_with_a_stalled_download_publishes_nothing(sent, alice):
    """Reads have no side effects: a stalled download is shown as it is stored until
    ``fail_stalled`` turns it into an error, which is then published once."""
    from async_downloads import partials, store

    _, stalled = cache.init_download(alice, "old.csv")
    _, other = cache.init_download(alice, "other.csv")
    cache.set_percentage(stalled, 40)
    store.get_cache().set(stalled, {**store.read(stalled), "updated": time.time() - 3600}, 60)
    sent.clear()
    html = partials.render_message(alice.pk, cache.get_download(other), events.CREATED)
    assert "stopped responding" not in html
    assert cache.get_download(stalled)["state"] == "running"
    assert [d["state"] for d in cache.get_downloads(alice)] == ["pending", "running"]
    assert sent == []

    assert cache.fail_stalled(alice) == [stalled]
    assert cache.fail_stalled(alice) == []
    assert len(sent) == 1 and "stopped responding" in sent[0][1]

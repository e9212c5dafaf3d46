"""What a page that reconnects is given when the events it missed are gone.

The events after its ``Last-Event-ID`` outlived ``ASYNC_DOWNLOADS_EVENT_TTL``, or Redis
lost its data and the channel's counter started again below that id: either way the
page gets one message with its whole centre as of now, carrying the current id.
"""

import pytest
from django_eventstream.utils import get_storage

from async_downloads import cache, channels, sse
from tests import stores

pytestmark = [pytest.mark.django_db(databases=stores.DATABASES), pytest.mark.usefixtures("record_store")]


@pytest.fixture
def storage():
    return get_storage()


def test_events_that_are_still_stored_are_replayed_as_they_are(alice, storage):
    _, key = cache.init_download(alice, "a.csv")
    channel = channels.channel_for(alice.pk)
    before = storage.get_current_id(channel)
    cache.set_percentage(key, 10)
    cache.set_percentage(key, 20)
    replayed = storage.get_events(channel, before)
    assert [event.id for event in replayed] == [before + 1, before + 2]
    assert 'aria-valuenow="20"' in replayed[-1].data


def test_a_gap_gets_the_whole_centre_with_the_current_id(alice, storage, redis_client, settings):
    _, done = cache.init_download(alice, "done.csv")
    _, key = cache.init_download(alice, "running.csv")
    channel = channels.channel_for(alice.pk)
    before = storage.get_current_id(channel)
    cache.set_percentage(key, 10)
    cache.set_percentage(key, 30)
    cache.set_error(done, "Broken.")
    gone = f"event:{channel}:{before + 1}"
    assert redis_client.delete(gone) == 1  # as if its TTL had passed
    (message,) = storage.get_events(channel, before)
    assert message.id == storage.get_current_id(channel) == before + 3
    assert message.type == channels.EVENT
    assert 'id="async-downloads-list"' in message.data and 'aria-valuenow="30"' in message.data
    assert "Broken." in message.data and f"download-{done}" in message.data


def test_an_id_ahead_of_the_counter_gets_the_whole_centre(alice, storage):
    """Redis came back empty: the counter starts again, below the page's id."""
    _, key = cache.init_download(alice, "a.csv")
    channel = channels.channel_for(alice.pk)
    current = storage.get_current_id(channel)
    (message,) = storage.get_events(channel, current + 40)
    assert message.id == current and f"download-{key}" in message.data


def test_another_users_centre_is_never_rendered_for_a_forged_channel(alice, bob, storage):
    cache.init_download(bob, "theirs.csv")
    forged = f"{channels.channel_prefix()}{bob.pk}-{'0' * channels.DIGEST_LENGTH}"
    assert sse._user_of(forged) is None
    assert storage.get_events(forged, 10) == []
    assert sse._user_of(channels.channel_for(bob.pk)) == bob.pk


def test_a_channel_that_is_not_a_users_keeps_upstreams_behaviour(storage):
    assert storage.get_events("news", 5) == []

"""The partial templates and the messages pushed to pages."""

import pytest

from async_downloads import cache, events, partials

pytestmark = pytest.mark.django_db


def test_running_row_has_an_accessible_progress_bar(alice):
    _, key = cache.init_download(alice, "orders.csv")
    cache.set_percentage(key, 42)
    html = partials.render_row(cache.get_download(key))
    assert 'role="progressbar"' in html
    assert 'aria-valuemin="0"' in html and 'aria-valuemax="100"' in html
    assert 'aria-valuenow="42"' in html
    assert 'aria-label="Progress of orders.csv"' in html


def test_pending_row_is_indeterminate(alice):
    _, key = cache.init_download(alice, "orders.csv")
    html = partials.render_row(cache.get_download(key))
    assert 'role="progressbar"' in html and "aria-valuenow" not in html


def test_complete_row_links_to_the_owner_checked_view(alice):
    _, key = cache.init_download(alice, "orders.csv")
    cache.save_download(key, [["x"]])
    html = partials.render_row(cache.get_download(key))
    assert f'href="/async_downloads/download/{key}/"' in html
    assert "progressbar" not in html
    assert "/media/" not in html


def test_error_row_shows_the_message_escaped(alice):
    _, key = cache.init_download(alice, "orders.csv")
    cache.set_error(key, "<b>Too many rows</b>")
    html = partials.render_row(cache.get_download(key))
    assert "&lt;b&gt;Too many rows&lt;/b&gt;" in html
    assert "href=" not in html


def test_css_class_setting_lands_on_each_row(settings, alice):
    settings.ASYNC_DOWNLOADS_CSS_CLASS = "dropdown-item"
    _, key = cache.init_download(alice, "orders.csv")
    html = partials.render_row(cache.get_download(key))
    assert 'class="async-download async-download--pending download-container download-content dropdown-item"' in html


def test_row_has_a_clear_button_posting_by_key(alice):
    _, key = cache.init_download(alice, "orders.csv")
    html = partials.render_row(cache.get_download(key))
    assert f'hx-post="/async_downloads/clear/{key}/"' in html


def test_names_are_escaped(alice):
    _, key = cache.init_download(alice, "x.csv", name='<script>alert("x")</script>')
    html = partials.render_row(cache.get_download(key))
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_progress_message_replaces_one_row(alice):
    _, key = cache.init_download(alice, "orders.csv")
    cache.set_percentage(key, 10)
    html = partials.render_message(alice.pk, cache.get_download(key), events.UPDATED)
    assert html.startswith(f'<li id="download-{key}"')
    assert 'hx-swap-oob="true"' in html


def test_status_announces_finished_states_only(alice):
    _, key = cache.init_download(alice, "orders.csv")
    _, other = cache.init_download(alice, "other.csv")
    cache.save_download(key, [["x"]])
    ready = partials.render_message(alice.pk, cache.get_download(key), events.COMPLETED)
    assert 'id="async-downloads-status"' in ready and 'hx-swap-oob="innerHTML"' in ready
    assert "orders.csv is ready to download." in ready
    created = partials.render_message(alice.pk, cache.get_download(other), events.CREATED)
    assert "is ready" not in created and "failed" not in created


def test_unknown_transport_setting_is_a_clear_error(settings):
    settings.ASYNC_DOWNLOADS_TRANSPORT = "carrier-pigeon"
    with pytest.raises(ValueError, match="carrier-pigeon"):
        partials.transport()

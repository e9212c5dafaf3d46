"""``async_downloads:download`` serves a finished file to its owner and to nobody else."""

import pytest
from django.test import Client
from django.urls import reverse

from async_downloads import cache

pytestmark = pytest.mark.django_db


def url(key):
    return reverse("async_downloads:download", args=[key])


def signed_in(user):
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def finished(alice, media):
    """``finished(filename, rows)``: one of alice's downloads, saved; returns its record."""

    def make(filename="report.csv", rows=(("id", "name"), (1, "Ann"))):
        _, key = cache.init_download(alice, filename)
        cache.save_download(key, rows)
        return cache.get_download(key)

    return make


class TestOwner:
    def test_gets_the_file_as_an_attachment(self, alice, finished):
        record = finished()
        response = signed_in(alice).get(url(record["key"]))
        assert response.status_code == 200
        assert response["Content-Disposition"] == 'attachment; filename="report.csv"'
        assert response["Content-Type"] == "text/csv"
        assert b"".join(response.streaming_content) == b"id,name\n1,Ann\n"
        assert "no-cache" in response["Cache-Control"]

    def test_unicode_filename(self, alice, finished):
        record = finished("Relevé été 2025.csv")
        response = signed_in(alice).get(url(record["key"]))
        response.close()
        assert response.status_code == 200
        assert response["Content-Disposition"] == (
            "attachment; filename*=utf-8''Relev%C3%A9%20%C3%A9t%C3%A9%202025.csv"
        )

    def test_filename_is_the_safe_one(self, alice, finished):
        record = finished('../../evil"name.csv')
        response = signed_in(alice).get(url(record["key"]))
        response.close()
        assert response["Content-Disposition"] == 'attachment; filename="_.._evil_name.csv"'

    def test_the_records_url_is_this_view(self, finished):
        record = finished()
        assert record["url"] == url(record["key"])


class TestOthers:
    def test_another_user_gets_404(self, bob, finished):
        record = finished()
        assert signed_in(bob).get(url(record["key"])).status_code == 404

    @pytest.mark.parametrize(
        "key", ["00000000-0000-4000-8000-000000000000", "not-a-key", "..", "async_downloads%2F1", "%2e%2e%2fetc"]
    )
    def test_unknown_or_malformed_key_gets_404(self, alice, key):
        assert signed_in(alice).get(f"/async_downloads/download/{key}/").status_code == 404

    def test_pending_download_gets_404(self, alice):
        _, key = cache.init_download(alice, "a.csv")
        cache.set_percentage(key, 50)
        assert signed_in(alice).get(url(key)).status_code == 404

    def test_failed_download_gets_404(self, alice, media):
        _, key = cache.init_download(alice, "a.csv")
        cache.set_error(key, "Failed.")
        assert signed_in(alice).get(url(key)).status_code == 404

    def test_cleared_download_gets_404(self, alice, finished):
        record = finished()
        cache.clear_download(record["key"])
        assert signed_in(alice).get(url(record["key"])).status_code == 404

    def test_file_gone_from_storage_gets_404(self, alice, finished, media):
        record = finished()
        (media / record["filepath"]).unlink()
        assert signed_in(alice).get(url(record["key"])).status_code == 404

    def test_anonymous_is_sent_to_login(self, client, finished):
        record = finished()
        response = client.get(url(record["key"]))
        assert response.status_code == 302
        assert response["Location"] == f"/login/?next={url(record['key'])}"

    def test_post_is_405(self, alice, finished):
        record = finished()
        assert signed_in(alice).post(url(record["key"])).status_code == 405


class TestServers:
    def test_x_accel_redirect_for_nginx(self, settings, alice, finished):
        settings.ASYNC_DOWNLOADS_SENDFILE = "x-accel-redirect"
        settings.ASYNC_DOWNLOADS_SENDFILE_URL = "/protected/"
        record = finished()
        response = signed_in(alice).get(url(record["key"]))
        assert response.status_code == 200
        assert response["X-Accel-Redirect"] == f"/protected/downloads/{record['key']}/report.csv"
        assert response["Content-Disposition"] == 'attachment; filename="report.csv"'
        assert response.content == b""

    def test_x_sendfile_for_apache(self, settings, alice, finished, media):
        settings.ASYNC_DOWNLOADS_SENDFILE = "x-sendfile"
        record = finished()
        response = signed_in(alice).get(url(record["key"]))
        assert response.status_code == 200
        assert response["X-Sendfile"] == str(media / "downloads" / record["key"] / "report.csv")
        assert response["Content-Disposition"] == 'attachment; filename="report.csv"'
        assert response.content == b""

    @pytest.mark.parametrize("mode", ["x-accel-redirect", "x-sendfile"])
    def test_still_only_for_the_owner(self, settings, bob, finished, mode):
        settings.ASYNC_DOWNLOADS_SENDFILE = mode
        record = finished()
        response = signed_in(bob).get(url(record["key"]))
        assert response.status_code == 404
        assert "X-Accel-Redirect" not in response and "X-Sendfile" not in response

    def test_redirect_to_the_storage_url(self, settings, alice, bob, finished):
        settings.ASYNC_DOWNLOADS_REDIRECT_TO_STORAGE_URL = True
        record = finished("Relevé.csv")
        response = signed_in(alice).get(url(record["key"]))
        assert response.status_code == 302
        assert response["Location"] == f"/media/downloads/{record['key']}/Relev%C3%A9.csv"
        assert signed_in(bob).get(url(record["key"])).status_code == 404


def test_sendfile_paths_are_percent_encoded(settings, client, alice):
    settings.ASYNC_DOWNLOADS_SENDFILE = "x-accel-redirect"
    settings.ASYNC_DOWNLOADS_SENDFILE_URL = "/protected/"
    _, key = cache.init_download(alice, "Relevé 50% #1.csv")
    cache.save_download(key, [["x"]])
    client.force_login(alice)
    response = client.get(reverse("async_downloads:download", args=[key]))
    assert response["X-Accel-Redirect"] == f"/protected/downloads/{key}/Relev%C3%A9%2050%25%20%231.csv"


def test_head_is_allowed_for_download_managers(client, alice):
    _, key = cache.init_download(alice, "a.csv")
    cache.save_download(key, [["x"]])
    client.force_login(alice)
    response = client.head(reverse("async_downloads:download", args=[key]))
    response.close()
    assert response.status_code == 200

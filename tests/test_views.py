"""The centre, clear and download views: owner checks, methods, CSRF."""

import pytest
from django.urls import reverse

from async_downloads import cache
from tests import stores

pytestmark = [pytest.mark.django_db(databases=stores.DATABASES), pytest.mark.usefixtures("record_store")]


def csrf_post(client, url, **data):
    """POST the way htmx does: the token in the x-csrftoken header."""
    client.get("/login/")  # a page that renders {% csrf_token %} sets the cookie
    token = client.cookies["csrftoken"].value
    return client.post(url, data, HTTP_X_CSRFTOKEN=token)


class TestCentre:
    def test_needs_login(self, client):
        response = client.get(reverse("async_downloads:centre"))
        assert response.status_code == 302 and "/login/" in response["Location"]

    def test_lists_only_the_users_downloads(self, client_for, alice, bob):
        cache.init_download(alice, "mine.csv")
        cache.init_download(bob, "theirs.csv")
        response = client_for(alice).get(reverse("async_downloads:centre"))
        assert response.status_code == 200
        assert b"mine.csv" in response.content and b"theirs.csv" not in response.content

    def test_idle_poll_is_204_until_the_list_changes(self, client_for, alice):
        from async_downloads import partials

        client = client_for(alice)

        def poll():
            version = partials.version(cache.get_downloads(alice))
            return client.get(f"{reverse('async_downloads:centre')}?idle={version}", HTTP_HX_REQUEST="true")

        assert poll().status_code == 204
        url_before = f"{reverse('async_downloads:centre')}?idle={partials.version([])}"
        _, key = cache.init_download(alice, "new.csv")
        response = client.get(url_before, HTTP_HX_REQUEST="true")
        assert response.status_code == 200
        assert b"sse-connect=" in response.content
        # An export that started and finished between two polls still shows up.
        cache.save_download(key, [["x"]])
        response = client.get(url_before, HTTP_HX_REQUEST="true")
        assert response.status_code == 200
        assert f"/async_downloads/download/{key}/".encode() in response.content
        assert b"sse-connect=" not in response.content
        assert poll().status_code == 204

    @pytest.mark.parametrize("transport", ["poll"])
    def test_polling_transport_stops_with_286(self, settings, client_for, alice, transport):
        settings.ASYNC_DOWNLOADS_TRANSPORT = transport
        _, key = cache.init_download(alice, "a.csv")
        client = client_for(alice)
        url = reverse("async_downloads:centre")
        busy = client.get(url, HTTP_HX_REQUEST="true")
        assert busy.status_code == 200 and b'hx-trigger="every 2s"' in busy.content
        cache.save_download(key, [["x"]])
        done = client.get(url, HTTP_HX_REQUEST="true")
        assert done.status_code == 286
        assert f"/async_downloads/download/{key}/".encode() in done.content

    def test_post_is_not_allowed(self, client_for, alice):
        assert client_for(alice).post(reverse("async_downloads:centre")).status_code == 405


class TestClear:
    def test_clears_own_download_with_csrf(self, client_for, alice):
        _, key = cache.init_download(alice, "a.csv")
        cache.save_download(key, [["x"]])
        response = csrf_post(client_for(alice, csrf=True), reverse("async_downloads:clear", args=[key]))
        assert response.status_code == 200
        assert cache.get_download(key) is None

    def test_without_csrf_token_is_403(self, client_for, alice):
        _, key = cache.init_download(alice, "a.csv")
        response = client_for(alice, csrf=True).post(reverse("async_downloads:clear", args=[key]))
        assert response.status_code == 403
        assert cache.get_download(key) is not None

    def test_get_is_405(self, client_for, alice):
        _, key = cache.init_download(alice, "a.csv")
        assert client_for(alice).get(reverse("async_downloads:clear", args=[key])).status_code == 405
        assert cache.get_download(key) is not None

    @pytest.mark.parametrize(
        "key", ["unknown", "00000000-0000-4000-8000-000000000000", "async_downloads%2F1", "..%2F..%2Fetc"]
    )
    def test_unknown_or_malformed_key_is_404(self, client_for, alice, key):
        response = client_for(alice).post(f"/async_downloads/clear/{key}/")
        assert response.status_code == 404

    def test_another_users_key_is_404_and_stays(self, client_for, alice, bob):
        _, key = cache.init_download(bob, "bob.csv")
        cache.save_download(key, [["secret"]])
        response = client_for(alice).post(reverse("async_downloads:clear", args=[key]))
        assert response.status_code == 404
        assert cache.get_download(key)["state"] == "complete"

    def test_anonymous_is_redirected(self, client, alice):
        _, key = cache.init_download(alice, "a.csv")
        response = client.post(reverse("async_downloads:clear", args=[key]))
        assert response.status_code == 302
        assert cache.get_download(key) is not None

"""The endpoints of 0.5.x, kept for sites still running the old polling script.

Same URL names and response shape, but signed-in users only, POST with CSRF
for the clear, and nobody can clear (or learn about) another user's download.
"""

import pytest
from django.test import Client
from django.urls import reverse

from async_downloads import cache

pytestmark = pytest.mark.django_db

UPDATE_URL = reverse("async_downloads:ajax_update")
CLEAR_URL = reverse("async_downloads:ajax_clear_download")
LEGACY_FIELDS = {"timestamp", "filepath", "name", "complete", "errors", "percentage", "css_class", "url"}


def signed_in(user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def post_with_csrf(client, data):
    """POST the way the old script did once a site had set up jQuery's CSRF header."""
    client.get("/login/")  # a page with {% csrf_token %} sets the cookie
    return client.post(CLEAR_URL, data, HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value)


@pytest.fixture
def finished(media):
    """``finished(user, filename)``: a saved download; returns its record."""

    def make(user, filename="report.csv"):
        _, key = cache.init_download(user, filename)
        cache.save_download(key, [["secret", user.username]])
        return cache.get_download(key)

    return make


class TestAjaxUpdate:
    def test_needs_login(self, client):
        response = client.get(UPDATE_URL)
        assert response.status_code == 302
        assert response["Location"] == f"/login/?next={UPDATE_URL}"

    def test_shape_of_the_answer(self, alice, finished):
        done = finished(alice, "done.csv")
        _, running = cache.init_download(alice, "running.csv", name="Running export")
        cache.set_percentage(running, 40)
        response = signed_in(alice).get(UPDATE_URL)
        assert response.status_code == 200
        assert response["Content-Type"] == "application/json"
        body = response.json()
        assert body.keys() == {"html", "downloads", "in_progress"}
        assert body["in_progress"] is True
        first, second = body["downloads"]
        assert first.keys() >= LEGACY_FIELDS
        assert first["download_key"] == running
        shown = (first["name"], first["percentage"], first["complete"], first["url"])
        assert shown == ("Running export", 40, False, "")
        assert second["download_key"] == done["key"]
        assert (second["filepath"], second["complete"], second["errors"]) == (done["filepath"], True, "")
        assert second["url"] == reverse("async_downloads:download", args=[done["key"]])
        assert second["timestamp"].startswith(str(done["timestamp"].year))
        assert "Running export" in body["html"] and "done.csv" in body["html"]

    def test_only_the_users_own_downloads(self, alice, bob, finished):
        finished(bob, "bobs-secret.csv")
        mine = finished(alice, "mine.csv")
        body = signed_in(alice).get(UPDATE_URL).json()
        assert [d["download_key"] for d in body["downloads"]] == [mine["key"]]
        assert "bobs-secret" not in body["html"]

    def test_nothing_in_progress(self, alice, finished):
        finished(alice)
        _, failed = cache.init_download(alice, "failed.csv")
        cache.set_error(failed, "Failed.")
        body = signed_in(alice).get(UPDATE_URL).json()
        assert body["in_progress"] is False
        assert [d["errors"] for d in body["downloads"]] == ["Failed.", ""]

    def test_no_downloads(self, alice):
        assert signed_in(alice).get(UPDATE_URL).json()["downloads"] == []

    def test_html_comes_from_the_download_template_setting(self, settings, alice):
        settings.ASYNC_DOWNLOADS_DOWNLOAD_TEMPLATE = "testapp/legacy_downloads.html"
        _, key = cache.init_download(alice, "a.csv")
        cache.set_percentage(key, 70)
        assert signed_in(alice).get(UPDATE_URL).json()["html"].strip() == "[a.csv|70]"

    def test_not_cached_by_browsers(self, alice):
        assert "no-cache" in signed_in(alice).get(UPDATE_URL)["Cache-Control"]


class TestAjaxClearDownload:
    def test_clears_by_filepath_as_the_old_script_sent_it(self, alice, finished, media):
        record = finished(alice)
        response = post_with_csrf(signed_in(alice), {"filepath": record["filepath"]})
        assert response.status_code == 200
        assert cache.get_download(record["key"]) is None
        assert not (media / "downloads" / record["key"]).exists()
        assert cache.get_downloads(alice) == []

    def test_clears_by_download_key(self, alice, finished, media):
        record = finished(alice)
        response = post_with_csrf(signed_in(alice), {"download_key": record["key"]})
        assert response.status_code == 200
        assert cache.get_download(record["key"]) is None
        assert not (media / "downloads" / record["key"]).exists()

    def test_clears_a_running_download(self, alice):
        _, key = cache.init_download(alice, "running.csv")
        cache.set_percentage(key, 10)
        assert post_with_csrf(signed_in(alice), {"download_key": key}).status_code == 200
        cache.set_percentage(key, 20)
        assert cache.get_download(key) is None

    def test_get_is_405(self, alice, finished):
        record = finished(alice)
        response = signed_in(alice).get(CLEAR_URL, {"filepath": record["filepath"]})
        assert response.status_code == 405
        assert cache.get_download(record["key"]) is not None

    def test_without_csrf_token_is_403(self, alice, finished):
        record = finished(alice)
        response = signed_in(alice).post(CLEAR_URL, {"filepath": record["filepath"]})
        assert response.status_code == 403
        assert cache.get_download(record["key"]) is not None

    def test_anonymous_is_sent_to_login(self, client, alice, finished):
        record = finished(alice)
        response = client.post(CLEAR_URL, {"filepath": record["filepath"]})
        assert response.status_code == 302
        assert cache.get_download(record["key"]) is not None

    @pytest.mark.parametrize("field", ["filepath", "download_key"])
    def test_another_users_download_is_404_and_stays(self, alice, bob, finished, media, field):
        theirs = finished(bob, "bobs.csv")
        value = theirs["filepath"] if field == "filepath" else theirs["key"]
        response = post_with_csrf(signed_in(alice), {field: value})
        assert response.status_code == 404
        assert cache.get_download(theirs["key"])["state"] == "complete"
        assert (media / theirs["filepath"]).read_bytes() == b"secret,bob+test@example.com\n"

    @pytest.mark.parametrize(
        "data",
        [
            {"download_key": "00000000-0000-4000-8000-000000000000"},
            {"filepath": "downloads/00000000-0000-4000-8000-000000000000/report.csv"},
            {"download_key": "not-a-key"},
            {"download_key": "async_downloads/1"},
            {"filepath": "../../etc/passwd"},
            {"filepath": "/etc/passwd"},
            {"filepath": "downloads/../../../etc/passwd"},
            {"filepath": "report.csv"},
            {"filepath": "C:\\Windows\\win.ini"},
            {"filepath": "downloads/%00/x"},
            {"filepath": ""},
            {"download_key": ""},
            {},
        ],
        ids=repr,
    )
    def test_unknown_or_malformed_is_404_never_500(self, alice, bob, finished, media, data):
        mine, theirs = finished(alice), finished(bob)
        response = post_with_csrf(signed_in(alice), data)
        assert response.status_code == 404
        for record in (mine, theirs):
            assert cache.get_download(record["key"]) is not None
            assert (media / record["filepath"]).exists()

    def test_a_path_naming_another_users_key_in_a_different_place_is_404(self, alice, bob, finished, media):
        theirs = finished(bob)
        path = f"elsewhere/{theirs['key']}/../{theirs['key']}/x.csv"
        response = post_with_csrf(signed_in(alice), {"filepath": path})
        assert response.status_code == 404
        assert (media / theirs["filepath"]).exists()

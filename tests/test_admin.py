"""The admin's history of the database store's downloads (``async_downloads.admin``).

Read only; clearing and cancelling go through the cache API; staff with
``fetch_any_download`` fetch any finished file, and each such fetch is logged.
"""

import logging

import pytest
from django.conf import settings as django_settings
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.db import connections
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from async_downloads import cache, dbstore
from async_downloads.models import Download

# The database store on a PostgreSQL of its own too, where the suite has one.
DATABASES = ["default", "postgres"] if "postgres" in django_settings.DATABASES else ["default"]

pytestmark = pytest.mark.django_db(databases=DATABASES)

CHANGELIST = reverse("admin:async_downloads_download_changelist")


@pytest.fixture(autouse=True)
def database_store(settings):
    settings.ASYNC_DOWNLOADS_STORE = "database"


def fetch_url(key):
    return reverse("admin:async_downloads_download_fetch", args=[key])


def change_url(key):
    return reverse("admin:async_downloads_download_change", args=[key])


def staff_member(django_user_model, username, *codenames, superuser=False):
    user = django_user_model.objects.create_user(username, is_staff=True, is_superuser=superuser)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="async_downloads",
                                                        codename__in=codenames))
    return user


@pytest.fixture
def viewer(django_user_model):
    """Staff who may look, and do nothing else."""
    return staff_member(django_user_model, "viewer", "view_download")


@pytest.fixture
def manager(django_user_model):
    """Staff who may clear, cancel and fetch."""
    return staff_member(django_user_model, "manager", "view_download", "delete_download", "change_download",
                        "fetch_any_download")


@pytest.fixture
def downloads(alice, bob, media):
    """alice's finished report.csv and running events.jsonl, bob's pending sheet.xlsx: their keys."""
    _, report = cache.init_download(alice, "report.csv", name="Monthly report")
    cache.save_download(report, [["id", "name"], [1, "Ann"]])
    _, events = cache.init_download(alice, "events.jsonl", name="Event log")
    cache.set_percentage(events, 40)
    _, sheet = cache.init_download(bob, "sheet.xlsx", name="Budget")
    return {"report": report, "events": events, "sheet": sheet}


def listed(response):
    assert response.status_code == 200
    return [row.name for row in response.context["cl"].result_list]


def shown_messages(response):
    return [str(message) for message in response.context["messages"]]


def test_registered_by_autodiscovery():
    assert admin.site.is_registered(Download)


class TestTheList:
    def test_newest_first_with_user_state_format_and_progress(self, client_for, viewer, downloads):
        response = client_for(viewer).get(CHANGELIST)
        assert listed(response) == ["Budget", "Event log", "Monthly report"]
        page = response.content.decode()
        for shown in ("alice", "bob+test@example.com", "Running", "Complete", "Pending", "jsonl", "xlsx", "40"):
            assert shown in page

    def test_the_user_column_lists_that_users_downloads(self, client_for, viewer, alice, downloads):
        client = client_for(viewer)
        page = client.get(CHANGELIST).content.decode()
        assert f'href="{CHANGELIST}?user__exact={alice.pk}"' in page
        assert listed(client.get(CHANGELIST, {"user__exact": alice.pk})) == ["Event log", "Monthly report"]

    def test_filters_by_state_and_format(self, client_for, viewer, downloads):
        client = client_for(viewer)
        assert listed(client.get(CHANGELIST, {"state__exact": "running"})) == ["Event log"]
        assert listed(client.get(CHANGELIST, {"state__exact": "complete"})) == ["Monthly report"]
        assert listed(client.get(CHANGELIST, {"format": "xlsx"})) == ["Budget"]

    def test_the_format_filter_offers_the_formats_there_are(self, client_for, viewer, downloads):
        page = client_for(viewer).get(CHANGELIST).content.decode()
        for choice in ("?format=csv", "?format=jsonl", "?format=xlsx"):
            assert choice in page

    @pytest.mark.parametrize(
        ("term", "found"),
        [("report", ["Monthly report"]), ("events.jsonl", ["Event log"]), ("bob+test", ["Budget"]),
         ("nothing-like-it", [])],
    )
    def test_searches_names_file_names_and_usernames(self, client_for, viewer, downloads, term, found):
        assert listed(client_for(viewer).get(CHANGELIST, {"q": term})) == found

    def test_a_page_costs_the_same_queries_whatever_its_rows(self, client_for, viewer, alice, bob, downloads):
        client = client_for(viewer)
        client.get(CHANGELIST)  # the session and the content types, cached from here on

        def queries():
            with CaptureQueriesContext(connections["default"]) as captured:
                listed(client.get(CHANGELIST))
            return len(captured)

        few = queries()
        for index in range(10):
            cache.init_download(alice if index % 2 else bob, f"more-{index}.csv")
        assert queries() == few

    def test_lists_the_downloads_of_a_user_that_is_gone(self, client_for, viewer, downloads):
        cache.init_download(987654, "orphan.csv")
        response = client_for(viewer).get(CHANGELIST)
        assert "orphan.csv" in listed(response)
        assert '?user__exact=987654">987654</a>' in response.content.decode()
        assert listed(client_for(viewer).get(CHANGELIST, {"q": "orphan"})) == ["orphan.csv"]

    def test_expired_downloads_are_not_listed(self, client_for, viewer, downloads):
        dbstore.rows().filter(pk=downloads["sheet"]).update(expires="2000-01-01T00:00:00Z")
        assert listed(client_for(viewer).get(CHANGELIST)) == ["Event log", "Monthly report"]

    def test_needs_staff(self, client_for, alice, downloads):
        response = client_for(alice).get(CHANGELIST)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))

    def test_in_cache_mode_the_list_is_empty_and_says_why(self, settings, client_for, viewer, alice):
        settings.ASYNC_DOWNLOADS_STORE = "cache"
        cache.init_download(alice, "in-the-cache.csv")
        response = client_for(viewer).get(CHANGELIST)
        assert listed(response) == []
        assert shown_messages(response) == [
            'Download records are kept in the cache (ASYNC_DOWNLOADS_STORE is not "database"): '
            "this list holds only the downloads of the database store."
        ]

    def test_in_database_mode_there_is_no_notice(self, client_for, viewer, downloads):
        assert shown_messages(client_for(viewer).get(CHANGELIST)) == []


@pytest.mark.skipif("postgres" not in DATABASES, reason="No PostgreSQL for the database store here.")
def test_rows_on_a_database_of_their_own_users_on_theirs(settings, client_for, viewer, alice, media):
    settings.ASYNC_DOWNLOADS_DATABASE = "postgres"
    _, key = cache.init_download(alice, "elsewhere.csv")
    cache.save_download(key, [["x"], [1]])
    assert Download.objects.using("postgres").filter(pk=key).exists()
    assert not Download.objects.using("default").filter(pk=key).exists()
    client = client_for(viewer)
    response = client.get(CHANGELIST)
    assert listed(response) == ["elsewhere.csv"]
    assert "alice" in response.content.decode()
    # A join cannot reach the users' database: usernames are not searched there.
    assert listed(client.get(CHANGELIST, {"q": "elsewhere"})) == ["elsewhere.csv"]
    assert listed(client.get(CHANGELIST, {"q": "alice"})) == []
    assert client.get(change_url(key)).status_code == 200


class TestReadOnly:
    def test_details_without_a_form(self, client_for, viewer, downloads):
        response = client_for(viewer).get(change_url(downloads["report"]))
        assert response.status_code == 200
        page = response.content.decode()
        assert "Monthly report" in page and "alice" in page
        assert 'name="_save"' not in page
        assert fetch_url(downloads["report"]) not in page  # no permission to fetch

    def test_cannot_be_changed_added_or_deleted_one_by_one(self, client_for, manager, downloads):
        client = client_for(manager)
        key = downloads["report"]
        assert client.post(change_url(key), {"name": "Renamed"}).status_code == 403
        assert client.get(reverse("admin:async_downloads_download_add")).status_code == 403
        delete = reverse("admin:async_downloads_download_delete", args=[key])
        assert client.post(delete, {"post": "yes"}).status_code == 403
        assert dbstore.rows().get(pk=key).name == "Monthly report"

    def test_the_delete_action_is_replaced_by_clear(self, client_for, manager, viewer, downloads):
        actions = client_for(manager).get(CHANGELIST).context["action_form"].fields["action"].choices
        assert [name for name, _ in actions] == ["", "clear_downloads", "cancel_downloads"]
        assert client_for(viewer).get(CHANGELIST).context["action_form"] is None


def run_action(client, action, *keys):
    return client.post(CHANGELIST, {"action": action, "_selected_action": list(keys)}, follow=True)


class TestActions:
    def test_clear_removes_records_and_files(self, client_for, manager, media, downloads):
        report = cache.get_download(downloads["report"])
        assert (media / report["filepath"]).exists()
        response = run_action(client_for(manager), "clear_downloads", downloads["report"], downloads["sheet"])
        assert shown_messages(response) == ["2 downloads cleared."]
        assert cache.get_download(downloads["report"]) is None and cache.get_download(downloads["sheet"]) is None
        assert not (media / report["filepath"]).exists()
        assert listed(response) == ["Event log"]

    def test_cancel_stops_downloads_in_progress_only(self, client_for, manager, downloads):
        response = run_action(client_for(manager), "cancel_downloads", *downloads.values())
        assert shown_messages(response) == ["2 downloads cancelled."]
        assert cache.get_download(downloads["events"])["state"] == "cancelled"
        assert cache.get_download(downloads["sheet"])["state"] == "cancelled"
        assert cache.get_download(downloads["report"])["state"] == "complete"

    def test_nothing_to_cancel(self, client_for, manager, downloads):
        response = run_action(client_for(manager), "cancel_downloads", downloads["report"])
        assert shown_messages(response) == ["0 downloads cancelled."]

    def test_staff_without_the_permissions_cannot_run_them(self, client_for, viewer, downloads):
        client = client_for(viewer)
        for action in ("clear_downloads", "cancel_downloads", "delete_selected"):
            run_action(client, action, downloads["events"])
        assert cache.get_download(downloads["events"])["state"] == "running"

    def test_actions_need_a_csrf_token(self, client_for, manager, downloads):
        response = client_for(manager, csrf=True).post(
            CHANGELIST, {"action": "clear_downloads", "_selected_action": [downloads["report"]]}
        )
        assert response.status_code == 403
        assert cache.get_download(downloads["report"]) is not None


def fetched_lines(caplog):
    return [record for record in caplog.records if record.name == "async_downloads.admin"]


class TestFetch:
    def test_with_the_permission_staff_get_the_file_and_it_is_logged(self, client_for, manager, caplog, downloads):
        caplog.set_level(logging.INFO, logger="async_downloads.admin")
        key = downloads["report"]
        response = client_for(manager).get(fetch_url(key))
        assert response.status_code == 200
        assert response["Content-Disposition"] == 'attachment; filename="report.csv"'
        assert b"".join(response.streaming_content) == b"id,name\n1,Ann\n"
        [line] = fetched_lines(caplog)
        assert line.levelno == logging.INFO
        assert line.getMessage() == (
            f"Staff user manager (pk {manager.pk}) fetched download {key} (report.csv) "
            f"of user alice (pk {cache.get_download(key)['user_id']})."
        )

    def test_a_superuser_has_the_permission(self, django_user_model, client_for, caplog, downloads):
        caplog.set_level(logging.INFO, logger="async_downloads.admin")
        boss = staff_member(django_user_model, "boss", superuser=True)
        response = client_for(boss).get(fetch_url(downloads["report"]))
        assert response.status_code == 200
        response.close()
        assert "Staff user boss" in fetched_lines(caplog)[0].getMessage()

    def test_without_it_403_and_nothing_is_logged(self, django_user_model, client_for, caplog, downloads):
        caplog.set_level(logging.INFO, logger="async_downloads.admin")
        everything_else = staff_member(django_user_model, "clerk", "view_download", "delete_download",
                                       "change_download")
        for key in (downloads["report"], downloads["sheet"], "not-a-key"):
            assert client_for(everything_else).get(fetch_url(key)).status_code == 403
        assert fetched_lines(caplog) == []

    def test_signed_out_or_not_staff_go_to_the_login(self, client, client_for, alice, downloads):
        for who in (client, client_for(alice)):
            response = who.get(fetch_url(downloads["report"]))
            assert response.status_code == 302
            assert response["Location"].startswith(reverse("admin:login"))

    def test_no_file_no_such_download(self, client_for, manager, caplog, downloads):
        caplog.set_level(logging.INFO, logger="async_downloads.admin")
        client = client_for(manager)
        for key in (downloads["events"], "0b7d4b0e-9a51-4c8b-9b6d-2d7b8f3e0c11", "not-a-key"):
            assert client.get(fetch_url(key)).status_code == 404
        assert fetched_lines(caplog) == []

    def test_a_get_only(self, client_for, manager, downloads):
        assert client_for(manager).post(fetch_url(downloads["report"])).status_code == 405

    def test_served_as_the_download_view_serves_it(self, settings, client_for, manager, downloads):
        settings.ASYNC_DOWNLOADS_SENDFILE = "x-accel-redirect"
        settings.ASYNC_DOWNLOADS_SENDFILE_URL = "/protected/"
        record = cache.get_download(downloads["report"])
        response = client_for(manager).get(fetch_url(record["key"]))
        assert response["X-Accel-Redirect"] == f"/protected/{record['filepath']}"

    def test_the_details_link_to_the_file_for_staff_who_may_fetch(self, client_for, manager, downloads):
        client = client_for(manager)
        assert fetch_url(downloads["report"]) in client.get(change_url(downloads["report"])).content.decode()
        assert fetch_url(downloads["events"]) not in client.get(change_url(downloads["events"])).content.decode()

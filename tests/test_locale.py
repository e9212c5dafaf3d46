"""Languages: the shipped catalogues, and the language each user's downloads are shown in.

A view renders in its request's language (LocaleMiddleware, ``Accept-Language`` here).
What is pushed to a user's pages, from a Celery worker as often as not, is rendered in the
language their download started in (``Record["language"]``), whatever the worker's own.
"""

import shutil
import subprocess
import time
from datetime import timedelta

import pytest
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone, translation

from async_downloads import cache, events, partials, records, sse, store
from async_downloads.templatetags.async_downloads import download_age, download_rows
from devtools import messages
from tests.sse_client import StreamReader, session_cookies
from tests.testapp.tasks import failing_export
from tests.waits import wait_for_state

LANGUAGES = ("de", "fr")
PLURAL_FORMS = {"de": "nplurals=2; plural=(n != 1);", "fr": "nplurals=2; plural=(n > 1);"}
SHOWCASES = ("bootstrap5", "toast", "semantic")
MARKUP = {"bootstrap5": "list-group-item", "toast": "async-toast", "semantic": 'data-state="cancelled"'}
#: What the rows and the list say, per language.
WORDS = {
    "de": {"download": "Herunterladen", "cancel": "Abbrechen", "progress": "Fortschritt von Squares",
           "ready": "Squares ist bereit zum Herunterladen.", "just now": "gerade eben",
           "failed": "Squares ist fehlgeschlagen.", "cancelled": "Abgebrochen", "rows": " von 4 Zeilen"},
    "fr": {"download": "Télécharger", "cancel": "Annuler", "progress": "Progression de Squares",
           "ready": "Squares\xa0: le fichier est prêt à être téléchargé.", "just now": "à l’instant",
           "failed": "Squares\xa0: l’export a échoué.", "cancelled": "Annulé", "rows": " sur 4 lignes"},
}


@pytest.fixture(autouse=True)
def _default_language_after():
    """A request with Accept-Language leaves its language active in this thread: not for the next test."""
    yield
    translation.deactivate()


def need_gettext():
    if not shutil.which("msgfmt"):
        pytest.fail("GNU gettext is not installed (apt-get install gettext; `just test` installs it).")


# --- The catalogues ------------------------------------------------------------------------


def test_the_app_ships_german_and_french():
    assert set(messages.po_files()) >= set(LANGUAGES)


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_message_is_translated_and_none_is_fuzzy(language):
    need_gettext()
    po = messages.po_files()[language]
    for option in ("--untranslated", "--only-fuzzy"):
        found = subprocess.run(["msgattrib", option, "--no-wrap", str(po)], capture_output=True, text=True,
                               check=True).stdout
        assert found == "", f"{po} has {option.strip('-')} messages:\n{found}"


@pytest.mark.parametrize("language", LANGUAGES)
def test_each_catalogue_names_its_language_and_plural_rule(language):
    header = messages.po_files()[language].read_text(encoding="utf-8").split("\n\n", 1)[0]
    assert f'"Language: {language}\\n"' in header
    assert f'"Plural-Forms: {PLURAL_FORMS[language]}\\n"' in header
    assert '"Content-Type: text/plain; charset=UTF-8\\n"' in header


def test_the_committed_mo_files_are_compiled_from_their_po_files():
    """msgfmt --check (placeholders kept, header valid) into a temporary folder: the same catalogue."""
    need_gettext()
    assert messages.stale_languages() == []


@pytest.mark.slow
def test_the_catalogues_hold_every_string_of_the_app_and_the_showcase_sets(tmp_path):
    """Extracted again from the sources (makemessages), each catalogue is unchanged: no string missing,
    none left over."""
    need_gettext()
    committed = {language: po.read_bytes() for language, po in messages.po_files().items()}
    shutil.copytree(messages.LOCALE_DIR, tmp_path / "locale")
    messages.extract(tmp_path / "locale")
    for language, po in messages.po_files().items():
        assert po.read_bytes() == committed[language]  # only the copy was updated
        fresh = messages.po_files(tmp_path / "locale")[language]
        assert _without_creation_date(fresh) == _without_creation_date(po), (
            f"{po.relative_to(messages.ROOT)} is out of date: run `just messages` and translate what it adds."
        )


def _without_creation_date(po):
    return [line for line in po.read_text(encoding="utf-8").splitlines() if not line.startswith('"POT-Creation-Date')]


# --- Views: the request's language -----------------------------------------------------------


def test_a_download_started_in_a_view_keeps_the_request_language(client_for, alice, db):
    client = client_for(alice)
    client.post(reverse("start_export"), {"rows": 1}, HTTP_ACCEPT_LANGUAGE="de-DE,de;q=0.9")
    (record,) = cache.get_downloads(alice)
    assert record["language"] == "de"


def test_init_download_keeps_the_active_language(alice, db):
    with translation.override("fr"):
        _, key = cache.init_download(alice, "orders.csv")
    assert cache.get_download(key)["language"] == "fr"


@pytest.mark.parametrize("language", LANGUAGES)
def test_views_render_in_the_request_language_whatever_the_download_started_in(client_for, alice, db, language):
    other = "fr" if language == "de" else "de"
    with translation.override(other):
        _, key = cache.init_download(alice, "orders.csv", name="Squares")
    response = client_for(alice).get(reverse("async_downloads:centre"), HTTP_ACCEPT_LANGUAGE=language)
    html = response.content.decode()
    assert response["Content-Language"] == language
    assert f'aria-label="{WORDS[language]["progress"]}"' in html
    assert f">{WORDS[language]['cancel']}</button>" in html


def test_the_signed_out_answer_to_htmx_is_in_the_request_language(client):
    response = client.get(reverse("async_downloads:centre"), HTTP_HX_REQUEST="true", HTTP_ACCEPT_LANGUAGE="de")
    assert response.status_code == 403
    assert response.content.decode() == "Melden Sie sich erneut an, um Ihre Downloads zu sehen."


def test_a_request_without_accept_language_gets_english(client_for, alice, db):
    cache.init_download(alice, "orders.csv", name="Squares")
    html = client_for(alice).get(reverse("async_downloads:centre")).content.decode()
    assert 'aria-label="Progress of Squares"' in html and ">Cancel</button>" in html


# --- Outside a request: the download's language ----------------------------------------------


def started_in(language, user, name="Squares"):
    with translation.override(language):
        _, key = cache.init_download(user, "squares.csv", name=name)
    return key


@pytest.mark.parametrize("language", LANGUAGES)
def test_progress_pushed_outside_a_request_is_in_the_download_language(alice, db, language):
    key = started_in(language, alice)
    cache.set_percentage(key, 30)
    active = translation.get_language()
    html = partials.render_message(alice.pk, cache.get_download(key), events.UPDATED)
    assert f'aria-label="{WORDS[language]["progress"]}"' in html
    assert f">{WORDS[language]['cancel']}</button>" in html
    assert translation.get_language() == active  # left as it was


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_list_pushed_on_completion_is_in_the_download_language(alice, db, media, language):
    key = started_in(language, alice)
    cache.save_download(key, [["x"]])
    html = partials.render_message(alice.pk, cache.get_download(key), events.COMPLETED)
    assert WORDS[language]["ready"] in html
    assert f">{WORDS[language]['download']}</a>" in html
    assert WORDS[language]["just now"] in html


def test_a_list_pushed_without_a_record_is_in_the_language_of_the_newest_download(alice, db):
    started_in("fr", alice, name="Older")
    started_in("de", alice, name="Newer")
    html = partials.render_message(alice.pk)
    assert "Fortschritt von Older" in html and "Fortschritt von Newer" in html


def test_a_list_pushed_for_a_record_is_in_that_record_language(alice, db):
    older = started_in("fr", alice, name="Older")
    started_in("de", alice, name="Newer")
    cache.cancel_download(older)
    html = partials.render_message(alice.pk, cache.get_download(older), events.CANCELLED)
    assert "Progression de Newer" in html and "Older\xa0: l’export a été annulé." in html


def test_records_of_earlier_releases_render_in_the_active_language(alice, db):
    key = started_in("de", alice)

    def forget_language(record):
        del record["language"]
        return True

    store.update(key, forget_language)
    assert "Progress of Squares" in partials.render_message(alice.pk)
    with translation.override("fr"):
        assert "Progression de Squares" in partials.render_message(alice.pk)


@pytest.mark.parametrize("stored_in", [None, "de", "fr"])
def test_the_app_messages_show_in_the_reader_language_whichever_they_were_stored_in(alice, db, stored_in):
    """The cache API keeps a message as text, in the language active where it was set (a worker's, a view's)."""
    key = started_in("de", alice)
    with translation.override(stored_in):  # None: the msgid, as an untranslated site stores it
        cache.set_error(key, records.STALLED)
    record = cache.get_download(key)
    with translation.override("fr"):
        assert "L’export ne répond plus." in partials.render_row(record)
    with translation.override("de"):
        assert "Der Export reagiert nicht mehr." in partials.render_row(record)
    with translation.override("en"):
        assert "The export stopped responding." in partials.render_row(record)


def test_a_task_own_error_message_is_shown_as_it_is(alice, db):
    key = started_in("de", alice)
    cache.set_error(key, "Zu viele Zeilen: bitte den Filter einschränken.")
    with translation.override("fr"):
        assert "Zu viele Zeilen: bitte den Filter einschränken." in partials.render_row(cache.get_download(key))


def test_the_lost_downloads_notice_is_in_the_user_language(alice, db):
    started_in("de", alice)
    html = partials.render_message(alice.pk, notice=str(records.LOST))
    assert "Einige Downloads sind beim Neustart des Servers verloren gegangen." in html


def test_the_legacy_endpoint_html_shows_the_app_messages_in_the_request_language(client_for, alice, db):
    key = started_in("fr", alice)
    cache.set_error(key, records.TASK_FAILED)
    response = client_for(alice).get(reverse("async_downloads:ajax_update"), HTTP_ACCEPT_LANGUAGE="de")
    assert "Der Export ist fehlgeschlagen. Bitte versuchen Sie es noch einmal." in response.json()["html"]


@pytest.mark.parametrize(("language", "age", "expected"), [
    ("de", timedelta(seconds=20), "gerade eben"),
    ("de", timedelta(minutes=5, seconds=3), "vor 5\xa0Minuten"),
    ("de", timedelta(days=2, hours=3), "vor 2\xa0Tagen, 3\xa0Stunden"),
    ("de", timedelta(days=1), "vor 1\xa0Tag"),
    ("fr", timedelta(seconds=20), "à l’instant"),
    ("fr", timedelta(minutes=1), "il y a 1\xa0minute"),
    ("fr", timedelta(days=2, hours=3), "il y a 2\xa0jours, 3\xa0heures"),
    ("en", timedelta(days=2, hours=3), "2\xa0days, 3\xa0hours ago"),
])
def test_the_age_of_a_download(language, age, expected):
    with translation.override(language):
        assert download_age(timezone.now() - age) == expected


@pytest.mark.parametrize(("language", "expected"), [
    ("de", "12.400 von 300.000 Zeilen · noch etwa 4\xa0min"),
    ("fr", "12\xa0400 sur 300\xa0000 lignes · il reste environ 4\xa0min"),
    ("en", "12,400 of 300,000 rows · about 4 min left"),
])
def test_rows_and_time_left(language, expected):
    now = time.time()
    download = {"state": records.RUNNING, "rows_total": 300_000, "rows_done": 12_400, "rows_done_at_start": 0,
                "rows_started_at": now - 10, "rows_reported_at": now}
    with translation.override(language):
        assert download_rows(download) == expected


@pytest.mark.parametrize(("language", "seconds", "expected"), [
    ("de", 0.5, "noch weniger als eine Sekunde"),
    ("de", 3, "noch etwa 3\xa0s"),
    ("de", 5 * 3600, "noch etwa 5\xa0h"),
    ("fr", 0.5, "il reste moins d’une seconde"),
    ("fr", 42, "il reste environ 40\xa0s"),
    ("fr", 5 * 3600, "il reste environ 5\xa0h"),
])
def test_the_time_left(language, seconds, expected):
    now = time.time()
    # One row a second so far, ``seconds`` rows to go.
    download = {"state": records.RUNNING, "rows_total": 10 + int(seconds), "rows_done": 10,
                "rows_done_at_start": 0, "rows_started_at": now - 10, "rows_reported_at": now}
    if seconds < 1:
        download.update(rows_total=20, rows_done=19, rows_started_at=now - 2 * 19 * seconds)
    with translation.override(language):
        assert download_rows(download).endswith(" · " + expected)


@pytest.mark.parametrize("showcase", SHOWCASES)
@pytest.mark.parametrize("language", LANGUAGES)
def test_the_showcase_sets_use_the_app_catalogue(alice, db, showcase, language):
    from django.conf import settings

    apps = list(settings.INSTALLED_APPS)
    apps.insert(apps.index("async_downloads"), f"templates_showcase.{showcase}")
    key = started_in(language, alice)
    cache.cancel_download(key)
    with override_settings(INSTALLED_APPS=apps):
        html = partials.render_message(alice.pk, cache.get_download(key), events.CANCELLED)
    assert MARKUP[showcase] in html  # the set's own row, with the app's words
    assert WORDS[language]["cancelled"] in html
    assert ">Cancelled<" not in html and "Retry" not in html


def test_the_sse_transport_keeps_the_no_break_spaces_of_the_text(monkeypatch):
    sent = []
    monkeypatch.setattr(sse, "send_event", lambda *args, **kwargs: sent.append(args[2]))
    monkeypatch.setattr(sse, "get_storage", lambda: None)
    monkeypatch.setattr(sse.compat, "deliver_here", lambda channel, event: sent.append(event.data))
    html = "<li>\n  <p>Squares\xa0: prêt</p>\t<time>12\u202f400</time>\r\n</li>\n"
    sse.send(1, html)
    sse.send_here(1, html)
    assert sent == ["<li> <p>Squares\xa0: prêt</p> <time>12\u202f400</time> </li>"] * 2


# --- Across processes: a worker renders in the language of the download --------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("language", LANGUAGES)
def test_a_worker_pushes_the_rows_of_a_download_in_the_language_it_was_started_in(
    celery_worker, web_server, client_for, alice, language,
):
    """Started through a view under Accept-Language; a real Celery worker (English by default) reports
    its progress and completion; the stream, read from a real uvicorn, carries them in that language."""
    url = web_server + partials.events_url(alice.pk)
    with StreamReader(url, session_cookies(alice)) as stream:
        client_for(alice).post(reverse("start_export"), {"rows": 4}, HTTP_ACCEPT_LANGUAGE=language)
        (record,) = cache.get_downloads(alice)
        assert record["language"] == language
        # The shortcut names the download "Squares <date>".
        words = {what: text.replace("Squares", record["name"]) for what, text in WORDS[language].items()}
        seen = []
        while words["ready"] not in (seen[-1] if seen else ""):
            seen.append(stream.next(timeout=30)["data"])
    rows = [data for data in seen if data.startswith(f'<li id="download-{record["key"]}"')]
    assert any('aria-valuenow="' in row for row in rows), seen  # progress from the worker
    assert any(words["rows"] in row for row in rows), seen  # its rows done, in that language's words
    for row in rows:
        assert f'aria-label="{words["progress"]}"' in row and f">{words['cancel']}</button>" in row
    assert f">{words['download']}</a>" in seen[-1]
    assert not any("Progress of" in data or ">Cancel</button>" in data or "ready to download" in data
                   for data in seen)
    assert wait_for_state(record["key"], {"complete"})


@pytest.mark.django_db(transaction=True)
def test_a_failure_in_the_worker_reaches_the_page_in_german(celery_worker, web_server, alice):
    key = started_in("de", alice)
    url = web_server + partials.events_url(alice.pk)
    with StreamReader(url, session_cookies(alice)) as stream:
        failing_export.delay(key)
        seen = []
        while "fehlgeschlagen" not in (seen[-1] if seen else ""):
            seen.append(stream.next(timeout=30)["data"])
    assert "Die Datei konnte nicht gespeichert werden. Bitte versuchen Sie es später noch einmal." in seen[-1]
    assert WORDS["de"]["failed"] in seen[-1]

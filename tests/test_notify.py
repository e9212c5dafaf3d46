"""A notice for users who left: ``events.download_finished``, and the e-mail to the owner
(``async_downloads.notify``).

The mail goes to a real SMTP server (aiosmtpd, a process of its own for the module), which
keeps what it receives in a Maildir that the tests read. The tests that change records run
on every store (``record_store``).
"""

import contextlib
import email
import email.policy
import logging
import mailbox
import subprocess
import sys
import time
import uuid

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.utils import translation

from async_downloads import cache, checks, events, notify, records, store
from tests import smtp, stores
from tests.processes import child_env, free_port, start_worker, stop, wait_for_port
from tests.testapp.tasks import ping, raising_export, report_progress
from tests.threads import together
from tests.waits import wait_until

pytestmark = pytest.mark.django_db(databases=stores.DATABASES)

BASE_URL = "https://downloads.example.com"
#: The queue of this module's worker (its settings send mail): the session's worker never takes its tasks.
QUEUE = f"{django_settings.CELERY_TASK_DEFAULT_QUEUE}-notify"


class Inbox:
    """What the SMTP server received, read from its Maildir."""

    def __init__(self, port, maildir):
        self.port = port
        self.maildir = maildir

    def messages(self):
        box = mailbox.Maildir(self.maildir, create=False)
        return [email.message_from_bytes(box.get_bytes(key), policy=email.policy.default) for key in box.iterkeys()]

    def to(self, address):
        return [message for message in self.messages() if message["To"] == address]


@pytest.fixture(scope="module")
def smtp_server(tmp_path_factory):
    maildir = tmp_path_factory.mktemp("smtp") / "Maildir"
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}", "-c", "aiosmtpd.handlers.Mailbox",
         str(maildir)],
    )
    try:
        wait_for_port(port, process)
        yield Inbox(port, maildir)
    finally:
        stop(process)


@pytest.fixture
def mail(settings, smtp_server):
    """Notices on, after half a second, sent through the SMTP server; its inbox."""
    for name, value in smtp.smtp_settings("127.0.0.1", smtp_server.port).items():
        setattr(settings, name, value)
    settings.ASYNC_DOWNLOADS_EMAIL_AFTER = 0.5
    settings.ASYNC_DOWNLOADS_BASE_URL = BASE_URL
    return smtp_server


@pytest.fixture
def owner(django_user_model):
    """A user with an e-mail address of this test's own."""
    name = f"owner-{uuid.uuid4().hex[:8]}"
    return django_user_model.objects.create_user(name, email=f"{name}@example.com", password="pw")


@pytest.fixture
def finished():
    """What ``download_finished`` was sent with, as (key, kind)."""
    received = []

    def receiver(sender, record, kind, **kwargs):
        received.append((record["key"], kind))

    events.download_finished.connect(receiver)
    yield received
    events.download_finished.disconnect(receiver)


def started(user, name="Squares", language=None, age=10.0):
    """A download of ``user``'s, started ``age`` seconds ago (in ``language``)."""
    with translation.override(language) if language else contextlib.nullcontext():
        _, key = cache.init_download(user, "squares.csv", name=name)
    store.update(key, lambda record: record.update(created=record["created"] - age))
    return key


def broken_rows():
    yield ["n"]
    raise ConnectionError("database connection lost (host=db.internal)")


# --- The signal -------------------------------------------------------------------------------


def test_the_signal_is_sent_once_per_finish_with_its_kind(record_store, finished, alice, media, settings):
    completed, failed, cancelled, stalled = (started(alice, age=0) for _ in range(4))
    cache.set_percentage(completed, 50)
    cache.save_download(completed, [["n"], [1]])
    cache.set_error(failed, "No.")
    cache.cancel_download(cancelled)
    cache.task_started(stalled)
    store.update(stalled, lambda record: record.update(beat=time.time() - 100))
    settings.ASYNC_DOWNLOADS_WORKER_TIMEOUT = 1
    assert cache.fail_stalled(alice) == [stalled]
    # Whatever touches them afterwards, none of them finishes again.
    for key in (completed, failed, cancelled, stalled):
        cache.set_error(key, "Again.")
        cache.save_download(key, [["n"]])
        cache.cancel_download(key)
        cache.task_failed(key, None, None)
    assert cache.fail_stalled(alice) == []
    assert finished == [
        (completed, events.COMPLETED), (failed, events.FAILED), (cancelled, events.CANCELLED), (stalled, events.FAILED),
    ]


def test_progress_and_other_changes_send_nothing(finished, alice):
    key = started(alice, age=0)
    cache.task_started(key)
    cache.set_percentage(key, 10)
    cache.update_percentage(key, 10, 8)
    cache.clear_download(key)
    assert finished == []


def test_a_receiver_that_raises_is_logged_and_the_others_still_run(finished, alice, media, caplog):
    def broken(sender, record, kind, **kwargs):
        raise RuntimeError("receiver bug")

    events.download_finished.connect(broken)
    try:
        key = started(alice, age=0)
        cache.save_download(key, [["n"], [1]])
    finally:
        events.download_finished.disconnect(broken)
    assert cache.get_download(key)["state"] == records.COMPLETE
    assert finished == [(key, events.COMPLETED)]
    (logged,) = [entry for entry in caplog.records if "download_finished receiver" in entry.getMessage()]
    assert key in logged.getMessage() and logged.levelno == logging.ERROR
    assert logged.exc_info[1].args == ("receiver bug",)


# --- The e-mail -------------------------------------------------------------------------------


def test_a_long_download_mails_its_owner_once_with_the_link_in_their_language(
    record_store, mail, owner, media, settings
):
    settings.ASYNC_DOWNLOADS_EMAIL_FROM = "downloads@example.com"
    key = started(owner, name="Orders & <Co>", language="de")
    cache.save_download(key, [["n"], [1]])
    record = cache.get_download(key)
    (message,) = mail.to(owner.email)
    assert message["From"] == "downloads@example.com"
    assert message["Subject"] == "Orders & <Co> ist bereit zum Herunterladen."
    body = message.get_content()
    assert f"Hier herunterladen: {BASE_URL}{record['url']}\n" in body
    assert key in record["url"]
    assert "Sie erhalten diese E-Mail" in body
    assert "&amp;" not in body
    assert record["notified"] >= record["created"]
    assert notify.notify(record) is False  # a resync, a retry of the worker's: nothing more
    assert len(mail.to(owner.email)) == 1


def test_a_long_failure_mails_the_message_the_user_may_see(mail, owner, media, settings):
    settings.DEFAULT_FROM_EMAIL = "site@example.com"
    key = started(owner, language="fr")
    cache.save_download(key, broken_rows())
    (message,) = mail.to(owner.email)
    assert message["From"] == "site@example.com"
    assert message["Subject"] == "Squares\xa0: l’export a échoué."
    body = message.get_content()
    with translation.override("fr"):
        assert str(records.SAVE_FAILED) in body
    assert "db.internal" not in body and "http" not in body


def test_a_short_download_sends_nothing(mail, owner, media, settings):
    settings.ASYNC_DOWNLOADS_EMAIL_AFTER = 30
    key = started(owner, age=0)
    cache.save_download(key, [["n"]])
    assert mail.to(owner.email) == []
    assert "notified" not in cache.get_download(key)


def test_nothing_is_sent_by_default(mail, owner, media, settings):
    del settings.ASYNC_DOWNLOADS_EMAIL_AFTER
    key = started(owner, age=3600)
    cache.save_download(key, [["n"]])
    assert mail.to(owner.email) == []


def test_a_download_the_user_cancelled_sends_nothing(mail, owner):
    key = started(owner)
    cache.cancel_download(key, owner)
    assert mail.to(owner.email) == []
    assert notify.notify(cache.get_download(key)) is False


def test_a_user_without_an_address_gets_nothing_and_it_is_logged(mail, alice, media, caplog):
    before = len(mail.messages())
    caplog.set_level(logging.INFO, logger="async_downloads")
    key = started(alice)
    cache.save_download(key, [["n"]])
    assert len(mail.messages()) == before
    assert any(key in entry.getMessage() and entry.levelno == logging.INFO for entry in caplog.records)


def test_an_smtp_server_that_is_down_is_logged_and_the_download_completes(mail, owner, media, settings, caplog):
    for name, value in smtp.smtp_settings("127.0.0.1", free_port()).items():  # nothing listens there
        setattr(settings, name, value)
    key = started(owner)
    cache.save_download(key, [["n"]])
    assert cache.get_download(key)["state"] == records.COMPLETE
    (logged,) = [entry for entry in caplog.records if "e-mail notice" in entry.getMessage()]
    assert key in logged.getMessage() and isinstance(logged.exc_info[1], OSError)


@pytest.mark.django_db(transaction=True, databases=stores.DATABASES)
def test_concurrent_notices_of_one_download_send_one_mail(record_store, mail, owner, media, settings):
    """Eight threads (each with a database connection of its own) try at once: one claims, one mail."""
    settings.ASYNC_DOWNLOADS_EMAIL_AFTER = None
    key = started(owner)
    cache.save_download(key, [["n"]])
    settings.ASYNC_DOWNLOADS_EMAIL_AFTER = 0.5
    record = cache.get_download(key)
    sent = together(*[lambda: notify.notify(record)] * 8)
    assert sorted(sent) == [False] * 7 + [True]
    assert len(mail.to(owner.email)) == 1


# --- A real worker ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def notify_worker(django_db_setup, django_db_blocker, smtp_server):
    """A Celery worker process whose settings send notices (after half a second) through the SMTP server."""
    env = child_env(
        ASYNC_DOWNLOADS_TEST_SMTP=f"127.0.0.1:{smtp_server.port}", ASYNC_DOWNLOADS_TEST_SET_EMAIL_AFTER="0.5"
    )
    process = start_worker(env, "-Q", QUEUE)
    try:
        ping.apply_async(queue=QUEUE).get(timeout=60)
        yield process
    finally:
        stop(process)


@pytest.mark.django_db(transaction=True, databases=stores.DATABASES)
def test_a_worker_that_finishes_a_long_task_mails_the_owner_once(notify_worker, mail, owner):
    """The user (committed: the worker reads the address) left; the worker's task completes."""
    key = started(owner, language="de")
    report_progress.apply_async((key,), {"steps": (50,), "pause": 0.05}, queue=QUEUE).get(timeout=30)
    (message,) = wait_until(lambda: mail.to(owner.email), timeout=30, what="the notice")
    record = cache.get_download(key)
    assert record["state"] == records.COMPLETE and record.get("notified")
    assert message["Subject"] == "Squares ist bereit zum Herunterladen."
    assert record["url"] in message.get_content()
    assert notify.notify(record) is False  # this process tries too: the worker claimed it
    time.sleep(0.2)
    assert len(mail.to(owner.email)) == 1


@pytest.mark.django_db(transaction=True, databases=stores.DATABASES)
def test_a_worker_whose_task_raises_mails_the_failure(notify_worker, mail, owner):
    key = started(owner)
    # As start_download keeps it (which would send the task to the default queue): the task is the download's.
    task = {"name": raising_export.name, "args": [], "kwargs": {}}
    store.update(key, lambda record: record.update(task=task))
    with contextlib.suppress(RuntimeError):
        raising_export.apply_async((key,), queue=QUEUE).get(timeout=30)
    (message,) = wait_until(lambda: mail.to(owner.email), timeout=30, what="the notice")
    assert message["Subject"] == "Squares failed."
    body = message.get_content()
    assert str(records.TASK_FAILED) in body and "db.internal" not in body


# --- The system check -------------------------------------------------------------------------


def test_notices_without_a_base_url_are_w009(settings):
    settings.ASYNC_DOWNLOADS_EMAIL_AFTER = 60
    (warning,) = checks.check_email_notice()
    assert warning.id == "async_downloads.W009"
    assert "ASYNC_DOWNLOADS_BASE_URL is empty" in warning.msg


@pytest.mark.parametrize("base_url", ["example.com", "/downloads", "ftp://example.com", "https://", "http://["])
def test_a_base_url_that_is_not_absolute_http_is_w009(settings, base_url):
    settings.ASYNC_DOWNLOADS_BASE_URL = base_url
    (warning,) = checks.check_email_notice()
    assert warning.id == "async_downloads.W009"
    assert repr(base_url) in warning.msg


@pytest.mark.parametrize("email_after", [None, 60])
@pytest.mark.parametrize("base_url", ["https://example.com", "http://127.0.0.1:8000/"])
def test_an_absolute_base_url_is_fine(settings, email_after, base_url):
    settings.ASYNC_DOWNLOADS_EMAIL_AFTER = email_after
    settings.ASYNC_DOWNLOADS_BASE_URL = base_url
    assert checks.check_email_notice() == []


def test_no_notices_and_no_base_url_is_fine():
    assert checks.check_email_notice() == []


def test_the_check_command_reports_w009(settings, capsys):
    settings.ASYNC_DOWNLOADS_EMAIL_AFTER = 60
    call_command("check")
    assert "async_downloads.W009" in capsys.readouterr().err

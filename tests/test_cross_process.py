"""Progress from a Celery worker process reaches a client of a different web process."""

import pytest

from async_downloads import cache, partials
from tests.sse_client import StreamReader, session_cookies
from tests.testapp.tasks import report_progress

pytestmark = pytest.mark.django_db(transaction=True)


def test_worker_progress_reaches_the_browser_stream(celery_worker, web_server, alice, bob):
    _, key = cache.init_download(alice, "report.csv")
    _, bob_key = cache.init_download(bob, "bob.csv")
    url = web_server + partials.events_url(alice.pk)
    with StreamReader(url, session_cookies(alice)) as stream:
        report_progress.delay(bob_key, steps=[40], pause=0)
        report_progress.delay(key, steps=[25, 50, 75])
        values = [stream.next(timeout=20)["data"] for _ in range(5)]
    assert 'aria-valuenow="0"' in values[0]  # running as soon as the worker starts the task
    assert 'aria-valuenow="25"' in values[1]
    assert 'aria-valuenow="50"' in values[2]
    assert 'aria-valuenow="75"' in values[3]
    assert "report.csv is ready to download." in values[4]
    assert not any(bob_key in value for value in values)
    assert cache.get_download(key)["state"] == "complete"

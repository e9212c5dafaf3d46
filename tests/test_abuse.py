"""Abuse of the HTTP endpoints, as a table of endpoints × abuses (issue 6).

Bob owns a finished, a running and a failed (retryable) download. Alice, or a
visitor who is not signed in, calls each endpoint with what an attacker would
send. Every answer has the status the table names (never a 500), no byte of
Bob's (key, file name, name, storage path), and Bob's downloads and file stay
exactly as they were. The cases that test one check on its own (signed out,
no CSRF token, wrong method) send Bob's own key with Bob's own session, so
that nothing but that check stands in the way.

The event streams (``events``, GRIP mode's ``held_events``) and the WebSocket consumer are in
tests/test_abuse_live.py.
"""

import uuid
from dataclasses import dataclass
from urllib.parse import urlencode

import pytest
from django.core.signals import request_finished
from django.db import close_old_connections
from django.test import Client
from django.urls import reverse

from async_downloads import cache
from async_downloads.shortcuts import init_generic_csv_download
from tests.testapp.tasks import queued_elsewhere

pytestmark = pytest.mark.django_db

MALFORMED_KEYS = {
    "dot-dot": "../../etc/passwd",
    "encoded-dot-dot": "..%2F..%2Fetc%2Fpasswd",
    "long": "x" * 5000,
    "unicode": "ключ-ünïcødé-😀",
    "nul": "%00",
    "key-and-nul": "00000000-0000-4000-8000-000000000000%00",
}

# How each endpoint gets its key: in the URL path, the query string, or the POST body.
URL, QUERY, FORM = "url", "query", "form"


# The header that each endpoint's own client sends: htmx, or the jQuery script of earlier releases.
SCRIPT_HEADERS = {"htmx": {"HTTP_HX_REQUEST": "true"}, "jquery": {"HTTP_X_REQUESTED_WITH": "XMLHttpRequest"}}
GET_ONLY, POST_ONLY = ("POST", "PUT", "DELETE"), ("GET", "PUT", "DELETE")


@dataclass(frozen=True)
class Endpoint:
    method: str
    key_in: str
    target: str  # which of Bob's downloads it would act on
    script: str = "htmx"

    @property
    def wrong_methods(self):
        return GET_ONLY if self.method == "GET" else POST_ONLY


ENDPOINTS = {
    "centre": Endpoint("GET", QUERY, "complete"),
    "download": Endpoint("GET", URL, "complete"),
    "clear": Endpoint("POST", URL, "complete"),
    "cancel": Endpoint("POST", URL, "running"),
    "retry": Endpoint("POST", URL, "failed"),
    "ajax_update": Endpoint("GET", QUERY, "complete", script="jquery"),
    "ajax_clear_download": Endpoint("POST", FORM, "complete", script="jquery"),
}

CASES = ("other_user", "unknown", "malformed", "storage_path", "signed_out", "signed_out_script", "no_csrf",
         "wrong_method")
# The status each endpoint answers to each case (in the order of CASES). Endpoints without a
# key (centre, ajax_update) ignore one sent in the query string and show Alice her own.
EXPECTED = {
    #                       other unknown malformed path signed_out script no_csrf wrong_method
    "centre":              (200,  200,    200,      200,  302,       403,   200,    405),
    "download":            (404,  404,    404,      404,  302,       403,   200,    405),
    "clear":               (404,  404,    404,      404,  302,       403,   403,    405),
    "cancel":              (404,  404,    404,      404,  302,       403,   403,    405),
    "retry":               (404,  404,    404,      404,  302,       403,   403,    405),
    "ajax_update":         (200,  200,    200,      200,  302,       403,   200,    405),
    "ajax_clear_download": (404,  404,    404,      404,  302,       403,   403,    405),
}


def matrix():
    for endpoint, statuses in EXPECTED.items():
        for case, status in zip(CASES, statuses, strict=True):
            variants = {
                "malformed": list(MALFORMED_KEYS),
                "wrong_method": list(ENDPOINTS[endpoint].wrong_methods),
                "other_user": ["key", "key-in-capitals"],
            }.get(case, [""])
            for variant in variants:
                name = f"{endpoint}-{case}{'-' if variant else ''}{variant}"
                yield pytest.param(endpoint, case, variant, status, id=name)


class Bob:
    """Bob's downloads, and what an untouched copy of them looks like."""

    def __init__(self, user, media):
        self.user, self.media = user, media
        _, complete = cache.init_download(user, "bobs-payroll.csv", name="Bob's payroll")
        cache.save_download(complete, [["salary"], [123456]])
        _, running = cache.init_download(user, "bobs-running.csv", name="Bob's running export")
        cache.set_percentage(running, 40)
        _, failed = init_generic_csv_download(queued_elsewhere, user, "Bobs failed export")
        cache.set_error(failed, "Bob's export failed.")
        self.keys = {"complete": complete, "running": running, "failed": failed}
        self.before = self.snapshot()

    def record(self, target):
        return cache.get_download(self.keys[target])

    def snapshot(self):
        return {
            "records": {key: cache.get_download(key) for key in self.keys.values()},
            "listed": [record["key"] for record in cache.get_downloads(self.user)],
            "file": (self.media / self.record("complete")["filepath"]).read_bytes(),
        }

    def traces(self):
        """What of Bob's must never reach Alice."""
        for record in self.before["records"].values():
            yield from (record["key"], record["filename"], record["name"], record["filepath"])


@pytest.fixture
def bobs(bob, media):
    return Bob(bob, media)


@pytest.fixture
def alices(alice):
    _, key = cache.init_download(alice, "alices-report.csv")
    return key


def key_for(case, variant, record):
    if case == "other_user":
        return record["key"].upper() if variant == "key-in-capitals" else record["key"]
    if case == "unknown":
        return str(uuid.uuid4())
    if case == "malformed":
        return MALFORMED_KEYS[variant]
    if case == "storage_path":
        return record["filepath"]
    return record["key"]  # the checks that stand alone: Bob's own key


def call(client, name, key, method=None, field="download_key", **headers):
    endpoint = ENDPOINTS[name]
    method = method or endpoint.method
    body = ""
    if endpoint.key_in == URL:
        path = f"/async_downloads/{name}/{key}/"
    elif endpoint.key_in == QUERY:
        path = f"{reverse(f'async_downloads:{name}')}?{urlencode({'download_key': key, 'idle': key})}"
    else:
        path, body = reverse(f"async_downloads:{name}"), urlencode({field: key})
    return client.generic(method, path, body, content_type="application/x-www-form-urlencoded", **headers)


def client_and_headers(case, variant, name, client_for, alice, bob):
    if case == "signed_out":
        return Client(), {}
    if case == "signed_out_script":
        return Client(), SCRIPT_HEADERS[ENDPOINTS[name].script]
    if case == "no_csrf":
        return client_for(bob, csrf=True), {}
    if case == "wrong_method":
        return client_for(bob), {"method": variant}
    return client_for(alice), {}


def content(response):
    """The body as text; a file response is closed as the test client closes its others,
    without closing the test's database connection."""
    body = b"".join(response.streaming_content) if response.streaming else response.content
    request_finished.disconnect(close_old_connections)
    try:
        response.close()
    finally:
        request_finished.connect(close_old_connections)
    return body.decode(errors="replace")


@pytest.mark.parametrize("name, case, variant, status", list(matrix()))
def test_abuse(client_for, alice, bob, alices, bobs, name, case, variant, status):
    client, headers = client_and_headers(case, variant, name, client_for, alice, bob)
    field = "filepath" if case == "storage_path" else "download_key"
    response = call(client, name, key_for(case, variant, bobs.record(ENDPOINTS[name].target)), field=field, **headers)
    body = content(response)

    assert response.status_code == status
    if status == 302:
        assert response["Location"].startswith("/login/?next=/async_downloads/")
    if case not in ("no_csrf", "wrong_method"):  # those are Bob's own requests
        leaked = [trace for trace in bobs.traces() if trace in body]
        assert not leaked
    if status == 200 and case not in ("no_csrf", "wrong_method"):
        assert alices in body  # a real answer: Alice's own list
    assert bobs.snapshot() == bobs.before


def test_the_matrix_covers_every_endpoint():
    from async_downloads.urls import urlpatterns

    assert set(EXPECTED) == set(ENDPOINTS) == {p.name for p in urlpatterns} - {"events", "held_events"}


def test_a_boosted_page_load_of_a_signed_out_user_still_goes_to_the_login_page(bobs):
    response = Client().get(reverse("async_downloads:centre"), HTTP_HX_REQUEST="true", HTTP_HX_BOOSTED="true")
    assert response.status_code == 302
    assert response["Location"] == "/login/?next=/async_downloads/"


def test_the_owners_own_requests_still_work(client_for, bob, bobs):
    """The baseline of the table: with the token, the method and the key right, Bob gets his own."""
    client = client_for(bob)
    assert content(call(client, "download", bobs.keys["complete"])) == "salary\n123456\n"
    assert call(client, "cancel", bobs.keys["running"]).status_code == 200
    assert call(client, "retry", bobs.keys["failed"]).status_code == 200
    assert call(client, "clear", bobs.keys["complete"]).status_code == 200
    assert cache.get_download(bobs.keys["complete"]) is None

"""The template sets in templates_showcase/: each keeps what the live centre needs.

Every set is rendered through Django's template engine with its app installed ahead of
async_downloads, from real records made by the cache API.
"""

import re
import runpy
from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.staticfiles import finders
from django.core.exceptions import ImproperlyConfigured
from django.middleware.csrf import get_token
from django.template import Context, Template
from django.template.loader import get_template, render_to_string
from django.test import RequestFactory, override_settings
from django.urls import reverse

from async_downloads import cache, events, partials
from async_downloads.shortcuts import init_generic_csv_download
from tests.testapp.tasks import queued_elsewhere

ROOT = Path(__file__).resolve().parent.parent
SHOWCASE_DIR = ROOT / "templates_showcase"
DEFAULT_ROW = ROOT / "async_downloads" / "templates" / "async_downloads" / "download.html"
SHOWCASES = ("bootstrap5", "toast", "semantic")
IDS = ("async-downloads-list", "async-downloads-indicator", "async-downloads-status", "async-downloads-connection")


def installed_ahead_of_async_downloads(showcase):
    apps = list(settings.INSTALLED_APPS)
    apps.insert(apps.index("async_downloads"), f"templates_showcase.{showcase}")
    return override_settings(INSTALLED_APPS=apps)


@pytest.fixture(params=SHOWCASES)
def showcase(request, db):
    with installed_ahead_of_async_downloads(request.param):
        yield request.param


class Elements(HTMLParser):
    """The start tags of a piece of HTML, as ``(tag, attributes)``, and its text."""

    def __init__(self, html):
        super().__init__()
        self.tags, self.text = [], []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag=None, **attrs):
        return [
            found for name, found in self.tags
            if (tag is None or name == tag)
            and all(found.get(key.replace("_", "-")) == value for key, value in attrs.items())
        ]

    def one(self, tag=None, **attrs):
        (found,) = self.find(tag, **attrs)
        return found

    def ids(self):
        return {found["id"] for _, found in self.tags if "id" in found}

    def all_text(self):
        return " ".join(" ".join(self.text).split())


def download(user, state, name="Orders", percentage=42, task=False):
    """A download in ``state``; with ``task``, started by the shortcut, so it keeps its task
    (which waits in a queue that no worker reads) and can be retried once it failed."""
    if task:
        _, key = init_generic_csv_download(queued_elsewhere, user, name)
    else:
        _, key = cache.init_download(user, "orders.csv", name=name)
    if state == "running":
        cache.set_percentage(key, percentage)
    elif state == "complete":
        cache.save_download(key, [["order"], [1]])
    elif state == "error":
        cache.set_error(key, "<b>The warehouse did not answer.</b>")
    elif state == "cancelled":
        cache.cancel_download(key)
    assert cache.get_download(key)["state"] == state
    return key


def row(key):
    return Elements(partials.render_row(cache.get_download(key)))


def centre_html(user):
    return render_to_string(partials.CENTRE, {"centre": partials.centre_context(user.pk)})


def progress(elements):
    """The value the progress element exposes to assistive technology, and its name."""
    native = elements.find("progress")
    if native:
        (element,) = native
        assert element["max"] == "100"
        (label,) = [attrs for tag, attrs in elements.tags if tag == "label" and attrs.get("for") == element["id"]]
        return element.get("value"), label
    element = elements.one(role="progressbar")
    assert (element["aria-valuemin"], element["aria-valuemax"]) == ("0", "100")
    return element.get("aria-valuenow"), element["aria-label"]


def test_each_set_wins_over_the_app(showcase):
    origin = Path(get_template("async_downloads/download.html").origin.name)
    assert origin.is_relative_to(SHOWCASE_DIR / showcase)


def test_centre_keeps_the_ids_and_the_apps_own_partials(showcase, media, alice):
    key = download(alice, "running")
    html = centre_html(alice)
    elements = Elements(html)
    assert {*IDS, f"download-{key}"} <= elements.ids()
    # The stream and the live region are the app's, included by name.
    assert elements.one(id="async-downloads-connection")["sse-connect"].startswith(reverse("async_downloads:events"))
    status = elements.one(id="async-downloads-status")
    assert (status["role"], status["aria-live"]) == ("status", "polite")


def test_centre_links_only_stylesheets_that_exist(showcase, alice):
    for link in Elements(centre_html(alice)).find("link", rel="stylesheet"):
        path = link["href"].removeprefix(settings.STATIC_URL)
        assert finders.find(path), link["href"]


def test_pushed_messages_replace_the_same_ids(showcase, media, alice):
    key = download(alice, "running")
    update = partials.render_message(alice.pk, cache.get_download(key), events.UPDATED)
    tag, attrs = Elements(update).tags[0]  # progress replaces one row
    assert (tag, attrs["id"], attrs["hx-swap-oob"]) == ("li", f"download-{key}", "true")
    cache.save_download(key, [["x"]])
    finished = Elements(partials.render_message(alice.pk, cache.get_download(key), events.COMPLETED))
    assert finished.one(id="async-downloads-list")["hx-swap-oob"] == "true"
    assert finished.one(id="async-downloads-indicator")["hx-swap-oob"] == "true"
    assert "Orders is ready to download." in finished.all_text()


def test_running_progress_exposes_its_value_and_a_name(showcase, alice):
    value, name = progress(row(download(alice, "running", percentage=42)))
    assert value == "42"
    assert name  # aria-label, or a <label for> the <progress>


def test_pending_progress_is_indeterminate(showcase, alice):
    value, _ = progress(row(download(alice, "pending")))
    assert value is None


def test_clear_button_posts_to_the_clear_url(showcase, alice):
    key = download(alice, "running")
    button = row(key).one("button", hx_post=reverse("async_downloads:clear", args=[key]))
    assert button["hx-post"] == reverse("async_downloads:clear", args=[key])
    assert (button["hx-target"], button["hx-swap"]) == ("closest li", "delete")
    assert button["aria-label"] == "Clear Orders"


def actions(elements, key):
    """Which of cancel and retry the row offers, as buttons posting to that URL of its download."""
    return {
        action for action in ("cancel", "retry")
        if elements.find("button", hx_post=reverse(f"async_downloads:{action}", args=[key]))
    }


@pytest.mark.parametrize(("state", "task", "offered"), [
    ("pending", True, {"cancel"}),
    ("running", False, {"cancel"}),
    ("running", True, {"cancel"}),
    ("error", True, {"retry"}),
    ("cancelled", True, {"retry"}),
    ("error", False, set()),  # started without the shortcut: no task to start again
    ("cancelled", False, set()),
    ("complete", True, set()),
    ("complete", False, set()),
])
def test_rows_offer_cancel_while_in_progress_and_retry_when_retryable(showcase, media, alice, state, task, offered):
    key = download(alice, state, task=task)
    assert actions(row(key), key) == offered
    assert ("retry" in offered) == cache.is_retryable(cache.get_download(key))


def default_row(record):
    return Elements(Template(DEFAULT_ROW.read_text()).render(Context({"download": record, "oob": False})))


def htmx_attributes(button):
    return {name: value for name, value in button.items() if name.startswith("hx-")}


@pytest.mark.parametrize(("action", "state"), [("cancel", "running"), ("retry", "error"), ("retry", "cancelled")])
def test_cancel_and_retry_post_as_the_default_row_does_and_name_the_download(showcase, alice, action, state):
    key = download(alice, state, name='<img src=x onerror="alert(1)"> & "Co"', task=True)
    record = cache.get_download(key)
    html = partials.render_row(record)
    url = reverse(f"async_downloads:{action}", args=[key])
    button = Elements(html).one("button", hx_post=url)
    assert htmx_attributes(button) == htmx_attributes(default_row(record).one("button", hx_post=url))
    assert (button["hx-target"], button["hx-swap"]) == ("closest li", "outerHTML")
    assert button["aria-label"] == f"{action.capitalize()} {record['name']}"
    assert "<img" not in html and 'onerror="' not in html


def test_complete_row_links_to_the_owner_checked_view(showcase, media, alice):
    key = download(alice, "complete")
    elements = row(key)
    (link,) = [attrs for tag, attrs in elements.tags if tag == "a"]
    assert link["href"] == reverse("async_downloads:download", args=[key])
    assert "download" in link
    assert not elements.find(role="progressbar") and not elements.find("progress")


def test_error_row_shows_the_message_escaped(showcase, alice):
    key = download(alice, "error")
    html = partials.render_row(cache.get_download(key))
    assert "&lt;b&gt;The warehouse did not answer.&lt;/b&gt;" in html
    assert not Elements(html).find("a")


def test_a_row_waiting_for_a_worker_says_so(showcase, alice):
    from async_downloads import store

    key = download(alice, "pending")
    assert "Waiting for a worker" not in partials.render_row(cache.get_download(key))
    store.update(key, lambda record: record.update(waiting=True))
    assert "Waiting for a worker…" in partials.render_row(cache.get_download(key))


def test_the_lost_downloads_notice_is_shown_and_announced(showcase, alice):
    html = partials.render_message(alice.pk, notice="Some downloads were lost.")
    list_html = html[: html.index('id="async-downloads-status"')]
    assert "Some downloads were lost." in list_html and 'role="alert"' in list_html
    assert "Some downloads were lost." in html[html.index('id="async-downloads-status"'):]


def test_no_csrf_token_is_rendered(showcase, media, alice):
    running, done = download(alice, "running"), download(alice, "complete")
    failed = download(alice, "error", task=True)
    request = RequestFactory().get("/")
    request.user = alice
    token = get_token(request)
    page = Template("{% load async_downloads %}{% download_centre %}").render(Context({"request": request}))
    pushed = [
        partials.render_message(alice.pk, cache.get_download(done), events.COMPLETED),
        partials.render_message(alice.pk, cache.get_download(running), events.UPDATED),
        partials.render_row(cache.get_download(failed)),
        partials.render_refresh(alice.pk),
    ]
    assert f'id="download-{running}"' in page
    assert reverse("async_downloads:cancel", args=[running]) in page
    assert reverse("async_downloads:retry", args=[failed]) in page
    for html in [page, *pushed]:
        assert token not in html and "csrf" not in html.lower()


@pytest.mark.parametrize("name", SHOWCASES)
def test_sets_include_the_apps_connection_and_status_and_never_a_csrf_token(name):
    templates = SHOWCASE_DIR / name / "templates" / "async_downloads"
    assert not (templates / "connection.html").exists() and not (templates / "status.html").exists()
    centre = (templates / "download_centre.html").read_text()
    assert '{% include "async_downloads/connection.html"' in centre
    assert '{% include "async_downloads/status.html"' in centre
    for template in templates.glob("*.html"):
        assert "csrf_token" not in template.read_text(), template.name


@pytest.mark.parametrize("name", SHOWCASES)
def test_readme_lists_exactly_the_templates_it_overrides(name):
    templates = SHOWCASE_DIR / name / "templates"
    overridden = {path.relative_to(templates).as_posix() for path in templates.rglob("*.html")}
    readme = (SHOWCASE_DIR / name / "README.md").read_text()
    listed = set(re.findall(r"^\| `(async_downloads/[^`]+)` \|", readme, flags=re.MULTILINE))
    assert listed == overridden


def test_vendored_bootstrap_is_the_version_the_readme_names():
    static = SHOWCASE_DIR / "bootstrap5" / "static" / "async_downloads_bootstrap5"
    header = (static / "bootstrap.min.css").read_text()[:200]
    version = re.search(r"Bootstrap\s+v(\d+\.\d+\.\d+)", header).group(1)
    assert f"CSS ({version})" in (SHOWCASE_DIR / "bootstrap5" / "README.md").read_text()
    assert "Bootstrap Authors" in (static / "LICENSE").read_text()
    assert "sourceMappingURL" not in (static / "bootstrap.min.css").read_text()


def sample_site_settings(monkeypatch, showcase):
    monkeypatch.setenv("SHOWCASE", showcase)
    return runpy.run_path(str(ROOT / "sample_site" / "settings.py"))


@pytest.mark.parametrize("name", SHOWCASES)
def test_sample_site_puts_the_chosen_set_before_the_app(monkeypatch, name):
    apps = sample_site_settings(monkeypatch, name)["INSTALLED_APPS"]
    assert apps[apps.index("async_downloads") - 1] == f"templates_showcase.{name}"


@pytest.mark.parametrize("value", ["", "default"])
def test_sample_site_uses_the_apps_own_templates_by_default(monkeypatch, value):
    apps = sample_site_settings(monkeypatch, value)["INSTALLED_APPS"]
    assert not [app for app in apps if app.startswith("templates_showcase")]


def test_sample_site_names_the_sets_when_the_showcase_is_unknown(monkeypatch):
    with pytest.raises(ImproperlyConfigured, match=r"'tailwind'.*'bootstrap5', 'toast', 'semantic'"):
        sample_site_settings(monkeypatch, "tailwind")


@pytest.fixture(params=("app", *SHOWCASES))
def any_set(request, db):
    """The app's own row, then each set's."""
    if request.param == "app":
        yield request.param
        return
    with installed_ahead_of_async_downloads(request.param):
        yield request.param


@pytest.fixture
def clock(monkeypatch):
    """One fake clock for the progress reports (the cache API) and the rendering (the template filter)."""
    from async_downloads.templatetags import async_downloads as tags
    from tests.test_cache import Clock

    clock = Clock()
    monkeypatch.setattr(cache, "time", clock)
    monkeypatch.setattr(tags, "time", clock)
    return clock


class Spoken(HTMLParser):
    """The text of a piece of HTML that assistive technology reads: none inside ``aria-hidden`` elements."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self, html):
        super().__init__()
        self.open, self.text = [], []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.open.append(dict(attrs).get("aria-hidden") == "true")

    def handle_endtag(self, tag):
        if tag not in self.VOID:
            self.open.pop()

    def handle_data(self, data):
        if not any(self.open):
            self.text.append(data)

    def all_text(self):
        return " ".join(" ".join(self.text).split())


def progress_element(elements):
    return (elements.find("progress") or elements.find(role="progressbar"))[0]


def test_a_task_reporting_rows_shows_how_far_it_is_and_then_the_time_left(any_set, alice, clock):
    key = download(alice, "pending")
    cache.update_percentage(key, 300_000, 0)  # the first report: no rate yet
    first = partials.render_row(cache.get_download(key))
    assert "1 of 300,000 rows" in Spoken(first).all_text() and " left" not in first
    clock.advance(4.5)
    cache.update_percentage(key, 300_000, 29_999)  # 10 %: 29,999 rows in 4.5 s, 270,000 to go
    html = partials.render_row(cache.get_download(key))
    text = "30,000 of 300,000 rows · about 40 s left"
    assert text in Spoken(html).all_text()  # shown, and read by screen readers
    elements = Elements(html)
    assert progress_element(elements)["aria-describedby"] == f"download-{key}-rows"
    assert re.search(rf'id="download-{key}-rows"[^>]*>(?:<small>)?([^<]*)<', html).group(1) == text
    value, _ = progress(elements)
    assert value == "10"


def test_the_pushed_progress_row_carries_the_rows(any_set, alice, clock):
    key = download(alice, "pending")
    cache.update_percentage(key, 300_000, 0)
    clock.advance(4.5)
    cache.update_percentage(key, 300_000, 29_999)
    pushed = partials.render_message(alice.pk, cache.get_download(key), events.UPDATED)
    assert "30,000 of 300,000 rows · about 40 s left" in Spoken(pushed).all_text()


@pytest.mark.parametrize("state", ["pending", "running"])
def test_a_task_setting_percentages_only_shows_no_rows(any_set, alice, state):
    html = partials.render_row(cache.get_download(download(alice, state)))
    assert " rows" not in html and "-rows" not in html
    assert not [attrs for _, attrs in Elements(html).tags if "aria-describedby" in attrs]


def test_rows_go_when_the_task_sets_a_percentage_or_finishes(any_set, alice, media, clock):
    key = download(alice, "pending")
    cache.update_percentage(key, 300_000, 0)
    clock.advance(4.5)
    cache.update_percentage(key, 300_000, 29_999)
    cache.set_percentage(key, 95)  # the task moved on to other work
    assert "of 300,000" not in partials.render_row(cache.get_download(key))
    cache.update_percentage(key, 300_000, 299_999)
    assert "300,000 of 300,000 rows" in partials.render_row(cache.get_download(key))
    cache.save_download(key, [["x"]])
    assert "of 300,000" not in partials.render_row(cache.get_download(key))

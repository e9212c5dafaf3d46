from __future__ import annotations

import math
import time
from datetime import datetime
from typing import Any, cast

from django import template
from django.template import Context
from django.templatetags.static import static
from django.utils import formats, timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.timesince import timesince
from django.utils.translation import gettext, ngettext, npgettext_lazy
from django_htmx.jinja import htmx_script

from async_downloads import partials, records
from async_downloads.conf import transport

register = template.Library()

EXTENSIONS = {"sse": ["hx-sse"], "ws": ["hx-ws"], "poll": []}


@register.simple_tag(takes_context=True)
def async_downloads_head(context: Context) -> SafeString:
    """The stylesheet, htmx 2 and the extension the transport needs, all from static files.

    With SSE or polling, also the script that tells the browser's other tabs when a
    download starts (an idle tab holds no connection); WS mode keeps a socket open anyway.
    """
    name = transport()
    nonce = context.get("csp_nonce")
    css = format_html('<link rel="stylesheet" href="{}">', static("async_downloads/async_downloads.css"))
    scripts = htmx_script(version=2, extensions=EXTENSIONS[name], nonce=nonce)
    if name != "ws":
        scripts += _script_tag("async_downloads/tabs.js", nonce)
    return css + scripts


def _script_tag(path: str, nonce: Any) -> SafeString:
    """A deferred script from static files, as django-htmx writes its own (run in order, after htmx)."""
    if nonce is None:
        return format_html('<script src="{}" defer></script>', static(path))
    return format_html('<script src="{}" defer nonce="{}"></script>', static(path), nonce)


@register.simple_tag(takes_context=True)
def download_centre_context(context: Context) -> dict[str, Any] | str:
    """The context of the download centre for the signed-in user, or '' for anyone else."""
    user = _user(context)
    if user is None or not user.is_authenticated:
        return ""
    return partials.centre_context(user.pk, preserve=True)


@register.inclusion_tag("async_downloads/download_centre.html", takes_context=True)
def download_centre(context: Context) -> dict[str, Any]:
    """The download centre: a button with an in-progress indicator and the panel of downloads."""
    return {"centre": download_centre_context(context), "csp_nonce": context.get("csp_nonce")}


def _user(context: Context) -> Any:
    request = context.get("request")
    return getattr(request, "user", None) or context.get("user")


@register.filter
def download_age(moment: datetime) -> str:
    """"just now" for the first minute, then "5 minutes ago" and so on."""
    if (timezone.now() - moment).total_seconds() < 60:
        return gettext("just now")
    return gettext("%(time)s ago") % {"time": timesince(moment, time_strings=cast("dict[str, str]", AGE_UNITS))}


#: Django's units of ``timesince``, in the grammatical case that "%(time)s ago" needs
#: ("vor 2 Tagen", not Django's "2 Tage"), with a context of their own. Lazy plurals, as
#: Django's are: ``timesince`` picks the form with ``% {"num": n}``.
AGE_UNITS = {
    "year": npgettext_lazy("download age", "%(num)d year", "%(num)d years", "num"),
    "month": npgettext_lazy("download age", "%(num)d month", "%(num)d months", "num"),
    "week": npgettext_lazy("download age", "%(num)d week", "%(num)d weeks", "num"),
    "day": npgettext_lazy("download age", "%(num)d day", "%(num)d days", "num"),
    "hour": npgettext_lazy("download age", "%(num)d hour", "%(num)d hours", "num"),
    "minute": npgettext_lazy("download age", "%(num)d minute", "%(num)d minutes", "num"),
}


@register.filter
def retryable(download: records.Record) -> bool:
    """Whether the download's row offers Retry: it failed or was cancelled, and a helper started its task."""
    return records.is_retryable(download)


@register.filter
def download_rows(download: records.Record) -> str:
    """"12,400 of 300,000 rows · about 40 s left" for a running download whose task reports rows.

    From what ``update_percentage`` keeps in the record; the time left shows once a rate
    can be measured (from the second report on: rows done since the first report, over
    the time between them), counted down from the last report. "" for a download whose
    task sets percentages only, and for any download that is not running.
    """
    done, total = download.get("rows_done"), download.get("rows_total")
    if download.get("state") != records.RUNNING or not isinstance(done, int) or not isinstance(total, int):
        return ""
    if total < 1:
        return ""
    rows = ngettext("%(done)s of %(total)s row", "%(done)s of %(total)s rows", total) % {
        "done": _grouped(done), "total": _grouped(total),
    }
    left = _seconds_left(download, done, total, time.time())
    if left is None:
        return rows
    # Translators: how far an export is, then about how long it has left: "12,400 of 300,000 rows · about 40 s left".
    return gettext("%(rows)s · %(time_left)s") % {"rows": rows, "time_left": _time_left(left)}


def _grouped(number: int) -> str:
    """``number`` with the active language's thousands separator (no django.contrib.humanize needed)."""
    return formats.number_format(number, use_l10n=True, force_grouping=True)


def _seconds_left(download: records.Record, done: int, total: int, now: float) -> float | None:
    """The seconds the rows still to do take at the rate measured so far, or None if it cannot be told."""
    started, reported = download.get("rows_started_at"), download.get("rows_reported_at")
    done_at_start = download.get("rows_done_at_start")
    if started is None or reported is None or done_at_start is None or done >= total:
        return None
    counted, elapsed = done - done_at_start, reported - started
    if counted <= 0 or elapsed <= 0:
        return None
    left = (total - done) * elapsed / counted - max(0.0, now - reported)
    # Past the estimate (a page rendered long after the last report): no guess rather than a wrong one.
    return left if left > 0 else None


def _time_left(seconds: float) -> str:
    """"about 40 s left", rounded to a figure worth reading: whole seconds under 10 s, then 5 s
    steps, whole minutes under 90 min, whole hours beyond."""
    if seconds < 1:
        return gettext("less than a second left")
    if (count := _rounded(seconds)) < 10 or (count := 5 * _rounded(seconds / 5)) < 60:
        return ngettext("about %(count)s s left", "about %(count)s s left", count) % {"count": _grouped(count)}
    if (count := max(1, _rounded(seconds / 60))) < 90:
        return ngettext("about %(count)s min left", "about %(count)s min left", count) % {"count": _grouped(count)}
    count = max(2, _rounded(seconds / 3600))
    return ngettext("about %(count)s h left", "about %(count)s h left", count) % {"count": _grouped(count)}


def _rounded(value: float) -> int:
    """Half up, not to even: 2.5 s is "about 3 s"."""
    return math.floor(value + 0.5)

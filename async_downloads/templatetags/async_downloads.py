from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from django import template
from django.template import Context
from django.templatetags.static import static
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.timesince import timesince
from django.utils.translation import gettext, npgettext_lazy
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

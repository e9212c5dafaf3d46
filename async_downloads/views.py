from __future__ import annotations

import posixpath
from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any, Concatenate, Final, ParamSpec, TypeVar
from urllib.parse import quote

from django.contrib.auth.decorators import login_required
from django.core.files.storage import Storage
from django.core.serializers.json import DjangoJSONEncoder
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseForbidden,
    HttpResponseRedirect,
    JsonResponse,
)
from django.template.loader import render_to_string
from django.utils.http import content_disposition_header
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST, require_safe
from django_htmx.http import HttpResponseStopPolling, reswap, trigger_client_event

from . import cache, files, partials, responses
from .conf import settings

if TYPE_CHECKING:
    from django_htmx.middleware import HtmxDetails

    class HtmxHttpRequest(HttpRequest):
        """A request that django-htmx's middleware has seen."""

        htmx: HtmxDetails


SENDFILE_HEADERS = {"x-accel-redirect": "X-Accel-Redirect", "x-sendfile": "X-Sendfile"}

_Request = TypeVar("_Request", bound=HttpRequest)
_P = ParamSpec("_P")


def signed_in(
    view: Callable[Concatenate[_Request, _P], HttpResponseBase],
) -> Callable[Concatenate[_Request, _P], HttpResponseBase]:
    """``login_required``, except that htmx and script calls of a signed-out user get a 403.

    Redirected, they would get the login page: htmx would swap it into the centre
    (or delete a row that was never cleared), the old script would parse it as JSON.
    """
    redirecting = login_required(view)

    @wraps(view)
    def wrapper(request: _Request, /, *args: _P.args, **kwargs: _P.kwargs) -> HttpResponseBase:
        if not request.user.is_authenticated and _from_script(request):
            return HttpResponseForbidden(_("Sign in again to see your downloads."))
        return redirecting(request, *args, **kwargs)

    return wrapper


def _from_script(request: HttpRequest) -> bool:
    htmx = getattr(request, "htmx", None)
    if htmx:
        return not htmx.boosted  # a boosted link or form is a page load
    return request.headers.get("x-requested-with") == "XMLHttpRequest"


def _owned_download(request: HttpRequest, download_key: str) -> cache.Record:
    record = cache.get_user_download(request.user, download_key)
    if record is None:
        raise Http404(_("No such download."))
    return record


@never_cache
@signed_in
@require_safe
def download(request: HttpRequest, download_key: str) -> HttpResponseBase:
    """Send the finished file of one of the user's own downloads (``serve_file``)."""
    return serve_file(request, _owned_download(request, download_key))


def serve_file(request: HttpRequest, record: cache.Record) -> HttpResponseBase:
    """Send the file of a finished download, whoever may have it (the caller checks).

    Through the front server (``SENDFILE``), a redirect to the storage's URL, or
    streamed here (``responses.file_response``); 404 without a file.
    """
    if record["state"] != cache.COMPLETE:
        raise Http404(_("This download has no file."))
    storage = files.get_storage()
    if str(settings.SENDFILE).lower() in SENDFILE_HEADERS:
        return _sendfile_response(storage, record)
    if _redirects_to_storage(storage):
        return HttpResponseRedirect(storage.url(record["filepath"]))
    try:
        handle = storage.open(record["filepath"], "rb")
    except FileNotFoundError:
        raise Http404(_("The file of this download is gone.")) from None
    # Streamed in bounded memory under ASGI and WSGI; resumable with Range requests.
    return responses.file_response(request, handle, filename=record["filename"], version=record["key"])


def _redirects_to_storage(storage: Storage) -> bool:
    if settings.REDIRECT_TO_STORAGE_URL is not None:
        return bool(settings.REDIRECT_TO_STORAGE_URL)
    # Storage.path() is only implemented by storages with local files.
    return type(storage).path is Storage.path


def _sendfile_response(storage: Storage, record: cache.Record) -> HttpResponse:
    """Let the front server send the file; the path is percent-encoded for the header."""
    mode = str(settings.SENDFILE).lower()
    if mode == "x-accel-redirect":
        target = posixpath.join(settings.SENDFILE_URL or "/", record["filepath"])
    else:
        target = storage.path(record["filepath"])
    response = HttpResponse(content_type="application/octet-stream")
    response[SENDFILE_HEADERS[mode]] = quote(target)
    response["Content-Disposition"] = content_disposition_header(True, record["filename"])
    return response


@never_cache
@signed_in
@require_GET
def centre(request: HtmxHttpRequest) -> HttpResponse:
    """The centre's connection element, list and indicator, for htmx polls.

    Stalled downloads of the user are failed first (``cache.fail_stalled``).
    ``?idle=<version>`` comes from an idle centre: 204 (nothing to do) while
    nothing runs and the list is still the one that page shows. Otherwise (the
    polling transport) the centre is returned, with status 286 to end the
    polling once nothing is in progress.
    """
    cache.fail_stalled(request.user)
    downloads = cache.get_downloads(request.user)
    busy = any(d["state"] not in cache.FINISHED for d in downloads)
    idle_version = request.GET.get("idle")
    if idle_version and not busy and idle_version == partials.version(downloads):
        return HttpResponse(status=204)
    html = partials.render_refresh(request.user.pk, downloads)
    if busy or idle_version or not request.htmx:
        return HttpResponse(html)
    return HttpResponseStopPolling(html)


@signed_in
@require_POST
def clear(request: HttpRequest, download_key: str) -> HttpResponse:
    """Clear one of the user's own downloads (record and file)."""
    if not cache.clear_download(download_key, user=request.user):
        raise Http404(_("No such download."))
    return HttpResponse("")


@signed_in
@require_POST
def cancel(request: HttpRequest, download_key: str) -> HttpResponse:
    """Cancel one of the user's own pending or running downloads; answer with its row."""
    if not cache.cancel_download(download_key, user=request.user):
        raise Http404(_("No such download in progress."))
    return HttpResponse(partials.render_row(_owned_download(request, download_key)))


@signed_in
@require_POST
def retry(request: HtmxHttpRequest, download_key: str) -> HttpResponse:
    """Start a failed or cancelled download of the user's again; answer with the new row."""
    try:
        new_key = cache.retry_download(download_key, user=request.user)
    except cache.TooManyDownloads as refused:
        if not request.htmx:
            return HttpResponse(refused.message, status=429, content_type="text/plain; charset=utf-8")
        # The row stays as it was (retryable later); the list shows why, above it.
        return reswap(HttpResponse(partials.render_notice(request.user.pk, refused.message)), "none")
    if new_key is None:
        raise Http404(_("No such download to retry."))
    response = HttpResponse(partials.render_row(_owned_download(request, new_key)))
    # An idle centre connects its stream at once.
    return trigger_client_event(response, "async-downloads:started")


# The endpoints of earlier releases, kept for sites still running the old polling script.


@never_cache
@signed_in
@require_GET
def ajax_update(request: HttpRequest) -> JsonResponse:
    cache.fail_stalled(request.user)
    downloads = cache.get_downloads(request.user)
    shown = [partials.localized(record) for record in downloads]
    html = render_to_string(settings.DOWNLOAD_TEMPLATE, {"downloads": shown}, request=request)
    return JsonResponse(
        {
            "html": html,
            "downloads": [_legacy_fields(record) for record in downloads],
            "in_progress": any(not record["complete"] for record in downloads),
        },
        encoder=DjangoJSONEncoder,
    )


LEGACY_FIELDS: Final = ("timestamp", "filepath", "name", "complete", "errors", "percentage", "css_class", "url")


def _legacy_fields(record: cache.Record) -> dict[str, Any]:
    fields = {name: record[name] for name in LEGACY_FIELDS}
    fields["download_key"] = record["key"]
    return fields


@signed_in
@require_POST
def ajax_clear_download(request: HttpRequest) -> HttpResponse:
    """Clear by ``download_key``, or by the ``filepath`` that earlier releases sent.

    Only the download key is taken from a path, and only the user's own
    download is cleared; the path itself is never used.
    """
    key = request.POST.get("download_key") or _key_from_path(request.POST.get("filepath", ""))
    if not cache.clear_download(key, user=request.user):
        raise Http404(_("No such download."))
    return HttpResponse("")


def _key_from_path(path: str) -> str:
    parts = [part for part in path.replace("\\", "/").split("/") if part]
    return parts[-2] if len(parts) >= 2 else ""

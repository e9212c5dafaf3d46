"""The downloads of the database store in Django's admin: a read-only history.

Rows are read on ``ASYNC_DOWNLOADS_DATABASE``, their users on the users' own database
(the foreign key has no constraint, and the two may be different databases), so a page
of the list costs one query for its rows and one for their users. Clearing and cancelling
go through the cache API, so that files are deleted and open pages follow; staff with
``async_downloads.fetch_any_download`` fetch any finished file, and each fetch is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db import router
from django.db.models import Model, Prefetch, QuerySet, prefetch_related_objects
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_safe

from . import cache, dbstore, records, store, views
from .models import Download

if TYPE_CHECKING:
    DownloadModelAdmin = admin.ModelAdmin[Download]
else:
    DownloadModelAdmin = admin.ModelAdmin  # not subscriptable at run time

logger = logging.getLogger(__name__)

FETCH_PERMISSION = "async_downloads.fetch_any_download"
FIELDS = (
    "key", "owner", "name", "filename", "format", "state", "percentage", "errors",
    "created", "updated", "expires", "finished", "task_id", "data",
)


def _users_database() -> str:
    return router.db_for_read(get_user_model())


def _with_users(rows: Sequence[Download]) -> None:
    """Attach each row's user, read on the users' database (None for a user that is gone)."""
    users = get_user_model()._default_manager.using(_users_database())
    prefetch_related_objects(list(rows), Prefetch("user", queryset=users))


def _users_named(term: str) -> QuerySet[Any]:
    users = get_user_model()._default_manager.using(_users_database())
    return users.filter(**{f"{get_user_model().USERNAME_FIELD}__icontains": term}).values("pk")


def _user_of(row: Download) -> AbstractBaseUser | None:
    """The user ``_with_users`` attached; never a query (``row.user`` raises for one that is gone)."""
    user = Download._meta.get_field("user").get_cached_value(row, None)
    return user if isinstance(user, AbstractBaseUser) else None


def _username(row: Download) -> str:
    user = _user_of(row)
    return str(row.user_id) if user is None else user.get_username()


class DownloadChangeList(ChangeList):
    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        self.result_list = list(self.result_list)
        _with_users(self.result_list)


@admin.register(Download)
class DownloadAdmin(DownloadModelAdmin):
    list_display = ("name", "owner", "state", "format", "percentage", "created", "finished")
    list_filter = ("state", "format", "created")
    date_hierarchy = "created"
    ordering = ("-created",)
    search_fields = ("name", "filename")
    actions = ("clear_downloads", "cancel_downloads")
    fields = FIELDS
    readonly_fields = FIELDS

    # --- What is listed ---------------------------------------------------------------

    def get_queryset(self, request: HttpRequest) -> QuerySet[Download]:
        """The store's rows that have not expired (expired ones are never read, then purged)."""
        if not store.in_database():
            return dbstore.rows().none()
        return dbstore.rows().filter(expires__gt=timezone.now())

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return DownloadChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Download], search_term: str
    ) -> tuple[QuerySet[Download], bool]:
        """Names and file names, and usernames when the users are on the rows' database.

        Users by a subquery, not a join: the join would drop the rows of a user that is gone.
        """
        found, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        if search_term.strip() and _users_database() == dbstore.alias():
            found |= queryset.filter(user_id__in=_users_named(search_term.strip()))
        return found, may_have_duplicates

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Download | None:
        row = super().get_object(request, object_id, from_field)
        if row is not None:
            _with_users([row])
        return row

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        if request.method == "GET" and not store.in_database():
            self.message_user(
                request,
                _(
                    'Download records are kept in the cache (ASYNC_DOWNLOADS_STORE is not "database"): '
                    "this list holds only the downloads of the database store."
                ),
                messages.INFO,
            )
        return super().changelist_view(request, extra_context)

    @admin.display(description=_("user"), ordering="user_id")
    def owner(self, row: Download) -> str:
        # Not list_select_related: a join drops the rows of a user that is gone, and cannot
        # reach users kept on another database (the users come from _with_users instead).
        their_downloads = f"{self._url('changelist')}?user__exact={row.user_id}"
        return format_html('<a href="{}">{}</a>', their_downloads, _username(row))

    def _url(self, view: str, *args: Any) -> str:
        return reverse(f"{self.admin_site.name}:{self.opts.app_label}_{self.opts.model_name}_{view}", args=args)

    # --- Read only: no adding, no editing, no deleting but by clearing --------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        # Deleting is clearing (the action), for the whole selection only.
        return obj is None and super().has_delete_permission(request)

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.change_{opts.model_name}")

    def get_actions(self, request: HttpRequest, action_location: Any = None) -> dict[str, Any]:
        # Django 6.1 passes where the actions show (the list or the change form); earlier ones do not.
        if action_location is None:
            found = super().get_actions(request)
        else:
            found = super().get_actions(request, action_location=action_location)  # type: ignore[call-arg]
        found.pop("delete_selected", None)
        return found

    @admin.action(description=_("Clear the selected downloads (records and files)"), permissions=["delete"])
    def clear_downloads(self, request: HttpRequest, queryset: QuerySet[Download]) -> None:
        cleared = sum(cache.clear_download(key) for key in _keys(queryset))
        self.message_user(
            request,
            ngettext("%(count)d download cleared.", "%(count)d downloads cleared.", cleared) % {"count": cleared},
            messages.SUCCESS,
        )

    @admin.action(description=_("Cancel the selected downloads in progress"), permissions=["cancel"])
    def cancel_downloads(self, request: HttpRequest, queryset: QuerySet[Download]) -> None:
        in_progress = queryset.exclude(state__in=records.FINISHED)
        cancelled = sum(cache.cancel_download(key) for key in _keys(in_progress))
        self.message_user(
            request,
            ngettext("%(count)d download cancelled.", "%(count)d downloads cancelled.", cancelled)
            % {"count": cancelled},
            messages.SUCCESS if cancelled else messages.WARNING,
        )

    # --- Fetching a file --------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        fetch = path(
            "<path:object_id>/fetch/",
            self.admin_site.admin_view(require_safe(self.fetch_view)),
            name=f"{self.opts.app_label}_{self.opts.model_name}_fetch",
        )
        return [fetch, *super().get_urls()]

    def get_fields(self, request: HttpRequest, obj: Model | None = None) -> tuple[str, ...]:
        can_fetch = request.user.has_perm(FETCH_PERMISSION)
        return (*FIELDS, "file") if can_fetch and isinstance(obj, Download) else FIELDS

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> tuple[str, ...]:
        return self.get_fields(request, obj)

    @admin.display(description=_("file"))
    def file(self, row: Download) -> str:
        if row.state != records.COMPLETE:
            return self.get_empty_value_display()
        return format_html('<a href="{}">{}</a>', self._url("fetch", row.pk), gettext("Fetch the file"))

    def fetch_view(self, request: HttpRequest, object_id: str) -> HttpResponseBase:
        """The file of any finished download, for staff with ``fetch_any_download`` only; logged."""
        if not request.user.has_perm(FETCH_PERMISSION):
            raise PermissionDenied
        row = self.get_object(request, object_id)
        if row is None:
            raise Http404(gettext("No such download."))
        response = views.serve_file(request, dbstore.to_record(row))
        logger.info(
            "Staff user %s (pk %s) fetched download %s (%s) of user %s (pk %s).",
            request.user.get_username(), request.user.pk, row.pk, row.filename, _username(row), row.user_id,
        )
        return response


def _keys(queryset: QuerySet[Download]) -> list[str]:
    return [str(pk) for pk in queryset.values_list("pk", flat=True)]

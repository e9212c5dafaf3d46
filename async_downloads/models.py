"""The database store's table (``ASYNC_DOWNLOADS_STORE = "database"``): one row per download.

A row holds the whole record as the cache store would (``data``, a JSON object), and
beside it the fields that are queried, filtered and shown in the admin as columns of
their own: the owner, the state, the format, and the times. ``async_downloads.dbstore``
keeps both in step; nothing else writes them.
"""

from __future__ import annotations

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils.translation import gettext_lazy as _

from . import records

STATE_CHOICES = [
    (records.PENDING, _("Pending")),
    (records.RUNNING, _("Running")),
    (records.COMPLETE, _("Complete")),
    (records.ERROR, _("Failed")),
    (records.CANCELLED, _("Cancelled")),
]


class Download(models.Model):
    key = models.UUIDField(_("key"), primary_key=True, editable=False)
    # No database constraint: the rows may live on a database of their own
    # (ASYNC_DOWNLOADS_DATABASE); a deleted user's rows go with the user (receivers.py).
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("user"),
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    name = models.CharField(_("name"), max_length=255, blank=True)
    filename = models.CharField(_("file name"), max_length=255)
    format = models.CharField(_("format"), max_length=16, blank=True)
    state = models.CharField(_("state"), max_length=16, choices=STATE_CHOICES, default=records.PENDING)
    percentage = models.PositiveSmallIntegerField(_("percentage"), default=0)
    errors = models.TextField(_("errors"), blank=True)
    created = models.DateTimeField(_("created"))
    updated = models.DateTimeField(_("updated"))
    expires = models.DateTimeField(_("expires"), db_index=True)
    finished = models.DateTimeField(_("finished"), null=True, blank=True)
    task_id = models.CharField(_("task id"), max_length=255, blank=True)
    data = models.JSONField(_("record"), encoder=DjangoJSONEncoder)

    class Meta:
        verbose_name = _("download")
        verbose_name_plural = _("downloads")
        ordering = ["-created"]
        indexes = [
            # A user's list, newest first: one index scan.
            models.Index(fields=["user", "-created"], name="async_downl_user_created"),
            models.Index(fields=["state", "-created"], name="async_downl_state_created"),
        ]
        permissions = [
            ("fetch_any_download", _("Can fetch the file of another user's download")),
        ]

    def __str__(self) -> str:
        return self.name or self.filename


class DownloadOwner(models.Model):
    """One row per user who started downloads: its lock orders that user's starts (``dbstore``).

    ``starts`` counts them, which is what locking the row writes.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        verbose_name=_("user"),
        primary_key=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    starts = models.PositiveBigIntegerField(_("downloads started"), default=0)

    class Meta:
        verbose_name = _("download owner")
        verbose_name_plural = _("download owners")

    def __str__(self) -> str:
        return str(self.user_id)

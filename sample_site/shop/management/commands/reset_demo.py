"""``manage.py reset_demo``: clear every user's downloads (records, files, open pages)."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db.utils import OperationalError

from async_downloads.cache import clear_download, get_downloads


class Command(BaseCommand):
    help = "Clear the downloads of every user of the sample site."

    def handle(self, *args, **options):
        try:
            users = list(get_user_model().objects.all())
        except OperationalError:
            users = []  # no database yet: nothing to clear
        cleared = sum(clear_download(download["key"]) for user in users for download in get_downloads(user))
        self.stdout.write(f"Cleared {cleared} download(s).")

"""``manage.py reset_demo``: clear every user's downloads (records, files, open pages)."""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db.utils import OperationalError

from async_downloads.cache import clear_download, get_downloads
from devtools.redis_server import answers
from sample_site.shop.demo import masked


class Command(BaseCommand):
    help = "Clear the downloads of every user of the sample site."

    def handle(self, *args, **options):
        redis = masked(settings.REDIS_URL)
        if not answers(settings.REDIS_URL):
            # The demo's private redis-server (started when none answers) keeps nothing after it stops.
            self.stdout.write(f"No Redis answers at {redis}: no downloads to clear.")
            return
        try:
            users = list(get_user_model().objects.all())
        except OperationalError:
            users = []  # no database yet: nothing to clear
        cleared = sum(clear_download(download["key"]) for user in users for download in get_downloads(user))
        self.stdout.write(f"Cleared {cleared} download(s) from {redis}.")

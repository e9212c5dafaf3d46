from django.core.management.base import BaseCommand

from async_downloads.cleanup import cleanup_expired_downloads


class Command(BaseCommand):
    help = "Delete the files of downloads whose records have expired."

    def handle(self, *args, **options):
        removed = cleanup_expired_downloads()
        self.stdout.write(f"Removed {len(removed)} expired download(s).")

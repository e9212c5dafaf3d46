from typing import Any

from django.core.management.base import BaseCommand

from async_downloads.cleanup import cleanup_expired_downloads


class Command(BaseCommand):
    help = "Delete the files of downloads whose records have expired."

    def handle(self, *args: Any, **options: Any) -> None:
        removed = cleanup_expired_downloads()
        self.stdout.write(f"Removed {len(removed)} expired download(s).")

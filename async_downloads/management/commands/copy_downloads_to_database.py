from itertools import islice
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from async_downloads import store

BATCH = 500


class Command(BaseCommand):
    help = (
        "Copy the downloads kept in the cache into the database store (ASYNC_DOWNLOADS_STORE = "
        '"database"): new ones are created, rows older than their cache record are replaced. '
        "Safe to run again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", action="append", default=[], help="Only this user's (a primary key; repeat).")

    def handle(self, *args: Any, **options: Any) -> None:
        users = get_user_model()._default_manager
        if options["user"]:
            found = list(users.filter(pk__in=options["user"]).values_list("pk", flat=True))
            if len(found) != len(set(options["user"])):
                raise CommandError(f"No such user among {options['user']!r}.")
            ids = iter(found)
        else:
            ids = users.order_by("pk").values_list("pk", flat=True).iterator(chunk_size=BATCH)
        created = replaced = 0
        while batch := list(islice(ids, BATCH)):
            counts = store.copy_cache_to_database(batch)
            created, replaced = created + counts[0], replaced + counts[1]
        self.stdout.write(f"Copied {created} download(s) into the database; replaced {replaced} older row(s).")

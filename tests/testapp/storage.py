"""Storages that fail, for the tests of failures."""

import os

from django.core.files.storage import FileSystemStorage


class BrokenStorage(FileSystemStorage):
    """Writes part of a file, then fails, like a disk that fills up."""

    def _save(self, name, content):
        os.makedirs(os.path.dirname(self.path(name)), exist_ok=True)
        with open(self.path(name), "wb") as handle:
            handle.write(b"partial")
        raise OSError(28, "No space left on device")

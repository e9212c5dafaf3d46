"""Removal of the files of downloads whose records have expired."""

from __future__ import annotations

import logging
import posixpath

from django.core.files.storage import Storage

from . import files, store
from .records import is_download_key

logger = logging.getLogger(__name__)


def cleanup_expired_downloads() -> list[str]:
    """Delete the folders of downloads that no longer have a record; return their keys.

    Folders whose name is not a download key are left alone. In the database store,
    the rows of expired downloads are deleted first.
    """
    purged = store.purge_expired()
    if purged:
        logger.info("Deleted the records of %d expired downloads.", purged)
    storage = files.get_storage()
    prefix = files.path_prefix()
    try:
        folders, _ = storage.listdir(prefix)
    except (FileNotFoundError, NotADirectoryError):
        return []
    keys = [name for name in folders if is_download_key(name)]
    live = store.live_keys(keys)
    removed = [key for key in keys if key not in live and _remove(storage, posixpath.join(prefix, key))]
    if removed:
        logger.info("Removed the files of %d expired downloads.", len(removed))
    return removed


def _remove(storage: Storage, folder: str) -> bool:
    """Delete one expired download's folder; a failure is logged and does not stop the others."""
    try:
        files.delete_folder(storage, folder)
    except Exception:
        logger.exception("Could not remove %r; the next cleanup will try again.", folder)
        return False
    return True

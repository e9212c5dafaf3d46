"""Removal of the files of downloads whose records have expired."""

import logging
import posixpath

from . import files, store
from .cache import is_download_key

logger = logging.getLogger(__name__)


def cleanup_expired_downloads():
    """Delete the folders of downloads that no longer have a record; return their keys.

    Folders whose name is not a download key are left alone.
    """
    storage = files.get_storage()
    prefix = files.path_prefix()
    try:
        folders, _ = storage.listdir(prefix)
    except (FileNotFoundError, NotADirectoryError):
        return []
    keys = [name for name in folders if is_download_key(name)]
    live = set(store.get_cache().get_many(keys))
    expired = [key for key in keys if key not in live]
    for key in expired:
        files.delete_folder(storage, posixpath.join(prefix, key))
    if expired:
        logger.info("Removed the files of %d expired downloads.", len(expired))
    return expired

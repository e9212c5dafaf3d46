"""File names, storage and writing of download files."""

from __future__ import annotations

import os
import posixpath
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator
from typing import IO, Any

from django.core.files import File
from django.core.files.storage import Storage, storages

from . import writers
from .conf import settings

MAX_FILENAME_BYTES = 200
FALLBACK_FILENAME = "download"
# Names that Windows refuses whatever the extension.
WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"{p}{n}" for p in ("COM", "LPT") for n in range(1, 10)}


def get_storage() -> Storage:
    return storages[settings.STORAGE]


def safe_filename(name: object) -> str:
    """A file name that is safe to store and to send in a header.

    Path separators, control and formatting characters (NUL, newlines,
    right-to-left marks, zero-width characters) are removed, leading dots
    dropped, and the name shortened to 200 UTF-8 bytes, keeping its extension.
    """
    name = unicodedata.normalize("NFC", str(name))
    name = "".join(_safe_char(c) for c in name)
    name = " ".join(name.split()).strip(" .")
    stem, ext = os.path.splitext(name)
    if stem.upper() in WINDOWS_RESERVED:
        stem = f"_{stem}"
    name = _shorten(stem, ext)
    return name or FALLBACK_FILENAME


def _safe_char(char: str) -> str:
    if char in "/\\":
        return "_"
    if unicodedata.category(char) in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}:
        return "" if char not in "\t\n\r" else " "
    if char in '<>:"|?*':
        return "_"
    return char


def _shorten(stem: str, ext: str) -> str:
    if len(ext.encode()) > 20:
        stem, ext = stem + ext, ""
    budget = MAX_FILENAME_BYTES - len(ext.encode())
    stem = stem.encode()[:budget].decode(errors="ignore").rstrip(" .")
    return f"{stem}{ext}" if stem else ""


def path_prefix() -> str:
    """``ASYNC_DOWNLOADS_PATH_PREFIX`` as a relative folder ("" is the storage's root)."""
    return str(settings.PATH_PREFIX or "").strip("/")


def download_path(download_key: str, filename: str) -> str:
    return posixpath.join(path_prefix(), download_key, filename)


def spooled() -> IO[bytes]:
    """A temporary file kept in memory up to ``IN_MEMORY_MAX_SIZE_BYTES``, then on disk (in ``TEMP_DIR``)."""
    return tempfile.SpooledTemporaryFile(max_size=settings.IN_MEMORY_MAX_SIZE_BYTES, dir=settings.TEMP_DIR)


def write_rows(
    path: str, rows: Iterable[Iterable[Any]], encoding: str, format: str = writers.CSV, escape_formulas: bool = False
) -> str:
    """Write ``rows`` in ``format`` (see ``writers``) to storage through a spooled temporary file."""
    with spooled() as raw:
        writers.write_rows(
            raw, rows, format, encoding=encoding, escape_formulas=escape_formulas, tmpdir=settings.TEMP_DIR
        )
        return _save(path, raw)


def write_zip(path: str, members: Iterable[Any], encoding: str, escape_formulas: bool = False) -> str:
    """Write a zip of ``members`` (see ``writers.Member``) to storage through a spooled temporary file.

    Member names are made safe as file names are, folder by folder ("a/b.csv" keeps
    its folder; "..", empty and leading parts are dropped), and a repeated name gets
    " (2)", " (3)"… before its extension.
    """
    with spooled() as raw:
        writers.write_zip(
            raw, _named(members), spool=spooled, encoding=encoding, escape_formulas=escape_formulas,
            tmpdir=settings.TEMP_DIR,
        )
        return _save(path, raw)


def _named(members: Iterable[Any]) -> Iterator[writers.Member]:
    seen: set[str] = set()
    for spec in members:
        member = writers.as_member(spec)
        yield member._replace(name=_unique(member_name(member.name), seen))


def member_name(name: object) -> str:
    """A safe name inside a zip: each folder and the file name made safe, no "..", no leading "/"."""
    parts = str(name).replace("\\", "/").split("/")
    return "/".join(safe_filename(part) for part in parts if part.strip(" .")) or FALLBACK_FILENAME


def _unique(name: str, seen: set[str]) -> str:
    stem, ext = os.path.splitext(name)
    candidate, number = name, 1
    while candidate.lower() in seen:
        number += 1
        candidate = f"{stem} ({number}){ext}"
    seen.add(candidate.lower())
    return candidate


def _save(path: str, raw: IO[bytes]) -> str:
    raw.seek(0)
    return get_storage().save(path, File(raw, name=path))


def write_file(path: str, file: IO[Any]) -> str:
    if _seekable(file):
        file.seek(0)
    return get_storage().save(path, File(file, name=path))


def _seekable(file: object) -> bool:
    seekable = getattr(file, "seekable", None)
    return seekable() if seekable is not None else hasattr(file, "seek")


def delete_download_files(path: str) -> None:
    """Delete a download's file and its folder; a missing one is not an error."""
    storage = get_storage()
    if path:
        storage.delete(path)
        folder = posixpath.dirname(path)
        if _is_download_folder(folder):
            delete_folder(storage, folder)


def _is_download_folder(folder: str) -> bool:
    return posixpath.dirname(folder) == path_prefix()


def delete_folder(storage: Storage, folder: str) -> None:
    """Delete ``folder`` and everything under it, as far as the storage can list it."""
    try:
        dirs, files = storage.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in files:
        storage.delete(posixpath.join(folder, name))
    for name in dirs:
        delete_folder(storage, posixpath.join(folder, name))
    try:
        storage.delete(folder)
    except OSError:
        pass

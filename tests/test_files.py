"""Download files: safe names, where they go, CSV writing through a spooled file, and failures."""

import io
import logging
import os
import tempfile
import unicodedata

import pytest

from async_downloads import cache, files

pytestmark = pytest.mark.django_db

SAVE_FAILED = "The file could not be saved. Please try again later."


def stored(media, record):
    return (media / record["filepath"]).read_bytes()


@pytest.fixture
def start(alice, media):
    """``start(filename)`` begins a download of alice's and returns its key."""
    return lambda filename="report.csv", **kwargs: cache.init_download(alice, filename, **kwargs)[1]


class TestSafeFilename:
    @pytest.mark.parametrize(
        "given, safe",
        [
            ("report.csv", "report.csv"),
            ("Ünïcødé € report.csv", "Ünïcødé € report.csv"),
            ("../../x", "_._x"),
            ("a/b\\c.csv", "a_b_c.csv"),
            ("/etc/passwd", "_etc_passwd"),
            ("nul\x00byte.csv", "nulbyte.csv"),
            ("line\nbreak\r\n.csv", "line break.csv"),
            ("bell\x07\x1b[31m.csv", "bell[31m.csv"),
            ("invoice\u202ecod.exe", "invoicecod.exe"),
            ("zero\u200bwidth.csv", "zerowidth.csv"),
            ('what?<>:"|*.csv', "what_______.csv"),
            ("CON", "_CON"),
            ("con.txt", "_con.txt"),
            ("LPT1.csv", "_LPT1.csv"),
            ("  .hidden.csv. ", "hidden.csv"),
            ("", "download"),
            (".", "download"),
            ("..", "download"),
            ("\u202e", "download"),
        ],
    )
    def test_examples(self, given, safe):
        assert files.safe_filename(given) == safe

    def test_long_names_are_cut_to_200_bytes_keeping_the_extension(self):
        assert files.safe_filename("a" * 300 + ".csv") == "a" * 196 + ".csv"
        cut = files.safe_filename("é" * 300 + ".csv")
        assert cut.endswith(".csv") and len(cut.encode()) <= 200
        assert cut == unicodedata.normalize("NFC", cut) and "\ufffd" not in cut

    def test_a_very_long_extension_is_not_kept_whole(self):
        cut = files.safe_filename("report." + "x" * 300)
        assert cut.startswith("report.") and len(cut.encode()) <= 200

    def test_not_a_string(self):
        assert files.safe_filename(2024) == "2024"


HOSTILE_NAMES = [
    "../../x",
    "../../../../etc/passwd",
    "a\x00b.csv",
    "".join(chr(c) for c in range(32)) + ".csv",
    "x" * 300,
    "é" * 300 + ".csv",
    "evil\u202etxt.exe",
    "",
    ".",
    "..",
    "CON",
    "dir/sub/name.csv",
    "C:\\Windows\\system32",
    "/absolute.csv",
]


class TestPaths:
    def test_path_is_prefix_key_and_filename(self, start, media):
        key = start("report.csv")
        record = cache.get_download(key)
        assert record["filepath"] == f"downloads/{key}/report.csv"
        cache.save_download(key, [["x"]])
        assert (media / "downloads" / key / "report.csv").read_bytes() == b"x\n"

    @pytest.mark.parametrize("prefix, folder", [("exports/2025", "exports/2025"), ("/exports/", "exports"), ("", "")])
    def test_path_prefix_setting(self, settings, start, media, prefix, folder):
        settings.ASYNC_DOWNLOADS_PATH_PREFIX = prefix
        key = start("report.csv")
        cache.save_download(key, [["x"]])
        assert cache.get_download(key)["filepath"] == os.path.join(folder, key, "report.csv")
        assert (media / folder / key / "report.csv").exists()

    @pytest.mark.parametrize("name", HOSTILE_NAMES, ids=repr)
    def test_hostile_filenames_become_one_safe_segment(self, start, media, name):
        key = start(name)
        record = cache.get_download(key)
        filename = record["filename"]
        assert filename not in {"", ".", ".."}
        assert not any(c in filename for c in "/\\\x00\u202e")
        assert all(unicodedata.category(c)[0] != "C" for c in filename)
        assert len(filename.encode()) <= 200
        assert record["filepath"] == f"downloads/{key}/{filename}"
        assert record["name"] == filename

        cache.save_download(key, [["x"]])
        record = cache.get_download(key)
        assert record["state"] == "complete"
        folder = (media / "downloads" / key).resolve()
        assert [p.name for p in folder.iterdir()] == [filename]
        assert (media / record["filepath"]).resolve().parent == folder

    def test_the_name_shown_is_kept_as_given(self, start):
        key = start("../report.csv", name="Orders <2025>")
        assert cache.get_download(key)["name"] == "Orders <2025>"


class TestRows:
    ROWS = [
        ["id", "name", "note"],
        [1, "Smith, John", 'He said "hi"'],
        [2, "two\nlines", "Ünïcødé €"],
        [3, "", None],
    ]
    CSV = 'id,name,note\n1,"Smith, John","He said ""hi"""\n2,"two\nlines",Ünïcødé €\n3,,\n'

    def test_rows_become_csv(self, start, media):
        key = start()
        cache.save_download(key, self.ROWS)
        record = cache.get_download(key)
        assert stored(media, record) == self.CSV.encode("utf-8")
        assert (record["state"], record["complete"], record["percentage"]) == ("complete", True, 100)
        assert record["url"] == f"/async_downloads/download/{key}/"

    def test_a_generator_is_streamed(self, start, media):
        key = start()
        cache.save_download(key, ([n, n * n] for n in range(3)))
        assert stored(media, cache.get_download(key)) == b"0,0\n1,1\n2,4\n"

    def test_utf_8_sig_starts_with_a_byte_order_mark(self, start, media):
        key = start()
        cache.save_download(key, self.ROWS, encoding="utf-8-sig")
        assert stored(media, cache.get_download(key)) == b"\xef\xbb\xbf" + self.CSV.encode("utf-8")

    def test_latin_1(self, start, media):
        key = start()
        cache.save_download(key, [["café", "naïve"]], encoding="latin-1")
        assert stored(media, cache.get_download(key)) == "café,naïve\n".encode("latin-1")

    def test_a_character_the_encoding_lacks_is_an_error(self, start, media):
        key = start()
        cache.save_download(key, [["€"]], encoding="latin-1")
        record = cache.get_download(key)
        assert (record["state"], record["errors"]) == ("error", SAVE_FAILED)
        assert not (media / "downloads" / key).exists()

    def test_no_rows_is_an_empty_file(self, start, media):
        key = start()
        cache.save_download(key, [])
        assert stored(media, cache.get_download(key)) == b""


class SpySpool(tempfile.SpooledTemporaryFile):
    """A real spooled temporary file that remembers whether it moved to disk."""

    made = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.went_to_disk = False
        self.made.append(self)

    def rollover(self):
        self.went_to_disk = self.went_to_disk or not self._rolled
        super().rollover()


class TestSpooling:
    @pytest.fixture
    def spools(self, monkeypatch):
        SpySpool.made = []
        monkeypatch.setattr(files.tempfile, "SpooledTemporaryFile", SpySpool)
        return SpySpool.made

    ROWS = [[n, "x" * 50] for n in range(1000)]
    CSV = b"".join(b"%d,%s\n" % (n, b"x" * 50) for n in range(1000))

    def test_small_files_stay_in_memory(self, start, media, spools):
        key = start()
        cache.save_download(key, self.ROWS)
        assert [spool._max_size for spool in spools] == [5_000_000]
        assert not spools[0].went_to_disk
        assert stored(media, cache.get_download(key)) == self.CSV

    def test_a_small_limit_rolls_over_to_disk(self, settings, start, media, spools):
        settings.ASYNC_DOWNLOADS_IN_MEMORY_MAX_SIZE_BYTES = 100
        key = start()
        cache.save_download(key, self.ROWS)
        assert [spool._max_size for spool in spools] == [100]
        assert spools[0].went_to_disk
        assert stored(media, cache.get_download(key)) == self.CSV

    def test_the_originals_float_default_works(self, settings, start, media, spools):
        settings.ASYNC_DOWNLOADS_IN_MEMORY_MAX_SIZE_BYTES = 5 * 1e2
        key = start()
        cache.save_download(key, self.ROWS)
        assert spools[0].went_to_disk
        assert stored(media, cache.get_download(key)) == self.CSV


class NonSeekableStream(io.RawIOBase):
    """Bytes that can be read once, like a pipe or an HTTP response."""

    def __init__(self, data):
        self.data = io.BytesIO(data)

    def readable(self):
        return True

    def readinto(self, buffer):
        chunk = self.data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


class TestFiles:
    DATA = bytes(range(256)) * 40

    def test_bytes_io_is_stored_as_is(self, start, media):
        key = start("blob.bin")
        cache.save_download(key, file=io.BytesIO(self.DATA))
        assert stored(media, cache.get_download(key)) == self.DATA

    def test_bytes_io_positioned_at_its_end(self, start, media):
        buffer = io.BytesIO()
        buffer.write(self.DATA)  # a task that wrote a zip and forgot to rewind
        key = start("blob.bin")
        cache.save_download(key, file=buffer)
        assert stored(media, cache.get_download(key)) == self.DATA

    def test_a_real_file(self, start, media, tmp_path):
        source = tmp_path / "source.bin"
        source.write_bytes(self.DATA)
        key = start("blob.bin")
        with open(source, "rb") as handle:
            cache.save_download(key, file=handle)
        assert stored(media, cache.get_download(key)) == self.DATA

    def test_a_stream_that_cannot_seek(self, start, media):
        key = start("blob.bin")
        cache.save_download(key, file=io.BufferedReader(NonSeekableStream(self.DATA)))
        record = cache.get_download(key)
        assert record["state"] == "complete"
        assert stored(media, record) == self.DATA

    def test_an_existing_file_is_not_overwritten(self, start, media):
        key = start("blob.bin")
        (media / "downloads" / key).mkdir(parents=True)
        (media / "downloads" / key / "blob.bin").write_bytes(b"someone else's")
        cache.save_download(key, file=io.BytesIO(self.DATA))
        record = cache.get_download(key)
        assert record["filepath"] != f"downloads/{key}/blob.bin"
        assert stored(media, record) == self.DATA
        assert (media / "downloads" / key / "blob.bin").read_bytes() == b"someone else's"


class TestFailures:
    """A failure is an error with a message for the end user; the details go to the log."""

    @pytest.fixture
    def broken_storage(self, settings, media):
        settings.STORAGES = {
            **settings.STORAGES,
            "broken": {"BACKEND": "tests.testapp.storage.BrokenStorage", "OPTIONS": {"location": str(media)}},
        }
        settings.ASYNC_DOWNLOADS_STORAGE = "broken"

    def assert_failed_cleanly(self, key, media):
        record = cache.get_download(key)
        assert record["state"] == "error"
        assert record["errors"] == SAVE_FAILED
        assert record["url"] == ""
        assert record["complete"] is True  # the legacy "finished" flag; state says how it finished
        assert not (media / "downloads" / key).exists()

    def test_storage_that_fails(self, start, media, broken_storage, caplog):
        key = start()
        cache.save_download(key, [["x"]])
        self.assert_failed_cleanly(key, media)
        assert "No space left on device" not in cache.get_download(key)["errors"]
        failure = next(r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info)
        assert key in failure.getMessage()
        assert "No space left on device" in caplog.text

    def test_storage_that_fails_with_a_file(self, start, media, broken_storage):
        key = start()
        cache.save_download(key, file=io.BytesIO(b"data"))
        self.assert_failed_cleanly(key, media)

    def test_rows_that_fail_midway(self, settings, start, media, caplog):
        settings.ASYNC_DOWNLOADS_IN_MEMORY_MAX_SIZE_BYTES = 10  # part of the file is already on disk

        def rows():
            for n in range(500):
                yield [n]
            raise RuntimeError("connection to db:5432 lost, password=hunter2")

        key = start()
        cache.set_percentage(key, 60)
        cache.save_download(key, rows())
        self.assert_failed_cleanly(key, media)
        assert "hunter2" not in cache.get_download(key)["errors"]
        assert "connection to db:5432 lost" in caplog.text

    def test_neither_rows_nor_file(self, start, media, caplog):
        key = start()
        cache.save_download(key)
        self.assert_failed_cleanly(key, media)
        assert "needs an iterable of rows or a file" in caplog.text

    def test_unknown_download_writes_nothing(self, media, caplog):
        key = "00000000-0000-4000-8000-000000000000"
        cache.save_download(key, [["x"]])
        assert not (media / "downloads").exists()
        assert "is unknown, expired or lost; nothing is saved" in caplog.text

    def test_saving_twice_keeps_the_first_file(self, start, media):
        key = start()
        cache.save_download(key, [["first"]])
        cache.save_download(key, [["second"]])
        assert stored(media, cache.get_download(key)) == b"first\n"
        assert len(list((media / "downloads" / key).iterdir())) == 1

"""Settings of the processes that tests/test_faults.py starts: the test settings, and a full disk when asked."""

import os

from tests.settings import *  # noqa: F403

if os.environ.get("ASYNC_DOWNLOADS_TEST_FULL_DISK") == "1":
    STORAGES = {  # noqa: F405
        **STORAGES,  # noqa: F405
        "default": {**STORAGES["default"], "BACKEND": "tests.testapp.storage.BrokenStorage"},  # noqa: F405
    }

"""The benchmarks' settings: bench/base_settings.py, with the differences of ``ADBENCH_SCENARIO``."""

import os

from bench.base_settings import *  # noqa: F403
from bench.base_settings import SCENARIO

if SCENARIO == "live":
    # 2,000 logins without 2,000 database rows.
    SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
elif SCENARIO == "ws":
    # ADBENCH_WS=1: this process publishes through the channel layer instead of django-eventstream.
    ASYNC_DOWNLOADS_WS_MODE = os.environ.get("ADBENCH_WS") == "1"

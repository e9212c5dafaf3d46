"""The benchmarks' settings: bench/base_settings.py, with the differences of ``ADBENCH_SCENARIO``."""

import json
import os

from bench.base_settings import *  # noqa: F403
from bench.base_settings import MIDDLEWARE, SCENARIO

if SCENARIO == "live":
    # 2,000 logins without 2,000 database rows.
    SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
    if "ADBENCH_STREAM_OPENINGS" in os.environ:  # JSON: a number, or null for no limit
        ASYNC_DOWNLOADS_STREAM_OPENINGS = json.loads(os.environ["ADBENCH_STREAM_OPENINGS"])
elif SCENARIO == "ws":
    # ADBENCH_WS=1: this process publishes through the channel layer instead of django-eventstream.
    ASYNC_DOWNLOADS_WS_MODE = os.environ.get("ADBENCH_WS") == "1"
elif SCENARIO == "grip":
    # GRIP mode behind Pushpin (bench/pushpin.py): the proxies come as JSON in ADBENCH_GRIP_PROXIES,
    # [{"control_uri": ..., "key": ...}]; events go to them, not through Redis pub/sub.
    SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
    MIDDLEWARE = ["django_grip.GripMiddleware", *MIDDLEWARE]
    GRIP_PROXIES = json.loads(os.environ.get("ADBENCH_GRIP_PROXIES", "[]"))
    del EVENTSTREAM_REDIS  # noqa: F821

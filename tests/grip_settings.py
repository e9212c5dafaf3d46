"""Settings of the processes behind a real Pushpin (tests/test_pushpin.py): the test settings in GRIP mode.

``ASYNC_DOWNLOADS_TEST_GRIP`` holds the proxies as JSON, ``[{"control_uri": ..., "key": ...}]``.
No ``EVENTSTREAM_REDIS``: in GRIP mode events go to the proxies, not through Redis pub/sub.
"""

import json
import os

from tests.settings import *  # noqa: F403
from tests.settings import CELERY_TASK_DEFAULT_QUEUE, MIDDLEWARE

# slow_answers: a test can make an answer reach Pushpin later (tests/test_pushpin.py).
MIDDLEWARE = ["django_grip.GripMiddleware", *MIDDLEWARE, "tests.testapp.middleware.slow_answers"]
GRIP_PROXIES = json.loads(os.environ.get("ASYNC_DOWNLOADS_TEST_GRIP", "[]"))
del EVENTSTREAM_REDIS  # noqa: F821
# Tasks started by these web processes go to the worker that runs with these settings.
CELERY_TASK_DEFAULT_QUEUE += "-grip"

"""The benchmarks' WSGI application (gunicorn's sync workers behind Pushpin, bench/pushpin.py)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

application = get_wsgi_application()

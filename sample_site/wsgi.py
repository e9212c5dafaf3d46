"""WSGI entry point: gunicorn's sync workers behind Pushpin (``just demo-pushpin``), where the event
stream is held by Pushpin and every request, a stream's included, is answered at once."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sample_site.settings")

application = get_wsgi_application()

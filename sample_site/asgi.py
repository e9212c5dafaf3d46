"""ASGI entry point: the event stream needs an ASGI server (uvicorn here)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sample_site.settings")

application = get_asgi_application()

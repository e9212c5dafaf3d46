"""The Celery app: ``celery -A sample_site worker``."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sample_site.settings")

app = Celery("sample_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

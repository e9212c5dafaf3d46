# Make the tests' Celery app the current one in every process (as a Django project does).
from tests.celery_app import app as celery_app

__all__ = ["celery_app"]

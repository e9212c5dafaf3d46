"""The sample site: a Django project that uses async_downloads as the README tells users to."""

from .celery import app as celery_app

__all__ = ["celery_app"]

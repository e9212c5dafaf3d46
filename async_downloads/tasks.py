from celery import shared_task

from . import cleanup


@shared_task(name="async_downloads.tasks.cleanup_expired_downloads")
def cleanup_expired_downloads() -> list[str]:
    """Delete the files of downloads whose records have expired (run it periodically)."""
    return cleanup.cleanup_expired_downloads()

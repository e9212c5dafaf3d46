from django.apps import AppConfig


class AsyncDownloadsConfig(AppConfig):
    name = "async_downloads"
    verbose_name = "Async downloads"

    def ready(self):
        from . import checks  # noqa: F401  (registers the system checks)
        from . import jobs

        jobs.connect_signals()

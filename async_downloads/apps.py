from django.apps import AppConfig


class AsyncDownloadsConfig(AppConfig):
    name = "async_downloads"
    verbose_name = "Async downloads"

    def ready(self) -> None:
        from . import checks, receivers  # noqa: F401  (importing checks registers the system checks)

        receivers.connect()

from django.apps import AppConfig


class Bootstrap5Config(AppConfig):
    """The download centre as a Bootstrap 5 navbar dropdown. List it before "async_downloads"."""

    name = "templates_showcase.bootstrap5"
    label = "async_downloads_bootstrap5"
    verbose_name = "Async downloads: Bootstrap 5 templates"

from django.apps import AppConfig


class SemanticConfig(AppConfig):
    """The download centre in plain semantic HTML. List it before "async_downloads"."""

    name = "templates_showcase.semantic"
    label = "async_downloads_semantic"
    verbose_name = "Async downloads: semantic HTML templates"

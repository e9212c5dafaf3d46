from django.apps import AppConfig


class ToastConfig(AppConfig):
    """Downloads as toasts in the bottom-right corner. List it before "async_downloads"."""

    name = "templates_showcase.toast"
    label = "async_downloads_toast"
    verbose_name = "Async downloads: toast templates"

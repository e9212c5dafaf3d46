"""Mail settings for the tests that send to a real SMTP server (no Django import: tests/settings.py uses it)."""

from typing import Any


def smtp_settings(host: str, port: int | str) -> dict[str, Any]:
    """Settings that send mail to the SMTP server at ``host:port``: ``MAILERS`` from Django 6.1,
    which deprecates the ``EMAIL_*`` settings, and those before."""
    import django

    backend = "django.core.mail.backends.smtp.EmailBackend"
    if django.VERSION >= (6, 1):
        return {"MAILERS": {"default": {"BACKEND": backend, "OPTIONS": {"host": host, "port": int(port)}}}}
    return {"EMAIL_BACKEND": backend, "EMAIL_HOST": host, "EMAIL_PORT": int(port)}

"""The demo's users, printed when the demo starts (with the Redis it uses, by ``masked``)."""

from urllib.parse import urlsplit, urlunsplit

DEMO_USERS = [
    # (username, password, is_superuser)
    ("alice", "wonderland", True),
    ("bob", "builder", False),
]


def masked(url):
    """``url`` without its password."""
    parts = urlsplit(url)
    if parts.password:
        host = f"{parts.username or ''}:**@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=host))
    return url

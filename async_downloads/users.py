"""Turn the ``user`` argument of the cache API into a primary key."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth import get_user_model


def user_pk(user: Any) -> Any:
    """Primary key of ``user``: a user object, a primary key, or a username.

    Integers (and UUIDs) are primary keys; strings are usernames, looked up by
    the user model's ``USERNAME_FIELD``.
    """
    if getattr(user, "is_anonymous", False):
        raise ValueError("Downloads belong to a signed-in user, not to AnonymousUser.")
    if hasattr(user, "pk"):
        return user.pk
    if isinstance(user, int) and not isinstance(user, bool):
        return user
    if isinstance(user, str):
        return _pk_for_username(user)
    if isinstance(user, uuid.UUID):
        return user
    raise ValueError(
        f"Unrecognised user {user!r}: pass a user object, a primary key or a username."
    )


def _pk_for_username(username: str) -> Any:
    model = get_user_model()
    try:
        return model._default_manager.get_by_natural_key(username).pk
    except model.DoesNotExist:
        raise ValueError(f"No user with username {username!r}.") from None

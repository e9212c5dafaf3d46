"""The ``user`` argument of the cache API: a user, a primary key or a username; always a pk inside."""

import uuid

import pytest
from django.contrib.auth.models import AnonymousUser

from async_downloads import cache
from async_downloads.users import user_pk

pytestmark = pytest.mark.django_db


def test_user_object(alice):
    assert user_pk(alice) == alice.pk


def test_primary_key(alice):
    assert user_pk(alice.pk) == alice.pk


def test_uuid_primary_key():
    pk = uuid.uuid4()
    assert user_pk(pk) == pk


def test_username(alice):
    assert user_pk("alice") == alice.pk


@pytest.mark.parametrize("username", ["bob+test@example.com", "carol@example.org", "dave+x"])
def test_usernames_with_at_and_plus(django_user_model, username):
    user = django_user_model.objects.create_user(username)
    assert user_pk(username) == user.pk


def test_a_numeric_string_is_a_username_not_a_pk(django_user_model, alice):
    numbered = django_user_model.objects.create_user(str(alice.pk + 100))
    assert user_pk(str(alice.pk + 100)) == numbered.pk


def test_unknown_username_is_a_value_error(alice):
    with pytest.raises(ValueError, match="No user with username 'nobody'"):
        user_pk("nobody")


def test_anonymous_user_is_a_value_error():
    with pytest.raises(ValueError, match="AnonymousUser"):
        user_pk(AnonymousUser())


@pytest.mark.parametrize("value", [None, True, 1.5, ["alice"]])
def test_anything_else_is_a_value_error(value):
    with pytest.raises(ValueError, match="Unrecognised user"):
        user_pk(value)


def test_every_form_names_the_same_collection(bob):
    """A download started with a username shows up for the user object, and so on."""
    keys = {cache.get_collection_key(form) for form in (bob, bob.pk, "bob+test@example.com")}
    assert keys == {f"async_downloads/{bob.pk}"}
    _, key = cache.init_download("bob+test@example.com", "a.csv")
    assert [d["key"] for d in cache.get_downloads(bob)] == [key]
    assert [d["key"] for d in cache.get_downloads(bob.pk)] == [key]

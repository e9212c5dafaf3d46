"""The record stores that the cache-API tests run on: one suite, parametrised.

A test (or module) that uses the ``record_store`` fixture runs once per store:
``cache`` (the Django cache on this run's Redis, the default), ``sqlite`` (the
database store on the test database) and ``postgres`` (the database store on a
real PostgreSQL; skipped, saying why, where none answers or can be started).
``@pytest.mark.stores("cache")`` narrows a test to the stores it is about.
Mark such modules ``django_db(databases=stores.DATABASES)``.
"""

from django.conf import settings

STORES = ("cache", "sqlite", "postgres")
#: The database aliases the parametrised tests may use.
DATABASES = ["default", "postgres"] if "postgres" in settings.DATABASES else ["default"]
#: The alias of each database store.
ALIASES = {"sqlite": "default", "postgres": "postgres"}


def env():
    """Environment for a child process (``tests.processes.child_env(**stores.env())``) that
    keeps its records where this test's store does."""
    if getattr(settings, "ASYNC_DOWNLOADS_STORE", "cache") == "database":
        return {"ASYNC_DOWNLOADS_TEST_STORE": settings.ASYNC_DOWNLOADS_DATABASE}
    return {}


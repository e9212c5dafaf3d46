"""`check --deploy` on the Redis behind the cache store (W007, W008), against real redis-server processes.

Each configuration runs in a ``redis-server`` of this module's own, started once
per module on a free port; the shared Redis of the suite is never configured.
"""

import io
import shutil
import socket
import subprocess
import time

import pytest
import redis
from django.core.management import call_command

from async_downloads import checks
from devtools import redis_server

NO_PERSISTENCE = ("--save", "", "--appendonly", "no")
AOF = ("--save", "", "--appendonly", "yes")
RDB = ("--save", "900 1", "--appendonly", "no")
ALIAS = "deploy-check"
DJANGO_REDIS = "django_redis.cache.RedisCache"


@pytest.fixture(scope="module")
def redis_with(tmp_path_factory):
    """``redis_with(*args)``: the URL of a redis-server started with ``args`` (one per distinct ``args``)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (Debian/Ubuntu: apt-get install redis-server).")
    started = {}

    def start(*args):
        if args not in started:
            workdir = tmp_path_factory.mktemp("redis")
            port = redis_server.free_port()
            process = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), *args],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            url = f"redis://127.0.0.1:{port}/0"
            started[args] = (url, process)
            deadline = time.monotonic() + 10
            while not _up(url):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server {' '.join(args)} did not start on port {port}.")
                time.sleep(0.05)
        return started[args][0]

    yield start
    for _url, process in started.values():
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _up(url):
    """Whether the server at ``url`` answers (a password it asks for counts as an answer)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.AuthenticationError:
        return True
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    finally:
        client.close()


def use_cache(settings, location, backend="django.core.cache.backends.redis.RedisCache", **extra):
    """Keep the records (cache store) in a cache of this test's own at ``location``."""
    settings.CACHES = {
        **settings.CACHES,
        ALIAS: {"BACKEND": backend, "LOCATION": location, "KEY_PREFIX": f"adtest-{settings.RUN_ID}-deploy", **extra},
    }
    settings.ASYNC_DOWNLOADS_CACHE_NAME = ALIAS
    settings.ASYNC_DOWNLOADS_STORE = "cache"


def found():
    return checks.check_cache_redis()


def ids():
    return [message.id for message in found()]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (NO_PERSISTENCE, ["async_downloads.W007"]),
        (AOF, []),
        (RDB, []),
        (("--save", "900 1", "--appendonly", "yes"), []),
        ((*RDB, "--maxmemory-policy", "volatile-lru"), ["async_downloads.W008"]),
        ((*AOF, "--maxmemory-policy", "volatile-ttl"), ["async_downloads.W008"]),
        ((*AOF, "--maxmemory-policy", "allkeys-lru", "--maxmemory", "100mb"), ["async_downloads.W008"]),
        ((*AOF, "--maxmemory-policy", "noeviction", "--maxmemory", "100mb"), []),
        ((*NO_PERSISTENCE, "--maxmemory-policy", "allkeys-random"), ["async_downloads.W007", "async_downloads.W008"]),
    ],
    ids=["none", "aof", "rdb", "rdb+aof", "volatile-lru", "volatile-ttl", "allkeys-lru", "noeviction", "both"],
)
def test_warns_for_each_way_the_records_can_be_lost(settings, redis_with, args, expected):
    use_cache(settings, redis_with(*args))
    assert ids() == expected


def test_w007_names_the_server_and_the_remedies(settings, redis_with):
    url = redis_with(*NO_PERSISTENCE)
    use_cache(settings, url)
    [warning] = found()
    assert warning.id == "async_downloads.W007"
    assert f"({url})" in warning.msg and repr(ALIAS) in warning.msg
    assert "restart" in warning.msg and "every user's downloads" in warning.msg
    assert 'ASYNC_DOWNLOADS_STORE = "database"' in warning.hint
    assert "appendonly yes" in warning.hint and 'save "900 1"' in warning.hint


def test_w008_names_the_policy_and_the_limit(settings, redis_with):
    use_cache(settings, redis_with(*AOF, "--maxmemory-policy", "volatile-lru"))
    [warning] = found()
    assert "maxmemory-policy 'volatile-lru'" in warning.msg
    assert "keys with a TTL first" in warning.msg and "(not set yet)" in warning.msg
    assert "noeviction" in warning.hint and 'ASYNC_DOWNLOADS_STORE = "database"' in warning.hint

    use_cache(settings, redis_with(*AOF, "--maxmemory-policy", "allkeys-lru", "--maxmemory", "100mb"))
    [warning] = found()
    assert "maxmemory-policy 'allkeys-lru'" in warning.msg
    assert "evicts any key" in warning.msg and f"({100 * 1024 * 1024} bytes)" in warning.msg


class TestCredentials:
    ARGS = (*NO_PERSISTENCE, "--requirepass", "s3cret-pw")

    def test_a_password_in_the_url_is_used_and_not_shown(self, settings, redis_with):
        url = redis_with(*self.ARGS)
        use_cache(settings, url.replace("redis://", "redis://:s3cret-pw@") + "?socket_keepalive=true")
        [warning] = found()
        assert warning.id == "async_downloads.W007"
        assert "s3cret" not in warning.msg + warning.hint
        assert f"({url})" in warning.msg

    def test_djangos_options_are_used(self, settings, redis_with):
        use_cache(settings, redis_with(*self.ARGS), OPTIONS={"password": "s3cret-pw", "db": 3})
        assert ids() == ["async_downloads.W007"]

    def test_a_wrong_password_is_silent(self, settings, redis_with):
        use_cache(settings, redis_with(*self.ARGS), OPTIONS={"password": "wrong"})
        assert found() == []

    def test_django_redis_options_are_used(self, settings, redis_with):
        use_cache(settings, redis_with(*self.ARGS), backend=DJANGO_REDIS, OPTIONS={"PASSWORD": "s3cret-pw"})
        assert ids() == ["async_downloads.W007"]


class TestSeveralServers:
    """Django's RedisCache writes to the first server of LOCATION: that one is checked, and named."""

    def test_the_first_server_is_checked_and_named(self, settings, redis_with):
        first, other = redis_with(*NO_PERSISTENCE), redis_with(*AOF)
        for location in ([first, other], f"{first},{other}", f"{first};{other}"):
            use_cache(settings, location)
            [warning] = found()
            assert warning.id == "async_downloads.W007"
            assert f"({first}, the first server of its LOCATION; the others were not checked)" in warning.msg

    def test_the_others_are_not(self, settings, redis_with):
        use_cache(settings, [redis_with(*AOF), redis_with(*NO_PERSISTENCE)])
        assert found() == []

    def test_django_redis_too(self, settings, redis_with):
        first = redis_with(*RDB, "--maxmemory-policy", "volatile-lru")
        use_cache(settings, f"{first},{redis_with(*AOF)}", backend=DJANGO_REDIS)
        [warning] = found()
        assert warning.id == "async_downloads.W008" and "first server" in warning.msg


class TestSilentWhenItCannotTell:
    """Settings that would warn, on servers that refuse CONFIG or cannot be reached: nothing is said."""

    BAD = (*NO_PERSISTENCE, "--maxmemory-policy", "allkeys-lru")

    def test_config_disabled(self, settings, redis_with):
        url = redis_with(*self.BAD, "--rename-command", "CONFIG", "")
        use_cache(settings, url)
        assert found() == []
        with redis.Redis.from_url(url) as client, pytest.raises(redis.ResponseError, match="unknown command"):
            client.config_get("save")

    def test_config_renamed(self, settings, redis_with):
        url = redis_with(*self.BAD, "--rename-command", "CONFIG", "hidden-config-7f3a")
        use_cache(settings, url)
        assert found() == []
        # Under its new name, CONFIG tells what the check would have warned about.
        with redis.Redis.from_url(url, decode_responses=True) as client:
            reply = client.execute_command("hidden-config-7f3a", "GET", "maxmemory-policy")
        pairs = reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))
        assert pairs == {"maxmemory-policy": "allkeys-lru"}

    def test_an_acl_user_without_config(self, settings, redis_with):
        url = redis_with(*self.BAD, "--user", "checker", "on", ">checker-pw", "~*", "&*", "+@all", "-config")
        use_cache(settings, url.replace("redis://", "redis://checker:checker-pw@"))
        assert found() == []
        # The same server, as a user that may run CONFIG: the silence above was the refusal.
        use_cache(settings, url)
        assert ids() == ["async_downloads.W007", "async_downloads.W008"]

    def test_nothing_listening(self, settings):
        use_cache(settings, f"redis://127.0.0.1:{redis_server.free_port()}/0")
        assert found() == []

    def test_a_server_that_never_answers_does_not_hang_the_check(self, settings):
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(8)  # connections are taken, never answered
            use_cache(settings, f"redis://127.0.0.1:{listener.getsockname()[1]}/0")
            started = time.monotonic()
            assert found() == []
            assert time.monotonic() - started < 3 * checks.REDIS_PROBE_TIMEOUT

    @pytest.mark.parametrize("location", ["", "not a url", "http://127.0.0.1:1/", None, 6379, []])
    def test_a_location_that_is_no_redis_url(self, settings, location):
        use_cache(settings, location)
        assert found() == []

    def test_django_redis_sentinel_client(self, settings, redis_with):
        use_cache(settings, redis_with(*self.BAD), backend=DJANGO_REDIS,
                  OPTIONS={"CLIENT_CLASS": "django_redis.client.SentinelClient"})
        assert found() == []

    @pytest.mark.parametrize(
        "backend",
        [
            "django.core.cache.backends.locmem.LocMemCache",
            "django.core.cache.backends.dummy.DummyCache",
            "django.core.cache.backends.db.DatabaseCache",
            "django.core.cache.backends.filebased.FileBasedCache",
            "django.core.cache.backends.memcached.PyMemcacheCache",
        ],
    )
    def test_caches_that_are_not_redis(self, settings, redis_with, backend):
        use_cache(settings, redis_with(*self.BAD), backend=backend)
        assert found() == []

    def test_an_alias_that_caches_lack(self, settings):
        settings.ASYNC_DOWNLOADS_CACHE_NAME = "no-such-cache"
        assert found() == []

    def test_the_database_store(self, settings, redis_with):
        use_cache(settings, redis_with(*self.BAD))
        settings.ASYNC_DOWNLOADS_STORE = "database"
        assert found() == []

    def test_an_unknown_store(self, settings, redis_with):
        use_cache(settings, redis_with(*self.BAD))
        settings.ASYNC_DOWNLOADS_STORE = "carrier-pigeon"
        assert found() == []


class TestThroughCallCommand:
    def test_check_deploy_reports_both(self, settings, redis_with):
        use_cache(settings, redis_with(*NO_PERSISTENCE, "--maxmemory-policy", "volatile-lfu"))
        err = io.StringIO()
        call_command("check", "--deploy", stdout=io.StringIO(), stderr=err)
        assert "async_downloads.W007" in err.getvalue()
        assert "async_downloads.W008" in err.getvalue() and "'volatile-lfu'" in err.getvalue()

    def test_only_with_deploy(self, settings, redis_with):
        use_cache(settings, redis_with(*NO_PERSISTENCE, "--maxmemory-policy", "volatile-lfu"))
        out, err = io.StringIO(), io.StringIO()
        call_command("check", stdout=out, stderr=err)
        assert "async_downloads.W007" not in out.getvalue() + err.getvalue()
        assert "async_downloads.W008" not in out.getvalue() + err.getvalue()

    def test_database_store_says_nothing_about_redis(self, settings, redis_with):
        use_cache(settings, redis_with(*NO_PERSISTENCE, "--maxmemory-policy", "volatile-lfu"))
        settings.ASYNC_DOWNLOADS_STORE = "database"
        out, err = io.StringIO(), io.StringIO()
        call_command("check", "--deploy", stdout=out, stderr=err)
        assert "async_downloads.W007" not in out.getvalue() + err.getvalue()
        assert "async_downloads.W008" not in out.getvalue() + err.getvalue()

"""A PostgreSQL server for the tests and benchmarks of the database store.

The one at ``POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``)
if it answers; otherwise a private one, started from the OS package's ``initdb`` and
``postgres`` (Debian: ``apt-get install postgresql``) on a free port, with its data in
a temporary folder, stopped at exit. As root, the private server runs as the
``postgres`` user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from typing import Any
from urllib.parse import urlsplit

from devtools.redis_server import free_port, stop_process

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
INSTALL_HINT = (
    "Install PostgreSQL (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql) "
    "or set POSTGRES_URL to a server where the user may create databases."
)


def parts(url: str) -> dict[str, Any]:
    """Django's DATABASES fields for ``url``."""
    split = urlsplit(url)
    return {
        "HOST": split.hostname or "127.0.0.1",
        "PORT": str(split.port or 5432),
        "USER": split.username or "postgres",
        "PASSWORD": split.password or "",
        "NAME": split.path.lstrip("/") or "postgres",
    }


def answers(url: str, timeout: float = 1.0) -> bool:
    try:
        import psycopg
    except ImportError:
        return False
    fields = parts(url)
    try:
        with psycopg.connect(
            host=fields["HOST"], port=fields["PORT"], user=fields["USER"], password=fields["PASSWORD"],
            dbname=fields["NAME"], connect_timeout=max(1, int(timeout)),
        ):
            return True
    except psycopg.Error:
        return False


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def start_private_server(wait: float = 30.0) -> tuple[str, subprocess.Popen[bytes]]:
    initdb, postgres = _binary("initdb"), _binary("postgres")
    if initdb is None or postgres is None:
        raise RuntimeError(f"No PostgreSQL answers and its server is not installed. {INSTALL_HINT}")
    workdir = tempfile.mkdtemp(prefix="async-downloads-postgres-")
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("PostgreSQL refuses to run as root, and there is no postgres user to run it as.")
        os.chown(workdir, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = os.path.join(workdir, "data")
    subprocess.run(
        [*as_user, initdb, "-D", data, "-U", "postgres", "-A", "trust", "--no-sync"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    port = free_port()
    process = subprocess.Popen(
        [*as_user, postgres, "-D", data, "-p", str(port), "-k", workdir, "-c", "listen_addresses=127.0.0.1",
         "-c", "fsync=off", "-c", "max_connections=200"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    deadline = time.monotonic() + wait
    while not answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"postgres did not start on port {port}.")
        time.sleep(0.1)
    return url, process


def ensure(env_var: str = "POSTGRES_URL") -> str | None:
    """URL of a PostgreSQL that answers, starting a private one if needed; None (with the
    reason in ``os.environ[env_var + "_MISSING"]``) where neither is possible."""
    url = os.environ.get(env_var) or DEFAULT_URL
    if answers(url):
        os.environ[env_var] = url
        return url
    try:
        url, process = start_private_server()
    except (RuntimeError, OSError, subprocess.CalledProcessError) as error:
        os.environ[env_var + "_MISSING"] = str(error)
        return None
    atexit.register(stop_process, process, 10)
    os.environ[env_var] = url
    return url


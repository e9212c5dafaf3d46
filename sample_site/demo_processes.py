"""The sample site's real processes, started and stopped from Python.

``site()`` runs ``sample_site/run_demo.py`` (the supervisor of ``just demo``: uvicorn and a Celery
worker with beat) on a free port, against a Redis you give it, with a media folder of its own; ``private_redis()`` gives
it a ``redis-server`` of its own on a free port, so that a Redis with somebody's data (the
machine's 6379, a ``just demo`` running alongside) is left alone. ``manage()`` runs
``sample_site/manage.py`` (migrate, seed_demo) with the same environment.

Used by ``sample_site/screenshots.py`` (``just screenshots``) and by ``tests/test_demo.py``.
Both run from anywhere: paths are taken from this file, not from the current directory.
"""

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from devtools.processes import stop  # noqa: E402
from devtools.redis_server import free_port, start_private_server  # noqa: E402

SETS = ("default", "bootstrap5", "toast", "semantic")


@contextlib.contextmanager
def private_redis():
    """The URL of a ``redis-server`` started for the block, on a free port."""
    url, process = start_private_server()
    try:
        yield url
    finally:
        stop(process)


def sample_env(redis_url, *, showcase="default", redis_db=None, database=None, media=None, var_dir=None):
    """The environment of the sample site's processes (and of its ``manage.py``).

    ``database``, ``media`` and ``var_dir`` (Celery beat's schedule) default to the site's own
    files under ``sample_site/``; ``redis_db`` to a db number of the set's own.
    """
    env = {
        **os.environ,
        # uvicorn and celery of this interpreter's environment first.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "sample_site.settings",
        "REDIS_URL": redis_url,
        "SAMPLE_SITE_REDIS_DB": str(SETS.index(showcase) if redis_db is None else redis_db),
        "SHOWCASE": showcase,
    }
    optional = {"SAMPLE_SITE_DB": database, "SAMPLE_SITE_MEDIA_ROOT": media, "SAMPLE_SITE_VAR_DIR": var_dir}
    for name, value in optional.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = str(value)
    return env


def manage(*args, env, timeout=300):
    """Run ``sample_site/manage.py ARGS`` with ``env``; its output is returned, an error raised."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "sample_site" / "manage.py"), *map(str, args)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )
    if result.returncode:
        raise RuntimeError(f"manage.py {' '.join(map(str, args))} failed ({result.returncode}):\n"
                           f"{result.stdout}{result.stderr}")
    return result.stdout


@dataclass
class Site:
    url: str
    media: Path
    log: Path
    console: Path

    def output(self):
        """What the supervisor printed, then the output of its processes so far."""
        return "\n".join(path.read_text(errors="replace") for path in (self.console, self.log) if path.exists())


@contextlib.contextmanager
def site(showcase, redis_url, *, redis_db=None, database=None, var_dir=None, timeout=120):
    """The demo's processes with ``SHOWCASE=showcase``, on a free port and a fresh media folder.

    Yields a ``Site`` once the supervisor says it is ready (the site answers, the worker is
    ready); everything is stopped when the block ends.
    """
    port = free_port()
    media = Path(tempfile.mkdtemp(prefix=f"async-downloads-demo-{showcase}-"))
    env = sample_env(redis_url, showcase=showcase, redis_db=redis_db, database=database,
                     media=media / "media", var_dir=var_dir)
    log_path, console_path = media / "demo.log", media / "console.log"
    console = open(console_path, "w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "sample_site" / "run_demo.py"), "--port", str(port), "--log", str(log_path)],
        cwd=ROOT, env=env, stdout=console, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    site = Site(f"http://127.0.0.1:{port}", media / "media", log_path, console_path)
    try:
        wait_until_ready(site, process, timeout)
        yield site
    finally:
        stop(process, timeout=30)  # the supervisor stops uvicorn and the worker
        console.close()
        shutil.rmtree(media, ignore_errors=True)


READY = "Press Ctrl-C to stop."


def wait_until_ready(site, process, timeout=120):
    """Return once the supervisor has printed its banner; raise if it exits first or takes too long."""
    deadline = time.monotonic() + timeout
    while READY not in site.console.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"The sample site did not get ready at {site.url} "
                               f"(supervisor: {process.poll()}). Its output:\n{site.output()}")
        time.sleep(0.2)

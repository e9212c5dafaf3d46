"""Latency of live progress: ``set_percentage`` in a worker process to the message at a client.

    python bench/ws_latency.py      # prints {"ws": {...}, "sse": {...}} as JSON

For each transport, a worker process (a stand-in for a Celery worker, in WS
mode or not) calls ``set_percentage`` 1,000 times (10 downloads, 1 to 100 %),
one every ``INTERVAL`` seconds, and notes the wall-clock time just before each
call. A client of a uvicorn process that serves the same site notes when each
row arrives: over a WebSocket (``websockets``, through channels-redis) and over
the event stream (``httpx``, through django-eventstream's Redis pub/sub). All
processes run on this machine, so their clocks are the same clock.

``run()`` returns ``{"ws": {"p50_ms", "p99_ms", "n", "lost"}, "sse": {...}}``;
``n`` is the number of updates that arrived, ``lost`` those that did not.
Settings: ``bench/ws_latency_settings.py`` (Redis db 11, keys under
``adbench-ws``, removed at the end; SQLite and files in a temporary folder).
The driver never sets Django up, so ``bench/run.py`` may call ``run()``.
"""

import asyncio
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
SETTINGS = "bench.ws_latency_settings"

DOWNLOADS = 10
PERCENTAGES = range(1, 101)  # DOWNLOADS x 100 = 1,000 updates per transport
INTERVAL = 0.005
IDLE_TIMEOUT = 15
ROW = re.compile(r'<li id="download-([^"]+)".*?aria-valuenow="(\d+)"', re.S)


# --------------------------------------------------------------------------- the driver


def run():
    """Measure both transports in one run; return their figures."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from devtools import redis_server
    from devtools.processes import stop

    os.environ["REDIS_URL"] = redis_server.ensure()
    work_dir = tempfile.mkdtemp(prefix="adbench-ws-")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": SETTINGS, "ADBENCH_WS_DIR": work_dir,
           "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    server = None
    try:
        site = _json_command([sys.executable, __file__, "--prepare"], env)
        server, base = _start_server(env)
        cookie = {"sessionid": site["session"]}
        return {
            "ws": asyncio.run(_measure(_ws_messages(base, cookie), site["ws"], {**env, "ADBENCH_WS": "1"})),
            "sse": asyncio.run(_measure(_sse_messages(base, cookie), site["sse"], {**env, "ADBENCH_WS": "0"})),
        }
    finally:
        if server is not None:
            stop(server)
        _remove_keys(os.environ["REDIS_URL"])
        shutil.rmtree(work_dir, ignore_errors=True)


async def _measure(messages, downloads, env):
    """Start a worker, wait until the client listens, let the worker go, match rows to updates."""
    from devtools.processes import stop

    worker = subprocess.Popen(
        [sys.executable, __file__, "--worker", json.dumps(downloads)], env=env, cwd=ROOT,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert (await asyncio.to_thread(worker.stdout.readline)).strip() == "ready"
        arrived = {}
        wanted = {(key, p) for key in downloads["keys"] for p in PERCENTAGES}
        async with messages as stream:
            sent = asyncio.ensure_future(asyncio.to_thread(_go, worker))
            while len(arrived) < len(wanted):
                try:
                    text = await asyncio.wait_for(anext(stream), IDLE_TIMEOUT)
                except (TimeoutError, StopAsyncIteration):
                    break
                at = time.time()
                for key, percentage in ROW.findall(text):
                    arrived.setdefault((key, int(percentage)), at)
            sent = await sent
    finally:
        stop(worker)
    latencies = sorted(arrived[key, p] - at for key, p, at in sent if (key, p) in arrived)
    return {"p50_ms": _ms(_percentile(latencies, 50)), "p99_ms": _ms(_percentile(latencies, 99)),
            "n": len(latencies), "lost": len(sent) - len(latencies)}


def _go(worker):
    worker.stdin.write("go\n")
    worker.stdin.flush()
    return json.loads(worker.stdout.readline())


class _ws_messages:
    """``async with`` gives an iterator of the socket's messages, the initial centre read."""

    def __init__(self, base, cookie):
        self.url = base.replace("http://", "ws://") + "/ws/async_downloads/"
        self.header = "; ".join(f"{k}={v}" for k, v in cookie.items())

    async def __aenter__(self):
        import websockets

        self.socket = await websockets.connect(self.url, additional_headers={"Cookie": self.header}, max_size=None)
        await self.socket.recv()  # the whole centre, sent on connect
        return self

    async def __aexit__(self, *exc):
        await self.socket.close()

    def __aiter__(self):
        return self

    async def __anext__(self):
        return await self.socket.recv()


class _sse_messages:
    """``async with`` gives an iterator of the stream's ``downloads`` events, once it is open."""

    def __init__(self, base, cookie):
        self.url = base + "/async_downloads/events/"
        self.cookie = cookie

    async def __aenter__(self):
        import httpx

        self.client = httpx.AsyncClient(cookies=self.cookie, timeout=httpx.Timeout(10, read=None))
        self.response = await self.client.send(self.client.build_request("GET", self.url), stream=True)
        self.response.raise_for_status()
        self.lines = self.response.aiter_lines()
        while (await self._event())[0] != "stream-open":
            pass
        return self

    async def __aexit__(self, *exc):
        await self.response.aclose()
        await self.client.aclose()

    async def _event(self):
        name, data = "message", []
        async for line in self.lines:
            if line == "":
                if data or name != "message":
                    return name, "\n".join(data)
            elif line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        raise StopAsyncIteration

    def __aiter__(self):
        return self

    async def __anext__(self):
        while True:
            name, data = await self._event()
            if name == "downloads":
                return data


def _percentile(sorted_values, percent):
    """Nearest-rank percentile."""
    if not sorted_values:
        return math.nan
    return sorted_values[max(0, math.ceil(percent / 100 * len(sorted_values)) - 1)]


def _ms(seconds):
    return round(seconds * 1000, 2) if not math.isnan(seconds) else None


def _json_command(command, env):
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    if result.returncode:
        raise RuntimeError(f"{command[2:]} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _start_server(env):
    from devtools.processes import start_uvicorn

    return start_uvicorn("bench.ws_latency:asgi_application", {**env, "ADBENCH_WS": "0"}, factory=True, cwd=ROOT)


def _remove_keys(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/11")
    keys = list(client.scan_iter(match="*adbench-ws*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


# --------------------------------------------------------------------------- the other processes


def asgi_application():
    """The site, for uvicorn: HTTP (with the event stream) and the download centre's socket."""
    from django.core.asgi import get_asgi_application

    django_application = get_asgi_application()
    from channels.auth import AuthMiddlewareStack
    from channels.routing import ProtocolTypeRouter, URLRouter

    import async_downloads.routing

    return ProtocolTypeRouter(
        {
            "http": django_application,
            "websocket": AuthMiddlewareStack(URLRouter(async_downloads.routing.websocket_urlpatterns)),
        }
    )


def prepare():
    """Database, a signed-in user, and the downloads each transport updates (plus one to warm up)."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client

    from async_downloads import cache

    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user("bench")
    client = Client()
    client.force_login(user)

    def downloads(name):
        keys = [cache.init_download(user, f"{name}-{n}.csv")[1] for n in range(DOWNLOADS)]
        return {"keys": keys, "warm": cache.init_download(user, f"{name}-warm.csv")[1]}

    print(json.dumps({"session": client.cookies["sessionid"].value, "ws": downloads("ws"), "sse": downloads("sse")}))


def worker(downloads):
    """Warm up, say "ready", wait for "go", then make the updates and print when each was made."""
    import django

    django.setup()
    from async_downloads import cache

    cache.set_percentage(downloads["warm"], 50)  # templates, connections
    print("ready", flush=True)
    sys.stdin.readline()
    sent = []
    for percentage in PERCENTAGES:
        for key in downloads["keys"]:
            sent.append((key, percentage, time.time()))
            cache.set_percentage(key, percentage)
            time.sleep(INTERVAL)
    print(json.dumps(sent), flush=True)


if __name__ == "__main__":
    if sys.path[0] == BENCH_DIR:
        sys.path[0] = ROOT  # run as a script: import from the repository, not from bench/
    if sys.argv[1:2] == ["--prepare"]:
        prepare()
    elif sys.argv[1:2] == ["--worker"]:
        worker(json.loads(sys.argv[2]))
    else:
        print(json.dumps(run(), indent=2))

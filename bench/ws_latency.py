"""Latency of one update, WebSocket next to SSE: ``set_percentage`` in a worker process to the client.

    .venv/bin/python bench/run.py ws_latency

For each transport, a worker process (``python -m bench.ws_latency worker``, in WS mode or
not) calls ``set_percentage`` 1,000 times (10 downloads, 1 to 100 %), one every ``INTERVAL``
seconds, noting the time just before each call; a client of a uvicorn process serving the
same site notes when each row arrives: over a WebSocket (``websockets``, through
channels-redis) and over the event stream (``httpx``, through django-eventstream's pub/sub).
Settings: bench/settings.py, scenario ``ws``; SQLite and files in a temporary folder.
"""

import asyncio
import re
import shutil
import sys
import tempfile
import time

from devtools.processes import JsonLines, reply, start_uvicorn, stop

from .common import ROOT, child_env, how_measured, log, md_table, percentile

DOWNLOADS = 10
PERCENTAGES = range(1, 101)  # DOWNLOADS x 100 = 1,000 updates per transport
INTERVAL = 0.005
IDLE_TIMEOUT = 15
ROW = re.compile(r'<li id="download-([^"]+)".*?aria-valuenow="(\d+)"', re.S)


def section():
    work_dir = tempfile.mkdtemp(prefix="adbench-ws-")
    env = child_env("ws", ADBENCH_DIR=work_dir)
    server = None
    try:
        prepare = JsonLines([sys.executable, "-m", "bench.ws_latency", "prepare"], env, cwd=ROOT)
        site = prepare.read()
        prepare.close()
        server, base = start_uvicorn("bench.ws_latency:asgi_application", {**env, "ADBENCH_WS": "0"}, factory=True,
                                     cwd=ROOT)
        cookie = {"sessionid": site["session"]}
        r = {"ws": asyncio.run(measure(WsMessages(base, cookie), site["ws"], {**env, "ADBENCH_WS": "1"})),
             "sse": asyncio.run(measure(SseMessages(base, cookie), site["sse"], {**env, "ADBENCH_WS": "0"}))}
    finally:
        stop(server)
        shutil.rmtree(work_dir, ignore_errors=True)
    log(f"ws_latency: WS p50 {r['ws']['p50_ms']} / p99 {r['ws']['p99_ms']} ms; "
        f"SSE p50 {r['sse']['p50_ms']} / p99 {r['sse']['p99_ms']} ms")
    markdown = "\n".join([
        md_table(["transport", "updates", "p50", "p99", "lost"],
                 [[name, r[name]["n"], f"{r[name]['p50_ms']} ms", f"{r[name]['p99_ms']} ms", r[name]["lost"]]
                  for name in ("ws", "sse")]),
        "",
        how_measured(
            f"A worker process calls `set_percentage` {DOWNLOADS * len(PERCENTAGES):,} times ({DOWNLOADS} downloads, "
            f"1 to 100 %), one every {INTERVAL * 1000:.0f} ms, taking `time.time()` just before each call.",
            "A client of a uvicorn process of the same site takes the time each row arrives: over the WebSocket "
            "(channels-redis) with the worker in WS mode, over the event stream (django-eventstream's Redis pub/sub) "
            "without; one transport after the other, same machine clock.",
        ),
    ])
    return {"results": r, "targets": [], "markdown": markdown}


async def measure(messages, downloads, env):
    """Start a worker, wait until the client listens, let the worker go, match rows to updates."""
    worker = JsonLines([sys.executable, "-m", "bench.ws_latency", "worker"], env, cwd=ROOT)
    try:
        worker.send(downloads)
        await asyncio.to_thread(worker.read)  # warmed up
        arrived = {}
        wanted = {(key, p) for key in downloads["keys"] for p in PERCENTAGES}
        async with messages as stream:
            sent = asyncio.ensure_future(asyncio.to_thread(worker.call, "go"))
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
        worker.close()
    latencies = [(arrived[key, p] - at) * 1000 for key, p, at in sent if (key, p) in arrived]
    return {"p50_ms": round(percentile(latencies, 50), 2), "p99_ms": round(percentile(latencies, 99), 2),
            "n": len(latencies), "lost": len(sent) - len(latencies)}


class WsMessages:
    """``async with`` gives an iterator of the socket's messages, once the initial centre is read."""

    def __init__(self, base, cookie):
        self.url = base.replace("http://", "ws://") + "/ws/async_downloads/"
        self.header = "; ".join(f"{k}={v}" for k, v in cookie.items())

    async def __aenter__(self):
        import websockets

        self.socket = await websockets.connect(self.url, additional_headers={"Cookie": self.header}, max_size=None)
        await self.socket.recv()
        return self

    async def __aexit__(self, *exc):
        await self.socket.close()

    def __aiter__(self):
        return self

    async def __anext__(self):
        return await self.socket.recv()


class SseMessages:
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


# --------------------------------------------------------------------------- the other processes


def asgi_application():
    """The site, for uvicorn: HTTP (with the event stream) and the download centre's socket."""
    from django.core.asgi import get_asgi_application

    django_application = get_asgi_application()
    from channels.auth import AuthMiddlewareStack
    from channels.routing import ProtocolTypeRouter, URLRouter

    import async_downloads.routing

    websocket = AuthMiddlewareStack(URLRouter(async_downloads.routing.websocket_urlpatterns))
    return ProtocolTypeRouter({"http": django_application, "websocket": websocket})


def prepare():
    """Database, a signed-in user, and the downloads each transport updates (plus one to warm up)."""
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

    reply({"session": client.cookies["sessionid"].value, "ws": downloads("ws"), "sse": downloads("sse")})


def worker():
    """Warm up, answer, wait for "go", then make the updates and answer with when each was made."""
    import json

    from async_downloads import cache

    downloads = json.loads(sys.stdin.readline())
    cache.set_percentage(downloads["warm"], 50)  # templates, connections
    reply("ready")
    sys.stdin.readline()
    sent = []
    for percentage in PERCENTAGES:
        for key in downloads["keys"]:
            sent.append((key, percentage, time.time()))
            cache.set_percentage(key, percentage)
            time.sleep(INTERVAL)
    reply(sent)


if __name__ == "__main__":
    import django

    django.setup()
    {"prepare": prepare, "worker": worker}[sys.argv[1]]()

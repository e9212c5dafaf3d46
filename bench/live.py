"""Live delivery: latency under 2,000 streams and 500 changes/s, memory per stream, CPU against polling.

    .venv/bin/python bench/run.py live          # ADBENCH_LIVE_QUICK=1: small numbers, a smoke run

What runs, all real processes on this machine's clock (settings: bench/settings.py, scenario ``live``):

- ``python -m bench.live setup`` rebuilds the database, creates the users with signed-cookie
  sessions and starts one download per user through the cache API;
- two uvicorn processes: web-bg holds the 2,000 background streams, web-probe the probe's;
- load processes (``python -m bench.live load``) call ``set_percentage`` on the background
  users' downloads 500 times a second; a Celery worker (``celery -A bench.live``) runs the probe;
- the CPU section starts one fresh uvicorn process per transport and drive processes
  (``python -m bench.live drive``) that move the watched exports;
- this process is every client: asyncio protocols on raw sockets (devtools/load.py's).
"""

import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
import uuid

from celery import Celery

from devtools import load
from devtools.processes import JsonLines, cpu_seconds, reply, start_celery_worker, start_uvicorn, stop

from .common import ROOT, child_env, how_measured, log, md_table, others_cpus, snapshot, summary, wait_quiet

QUICK = os.environ.get("ADBENCH_LIVE_QUICK") == "1"
TARGET_P99_MS, TARGET_KB_PER_STREAM, TARGET_CPU_RATIO = 25.0, 64.0, 10.0
CONNECTIONS = 200 if QUICK else 2000  # idle authenticated streams on web-bg
RATE = 100.0 if QUICK else 500.0  # set_percentage calls per second on the background users' downloads
LOAD_PROCS, LOAD_THREADS, LOAD_WARMUP = 2, 16, 5.0  # threads enough for the rate at tens of ms a call
PROBES, PROBE_WARMUP, PROBE_RATE = (100 if QUICK else 500), 10, 20.0  # per kind of probe
CPU_CLIENTS = 50 if QUICK else 200  # clients watching the exports of the CPU section
CPU_SECONDS = 10.0 if QUICK else 30.0  # length of the watched export
WARM_STREAMS = 20 if QUICK else 100  # streams opened at once and closed again before a memory reading
CPU_STEPS = min(99, round(CPU_SECONDS / 0.3))  # progress steps of the export (one event each)
POLL_INTERVAL, CALIBRATION_SECONDS = 1.0, 8.0
QUIET_CPUS, QUIET_WAIT = 0.5, 120.0  # before a measurement, wait for other programs to use less (at most so long)
QUEUE = f"adbench-live-{os.environ.get('ADBENCH_RUN', '0')}"  # the probe's queue, and its Celery keys' prefix
POLL_PATH = "/async_downloads/ajax_update/"
APP = "django.core.asgi:get_asgi_application"

# The probe's Celery worker: `celery -A bench.live worker -Q <QUEUE>`; the driver sends with the same app.
app = Celery("adbench_live")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(broker_transport_options={"global_keyprefix": f"{QUEUE}:celery:"}, worker_prefetch_multiplier=1,
                worker_enable_remote_control=False)


def _redis():
    import redis
    from django.conf import settings

    return redis.Redis.from_url(settings.REDIS_URL)


def blpop(client, key, timeout):
    """BLPOP in steps of 1 s (redis-py's socket timeout is 5 s by default); None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = client.blpop([key], 1)
        if got is not None:
            return got
    return None


@app.task(name="bench.live.ready")
def task_ready(warm_key, reply_key):
    """Warm the worker up (templates, connections) on a download nobody watches."""
    from async_downloads import cache

    for p in range(1, 21):
        cache.set_percentage(warm_key, p)
    _redis().rpush(reply_key, os.getpid())


@app.task(name="bench.live.probe")
def task_probe(kinds, pk, key, interval, reply_key):
    """One change of the probe user's download per entry of ``kinds``, ``interval`` s apart, with
    ``time.time()`` just before and after each call: "cache" is ``set_percentage`` (our publish
    step), "bare" django-eventstream's ``send_event`` of a row rendered beforehand, same channel."""
    from django_eventstream import send_event

    from async_downloads import cache, partials, sse

    record = dict(cache.get_download(key))
    rows = {p: " ".join(partials.render_row({**record, "percentage": p, "state": "running"}, oob=True).split())
            for p in range(1, 100)}
    current = record.get("percentage") or 0
    probes, next_at = [], time.monotonic()
    for i, kind in enumerate(kinds):
        p = (current + i) % 98 + 1  # never the value before it: every call publishes
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
        t0 = time.time()
        if kind == "cache":
            cache.set_percentage(key, p)
        else:
            send_event(sse.channel_for(pk), sse.EVENT, rows[p], json_encode=False)
        probes.append((i, kind, p, t0, time.time()))
    _redis().rpush(reply_key, json.dumps(probes))


# --------------------------------------------------------------------------- roles (python -m bench.live ROLE)


def role_setup(params):
    """A fresh database; users with signed-cookie sessions, one download each."""
    from concurrent.futures import ThreadPoolExecutor

    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import User
    from django.contrib.sessions.backends.signed_cookies import SessionStore
    from django.core.management import call_command
    from django.db import connections

    from async_downloads import cache, partials

    db = settings.DATABASES["default"]["NAME"]
    connections.close_all()
    if os.path.exists(db):
        os.remove(db)
    call_command("migrate", verbosity=0)
    groups = {"probe": 1, "warm": 1, "bg": params["connections"], "cpu": params["cpu_clients"]}
    User.objects.bulk_create([User(username=f"live-{group}-{i}", password=make_password(None))
                              for group, count in groups.items() for i in range(count)], batch_size=500)
    users = list(User.objects.order_by("pk"))

    def entry(user):
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.save()
        _, key = cache.init_download(user, f"{user.username}.csv", name=f"Export for {user.username}")
        cache.set_percentage(key, 0)  # in progress: its task has started (no "waiting for a worker")
        return {"pk": user.pk, "cookie": session.session_key, "key": key, "url": partials.events_url(user.pk)}

    with ThreadPoolExecutor(8) as pool:
        entries = list(pool.map(entry, users))
    out, index = {"cookie_name": settings.SESSION_COOKIE_NAME}, 0
    for group, count in groups.items():
        out[group], index = entries[index:index + count], index + count
    reply(out)


def _wait_for(op):
    """A thread that sets the returned event when a command ``op`` (or the end of stdin) arrives."""
    event = threading.Event()

    def read():
        for line in sys.stdin:
            if json.loads(line).get("op") == op:
                break
        event.set()

    threading.Thread(target=read, daemon=True).start()
    return event


def role_load(params):
    """``rate`` calls of ``set_percentage`` a second over the given downloads, paced, until "stop"."""
    from concurrent.futures import ThreadPoolExecutor

    from async_downloads import cache

    entries, rate = params["entries"], float(params["rate"])
    cache.get_download(entries[0]["key"])  # connections
    go = _wait_for("go")
    reply({"ready": True})
    go.wait()
    done = _wait_for("stop")
    lock, counter, calls, errors = threading.Lock(), iter(range(10**9)), [], {}
    start = time.time() + 0.05
    values = [0] * len(entries)

    def worker():
        while not done.is_set():
            with lock:
                n = next(counter)
            if done.wait(max(0.0, start + n / rate - time.time())):
                break
            i = n % len(entries)
            values[i] = values[i] % 98 + 1
            t0 = time.time()
            try:
                cache.set_percentage(entries[i]["key"], values[i])
            except Exception as error:
                errors[repr(error)[:200]] = errors.get(repr(error)[:200], 0) + 1
            calls.append((time.time() - t0) * 1000)

    with ThreadPoolExecutor(params["threads"]) as pool:
        for _ in range(params["threads"]):
            pool.submit(worker)
    reply({"calls": len(calls), "seconds": time.time() - start, "call_ms": calls, "cpu_seconds": time.process_time(),
           "errors": errors})


def role_drive(params):
    """The CPU section's exports: every download moves one step every ``interval`` seconds."""
    from concurrent.futures import ThreadPoolExecutor

    from async_downloads import cache, partials

    entries = params["entries"]
    with ThreadPoolExecutor(4) as pool:
        # Each export starts from 0 %; pages opened now replay nothing older.
        list(pool.map(lambda e: cache.set_percentage(e["key"], 0), entries))
        go = _wait_for("go")
        reply({"urls": [partials.events_url(e["pk"]) for e in entries]})
        go.wait()
        start, cpu0 = time.monotonic(), time.process_time()
        for step in range(1, params["steps"] + 1):
            time.sleep(max(0.0, start + step * params["interval"] - time.monotonic()))
            percentage = min(99, step)
            list(pool.map(lambda e, p=percentage: cache.set_percentage(e["key"], p), entries))
    reply({"seconds": time.monotonic() - start, "cpu_seconds": time.process_time() - cpu0})


# --------------------------------------------------------------------------- clients


class Counter(load.StreamClient):
    """An idle stream that only counts its `downloads` events (no parsing: 2,000 of them share a CPU)."""

    def __init__(self, request):
        super().__init__(request)
        self.count, self.tail = 0, b""

    def reset_parsing(self):
        super().reset_parsing()
        self.tail = b""

    def body_received(self, data, now):
        # The body without its chunk framing: an event the proxy wrote in two chunks still counts once.
        window = self.tail + self.payload(data)  # the tail's own marks were counted with the data before
        self.count += window.count(b"event: downloads") - self.tail.count(b"event: downloads")
        if not self.opened.done() and b"event: stream-open" in window:
            self.opened.set_result(now)
        if self.reconnect:  # the last id, to come back with
            mark = window.rfind(b"\nid: ")
            end = window.find(b"\n", mark + 5)
            if mark >= 0 and end > 0:
                self.last_id = window[mark + 5:end].decode()
        self.tail = window[-200:] if self.reconnect else window[-20:]


class Probe(load.StreamClient):
    def __init__(self, request):
        super().__init__(request)
        self.events = []

    def on_event(self, now, event, data, event_id):
        if event == "downloads":
            self.events.append((now, data))


class HttpClient(asyncio.Protocol):
    """A keep-alive HTTP/1.1 connection, one GET at a time (the answers have a Content-Length)."""

    def __init__(self):
        self.transport, self.buf, self.waiter, self.lost = None, bytearray(), None, False

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.lost = True
        if self.waiter and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    def data_received(self, data):
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None or self.waiter.done():
            return
        head = bytes(self.buf[:end]).decode("latin-1").lower()
        length = int(head.split("content-length:", 1)[1].split("\r\n", 1)[0]) if "content-length:" in head else 0
        if len(self.buf) < end + 4 + length:
            return
        del self.buf[:end + 4 + length]
        self.waiter.set_result((int(head.split(" ", 2)[1]), length))

    async def get(self, request, timeout=30):
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await asyncio.wait_for(self.waiter, timeout)


async def poller(port, cookie_name, cookie, interval, phase, deadline, stats):
    """The legacy script: GET the JSON endpoint every ``interval`` s, on one keep-alive connection."""
    request = (f"GET {POLL_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie_name}={cookie}\r\n"
               "Accept: application/json\r\nX-Requested-With: XMLHttpRequest\r\n\r\n").encode()
    conn, next_at = None, time.monotonic() + phase
    while True:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if time.monotonic() >= deadline:
            break
        try:
            if conn is None or conn.lost:
                _, conn = await asyncio.get_running_loop().create_connection(HttpClient, "127.0.0.1", port)
            t0 = time.monotonic()
            status, length = await conn.get(request)
            stats["ms"].append((time.monotonic() - t0) * 1000)
            stats["bytes"] += length
            if status != 200:
                stats["errors"][f"status {status}"] = stats["errors"].get(f"status {status}", 0) + 1
        except Exception as error:
            stats["errors"][repr(error)[:120]] = stats["errors"].get(repr(error)[:120], 0) + 1
            conn = None
        next_at += interval
    if conn is not None:
        conn.transport.close()


async def poll_all(port, users, cookie_name, interval, seconds):
    stats = {"ms": [], "bytes": 0, "errors": {}}
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(poller(port, cookie_name, u["cookie"], interval, interval * i / len(users), deadline, stats)
                           for i, u in enumerate(users)))
    return stats


# --------------------------------------------------------------------------- the run


def rss_kb(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


async def settled_rss_kb(pid, seconds=2.0):
    """VmRSS once it stops moving: the median of readings over ``seconds``."""
    readings = []
    for _ in range(int(seconds / 0.2)):
        readings.append(rss_kb(pid))
        await asyncio.sleep(0.2)
    return statistics.median(readings)


class Bench:
    def __init__(self):
        self.run_id = uuid.uuid4().hex[:8]
        self.env = child_env("live")
        self.children = []  # processes to stop at the end
        self.quiet_budget = QUIET_WAIT

    async def quiet(self, label):
        """Wait until other programs use less than QUIET_CPUS (QUIET_WAIT seconds at most over the run)."""
        mine = [os.getpid(), *(p.pid for p in self.children if p.poll() is None)]
        self.quiet_budget -= await asyncio.to_thread(wait_quiet, mine, self.quiet_budget, label, QUIET_CPUS)

    async def child(self, role, params):
        child = JsonLines([sys.executable, "-m", "bench.live", role], self.env, cwd=ROOT)
        self.children.append(child.process)
        child.send(params)
        return child

    async def read(self, child):
        return await asyncio.to_thread(child.read)

    async def server(self, **env):
        process, url = await asyncio.to_thread(start_uvicorn, APP, {**self.env, **env}, factory=True, cwd=ROOT)
        self.children.append(process)
        return process, int(url.rsplit(":", 1)[1])

    async def streams(self, port, users, factory=Counter, urls=None, concurrency=32, retry=False, stats=None,
                      reconnect=None):
        """Open a stream of each of ``users``; each client knows its ``user``. ``retry``: as htmx does;
        ``reconnect`` (seconds): a stream the server ends is opened again, as EventSource does."""

        def client(u, url):
            protocol = factory(load.stream_request(port, url, self.cookie_name, u["cookie"]))
            protocol.user = u
            if reconnect is not None:
                protocol.reconnect = (port, reconnect)
            return protocol

        clients, failures = await load.open_streams([
            (port, lambda u=u, url=url: client(u, url))
            for u, url in zip(users, urls or [u["url"] for u in users], strict=True)],
            concurrency=concurrency, timeout=120, retry=retry, stats=stats)
        if failures:
            log(f"{len(failures)} of {len(users)} streams failed to open: {failures[:3]}")
        return clients, failures

    async def warm(self, port, streams=True):
        """Serve a few polls and streams first, so that imports, templates and connections are made."""
        stats = await poll_all(port, self.users["bg"][:3], self.cookie_name, 0.05, 0.5)
        if stats["errors"]:
            raise RuntimeError(f"warm-up polls failed: {stats['errors']}")
        for count in (20, 20, 20, WARM_STREAMS) if streams else ():
            clients, failures = await self.streams(port, self.users["bg"][:count], concurrency=count)
            await load.close_streams(clients)
            if failures:
                raise RuntimeError(f"warm-up streams failed: {failures[:3]}")
        await asyncio.sleep(1.0)

    async def main(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # the children inherit it
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, CONNECTIONS * 4 + 1024)), hard))
        self.redis = _redis()
        try:
            setup = await self.child("setup", {"connections": CONNECTIONS, "cpu_clients": CPU_CLIENTS})
            self.users = await self.read(setup)
            self.cookie_name = self.users["cookie_name"]
            results = await self.latency_and_memory()
            results["cpu"] = await self.cpu()
        finally:
            for process in self.children:
                stop(process)
            app.close()
            self.redis.close()
        return results

    async def latency_and_memory(self):
        (bg, bg_port), (web_probe, probe_port) = await asyncio.gather(self.server(), self.server())
        worker = start_celery_worker("bench.live", {**self.env, "PYTHONWARNINGS": "ignore"}, "-Q", QUEUE, cwd=ROOT,
                                     stdout=subprocess.DEVNULL)
        self.children.append(worker)
        ready_key = f"{QUEUE}:{self.run_id}:ready"
        # Keyword arguments only: the library's task signals take a task's first argument for a download key.
        app.send_task("bench.live.ready", kwargs={"warm_key": self.users["warm"][0]["key"], "reply_key": ready_key},
                      queue=QUEUE)
        if await asyncio.to_thread(blpop, self.redis, ready_key, 90) is None:
            raise RuntimeError("the Celery worker did not answer within 90 s")
        await self.warm(bg_port)
        await self.warm(probe_port)

        # Memory: the web-bg process with no stream, then with CONNECTIONS idle streams, opened all at once.
        pid = bg.pid
        memory, bg_clients = await self.memory(bg_port, pid, len(self.users["bg"]))
        n = memory["connections"]
        log(f"memory: {n} streams opened at once, {memory['kb_per_stream']} KB per stream, threads "
            f"{memory['before']['threads']} → {memory['after']['threads']}")

        # Latency: probes through web-probe while the load goes to the streams on web-bg.
        latency = await self.latency(bg_clients, probe_port, {"web_bg": pid, "web_probe": web_probe.pid,
                                                               "worker": worker.pid})
        memory["kb_per_stream_after_traffic"] = round(
            (await settled_rss_kb(pid, 1.0) - memory["before"]["rss"]) / max(n, 1), 1)
        await load.close_streams(bg_clients)
        for process in (bg, web_probe, worker):
            stop(process)
        memory["variants"] = await self.memory_variants()
        return {"memory": memory, "latency": latency}

    async def memory(self, port, pid, concurrency):
        """VmRSS of ``pid``, warm with no stream, then 3 s after the bg streams opened (``concurrency`` at once)."""

        def reading(rss):
            return {"rss": rss, "anon": rss_kb(pid, "RssAnon"), "threads": rss_kb(pid, "Threads"),
                    "fds": len(os.listdir(f"/proc/{pid}/fd"))}

        before = reading(await settled_rss_kb(pid))
        t0 = time.monotonic()
        clients, failures = await self.streams(port, self.users["bg"], concurrency=concurrency)
        connect_seconds = time.monotonic() - t0
        await asyncio.sleep(3.0)
        after = reading(await settled_rss_kb(pid))
        n = max(len(clients), 1)
        return {"connections": len(clients), "failed": len(failures), "connect_seconds": round(connect_seconds, 1),
                "concurrency": concurrency, "before": before, "after": after,
                "kb_per_stream": round((after["rss"] - before["rss"]) / n, 1),
                "anon_kb_per_stream": round((after["anon"] - before["anon"]) / n, 1)}, clients

    #: The memory run again on fresh processes: without the app's limit on stream openings, and with
    #: the streams opened 32 at a time by the clients.
    MEMORY_VARIANTS = (
        ("opened at once, without the limit (`ASYNC_DOWNLOADS_STREAM_OPENINGS = None`)",
         {"ADBENCH_STREAM_OPENINGS": "null"}, None),
        ("opened 32 at a time by the clients", {}, 32),
    )

    async def memory_variants(self):
        found = []
        for label, env, concurrency in self.MEMORY_VARIANTS:
            process, port = await self.server(**env)
            self.children.append(process)
            await self.warm(port)
            await self.quiet(f"memory: {label}")
            result, clients = await self.memory(port, process.pid, concurrency or len(self.users["bg"]))
            await load.close_streams(clients)
            stop(process)
            log(f"memory, {label}: {result['kb_per_stream']} KB per stream")
            found.append({"label": label, **result})
        return found

    #: The probes, in turn: our publish step, and django-eventstream's bare send_event on the same channel
    #: (the same load and noise for both).
    PROBE_KINDS = ("cache", "bare")

    async def latency(self, bg_clients, probe_port, pids):
        probe_user = self.users["probe"][0]
        (probe,), _ = await self.streams(probe_port, [probe_user], factory=Probe)
        entries = [{"pk": u["pk"], "key": u["key"]} for u in self.users["bg"]]
        loads = [await self.child("load", {"entries": entries[i::LOAD_PROCS], "rate": RATE / LOAD_PROCS,
                                           "threads": LOAD_THREADS // LOAD_PROCS}) for i in range(LOAD_PROCS)]
        for child in loads:
            await self.read(child)
        await self.quiet("latency")
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        for child in loads:
            child.send({"op": "go"})
        await asyncio.sleep(LOAD_WARMUP)
        probe.events.clear()
        kinds = list(self.PROBE_KINDS) * (PROBE_WARMUP + PROBES)
        reply_key = f"{QUEUE}:{self.run_id}:probe"
        interval = 1.0 / (PROBE_RATE * len(self.PROBE_KINDS))
        mine = [os.getpid(), *pids.values(), *(c.pid for c in loads)]
        s0, w0, bg0 = snapshot(mine), time.monotonic(), sum(c.count for c in bg_clients)
        app.send_task("bench.live.probe", queue=QUEUE, kwargs={
            "kinds": kinds, "pk": probe_user["pk"], "key": probe_user["key"], "interval": interval,
            "reply_key": reply_key})
        got = await asyncio.to_thread(blpop, self.redis, reply_key, len(kinds) * interval + 60)
        if got is None:
            raise RuntimeError("the probe task did not finish")
        await asyncio.sleep(0.5)  # the last events are on their way
        s1, w1, bg1 = snapshot(mine), time.monotonic(), sum(c.count for c in bg_clients)
        parts = []
        for child in loads:
            child.send({"op": "stop"})
            parts.append(await self.read(child))
            child.close()
        cpu = {name: round(cpu_seconds(pid) - cpu_before[name], 1) for name, pid in pids.items()}
        probe.close()

        # The k-th probe is the next downloads event showing its percentage.
        samples = {k: {"total": [], "inside": [], "lost": 0} for k in self.PROBE_KINDS}
        events, j = probe.events, 0
        for index, kind, p, sent, returned in json.loads(got[1]):
            found = None
            while j < len(events) and found is None:
                at, data = events[j]
                j += 1
                m = load.VALUENOW.search(data)
                found = at if m and int(m.group(1)) == p else None
            if found is None:
                samples[kind]["lost"] += 1
            elif index >= PROBE_WARMUP * len(self.PROBE_KINDS):
                samples[kind]["total"].append((found - sent) * 1000)
                samples[kind]["inside"].append((returned - sent) * 1000)
        calls = sum(p["calls"] for p in parts)
        result = {kind: {"latency_ms": summary(v["total"], 1), "call_ms": summary(v["inside"], 1), "lost": v["lost"]}
                  for kind, v in samples.items()}
        result.update(
            load_rate=round(calls / max(p["seconds"] for p in parts), 1),
            load_call_ms=summary([x for p in parts for x in p["call_ms"]], 2),
            load_errors={k: v for p in parts for k, v in p["errors"].items()},
            load_cpu_seconds=round(sum(p["cpu_seconds"] for p in parts), 1),
            bg_delivered_rate=round((bg1 - bg0) / (w1 - w0), 1), cpu_seconds=cpu,
            others_cpus=others_cpus(s0, s1), loadavg=round(os.getloadavg()[0], 2))
        ours = result["cache"]["latency_ms"]
        bare = f"; bare send_event p99 {result['bare']['latency_ms'].get('p99')} ms" if "bare" in result else ""
        log(f"latency: set_percentage p50 {ours.get('p50')} / p99 {ours.get('p99')} ms{bare}; load "
            f"{result['load_rate']}/s, other programs {result['others_cpus']} CPUs")
        return result

    async def drives(self, entries):
        """Drive processes (two for one export per user: 660 changes/s need more than one GIL here)."""
        procs = 2 if len(entries) > 1 else 1
        drives = [await self.child("drive", {"entries": entries[i::procs], "steps": CPU_STEPS,
                                             "interval": CPU_SECONDS / CPU_STEPS}) for i in range(procs)]
        urls = [None] * len(entries)
        for i, drive in enumerate(drives):
            urls[i::procs] = (await self.read(drive))["urls"]
        return drives, urls

    async def finish(self, drives):
        parts = [await self.read(drive) for drive in drives]
        for drive in drives:
            drive.close()
        return sum(p["cpu_seconds"] for p in parts)

    async def sse_window(self, users, entries):
        """CPU of a fresh web process over opening the streams, the whole export and closing them."""
        process, port = await self.server()
        await self.warm(port)
        drives, urls = await self.drives(entries)
        urls = urls if len(entries) > 1 else urls * len(users)
        await self.quiet("CPU, SSE")
        c0, t0, s0 = cpu_seconds(process.pid), time.monotonic(), snapshot([os.getpid(), process.pid])
        clients, failures = await self.streams(port, users, urls=urls)
        connect_cpu = cpu_seconds(process.pid) - c0
        for drive in drives:
            drive.send({"op": "go"})
        drive_cpu = await self.finish(drives)
        await asyncio.sleep(0.5)
        received = sum(c.count for c in clients)
        await load.close_streams(clients)
        await asyncio.sleep(0.3)
        c1, t1, s1 = cpu_seconds(process.pid), time.monotonic(), snapshot([os.getpid(), process.pid])
        stop(process)
        result = {"cpu_seconds": round(c1 - c0, 2), "connect_cpu_seconds": round(connect_cpu, 2),
                  "window_seconds": round(t1 - t0, 1), "streams": len(clients), "failed": len(failures),
                  "events_expected": CPU_STEPS * len(users), "events_received": received,
                  "cpu_ms_per_event": round((c1 - c0) * 1000 / max(1, received), 3),
                  "others_cpus": others_cpus(s0, s1, extra_mine=drive_cpu)}
        log(f"CPU [SSE, {len(entries)} export(s)]: {result['cpu_seconds']} s, {received} of "
            f"{result['events_expected']} events")
        return result

    async def cpu(self):
        users = self.users["cpu"]
        entries = [{"pk": u["pk"], "key": u["key"]} for u in users]
        out = {"clients": len(users), "steps": CPU_STEPS, "seconds": CPU_SECONDS}
        out["sse"] = await self.sse_window(users, entries)
        out["sse_one_export"] = await self.sse_window([users[0]] * len(users), entries[:1])

        # Polling, on a fresh process that never opened a stream (no Redis listener, as a polling-only site).
        process, port = await self.server()
        await self.warm(port, streams=False)
        # Calibration: CPU per poll when the process is not saturated (the same clients at a quarter of the rate).
        c0, t0 = cpu_seconds(process.pid), time.monotonic()
        stats = await poll_all(port, users, self.cookie_name, POLL_INTERVAL * 4, CALIBRATION_SECONDS)
        calibration = {"requests": len(stats["ms"]), "seconds": round(time.monotonic() - t0, 1),
                       "cpu_ms_per_request": round((cpu_seconds(process.pid) - c0) * 1000 / len(stats["ms"]), 2),
                       "response_ms": summary(stats["ms"], 1)}
        drives, _ = await self.drives(entries)
        await self.quiet("CPU, polling")
        c0, t0, s0 = cpu_seconds(process.pid), time.monotonic(), snapshot([os.getpid(), process.pid])
        for drive in drives:
            drive.send({"op": "go"})
        stats = await poll_all(port, users, self.cookie_name, POLL_INTERVAL, CPU_SECONDS)
        c1, t1, s1 = cpu_seconds(process.pid), time.monotonic(), snapshot([os.getpid(), process.pid])
        drive_cpu = await self.finish(drives)
        stop(process)
        served, due = len(stats["ms"]), int(len(users) * CPU_SECONDS / POLL_INTERVAL)
        poll = out["poll"] = {
            "cpu_seconds": round(c1 - c0, 2), "window_seconds": round(t1 - t0, 1), "requests": served,
            "requests_due": due, "cpu_ms_per_request": round((c1 - c0) * 1000 / max(1, served), 2),
            "bytes_per_response": round(stats["bytes"] / max(1, served)), "response_ms": summary(stats["ms"], 1),
            "errors": stats["errors"], "calibration": calibration, "kept_up": served >= 0.95 * due,
            "others_cpus": others_cpus(s0, s1, extra_mine=drive_cpu)}
        # A process that did not keep up spent less than serving every poll would: then the verdict takes
        # every poll due at the lower (unsaturated) CPU per poll of the calibration.
        per_poll = min(poll["cpu_ms_per_request"], calibration["cpu_ms_per_request"])
        out["polling_cpu_seconds"] = poll["cpu_seconds"] if poll["kept_up"] else round(per_poll * due / 1000, 2)
        out["ratio"] = round(out["polling_cpu_seconds"] / out["sse"]["cpu_seconds"], 1)
        out["ratio_measured"] = round(poll["cpu_seconds"] / out["sse"]["cpu_seconds"], 1)
        out["ratio_one_export"] = round(out["polling_cpu_seconds"] / out["sse_one_export"]["cpu_seconds"], 1)
        log(f"CPU [polling]: {poll['cpu_seconds']} s for {served} of {due} polls; polling / SSE {out['ratio']}×")
        return out


# --------------------------------------------------------------------------- the report


def targets(r):
    lat, mem, cpu = r["latency"]["cache"]["latency_ms"], r["memory"], r["cpu"]
    poll = cpu["poll"]
    polling = (f"polling {cpu['polling_cpu_seconds']:.1f} s" if poll["kept_up"] else
               f"polling {cpu['polling_cpu_seconds']:.1f} s = {poll['requests_due']:,} polls × "
               f"{min(poll['cpu_ms_per_request'], poll['calibration']['cpu_ms_per_request']):.2f} ms")
    return [
        {"name": "worker set_percentage → client on another web process, p99", "target": f"< {TARGET_P99_MS:.0f} ms",
         "measured": f"{lat['p99']:.1f} ms (p50 {lat['p50']:.1f} ms)", "value": lat["p99"],
         "pass": lat["p99"] < TARGET_P99_MS and r["latency"]["cache"]["lost"] == 0,
         "note": f"bare send_event interleaved in the same window: p99 "
                 f"{r['latency']['bare']['latency_ms']['p99']:.1f} ms"},
        {"name": f"memory per idle authenticated SSE connection ({mem['connections']:,} opened at once on one "
                 "process)",
         "target": f"< {TARGET_KB_PER_STREAM:.0f} KB", "measured": f"{mem['kb_per_stream']:.1f} KB",
         "value": mem["kb_per_stream"], "pass": mem["kb_per_stream"] < TARGET_KB_PER_STREAM and not mem["failed"],
         "note": "; ".join(f"{v['label']}: {v['kb_per_stream']:.1f} KB" for v in mem.get("variants", []))},
        {"name": f"server CPU, {cpu['clients']} clients watching a {cpu['seconds']:.0f}-s export: polling / SSE",
         "target": f"≥ {TARGET_CPU_RATIO:.0f}×", "value": cpu["ratio"], "pass": cpu["ratio"] >= TARGET_CPU_RATIO,
         "measured": f"{cpu['ratio']:.1f}× ({polling}, vs SSE {cpu['sse']['cpu_seconds']:.2f} s; as measured "
                     f"{poll['cpu_seconds']:.1f} s for the {poll['requests']:,} polls served: "
                     f"{cpu['ratio_measured']:.1f}×)",
         "note": f"one export watched by one user's {cpu['clients']} streams: {cpu['ratio_one_export']:.1f}×"},
    ]


def markdown(r):
    lat, mem, cpu = r["latency"], r["memory"], r["cpu"]
    b, a = mem["before"], mem["after"]
    s, one, p, c = cpu["sse"], cpu["sse_one_export"], cpu["poll"], cpu["poll"]["calibration"]

    def lat_row(label, k):
        x = lat[k]["latency_ms"]
        return [label, f"{lat['load_rate']:.0f}/s (target {RATE:.0f})", f"{lat['bg_delivered_rate']:.0f}/s", x["n"],
                f"**{x['p50']}**", x["p90"], f"**{x['p99']}**", x["max"], lat[k]["lost"],
                f"{lat[k]['call_ms']['p50']} / {lat[k]['call_ms']['p99']}", lat["others_cpus"]]

    return "\n".join([
        "### Latency: `set_percentage` in a Celery worker → event at a client of another web process", "",
        md_table(["probe", "background `set_percentage` load, achieved", "delivered to background streams", "probes",
                  "p50 (ms)", "p90 (ms)", "p99 (ms)", "max (ms)", "lost", "inside the call p50 / p99 (ms)",
                  "CPUs used by other programs"],
                 [lat_row("**our publish step**: `set_percentage`", "cache"),
                  lat_row("bare `send_event`, interleaved with the probes above", "bare"),
                  ["reference (issue): django-eventstream alone", "500/s", "", "", "0.8", "", "12", "", "", "", ""],
                  ["reference (issue): django-eventstream alone", "2,000/s", "", "", "", "", "36", "", "", "", ""]]),
        "",
        f"CPU seconds over the load run: web-bg {lat['cpu_seconds']['web_bg']}, web-probe "
        f"{lat['cpu_seconds']['web_probe']}, worker {lat['cpu_seconds']['worker']}, load processes "
        f"{lat['load_cpu_seconds']}; one load call p50 / p99 {lat['load_call_ms']['p50']} / "
        f"{lat['load_call_ms']['p99']} ms; load average after {lat['loadavg']}."
        + (f" Load errors: {lat['load_errors']}." if lat["load_errors"] else ""),
        "",
        "### Memory per idle authenticated SSE connection", "",
        md_table(["", "0 streams (warm)", f"{mem['connections']:,} idle streams", "per stream"], [
            ["VmRSS", f"{b['rss'] / 1024:.1f} MB", f"{a['rss'] / 1024:.1f} MB", f"**{mem['kb_per_stream']:.1f} KB**"],
            ["RssAnon", f"{b['anon'] / 1024:.1f} MB", f"{a['anon'] / 1024:.1f} MB", f"{mem['anon_kb_per_stream']} KB"],
            ["threads", b["threads"], a["threads"], ""],
            ["open files", b["fds"], a["fds"], ""],
            ["VmRSS after the latency runs (each stream got events)", "", "",
             f"{mem['kb_per_stream_after_traffic']} KB"],
            *[[f"VmRSS, a fresh process: {v['label']}", f"{v['before']['rss'] / 1024:.1f} MB",
               f"{v['after']['rss'] / 1024:.1f} MB", f"{v['kb_per_stream']:.1f} KB"] for v in mem.get("variants", [])],
            ["reference (issue): django-eventstream alone", "", "", "54 KB"],
            ["reference (issue): an independent measurement (raw-socket client, warmed by 100 streams)", "82 MB",
             "243 MB", "82 KB"],
        ]),
        "",
        f"{mem['connections']:,} streams opened all at once (as browsers come back after a restart) in "
        f"{mem['connect_seconds']} s ({mem['failed']} failed); the process sets up "
        "`ASYNC_DOWNLOADS_STREAM_OPENINGS` (32) of them at a time."
        + "".join(f" A fresh process, {v['label']}: {v['connect_seconds']} s ({v['failed']} failed)."
                  for v in mem.get("variants", [])),
        "",
        f"### Server CPU while {cpu['clients']} clients watch a {cpu['seconds']:.0f}-second export", "",
        md_table(["transport", "web process CPU (s)", "window (s)", "work done", "CPU per unit",
                  "CPUs used by other programs"], [
            [f"SSE: {s['streams']} users, each watching their own export", f"**{s['cpu_seconds']:.2f}**",
             s["window_seconds"], f"{s['streams']} streams opened and closed ({s['failed']} failed), "
             f"{s['events_received']:,} of {s['events_expected']:,} events delivered",
             f"{s['cpu_ms_per_event']:.3f} ms/event (opening the streams: {s['connect_cpu_seconds']:.2f} s)",
             s["others_cpus"]],
            [f"SSE: one user's export watched by {one['streams']} streams", f"{one['cpu_seconds']:.2f}",
             one["window_seconds"], f"{one['events_received']:,} of {one['events_expected']:,} events delivered",
             f"{one['cpu_ms_per_event']:.3f} ms/event", one["others_cpus"]],
            [f"legacy polling: `ajax_update/` every {POLL_INTERVAL:.0f} s", f"**{p['cpu_seconds']:.2f}**",
             p["window_seconds"], f"{p['requests']:,} requests (of {p['requests_due']:,}), "
             f"{p['bytes_per_response']:,} B each, response p50 {p['response_ms'].get('p50')} / p99 "
             f"{p['response_ms'].get('p99')} ms",
             f"{p['cpu_ms_per_request']:.2f} ms/request", p["others_cpus"]],
            [f"legacy polling, calibration: the same clients every {POLL_INTERVAL * 4:.0f} s", "", c["seconds"],
             f"{c['requests']:,} requests, response p50 {c['response_ms'].get('p50')} / p99 "
             f"{c['response_ms'].get('p99')} ms", f"{c['cpu_ms_per_request']:.2f} ms/request", ""],
            ["polling CPU for the ratio" + ("" if p["kept_up"] else ": every poll due at the lower CPU per poll "
                                            f"({p['requests_due']:,} polls)"),
             f"**{cpu['polling_cpu_seconds']:.2f}**", "", "", "", ""],
            ["**ratio** polling / SSE, users with their own export", f"**{cpu['ratio']:.1f}×**", "",
             f"polls served only: {cpu['ratio_measured']:.1f}×", "", ""],
            ["ratio polling / SSE, one export watched by one user's streams", f"{cpu['ratio_one_export']:.1f}×", "",
             "", "", ""],
        ]),
        "",
        how_measured(
            f"Latency: web-bg holds {mem['connections']:,} idle authenticated streams (a user each, each with a "
            f"download in progress); {LOAD_PROCS} load processes ({LOAD_THREADS} threads in all, paced) call "
            f"`set_percentage` on those downloads {RATE:.0f} times a second. A Celery worker (`--pool solo`) changes "
            f"the probe user's download {PROBE_WARMUP} + {PROBES} times per kind at {PROBE_RATE:.0f}/s per kind, "
            "alternating `set_percentage` with a bare `send_event` of a pre-rendered row, and notes `time.time()` "
            "before each call; the probe's stream is on web-probe, a second uvicorn process. The client notes when "
            "the event's bytes arrive and matches it by `aria-valuenow`; the warm-up probes are not counted.",
            f"Memory: VmRSS of web-bg (median of readings over 2 s), warmed up first (polls, streams, then "
            f"{WARM_STREAMS} streams opened at once and closed), with no stream and then 3 s after the streams "
            "opened, all at once; each stream is a different user with a signed-cookie session and a download in "
            "progress. The other rows: the same on fresh processes. Opened 32 at a time by the clients (the "
            "method of this report before), the process keeps less of the requests' peak.",
            f"CPU: {cpu['clients']} users each watch their own export in one tab; drive processes move every "
            f"export {cpu['steps']} steps in {cpu['seconds']:.0f} s (one event per step). Each transport runs on a "
            "fresh, warmed-up uvicorn process; CPU is utime + stime from /proc over the window. An SSE window "
            "spans opening the streams (with `?lastEventId=`), the export and closing them; polling GETs "
            "`ajax_update/` every second on keep-alive connections for the export's length, after a calibration "
            "at a quarter of the rate. If polling did not keep up, the ratio takes every poll due at the lower "
            "CPU per poll.",
            "All clients are asyncio protocols on raw sockets in one process; the machine's 2 CPUs are shared "
            f"with every process above. Before each measurement the run waits (at most {QUIET_WAIT:.0f} s in all) "
            f"until other programs use less than {QUIET_CPUS} CPUs.",
        ),
    ])


def section():
    results = asyncio.run(Bench().main())
    return {"results": results, "targets": targets(results), "markdown": markdown(results)}


ROLES = {"setup": role_setup, "load": role_load, "drive": role_drive}

if __name__ == "__main__":
    import django

    django.setup()
    ROLES[sys.argv[1]](json.loads(sys.stdin.readline()))

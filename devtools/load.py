"""The load scenario of issue 6: exports on several workers while hundreds of SSE clients watch.

    from devtools.load import Scenario, run, problems
    result = run(Scenario(), env, web_app)      # every observation, JSON-able
    assert problems(result) == []

tests/test_load.py runs it for correctness; the benchmark (bench/load.py) runs the same
scenario on its own settings and reports its figures from the same result.

What runs, all real processes on this machine's clock:

- a *site* process (``python -m devtools.load --site``, Django with the given settings), spoken
  to in JSON lines: it creates the users and their sessions, starts the exports the way a
  view does (``init_generic_csv_download``) and at the end reads the records from the cache;
- ``web_processes`` uvicorn processes serving the site;
- ``workers`` Celery worker processes (``--pool solo`` each) running ``devtools.load_tasks.export``;
- this process holds every client: ``users`` users with ``clients_per_user`` streams each, each
  with a session of its own, client ``i`` of a user on web process ``i % web_processes``,
  connected with ``?lastEventId=`` as a page renders it, before the first export starts.

Each client applies what it receives as htmx would: a message holding the list
(``#async-downloads-list``) replaces the whole list; a message made of one row replaces
the row with that id, and is dropped if the list has no such row. At the end each
client's list must equal the cache's final record of each of its user's downloads.

- *lost*: a final state a client does not show; or an event id of the user's channel
  (between the id the client connected with and the channel's last id) it never received.
- *duplicated*: one event id received twice on one connection (a redelivery, not a second change).
- *leaked*: a message carrying a row whose download belongs to another user.

For latency, the publishing processes note when each publish step began
(``devtools.load_tasks``) and each client notes when each message arrived (``arrivals``).
"""

import asyncio
import codecs
import collections
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
import uuid
from urllib.parse import parse_qs, urlsplit

from devtools.processes import JsonLines, reply, start_celery_worker, start_uvicorn, stop, wait_for_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Scenario:
    users: int = 20
    clients_per_user: int = 25
    exports_per_user: int = 5
    web_processes: int = 2
    workers: int = 4
    rows: int = 20
    pause: float = 0.02
    timeout: float = 90.0  # for every client to show every final state, from the first export
    grace: float = 1.0  # listening on after that, for late or repeated events
    migrate: bool = False  # the site's database needs its tables (the tests' has them)


# --------------------------------------------------------------------------- the site process


def site_main():
    import django

    django.setup()
    ops = {"setup": site_setup, "enqueue": site_enqueue, "collect": site_collect}
    for line in sys.stdin:
        command = json.loads(line)
        reply(ops[command.pop("op")](**command))


def site_setup(run, users, clients_per_user, migrate):
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.core.management import call_command
    from django.db import transaction

    from async_downloads import partials
    from devtools import load_tasks

    if migrate:
        call_command("migrate", verbosity=0)
    session_store = import_module(settings.SESSION_ENGINE).SessionStore
    out = []
    with transaction.atomic():
        for index in range(users):
            user = get_user_model().objects.create_user(f"load-{run}-{index}")
            cookies = []
            for _ in range(clients_per_user):
                session = session_store()
                session[SESSION_KEY] = str(user.pk)
                session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
                session[HASH_SESSION_KEY] = user.get_session_auth_hash()
                session.create()
                cookies.append(session.session_key)
            out.append({"pk": user.pk, "url": partials.events_url(user.pk), "cookies": cookies})
    queue = load_tasks.queue()
    return {"users": out, "cookie_name": settings.SESSION_COOKIE_NAME, "queue": queue,
            "broker_url": settings.CELERY_BROKER_URL, "report_key": f"{queue}:{run}:published",
            "ready_key": f"{queue}:{run}:ready"}


def site_enqueue(pks, exports_per_user, rows, pause, report_key):
    """Start the exports as a view does, one per user in turn; note when the first began."""
    from async_downloads.shortcuts import init_generic_csv_download
    from devtools import load_tasks

    load_tasks.take_notes()
    started = time.time()
    downloads = []
    for n in range(exports_per_user):
        for index, pk in enumerate(pks):
            _, key = init_generic_csv_download(load_tasks.export, pk, f"Export {index}-{n}", rows=rows, pause=pause,
                                               report=report_key)
            downloads.append({"key": key, "pk": pk})
    return {"started": started, "downloads": downloads, "published": load_tasks.take_notes()}


def site_collect(pks, report_key, ready_key):
    """The final records, each channel's last event id, and the workers' notes (removed from Redis)."""
    from django_eventstream.utils import get_storage

    from async_downloads import cache, sse
    from devtools import load_tasks

    storage = get_storage()
    client = load_tasks.broker()
    published = [entry for batch in client.lrange(report_key, 0, -1) for entry in json.loads(batch)]
    client.delete(report_key, ready_key)
    fields = ("key", "state", "url", "name", "user_id")
    return {
        "records": {str(pk): [{f: record[f] for f in fields} for record in cache.get_downloads(pk)] for pk in pks},
        "last_ids": {str(pk): storage.get_current_id(sse.channel_for(pk)) for pk in pks},
        "published": published,
    }


# --------------------------------------------------------------------------- clients (asyncio, raw sockets)


class StreamClient(asyncio.Protocol):
    """One EventSource. ``opened`` resolves at ``stream-open``, ``closed`` when the connection ends;
    ``body_received`` decodes the chunked body and calls ``on_event`` for each SSE event."""

    #: ``(port, seconds)``: a stream that the server ends after it opened is opened again after that
    #: wait, with its last event id, as a browser's EventSource does (``reconnects`` counts them, at
    #: most ``MAX_RECONNECTS``); ``None``: it stays closed.
    reconnect = None
    MAX_RECONNECTS = 5

    def __init__(self, request):
        loop = asyncio.get_running_loop()
        self.request = request
        self.opened = loop.create_future()
        self.closed = loop.create_future()
        self.transport = None
        self.head = b""
        self.status = None
        self.in_body = False
        self.raw = bytearray()
        self.chunk_left = None
        self.text = ""
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.lost_because = self.last_words = None  # how the connection ended, and what came last
        self.last_id, self.reconnects, self.closing = None, 0, False

    def reset_parsing(self):
        """A new connection's answer is read from its start."""
        self.head, self.status, self.in_body, self.raw, self.chunk_left = b"", None, False, bytearray(), None
        self.text, self.decoder = "", codecs.getincrementaldecoder("utf-8")()

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data):
        now = time.time()
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end], self.head[end + 4:]
            self.in_body = True
            try:
                self.status = int(head.split(b" ", 2)[1])
            except (IndexError, ValueError):
                self.status = -1
            if self.status != 200:
                if not self.opened.done():
                    self.opened.set_exception(RuntimeError(f"status {self.status}: {data[:200]!r}"))
                self.transport.close()
                return
        self.body_received(data, now)

    def payload(self, data):
        """The body bytes of ``data`` (HTTP/1.1 chunked framing removed), as far as whole chunks go."""
        self.raw += data
        out = bytearray()
        while True:
            if self.chunk_left is None:
                nl = self.raw.find(b"\r\n")
                if nl < 0:
                    return bytes(out)
                size = int(bytes(self.raw[:nl]).split(b";")[0], 16)
                del self.raw[:nl + 2]
                if size == 0:
                    return bytes(out)
                self.chunk_left = size
            if len(self.raw) < self.chunk_left + 2:
                return bytes(out)
            out += self.raw[:self.chunk_left]
            del self.raw[:self.chunk_left + 2]
            self.chunk_left = None

    def body_received(self, data, now):
        payload = self.payload(data)
        if payload:
            self.text += self.decoder.decode(payload)  # a character may straddle two reads
            while "\n\n" in self.text:
                block, self.text = self.text.split("\n\n", 1)
                event, lines, event_id = "message", [], None
                for line in block.split("\n"):
                    field, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if field == "event":
                        event = value
                    elif field == "data":
                        lines.append(value)
                    elif field == "id":
                        event_id = self.last_id = value
                if event == "stream-open" and not self.opened.done():
                    self.opened.set_result(now)
                if lines or event != "message":
                    self.on_event(now, event, "\n".join(lines), event_id)

    def on_event(self, now, event, data, event_id):
        """One SSE event; subclasses keep what they need."""

    def connection_lost(self, exc):
        self.lost_because = repr(exc) if exc is not None else "closed by the server"
        self.last_words = self.text[-300:] + bytes(self.raw[-300:]).decode("utf-8", "replace")
        opened = self.opened.done() and not self.opened.cancelled() and self.opened.exception() is None
        if self.reconnect and opened and not self.closing and self.reconnects < self.MAX_RECONNECTS:
            self.reconnects += 1
            asyncio.get_running_loop().create_task(self.again())
            return
        if not self.opened.done():
            self.opened.set_exception(RuntimeError(f"closed before stream-open (status {self.status})"))
        if not self.closed.done():
            self.closed.set_result(time.time())

    async def again(self):
        """Open the stream again after the wait, with ``Last-Event-ID``; closed for good if it cannot."""
        port, wait = self.reconnect
        await asyncio.sleep(wait)
        if not self.closing:
            self.reset_parsing()
            if self.last_id is not None:
                base = self.request.split(b"\r\nLast-Event-ID: ", 1)[0].removesuffix(b"\r\n\r\n")
                self.request = base + f"\r\nLast-Event-ID: {self.last_id}\r\n\r\n".encode()
            try:
                await asyncio.get_running_loop().create_connection(lambda: self, "127.0.0.1", port)
                return
            except OSError as error:
                self.lost_because = repr(error)
        if not self.closed.done():
            self.closed.set_result(time.time())

    def close(self):
        self.closing = True
        if self.transport is not None:
            self.transport.close()


def stream_request(port, url, cookie_name, cookie):
    return (f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie_name}={cookie}\r\n"
            "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n").encode()


#: The htmx SSE extension's waits before it opens a failed stream again (seconds): 0.5 s doubled, at most 64 s.
HTMX_RETRY_DELAYS = tuple(min(0.5 * 2 ** n, 64.0) for n in range(9))


async def open_streams(targets, concurrency=32, timeout=60, retry=False, stats=None):
    """Connect each ``(port, protocol factory)``, ``concurrency`` at a time, and wait for its stream-open.

    With ``retry``, a stream that fails (an error status, a refused connection) is opened again
    as the htmx SSE extension does, after ``HTMX_RETRY_DELAYS``; ``stats["retries"]`` counts them.
    Returns the clients (in the order of ``targets``, failures left out) and the failures."""
    semaphore = asyncio.Semaphore(concurrency)
    loop = asyncio.get_running_loop()
    failures = []
    stats = {} if stats is None else stats
    stats.setdefault("retries", 0)

    async def attempt(port, factory):
        async with semaphore:
            client = None
            try:
                _, client = await loop.create_connection(factory, "127.0.0.1", port)
                await asyncio.wait_for(asyncio.shield(client.opened), timeout)
                return client, None
            except Exception as error:
                if client is not None:
                    client.close()
                return None, error

    async def one(port, factory):
        for delay in (*(HTMX_RETRY_DELAYS if retry else ()), None):
            client, error = await attempt(port, factory)
            if client is not None:
                return client
            if delay is None:
                break
            stats["retries"] += 1
            await asyncio.sleep(delay)
        failures.append(repr(error)[:200])
        return None

    clients = await asyncio.gather(*(one(port, factory) for port, factory in targets))
    return [c for c in clients if c is not None], failures


async def close_streams(clients, timeout=10):
    for client in clients:
        client.close()
    if clients:
        await asyncio.wait([c.closed for c in clients], timeout=timeout)


LIST = re.compile(r'<ul id="async-downloads-list"[^>]*>(.*?)</ul>', re.S)
ROW = re.compile(r'<li id="download-([^"]+)"([^>]*)>(.*?)</li>', re.S)
STATE = re.compile(r"\basync-download--(\w+)")
VALUENOW = re.compile(r'aria-valuenow="(\d+)"')
LINK = re.compile(r'<a class="async-download__link" href="([^"]+)"')
READY = re.compile(r'<div id="async-downloads-status"[^>]*>(.*?) is ready to download\.</div>', re.S)


def parse_row(attributes, body):
    state, link, valuenow = STATE.search(attributes), LINK.search(body), VALUENOW.search(body)
    return {"state": state.group(1) if state else None, "link": link.group(1) if link else None,
            "percentage": int(valuenow.group(1)) if valuenow else None}


def event_number(event_id):
    """The number in django-eventstream's ``channel:number`` id (one channel per stream here)."""
    try:
        return int(event_id.rsplit(":", 1)[1])
    except (AttributeError, IndexError, ValueError):
        return None


def start_id(url):
    """The event number a stream URL (``?lastEventId=``, as a page renders it) starts after."""
    return event_number(parse_qs(urlsplit(url).query).get("lastEventId", [""])[0]) or 0


class Watcher(StreamClient):
    """One EventSource of one user, with the download list htmx would show."""

    def __init__(self, request, user, web):
        super().__init__(request)
        self.user = user
        self.web = web
        self.rows = {}  # download key -> parse_row(), in list order
        self.ids = []  # event numbers of the `downloads` events, as received
        self.per_key = collections.Counter()  # download key -> messages carrying its row
        self.created_seen = set()
        self.arrivals = []  # (what, download key or name, percentage, time.time())
        self.dropped_rows = 0  # single rows whose id was not in the list (htmx finds no target)
        self.messages = 0
        self.lost_connection = None
        self.closing = False

    def on_event(self, now, event, data, event_id):
        if event != "downloads":
            return
        self.messages += 1
        self.ids.append(event_number(event_id))
        rows = [(m.group(1), parse_row(m.group(2), m.group(3))) for m in ROW.finditer(data)]
        for key, _ in rows:
            self.per_key[key] += 1
        listed = LIST.search(data)
        if listed:
            self.rows = {m.group(1): parse_row(m.group(2), m.group(3)) for m in ROW.finditer(listed.group(1))}
            for key in self.rows.keys() - self.created_seen:
                self.created_seen.add(key)
                self.arrivals.append(("created", key, None, now))
            ready = READY.search(data)
            if ready:
                self.arrivals.append(("completed", ready.group(1).strip(), None, now))
            return
        for key, row in rows:
            self.arrivals.append(("updated", key, row["percentage"], now))
            if key in self.rows:
                self.rows[key] = row
            else:
                self.dropped_rows += 1

    def connection_lost(self, exc):
        if self.opened.done() and not self.closing:
            self.lost_connection = time.time()
        super().connection_lost(exc)

    def close(self):
        self.closing = True
        super().close()

    def shows_final(self, keys):
        return len(self.rows) == len(keys) and all(
            key in self.rows and self.rows[key]["state"] == "complete" for key in keys)

    def summary(self, keys):
        return {"user": self.user, "web": self.web, "messages": self.messages, "ids": self.ids, "rows": self.rows,
                "per_key": dict(self.per_key), "dropped_rows": self.dropped_rows, "arrivals": self.arrivals,
                "lost_connection": self.lost_connection, "final": self.shows_final(keys)}


# --------------------------------------------------------------------------- the run


def run(scenario, env, web_app, factory=False, sample=None):
    """Run ``scenario`` with the site's ``env`` (its settings) and ASGI ``web_app``; return the result.

    ``sample(pids)``, if given, is called just before the first export starts and again once
    every client shows every final state; its answers are ``result["samples"]``."""
    return asyncio.run(_run(scenario, env, web_app, factory, sample or (lambda pids: None)))


async def _run(scenario, env, web_app, factory, sample):
    import redis

    run_id = uuid.uuid4().hex[:8]
    site = JsonLines([sys.executable, "-m", "devtools.load", "--site"], env, cwd=ROOT)
    webs, workers, watchers, broker = [], [], [], None

    async def call(op, **params):
        return await asyncio.to_thread(site.call, {"op": op, **params})

    try:
        setup = await call("setup", run=run_id, users=scenario.users, clients_per_user=scenario.clients_per_user,
                           migrate=scenario.migrate)
        broker = redis.Redis.from_url(setup["broker_url"])
        # PYTHONWARNINGS: no warning about running as root (Celery says so to every root worker).
        worker_env = {**env, "ADLOAD_READY_KEY": setup["ready_key"], "PYTHONWARNINGS": "ignore"}
        for index in range(scenario.workers):
            workers.append(start_celery_worker("devtools.load_tasks", worker_env, "--prefetch-multiplier", "1",
                                               "-Q", setup["queue"], "-n", f"load{index}-{run_id}@%h", cwd=ROOT,
                                               stdout=subprocess.DEVNULL))
        for _ in range(scenario.web_processes):
            webs.append(start_uvicorn(web_app, env, factory=factory, wait=False, cwd=ROOT))
        ports = [int(url.rsplit(":", 1)[1]) for _, url in webs]
        for (process, _), port in zip(webs, ports, strict=True):
            await asyncio.to_thread(wait_for_port, port, process, 60)
        await asyncio.to_thread(_wait_ready, broker, setup["ready_key"], workers, 90)

        t_connect = time.monotonic()
        targets = []
        for u, user in enumerate(setup["users"]):
            for c, cookie in enumerate(user["cookies"]):
                web = c % len(ports)
                request = stream_request(ports[web], user["url"], setup["cookie_name"], cookie)
                targets.append((ports[web], lambda r=request, u=u, w=web: Watcher(r, u, w)))
        watchers, failures = await open_streams(targets)
        connect_seconds = time.monotonic() - t_connect
        pids = {"site": site.pid, "driver": os.getpid(), **{f"web{i}": p.pid for i, (p, _) in enumerate(webs)},
                **{f"worker{i}": p.pid for i, p in enumerate(workers)}}
        sample_before = sample(pids)

        pks = [user["pk"] for user in setup["users"]]
        enqueue = await call("enqueue", pks=pks, exports_per_user=scenario.exports_per_user, rows=scenario.rows,
                             pause=scenario.pause, report_key=setup["report_key"])
        keys_by_user = collections.defaultdict(list)
        for download in enqueue["downloads"]:
            keys_by_user[pks.index(download["pk"])].append(download["key"])
        all_final_at = None
        while time.time() < enqueue["started"] + scenario.timeout:
            if all(w.shows_final(keys_by_user[w.user]) for w in watchers):
                all_final_at = time.time()
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(scenario.grace)
        samples = [sample_before, sample(pids)]
        collected = await call("collect", pks=pks, report_key=setup["report_key"], ready_key=setup["ready_key"])
        clients = [w.summary(keys_by_user[w.user]) for w in watchers]
    finally:
        await close_streams(watchers)
        for process, _ in webs:
            stop(process)
        for process in workers:
            stop(process)
        site.close()
        if broker is not None:
            broker.close()
    return {
        "scenario": dataclasses.asdict(scenario),
        "run": run_id,
        "connect_seconds": round(connect_seconds, 2),
        "connect_failures": failures,
        "started": enqueue["started"],
        "downloads": enqueue["downloads"],
        "published": enqueue["published"] + collected["published"],
        "records": collected["records"],
        "last_ids": collected["last_ids"],
        "start_ids": {str(u["pk"]): start_id(u["url"]) for u in setup["users"]},
        "pks": pks,
        "all_final_at": all_final_at,
        "clients": clients,
        "samples": samples,
    }


def _wait_ready(broker, key, workers, timeout):
    deadline = time.monotonic() + timeout
    ready = 0
    while ready < len(workers):
        for process in workers:
            if process.poll() is not None:
                raise RuntimeError(f"A Celery worker exited with {process.returncode} before it was ready.")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{ready} of {len(workers)} Celery workers were ready after {timeout} s.")
        if broker.blpop([key], 1) is not None:
            ready += 1


# --------------------------------------------------------------------------- the checks


def findings(result):
    """Lost, duplicated and leaked, counted over every client (see the module's docstring)."""
    pks = result["pks"]
    owner = {d["key"]: d["pk"] for d in result["downloads"]}
    out = {"clients": len(result["clients"]), "connect_failures": len(result["connect_failures"]),
           "lost_final_states": 0, "lost_events": 0, "duplicated_events": 0, "leaked_messages": 0,
           "leaked_rows": 0, "lost_connections": 0, "wrong_final_records": 0, "examples": []}

    def example(text):
        if len(out["examples"]) < 10:
            out["examples"].append(text)

    for pk in pks:
        for record in result["records"][str(pk)]:
            if record["user_id"] != pk or record["state"] != "complete" or not record["url"]:
                out["wrong_final_records"] += 1
                example(f"record in the cache: {record}")
    for index, client in enumerate(result["clients"]):
        pk = pks[client["user"]]
        records = {r["key"]: r for r in result["records"][str(pk)]}
        shown = client["rows"]
        for key, record in records.items():
            row = shown.get(key)
            if row is None or row["state"] != record["state"] or row["link"] != record["url"]:
                out["lost_final_states"] += 1
                example(f"client {index} (user {pk}) shows {key}: {row}, the cache: {record['state']}")
        for key in shown.keys() - records.keys():
            out["lost_final_states"] += 1
            example(f"client {index} (user {pk}) shows {key}, which the cache does not have")
        ids = [i for i in client["ids"] if i is not None]
        expected = set(range(result["start_ids"][str(pk)] + 1, result["last_ids"][str(pk)] + 1))
        missing = expected - set(ids)
        if missing:
            out["lost_events"] += len(missing)
            example(f"client {index} (user {pk}) never received events {sorted(missing)[:5]}")
        repeats = len(ids) - len(set(ids))
        if repeats or len(ids) != len(client["ids"]):
            out["duplicated_events"] += repeats
            example(f"client {index} (user {pk}) received {repeats} event id(s) twice")
        foreign = {key: n for key, n in client["per_key"].items() if owner.get(key) != pk}
        if foreign:
            out["leaked_rows"] += len(foreign)
            out["leaked_messages"] += sum(foreign.values())
            example(f"client {index} (user {pk}) received rows of {sorted(foreign)[:3]}")
        if client["lost_connection"]:
            out["lost_connections"] += 1
    return out


def problems(result):
    """What is wrong, as readable lines (empty when every check holds)."""
    f = findings(result)
    lines = [f"{name}: {f[name]}" for name in ("connect_failures", "lost_final_states", "lost_events",
                                                "duplicated_events", "leaked_rows", "lost_connections",
                                                "wrong_final_records") if f[name]]
    scenario = result["scenario"]
    if len(result["downloads"]) != scenario["users"] * scenario["exports_per_user"]:
        lines.append(f"{len(result['downloads'])} exports started")
    if len(result["clients"]) != scenario["users"] * scenario["clients_per_user"]:
        lines.append(f"{len(result['clients'])} clients connected")
    return lines + (f["examples"] if lines else [])


if __name__ == "__main__" and sys.argv[1:] == ["--site"]:
    site_main()

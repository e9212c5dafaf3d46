"""The load scenario of issue 6: exports on several workers while hundreds of SSE clients watch.

    from bench.load import Scenario, run
    result = run(Scenario(), env, web_app)      # every figure and every finding, JSON-able
    assert not problems(result)

    .venv/bin/python -m bench.load              # the benchmark's run (bench/load_settings.py), prints JSON

What runs, all real processes on this machine's clock:

- a *site* process (``python -m bench.load --site``, Django with the given settings), spoken
  to in JSON lines: it creates the users and their sessions, starts the exports the way a
  view does (``init_generic_csv_download``) and at the end reads the records from the cache;
- ``web_processes`` uvicorn processes serving the site;
- ``workers`` Celery worker processes (``--pool solo`` each), running ``bench.load_tasks.export``:
  ``rows`` rows, one every ``pause`` seconds, progress through ``update_percentage``, the file
  saved with ``save_download``;
- this process holds every client: ``users`` users with ``clients_per_user`` streams each, each
  stream with a session cookie of its own, a user's streams spread evenly over the web
  processes (client ``i`` of a user goes to web process ``i % web_processes``), connected
  with ``?lastEventId=`` as a page renders it, before the first export starts.

Each client applies what it receives as htmx would: a message holding the list
(``#async-downloads-list``, swapped out of band) replaces the whole list; a message made of
one row replaces the row with that id, and is dropped if the list has no such row (htmx
finds no target). At the end, each client's list must equal the final record in the cache
of each of its user's downloads: every download listed, complete, with its link.

What the findings mean:

- *lost*: a download whose final state a client does not show; and, by event id, an event of
  the user's channel (stored by the event storage between the id the client connected with
  and the channel's last id) that the client never received.
- *duplicated*: one event id received twice on one client connection. Each event is sent
  once and carries the id the storage gave it, so a repeat is a redelivery (a replay that
  overlaps live delivery, say), not a second change. Different events with the same
  content (a list rendered twice) are not duplicates.
- *leaked*: a message, received by a client, carrying a row whose download key belongs to
  another user.

Latency: each process that publishes (the site for ``created``, the workers for progress and
completion) notes ``time.time()`` when the publish step begins (``download_changed_signal``,
sent after the record is written and before the message is rendered and sent); each client
notes when the message's bytes arrive. A progress row is matched by its download key and
percentage, a completion by the download's name in the announcement ("… is ready to
download."), a creation by the first list that holds the download.
"""

import asyncio
import collections
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
import uuid

from devtools.processes import start_uvicorn, stop, wait_for_port
from bench.live import (
    StreamClient,
    others_cpu,
    percentile,
    raise_nofile,
    safe_cpu_seconds,
    snapshot,
    stream_request,
)

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
REPLY = "@load "


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
    drop_one_message: bool = False  # a client that ignores one message: the checks must see it

    @property
    def clients(self):
        return self.users * self.clients_per_user

    @property
    def exports(self):
        return self.users * self.exports_per_user


# --------------------------------------------------------------------------- the site process


def site_main():
    """JSON commands on stdin, one answer each on stdout (lines starting with ``REPLY``)."""
    import django

    django.setup()
    ops = {"setup": site_setup, "enqueue": site_enqueue, "collect": site_collect}
    for line in sys.stdin:
        command = json.loads(line)
        answer = ops[command.pop("op")](**command)
        sys.stdout.write(REPLY + json.dumps(answer) + "\n")
        sys.stdout.flush()


def site_setup(run, users, clients_per_user, migrate):
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.core.management import call_command
    from django.db import transaction

    from async_downloads import partials
    from bench import load_tasks

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
    return {
        "users": out,
        "cookie_name": settings.SESSION_COOKIE_NAME,
        "queue": load_tasks.queue(),
        "broker_url": settings.CELERY_BROKER_URL,
        "report_key": f"{load_tasks.queue()}:{run}:published",
        "ready_key": f"{load_tasks.queue()}:{run}:ready",
    }


def site_enqueue(pks, exports_per_user, rows, pause, report_key):
    """Start the exports as a view does, one per user in turn; note when the first began."""
    from async_downloads.shortcuts import init_generic_csv_download
    from bench import load_tasks

    load_tasks.take_notes()
    started = time.time()
    downloads = []
    for n in range(exports_per_user):
        for index, pk in enumerate(pks):
            _, key = init_generic_csv_download(load_tasks.export, pk, f"Export {index}-{n}", rows=rows, pause=pause,
                                               report=report_key)
            downloads.append({"key": key, "pk": pk})
    return {"started": started, "enqueued": time.time(), "downloads": downloads, "published": load_tasks.take_notes()}


def site_collect(pks, report_key, ready_key):
    """The final records, each channel's last event id, and the workers' notes (removed from Redis)."""
    from django_eventstream.utils import get_storage

    from async_downloads import cache, sse
    from bench import load_tasks

    storage = get_storage()
    client = load_tasks.broker()
    published = [entry for batch in client.lrange(report_key, 0, -1) for entry in json.loads(batch)]
    client.delete(report_key, ready_key)
    return {
        "records": {
            str(pk): [{key: record[key] for key in ("key", "state", "url", "name", "user_id")}
                      for record in cache.get_downloads(pk)]
            for pk in pks
        },
        "last_ids": {str(pk): storage.get_current_id(sse.channel_for(pk)) for pk in pks},
        "published": published,
    }


class Site:
    """The site process, from the driver."""

    def __init__(self, env):
        self.process = subprocess.Popen([sys.executable, "-m", "bench.load", "--site"], env=env, cwd=ROOT,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def call(self, op, **params):
        self.process.stdin.write(json.dumps({"op": op, **params}) + "\n")
        self.process.stdin.flush()
        for line in self.process.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY):])
        raise RuntimeError(f"The site process ended (exit {self.process.wait()}) during {op!r}.")

    async def acall(self, op, **params):
        return await asyncio.to_thread(self.call, op, **params)


# --------------------------------------------------------------------------- the clients

LIST = re.compile(r'<ul id="async-downloads-list"[^>]*>(.*?)</ul>', re.S)
ROW = re.compile(r'<li id="download-([^"]+)"([^>]*)>(.*?)</li>', re.S)
STATE = re.compile(r"\basync-download--(\w+)")
VALUENOW = re.compile(r'aria-valuenow="(\d+)"')
LINK = re.compile(r'<a class="async-download__link" href="([^"]+)"')
READY = re.compile(r'<div id="async-downloads-status"[^>]*>(.*?) is ready to download\.</div>', re.S)


def parse_row(attributes, body):
    state, link, valuenow = STATE.search(attributes), LINK.search(body), VALUENOW.search(body)
    return {
        "state": state.group(1) if state else None,
        "link": link.group(1) if link else None,
        "percentage": int(valuenow.group(1)) if valuenow else None,
    }


def event_number(event_id):
    """The number in django-eventstream's ``channel:number`` id (one channel per stream here)."""
    try:
        return int(event_id.rsplit(":", 1)[1])
    except (AttributeError, IndexError, ValueError):
        return None


def start_id(url):
    """The event number a stream URL (``?lastEventId=``, as a page renders it) starts after."""
    from urllib.parse import parse_qs, urlsplit

    return event_number(parse_qs(urlsplit(url).query).get("lastEventId", [""])[0]) or 0


class Watcher(StreamClient):
    """One EventSource of one user, with the download list htmx would show."""

    def __init__(self, request, user, web, drop_one=False):
        super().__init__(request, parse=True)
        self.user = user
        self.web = web
        self.drop_one = drop_one
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
        if self.drop_one:  # as if it had never arrived
            self.drop_one = False
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
            key in self.rows and self.rows[key]["state"] == "complete" for key in keys
        )


async def open_watchers(setup, web_ports, scenario, concurrency=32):
    semaphore = asyncio.Semaphore(concurrency)
    loop = asyncio.get_running_loop()
    failures = []

    async def one(user_index, client_index):
        user = setup["users"][user_index]
        web = client_index % len(web_ports)
        port = web_ports[web]
        request = stream_request(port, user["url"], setup["cookie_name"], user["cookies"][client_index])
        drop = scenario.drop_one_message and user_index == 0 and client_index == 0
        async with semaphore:
            try:
                _, watcher = await loop.create_connection(lambda: Watcher(request, user_index, web, drop),
                                                          "127.0.0.1", port)
                await asyncio.wait_for(asyncio.shield(watcher.opened), 60)
                return watcher
            except Exception as error:
                failures.append(repr(error)[:200])
                return None

    watchers = await asyncio.gather(*(
        one(u, c) for u in range(scenario.users) for c in range(scenario.clients_per_user)
    ))
    return [w for w in watchers if w is not None], failures


async def close_watchers(watchers, timeout=10):
    for watcher in watchers:
        watcher.close()
    if watchers:
        await asyncio.wait([w.closed for w in watchers], timeout=timeout)


# --------------------------------------------------------------------------- the run


def worker_command(queue, name):
    return [sys.executable, "-m", "celery", "-A", "bench.load_tasks", "worker", "--pool", "solo",
            "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--prefetch-multiplier", "1", "-Q", queue, "-n", name]


def run(scenario, env, web_app, factory=False):
    """Run ``scenario`` with the site's ``env`` (its settings) and ASGI ``web_app``; return the result."""
    return asyncio.run(_run(scenario, env, web_app, factory))


async def _run(scenario, env, web_app, factory):
    import redis

    raise_nofile()
    run_id = uuid.uuid4().hex[:8]
    loadavg_before = list(os.getloadavg())
    site = Site(env)
    webs, workers, watchers, broker = [], [], [], None
    try:
        setup = await site.acall("setup", run=run_id, users=scenario.users,
                                 clients_per_user=scenario.clients_per_user, migrate=scenario.migrate)
        broker = redis.Redis.from_url(setup["broker_url"])
        # PYTHONWARNINGS: no warning about running as root (Celery says so to every root worker).
        worker_env = {**env, "ADLOAD_READY_KEY": setup["ready_key"], "PYTHONWARNINGS": "ignore"}
        for index in range(scenario.workers):
            workers.append(subprocess.Popen(worker_command(setup["queue"], f"load{index}-{run_id}@%h"),
                                            env=worker_env, cwd=ROOT, stdout=subprocess.DEVNULL))
        for _ in range(scenario.web_processes):
            webs.append(start_uvicorn(web_app, env, factory=factory, wait=False, cwd=ROOT))
        for process, url in webs:
            await asyncio.to_thread(wait_for_port, int(url.rsplit(":", 1)[1]), process, 60)
        await asyncio.to_thread(_wait_ready, broker, setup["ready_key"], workers, 90)
        web_ports = [int(url.rsplit(":", 1)[1]) for _, url in webs]
        t_connect = time.monotonic()
        watchers, failures = await open_watchers(setup, web_ports, scenario)
        connect_seconds = time.monotonic() - t_connect
        pids = {"site": site.process.pid, "driver": os.getpid(),
                **{f"web{i}": p.pid for i, (p, _) in enumerate(webs)},
                **{f"worker{i}": p.pid for i, p in enumerate(workers)}}
        cpu_before = {name: safe_cpu_seconds(pid) for name, pid in pids.items()}
        noise_before = snapshot(list(pids.values()))

        pks = [user["pk"] for user in setup["users"]]
        enqueue = await site.acall("enqueue", pks=pks, exports_per_user=scenario.exports_per_user,
                                   rows=scenario.rows, pause=scenario.pause, report_key=setup["report_key"])
        keys_by_user = collections.defaultdict(list)
        for download in enqueue["downloads"]:
            keys_by_user[pks.index(download["pk"])].append(download["key"])
        deadline = enqueue["started"] + scenario.timeout
        all_final_at = None
        while time.time() < deadline:
            if all(w.shows_final(keys_by_user[w.user]) for w in watchers):
                all_final_at = time.time()
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(scenario.grace)
        cpu_after = {name: safe_cpu_seconds(pid) for name, pid in pids.items()}
        noise = others_cpu(noise_before, snapshot(list(pids.values())))
        collected = await site.acall("collect", pks=pks, report_key=setup["report_key"],
                                     ready_key=setup["ready_key"])
        clients = [_client_summary(w, setup, keys_by_user[w.user]) for w in watchers]
        await close_watchers(watchers)
        watchers = []
    finally:
        await close_watchers(watchers)
        for process, _ in webs:
            stop(process)
        for process in workers:
            stop(process)
        site.process.stdin.close()
        stop(site.process)
        if broker is not None:
            broker.close()
    return {
        "scenario": dataclasses.asdict(scenario),
        "run": run_id,
        "connect_seconds": round(connect_seconds, 2),
        "connect_failures": failures,
        "enqueue": {k: enqueue[k] for k in ("started", "enqueued")},
        "downloads": enqueue["downloads"],
        "published": enqueue["published"] + collected["published"],
        "records": collected["records"],
        "last_ids": collected["last_ids"],
        "start_ids": {str(u["pk"]): start_id(u["url"]) for u in setup["users"]},
        "pks": pks,
        "all_final_at": all_final_at,
        "clients": clients,
        "cpu_seconds": {name: round(cpu_after[name] - cpu_before[name], 2)
                        for name in pids if cpu_before[name] is not None and cpu_after[name] is not None},
        "others_cpus": noise,
        "loadavg_before": loadavg_before,
        "loadavg_after": list(os.getloadavg()),
    }


def _wait_ready(broker, key, workers, timeout):
    deadline = time.monotonic() + timeout
    ready = []
    while len(ready) < len(workers):
        for process in workers:
            if process.poll() is not None:
                raise RuntimeError(f"A Celery worker exited with {process.returncode} before it was ready.")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(ready)} of {len(workers)} Celery workers were ready after {timeout} s.")
        got = broker.blpop([key], 1)
        if got is not None:
            ready.append(got[1])


def _client_summary(watcher, setup, keys):
    return {
        "user": watcher.user,
        "web": watcher.web,
        "messages": watcher.messages,
        "ids": watcher.ids,
        "rows": watcher.rows,
        "per_key": dict(watcher.per_key),
        "dropped_rows": watcher.dropped_rows,
        "arrivals": watcher.arrivals,
        "lost_connection": watcher.lost_connection,
        "final": watcher.shows_final(keys),
    }


# --------------------------------------------------------------------------- findings and figures


def findings(result):
    """Lost, duplicated and leaked, counted over every client (see the module's docstring)."""
    pks = result["pks"]
    owner = {d["key"]: d["pk"] for d in result["downloads"]}
    out = {"clients": len(result["clients"]), "connect_failures": len(result["connect_failures"]),
           "lost_final_states": 0, "lost_events": 0, "duplicated_events": 0, "leaked_messages": 0,
           "leaked_rows": 0, "lost_connections": 0, "wrong_final_records": 0, "examples": []}
    for pk in pks:
        for record in result["records"][str(pk)]:
            if record["user_id"] != pk or record["state"] != "complete" or not record["url"]:
                out["wrong_final_records"] += 1
                out["examples"].append(f"record in the cache: {record}")
    for index, client in enumerate(result["clients"]):
        pk = pks[client["user"]]
        records = {r["key"]: r for r in result["records"][str(pk)]}
        shown = client["rows"]
        for key, record in records.items():
            row = shown.get(key)
            if row is None or row["state"] != record["state"] or row["link"] != record["url"]:
                out["lost_final_states"] += 1
                _example(out, f"client {index} (user {pk}) shows {key}: {row}, the cache: {record['state']}")
        for key in shown.keys() - records.keys():
            out["lost_final_states"] += 1
            _example(out, f"client {index} (user {pk}) shows {key}, which the cache does not have")
        ids = [i for i in client["ids"] if i is not None]
        expected = set(range(result["start_ids"][str(pk)] + 1, result["last_ids"][str(pk)] + 1))
        missing = expected - set(ids)
        if missing:
            out["lost_events"] += len(missing)
            _example(out, f"client {index} (user {pk}) never received events {sorted(missing)[:5]}")
        repeats = len(ids) - len(set(ids))
        if repeats or len(ids) != len(client["ids"]):
            out["duplicated_events"] += repeats
            _example(out, f"client {index} (user {pk}) received {repeats} event id(s) twice")
        foreign = {key: n for key, n in client["per_key"].items() if owner.get(key) != pk}
        if foreign:
            out["leaked_rows"] += len(foreign)
            out["leaked_messages"] += sum(foreign.values())
            _example(out, f"client {index} (user {pk}) received rows of {sorted(foreign)[:3]}")
        if client["lost_connection"]:
            out["lost_connections"] += 1
    return out


def _example(out, text):
    if len(out["examples"]) < 10:
        out["examples"].append(text)


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


def figures(result):
    """Exports per minute, events delivered per second, latency from publish to client."""
    published = result["published"]
    completed = [entry[0] for entry in published if entry[1] == "completed"]
    start = result["enqueue"]["started"]
    exports_seconds = (max(completed) - start) if completed else None
    name_to_key = {entry[6]: entry[2] for entry in published if entry[1] == "created"}
    at = {}
    for t, kind, key, state, percentage, *_ in published:
        if kind == "created":
            at[("created", key, None)] = t
        elif kind == "updated":
            at[("updated", key, percentage)] = t
        elif kind == "completed":
            at[("completed", key, None)] = t
    latencies = collections.defaultdict(list)
    unmatched, last_arrival, delivered = 0, start, 0
    for client in result["clients"]:
        delivered += client["messages"]
        for what, ident, percentage, arrived in client["arrivals"]:
            key = name_to_key.get(ident) if what == "completed" else ident
            sent = at.get((what, key, percentage))
            last_arrival = max(last_arrival, arrived)
            if sent is None:
                unmatched += 1
            else:
                latencies[what].append((arrived - sent) * 1000)
    every = [x for values in latencies.values() for x in values]
    delivery_seconds = last_arrival - start
    events = sum(result["last_ids"][str(pk)] - result["start_ids"][str(pk)] for pk in result["pks"])
    return {
        "exports": len(completed),
        "exports_seconds": round(exports_seconds, 2) if exports_seconds else None,
        "exports_per_minute": round(len(completed) / exports_seconds * 60, 1) if exports_seconds else None,
        "events_published": events,
        "publish_notes": len(published),
        "messages_delivered": delivered,
        "delivery_seconds": round(delivery_seconds, 2),
        "events_delivered_per_second": round(delivered / delivery_seconds, 1) if delivery_seconds > 0 else None,
        "latency_ms": _summary(every),
        "latency_ms_by_kind": {kind: _summary(values) for kind, values in sorted(latencies.items())},
        "latency_unmatched": unmatched,
        "all_final_seconds": round(result["all_final_at"] - start, 2) if result["all_final_at"] else None,
        "cpu_seconds": result["cpu_seconds"],
        "others_cpus": result["others_cpus"],
        "loadavg_before": result["loadavg_before"],
        "loadavg_after": result["loadavg_after"],
        "connect_seconds": result["connect_seconds"],
    }


def _summary(values):
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": round(percentile(values, 50), 2), "p90": round(percentile(values, 90), 2),
            "p99": round(percentile(values, 99), 2), "max": round(max(values), 2)}


# --------------------------------------------------------------------------- the benchmark's run


def bench_run(scenario=None):
    """The scenario on bench/load_settings.py (Redis db 12, prefix adbench-load); its keys removed after."""
    import shutil
    import tempfile

    from devtools import redis_server

    os.environ["REDIS_URL"] = redis_server.ensure()
    work_dir = tempfile.mkdtemp(prefix="adbench-load-")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "bench.load_settings", "ADBENCH_LOAD_DIR": work_dir,
           "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    try:
        result = run(scenario or Scenario(migrate=True), env, "django.core.asgi:get_asgi_application",
                     factory=True)
    finally:
        remove_keys(os.environ["REDIS_URL"])
        shutil.rmtree(work_dir, ignore_errors=True)
    return {"findings": findings(result), "problems": problems(result), "figures": figures(result),
            "scenario": result["scenario"], "connect_failures": result["connect_failures"][:5]}


def remove_keys(redis_url, db=12, prefix="adbench-load"):
    import redis

    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + f"/{db}")
    removed = 0
    for pattern in (f"{prefix}*", f"event:{prefix}-*", f"event_counter:{prefix}-*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            removed += client.delete(*keys)
    client.close()
    return removed


def markdown(r):
    f, s, x = r["figures"], r["scenario"], r["findings"]
    lat = f["latency_ms"]
    rows = [
        ["exports per minute", f"**{f['exports_per_minute']}** ({f['exports']} exports in {f['exports_seconds']} s, "
                               "first enqueue to last completion)"],
        ["events delivered per second", f"**{f['events_delivered_per_second']:,}** ({f['messages_delivered']:,} "
                                        f"messages to {x['clients']} clients in {f['delivery_seconds']} s; "
                                        f"{f['events_published']:,} events published)"],
        ["latency, publish → client, p50 / p99", f"**{lat.get('p50')} / {lat.get('p99')} ms** "
                                                 f"(p90 {lat.get('p90')}, max {lat.get('max')}; {lat['n']:,} deliveries)"],
    ]
    for kind, values in f["latency_ms_by_kind"].items():
        rows.append([f"… {kind}", f"p50 {values.get('p50')} / p99 {values.get('p99')} ms ({values['n']:,})"])
    rows += [
        ["lost (final states not shown / events not received)", f"{x['lost_final_states']} / {x['lost_events']}"],
        ["duplicated (event ids received twice on one connection)", x["duplicated_events"]],
        ["leaked (messages with another user's row)", x["leaked_messages"]],
        ["connections failed / dropped", f"{x['connect_failures']} / {x['lost_connections']}"],
        ["every client showed every final state", f"{f['all_final_seconds']} s after the first enqueue"],
        ["CPU seconds over the run", ", ".join(f"{k} {v}" for k, v in f["cpu_seconds"].items())],
        ["machine", f"{os.cpu_count()} CPUs; load average {f['loadavg_before'][0]:.2f} before, "
                    f"{f['loadavg_after'][0]:.2f} after; other programs used {f['others_cpus']} CPUs"],
    ]
    table = "\n".join(["| figure | measured |", "| --- | --- |"] + [f"| {a} | {b} |" for a, b in rows])
    return "\n".join([
        table,
        "",
        f"{s['workers']} Celery worker processes (`--pool solo` each) run {s['users'] * s['exports_per_user']} "
        f"exports ({s['exports_per_user']} per user, each {s['rows']} rows, one every {s['pause']} s, progress through "
        f"`update_percentage`, the file saved with `save_download`), started through `init_generic_csv_download`, "
        f"while {s['users'] * s['clients_per_user']} SSE clients ({s['clients_per_user']} per user, each with a "
        f"session of its own, a user's clients spread evenly over {s['web_processes']} uvicorn processes) watch. "
        f"Each export sleeps {s['rows'] * s['pause']:.1f} s in all, so {s['workers']} workers could finish at most "
        f"{s['workers'] * 60 / (s['rows'] * s['pause']):,.0f} a minute; the rest of the time is the cache API, the "
        "publishing and the machine's other load. "
        "The clients (asyncio, raw sockets, one process) apply each message as htmx does (the list replaced, a row "
        "replaced by id) and end with the cache's final state of every download of their user. Latency: from the "
        "start of the publish step in the process that changed the download (`download_changed_signal`, after the "
        "record is written) to the arrival of the message's bytes at a client, over every delivery. Events per "
        "second: every message received by every client, from the first enqueue to the last arrival. Lost: a "
        "final state a client does not show, or an event id of the user's channel it never received; duplicated: "
        "one event id received twice on one connection; leaked: a row of another user's download. "
        "`python -m bench.load` runs it alone; `tests/test_load.py` runs the same scenario for correctness.",
    ])


def main(argv):
    if argv[:1] == ["--site"]:
        return site_main()
    result = bench_run()
    print(json.dumps(result, indent=2))
    print(markdown(result))
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    if sys.path[0] == BENCH_DIR:
        sys.path[0] = ROOT
    sys.exit(main(sys.argv[1:]))

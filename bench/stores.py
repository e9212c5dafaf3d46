"""The record stores side by side: the cache store on Redis, the database store on PostgreSQL and on SQLite.

    .venv/bin/just bench stores         # one progress write, a list of 50 downloads, the centre's partial
    .venv/bin/just bench stores_load    # the load scenario (bench/load.py) on the cache and on PostgreSQL

Each store is measured in a fresh process of its own (``python -m bench.stores --child``)
on bench/settings.py, with ``ADBENCH_STORE=database`` and ``ADBENCH_STORE_DATABASE`` for the
database store: ``postgres`` (a database ``adbench_<run>_…`` made on the server that
devtools/postgres_server.py finds or starts, migrated, dropped at the end) or ``default``
(the SQLite file in a temporary ``ADBENCH_DIR``, removed at the end).
"""

import collections
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlsplit

from devtools import postgres_server

from .common import ROOT, child_env, child_result, how_measured, log, md_table, percentile, snapshot, wait_quiet

RUN = os.environ.get("ADBENCH_RUN", "0")
WRITES = 2_000  # per transport
BLOCK = 250  # writes in a row on one transport; the two alternate
READS = 1_000
RENDERS = 1_000
WARM_UP = 20
MIX = {"pending": 10, "running": 15, "complete": 15, "error": 5, "cancelled": 5}
LOAD_REPS = 3
QUIET_WAIT = 180  # seconds a section may wait in all for other programs to use less than half a CPU
STORES = {
    "cache": {"label": "cache (Redis)", "short": "cache", "env": {}},
    "postgres": {"label": "database, PostgreSQL", "short": "PostgreSQL",
                 "env": {"ADBENCH_STORE": "database", "ADBENCH_STORE_DATABASE": "postgres"}},
    "sqlite": {"label": "database, SQLite file", "short": "SQLite",
               "env": {"ADBENCH_STORE": "database", "ADBENCH_STORE_DATABASE": "default"}},
}


def cpu_model():
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    return f"{model}, {os.cpu_count()} CPUs"


def machine_line(loads, waited, what):
    return (f"Machine: {cpu_model()}; 1-minute load average {min(loads):.2f}–{max(loads):.2f} during the section "
            f"({waited:.0f} s spent waiting, at most {QUIET_WAIT} s, for other programs to use under half a CPU "
            f"before each {what}). Tests run in parallel on the same {os.cpu_count()} cores, so the figures are "
            "noisy, the p99 most of all.")


# --------------------------------------------------------------------------- child processes


def child_main(op, params):
    child_result({"migrate": migrate, "measure": measure}[op], params)


def migrate(databases):
    from django.core.management import call_command

    for alias in databases:
        call_command("migrate", database=alias, verbosity=0)
    return {}


def store_info():
    import sqlite3

    from django.conf import settings
    from django.db import connections

    from async_downloads.conf import settings as app_settings
    from async_downloads.conf import store_name

    name = store_name()
    info = {"store": name}
    if name != "database":
        return info
    connection = connections[app_settings.DATABASE]
    info.update(alias=str(app_settings.DATABASE), vendor=connection.vendor,
                conn_max_age=settings.DATABASES[app_settings.DATABASE].get("CONN_MAX_AGE", 0))
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            for setting in ("server_version", "fsync", "synchronous_commit"):
                cursor.execute(f"SHOW {setting}")
                info[setting] = cursor.fetchone()[0]
        else:
            cursor.execute("PRAGMA journal_mode")
            info["journal_mode"] = cursor.fetchone()[0]
            cursor.execute("PRAGMA synchronous")
            info["synchronous"] = cursor.fetchone()[0]
            info["sqlite"] = sqlite3.sqlite_version
    return info


def timed(call, n, warm_up=WARM_UP):
    for _ in range(warm_up):
        call()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return samples


def stats(samples):
    return {"n": len(samples), "median_ms": round(statistics.median(samples), 3),
            "p90_ms": round(percentile(samples, 90), 3), "p99_ms": round(percentile(samples, 99), 3),
            "max_ms": round(max(samples), 3), "mean_ms": round(statistics.fmean(samples), 3)}


def round_trips(call, alias):
    """Redis commands, Redis pipelines and SQL queries of one ``call()``."""
    import redis
    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    counts = {"redis_commands": 0, "redis_pipelines": 0}
    real_execute, real_pipeline = redis.Redis.execute_command, redis.client.Pipeline.execute

    def counted(name, real):
        def call_counted(self, *args, **kwargs):
            counts[name] += 1
            return real(self, *args, **kwargs)
        return call_counted

    redis.Redis.execute_command = counted("redis_commands", real_execute)
    redis.client.Pipeline.execute = counted("redis_pipelines", real_pipeline)
    try:
        with CaptureQueriesContext(connections[alias]) as queries:
            call()
    finally:
        redis.Redis.execute_command, redis.client.Pipeline.execute = real_execute, real_pipeline
    return {**counts, "sql_queries": len(queries)}


def measure(expected_store):
    import logging
    import uuid

    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test.utils import override_settings

    from async_downloads import cache, partials
    from async_downloads.conf import settings as app_settings

    info = store_info()
    alias = info.get("alias", "default")
    if info["store"] != expected_store:
        raise RuntimeError(f"expected the {expected_store} store, got {info}")
    call_command("migrate", verbosity=0)
    if alias != "default":
        call_command("migrate", database=alias, verbosity=0)
    users = get_user_model().objects
    writer = users.create_user(f"writer-{uuid.uuid4().hex[:8]}")
    lister = users.create_user(f"lister-{uuid.uuid4().hex[:8]}")

    # One progress write: set_percentage to a value other than the stored one, on each transport.
    keys = {t: cache.init_download(writer, f"progress-{t}.csv")[1] for t in ("sse", "poll")}
    last = dict.fromkeys(keys, 0)

    def write(transport):
        last[transport] = last[transport] % 99 + 1
        cache.set_percentage(keys[transport], last[transport])

    samples, trips = {t: [] for t in keys}, {}
    for transport in keys:
        with override_settings(ASYNC_DOWNLOADS_TRANSPORT=transport):
            for _ in range(50):
                write(transport)
            trips[transport] = round_trips(lambda t=transport: write(t), alias)
    for block in range(2 * WRITES // BLOCK):
        transport = ("sse", "poll")[block % 2]
        with override_settings(ASYNC_DOWNLOADS_TRANSPORT=transport):
            samples[transport] += timed(lambda t=transport: write(t), BLOCK, warm_up=0)
    for transport, key in keys.items():
        if cache.get_download(key)["percentage"] != last[transport]:
            raise RuntimeError(f"the last write on {transport} is not in the record")

    # A user with 50 downloads in mixed states, made through the cache API.
    made = [cache.init_download(lister, f"export-{i}.csv", name=f"Export {i}")[1] for i in range(sum(MIX.values()))]
    bounds = dict(zip(MIX, [sum(list(MIX.values())[:i + 1]) for i in range(len(MIX))], strict=True))
    logging.disable(logging.ERROR)  # set_error logs each failure
    try:
        for i, key in enumerate(made):
            if i < bounds["pending"]:
                continue
            if i < bounds["running"]:
                cache.set_percentage(key, 3 + i * 7 % 95)
            elif i < bounds["complete"]:
                cache.save_download(key, [["id", "name"], *([n, f"row {n}"] for n in range(20))])
            elif i < bounds["error"]:
                cache.set_error(key, "The export failed.")
            else:
                cache.cancel_download(key, lister)
    finally:
        logging.disable(logging.NOTSET)
    listed = cache.get_downloads(lister)
    states = collections.Counter(record["state"] for record in listed)
    if len(listed) != len(made) or dict(states) != MIX:
        raise RuntimeError(f"the list has {len(listed)} downloads: {dict(states)}")
    html = partials.render_refresh(lister.pk)
    if html.count('<li id="download-') != len(made):
        raise RuntimeError("the centre does not show every download")
    reads = timed(lambda: cache.get_downloads(lister), READS)
    renders = timed(lambda: partials.render_refresh(lister.pk), RENDERS)
    return {"info": info, "transport_default": str(app_settings.TRANSPORT),
            "write": {t: stats(s) for t, s in samples.items()}, "write_round_trips": trips,
            "list": stats(reads), "list_round_trips": round_trips(lambda: cache.get_downloads(lister), alias),
            "render": stats(renders), "render_bytes": len(html.encode()), "states": dict(states),
            "loadavg_after": round(os.getloadavg()[0], 2)}


def run_child(op, env, problems, **params):
    command = [sys.executable, "-m", "bench.stores", "--child", op, json.dumps(params)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"bench.stores {op} {params} failed with exit code {proc.returncode}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for problem in result.pop("logged_problems", []):
        problems[problem] = problems.get(problem, 0) + 1
    return result


# --------------------------------------------------------------------------- PostgreSQL databases of the run


def postgres_url():
    url = postgres_server.ensure()
    if url is None:
        log(f"stores: no PostgreSQL ({os.environ.get('POSTGRES_URL_MISSING')}); the database store runs on SQLite only")
    return url


def with_database(url, name):
    return urlsplit(url)._replace(path="/" + name).geturl()


@contextlib.contextmanager
def bench_database(url, label, template=None):
    """A database ``adbench_<run>_<label>`` on the server of ``url`` (a copy of ``template`` if
    given), dropped on the way out; yields its URL."""
    import psycopg
    from psycopg import sql

    name = f"adbench_{RUN}_{label}".lower()
    fields = postgres_server.parts(url)
    connect = {"host": fields["HOST"], "port": fields["PORT"], "user": fields["USER"],
               "password": fields["PASSWORD"], "dbname": fields["NAME"], "autocommit": True}
    with psycopg.connect(**connect) as conn:
        create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            create += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        conn.execute(create)
    try:
        yield with_database(url, name), name
    finally:
        with psycopg.connect(**connect) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def store_env(name, work_dir, run_suffix, pg_url):
    extra = {"ADBENCH_DIR": work_dir, "ADBENCH_RUN": f"{RUN}-{run_suffix}", **STORES[name]["env"]}
    if pg_url:
        extra["ADBENCH_POSTGRES_URL"] = pg_url
    return extra


# --------------------------------------------------------------------------- section: stores


def ms(s):
    return f"{s['median_ms']:.2f} / {s['p99_ms']:.2f}"


def trips_cell(t):
    parts = [(t["redis_commands"], "Redis command"), (t["redis_pipelines"], "Redis pipeline"),
             (t["sql_queries"], "SQL query")]
    return " + ".join(f"{n} {what if n == 1 else what.replace('query', 'querie') + 's'}" for n, what in parts if n)


def section():
    url, problems, runs = postgres_url(), {}, {}
    loads, waited = [round(os.getloadavg()[0], 2)], 0.0
    machine_before = snapshot([])
    for name in STORES:
        if name == "postgres" and url is None:
            continue
        waited += wait_quiet([os.getpid()], QUIET_WAIT - waited, "stores")
        loads.append(round(os.getloadavg()[0], 2))
        work_dir = tempfile.mkdtemp(prefix=f"adbench-stores-{name}-")
        try:
            with contextlib.ExitStack() as stack:
                pg_url = None
                if name == "postgres":
                    pg_url, _ = stack.enter_context(bench_database(url, "stores"))
                env = child_env("stores", **store_env(name, work_dir, name, pg_url))
                log(f"stores: {STORES[name]['label']}…")
                expected = "database" if STORES[name]["env"] else "cache"
                runs[name] = run_child("measure", env, problems, expected_store=expected)
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
        r = runs[name]
        loads.append(r["loadavg_after"])
        log(f"stores: {name}: write (SSE) {ms(r['write']['sse'])} ms, write (poll) {ms(r['write']['poll'])} ms, "
            f"list of 50 {ms(r['list'])} ms, centre {ms(r['render'])} ms (median / p99)")
    machine_after = snapshot([])
    busy = round((machine_after["busy"] - machine_before["busy"]) / (machine_after["wall"] - machine_before["wall"]),
                 2)
    names = list(runs)
    header = ["ms, median / p99", *(STORES[n]["label"] for n in names)]
    rows = [
        [f"one progress write, SSE (publishes; {WRITES:,} writes)", *(f"**{ms(runs[n]['write']['sse'])}**"
                                                                      for n in names)],
        [f"one progress write, polling (store alone; {WRITES:,} writes)",
         *(f"**{ms(runs[n]['write']['poll'])}**" for n in names)],
        [f"`get_downloads`, 50 downloads ({READS:,} reads)", *(f"**{ms(runs[n]['list'])}**" for n in names)],
        [f"`partials.render_refresh`, 50 downloads: read + render ({RENDERS:,} renders)",
         *(f"**{ms(runs[n]['render'])}**" for n in names)],
        ["p90 / max: write SSE; write poll; list; centre",
         *("; ".join(f"{s['p90_ms']:.2f} / {s['max_ms']:.1f}" for s in (
             runs[n]["write"]["sse"], runs[n]["write"]["poll"], runs[n]["list"], runs[n]["render"])) for n in names)],
        ["round trips of one write, SSE", *(trips_cell(runs[n]["write_round_trips"]["sse"]) for n in names)],
        ["round trips of one write, polling", *(trips_cell(runs[n]["write_round_trips"]["poll"]) for n in names)],
        ["round trips of one `get_downloads`", *(trips_cell(runs[n]["list_round_trips"]) for n in names)],
    ]
    notes = []
    if "postgres" in runs:
        i = runs["postgres"]["info"]
        notes.append(f"PostgreSQL {i['server_version']} on this machine over TCP (127.0.0.1), `fsync={i['fsync']}`, "
                     f"`synchronous_commit={i['synchronous_commit']}`, `CONN_MAX_AGE` {i['conn_max_age']} (one "
                     "connection held by the measuring process, as a worker holds one).")
    else:
        notes.append(f"No PostgreSQL could be used: {os.environ.get('POSTGRES_URL_MISSING')}.")
    if "sqlite" in runs:
        i = runs["sqlite"]["info"]
        notes.append(f"SQLite {i['sqlite']}, a file on local disk, journal mode `{i['journal_mode']}`, synchronous "
                     f"= {i['synchronous']} (Django's defaults). SQLite serialises writers: each change locks the "
                     "whole database until its commit, so with several workers writing progress at once their "
                     "writes queue behind each other; one process, as here, never waits for another.")
    markdown = "\n".join([
        md_table(header, rows),
        "",
        " ".join(notes),
        "",
        machine_line(loads, waited, "store") + f" The whole machine was busy {busy} CPUs on average over the "
        "section, the measuring process included.",
        "",
        how_measured(
            "Each store in a fresh process on bench/settings.py: the cache store on the Redis that `just bench` "
            "provides (db 12, Django's `RedisCache`); the database store (`ASYNC_DOWNLOADS_STORE = "
            "\"database\"`) on a PostgreSQL database made for the run (`adbench_<run>_stores`, migrated, dropped "
            "after) and on a SQLite file in a temporary folder, migrated. Fresh users in each; every call goes "
            "through the public cache API, as a site's code and views call it.",
            f"Progress write: `cache.set_percentage(key, n)` on a running download, n always different from the "
            f"stored value, so each call locks, reads, writes and (SSE, the default transport) renders the row and "
            f"publishes it as an SSE event on Redis; with `ASYNC_DOWNLOADS_TRANSPORT = \"poll\"` nothing is "
            f"published, which leaves the store's own cost. {WRITES:,} writes per transport, timed one by one, in "
            f"blocks of {BLOCK} alternating between the two (after 50 warm-up writes each).",
            f"List: a user with {sum(MIX.values())} downloads ("
            + ", ".join(f"{n} {s}" for s, n in MIX.items())
            + f", made with `init_download`, `set_percentage`, `save_download`, `set_error`, `cancel_download`); "
            f"`cache.get_downloads(user)` {READS:,} times, then `partials.render_refresh(pk)` {RENDERS:,} times: "
            "what the centre view returns to a poll (the list read again, the connection element, 50 rows, the "
            f"indicator; {runs[names[0]]['render_bytes']:,} bytes), after {WARM_UP} warm-up calls each. The view "
            "itself adds the request's middleware and `fail_stalled` (one more read of the list).",
            "Median and p99 (nearest rank) of the single calls, in ms, `time.perf_counter_ns`; round trips counted "
            "on one more call (redis-py `execute_command` / pipeline `execute`, Django's captured queries). A write "
            "of the database store is one transaction: BEGIN, the no-op UPDATE that locks the row, the SELECT, the "
            "UPDATE of the row, COMMIT; the cache store's takes the record's lock (`add`), reads, writes and "
            "releases it (one compare-and-delete); SSE adds the event's storage and publish on Redis.",
        ),
    ])
    results = {"stores": runs, "loadavg": [min(loads), max(loads)], "machine_busy_cpus": busy,
               "waited_seconds": round(waited, 1), "cpu": cpu_model()}
    return {"results": results, "targets": [], "markdown": markdown, "logged_problems": problems}


# --------------------------------------------------------------------------- section: stores_load

CELERY_AFTER_SETUP = "import sys, django; django.setup(); from celery.__main__ import main; sys.exit(main())"


def app_imports_alone(app, env):
    """Whether ``app`` (a Celery app module) imports before ``django.setup()``, as ``celery -A`` needs."""
    proc = subprocess.run([sys.executable, "-c", f"import {app}"], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120)
    if proc.returncode and "AppRegistryNotReady" not in proc.stderr:
        raise RuntimeError(f"{app} does not import: {proc.stderr[-2000:]}")
    return proc.returncode == 0


def start_celery_worker_after_setup(app, env, *options, **popen):
    """devtools.processes.start_celery_worker, with ``django.setup()`` run before Celery imports ``app``."""
    return subprocess.Popen(
        [sys.executable, "-c", CELERY_AFTER_SETUP, "-A", app, "worker", "--pool", "solo", "--loglevel", "WARNING",
         "--without-gossip", "--without-mingle", "--without-heartbeat", *options],
        env=env, **popen,
    )


def load_section():
    from devtools import load

    from . import load as bench_load

    url, problems = postgres_url(), {}
    if url is None:
        raise RuntimeError(f"stores_load needs PostgreSQL: {os.environ.get('POSTGRES_URL_MISSING')}")
    setup_first = not app_imports_alone("devtools.load_tasks", child_env("load"))
    if setup_first:
        log("stores_load: devtools.load_tasks does not import before django.setup(); its workers run setup first")
        load.start_celery_worker = start_celery_worker_after_setup
    names = ["cache", "postgres"]
    runs, order, loads, waited = {n: [] for n in names}, [], [], 0.0
    scenario = load.Scenario(migrate=True)
    with bench_database(url, "load") as (base_url, base_name):
        work_dir = tempfile.mkdtemp(prefix="adbench-stores-migrate-")
        try:
            env = child_env("stores", **store_env("postgres", work_dir, "migrate", base_url))
            run_child("migrate", env, problems, databases=["postgres"])
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
        for rep in range(LOAD_REPS):
            for name in names if rep % 2 == 0 else names[::-1]:
                with contextlib.ExitStack() as stack:
                    pg_url = None
                    if name == "postgres":
                        pg_url, _ = stack.enter_context(bench_database(url, f"load{rep}", template=base_name))
                    work_dir = tempfile.mkdtemp(prefix="adbench-load-")
                    stack.callback(shutil.rmtree, work_dir, ignore_errors=True)
                    env = child_env("load", **store_env(name, work_dir, f"{name}{rep}", pg_url))
                    waited += wait_quiet([os.getpid()], QUIET_WAIT - waited, "stores_load")
                    loads.append(round(os.getloadavg()[0], 2))
                    log(f"stores_load: run {rep + 1}/{LOAD_REPS} on {STORES[name]['label']}…")
                    result = load.run(scenario, env, "django.core.asgi:get_asgi_application", factory=True,
                                      sample=bench_load.sample)
                order.append(STORES[name]["short"])
                loads.append(round(os.getloadavg()[0], 2))
                f, x, found = bench_load.figures(result), load.findings(result), load.problems(result)
                runs[name].append({"figures": f, "findings": x, "problems": found})
                lat = f["latency_ms"]
                log(f"stores_load: {name}: {f['exports_per_minute']} exports/min, latency p50 {lat.get('p50')} / "
                    f"p99 {lat.get('p99')} ms; problems: {found or 'none'}")

    def cell(name, get, fmt="{}", bold=False):
        values = [get(r) for r in runs[name]]
        if any(v is None for v in values):
            return " / ".join(str(v) for v in values)
        middle = fmt.format(statistics.median(values))
        middle = f"**{middle}**" if bold else middle
        return f"{middle} ({', '.join(fmt.format(v) for v in values)})"

    def cpu(r, prefix):
        return sum(v for k, v in r["figures"]["cpu_seconds"].items() if k.startswith(prefix))

    def lost(r):
        x = r["findings"]
        return f"{x['lost_final_states']} / {x['lost_events']} / {x['duplicated_events']} / {x['leaked_messages']}"

    header = ["figure: median of the runs (each run)", *(STORES[n]["label"] for n in names)]
    rows = [
        ["exports per minute", *(cell(n, lambda r: r["figures"]["exports_per_minute"], "{:.1f}", True)
                                 for n in names)],
        ["latency, publish → client, p99 (ms)", *(cell(n, lambda r: r["figures"]["latency_ms"]["p99"], "{:.0f}", True)
                                                  for n in names)],
        ["latency, publish → client, p50 (ms)", *(cell(n, lambda r: r["figures"]["latency_ms"]["p50"], "{:.0f}")
                                                  for n in names)],
        ["events delivered per second", *(cell(n, lambda r: r["figures"]["events_delivered_per_second"], "{:,.0f}")
                                          for n in names)],
        ["every client showed every final state (s after the first enqueue)",
         *(cell(n, lambda r: r["figures"]["all_final_seconds"], "{:.1f}") for n in names)],
        [f"CPU seconds: {scenario.workers} workers ({scenario.users * scenario.exports_per_user} exports)",
         *(cell(n, lambda r: cpu(r, "worker"), "{:.1f}") for n in names)],
        [f"CPU seconds: {scenario.web_processes} web processes",
         *(cell(n, lambda r: cpu(r, "web"), "{:.1f}") for n in names)],
        ["CPU of other programs (Redis, PostgreSQL, tests) during the run",
         *(cell(n, lambda r: r["figures"]["others_cpus"], "{:.2f}") for n in names)],
        ["lost final states / lost events / duplicated / leaked, per run",
         *("; ".join(lost(r) for r in runs[n]) for n in names)],
        ["1-minute load average before the runs", *(", ".join(f"{r['figures']['loadavg'][0]:.2f}" for r in runs[n])
                                                    for n in names)],
    ]
    all_problems = {n: [p for r in runs[n] for p in r["problems"]] for n in names}
    markdown = "\n".join([
        md_table(header, rows),
        *(line for n, p in all_problems.items() if p
          for line in ("", f"Problems found on {STORES[n]['label']}: " + "; ".join(p))),
        "",
        f"{LOAD_REPS} runs on each store, in the order {', '.join(order)} (alternating, so that a change in the "
        "machine's load falls on both). " + machine_line(loads, waited, "run"),
        "",
        bench_load.load_how_measured(scenario),
        how_measured(
            "The same scenario on both stores, from the same code (devtools/load.py): the cache store on the bench's "
            "Redis; the database store (`ASYNC_DOWNLOADS_STORE = \"database\"`, `ASYNC_DOWNLOADS_DATABASE = "
            "\"postgres\"`) on a fresh PostgreSQL database per run (a copy of one migrated for the section; "
            "dropped after), Django's default `CONN_MAX_AGE` (0: workers and web processes connect per task or "
            "request). Users, sessions and the rest of the site stay on SQLite in both; events go through Redis "
            "pub/sub in both.",
        ).replace("How it is measured:\n", "", 1),
    ])
    if setup_first:
        markdown += ("\n\n**Note:** `devtools.load_tasks` does not import before `django.setup()` (its import of "
                     "`async_downloads.events` loads the models), so `celery -A devtools.load_tasks worker` exits at "
                     "start; for these runs each worker ran `django.setup()` before Celery imported the app, which "
                     "changes nothing else in what it runs.")
    results = {"scenario": scenario.__dict__, "runs": runs, "workers_setup_first": setup_first,
               "loadavg": [min(loads), max(loads)], "waited_seconds": round(waited, 1), "cpu": cpu_model()}
    return {"results": results, "targets": [], "markdown": markdown, "logged_problems": problems}


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    child_main(sys.argv[2], json.loads(sys.argv[3]))

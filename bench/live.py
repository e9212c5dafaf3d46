"""Live delivery benchmark: latency, memory per stream, server CPU of SSE versus polling.

    cd /work/main && .venv/bin/python -m bench.live            # the whole run (about 5 minutes)
    .venv/bin/python -m bench.live --quick                      # a smoke run with small numbers (2 min)
    .venv/bin/python -m bench.live --sections cpu --what-if throttle,oneline,hiredis   # fixes, measured
    .venv/bin/python -m bench.live --sections latency --memory-trace true              # memory by site
    .venv/bin/python -m bench.live --help                       # every option

Writes bench/.data/live-results.json and bench/.data/live-report.md (and prints the report).

    from bench.live import run, markdown
    results = run(opts)          # opts: None, a dict or an argparse.Namespace (see OPTIONS)
    print(markdown(results))

What runs (all real processes, on the machine's own clock):

- ``setup``: a subprocess with ``bench.live_settings`` that rebuilds bench/.data/live.sqlite3, creates
  the users, signs their session cookies and starts one download per user through the cache API.
- two uvicorn processes (``web-bg`` holds the 2,000 background streams, ``web-probe`` the probe
  stream), a Celery worker (``--pool solo``) that runs the probe, and a load process that calls
  ``set_percentage`` on the background users' downloads at 500/s.
- this process is the only client: asyncio protocols on raw sockets for every stream and poll.
- the CPU section uses two more uvicorn processes, one per transport, so that neither pays for the
  other (a process that never opened a stream has no Redis listener, as in a polling-only site).

Redis: ``REDIS_URL`` (default 127.0.0.1:6379), db 10, every key under ``adbench-live``; never
flushed, our keys deleted at the end. Do not import Django at module level: ``bench/run.py``'s
driver imports this module without setting Django up (each child process does its own setup).
"""

import argparse
import asyncio
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid

from devtools.processes import free_port, stop, uvicorn_command

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
DATA_DIR = os.path.join(BENCH_DIR, ".data")
SETTINGS = "bench.live_settings"
PREFIX = "adbench-live"
RESULTS_JSON = os.path.join(DATA_DIR, "live-results.json")
REPORT_MD = os.path.join(DATA_DIR, "live-report.md")

TARGET_P99_MS = 25.0
TARGET_KB_PER_CONNECTION = 64.0
TARGET_CPU_RATIO = 10.0
# The issue's figures for django-eventstream alone on this machine (one uvicorn process,
# Redis pub/sub, 2,000 idle connections on separate channels).
REFERENCE = {
    "latency_500_p50_ms": 0.8,
    "latency_500_p99_ms": 12.0,
    "latency_2000_p99_ms": 36.0,
    "kb_per_connection": 54.0,
}

OPTIONS = {
    # name: (default, quick default, help)
    "connections": (2000, 200, "idle authenticated background streams on web-bg"),
    "rate": (500.0, 100.0, "set_percentage calls per second on the background users' downloads"),
    "load_procs": (2, 1, "load processes (the rate is split between them)"),
    "load_threads": (8, 4, "threads of the load processes, in all"),
    "load_warmup": (5.0, 2.0, "seconds of background load before the probe starts"),
    "probes": (500, 100, "measured probes"),
    "probe_warmup": (10, 5, "probes sent first and not counted"),
    "probe_rate": (20.0, 20.0, "probes per second"),
    "floor": (True, True, "also measure bare django-eventstream send_event in the same setup"),
    "cpu_clients": (200, 50, "clients watching the export (CPU section)"),
    "cpu_seconds": (30.0, 10.0, "length of the export (CPU section)"),
    "cpu_interval": (0.3, 0.3, "seconds between progress steps of the export"),
    "poll_interval": (1.0, 1.0, "seconds between polls of the legacy endpoint"),
    "poll_calibration": (8.0, 6.0, "seconds of polling at a quarter of the rate, for the CPU per poll unsaturated"),
    "what_if": ("", "", "comma-separated SSE what-ifs of the CPU section: throttle, oneline, hiredis"),
    "cpu_literal": (True, True, "also measure SSE with one export watched by all the clients (one user's tabs)"),
    "sections": ("latency,cpu", "latency,cpu", "what to run: latency (with memory), cpu"),
    "profile": (False, False, "py-spy the web processes of the CPU section (needs py-spy in .venv)"),
    "quiet_cpus": (0.5, 0.5, "before a measurement, wait until other programs use less than this many CPUs"),
    "quiet_wait": (45.0, 5.0, "… but at most this many seconds over the whole run"),
    "keepalive_reading": (True, False, "also read VmRSS once the streams had their first keep-alive (20 s)"),
    "memory_trace": (False, False, "also trace a stream's Python allocations (tracemalloc, another process)"),
}


def _opt(opts, name):
    """``opts.live_<name>`` / ``opts[name]``, falling back to the defaults (quick ones with ``quick``)."""
    quick = bool(_get(opts, "quick", False) or _get(opts, "live_quick", False))
    default = OPTIONS[name][1 if quick else 0]
    for key in (f"live_{name}", name):
        value = _get(opts, key, None)
        if value is not None:
            return type(default)(value)
    return default


def _get(opts, key, default):
    if opts is None:
        return default
    if isinstance(opts, dict):
        return opts.get(key, default)
    return getattr(opts, key, default)


def log(message):
    print(f"[live {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- /proc


def proc_status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def rss_kb(pid):
    return proc_status(pid, "VmRSS")


def cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds():
    """CPU seconds the whole machine has spent busy (all CPUs), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def safe_cpu_seconds(pid):
    try:
        return cpu_seconds(pid)
    except (OSError, IndexError, ValueError):
        return None


def snapshot(pids):
    """Machine and per-process CPU now, for ``others_cpu`` (what other programs used in a window)."""
    return {"wall": time.monotonic(), "busy": machine_busy_seconds(),
            "pids": {pid: safe_cpu_seconds(pid) for pid in pids}}


def others_cpu(s0, s1, extra_mine=0.0):
    """CPU that processes other than ours (Redis included) used between two snapshots, in CPUs."""
    mine = extra_mine
    for pid, before in s0["pids"].items():
        after = s1["pids"].get(pid)
        if before is not None and after is not None:
            mine += after - before
    wall = max(1e-9, s1["wall"] - s0["wall"])
    return round(max(0.0, (s1["busy"] - s0["busy"]) - mine) / wall, 2)


def open_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def raise_nofile(want=65536):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def percentile(values, q):
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def summary_ms(values):
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), 3),
        "p90": round(percentile(values, 90), 3),
        "p99": round(percentile(values, 99), 3),
        "max": round(max(values), 3),
        "mean": round(statistics.fmean(values), 3),
        "min": round(min(values), 3),
    }


# --------------------------------------------------------------------------- child processes


def child_env(**extra):
    env = dict(os.environ)
    env.update({"DJANGO_SETTINGS_MODULE": SETTINGS, "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1", **extra})
    return env


def _preexec():
    raise_nofile()


def start_child(args, env=None, **kwargs):
    return subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=child_env(**(env or {})), preexec_fn=_preexec, **kwargs
    )


def start_uvicorn(name, app="django.core.asgi:get_asgi_application", env=None):
    port = free_port()
    process = start_child(env=env, args=uvicorn_command(app, port, factory=True)[1:])
    return {"name": name, "process": process, "pid": process.pid, "port": port}


async def wait_for_port(server, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server["process"].poll() is not None:
            raise RuntimeError(f"{server['name']} exited with {server['process'].returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", server["port"])
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{server['name']} does not listen after {timeout} s")


class LineChild:
    """A ``python -m bench.live --role ...`` process spoken to in JSON lines on stdin/stdout."""

    def __init__(self, role, params):
        self.role = role
        self.proc = None
        self.params = params

    async def start(self):
        path = os.path.join(DATA_DIR, f"live-{self.role}-{uuid.uuid4().hex[:6]}.json")
        with open(path, "w") as f:
            json.dump(self.params, f)
        self.params_path = path
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.live", "--role", self.role, "--params", path,
            cwd=ROOT, env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            preexec_fn=_preexec, limit=64 * 1024 * 1024,
        )
        return self

    async def read(self, timeout=120):
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            code = await self.proc.wait()
            raise RuntimeError(f"{self.role} process ended (exit {code})")
        return json.loads(line)

    async def send(self, message):
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        await self.proc.stdin.drain()

    async def close(self):
        if self.proc and self.proc.returncode is None:
            try:
                self.proc.stdin.close()
            except Exception:
                pass
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        try:
            os.remove(self.params_path)
        except OSError:
            pass


def traced_asgi_application():
    """Benchmark only: the app as shipped, with tracemalloc; SIGUSR1 takes a snapshot (first: the base;
    second: the difference to the base, written to bench/.data/live-tracemalloc-<pid>.json)."""
    import tracemalloc

    tracemalloc.start(1)
    from django.core.asgi import get_asgi_application

    application = get_asgi_application()
    state = {}
    path = os.path.join(DATA_DIR, f"live-tracemalloc-{os.getpid()}.json")

    def snapshot(signum, frame):
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        if "base" not in state:
            state["base"] = snap
            out = {"base": True}
        else:
            def rows(kind, limit):
                return [
                    {"where": str(stat.traceback), "size_diff": stat.size_diff, "count_diff": stat.count_diff}
                    for stat in snap.compare_to(state["base"], kind)[:limit]
                ]

            out = {
                "by_file": rows("filename", 25),
                "by_line": rows("lineno", 40),
                "total_diff": sum(stat.size_diff for stat in snap.compare_to(state["base"], "filename")),
            }
        with open(path + ".tmp", "w") as f:
            json.dump(out, f)
        os.replace(path + ".tmp", path)

    signal.signal(signal.SIGUSR1, snapshot)
    return application


# --------------------------------------------------------------------------- roles (Django processes)


def _django():
    import django

    django.setup()


class _Problems:
    """Collects what the library logs at WARNING and above (a failed publish changes what is measured)."""

    def __init__(self):
        import logging

        self.messages = {}
        outer = self

        class Handler(logging.Handler):
            def emit(self, record):
                key = f"{record.levelname} {record.name}: {record.getMessage()}"[:300]
                outer.messages[key] = outer.messages.get(key, 0) + 1

        logging.getLogger("async_downloads").addHandler(Handler(logging.WARNING))


def _out(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def role_setup(params):
    """Fresh database, users with signed-cookie sessions, one download each; prints their details."""
    from concurrent.futures import ThreadPoolExecutor

    _django()
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import User
    from django.contrib.sessions.backends.signed_cookies import SessionStore
    from django.core.management import call_command
    from django.db import connections

    from async_downloads import cache, partials

    problems = _Problems()
    db = settings.DATABASES["default"]["NAME"]
    connections.close_all()
    for path in (db, db + "-journal", db + "-wal", db + "-shm"):
        if os.path.exists(path):
            os.remove(path)
    call_command("migrate", run_syncdb=True, verbosity=0)

    groups = {"probe": 1, "warm": 1, "bg": params["connections"], "cpu": params["cpu_clients"]}
    users = []
    for group, count in groups.items():
        users += [User(username=f"live-{group}-{i}", password=make_password(None)) for i in range(count)]
    User.objects.bulk_create(users, batch_size=500)
    users = list(User.objects.order_by("pk"))

    def cookie(user):
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.save()
        return session.session_key

    def start(user):
        _, key = cache.init_download(user, f"{user.username}.csv", name=f"Export for {user.username}")
        return key

    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(start, users))
        urls = list(pool.map(lambda u: partials.events_url(u.pk), users))
    out, index = {}, 0
    for group, count in groups.items():
        out[group] = [
            {"pk": u.pk, "cookie": cookie(u), "key": k, "url": url}
            for u, k, url in zip(users[index:index + count], keys[index:index + count], urls[index:index + count])
        ]
        index += count
    out["cookie_name"] = settings.SESSION_COOKIE_NAME
    out["logged_problems"] = problems.messages
    _out(out)


def _stdin_commands(on_line):
    def read():
        for line in sys.stdin:
            on_line(json.loads(line))
        on_line({"op": "eof"})

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def role_load(params):
    """Background traffic: ``rate`` changes per second spread over the background users' downloads.

    ``mode`` "cache": ``set_percentage`` (our whole publish step). ``mode`` "bare": django-eventstream's
    ``send_event`` with a row rendered beforehand, on the same channels (the floor).
    """
    from concurrent.futures import ThreadPoolExecutor

    _django()
    from django_eventstream import send_event

    from async_downloads import cache, partials, sse

    problems = _Problems()
    entries = params["entries"]
    mode, rate, nthreads = params["mode"], float(params["rate"]), int(params["threads"])
    n_users = len(entries)
    values = [0] * n_users
    channels = [sse.channel_for(e["pk"]) for e in entries]
    rows = {}
    if mode == "bare":
        record = dict(cache.get_download(entries[0]["key"]))
        for p in range(1, 100):
            record.update(percentage=p, state="running")
            rows[p] = partials.render_row(record, oob=True)
    # Warm-up outside the measurement: templates, connections.
    cache.get_download(entries[0]["key"])
    partials.render_row(cache.get_download(entries[0]["key"]), oob=True)

    go, stop = threading.Event(), threading.Event()

    def on_line(message):
        if message.get("op") == "go":
            go.set()
        elif message.get("op") in ("stop", "eof"):
            stop.set()
            go.set()

    _stdin_commands(on_line)
    _out({"ready": True})
    go.wait()

    lock = threading.Lock()
    state = {"next": 0}
    start = time.time() + 0.05
    done_at = []  # (completion time.time(), call seconds, lateness seconds) per call
    errors = {}

    def worker():
        local = []
        while not stop.is_set():
            with lock:
                n = state["next"]
                state["next"] += 1
            due = start + n / rate
            delay = due - time.time()
            if delay > 0:
                if stop.wait(delay):
                    break
            i = n % n_users
            values[i] = values[i] % 98 + 1
            t0 = time.time()
            try:
                if mode == "cache":
                    cache.set_percentage(entries[i]["key"], values[i])
                else:
                    send_event(channels[i], sse.EVENT, rows[values[i]], json_encode=False)
            except Exception as error:  # counted and reported
                errors[repr(error)[:200]] = errors.get(repr(error)[:200], 0) + 1
            t1 = time.time()
            local.append((t1, t1 - t0, t0 - due))
        with lock:
            done_at.extend(local)

    with ThreadPoolExecutor(nthreads) as pool:
        for _ in range(nthreads):
            pool.submit(worker)
    end = time.time()
    per_second = {}
    for t, _, _ in done_at:
        per_second[int(t)] = per_second.get(int(t), 0) + 1
    _out({
        "mode": mode,
        "start": start,
        "end": end,
        "calls": len(done_at),
        "per_second": per_second,
        "call_ms": [round(d * 1000, 3) for _, d, _ in done_at],
        "late_ms": [round(x * 1000, 3) for _, _, x in done_at],
        "cpu_seconds": time.process_time(),
        "errors": errors,
        "logged_problems": problems.messages,
    })


def role_drive(params):
    """The CPU section's exports: every download reports the same step every ``interval`` seconds."""
    from concurrent.futures import ThreadPoolExecutor

    _django()
    from async_downloads import cache, partials

    problems = _Problems()
    entries = params["entries"]
    steps, interval = int(params["steps"]), float(params["interval"])
    percent_step = int(params.get("percent_step", 1))
    if params.get("oneline"):
        # What-if: the row on one line (one `data:` line on the wire instead of one per template line).
        from async_downloads import sse

        send = sse.send
        sse.send = lambda pk, html: send(pk, re.sub(r"\s*\n\s*", " ", html.strip()))
    with ThreadPoolExecutor(int(params["threads"])) as pool:
        # Each export starts from 0 %; pages opened now replay nothing older.
        list(pool.map(lambda e: cache.set_percentage(e["key"], 0), entries))
        urls = list(pool.map(lambda e: partials.events_url(e["pk"]), entries))
        go = threading.Event()
        _stdin_commands(lambda message: go.set())
        _out({"ready": True, "urls": urls})
        go.wait()
        start = time.monotonic()
        cpu0 = time.process_time()
        late, tick_ms = [], []
        for step in range(1, steps + 1):
            due = start + step * interval
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            late.append((time.monotonic() - due) * 1000)
            t0 = time.monotonic()
            list(pool.map(lambda e: cache.set_percentage(e["key"], min(99, step * percent_step)), entries))
            tick_ms.append((time.monotonic() - t0) * 1000)
        seconds = time.monotonic() - start
    _out({
        "steps": steps,
        "exports": len(entries),
        "calls": steps * len(entries),
        "seconds": seconds,
        "late_ms": summary_ms(late),
        "tick_ms": summary_ms(tick_ms),
        "cpu_seconds": time.process_time() - cpu0,
        "logged_problems": problems.messages,
    })


# --------------------------------------------------------------------------- Celery (probe worker)


def celery_config():
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from bench import live_settings

    return {
        "broker_url": live_settings.REDIS_URL,
        "broker_transport_options": {"global_keyprefix": f"{PREFIX}:celery:"},
        "broker_connection_retry_on_startup": True,
        "task_default_queue": PREFIX,
        "task_ignore_result": True,
        "worker_enable_remote_control": False,
        "worker_hijack_root_logger": False,
        "worker_prefetch_multiplier": 1,
    }


_celery_app = None


def get_celery_app(client=False):
    """The worker's app (``celery -A bench.live:celery_app``), or a Django-free client to send tasks."""
    global _celery_app
    from celery import Celery

    if client:
        app = Celery("adbench_live_client", fixups=[], set_as_current=False)
        app.conf.update(celery_config())
        return app
    if _celery_app is None:
        app = Celery("adbench_live")
        app.conf.update(celery_config())
        app.task(name="bench.live.ready")(task_ready)
        app.task(name="bench.live.probe")(task_probe)
        _celery_app = app
    return _celery_app


def __getattr__(name):
    if name == "celery_app":
        return get_celery_app()
    raise AttributeError(name)


def _redis():
    import redis

    from bench import live_settings

    return redis.Redis.from_url(live_settings.REDIS_URL)


def blpop(client, key, timeout):
    """BLPOP in steps of 1 s (redis-py's socket timeout is 5 s by default)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = client.blpop([key], 1)
        if got is not None:
            return got
    return None


def task_ready(warm_key, warm_pk, reply_key):
    """Warm the worker up (templates, connections) on a download nobody watches, then answer with the
    anatomy of one ``set_percentage`` measured here, before any load: Redis round trips and CPU."""
    import redis
    from django_eventstream import send_event

    from async_downloads import cache, partials, sse

    for p in range(1, 21):
        cache.set_percentage(warm_key, p)
    send_event(sse.channel_for(warm_pk), sse.EVENT, partials.render_row(cache.get_download(warm_key)),
               json_encode=False)
    anatomy = {}
    counts = {"commands": 0, "pipelines": 0, "clients": 0}
    real_execute, real_pipeline, real_init = (redis.Redis.execute_command, redis.client.Pipeline.execute,
                                              redis.Redis.__init__)

    def execute(self, *args, **kwargs):
        counts["commands"] += 1
        return real_execute(self, *args, **kwargs)

    def pipeline(self, *args, **kwargs):
        counts["pipelines"] += 1
        return real_pipeline(self, *args, **kwargs)

    def init(self, *args, **kwargs):
        counts["clients"] += 1
        return real_init(self, *args, **kwargs)

    redis.Redis.execute_command, redis.client.Pipeline.execute, redis.Redis.__init__ = execute, pipeline, init
    try:
        cache.set_percentage(warm_key, 50)
    finally:
        redis.Redis.execute_command, redis.client.Pipeline.execute, redis.Redis.__init__ = (
            real_execute, real_pipeline, real_init)
    anatomy.update(redis_commands=counts["commands"], redis_pipelines=counts["pipelines"],
                   redis_clients_built=counts["clients"])
    n = 300
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(n):
        cache.set_percentage(warm_key, i % 98 + 1)
    anatomy["set_percentage_cpu_ms"] = round((time.process_time() - c0) / n * 1000, 3)
    anatomy["set_percentage_wall_ms"] = round((time.perf_counter() - t0) / n * 1000, 3)
    record = cache.get_download(warm_key)
    c0 = time.process_time()
    for _ in range(n):
        partials.render_row(record, oob=True)
    anatomy["render_row_cpu_ms"] = round((time.process_time() - c0) / n * 1000, 3)
    anatomy["row_bytes"] = len(partials.render_row(record, oob=True).encode())
    anatomy["row_lines"] = partials.render_row(record, oob=True).count("\n") + 1
    from django.conf import settings

    pool = redis.ConnectionPool(**settings.EVENTSTREAM_REDIS)
    client = redis.Redis(connection_pool=pool)
    c0 = time.process_time()
    for _ in range(n):
        redis.Redis(connection_pool=pool)
    anatomy["redis_client_build_cpu_us"] = round((time.process_time() - c0) / n * 1e6, 1)
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        client.get(f"{PREFIX}:nothing")
    anatomy["redis_get_cpu_us"] = round((time.process_time() - c0) / n * 1e6, 1)
    anatomy["redis_get_wall_us"] = round((time.perf_counter() - t0) / n * 1e6, 1)
    pool.disconnect()
    _redis().rpush(reply_key, json.dumps({"pid": os.getpid(), "anatomy": anatomy}))


def task_probe(kinds, pk, key, interval, reply_key):
    """One change of the probe user's download per entry of ``kinds``, ``interval`` s apart, with
    ``time.time()`` just before and just after each call.

    "cache": ``set_percentage`` (lock, read, write, render, store, publish): our publish step.
    "bare": django-eventstream's ``send_event`` of a row rendered beforehand, on the same channel.
    """
    import logging

    from django_eventstream import send_event

    from async_downloads import cache, partials, sse

    problems = {}

    class Handler(logging.Handler):
        def emit(self, record):
            problems[record.getMessage()[:200]] = problems.get(record.getMessage()[:200], 0) + 1

    handler = Handler(logging.WARNING)
    logging.getLogger("async_downloads").addHandler(handler)
    channel = sse.channel_for(pk)
    rows = {}
    record = dict(cache.get_download(key))
    for p in range(1, 100):
        record.update(percentage=p, state="running")
        rows[p] = partials.render_row(record, oob=True)
    current = (cache.get_download(key) or {}).get("percentage", 0)
    probes = []
    next_at = time.monotonic()
    for i, kind in enumerate(kinds):
        # Never the value before it (nor the stored one, two steps back): every call publishes.
        p = (current + i) % 98 + 1
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t0 = time.time()
        if kind == "cache":
            cache.set_percentage(key, p)
        else:
            send_event(channel, sse.EVENT, rows[p], json_encode=False)
        probes.append((i, kind, p, t0, time.time()))
    logging.getLogger("async_downloads").removeHandler(handler)
    _redis().rpush(reply_key, json.dumps({"probes": probes, "problems": problems}))


# --------------------------------------------------------------------------- clients (asyncio, raw sockets)

EVENT_MARK = b"event: downloads"
OPEN_MARK = b"event: stream-open"
VALUENOW = re.compile(r'aria-valuenow="(\d+)"')


class StreamClient(asyncio.Protocol):
    """One EventSource. Light mode counts events; ``parse=True`` decodes chunks and SSE with arrival times."""

    def __init__(self, request, parse=False):
        loop = asyncio.get_running_loop()
        self.request = request
        self.parse = parse
        self.opened = loop.create_future()
        self.closed = loop.create_future()
        self.head = b""
        self.status = None
        self.in_body = False
        self.tail = b""
        self.count = 0
        self.events = []  # (arrival time.time(), event type, data) when parsing
        self.transport = None
        # chunked decoding
        self.raw = bytearray()
        self.chunk_left = None
        self.text = ""

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
            self.head = b""
            self.in_body = True
            try:
                self.status = int(head.split(b" ", 2)[1])
            except (IndexError, ValueError):
                self.status = -1
            if self.status != 200:
                self._fail(f"status {self.status}: {data[:200]!r}")
                return
        if self.parse:
            self._parse(data, now)
            return
        window = self.tail + data
        self.count += window.count(EVENT_MARK)
        if not self.opened.done() and OPEN_MARK in window:
            self.opened.set_result(now)
        self.tail = window[-(len(OPEN_MARK) - 1):]

    def _parse(self, data, now):
        self.raw += data
        while True:
            if self.chunk_left is None:
                nl = self.raw.find(b"\r\n")
                if nl < 0:
                    return
                size = int(bytes(self.raw[:nl]).split(b";")[0], 16)
                del self.raw[:nl + 2]
                if size == 0:
                    return
                self.chunk_left = size
            if len(self.raw) < self.chunk_left + 2:
                return
            chunk = bytes(self.raw[:self.chunk_left])
            del self.raw[:self.chunk_left + 2]
            self.chunk_left = None
            self.text += chunk.decode()
            while "\n\n" in self.text:
                block, self.text = self.text.split("\n\n", 1)
                event, lines, event_id = "message", [], None
                for line in block.split("\n"):
                    if not line or line.startswith(":"):
                        continue
                    field, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if field == "event":
                        event = value
                    elif field == "data":
                        lines.append(value)
                    elif field == "id":
                        event_id = value
                if event == "stream-open" and not self.opened.done():
                    self.opened.set_result(now)
                if event == "downloads":
                    self.count += 1
                if lines or event != "message":
                    self.on_event(now, event, "\n".join(lines), event_id)

    def on_event(self, now, event, data, event_id):
        """One parsed SSE event (``parse=True``); kept in ``events`` unless a subclass does otherwise."""
        self.events.append((now, event, data))

    def _fail(self, why):
        if not self.opened.done():
            self.opened.set_exception(RuntimeError(why))
        self.transport.close()

    def connection_lost(self, exc):
        if not self.opened.done():
            self.opened.set_exception(RuntimeError(f"closed before stream-open (status {self.status})"))
        if not self.closed.done():
            self.closed.set_result(time.time())

    def close(self):
        if self.transport is not None:
            self.transport.close()


def stream_request(port, url, cookie_name, cookie):
    return (
        f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie_name}={cookie}\r\n"
        "Accept: text/event-stream\r\nCache-Control: no-cache\r\nUser-Agent: adbench-live\r\n\r\n"
    ).encode()


async def open_stream(port, url, cookie_name, cookie, parse=False, timeout=60):
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(
        lambda: StreamClient(stream_request(port, url, cookie_name, cookie), parse=parse), "127.0.0.1", port
    )
    try:
        await asyncio.wait_for(asyncio.shield(client.opened), timeout)
    except BaseException:
        client.close()
        raise
    return client


async def open_streams(port, users, cookie_name, concurrency=32, urls=None):
    """Open one stream per user, ``concurrency`` connection set-ups at a time; returns (clients, failures)."""
    semaphore = asyncio.Semaphore(concurrency)
    clients, failures = [], []

    async def one(i, user):
        async with semaphore:
            try:
                clients.append(await open_stream(port, urls[i] if urls else user["url"], cookie_name, user["cookie"]))
            except Exception as error:
                failures.append(repr(error)[:200])

    await asyncio.gather(*(one(i, u) for i, u in enumerate(users)))
    return clients, failures


async def close_streams(clients, timeout=10):
    for client in clients:
        client.close()
    if clients:
        await asyncio.wait([c.closed for c in clients], timeout=timeout)


class HttpClient(asyncio.Protocol):
    """A keep-alive HTTP/1.1 connection sending one GET at a time (Content-Length or chunked answers)."""

    def __init__(self):
        self.transport = None
        self.buf = bytearray()
        self.waiter = None
        self.lost = False

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.lost = True
        if self.waiter and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    def data_received(self, data):
        self.buf += data
        if self.waiter is None or self.waiter.done():
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body_start = end + 4
        if "content-length" in headers:
            length = int(headers["content-length"])
            if len(self.buf) - body_start < length:
                return
            body = bytes(self.buf[body_start:body_start + length])
            del self.buf[:body_start + length]
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            pos, parts = body_start, []
            while True:
                nl = self.buf.find(b"\r\n", pos)
                if nl < 0:
                    return
                size = int(bytes(self.buf[pos:nl]).split(b";")[0], 16)
                if len(self.buf) < nl + 2 + size + 2:
                    return
                parts.append(bytes(self.buf[nl + 2:nl + 2 + size]))
                pos = nl + 2 + size + 2
                if size == 0:
                    break
            body = b"".join(parts)
            del self.buf[:pos]
        else:
            body = b""
            del self.buf[:body_start]
        self.waiter.set_result((status, headers, body))

    async def get(self, request, timeout=30):
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await asyncio.wait_for(self.waiter, timeout)


async def poller(port, path, cookie_name, cookie, interval, phase, deadline, stats):
    """The legacy script: GET the JSON endpoint every ``interval`` s, on one keep-alive connection."""
    loop = asyncio.get_running_loop()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie_name}={cookie}\r\n"
        "Accept: application/json\r\nX-Requested-With: XMLHttpRequest\r\nUser-Agent: adbench-live\r\n\r\n"
    ).encode()
    conn = None
    next_at = time.monotonic() + phase
    while True:
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if time.monotonic() >= deadline:
            break
        try:
            if conn is None or conn.lost:
                _, conn = await loop.create_connection(HttpClient, "127.0.0.1", port)
                stats["connections"] += 1
            t0 = time.monotonic()
            status, _, body = await conn.get(request)
            stats["ms"].append((time.monotonic() - t0) * 1000)
            stats["requests"] += 1
            stats["bytes"] += len(body)
            if status != 200:
                stats["bad_status"][status] = stats["bad_status"].get(status, 0) + 1
            elif stats["requests"] % 997 == 1:
                stats["in_progress_seen"].append(json.loads(body).get("in_progress"))
        except Exception as error:
            stats["errors"][repr(error)[:120]] = stats["errors"].get(repr(error)[:120], 0) + 1
            conn = None
        next_at += interval
    if conn is not None and conn.transport is not None:
        conn.transport.close()


# --------------------------------------------------------------------------- orchestration


class Bench:
    def __init__(self, opts):
        self.opts = {name: _opt(opts, name) for name in OPTIONS}
        self.run_id = uuid.uuid4().hex[:8]
        self.servers = []
        self.children = []
        self.worker = None
        self.results = {"options": dict(self.opts), "phases": {}}
        self.problems = {}

    # ---- helpers

    def note_problems(self, where, messages):
        for message, count in (messages or {}).items():
            key = f"{where}: {message}"
            self.problems[key] = self.problems.get(key, 0) + count

    def phase(self, name, **values):
        self.results["phases"][name] = {"at": time.time(), "loadavg": list(os.getloadavg()), **values}

    async def start_server(self, name, app="django.core.asgi:get_asgi_application", env=None):
        server = start_uvicorn(name, app, env)
        self.servers.append(server)
        await wait_for_port(server)
        return server

    def stop_server(self, server):
        stop(server["process"], timeout=8)

    async def warm(self, server, users, sse=True, polls=20):
        """Serve a few polls (and streams) so that imports, templates and connections are made."""
        port = server["port"]
        for user in users[:3]:
            conn_stats = {"requests": 0, "bytes": 0, "ms": [], "errors": {}, "bad_status": {},
                          "connections": 0, "in_progress_seen": []}
            await poller(port, "/async_downloads/ajax_update/", self.cookie_name, user["cookie"], 0.0, 0.0,
                         time.monotonic() + 0.5, conn_stats)
            if conn_stats["bad_status"] or conn_stats["errors"]:
                raise RuntimeError(f"warm-up polls of {server['name']} failed: {conn_stats}")
        if sse:
            for _ in range(3):
                clients, failures = await open_streams(port, users[:20], self.cookie_name)
                if failures:
                    raise RuntimeError(f"warm-up streams of {server['name']} failed: {failures[:3]}")
                await close_streams(clients)
        await asyncio.sleep(1.0)

    def my_pids(self):
        pids = [os.getpid()] + [srv["pid"] for srv in self.servers if srv["process"].poll() is None]
        if self.worker is not None and self.worker.poll() is None:
            pids.append(self.worker.pid)
        pids += [c.proc.pid for c in self.children if c.proc and c.proc.returncode is None]
        return pids

    async def wait_quiet(self, label):
        """Wait (up to ``quiet_wait`` s) until other programs use less than ``quiet_cpus`` CPUs."""
        o = self.opts
        start = time.monotonic()
        budget = getattr(self, "quiet_budget", o["quiet_wait"])
        while True:
            s0 = snapshot(self.my_pids())
            await asyncio.sleep(1.5)
            busy = others_cpu(s0, snapshot(self.my_pids()))
            waited = time.monotonic() - start
            if busy < o["quiet_cpus"] or waited >= budget:
                break
            log(f"{label}: other programs use {busy:.2f} CPUs; waiting for a quieter machine …")
        self.quiet_budget = max(0.0, budget - waited)
        gate = {"others_cpus": busy, "waited_seconds": round(waited, 1), "quiet": busy < o["quiet_cpus"]}
        self.results.setdefault("quiet_gates", {})[label] = gate
        return gate

    async def settle_rss(self, pid, seconds=2.0):
        """VmRSS once it stops moving (median of readings over ``seconds``)."""
        readings = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            readings.append(rss_kb(pid))
            await asyncio.sleep(0.2)
        return statistics.median(readings)

    async def start_worker(self, warm):
        self.worker = start_child([
            "-m", "celery", "-A", "bench.live:celery_app", "worker", "--pool", "solo", "--loglevel", "WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat", "-Q", PREFIX,
        ], env={"PYTHONWARNINGS": "ignore"}, stdout=subprocess.DEVNULL)  # no banner, no root warning
        reply = f"{PREFIX}:reply:{self.run_id}:ready"
        self.celery.send_task("bench.live.ready", args=[warm["key"], warm["pk"], reply], queue=PREFIX)
        got = await asyncio.to_thread(blpop, self.redis, reply, 90)
        if got is None:
            raise RuntimeError("the Celery worker did not answer within 90 s")
        self.redis.delete(reply)
        answer = json.loads(got[1])
        self.results["set_percentage_anatomy"] = answer.get("anatomy")
        return answer["pid"]

    # ---- the run

    async def main(self):
        o = self.opts
        os.makedirs(DATA_DIR, exist_ok=True)
        self.results["nofile"] = list(raise_nofile())
        self.results["machine"] = machine_info()
        self.redis = _redis()
        self.results["redis_cleanup_before"] = cleanup_redis(self.redis)
        self.celery = get_celery_app(client=True)
        self.monitor = PubSubMonitor()
        await self.monitor.start()
        try:
            t0 = time.monotonic()
            log("setup: database, users, sessions, one download per user …")
            setup = LineChild("setup", {"connections": o["connections"], "cpu_clients": o["cpu_clients"]})
            await setup.start()
            self.users = await setup.read(timeout=300)
            await setup.close()
            self.cookie_name = self.users["cookie_name"]
            self.note_problems("setup", self.users["logged_problems"])
            self.results["setup_seconds"] = round(time.monotonic() - t0, 1)
            log(f"setup done in {self.results['setup_seconds']} s")

            sections = {x.strip() for x in o["sections"].split(",")}
            if "latency" in sections:
                await self.latency_and_memory()
            if "cpu" in sections:
                await self.cpu()
        finally:
            for child in self.children:
                await child.close()
            for server in self.servers:
                self.stop_server(server)
            stop(self.worker)
            await self.monitor.stop()
            try:
                self.celery.close()
            except Exception:
                pass
            self.results["redis_cleanup_after"] = cleanup_redis(self.redis)
        self.results["logged_problems"] = self.problems
        self.results["verdicts"] = verdicts(self.results)
        return self.results

    async def latency_and_memory(self):
        o = self.opts
        users = self.users
        log("starting web-bg, web-probe and the Celery worker …")
        bg_server, probe_server = await asyncio.gather(self.start_server("web-bg"), self.start_server("web-probe"))
        worker_pid = await self.start_worker(users["warm"][0])
        await self.warm(bg_server, users["bg"])
        await self.warm(probe_server, users["bg"])
        pid = bg_server["pid"]

        # ---- memory: 0 streams vs N idle streams on one process
        rss0 = await self.settle_rss(pid)
        anon0, threads0, fds0 = proc_status(pid, "RssAnon"), proc_status(pid, "Threads"), open_fds(pid)
        log(f"web-bg warm, {rss0 / 1024:.1f} MB RSS; opening {o['connections']} streams …")
        t, cpu_before_connect = time.monotonic(), cpu_seconds(pid)
        bg_clients, failures = await open_streams(bg_server["port"], users["bg"], self.cookie_name)
        connect_seconds = time.monotonic() - t
        connect_cpu = cpu_seconds(pid) - cpu_before_connect
        if failures:
            log(f"{len(failures)} streams failed to open: {failures[:3]}")
        await asyncio.sleep(3.0)
        rss1 = await self.settle_rss(pid)
        anon1, threads1, fds1 = proc_status(pid, "RssAnon"), proc_status(pid, "Threads"), open_fds(pid)
        n = len(bg_clients)
        memory = {
            "connections": n,
            "failed": len(failures),
            "failures": failures[:5],
            "connect_seconds": round(connect_seconds, 2),
            "rss_idle_kb": rss0,
            "rss_connected_kb": rss1,
            "rss_anon_idle_kb": anon0,
            "rss_anon_connected_kb": anon1,
            "kb_per_connection": round((rss1 - rss0) / n, 2) if n else None,
            "anon_kb_per_connection": round((anon1 - anon0) / n, 2) if n else None,
            "threads_idle": threads0,
            "threads_connected": threads1,
            "fds_idle": fds0,
            "fds_connected": fds1,
            "server_cpu_seconds_to_connect": round(connect_cpu, 2),
        }
        log(f"{n} streams open in {connect_seconds:.1f} s: RSS {rss0 / 1024:.1f} → {rss1 / 1024:.1f} MB, "
            f"{memory['kb_per_connection']} KB per stream, threads {threads0} → {threads1}")
        self.results["memory"] = memory
        self.phase("memory")
        # After django-eventstream's first keep-alive (20 s): the stream's first chunk (2 KB of padding,
        # held as str and as bytes) is let go then.
        wait = 21.5 - (time.monotonic() - t - connect_seconds)
        if o["keepalive_reading"] and wait > 0:
            await asyncio.sleep(wait)
            memory["rss_after_keepalive_kb"] = await self.settle_rss(pid, 1.0)
            memory["kb_per_connection_after_keepalive"] = round((memory["rss_after_keepalive_kb"] - rss0) / n, 2) if n else None
            log(f"after the first keep-alive: {memory['kb_per_connection_after_keepalive']} KB per stream")
        if o["memory_trace"]:
            memory["trace"] = await self.memory_trace()

        # ---- latency: probe on web-probe while load flows to the N streams on web-bg
        probe_user = users["probe"][0]
        entries = [{"pk": u["pk"], "key": u["key"]} for u in users["bg"]]
        latency = {}
        modes = ["cache"] + (["bare"] if o["floor"] else [])
        for mode in modes:
            latency[mode] = await self.latency_run(mode, probe_server, probe_user, entries, bg_clients, pid,
                                                   probe_server["pid"], worker_pid)
        self.results["latency"] = latency
        memory["rss_after_traffic_kb"] = await self.settle_rss(pid, 1.0)
        memory["kb_per_connection_after_traffic"] = round((memory["rss_after_traffic_kb"] - rss0) / n, 2) if n else None
        await close_streams(bg_clients)
        self.stop_server(bg_server)
        self.stop_server(probe_server)
        stop(self.worker)
        self.worker = None

    async def memory_trace(self):
        """Where a stream's memory goes (tracemalloc in a fresh process; Python allocations only)."""
        o = self.opts
        server = await self.start_server("web-traced", "bench.live:traced_asgi_application")
        await self.warm(server, self.users["bg"])
        pid = server["pid"]
        path = os.path.join(DATA_DIR, f"live-tracemalloc-{pid}.json")

        async def take():
            if os.path.exists(path):
                os.remove(path)
            os.kill(pid, signal.SIGUSR1)
            for _ in range(600):
                await asyncio.sleep(0.1)
                if os.path.exists(path):
                    with open(path) as f:
                        return json.load(f)
            raise RuntimeError("no tracemalloc snapshot")

        await take()
        rss0 = rss_kb(pid)
        clients, failures = await open_streams(server["port"], self.users["bg"][: o["connections"]], self.cookie_name)
        await asyncio.sleep(3.0)
        rss1 = rss_kb(pid)
        diff = await take()
        await close_streams(clients)
        self.stop_server(server)
        os.remove(path)
        n = max(1, len(clients))
        per_stream = lambda size: round(size / n / 1024, 2)  # noqa: E731
        result = {
            "connections": len(clients),
            "rss_kb_per_connection_traced": round((rss1 - rss0) / n, 2),
            "python_kb_per_connection": per_stream(diff["total_diff"]),
            "by_file": [{**r, "kb_per_connection": per_stream(r["size_diff"])} for r in diff["by_file"]],
            "by_line": [{**r, "kb_per_connection": per_stream(r["size_diff"])} for r in diff["by_line"]],
        }
        log(f"tracemalloc: {result['python_kb_per_connection']} KB of Python objects per stream")
        return result

    async def latency_run(self, mode, probe_server, probe_user, entries, bg_clients, bg_pid, probe_pid, worker_pid):
        o = self.opts
        label = "our publish step (set_percentage)" if mode == "cache" else "bare send_event"
        log(f"latency [{label}]: {o['rate']:.0f}/s to {len(bg_clients)} streams, "
            f"{o['probe_warmup']}+{o['probes']} probes at {o['probe_rate']:.0f}/s …")
        gate = await self.wait_quiet(f"latency-{mode}")
        probe = await open_stream(probe_server["port"], probe_user["url"], self.cookie_name, probe_user["cookie"],
                                  parse=True)
        procs = max(1, o["load_procs"])
        loads = [LineChild("load", {"mode": mode, "entries": entries[i::procs], "rate": o["rate"] / procs,
                                    "threads": max(1, o["load_threads"] // procs)}) for i in range(procs)]
        for load in loads:
            await load.start()
            self.children.append(load)
        for load in loads:
            await load.read()
        bg_before = sum(c.count for c in bg_clients)
        cpu_before = {name: cpu_seconds(pid) for name, pid in
                      (("web_bg", bg_pid), ("web_probe", probe_pid), ("worker", worker_pid))}
        for load in loads:
            await load.send({"op": "go"})
        await asyncio.sleep(o["load_warmup"])
        probe.events.clear()
        bg_window_start = sum(c.count for c in bg_clients)
        reply = f"{PREFIX}:reply:{self.run_id}:probe:{mode}"
        # Under the cache-API load, our probes alternate with bare send_event probes: the same load and
        # the same machine noise for both.
        kinds = ["cache", "bare"] if mode == "cache" else ["bare"]
        per_kind = o["probe_warmup"] + o["probes"]
        sequence = [kinds[i % len(kinds)] for i in range(per_kind * len(kinds))]
        count = len(sequence)
        interval = 1.0 / (o["probe_rate"] * len(kinds))
        w0 = time.time()
        noise0 = snapshot(self.my_pids())
        self.celery.send_task("bench.live.probe", queue=PREFIX, args=[
            sequence, probe_user["pk"], probe_user["key"], interval, reply])
        got = await asyncio.to_thread(blpop, self.redis, reply, count * interval + 60)
        if got is None:
            raise RuntimeError("the probe task did not finish")
        self.redis.delete(reply)
        await asyncio.sleep(0.5)  # the last events are on their way
        w1 = time.time()
        noise = others_cpu(noise0, snapshot(self.my_pids()))
        bg_window_end = sum(c.count for c in bg_clients)
        for load in loads:
            await load.send({"op": "stop"})
        parts = [await load.read() for load in loads]
        for load in loads:
            await load.close()
            self.children.remove(load)
        load_result = {
            "calls": sum(r["calls"] for r in parts),
            "start": min(r["start"] for r in parts),
            "end": max(r["end"] for r in parts),
            "per_second": {},
            "call_ms": summary_ms([x for r in parts for x in r["call_ms"]]),
            "late_ms": summary_ms([x for r in parts for x in r["late_ms"]]),
            "cpu_seconds": round(sum(r["cpu_seconds"] for r in parts), 2),
            "errors": {},
            "logged_problems": {},
        }
        for r in parts:
            for key, value in r["per_second"].items():
                load_result["per_second"][key] = load_result["per_second"].get(key, 0) + value
            for key, value in r["errors"].items():
                load_result["errors"][key] = load_result["errors"].get(key, 0) + value
            for key, value in r["logged_problems"].items():
                load_result["logged_problems"][key] = load_result["logged_problems"].get(key, 0) + value
        cpu_after = {name: cpu_seconds(pid) for name, pid in
                     (("web_bg", bg_pid), ("web_probe", probe_pid), ("worker", worker_pid))}
        bg_after = sum(c.count for c in bg_clients)
        probe.close()
        reply_data = json.loads(got[1])
        probes = reply_data["probes"]
        self.note_problems(f"probe worker ({mode})", reply_data["problems"])
        self.note_problems(f"load process ({mode})", load_result["logged_problems"])

        # Match the k-th probe with the next downloads event showing its percentage.
        events = [(at, data) for at, kind, data in probe.events if kind == "downloads"]
        samples = {k: {"total": [], "inside": [], "after": [], "lost": 0} for k in kinds}
        unexpected, j = 0, 0
        skip = o["probe_warmup"] * len(kinds)
        for index, kind, p, sent, returned in probes:
            found = None
            while j < len(events):
                at, data = events[j]
                j += 1
                m = VALUENOW.search(data)
                if m and int(m.group(1)) == p:
                    found = at
                    break
                unexpected += 1
            if found is None:
                samples[kind]["lost"] += 1
            elif index >= skip:
                samples[kind]["total"].append((found - sent) * 1000)
                samples[kind]["inside"].append((returned - sent) * 1000)
                samples[kind]["after"].append((found - returned) * 1000)
        by_kind = {k: {"latency_ms": summary_ms(v["total"]), "call_ms": summary_ms(v["inside"]),
                       "after_call_ms": summary_ms(v["after"]), "probes_measured": len(v["total"]),
                       "lost": v["lost"]} for k, v in samples.items()}
        main = by_kind[mode]
        latencies, lost = samples[mode]["total"], sum(v["lost"] for v in samples.values())
        first_t0, last_t0 = probes[skip][3], probes[-1][3]
        achieved = load_result["calls"] / max(1e-9, load_result["end"] - load_result["start"])
        window_rate = _rate_in(load_result["per_second"], first_t0, last_t0)
        result = {
            "mode": mode,
            "label": label,
            "probes_sent": len(probes),
            "probes_measured": len(latencies),
            "lost": lost,
            "unexpected_events": unexpected,
            "latency_ms": main["latency_ms"],
            # The event is published at the end of the call: the call's own time, then pub/sub → client.
            "call_ms": main["call_ms"],
            "after_call_ms": main["after_call_ms"],
            # Under the cache-API load: bare send_event probes interleaved with ours (same load, same noise).
            "interleaved_bare": by_kind.get("bare") if mode == "cache" else None,
            "load_cpu_seconds": load_result["cpu_seconds"],
            "load_processes": procs,
            "load_target_rate": o["rate"],
            "load_calls": load_result["calls"],
            "load_rate_overall": round(achieved, 1),
            "load_rate_probe_window": round(window_rate, 1),
            "load_call_ms": load_result["call_ms"],
            "load_late_ms": load_result["late_ms"],
            "load_errors": load_result["errors"],
            "bg_events_received": bg_after - bg_before,
            "bg_delivered_rate_probe_window": round((bg_window_end - bg_window_start) / max(1e-9, w1 - w0), 1),
            "probe_window_seconds": round(last_t0 - first_t0, 2),
            "cpu_seconds": {k: round(cpu_after[k] - cpu_before[k], 2) for k in cpu_before},
            "run_seconds": round(load_result["end"] - load_result["start"], 2),
            "pubsub": self.monitor.window(w0, w1),
            "pubsub_window_seconds": round(w1 - w0, 2),
            "others_cpus": noise,
            "quiet_gate": gate,
            "loadavg": list(os.getloadavg()),
        }
        lat = result["latency_ms"]
        also = ""
        if result["interleaved_bare"]:
            ib = result["interleaved_bare"]["latency_ms"]
            also = f" [interleaved bare send_event: p50 {ib.get('p50')} ms, p99 {ib.get('p99')} ms]"
        log(f"latency [{label}]: p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms, max {lat.get('max')} ms{also} "
            f"({result['probes_measured']} probes, {lost} lost, other programs {noise:.2f} CPUs); load {result['load_rate_probe_window']}/s achieved "
            f"during the probes, {result['bg_delivered_rate_probe_window']}/s delivered to the background streams")
        return result

    async def cpu(self):
        o = self.opts
        users = self.users["cpu"][: o["cpu_clients"]]
        entries = [{"pk": u["pk"], "key": u["key"]} for u in users]
        # One step per percentage at most (1..99): every step changes every export, so every step is an event.
        steps = max(1, min(99, int(round(o["cpu_seconds"] / o["cpu_interval"]))))
        interval = o["cpu_seconds"] / steps
        out = {"clients": len(users), "interpretation": INTERPRETATION.format(n=len(users), step=round(interval, 2)),
               "steps": steps,
               "step_interval": round(interval, 3)}

        # (a) SSE, 200 users each with their own export (the figure the target is checked on).
        log(f"CPU [SSE]: {len(users)} users each watch their own {o['cpu_seconds']:.0f}-s export …")
        out["sse"] = await self.sse_window("sse", users, entries, steps, interval, per_user=True)
        # (a') SSE, the issue's words taken literally: one export, 200 streams of its one user.
        if o["cpu_literal"]:
            log(f"CPU [SSE, literal]: one user's export watched by {len(users)} streams …")
            out["sse_one_export"] = await self.sse_window("sse-one", [users[0]] * len(users), entries[:1], steps,
                                                          interval, per_user=False)

        # (b) polling: a fresh process that never opened a stream (no Redis listener).
        log(f"CPU [polling]: the same {len(users)} clients GET ajax_update/ every {o['poll_interval']:.0f} s …")
        server = await self.start_server("web-poll")
        await self.warm(server, users, sse=False)
        pid = server["pid"]
        # Calibration: CPU per poll when the process is not saturated (the same clients, a quarter of the rate).
        calib = {"requests": 0, "bytes": 0, "ms": [], "errors": {}, "bad_status": {}, "connections": 0,
                 "in_progress_seen": []}
        slow = o["poll_interval"] * 4
        k0, k1 = cpu_seconds(pid), time.monotonic()
        await asyncio.gather(*(
            poller(server["port"], "/async_downloads/ajax_update/", self.cookie_name, u["cookie"], slow,
                   slow * i / len(users), time.monotonic() + o["poll_calibration"], calib)
            for i, u in enumerate(users)
        ))
        calibration = {
            "seconds": round(time.monotonic() - k1, 2),
            "requests": calib["requests"],
            "requests_per_second": round(calib["requests"] / max(1e-9, time.monotonic() - k1), 1),
            "cpu_ms_per_request": round((cpu_seconds(pid) - k0) * 1000 / max(1, calib["requests"]), 3),
            "response_ms": summary_ms(calib["ms"]),
        }
        log(f"CPU [polling] calibration: {calibration['cpu_ms_per_request']} ms CPU per poll at "
            f"{calibration['requests_per_second']}/s")
        drives, _ = await self.start_drives(entries, steps, interval)
        idle_rate = await self.idle_cpu(pid)
        profiler = await py_spy_start(pid, "poll", o["cpu_seconds"] + 5) if o["profile"] else None
        stats = {"requests": 0, "bytes": 0, "ms": [], "errors": {}, "bad_status": {}, "connections": 0,
                 "in_progress_seen": []}
        gate = await self.wait_quiet("cpu-polling")
        c0, t0, w0 = cpu_seconds(pid), time.monotonic(), time.time()
        noise0 = snapshot([os.getpid(), pid])
        conns0 = self.redis.info("stats")["total_connections_received"]
        for drive in drives:
            await drive.send({"op": "go"})
        deadline = time.monotonic() + o["cpu_seconds"]
        await asyncio.gather(*(
            poller(server["port"], "/async_downloads/ajax_update/", self.cookie_name, u["cookie"], o["poll_interval"],
                   o["poll_interval"] * i / len(users), deadline, stats)
            for i, u in enumerate(users)
        ))
        c1, t1, w1 = cpu_seconds(pid), time.monotonic(), time.time()
        noise1 = snapshot([os.getpid(), pid])
        conns1 = self.redis.info("stats")["total_connections_received"]
        drive_result = await self.finish_drives(drives, timeout=o["cpu_seconds"] * 3 + 60)
        self.note_problems("drive (polling)", drive_result["logged_problems"])
        out["poll"] = {
            "cpu_seconds": round(c1 - c0, 3),
            "window_seconds": round(t1 - t0, 2),
            "idle_cpu_per_second": round(idle_rate, 4),
            "requests": stats["requests"],
            "requests_expected": int(len(users) * o["cpu_seconds"] / o["poll_interval"]),
            "requests_per_second": round(stats["requests"] / max(1e-9, t1 - t0), 1),
            "cpu_ms_per_request": round((c1 - c0) * 1000 / max(1, stats["requests"]), 3),
            "response_ms": summary_ms(stats["ms"]),
            "bytes_per_response": round(stats["bytes"] / max(1, stats["requests"])),
            "bad_status": stats["bad_status"],
            "errors": stats["errors"],
            "connections": stats["connections"],
            "in_progress_seen": stats["in_progress_seen"],
            "drive": drive_result,
            "rss_kb": rss_kb(pid),
            "pubsub": self.monitor.window(w0, w1),
            "calibration": calibration,
            # Server-wide counter (other sites on this Redis included): new connections per poll.
            "redis_connections_opened": conns1 - conns0,
            # Drive processes counted as ours (their CPU over the export; the window is about as long).
            "others_cpus": others_cpu(noise0, noise1, extra_mine=drive_result["cpu_seconds"]),
            "quiet_gate": gate,
        }
        if profiler:
            out["poll"]["profile"] = await py_spy_finish(profiler)
        self.stop_server(server)
        # What serving every poll of the window costs (if the process kept up, this is what it spent).
        poll = out["poll"]
        # What-ifs (not the library as shipped): the fixes suggested for SSE's per-event cost.
        for what in [x.strip() for x in o["what_if"].split(",") if x.strip()]:
            log(f"CPU [SSE what-if: {what}] …")
            if what == "throttle":  # progress published at most once a second per download
                n = max(1, int(o["cpu_seconds"]))
                r = await self.sse_window("sse-throttle", users, entries, n, o["cpu_seconds"] / n, per_user=True,
                                          percent_step=max(1, 99 // n))
            elif what == "oneline":
                r = await self.sse_window("sse-oneline", users, entries, steps, interval, per_user=True,
                                          oneline=True)
            elif what == "hiredis":
                path = os.path.join(DATA_DIR, "hiredis")
                if not os.path.isdir(path):
                    log(f"what-if hiredis: install it first: uv pip install -p .venv --target {path} hiredis")
                    continue
                r = await self.sse_window("sse-hiredis", users, entries, steps, interval, per_user=True,
                                          env={"PYTHONPATH": f"{ROOT}:{path}"})
            else:
                raise ValueError(f"unknown what-if {what!r}")
            out.setdefault("what_if", {})[what] = r

        # Every poll due, at the CPU per poll measured under load (saturated: an upper figure) and at the
        # calibration's (not saturated: the lower, conservative figure, which the verdict uses).
        poll["demand_cpu_seconds"] = round(poll["cpu_ms_per_request"] * poll["requests_expected"] / 1000, 3)
        poll["demand_cpu_seconds_calibrated"] = round(
            min(poll["cpu_ms_per_request"], calibration["cpu_ms_per_request"]) * poll["requests_expected"] / 1000, 3)
        poll["kept_up"] = poll["requests"] >= 0.95 * poll["requests_expected"]
        sse = out["sse"]

        def ratio(polling, streams):
            return round(polling / streams, 2) if streams else None

        out["ratio_measured"] = ratio(poll["cpu_seconds"], sse["cpu_seconds"])
        out["ratio_saturated_cost"] = ratio(poll["demand_cpu_seconds"], sse["cpu_seconds"])
        # The verdict: what serving every poll costs at the lower CPU per poll, against all of SSE's window
        # (streams opened, every event, streams closed). If polling kept up, its measured CPU is used.
        polling = poll["cpu_seconds"] if poll["kept_up"] else poll["demand_cpu_seconds_calibrated"]
        out["polling_cpu_for_verdict"] = polling
        out["ratio"] = ratio(polling, sse["cpu_seconds"])
        if out.get("sse_one_export", {}).get("cpu_seconds"):
            out["ratio_one_export"] = ratio(polling, out["sse_one_export"]["cpu_seconds"])
        for r in out.get("what_if", {}).values():
            r["ratio"] = ratio(polling, r["cpu_seconds"])
        log(f"CPU [polling]: {out['poll']['cpu_seconds']:.2f} s CPU in {out['poll']['window_seconds']} s "
            f"({stats['requests']} requests, {out['poll']['cpu_ms_per_request']} ms CPU each); "
            f"polling / SSE = {out['ratio']}× (one export watched by all the streams: {out.get('ratio_one_export')}×)")
        self.results["cpu"] = out

    async def start_drives(self, entries, steps, interval, **extra):
        """Drive processes (2 when there are several exports: 667 calls/s need more than one GIL here)."""
        procs = 2 if len(entries) > 1 else 1
        drives = [LineChild("drive", {"entries": entries[i::procs], "steps": steps, "interval": interval,
                                      "threads": 4, **extra}) for i in range(procs)]
        for drive in drives:
            await drive.start()
            self.children.append(drive)
        readies = [await drive.read() for drive in drives]
        urls = [None] * len(entries)
        for i, ready in enumerate(readies):
            urls[i::procs] = ready["urls"]
        return drives, urls

    async def finish_drives(self, drives, timeout):
        parts = [await drive.read(timeout=timeout) for drive in drives]
        for drive in drives:
            await drive.close()
            self.children.remove(drive)
        merged = {
            "processes": len(parts),
            "steps": parts[0]["steps"],
            "exports": sum(p["exports"] for p in parts),
            "calls": sum(p["calls"] for p in parts),
            "seconds": round(max(p["seconds"] for p in parts), 2),
            "late_ms_max": max(p["late_ms"].get("max", 0) for p in parts),
            "late_ms_p50": max(p["late_ms"].get("p50", 0) for p in parts),
            "tick_ms_p50": max(p["tick_ms"].get("p50", 0) for p in parts),
            "cpu_seconds": round(sum(p["cpu_seconds"] for p in parts), 2),
            "logged_problems": {},
        }
        for p in parts:
            for key, value in p["logged_problems"].items():
                merged["logged_problems"][key] = merged["logged_problems"].get(key, 0) + value
        return merged

    async def idle_cpu(self, pid, seconds=2.0):
        await asyncio.sleep(1.0)
        before = cpu_seconds(pid)
        await asyncio.sleep(seconds)
        return (cpu_seconds(pid) - before) / seconds

    async def sse_window(self, name, stream_users, entries, steps, interval, per_user, env=None, **drive_extra):
        """CPU of a fresh web process over: open the streams, run the export, close the streams."""
        o = self.opts
        server = await self.start_server(f"web-{name}", env=env)
        await self.warm(server, self.users["cpu"], sse=True)
        drives, urls = await self.start_drives(entries, steps, interval, **drive_extra)
        urls = urls if per_user else [urls[0]] * len(stream_users)
        pid = server["pid"]
        idle_rate = await self.idle_cpu(pid)
        profiler = await py_spy_start(pid, name, o["cpu_seconds"] + 5) if o["profile"] else None
        gate = await self.wait_quiet(f"cpu-{name}")
        c0, t0, w0 = cpu_seconds(pid), time.monotonic(), time.time()
        noise0 = snapshot([os.getpid(), pid])
        clients, failures = await open_streams(server["port"], stream_users, self.cookie_name, urls=urls)
        connect_cpu = cpu_seconds(pid) - c0
        for drive in drives:
            await drive.send({"op": "go"})
        drive_result = await self.finish_drives(drives, timeout=o["cpu_seconds"] * 3 + 60)
        await asyncio.sleep(0.5)
        received = sum(c.count for c in clients)
        await close_streams(clients)
        await asyncio.sleep(0.3)
        c1, t1, w1 = cpu_seconds(pid), time.monotonic(), time.time()
        noise1 = snapshot([os.getpid(), pid])
        self.note_problems(f"drive ({name})", drive_result["logged_problems"])
        expected = drive_result["steps"] * len(stream_users)
        result = {
            "cpu_seconds": round(c1 - c0, 3),
            "connect_cpu_seconds": round(connect_cpu, 3),
            "window_seconds": round(t1 - t0, 2),
            "idle_cpu_per_second": round(idle_rate, 4),
            "streams": len(clients),
            "failed": len(failures),
            "failures": failures[:3],
            "exports": len(entries),
            "events_expected": expected,
            "events_received": received,
            "cpu_ms_per_event": round((c1 - c0) * 1000 / max(1, received), 4),
            "drive": drive_result,
            "rss_kb": rss_kb(pid),
            "pubsub": self.monitor.window(w0, w1),
            "others_cpus": others_cpu(noise0, noise1, extra_mine=drive_result["cpu_seconds"]),
            "quiet_gate": gate,
        }
        if profiler:
            result["profile"] = await py_spy_finish(profiler)
        log(f"CPU [{name}]: {result['cpu_seconds']:.2f} s CPU in {result['window_seconds']} s "
            f"({received}/{expected} events delivered; pub/sub messages in the window: {result['pubsub']})")
        self.stop_server(server)
        return result


class PubSubMonitor:
    """Counts the messages on django-eventstream's one pub/sub channel: ours and other sites' (same Redis)."""

    def __init__(self):
        self.times = {"ours": [], "others": []}
        self.task = None

    async def start(self):
        import redis.asyncio

        from bench import live_settings

        self.client = redis.asyncio.Redis.from_url(live_settings.REDIS_URL, socket_timeout=None)
        self.pubsub = self.client.pubsub()
        await self.pubsub.subscribe("events_channel")
        self.task = asyncio.create_task(self._run())

    async def _run(self):
        mark = f'"channel": "{PREFIX}-'.encode()
        async for message in self.pubsub.listen():
            if message["type"] == "message":
                self.times["ours" if mark in message["data"] else "others"].append(time.time())

    def window(self, start, end):
        return {k: sum(1 for t in v if start <= t <= end) for k, v in self.times.items()}

    async def stop(self):
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except BaseException:
                pass
        try:
            await self.pubsub.aclose()
            await self.client.aclose()
        except Exception:
            pass


INTERPRETATION = (
    "{n} users, each watching their own export in one tab; the {n} exports progress in lockstep "
    "(one step every {step} s), as when many users export at once. One user with {n} tabs is not a real "
    "deployment: browsers open at most 6 EventSource connections per origin over HTTP/1.1."
)


def _rate_in(per_second, start, end):
    """Calls per second over the whole seconds between ``start`` and ``end``."""
    first, last = int(start) + 1, int(end) - 1
    if last < first:
        first, last = int(start), int(end)
    total = sum(per_second.get(str(s), per_second.get(s, 0)) for s in range(first, last + 1))
    return total / (last - first + 1)


# --------------------------------------------------------------------------- py-spy (optional)


def _py_spy():
    """py-spy from .venv, or from bench/.data/tools (``uv pip install --target bench/.data/tools py-spy``,
    which survives ``uv sync``)."""
    import shutil

    for path in (os.path.join(os.path.dirname(sys.executable), "py-spy"), os.path.join(DATA_DIR, "tools", "bin", "py-spy")):
        if os.path.exists(path):
            return path
    return shutil.which("py-spy")


async def py_spy_dump(pid):
    spy = _py_spy()
    if not spy:
        return {"error": "py-spy is not installed (uv pip install -p .venv py-spy)"}
    proc = await asyncio.create_subprocess_exec(spy, "dump", "--pid", str(pid), stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    return {"dump": out.decode()[-4000:], "stderr": err.decode()[-500:]}


async def py_spy_start(pid, name, seconds):
    spy = _py_spy()
    if not spy:
        log("py-spy is not installed: no profile (uv pip install --target bench/.data/tools py-spy)")
        return None
    path = os.path.join(DATA_DIR, f"live-pyspy-{name}.txt")
    if os.path.exists(path):
        os.remove(path)
    proc = await asyncio.create_subprocess_exec(
        spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--format", "raw", "--rate", "250", "--gil",
        "--nonblocking", "--output", path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, path


async def py_spy_finish(profiler, top=25):
    proc, path = profiler
    try:
        await asyncio.wait_for(proc.wait(), 60)
    except asyncio.TimeoutError:
        proc.terminate()
        await proc.wait()
    return summarize_raw_profile(path, top)


def summarize_raw_profile(path, top=25):
    """Own and inclusive sample counts per function of a py-spy ``raw`` (collapsed stacks) file."""
    own, inclusive, total = {}, {}, 0
    try:
        with open(path) as f:
            for line in f:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                if not stack:
                    continue
                count = int(count)
                total += count
                frames = stack.split(";")
                if frames:
                    own[frames[-1]] = own.get(frames[-1], 0) + count
                for frame in set(frames):
                    inclusive[frame] = inclusive.get(frame, 0) + count
    except OSError as error:
        return {"error": repr(error)}
    return {
        "samples": total,
        "file": os.path.relpath(path, ROOT),
        "own": sorted(own.items(), key=lambda kv: -kv[1])[:top],
        "inclusive": sorted(inclusive.items(), key=lambda kv: -kv[1])[:top],
    }


# --------------------------------------------------------------------------- Redis cleanup, machine


def cleanup_redis(client):
    """Delete this benchmark's keys in db 10 (prefix adbench-live); never anything else."""
    removed = 0
    for pattern in (f"{PREFIX}:*", f"event:{PREFIX}-*", f"event_counter:{PREFIX}-*", f"{PREFIX}"):
        batch = []
        for key in client.scan_iter(match=pattern, count=2000):
            batch.append(key)
            if len(batch) >= 1000:
                removed += client.delete(*batch)
                batch = []
        if batch:
            removed += client.delete(*batch)
    return removed


def machine_info():
    info = {"cpu_count": os.cpu_count(), "python": sys.version.split()[0], "loadavg_start": list(os.getloadavg())}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        from importlib.metadata import version

        for package in ("django", "django-eventstream", "uvicorn", "redis", "celery", "asgiref", "h11"):
            info[package] = version(package)
        for package in ("uvloop", "httptools", "hiredis"):
            try:
                info[package] = version(package)
            except Exception:
                info[package] = None
    except Exception:
        pass
    try:
        info["redis_server"] = _redis().info("server").get("redis_version")
    except Exception:
        pass
    return info


# --------------------------------------------------------------------------- verdicts and report


def verdicts(results):
    out = []
    lat = results.get("latency", {}).get("cache")
    if lat and lat["latency_ms"].get("n"):
        out.append({
            "name": "worker set_percentage → client on another web process, p99",
            "target": f"< {TARGET_P99_MS:.0f} ms",
            "measured": f"{lat['latency_ms']['p99']:.1f} ms (p50 {lat['latency_ms']['p50']:.1f} ms)",
            "value": lat["latency_ms"]["p99"],
            "pass": lat["latency_ms"]["p99"] < TARGET_P99_MS and lat["lost"] == 0,
        })
        notes = []
        quiet = results["options"].get("quiet_cpus", 0.5)
        if lat.get("others_cpus", 0) > quiet:
            notes.append(f"machine busy: other programs used {lat['others_cpus']:.2f} of {os.cpu_count()} CPUs "
                         "during the probes")
        ib = (lat.get("interleaved_bare") or {}).get("latency_ms", {})
        if ib.get("p99") is not None:
            notes.append(f"bare send_event interleaved in the same window: p99 {ib['p99']:.1f} ms")
        if notes:
            out[-1]["note"] = "; ".join(notes)
    mem = results.get("memory")
    if mem and mem.get("kb_per_connection") is not None:
        out.append({
            "name": f"memory per idle authenticated SSE connection ({mem['connections']:,} on one process)",
            "target": f"< {TARGET_KB_PER_CONNECTION:.0f} KB",
            "measured": f"{mem['kb_per_connection']:.1f} KB",
            "value": mem["kb_per_connection"],
            "pass": mem["kb_per_connection"] < TARGET_KB_PER_CONNECTION and mem["failed"] == 0,
        })
    cpu = results.get("cpu")
    if cpu and cpu.get("ratio") is not None:
        out.append({
            "name": f"server CPU, {cpu['clients']} clients watching a {results['options']['cpu_seconds']:.0f}-s "
                    "export: polling / SSE",
            "target": f"≥ {TARGET_CPU_RATIO:.0f}×",
            "measured": (f"{cpu['ratio']:.1f}× (polling {cpu['polling_cpu_for_verdict']:.1f} s vs SSE "
                         f"{cpu['sse']['cpu_seconds']:.2f} s)" if cpu["poll"]["kept_up"] else
                         f"{cpu['ratio']:.1f}× (polling {cpu['polling_cpu_for_verdict']:.1f} s = "
                         f"{cpu['poll']['requests_expected']:,} polls × {cpu['poll']['calibration']['cpu_ms_per_request']:.2f}"
                         f" ms, vs SSE {cpu['sse']['cpu_seconds']:.2f} s; as measured {cpu['poll']['cpu_seconds']:.1f} s "
                         f"for the {cpu['poll']['requests']:,} polls served: {cpu['ratio_measured']:.1f}×)"),
            "value": cpu["ratio"],
            "pass": cpu["ratio"] >= TARGET_CPU_RATIO,
        })
        if cpu.get("ratio_one_export"):
            out[-1]["note"] = f"one export watched by one user's {cpu['clients']} streams: {cpu['ratio_one_export']:.1f}×"
    return out


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _ms(value):
    return "–" if value is None else f"{value:.1f}"


def markdown(results, heading=True):
    """The section's text; ``heading=False`` when the report around it has its own heading."""
    o = results["options"]
    parts = ["## Live delivery: latency, memory per stream, CPU against polling", ""] if heading else []
    m = results.get("machine", {})
    parts.append(
        f"`python -m bench.live`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(results.get('finished', time.time())))}, "
        f"{results.get('seconds', 0):.0f} s. {m.get('cpu_count')} CPUs ({m.get('cpu_model', '?')}), Python "
        f"{m.get('python')}, Django {m.get('django')}, django-eventstream {m.get('django-eventstream')}, uvicorn "
        f"{m.get('uvicorn')} (h11, asyncio loop: uvloop {'yes' if m.get('uvloop') else 'no'}, httptools "
        f"{'yes' if m.get('httptools') else 'no'}), redis-py {m.get('redis')} (hiredis {'yes' if m.get('hiredis') else 'no'}), "
        f"Redis server {m.get('redis_server')}. Load average at the start "
        f"{', '.join(str(round(x, 2)) for x in m.get('loadavg_start', []))}."
    )
    parts += ["", _table(["target", "limit", "measured", "result"], [
        [v["name"], v["target"], v["measured"],
         f"**{'PASS' if v['pass'] else 'FAIL'}**" + (f" ({v['note']})" if v.get("note") else "")]
        for v in results["verdicts"]
    ])]

    lat = results.get("latency", {})
    if lat:
        parts += ["", "### Latency: `set_percentage` in a Celery worker → event at a client of another web process", ""]
        lines = []  # (label, load description, run, stats)
        if lat.get("cache"):
            r = lat["cache"]
            lines.append(("**our publish step**: `set_percentage`", "`set_percentage`", r, r))
            if r.get("interleaved_bare"):
                lines.append(("bare `send_event`, interleaved with the probes above", "`set_percentage`", r,
                              r["interleaved_bare"]))
        if lat.get("bare"):
            r = lat["bare"]
            lines.append(("floor: bare `send_event`", "bare `send_event`", r, r))
        rows, split = [], []
        for label, load, r, k in lines:
            s = k["latency_ms"]
            rows.append([
                label, f"{load}, {r['load_rate_probe_window']:.0f}/s (target {r['load_target_rate']:.0f})",
                f"{r['bg_delivered_rate_probe_window']:.0f}/s", s.get("n", 0), f"**{_ms(s.get('p50'))}**",
                _ms(s.get("p90")), f"**{_ms(s.get('p99'))}**", _ms(s.get("max")), k["lost"],
                f"{r.get('others_cpus', 0):.2f}",
            ])
            if k.get("call_ms", {}).get("n"):
                split.append([label, f"{k['call_ms']['p50']:.1f} / {k['call_ms']['p99']:.1f}",
                              f"{k['after_call_ms']['p50']:.1f} / {k['after_call_ms']['p99']:.1f}"])
        rows.append(["reference (issue): django-eventstream alone", "500/s", "", "", "0.8", "", "12", "", "", ""])
        rows.append(["reference (issue): django-eventstream alone", "2,000/s", "", "", "", "", "36", "", "", ""])
        parts.append(_table(["probe", "background load, achieved", "delivered to background streams",
                             "probes", "p50 (ms)", "p90 (ms)", "p99 (ms)", "max (ms)", "lost",
                             "CPUs used by other programs"], rows))
        if split:
            parts += ["", "Where a probe's time goes (p50 / p99, ms): the call in the worker (the event is published "
                      "at its end), then pub/sub → web-probe → client.", "",
                      _table(["probe", "inside the call", "after the call"], split)]
        c = lat.get("cache")
        if c:
            cpu_rows = [[f"{'`set_percentage`' if r['mode'] == 'cache' else 'bare `send_event`'} load",
                         f"{r['run_seconds']:.0f}", f"{r['cpu_seconds']['web_bg']:.1f}",
                         f"{r['cpu_seconds']['web_probe']:.1f}", f"{r['cpu_seconds']['worker']:.1f}",
                         f"{r.get('load_cpu_seconds', 0):.1f}",
                         f"{r['load_call_ms'].get('p50', 0):.2f} / {r['load_call_ms'].get('p99', 0):.2f}",
                         f"{r['load_late_ms'].get('p50', 0):.1f} / {r['load_late_ms'].get('p99', 0):.1f}",
                         f"{r['pubsub']['ours']:,} / {r['pubsub']['others']:,}",
                         f"{r.get('others_cpus', 0):.2f}", f"{r['loadavg'][0]:.1f}"]
                        for r in (lat.get("cache"), lat.get("bare")) if r]
            parts += ["", _table(["during", "seconds", "CPU s web-bg", "CPU s web-probe", "CPU s worker",
                                  "CPU s load processes", "load: one call p50 / p99 (ms)",
                                  "load: behind schedule p50 / p99 (ms)",
                                  "pub/sub messages in the probe window: ours / other sites'",
                                  "CPUs used by other programs in the probe window", "load average after"],
                                 cpu_rows)]
        parts += ["", (
            f"Two uvicorn processes: web-bg holds {results['memory']['connections']:,} idle authenticated streams "
            "(one user each, each user with a download in progress), web-probe holds the probe user's stream. "
            f"{o['load_procs']} load process(es) ({o['load_threads']} threads in all, paced) change the background "
            f"users' downloads {o['rate']:.0f} times a second in all, through `set_percentage` (the cache API) or, "
            "for the floor, django-eventstream's `send_event` of a row rendered beforehand (no lock, record read "
            "or write, rendering). A Celery worker (`--pool solo`) changes the probe user's download "
            f"{o['probe_warmup']} + {o['probes']} times at {o['probe_rate']:.0f}/s per kind, taking `time.time()` "
            "just before and just after each call; under the `set_percentage` load our probes alternate with bare "
            "`send_event` probes of the same row to the same channel, so both see the same load and noise. The "
            "client (asyncio, raw sockets, one process for every client) takes `time.time()` when the bytes of "
            f"the event arrive; each event is matched by its `aria-valuenow`; the first {o['probe_warmup']} probes "
            "of each kind are not counted. Storage, channel manager and web processes are the same for every "
            "probe. Both web processes receive every message of the shared `events_channel` (django-eventstream "
            "has one pub/sub channel for everything, other sites on the same Redis included)."
        )]

    mem = results.get("memory")
    if mem:
        parts += ["", "### Memory per idle authenticated SSE connection", ""]
        parts.append(_table(["", "0 streams (warm)", f"{mem['connections']:,} idle streams", "per stream"], [
            ["VmRSS", f"{mem['rss_idle_kb'] / 1024:.1f} MB", f"{mem['rss_connected_kb'] / 1024:.1f} MB",
             f"**{mem['kb_per_connection']:.1f} KB**"],
            ["RssAnon", f"{mem['rss_anon_idle_kb'] / 1024:.1f} MB", f"{mem['rss_anon_connected_kb'] / 1024:.1f} MB",
             f"{mem['anon_kb_per_connection']:.1f} KB"],
            ["threads", mem["threads_idle"], mem["threads_connected"], ""],
            ["open files", mem["fds_idle"], mem["fds_connected"], ""],
        ] + ([
            ["VmRSS after the first keep-alive (20 s idle)", "",
             f"{mem['rss_after_keepalive_kb'] / 1024:.1f} MB",
             f"{mem['kb_per_connection_after_keepalive']:.1f} KB"]] if mem.get("rss_after_keepalive_kb") else []) + [
            ["VmRSS after the latency runs (each stream got events)", "",
             f"{mem.get('rss_after_traffic_kb', 0) / 1024:.1f} MB",
             f"{mem.get('kb_per_connection_after_traffic') or 0:.1f} KB"],
            ["reference (issue): django-eventstream alone", "", "", "54 KB"],
        ]))
        parts += ["", (
            f"One uvicorn process, warmed up (polls and streams opened and closed) before the first reading. "
            f"{mem['connections']:,} streams opened 32 at a time in {mem['connect_seconds']:.1f} s "
            f"({mem['failed']} failed), then 3 s idle; VmRSS is the median of readings over 2 s. "
            "Each stream is a different user with a signed-cookie session (the user is read from SQLite once "
            "per stream)."
        )]

    trace = (mem or {}).get("trace")
    if trace:
        parts += ["", f"tracemalloc, {trace['connections']:,} streams on a fresh traced process: "
                  f"{trace['python_kb_per_connection']:.1f} KB of Python objects per stream (VmRSS there "
                  f"{trace['rss_kb_per_connection_traced']:.1f} KB, tracing included); the largest sites:", "",
                  _table(["allocated at", "KB per stream", "objects per stream"],
                         [[f"`{r['where']}`", f"{r['kb_per_connection']:.2f}",
                           f"{r['count_diff'] / max(1, trace['connections']):.1f}"] for r in trace["by_line"][:15]])]

    cpu = results.get("cpu")
    if cpu:
        s, p, one = cpu["sse"], cpu["poll"], cpu.get("sse_one_export")
        parts += ["", f"### Server CPU while {cpu['clients']} clients watch a {o['cpu_seconds']:.0f}-second export", ""]
        rows = [
            [f"SSE: {s['streams']} users, each watching their own export", f"**{s['cpu_seconds']:.2f}**",
             f"{s['window_seconds']:.1f}",
             f"{s['streams']} streams opened and closed ({s['failed']} failed), {s['events_received']:,} of "
             f"{s['events_expected']:,} events delivered", f"{s['cpu_ms_per_event']:.3f} ms/event (opening the "
             f"streams: {s['connect_cpu_seconds']:.2f} s)", f"{s['pubsub']['ours']:,} / {s['pubsub']['others']:,}",
             f"{s.get('others_cpus', 0):.2f}"],
        ]
        if one:
            rows.append([
                f"SSE: one user's export watched by {one['streams']} streams", f"{one['cpu_seconds']:.2f}",
                f"{one['window_seconds']:.1f}",
                f"{one['streams']} streams ({one['failed']} failed), {one['events_received']:,} of "
                f"{one['events_expected']:,} events delivered", f"{one['cpu_ms_per_event']:.3f} ms/event (opening: "
                f"{one['connect_cpu_seconds']:.2f} s)", f"{one['pubsub']['ours']:,} / {one['pubsub']['others']:,}",
                f"{one.get('others_cpus', 0):.2f}"])
        rows.append([
            f"legacy polling: `ajax_update/` every {o['poll_interval']:.0f} s", f"**{p['cpu_seconds']:.2f}**",
            f"{p['window_seconds']:.1f}", f"{p['requests']:,} requests (of {p['requests_expected']:,}), "
            f"{p['bytes_per_response']:,} B each, response p50 {_ms(p['response_ms'].get('p50'))} / p99 "
            f"{_ms(p['response_ms'].get('p99'))} ms", f"{p['cpu_ms_per_request']:.2f} ms/request",
            f"{p['pubsub']['ours']:,} / {p['pubsub']['others']:,}", f"{p.get('others_cpus', 0):.2f}"])
        labels = {"throttle": "what-if: progress published at most once a second per download",
                  "oneline": "what-if: the row sent on one line",
                  "hiredis": "what-if: hiredis in the web process"}
        for what, r in cpu.get("what_if", {}).items():
            rows.append([labels.get(what, what), f"{r['cpu_seconds']:.2f}", f"{r['window_seconds']:.1f}",
                         f"{r['events_received']:,} of {r['events_expected']:,} events; ratio to polling "
                         f"{r.get('ratio') or 0:.1f}×", f"{r['cpu_ms_per_event']:.3f} ms/event",
                         f"{r['pubsub']['ours']:,} / {r['pubsub']['others']:,}", f"{r.get('others_cpus', 0):.2f}"])
        c = p["calibration"]
        rows.append([f"legacy polling, calibration: the same clients every {4 * o['poll_interval']:.0f} s",
                     "", f"{c['seconds']:.1f}", f"{c['requests']:,} requests ({c['requests_per_second']:.0f}/s), "
                     f"response p50 {_ms(c['response_ms'].get('p50'))} / p99 {_ms(c['response_ms'].get('p99'))} ms",
                     f"{c['cpu_ms_per_request']:.2f} ms/request", "", ""])
        if not p["kept_up"]:
            rows.append([f"legacy polling, every poll of the window served: {p['requests_expected']:,} × "
                         f"{min(c['cpu_ms_per_request'], p['cpu_ms_per_request']):.2f} ms (at "
                         f"{p['cpu_ms_per_request']:.2f} ms: {p['demand_cpu_seconds']:.1f} s)",
                         f"**{p['demand_cpu_seconds_calibrated']:.2f}**", "", "", "", "", ""])
        rows.append(["**ratio** polling / SSE, users with their own export",
                     f"**{cpu['ratio']:.1f}×**", "", f"polls served only: {cpu['ratio_measured']:.1f}×; at the "
                     f"saturated CPU per poll: {cpu['ratio_saturated_cost']:.1f}×", "", "", ""])
        if cpu.get("ratio_one_export"):
            rows.append(["ratio polling / SSE, one export watched by one user's streams",
                         f"{cpu['ratio_one_export']:.1f}×", "", "", "", "", ""])
        parts.append(_table(["transport", "web process CPU (s)", "window (s)", "work done", "CPU per unit",
                             "pub/sub messages in the window: ours / other sites'",
                             "CPUs used by other programs"], rows))
        parts += ["", (
            f"Interpretation: {cpu['interpretation']} The literal reading (one export, {cpu['clients']} streams "
            "of its user) is shown as well; its polling figure would be the same requests, so the one polling run "
            f"serves both ratios. Separate processes (`--role drive`: two with 4 threads each for one export per user, "
            "one for the single export) call `set_percentage` on every "
            f"export {cpu['steps']} times, every {cpu['step_interval']} s "
            f"({cpu['steps'] * cpu['clients'] / o['cpu_seconds']:.0f} changes/s in all with one export per user). "
            "Each transport is measured on a fresh uvicorn process, warmed up first (the polling one never "
            "opened a stream, so it has no Redis listener, as in a polling-only site); CPU is utime + stime from "
            "/proc/<pid>/stat over the window. An SSE window includes opening the streams (with "
            "`?lastEventId=`, as the page renders it), the export and closing the streams; the polling window "
            f"is the export's {o['cpu_seconds']:.0f} s with the clients' first polls spread over the first second. "
            + ("" if p["kept_up"] else
               f"The polling process did not keep up ({p['requests']:,} of {p['requests_expected']:,} polls answered "
               f"in the window, {p['requests_per_second']:.0f}/s; one Python process, 2 CPUs shared with the "
               "drive processes and the client): its measured CPU is capped by what it could serve, and a "
               "saturated process spends more per poll (threads, GIL hand-offs). The ratio is therefore taken on "
               "every poll due at the lower CPU per poll of the calibration run (the same process, the same "
               "clients at a quarter of the rate, just before the window), which is what the site would have "
               "to provision at the least. ")
            + f"Idle CPU of the processes before their window: SSE {s['idle_cpu_per_second']:.3f} s/s, polling "
            f"{p['idle_cpu_per_second']:.3f} s/s. Every web process that holds a stream also parses every "
            "message of the shared pub/sub channel, other sites' included (last column)."
        )]
        for name, data in (("SSE", s), ("SSE one export", one or {}), ("polling", p)):
            prof = data.get("profile")
            if prof and prof.get("own"):
                parts += ["", f"py-spy of the {name} process ({prof['samples']} samples), top own time:", "",
                          _table(["function", "samples"], [[f"`{f}`", c] for f, c in prof["own"][:12]])]

    parts += ["", "### Where the time and memory go, and what would fix a miss", ""] + analysis(results)
    if results.get("logged_problems"):
        parts += ["", "**The library logged warnings or errors during the run:**", ""]
        parts += [f"- {count}× `{message}`" for message, count in results["logged_problems"].items()]
    return "\n".join(parts) + "\n"


def analysis(results):
    """Findings, from this run's figures and from the profiles taken while writing the benchmark."""
    out = []
    by_name = {v["name"]: v for v in results.get("verdicts", [])}
    lat, mem, cpu = results.get("latency", {}), results.get("memory"), results.get("cpu")
    a = results.get("set_percentage_anatomy") or {}
    c = lat.get("cache")
    if c and c.get("call_ms", {}).get("n"):
        b = c.get("interleaved_bare") or lat.get("bare")
        text = (
            f"- **Latency.** Of the probe's p50 / p99 ({c['latency_ms']['p50']:.1f} / {c['latency_ms']['p99']:.1f} ms), "
            f"{c['call_ms']['p50']:.1f} / {c['call_ms']['p99']:.1f} ms pass inside `set_percentage` in the worker "
            f"(the event is published at its end) and {c['after_call_ms']['p50']:.1f} / "
            f"{c['after_call_ms']['p99']:.1f} ms from there to the client (Redis pub/sub → web-probe → socket)"
        )
        if b and b.get("call_ms", {}).get("n"):
            text += (f"; with bare `send_event` {'interleaved under the same load' if c.get('interleaved_bare') else ''} "
                     f"the same two parts are {b['call_ms']['p50']:.1f} / "
                     f"{b['call_ms']['p99']:.1f} and {b['after_call_ms']['p50']:.1f} / {b['after_call_ms']['p99']:.1f} ms")
        text += (". Delivery is as fast as django-eventstream's own; the tail is the publish step's own work, "
                 "stretched by CPU pressure on a 2-CPU machine: the load processes alone used "
                 f"{c.get('load_cpu_seconds', 0):.0f} CPU-s in {c['run_seconds']:.0f} s for the {c['load_target_rate']:.0f} "
                 f"changes/s, and the 1-minute load average was {c['loadavg'][0]:.1f}.")
        if a:
            text += (
                f" Measured in the worker before any load: one `set_percentage` costs {a['set_percentage_cpu_ms']:.2f} ms "
                f"CPU ({a['set_percentage_wall_ms']:.2f} ms wall) and {a['redis_commands']} Redis commands + "
                f"{a['redis_pipelines']} pipeline, i.e. {a['redis_commands'] + a['redis_pipelines']} sequential round "
                f"trips (lock `add`, record `get`, `set`, lock `get` + `delete`, storage `INCR`, `SET`+`EXPIRE` "
                f"pipeline, `PUBLISH`), and builds {a['redis_clients_built']} `redis.Redis` objects (Django's "
                f"RedisCache makes one per operation: {a['redis_client_build_cpu_us']:.0f} µs each with redis-py "
                f"{results.get('machine', {}).get('redis')}, against {a['redis_get_cpu_us']:.0f} µs CPU for a whole "
                f"`GET`); rendering the row takes {a['render_row_cpu_ms']:.2f} ms ({a['row_bytes']:,} B in "
                f"{a['row_lines']} lines). Every round trip is a point where a busy CPU delays the worker."
            )
        out.append(text)
        miss = by_name.get("worker set_percentage → client on another web process, p99")
        if miss and not miss["pass"]:
            out.append(
                "  *Fix (async_downloads/store.py, sse.py):* halve the round trips of the publish step. (1) Lock with "
                "one `SET key token NX PX` and release with a compare-and-delete Lua script on one reused "
                "`redis.Redis` (3 round trips → 2, no per-call client objects). (2) In `sse.send`, store and publish "
                "in one round trip: a Lua script (or `MULTI` pipeline) doing `INCR` counter, `SET event:… EX`, "
                "`EXPIRE` counter and `PUBLISH events_channel` with django-eventstream's message format, instead of "
                "`EventStorage.append_event` (2 round trips) + `send_event`'s `PUBLISH` (3 → 1). (3) Keep one "
                "`redis.Redis` per pool (a RedisCache subclass whose `get_client` caches the client, or django-redis). "
                "8 → 4 round trips and about a third less CPU per change; the delivery half needs nothing."
            )
    if mem:
        text = (
            f"- **Memory.** {mem['kb_per_connection']:.1f} KB per idle stream (threads {mem['threads_idle']} → "
            f"{mem['threads_connected']} for {mem['connections']:,} streams)"
        )
        if mem.get("kb_per_connection_after_keepalive") is not None:
            text += (f", {mem['kb_per_connection_after_keepalive']:.1f} KB once the first keep-alive has gone out "
                     "(django-eventstream keeps the stream's first chunk, 2 KB of padding, as `str` in its generator "
                     "and Django as `bytes` in `send_response` until the next chunk)")
        text += ". "
        if mem["threads_connected"] - mem["threads_idle"] > mem["connections"] / 2:
            text += (
                "Each stream keeps a thread: Django runs the middleware's `process_response` after the view, "
                "in the request's ThreadSensitiveContext, which creates a new asgiref executor thread that lives "
                "as long as the stream. *Fix:* in `sse.events`, also set `SyncToAsync.thread_sensitive_context` "
                "to None before returning, so the response middleware runs in the shared thread (measured while "
                "writing this benchmark: 63.8 → 32.4 KB per stream, 2,002 → 2 threads). "
            )
        else:
            text += ("No thread per stream (the request's asgiref thread is released, and the response "
                     "middleware runs in the shared thread). ")
        text += (
            "What a stream holds (tracemalloc, `--memory-trace true`, measured while writing this benchmark: "
            "35 KB of Python objects per stream under tracing): Django's ASGI request and handler tasks "
            "(≈5 KB), the response and its first chunk (≈4 KB), django-eventstream's generator, Listener and "
            "EventRequest (≈4 KB), uvicorn's h11 protocol (≈3 KB), asyncio Events, Futures and Tasks (≈6 KB); "
            "the rest is spread thinly."
        )
        trace = mem.get("trace")
        if trace:
            text += (f" This run's trace: {trace['python_kb_per_connection']:.1f} KB of Python objects per stream; "
                     "largest sites in the table above.")
        out.append(text)
    if cpu:
        sse_, poll = cpu["sse"], cpu["poll"]
        per_open = sse_["connect_cpu_seconds"] * 1000 / max(1, sse_["streams"])
        per_event = (sse_["cpu_seconds"] - sse_["connect_cpu_seconds"]) * 1000 / max(1, sse_["events_received"])
        per_watch_sse = sse_["cpu_seconds"] * 1000 / max(1, sse_["streams"])
        cal = poll["calibration"]["cpu_ms_per_request"]
        per_watch_poll = cal * results["options"]["cpu_seconds"] / results["options"]["poll_interval"]
        text = (
            f"- **CPU.** SSE costs {per_open:.1f} ms to open a stream (session, user query on a fresh SQLite "
            f"connection, middleware, django-eventstream set-up) and {per_event:.2f} ms per delivered event; a "
            f"watcher of one export therefore costs {per_watch_sse:.0f} ms, of which the {cpu['steps']} progress "
            f"events are {per_event * cpu['steps']:.0f} ms. A legacy poll costs {cal:.2f} ms at a quarter of the "
            f"rate and {poll['cpu_ms_per_request']:.2f} ms at the full rate, so about {per_watch_poll:.0f} ms per "
            f"watcher over {results['options']['cpu_seconds']:.0f} s. Redis received "
            f"{poll['redis_connections_opened']:,} new connections during the polling window for "
            f"{poll['requests']:,} polls: Django's RedisCache is per request context under ASGI, so every poll "
            "opens a TCP connection (and redis-py 8.1 looks its own version up with importlib.metadata on each "
            "connection, ≈0.2 ms). One uvicorn process served at most "
            f"{poll['requests_per_second']:.0f} polls/s here, against the {cpu['clients']} due."
        )
        out.append(text)
        miss = by_name.get(next((k for k in by_name if k.startswith("server CPU")), ""), None)
        out.append(
            "  Profile of the SSE process (py-spy `--gil`, `--profile true`, taken while writing this benchmark): "
            "redis-py's pure-Python RESP3 parser on the pub/sub connection ≈12 % (hiredis is not installed), "
            "django-eventstream's per-wake `ensure_future` + `asyncio.wait` and `sse_encode_event` (`re.split` "
            "over the row's lines, 5–10 %), `Listener.wake_threadsafe` (a self-pipe write per listener per "
            "event: 13 % when one export has 200 streams), Django's and uvicorn's per-chunk send ≈15 %, opening "
            "streams ≈16 %. Profile of the polling process: new thread per request (asgiref "
            "ThreadSensitiveContext; `ThreadPoolExecutor.submit`/`Thread.start` ≈16 %), the new Redis connection "
            "≈10 %, thread hops of the six sync middlewares, the user query, the template."
        )
        whatif = cpu.get("what_if", {})
        measured = []
        labels = {"throttle": "progress at most once a second", "oneline": "row on one line",
                  "hiredis": "hiredis in the web process"}
        for what, r in whatif.items():
            measured.append(f"{labels.get(what, what)}: SSE {r['cpu_seconds']:.2f} s, {r.get('ratio') or 0:.1f}× "
                            f"(other programs {r.get('others_cpus', 0):.2f} CPUs)")
        if miss and not miss["pass"]:
            out.append(
                "  *Fix (async_downloads/events.py):* the progress events are most of SSE's cost, so coalesce "
                "progress publishes per download: publish a percentage change at once if the previous one went out "
                "≥ 1 s ago, otherwise once at the end of that second with the latest value (a trailing-edge "
                "throttle for UPDATED only; created, completed, failed, cleared and cancelled are never held "
                "back). The first change still arrives within milliseconds, the bar is at most 1 s behind, and a "
                "30-s export sends ≤ 30 progress events instead of 99. Measured with `--what-if throttle` (the "
                "same 200 exports, one step a second): about 2.2–2.4 s of SSE CPU instead of 4.1–6.3 s, 18× "
                "cheaper than polling. Sending the row on one line (`--what-if oneline`) and hiredis "
                "(`--what-if hiredis`) gave no gain beyond the run-to-run noise here (±15 %)."
                + (" This run's what-ifs: " + "; ".join(measured) + "." if measured else "")
            )
        elif measured:
            out.append("  What-ifs of this run: " + "; ".join(measured) + ".")
    return out


# --------------------------------------------------------------------------- entry points


def run(opts=None):
    """Run every measurement; return the results (JSON-able dict with ``verdicts``)."""
    started = time.monotonic()
    bench = Bench(opts)
    results = asyncio.run(bench.main())
    results["seconds"] = round(time.monotonic() - started, 1)
    results["finished"] = time.time()
    return results


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small numbers, for a smoke run")
    for name, (default, _, help_text) in OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f"live_{name}", type=lambda v: v.lower() in ("1", "yes", "true", "on"),
                                default=None, help=f"{help_text} (default {default})")
        else:
            parser.add_argument(flag, dest=f"live_{name}", type=type(default), default=None,
                                help=f"{help_text} (default {default})")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


ROLES = {"setup": role_setup, "load": role_load, "drive": role_drive}


def main(argv):
    opts = parse_args(argv)
    if opts.role:
        os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS
        with open(opts.params) as f:
            params = json.load(f)
        ROLES[opts.role](params)
        return 0
    results = run(opts)
    with open(RESULTS_JSON, "w") as f:
        json.dump(results, f, indent=2)
    text = markdown(results)
    with open(REPORT_MD, "w") as f:
        f.write(text)
    print(text)
    for v in results["verdicts"]:
        note = f" — {v['note']}" if v.get("note") else ""
        log(f"{'PASS' if v['pass'] else 'FAIL'}  {v['name']}: {v['measured']} (target {v['target']}){note}")
    log(f"{results['seconds']:.0f} s; wrote {os.path.relpath(REPORT_MD, ROOT)} and {os.path.relpath(RESULTS_JSON, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

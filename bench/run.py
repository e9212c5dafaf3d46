"""Benchmarks of django-async-downloads; writes bench/report.md and bench/report.json.

    just bench                          # every section
    just bench --only queryset_to_csv   # one section; the others keep their last results
    just bench --list                   # the sections

``just bench`` runs this under ``python -m devtools.redis_server``,
which sets ``REDIS_URL`` to a Redis that answers. Settings: ``bench/settings.py``
(SQLite in bench/.data/, Redis db 12 under the ``adbench`` prefix, files in a
temporary folder removed at the end).

Each measurement runs in a fresh worker process (``run.py --worker NAME``), so
its peak RSS is its own. A section is a function registered with ``@section``
that returns ``{"results": ..., "targets": [...], "markdown": ...}``; the report
is the union of the sections' latest results.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
if sys.path and os.path.abspath(sys.path[0] or ".") == BENCH_DIR:
    sys.path[0] = ROOT
elif ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

REPORT_JSON = os.path.join(BENCH_DIR, "report.json")
REPORT_MD = os.path.join(BENCH_DIR, "report.md")

FILL_ROWS = 1_000_000
# Bump when the model or the generated data change: the database is then rebuilt.
DATA_VERSION = 1
FILL_BATCH = 20_000
SIZES = (100_000, 1_000_000)
REPS = 3
BENCH_USER_PK = 424242
WORKER_TIMEOUT = 600

MAX_RSS_GROWTH_MB = 50
MAX_SLOWDOWN = 1.20

MB = 1024 * 1024


# --------------------------------------------------------------------------- registries

SECTIONS = {}
WORKERS = {}
PROBLEMS = {}  # message -> count, logged by the library in workers of the current section


def section(name, title):
    """Register ``func(opts)`` as a section of the report."""

    def register(func):
        SECTIONS[name] = {"name": name, "title": title, "run": func}
        return func

    return register


def worker(name):
    """Register ``func(**params)`` to run in a fresh process; it returns a JSON-able dict."""

    def register(func):
        WORKERS[name] = func
        return func

    return register


def run_worker(name, **params):
    """Run worker ``name`` in a fresh Python process and return its result.

    Problems the library logged in the worker are collected in ``PROBLEMS``.
    """
    command = [sys.executable, os.path.abspath(__file__), "--worker", name, "--params", json.dumps(params)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=WORKER_TIMEOUT, cwd=ROOT)
    if proc.stderr.strip():
        sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {name} {params} failed with exit code {proc.returncode}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for problem in result.get("logged_problems", []):
        PROBLEMS.setdefault(problem, 0)
        PROBLEMS[problem] += 1
    return result


def worker_main(name, params):
    import logging

    import django

    django.setup()
    # Warnings the library logs (a failed publish, say) change what is measured: report them.
    problems = []

    class Collect(logging.Handler):
        def emit(self, record):
            problems.append(f"{record.levelname} {record.name}: {record.getMessage()}"[:300])

    logging.getLogger("async_downloads").addHandler(Collect(logging.WARNING))
    result = WORKERS[name](**params)
    if isinstance(result, dict):
        result["logged_problems"] = problems
    sys.stdout.write(json.dumps(result) + "\n")


# --------------------------------------------------------------------------- helpers


def log(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def peak_rss_bytes():
    """``ru_maxrss`` of this process, in bytes.

    Linux keeps ru_maxrss across exec, so a worker's value is at least its
    parent's RSS when it was started: the driver therefore stays small (it never
    sets Django up; the database is filled in a worker), and the peak is
    checked against /proc/self/status VmHWM, which is this process's own.
    """
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def vm_hwm_bytes():
    """Peak RSS of this process's address space (Linux VmHWM), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def median(values):
    return statistics.median(values)


def mb(value):
    return value / MB


def fmt_int(value):
    return f"{value:,.0f}"


def md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok):
    return "PASS" if ok else "FAIL"


def result_cell(target):
    cell = f"**{verdict(target['pass'])}**"
    return f"{cell} ({target['note']})" if target.get("note") else cell


def machine_info():
    import django

    info = {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "django": django.get_version(),
        "memory_gb": _memory_gb(),
    }
    try:
        import sqlite3

        info["sqlite"] = sqlite3.sqlite_version
    except ImportError:
        pass
    try:
        import redis
        from django.conf import settings

        server = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1).info("server")
        info["redis_server"] = server.get("redis_version")
        info["redis_py"] = redis.__version__
    except Exception:
        pass
    return info


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gb():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def cpu_seconds():
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# --------------------------------------------------------------------------- data


def data_paths():
    from django.conf import settings

    db = settings.DATABASES["default"]["NAME"]
    return db, db + ".json"


@worker("data")
def ensure_data():
    """A SQLite database with FILL_ROWS orders (ids 1..FILL_ROWS), reused when it is right."""
    from django.db import connection

    from bench.benchapp.models import Order

    db, marker = data_paths()
    expected = {"version": DATA_VERSION, "rows": FILL_ROWS}
    try:
        with open(marker) as f:
            if json.load(f) == expected and Order.objects.count() == FILL_ROWS:
                if Order.objects.filter(pk__lte=FILL_ROWS).count() == FILL_ROWS:
                    return {"reused": True, "seconds": 0.0}
    except Exception:
        pass
    connection.close()
    os.makedirs(os.path.dirname(db), exist_ok=True)
    for path in (db, marker, db + "-journal", db + "-wal", db + "-shm"):
        if os.path.exists(path):
            os.remove(path)
    log(f"Creating {db} with {FILL_ROWS:,} orders (once; later runs reuse it)…")
    start = time.perf_counter()
    fill(FILL_ROWS)
    seconds = time.perf_counter() - start
    with open(marker, "w") as f:
        json.dump(expected, f)
    log(f"Database filled in {seconds:.1f} s.")
    return {"reused": False, "seconds": round(seconds, 2)}


def fill(rows):
    import random
    from decimal import Decimal

    from django.core.management import call_command
    from django.db import connection, transaction

    from bench.benchapp.models import Order

    call_command("migrate", run_syncdb=True, verbosity=0)
    rng = random.Random(20240501)
    first = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Margaret", "Niklaus"]
    last = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Hamilton", "Wirth"]
    customers = [f"{a} {b} & Co. #{n}" for n in range(10) for a in first for b in last]
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA synchronous = OFF")
    with transaction.atomic():
        for base in range(0, rows, FILL_BATCH):
            batch = [
                Order(
                    id=i,
                    reference=f"ORD-{i:08d}",
                    customer=rng.choice(customers),
                    quantity=rng.randint(1, 50),
                    amount=Decimal(rng.randint(100, 10_000_000)).scaleb(-2),
                    created=start + datetime.timedelta(seconds=37 * i),
                    paid=rng.random() < 0.7,
                )
                for i in range(base + 1, min(base + FILL_BATCH, rows) + 1)
            ]
            Order.objects.bulk_create(batch)


def warm_file(path):
    """Read a file once so the first timed run does not pay for a cold page cache."""
    with open(path, "rb") as f:
        while f.read(8 * MB):
            pass


# --------------------------------------------------------------------------- section: queryset_to_csv


def bare_csv(storage, path, header, queryset, row_function, max_size, encoding="utf-8"):
    """The baseline: a csv.writer loop over the same .iterator(), spooled, then saved. No progress."""
    import csv
    import io

    from django.core.files import File

    from async_downloads.shortcuts import ITERATOR_CHUNK_SIZE

    with tempfile.SpooledTemporaryFile(max_size=max_size) as raw:
        text = io.TextIOWrapper(raw, encoding=encoding, newline="")
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(header)
        for obj in queryset.iterator(chunk_size=ITERATOR_CHUNK_SIZE):
            writer.writerow(row_function(obj))
        text.flush()
        raw.seek(0)
        name = storage.save(path, File(raw, name=path))
        text.detach()
        return name


@worker("csv")
def csv_worker(variant, rows, profile=False):
    import gc
    import posixpath
    import uuid

    from django.core.files.storage import storages
    from django.db import connection

    from async_downloads import cache, files, shortcuts
    from async_downloads.conf import settings as app_settings
    from bench.benchapp.export import HEADER, order_queryset, order_row

    storage = files.get_storage()
    queryset = order_queryset(rows)
    connection.ensure_connection()
    progress_writes = 0

    if variant == "lib":
        _, key = cache.init_download(BENCH_USER_PK, f"orders-{rows}.csv")
        real_set_percentage = cache.set_percentage

        def counting_set_percentage(*args, **kwargs):
            nonlocal progress_writes
            progress_writes += 1
            return real_set_percentage(*args, **kwargs)

        # update_percentage calls this only when the shown value changes (a few times per export).
        cache.set_percentage = counting_set_percentage

        def call():
            shortcuts.queryset_to_csv(key, HEADER, queryset, order_row)

    elif variant == "bare":
        path = f"bare/{uuid.uuid4()}/orders-{rows}.csv"
        default_storage = storages["default"]
        max_size = app_settings.IN_MEMORY_MAX_SIZE_BYTES

        def call():
            return bare_csv(default_storage, path, HEADER, queryset, order_row, max_size)

    else:
        raise ValueError(variant)

    gc.collect()
    rss_start = peak_rss_bytes()
    profile_top = cpu = load = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        start = time.perf_counter()
        result = profiler.runcall(call)
        seconds = time.perf_counter() - start
        profile_top = profile_summary(profiler)
    else:
        load = os.getloadavg()[0]
        cpu_start = cpu_seconds()
        start = time.perf_counter()
        result = call()
        seconds = time.perf_counter() - start
        cpu = cpu_seconds() - cpu_start
    rss_peak = peak_rss_bytes()
    hwm_peak = vm_hwm_bytes()

    if variant == "lib":
        record = cache.get_download(key)
        if record is None or record["state"] != cache.COMPLETE:
            raise RuntimeError(f"queryset_to_csv did not complete: {record!r}")
        name = record["filepath"]
        size = storage.size(name)
        percentage = record["percentage"]
        cache.clear_download(key)
    else:
        name = result
        size = storage.size(name)
        percentage = None
        files.delete_folder(storage, posixpath.dirname(name))
    return {
        "variant": variant,
        "rows": rows,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "load_average_1m": load,
        "rss_start": rss_start,
        "rss_peak": rss_peak,
        "hwm_peak": hwm_peak,
        "file_bytes": size,
        "progress_writes": progress_writes,
        "final_percentage": percentage,
        "profile": profile_top,
    }


def profile_summary(profiler, limit=15):
    import pstats

    stats = pstats.Stats(profiler)
    total = stats.total_tt
    entries = []
    for (filename, line, func), (cc, nc, tt, ct, _) in stats.stats.items():
        where = f"{os.path.relpath(filename, ROOT) if filename.startswith(ROOT) else os.path.basename(filename)}:{line}({func})"
        entries.append({"function": where, "calls": nc, "tottime": tt, "cumtime": ct})
    entries.sort(key=lambda e: e["tottime"], reverse=True)
    # Cumulative time of the functions a slowdown would come from.
    focus = {}
    for name in ("update_percentage", "set_percentage", "rows", "order_row", "iterator", "save"):
        for entry in entries:
            if entry["function"].endswith(f"({name})"):
                focus.setdefault(name, []).append(entry)
    return {"total": total, "top": entries[:limit], "focus": focus}


@section("queryset_to_csv", "queryset_to_csv: throughput and peak memory")
def bench_queryset_to_csv(opts):
    sizes, reps = opts.sizes, opts.reps
    data = run_worker("data")
    db, _ = data_paths()
    warm_file(db)
    runs = {n: {"lib": [], "bare": []} for n in sizes}
    for rep in range(reps):
        for index, n in enumerate(sizes):
            order = ("lib", "bare") if (rep + index) % 2 == 0 else ("bare", "lib")
            for variant in order:
                result = run_worker("csv", variant=variant, rows=n)
                runs[n][variant].append(result)
                log(
                    f"rep {rep + 1}/{reps} {n:>9,} rows {variant:>4}: {result['seconds']:6.2f} s, "
                    f"{n / result['seconds']:>9,.0f} rows/s, peak RSS {mb(result['rss_peak']):6.1f} MB"
                )

    summary = {}
    for n in sizes:
        summary[n] = {}
        for variant in ("lib", "bare"):
            results = runs[n][variant]
            seconds = median(r["seconds"] for r in results)
            summary[n][variant] = {
                "median_seconds": round(seconds, 4),
                "median_cpu_seconds": round(median(r["cpu_seconds"] for r in results), 4),
                "rows_per_second": round(n / seconds),
                "median_peak_rss_mb": round(mb(median(r["rss_peak"] for r in results)), 1),
                "max_peak_rss_mb": round(mb(max(r["rss_peak"] for r in results)), 1),
                "median_rss_before_mb": round(mb(median(r["rss_start"] for r in results)), 1),
                "runs_seconds": [round(r["seconds"], 4) for r in results],
                "runs_peak_rss_mb": [round(mb(r["rss_peak"]), 1) for r in results],
                "runs_peak_vmhwm_mb": [round(mb(r["hwm_peak"]), 1) if r["hwm_peak"] else None for r in results],
                "file_bytes": results[0]["file_bytes"],
            }
        lib = runs[n]["lib"]
        summary[n]["lib"]["progress_writes"] = lib[0]["progress_writes"]
        summary[n]["lib"]["final_percentage"] = lib[0]["final_percentage"]
        summary[n]["slowdown"] = round(summary[n]["lib"]["median_seconds"] / summary[n]["bare"]["median_seconds"], 4)
        # Each rep runs lib and bare back to back, under about the same load: their ratio, per rep.
        summary[n]["paired_slowdowns"] = [
            round(a["seconds"] / b["seconds"], 4) for a, b in zip(runs[n]["lib"], runs[n]["bare"])
        ]
        summary[n]["cpu_slowdown"] = round(
            summary[n]["lib"]["median_cpu_seconds"] / summary[n]["bare"]["median_cpu_seconds"], 4
        )
        sizes_seen = {r["file_bytes"] for v in ("lib", "bare") for r in runs[n][v]}
        summary[n]["same_file_size"] = len(sizes_seen) == 1

    small, large = min(sizes), max(sizes)
    growth = {
        variant: round(summary[large][variant]["median_peak_rss_mb"] - summary[small][variant]["median_peak_rss_mb"], 1)
        for variant in ("lib", "bare")
    }
    worst = max(summary[n]["slowdown"] for n in sizes)
    # ru_maxrss against VmHWM: they differ only if a worker inherited a larger parent's peak.
    hwm_gap = max(
        (abs(r["rss_peak"] - r["hwm_peak"]) for n in sizes for v in ("lib", "bare") for r in runs[n][v] if r["hwm_peak"]),
        default=None,
    )
    targets = [
        {
            "name": f"peak memory growth {small:,} → {large:,} rows (queryset_to_csv)",
            "target": f"< {MAX_RSS_GROWTH_MB} MB",
            "measured": f"{growth['lib']:+.1f} MB",
            "value": growth["lib"],
            "pass": growth["lib"] < MAX_RSS_GROWTH_MB,
        },
        {
            "name": "queryset_to_csv time vs bare csv.writer loop (worst size)",
            "target": f"≤ {MAX_SLOWDOWN:.2f}× (within {round((MAX_SLOWDOWN - 1) * 100)}%)",
            "measured": f"{worst:.3f}×",
            "value": worst,
            "pass": worst <= MAX_SLOWDOWN,
        },
    ]
    loads = [r["load_average_1m"] for n in sizes for v in runs[n].values() for r in v]
    cpus = os.cpu_count() or 1
    if max(loads) > cpus:
        targets[1]["note"] = (
            f"machine busy (1-min load {min(loads):.1f}–{max(loads):.1f} on {cpus} CPUs), wall times unreliable; "
            f"CPU-time ratio {max(summary[n]['cpu_slowdown'] for n in sizes):.3f}×"
        )
    if not all(summary[n]["same_file_size"] for n in sizes):
        targets.append(
            {"name": "both variants write the same file", "target": "same size", "measured": "differs",
             "value": None, "pass": False}
        )

    profile = None
    if opts.profile or worst > MAX_SLOWDOWN:
        log(f"Profiling queryset_to_csv ({small:,} rows, cProfile)…")
        profile = run_worker("csv", variant="lib", rows=small, profile=True)["profile"]

    results = {
        "data": {"rows_in_table": FILL_ROWS, **data},
        "sizes": list(sizes),
        "reps": reps,
        "by_rows": {str(n): summary[n] for n in sizes},
        "rss_growth_mb": growth,
        "worst_slowdown": worst,
        "load_average_1m": [min(loads), max(loads)],
        "max_gap_ru_maxrss_vs_vmhwm_mb": None if hwm_gap is None else round(mb(hwm_gap), 1),
        "profile": profile,
    }
    return {"results": results, "targets": targets, "markdown": csv_markdown(results, targets)}


def csv_markdown(results, targets):
    sizes = results["sizes"]
    small, large = min(sizes), max(sizes)
    rows = []
    for n in sizes:
        s = results["by_rows"][str(n)]
        for variant, label in (("lib", "`queryset_to_csv` (progress on)"), ("bare", "bare `csv.writer` loop")):
            v = s[variant]
            rows.append([
                fmt_int(n),
                label,
                f"{v['median_seconds']:.2f}",
                fmt_int(v["rows_per_second"]),
                f"{v['median_cpu_seconds']:.2f}",
                f"{v['median_peak_rss_mb']:.1f}",
                ", ".join(f"{x:.2f}" for x in v["runs_seconds"]),
                f"{v['file_bytes'] / MB:.1f} MB",
            ])
        rows.append([fmt_int(n), "**ratio** lib / bare", f"**{s['slowdown']:.3f}×**", "", f"{s['cpu_slowdown']:.3f}×",
                     "", "per rep: " + ", ".join(f"{x:.2f}×" for x in s["paired_slowdowns"]), ""])
    parts = [
        md_table(["rows", "variant", "median wall time (s)", "rows/s", "median CPU time (s)", "peak RSS (MB)", "runs, wall (s)",
                  "file"], rows),
        "",
        f"Peak RSS growth {small:,} → {large:,} rows: `queryset_to_csv` **{results['rss_growth_mb']['lib']:+.1f} MB**, "
        f"bare loop {results['rss_growth_mb']['bare']:+.1f} MB.",
        "",
        md_table(
            ["target", "limit", "measured", "result"],
            [[t["name"], t["target"], t["measured"], result_cell(t)] for t in targets],
        ),
        "",
        "How it is measured:",
        f"- A SQLite table of {results['data']['rows_in_table']:,} order rows (id, reference, customer, quantity, "
        "decimal amount, aware datetime, boolean); the export is the first N rows by primary key with a row "
        "function that formats all seven columns.",
        "- `queryset_to_csv`: a download created with `init_download`, the real cache API on Redis "
        "(progress at the default resolution, about 11 record writes, each published as an SSE event), "
        "`count()` + `.iterator(chunk_size=2000)`, CSV written through a `SpooledTemporaryFile` of "
        "`IN_MEMORY_MAX_SIZE_BYTES` (10 MB) and saved with `FileSystemStorage`; the record must end complete.",
        "- Bare loop: `csv.writer(...).writerow(row_function(obj))` for each object of the same "
        "`.iterator(chunk_size=2000)`, into a `SpooledTemporaryFile` of the same size limit, then `storage.save`; "
        "no count, no progress, no cache.",
        f"- Each run is a fresh process (peak RSS = `ru_maxrss`, which includes Python + Django, about "
        f"{results['by_rows'][str(small)]['bare']['median_rss_before_mb']:.0f} MB before the export starts"
        + (f"; it agrees with /proc VmHWM within {results['max_gap_ru_maxrss_vs_vmhwm_mb']:.1f} MB"
           if results.get("max_gap_ru_maxrss_vs_vmhwm_mb") is not None else "")
        + "); "
        f"{results['reps']} run(s) per variant and size, in alternating order, median shown. Both variants write "
        "byte-for-byte the same amount of CSV (checked).",
        "- The targets use wall time. CPU time (user + system of the worker) is shown as a cross-check that "
        "other load on the machine moves less; it leaves out the waits on Redis. 1-minute load average "
        f"during the runs: {results['load_average_1m'][0]:.2f}–{results['load_average_1m'][1]:.2f} "
        f"on {os.cpu_count()} CPUs"
        + (" — the machine was busy, so wall times are noisy." if results["load_average_1m"][1] > (os.cpu_count() or 1)
           else "."),
    ]
    profile = results.get("profile")
    if profile:
        parts += ["", f"cProfile of `queryset_to_csv`, {small:,} rows (total {profile['total']:.2f} s under the profiler), "
                  "top functions by own time:", ""]
        shares = [
            f"`{name}` {e[0]['cumtime']:.3f} s ({e[0]['cumtime'] / profile['total']:.0%})"
            for name, e in profile["focus"].items()
            if name in ("update_percentage", "set_percentage", "order_row", "rows")
        ]
        if shares:
            parts[-2] = parts[-2].replace("top functions", "cumulative time of " + ", ".join(shares) + "; top functions")
        parts.append(md_table(
            ["function", "calls", "own time (s)", "cumulative (s)"],
            [[f"`{e['function']}`", fmt_int(e["calls"]), f"{e['tottime']:.3f}", f"{e['cumtime']:.3f}"]
             for e in profile["top"]],
        ))
    return "\n".join(parts)


# --------------------------------------------------------------------------- section: update_percentage


@worker("progress")
def progress_worker(calls, writes, repeat):
    import timeit

    import redis

    from async_downloads import cache

    _, key = cache.init_download(BENCH_USER_PK, "progress.csv")
    update = cache.update_percentage
    huge = 10**12

    # 1. Calls that do not change the shown value: the first call shows 0 %, the rest keep it.
    update(key, huge, 0)
    loop = range(calls)

    def noop(download_key, total, cur, resolution=10):
        return None

    stmt = "for i in loop: f(key, total, i)"
    gross = timeit.Timer(stmt, globals={"loop": loop, "f": update, "key": key, "total": huge}).repeat(repeat, 1)
    empty = timeit.Timer(stmt, globals={"loop": loop, "f": noop, "key": key, "total": huge}).repeat(repeat, 1)
    record = cache.get_download(key)
    if record["percentage"] != 0 or record["state"] != cache.RUNNING:
        raise RuntimeError(f"unexpected record after the no-write calls: {record!r}")

    # 2. A whole export's worth: one call per row of 1,000,000 rows, writes included.
    _, export_key = cache.init_download(BENCH_USER_PK, "progress-export.csv")
    export_rows = 1_000_000
    real_set_percentage = cache.set_percentage
    export_writes = 0

    def counting(*args, **kwargs):
        nonlocal export_writes
        export_writes += 1
        return real_set_percentage(*args, **kwargs)

    cache.set_percentage = counting
    start = time.perf_counter()
    for i in range(export_rows):
        update(export_key, export_rows, i)
    export_seconds = time.perf_counter() - start
    cache.set_percentage = real_set_percentage
    export_record = cache.get_download(export_key)

    # 3. Calls that write: set_percentage to a new value each time, on a real record.
    values = [1 + i % 98 for i in range(writes + 50)]
    for value in values[:50]:  # warm-up: connections, templates
        cache.set_percentage(key, value)
    samples = []
    for value in values[50:]:
        value = value if value != cache.get_download(key)["percentage"] else value + 1
        t0 = time.perf_counter_ns()
        cache.set_percentage(key, value)
        samples.append(time.perf_counter_ns() - t0)
    final = cache.get_download(key)["percentage"]

    # Round trips to Redis of one writing call.
    counts = {"commands": 0, "pipelines": 0}
    real_execute = redis.Redis.execute_command
    real_pipeline = redis.client.Pipeline.execute

    def counted_execute(self, *args, **kwargs):
        counts["commands"] += 1
        return real_execute(self, *args, **kwargs)

    def counted_pipeline(self, *args, **kwargs):
        counts["pipelines"] += 1
        return real_pipeline(self, *args, **kwargs)

    redis.Redis.execute_command = counted_execute
    redis.client.Pipeline.execute = counted_pipeline
    try:
        cache.set_percentage(key, 1 if final != 1 else 2)
    finally:
        redis.Redis.execute_command = real_execute
        redis.client.Pipeline.execute = real_pipeline

    cache.clear_download(key)
    cache.clear_download(export_key)
    samples.sort()
    return {
        "calls": calls,
        "repeat": repeat,
        "no_write_gross_ns": [t / calls * 1e9 for t in gross],
        "empty_loop_ns": [t / calls * 1e9 for t in empty],
        "export_rows": export_rows,
        "export_seconds": export_seconds,
        "export_writes": export_writes,
        "export_final_percentage": export_record["percentage"],
        "writes": len(samples),
        "write_ns_median": statistics.median(samples),
        "write_ns_p10": samples[len(samples) // 10],
        "write_ns_p90": samples[len(samples) * 9 // 10],
        "write_ns_mean": statistics.fmean(samples),
        "write_redis_commands": counts["commands"],
        "write_redis_pipelines": counts["pipelines"],
    }


@section("update_percentage", "update_percentage: cost of one call")
def bench_update_percentage(opts):
    r = run_worker("progress", calls=1_000_000, writes=2_000, repeat=5)
    gross = median(r["no_write_gross_ns"])
    empty = median(r["empty_loop_ns"])
    results = {
        "no_write_ns_per_call": round(gross - empty, 1),
        "no_write_ns_per_call_gross": round(gross, 1),
        "no_write_ns_per_call_best": round(min(r["no_write_gross_ns"]) - min(r["empty_loop_ns"]), 1),
        "loop_and_call_overhead_ns": round(empty, 1),
        "no_write_calls_timed": r["calls"],
        "timeit_repeats": r["repeat"],
        "export_rows": r["export_rows"],
        "export_ns_per_row": round(r["export_seconds"] / r["export_rows"] * 1e9, 1),
        "export_writes": r["export_writes"],
        "export_final_percentage": r["export_final_percentage"],
        "write_us_median": round(r["write_ns_median"] / 1000, 1),
        "write_us_p10": round(r["write_ns_p10"] / 1000, 1),
        "write_us_p90": round(r["write_ns_p90"] / 1000, 1),
        "write_us_mean": round(r["write_ns_mean"] / 1000, 1),
        "writes_timed": r["writes"],
        "write_redis_commands": r["write_redis_commands"],
        "write_redis_pipelines": r["write_redis_pipelines"],
    }
    log(
        f"update_percentage: {results['no_write_ns_per_call']:.0f} ns/call without a write; "
        f"a write {results['write_us_median']:.0f} µs; 1M-row export {results['export_ns_per_row']:.0f} ns/row"
    )
    markdown = "\n".join([
        md_table(
            ["what", "cost"],
            [
                ["`update_percentage`, shown value unchanged (the common case), net of loop + call of a no-op",
                 f"**{results['no_write_ns_per_call']:.0f} ns/call**"],
                ["same, gross (loop + call included)", f"{results['no_write_ns_per_call_gross']:.0f} ns/call"],
                ["a Python loop calling a no-op function of the same signature", f"{results['loop_and_call_overhead_ns']:.0f} ns/call"],
                [f"one call per row of a {results['export_rows']:,}-row export (total = rows, resolution 10), "
                 f"{results['export_writes']} writes included", f"{results['export_ns_per_row']:.0f} ns/row (gross)"],
                ["a call that writes (`set_percentage` to a new value on a real record)",
                 f"**{results['write_us_median']:.0f} µs** median (p10 {results['write_us_p10']:.0f}, "
                 f"p90 {results['write_us_p90']:.0f} µs)"],
                ["Redis round trips of one writing call",
                 f"{results['write_redis_commands']} commands + {results['write_redis_pipelines']} pipelines"],
            ],
        ),
        "",
        f"Non-writing calls: `timeit`, {results['no_write_calls_timed']:,} calls with `total = 10**12` (the value "
        f"stays 0 %), {results['timeit_repeats']} repeats, median. Writing calls: {results['writes_timed']:,} "
        "`set_percentage` calls, each to a value different from the stored one, timed one by one; a write takes "
        "the record's lock, reads, stores and publishes the change (rendered row, SSE event on Redis). "
        f"The export line checks the real pattern: {results['export_writes']} writes for 1M rows, ending at "
        f"{results['export_final_percentage']} % (100 comes with the file).",
    ])
    return {"results": results, "targets": [], "markdown": markdown}


# --------------------------------------------------------------------------- live delivery


@section("ws_latency", "WS mode: latency of one update, WebSocket next to SSE")
def bench_ws_latency(opts):
    from bench import ws_latency

    r = ws_latency.run()
    rows = [
        [name, r[name]["n"], f"{r[name]['p50_ms']} ms", f"{r[name]['p99_ms']} ms", r[name].get("lost", 0)]
        for name in ("ws", "sse")
    ]
    log(f"ws_latency: WS p50 {r['ws']['p50_ms']} / p99 {r['ws']['p99_ms']} ms; "
        f"SSE p50 {r['sse']['p50_ms']} / p99 {r['sse']['p99_ms']} ms")
    markdown = "\n".join([
        md_table(["transport", "updates", "p50", "p99", "lost"], rows),
        "",
        "From `set_percentage` in a worker process (time taken just before the call) to the message at a "
        "client of a uvicorn process (same machine clock); WebSocket through channels-redis, SSE through "
        "django-eventstream's Redis pub/sub, measured one after the other in the same run.",
    ])
    return {"results": r, "targets": [], "markdown": markdown}


@section("live", "Live delivery: latency, memory per stream, CPU against polling")
def bench_live(opts):
    from bench import live

    r = live.run()
    for verdict in r["verdicts"]:
        log(f"live: {verdict['name']}: {verdict['measured']} (target {verdict['target']})")
    return {"results": r, "targets": r["verdicts"], "markdown": live.markdown(r, heading=False)}


@section("load", "Under load: 4 workers, 100 exports, 500 SSE clients on 2 web processes")
def bench_load(opts):
    from bench import load

    r = load.bench_run()
    f, x = r["figures"], r["findings"]
    log(f"load: {f['exports_per_minute']} exports/min, {f['events_delivered_per_second']} events/s delivered, "
        f"latency p50 {f['latency_ms'].get('p50')} / p99 {f['latency_ms'].get('p99')} ms; lost "
        f"{x['lost_final_states']}/{x['lost_events']}, duplicated {x['duplicated_events']}, "
        f"leaked {x['leaked_messages']}")
    targets = [
        {"name": "every client ends with the final state of each of its user's downloads",
         "target": "0 lost", "measured": f"{x['lost_final_states']} final states, {x['lost_events']} events",
         "value": x["lost_final_states"] + x["lost_events"],
         "pass": not (x["lost_final_states"] or x["lost_events"] or x["connect_failures"])},
        {"name": "no event id received twice on one connection", "target": "0 duplicated",
         "measured": str(x["duplicated_events"]), "value": x["duplicated_events"], "pass": not x["duplicated_events"]},
        {"name": "no client receives another user's row", "target": "0 leaked",
         "measured": str(x["leaked_messages"]), "value": x["leaked_messages"], "pass": not x["leaked_messages"]},
    ]
    return {"results": r, "targets": targets, "markdown": load.markdown(r)}


# --------------------------------------------------------------------------- report


def load_report():
    try:
        with open(REPORT_JSON) as f:
            report = json.load(f)
        return report if isinstance(report, dict) else {}
    except (OSError, ValueError):
        return {}


def write_report(new_sections, keep_previous, machine, started):
    previous = load_report().get("sections", {}) if keep_previous else {}
    sections = {}
    for name in SECTIONS:
        if name in new_sections:
            sections[name] = new_sections[name]
        elif name in previous:
            sections[name] = previous[name]
    report = {
        "generated": started,
        "command": "just bench " + " ".join(sys.argv[1:]),
        "machine": machine,
        "targets": [
            {"section": name, **{k: v for k, v in t.items()}} for name, s in sections.items() for t in s["targets"]
        ],
        "sections": sections,
    }
    report["all_pass"] = all(t["pass"] for t in report["targets"])
    with open(REPORT_JSON, "w") as f:
        json.dump(report, f, indent=2, ensure_ascii=False)
        f.write("\n")
    with open(REPORT_MD, "w") as f:
        f.write(render_markdown(report))
    return report


def render_markdown(report):
    machine = report["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Written by `just bench` (bench/run.py) on {report['generated']}. Figures of each section come from "
        "its latest run (date below); bench/report.json holds the same numbers.",
        "",
        "## Targets",
        "",
    ]
    if report["targets"]:
        lines.append(md_table(
            ["section", "target", "limit", "measured", "result"],
            [[t["section"], t["name"], t["target"], t["measured"], result_cell(t)]
             for t in report["targets"]],
        ))
    else:
        lines.append("No targets in the sections run so far.")
    lines += [
        "",
        "## Machine",
        "",
        md_table(["", ""], [
            ["CPU", f"{machine.get('cpu_model')} — {machine.get('cpu_count')} CPUs ({machine.get('cpus_usable')} usable)"],
            ["memory", f"{machine.get('memory_gb')} GB"],
            ["OS", machine.get("platform")],
            ["Python", machine.get("python")],
            ["Django", machine.get("django")],
            ["SQLite", machine.get("sqlite")],
            ["Redis", f"server {machine.get('redis_server')}, redis-py {machine.get('redis_py')}"],
        ]),
    ]
    for name, data in report["sections"].items():
        lines += ["", f"## {data['title']}", ""]
        note = f"Section `{name}`, run {data['ran_at']} ({data['seconds']:.0f} s"
        if data.get("load_average"):
            note += f", load average before {data['load_average'][0]}"
        note += ")."
        if data.get("machine") and data["machine"] != machine:
            note += (f" Measured on another setup: {data['machine'].get('cpu_count')} CPUs, Python "
                     f"{data['machine'].get('python')}, Django {data['machine'].get('django')}.")
        lines += [note, "", data["markdown"]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this section (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the sections and exit")
    parser.add_argument("--reps", type=int, default=REPS, help=f"timed runs per variant and size (default {REPS})")
    parser.add_argument("--sizes", default=",".join(str(n) for n in SIZES),
                        help="row counts, comma-separated (default 100000,1000000)")
    parser.add_argument("--profile", action="store_true", help="include a cProfile of queryset_to_csv even on PASS")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    opts.sizes = tuple(sorted({int(s.replace("_", "")) for s in opts.sizes.split(",") if s.strip()}))
    if not opts.sizes or max(opts.sizes) > FILL_ROWS or min(opts.sizes) < 1:
        parser.error(f"--sizes must be between 1 and {FILL_ROWS:,}")
    if opts.reps < 1:
        parser.error("--reps must be at least 1")
    for name in opts.only or []:
        if name not in SECTIONS:
            parser.error(f"unknown section {name!r}; sections: {', '.join(SECTIONS)}")
    return opts


def cleanup_redis():
    """Remove the keys the benchmarks made (prefix adbench); never anything else."""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    removed = 0
    for pattern in ("adbench:*", "event:adbench-*", "event_counter:adbench-*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            removed += client.delete(*keys)
    return removed


def main(argv):
    opts = parse_args(argv)
    if opts.worker:
        return worker_main(opts.worker, json.loads(opts.params))
    if opts.list:
        for name, s in SECTIONS.items():
            print(f"{name:20} {s['title']}")
        return 0

    media = tempfile.mkdtemp(prefix="adbench-media-")
    os.environ["ADBENCH_MEDIA_DIR"] = media
    try:
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        machine = machine_info()
        names = opts.only or list(SECTIONS)
        new_sections = {}
        for name in names:
            s = SECTIONS[name]
            log(f"Section {name}: {s['title']}")
            load = load_average()
            PROBLEMS.clear()
            t0 = time.perf_counter()
            out = s["run"](opts)
            if PROBLEMS:
                log(f"Section {name}: the library logged {sum(PROBLEMS.values())} warning(s) or error(s); "
                    "see the report.")
                out["markdown"] += (
                    "\n\n**Warning:** the library logged warnings or errors during these measurements, "
                    "so the figures may not describe its normal path:\n\n"
                    + "\n".join(f"- {count}× `{message}`" for message, count in PROBLEMS.items())
                )
            out["logged_problems"] = dict(PROBLEMS)
            new_sections[name] = {
                "title": s["title"],
                "ran_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "seconds": round(time.perf_counter() - t0, 1),
                "load_average": load,
                "machine": machine,
                **out,
            }
        report = write_report(new_sections, keep_previous=bool(opts.only), machine=machine, started=started)
    finally:
        shutil.rmtree(media, ignore_errors=True)
        try:
            cleanup_redis()
        except Exception as exc:  # the report is written; say so and go on
            log(f"Could not clean up Redis keys: {exc}")
    for t in report["targets"]:
        note = f" — {t['note']}" if t.get("note") else ""
        log(f"{verdict(t['pass'])}  {t['section']}: {t['name']}: {t['measured']} (target {t['target']}){note}")
    log(f"Wrote {os.path.relpath(REPORT_MD, ROOT)} and {os.path.relpath(REPORT_JSON, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]) or 0)

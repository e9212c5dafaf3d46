"""Benchmarks of django-async-downloads; writes bench/report.md and bench/report.json.

    just bench                          # every section
    just bench queryset_to_csv live     # these sections; the others keep their last results
    just bench --list                   # the sections

``just bench`` runs this under ``python -m devtools.redis_server``, which sets ``REDIS_URL``
to a Redis that answers. Settings: bench/settings.py (``ADBENCH_SCENARIO`` picks the
scenario). A section is a function registered with ``@section`` that returns
``{"results": ..., "targets": [...], "markdown": ...}``; the report is the union of the
sections' latest results. Each CSV measurement runs in a fresh process
(``run.py --worker NAME``), so that its peak RSS is its own.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
if sys.path and os.path.abspath(sys.path[0] or ".") == BENCH_DIR:
    sys.path[0] = ROOT
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
RUN = os.environ.setdefault("ADBENCH_RUN", uuid.uuid4().hex[:8])  # in every key of this run (bench/base_settings.py)

from bench.common import child_result, how_measured, log, md_table, wait_quiet  # noqa: E402

REPORT_JSON = os.path.join(BENCH_DIR, "report.json")
REPORT_MD = os.path.join(BENCH_DIR, "report.md")

FILL_ROWS = 1_000_000
DATA_VERSION = 1  # bump when the model or the generated data change: the database is then rebuilt
SIZES = (100_000, 1_000_000)
REPS = 3
BENCH_USER_PK = 424242
MAX_RSS_GROWTH_MB = 50
MAX_SLOWDOWN = 1.20
QUIET_WAIT = 300  # seconds the CSV runs may wait in all for other programs to use less than half a CPU
MB = 1024 * 1024

SECTIONS = {}
WORKERS = {}
PROBLEMS = {}  # what the library logged in the workers of the current section -> count


def section(name, title):
    def register(func):
        SECTIONS[name] = {"title": title, "run": func}
        return func

    return register


def worker(name):
    def register(func):
        WORKERS[name] = func
        return func

    return register


def run_worker(name, **params):
    """Run worker ``name`` in a fresh Python process; return its result."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", name, "--params", json.dumps(params)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {name} {params} failed with exit code {proc.returncode}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for problem in result.pop("logged_problems", []):
        PROBLEMS[problem] = PROBLEMS.get(problem, 0) + 1
    return result


def worker_main(name, params):
    child_result(WORKERS[name], params)


def peak_rss_bytes():
    """Peak RSS of this process's own address space: Linux's VmHWM, which exec starts afresh.

    ``ru_maxrss`` is no measure of a child here: Linux carries it over from the
    parent at fork and keeps it across exec, so a child of a large driver shows
    the driver's peak. Elsewhere (no /proc) ``ru_maxrss`` is all there is.
    """
    with_proc = vm_hwm_bytes()
    return with_proc if with_proc is not None else ru_maxrss_bytes()


def ru_maxrss_bytes():
    """``ru_maxrss`` of this process, the cross-check of ``peak_rss_bytes``."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def vm_hwm_bytes():
    """Linux VmHWM of this process (None without /proc)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def process_cpu_seconds():
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_info():
    import sqlite3

    import django
    import redis
    from django.conf import settings

    info = {"cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "platform": platform.platform(), "python": platform.python_version(), "django": django.get_version(),
            "sqlite": sqlite3.sqlite_version, "redis_py": redis.__version__}
    for path, field, key in (("/proc/cpuinfo", "model name", "cpu_model"), ("/proc/meminfo", "MemTotal", "memory")):
        with open(path) as f:
            info[key] = next((line.split(":", 1)[1].strip() for line in f if line.startswith(field)), None)
    info["memory_gb"] = round(int(info.pop("memory").split()[0]) / 1024 / 1024, 1)
    info["redis_server"] = redis.Redis.from_url(settings.REDIS_URL).info("server").get("redis_version")
    return info


# --------------------------------------------------------------------------- section: queryset_to_csv


@worker("data")
def ensure_data():
    """A SQLite database with FILL_ROWS orders (ids 1..FILL_ROWS), reused when it is right."""
    from django.conf import settings

    from bench.benchapp.models import Order

    db = settings.DATABASES["default"]["NAME"]
    marker, expected = db + ".json", {"version": DATA_VERSION, "rows": FILL_ROWS}
    try:
        with open(marker) as f:
            reused = json.load(f) == expected and Order.objects.filter(pk__lte=FILL_ROWS).count() == FILL_ROWS
    except Exception:
        reused = False
    if not reused:
        fill(db, marker, expected)
    with open(db, "rb") as f:  # the first timed run should not pay for a cold page cache
        while f.read(8 * MB):
            pass
    return {"reused": reused}


def fill(db, marker, expected):
    import random
    from decimal import Decimal

    from django.core.management import call_command
    from django.db import connection, transaction

    from bench.benchapp.models import Order

    connection.close()
    for path in (db, marker, db + "-journal"):
        if os.path.exists(path):
            os.remove(path)
    log(f"Creating {db} with {FILL_ROWS:,} orders (once; later runs reuse it)…")
    call_command("migrate", run_syncdb=True, verbosity=0)
    rng = random.Random(20240501)
    first = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Margaret", "Niklaus"]
    last = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Hamilton", "Wirth"]
    customers = [f"{a} {b} & Co. #{n}" for n in range(10) for a in first for b in last]
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA synchronous = OFF")
    with transaction.atomic():
        for base in range(0, FILL_ROWS, 20_000):
            Order.objects.bulk_create([
                Order(id=i, reference=f"ORD-{i:08d}", customer=rng.choice(customers), quantity=rng.randint(1, 50),
                      amount=Decimal(rng.randint(100, 10_000_000)).scaleb(-2),
                      created=start + datetime.timedelta(seconds=37 * i), paid=rng.random() < 0.7)
                for i in range(base + 1, min(base + 20_000, FILL_ROWS) + 1)
            ])
    with open(marker, "w") as f:
        json.dump(expected, f)


def bare_csv(storage, path, header, queryset, row_function, max_size):
    """The baseline: a csv.writer loop over the same .iterator(), spooled, then saved. No progress."""
    import csv
    import io
    import tempfile

    from django.core.files import File

    from async_downloads.shortcuts import ITERATOR_CHUNK_SIZE

    with tempfile.SpooledTemporaryFile(max_size=max_size) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
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
def csv_worker(variant, rows):
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
    if variant == "lib":
        _, key = cache.init_download(BENCH_USER_PK, f"orders-{rows}.csv")

        def call():
            shortcuts.queryset_to_csv(key, HEADER, queryset, order_row)
    else:
        path = f"bare/{uuid.uuid4()}/orders-{rows}.csv"

        def call():
            return bare_csv(storages["default"], path, HEADER, queryset, order_row,
                            app_settings.IN_MEMORY_MAX_SIZE_BYTES)

    gc.collect()
    rss_start, load, cpu0 = peak_rss_bytes(), os.getloadavg()[0], process_cpu_seconds()
    start = time.perf_counter()
    name = call()
    seconds, cpu = time.perf_counter() - start, process_cpu_seconds() - cpu0
    if variant == "lib":
        record = cache.get_download(key)
        if record is None or record["state"] != cache.COMPLETE:
            raise RuntimeError(f"queryset_to_csv did not complete: {record!r}")
        name = record["filepath"]
    size = storage.size(name)
    if variant == "lib":
        cache.clear_download(key)
    else:
        files.delete_folder(storage, posixpath.dirname(name))
    return {"seconds": seconds, "cpu_seconds": cpu, "load_average_1m": load, "rss_start": rss_start,
            "rss_peak": peak_rss_bytes(), "hwm_peak": ru_maxrss_bytes(), "file_bytes": size}


@section("queryset_to_csv", "queryset_to_csv: throughput and peak memory")
def bench_queryset_to_csv(opts):
    run_worker("data")
    runs = {n: {"lib": [], "bare": []} for n in SIZES}
    budget = QUIET_WAIT
    for rep in range(opts.reps):
        for index, n in enumerate(SIZES):
            for variant in ("lib", "bare") if (rep + index) % 2 == 0 else ("bare", "lib"):
                budget -= wait_quiet([os.getpid()], budget, "queryset_to_csv")
                r = run_worker("csv", variant=variant, rows=n)
                runs[n][variant].append(r)
                log(f"rep {rep + 1}/{opts.reps} {n:>9,} rows {variant:>4}: {r['seconds']:6.2f} s, "
                    f"peak RSS {r['rss_peak'] / MB:6.1f} MB")
    by_rows = {}
    for n in SIZES:
        s = by_rows[str(n)] = {}
        for variant in ("lib", "bare"):
            rs = runs[n][variant]
            s[variant] = {"median_seconds": round(statistics.median(r["seconds"] for r in rs), 4),
                          "median_cpu_seconds": round(statistics.median(r["cpu_seconds"] for r in rs), 4),
                          "median_peak_rss_mb": round(statistics.median(r["rss_peak"] for r in rs) / MB, 1),
                          "median_rss_before_mb": round(statistics.median(r["rss_start"] for r in rs) / MB, 1),
                          "runs_seconds": [round(r["seconds"], 3) for r in rs],
                          "file_bytes": rs[0]["file_bytes"]}
        s["slowdown"] = round(s["lib"]["median_seconds"] / s["bare"]["median_seconds"], 4)
        s["cpu_slowdown"] = round(s["lib"]["median_cpu_seconds"] / s["bare"]["median_cpu_seconds"], 4)
        s["paired_slowdowns"] = [round(a["seconds"] / b["seconds"], 3)
                                 for a, b in zip(runs[n]["lib"], runs[n]["bare"], strict=True)]
        s["same_file_size"] = len({r["file_bytes"] for v in runs[n].values() for r in v}) == 1
    small, large = str(min(SIZES)), str(max(SIZES))
    growth = {v: round(by_rows[large][v]["median_peak_rss_mb"] - by_rows[small][v]["median_peak_rss_mb"], 1)
              for v in ("lib", "bare")}
    worst = max(by_rows[str(n)]["slowdown"] for n in SIZES)
    every = [r for n in SIZES for v in runs[n].values() for r in v]
    loads = [r["load_average_1m"] for r in every]
    hwm_gap = max(abs(r["rss_peak"] - r["hwm_peak"]) for r in every if r["hwm_peak"]) / MB
    targets = [
        {"name": f"peak memory growth {int(small):,} → {int(large):,} rows (queryset_to_csv)",
         "target": f"< {MAX_RSS_GROWTH_MB} MB", "measured": f"{growth['lib']:+.1f} MB", "value": growth["lib"],
         "pass": growth["lib"] < MAX_RSS_GROWTH_MB},
        {"name": "queryset_to_csv time vs bare csv.writer loop (worst size)",
         "target": f"≤ {MAX_SLOWDOWN:.2f}× (within {round((MAX_SLOWDOWN - 1) * 100)}%)", "measured": f"{worst:.3f}×",
         "value": worst, "pass": worst <= MAX_SLOWDOWN and all(by_rows[str(n)]["same_file_size"] for n in SIZES)},
    ]
    results = {"reps": opts.reps, "by_rows": by_rows, "rss_growth_mb": growth, "worst_slowdown": worst,
               "load_average_1m": [min(loads), max(loads)], "max_gap_ru_maxrss_vs_vmhwm_mb": round(hwm_gap, 1)}
    rows = []
    for n in SIZES:
        s = by_rows[str(n)]
        for variant, label in (("lib", "`queryset_to_csv` (progress on)"), ("bare", "bare `csv.writer` loop")):
            v = s[variant]
            rows.append([f"{n:,}", label, f"{v['median_seconds']:.2f}", f"{n / v['median_seconds']:,.0f}",
                         f"{v['median_cpu_seconds']:.2f}", f"{v['median_peak_rss_mb']:.1f}",
                         ", ".join(f"{x:.2f}" for x in v["runs_seconds"]), f"{v['file_bytes'] / MB:.1f} MB"])
        rows.append([f"{n:,}", "**ratio** lib / bare", f"**{s['slowdown']:.3f}×**", "", f"{s['cpu_slowdown']:.3f}×",
                     "", "per rep: " + ", ".join(f"{x:.2f}×" for x in s["paired_slowdowns"]), ""])
    markdown = "\n".join([
        md_table(["rows", "variant", "median wall time (s)", "rows/s", "median CPU time (s)", "peak RSS (MB)",
                  "runs, wall (s)", "file"], rows),
        "",
        f"Peak RSS growth {int(small):,} → {int(large):,} rows: `queryset_to_csv` **{growth['lib']:+.1f} MB**, "
        f"bare loop {growth['bare']:+.1f} MB. Python + Django before the export: "
        f"{by_rows[small]['bare']['median_rss_before_mb']:.0f} MB; `ru_maxrss` (carried over from the driver at "
        f"fork) is above it by at most {hwm_gap:.1f} MB. 1-minute load average during the runs: "
        f"{min(loads):.2f}–{max(loads):.2f}.",
        "",
        how_measured(
            f"A SQLite table of {FILL_ROWS:,} order rows (id, reference, customer, quantity, decimal amount, aware "
            "datetime, boolean); the export is the first N rows by primary key, a row function formats the seven "
            "columns.",
            "`queryset_to_csv`: a download from `init_download`, the real cache API on Redis (progress at the "
            "default resolution, each change published as an SSE event), `count()` + `.iterator(chunk_size=2000)`, "
            "CSV through a `SpooledTemporaryFile` of `IN_MEMORY_MAX_SIZE_BYTES`, saved with `FileSystemStorage`; "
            "the record must end complete.",
            "Bare loop: `csv.writer(...).writerow(row_function(obj))` over the same iterator into the same kind of "
            "spooled file, then `storage.save`; no count, no progress, no cache. Both write the same bytes (checked).",
            f"Each run is a fresh process (peak RSS = /proc VmHWM of its own address space, Python + Django "
            f"included); {opts.reps} runs per "
            f"variant and size in alternating order, median shown; before each run the driver waits (at most "
            f"{QUIET_WAIT} s in all) until other programs use less than half a CPU. The targets use wall time; CPU "
            "time (user + system) is the cross-check that moves less with other load.",
        ),
    ])
    return {"results": results, "targets": targets, "markdown": markdown}


# --------------------------------------------------------------------------- section: update_percentage


@worker("progress")
def progress_worker(calls, writes, repeat):
    import timeit

    import redis

    from async_downloads import cache

    _, key = cache.init_download(BENCH_USER_PK, "progress.csv")
    update, huge = cache.update_percentage, 10**12
    update(key, huge, 0)  # shows 0 %; the calls below keep it there

    def noop(download_key, total, cur, resolution=10):
        return None

    stmt = "for i in loop: f(key, total, i)"
    gross = timeit.Timer(stmt, globals={"loop": range(calls), "f": update, "key": key, "total": huge}).repeat(repeat, 1)
    empty = timeit.Timer(stmt, globals={"loop": range(calls), "f": noop, "key": key, "total": huge}).repeat(repeat, 1)
    if cache.get_download(key)["percentage"] != 0:
        raise RuntimeError("a non-writing call wrote")

    # A whole export's worth: one call per row of 1,000,000 rows, writes included.
    _, export_key = cache.init_download(BENCH_USER_PK, "progress-export.csv")
    real_set_percentage, export_writes = cache.set_percentage, []
    cache.set_percentage = lambda *args, **kwargs: export_writes.append(1) or real_set_percentage(*args, **kwargs)
    start = time.perf_counter()
    for i in range(1_000_000):
        update(export_key, 1_000_000, i)
    export_seconds = time.perf_counter() - start
    cache.set_percentage = real_set_percentage

    # Calls that write: set_percentage to a new value each time, on a real record.
    for value in range(1, 51):  # warm-up: connections, templates
        cache.set_percentage(key, value)
    samples = []
    for i in range(writes):
        value = 1 + i % 98
        value = value if value != cache.get_download(key)["percentage"] else value + 1
        t0 = time.perf_counter_ns()
        cache.set_percentage(key, value)
        samples.append(time.perf_counter_ns() - t0)

    counts = {"commands": 0, "pipelines": 0}  # Redis round trips of one writing call
    real_execute, real_pipeline = redis.Redis.execute_command, redis.client.Pipeline.execute

    def counted(name, real):
        def call(self, *args, **kwargs):
            counts[name] += 1
            return real(self, *args, **kwargs)
        return call

    redis.Redis.execute_command = counted("commands", real_execute)
    redis.client.Pipeline.execute = counted("pipelines", real_pipeline)
    try:
        cache.set_percentage(key, 1 if cache.get_download(key)["percentage"] != 1 else 2)
    finally:
        redis.Redis.execute_command, redis.client.Pipeline.execute = real_execute, real_pipeline
    export_percentage = cache.get_download(export_key)["percentage"]
    cache.clear_download(key)
    cache.clear_download(export_key)
    samples.sort()
    return {"gross_ns": statistics.median(t / calls * 1e9 for t in gross),
            "empty_ns": statistics.median(t / calls * 1e9 for t in empty),
            "export_ns_per_row": export_seconds / 1_000_000 * 1e9, "export_writes": len(export_writes),
            "export_final_percentage": export_percentage, "write_us_median": statistics.median(samples) / 1000,
            "write_us_p10": samples[len(samples) // 10] / 1000, "write_us_p90": samples[len(samples) * 9 // 10] / 1000,
            "write_redis_commands": counts["commands"], "write_redis_pipelines": counts["pipelines"]}


@section("update_percentage", "update_percentage: cost of one call")
def bench_update_percentage(opts):
    calls, writes, repeat = 1_000_000, 2_000, 5
    r = run_worker("progress", calls=calls, writes=writes, repeat=repeat)
    r = {k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()}
    r["no_write_ns_per_call"] = round(r["gross_ns"] - r["empty_ns"], 1)
    log(f"update_percentage: {r['no_write_ns_per_call']:.0f} ns/call without a write; "
        f"a write {r['write_us_median']:.0f} µs")
    markdown = "\n".join([
        md_table(["what", "cost"], [
            ["`update_percentage`, shown value unchanged (the common case), net of loop + call of a no-op",
             f"**{r['no_write_ns_per_call']:.0f} ns/call**"],
            ["same, gross (loop + call included)", f"{r['gross_ns']:.0f} ns/call"],
            ["a Python loop calling a no-op function of the same signature", f"{r['empty_ns']:.0f} ns/call"],
            [f"one call per row of a 1,000,000-row export (total = rows, resolution 10), {r['export_writes']} writes "
             f"included, ending at {r['export_final_percentage']} %", f"{r['export_ns_per_row']:.0f} ns/row (gross)"],
            ["a call that writes (`set_percentage` to a new value on a real record)",
             f"**{r['write_us_median']:.0f} µs** median (p10 {r['write_us_p10']:.0f}, p90 {r['write_us_p90']:.0f} µs)"],
            ["Redis round trips of one writing call",
             f"{r['write_redis_commands']} commands + {r['write_redis_pipelines']} pipelines"],
        ]),
        "",
        how_measured(
            f"Non-writing calls: `timeit`, {calls:,} calls with `total = 10**12` (the value stays 0 %), {repeat} "
            "repeats, median.",
            f"Writing calls: {writes:,} `set_percentage` calls, each to a value different from the stored one, timed "
            "one by one; a write takes the record's lock, reads, stores and publishes the change (rendered row, SSE "
            "event on Redis).",
        ),
    ])
    return {"results": r, "targets": [], "markdown": markdown}


# --------------------------------------------------------------------------- the other sections


@section("ws_latency", "WS mode: latency of one update, WebSocket next to SSE")
def bench_ws_latency(opts):
    from bench import ws_latency

    return ws_latency.section()


@section("live", "Live delivery: latency, memory per stream, CPU against polling")
def bench_live(opts):
    from bench import live

    return live.section()


@section("pushpin", "Live delivery on Pushpin")
def bench_pushpin(opts):
    from bench import pushpin

    return pushpin.section()


@section("download", "Serving a large download: memory and throughput with 4 clients")
def bench_download(opts):
    from bench import download

    return download.section()


@section("formats", "Formats: XLSX and JSON Lines against bare loops, a zip of 50 members")
def bench_formats(opts):
    from bench import formats

    return formats.section(opts.reps, lambda: run_worker("data"))


@section("load", "Under load: 4 workers, 100 exports, 500 SSE clients on 2 web processes")
def bench_load(opts):
    from bench import load

    return load.section()


@section("stores", "Record stores: one progress write, a list of 50, the centre (Redis, PostgreSQL, SQLite)")
def bench_stores(opts):
    from bench import stores

    return stores.section()


@section("stores_load", "Under load on each store: the load scenario on the cache and on PostgreSQL")
def bench_stores_load(opts):
    from bench import stores

    return stores.load_section()


# --------------------------------------------------------------------------- report


def result_cell(target):
    cell = f"**{'PASS' if target['pass'] else 'FAIL'}**"
    return f"{cell} ({target['note']})" if target.get("note") else cell


def write_report(new_sections, machine, started):
    try:
        with open(REPORT_JSON) as f:
            previous = json.load(f).get("sections", {})
    except (OSError, ValueError):
        previous = {}
    sections = {name: new_sections.get(name) or previous[name] for name in SECTIONS
                if name in new_sections or name in previous}
    targets = [{"section": name, **t} for name, s in sections.items() for t in s["targets"]]
    report = {"generated": started, "command": "just bench " + " ".join(sys.argv[1:]), "machine": machine,
              "targets": targets, "all_pass": all(t["pass"] for t in targets), "sections": sections}
    with open(REPORT_JSON, "w") as f:
        json.dump(report, f, indent=2, ensure_ascii=False)
        f.write("\n")
    m = machine
    lines = [
        "# Benchmarks", "",
        f"Written by `just bench` (bench/run.py) on {started}. Figures of each section come from its latest run "
        "(date below); bench/report.json holds the same numbers.", "",
        "## Targets", "",
        md_table(["section", "target", "limit", "measured", "result"],
                 [[t["section"], t["name"], t["target"], t["measured"], result_cell(t)] for t in targets]),
        "", "## Machine", "",
        md_table(["", ""], [
            ["CPU", f"{m['cpu_model']} — {m['cpu_count']} CPUs ({m['cpus_usable']} usable)"],
            ["memory", f"{m['memory_gb']} GB"], ["OS", m["platform"]], ["Python", m["python"]],
            ["Django", m["django"]], ["SQLite", m["sqlite"]],
            ["Redis", f"server {m['redis_server']}, redis-py {m['redis_py']}"],
        ]),
    ]
    for name, data in sections.items():
        lines += ["", f"## {data['title']}", "",
                  f"Section `{name}`, run {data['ran_at']} ({data['seconds']:.0f} s, load average before "
                  f"{data['load_average']}).", "", data["markdown"]]
    with open(REPORT_MD, "w") as f:
        f.write("\n".join(lines) + "\n")
    return report


def remove_keys():
    """Remove the keys this run made (db 12, names with ``adbench-<scenario>-<run>``); never anything else."""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    for pattern in (f"adbench-*-{RUN}:*", f"adbench-*-{RUN}-*", f"event:adbench-*-{RUN}-*",
                    f"event_counter:adbench-*-{RUN}-*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i:i + 1000])
    client.close()


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="*", metavar="SECTION", help="run only these (default: all)")
    parser.add_argument("--list", action="store_true", help="list the sections and exit")
    parser.add_argument("--reps", type=int, default=REPS, help=f"CSV runs per variant and size (default {REPS})")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.worker:
        return worker_main(opts.worker, json.loads(opts.params))
    if opts.list:
        for name, s in SECTIONS.items():
            print(f"{name:20} {s['title']}")
        return 0
    for name in opts.sections:
        if name not in SECTIONS:
            parser.error(f"unknown section {name!r}; sections: {', '.join(SECTIONS)}")
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    machine, new_sections = machine_info(), {}
    try:
        for name in opts.sections or list(SECTIONS):
            s = SECTIONS[name]
            log(f"Section {name}: {s['title']}")
            load, t0 = round(os.getloadavg()[0], 2), time.perf_counter()
            PROBLEMS.clear()
            out = s["run"](opts)
            problems = {**PROBLEMS, **out.pop("logged_problems", {})}
            if problems:
                out["markdown"] += ("\n\n**Warning:** the library logged warnings or errors during these "
                                    "measurements:\n\n" + "\n".join(f"- {n}× `{p}`" for p, n in problems.items()))
            new_sections[name] = {"title": s["title"], "ran_at": datetime.datetime.now().astimezone().isoformat(
                timespec="seconds"), "seconds": round(time.perf_counter() - t0, 1), "load_average": load,
                "logged_problems": problems, **out}
    finally:
        remove_keys()
    report = write_report(new_sections, machine, started)
    for t in report["targets"]:
        log(f"{'PASS' if t['pass'] else 'FAIL'}  {t['section']}: {t['name']}: {t['measured']} (target {t['target']})")
    log(f"Wrote {os.path.relpath(REPORT_MD, ROOT)} and {os.path.relpath(REPORT_JSON, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]) or 0)

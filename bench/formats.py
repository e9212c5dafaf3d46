"""Formats: XLSX and JSON Lines exports against bare loops over the same rows, and a zip of 50 members.

bench/run.py's section ``formats`` calls ``section()``. Each measurement runs in a fresh
process, so that its peak RSS is its own:

    python -m bench.formats worker NAME PARAMS   # one measurement; prints its result as JSON

``ADBENCH_FORMATS_SIZES=1000,10000`` (say) measures other sizes than 100,000 and 1,000,000 rows,
for a quick look; the report says which sizes it measured.
"""

import gc
import json
import os
import statistics
import subprocess
import sys
import time

from bench.common import ROOT, child_result, how_measured, log, md_table, wait_quiet

SIZES = tuple(int(n) for n in os.environ.get("ADBENCH_FORMATS_SIZES", "100000,1000000").split(","))
FORMATS = {"xlsx": 1.15, "jsonl": 1.20}  # format -> the slowdown allowed against its bare loop
LABELS = {"xlsx": ("`queryset_export(..., \"xlsx\")`", "bare XlsxWriter `constant_memory` loop"),
          "jsonl": ("`queryset_export(..., \"jsonl\")`", "bare `json` loop")}
ZIP_MEMBERS = 50
ZIP_MEMBER_ROWS = 2_000
MAX_RSS_GROWTH_MB = 50
QUIET_WAIT = 300  # seconds the runs may wait in all for other programs to use less than half a CPU
BENCH_USER_PK = 424242
MB = 1024 * 1024


# --------------------------------------------------------------------------- in the measuring process


def typed_row(order):
    """The order as typed values: what an XLSX export writes as numbers, dates and booleans."""
    return [order.pk, order.reference, order.customer, order.quantity, order.amount, order.created, order.paid]


def bare_xlsx(path, rows):
    """The baseline: XlsxWriter in constant_memory mode over the same iterator, writing the same cells
    (bold frozen header, the same column widths and number formats), spooled, then saved. No progress."""
    import tempfile

    import xlsxwriter
    from django.core.files import File
    from django.utils import timezone

    from async_downloads import files
    from async_downloads.conf import settings
    from async_downloads.shortcuts import ITERATOR_CHUNK_SIZE
    from bench.benchapp.export import HEADER, order_queryset

    with tempfile.SpooledTemporaryFile(max_size=settings.IN_MEMORY_MAX_SIZE_BYTES) as raw:
        book = xlsxwriter.Workbook(raw, {"constant_memory": True, "in_memory": False, "strings_to_formulas": False,
                                         "strings_to_numbers": False, "strings_to_urls": False})
        bold, money = book.add_format({"bold": True}), book.add_format({"num_format": "0.00"})
        stamp = book.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"})
        sheet = book.add_worksheet()
        for col, name in enumerate(HEADER):
            sheet.write_string(0, col, name, bold)
            if len(name) + 2 > 8.43:
                sheet.set_column(col, col, len(name) + 2.0)
        sheet.freeze_panes(1, 0)
        sheet.set_column(5, 5, 19)
        localtime = timezone.localtime
        for row, order in enumerate(order_queryset(rows).iterator(chunk_size=ITERATOR_CHUNK_SIZE), start=1):
            pk, reference, customer, quantity, amount, created, paid = typed_row(order)
            sheet.write_number(row, 0, pk)
            sheet.write_string(row, 1, reference)
            sheet.write_string(row, 2, customer)
            sheet.write_number(row, 3, quantity)
            sheet.write_number(row, 4, float(amount), money)
            sheet.write_datetime(row, 5, localtime(created).replace(tzinfo=None), stamp)
            sheet.write_boolean(row, 6, paid)
        book.close()
        raw.seek(0)
        return files.get_storage().save(path, File(raw, name=path))


def bare_jsonl(path, rows):
    """The baseline: one JSON encoding per row (the same bytes) into the same kind of spooled file, then saved."""
    import datetime
    import io
    import json
    import tempfile

    from django.core.files import File

    from async_downloads import files
    from async_downloads.conf import settings
    from async_downloads.shortcuts import ITERATOR_CHUNK_SIZE
    from bench.benchapp.export import HEADER, order_queryset

    def default(value):
        return value.isoformat() if isinstance(value, datetime.datetime) else str(value)

    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=default).encode
    with tempfile.SpooledTemporaryFile(max_size=settings.IN_MEMORY_MAX_SIZE_BYTES) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        for order in order_queryset(rows).iterator(chunk_size=ITERATOR_CHUNK_SIZE):
            text.write(dumps(dict(zip(HEADER, typed_row(order), strict=True))) + "\n")
        text.flush()
        raw.seek(0)
        name = files.get_storage().save(path, File(raw, name=path))
        text.detach()
        return name


def member_rows(index):
    from bench.benchapp.export import HEADER
    from bench.benchapp.models import Order

    yield HEADER
    orders = Order.objects.filter(pk__gt=index * ZIP_MEMBER_ROWS, pk__lte=(index + 1) * ZIP_MEMBER_ROWS)
    for order in orders.order_by("pk").iterator(chunk_size=2000):
        yield typed_row(order)


def member_format(index):
    return "csv" if index % 2 == 0 else "jsonl"


def timed(call):
    from bench.run import peak_rss_bytes, process_cpu_seconds, ru_maxrss_bytes

    gc.collect()
    rss_start, load, cpu0 = peak_rss_bytes(), os.getloadavg()[0], process_cpu_seconds()
    start = time.perf_counter()
    outcome = call()
    seconds, cpu = time.perf_counter() - start, process_cpu_seconds() - cpu0
    return outcome, {"seconds": seconds, "cpu_seconds": cpu, "load_average_1m": load, "rss_start": rss_start,
                     "rss_peak": peak_rss_bytes(), "hwm_peak": ru_maxrss_bytes()}


def completed(key):
    from async_downloads import cache

    record = cache.get_download(key)
    if record is None or record["state"] != cache.COMPLETE:
        raise RuntimeError(f"download {key} did not complete: {record!r}")
    return record["filepath"]


def export_worker(format, variant, rows):
    import posixpath
    import uuid

    from django.db import connection

    from async_downloads import cache, files, shortcuts
    from bench.benchapp.export import HEADER, order_queryset

    storage = files.get_storage()
    connection.ensure_connection()
    if variant == "lib":
        _, key = cache.init_download(BENCH_USER_PK, f"orders-{rows}.{format}")
        _, result = timed(lambda: shortcuts.queryset_export(key, HEADER, order_queryset(rows), typed_row, format))
        name = completed(key)
        result["file_bytes"] = storage.size(name)
        cache.clear_download(key)
    else:
        bare = bare_xlsx if format == "xlsx" else bare_jsonl
        name, result = timed(lambda: bare(f"bare/{uuid.uuid4()}/orders-{rows}.{format}", rows))
        result["file_bytes"] = storage.size(name)
        files.delete_folder(storage, posixpath.dirname(name))
    return result


def zip_worker(variant):
    from django.db import connection

    from async_downloads import cache, files

    storage = files.get_storage()
    connection.ensure_connection()
    if variant == "zip":
        _, key = cache.init_download(BENCH_USER_PK, "orders.zip")
        members = ((f"orders-{i:02d}.{member_format(i)}", member_rows(i)) for i in range(ZIP_MEMBERS))
        _, result = timed(lambda: cache.save_download(key, members=members))
        result["file_bytes"] = storage.size(completed(key))
        cache.clear_download(key)
        return result
    keys = [cache.init_download(BENCH_USER_PK, f"orders-{i:02d}.{member_format(i)}")[1] for i in range(ZIP_MEMBERS)]

    def plainly():
        for index, key in enumerate(keys):
            cache.save_download(key, member_rows(index))

    _, result = timed(plainly)
    result["file_bytes"] = sum(storage.size(completed(key)) for key in keys)
    for key in keys:
        cache.clear_download(key)
    return result


WORKERS = {"export": export_worker, "zip": zip_worker}


def worker_main(name, params):
    child_result(WORKERS[name], params)


# --------------------------------------------------------------------------- the driver


def run(name, problems, **params):
    command = [sys.executable, "-m", "bench.formats", "worker", name, json.dumps(params)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"formats worker {name} {params} failed with exit code {proc.returncode}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for problem in result.pop("logged_problems", []):
        problems[problem] = problems.get(problem, 0) + 1
    return result


def summary(rs):
    return {"median_seconds": round(statistics.median(r["seconds"] for r in rs), 4),
            "median_cpu_seconds": round(statistics.median(r["cpu_seconds"] for r in rs), 4),
            "median_peak_rss_mb": round(statistics.median(r["rss_peak"] for r in rs) / MB, 1),
            "median_rss_before_mb": round(statistics.median(r["rss_start"] for r in rs) / MB, 1),
            "runs_seconds": [round(r["seconds"], 3) for r in rs],
            "file_bytes": rs[0]["file_bytes"]}


def section(reps, ensure_data):
    """Measure; return the section's ``{"results", "targets", "markdown"}`` (``ensure_data()`` fills the table)."""
    ensure_data()
    problems, budget = {}, QUIET_WAIT
    runs = {f: {n: {"lib": [], "bare": []} for n in SIZES} for f in FORMATS}
    zips = {"zip": [], "plain": []}
    for rep in range(reps):
        for index, n in enumerate(SIZES):
            for format in FORMATS:
                for variant in ("lib", "bare") if (rep + index) % 2 == 0 else ("bare", "lib"):
                    budget -= wait_quiet([os.getpid()], budget, "formats")
                    r = run("export", problems, format=format, variant=variant, rows=n)
                    runs[format][n][variant].append(r)
                    log(f"rep {rep + 1}/{reps} {format:>5} {n:>9,} rows {variant:>4}: {r['seconds']:7.2f} s, "
                        f"peak RSS {r['rss_peak'] / MB:6.1f} MB")
        for variant in ("zip", "plain") if rep % 2 == 0 else ("plain", "zip"):
            budget -= wait_quiet([os.getpid()], budget, "formats")
            r = run("zip", problems, variant=variant)
            zips[variant].append(r)
            log(f"rep {rep + 1}/{reps} {ZIP_MEMBERS} members {variant:>5}: {r['seconds']:6.2f} s, "
                f"peak RSS {r['rss_peak'] / MB:6.1f} MB")

    results = {"reps": reps, "sizes": list(SIZES), "formats": {}, "zip": {}}
    targets, rows = [], []
    small, large = str(min(SIZES)), str(max(SIZES))
    for format, allowed in FORMATS.items():
        by_rows = results["formats"][format] = {}
        for n in SIZES:
            s = by_rows[str(n)] = {v: summary(runs[format][n][v]) for v in ("lib", "bare")}
            s["slowdown"] = round(s["lib"]["median_seconds"] / s["bare"]["median_seconds"], 4)
            s["cpu_slowdown"] = round(s["lib"]["median_cpu_seconds"] / s["bare"]["median_cpu_seconds"], 4)
            s["paired_slowdowns"] = [round(a["seconds"] / b["seconds"], 3)
                                     for a, b in zip(runs[format][n]["lib"], runs[format][n]["bare"], strict=True)]
        growth = {v: round(by_rows[large][v]["median_peak_rss_mb"] - by_rows[small][v]["median_peak_rss_mb"], 1)
                  for v in ("lib", "bare")}
        worst = max(by_rows[str(n)]["slowdown"] for n in SIZES)
        results["formats"][format] = {"by_rows": by_rows, "rss_growth_mb": growth, "worst_slowdown": worst}
        ours, bare = LABELS[format]
        targets += [
            {"name": f"{format.upper()}: peak memory growth {int(small):,} → {int(large):,} rows (queryset_export)",
             "target": f"< {MAX_RSS_GROWTH_MB} MB", "measured": f"{growth['lib']:+.1f} MB", "value": growth["lib"],
             "pass": growth["lib"] < MAX_RSS_GROWTH_MB},
            {"name": f"{format.upper()}: queryset_export time vs {bare.replace('`', '')} (worst size)",
             "target": f"≤ {allowed:.2f}×", "measured": f"{worst:.3f}×", "value": worst, "pass": worst <= allowed},
        ]
        for n in SIZES:
            s = by_rows[str(n)]
            for variant, label in (("lib", ours), ("bare", bare)):
                v = s[variant]
                rows.append([format.upper(), f"{n:,}", label, f"{v['median_seconds']:.2f}",
                             f"{n / v['median_seconds']:,.0f}", f"{v['median_cpu_seconds']:.2f}",
                             f"{v['median_peak_rss_mb']:.1f}", ", ".join(f"{x:.2f}" for x in v["runs_seconds"]),
                             f"{v['file_bytes'] / MB:.1f} MB"])
            rows.append([format.upper(), f"{n:,}", "**ratio** lib / bare", f"**{s['slowdown']:.3f}×**", "",
                         f"{s['cpu_slowdown']:.3f}×", "",
                         "per rep: " + ", ".join(f"{x:.2f}×" for x in s["paired_slowdowns"]), ""])
    zip_summary = results["zip"] = {v: summary(zips[v]) for v in zips}
    zip_summary["time_ratio"] = round(zip_summary["zip"]["median_seconds"] / zip_summary["plain"]["median_seconds"], 4)
    every = [r for f in runs.values() for n in f.values() for v in n.values() for r in v] + zips["zip"] + zips["plain"]
    loads = [r["load_average_1m"] for r in every]
    hwm_gap = max(abs(r["rss_peak"] - r["hwm_peak"]) for r in every if r["hwm_peak"]) / MB
    results.update(load_average_1m=[min(loads), max(loads)], max_gap_ru_maxrss_vs_vmhwm_mb=round(hwm_gap, 1))
    z, p = zip_summary["zip"], zip_summary["plain"]
    zip_rows = ZIP_MEMBERS * ZIP_MEMBER_ROWS
    markdown = "\n".join([
        md_table(["format", "rows", "variant", "median wall time (s)", "rows/s", "median CPU time (s)",
                  "peak RSS (MB)", "runs, wall (s)", "file"], rows),
        "",
        "Peak RSS growth " + f"{int(small):,} → {int(large):,} rows: " + "; ".join(
            f"{f.upper()} `queryset_export` **{results['formats'][f]['rss_growth_mb']['lib']:+.1f} MB**, bare loop "
            f"{results['formats'][f]['rss_growth_mb']['bare']:+.1f} MB" for f in FORMATS) + ".",
        "",
        md_table(["zip of 50 members", "median wall time (s)", "median CPU time (s)", "peak RSS (MB)", "runs, wall (s)",
                  "bytes stored"], [
            [f"`save_download(key, members=...)`: one zip of {ZIP_MEMBERS} members", f"{z['median_seconds']:.2f}",
             f"{z['median_cpu_seconds']:.2f}", f"{z['median_peak_rss_mb']:.1f}",
             ", ".join(f"{x:.2f}" for x in z["runs_seconds"]), f"{z['file_bytes'] / MB:.1f} MB"],
            [f"the same {ZIP_MEMBERS} members as {ZIP_MEMBERS} plain downloads", f"{p['median_seconds']:.2f}",
             f"{p['median_cpu_seconds']:.2f}", f"{p['median_peak_rss_mb']:.1f}",
             ", ".join(f"{x:.2f}" for x in p["runs_seconds"]), f"{p['file_bytes'] / MB:.1f} MB"],
            ["**ratio** zip / plain", f"**{zip_summary['time_ratio']:.3f}×**", "", "", "", ""],
        ]),
        "",
        how_measured(
            "The `queryset_to_csv` section's SQLite table of order rows; an export is the first N rows by primary "
            "key, and the row function returns the seven columns as typed values (integers, text, a `Decimal` "
            "amount, an aware datetime, a boolean), which XLSX writes as typed cells.",
            "`queryset_export`: a download from `init_download`, the real cache API on Redis (progress at the "
            "default resolution, published as SSE events), `count()` + `.iterator(chunk_size=2000)`, the file "
            "through a `SpooledTemporaryFile` of `IN_MEMORY_MAX_SIZE_BYTES`, saved with `FileSystemStorage`; the "
            "record must end complete.",
            "Bare XLSX loop: XlsxWriter `Workbook(spooled_file, {\"constant_memory\": True, \"in_memory\": False})` "
            "over the same iterator, writing the same cells by hand (`write_number`, `write_string`, "
            "`write_datetime` after `localtime()`, `write_boolean`, the amount with a `0.00` format, the bold "
            "frozen header and the same column widths), then `storage.save`; no count, no progress, no cache.",
            "Bare JSON Lines loop: one prebuilt `json.JSONEncoder(ensure_ascii=False, separators=(\",\", \":\"))` "
            "`.encode(dict(zip(header, row)))` per row (what `json.dumps` with those arguments does, without "
            "building an encoder per call) into the same kind of spooled file; it writes the same bytes.",
            f"Zip: {ZIP_MEMBERS} members of {ZIP_MEMBER_ROWS:,} rows each ({zip_rows:,} rows), CSV and JSON Lines "
            "in turn, each read from the database with `.iterator()` when its turn comes, deflated into one "
            "stored zip by zipstream-ng, against the same members saved as "
            f"{ZIP_MEMBERS} separate downloads (`save_download` with rows).",
            f"Each run is a fresh process (peak RSS = /proc VmHWM of its own address space, Python + Django "
            f"included); {reps} runs per "
            "variant and size in alternating order, median shown; before each run the driver waits (at most "
            f"{QUIET_WAIT} s in all) until other programs use less than half a CPU. `ru_maxrss` (carried over from "
            f"the driver at fork) is above it by at most {hwm_gap:.1f} MB; 1-minute load average during the runs: "
            f"{min(loads):.2f}–{max(loads):.2f}. The targets use wall time; CPU time is the cross-check.",
        ),
    ])
    return {"results": results, "targets": targets, "markdown": markdown, "logged_problems": problems}


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        worker_main(sys.argv[2], json.loads(sys.argv[3]))

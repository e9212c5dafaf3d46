"""Small helpers of the benchmarks' drivers (no Django here, but in ``run_child``: the drivers never set it up)."""

import os
import sys
import time

from devtools.processes import cpu_seconds

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)


def child_result(function, params):
    """In a child process: set Django up, run ``function(**params)`` and print its result as one JSON
    line, with what the app logged at WARNING or above meanwhile (``logged_problems``)."""
    import json
    import logging

    import django

    django.setup()
    problems = []

    class Collect(logging.Handler):
        def emit(self, record):
            problems.append(f"{record.levelname} {record.name}: {record.getMessage()}"[:300])

    logging.getLogger("async_downloads").addHandler(Collect(logging.WARNING))
    result = function(**params)
    sys.stdout.write(json.dumps({**result, "logged_problems": problems}) + "\n")


def log(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def child_env(scenario, **extra):
    """The environment of a process of ``scenario`` (bench/settings.py's ``ADBENCH_SCENARIO``)."""
    return {**os.environ, "DJANGO_SETTINGS_MODULE": "bench.settings", "ADBENCH_SCENARIO": scenario,
            "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1", **extra}


def percentile(values, q):
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, min(len(ordered), -(-q * len(ordered) // 100))) - 1]


def summary(values, digits=2):
    if not values:
        return {"n": 0}
    return {"n": len(values), **{f"p{q}": round(percentile(values, q), digits) for q in (50, 90, 99)},
            "max": round(max(values), digits)}


def md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def how_measured(*points):
    return "\n".join(["How it is measured:", *(f"- {p}" for p in points)])


def snapshot(pids):
    """The machine's busy CPU time and that of ``pids``, for ``others_cpus``."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    return {"wall": time.monotonic(), "busy": busy, "pids": {str(pid): cpu_seconds(pid) for pid in pids}}


def wait_quiet(pids, budget, label, cpus=0.5):
    """Wait until programs other than ``pids`` use less than ``cpus`` CPUs, ``budget`` seconds at most;
    return the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < budget:
        s0 = snapshot(pids)
        time.sleep(1.5)
        busy = others_cpus(s0, snapshot(pids))
        if busy < cpus:
            break
        log(f"{label}: other programs use {busy} CPUs; waiting for a quieter machine")
    return time.monotonic() - start


def others_cpus(before, after, extra_mine=0.0):
    """CPUs used by programs other than ``pids`` (Redis included) between two snapshots."""
    mine = extra_mine + sum(after["pids"][pid] - t for pid, t in before["pids"].items()
                            if t is not None and after["pids"].get(pid) is not None)
    return round(max(0.0, after["busy"] - before["busy"] - mine) / max(1e-9, after["wall"] - before["wall"]), 2)

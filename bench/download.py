"""Serving a large download: the web process's peak memory while 4 clients fetch a 1 GiB file at once.

``async_downloads:download`` (streamed in chunks) against what it did before, Django's
``FileResponse`` behind the same owner check (``/baseline-download/<key>/``), each in a fresh
uvicorn process, with the same clients.

    python -m bench.download prepare SIZE   # run by section(): the user, the session and the file
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from bench.common import ROOT, child_env, how_measured, log, md_table, wait_quiet
from devtools.processes import start_uvicorn, stop

SIZE = 1024**3
CLIENTS = 4
CHUNK = 1024 * 1024
MAX_GROWTH_MB = 50
MB = 1024 * 1024
VARIANTS = {"async_downloads": "/async_downloads/download/{key}/", "FileResponse": "/baseline-download/{key}/"}


def baseline(request, download_key):
    """The view as it was: Django's FileResponse on the storage file (read whole under ASGI)."""
    from django.http import FileResponse, Http404

    from async_downloads import cache, files

    record = cache.get_user_download(request.user, download_key)
    if record is None or record["state"] != cache.COMPLETE:
        raise Http404("No such download.")
    handle = files.get_storage().open(record["filepath"], "rb")
    return FileResponse(handle, as_attachment=True, filename=record["filename"])


def prepare(size):
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client

    from async_downloads import cache

    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user("reader", password="pw")
    with tempfile.TemporaryFile() as source:
        block = os.urandom(CHUNK)
        for _ in range(size // CHUNK):
            source.write(block)
        source.write(block[: size % CHUNK])
        _, key = cache.init_download(user, "large.bin")
        cache.save_download(key, file=source)
    client = Client()
    client.force_login(user)
    print(json.dumps({"key": key, "session": client.cookies["sessionid"].value}), flush=True)


def vm_hwm(pid):
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


def reset_peak(pid):
    with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # VmHWM := current RSS


def fetch(url, cookies, into):
    import httpx

    received = 0
    with httpx.Client(cookies=cookies, timeout=httpx.Timeout(600)) as client, client.stream("GET", url) as response:
        assert response.status_code == 200, response.status_code
        for chunk in response.iter_bytes(CHUNK):
            received += len(chunk)
    into.append(received)


def measure(variant, env, site, size):
    server, base = start_uvicorn("django.core.asgi:get_asgi_application", env, factory=True, cwd=ROOT)
    try:
        import httpx

        cookies = {"sessionid": site["session"]}
        url = base + VARIANTS[variant].format(key=site["key"])
        httpx.head(url, cookies=cookies, timeout=30).raise_for_status()  # warm: imports, a DB and cache connection
        wait_quiet([server.pid], 60, f"download {variant}")
        before = vm_hwm(server.pid)
        reset_peak(server.pid)
        received: list[int] = []
        threads = [threading.Thread(target=fetch, args=(url, cookies, received)) for _ in range(CLIENTS)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.monotonic() - started
        peak = vm_hwm(server.pid)
    finally:
        stop(server)
    assert received == [size] * CLIENTS, f"{variant}: received {received} bytes"
    growth = (peak - before) / MB
    result = {"peak_mb": round(peak / MB, 1), "before_mb": round(before / MB, 1), "growth_mb": round(growth, 1),
              "wall_s": round(wall, 2), "throughput_mb_s": round(CLIENTS * size / MB / wall, 1)}
    log(f"download {variant}: +{result['growth_mb']} MB, {result['throughput_mb_s']} MB/s")
    return result


def section(size=SIZE):
    work_dir = tempfile.mkdtemp(prefix="adbench-download-")
    env = child_env("download", ADBENCH_DIR=work_dir)
    try:
        prepared = subprocess.run([sys.executable, "-m", "bench.download", "prepare", str(size)], env=env, cwd=ROOT,
                                  capture_output=True, text=True, timeout=600, check=True)
        site = json.loads(prepared.stdout.strip().splitlines()[-1])
        results = {variant: measure(variant, env, site, size) for variant in VARIANTS}
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    ours = results["async_downloads"]
    targets = [{
        "name": f"web process peak memory growth, {CLIENTS} clients fetching a {size / 1024**3:g} GiB file at once",
        "target": f"< {MAX_GROWTH_MB} MB",
        "measured": f"{ours['growth_mb']} MB ({ours['throughput_mb_s']} MB/s in all)",
        "value": ours["growth_mb"],
        "pass": ours["growth_mb"] < MAX_GROWTH_MB,
        "note": f"FileResponse: +{results['FileResponse']['growth_mb']:,} MB",
    }]
    markdown = "\n".join([
        md_table(["view", "peak RSS before (MB)", "peak RSS while serving (MB)", "growth (MB)", "wall time (s)",
                  "throughput, all clients (MB/s)"],
                 [[f"`{name}`", r["before_mb"], r["peak_mb"], f"**{r['growth_mb']}**", r["wall_s"],
                   r["throughput_mb_s"]] for name, r in results.items()]),
        "",
        how_measured(
            f"One completed download of {size:,} random bytes in `FileSystemStorage`, owned by a signed-in user; "
            f"{CLIENTS} httpx clients in threads of the driver fetch it at once, as fast as they read, each "
            f"checking that it got every byte.",
            "Each view runs in a fresh uvicorn process (Django's ASGI application on bench/settings.py); "
            "one HEAD request warms it up, then its peak RSS is reset (`/proc/PID/clear_refs`) and read again "
            "(`VmHWM`) once all clients are done: the growth is what serving the file cost.",
            "`FileResponse` is Django's `FileResponse` on the same file behind the same owner check: what the "
            "download view did before it streamed (Django's ASGI handler reads a synchronous iterator whole).",
        ),
    ])
    return {"results": results, "targets": targets, "markdown": markdown}


if __name__ == "__main__":
    if sys.argv[1:2] == ["prepare"]:
        prepare(int(sys.argv[2]))

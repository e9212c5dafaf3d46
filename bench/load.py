"""The load scenario's figures: devtools/load.py runs it (as tests/test_load.py does) on the bench's settings.

    .venv/bin/python bench/run.py load
"""

import collections
import os
import shutil
import tempfile

from devtools import load
from devtools.processes import cpu_seconds

from .common import child_env, how_measured, log, md_table, others_cpus, snapshot, summary


def sample(pids):
    return {"cpu": {name: cpu_seconds(pid) for name, pid in pids.items()}, "machine": snapshot(pids.values()),
            "loadavg": os.getloadavg()[0]}


def figures(result):
    """Exports per minute, events delivered per second, latency from the publish step to the client."""
    published, start = result["published"], result["started"]
    completed = [entry[0] for entry in published if entry[1] == "completed"]
    name_to_key = {entry[6]: entry[2] for entry in published if entry[1] == "created"}
    sent_at = {(kind, key, percentage if kind == "updated" else None): t
               for t, kind, key, state, percentage, *_ in published}
    latencies, last_arrival, delivered = collections.defaultdict(list), start, 0
    for client in result["clients"]:
        delivered += client["messages"]
        for what, ident, percentage, arrived in client["arrivals"]:
            sent = sent_at.get((what, name_to_key.get(ident) if what == "completed" else ident, percentage))
            last_arrival = max(last_arrival, arrived)
            if sent is not None:
                latencies[what].append((arrived - sent) * 1000)
    before, after = result["samples"]
    exports_seconds = max(completed) - start
    return {
        "exports": len(completed),
        "exports_seconds": round(exports_seconds, 2),
        "exports_per_minute": round(len(completed) / exports_seconds * 60, 1),
        "events_published": sum(result["last_ids"][str(pk)] - result["start_ids"][str(pk)] for pk in result["pks"]),
        "messages_delivered": delivered,
        "delivery_seconds": round(last_arrival - start, 2),
        "events_delivered_per_second": round(delivered / (last_arrival - start), 1),
        "latency_ms": summary([x for values in latencies.values() for x in values]),
        "latency_ms_by_kind": {kind: summary(values) for kind, values in sorted(latencies.items())},
        "all_final_seconds": round(result["all_final_at"] - start, 2) if result["all_final_at"] else None,
        "cpu_seconds": {name: round(after["cpu"][name] - t, 2) for name, t in before["cpu"].items()
                        if t is not None and after["cpu"][name] is not None},
        "others_cpus": others_cpus(before["machine"], after["machine"]),
        "loadavg": [before["loadavg"], after["loadavg"]],
    }


def section():
    scenario = load.Scenario(migrate=True)
    work_dir = tempfile.mkdtemp(prefix="adbench-load-")
    try:
        result = load.run(scenario, child_env("load", ADBENCH_DIR=work_dir), "django.core.asgi:get_asgi_application",
                          factory=True, sample=sample)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    f, x = figures(result), load.findings(result)
    problems = load.problems(result)
    lat = f["latency_ms"]
    log(f"load: {f['exports_per_minute']} exports/min, {f['events_delivered_per_second']} events/s, latency p50 "
        f"{lat.get('p50')} / p99 {lat.get('p99')} ms; problems: {problems or 'none'}")
    targets = [
        {"name": "every client ends with the final state of each of its user's downloads", "target": "0 lost",
         "measured": f"{x['lost_final_states']} final states, {x['lost_events']} events",
         "value": x["lost_final_states"] + x["lost_events"],
         "pass": not (x["lost_final_states"] or x["lost_events"] or x["connect_failures"])},
        {"name": "no event id received twice on one connection", "target": "0 duplicated",
         "measured": str(x["duplicated_events"]), "value": x["duplicated_events"], "pass": not x["duplicated_events"]},
        {"name": "no client receives another user's row", "target": "0 leaked", "measured": str(x["leaked_messages"]),
         "value": x["leaked_messages"], "pass": not x["leaked_messages"]},
    ]
    rows = [
        ["exports per minute", f"**{f['exports_per_minute']}** ({f['exports']} exports in {f['exports_seconds']} s, "
                               "first enqueue to last completion)"],
        ["events delivered per second", f"**{f['events_delivered_per_second']:,}** ({f['messages_delivered']:,} "
                                        f"messages to {x['clients']} clients in {f['delivery_seconds']} s; "
                                        f"{f['events_published']:,} events published)"],
        ["latency, publish → client, p50 / p99", f"**{lat.get('p50')} / {lat.get('p99')} ms** (p90 {lat.get('p90')}, "
                                                 f"max {lat.get('max')}; {lat['n']:,} deliveries)"],
        *([f"… {kind}", f"p50 {v.get('p50')} / p99 {v.get('p99')} ms ({v['n']:,})"]
          for kind, v in f["latency_ms_by_kind"].items()),
        ["lost (final states not shown / events not received)", f"{x['lost_final_states']} / {x['lost_events']}"],
        ["duplicated (event ids received twice on one connection)", x["duplicated_events"]],
        ["leaked (messages with another user's row)", x["leaked_messages"]],
        ["connections failed / dropped", f"{x['connect_failures']} / {x['lost_connections']}"],
        ["every client showed every final state", f"{f['all_final_seconds']} s after the first enqueue"],
        ["CPU seconds over the run", ", ".join(f"{k} {v}" for k, v in f["cpu_seconds"].items())],
        ["machine", f"load average {f['loadavg'][0]:.2f} before, {f['loadavg'][1]:.2f} after; other programs used "
                    f"{f['others_cpus']} CPUs"],
    ]
    s = scenario
    markdown = "\n".join([
        md_table(["figure", "measured"], rows),
        *(["", "Problems found: " + "; ".join(problems)] if problems else []),
        "",
        load_how_measured(s),
    ])
    return {"results": {"scenario": result["scenario"], "figures": f, "findings": x, "problems": problems},
            "targets": targets, "markdown": markdown}


def load_how_measured(s):
    return how_measured(
        f"{s.workers} Celery workers (`--pool solo` each) run {s.users * s.exports_per_user} exports "
        f"({s.exports_per_user} per user of {s.users}, each {s.rows} rows, one every {s.pause} s, progress through "
        "`update_percentage`, the file saved with `save_download`), started through `init_generic_csv_download`.",
        f"{s.users * s.clients_per_user} SSE clients ({s.clients_per_user} per user, each with a session of its own, "
        f"a user's clients spread evenly over {s.web_processes} uvicorn processes), asyncio on raw sockets in one "
        "process, connected before the first export; each applies the messages as htmx does.",
        "Latency: from the start of the publish step in the process that changed the download "
        "(`download_changed_signal`) to the arrival of the message's bytes at a client, over every delivery. Events "
        "per second: every message received by every client, from the first enqueue to the last arrival.",
        "Lost: a final state a client does not show, or an event id of its user's channel it never received; "
        "duplicated: an event id received twice on one connection; leaked: a row of another user's download. "
        "devtools/load.py runs the scenario and checks it; tests/test_load.py runs the same for correctness.",
    )

"""A long-lived process that changes downloads on command (one JSON object per stdin line).

It stands for a Celery worker in tests that need a process of their own
with its own Redis settings.
"""

import json
import sys

import django


def main():
    django.setup()
    from async_downloads import cache, partials

    for line in sys.stdin:
        command = json.loads(line)
        try:
            result = run(cache, partials, command)
            print(json.dumps({"ok": result}), flush=True)
        except Exception as error:  # reported to the test, which decides
            print(json.dumps({"error": repr(error)}), flush=True)


def run(cache, partials, command):
    op = command["op"]
    if op == "init":
        return cache.init_download(command["user"], command["filename"])[1]
    if op == "set":
        return cache.set_percentage(command["key"], command["percentage"])
    if op == "save":
        return cache.save_download(command["key"], command["rows"])
    if op == "events_url":
        return partials.events_url(command["user"])
    if op == "get":
        record = cache.get_download(command["key"])
        return record and {name: record[name] for name in ("state", "errors", "percentage", "url", "filepath")}
    if op == "start":
        from async_downloads.shortcuts import start_download
        from tests.celery_app import app  # noqa: F401  # the tasks' app: its broker is this process's
        from tests.testapp import tasks

        task = getattr(tasks, command["task"])
        return start_download(command["user"], command["filename"], task, kwargs=command.get("kwargs"))[1]
    if op == "task":
        from tests.celery_app import app

        result = app.send_task(command["name"], args=command.get("args", []), kwargs=command.get("kwargs", {}))
        return result.get(timeout=command["wait"]) if command.get("wait") else result.id
    raise ValueError(f"Unknown op {op!r}")


if __name__ == "__main__":
    main()

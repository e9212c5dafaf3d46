# Task runner. Every recipe sets up what it needs first, so each one works on a fresh clone.

set shell := ["bash", "-euo", "pipefail", "-c"]
set positional-arguments

export PATH := justfile_directory() / ".venv/bin" + ":" + env("PATH")
export UV_PROJECT_ENVIRONMENT := env("UV_PROJECT_ENVIRONMENT", justfile_directory() / ".venv")
export UV_PYTHON_DOWNLOADS := "never"
export PYTHONDONTWRITEBYTECODE := "1"

# List the recipes.
default:
    @just --list

# Install the project and its dev tools into .venv (uv, from uv.lock).
setup:
    uv sync --frozen --quiet

# System packages the real-parts tests need: redis-server (when no Redis answers), chromium, gettext (the catalogue tests), pushpin, and postgresql (when no PostgreSQL answers).
system-deps:
    #!/usr/bin/env bash
    set -euo pipefail
    need=()
    # The outage and demo tests start redis-server themselves, even where a Redis already runs.
    if ! command -v redis-server >/dev/null; then need+=(redis-server); fi
    if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then need+=(chromium); fi
    if ! command -v msgfmt >/dev/null || ! command -v xgettext >/dev/null; then need+=(gettext); fi
    # Pushpin, the GRIP proxy of the tests and benchmarks behind a proxy (devtools/pushpin.py); it brings condure and zurl.
    if ! command -v pushpin >/dev/null; then need+=(pushpin); fi
    # PostgreSQL, for the database store's tests: the server on 127.0.0.1:5432 if one answers, else one the suite starts.
    if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null && ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then need+=(postgresql); fi
    if [ ${#need[@]} -eq 0 ]; then exit 0; fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "Installing ${need[*]} (apt-get)…"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "Please install: ${need[*]} (e.g. sudo apt-get install ${need[*]})" >&2
        exit 1
    fi

# How many processes run the suite (pytest-xdist, whole test files to a process; 0: this one alone).
test_processes := env("ASYNC_DOWNLOADS_TEST_PROCESSES", "2")

# Run the whole test suite (Redis, Celery workers, uvicorn and Chromium are real).
test *args: setup system-deps
    python -m pytest -n {{test_processes}} --dist loadfile "$@"

# The suite on Django 6 (needs Python 3.12+; found on PATH or under pyenv).
test-django6 *args: system-deps
    #!/usr/bin/env bash
    set -euo pipefail
    py=""
    pyenv_pythons=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -rV || true)
    for candidate in python3.14 python3.13 python3.12 $pyenv_pythons; do
        if "$candidate" -c "import sys; sys.exit(sys.version_info < (3, 12))" 2>/dev/null; then py=$(command -v "$candidate"); break; fi
    done
    if [ -z "$py" ]; then echo "Django 6 needs Python 3.12+, and none was found (pyenv install 3.13, or your OS's python3.13)." >&2; exit 1; fi
    export UV_PROJECT_ENVIRONMENT="{{justfile_directory()}}/.venv-django6"
    uv sync --frozen --quiet --python "$py"
    "$UV_PROJECT_ENVIRONMENT/bin/python" -c "import django; print('Django', django.get_version())"
    "$UV_PROJECT_ENVIRONMENT/bin/python" -m pytest -n {{test_processes}} --dist loadfile "$@"

# Import contracts, strict type check of the app, and lint (the suite runs them too: tests/test_lint.py).
lint: setup
    lint-imports
    mypy
    ruff check .

# The suite with branch coverage.
coverage *args: setup system-deps
    python -m coverage erase
    COVERAGE_PROCESS_START="{{justfile_directory()}}/pyproject.toml" python -m coverage run -m pytest "$@"
    python -m coverage combine -q
    python -m coverage report

# Update the translation catalogues (async_downloads/locale) from the app and the showcase sets, and compile them (`just messages it`: add Italian).
messages *languages: setup
    #!/usr/bin/env bash
    set -euo pipefail
    if ! command -v msgfmt >/dev/null; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gettext >/dev/null
        else
            echo "Please install GNU gettext (e.g. sudo apt-get install gettext)." >&2; exit 1
        fi
    fi
    cd "{{justfile_directory()}}"
    python -m devtools.messages "$@"

# Benchmarks; writes bench/report.md and bench/report.json.
bench *args: setup system-deps
    python -m devtools.redis_server python bench/run.py "$@"

# The sample site at http://127.0.0.1:8000 (PORT=… to change): uvicorn, a Celery worker and Redis. Ctrl-C stops all.
[continue]  # Ctrl-C reaches just too: a clean stop (status 0) is no interruption (just 1.54+)
demo: setup
    #!/usr/bin/env bash
    set -euo pipefail
    cd "{{justfile_directory()}}"
    redis_answers() { python -c "import os, sys; from devtools.redis_server import answers, DEFAULT_URL; sys.exit(not answers(os.environ.get('REDIS_URL') or DEFAULT_URL))"; }
    if ! command -v redis-server >/dev/null && ! redis_answers; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "Installing redis-server (apt-get)…"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
        else
            echo "No Redis answers at ${REDIS_URL:-redis://127.0.0.1:6379/0} and redis-server is not installed." >&2
            echo "Install it (sudo apt-get install redis-server, or brew install redis), or set REDIS_URL." >&2
            exit 1
        fi
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" DJANGO_SETTINGS_MODULE=sample_site.settings
    # Migrates, seeds, starts a private redis-server if none answers, runs uvicorn and the worker,
    # prints the address once the site answers, and stops everything on Ctrl-C (status 0).
    exec python sample_site/run_demo.py --port "${PORT:-8000}"

# The sample site behind a real Pushpin (GRIP mode) at http://127.0.0.1:8000 (PORT=…): gunicorn's sync workers on a private port, a Celery worker and Redis.
[continue]  # as for demo
demo-pushpin: setup
    #!/usr/bin/env bash
    set -euo pipefail
    cd "{{justfile_directory()}}"
    apt_install() {  # as root on Debian/Ubuntu
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "Installing $1 (apt-get)…"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
        else
            return 1
        fi
    }
    redis_answers() { python -c "import os, sys; from devtools.redis_server import answers, DEFAULT_URL; sys.exit(not answers(os.environ.get('REDIS_URL') or DEFAULT_URL))"; }
    if ! command -v redis-server >/dev/null && ! redis_answers && ! apt_install redis-server; then
        echo "No Redis answers at ${REDIS_URL:-redis://127.0.0.1:6379/0} and redis-server is not installed." >&2
        echo "Install it (sudo apt-get install redis-server, or brew install redis), or set REDIS_URL." >&2
        exit 1
    fi
    # Pushpin, the GRIP proxy (Debian's package brings condure and zurl).
    if ! command -v pushpin >/dev/null && ! apt_install pushpin; then
        echo "Pushpin is not installed: install the pushpin package (e.g. sudo apt-get install pushpin)." >&2
        exit 1
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" DJANGO_SETTINGS_MODULE=sample_site.settings
    # As for demo, with gunicorn (sample_site.wsgi) on a free port and Pushpin on PORT in front of it,
    # its control port and a random key in every process's settings (GRIP mode).
    exec python sample_site/run_demo.py --pushpin --port "${PORT:-8000}"

# PNGs of the centre (idle, exporting, complete, failed) per template set in docs/screenshots/ (`just screenshots toast`: one set).
screenshots *sets: setup system-deps
    #!/usr/bin/env bash
    set -euo pipefail
    cd "{{justfile_directory()}}"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" DJANGO_SETTINGS_MODULE=sample_site.settings
    mkdir -p sample_site/var
    python sample_site/manage.py migrate --verbosity 0
    python sample_site/manage.py seed_demo
    python sample_site/screenshots.py "$@"

# Forget the sample site's data: database, files, and its downloads in Redis (`just demo` seeds again).
demo-reset: setup
    #!/usr/bin/env bash
    set -euo pipefail
    cd "{{justfile_directory()}}"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" DJANGO_SETTINGS_MODULE=sample_site.settings
    python sample_site/manage.py reset_demo  # (no Redis answering: nothing of the demo's to clear)
    rm -rf sample_site/db.sqlite3 sample_site/media sample_site/var
    echo "Sample site reset."

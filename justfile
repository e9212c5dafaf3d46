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

# System packages the real-parts tests need: redis-server (when no Redis answers) and chromium.
system-deps:
    #!/usr/bin/env bash
    set -euo pipefail
    need=()
    if ! command -v redis-server >/dev/null && ! python -c "import redis; redis.Redis(socket_connect_timeout=0.5).ping()" 2>/dev/null; then need+=(redis-server); fi
    if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then need+=(chromium); fi
    if [ ${#need[@]} -eq 0 ]; then exit 0; fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "Installing ${need[*]} (apt-get)…"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "Please install: ${need[*]} (e.g. sudo apt-get install ${need[*]})" >&2
        exit 1
    fi

# Run the whole test suite (Redis, Celery workers, uvicorn and Chromium are real).
test *args: setup system-deps
    python -m pytest "$@"

# The suite on Django 6 (needs Python 3.12+; found on PATH or under pyenv).
test-django6 *args: system-deps
    #!/usr/bin/env bash
    set -euo pipefail
    py=$(command -v python3.13 python3.12 2>/dev/null | head -1 || true)
    if [ -z "$py" ]; then py=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3 2>/dev/null | tail -1 || true); fi
    if [ -z "$py" ]; then echo "Django 6 needs Python 3.12+, and none was found." >&2; exit 1; fi
    export UV_PROJECT_ENVIRONMENT="{{justfile_directory()}}/.venv-django6"
    uv sync --frozen --quiet --python "$py"
    "$UV_PROJECT_ENVIRONMENT/bin/python" -c "import django; print('Django', django.get_version())"
    "$UV_PROJECT_ENVIRONMENT/bin/python" -m pytest "$@"

# The suite with branch coverage.
coverage *args: setup system-deps
    python -m coverage erase
    COVERAGE_PROCESS_START="{{justfile_directory()}}/pyproject.toml" python -m coverage run -m pytest "$@"
    python -m coverage combine -q
    python -m coverage report

# Benchmarks; writes bench/report.md and bench/report.json.
bench *args: setup system-deps
    python -m async_downloads.testing.redis_server python bench/run.py "$@"

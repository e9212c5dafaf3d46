"""The README stays true to the code."""

import re
from pathlib import Path

from async_downloads.conf import DEFAULTS

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_every_setting_is_documented_with_its_default():
    rows = dict(re.findall(r"^\| `ASYNC_DOWNLOADS_(\w+)` \| `([^`]*)`", README, re.M))
    assert set(rows) == set(DEFAULTS)
    for name, documented in rows.items():
        assert documented == repr(DEFAULTS[name]).replace("'", '"'), name


def test_the_readme_starts_with_the_two_commands_and_ci_runs_the_test_one():
    commands = re.findall(r"^python3 -m venv .+$", README, re.M)[:2]
    assert commands[0].endswith("just demo") and commands[1].endswith("just test")
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert commands[1] in ci


def test_the_snippet_is_under_ten_lines():
    snippet = re.search(r"### The snippet for your base template\n\n```django\n(.*?)```", README, re.S)
    lines = snippet.group(1).strip().splitlines()
    assert len(lines) < 10
    assert "{% async_downloads_head %}" in snippet.group(1)
    assert """hx-headers='{"x-csrftoken": "{{ csrf_token }}"}'""" in snippet.group(1)


def test_every_system_check_is_documented():
    source = (Path(__file__).parent.parent / "async_downloads" / "checks.py").read_text()
    ids = set(re.findall(r'id="(async_downloads\.[EW]\d+)"', source))
    documented = set(re.findall(r"^\| `(async_downloads\.[EW]\d+)` \|", README, re.M))
    assert ids == documented


def test_vendored_htmx_is_version_2():
    import django_htmx

    htmx = Path(django_htmx.__file__).parent / "static" / "django_htmx" / "htmx-2.js"
    assert re.search(r"version: '2\.0\.\d+'", htmx.read_text())

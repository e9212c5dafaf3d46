"""The layer contracts, the type check and the lint, run with the suite so that CI runs them."""

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
APP = ROOT / "async_downloads"
BIN = pathlib.Path(sys.executable).parent


def run(tool, *args):
    result = subprocess.run([str(BIN / tool), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    return result.returncode, result.stdout + result.stderr


def test_import_contracts_are_kept():
    status, output = run("lint-imports", "--no-cache")
    assert status == 0, output
    assert "0 broken" in output


@pytest.mark.slow
def test_the_app_type_checks_strictly():
    status, output = run("mypy", "--no-incremental")
    assert status == 0, output


def test_ruff_finds_nothing():
    status, output = run("ruff", "check", "--no-cache", ".")
    assert status == 0, output


def _imports_in_functions(path):
    """(line, module) of the app's own modules imported inside a function of ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)) or function.name == "ready":
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("async_downloads")):
                names = ", ".join(alias.name for alias in node.names)
                found.append((node.lineno, f"from {'.' * node.level}{node.module or ''} import {names}"))
            elif isinstance(node, ast.Import) and any(a.name.startswith("async_downloads") for a in node.names):
                found.append((node.lineno, f"import {node.names[0].name}"))
    return found


def test_no_module_of_the_app_imports_another_inside_a_function():
    """An import inside a function is how a cycle hides; ``AppConfig.ready`` is the one place for it."""
    found = {str(p.relative_to(ROOT)): hits for p in APP.rglob("*.py") if (hits := _imports_in_functions(p))}
    assert found == {}


def test_the_check_above_sees_such_an_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from . import cache\n\ndef ready():\n    from . import checks\n")
    assert _imports_in_functions(module) == [(2, "from . import cache")]

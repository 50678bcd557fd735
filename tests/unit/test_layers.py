"""The layers stay as drawn: ``lint-imports`` (contracts in pyproject.toml) and imports at module top.

The layer contracts only see arrows that exist, and an import hidden in a function body is an
arrow a reader misses; so the second test asks every import inside a function to say why it is
deferred (``# deferred: ...``, for heavy optional dependencies such as onnx, vmas, wandb,
matplotlib). Experiment scripts are not a package import-linter can see: the third test keeps
them off ``marlcli.cli`` (what they need is a library function).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEFERRED = "# deferred:"
DEFERRED_WORD = "deferred"


def _lint_imports() -> str | None:
    near = Path(sys.executable).with_name("lint-imports")
    return str(near) if near.exists() else shutil.which("lint-imports")


def test_lint_imports_keeps_the_contracts() -> None:
    pytest.importorskip("importlinter", reason="import-linter is not installed (pip install -e '.[dev]')")
    exe = _lint_imports()
    if exe is None:
        pytest.skip("import-linter is installed but its lint-imports command is not on PATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([exe, "--no-cache", "--no-logo"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"lint-imports (contracts in pyproject.toml) failed:\n{out[-6000:]}"


def _function_imports(source: str, name: str) -> list[str]:
    """``name:line module`` for every import inside a function body that does not say why it is deferred.

    The reason is a comment on the line (``# deferred: ...``, also after a ``noqa``); an import
    right after a reasoned one (a group such as ``matplotlib`` then ``matplotlib.pyplot``, up to
    three lines apart) shares its reason.
    """
    lines = source.splitlines()
    found = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        nodes = sorted((n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))), key=lambda n: n.lineno)
        reasoned_at = -10
        for node in nodes:
            line = lines[node.lineno - 1]
            if "#" in line and DEFERRED_WORD in line.split("#", 1)[1] or node.lineno - reasoned_at <= 3:
                reasoned_at = node.lineno
                continue
            names = (", ".join(a.name for a in node.names) if isinstance(node, ast.Import)
                     else "." * node.level + (node.module or ""))
            found.append(f"{name}:{node.lineno} {names} (in {fn.name})")
    return sorted(set(found))


def test_imports_sit_at_module_top() -> None:
    hidden = [x for f in sorted((ROOT / "marlcli").rglob("*.py"))
              for x in _function_imports(f.read_text(), str(f.relative_to(ROOT)))]
    assert not hidden, ("imports inside functions hide arrows between modules: move them to the module top, "
                        f"or say why on the line (`{DEFERRED} <reason>`):\n" + "\n".join(hidden))


def _imports_cli(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name == "marlcli.cli" or a.name.startswith("marlcli.cli.")
                                                for a in node.names):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (
                node.module == "marlcli.cli" or (node.module == "marlcli" and any(a.name == "cli" for a in node.names))):
            lines.append(node.lineno)
    return lines


def test_experiments_do_not_import_the_cli() -> None:
    bad = [f"{f.relative_to(ROOT)}:{n}" for f in sorted((ROOT / "experiments").rglob("*.py"))
           for n in _imports_cli(ast.parse(f.read_text()))]
    assert not bad, "experiments import marlcli.cli (use the library's public functions instead):\n" + "\n".join(bad)


def test_the_checks_see_what_they_guard() -> None:
    """The scanners above find what they look for (a scanner that finds nothing would pass forever)."""
    assert _imports_cli(ast.parse("from marlcli.cli import main\nfrom marlcli import cli\nimport marlcli.cli\n")) == [1, 2, 3]
    assert _imports_cli(ast.parse("from marlcli.cliutil import fail\nfrom marlcli import cliutil\n")) == []
    probe = ("import json\n\ndef f():\n    from marlcli import results\n    x = 1\n    y = 2\n    z = 3\n"
             "    import matplotlib  # deferred: optional\n    matplotlib.use('Agg')\n    import matplotlib.pyplot\n"
             "    x = 1\n    y = 2\n    z = 3\n    import math\n")
    assert _function_imports(probe, "probe.py") == ["probe.py:14 math (in f)", "probe.py:4 marlcli (in f)"]

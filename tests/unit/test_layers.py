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
    """``name:line module`` for every import inside a function body without a ``# deferred:`` reason."""
    lines = source.splitlines()
    found = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                names = ", ".join(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                names = "." * node.level + (node.module or "")
            else:
                continue
            if DEFERRED not in lines[node.lineno - 1]:
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
    probe = "import json\n\ndef f():\n    from marlcli import results\n    import onnx  # deferred: optional\n"
    assert _function_imports(probe, "probe.py") == ["probe.py:4 marlcli (in f)"]

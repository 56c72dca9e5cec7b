"""The layers: servers/ and loadgen/ never import the harness above them (bench), and what all
three share at a child's start lives below them (childproc)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOWER = ["servers", "loadgen", "childproc", "cbuild"]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", LOWER)
def test_lower_layers_never_import_bench(package):
    offenders = [str(p.relative_to(ROOT)) for p in sorted((ROOT / package).rglob("*.py")) if "bench" in _imports(p)]
    assert offenders == []


@pytest.mark.timeout(30)
def test_a_server_and_a_load_worker_start_without_loading_bench():
    code = (
        "import sys, servers.__main__, loadgen.__main__\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'bench'))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

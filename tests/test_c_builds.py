"""The project's C programs compile warning-free with the flags they are built with."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import cbuild

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("*/**/*.c") if ".venv" not in p.parts)


def test_every_c_program_is_found():
    assert {"servers/native/echo.c", "loadgen/native/worker.c"} <= set(SOURCES)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("source", SOURCES)
def test_compiles_clean_with_wall_wextra(source):
    compiler = cbuild.find_compiler()
    if compiler is None:
        pytest.skip("no C compiler")
    proc = subprocess.run(
        [compiler, *cbuild.CFLAGS, "-Werror", "-fsyntax-only", str(ROOT / source)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr

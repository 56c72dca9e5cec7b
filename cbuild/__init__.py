"""C programs of the project built on first use with the system compiler (`$CC`, cc, gcc, clang).

Used by the native echo server (servers/native/echo.c) and the compiled load worker
(loadgen/native/worker.c). Binaries are cached under $XDG_CACHE_HOME/iomodel-bench (default
~/.cache/iomodel-bench), named by a hash of the source, the compiler and the flags: an edit or
another compiler gets a fresh build, and concurrent first uses each compile to a private temp
file and rename(2) it into place, so none of them ever runs a half-written binary.

This package sits below bench, servers and loadgen and imports none of them.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

# -Wall -Wextra must stay clean: a warning is a finding, not noise (tests/test_c_builds.py).
CFLAGS: tuple[str, ...] = ("-O2", "-std=gnu99", "-Wall", "-Wextra")
COMPILE_TIMEOUT_S = 120.0


class BuildError(Exception):
    """The C program cannot be built here; the message is one line meant for a report."""


def find_compiler() -> str | None:
    """$CC if set, else the first of cc, gcc, clang on PATH; None when there is none."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and (path := shutil.which(name)):
            return path
    return None


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "iomodel-bench"


def binary_path(name: str, source: bytes, compiler: str, cache: Path, flags: Sequence[str] = CFLAGS) -> Path:
    """Where the binary `name` built from `source` by `compiler` with `flags` lives; any change
    to one of them gives a new file name."""
    real = os.path.realpath(compiler)
    st = os.stat(real)
    key = hashlib.sha256()
    # The resolved driver with its size and mtime stands for the compiler version without
    # running it: an upgrade replaces the file.
    for part in (source, real.encode(), f"{st.st_size}:{st.st_mtime_ns}".encode(), *map(str.encode, flags)):
        key.update(part)
        key.update(b"\0")
    key.update(platform.machine().encode())
    return cache / f"{name}-{key.hexdigest()[:16]}"


def build(
    name: str,
    source_path: Path,
    compiler: str | None = None,
    cache: Path | None = None,
    flags: Sequence[str] = CFLAGS,
    libraries: Sequence[str] = (),
) -> Path:
    """The path of an up-to-date binary of `source_path`, compiled now if needed.

    Raises BuildError (one line: no compiler, unreadable source or cache, or the compiler's
    first error) when it cannot be built.
    """
    compiler = compiler or find_compiler()
    if compiler is None:
        raise BuildError("no C compiler found ($CC, cc, gcc or clang)")
    cache = cache if cache is not None else cache_dir()
    try:
        source = source_path.read_bytes()
        target = binary_path(name, source, compiler, cache, (*flags, *libraries))
        if os.access(target, os.X_OK):
            return target
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BuildError(f"cannot prepare the build: {exc}") from exc
    tmp = target.with_name(f"{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # The source goes in on stdin: the binary is then built from exactly the bytes hashed.
    cmd = [compiler, *flags, "-x", "c", "-", "-o", str(tmp), *libraries]
    try:
        proc = subprocess.run(cmd, input=source, capture_output=True, timeout=COMPILE_TIMEOUT_S, check=False)
        if proc.returncode != 0:
            raise BuildError(f"{os.path.basename(compiler)} failed: {_first_error(proc)}")
        os.replace(tmp, target)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildError(f"{os.path.basename(compiler)} failed: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target


@functools.cache
def build_once(name: str, source_path: Path) -> tuple[Path | None, str | None]:
    """(binary, None) once `build` succeeded in this process, or (None, its one-line reason)."""
    try:
        return build(name, source_path), None
    except BuildError as exc:
        return None, str(exc)


def _first_error(proc: subprocess.CompletedProcess[bytes]) -> str:
    lines = [line.strip() for line in proc.stderr.decode(errors="replace").splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower():
            return line
    return lines[0] if lines else f"exit status {proc.returncode}"

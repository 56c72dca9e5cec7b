"""The native baseline: a C epoll echo server (servers/native/echo.c), compiled on first use.

It shows what the same epoll loop costs without an interpreter. `python -m servers native`
builds the binary if needed and exec()s it, so the PID the harness started is the server's PID
and signals go straight to it.

The binary is cached under $XDG_CACHE_HOME/iomodel-bench (default ~/.cache/iomodel-bench),
named by a hash of the source, the compiler and the flags: an edit or another compiler gets a
fresh build, and concurrent first uses each compile to a private temp file and rename it into
place, so none of them ever runs a half-written binary.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from servers.base import EchoServer, ServerFailure, emit

SOURCE = Path(__file__).with_name("native") / "echo.c"
CFLAGS = ("-O2",)
COMPILE_TIMEOUT = 120.0


class BuildError(Exception):
    """The C server cannot be built here; the message is meant for the report."""


def find_compiler() -> str | None:
    """$CC if set, else the first of cc, gcc, clang on PATH."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and (path := shutil.which(name)):
            return path
    return None


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "iomodel-bench"


def binary_path(source: bytes, compiler: str, cache: Path) -> Path:
    """Where the binary built from `source` by `compiler` lives; any change gives a new name."""
    real = os.path.realpath(compiler)
    st = os.stat(real)
    key = hashlib.sha256()
    # The resolved driver with its size and mtime stands for the compiler version without
    # running it: an upgrade replaces the file.
    for part in (source, real.encode(), f"{st.st_size}:{st.st_mtime_ns}".encode(), *map(str.encode, CFLAGS)):
        key.update(part)
        key.update(b"\0")
    key.update(platform.machine().encode())
    return cache / f"native-echo-{key.hexdigest()[:16]}"


def build(source_path: Path = SOURCE, compiler: str | None = None, cache: Path | None = None) -> Path:
    """Return the path of an up-to-date binary, compiling it if needed; BuildError if impossible."""
    compiler = compiler or find_compiler()
    if compiler is None:
        raise BuildError("no C compiler found ($CC, cc, gcc or clang)")
    cache = cache if cache is not None else cache_dir()
    try:
        source = source_path.read_bytes()
        target = binary_path(source, compiler, cache)
        if os.access(target, os.X_OK):
            return target
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BuildError(f"cannot prepare the build: {exc}") from exc
    tmp = target.with_name(f"{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # The source goes in on stdin: the binary is then built from exactly the bytes hashed.
    cmd = [compiler, *CFLAGS, "-x", "c", "-", "-o", str(tmp)]
    try:
        proc = subprocess.run(cmd, input=source, capture_output=True, timeout=COMPILE_TIMEOUT, check=False)
        if proc.returncode != 0:
            raise BuildError(f"{os.path.basename(compiler)} failed: {_first_error(proc)}")
        os.replace(tmp, target)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildError(f"{os.path.basename(compiler)} failed: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _first_error(proc: subprocess.CompletedProcess[bytes]) -> str:
    lines = [line.strip() for line in proc.stderr.decode(errors="replace").splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower():
            return line
    return lines[0] if lines else f"exit status {proc.returncode}"


@functools.cache
def _build_once() -> tuple[Path | None, str | None]:
    try:
        return build(), None
    except BuildError as exc:
        return None, str(exc)


class NativeServer(EchoServer):
    name = "native"
    category = "baseline (C epoll)"
    mechanism = "C, level-triggered epoll, non-blocking sockets, signalfd: the epoll model without Python"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return _build_once()[1]

    def run(self) -> int:
        path, reason = _build_once()
        if path is None:
            emit({"event": "fatal", "model": self.name, "reason": f"unavailable: {reason}"})
            return 2
        opts = self.options
        argv = [str(path), opts.host, str(opts.port), str(opts.backlog)]
        # Anything still buffered would be lost by exec.
        sys.stdout.flush()
        try:
            os.execv(path, argv)
        except OSError as exc:
            emit({"event": "fatal", "model": self.name, "reason": f"cannot exec {path}: {exc}"})
        return 3

    def serve(self, listener: socket.socket) -> None:
        # run() replaces this process with the C server, which listens itself.
        raise ServerFailure("the native model runs as its own binary; start it with run()")

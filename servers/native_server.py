"""The native baseline: a C epoll echo server (servers/native/echo.c), compiled on first use.

It shows what the same epoll loop costs without an interpreter. `python -m servers native`
builds the binary if needed and exec()s it, so the PID the harness started is the server's PID
and signals go straight to it.

The binary is built and cached by cbuild (keyed by source, compiler and flags; renamed into
place, so no process ever runs a half-written one).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import cbuild
from servers.base import EchoServer, ServerFailure, emit

SOURCE = Path(__file__).with_name("native") / "echo.c"
BINARY_NAME = "native-echo"


def _build_once() -> tuple[Path | None, str | None]:
    return cbuild.build_once(BINARY_NAME, SOURCE)


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

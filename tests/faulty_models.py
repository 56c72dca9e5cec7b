"""Servers that fail on purpose, loaded by the harness through BENCH_EXTRA_MODELS."""

from __future__ import annotations

import os
import socket
import threading

from servers.base import EchoServer


class CrashOnAcceptServer(EchoServer):
    """Dies abruptly, without a fatal line, as soon as a client connects."""

    name = "crash"
    category = "test"
    mechanism = "exits with status 7 on the first accept"

    def serve(self, listener: socket.socket) -> None:
        listener.accept()
        os._exit(7)


class NeverReadyServer(EchoServer):
    """Never listens, never prints its ready line."""

    name = "never-ready"
    category = "test"
    mechanism = "blocks forever before listen()"

    def open_listener(self, port: int | None = None, reuse_port: bool = False) -> socket.socket:
        threading.Event().wait()
        raise AssertionError("unreachable")

    def serve(self, listener: socket.socket) -> None:
        raise AssertionError("unreachable")


class UnavailableServer(EchoServer):
    """A model this host cannot run, for the unavailable paths."""

    name = "unavailable"
    category = "test"
    mechanism = "needs hardware nobody has"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return "needs a quantum NIC"

    def serve(self, listener: socket.socket) -> None:
        raise AssertionError("unreachable")


EXTRA_MODELS = ",".join(
    [
        "crash=faulty_models:CrashOnAcceptServer",
        "never-ready=faulty_models:NeverReadyServer",
        "unavailable=faulty_models:UnavailableServer",
    ]
)

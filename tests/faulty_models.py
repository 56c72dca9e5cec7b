"""Servers that fail on purpose, loaded by the harness through BENCH_EXTRA_MODELS."""

from __future__ import annotations

import os
import socket
import threading
import time

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


class _PerConnectionThreads(EchoServer):
    """A thread per connection running `handle`; for servers that misbehave on purpose."""

    category = "test"

    def serve(self, listener: socket.socket) -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=self._guarded, args=(conn,), daemon=True).start()

    def _guarded(self, conn: socket.socket) -> None:
        with conn:
            try:
                self.handle(conn)
            except OSError:
                pass

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError


class CorruptEchoServer(_PerConnectionThreads):
    """Echoes, but flips one bit of every third chunk it sends back."""

    name = "corrupt"
    mechanism = "a thread per connection; every third echo has its first byte's low bit flipped"

    def handle(self, conn: socket.socket) -> None:
        chunks = 0
        while data := conn.recv(65536):
            chunks += 1
            if chunks % 3 == 0:
                data = bytes([data[0] ^ 1]) + data[1:]
            conn.sendall(data)


class IdleTimeoutServer(_PerConnectionThreads):
    """Echoes, and closes a connection that stays silent for 0.3 s (as idle timeouts do)."""

    name = "idle-timeout"
    mechanism = "a thread per connection, closed after 0.3 s without data"

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(0.3)
        while True:
            try:
                data = conn.recv(65536)
            except TimeoutError:
                return
            if not data:
                return
            conn.sendall(data)


class StallingServer(_PerConnectionThreads):
    """Echoes, but holds every echo back during the last STALL_S of each PERIOD_S of the
    monotonic clock: throughput drops to zero for 400 ms every second, whenever a window falls."""

    name = "stall"
    mechanism = "a thread per connection; no echo leaves during 0.6-1.0 s of every second (CLOCK_MONOTONIC)"
    PERIOD_S = 1.0
    STALL_S = 0.4

    def handle(self, conn: socket.socket) -> None:
        while data := conn.recv(65536):
            phase = time.monotonic() % self.PERIOD_S
            if phase >= self.PERIOD_S - self.STALL_S:
                # The fault under test: the server stalls until the period ends.
                time.sleep(self.PERIOD_S - phase)
            conn.sendall(data)


EXTRA_MODELS = ",".join(
    [
        "corrupt=faulty_models:CorruptEchoServer",
        "idle-timeout=faulty_models:IdleTimeoutServer",
        "stall=faulty_models:StallingServer",
        "crash=faulty_models:CrashOnAcceptServer",
        "never-ready=faulty_models:NeverReadyServer",
        "unavailable=faulty_models:UnavailableServer",
    ]
)

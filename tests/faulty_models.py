"""Servers that fail on purpose, loaded by the harness through BENCH_EXTRA_MODELS."""

from __future__ import annotations

import os
import socket
import threading
import time

from servers.base import EchoServer, ServerOptions, emit


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


class SilentServer(_PerConnectionThreads):
    """Reads every request and never answers: every request ends in the client's timeout."""

    name = "silent"
    mechanism = "a thread per connection that reads and never echoes"

    def handle(self, conn: socket.socket) -> None:
        while conn.recv(65536):
            pass


class OneEchoServer(_PerConnectionThreads):
    """Echoes a connection's first request, then closes it: a close after an echo."""

    name = "one-echo"
    mechanism = "a thread per connection, closed after its first echo"

    def handle(self, conn: socket.socket) -> None:
        if data := conn.recv(65536):
            conn.sendall(data)


class DribblingEchoServer(_PerConnectionThreads):
    """Echoes correctly, but in PIECE-byte sends PAUSE_S apart, each its own TCP segment
    (TCP_NODELAY): a client must put an echo together from many reads, each woken by its own
    segment, as an edge-triggered reader is."""

    name = "dribble"
    mechanism = "a thread per connection; every echo goes back 5 bytes at a time, 1 ms apart"
    PIECE = 5
    PAUSE_S = 0.001

    def handle(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(65536):
            for at in range(0, len(data), self.PIECE):
                if at:
                    # The fault under test: the pieces arrive apart, not in one segment.
                    time.sleep(self.PAUSE_S)
                conn.sendall(data[at : at + self.PIECE])


class OverlongEchoServer(_PerConnectionThreads):
    """Echoes every request followed by one extra byte, in the same send: the echo is whole,
    and the byte beyond it is queued behind it."""

    name = "overlong"
    mechanism = "a thread per connection; every echo has one byte too many"

    def handle(self, conn: socket.socket) -> None:
        while data := conn.recv(65536):
            conn.sendall(data + b"!")


class _FinWithDataServer(_PerConnectionThreads):
    """Answers a connection's first request with `reply(data)` and its FIN in one segment
    (TCP_CORK holds the data until shutdown adds the FIN), then reads until the client closes:
    a reader sees the data and the end of stream in a single wake-up."""

    def reply(self, data: bytes) -> bytes:
        raise NotImplementedError

    def handle(self, conn: socket.socket) -> None:
        if not (data := conn.recv(65536)):
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        conn.sendall(self.reply(data))
        conn.shutdown(socket.SHUT_WR)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
        while conn.recv(65536):
            pass


class HalfEchoFinServer(_FinWithDataServer):
    """Sends back half of the first request, with its FIN in the same segment."""

    name = "half-echo-fin"
    mechanism = "a thread per connection; half the first echo and a FIN in one segment"

    def reply(self, data: bytes) -> bytes:
        return data[: len(data) // 2]


class EchoFinServer(_FinWithDataServer):
    """Echoes the first request whole, with its FIN in the same segment."""

    name = "echo-fin"
    mechanism = "a thread per connection; the first echo and a FIN in one segment"

    def reply(self, data: bytes) -> bytes:
        return data


class PipeHolderServer(_PerConnectionThreads):
    """Echoes, having left a process outside its own tree that holds its stdout open for 30 s
    (its PID in a warning line): the end of that pipe is not the server's end."""

    name = "pipe-holder"
    mechanism = "a thread per connection, and a stray grandchild holding stdout for 30 s"

    def serve(self, listener: socket.socket) -> None:
        child = os.fork()
        if child == 0:
            # The grandchild is re-parented when its parent exits: no tree of the server's has it.
            if os.fork() == 0:
                listener.close()
                emit({"event": "warning", "reason": f"stray {os.getpid()}"})
                time.sleep(30)
            os._exit(0)
        os.waitpid(child, 0)
        super().serve(listener)


class SheddingServer(EchoServer):
    """Sheds as a server at its descriptor limit does (issue 13), but at CAP open connections
    instead of at RLIMIT_NOFILE: a connection accepted beyond CAP is closed at once, each
    episode is said on stdout as it ends, and a stats line at a clean exit (bench.measuring.shed's
    protocol); each SO_REUSEPORT process for itself."""

    name = "shed"
    category = "test"
    mechanism = "a thread per connection, at most 3 open: the rest are closed as accepted (shed)"
    supports_workers = True
    CAP = 3
    # An episode ends when no connection was shed for this long.
    EPISODE_END_S = 0.1

    def __init__(self, options: ServerOptions) -> None:
        super().__init__(options)
        self.total = self.episodes = 0
        self.in_episode = 0
        self.open = 0
        self.lock = threading.Lock()

    def serve(self, listener: socket.socket) -> None:
        listener.settimeout(self.EPISODE_END_S)
        began = last = 0.0
        while True:
            try:
                conn: socket.socket | None = listener.accept()[0]
            except TimeoutError:
                conn = None
            now = time.monotonic()
            if conn is not None and self.open >= self.CAP:
                conn.close()
                began = now if not self.in_episode else began
                self.in_episode += 1
                self.total += 1
                last = now
                continue
            if self.in_episode and (conn is not None or now - last >= self.EPISODE_END_S):
                self.episodes += 1
                emit({"event": "shed", "count": self.in_episode, "errno": "EMFILE", "seconds": round(last - began, 6)})
                self.in_episode = 0
            if conn is not None:
                with self.lock:
                    self.open += 1
                threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass
        with self.lock:
            self.open -= 1

    def close(self) -> None:
        # The last line of a clean exit; an episode under way counts in it.
        emit({"event": "stats", "shed": self.total, "episodes": self.episodes + (1 if self.in_episode else 0)})


class ShedEverythingServer(SheddingServer):
    """Sheds every connection: no request is ever answered."""

    name = "shed-all"
    mechanism = "closes every connection as it accepts it (shed)"
    CAP = 0


EXTRA_MODELS = ",".join(
    [
        "one-echo=faulty_models:OneEchoServer",
        "shed=faulty_models:SheddingServer",
        "shed-all=faulty_models:ShedEverythingServer",
        "pipe-holder=faulty_models:PipeHolderServer",
        "corrupt=faulty_models:CorruptEchoServer",
        "dribble=faulty_models:DribblingEchoServer",
        "overlong=faulty_models:OverlongEchoServer",
        "half-echo-fin=faulty_models:HalfEchoFinServer",
        "echo-fin=faulty_models:EchoFinServer",
        "idle-timeout=faulty_models:IdleTimeoutServer",
        "stall=faulty_models:StallingServer",
        "silent=faulty_models:SilentServer",
        "crash=faulty_models:CrashOnAcceptServer",
        "never-ready=faulty_models:NeverReadyServer",
        "unavailable=faulty_models:UnavailableServer",
    ]
)

"""Real-socket tests of the nonblocking, epoll-et, selectors and sigio echo servers.

Each test starts `python -m servers MODEL --port 0` as a subprocess, waits for its JSON ready
line and talks to it over loopback; teardown kills, by PID, whatever is still running. The
cases aim at what these four loops get wrong most easily: partial writes, a client that does
not read, edges that are never repeated, descriptors past 1024 and prompt shutdown.
"""

from __future__ import annotations

import os
import random
import select
import selectors
import signal
import socket
import struct
import time
from collections.abc import Callable

import pytest
from server_process import ArgvServer, model_argv

HOST = "127.0.0.1"
MODELS = ["nonblocking", "epoll-et", "selectors", "sigio"]
KIB, MIB = 1024, 1024 * 1024
HIGH_WATER = 16 * MIB  # servers.connection.HIGH_WATER, restated so a change is noticed here


# --- the server process ------------------------------------------------------------------


@pytest.fixture(params=MODELS)
def echo_server(request: pytest.FixtureRequest, spawn: Callable[..., ArgvServer]) -> ArgvServer:
    return spawn(model_argv(request.param))


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    # Seeded per test id: a failure replays with the same payloads.
    return random.Random(request.node.nodeid)


# --- clients -----------------------------------------------------------------------------


def connect(port: int, timeout: float = 20.0) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=timeout)


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def assert_same(got: bytes | bytearray, want: bytes, label: str) -> None:
    if got == want:
        return
    first = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
    raise AssertionError(f"{label}: echo differs: got {len(got)} B, want {len(want)} B, first difference at {first}")


def recv_exactly(sock: socket.socket, size: int) -> bytearray:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        assert n, f"EOF after {got} of {size} bytes"
        got += n
    return buf


def recv_until_eof(sock: socket.socket) -> bytearray:
    buf = bytearray()
    while chunk := sock.recv(MIB):
        buf += chunk
    return buf


class _Echo:
    __slots__ = ("index", "sock", "payload", "sent", "received")

    def __init__(self, index: int, sock: socket.socket, payload: bytes) -> None:
        self.index = index
        self.sock = sock
        self.payload = payload
        self.sent = 0
        self.received = bytearray()


def exchange(
    socks: list[socket.socket], payloads: list[bytes], *, half_close: bool = False, timeout: float = 30.0
) -> None:
    """Send payloads[i] on socks[i] while reading the echoes, all at once, and verify them.

    With `half_close`, each socket is shut for writing after its payload and the server must
    then close it: EOF has to follow the last echoed byte.
    """
    sel = selectors.DefaultSelector()
    echoes = [_Echo(i, sock, payload) for i, (sock, payload) in enumerate(zip(socks, payloads, strict=True))]
    try:
        for echo in echoes:
            echo.sock.setblocking(False)
            if not echo.payload and half_close:
                echo.sock.shutdown(socket.SHUT_WR)
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if echo.payload else 0)
            sel.register(echo.sock, events, echo)
        left = len(echoes)
        deadline = time.monotonic() + timeout
        while left:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{left} of {len(echoes)} echoes unfinished after {timeout} s"
            for key, events in sel.select(remaining):
                echo: _Echo = key.data
                if events & selectors.EVENT_WRITE and echo.sent < len(echo.payload):
                    try:
                        echo.sent += echo.sock.send(memoryview(echo.payload)[echo.sent :])
                    except BlockingIOError:
                        pass
                    if echo.sent == len(echo.payload):
                        if half_close:
                            echo.sock.shutdown(socket.SHUT_WR)
                        sel.modify(echo.sock, selectors.EVENT_READ, echo)
                if not events & selectors.EVENT_READ:
                    continue
                try:
                    chunk = echo.sock.recv(MIB)
                except BlockingIOError:
                    continue
                echo.received += chunk
                assert len(echo.received) <= len(echo.payload), "more bytes echoed than sent"
                if chunk and (half_close or len(echo.received) < len(echo.payload)):
                    continue
                assert_same(echo.received, echo.payload, f"connection {echo.index}")
                sel.unregister(echo.sock)
                left -= 1
    finally:
        sel.close()
        for sock in socks:
            if sock.fileno() != -1:
                sock.settimeout(20.0)


def settle(server: ArgvServer) -> int:
    """The server's descriptor count with no client, measured once its loop is running."""
    with connect(server.port) as sock:
        exchange([sock], [b"settle"])
        with_one = len(server.fd_numbers())
    return server.wait_for_fd_count(with_one - 1)


# --- tests -------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_payloads_from_1_byte_to_1_mib(echo_server: ArgvServer, rng: random.Random) -> None:
    sizes = [1, 2, 7, 1448, 64 * KIB - 1, 64 * KIB, 64 * KIB + 1, 300 * KIB, MIB]
    sizes += [rng.randint(1, MIB) for _ in range(4)]
    payloads = [rng.randbytes(n) for n in sizes]
    socks = [connect(echo_server.port) for _ in payloads]
    try:
        exchange(socks, payloads)
        # The same connections again, request after request, so the order within one stream
        # across many reads and partial writes is checked too.
        for size in (3, 100 * KIB):
            exchange(socks, [rng.randbytes(size) for _ in socks])
    finally:
        close_all(socks)


@pytest.mark.timeout(30)
def test_pipelined_stream_keeps_its_order(echo_server: ArgvServer, rng: random.Random) -> None:
    stream = b"".join(rng.randbytes(rng.randint(1, 200 * KIB)) for _ in range(40))
    with connect(echo_server.port) as sock:
        exchange([sock], [stream])


@pytest.mark.timeout(30)
def test_500_concurrent_connections(echo_server: ArgvServer, rng: random.Random) -> None:
    socks = [connect(echo_server.port) for _ in range(500)]
    try:
        for _round in range(2):
            exchange(socks, [rng.randbytes(rng.randint(1, 16 * KIB)) for _ in socks])
    finally:
        close_all(socks)


@pytest.mark.timeout(30)
def test_client_writing_8_mib_before_reading(echo_server: ArgvServer, rng: random.Random) -> None:
    data = rng.randbytes(8 * MIB)
    with connect(echo_server.port) as writer:
        # Blocks unless the server keeps reading while its echo cannot be delivered.
        writer.sendall(data)
        # The server is still owed megabytes by `writer`: others must not wait for that.
        others = [connect(echo_server.port) for _ in range(20)]
        try:
            exchange(others, [rng.randbytes(rng.randint(1, 64 * KIB)) for _ in others], timeout=10)
        finally:
            close_all(others)
        assert_same(recv_exactly(writer, len(data)), data, "8 MiB writer")


@pytest.mark.timeout(60)
def test_reading_resumes_after_high_water(echo_server: ArgvServer, rng: random.Random) -> None:
    """Past HIGH_WATER the server stops reading with data left in the kernel: for edge and
    signal models no new event announces that data, so the loop itself must remember it."""
    # More than HIGH_WATER plus every socket buffer on the path can hold (4 + 32 + 4 MiB max).
    limit = 64 * MIB
    data = rng.randbytes(limit)
    view = memoryview(data)
    with connect(echo_server.port) as sock:
        sock.setblocking(False)
        sent = 0
        # Write, reading nothing, until the socket stays full: only then has the server stopped
        # reading. The timeout detects "stuck", it synchronises nothing.
        while sent < limit and select.select([], [sock], [], 0.5)[1]:
            try:
                sent += sock.send(view[sent : sent + 256 * KIB])
            except BlockingIOError:
                pass
        assert sent < limit, "the socket never filled up: the server did not stop reading"
        assert sent > HIGH_WATER
        sock.settimeout(20)
        # Draining the echo lets the server flush, and it must then read the rest by itself.
        assert_same(recv_exactly(sock, sent), data[:sent], f"{sent} B stream")


@pytest.mark.timeout(30)
def test_abrupt_reset_leaves_others_served(echo_server: ArgvServer, rng: random.Random) -> None:
    baseline = settle(echo_server)
    linger0 = struct.pack("ii", 1, 0)
    bystander = connect(echo_server.port)
    try:
        victims = []
        # An idle connection, one mid-echo with megabytes owed to it, and one that resets
        # right after sending (the server may see data and RST together).
        for owed in (0, 4 * MIB, 100):
            sock = connect(echo_server.port)
            if owed:
                sock.sendall(rng.randbytes(owed))
            victims.append(sock)
        exchange([bystander], [b"before the resets"])
        for sock in victims:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger0)
            sock.close()  # RST, not FIN
        exchange([bystander], [rng.randbytes(200 * KIB)])
        assert echo_server.proc.poll() is None, "the server died on a reset"
    finally:
        bystander.close()
    assert echo_server.wait_for_fd_count(baseline) == baseline, "reset connections were not closed"


@pytest.mark.timeout(30)
def test_half_close_flushes_then_closes(echo_server: ArgvServer, rng: random.Random) -> None:
    baseline = settle(echo_server)
    sizes = [0, 1, 1000, 64 * KIB + 1, 3 * MIB] + [rng.randint(1, 256 * KIB) for _ in range(15)]
    socks = [connect(echo_server.port) for _ in sizes]
    try:
        exchange(socks, [rng.randbytes(n) for n in sizes], half_close=True)
    finally:
        close_all(socks)
    # Written before reading anything: at EOF the server still owes it everything.
    with connect(echo_server.port) as sock:
        data = rng.randbytes(4 * MIB)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        assert_same(recv_until_eof(sock), data, "half-closed 4 MiB")
    assert echo_server.wait_for_fd_count(baseline) == baseline


@pytest.mark.timeout(60)
def test_descriptors_past_1024(echo_server: ArgvServer, rng: random.Random) -> None:
    baseline = settle(echo_server)
    socks = [connect(echo_server.port) for _ in range(1100)]
    try:
        exchange(socks, [rng.randbytes(rng.randint(1, 2 * KIB)) for _ in socks])
        assert max(echo_server.fd_numbers()) > 1024
        # The highest descriptors once more, on their own.
        exchange(socks[-50:], [rng.randbytes(32 * KIB) for _ in range(50)])
    finally:
        close_all(socks)
    assert echo_server.wait_for_fd_count(baseline) == baseline


@pytest.mark.timeout(30)
def test_data_queued_before_accept(echo_server: ArgvServer, rng: random.Random) -> None:
    """Connections and data that arrive while the server is stopped are already there when it
    accepts: no readiness change will announce them afterwards."""
    os.kill(echo_server.pid, signal.SIGSTOP)
    try:
        socks = [connect(echo_server.port) for _ in range(50)]
        payloads = [rng.randbytes(rng.randint(1, 32 * KIB)) for _ in socks]
        for sock, payload in zip(socks, payloads, strict=True):
            sock.sendall(payload)
        socks[-1].shutdown(socket.SHUT_WR)
        # And one that is reset before the server ever accepts it.
        with connect(echo_server.port) as doomed:
            doomed.sendall(b"never echoed")
            doomed.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        os.kill(echo_server.pid, signal.SIGCONT)
    try:
        for i, (sock, payload) in enumerate(zip(socks, payloads, strict=True)):
            assert_same(recv_exactly(sock, len(payload)), payload, f"connection {i}")
        assert socks[-1].recv(1) == b"", "half-closed connection not closed by the server"
    finally:
        close_all(socks)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_shutdown_signal_exits_within_1_s(echo_server: ArgvServer, signum: int, rng: random.Random) -> None:
    idle = [connect(echo_server.port) for _ in range(20)]
    owed = connect(echo_server.port)
    try:
        owed.sendall(rng.randbytes(4 * MIB))  # leaves the server with pending data
        exchange(idle[:1], [b"busy"])
        started = time.monotonic()
        echo_server.proc.send_signal(signum)
        returncode = echo_server.proc.wait(timeout=1.0)
        assert time.monotonic() - started < 1.0
        assert returncode == 0
    finally:
        close_all([*idle, owed])

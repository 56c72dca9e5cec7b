"""The server contract, checked against every I/O model (as Lib/test/test_selectors.py checks
every selector): one set of tests, parametrised over the models in servers.registry.

Every test runs a real `python -m servers MODEL` process and talks to it over loopback; an
unavailable model is skipped with its reason. The teardown of each server checks that it
exits on SIGTERM, leaves no process behind and printed no traceback.

Run: `pytest tests/test_conformance.py` (all models), or `-k threads` for one.
"""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import time

import pytest
from server_process import (
    ServerProcess,
    StartServer,
    close_all,
    connect,
    describe,
    echo_many,
    echo_roundtrip,
    max_fd_number,
    open_many,
    recv_exactly,
    recv_until_eof,
    reset,
    unavailable_models,
    wait_server_read_all,
)

KIB, MIB = 1024, 1024 * 1024
# 1 B .. 1 MiB: around the server's 64 KiB recv size, and well past a loopback socket buffer
# (16 KiB send / 128 KiB receive by default), so partial writes must be buffered.
PAYLOAD_SIZES = [1, 2, 100, 4 * KIB - 1, 64 * KIB, 64 * KIB + 1, 300 * KIB, MIB]
# Loopback socket buffers here absorb about 8 MiB before a client that does not read blocks
# (measured: a server that blocks on its writes took 8.0 MiB), so 8 MiB would sit on the edge;
# 12 MiB is well past it and well below the 16 MiB the models buffer per connection.
BACKPRESSURE_BYTES = 12 * MIB
# A client that does not read fixes its receive buffer this small (no autotuning), so what the
# server owes it stays with the server instead of in a receive buffer that grows to 32 MiB here.
SMALL_RCVBUF = 64 * KIB
FD_SETSIZE = 1024
MANY = 1100  # enough connections that the server's descriptor numbers pass FD_SETSIZE
# fork caps its children (1000 by default); this test is about descriptors, not the cap.
MANY_ARGS = {"fork": ["--fork-cap", str(MANY + 100)]}


def payload(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


# --- the ready line ------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_ready_line(model: str, server: ServerProcess) -> None:
    ready = server.ready
    assert ready["event"] == "ready"
    assert ready["model"] == model
    assert ready["pid"] == server.pid
    assert ready["host"] == "127.0.0.1"
    assert 0 < ready["port"] < 65536
    with connect(server.port) as sock:
        echo_roundtrip(sock, b"ready?")


# --- echo -----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_payloads_on_one_connection(server: ServerProcess) -> None:
    rng = random.Random(1)
    with connect(server.port) as sock:
        for size in PAYLOAD_SIZES:
            echo_roundtrip(sock, payload(rng, size))
    server.assert_alive()


@pytest.mark.timeout(60)
def test_payloads_across_connections(server: ServerProcess) -> None:
    rng = random.Random(2)
    socks = open_many(server.port, len(PAYLOAD_SIZES))
    try:
        # Every size at once, each on its own connection, then again with the sizes rotated so
        # that each connection carries a second, different message.
        echo_many(socks, [payload(rng, size) for size in PAYLOAD_SIZES])
        rotated = PAYLOAD_SIZES[3:] + PAYLOAD_SIZES[:3]
        echo_many(socks, [payload(rng, size) for size in rotated])
    finally:
        close_all(socks)
    server.assert_alive()


@pytest.mark.timeout(60)
def test_backpressure_client_writes_12mib_before_reading(server: ServerProcess) -> None:
    """The client reads nothing until it has written all its data. Both directions' socket
    buffers fill; a server that stops reading while it cannot write deadlocks with the client."""
    data = payload(random.Random(3), BACKPRESSURE_BYTES)
    view = memoryview(data)
    with connect(server.port, timeout=10.0, rcvbuf=SMALL_RCVBUF) as sock:
        sent = 0
        while sent < len(data):
            try:
                sent += sock.send(view[sent : sent + 256 * KIB])
            except TimeoutError:
                pytest.fail(
                    f"server stopped reading: client blocked 10 s after sending {sent} of {len(data)} bytes "
                    "without reading (deadlock: the server blocks on a write it cannot finish)"
                )
        assert recv_exactly(sock, len(data)) == data
    server.assert_alive()


@pytest.mark.timeout(30)
def test_client_that_stops_reading_does_not_stall_others(server: ServerProcess) -> None:
    """One client sends more than the socket buffers hold and never reads its echo; the server
    must go on serving another client (no model may block on one client)."""
    chunk = payload(random.Random(9), 256 * KIB)
    stalled = connect(server.port, timeout=2.0, rcvbuf=SMALL_RCVBUF)
    try:
        with contextlib.suppress(TimeoutError):  # the server may rightly stop reading it
            for _ in range(BACKPRESSURE_BYTES // len(chunk)):
                stalled.sendall(chunk)
        with connect(server.port) as other:
            echo_roundtrip(other, payload(random.Random(10), 200 * KIB), timeout=10.0)
    finally:
        stalled.close()
    server.assert_alive()


@pytest.mark.timeout(60)
def test_500_concurrent_connections(server: ServerProcess) -> None:
    rng = random.Random(4)
    socks = open_many(server.port, 500)
    try:
        for _ in range(2):
            echo_many(socks, [payload(rng, rng.randint(1, 8 * KIB)) for _ in socks])
    finally:
        close_all(socks)
    server.assert_alive()


# --- connections that end ------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_abrupt_reset_mid_message(server: ServerProcess) -> None:
    """RST (SO_LINGER 0) at every stage of a message; the server keeps serving the others."""
    rng = random.Random(5)
    keeper = connect(server.port)
    try:
        echo_roundtrip(keeper, payload(rng, 1000))
        for _ in range(5):
            # Reset before sending anything.
            reset(connect(server.port))
            # Reset with half a message sent (as much as the buffers take without blocking).
            sock = connect(server.port)
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.send(payload(rng, MIB))
            reset(sock)
            # Reset while the server still owes most of a large echo.
            sock = connect(server.port)
            big = payload(rng, 256 * KIB)
            sock.sendall(big)
            assert recv_exactly(sock, 1000) == big[:1000]
            reset(sock)
            echo_roundtrip(keeper, payload(rng, rng.randint(1, 64 * KIB)))
        with connect(server.port) as fresh:
            echo_roundtrip(fresh, payload(rng, 100 * KIB))
    finally:
        keeper.close()
    server.assert_alive()


@pytest.mark.timeout(60)
def test_half_close_flushes_then_closes(server: ServerProcess) -> None:
    """shutdown(SHUT_WR) after the data: the server writes back everything it owes, then
    closes; the client reads it all and then EOF."""
    rng = random.Random(6)
    # With the client's receive buffer small, the largest leaves the server owing MiBs at EOF.
    for size in [0, 1, 64 * KIB + 1, BACKPRESSURE_BYTES]:
        data = payload(rng, size)
        with connect(server.port, timeout=15.0, rcvbuf=SMALL_RCVBUF) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            # Let the server read all of it, and so meet EOF while it still owes the client MiBs.
            wait_server_read_all(sock)
            try:
                echoed = recv_until_eof(sock, limit=size)
            except TimeoutError:
                pytest.fail(f"{size} B then SHUT_WR: no EOF from the server within 15 s")
            assert len(echoed) == size
            assert echoed == data
    server.assert_alive()


# --- shutdown -------------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_exits_within_1s_leaving_no_process(server: ServerProcess, sig: signal.Signals) -> None:
    """With idle, busy and half-closed connections open, the server exits within 1 s of the
    signal, with status 0, and no process it made (found by PID: its tree and its session)
    survives it."""
    rng = random.Random(7)
    idle = open_many(server.port, 20)
    busy = connect(server.port)
    half = connect(server.port)
    try:
        echo_many(idle[:5], [b"x"] * 5)
        # The server owes `busy` an echo the client is not reading: a write it cannot finish.
        busy.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            busy.send(payload(rng, 4 * MIB))
        half.sendall(b"partial")
        half.shutdown(socket.SHUT_WR)
        result = server.stop(sig, timeout=1.0, child_grace=0.2, check=False)
    finally:
        close_all([*idle, busy, half])
    assert not result.killed, f"did not exit within 1 s of {sig.name}; stderr: {server.stderr_tail()}"
    assert result.seconds < 1.0
    assert not result.leftovers, f"processes outlived the server: {result.leftovers}"
    assert result.returncode == 0, f"exit status {result.returncode}; stderr: {server.stderr_tail()}"
    assert "Traceback" not in server.stderr_text()


# --- the FD_SETSIZE wall --------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_1100_connections_past_fd_setsize(scalable_model: str, start_server: StartServer) -> None:
    """1100 connections open at once (server descriptor numbers above 1024), every one echoes."""
    server = start_server(scalable_model, MANY_ARGS.get(scalable_model, ()))
    rng = random.Random(8)
    socks = open_many(server.port, MANY)
    try:
        echo_many(socks, [payload(rng, rng.randint(1, 512)) for _ in socks], timeout=60.0)
        if not server.tree():
            # One process holds every connection: its descriptor numbers must have passed 1024.
            assert max_fd_number(server.pid) >= FD_SETSIZE
        echo_many(socks, [payload(rng, 64) for _ in socks], timeout=60.0)
    finally:
        close_all(socks)
    server.assert_alive()


@pytest.mark.timeout(60)
def test_select_fails_cleanly_past_fd_setsize(start_server: StartServer) -> None:
    """select() cannot watch descriptor 1024: the server says so in a fatal line and exits."""
    info = describe("select")
    if not info.available:
        pytest.skip(f"model select unavailable: {info.reason}")
    server = start_server("select")
    socks: list[socket.socket] = []
    try:
        for _ in range(MANY):
            try:
                socks.append(connect(server.port))
            except OSError:
                break  # the server has already given up and closed its listener
        event = server.read_event(timeout=20.0)
        assert event is not None, f"no fatal line before EOF; stderr: {server.stderr_tail()}"
        assert event.get("event") == "fatal", event
        assert "1024" in event.get("reason", ""), event
        status = server.wait_exit(timeout=5.0)
    finally:
        close_all(socks)
    assert status is not None, "select server did not exit after its fatal line"
    assert status != 0
    assert "Traceback" not in server.stderr_text()


# --- models that cannot run -----------------------------------------------------------------


def _expect_fatal_exit(server: ServerProcess, name: str) -> None:
    event = server.read_event(timeout=20.0)
    assert event is not None, f"no fatal line before EOF; stderr: {server.stderr_tail()}"
    assert event.get("event") == "fatal", event
    assert event.get("reason"), event
    started = time.monotonic()
    status = server.wait_exit(timeout=10.0)
    assert status is not None, f"{name}: still running {time.monotonic() - started:.1f} s after its fatal line"
    assert status != 0
    assert "Traceback" not in server.stderr_text()


@pytest.mark.timeout(30)
def test_unknown_model_is_fatal() -> None:
    server = ServerProcess("no-such-model", ["--die-with-parent"])
    try:
        _expect_fatal_exit(server, "no-such-model")
    finally:
        server.stop()


_UNAVAILABLE = unavailable_models() or [pytest.param("-", marks=pytest.mark.skip(reason="all models available"))]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", _UNAVAILABLE)
def test_unavailable_model_is_fatal(name: str) -> None:
    server = ServerProcess(name, ["--die-with-parent"])
    try:
        _expect_fatal_exit(server, name)
    finally:
        server.stop()

"""The server contract, checked against every I/O model (as Lib/test/test_selectors.py checks
every selector): one set of tests, parametrised over the models in servers.registry.

Every test runs a real `python -m servers MODEL` process and talks to it over loopback; an
unavailable model is skipped with its reason. The teardown of each server checks that it
exits on SIGTERM, leaves no process behind and printed no traceback.

Run: `pytest tests/test_conformance.py` (all models), or `-k threads` for one.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import time
from dataclasses import dataclass

import pytest
from server_process import (
    ServerProcess,
    StartServer,
    close_all,
    closed_by_server,
    connect,
    describe,
    echo_many,
    echo_roundtrip,
    max_fd_number,
    open_many,
    recv_exactly,
    recv_until_eof,
    reset,
    tree_cpu_seconds,
    unavailable_models,
    wait_server_closed,
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


# --- out of descriptors (issue 13) ---------------------------------------------------------

# The case: `prlimit --nofile=64:64`, 100 idle connections, hold 3 s, close 50, then one
# new connection sends 64 bytes.
NOFILE = 64
OVER_LIMIT = 100
HOLD_S = 3.0
CLOSED = 50
# Server CPU over the held period, as a share of one core: a server that retries a failing
# accept() in a loop (asyncio before issue 13: 70-75%) is far above it, one that sheds and
# waits is near 0.
MAX_HELD_CPU = 0.20
# nonblocking polls every socket in a loop that never waits: a whole CPU at any load, by design.
BUSY_BY_DESIGN = frozenset({"nonblocking"})
# fork's parent holds no connection (each child holds one, in a descriptor table of its own),
# so RLIMIT_NOFILE never stops it accepting; its cap does, set here near where the others
# run out of descriptors, and it sheds as they do.
LIMIT_ARGS = {"fork": ["--fork-cap", "60"]}
SHED_CAUSE = {"fork": "fork-cap"}
# A shed line per episode and a stats line go to stdout; stderr may say a few words at most.
MAX_STDERR_LINES = 5
# Run in the server first: servers.shedding can never open its spare descriptor, as when another
# process took the slot (ENFILE), so the gate must pause accepting instead of shedding.
NO_SPARE = "import servers.shedding\nservers.shedding._open_reserve = lambda: -1"
# Models whose accept path has no such gate to take the spare from: native is C (its pause path
# is the same design, reviewed, not run here), and fork's parent never runs out of descriptors.
NO_SPARE_UNTESTABLE = {"native": "C server: no hook to take its spare away", "fork": "its parent holds no connection"}


@dataclass
class LimitCase:
    """What the issue's case measured on one model (also printed by `-s` for the table)."""

    kept: int  # connections the server did not close: held, or waiting in its listen queue
    shed_seen: int  # connections the clients saw closed by the server while held
    held_cpu: float  # server tree CPU over the held period, share of one core
    echo_s: float  # from the closes being done to the last echo asked for, seconds
    events: list[dict]  # stdout lines from the end of the hold to the exit


def run_limit_case(server: ServerProcess, echo_waiting: bool = False) -> LimitCase:
    """The issue's case against a server started with RLIMIT_NOFILE = NOFILE; stops it (and
    fails if it needed SIGKILL, left a process behind or printed a traceback). After the
    closes a new connection is echoed, or, with `echo_waiting`, every connection still open:
    the ones that waited in the listen queue are then served."""
    # Idle connections; a loopback connect completes in the kernel (the listen queue holds it),
    # so every one connects whether or not the server can accept it.
    socks = open_many(server.port, OVER_LIMIT)
    try:
        before, started = tree_cpu_seconds(server.pid), time.monotonic()
        # Hold the limit for 3 s, as the case does: the time a spinning accept shows.
        time.sleep(HOLD_S)
        held_cpu = (tree_cpu_seconds(server.pid) - before) / (time.monotonic() - started)
        server.assert_alive()
        shed_seen = sum(closed_by_server(sock) for sock in socks)
        # The oldest connections are the ones the server accepted first, and holds.
        close_all(socks[:CLOSED])
        assert wait_server_closed(server.port), f"{server.model} did not close its ends of {CLOSED} closed connections"
        freed = time.monotonic()
        if echo_waiting:
            rest = socks[CLOSED:]
            echo_many(rest, [payload(random.Random(i), 64) for i in range(len(rest))], timeout=3.0)
        else:
            with connect(server.port, timeout=3.0) as fresh:
                echo_roundtrip(fresh, payload(random.Random(13), 64), timeout=3.0)
        echo_s = time.monotonic() - freed
    finally:
        close_all(socks)
    server.stop()
    return LimitCase(OVER_LIMIT - shed_seen, shed_seen, held_cpu, echo_s, server.events_after_stop())


@pytest.mark.timeout(60)
def test_descriptor_limit_sheds_and_keeps_serving(model: str, start_server: StartServer) -> None:
    """Started with RLIMIT_NOFILE 64, the server holds what it can of 100 idle connections and
    sheds the rest (closes them at once) without dying, spinning or flooding stderr; once 50
    are closed a new connection is echoed within 3 s; the stats line at exit counts what it
    shed, as the shed lines of its episodes do."""
    server = start_server(model, LIMIT_ARGS.get(model, ()), nofile=NOFILE)
    case = run_limit_case(server)
    print(f"\n{model}: kept {case.kept}, shed {case.shed_seen}, held CPU {case.held_cpu:.1%}, echo {case.echo_s:.3f} s")
    if model not in BUSY_BY_DESIGN:
        assert case.held_cpu < MAX_HELD_CPU, f"{model} used {case.held_cpu:.0%} of a CPU holding the limit"
    assert 0 < case.shed_seen < OVER_LIMIT, f"{model} shed {case.shed_seen} of {OVER_LIMIT}"
    assert case.events, f"{model} printed nothing on stdout after its ready line"
    stats = case.events[-1]
    assert stats == {"event": "stats", "shed": case.shed_seen, "episodes": stats.get("episodes")}, case.events
    episodes = [e for e in case.events if e.get("event") == "shed"]
    assert len(episodes) == stats["episodes"] >= 1, case.events
    assert sum(e["count"] for e in episodes) == stats["shed"], case.events
    assert {e["errno"] for e in episodes} == {SHED_CAUSE.get(model, "EMFILE")}, case.events
    assert all(0 <= e["seconds"] < 30 for e in episodes), case.events
    assert_quiet_stderr(server)


@pytest.mark.timeout(60)
def test_descriptor_limit_without_a_spare_defers_and_keeps_serving(model: str, start_server: StartServer) -> None:
    """The issue's case with no spare descriptor to shed through: the server stops accepting
    (the connections past the limit wait in the listen queue) without spinning, and once 50
    are closed it takes them and every connection still open is echoed within 3 s (a new one
    would queue behind them, and find no descriptor where the server's own use more than 14).
    On stdout, episodes that shed nothing: more than one when the closes reach it one by one
    (each freed descriptor lets one waiting connection in, which ends an episode, and the
    next accept() fails again)."""
    if model in NO_SPARE_UNTESTABLE:
        pytest.skip(NO_SPARE_UNTESTABLE[model])
    server = start_server(model, nofile=NOFILE, prelude=NO_SPARE)
    case = run_limit_case(server, echo_waiting=True)
    print(f"\n{model} (no spare): kept {case.kept}, shed {case.shed_seen}, held CPU {case.held_cpu:.1%}")
    if model not in BUSY_BY_DESIGN:
        assert case.held_cpu < MAX_HELD_CPU, f"{model} used {case.held_cpu:.0%} of a CPU holding the limit"
    assert case.shed_seen == 0
    stats = case.events[-1]
    assert stats == {"event": "stats", "shed": 0, "episodes": stats.get("episodes")}, case.events
    episodes = [e for e in case.events if e.get("event") == "shed"]
    assert len(episodes) == stats["episodes"] >= 1, case.events
    assert {(e["count"], e["errno"]) for e in episodes} == {(0, "EMFILE")}, case.events
    assert_quiet_stderr(server)


def assert_quiet_stderr(server: ServerProcess) -> None:
    stderr_lines = server.stderr_text().splitlines()
    assert len(stderr_lines) <= MAX_STDERR_LINES, f"{len(stderr_lines)} lines on stderr: {stderr_lines[:10]}"


@pytest.mark.timeout(30)
def test_sigusr1_prints_stats_and_keeps_serving(server: ServerProcess) -> None:
    """SIGUSR1 prints the stats line without stopping the server (which sheds nothing here);
    the same line is the last one on stdout at exit."""
    with connect(server.port) as sock:
        echo_roundtrip(sock, b"before")
        os.kill(server.pid, signal.SIGUSR1)
        assert server.read_event(timeout=5.0) == {"event": "stats", "shed": 0, "episodes": 0}
        echo_roundtrip(sock, b"after")
    server.assert_alive()
    server.stop()
    assert server.events_after_stop() == [{"event": "stats", "shed": 0, "episodes": 0}]


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

"""The io_uring binding (servers.uring) and the io_uring echo server, on real loopback sockets.

Binding tests drive a Ring in this process; server tests run `python -m servers io_uring` as a
subprocess (via the shared ServerProcess helpers: ready line read with a deadline, SIGTERM at
teardown, SIGKILL by PID if that fails).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from server_process import (
    HOST,
    PROJECT_ROOT,
    ServerProcess,
    StartServer,
    close_all,
    connect,
    echo_many,
    echo_roundtrip,
    max_fd_number,
    open_many,
    recv_exactly,
    recv_until_eof,
    reset,
)

from servers import io_uring_server, registry, uring
from servers.base import ServerFailure, ServerOptions
from servers.io_uring_server import IoUringServer

KIB, MIB = 1024, 1024 * 1024
PROBLEM = uring.support_problem()
needs_uring = pytest.mark.skipif(PROBLEM is not None, reason=f"io_uring unavailable: {PROBLEM}")
pytestmark = [needs_uring, pytest.mark.timeout(60)]


@pytest.fixture
def ring() -> Iterator[uring.Ring]:
    with uring.Ring(64) as r:
        yield r


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    with a, b:
        yield a, b


def wait_for(ring: uring.Ring, user_data: int, timeout: float = 5.0) -> tuple[int, int, int]:
    """Submit and reap until the completion for `user_data` arrives; (user_data, res, flags)."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        ring.submit(wait_nr=1, timeout=remaining)
        for cqe in ring.completions():
            if cqe[0] == user_data:
                return cqe
    raise AssertionError(f"no completion for user_data {user_data:#x} within {timeout} s")


# --- the binding ---------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_nops_return_their_user_data(ring: uring.Ring) -> None:
    ids = [0, 1, 2**63 + 5, 2**64 - 1]
    for user_data in ids:
        ring.nop(user_data)
    assert ring.in_flight == len(ids)
    assert ring.submit(wait_nr=len(ids)) == len(ids)
    assert sorted(ring.completions()) == sorted((u, 0, 0) for u in ids)
    assert ring.in_flight == 0


@pytest.mark.timeout(10)
def test_user_data_in_flight_cannot_be_reused(ring: uring.Ring, pair: tuple[socket.socket, socket.socket]) -> None:
    ring.recv(pair[0].fileno(), bytearray(8), 7)
    with pytest.raises(ValueError, match="already in flight"):
        ring.nop(7)


@pytest.mark.timeout(10)
def test_recv_and_send_on_a_socketpair(ring: uring.Ring, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    buf = bytearray(100)
    ring.recv(a.fileno(), buf, 1)
    ring.submit()
    # The kernel holds the address: the buffer must not move until the completion.
    with pytest.raises(BufferError):
        buf.extend(b"x")
    b.send(b"hello")
    assert wait_for(ring, 1) == (1, 5, 0)
    assert buf[:5] == b"hello"
    buf.extend(b"x")  # released with the completion

    ring.send(a.fileno(), b"world", 2)
    assert wait_for(ring, 2) == (2, 5, 0)
    assert b.recv(10) == b"world"


@pytest.mark.timeout(10)
def test_recv_reports_eof_and_reset(ring: uring.Ring) -> None:
    a, b = socket.socketpair()
    with a:
        ring.recv(a.fileno(), bytearray(8), 1)
        ring.submit()
        b.close()
        assert wait_for(ring, 1)[1] == 0
    listener = socket.create_server((HOST, 0))
    with listener, socket.create_connection(listener.getsockname()) as client:
        server, _ = listener.accept()
        with server:
            ring.recv(server.fileno(), bytearray(8), 2)
            ring.submit()
            reset(client)
            assert wait_for(ring, 2)[1] == -errno.ECONNRESET


@pytest.mark.timeout(20)
def test_short_sends_are_reported(ring: uring.Ring, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    data = random.Random(1).randbytes(8 * MIB)
    view, got, sent, user_data = memoryview(data), bytearray(), 0, 0
    b.setblocking(False)
    # Far more than the socket buffers hold: each send completes with what fit, and the rest
    # is the caller's to resubmit.
    while len(got) < len(data):
        if sent < len(data) and not ring.is_pending(user_data):
            user_data += 1
            ring.send(a.fileno(), view[sent:], user_data)
        ring.submit(wait_nr=0)
        for ud, res, _ in ring.completions():
            assert ud == user_data and 0 < res <= len(data) - sent
            sent += res
        with contextlib.suppress(BlockingIOError):
            got += b.recv(MIB)
    assert user_data > 1 and got == data


@pytest.mark.timeout(10)
def test_multishot_accept_keeps_accepting_until_cancelled(ring: uring.Ring) -> None:
    with socket.create_server((HOST, 0)) as listener:
        ring.accept_multishot(listener.fileno(), 1)
        clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
        try:
            accepted: list[int] = []
            seen: dict[int, tuple[int, int]] = {}
            while len(accepted) < 3:
                ring.submit(wait_nr=1, timeout=5)
                for user_data, res, flags in ring.completions():
                    assert user_data == 1 and res >= 0 and flags & uring.CQE_F_MORE, (res, flags)
                    accepted.append(res)
            assert ring.is_pending(1)
            ring.cancel(1, 2)
            while ring.in_flight:
                ring.submit(wait_nr=1, timeout=5)
                seen.update((ud, (res, flags)) for ud, res, flags in ring.completions())
            assert seen[1] == (-errno.ECANCELED, 0)  # the last one: no IORING_CQE_F_MORE
            assert seen[2][0] == 0
        finally:
            close_all(clients)
            for fd in accepted:
                os.close(fd)


@pytest.mark.timeout(10)
def test_provided_buffers_are_picked_by_the_kernel(ring: uring.Ring, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    group = uring.BufferGroup(ring, 3, 2, 16)
    for i in range(5):  # more receives than buffers: each is given back
        ring.recv_provided(a.fileno(), group, 10 + i)
        b.send(bytes([65 + i]) * (i + 1))
        _, res, flags = wait_for(ring, 10 + i)
        assert flags & uring.CQE_F_BUFFER and res == i + 1
        assert group.take(flags, res) == bytes([65 + i]) * (i + 1)


@pytest.mark.timeout(10)
def test_provided_buffers_exhausted_gives_enobufs(ring: uring.Ring, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    group = uring.BufferGroup(ring, 4, 1, 16)
    b.send(b"one")
    ring.recv_provided(a.fileno(), group, 1)
    _, res, flags = wait_for(ring, 1)
    assert res == 3 and flags & uring.CQE_F_BUFFER
    # Not given back yet: the group is empty.
    b.send(b"two")
    ring.recv_provided(a.fileno(), group, 2)
    assert wait_for(ring, 2)[1] == -errno.ENOBUFS
    assert group.take(flags, res) == b"one"
    ring.recv_provided(a.fileno(), group, 3)
    _, res, flags = wait_for(ring, 3)
    assert group.take(flags, res) == b"two"


@pytest.mark.timeout(10)
def test_full_submission_queue_is_flushed_and_overflowing_completions_kept() -> None:
    with uring.Ring(8) as ring:
        assert ring.sq_entries == 8 and ring.cq_entries == 16
        for user_data in range(40):  # 5 x the SQ and 2.5 x the CQ
            ring.nop(user_data)
        seen: list[int] = []
        while len(seen) < 40:
            ring.submit(wait_nr=1, timeout=5)
            seen += [ud for ud, res, _ in ring.completions() if res == 0]
        assert sorted(seen) == list(range(40)) and ring.in_flight == 0


@pytest.mark.timeout(10)
def test_discard_unsubmitted(ring: uring.Ring) -> None:
    ring.nop(1)
    ring.submit(wait_nr=1)
    ring.nop(2)
    ring.nop(3)
    assert ring.discard_unsubmitted() == [2, 3]
    assert ring.submit(wait_nr=1, timeout=0.05) == 0
    assert ring.completions() == [(1, 0, 0)] and ring.in_flight == 0


@pytest.mark.timeout(10)
def test_wait_timeout(ring: uring.Ring) -> None:
    started = time.monotonic()
    assert ring.submit(wait_nr=1, timeout=0.05) == 0
    assert 0.04 < time.monotonic() - started < 2
    assert ring.completions() == []


class _Stop(Exception):
    pass


@pytest.fixture
def alarm() -> Iterator[None]:
    """SIGALRM from a kernel interval timer, restored afterwards."""
    old = signal.getsignal(signal.SIGALRM)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.timeout(10)
def test_eintr_runs_handlers_then_keeps_waiting(
    ring: uring.Ring, pair: tuple[socket.socket, socket.socket], alarm: None
) -> None:
    a, b = pair
    calls = []

    def handler(signum: int, frame: object) -> None:
        # Runs while submit() waits; the byte it sends is what ends the wait.
        calls.append(ring.is_pending(1))
        b.send(b"!")

    signal.signal(signal.SIGALRM, handler)
    ring.recv(a.fileno(), bytearray(4), 1)
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    ring.submit(wait_nr=1)
    assert calls == [True]
    assert ring.completions() == [(1, 1, 0)]


@pytest.mark.timeout(10)
def test_exception_from_signal_handler_unwinds_the_wait(
    ring: uring.Ring, pair: tuple[socket.socket, socket.socket], alarm: None
) -> None:
    def handler(signum: int, frame: object) -> None:
        raise _Stop

    signal.signal(signal.SIGALRM, handler)
    ring.recv(pair[0].fileno(), bytearray(4), 1)
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    started = time.monotonic()
    with pytest.raises(_Stop):
        ring.submit(wait_nr=1)  # nothing will complete: only the signal ends this
    assert time.monotonic() - started < 2
    assert ring.is_pending(1)  # submitted once, still in flight


@pytest.mark.timeout(10)
def test_closing_with_operations_in_flight_keeps_their_buffers(pair: tuple[socket.socket, socket.socket]) -> None:
    buf = bytearray(16)
    ring = uring.Ring(8)
    ring.recv(pair[0].fileno(), buf, 1)
    ring.submit()
    ring.close()
    ring.close()  # idempotent
    with pytest.raises(BufferError):
        buf.extend(b"x")  # still pinned: the kernel may yet write into it
    with pytest.raises(ValueError, match="closed"):
        ring.nop(2)


def test_support_problem_names_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    assert uring.support_problem() is None
    monkeypatch.setattr(uring.platform, "machine", lambda: "aarch64")
    assert "x86-64 only" in (uring.support_problem() or "")


def test_model_is_registered_and_available() -> None:
    info = registry.describe("io_uring")
    assert info.available, info.reason
    assert info.category == "asynchronous"
    assert "multishot accept" in info.mechanism


# --- the server ----------------------------------------------------------------------------


@pytest.fixture
def server(start_server: StartServer) -> ServerProcess:
    return start_server("io_uring")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_fd_count(pid: int, expected: int, timeout: float = 5.0) -> None:
    """Poll (bounded) until the server holds `expected` fds: closes happen asynchronously."""
    deadline = time.monotonic() + timeout
    while (count := fd_count(pid)) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"server holds {count} fds, expected {expected}")
        time.sleep(0.01)


def stalled_reader(port: int) -> socket.socket:
    """A connection whose echo is stuck: it sent 12 MiB, read one byte and reads no more.
    Its small fixed receive buffer (no autotuning) and the server's send buffer (at most
    4 MiB here) hold far less than 12 MiB, so the server has a send in flight that cannot
    complete, and the rest of the data pending behind it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KIB)
    sock.settimeout(30)
    sock.connect((HOST, port))
    data = b"s" * (12 * MIB)
    sock.sendall(data)  # below the 16 MiB high-water mark: the server reads it all
    assert sock.recv(1) == b"s"
    return sock


@pytest.mark.timeout(30)
def test_ready_line(server: ServerProcess) -> None:
    assert server.ready["model"] == "io_uring"
    assert server.ready["pid"] == server.pid and server.port > 0


def test_random_payloads_1b_to_1mib(server: ServerProcess) -> None:
    rng = random.Random(2)
    sizes = [1, 2, 63, 64, 4095, 32 * KIB, 32 * KIB + 1, 65536, 300 * KIB, MIB]
    sizes += [rng.randint(1, MIB) for _ in range(10)]
    with connect(server.port) as sock:
        for size in sizes:
            echo_roundtrip(sock, rng.randbytes(size))


def test_500_concurrent_connections(server: ServerProcess) -> None:
    rng = random.Random(3)
    socks = open_many(server.port, 500)
    try:
        for _ in range(3):
            # Together far more than the 16 MiB buffer ring holds at once.
            echo_many(socks, [rng.randbytes(rng.randint(1, 96 * KIB)) for _ in socks])
    finally:
        close_all(socks)
    server.assert_alive()


def test_client_writes_8mib_before_reading(server: ServerProcess) -> None:
    data = random.Random(4).randbytes(8 * MIB)
    with connect(server.port, timeout=30) as sock:
        sock.sendall(data)  # the server must keep reading while its sends wait
        assert recv_exactly(sock, len(data)) == data


def test_abrupt_reset_then_others_served_and_fds_released(server: ServerProcess) -> None:
    rng = random.Random(5)
    idle = connect(server.port)
    echo_roundtrip(idle, b"ping")  # the server is in its loop: ring and wakeup fds exist
    baseline = fd_count(server.pid) - 1
    reset(idle)
    # The server has a send in flight (that cannot complete) when the RST arrives.
    reset(stalled_reader(server.port))
    with connect(server.port) as sock:
        for _ in range(5):
            echo_roundtrip(sock, rng.randbytes(rng.randint(1, 200 * KIB)))
    wait_fd_count(server.pid, baseline)


def test_half_close_flushes_then_closes(server: ServerProcess) -> None:
    data = random.Random(6).randbytes(3 * MIB)
    with connect(server.port, timeout=30) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_eof(sock, len(data)) == data


@pytest.mark.timeout(90)
def test_1100_connections_past_fd_1024(server: ServerProcess) -> None:
    socks = open_many(server.port, 1100)
    try:
        echo_many(socks, [i.to_bytes(4, "big") * 16 for i in range(len(socks))])
        assert max_fd_number(server.pid) >= 1024
    finally:
        close_all(socks)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_exits_within_1s_with_work_in_flight(server: ServerProcess, sig: signal.Signals) -> None:
    socks = open_many(server.port, 50)
    try:
        echo_many(socks, [b"x" * 100] * len(socks))
        socks.append(stalled_reader(server.port))
        result = server.stop(sig, timeout=5)
        assert result.returncode == 0 and not result.killed
        assert result.seconds < 1.0, result.seconds
        assert server.stderr_text() == ""
    finally:
        close_all(socks)


# A server with a tiny buffer ring and high-water mark, so that starved receives (-ENOBUFS) and
# paused reading happen all the time. It reports on stderr how many receives were starved.
_TINY = """
import atexit, errno, json, sys
import servers.io_uring_server as m
m.BUFFER_COUNT, m.BUFFER_SIZE, m.HIGH_WATER = 2, 4096, 64 * 1024
starved = [0]
on_recv = m.IoUringServer._on_recv
def counting(self, conn, res, flags):
    starved[0] += res == -errno.ENOBUFS
    on_recv(self, conn, res, flags)
m.IoUringServer._on_recv = counting
atexit.register(lambda: print(json.dumps({"starved": starved[0]}), file=sys.stderr))
from servers.__main__ import main
sys.exit(main(["io_uring", "--host", "127.0.0.1", "--port", "0", "--die-with-parent"]))
"""


class TinyServer:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _TINY], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=PROJECT_ROOT
        )
        self.port = 0

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 15)
        line = self.proc.stdout.readline() if ready else b""
        assert b'"ready"' in line, f"no ready line within 15 s, got {line!r}"
        self.port = json.loads(line)["port"]

    def stop(self) -> dict:
        """SIGTERM; the counters it printed on the way out."""
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=5)
        assert self.proc.returncode == 0, err
        return json.loads(err.splitlines()[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # by PID: this process only
            self.proc.communicate()


@pytest.fixture
def tiny_server() -> Iterator[TinyServer]:
    server = TinyServer()
    try:
        server.wait_ready()
        yield server
    finally:
        server.kill()


def test_starved_receives_and_tiny_high_water(tiny_server: TinyServer) -> None:
    rng = random.Random(7)
    socks = open_many(tiny_server.port, 100)
    try:
        # 100 connections sending at once and 2 buffers: most receives find none.
        echo_many(socks, [rng.randbytes(rng.randint(1, 20 * KIB)) for _ in socks])
        # Far past the 64 KiB high-water mark: reading pauses and resumes.
        echo_many(socks[:4], [rng.randbytes(2 * MIB) for _ in range(4)])
    finally:
        close_all(socks)
    with connect(tiny_server.port, timeout=30) as sock:
        data = rng.randbytes(48 * KIB)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_eof(sock, len(data)) == data
    assert tiny_server.stop()["starved"] > 0


# --- the server's completion handling, with a fake ring --------------------------------------

LFD = 3


class FakeRing:
    """Records the SQEs the server queues and checks what the real ring relies on: one
    operation per user_data, and no close of an fd with an operation in flight on it."""

    def __init__(self) -> None:
        self.queued: list[tuple[str, int, bytes]] = []
        self.inflight: dict[int, tuple[str, int]] = {}

    def _queue(self, name: str, fd: int, user_data: int, payload: bytes = b"") -> None:
        assert user_data not in self.inflight, f"user_data {user_data:#x} reused"
        self.inflight[user_data] = (name, fd)
        self.queued.append((name, fd, payload))

    def accept_multishot(self, fd: int, user_data: int) -> None:
        self._queue("accept", fd, user_data)

    def poll_add(self, fd: int, events: int, user_data: int) -> None:
        self._queue("poll", fd, user_data)

    def recv_provided(self, fd: int, group: object, user_data: int) -> None:
        self._queue("recv", fd, user_data)

    def send(self, fd: int, buf: memoryview, user_data: int) -> None:
        self._queue("send", fd, user_data, bytes(buf))

    def cancel_fd(self, fd: int, user_data: int) -> None:
        self._queue("cancel", fd, user_data)

    def close_fd(self, fd: int, user_data: int) -> None:
        busy = [name for name, f in self.inflight.values() if f == fd]
        assert not busy, f"close of fd {fd} with {busy} in flight"
        self._queue("close", fd, user_data)

    def is_pending(self, user_data: int) -> bool:
        return user_data in self.inflight

    def take(self) -> list[tuple[str, int, bytes]]:
        queued, self.queued = self.queued, []
        return queued


class FakeBuffers:
    def __init__(self) -> None:
        self.filled: dict[int, bytes] = {}
        self.bids = iter(range(1 << 16))

    def fill(self, data: bytes) -> int:
        bid = next(self.bids)
        self.filled[bid] = data
        return bid

    def take(self, flags: int, res: int) -> bytearray:
        return bytearray(self.filled.pop(flags >> uring.CQE_BUFFER_SHIFT)[: max(res, 0)])


class _FakeSocket:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def detach(self) -> int:
        return self.fd


class FakeGate:
    """Stands in for servers.shedding.AcceptGate (tested on its own in test_conformance.py):
    what the server's next shed finds queued, and whether accepting then pauses."""

    def __init__(self) -> None:
        self.keep: list[int] = []  # fds the next accept_all() finds room for
        self.pause_next = False
        self.paused = False
        self.sheds = 0
        self._freed = False
        self.on_resume = lambda: None

    def accept_all(self) -> Iterator[_FakeSocket]:
        self.sheds += 1
        self.paused, self.pause_next, self._freed = self.pause_next, False, False
        keep, self.keep = self.keep, []
        return iter([_FakeSocket(fd) for fd in keep])

    def served(self) -> None:
        return None

    def freed(self) -> None:
        self._freed = True

    def tick(self) -> None:
        if self.paused and self._freed:
            self.paused = False
            self.on_resume()


class Harness:
    def __init__(self) -> None:
        self.ring = FakeRing()
        self.buffers = FakeBuffers()
        self.gate = FakeGate()
        self.server = IoUringServer(ServerOptions())
        self.server._attach(self.ring, self.buffers, LFD, self.gate)  # type: ignore[arg-type]
        self.gate.on_resume = self.server._arm_accept
        self.server._arm_accept()

    def cqe(self, name: str, fd: int, res: int, flags: int = 0) -> tuple[int, int, int]:
        user_data = next(ud for ud, (n, f) in self.ring.inflight.items() if (n, f) == (name, fd))
        if not flags & uring.CQE_F_MORE:
            del self.ring.inflight[user_data]
        return user_data, res, flags

    def complete(self, name: str, fd: int, res: int, flags: int = 0) -> list[tuple[str, int, bytes]]:
        """Deliver one completion; the SQEs the server queued in response."""
        self.server._dispatch([self.cqe(name, fd, res, flags)])
        return self.ring.take()

    def accept(self, fd: int) -> list[tuple[str, int, bytes]]:
        return self.complete("accept", LFD, fd, uring.CQE_F_MORE)

    def data_cqe(self, fd: int, data: bytes) -> tuple[int, int, int]:
        bid = self.buffers.fill(data)
        return self.cqe("recv", fd, len(data), uring.CQE_F_BUFFER | bid << uring.CQE_BUFFER_SHIFT)

    def data(self, fd: int, data: bytes) -> list[tuple[str, int, bytes]]:
        self.server._dispatch([self.data_cqe(fd, data)])
        return self.ring.take()


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_flow_recv_then_send_then_recv_again(h: Harness) -> None:
    h.ring.take()
    assert h.accept(10) == [("recv", 10, b"")]
    assert h.data(10, b"abc") == [("send", 10, b"abc"), ("recv", 10, b"")]
    assert h.complete("send", 10, 3) == []


def test_short_send_resubmits_the_rest(h: Harness) -> None:
    h.accept(10)
    h.data(10, b"hello")
    assert h.complete("send", 10, 2) == [("send", 10, b"llo")]
    assert h.complete("send", 10, 3) == []


def test_receives_while_sending_until_high_water(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(io_uring_server, "HIGH_WATER", 100)
    h.accept(10)
    assert h.data(10, b"a" * 60) == [("send", 10, b"a" * 60), ("recv", 10, b"")]
    assert h.data(10, b"b" * 50) == []  # 110 unsent: reading pauses
    # The send drains: the pending data goes out in one send and reading resumes.
    assert h.complete("send", 10, 60) == [("send", 10, b"b" * 50), ("recv", 10, b"")]


def test_eof_flushes_then_closes(h: Harness) -> None:
    h.accept(10)
    h.data(10, b"abc")
    assert h.complete("recv", 10, 0) == []  # the echo is still on its way
    assert h.complete("send", 10, 3) == [("close", 10, b"")]


def test_reset_with_send_in_flight_cancels_then_closes(h: Harness) -> None:
    h.accept(10)
    h.data(10, b"x" * 1000)
    assert h.complete("recv", 10, -errno.ECONNRESET) == [("cancel", 10, b"")]
    assert h.complete("send", 10, -errno.ECANCELED) == []
    assert h.complete("cancel", 10, 1) == [("close", 10, b"")]


def test_starved_receive_is_rearmed_after_the_batch(h: Harness) -> None:
    h.accept(10)
    h.accept(11)
    h.ring.take()
    h.server._dispatch([h.cqe("recv", 10, -errno.ENOBUFS), h.data_cqe(11, b"z")])
    assert h.ring.take() == [("send", 11, b"z"), ("recv", 11, b""), ("recv", 10, b"")]


def test_starved_connection_that_fails_in_the_same_batch_is_closed_once(h: Harness) -> None:
    h.accept(10)
    h.data(10, b"abc")
    h.server._dispatch([h.cqe("recv", 10, -errno.ENOBUFS), h.cqe("send", 10, -errno.EPIPE)])
    assert h.ring.take() == [("close", 10, b"")]


def test_accept_rearmed_when_the_kernel_ends_it(h: Harness) -> None:
    h.ring.take()
    assert h.complete("accept", LFD, -errno.ECONNABORTED) == [("accept", LFD, b"")]


def test_out_of_descriptors_sheds_then_polls_until_a_close_completes(h: Harness) -> None:
    """At EMFILE arming the accept again would fail at once: the gate sheds what is queued,
    a one-shot poll waits for the next arrival (shed the same way), and the accept is armed
    again once a CLOSE has completed, not when it is queued (it may run after the accept)."""
    h.accept(10)
    assert h.complete("accept", LFD, -errno.EMFILE) == [("poll", LFD, b"")]
    assert h.gate.sheds == 1
    assert h.complete("poll", LFD, select.POLLIN) == [("poll", LFD, b"")]
    assert h.gate.sheds == 2
    assert h.complete("recv", 10, 0) == [("close", 10, b"")]
    assert h.complete("close", 10, 0) == [("accept", LFD, b"")]
    # The poll still in flight finds the accept armed, and leaves it to it.
    assert h.complete("poll", LFD, select.POLLIN) == []
    assert h.gate.sheds == 2


def test_a_connection_the_gate_keeps_is_served_and_the_accept_armed(h: Harness) -> None:
    h.ring.take()
    h.gate.keep = [12]
    assert h.complete("accept", LFD, -errno.EMFILE) == [("recv", 12, b""), ("accept", LFD, b"")]


def test_a_paused_gate_arms_nothing_until_a_close_completes(h: Harness) -> None:
    """ENOMEM even with the spare descriptor free: nothing waits on the listener (it would
    fail again at once) until a descriptor and its memory come back."""
    h.accept(10)
    h.gate.pause_next = True
    assert h.complete("accept", LFD, -errno.ENOMEM) == []
    assert h.complete("recv", 10, 0) == [("close", 10, b"")]
    assert h.complete("close", 10, 0) == [("accept", LFD, b"")]


def test_a_bug_class_error_is_fatal(h: Harness) -> None:
    h.accept(10)
    with pytest.raises(ServerFailure, match="recv"):
        h.complete("recv", 10, -errno.EFAULT)

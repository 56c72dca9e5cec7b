"""What is particular to the signal-driven (sigio) server: the kernel facts it relies on, the
arming of every socket, the fallback scan when the real-time signal queue overflows, and a
clean exit while readiness signals are still queued.

The echo contract itself (payload sizes, resets, half-close, >1024 fds, ...) is checked for
sigio with the other loops in test_multiplexing_servers.py.
"""

from __future__ import annotations

import os
import random
import resource
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from server_process import ArgvServer, model_argv

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
KIB, MIB = 1024, 1024 * 1024
SIG_READY = int(signal.SIGRTMIN) + 1
O_ASYNC = 0o20000  # as printed, in octal, in /proc/PID/fdinfo "flags"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="F_SETSIG is Linux-only")

# Checked in a child process: blocking signals in the pytest process would outlive the test.
KERNEL_FACTS = r"""
import fcntl, os, select, signal, socket
from servers.sigio_server import SIG_PROBE, SIG_READY, arm, probe_si_fd

WAIT = {SIG_READY, signal.SIGIO}
signal.pthread_sigmask(signal.SIG_BLOCK, WAIT | {SIG_PROBE})
# Push descriptor numbers well away from small values that could match by accident.
padding = [os.open(os.devnull, os.O_RDONLY) for _ in range(100)]

# si_status carries si_fd, for two different descriptors.
pairs = [socket.socketpair() for _ in range(2)]
for a, _ in pairs:
    arm(a.fileno())
for a, b in reversed(pairs):
    b.send(b"x")
    info = signal.sigtimedwait(WAIT, 2.0)
    assert info is not None and info.si_signo == SIG_READY, info
    assert info.si_status == a.fileno(), (info, a.fileno())
    assert info.si_code == 1 and info.si_band & select.POLLIN, info  # POLL_IN
assert probe_si_fd() is True

# Data that arrived before O_ASYNC was set raises no signal once it is set.
a, b = socket.socketpair()
b.send(b"early")
arm(a.fileno())
assert signal.sigtimedwait(WAIT, 0) is None

# Accepted sockets inherit neither O_ASYNC nor the owner or the signal.
listener = socket.create_server(("127.0.0.1", 0))
arm(listener.fileno())
client = socket.create_connection(listener.getsockname())
info = signal.sigtimedwait(WAIT, 2.0)
assert info is not None and info.si_status == listener.fileno(), info
conn, _ = listener.accept()
assert not fcntl.fcntl(conn, fcntl.F_GETFL) & os.O_ASYNC
assert fcntl.fcntl(conn, fcntl.F_GETOWN) == 0
assert fcntl.fcntl(conn, fcntl.F_GETSIG) == 0
print("ok")
"""

# The sigio server, reporting its full scans when it stops.
COUNTING_SERVER = r"""
import sys
from servers.base import ServerOptions, emit
from servers.sigio_server import SigioServer

class CountingSigioServer(SigioServer):
    def close(self) -> None:
        stats = {"event": "stats", "full_scans": self.full_scans, "si_fd_verified": self.si_fd_verified}
        super().close()
        emit(stats)

sys.exit(CountingSigioServer(ServerOptions(host="127.0.0.1", port=0)).run())
"""


# --- helpers -----------------------------------------------------------------------------


def sigio_argv() -> list[str]:
    return model_argv("sigio")


def connect(port: int) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=20.0)


def echo_all(socks: list[socket.socket], payloads: list[bytes], timeout: float = 30.0) -> None:
    """Send payloads[i] on socks[i] while reading the echoes, all at once, and verify them."""
    sel = selectors.DefaultSelector()
    sent = dict.fromkeys(range(len(socks)), 0)
    received = {i: bytearray() for i in range(len(socks))}
    for i, sock in enumerate(socks):
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, i)
    try:
        left = len(socks)
        deadline = time.monotonic() + timeout
        while left:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{left} of {len(socks)} echoes unfinished after {timeout} s"
            for key, events in sel.select(remaining):
                i, sock, payload = key.data, key.fileobj, payloads[key.data]
                if events & selectors.EVENT_WRITE and sent[i] < len(payload):
                    try:
                        sent[i] += sock.send(memoryview(payload)[sent[i] :])  # type: ignore[union-attr]
                    except BlockingIOError:
                        pass
                    if sent[i] == len(payload):
                        sel.modify(sock, selectors.EVENT_READ, i)
                if events & selectors.EVENT_READ:
                    try:
                        chunk = sock.recv(MIB)  # type: ignore[union-attr]
                    except BlockingIOError:
                        continue
                    assert chunk, f"connection {i}: EOF after {len(received[i])} of {len(payload)} B"
                    received[i] += chunk
                    if len(received[i]) >= len(payload):
                        assert received[i] == payload, f"connection {i}: echo differs"
                        sel.unregister(sock)
                        left -= 1
    finally:
        sel.close()
        for sock in socks:
            sock.settimeout(20.0)


def signal_pending(mask_hex: str, signum: int) -> bool:
    return bool(int(mask_hex, 16) >> (signum - 1) & 1)


# --- tests -------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_kernel_facts_the_model_relies_on() -> None:
    """si_status aliases si_fd; no signal for data that was already there; accept() does not
    pass O_ASYNC, F_SETOWN or F_SETSIG on."""
    result = subprocess.run([sys.executable, "-c", KERNEL_FACTS], cwd=ROOT, capture_output=True, text=True, timeout=20)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@pytest.mark.timeout(30)
def test_every_socket_is_armed(spawn: Callable[..., ArgvServer]) -> None:
    server = spawn(sigio_argv())
    socks = [connect(server.port) for _ in range(30)]
    try:
        echo_all(socks, [b"armed?"] * len(socks))
        sockets = []
        for name in os.listdir(f"/proc/{server.pid}/fd"):
            if os.readlink(f"/proc/{server.pid}/fd/{name}").startswith("socket:"):
                fdinfo = Path(f"/proc/{server.pid}/fdinfo/{name}").read_text()
                flags = int(fdinfo.split("flags:", 1)[1].split()[0], 8)
                sockets.append((int(name), bool(flags & O_ASYNC)))
        assert len(sockets) == len(socks) + 1  # and the listener
        assert all(armed for _fd, armed in sockets), f"sockets without O_ASYNC: {sockets}"
    finally:
        for sock in socks:
            sock.close()


def user_pending_signals() -> int:
    """Signals queued for this user by all of its processes: what RLIMIT_SIGPENDING caps."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("SigQ:"):
            return int(line.split()[1].split("/")[0])
    raise AssertionError("no SigQ in /proc/self/status")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("headroom", [None, 4], ids=["queue-always-full", "queue-of-4"])
def test_signal_queue_overflow_falls_back_to_scanning(spawn: Callable[..., ArgvServer], headroom: int | None) -> None:
    """A tiny RLIMIT_SIGPENDING makes the real-time queue overflow, so the kernel falls back to
    plain SIGIO: every echo must still arrive, through full scans. With a limit of 0 nothing
    ever queues (not even the si_fd probe); with a few slots, signals and overflows mix."""
    # The limit caps the user's total, so leave room for what other processes have queued.
    limit = 0 if headroom is None else user_pending_signals() + headroom

    def small_signal_queue() -> None:
        resource.setrlimit(resource.RLIMIT_SIGPENDING, (limit, limit))

    server = spawn([sys.executable, "-c", COUNTING_SERVER], preexec_fn=small_signal_queue)
    assert server.status("SigQ").endswith(f"/{limit}")
    rng = random.Random(7)
    socks = [connect(server.port) for _ in range(300)]
    try:
        for _round in range(3):
            echo_all(socks, [rng.randbytes(rng.randint(1, 8 * KIB)) for _ in socks])
        # Large echoes too: they need POLL_OUT, whose signals overflow like the others.
        echo_all(socks[:8], [rng.randbytes(MIB) for _ in range(8)])
    finally:
        for sock in socks:
            sock.close()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=1.0) == 0
    stats = server.next_event(5.0)
    assert stats.get("event") == "stats", stats
    assert stats["full_scans"] > 0, "the queue never overflowed: the fallback went untested"
    if headroom is None:
        assert stats["si_fd_verified"] is False


@pytest.mark.timeout(30)
def test_exits_cleanly_with_signals_still_queued(spawn: Callable[..., ArgvServer]) -> None:
    """Stopping with readiness signals queued must not let them hit their default action
    (terminate) when the server unblocks them on the way out."""
    server = spawn(sigio_argv())
    socks = [connect(server.port) for _ in range(50)]
    try:
        echo_all(socks, [b"warm"] * len(socks))
        os.kill(server.pid, signal.SIGSTOP)
        try:
            for sock in socks:
                sock.sendall(b"queued while stopped")
            assert signal_pending(server.status("ShdPnd"), SIG_READY), "no readiness signal queued"
            server.proc.send_signal(signal.SIGTERM)
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert server.proc.wait(timeout=1.0) == 0
    finally:
        for sock in socks:
            sock.close()

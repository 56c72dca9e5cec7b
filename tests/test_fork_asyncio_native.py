"""The fork, asyncio, uvloop and native servers, as the harness runs them: real processes on loopback.

Every server is `python -m servers MODEL --port 0` in a subprocess; tests synchronise on its
JSON lines (ready, warning), never on sleeps. Every process a test starts, including a fork
server's children, is killed by PID in teardown.
"""

from __future__ import annotations

import json
import os
import queue
import random
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

import cbuild
from servers import native_server

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["fork", "asyncio", "uvloop", "native"]
# Generous: the native model may compile its binary on first start.
READY_TIMEOUT = 60.0
IO_TIMEOUT = 20.0

pytestmark = pytest.mark.timeout(60)


class Server:
    """One `python -m servers` process and everything the test opened against it."""

    def __init__(self, model: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.model = model
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "servers", model, "--host", "127.0.0.1", "--port", "0", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        self.events: queue.Queue[dict] = queue.Queue()
        self.socks: list[socket.socket] = []
        # Every descendant ever seen, so teardown can kill them even after the parent is gone.
        self.seen: dict[int, psutil.Process] = {}
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        self.port = 0
        self.pid = self.proc.pid

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                self.events.put(json.loads(raw))
            except ValueError:
                self.events.put({"event": "not-json", "line": raw.decode(errors="replace")})
        self.events.put({"event": "eof"})

    def wait_event(self, kind: str, timeout: float = IO_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{self.model}: no {kind!r} line within {timeout} s") from None
            if event["event"] == kind:
                return event
            if event["event"] in ("fatal", "eof", "not-json"):
                return event

    def wait_ready(self) -> None:
        event = self.wait_event("ready", READY_TIMEOUT)
        if event["event"] == "fatal" and "unavailable" in event.get("reason", ""):
            pytest.skip(f"{self.model}: {event['reason']}")
        assert event["event"] == "ready", event
        assert event["model"] == self.model
        # The harness controls the server through this PID (native exec()s to keep it).
        assert event["pid"] == self.proc.pid
        self.port = event["port"]

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=IO_TIMEOUT)
        self.socks.append(sock)
        return sock

    def children(self) -> list[psutil.Process]:
        try:
            kids = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for kid in kids:
            self.seen.setdefault(kid.pid, kid)
        return kids

    def live_children(self) -> list[psutil.Process]:
        return [kid for kid in self.children() if _alive(kid)]

    def stop(self) -> None:
        for sock in self.socks:
            sock.close()
        if self.proc.poll() is None:
            self.children()
            self.proc.kill()
            self.proc.wait(timeout=10)
        for kid in self.seen.values():
            # psutil checks the process's start time, so a reused PID is never hit.
            try:
                kid.kill()
            except psutil.NoSuchProcess:
                pass
        # The pipe hits EOF once the server is gone (its children write to /dev/null).
        self._reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def start() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def _start(model: str, *args: str) -> Server:
        server = Server(model, *args)
        servers.append(server)
        server.wait_ready()
        return server

    yield _start
    for server in servers:
        server.stop()


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def exchange(sock: socket.socket, payload: bytes, *, half_close: bool = False) -> bytes:
    """Send `payload` while reading the echo; with `half_close`, shut down writing and read to EOF."""
    sock.setblocking(False)
    view = memoryview(payload)
    got = bytearray()
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    if half_close and not view:
        sock.shutdown(socket.SHUT_WR)
        sel.modify(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + IO_TIMEOUT
    eof = False
    try:
        while not eof and (view or len(got) < len(payload) or half_close):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"timed out: sent {len(payload) - len(view)}, got {len(got)} bytes"
            for _key, mask in sel.select(remaining):
                if mask & selectors.EVENT_WRITE and view:
                    view = view[sock.send(view[:262144]) :]
                    if not view:
                        if half_close:
                            sock.shutdown(socket.SHUT_WR)
                        sel.modify(sock, selectors.EVENT_READ)
                if mask & selectors.EVENT_READ:
                    data = sock.recv(262144)
                    got += data
                    eof = not data
    finally:
        sel.close()
        sock.settimeout(IO_TIMEOUT)
    return bytes(got)


def tagged(index: int, size: int = 64) -> bytes:
    """A payload that says which connection it belongs to, so a cross-wired echo shows."""
    head = struct.pack("!I", index)
    return (head * (size // len(head) + 1))[:size]


def reset(sock: socket.socket) -> None:
    # Linger on, timeout 0: close() sends RST instead of FIN.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def refused(sock: socket.socket) -> bool:
    """True when the server closed this connection without echoing."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def wait_until(predicate: Callable[[], bool], timeout: float = IO_TIMEOUT) -> None:
    """Poll a condition the server exposes only through /proc (no event to wait on)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# --- every model -------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", MODELS)
def test_echo_random_payloads(start, model_name: str) -> None:
    server = start(model_name)
    rng = random.Random(1234)
    sizes = [1, 2, 63, 1460, 4096, 65535, 65536, 65537, 300_001, 1 << 20]
    sizes += [rng.randint(1, 1 << 20) for _ in range(4)]
    for size in sizes:
        payload = rng.randbytes(size)
        assert exchange(server.connect(), payload) == payload, size
    # Several payloads in a row on one connection, too.
    sock = server.connect()
    for size in sizes[:8]:
        payload = rng.randbytes(size)
        assert exchange(sock, payload) == payload, size


@pytest.mark.parametrize("model_name", MODELS)
def test_500_concurrent_connections(start, model_name: str) -> None:
    server = start(model_name)
    socks = [server.connect() for _ in range(500)]
    for i, sock in enumerate(socks):
        sock.sendall(tagged(i))
    for i, sock in enumerate(socks):
        assert _recv_exactly(sock, 64) == tagged(i)


@pytest.mark.parametrize("model_name", MODELS)
def test_client_writes_8mib_before_reading(start, model_name: str) -> None:
    server = start(model_name)
    payload = random.Random(8).randbytes(8 << 20)
    sock = server.connect()
    # The echo piles up in the server while this client is not reading: it must not deadlock.
    sock.sendall(payload)
    assert _recv_exactly(sock, len(payload)) == payload
    # The server still answers this connection afterwards.
    assert exchange(sock, b"after") == b"after"


@pytest.mark.parametrize("model_name", MODELS)
def test_unread_echo_is_buffered_beyond_the_kernel(start, model_name: str) -> None:
    # Loopback socket buffers on the path absorb about 9 MiB here, enough for the 8 MiB test
    # even with no buffering in the server; 16 MiB passes only because the server queues the
    # echo itself (up to HIGH_WATER) and keeps reading.
    server = start(model_name)
    payload = random.Random(16).randbytes(16 << 20)
    sock = server.connect()
    sock.settimeout(5.0)
    sock.sendall(payload)
    assert _recv_exactly(sock, len(payload)) == payload


@pytest.mark.parametrize("model_name", MODELS)
def test_abrupt_reset_then_others_still_served(start, model_name: str) -> None:
    server = start(model_name)
    bystander = server.connect()
    assert exchange(bystander, b"before") == b"before"
    for _ in range(5):
        victim = server.connect()
        # Leave echo owed to the victim, then reset: the server's next send hits ECONNRESET/EPIPE.
        victim.sendall(os.urandom(2 << 20))
        reset(victim)
    assert exchange(server.connect(), b"new client") == b"new client"
    assert exchange(bystander, b"after") == b"after"
    assert server.proc.poll() is None


@pytest.mark.parametrize("model_name", MODELS)
def test_half_close_flushes_then_closes(start, model_name: str) -> None:
    server = start(model_name)
    payload = random.Random(2).randbytes(3 << 20)
    sock = server.connect()
    # exchange() reads to EOF: the server must flush all of it, then close (not reset).
    assert exchange(sock, payload, half_close=True) == payload
    assert exchange(server.connect(), b"x", half_close=True) == b"x"
    assert exchange(server.connect(), b"", half_close=True) == b""


@pytest.mark.parametrize("model_name", MODELS)
def test_1100_connections_past_fd_1024(start, model_name: str) -> None:
    # The fork model holds no connection descriptors in its parent, but needs the cap raised.
    server = start(model_name, "--fork-cap", "2000")
    socks = [server.connect() for _ in range(1100)]
    for i, sock in enumerate(socks):
        sock.sendall(tagged(i, 16))
    for i, sock in enumerate(socks):
        assert _recv_exactly(sock, 16) == tagged(i, 16)
    if model_name == "fork":
        assert len(server.live_children()) == 1100
    else:
        assert psutil.Process(server.pid).num_fds() > 1100


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("model_name", MODELS)
def test_signal_exits_within_1s_leaving_no_child(start, model_name: str, sig: int) -> None:
    server = start(model_name)
    socks = [server.connect() for _ in range(20)]
    for i, sock in enumerate(socks):
        assert exchange(sock, tagged(i)) == tagged(i)
    # One client mid-transfer, so the server has unsent data when the signal lands.
    busy = server.connect()
    busy.sendall(os.urandom(4 << 20))
    children = server.children()
    if model_name == "fork":
        assert len(children) == 21
    t0 = time.monotonic()
    os.kill(server.pid, sig)
    server.proc.wait(timeout=5)
    elapsed = time.monotonic() - t0
    assert elapsed < 1.0, f"took {elapsed:.2f}s to exit"
    assert server.proc.returncode == 0
    assert [kid.pid for kid in children if _alive(kid)] == []


# --- fork only ---------------------------------------------------------------------------------


def test_fork_cap_refuses_cleanly_and_warns_once_per_crossing(start) -> None:
    server = start("fork", "--fork-cap", "20")
    socks = [server.connect() for _ in range(30)]
    for i, sock in enumerate(socks[:20]):
        assert exchange(sock, tagged(i)) == tagged(i)
    for sock in socks[20:]:
        assert refused(sock)
    warning = server.wait_event("warning")
    assert warning == {
        "event": "warning",
        "model": "fork",
        "reason": "fork cap of 20 live children reached: further connections closed",
    }
    assert len(server.live_children()) == 20

    # Five clients leave; once their children are reaped there is room for five more.
    for sock in socks[:5]:
        sock.close()
    wait_until(lambda: len(server.children()) == 15)
    fresh = [server.connect() for _ in range(5)]
    for i, sock in enumerate(fresh):
        assert exchange(sock, tagged(100 + i)) == tagged(100 + i)
    # The first child forked after the refusals ends the shedding episode: one line for all ten.
    shed = server.wait_event("shed")
    assert (shed["count"], shed["errno"]) == (10, "fork-cap"), shed
    assert server.events.empty(), "one warning per crossing and one shed line, not a line per refused client"
    # Crossing the cap a second time warns a second time.
    assert refused(server.connect())
    assert server.wait_event("warning")["event"] == "warning"
    assert exchange(socks[10], b"still fine") == b"still fine"
    assert server.proc.poll() is None


def test_fork_reaps_children(start) -> None:
    server = start("fork")
    socks = [server.connect() for _ in range(10)]
    for i, sock in enumerate(socks):
        assert exchange(sock, tagged(i)) == tagged(i)
    assert len(server.children()) == 10
    for sock in socks:
        sock.close()
    # Zombies would still be listed as children: reaped means gone.
    wait_until(lambda: server.children() == [])


def test_fork_children_die_with_a_killed_parent(start) -> None:
    server = start("fork")
    socks = [server.connect() for _ in range(5)]
    for i, sock in enumerate(socks):
        assert exchange(sock, tagged(i)) == tagged(i)
    children = server.children()
    assert len(children) == 5
    server.proc.kill()
    server.proc.wait(timeout=5)
    # PR_SET_PDEATHSIG: each child gets SIGTERM when the parent dies.
    wait_until(lambda: not any(_alive(kid) for kid in children), timeout=5)
    for sock in socks:
        assert refused(sock)


# --- native build ------------------------------------------------------------------------------


def test_native_build_is_cached_keyed_and_atomic(tmp_path: Path) -> None:
    if cbuild.find_compiler() is None:
        pytest.skip("no C compiler")
    source = tmp_path / "echo.c"
    source.write_bytes(native_server.SOURCE.read_bytes())
    cache = tmp_path / "cache"
    # Concurrent first uses: every one gets the same complete binary, no temp file is left.
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(cbuild.build(native_server.BINARY_NAME, source, cache=cache)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3 and len(set(results)) == 1
    binary = results[0]
    assert os.access(binary, os.X_OK)
    assert [p.name for p in cache.iterdir()] == [binary.name]
    mtime = binary.stat().st_mtime_ns
    assert cbuild.build(native_server.BINARY_NAME, source, cache=cache) == binary
    assert binary.stat().st_mtime_ns == mtime, "an unchanged source must not recompile"

    source.write_bytes(source.read_bytes() + b"\n/* edited */\n")
    assert cbuild.build(native_server.BINARY_NAME, source, cache=cache) != binary

    source.write_bytes(b"int main(void) { return undeclared; }\n")
    with pytest.raises(cbuild.BuildError, match="error"):
        cbuild.build(native_server.BINARY_NAME, source, cache=cache)
    assert not any(p.name.endswith(".tmp") for p in cache.iterdir())


def test_native_without_compiler_is_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # holds no compiler
    with pytest.raises(cbuild.BuildError, match="no C compiler"):
        cbuild.build(native_server.BINARY_NAME, native_server.SOURCE, cache=tmp_path / "cache")
    # End to end: a fatal line with the reason, no traceback, a non-zero exit.
    server = Server("native", env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")})
    try:
        event = server.wait_event("fatal", READY_TIMEOUT)
        assert event["event"] == "fatal" and "no C compiler" in event["reason"], event
        assert server.proc.wait(timeout=IO_TIMEOUT) != 0
    finally:
        server.stop()


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        assert chunk, f"EOF after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)

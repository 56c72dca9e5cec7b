"""Test helpers: a reference server as a real subprocess, and the clients that talk to it.

`ServerProcess.start(model)` runs `python -m servers MODEL --port 0 ...` in its own session and
returns once the server's JSON ready line has arrived (read with a deadline, never a sleep).
`stop()` sends SIGTERM, waits, SIGKILLs by PID what is still there and checks that no process
of the server's tree or session outlives it.

The client side (`connect`, `open_many`, `echo_roundtrip`, `echo_many`, `reset`,
`recv_exactly`, `recv_until_eof`, `wait_server_read_all`) talks plain sockets on 127.0.0.1
and verifies every echoed byte.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import resource
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from servers import registry

HOST = "127.0.0.1"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 15.0
RECV_SIZE = 65536
SEND_CHUNK = 256 * 1024


ALL_MODELS = registry.model_names()
# select() cannot watch a descriptor number >= FD_SETSIZE (1024): the models above that wall.
SCALABLE_MODELS = [name for name in ALL_MODELS if name != "select"]


@functools.cache
def describe(name: str) -> registry.ModelInfo:
    """registry.describe, but a model module that is broken beyond ImportError (a syntax error,
    say) shows up as unavailable instead of breaking the collection of the whole suite."""
    try:
        return registry.describe(name)
    except Exception as exc:  # noqa: BLE001 - reported as the skip reason
        return registry.ModelInfo(name, "?", "?", False, f"describe failed: {type(exc).__name__}: {exc}")


def unavailable_models() -> list[str]:
    return [name for name in ALL_MODELS if not describe(name).available]


class ServerStartError(AssertionError):
    """The server printed something other than a ready line, or nothing in time."""


# --------------------------------------------------------------------------------------------
# The server process
# --------------------------------------------------------------------------------------------


@dataclass
class StopResult:
    returncode: int
    seconds: float  # from the signal (or the call, if it had already exited) to its exit
    killed: bool  # SIGKILL was needed
    leftovers: list[str] = field(default_factory=list)  # processes that outlived the server


def nofile_limit(limit: int) -> Callable[[], None]:
    """A preexec hook that lowers RLIMIT_NOFILE (soft and hard) to `limit` in the child only,
    as `prlimit --nofile=LIMIT:LIMIT --` would; the test process keeps its own."""

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return lower


class ServerProcess:
    """One `python -m servers MODEL` subprocess, owned and cleaned up by PID."""

    def __init__(
        self, model: str, args: Sequence[str], preexec_fn: Callable[[], None] | None = None, prelude: str = ""
    ) -> None:
        self.model = model
        server_args = [model, "--host", HOST, "--port", "0", *args]
        if prelude:
            # The test's patch runs in the server's interpreter before `python -m servers` would.
            main = f"import sys\nfrom servers.__main__ import main\nsys.exit(main({server_args!r}))"
            self.argv = [sys.executable, "-c", f"{prelude}\n{main}"]
        else:
            self.argv = [sys.executable, "-m", "servers", *server_args]
        # A file, not a pipe, so a chatty server can never block on a full stderr pipe.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,
            cwd=PROJECT_ROOT,
            preexec_fn=preexec_fn,
        )
        self.pid = self.proc.pid
        # A pidfd becomes readable when the process exits, so waits need no polling loop.
        self._pidfd = os.pidfd_open(self.pid)
        self._stdout_fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        os.set_blocking(self._stdout_fd, False)
        self._buffer = b""
        self._eof = False
        self.ready: dict = {}
        self.port = 0
        self.stopped: StopResult | None = None

    @classmethod
    def start(
        cls,
        model: str,
        args: Sequence[str] = (),
        timeout: float = READY_TIMEOUT,
        die_with_parent: bool = True,
        nofile: int | None = None,
        prelude: str = "",
    ) -> ServerProcess:
        """Start the server (with RLIMIT_NOFILE lowered to `nofile` in it, and the Python code
        `prelude` run in it first, if given) and wait for its ready line; on failure nothing is
        left running."""
        extra = [*args, "--die-with-parent"] if die_with_parent else list(args)
        server = cls(model, extra, None if nofile is None else nofile_limit(nofile), prelude)
        try:
            event = server.read_event(timeout)
            if event is None or event.get("event") != "ready":
                raise ServerStartError(f"{model}: expected a ready line, got {event!r}; stderr: {server.stderr_tail()}")
            server.ready = event
            server.port = int(event["port"])
        except BaseException:
            server.stop(check=False)
            raise
        return server

    # -- stdout: JSON lines ----------------------------------------------------------------

    def read_event(self, timeout: float) -> dict | None:
        """The next JSON line on stdout, or None at EOF; AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer and not self._eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.model}: no line on stdout within {timeout:.1f} s "
                    f"(partial {self._buffer[:200]!r}); stderr: {self.stderr_tail()}"
                )
            if _readable([self._stdout_fd], remaining):
                chunk = os.read(self._stdout_fd, 65536)
                if chunk:
                    self._buffer += chunk
                else:
                    self._eof = True
        if b"\n" not in self._buffer:
            if not self._buffer.strip():
                return None
            line, self._buffer = self._buffer, b""
        else:
            line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError as exc:
            raise AssertionError(f"{self.model}: stdout line is not JSON: {line[:300]!r}") from exc

    def _read_rest(self) -> None:
        """Keep what the server wrote on stdout before it exited (its last lines), without
        waiting: every process of it is gone by now."""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self._stdout_fd, 65536):
                self._buffer += chunk

    def events_after_stop(self) -> list[dict]:
        """The JSON lines on stdout not yet read by read_event, once stop() has returned."""
        if self.stopped is None:
            raise RuntimeError("events_after_stop() needs stop() first")
        lines, self._buffer = self._buffer.splitlines(), b""
        return [json.loads(line) for line in lines if line.strip()]

    def stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def stderr_tail(self, limit: int = 2000) -> str:
        text = self.stderr_text()
        return text[-limit:] if text else "(empty)"

    # -- liveness and exit -----------------------------------------------------------------

    def alive(self) -> bool:
        return not _readable([self._pidfd], 0)

    def assert_alive(self) -> None:
        if not self.alive():
            raise AssertionError(
                f"{self.model} server (pid {self.pid}) died; exit status {self.proc.wait()}; "
                f"stdout rest {self._buffer[:300]!r}; stderr: {self.stderr_tail()}"
            )

    def wait_exit(self, timeout: float) -> int | None:
        """Wait (via the pidfd) up to `timeout` s for the server to exit; its status or None."""
        if _readable([self._pidfd], timeout):
            return self.proc.wait()
        return None

    def tree(self) -> list[psutil.Process]:
        """The server's descendants and every other process in its session (orphans included)."""
        found: dict[int, psutil.Process] = {}
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.pid).children(recursive=True):
                found[child.pid] = child
        for proc in psutil.process_iter():
            if proc.pid == self.pid or proc.pid in found:
                continue
            try:
                if os.getsid(proc.pid) == self.pid:
                    found[proc.pid] = proc
            except OSError:
                continue
        return list(found.values())

    def stop(
        self, sig: int = signal.SIGTERM, timeout: float = 5.0, child_grace: float = 1.0, check: bool = True
    ) -> StopResult:
        """Signal the server, wait, SIGKILL if needed, and verify that no child outlives it.

        `check` raises AssertionError when SIGKILL was needed, a process was left behind (it
        is killed) or the server printed a traceback: it broke the contract, the test says so.
        """
        if self.stopped is not None:
            return self.stopped
        # Snapshot the children while the server still holds them; the session scan after its
        # exit catches orphans made later. The zombie server keeps its PID (and so its session
        # id) reserved until we reap it, so the scan cannot match a stranger.
        watched = {p.pid: p for p in self.tree()}
        started = time.monotonic()
        killed = False
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            if not _readable([self._pidfd], timeout):
                killed = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                _readable([self._pidfd], 10.0)
        seconds = time.monotonic() - started
        for proc in self.tree():
            watched.setdefault(proc.pid, proc)
        leftovers = _wait_gone(list(watched.values()), child_grace)
        returncode = self.proc.wait()
        os.close(self._pidfd)
        self._read_rest()
        self.proc.stdout.close()  # type: ignore[union-attr]
        self.stopped = StopResult(returncode, seconds, killed, leftovers)
        if check:
            problems = []
            if killed:
                problems.append(f"did not exit within {timeout:.1f} s of signal {sig}; SIGKILLed")
            if leftovers:
                problems.append(f"left processes behind (SIGKILLed): {leftovers}")
            if "Traceback" in self.stderr_text():
                problems.append("printed a traceback (failures belong in a fatal line, resets are quiet)")
            if problems:
                raise AssertionError(f"{self.model} server: {'; '.join(problems)}; stderr: {self.stderr_tail()}")
        return self.stopped


# What the `start_server` fixture hands a test: start_server(model, args=()) -> ServerProcess.
StartServer = Callable[..., ServerProcess]


def _wait_gone(procs: list[psutil.Process], grace: float) -> list[str]:
    """Wait up to `grace` s for each process to exit; SIGKILL (by PID) and describe the rest."""
    pidfds: dict[int, psutil.Process] = {}
    for proc in procs:
        try:
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            pidfds[os.pidfd_open(proc.pid)] = proc
        except (psutil.Error, ProcessLookupError):
            continue
    deadline = time.monotonic() + grace
    try:
        while pidfds:
            remaining = deadline - time.monotonic()
            readable = _readable(list(pidfds), remaining)
            for fd in readable:
                del pidfds[fd]
                os.close(fd)
            if not readable and remaining <= 0:
                break
        leftovers = []
        for proc in pidfds.values():
            try:
                what = " ".join(proc.cmdline())[:120] or proc.name()
            except psutil.Error as exc:
                what = f"({type(exc).__name__})"
            leftovers.append(f"pid {proc.pid} {what!r}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        # SIGKILL cannot be refused; wait for it to land so the next test starts clean.
        deadline = time.monotonic() + 5.0
        while pidfds and (readable := _readable(list(pidfds), deadline - time.monotonic())):
            for fd in readable:
                del pidfds[fd]
                os.close(fd)
        return leftovers
    finally:
        for fd in pidfds:
            os.close(fd)


def _readable(fds: list[int], timeout: float) -> list[int]:
    """The fds of `fds` readable within `timeout` s. poll, not select: a test may hold more
    than 1024 descriptors, and select() cannot watch a descriptor number that high."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return [fd for fd, _ev in poller.poll(max(timeout, 0) * 1000)]


def max_fd_number(pid: int) -> int:
    """The highest descriptor number process `pid` holds (from /proc/PID/fd)."""
    return max((int(name) for name in os.listdir(f"/proc/{pid}/fd")), default=-1)


# --------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------


def connect(port: int, timeout: float = 10.0, rcvbuf: int | None = None) -> socket.socket:
    """A connection to the server. `rcvbuf` fixes the client's receive buffer (set before
    connect, which turns autotuning off): a client that does not read then holds only that
    much of its echo, and the rest stays with the server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect((HOST, port))
    except BaseException:
        sock.close()
        raise
    return sock


def open_many(port: int, n: int, timeout: float = 10.0) -> list[socket.socket]:
    """Open `n` connections at once. A loopback connect completes in the kernel (the server's
    accept queue holds it), so sequential blocking connects are quick."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            socks.append(connect(port, timeout))
    except BaseException:
        close_all(socks)
        raise
    return socks


def close_all(socks: Iterable[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def reset(sock: socket.socket) -> None:
    """Close abruptly: SO_LINGER 0 makes close() send RST and drop any unsent data."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def echo_roundtrip(sock: socket.socket, payload: bytes, timeout: float = 30.0) -> None:
    """Send `payload` and read exactly as many bytes back, writing and reading at once (so a
    payload larger than the socket buffers cannot deadlock the client); assert they match."""
    echo_many([sock], [payload], timeout)


def echo_many(socks: Sequence[socket.socket], payloads: Sequence[bytes], timeout: float = 30.0) -> None:
    """Echo payloads[i] on socks[i], all concurrently on one selector; assert every byte."""
    if len(socks) != len(payloads):
        raise ValueError("one payload per socket")
    sel = selectors.DefaultSelector()
    timeouts = [s.gettimeout() for s in socks]
    state: dict[int, _Echo] = {}
    try:
        for i, (sock, payload) in enumerate(zip(socks, payloads, strict=True)):
            sock.setblocking(False)
            state[sock.fileno()] = echo = _Echo(i, sock, memoryview(payload))
            sel.register(sock, echo.events())
        deadline = time.monotonic() + timeout
        while state:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                stuck = sorted(state.values(), key=lambda e: e.index)[:5]
                raise AssertionError(
                    f"echo timed out after {timeout:.1f} s: {len(state)} of {len(socks)} connections "
                    f"incomplete, e.g. {[e.describe() for e in stuck]}"
                )
            for key, mask in sel.select(remaining):
                echo = state[key.fd]
                if mask & selectors.EVENT_WRITE:
                    echo.write()
                if mask & selectors.EVENT_READ:
                    echo.read()
                if echo.done:
                    sel.unregister(echo.sock)
                    del state[key.fd]
                else:
                    sel.modify(echo.sock, echo.events())
    finally:
        sel.close()
        for sock, old in zip(socks, timeouts, strict=True):
            if sock.fileno() != -1:
                sock.settimeout(old)


class _Echo:
    __slots__ = ("index", "sock", "payload", "sent", "received")

    def __init__(self, index: int, sock: socket.socket, payload: memoryview) -> None:
        self.index = index
        self.sock = sock
        self.payload = payload
        self.sent = 0
        self.received = bytearray()

    @property
    def done(self) -> bool:
        return len(self.received) == len(self.payload)

    def events(self) -> int:
        return selectors.EVENT_READ | (selectors.EVENT_WRITE if self.sent < len(self.payload) else 0)

    def describe(self) -> str:
        return f"#{self.index}: sent {self.sent}, got {len(self.received)} of {len(self.payload)}"

    def write(self) -> None:
        try:
            self.sent += self.sock.send(self.payload[self.sent : self.sent + SEND_CHUNK])
        except BlockingIOError:
            return
        except OSError as exc:
            raise AssertionError(f"send failed on connection {self.describe()}: {exc!r}") from exc

    def read(self) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            raise AssertionError(f"recv failed on connection {self.describe()}: {exc!r}") from exc
        if not data:
            raise AssertionError(f"server closed connection early: {self.describe()}")
        start = len(self.received)
        self.received += data
        if len(self.received) > len(self.payload):
            raise AssertionError(f"server sent more than it was sent: {self.describe()}")
        if self.received[start:] != self.payload[start : len(self.received)]:
            offset = start + next(i for i, (a, b) in enumerate(zip(data, self.payload[start:], strict=False)) if a != b)
            raise AssertionError(f"echo differs at byte {offset}: {self.describe()}")


def server_unread(sock: socket.socket) -> int | None:
    """Bytes this client sent that wait, unread, in the server's receive queue (the rx_queue of
    the server's end of the connection in /proc/net/tcp); None if that end is not found."""
    try:
        client_port = sock.getsockname()[1]
        server_port = sock.getpeername()[1]
    except OSError:  # ENOTCONN: the connection is already over
        return None
    local = f"0100007F:{server_port:04X}"
    remote = f"0100007F:{client_port:04X}"
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[1] == local and fields[2] == remote:
                return int(fields[4].split(":")[1], 16)
    return None


def server_close_waits(port: int) -> int:
    """Server ends of connections on `port` the client closed and the server has not yet
    (TCP state CLOSE_WAIT in /proc/net/tcp): descriptors the server has still to free."""
    local = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        next(table)
        return sum(1 for line in table if (fields := line.split())[1] == local and fields[3] == "08")


def wait_server_closed(port: int, timeout: float = 5.0) -> bool:
    """Wait until the server has closed every connection its clients closed (no CLOSE_WAIT on
    `port`); False at timeout. No event reports another process's close, so this polls."""
    deadline = time.monotonic() + timeout
    while server_close_waits(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)  # polling interval of a condition we check, not a synchronising sleep
    return True


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed (FIN) or reset this connection, without waiting or reading."""
    timeout = sock.gettimeout()
    # Non-blocking for the peek: with a timeout set, Python's recv() would wait for data first.
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.settimeout(timeout)


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by process `pid`, its live descendants and the
    children it has reaped (psutil, from /proc: 10 ms ticks)."""
    root = psutil.Process(pid)
    times = root.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in root.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            times = child.cpu_times()
            total += times.user + times.system
    return total


def wait_server_read_all(sock: socket.socket, timeout: float = 5.0, stall: float = 0.3) -> bool:
    """Wait until the server has read everything this client sent. No event reports another
    process's reads, so this polls the kernel's count. False when the count stops falling for
    `stall` s (a server may rightly stop reading a client that does not read) or at timeout."""
    deadline = time.monotonic() + timeout
    last, last_change = None, time.monotonic()
    while (unread := server_unread(sock)) != 0:
        if unread is None:
            return False
        now = time.monotonic()
        if unread != last:
            last, last_change = unread, now
        if now > deadline or now - last_change > stall:
            return False
        time.sleep(0.002)  # polling interval of a condition we check, not a synchronising sleep
    return True


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """Blocking read of exactly `n` bytes (the socket's timeout applies to each recv)."""
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(min(RECV_SIZE, n - len(buf)))
        if not data:
            raise AssertionError(f"EOF after {len(buf)} of {n} bytes")
        buf += data
    return bytes(buf)


def recv_until_eof(sock: socket.socket, limit: int) -> bytes:
    """Blocking read until the server closes; AssertionError if it sends more than `limit`."""
    buf = bytearray()
    while data := sock.recv(RECV_SIZE):
        buf += data
        if len(buf) > limit:
            raise AssertionError(f"received {len(buf)} bytes, more than the {limit} owed")
    return bytes(buf)


# -- a server from any argv (a model subclass in `python -c`, a preexec hook) ------------------


class ArgvServer:
    """A server started from an arbitrary command line, read line by line on stdout; killed by
    PID with `kill()`. For tests that need what ServerProcess does not take: a custom argv or
    a preexec hook (a tiny RLIMIT_SIGPENDING, say)."""

    def __init__(self, argv: list[str], preexec_fn: Callable[[], None] | None = None) -> None:
        self.proc = subprocess.Popen(
            argv,
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=preexec_fn,
        )
        self.pid = self.proc.pid
        try:
            event = self.next_event(READY_TIMEOUT)
            assert event.get("event") == "ready", f"{argv}: expected a ready line, got {event!r}"
            self.port = int(event["port"])
        except BaseException:
            self.kill()
            raise

    def next_event(self, timeout: float) -> dict:
        readable, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if readable else ""  # type: ignore[union-attr]
        return json.loads(line) if line.startswith("{") else {"line": line}

    def status(self, field: str) -> str:
        """A field of /proc/PID/status (SigQ, ShdPnd, ...)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return line.split(":", 1)[1].strip()
        raise KeyError(field)

    def fd_numbers(self) -> list[int]:
        return [int(name) for name in os.listdir(f"/proc/{self.pid}/fd")]

    def wait_for_fd_count(self, count: int, timeout: float = 5.0) -> int:
        """Poll /proc until the server holds `count` descriptors (closing is asynchronous to
        the client); returns the last count seen."""
        deadline = time.monotonic() + timeout
        while (seen := len(self.fd_numbers())) != count and time.monotonic() < deadline:
            time.sleep(0.01)
        return seen

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL to this PID only
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def model_argv(model: str) -> list[str]:
    return [sys.executable, "-m", "servers", model, "--host", HOST, "--port", "0", "--die-with-parent"]

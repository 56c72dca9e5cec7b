"""The server under test as the harness sees it: started, ready, watched, stopped, and what it
said on stdout meanwhile (ready, fatal and warning lines, and the connections it shed)."""

from __future__ import annotations

import socket
import subprocess
import time

import psutil

from bench.errors import PointFailed
from bench.measuring.shed import ShedTally
from bench.running.pipes import MessageReader, deadline_in, remaining
from bench.running.processes import process_tree, spawn_python, terminate_tree
from childproc import format_cpus


class ServerUnderTest:
    def __init__(self, model: str, cpus: tuple[int, ...], host: str = "127.0.0.1", extra: list[str] | None = None):
        self.model = model
        self.cpus = cpus
        self.host = host
        self.extra = extra or []
        self.popen: subprocess.Popen | None = None
        self.pid: int | None = None
        self.port = 0
        self.warnings: list[str] = []
        self.fatal: str | None = None
        self.exit_s: float | None = None
        # The connections it shed at its descriptor limit (bench.measuring.shed), complete after stop().
        self.shed = ShedTally()
        self._stopped = False

    def start(self, ready_timeout: float = 15.0) -> None:
        args = [self.model, "--host", self.host, "--port", "0", "--cpus", format_cpus(self.cpus), *self.extra]
        self.popen = spawn_python("servers", args)
        self.pid = self.popen.pid
        self._out = MessageReader(self.popen.stdout, f"{self.model}-stdout")
        self._err = MessageReader(self.popen.stderr, f"{self.model}-stderr")
        deadline = deadline_in(ready_timeout)
        while remaining(deadline) > 0:
            message = self._out.next(min(remaining(deadline), 0.25))
            if message is None:
                if self.popen.poll() is not None and self._out.closed.is_set():
                    status = self.popen.returncode
                    raise PointFailed(f"server exited with status {status} before ready: {self._stderr_tail()}")
                continue
            self._note(message)
            if message["event"] == "ready":
                self.port = int(message["port"])
                # Each SO_REUSEPORT process prints its own stats line at exit.
                workers = message.get("workers", 1)
                self.shed.processes = workers if isinstance(workers, int) and workers > 1 else 1
                return
            if self.fatal:
                raise PointFailed(self.fatal)
        raise PointFailed(f"server not ready within {ready_timeout:.0f} s: {self._stderr_tail()}")

    def _note(self, message: dict) -> None:
        if self.shed.take(message):
            return
        if message["event"] == "fatal":
            self.fatal = str(message.get("reason", "unknown fatal error"))
        elif message["event"] == "warning":
            self.warnings.append(str(message.get("reason", "")))

    def failure(self) -> str | None:
        """Why the server is no longer serving, or None while it is healthy."""
        while (message := self._out.next(0)) is not None:
            self._note(message)
        if self.fatal:
            return self.fatal
        if self.popen is not None and self.popen.poll() is not None:
            self._out.wait_closed(1.0)
            while (message := self._out.next(0)) is not None:
                self._note(message)
            if self.fatal:
                return self.fatal
            return f"server exited with status {self.popen.returncode}: {self._stderr_tail()}"
        return None

    def _stderr_tail(self) -> str:
        self._err.wait_closed(0.2)
        lines = [line for line in self._err.tail if line.strip()]
        return lines[-1].strip() if lines else "no output on stderr"

    def stop(self) -> None:
        """SIGTERM the server (SIGKILL after a grace period) and read what it printed to its end;
        once only, so that a second call keeps the first's exit time."""
        if self.popen is not None and not self._stopped:
            self._stopped = True
            # Its stdout is read to the end (bounded): the stats line of its exit comes after SIGTERM.
            self.exit_s = terminate_tree(self.popen, readers=[self._out, self._err])
            while (message := self._out.next(0)) is not None:
                self._note(message)

    def __enter__(self) -> ServerUnderTest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ExternalServer:
    """A server the harness did not start (`bench run --target`): nothing to start, watch or
    stop, and no server-side metrics; the host and port are the user's."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.pid: int | None = None
        self.warnings: list[str] = []
        self.exit_s: float | None = None
        # Its stdout is not ours to read: what it shed is unknown here (bench.measuring.shed).
        self.shed: ShedTally | None = None

    def start(self, ready_timeout: float = 15.0) -> None:
        # One connection to learn, before the workers start, that something listens there.
        try:
            socket.create_connection((self.host, self.port), timeout=min(ready_timeout, 5.0)).close()
        except OSError as exc:
            raise PointFailed(f"cannot connect to the target {self.host}:{self.port}: {exc.strerror or exc}") from exc

    def failure(self) -> str | None:
        return None

    def stop(self) -> None:
        return None


def wait_until_held(server: ServerUnderTest, connections: int, timeout: float) -> None:
    """Return once the server's process tree holds `connections` established connections on its
    port (accepted, not merely queued); raises PointFailed if it dies or the timeout (s) passes."""
    deadline = deadline_in(timeout)
    while True:
        if (reason := server.failure()) is not None:
            raise PointFailed(reason)
        accepted = _accepted(server.pid, server.port)
        if accepted >= connections:
            return
        if remaining(deadline) <= 0:
            raise PointFailed(f"server accepted only {accepted} of {connections} connections in {timeout:.0f} s")
        time.sleep(0.02)


def _accepted(pid: int, port: int) -> int:
    """Connections on `port` held open by the server's process tree (accepted, not queued)."""
    seen = set()
    for proc in process_tree(pid):
        try:
            conns = proc.net_connections(kind="tcp4")
        except (psutil.Error, OSError):
            continue
        for c in conns:
            if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port and c.raddr:
                seen.add((c.laddr, c.raddr))
    return len(seen)

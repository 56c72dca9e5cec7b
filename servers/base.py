"""The shared base of every reference echo server and the server contract.

A server binds, listens, then prints one JSON ready line on stdout and echoes until
SIGTERM/SIGINT. A failure it cannot recover from (select() past FD_SETSIZE, say) is printed
as a JSON `fatal` line, so the harness can record the reason instead of guessing it from a
dead socket. Out of descriptors at accept() it sheds connections instead (servers.shedding):
a JSON `shed` line as each episode ends, and a `stats` line, the last one on stdout, at a
clean exit and on SIGUSR1.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

# A module reference: servers.shedding imports this module too.
from servers import shedding


class ServerShutdown(BaseException):
    """Raised from the signal handler so that any blocking call unwinds at once."""


class ServerFailure(Exception):
    """A failure that is the model's own limit, with a reason meant for the report."""


# listen()'s backlog when none is given: the kernel's default net.core.somaxconn since Linux 5.4
# (include/linux/socket.h SOMAXCONN), which caps any larger value anyway (man 2 listen).
DEFAULT_BACKLOG = 4096


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 0
    backlog: int = DEFAULT_BACKLOG
    workers: int = 1
    fork_cap: int = 1000


class EchoServer(abc.ABC):
    name: ClassVar[str]
    category: ClassVar[str]
    mechanism: ClassVar[str]
    # Event-driven models can run as N processes, each with its own SO_REUSEPORT listener, so
    # that one server holds more connections than one process's descriptor limit allows.
    supports_workers: ClassVar[bool] = False
    # True for a model whose accepts go through accept_gate (servers.shedding.LEDGER counts what
    # it sheds): each of its processes then prints the stats line at a clean exit and on
    # SIGUSR1. A model that accepts by other means says what it sheds itself, if anything.
    reports_shedding: ClassVar[bool] = False

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.listener: socket.socket | None = None
        self.worker_pids: list[int] = []
        self._gates: list[shedding.AcceptGate] = []

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this model cannot run on this host, or None when it can."""
        return None

    def open_listener(self, port: int | None = None, reuse_port: bool = False) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((self.options.host, self.options.port if port is None else port))
        sock.listen(self.options.backlog)
        return sock

    @abc.abstractmethod
    def serve(self, listener: socket.socket) -> None:
        """Echo on connections accepted from `listener` until ServerShutdown."""

    def close(self) -> None:
        """Release what the model holds beyond its sockets (children, threads)."""
        return None

    def accept_gate(
        self,
        listener: socket.socket,
        on_pause: Callable[[], None] | None = None,
        on_resume: Callable[[], None] | None = None,
        serves: bool = True,
    ) -> shedding.AcceptGate:
        """The model's accept path, which survives running out of descriptors or memory (see
        servers.shedding.AcceptGate for the arguments); its spare descriptor is closed when
        the server exits. A model that uses it sets `reports_shedding`."""
        gate = shedding.AcceptGate(
            listener,
            on_pause=on_pause or shedding.nothing,
            on_resume=on_resume or shedding.nothing,
            serves=serves,
        )
        self._gates.append(gate)
        return gate

    def run(self) -> int:
        _install_shutdown_handlers()
        signal.signal(signal.SIGUSR1, self._on_stats_request)
        clean = False
        try:
            workers = self.options.workers
            if workers > 1 and not self.supports_workers:
                raise ServerFailure(f"{self.name} cannot run as several workers (only event-driven models can)")
            self.listener = self.open_listener(reuse_port=workers > 1)
            host, port = self.listener.getsockname()[:2]
            # Every listener exists before the ready line, so no connection can race a worker.
            extra = [self.open_listener(port, reuse_port=True) for _ in range(workers - 1)]
            for listener in extra:
                self._fork_worker(listener, extra)
            for listener in extra:
                listener.close()
            ready = {"event": "ready", "model": self.name, "pid": os.getpid(), "host": host, "port": port}
            if workers > 1:
                ready.update(workers=workers, worker_pids=self.worker_pids)
            emit(ready)
            self.serve(self.listener)
            clean = True  # serve() returns only when a model's own loop took SIGTERM (asyncio)
        except ServerShutdown:
            clean = True
            return 0
        except ServerFailure as exc:
            emit({"event": "fatal", "model": self.name, "reason": str(exc)})
            return 3
        except Exception as exc:  # noqa: BLE001 - the reason goes to the harness, not a traceback
            emit({"event": "fatal", "model": self.name, "reason": f"{type(exc).__name__}: {exc}"})
            return 3
        finally:
            _ignore_shutdown_signals()
            self.close()
            if self.listener is not None:
                self.listener.close()
            self._stop_workers()
            self._finish_shedding(clean)
        return 0

    def _finish_shedding(self, clean: bool) -> None:
        """Close the gates' spare descriptors and print what they shed: an episode still open,
        then, after SIGTERM/SIGINT, the stats line."""
        for gate in self._gates:
            gate.close()
        if self.reports_shedding:
            shedding.LEDGER.finish(clean)

    def _on_stats_request(self, signum: int, frame: object) -> None:
        """SIGUSR1: the stats line now, without stopping; each worker prints its own."""
        if self.reports_shedding:
            shedding.LEDGER.report()
        for pid in self.worker_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)

    def _fork_worker(self, listener: socket.socket, all_extra: list[socket.socket]) -> None:
        pid = os.fork()
        if pid:
            self.worker_pids.append(pid)
            return
        from childproc import die_with_parent

        die_with_parent()
        self.worker_pids = []
        for other in all_extra:
            if other is not listener:
                other.close()
        self.listener.close()
        self.listener = listener
        code = 0
        clean = False
        try:
            self.serve(listener)
            clean = True
        except ServerShutdown:
            clean = True
        except Exception as exc:  # noqa: BLE001 - reported like the main process's failures
            emit({"event": "fatal", "model": self.name, "reason": f"worker {os.getpid()}: {type(exc).__name__}: {exc}"})
            code = 3
        finally:
            _ignore_shutdown_signals()
            self.close()
            self._finish_shedding(clean)
        os._exit(code)

    def _stop_workers(self, grace_s: float = 0.8) -> None:
        for pid in self.worker_pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        for pid in self.worker_pids:
            while True:
                try:
                    done, _status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if done:
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.005)
        self.worker_pids = []


def emit(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _raise_shutdown(signum: int, frame: object) -> None:
    raise ServerShutdown(signum)


def _install_shutdown_handlers() -> None:
    signal.signal(signal.SIGTERM, _raise_shutdown)
    signal.signal(signal.SIGINT, _raise_shutdown)
    # A client that vanishes must not kill the server through SIGPIPE.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)


def _ignore_shutdown_signals() -> None:
    # A second SIGTERM during clean-up must not abort the clean-up itself, and a SIGUSR1 must
    # not print a stats line after the last one.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)

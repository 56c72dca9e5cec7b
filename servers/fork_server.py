"""Blocking I/O with one process per connection: the parent accepts and forks, the child echoes.

The parent only ever holds the listener: every accepted socket is closed in the parent right
after the fork, so its descriptor count stays flat however many clients are connected. The
number of live children is capped (`--fork-cap`); past the cap new connections are accepted
and closed at once, so a connection storm cannot turn into a fork bomb. Those are shed as a
server out of descriptors sheds (servers.shedding), counted with errno "fork-cap"; a failed
fork() sheds its connection with fork()'s errno, and the parent's accept() survives EMFILE,
ENFILE, ENOBUFS and ENOMEM through the same gate as every model.

The child blocks in recv(). A lone recv-then-sendall loop deadlocks with a client that writes
more than the socket buffers hold (about 9 MiB on loopback here) before it reads: sendall waits
for the client to read, the client waits for the child to read. So the child first tries a
send that cannot block (MSG_DONTWAIT; for request/response traffic the only write it ever
makes) and, only when the kernel takes less than all of it, queues the rest for a writer
thread that blocks in sendall() while recv() goes on: the two directions the threads model
gives two threads. Queued output is bounded by HIGH_WATER, as in the non-blocking models.
"""

from __future__ import annotations

import errno
import gc
import os
import signal
import socket
import threading
import time

from childproc import set_parent_death_signal
from servers.base import EchoServer, ServerOptions, emit
from servers.connection import HIGH_WATER
from servers.shedding import LEDGER, AcceptGate, errno_name

RECV_SIZE = 65536
# Signals whose handlers touch the set of children (SIGCHLD reaps, SIGTERM/SIGINT unwind into
# close()), and SIGUSR1, whose handler prints the parent's stats line: a child must not print
# it before its stdout is /dev/null. They are blocked from just before fork() until the new pid
# is recorded, so the set is never out of step with the kernel, and the child starts with them
# pending, not lost.
_GUARDED = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1}
# What a connection shed past the cap is counted as: no errno, the model's own limit.
CAP_CAUSE = "fork-cap"
# How long close() lets children exit on SIGTERM before it SIGKILLs the rest; the contract
# gives the whole server one second.
_TERM_GRACE = 0.4
_KILL_GRACE = 0.3


class ForkServer(EchoServer):
    name = "fork"
    category = "blocking"
    reports_shedding = True
    mechanism = (
        "a process per connection: accept, fork; the child blocks in recv and, while the socket "
        "is full, a writer thread blocks in sendall"
    )

    def __init__(self, options: ServerOptions) -> None:
        super().__init__(options)
        self._children: set[int] = set()
        self._parent_pid = os.getpid()
        self._devnull = -1
        # True from the first refused connection until the live count drops below the cap
        # again: one warning per crossing, not one per refused client.
        self._capped = False
        self._fork_failing = False
        self._gate: AcceptGate | None = None

    def serve(self, listener: socket.socket) -> None:
        self._parent_pid = os.getpid()
        self._devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        signal.signal(signal.SIGCHLD, self._on_sigchld)
        # Objects that exist now are shared with every child; freezing them keeps the
        # collector from writing to their pages in a child (copy-on-write) if it ever runs.
        gc.freeze()
        cap = self.options.fork_cap
        # The cap may still shed what the gate accepts, so a connection ends a shedding episode
        # only once its child is forked (served() below).
        gate = self._gate = self.accept_gate(listener, serves=False)
        while True:
            sock = gate.accept_blocking()
            if len(self._children) >= cap:
                # The SIGCHLD handler may not have run yet for a child that just exited.
                self._reap()
            if len(self._children) >= cap:
                sock.close()
                LEDGER.shed(CAP_CAUSE)
                if not self._capped:
                    self._capped = True
                    self._warn(f"fork cap of {cap} live children reached: further connections closed")
                continue
            self._capped = False
            if self._fork(sock, listener):
                gate.served()

    def _fork(self, sock: socket.socket, listener: socket.socket) -> bool:
        """Fork a child to serve `sock`; False when fork() failed and the connection was shed."""
        signal.pthread_sigmask(signal.SIG_BLOCK, _GUARDED)
        try:
            try:
                pid = os.fork()
            except OSError as exc:
                # Out of processes or memory: refuse this client, keep serving the others.
                LEDGER.shed(errno_name(exc.errno or errno.EAGAIN))
                if not self._fork_failing:
                    self._fork_failing = True
                    self._warn(f"fork failed ({exc.strerror}): connection closed")
                return False
            if pid == 0:
                self._child(sock, listener)  # never returns
            self._fork_failing = False
            self._children.add(pid)
            return True
        finally:
            sock.close()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _GUARDED)

    def _child(self, sock: socket.socket, listener: socket.socket) -> None:
        # Nothing here may return into the parent's stack: an exception would unwind into
        # run()'s clean-up and the child would kill its siblings. Always leave via _exit,
        # which also skips flushing the stdout buffer copied from the parent.
        try:
            # The parent's handlers raise ServerShutdown or reap; a child just dies on SIGTERM,
            # and has no stats of its own to print on SIGUSR1 (its default action would kill it).
            for sig in _GUARDED:
                signal.signal(sig, signal.SIG_IGN if sig == signal.SIGUSR1 else signal.SIG_DFL)
            parent_alive = set_parent_death_signal(self._parent_pid)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _GUARDED)
            if not parent_alive:
                # The parent died before PR_SET_PDEATHSIG was in place.
                os._exit(0)
            # stdout is the harness's JSON channel (and may be a pipe it reads to EOF).
            os.dup2(self._devnull, 1)
            os.close(self._devnull)
            listener.close()
            if self._gate is not None:
                self._gate.close()  # the parent's spare descriptor
            _echo(sock)
        except BaseException:  # noqa: BLE001 - resets and broken pipes just end this child
            pass
        finally:
            os._exit(0)

    def _on_sigchld(self, signum: int, frame: object) -> None:
        self._reap()

    def _reap(self) -> None:
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._children.discard(pid)

    def _warn(self, reason: str) -> None:
        emit({"event": "warning", "model": self.name, "reason": reason})

    def close(self) -> None:
        # From here on this method alone reaps; the handler would race it for the statuses.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if self._devnull >= 0:
            os.close(self._devnull)
            self._devnull = -1
        if self._children:
            self._signal_children(signal.SIGTERM)
            self._wait_children(_TERM_GRACE)
        if self._children:
            self._signal_children(signal.SIGKILL)
            self._wait_children(_KILL_GRACE)

    def _signal_children(self, sig: int) -> None:
        for pid in list(self._children):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                self._children.discard(pid)

    def _wait_children(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._children:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self._children.clear()
                return
            if pid:
                self._children.discard(pid)
                continue
            if time.monotonic() >= deadline:
                return
            time.sleep(0.002)


def _echo(sock: socket.socket) -> None:
    """The child's whole job: echo until EOF (then flush) or until the connection dies."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    outbox = _Outbox(sock)
    while data := sock.recv(RECV_SIZE):
        if not outbox.put(data):
            return
    outbox.flush()


class _Outbox:
    """Echo not yet taken by the kernel, and the writer thread that blocks sending it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.cond = threading.Condition(threading.Lock())
        self.queue = bytearray()
        self.sending = False  # the writer is inside sendall() with bytes taken off the queue
        self.eof = False
        self.dead = False
        self.writer: threading.Thread | None = None

    def put(self, data: bytes) -> bool:
        """Send or queue `data`; False once the connection is dead."""
        with self.cond:
            if not self.queue and not self.sending:
                # Nothing is ahead of these bytes, so they may go straight out: with room in
                # the socket buffer this is the only write, as in a plain recv/sendall loop.
                try:
                    sent = self.sock.send(data, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    sent = 0
                if sent == len(data):
                    return True
                data = data[sent:]
            while len(self.queue) >= HIGH_WATER and not self.dead:
                self.cond.wait()
            if self.dead:
                return False
            self.queue += data
            if self.writer is None:
                self.writer = threading.Thread(target=self._write, daemon=True)
                self.writer.start()
            self.cond.notify_all()
            return True

    def flush(self) -> None:
        """The client half-closed: return once everything owed to it is written."""
        with self.cond:
            self.eof = True
            self.cond.notify_all()
        if self.writer is not None:
            self.writer.join()

    def _write(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.queue and not self.eof:
                        self.cond.wait()
                    if not self.queue:
                        return
                    data, self.queue = self.queue, bytearray()
                    self.sending = True
                    self.cond.notify_all()  # the reader may be waiting for room
                self.sock.sendall(data)
                with self.cond:
                    self.sending = False
        except OSError:
            with self.cond:
                self.dead = True
                self.cond.notify_all()
            # Wake the reader out of recv(): the connection is over.
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

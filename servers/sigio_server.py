"""Signal-driven I/O: the kernel queues a real-time signal per readiness event, with the fd.

Each socket gets F_SETOWN (this process), F_SETSIG (a real-time signal instead of plain
SIGIO) and O_ASYNC. Every readiness change then queues one siginfo carrying the descriptor
(si_fd) and the poll band (si_band). The signals stay blocked and are taken synchronously
with sigwaitinfo() in a single loop, so no handler ever runs in the middle of the echo code.

What makes the model awkward, and what this module handles:
- Accepted sockets inherit neither O_ASYNC nor the owner/signal: each is armed after accept.
- Data that arrived before O_ASYNC was set raised no signal: each socket is read once after
  arming (and the listener drained once after arming it).
- A signal reports an event, like an epoll edge: reads and accepts run until EAGAIN, and a
  socket whose reading stopped at HIGH_WATER is remembered, since nothing will signal it again.
- Writable space is signalled (POLL_OUT) only after a send found the socket full, which is
  exactly when data is pending.
- Real-time signals queue up to RLIMIT_SIGPENDING, counted over every process of the user.
  Past it the kernel sends plain SIGIO, which carries no fd and does not queue: all the model
  can do then is scan every socket.
- Python's struct_siginfo has no si_fd. On 64-bit Linux si_status (the SIGCHLD member) sits
  at the same offset in the siginfo union as si_fd (24); probe_si_fd() verifies it.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import sys

from servers.base import EchoServer, ServerFailure, ServerOptions
from servers.connection import Connection
from servers.shedding import RESOURCE_ERRNOS, AcceptGate

SIG_READY = signal.SIGRTMIN + 1
# The si_fd probe's own signal, so that its siginfo cannot be confused with a socket's.
SIG_PROBE = signal.SIGRTMIN + 2
_WAIT_SET = {SIG_READY, signal.SIGIO}
_BLOCKED = {SIG_READY, SIG_PROBE, signal.SIGIO}
# Kernel fasync si_code values (POLL_IN .. POLL_HUP); anything else was not sent by fasync.
_POLL_CODES = range(1, 7)
_READ_BAND = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP
_WRITE_BAND = select.POLLOUT | select.POLLERR | select.POLLHUP
ACCEPT_BATCH = 256
# Upper bound on stale signals discarded after an overflow, so a steady stream of new ones
# cannot keep the loop draining forever; whatever remains is merely a spurious wake-up.
MAX_STALE_FLUSH = 65536


def arm(fd: int, sig: int = SIG_READY) -> None:
    """Ask for `sig`, carrying `fd`, on every readiness change of `fd`."""
    # Owner and signal first: O_ASYNC with no F_SETSIG yet would raise plain SIGIO.
    fcntl.fcntl(fd, fcntl.F_SETOWN, os.getpid())
    fcntl.fcntl(fd, fcntl.F_SETSIG, sig)
    # F_SETFL replaces the status flags and ignores the access mode; a socket has no other
    # status flags set, so this needs no F_GETFL round trip.
    fcntl.fcntl(fd, fcntl.F_SETFL, os.O_NONBLOCK | os.O_ASYNC)


def probe_si_fd() -> bool:
    """Check that si_status carries si_fd: True when verified, False when the real-time queue
    was full (the kernel sent SIGIO instead, left pending). SIG_PROBE and SIGIO must be blocked.
    """
    try:
        a, b = socket.socketpair()
    except OSError as exc:
        if exc.errno in RESOURCE_ERRNOS:
            return False  # out of descriptors: unverified for now, tried again at the next scan
        raise
    try:
        fd = a.fileno()
        arm(fd, SIG_PROBE)
        # An AF_UNIX send wakes the peer, and so queues its signal, before it returns.
        b.send(b"\0")
        info = signal.sigtimedwait({SIG_PROBE}, 0)
    finally:
        a.close()
        b.close()
    if info is None:
        if signal.SIGIO in signal.sigpending():
            return False
        raise ServerFailure("F_SETSIG/O_ASYNC raised no signal for a socketpair")
    if info.si_status != fd:
        raise ServerFailure(
            f"siginfo does not expose si_fd through si_status here (got {info.si_status}, expected fd {fd})"
        )
    return True


class SigioServer(EchoServer):
    name = "sigio"
    category = "signal-driven"
    reports_shedding = True
    mechanism = (
        "F_SETOWN + O_ASYNC + F_SETSIG(SIGRTMIN+1) per socket; one queued siginfo (fd, band) "
        "per readiness event, taken with sigwaitinfo; on queue overflow (plain SIGIO) every "
        "socket is scanned"
    )

    def __init__(self, options: ServerOptions) -> None:
        super().__init__(options)
        self._conns: dict[int, Connection] = {}
        # fds whose reading stopped at HIGH_WATER, possibly with unread data in the kernel.
        self._starved: set[int] = set()
        self._old_mask: set[int] | None = None
        self._armed_listener: socket.socket | None = None
        self._gate: AcceptGate | None = None
        # Until the si_fd alias is verified, a real-time signal only means "scan everything".
        self.si_fd_verified = False
        # Full scans made: after queue overflows, and while si_fd is unverified.
        self.full_scans = 0

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if not sys.platform.startswith("linux"):
            return "F_SETSIG signal-driven I/O is Linux-only"
        if not hasattr(fcntl, "F_SETSIG") or not hasattr(signal, "sigwaitinfo"):
            return "this Python lacks fcntl.F_SETSIG or signal.sigwaitinfo"
        if sys.maxsize <= 2**32:
            # si_fd is read through si_status, which only shares its offset on 64-bit.
            return "si_fd is only reachable through si_status on 64-bit Linux"
        return None

    def serve(self, listener: socket.socket) -> None:
        # Blocked before any fd is armed: the default action of these signals is to terminate.
        # SIGTERM/SIGINT stay unblocked, so their handler interrupts sigwaitinfo() and raises
        # ServerShutdown. The mask is per thread; this server has only the main thread.
        self._old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
        # With the user's queue already full, this is retried at each scan (see _rescan).
        self.si_fd_verified = probe_si_fd()
        listener.setblocking(False)
        arm(listener.fileno())
        self._armed_listener = listener
        # A signal reports an arrival once, like an epoll edge, so a paused listener cannot spin
        # the loop; what queued meanwhile is taken when the pause ends.
        gate = self._gate = self.accept_gate(listener, on_resume=self._accept_all)
        lfd = listener.fileno()
        conns = self._conns
        # Clients may have connected between listen() and arm(): that raised no signal.
        self._accept_all()
        while True:
            gate.tick()
            timeout = gate.timeout()
            if timeout is None:
                info = signal.sigwaitinfo(_WAIT_SET)
            elif (info := signal.sigtimedwait(_WAIT_SET, timeout)) is None:
                continue  # the pause's back-off is over: tick() resumes accepting
            if info.si_signo != SIG_READY or info.si_code not in _POLL_CODES or not self.si_fd_verified:
                self._rescan()
                continue
            fd = info.si_status  # si_fd, see probe_si_fd()
            if fd == lfd:
                self._accept_all()
                continue
            conn = conns.get(fd)
            if conn is None:
                # Queued before its socket closed; if the number was reused since, the
                # service below just meets EAGAIN, so stale signals are harmless either way.
                continue
            band = info.si_band
            self._service(conn, bool(band & _READ_BAND), bool(band & _WRITE_BAND))

    def _service(self, conn: Connection, readable: bool, writable: bool) -> None:
        fd = conn.fd
        alive = True
        if writable and conn.pending:
            alive = conn.on_writable()
        if alive and (readable or fd in self._starved):
            if conn.wants_read:
                alive = conn.on_readable(drain=True)
            # Reading stopped by the backlog, not by EAGAIN: no signal will repeat it.
            if conn.wants_read or conn.eof:
                self._starved.discard(fd)
            else:
                self._starved.add(fd)
        if not alive or conn.finished:
            self._starved.discard(fd)
            del self._conns[fd]
            conn.close()
            if self._gate is not None:
                self._gate.freed()

    def _accept_all(self) -> None:
        assert self._gate is not None
        for sock in self._gate.accept_all(ACCEPT_BATCH):
            conn = Connection(sock)
            self._conns[conn.fd] = conn
            arm(conn.fd)
            # Whatever arrived before O_ASYNC was set will never be signalled.
            self._service(conn, readable=True, writable=False)

    def _rescan(self) -> None:
        """Events were lost (queue overflow) or cannot be attributed: look at every socket."""
        self.full_scans += 1
        if not self.si_fd_verified:
            self.si_fd_verified = probe_si_fd()
        # Signals still queued, and a SIGIO raised meanwhile (by the probe, say), describe
        # events this scan covers; discarding them first makes room in the queue and keeps a
        # full queue from turning into back-to-back scans.
        for _ in range(MAX_STALE_FLUSH):
            if signal.sigtimedwait(_WAIT_SET, 0) is None:
                break
        self._accept_all()
        for conn in list(self._conns.values()):
            self._service(conn, readable=True, writable=True)

    def close(self) -> None:
        if self._armed_listener is not None and self._armed_listener.fileno() != -1:
            # The listener outlives close() (the base closes it); stop it signalling first.
            fcntl.fcntl(self._armed_listener.fileno(), fcntl.F_SETFL, os.O_NONBLOCK)
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
        if self._old_mask is not None:
            # Unblocking with signals still queued would run their default action and kill
            # the process; setting SIG_IGN discards pending ones. Nothing is armed any more,
            # so restoring the old dispositions afterwards is safe.
            previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _BLOCKED}
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._old_mask = None

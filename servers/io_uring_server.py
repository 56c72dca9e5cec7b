"""io_uring: completion-based I/O. The server asks for operations and is told when they are done.

One multishot accept SQE yields a completion per new connection. Each connection has one recv
in flight, into a buffer the kernel picks from a shared provided-buffer ring when data arrives
(so an idle connection holds no receive buffer); its data is sent back with send SQEs (a short
send resubmits the rest). While a send is in flight the connection keeps receiving into a
pending buffer, up to HIGH_WATER, so a peer that writes MiBs before it reads cannot deadlock
it. Each loop iteration is one io_uring_enter: it submits every SQE queued since the last one
and waits for at least one completion.

An fd is closed (by a CLOSE SQE) only when nothing is in flight on it; a connection that fails
with operations still in flight gets them cancelled first.

Out of descriptors the kernel ends the multishot accept with -EMFILE, and arming it again would
fail at once (accept reserves the descriptor before it looks at the queue), so the server then
sheds through servers.shedding's gate, with plain accept() calls on the non-blocking listener:
what is queued is accepted in the spare descriptor's place and closed. Until a connection's
CLOSE completes (a descriptor is free again) a one-shot POLL on the listener stands in for the
accept, and each new arrival is shed the same way. Where shedding cannot work (ENOMEM, say) the
gate pauses: nothing is armed on the listener until a CLOSE completes or its back-off passes.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import os
import select
import signal
import socket
import time

from servers import uring
from servers.base import EchoServer, ServerFailure, ServerOptions
from servers.connection import HIGH_WATER
from servers.shedding import RESOURCE_ERRNOS, AcceptGate

RING_ENTRIES = 4096
CQ_ENTRIES = 16384
# Shared by all connections: 512 x 32 KiB = 16 MiB, whatever the number of connections.
BUFFER_COUNT = 512
BUFFER_SIZE = 32 * 1024
BUFFER_GROUP = 0
SHUTDOWN_DRAIN_S = 0.5

# user_data = connection id << 3 | operation; id 0 is the server's own operations.
_ACCEPT, _RECV, _SEND, _CLOSE, _CANCEL, _WAKE, _CANCEL_ALL, _POLL = range(8)
_OP_BITS = 3
_OP_MASK = (1 << _OP_BITS) - 1

# A peer that vanished or a cancelled operation: close quietly, as the contract asks.
# Anything else means a bug in this server and is reported as fatal rather than hidden.
_BUG_ERRNOS = frozenset({errno.EFAULT, errno.EINVAL, errno.EBADF, errno.ENOTSOCK, errno.EOPNOTSUPP})
_NOTHING = b""


class _Conn:
    __slots__ = ("cid", "fd", "out", "sent", "pending", "recv_busy", "send_busy", "cancel_busy", "eof", "dead")

    def __init__(self, cid: int, fd: int) -> None:
        self.cid = cid
        self.fd = fd
        self.out: bytes | bytearray = _NOTHING  # being sent; pinned by the ring while in flight
        self.sent = 0  # bytes of `out` already sent
        self.pending = bytearray()  # received while a send was in flight
        self.recv_busy = False
        self.send_busy = False
        self.cancel_busy = False
        self.eof = False
        self.dead = False

    @property
    def unsent(self) -> int:
        return len(self.out) - self.sent + len(self.pending)


@functools.cache
def _support_problem() -> str | None:
    return uring.support_problem()


class IoUringServer(EchoServer):
    name = "io_uring"
    category = "asynchronous"
    reports_shedding = True
    supports_workers = True
    mechanism = (
        "completion-based io_uring: one multishot accept SQE, one recv SQE in flight per connection "
        "(kernel-provided buffer ring), send SQEs for the echo; one io_uring_enter per loop iteration "
        "submits the batch and waits for completions"
    )
    _ring: uring.Ring
    _buffers: uring.BufferGroup
    _gate: AcceptGate

    def __init__(self, options: ServerOptions) -> None:
        super().__init__(options)
        # _ring and _buffers are set by serve() (or a test's _attach).
        self._lfd = -1
        self._conns: dict[int, _Conn] = {}
        self._closing: dict[int, int] = {}  # cid -> fd, while its CLOSE SQE is not completed
        self._ids = itertools.count(1)
        self._starved: list[_Conn] = []
        # Out of descriptors: a one-shot POLL on the listener stands in for the accept.
        self._accept_limited = False

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return _support_problem()

    def serve(self, listener: socket.socket) -> None:
        # Kept before anything else can fail, so that close() releases the ring.
        self._ring = ring = uring.Ring(RING_ENTRIES, CQ_ENTRIES)
        # Non-blocking for the gate's own accept() calls when shedding; the kernel's accept
        # waits for readiness by itself all the same.
        listener.setblocking(False)
        gate = self.accept_gate(listener, on_resume=self._arm_accept)
        self._attach(ring, uring.BufferGroup(ring, BUFFER_GROUP, BUFFER_COUNT, BUFFER_SIZE), listener.fileno(), gate)
        # Accepted sockets inherit TCP_NODELAY from the listener: no setsockopt per connection.
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._arm_wakeup()
        self._arm_accept()
        while True:
            # A paused gate's back-off bounds the wait; otherwise completions alone wake it.
            ring.submit(wait_nr=1, timeout=gate.timeout())
            self._dispatch(ring.completions())

    def _attach(self, ring: uring.Ring, buffers: uring.BufferGroup, listen_fd: int, gate: AcceptGate) -> None:
        self._ring, self._buffers, self._lfd, self._gate = ring, buffers, listen_fd, gate

    def _dispatch(self, completions: list[tuple[int, int, int]]) -> None:
        """Handle one batch of completions, queueing the SQEs they call for."""
        conns = self._conns
        for user_data, res, flags in completions:
            op = user_data & _OP_MASK
            if op == _RECV:
                self._on_recv(conns[user_data >> _OP_BITS], res, flags)
            elif op == _SEND:
                self._on_send(conns[user_data >> _OP_BITS], res)
            elif op == _CLOSE:
                self._closing.pop(user_data >> _OP_BITS, None)
                self._on_closed()
            elif op == _CANCEL:
                conn = conns[user_data >> _OP_BITS]
                conn.cancel_busy = False
                self._advance(conn)
            elif op == _ACCEPT:
                self._on_accept(res, flags)
            elif op == _POLL:
                self._on_poll(res)
            elif op == _WAKE:
                self._on_wakeup(res)
        if self._starved:
            # Their recv found the buffer ring empty; every buffer is back by now.
            starved, self._starved = self._starved, []
            for conn in starved:
                if conns.get(conn.cid) is conn:  # not closed later in the same batch
                    self._advance(conn)
        # A pause ends after a CLOSE completed in this batch, or at its back-off.
        self._gate.tick()

    # -- completions ----------------------------------------------------------------------

    def _on_accept(self, res: int, flags: int) -> None:
        if res >= 0:
            self._gate.served()
            self._add(res)
        elif -res in _BUG_ERRNOS:
            raise ServerFailure(f"io_uring accept failed: {os.strerror(-res)}")
        if flags & uring.CQE_F_MORE:
            return
        # The kernel ended the multishot accept (an error ends it): ask again, unless it would
        # fail again at once for want of descriptors or memory.
        if res < 0 and -res in RESOURCE_ERRNOS:
            self._shed()
        else:
            self._ring.accept_multishot(self._lfd, _ACCEPT)

    def _on_poll(self, res: int) -> None:
        if res < 0 and -res in _BUG_ERRNOS:
            raise ServerFailure(f"io_uring poll on the listener failed: {os.strerror(-res)}")
        # A poll left over from before a CLOSE re-armed the accept has nothing to do.
        if self._accept_limited:
            self._shed()

    def _shed(self) -> None:
        """Out of descriptors or memory at accept: shed what is queued (the gate accepts each
        in its spare descriptor's place and closes it), then wait for the next arrival with a
        one-shot POLL, or, if the gate paused, with nothing armed until it resumes."""
        kept = False
        for sock in self._gate.accept_all():
            # A descriptor was free after all (a CLOSE the kernel ran, not yet reaped).
            kept = True
            self._add(sock.detach())
        if self._gate.paused:
            self._accept_limited = False  # on_resume arms the accept again
        elif kept:
            self._arm_accept()
        else:
            self._accept_limited = True
            if not self._ring.is_pending(_POLL):
                self._ring.poll_add(self._lfd, select.POLLIN, _POLL)

    def _on_closed(self) -> None:
        """A CLOSE completed: its descriptor is free, so accepting can start again (not when
        the CLOSE is queued: it may run after an accept in the same submission)."""
        self._gate.freed()
        if self._accept_limited:
            self._arm_accept()

    def _arm_accept(self) -> None:
        self._accept_limited = False
        if not self._ring.is_pending(_ACCEPT):
            self._ring.accept_multishot(self._lfd, _ACCEPT)

    def _add(self, fd: int) -> None:
        conn = _Conn(next(self._ids), fd)
        self._conns[conn.cid] = conn
        self._advance(conn)

    def _on_recv(self, conn: _Conn, res: int, flags: int) -> None:
        conn.recv_busy = False
        # A completion that used a buffer says so, whatever its res: always give it back.
        data = self._buffers.take(flags, res) if flags & uring.CQE_F_BUFFER else _NOTHING
        if res > 0:
            if conn.dead:
                pass
            elif not conn.send_busy:
                # Nothing is owed (a live connection with no send in flight has sent it all).
                conn.out, conn.sent = data, 0
            else:
                conn.pending += data
        elif res == 0:
            conn.eof = True
        elif res == -errno.ENOBUFS:
            self._starved.append(conn)
            return
        else:
            self._failed(conn, "recv", res)
        self._advance(conn)

    def _on_send(self, conn: _Conn, res: int) -> None:
        conn.send_busy = False
        if res >= 0:
            conn.sent += res
        else:
            self._failed(conn, "send", res)
        self._advance(conn)

    def _failed(self, conn: _Conn, what: str, res: int) -> None:
        if -res in _BUG_ERRNOS:
            raise ServerFailure(f"io_uring {what} failed: {os.strerror(-res)}")
        conn.dead = True

    def _on_wakeup(self, res: int) -> None:
        # A signal arrived (its C-level handler wrote to the wakeup socket): run the Python
        # handler now, which raises ServerShutdown for SIGTERM/SIGINT.
        if res > 0:
            self._ring.recv(self._wake_r.fileno(), self._wake_buf, _WAKE)
        uring.run_signal_handlers()

    # -- what a connection does next ------------------------------------------------------

    def _advance(self, conn: _Conn) -> None:
        """Queue whatever `conn` should do next, given what is in flight."""
        ring, base = self._ring, conn.cid << _OP_BITS
        if not conn.dead and not conn.send_busy:
            if conn.sent == len(conn.out):
                conn.out, conn.sent = _NOTHING, 0
                if conn.pending:
                    conn.out, conn.pending = conn.pending, bytearray()
            if conn.out:
                rest = memoryview(conn.out)[conn.sent :] if conn.sent else conn.out
                ring.send(conn.fd, rest, base | _SEND)
                conn.send_busy = True
        if conn.dead or (conn.eof and not conn.send_busy):
            if conn.recv_busy or conn.send_busy or conn.cancel_busy:
                if conn.dead and not conn.cancel_busy:
                    # Wake whatever is still in flight (a send to a peer that stopped reading
                    # could wait forever); the fd is closed once its completions are in.
                    ring.cancel_fd(conn.fd, base | _CANCEL)
                    conn.cancel_busy = True
                return
            ring.close_fd(conn.fd, base | _CLOSE)
            self._closing[conn.cid] = conn.fd
            del self._conns[conn.cid]
            return
        if not conn.recv_busy and not conn.eof and (not conn.send_busy or conn.unsent < HIGH_WATER):
            ring.recv_provided(conn.fd, self._buffers, base | _RECV)
            conn.recv_busy = True

    # -- signals and shutdown -------------------------------------------------------------

    def _arm_wakeup(self) -> None:
        # Python's C-level signal handler writes to the wakeup fd; with a recv in flight on the
        # other end, a signal that lands just before io_uring_enter blocks still wakes it.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._wake_buf = bytearray(64)
        self._old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        self._ring.recv(self._wake_r.fileno(), self._wake_buf, _WAKE)

    def close(self) -> None:
        ring: uring.Ring | None = getattr(self, "_ring", None)
        if ring is None:
            return
        try:
            self._drain(ring)
        finally:
            ring.close()
            # After the ring: a request it may still hold keeps its own file reference, so
            # closing these numbers cannot redirect an operation to a newer file.
            for fd in [c.fd for c in self._conns.values()] + list(self._closing.values()):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._conns.clear()
            self._closing.clear()
            if hasattr(self, "_old_wakeup"):
                signal.set_wakeup_fd(self._old_wakeup)
                self._wake_r.close()
                self._wake_w.close()

    def _drain(self, ring: uring.Ring) -> None:
        """Cancel everything in flight and reap it, so no fd is closed under an operation."""
        for user_data in ring.discard_unsubmitted():
            if user_data & _OP_MASK != _CLOSE:
                continue
            # Never submitted: the fd is still open and close() above must close it.
            cid = user_data >> _OP_BITS
            if cid in self._closing:
                self._conns.setdefault(cid, _Conn(cid, self._closing.pop(cid)))
        if not ring.in_flight:
            return
        ring.cancel_all(_CANCEL_ALL)
        deadline = time.monotonic() + SHUTDOWN_DRAIN_S
        while ring.in_flight and (remaining := deadline - time.monotonic()) > 0:
            ring.submit(wait_nr=1, timeout=remaining)
            for user_data, res, _flags in ring.completions():
                op = user_data & _OP_MASK
                if op == _ACCEPT and res >= 0:
                    os.close(res)  # accepted while shutting down
                elif op == _CLOSE:
                    self._closing.pop(user_data >> _OP_BITS, None)

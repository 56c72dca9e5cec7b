"""Per-connection echo state shared by the readiness-based (non-blocking) models.

Every model that waits for readiness (select, poll, epoll, selectors, ...) needs the same
thing per socket: read what is there, write back what it can, keep the rest, never block.
The event loop itself stays in each model's module; only this bookkeeping is shared.
"""

from __future__ import annotations

import errno
import socket

RECV_SIZE = 65536
# Past this much unsent data the model stops reading from the client until it drains, so
# one client that never reads cannot exhaust the server's memory. 16 MiB keeps a client
# that writes several MiB before reading anything working (it must not deadlock).
HIGH_WATER = 16 * 1024 * 1024

_WOULD_BLOCK = (BlockingIOError, InterruptedError)
_GONE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, TimeoutError)


class Connection:
    __slots__ = ("sock", "fd", "pending", "eof", "mask")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.fd = sock.fileno()
        self.pending = bytearray()
        self.eof = False
        # The interest the model last registered for this fd, in the model's own encoding.
        self.mask = 0

    @property
    def wants_write(self) -> bool:
        return bool(self.pending)

    @property
    def wants_read(self) -> bool:
        return not self.eof and len(self.pending) < HIGH_WATER

    @property
    def finished(self) -> bool:
        """The peer half-closed and everything owed to it has been written."""
        return self.eof and not self.pending

    def on_readable(self, drain: bool = False) -> bool:
        """Read (once, or until EAGAIN when `drain`) and echo; False when the connection is dead."""
        while True:
            try:
                data = self.sock.recv(RECV_SIZE)
            except _WOULD_BLOCK:
                return True
            except _GONE:
                return False
            except OSError as exc:
                if exc.errno in (errno.ECONNRESET, errno.ETIMEDOUT):
                    return False
                raise
            if not data:
                self.eof = True
                return True
            if not self.pending:
                if not self._send(data):
                    return False
            else:
                self.pending += data
            if not drain or not self.wants_read:
                return True

    def _send(self, data: bytes) -> bool:
        try:
            sent = self.sock.send(data)
        except _WOULD_BLOCK:
            sent = 0
        except _GONE:
            return False
        if sent < len(data):
            self.pending += memoryview(data)[sent:]
        return True

    def on_writable(self) -> bool:
        """Flush as much pending data as the socket takes; False when the connection is dead."""
        while self.pending:
            try:
                sent = self.sock.send(self.pending)
            except _WOULD_BLOCK:
                return True
            except _GONE:
                return False
            del self.pending[:sent]
        return True

    def service(self, readable: bool, writable: bool) -> bool:
        """Handle one readiness report; False when the connection is to be dropped (dead, or
        half-closed by the peer with everything owed written back)."""
        alive = self.on_readable() if readable else True
        if alive and writable:
            alive = self.on_writable()
        return alive and not self.finished

    def close(self) -> None:
        self.sock.close()

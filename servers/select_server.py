"""select(): three fd_set bitmaps rebuilt and scanned on every call, bounded by FD_SETSIZE."""

from __future__ import annotations

import select
import socket

from servers.base import EchoServer, ServerFailure
from servers.connection import Connection

FD_SETSIZE = 1024


class SelectServer(EchoServer):
    name = "select"
    category = "I/O multiplexing"
    reports_shedding = True
    mechanism = "select.select over read/write lists; fails on any descriptor number >= 1024"

    def serve(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        # The lists are built anew for each call, so a paused gate needs no callbacks: the
        # listener is simply left out of them (a readable listener would wake every call).
        gate = self._gate = self.accept_gate(listener)
        conns: dict[int, Connection] = {}
        self._conns = conns
        lfd = listener.fileno()
        while True:
            rlist = ([] if gate.paused else [lfd]) + [fd for fd, c in conns.items() if c.wants_read]
            wlist = [fd for fd, c in conns.items() if c.wants_write]
            try:
                readable, writable, _ = select.select(rlist, wlist, [], gate.timeout())
            except ValueError as exc:
                # Python refuses what C would silently corrupt: a descriptor past the bitmap.
                highest = max(conns, default=lfd)
                raise ServerFailure(
                    f"select() cannot watch descriptor {highest}: FD_SETSIZE is {FD_SETSIZE}, "
                    f"so descriptor numbers >= {FD_SETSIZE} are out of range ({exc})"
                ) from exc
            for fd in readable:
                if fd == lfd:
                    for sock in gate.accept():
                        conn = Connection(sock)
                        conns[conn.fd] = conn
                    continue
                conn = conns.get(fd)
                if conn is not None and not conn.service(True, False):
                    self._drop(conn)
            for fd in writable:
                conn = conns.get(fd)
                if conn is not None and not conn.service(False, True):
                    self._drop(conn)
            gate.tick()

    def _drop(self, conn: Connection) -> None:
        if self._conns.pop(conn.fd, None) is not None:
            conn.close()
            self._gate.freed()

    def close(self) -> None:
        for conn in getattr(self, "_conns", {}).values():
            conn.close()

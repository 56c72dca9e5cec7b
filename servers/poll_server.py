"""poll(): no FD_SETSIZE limit, but the whole interest array crosses into the kernel every call."""

from __future__ import annotations

import select
import socket

from servers.base import EchoServer
from servers.connection import Connection, accept_ready

_IN, _OUT, _ERR = select.POLLIN, select.POLLOUT, select.POLLERR | select.POLLHUP | select.POLLNVAL


class PollServer(EchoServer):
    name = "poll"
    category = "I/O multiplexing"
    supports_workers = True
    mechanism = "select.poll; the kernel scans every registered descriptor on each call"

    def serve(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        poller = select.poll()
        lfd = listener.fileno()
        poller.register(lfd, _IN)
        conns: dict[int, Connection] = {}
        self._conns = conns
        while True:
            for fd, ev in poller.poll():
                if fd == lfd:
                    for sock in accept_ready(listener):
                        conn = Connection(sock)
                        conns[conn.fd] = conn
                        conn.mask = _IN
                        poller.register(conn.fd, _IN)
                    continue
                conn = conns[fd]
                if not conn.service(bool(ev & (_IN | _ERR)), bool(ev & _OUT)):
                    poller.unregister(fd)
                    del conns[fd]
                    conn.close()
                    continue
                mask = (_IN if conn.wants_read else 0) | (_OUT if conn.wants_write else 0)
                if mask != conn.mask:
                    conn.mask = mask
                    poller.modify(fd, mask)

    def close(self) -> None:
        for conn in getattr(self, "_conns", {}).values():
            conn.close()

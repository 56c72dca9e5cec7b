"""poll(): no FD_SETSIZE limit, but the whole interest array crosses into the kernel every call."""

from __future__ import annotations

import select
import socket

from servers.base import EchoServer
from servers.connection import Connection

_IN, _OUT, _ERR = select.POLLIN, select.POLLOUT, select.POLLERR | select.POLLHUP | select.POLLNVAL


class PollServer(EchoServer):
    name = "poll"
    category = "I/O multiplexing"
    reports_shedding = True
    supports_workers = True
    mechanism = "select.poll; the kernel scans every registered descriptor on each call"

    def serve(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        poller = select.poll()
        lfd = listener.fileno()
        poller.register(lfd, _IN)
        # Level-triggered: a listener left registered while accepting is paused would wake
        # every poll() at once.
        gate = self.accept_gate(
            listener, on_pause=lambda: poller.unregister(lfd), on_resume=lambda: poller.register(lfd, _IN)
        )
        conns: dict[int, Connection] = {}
        self._conns = conns
        while True:
            timeout = gate.timeout()
            for fd, ev in poller.poll(None if timeout is None else timeout * 1000):  # ms
                if fd == lfd:
                    for sock in gate.accept():
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
                    gate.freed()
                    continue
                mask = (_IN if conn.wants_read else 0) | (_OUT if conn.wants_write else 0)
                if mask != conn.mask:
                    conn.mask = mask
                    poller.modify(fd, mask)
            gate.tick()

    def close(self) -> None:
        for conn in getattr(self, "_conns", {}).values():
            conn.close()

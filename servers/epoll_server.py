"""epoll, level-triggered: the kernel keeps the interest set; each wait returns only ready fds."""

from __future__ import annotations

import select
import socket

from servers.base import EchoServer
from servers.connection import Connection

_IN, _OUT, _ERR = select.EPOLLIN, select.EPOLLOUT, select.EPOLLERR | select.EPOLLHUP
MAX_EVENTS = 4096


class EpollServer(EchoServer):
    name = "epoll"
    category = "I/O multiplexing"
    reports_shedding = True
    supports_workers = True
    mechanism = "select.epoll, level-triggered; epoll_wait returns only the ready descriptors"

    def serve(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        ep = select.epoll()
        self._epoll = ep
        lfd = listener.fileno()
        ep.register(lfd, _IN)
        # Level-triggered: a listener left registered while accepting is paused would wake
        # every epoll_wait at once.
        gate = self.accept_gate(listener, on_pause=lambda: ep.unregister(lfd), on_resume=lambda: ep.register(lfd, _IN))
        conns: dict[int, Connection] = {}
        self._conns = conns
        while True:
            for fd, ev in ep.poll(gate.timeout(), MAX_EVENTS):
                if fd == lfd:
                    for sock in gate.accept():
                        conn = Connection(sock)
                        conns[conn.fd] = conn
                        conn.mask = _IN
                        ep.register(conn.fd, _IN)
                    continue
                conn = conns[fd]
                if not conn.service(bool(ev & (_IN | _ERR)), bool(ev & _OUT)):
                    ep.unregister(fd)
                    del conns[fd]
                    conn.close()
                    gate.freed()
                    continue
                mask = (_IN if conn.wants_read else 0) | (_OUT if conn.wants_write else 0)
                if mask != conn.mask:
                    conn.mask = mask
                    ep.modify(fd, mask)
            gate.tick()

    def close(self) -> None:
        for conn in getattr(self, "_conns", {}).values():
            conn.close()
        if hasattr(self, "_epoll"):
            self._epoll.close()

"""epoll, edge-triggered: one epoll_ctl per connection, events only on readiness changes.

Every socket is registered once with EPOLLIN | EPOLLOUT | EPOLLET and never modified.
Level-triggered epoll must switch EPOLLOUT on and off (an epoll_ctl each time) because a
writable socket would otherwise be reported on every wait; with EPOLLET a writable socket is
reported only when it *becomes* writable. That is safe here because pending data only
exists after a send() that stopped short or failed with EAGAIN: the kernel then marks the
socket out of space (SOCK_NOSPACE) and raises a fresh EPOLLOUT edge once room returns, so
the edge we need is always still to come.

The price of edges: an event says "something changed", not "something is there". Reads and
accepts must run until EAGAIN or the rest is never reported again, and when the HIGH_WATER
rule stops reading early the socket may still hold data that no future EPOLLIN edge will
announce. Such sockets are remembered in `starved` and read again once their backlog drains.
(Linux happens to report a socket's whole current mask with any edge, so the EPOLLOUT edge
that follows the drain usually carries EPOLLIN too; the loop does not rely on that detail.)
"""

from __future__ import annotations

import select
import socket

from servers.base import EchoServer
from servers.connection import Connection
from servers.shedding import AcceptGate

_IN, _OUT, _ET = select.EPOLLIN, select.EPOLLOUT, select.EPOLLET
_ERR = select.EPOLLERR | select.EPOLLHUP
MAX_EVENTS = 4096
ACCEPT_BATCH = 256


class EpollEdgeServer(EchoServer):
    name = "epoll-et"
    category = "I/O multiplexing"
    reports_shedding = True
    supports_workers = True
    mechanism = (
        "select.epoll, edge-triggered (EPOLLET): each socket registered once for IN|OUT, "
        "reads and accepts drained until EAGAIN, no epoll_ctl modify calls"
    )

    def serve(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        ep = select.epoll()
        self._epoll = ep
        lfd = listener.fileno()
        ep.register(lfd, _IN | _ET)
        conns: dict[int, Connection] = {}
        self._conns = conns
        # Edge-triggered: a paused listener stays registered (it reports only new arrivals, so
        # it cannot spin the loop), and what queued meanwhile is taken when the pause ends.
        gate = self.accept_gate(listener, on_resume=lambda: self._accept_all(gate, ep, conns))
        # fds whose reading stopped at HIGH_WATER, possibly with unread data in the kernel.
        starved: set[int] = set()
        while True:
            for fd, ev in ep.poll(gate.timeout(), MAX_EVENTS):
                if fd == lfd:
                    self._accept_all(gate, ep, conns)
                    continue
                conn = conns[fd]
                alive = True
                if ev & (_OUT | _ERR) and conn.pending:
                    alive = conn.on_writable()
                if alive and (ev & (_IN | _ERR) or fd in starved):
                    if conn.wants_read:
                        alive = conn.on_readable(drain=True)
                    # Reading stopped by the backlog, not by EAGAIN: no edge will repeat it.
                    if conn.wants_read or conn.eof:
                        starved.discard(fd)
                    else:
                        starved.add(fd)
                if not alive or conn.finished:
                    # close() removes the fd from the epoll set; no epoll_ctl(DEL) needed.
                    starved.discard(fd)
                    del conns[fd]
                    conn.close()
                    gate.freed()
            gate.tick()

    def _accept_all(self, gate: AcceptGate, ep: select.epoll, conns: dict[int, Connection]) -> None:
        # One edge may stand for many queued connections: accept until the queue is empty.
        for sock in gate.accept_all(ACCEPT_BATCH):
            conn = Connection(sock)
            conns[conn.fd] = conn
            conn.mask = _IN | _OUT | _ET
            # Data already queued at registration is reported at once: ADD checks readiness.
            ep.register(conn.fd, conn.mask)

    def close(self) -> None:
        for conn in getattr(self, "_conns", {}).values():
            conn.close()
        if hasattr(self, "_epoll"):
            self._epoll.close()

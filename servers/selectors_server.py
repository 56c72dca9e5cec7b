"""selectors.DefaultSelector: the stdlib's portable facade over the best multiplexer available.

On Linux DefaultSelector is EpollSelector (level-triggered), so this model measures what the
abstraction adds on top of raw epoll: SelectorKey objects, the event-mask translation and a
dict lookup per ready descriptor.
"""

from __future__ import annotations

import selectors
import socket

from servers.base import EchoServer
from servers.connection import Connection

_R, _W = selectors.EVENT_READ, selectors.EVENT_WRITE


class SelectorsServer(EchoServer):
    name = "selectors"
    category = "I/O multiplexing"
    reports_shedding = True
    supports_workers = True
    mechanism = (
        f"selectors.DefaultSelector ({selectors.DefaultSelector.__name__} on this host), "
        "level-triggered, interest switched with modify()"
    )

    def serve(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        sel = selectors.DefaultSelector()
        self._selector = sel
        # The listener's key carries no Connection: that is how the loop tells it apart.
        sel.register(listener, _R, None)
        # Level-triggered (epoll): a listener left registered while accepting is paused would
        # wake every select() at once.
        gate = self.accept_gate(
            listener, on_pause=lambda: sel.unregister(listener), on_resume=lambda: sel.register(listener, _R, None)
        )
        conns: dict[int, Connection] = {}
        self._conns = conns
        while True:
            for key, events in sel.select(gate.timeout()):
                conn: Connection | None = key.data
                if conn is None:
                    for sock in gate.accept():
                        conn = Connection(sock)
                        conns[conn.fd] = conn
                        conn.mask = _R
                        sel.register(conn.fd, _R, conn)
                    continue
                alive = True
                # EpollSelector reports EPOLLERR/EPOLLHUP as both read and write readiness.
                if events & _R:
                    alive = conn.on_readable()
                if alive and events & _W:
                    alive = conn.on_writable()
                if not alive or conn.finished:
                    sel.unregister(conn.fd)
                    del conns[conn.fd]
                    conn.close()
                    gate.freed()
                    continue
                mask = (_R if conn.wants_read else 0) | (_W if conn.wants_write else 0)
                # Never empty (selectors would refuse it): a connection that neither reads
                # nor writes is finished and was closed above.
                if mask != conn.mask:
                    conn.mask = mask
                    sel.modify(conn.fd, mask, conn)
            gate.tick()

    def close(self) -> None:
        for conn in getattr(self, "_conns", {}).values():
            conn.close()
        if hasattr(self, "_selector"):
            self._selector.close()

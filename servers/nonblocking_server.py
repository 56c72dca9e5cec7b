"""Non-blocking I/O without a multiplexer: ask every socket, every time, whether it has data.

The loop never waits: it tries accept() on the listener and recv() (plus any pending send)
on every connection, and most of those calls fail with EAGAIN. Each sweep costs one syscall
per connection whether or not anything happened, and an idle server spins at 100% of a CPU.
That cost is what this model exists to show, so nothing here sleeps or yields to hide it.
"""

from __future__ import annotations

import socket

from servers.base import EchoServer
from servers.connection import Connection


class NonblockingServer(EchoServer):
    name = "nonblocking"
    category = "non-blocking"
    reports_shedding = True
    mechanism = (
        "O_NONBLOCK sockets polled in a busy loop: accept() and recv() on every socket each "
        "sweep, EAGAIN when idle; no multiplexer, one CPU spent even with no traffic"
    )

    def serve(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        # A pause needs no unwatching here: a paused gate's accept() returns at once, and this
        # loop spins anyway.
        gate = self.accept_gate(listener)
        conns: list[Connection] = []
        self._conns = conns
        while True:
            for sock in gate.accept():
                conns.append(Connection(sock))
            dead: list[Connection] = []
            for conn in conns:
                # Flush first: reading first would only queue new bytes behind the old ones.
                alive = conn.on_writable() if conn.pending else True
                if alive and conn.wants_read:
                    # One recv per socket per sweep, so a fast client cannot starve the others.
                    alive = conn.on_readable()
                if not alive or conn.finished:
                    dead.append(conn)
            if dead:
                for conn in dead:
                    conn.close()
                gate.freed()
                gone = set(map(id, dead))
                # In place, so close() still sees the live list if shutdown lands here.
                conns[:] = [c for c in conns if id(c) not in gone]
            gate.tick()

    def close(self) -> None:
        for conn in getattr(self, "_conns", ()):
            conn.close()
